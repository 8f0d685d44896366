//! `ibemail-bench-postfix`: throughput and CPU per message through a real
//! Postfix, same machine, same run, ratios printed:
//!
//! - outbound at a.test (submission from an internal client): no milter,
//!   OpenDKIM signing, ibemail encrypting and signing;
//! - inbound at b.test (from an outside client): no milter, OpenDKIM
//!   verifying a DKIM-signed message (the cost of a milter that checks one
//!   RSA signature: Postfix's side of the milter protocol and little
//!   else), ibemail passing plain unsigned mail (its path without
//!   cryptography), ibemail verifying and decrypting a sealed, signed
//!   message.
//!
//! `smtp-source` sends N messages (10 sessions in parallel; 2 KiB
//! outbound, the same 2 KiB message sealed and signed inbound). Outbound,
//! the next hop is deferred (`defer_transports`), so what is measured is
//! the SMTP transaction, the milter and queueing at one server; inbound,
//! the message is delivered to the mailbox. Postfix's retry timers are
//! its defaults here, not the test harness's one second: with those, every
//! deferred message was retried every second or two during the run, and a
//! slower row paid for more retries of a longer queue (the work grew with
//! the square of the run's length). CPU is the whole
//! machine's busy time (from /proc/stat) over the run, divided by N; run it
//! on an otherwise idle machine. "milter ms/msg" is the part of it spent
//! in the milter's own processes (ibemail-milter and ibemail-kgc, or
//! opendkim); the rest is Postfix, DNS and the client. The daemons are the release binaries
//! (`IBEMAIL_BIN_DIR`, default `target/release`).
//!
//!   cargo run --release -p ibemail-e2e --bin ibemail-bench-postfix [-- N [ROUNDS] [SETUP…]]
//!
//! Plain Postfix's own rate varies by half from run to run on a small VM,
//! so ROUNDS (default 1) repeats all setups in turn (every other round in
//! reverse order) and prints each round's ratios and their median. SETUP names restrict the run to
//! some (`out-plain`, `out-dkim`, `out`, `out-pass`, `in-plain`,
//! `in-dkim`, `in-pass`, `in`):
//! one alone is the way to profile it (under `perf record -a`, say).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use ibemail_e2e::{Options, World};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::service::{KeyService, Peer};
use ibemail_kgc::store::Store;
use ibemail_message::signature::{Algorithm, MessageSignature};
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

/// Writes out what earlier setups left dirty (their queues, removed
/// directories) and lets the writeback finish, so that its kernel time is
/// not counted against the next setup: without this the first setup of a
/// run (on an idle machine) was up to 1.7 times as fast as the same setup
/// later.
fn quiet_disk() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_secs(3));
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
    quiet_disk();
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

