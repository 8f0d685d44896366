//! `ibemail-bench-postfix`: throughput and CPU per message through a real
//! Postfix, same machine, same run, ratios printed:
//!
//! - outbound at a.test (submission from an internal client): no milter,
//!   OpenDKIM signing, ibemail encrypting and signing;
//! - inbound at b.test (from an outside client): no milter, ibemail
//!   verifying and decrypting a sealed, signed message.
//!
//! `smtp-source` sends N messages (10 sessions in parallel; 2 KiB
//! outbound, the same 2 KiB message sealed and signed inbound); the next
//! hop is deferred (`defer_transports`), so what is measured is the SMTP
//! transaction, the milter and queueing at one server. CPU is the whole
//! machine's busy time (from /proc/stat) over the run, divided by N; run it
//! on an otherwise idle machine. "milter ms/msg" is the part of it spent
//! in the milter's own processes (ibemail-milter and ibemail-kgc, or
//! opendkim); the rest is Postfix, DNS and the client. The daemons are the release binaries
//! (`IBEMAIL_BIN_DIR`, default `target/release`).
//!
//!   cargo run --release -p ibemail-e2e --bin ibemail-bench-postfix [-- N]

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use ibemail_e2e::{Options, World};
use ibemail_ibe::{Generation, Identity, Signature};
use ibemail_kgc::service::{KeyService, Peer};
use ibemail_kgc::store::Store;
use ibemail_message::{IbeRecipient, Limits, MessageSigner, Recipient};
use ibemail_test_support::opendkim::OpenDkim;
use ibemail_test_support::{machine_busy_seconds, processes_busy_seconds};
use rand_core::OsRng;

struct Run {
    name: &'static str,
    per_second: f64,
    cpu_ms: f64,
    /// The milter's own processes (ibemail-milter and ibemail-kgc, or
    /// opendkim).
    milter_ms: f64,
}

/// CPU seconds so far of the milter processes: ours or OpenDKIM.
fn milters_busy_seconds() -> f64 {
    ["ibemail-milter", "ibemail-kgc", "opendkim"]
        .iter()
        .map(|name| processes_busy_seconds(name))
        .sum()
}

