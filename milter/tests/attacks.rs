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

/// The header as b.test's Postfix shows it to the milter: exactly what
/// arrived (Postfix hides its own Received field from milters).
fn arrived(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
}

fn replaced_body(actions: &indymilter_test::EomActions) -> bool {
    has(actions, |a| matches!(a, EomAction::ReplaceBody { .. }))
}

/// Attack 1: a message sealed for Bob, captured on the wire, replayed to
/// b.test's MX for Bob *and* Carol — Carol written as herself, as a source
/// route, or with an 8-bit local part (forms Postfix would not let the
/// milter delete from the transaction). Nobody gets the plaintext from
/// such a transaction: both keep the ciphertext as it arrived.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_to_an_extra_local_recipient_opens_for_nobody() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    let receiver = Milter::start(&world.splitting_receiver_config("")).await;
    let carols = [
        "<carol@b.test>",
        "<@evil.test:carol@b.test>",
        "<carol+\u{FFFD}@b.test>",
    ];
    for carol in carols {
        let mut replay = Mail {
            headers: arrived(sealed_headers.clone()),
            body: sealed_body.clone(),
            ..Mail::original(&["<bob@b.test>", carol]).outside()
        };
        replay.sender = "<eve@evil.test>";
        let (status, actions) = send(receiver.addr, &replay).await;
        assert_eq!(status, Status::Continue);
        assert!(!replaced_body(&actions), "{carol}: opened: {actions:?}");
        let (headers, body) = apply(&replay.headers, &replay.body, &actions);
        assert_eq!(body, sealed_body, "{carol}");
        assert!(!headers.iter().any(|(_, v)| v.contains("merger")));
        assert!(world.sink.received().is_empty(), "nothing re-injected");
    }
    // An authenticated user of b.test replaying through submission gets no
    // further.
    let mut submitted = Mail {
        headers: arrived(sealed_headers.clone()),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>", "<carol@b.test>"]).outside()
    };
    submitted.auth = Some("mallory");
    submitted.sender = "<mallory@b.test>";
    let (status, actions) = send(receiver.addr, &submitted).await;
    assert_eq!(status, Status::Continue);
    assert!(!replaced_body(&actions));

    // The replay to Bob alone opens for Bob (it was sealed to him), under
    // the postmaster's envelope sender: delivery notices of the plaintext
    // (a NOTIFY=SUCCESS the replayer asked for, a bounce he provokes) go
    // to b.test's postmaster, not to the replayer.
    let mut to_bob = Mail {
        headers: arrived(sealed_headers),
        body: sealed_body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    to_bob.sender = "<eve@evil.test>";
    let (status, actions) = send(receiver.addr, &to_bob).await;
    assert_eq!(status, Status::Continue);
    assert!(replaced_body(&actions));
    assert!(
        has(&actions, |a| matches!(
            a,
            EomAction::ChangeSender { mail, .. } if mail.to_str().unwrap() == "<postmaster@b.test>"
        )),
        "{actions:?}"
    );
    let (headers, _) = apply(&to_bob.headers, &to_bob.body, &actions);
    let results = field_value(&headers, "Authentication-Results", 0);
    assert!(results.contains("x-ibemail=pass"), "{results}");
    assert!(!results.contains("bob@b.test"), "{results}");
    receiver.stop().await;
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
        (
            "Authentication-Results".to_string(),
            " mx.b.test; ibesig=pass header.i=ceo@a.test".to_string(),
        ),
        ("From".to_string(), " The CEO <ceo@a.test>".to_string()),
        (
            "Disposition-Notification-To".to_string(),
            " spy@c.test".to_string(),
        ),
        (
            "Authentication-Results".to_string(),
            " mx.b.test(c); ibesig=pass header.i=ceo@a.test".to_string(),
        ),
        (
            "Received".to_string(),
            " from mx.evil.test by mx.b.test".to_string(),
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
    assert_eq!(
        header(&headers, "Received"),
        Some(" from mx.evil.test by mx.b.test"),
        "trace fields stay"
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

/// Results claiming our authserv-id are forged whoever sends them: also
/// from an internal or authenticated sender, and wherever they sit.
#[tokio::test(flavor = "multi_thread")]
async fn our_results_are_removed_from_every_sender_and_position() {
    let world = World::new();
    let receiver = Milter::start(&world.receiver_config("")).await;
    for (outside, auth) in [(true, None), (false, None), (true, Some("mallory"))] {
        let mut mail = Mail::original(&["<bob@b.test>"]);
        if outside {
            mail = mail.outside();
        }
        mail.auth = auth;
        mail.headers.insert(
            0,
            (
                "Authentication-Results".into(),
                " mx.b.test; ibesig=pass header.i=ceo@a.test".into(),
            ),
        );
        mail.headers.push((
            "Authentication-Results".into(),
            " \"MX.B.TEST\" (c); dkim=pass".into(),
        ));
        let (status, actions) = send(receiver.addr, &mail).await;
        assert_eq!(status, Status::Continue);
        let (headers, _) = apply(&mail.headers, &mail.body, &actions);
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "Authentication-Results" && v.contains("pass")),
            "outside {outside}, auth {auth:?}: {headers:?}"
        );
    }
    receiver.stop().await;
}

/// Anything on the re-injection listener (recognised by its
/// `{daemon_name}`) that is not a copy this milter re-injected — a local
/// process using the listener to skip the milter — is handled as mail
/// submitted on this host: sealed for an ibemail domain.
#[tokio::test(flavor = "multi_thread")]
async fn the_reinjection_listener_is_no_way_around_the_milter() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("internal_networks = []")).await;
    let mut mail = Mail::original(&["<bob@b.test>"]);
    mail.daemon_name = Some("ibemail-reinject");
    mail.headers
        .insert(0, ("IBE-Reinjected".into(), " 0123456789abcdef".into()));
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert!(replaced_body(&actions), "sent in clear: {actions:?}");
    let (headers, _) = apply(&mail.headers, &mail.body, &actions);
    assert!(header(&headers, "IBE-Reinjected").is_none());
    milter.stop().await;
}
