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
//! - [`free_port`]: a free TCP+UDP port on a loopback address.
//!
//! Tests fail loudly when a required program is missing rather than skip:
//! `scripts/test` installs them.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

pub mod knot;
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
