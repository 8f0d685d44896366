//! The attacks of `docs/threat-model.md` through real Postfix: swaks and
//! sendmail in, Maildir out, an observer (or a man in the middle) on the
//! wire between a.test and b.test.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ibemail_e2e::fault::FaultMilter;
use ibemail_e2e::mail::{field, raw_smtp, text};
use ibemail_e2e::{Options, World, delivered_original, message};

const WAIT: Duration = Duration::from_secs(60);

/// An address of the world's block that is in nobody's networks: a client
/// out on the Internet.
fn outside(world: &World) -> IpAddr {
    match world.b.ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 66))
        }
        v6 => v6,
    }
}

/// What a.test sent to b.test, taken by the man in the middle.
fn intercepted(world: &World) -> Vec<u8> {
    let interceptor = world.interceptor.as_ref().unwrap();
    let deadline = Instant::now() + WAIT;
    while interceptor.received().is_empty() {
        assert!(Instant::now() < deadline, "nothing intercepted");
        std::thread::sleep(Duration::from_millis(100));
    }
    interceptor.received().remove(0).data
}

/// Mail sealed for Bob, captured on the wire and replayed to b.test's MX:
/// (1) with Carol added as a recipient — as herself or as a source route,
/// which Postfix would not let a milter delete from the transaction;
/// (2) to Bob with a forged From, a read-receipt address and forged
/// results prepended; (3) to Bob with the attacker's envelope sender and a
/// success notice requested. Carol never reads Bob's mail, the prepended
/// fields are not delivered, and no notice carries the decrypted header to
/// the attacker.
#[test]
fn replayed_and_doctored_ciphertext_is_read_only_by_its_recipient() {
    let world = World::start(Options {
        intercept_b: true,
        ..Options::default()
    });
    let secret = "The safe code is 4711.";
    let subject = "For Bob only";
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        subject,
        &format!("{secret}\r\n"),
    );
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let stolen = intercepted(&world);
    assert!(!text(&stolen).contains(secret));
    let mx = world.b.postfix.smtp();

    // (1) Replayed to Bob and Carol from outside: nobody gets plaintext.
    for carol in [
        "RCPT TO:<carol@b.test>",
        "RCPT TO:<@evil.test:carol@b.test>",
    ] {
        let transcript = raw_smtp(
            &world.rt,
            outside(&world),
            mx,
            &[
                b"EHLO evil.test",
                b"MAIL FROM:<eve@evil.test>",
                b"RCPT TO:<bob@b.test>",
                carol.as_bytes(),
            ],
            &stolen,
        );
        assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    }
    let carol = world.b.postfix.wait_for_mail("carol", 2, WAIT);
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    for copy in carol.iter().chain(&bob) {
        let copy = text(copy);
        assert!(!copy.contains(secret), "plaintext of a replay:\n{copy}");
        assert!(copy.contains("smime-type=authEnveloped-data"), "{copy}");
    }

    // (2) Replayed to Bob with fields prepended.
    let mut doctored = b"Authentication-Results: mx.b.test; ibesig=pass header.i=ceo@a.test\r\n\
        From: The CEO <ceo@a.test>\r\nDisposition-Notification-To: spy@c.test\r\n"
        .to_vec();
    doctored.extend_from_slice(&stolen);
    let (ok, transcript) =
        world
            .b
            .postfix
            .swaks_from(outside(&world), "eve@evil.test", &["bob@b.test"], &doctored);
    assert!(ok, "{transcript}");
    let bob = world.b.postfix.wait_for_mail("bob", 3, WAIT);
    let copy = text(&bob[2]);
    delivered_original(&bob[2], &m).unwrap();
    assert_eq!(field(&copy, "From"), ["Alice <alice@a.test>"], "{copy}");
    assert!(
        field(&copy, "Disposition-Notification-To").is_empty(),
        "{copy}"
    );
    let results = field(&copy, "Authentication-Results").join("\n");
    assert!(results.contains("x-ibemail=pass"), "{results}");
    assert!(
        !results.contains("ceo@a.test"),
        "forged results delivered: {results}"
    );
    assert!(!results.contains("bob@b.test"), "{results}");

    // (3) Replayed to Bob by dave@c.test, asking for a success notice with
    // the full message: the notice goes to b.test's postmaster, not to him.
    let transcript = raw_smtp(
        &world.rt,
        outside(&world),
        mx,
        &[
            b"EHLO evil.test",
            b"MAIL FROM:<dave@c.test> RET=FULL",
            b"RCPT TO:<bob@b.test> NOTIFY=SUCCESS",
        ],
        &stolen,
    );
    assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    let bob = world.b.postfix.wait_for_mail("bob", 4, WAIT);
    assert!(text(&bob[3]).contains(secret));
    std::thread::sleep(Duration::from_secs(3));
    for notice in world.c.mailbox("dave") {
        let notice = text(&notice);
        assert!(
            !notice.contains(subject) && !notice.contains(secret),
            "a notice took the decrypted message to the replayer:\n{notice}"
        );
    }
    assert_eq!(world.b.postfix.mailbox("carol").len(), 2);
}