/// `smtp-source` to `server`: 2 KiB generated messages, or `file`.
fn source(server: SocketAddr, sessions: usize, count: usize, file: Option<&Path>, to: &str) {
    let mut command = std::process::Command::new("smtp-source");
    command
        .args(["-s", &sessions.to_string(), "-m", &count.to_string()])
        .args(["-f", "alice@a.test", "-t", to]);
    match file {
        Some(file) => command.arg("-F").arg(file),
        None => command.args(["-l", "2048"]),
    };
    let out = command.arg(server.to_string()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn measure(name: &'static str, server: SocketAddr, count: usize, file: Option<&Path>) -> Run {
    measure_to(name, server, count, file, "bob@b.test")
}

fn measure_to(
    name: &'static str,
    server: SocketAddr,
    count: usize,
    file: Option<&Path>,
    to: &str,
) -> Run {
    // Warm up: DNS caches, milter connections, Postfix processes.
    source(server, 2, 20, file, to);
    let busy = machine_busy_seconds();
    let milters = milters_busy_seconds();
    let start = Instant::now();
    source(server, 10, count, file, to);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = machine_busy_seconds() - busy;
    let milter = milters_busy_seconds() - milters;
    Run {
        name,
        per_second: count as f64 / elapsed,
        cpu_ms: cpu * 1000.0 / count as f64,
        milter_ms: milter * 1000.0 / count as f64,
    }
}

/// a.test's key service signing as alice.
struct Alice(KeyService, Identity, Generation);

impl MessageSigner for Alice {
    fn identity(&self) -> &Identity {
        &self.1
    }
    fn generation(&self) -> Generation {
        self.2
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Signature, String> {
        self.0
            .sign(self.1.as_str(), self.2, digest, Peer::default())
            .map_err(|e| e.to_string())
    }
}

/// A 2 KiB message from alice@a.test to bob@b.test, sealed to b.test's
/// parameters and signed by a.test's key as the milter does, written with
/// LF line endings for `smtp-source -F`.
fn sealed_message(world: &World, path: &Path) {
    let mut text = String::from(
        "From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: bench\r\n\
         Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <bench@a.test>\r\n\r\n",
    );
    while text.len() < 2048 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    let a = KeyService::load(std::slice::from_ref(&world.a.store_dir), 16).unwrap();
    let alice = Identity::parse("alice@a.test").unwrap();
    let generation = a.active_generation(&alice).unwrap();
    let b = Store::open(&world.b.store_dir).unwrap().records()[0].clone();
    let bob = IbeRecipient {
        identity: Identity::parse("bob@b.test").unwrap(),
        generation: b.generation,
        params: b.params,
    };
    let mut signer = Alice(a, alice, generation);
    let sealed = ibemail_message::seal_signed(
        text.into_bytes(),
        &[&bob as &dyn Recipient],
        Some(&mut signer),
        &mut OsRng,
        &Limits::default(),
    )
    .unwrap();
    let wire = String::from_utf8(sealed.to_bytes())
        .unwrap()
        .replace("\r\n", "\n");
    std::fs::write(path, wire).unwrap();
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let defer = vec!["defer_transports = smtp".to_string()];
    let defer_local = vec!["defer_transports = local".to_string()];
    let sign = "[signing]\nsign = \"always\"".to_string();
    let mut runs = Vec::new();

    let world = World::start(Options {
        block: Some(201),
        a_without_ibemail: true,
        a_postfix_extra: defer.clone(),
        ..Options::default()
    });
    runs.push(measure(
        "out: postfix, no milter",
        world.a.postfix.smtp(),
        count,
        None,
    ));
    drop(world);

    let signer = OpenDkim::signer("127.0.202.11".parse().unwrap(), "a.test");
    let world = World::start(Options {
        block: Some(202),
        a_without_ibemail: true,
        a_milters_after: vec![signer.milter()],
        a_postfix_extra: defer.clone(),
        ..Options::default()
    });
    runs.push(measure(
        "out: + opendkim (sign)",
        world.a.postfix.smtp(),
        count,
        None,
    ));
    drop(world);
    drop(signer);

    let world = World::start(Options {
        block: Some(203),
        a_postfix_extra: defer,
        a_milter: sign.clone(),
        ..Options::default()
    });
    runs.push(measure(
        "out: + ibemail (encrypt, sign)",
        world.a.postfix.smtp(),
        count,
        None,
    ));
    // The same milter for a domain that publishes no parameters: the
    // milter protocol and a (cached) lookup, no cryptography.
    runs.push(measure_to(
        "out: + ibemail (no parameters, pass)",
        world.a.postfix.smtp(),
        count,
        None,
        "carol@plain.test",
    ));
    drop(world);

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("sealed.eml");
    let world = World::start(Options {
        block: Some(204),
        b_without_ibemail: true,
        b_postfix_extra: defer_local.clone(),
        ..Options::default()
    });
    sealed_message(&world, &file);
    runs.push(measure(
        "in: postfix, no milter",
        world.b.postfix.smtp(),
        count,
        Some(&file),
    ));
    drop(world);

    let world = World::start(Options {
        block: Some(205),
        b_postfix_extra: defer_local,
        ..Options::default()
    });
    sealed_message(&world, &file);
    runs.push(measure(
        "in: + ibemail (verify, decrypt)",
        world.b.postfix.smtp(),
        count,
        Some(&file),
    ));
    drop(world);

    println!("{count} messages of 2 KiB, 10 parallel SMTP sessions");
    println!(
        "{:<38} {:>10} {:>14} {:>16}",
        "setup", "msg/s", "CPU ms/msg", "milter ms/msg"
    );
    for r in &runs {
        println!(
            "{:<38} {:>10.1} {:>14.2} {:>16.2}",
            r.name, r.per_second, r.cpu_ms, r.milter_ms
        );
    }
    let overhead = |i: usize, base: usize| runs[i].cpu_ms - runs[base].cpu_ms;
    let ratio = |i: usize, base: usize| runs[i].per_second / runs[base].per_second;
    println!(
        "outbound: milter CPU ms/msg over plain Postfix: opendkim {:.2}, ibemail {:.2} \
         (ibemail/opendkim {:.2}); throughput vs plain: opendkim {:.2}, ibemail {:.2}",
        overhead(1, 0),
        overhead(2, 0),
        overhead(2, 0) / overhead(1, 0),
        ratio(1, 0),
        ratio(2, 0)
    );
    println!(
        "outbound, the milter path without cryptography: CPU ms/msg over plain {:.2}, \
         throughput vs plain {:.2}",
        overhead(3, 0),
        ratio(3, 0)
    );
    println!(
        "inbound: ibemail CPU ms/msg over plain Postfix {:.2}; throughput vs plain {:.2}",
        overhead(5, 4),
        ratio(5, 4)
    );
}
