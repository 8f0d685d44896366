//! `ibemail-demo`: brings up two mail domains on this machine (Knot DNS
//! with signed `_ibemailkey` records; for a.test and b.test the programs an
//! administrator runs, `ibemail-kgc serve` and `ibemail-milter run --config
//! FILE` with a configuration written from the packaged sample, as the
//! packages' users when they exist, and Postfix), sends one mail from
//! alice@a.test to bob@b.test with swaks, and shows what crossed the wire
//! between the servers and what landed in Bob's mailbox.
//!
//! `scripts/demo` builds the release binaries and points `IBEMAIL_BIN_DIR`
//! at them. `--keep` leaves the system running until Enter is pressed, to
//! send more mail by hand (the addresses are printed).

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Duration;

use ibemail_e2e::{Options, World, message};
use ibemail_kgc::accounts::describe_uid;

fn section(title: &str) {
    println!("\n==== {title} ====");
}

fn main() {
    let keep = std::env::args().any(|a| a == "--keep");
    println!("Starting Knot DNS, two KGCs, two milters and three Postfix instances...");
    let world = World::start(Options {
        block: Some(200),
        // a.test signs its users' mail (inside and outside the encryption).
        a_milter: "[signing]\nsign = \"always\"".into(),
        ..Options::default()
    });
    section("The daemons (separate processes, as an administrator runs them)");
    let (milter_uid, kgc_uid) = world.daemon_uids();
    for domain in [&world.a, &world.b] {
        println!(
            "{}: ibemail-kgc serve --dir {} --socket {}   (as {})",
            domain.name,
            domain.store_dir.display(),
            domain.kgc_socket.display(),
            describe_uid(kgc_uid)
        );
        println!(
            "{}: ibemail-milter run --config {}   (as {}, pid {})",
            domain.name,
            domain.milter_config.display(),
            describe_uid(milter_uid),
            world
                .milter_pid(&domain.name)
                .map_or("-".into(), |p| p.to_string())
        );
    }
    section("DNS: the parameters b.test publishes (signed, published by RFC 2136)");
    for line in world.knot.query_txt("_ibemailkey.b.test") {
        println!("_ibemailkey.b.test. TXT {line}");
    }

    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "Our plans for the merger",
        "Hi Bob,\r\n\r\nthe merger closes on Friday. Keep it quiet.\r\n\r\nAlice\r\n",
    );
    section("Submitted by alice@a.test (swaks to a.test's Postfix)");
    print!("{}", String::from_utf8_lossy(&m));
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let bob = world
        .b
        .postfix
        .wait_for_mail("bob", 1, Duration::from_secs(60));

    section("On the wire between mx.a.test and mx.b.test (recorded by a relay)");
    let wire = String::from_utf8_lossy(&world.wire.seen()).into_owned();
    let data = wire.split("DATA\r\n").nth(1).unwrap_or(&wire);
    let mut lines = data.lines();
    for line in lines.by_ref().take_while(|l| !l.is_empty()) {
        println!("{line}");
    }
    println!();
    for line in lines.by_ref().take(6) {
        println!("{line}");
    }
    println!(
        "... ({} bytes of CMS AuthEnvelopedData in base64)",
        data.len()
    );
    println!(
        "plaintext on the wire: subject {}, body {}",
        if wire.contains("merger") {
            "VISIBLE"
        } else {
            "not visible"
        },
        if wire.contains("closes on Friday") {
            "VISIBLE"
        } else {
            "not visible"
        },
    );

    section(
        "In bob@b.test's mailbox (Maildir, decrypted and signature-checked by b.test's milter)",
    );
    print!("{}", String::from_utf8_lossy(&bob[0]));

    if keep {
        section("The system stays up");
        println!(
            "a.test SMTP: {}   b.test SMTP: {}   c.test (no ibemail) SMTP: {}",
            world.a.postfix.smtp(),
            world.b.postfix.smtp(),
            world.c.smtp()
        );
        println!(
            "Mailboxes: {}/mail and {}/mail",
            world.a.postfix.dir().display(),
            world.b.postfix.dir().display()
        );
        println!(
            "Milter configurations (made from packaging/ibemail-milter.toml): {} and {}",
            world.a.milter_config.display(),
            world.b.milter_config.display()
        );
        println!(
            "Check a.test's setup: {}/ibemail-milter doctor --config {} -c {}/conf --user {}",
            ibemail_e2e::bin_dir().display(),
            world.a.milter_config.display(),
            world.a.postfix.dir().display(),
            describe_uid(milter_uid).split(' ').next().unwrap_or("root")
        );
        println!("Press Enter to stop.");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
}