/// S/MIME *signed* mail (opaque, `smime-type=signed-data`: readable by
/// anyone) is sealed like any mail, not mistaken for encrypted mail.
fn opaque_signed(secret: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (key, cert) = (tmp.path().join("key.pem"), tmp.path().join("cert.pem"));
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=alice@a.test",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let content = tmp.path().join("content.txt");
    std::fs::write(
        &content,
        format!("Content-Type: text/plain\r\n\r\n{secret}\r\n"),
    )
    .unwrap();
    let smime = openssl(&[
        "cms",
        "-sign",
        "-nodetach",
        "-in",
        content.to_str().unwrap(),
        "-signer",
        cert.to_str().unwrap(),
        "-inkey",
        key.to_str().unwrap(),
    ]);
    let mut m = message("Alice <alice@a.test>", "Bob <bob@b.test>", "Signed", "");
    // Keep the test message's header, up to its own MIME fields.
    let header_end = text(&m).find("MIME-Version:").unwrap();
    m.truncate(header_end);
    m.extend_from_slice(&smime);
    String::from_utf8_lossy(&m)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

/// A transaction that fails after ibemail re-injected the plaintext copy
/// for the recipients without ibemail (a milter after ibemail refuses it),
/// then is retried by the client: those recipients get the mail once, not
/// twice. And S/MIME-signed mail leaves sealed.
#[test]
fn a_retried_split_delivers_once_and_signed_smime_is_sealed() {
    let fault = FaultMilter::start("127.0.0.1".parse().unwrap(), 1);
    let world = World::start(Options {
        a_milters_after: vec![fault.milter()],
        ..Options::default()
    });
    let m = message(
        "Alice <alice@a.test>",
        "bob@b.test, carol@c.test",
        "Lunch on Friday",
        "Shall we?\r\n",
    );
    let (ok, transcript) =
        world
            .a
            .postfix
            .swaks("alice@a.test", &["bob@b.test", "carol@c.test"], &m);
    assert!(
        !ok,
        "the fault milter must fail the first attempt:\n{transcript}"
    );
    assert!(
        transcript.contains("451") || transcript.contains(" 4"),
        "{transcript}"
    );
    assert_eq!(fault.remaining(), 0);
    // The client tries again with the same message.
    world
        .a
        .postfix
        .submit("alice@a.test", &["bob@b.test", "carol@c.test"], &m);
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    delivered_original(&bob[0], &m).unwrap();
    let carol = world.c.wait_for_mail("carol", 1, WAIT);
    delivered_original(&carol[0], &m).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        world.c.mailbox("carol").len(),
        1,
        "a duplicate plaintext copy"
    );
    assert_eq!(world.b.postfix.mailbox("bob").len(), 1);

    let secret = "Signed, not sealed: 4711";
    let signed = opaque_signed(secret);
    let signed_body_line = text(&signed)
        .lines()
        .rev()
        .find(|l| l.len() > 60)
        .unwrap()
        .to_string();
    world
        .a
        .postfix
        .submit("alice@a.test", &["bob@b.test"], &signed);
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    delivered_original(&bob[1], &signed).unwrap();
    let wire = text(&world.wire.seen());
    assert!(
        !wire.contains(&signed_body_line),
        "the signed S/MIME crossed the wire as it was"
    );
    assert_eq!(
        wire.matches("smime-type=authEnveloped-data").count(),
        2,
        "{wire}"
    );
}

