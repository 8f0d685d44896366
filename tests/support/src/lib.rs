//! # ibemail-test-support
//!
//! Real servers for tests, started on loopback and torn down on drop:
//!
//! - [`knot::Knot`]: Knot DNS serving a DNSSEC-signed parent zone `test.`
//!   (the trust anchor) that delegates to child zones which are signed (with
//!   DS), unsigned (no DS: provably insecure), tampered (signed, then a record
//!   changed under its old signature: bogus) or broken (SERVFAIL);
//! - [`silent::Silent`]: a "name server" that accepts queries and never
//!   answers, for timeouts;
//! - [`smtp::Sink`]: an SMTP server recording what it receives (or refusing);
//! - [`free_port`]: a free TCP+UDP port on a loopback address;
//! - [`netns::Lab`]: network namespaces on a bridge, one per "host", for
//!   tests of several machines (Knot and Postfix run in them with
//!   [`knot::Knot::start_in`] and [`postfix::Postfix::start_in`]).
//!
//! Tests fail loudly when a required program is missing rather than skip:
//! `scripts/test` installs them.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

pub mod dnsproxy;
pub mod knot;
pub mod netns;
pub mod opendkim;
pub mod postfix;
pub mod proxy;
pub mod silent;
pub mod smtp;

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Command;

/// A port free for both TCP and UDP on `ip`.
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// The path of a program, or a panic naming the Debian package to install.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is required: apt-get install {package} (scripts/test does this)");
}

/// Runs a command and returns stdout, panicking with its stderr on failure.
pub fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// True when running as root (some servers need it to bind or switch users).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// CPU seconds (user + system) used by process `pid` so far.
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// CPU seconds (user + system) used so far by the live processes whose
/// command name is `name` (all daemons of one kind).
pub fn processes_busy_seconds(name: &str) -> f64 {
    let mut seconds = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime(14) stime(15)
        let Some((head, _)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.split_once('(').map(|(_, comm)| comm) != Some(name) {
            continue;
        }
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() {
            seconds += process_cpu_seconds(pid);
        }
    }
    seconds
}

/// The machine's busy CPU time so far, in seconds (all cores, from
/// /proc/stat), for CPU-per-message figures in benchmarks.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy / 100.0
}
