//! The attacks of `docs/threat-model.md` at the milter protocol level: each
//! test plays the attacker against a real milter (indymilter-test as the
//! MTA, Knot, real key stores, a real SMTP sink for re-injected copies) and
//! checks that a message reaches a mailbox in plaintext only for a
//! recipient it was sealed to, that mail policy says must be encrypted
//! never leaves in clear, and that nothing is lost. The same attacks run
//! through real Postfix in `tests/e2e/tests/attacks.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::harness::*;
use ibemail_ibe::Identity;
use ibemail_kgc::store::Store;
use ibemail_message::{IbeRecipient, Limits, Recipient};
use ibemail_milter::engine::Kind;
use indymilter_test::{EomAction, Status};
use rand_core::OsRng;

/// `message` sealed, as a.test's milter would, for `recipients` at b.test:
/// the outer header and body as they leave a.test.
fn sealed_for(
    world: &World,
    message: &[u8],
    recipients: &[&str],
) -> (Vec<(String, String)>, Vec<u8>) {
    let store = Store::open(&world.b_dir).unwrap();
    let params = store.params(1).unwrap().clone();
    let recipients: Vec<IbeRecipient> = recipients
        .iter()
        .map(|r| IbeRecipient {
            identity: Identity::parse(r).unwrap(),
            generation: 1,
            params: params.clone(),
        })
        .collect();
    let dyn_recipients: Vec<&dyn Recipient> =
        recipients.iter().map(|r| r as &dyn Recipient).collect();
    let sealed = ibemail_message::seal(message, &dyn_recipients, &mut OsRng, &Limits::default())
        .unwrap()
        .to_bytes();
    from_message(&sealed)
}

/// The header as b.test's Postfix shows it to the milter: its Received on
/// top of what arrived.
fn arrived(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out = vec![(
        "Received".to_string(),
        " from mx.evil.test by mx.b.test; Mon, 23 Nov 2026 09:00:01 +0000".to_string(),
    )];
    out.extend(headers);
    out
}

fn deleted(actions: &indymilter_test::EomActions, rcpt: &str) -> bool {
    has(
        actions,
        |a| matches!(a, EomAction::DeleteRecipient { rcpt: r } if r.to_str().unwrap() == rcpt),
    )
}

fn replaced_body(actions: &indymilter_test::EomActions) -> bool {
    has(actions, |a| matches!(a, EomAction::ReplaceBody { .. }))
}

/// Attack 1: a message sealed for Bob, captured on the wire, replayed to
/// b.test's MX for Bob *and* Carol. Only Bob may read it: Carol is taken
/// off the transaction and gets the ciphertext, re-injected; the copy both
/// receive names neither.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_to_an_extra_local_recipient_gives_it_only_ciphertext() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    let receiver = Milter::start(&world.splitting_receiver_config("")).await;
    let replay = Mail {
        headers: arrived(sealed_headers.clone()),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>", "<carol@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &replay).await;
    assert_eq!(status, Status::Continue);
    // Bob's copy (the transaction) is opened; Carol is not in it any more.
    assert!(deleted(&actions, "<carol@b.test>"), "{actions:?}");
    assert!(!deleted(&actions, "<bob@b.test>"));
    let (headers, body) = apply(&replay.headers, &replay.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    let results = field_value(&headers, "Authentication-Results", 0);
    assert!(results.contains("x-ibemail=pass"), "{results}");
    for address in ["bob@b.test", "carol@b.test"] {
        assert!(!results.contains(address), "{results}");
    }
    // Carol's copy: the ciphertext as it arrived, with a result saying so.
    let copies = world.sink.received();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].recipients, ["<carol@b.test>"]);
    let copy = String::from_utf8_lossy(&copies[0].data);
    assert!(
        !copy.contains("merger"),
        "plaintext in Carol's copy:\n{copy}"
    );
    assert!(copy.contains("smime-type=authEnveloped-data"), "{copy}");
    assert!(
        copy.starts_with("Authentication-Results: mx.b.test; x-ibemail=none"),
        "{copy}"
    );

    // The same replay again (or the client's retry): no second copy.
    let (status, actions) = send(receiver.addr, &replay).await;
    assert_eq!(status, Status::Continue);
    assert!(deleted(&actions, "<carol@b.test>"));
    assert_eq!(world.sink.received().len(), 1);

    // An authenticated user of b.test replaying through submission gets
    // no further: still only ciphertext for Carol.
    let mut submitted = Mail {
        headers: arrived(sealed_headers.clone()),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>", "<carol@b.test>"]).outside()
    };
    submitted.auth = Some("mallory");
    submitted.sender = "<mallory@b.test>";
    let (status, actions) = send(receiver.addr, &submitted).await;
    assert_eq!(status, Status::Continue);
    assert!(deleted(&actions, "<carol@b.test>"));
    assert_eq!(world.sink.received().len(), 2);
    assert!(!String::from_utf8_lossy(&world.sink.received()[1].data).contains("merger"));
    assert_eq!(receiver.metrics.messages(Kind::Decrypted), 3);
    receiver.stop().await;

    // Without a re-injection target the message cannot be split: nobody
    // gets plaintext, everybody the ciphertext (Bob can still open it with
    // `ibemail-milter decrypt`); nothing is lost.
    let unsplit = Milter::start(&world.receiver_config("")).await;
    let (status, actions) = send(unsplit.addr, &replay).await;
    assert_eq!(status, Status::Continue);
    assert!(!replaced_body(&actions), "{actions:?}");
    assert!(!deleted(&actions, "<carol@b.test>"));
    unsplit.stop().await;
}