/// Mail submitted on the host with Postfix's sendmail(1) is outbound even
/// where loopback is not an internal network: it leaves sealed.
#[test]
fn mail_submitted_with_sendmail_leaves_sealed() {
    let world = World::start(Options {
        a_loopback_not_internal: true,
        ..Options::default()
    });
    let secret = "Cron says: disk 97% full";
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "Local job report",
        &format!("{secret}\r\n"),
    );
    world
        .a
        .postfix
        .sendmail("alice@a.test", &["bob@b.test"], &m);
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    let copy = text(&bob[0]);
    assert!(copy.contains(secret), "{copy}");
    assert!(copy.contains("x-ibemail=pass"), "{copy}");
    let wire = text(&world.wire.seen());
    assert!(wire.contains("smime-type=authEnveloped-data"), "{wire}");
    assert!(!wire.contains(secret) && !wire.contains("Local job report"));
}

/// A process on a.test's host talks to the re-injection listener directly
/// (it relays anywhere): the milter watches that listener too, so mail for
/// b.test still leaves sealed.
#[test]
fn the_reinjection_listener_is_no_way_around_the_milter() {
    let world = World::start(Options {
        a_milter: "[policy.domains.\"b.test\"]\nencrypt = \"require\"\n".into(),
        ..Options::default()
    });
    let secret = "Quarterly numbers: 4711";
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "numbers",
        &format!("{secret}\r\n"),
    );
    let reinject = std::net::SocketAddr::new(world.a.ip, ibemail_e2e::REINJECT_PORT);
    let transcript = raw_smtp(
        &world.rt,
        "127.0.0.1".parse().unwrap(),
        reinject,
        &[
            b"EHLO localhost",
            b"MAIL FROM:<alice@a.test>",
            b"RCPT TO:<bob@b.test>",
        ],
        &m,
    );
    assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    assert!(text(&bob[0]).contains("x-ibemail=pass"));
    let wire = text(&world.wire.seen());
    assert!(!wire.contains(secret), "plaintext crossed the wire");
    assert!(wire.contains("smime-type=authEnveloped-data"));
}

/// A recipient written with needless quotes (`"bob"@b.test`) or a source
/// route: Postfix delivers to `bob@b.test`, so that is the identity sealed
/// to, and Bob reads his mail.
#[test]
fn recipients_are_sealed_to_the_address_postfix_delivers_to() {
    let world = World::start(Options::default());
    for (n, rcpt) in [
        "RCPT TO:<\"bob\"@b.test>",
        "RCPT TO:<@relay.test:bob@b.test>",
    ]
    .into_iter()
    .enumerate()
    {
        let secret = format!("Lunch at noon, take {n}");
        let m = message(
            "Alice <alice@a.test>",
            "Bob <bob@b.test>",
            "lunch",
            &format!("{secret}\r\n"),
        );
        let transcript = raw_smtp(
            &world.rt,
            world.a.ip,
            world.a.postfix.smtp(),
            &[
                b"EHLO client.a.test",
                b"MAIL FROM:<alice@a.test>",
                rcpt.as_bytes(),
            ],
            &m,
        );
        assert!(transcript.contains("250 2.0.0 Ok: queued"), "{transcript}");
        let bob = world.b.postfix.wait_for_mail("bob", n + 1, WAIT);
        let copy = text(&bob[n]);
        assert!(
            copy.contains(&secret),
            "{rcpt}: Bob cannot read his mail:\n{copy}"
        );
    }
    assert!(!text(&world.wire.seen()).contains("Lunch at noon"));
}
