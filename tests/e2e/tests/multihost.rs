//! One domain served by several hosts, each a network namespace: two MX
//! hosts of b.test with Postfix and the milter, two KGC replicas reached
//! over mutual TLS, a sending domain. 1,000 messages spread over both MX
//! hosts while one milter and the primary KGC crash and come back: every
//! message delivered exactly once, decrypted, none in clear on the wire,
//! none lost. `scripts/soak-multihost` runs the same with 10,000.
//!
//! Prints messages per second, the deferrals seen and the failover time
//! (`cargo test -p ibemail-e2e --test multihost -- --nocapture`).

#![allow(clippy::print_stdout)]

use ibemail_e2e::multihost::{Plan, run};

#[test]
fn a_thousand_messages_over_two_mx_hosts_and_two_kgc_replicas_survive_crashes() {
    let report = run(&Plan::new(1000));
    println!("{report}");
}
