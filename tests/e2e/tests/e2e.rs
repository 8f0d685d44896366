//! End to end on real Postfix: a.test and b.test with ibemail, c.test
//! without; real DNS (Knot, signed, records published by RFC 2136), KGC
//! daemons, milters, swaks, Maildir delivery, and an observer on the wire.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use ibemail_e2e::{Options, World, delivered_original, message};
use ibemail_milter::engine::Kind;

const WAIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn field<'m>(mail: &'m str, name: &str) -> Vec<&'m str> {
    let header = mail.split("\n\n").next().unwrap_or("");
    header
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}

/// Delivered fields on top of the original may only be these.
fn assert_only_trace_added(added: &[String]) {
    for name in added {
        assert!(
            [
                "Return-Path",
                "X-Original-To",
                "Delivered-To",
                "Received",
                "Authentication-Results",
            ]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name)),
            "unexpected field {name} added on delivery: {added:?}"
        );
    }
}

#[test]
fn one_and_several_recipients_and_bcc_get_the_original_and_only_ciphertext_crosses() {
    let world = World::start(Options::default());
    let secret_subject = "Quarterly numbers (confidential)";
    let secret_body = "Revenue is up 12%.\r\n.dot line\r\nBye\r\n";

    // One recipient.
    let m1 = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        secret_subject,
        secret_body,
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m1);
    if std::env::var("E2E_DEBUG").is_ok() {
        std::thread::sleep(Duration::from_secs(8));
        println!("A LOG\n{}", world.a.postfix.log_tail(40));
    }
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let added = delivered_original(&bob[0], &m1).unwrap();
    assert_only_trace_added(&added);
    let bob0 = text(&bob[0]);
    let results = field(&bob0, "Authentication-Results");
    assert!(
        results
            .iter()
            .any(|r| r.starts_with("mx.b.test; x-ibemail=pass")),
        "{bob0}"
    );

    // Several recipients in b.test, one of them Bcc (envelope only).
    let m2 = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>, Carol <carol@b.test>",
        "Team plans",
        "Plans inside.\r\n",
    );
    world.a.postfix.submit(
        "alice@a.test",
        &["bob@b.test", "carol@b.test", "dave@b.test"],
        &m2,
    );
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    let carol = world.b.postfix.wait_for_mail("carol", 1, WAIT);
    let dave = world.b.postfix.wait_for_mail("dave", 1, WAIT);
    for copy in [&bob[1], &carol[0], &dave[0]] {
        assert_only_trace_added(&delivered_original(copy, &m2).unwrap());
    }

    // The observer saw only ciphertext, and no Bcc address in the message.
    let wire = text(&world.wire.seen());
    assert!(wire.contains("smime-type=authEnveloped-data"), "{wire}");
    for secret in [
        secret_subject,
        "Revenue is up",
        "Team plans",
        "Plans inside",
    ] {
        assert!(!wire.contains(secret), "{secret:?} crossed in plaintext");
    }
    let data_part: String = wire
        .lines()
        .filter(|l| !l.starts_with("RCPT TO") && !l.starts_with("MAIL FROM"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !data_part.contains("dave@b.test"),
        "the Bcc recipient leaked"
    );
    assert_eq!(world.a.metrics.messages(Kind::Encrypted), 2);
    assert_eq!(world.b.metrics.messages(Kind::Decrypted), 2);
}

#[test]
fn mixed_recipients_are_split_and_everyone_reads_the_mail() {
    let world = World::start(Options::default());
    let m = message(
        "Alice <alice@a.test>",
        "bob@b.test, carol@c.test, dave@a.test",
        "Lunch on Friday",
        "Shall we?\r\n",
    );
    world.a.postfix.submit(
        "alice@a.test",
        &["bob@b.test", "carol@c.test", "dave@a.test"],
        &m,
    );
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let carol = world.c.wait_for_mail("carol", 1, WAIT);
    let dave = world.a.postfix.wait_for_mail("dave", 1, WAIT);
    for copy in [&bob[0], &carol[0], &dave[0]] {
        assert_only_trace_added(&delivered_original(copy, &m).unwrap());
    }
    // Only b.test's copy crossed the observed link, and as ciphertext.
    let wire = text(&world.wire.seen());
    assert!(wire.contains("RCPT TO:<bob@b.test>"), "{wire}");
    assert!(!wire.contains("carol@c.test>\r\n") || !wire.contains("RCPT TO:<carol"));
    assert!(!wire.contains("Lunch on Friday") && !wire.contains("Shall we?"));
    assert_eq!(world.a.metrics.messages(Kind::Split), 1);
    // Exactly one copy each.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(world.b.postfix.mailbox("bob").len(), 1);
    assert_eq!(world.c.mailbox("carol").len(), 1);
    assert_eq!(world.a.postfix.mailbox("dave").len(), 1);
}
