//! End to end on real Postfix: a.test and b.test with ibemail, c.test
//! without; real DNS (Knot, signed, records published by RFC 2136), KGC
//! daemons, milters, swaks, Maildir delivery, and an observer on the wire.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use ibemail_e2e::mail::{assert_only_added, field, text};
use ibemail_e2e::{Options, World, delivered_original, message};
use ibemail_milter::engine::Kind;

const WAIT: Duration = Duration::from_secs(60);

/// Delivered fields on top of the original may only be these.
fn assert_only_trace_added(added: &[String]) {
    assert_only_added(added, &[]);
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

#[test]
fn rotation_while_mail_waits_in_the_queue_then_retirement_quarantines_not_loses() {
    let mut world = World::start(Options::default());
    // b.test is down; a.test seals under generation 1 and queues.
    world.b.postfix.stop();
    let m1 = message(
        "alice@a.test",
        "bob@b.test",
        "Sealed under gen 1",
        "Queued while b.test was down.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(world.a.postfix.queue().len(), 1, "queued at a.test");
    // b.test rotates (30 days overlap) and comes back.
    world.rotate("b.test", 30 * 86_400);
    world.b.postfix.start_again();
    world.a.postfix.flush();
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let copy = text(&bob[0]);
    assert!(copy.contains("x-ibemail.generation=1"), "{copy}");
    delivered_original(&bob[0], &m1).unwrap();

    // New mail uses generation 2 (after the 2 s TTL of the records).
    std::thread::sleep(Duration::from_secs(3));
    let m2 = message(
        "alice@a.test",
        "bob@b.test",
        "Sealed under gen 2",
        "Fresh.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m2);
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    assert!(text(&bob[1]).contains("x-ibemail.generation=2"));

    // Mail sealed under a generation that is retired before it arrives:
    // quarantined at b.test with a reason, never dropped or delivered as garbage.
    world.b.postfix.stop();
    world.rotate("b.test", 1);
    std::thread::sleep(Duration::from_secs(3));
    let m3 = message(
        "alice@a.test",
        "bob@b.test",
        "Sealed under gen 3",
        "Too late.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m3);
    std::thread::sleep(Duration::from_secs(1));
    world.rotate("b.test", 1);
    world.retire("b.test", 3);
    world.b.postfix.start_again();
    world.a.postfix.flush();
    world.b.postfix.wait_for_held(1, WAIT);
    assert_eq!(
        world.b.postfix.mailbox("bob").len(),
        2,
        "nothing delivered as garbage"
    );
    assert!(
        world
            .b
            .postfix
            .log()
            .contains("milter triggers HOLD action")
    );
}

#[test]
fn kgc_down_defers_until_it_returns_and_dns_down_with_require_never_sends_plaintext() {
    let mut world = World::start(Options {
        a_milter: "[policy.domains.\"b.test\"]\nencrypt = \"require\"\ndnssec = \"require\"\n"
            .into(),
        ..Options::default()
    });
    // b.test's KGC is down: b.test tempfails, a.test keeps the mail.
    world.stop_kgc("b.test");
    let m = message(
        "alice@a.test",
        "bob@b.test",
        "While the KGC was down",
        "Still arrives.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    std::thread::sleep(Duration::from_secs(3));
    assert!(world.b.postfix.mailbox("bob").is_empty());
    assert_eq!(world.a.postfix.queue().len(), 1, "deferred at a.test");
    // The reason (with the KGC socket's path) is in b.test's milter log;
    // a.test, an outside client, was only told to try again.
    assert!(
        world.milter_log("b.test").contains("KGC unavailable"),
        "{}",
        world.milter_log("b.test")
    );
    let b_log = world.b.postfix.log();
    assert!(b_log.contains("try again later"), "{b_log}");
    assert!(!b_log.contains("kgc.sock"), "{b_log}");
    world.start_kgc("b.test");
    world.a.postfix.flush();
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    delivered_original(&bob[0], &m).unwrap();

    // a.test's DNS is down and b.test requires encryption: the submission
    // is refused with 4xx; nothing leaves in plaintext.
    std::thread::sleep(Duration::from_secs(3)); // the cached answer expires
    world.knot.pause();
    let before = world.wire.seen().len();
    let m2 = message(
        "alice@a.test",
        "bob@b.test",
        "During the DNS outage",
        "Secret.\r\n",
    );
    let (ok, transcript) = world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m2);
    world.knot.resume();
    assert!(!ok, "{transcript}");
    assert!(transcript.contains("451"), "{transcript}");
    assert!(!text(&world.wire.seen()[before..]).contains("Secret."));
    assert_eq!(world.a.postfix.queue().len(), 0);
}

#[test]
fn forged_or_corrupted_ciphertext_is_quarantined_with_a_reason() {
    use ibemail_message::{IbeRecipient, Limits, Recipient, seal};
    let world = World::start(Options::default());
    let store = ibemail_kgc::store::Store::open(&world.b.store_dir).unwrap();
    let record = store.records()[0].clone();
    let bob = IbeRecipient {
        identity: ibemail_ibe::Identity::parse("bob@b.test").unwrap(),
        generation: record.generation,
        params: record.params,
    };
    let original = message("mallory@evil.test", "bob@b.test", "Forged", "Garbage?\r\n");
    let sealed = seal(
        &original,
        &[&bob as &dyn Recipient],
        &mut rand_core::OsRng,
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    // Flip a byte deep inside the base64 body.
    let mut corrupted = sealed.clone();
    let at = corrupted.len() - 200;
    corrupted[at] = if corrupted[at] == b'A' { b'B' } else { b'A' };
    // Sent straight to b.test by an outside client.
    let out = std::process::Command::new("swaks")
        .args(["--server", &world.b.postfix.smtp().to_string()])
        .args(["--from", "mallory@evil.test", "--to", "bob@b.test"])
        .args(["--data", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(corrupted.strip_suffix(b"\r\n").unwrap_or(&corrupted))?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stdout));
    world.b.postfix.wait_for_held(1, WAIT);
    assert!(world.b.postfix.mailbox("bob").is_empty());
    assert!(
        world
            .b
            .postfix
            .log()
            .contains("milter triggers HOLD action"),
        "{}",
        world.b.postfix.log_tail(20)
    );
    assert_eq!(world.b.metrics.messages(Kind::Undecryptable), 1);
}

#[test]
fn a_20_mib_attachment_arrives_intact() {
    let world = World::start(Options::default());
    let mut body = String::from(
        "This is a multi-part message in MIME format.\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    );
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while body.len() < 20 << 20 {
        let line: String = (0..76)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % 64) as usize] as char
            })
            .collect();
        body.push_str(&line);
        body.push_str("\r\n");
    }
    body.push_str("--b1--\r\n");
    let m = String::from_utf8(message("alice@a.test", "bob@b.test", "Big file", &body))
        .unwrap()
        .replace(
            "Content-Type: text/plain; charset=utf-8",
            "Content-Type: multipart/mixed; boundary=\"b1\"",
        )
        .into_bytes();
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let bob = world
        .b
        .postfix
        .wait_for_mail("bob", 1, Duration::from_secs(180));
    delivered_original(&bob[0], &m).unwrap();
    assert!(world.wire.seen().len() > 20 << 20);
}

#[test]
fn a_thousand_messages_with_smtp_source_are_each_delivered_once_and_decrypted() {
    let world = World::start(Options::default());
    let count = 1000;
    let out = std::process::Command::new("smtp-source")
        .args(["-s", "10", "-m", &count.to_string(), "-l", "2048"])
        .args(["-f", "alice@a.test", "-t", "bob@b.test"])
        .args(["-S", "load test"])
        .arg(world.a.postfix.smtp().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bob = world
        .b
        .postfix
        .wait_for_mail("bob", count, Duration::from_secs(600));
    assert_eq!(bob.len(), count);
    for copy in &bob {
        assert!(text(copy).contains("x-ibemail=pass"));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(world.b.postfix.mailbox("bob").len(), count, "no duplicates");
    assert_eq!(world.a.metrics.messages(Kind::Encrypted), count as u64);
    assert_eq!(world.b.metrics.messages(Kind::Decrypted), count as u64);
}

#[test]
fn opendkim_signs_the_ciphertext_at_a_and_verifies_it_at_b_before_decryption() {
    let world = World::start(Options {
        dkim: true,
        a_milter: SIGN.into(),
        ..Options::default()
    });
    let m = message(
        "alice@a.test",
        "bob@b.test",
        "Signed and sealed",
        "DKIM covers the ciphertext.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let copy = text(&bob[0]);
    let wire = text(&world.wire.seen());
    assert!(
        wire.contains("DKIM-Signature:"),
        "a.test signed what it sent"
    );
    let header = copy.split("\n\n").next().unwrap();
    assert!(
        header.contains("Authentication-Results: dkim.mx.b.test;\n\tdkim=pass"),
        "b.test's OpenDKIM verified the ciphertext: {copy}"
    );
    let results = field(&copy, "Authentication-Results");
    assert!(
        results.iter().any(|r| r.contains("x-ibemail=pass")),
        "{copy}"
    );
    assert!(
        !header.contains("DKIM-Signature:"),
        "the signature of the ciphertext cannot verify on the plaintext: {copy}"
    );
    // ibemail's own signatures (inside and outside) coexist with DKIM.
    assert!(results.iter().any(|r| r.contains("ibesig=pass")), "{copy}");
    delivered_original(&bob[0], &m).unwrap();
}

const SIGN: &str = "[signing]\nsign = \"always\"";

#[test]
fn signed_and_encrypted_mail_passes_and_mail_to_other_domains_only_gains_a_field() {
    let world = World::start(Options {
        a_milter: SIGN.into(),
        b_milter: "[policy.domains.\"a.test\"]\nsignature = \"require\"".into(),
        ..Options::default()
    });
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "Signed, sealed, delivered",
        "Only Alice could have sent this.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let copy = text(&bob[0]);
    let results = field(&copy, "Authentication-Results");
    assert!(
        results.iter().any(|r| r.contains(
            "ibesig=pass (inside and outside the encryption, generation 1) header.i=alice@a.test"
        )),
        "{copy}"
    );
    // The original, with the inner signature on top; the outer one (over
    // the ciphertext) is not delivered.
    assert_only_added(
        &delivered_original(&bob[0], &m).unwrap(),
        &["IBE-Signature"],
    );
    assert_eq!(field(&copy, "IBE-Signature").len(), 1, "{copy}");
    let wire = text(&world.wire.seen());
    assert!(wire.contains("IBE-Signature:"), "the outside is signed too");
    assert!(!wire.contains("Only Alice"), "{wire}");

    // To c.test (no ibemail): plaintext, signed, nothing else changed.
    let m2 = message(
        "Alice <alice@a.test>",
        "Carol <carol@c.test>",
        "Plain but signed",
        "Hello Carol.\r\n",
    );
    world
        .a
        .postfix
        .submit("alice@a.test", &["carol@c.test"], &m2);
    let carol = world.c.wait_for_mail("carol", 1, WAIT);
    assert_only_added(
        &delivered_original(&carol[0], &m2).unwrap(),
        &["IBE-Signature"],
    );
    assert!(text(&carol[0]).contains("i=alice@a.test"));
    assert_eq!(world.b.metrics.messages(Kind::Decrypted), 1);
    assert_eq!(world.b.metrics.messages(Kind::Unsigned), 0);
}

#[test]
fn a_message_re_encrypted_by_a_man_in_the_middle_fails_the_signature() {
    use ibemail_ibe::Identity;
    use ibemail_kgc::store::Store;
    use ibemail_message::header::HeaderSection;
    use ibemail_message::{CapsuleError, IbeRecipient, Limits, Recipient};
    use rand_core::OsRng;

    let world = World::start(Options {
        a_milter: SIGN.into(),
        intercept_b: true,
        ..Options::default()
    });
    // The attacker replaces b.test's parameters as a.test sees them, and
    // sits between a.test and b.test.
    let evil_dir = tempfile::tempdir().unwrap();
    let evil = Store::setup(
        &evil_dir.path().join("kgc"),
        "b.test",
        ibemail_e2e::now(),
        None,
        &mut OsRng,
    )
    .unwrap();
    world.publish_records("b.test", &evil.records());
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "For Bob only",
        "The safe code is 4711.\r\n",
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let interceptor = world.interceptor.as_ref().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while interceptor.received().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing intercepted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stolen = interceptor.received().remove(0).data;

    // He reads it...
    let bob = Identity::parse("bob@b.test").unwrap();
    let opened = ibemail_message::open(
        &stolen,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, generation, capsule| {
            evil.extract(id, generation)
                .map_err(|e| CapsuleError::Refused(e.to_string()))?
                .decapsulate(evil.params(generation).unwrap(), capsule)
                .map_err(|_| CapsuleError::Rejected)
        },
    )
    .unwrap();
    assert!(text(&opened.message).contains("4711"));
    // ...and re-encrypts it to b.test's real parameters, keeping every
    // header field, the outer signature included.
    let real = Store::open(&world.b.store_dir).unwrap().records().remove(0);
    let recipient = IbeRecipient {
        identity: bob,
        generation: real.generation,
        params: real.params,
    };
    let resealed = ibemail_message::seal(
        &opened.message,
        &[&recipient as &dyn Recipient],
        &mut OsRng,
        &Limits::default(),
    )
    .unwrap();
    let section = HeaderSection::parse(&stolen);
    let outer_signature = section
        .fields
        .iter()
        .find(|f| f.is("IBE-Signature"))
        .expect("a.test signed the outside")
        .raw;
    let mut forged = outer_signature.to_vec();
    forged.extend_from_slice(&resealed.to_bytes());
    world
        .b
        .postfix
        .submit("alice@a.test", &["bob@b.test"], &forged);

    let delivered = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let copy = text(&delivered[0]);
    let results = field(&copy, "Authentication-Results");
    assert!(
        results
            .iter()
            .any(|r| r.contains("x-ibemail=pass") && r.contains("ibesig=fail")),
        "b.test must see the substitution: {copy}"
    );
    assert!(copy.contains("body hash mismatch"), "{copy}");
}
