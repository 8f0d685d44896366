//! `ibemail-soak-multihost`: the multi-host test (`tests/multihost.rs`)
//! with more messages: two MX hosts of b.test and two KGC replicas, each
//! host a network namespace; one milter and the primary KGC are killed and
//! brought back during the run. Checks every message (delivered exactly
//! once, decrypted, never in clear on the wire) and prints messages per
//! second, deferrals and the failover time. Needs root.
//!
//!   scripts/soak-multihost [N]          (default 10000; release build)

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use ibemail_e2e::multihost::{Plan, run};

fn main() {
    let messages = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("N: a number of messages"))
        .unwrap_or(10_000);
    let mut plan = Plan::new(messages);
    if let Some(sessions) = std::env::var("SOAK_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        plan.sessions = sessions;
    }
    println!(
        "sending {} messages over {} sessions; outages of {:?}",
        plan.messages, plan.sessions, plan.outage
    );
    let report = run(&plan);
    println!("{report}");
}
