//! `ibemail-bench-postfix`: throughput and CPU per message through a real
//! Postfix (a.test) with no milter, with OpenDKIM signing only, and with
//! ibemail encrypting — same machine, same run, ratios printed.
//!
//! `smtp-source` submits N messages (2 KiB, 10 sessions in parallel) to
//! a.test for bob@b.test; a.test defers its outbound transport, so what is
//! measured is submission + milter + queueing at the sending server. CPU
//! is the whole machine's busy time (from /proc/stat) over the run, divided
//! by N; run it on an otherwise idle machine.
//!
//!   cargo run --release -p ibemail-e2e --bin ibemail-bench-postfix [-- N]

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use ibemail_e2e::{Options, World};
use ibemail_test_support::machine_busy_seconds;
use ibemail_test_support::opendkim::OpenDkim;

struct Run {
    name: &'static str,
    per_second: f64,
    cpu_ms: f64,
}

fn measure(name: &'static str, world: &World, count: usize) -> Run {
    // Warm up: DNS caches, milter connections, Postfix processes.
    let warm = std::process::Command::new("smtp-source")
        .args(["-s", "2", "-m", "20", "-l", "2048"])
        .args(["-f", "alice@a.test", "-t", "bob@b.test"])
        .arg(world.a.postfix.smtp().to_string())
        .output()
        .unwrap();
    assert!(
        warm.status.success(),
        "{}",
        String::from_utf8_lossy(&warm.stderr)
    );
    let busy = machine_busy_seconds();
    let start = Instant::now();
    let out = std::process::Command::new("smtp-source")
        .args(["-s", "10", "-m", &count.to_string(), "-l", "2048"])
        .args(["-f", "alice@a.test", "-t", "bob@b.test"])
        .arg(world.a.postfix.smtp().to_string())
        .output()
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = machine_busy_seconds() - busy;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        name,
        per_second: count as f64 / elapsed,
        cpu_ms: cpu * 1000.0 / count as f64,
    }
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let defer = vec!["defer_transports = smtp".to_string()];
    let mut runs = Vec::new();

    let world = World::start(Options {
        block: Some(201),
        a_without_ibemail: true,
        a_postfix_extra: defer.clone(),
        ..Options::default()
    });
    runs.push(measure("postfix, no milter", &world, count));
    drop(world);

    let signer = OpenDkim::signer("127.0.202.11".parse().unwrap(), "a.test");
    let world = World::start(Options {
        block: Some(202),
        a_without_ibemail: true,
        a_milters_after: vec![signer.milter()],
        a_postfix_extra: defer.clone(),
        ..Options::default()
    });
    runs.push(measure("postfix + opendkim (sign)", &world, count));
    drop(world);
    drop(signer);

    let world = World::start(Options {
        block: Some(203),
        a_postfix_extra: defer,
        ..Options::default()
    });
    runs.push(measure("postfix + ibemail (encrypt)", &world, count));
    drop(world);

    println!("{count} messages of 2 KiB, 10 parallel SMTP sessions, a.test only");
    println!("{:<30} {:>10} {:>14}", "setup", "msg/s", "CPU ms/msg");
    for r in &runs {
        println!("{:<30} {:>10.1} {:>14.2}", r.name, r.per_second, r.cpu_ms);
    }
    let base = &runs[0];
    let dkim = runs[1].cpu_ms - base.cpu_ms;
    let ibe = runs[2].cpu_ms - base.cpu_ms;
    println!(
        "milter overhead (CPU ms/msg over plain Postfix): opendkim {dkim:.2}, ibemail {ibe:.2}, \
         ratio ibemail/opendkim {:.2}",
        ibe / dkim
    );
    println!(
        "throughput relative to plain Postfix: opendkim {:.2}, ibemail {:.2}",
        runs[1].per_second / base.per_second,
        runs[2].per_second / base.per_second
    );
}