/// Attack 2: fields prepended to the outer header of a sealed message for
/// Bob. Nothing of the outside but trace fields is delivered: no second
/// From above the genuine one, no read-receipt address that would mail
/// the decrypted Subject to the attacker, no Authentication-Results
/// claiming our id, outside (in any comment style) or inside the
/// ciphertext.
#[tokio::test(flavor = "multi_thread")]
async fn fields_injected_into_the_outer_header_are_not_delivered() {
    let world = World::new();
    let mut inner = to_message(
        &[
            ("From".to_string(), " Eve <eve@evil.test>".to_string()),
            ("To".to_string(), " bob@b.test".to_string()),
            ("Subject".to_string(), " invoice".to_string()),
            (
                "Authentication-Results".to_string(),
                " mx.b.test (forged inside); ibesig=pass header.i=ceo@a.test".to_string(),
            ),
            ("Message-ID".to_string(), " <eve1@evil.test>".to_string()),
        ],
        b"Please pay.\r\n",
    );
    inner.extend_from_slice(b"");
    let (sealed_headers, sealed_body) = sealed_for(&world, &inner, &["bob@b.test"]);
    let mut outer = vec![
        ("From".to_string(), " The CEO <ceo@a.test>".to_string()),
        (
            "Disposition-Notification-To".to_string(),
            " spy@c.test".to_string(),
        ),
        (
            "Authentication-Results".to_string(),
            " mx.b.test(c); ibesig=pass header.i=ceo@a.test".to_string(),
        ),
    ];
    outer.extend(sealed_headers);
    // a.test's mail must be signed: the injected From must not get Eve's
    // message past that.
    let receiver = Milter::start(&format!(
        "{}[policy.domains.\"a.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let mail = Mail {
        headers: arrived(outer),
        body: sealed_body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, b"Please pay.\r\n");
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Authentication-Results",
            "Received",
            "From",
            "To",
            "Subject",
            "Message-ID"
        ],
        "{headers:?}"
    );
    assert_eq!(header(&headers, "From"), Some(" Eve <eve@evil.test>"));
    let results = field_value(&headers, "Authentication-Results", 0);
    assert!(
        results.starts_with(" mx.b.test; x-ibemail=pass"),
        "{results}"
    );
    assert!(!results.contains("ceo@a.test"), "{results}");
    receiver.stop().await;
}

/// Attack 3: S/MIME that is *signed*, not encrypted (Outlook's opaque
/// signing: `smime-type=signed-data`, readable by anyone) used to leave in
/// clear. Only a body that really is EnvelopedData counts as encrypted;
/// this one is sealed like any mail, also under `encrypt = "require"`.
#[tokio::test(flavor = "multi_thread")]
async fn signed_smime_is_sealed_like_any_mail() {
    use base64::Engine as _;
    use der::Encode as _;

    let world = World::new();
    // A CMS SignedData-typed ContentInfo wrapping the readable text.
    let info = cms::content_info::ContentInfo {
        content_type: der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2"),
        content: der::Any::new(
            der::Tag::Sequence,
            der::asn1::OctetString::new(b"The merger closes on Friday.".to_vec())
                .unwrap()
                .to_der()
                .unwrap(),
        )
        .unwrap(),
    };
    let body = base64::engine::general_purpose::STANDARD.encode(info.to_der().unwrap());
    for config in ["", "[policy]\nencrypt = \"require\"\n"] {
        let milter = Milter::start(&world.sender_config(config)).await;
        let mut mail = Mail::original(&["<bob@b.test>"]);
        mail.headers.push((
            "Content-Type".into(),
            " application/pkcs7-mime; smime-type=signed-data; name=smime.p7m".into(),
        ));
        mail.headers
            .push(("Content-Transfer-Encoding".into(), " base64".into()));
        mail.body = format!("{body}\r\n").into_bytes();
        let (status, actions) = send(milter.addr, &mail).await;
        assert_eq!(status, Status::Continue);
        assert!(replaced_body(&actions), "left in clear: {actions:?}");
        assert_eq!(milter.metrics.messages(Kind::Encrypted), 1);
        milter.stop().await;
    }

    // Mail the user really encrypted (here: sealed by someone already) is
    // left alone.
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    let milter = Milter::start(&world.sender_config("")).await;
    let mail = Mail {
        headers: sealed_headers,
        body: sealed_body,
        ..Mail::original(&["<bob@b.test>"])
    };
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    milter.stop().await;
}