/// The inbound message before sealing or signing: 2 KiB from alice@a.test
/// to bob@b.test, CRLF line ends.
fn bench_text() -> String {
    let mut text = String::from(
        "From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: bench\r\n\
         Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <bench@a.test>\r\n\r\n",
    );
    while text.len() < 2048 {
        text.push_str("The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    text
}

/// a.test's key service signing as alice, as the milter does
/// (`ed25519-cc-sha256`), or with `IBEMAIL_BENCH_ALGORITHM=cc` as milters
/// before it did (`cc-bls12-381-sha256`), to compare.
struct Alice(KeyService, Identity, Generation);

impl MessageSigner for Alice {
    fn identity(&self) -> &Identity {
        &self.1
    }
    fn generation(&self) -> Generation {
        self.2
    }
    fn algorithm(&self) -> Algorithm {
        match std::env::var("IBEMAIL_BENCH_ALGORITHM").as_deref() {
            Ok("cc") => Algorithm::ChaCheon,
            _ => Algorithm::Certified,
        }
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        let (identity, generation) = (self.1.as_str(), self.2);
        match self.algorithm() {
            Algorithm::ChaCheon => self
                .0
                .sign(identity, generation, digest, Peer::default())
                .map(MessageSignature::from),
            Algorithm::Certified => self
                .0
                .sign_certified(identity, generation, digest, Peer::default())
                .map(MessageSignature::from),
        }
        .map_err(|e| e.to_string())
    }
}

/// A 2 KiB message from alice@a.test to bob@b.test, sealed to b.test's
/// parameters and signed by a.test's key as the milter does, written with
/// LF line endings for `smtp-source -F`.
fn sealed_message(world: &World, path: &Path) {
    let text = bench_text();
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
    write_for_source(path, &String::from_utf8(sealed.to_bytes()).unwrap());
}

/// Writes `message` (CRLF line ends) for `smtp-source -F`, which reads
/// lines and sends each with CRLF itself: with LF line ends.
fn write_for_source(path: &Path, message: &str) {
    std::fs::write(path, message.replace("\r\n", "\n")).unwrap();
}

/// The bench's 2 KiB message from alice@a.test as a.test's OpenDKIM signs
/// it: sent once through a.test's Postfix (its signing milter) to b.test,
/// and taken from bob's mailbox from its `DKIM-Signature` down (the fields
/// b.test added above it dropped).
fn dkim_signed_message(world: &World, path: &Path) {
    let text = path.with_extension("txt");
    write_for_source(&text, &bench_text());
    source(world.a.postfix.smtp(), 1, 1, Some(&text), "bob@b.test");
    let mail = world
        .b
        .postfix
        .wait_for_mail("bob", 1, std::time::Duration::from_secs(60));
    let delivered = String::from_utf8(mail[0].clone()).unwrap();
    let start = delivered
        .find("DKIM-Signature:")
        .unwrap_or_else(|| panic!("not signed by a.test:\n{delivered}"));
    std::fs::write(path, &delivered[start..]).unwrap();
}

/// Checks that the milter did its work on what was measured: the newest
/// message in bob's mailbox has every one of `results` (in its
/// Authentication-Results).
fn delivered_with(world: &World, results: &[&str]) {
    let mail = world
        .b
        .postfix
        .wait_for_mail("bob", 1, std::time::Duration::from_secs(60));
    let newest = String::from_utf8_lossy(&mail[mail.len() - 1]);
    for result in results {
        assert!(newest.contains(result), "no {result} in:\n{newest}");
    }
}

/// Postfix settings for a bench world: its default retry timers (see the
/// module documentation), and `more`.
fn postfix_extra(more: &[&str]) -> Vec<String> {
    [
        "queue_run_delay = 300s",
        "minimal_backoff_time = 300s",
        "maximal_backoff_time = 4000s",
    ]
    .iter()
    .chain(more)
    .map(|line| line.to_string())
    .collect()
}

/// The setups measured, in the order run and printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    OutPlain,
    OutDkim,
    OutIbemail,
    OutPass,
    InPlain,
    InDkim,
    InPass,
    InIbemail,
}

impl Setup {
    const ALL: [Setup; 8] = [
        Setup::OutPlain,
        Setup::OutDkim,
        Setup::OutIbemail,
        Setup::OutPass,
        Setup::InPlain,
        Setup::InDkim,
        Setup::InPass,
        Setup::InIbemail,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::OutPlain => "out: postfix, no milter",
            Setup::OutDkim => "out: + opendkim (sign)",
            Setup::OutIbemail => "out: + ibemail (encrypt, sign)",
            Setup::OutPass => "out: + ibemail (no parameters, pass)",
            Setup::InPlain => "in: postfix, no milter",
            Setup::InDkim => "in: + opendkim (verify)",
            Setup::InPass => "in: + ibemail (plain, unsigned)",
            Setup::InIbemail => "in: + ibemail (verify, decrypt)",
        }
    }

    /// Its short name on the command line.
    fn arg(self) -> &'static str {
        match self {
            Setup::OutPlain => "out-plain",
            Setup::OutDkim => "out-dkim",
            Setup::OutIbemail => "out",
            Setup::OutPass => "out-pass",
            Setup::InPlain => "in-plain",
            Setup::InDkim => "in-dkim",
            Setup::InPass => "in-pass",
            Setup::InIbemail => "in",
        }
    }

    /// Starts a fresh system for this setup and measures `count` messages.
    fn run(self, count: usize) -> Run {
        let defer = || postfix_extra(&["defer_transports = smtp"]);
        let sign = "[signing]\nsign = \"always\"".to_string();
        let name = self.name();
        match self {
            Setup::OutPlain => {
                let world = World::start(Options {
                    block: Some(201),
                    a_without_ibemail: true,
                    a_postfix_extra: defer(),
                    ..Options::default()
                });
                measure(name, world.a.postfix.smtp(), count, None)
            }
            Setup::OutDkim => {
                let signer = OpenDkim::signer("127.0.202.11".parse().unwrap(), "a.test");
                let world = World::start(Options {
                    block: Some(202),
                    a_without_ibemail: true,
                    a_milters_after: vec![signer.milter()],
                    a_postfix_extra: defer(),
                    ..Options::default()
                });
                measure(name, world.a.postfix.smtp(), count, None)
            }
            Setup::OutIbemail | Setup::OutPass => {
                let world = World::start(Options {
                    block: Some(203),
                    a_postfix_extra: defer(),
                    a_milter: sign,
                    ..Options::default()
                });
                // Pass: the same milter, for a domain that publishes no
                // parameters: the milter protocol, a (cached) lookup and
                // the signature, no encryption.
                let to = match self {
                    Setup::OutPass => "carol@plain.test",
                    _ => "bob@b.test",
                };
                measure_to(name, world.a.postfix.smtp(), count, None, to)
            }
            Setup::InDkim => {
                let tmp = tempfile::tempdir().unwrap();
                let file = tmp.path().join("signed.eml");
                let world = World::start(Options {
                    block: Some(205),
                    dkim: true,
                    a_without_ibemail: true,
                    b_without_ibemail: true,
                    b_postfix_extra: postfix_extra(&[]),
                    ..Options::default()
                });
                dkim_signed_message(&world, &file);
                let run = measure(name, world.b.postfix.smtp(), count, Some(&file));
                delivered_with(&world, &["dkim=pass"]);
                run
            }
            Setup::InPlain | Setup::InPass | Setup::InIbemail => {
                let tmp = tempfile::tempdir().unwrap();
                let file = tmp.path().join("inbound.eml");
                let world = World::start(Options {
                    block: Some(204),
                    b_without_ibemail: self == Setup::InPlain,
                    b_postfix_extra: postfix_extra(&[]),
                    ..Options::default()
                });
                // Pass: the milter's path with no cryptography (nothing
                // to open, no signature), as out-pass is outbound.
                if self == Setup::InPass {
                    write_for_source(&file, &bench_text());
                } else {
                    sealed_message(&world, &file);
                }
                let run = measure(name, world.b.postfix.smtp(), count, Some(&file));
                match self {
                    // Unsigned plain mail gets no result field: that the
                    // milter saw it shows in its processes' CPU.
                    Setup::InPass => assert!(run.milter_ms > 0.0, "the milter saw no mail"),
                    Setup::InIbemail => {
                        delivered_with(&world, &["x-ibemail=pass", "ibesig=pass"]);
                    }
                    _ => {}
                }
                run
            }
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(500);
    let mut rounds = 1usize;
    let mut only: Vec<Setup> = Vec::new();
    for arg in args {
        if let Ok(n) = arg.parse() {
            rounds = n;
        } else if let Some(setup) = Setup::ALL.iter().find(|s| s.arg() == arg) {
            only.push(*setup);
        } else {
            panic!(
                "unknown argument {arg:?}: expected a number of rounds or a setup (out-plain, out-dkim, out, out-pass, in-plain, in)"
            );
        }
    }
    let setups: Vec<Setup> = if only.is_empty() {
        Setup::ALL.to_vec()
    } else {
        only
    };
    // Rounds interleave the setups, so that a slow minute of the machine
    // touches all of them; each round's ratios compare neighbours in time.
    // Every other round runs them in reverse: on this VM a run's first
    // minutes are the fastest (the same plain row ran at 900 msg/s first
    // and at 500-600 later), and in one order the plain rows, listed
    // first, would always get them.
    let mut runs: Vec<(usize, Setup, Run)> = Vec::new();
    for round in 0..rounds {
        let mut order = setups.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            runs.push((round, setup, setup.run(count)));
        }
    }

    println!("{count} messages of 2 KiB, 10 parallel SMTP sessions, {rounds} round(s)");
    println!(
        "{:<38} {:>6} {:>10} {:>14} {:>16}",
        "setup", "round", "msg/s", "CPU ms/msg", "milter ms/msg"
    );
    for (round, _, r) in &runs {
        println!(
            "{:<38} {:>6} {:>10.1} {:>14.2} {:>16.2}",
            r.name,
            round + 1,
            r.per_second,
            r.cpu_ms,
            r.milter_ms
        );
    }
    let of = |setup: Setup, value: fn(&Run) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|(_, s, _)| *s == setup)
            .map(|(_, _, r)| value(r))
            .collect()
    };
    if rounds > 1 {
        println!("median of {rounds} rounds");
        for &setup in &setups {
            println!(
                "{:<38} {:>6} {:>10.1} {:>14.2} {:>16.2}",
                setup.name(),
                "",
                median(of(setup, |r| r.per_second)),
                median(of(setup, |r| r.cpu_ms)),
                median(of(setup, |r| r.milter_ms))
            );
        }
    }
    // Ratios: each round's against the plain row of the same round, and
    // their median.
    let ratios = |setup: Setup, base: Setup| -> Option<Vec<f64>> {
        if !setups.contains(&setup) || !setups.contains(&base) {
            return None;
        }
        let rate = |s: Setup| of(s, |r| r.per_second);
        Some(
            rate(setup)
                .iter()
                .zip(rate(base))
                .map(|(a, b)| a / b)
                .collect(),
        )
    };
    for (setup, base, what) in [
        (
            Setup::OutDkim,
            Setup::OutPlain,
            "outbound, OpenDKIM signing",
        ),
        (
            Setup::OutIbemail,
            Setup::OutPlain,
            "outbound, ibemail encrypt + sign",
        ),
        (
            Setup::OutPass,
            Setup::OutPlain,
            "outbound, ibemail sign, no encryption",
        ),
        (Setup::InDkim, Setup::InPlain, "inbound, OpenDKIM verifying"),
        (
            Setup::InPass,
            Setup::InPlain,
            "inbound, ibemail, plain unsigned mail",
        ),
        (
            Setup::InIbemail,
            Setup::InPlain,
            "inbound, ibemail verify + decrypt",
        ),
    ] {
        if let Some(r) = ratios(setup, base) {
            let extra = median(of(setup, |r| r.cpu_ms)) - median(of(base, |r| r.cpu_ms));
            let each: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
            println!(
                "{what}: throughput vs plain Postfix {:.2} (rounds: {}); CPU ms/msg over plain {extra:.2}",
                median(r.clone()),
                each.join(", ")
            );
        }
    }
}