/// Attack 4: a recipient our identity rules refuse (a quoted local part
/// with a space, a local part over 64 octets) in a domain that takes
/// encrypted mail used to be sent in clear. It is refused now; in a domain
/// without ibemail it goes as before.
#[tokio::test(flavor = "multi_thread")]
async fn addresses_that_cannot_be_identities_are_never_sent_in_clear_to_ibemail_domains() {
    let world = World::new();
    let long = format!("<{}@b.test>", "x".repeat(65));
    let opportunistic = Milter::start(&world.sender_config("")).await;
    let require =
        Milter::start(&world.sender_config("[policy.domains.\"c.test\"]\nencrypt = \"require\"\n"))
            .await;
    for rcpt in ["<\"john smith\"@b.test>", long.as_str()] {
        // b.test publishes parameters: refused, not sent in clear.
        let (status, actions) = send(opportunistic.addr, &Mail::original(&[rcpt])).await;
        assert!(
            matches!(&status, Status::Reject { .. }),
            "{rcpt}: {status:?}"
        );
        assert!(actions.actions.is_empty());
    }
    // c.test publishes nothing: opportunistic mail goes as it is...
    let (status, actions) = send(
        opportunistic.addr,
        &Mail::original(&["<\"john smith\"@c.test>"]),
    )
    .await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    // ...but where c.test is `require`, it is refused too.
    let (status, _) = send(require.addr, &Mail::original(&["<\"john smith\"@c.test>"])).await;
    assert!(matches!(&status, Status::Reject { .. }), "{status:?}");
    // With another, valid recipient the whole message is refused, never
    // split into a plaintext copy.
    let (status, _) = send(
        opportunistic.addr,
        &Mail::original(&["<bob@b.test>", "<\"john smith\"@b.test>"]),
    )
    .await;
    assert!(matches!(&status, Status::Reject { .. }), "{status:?}");
    assert!(world.sink.received().is_empty());
    opportunistic.stop().await;
    require.stop().await;
}

/// Attack 5: Unicode case mapping merged distinct mailboxes (U+212A KELVIN
/// SIGN lower-cases to `k`), so mail sealed for kelvin@b.test opened for
/// the look-alike mailbox. Only ASCII case is folded now.
#[tokio::test(flavor = "multi_thread")]
async fn a_look_alike_mailbox_does_not_open_mail_sealed_for_another() {
    let world = World::new();
    let (headers, body) = sealed_for(
        &world,
        b"From: a@a.test\r\nSubject: for kelvin\r\n\r\nsecret\r\n",
        &["kelvin@b.test"],
    );
    let receiver = Milter::start(&world.receiver_config("")).await;
    let look_alike = Mail {
        headers: arrived(headers.clone()),
        body: body.clone(),
        ..Mail::original(&["<\u{212A}elvin@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &look_alike).await;
    assert_eq!(status, Status::Continue);
    assert!(!replaced_body(&actions), "opened for the look-alike");
    // The genuine mailbox, in any ASCII case, opens it.
    let genuine = Mail {
        headers: arrived(headers),
        body,
        ..Mail::original(&["<KELVIN@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &genuine).await;
    assert_eq!(status, Status::Continue);
    assert!(replaced_body(&actions));
    receiver.stop().await;
}

/// Item 7: mail submitted on the host (sendmail, pickup), which Postfix
/// presents to `non_smtpd_milters` as 127.0.0.1 port 0, is ours whatever
/// `internal_networks` says: it is sealed.
#[tokio::test(flavor = "multi_thread")]
async fn locally_submitted_mail_is_outbound_whatever_internal_networks_says() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("internal_networks = []")).await;
    let mut local = Mail::original(&["<bob@b.test>"]);
    local.client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    local.client_port = 0;
    let (status, actions) = send(milter.addr, &local).await;
    assert_eq!(status, Status::Continue);
    assert!(replaced_body(&actions), "sent in clear: {actions:?}");
    // An SMTP client on loopback (a real port) is not internal here.
    let mut smtp = Mail::original(&["<bob@b.test>"]);
    smtp.client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (status, actions) = send(milter.addr, &smtp).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    milter.stop().await;
}
