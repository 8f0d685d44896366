//! The milter over the milter protocol (indymilter-test as the MTA) against
//! a real `run` on 127.0.0.1:0, with a real DNS server (Knot), real key
//! stores and a real SMTP listener as the re-injection target
//! (`common::harness`).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::harness::*;
use common::signed_by;
use ibemail_kgc::store::Store;
use ibemail_milter::engine::Kind;
use ibemail_test_support::silent::Silent;
use indymilter_test::{EomAction, Status};
use proptest::prelude::*;
use rand_core::OsRng;
#[tokio::test(flavor = "multi_thread")]
async fn outbound_is_sealed_and_inbound_opened_back_to_the_original() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    assert_eq!(header(&sealed_headers, "Subject"), Some(" [...]"));
    assert!(
        header(&sealed_headers, "Content-Type")
            .unwrap()
            .contains("authEnveloped-data")
    );
    let sealed_text = String::from_utf8_lossy(&sealed_body);
    assert!(!sealed_text.contains("merger"));
    assert!(!sealed_headers.iter().any(|(_, v)| v.contains("merger")));

    // At b.test: a new Received on top, as an MX adds.
    let receiver = Milter::start(&world.receiver_config("")).await;
    let mut headers = vec![(
        "Received".to_string(),
        " from mx.a.test by mx.b.test; Mon, 23 Nov 2026 09:00:01 +0000".to_string(),
    )];
    headers.extend(sealed_headers);
    // Edited in place for a Postfix that counts fields as it shows them;
    // all deleted and re-added for any other MTA: the same result.
    let mut edits = Vec::new();
    for mta_version in [Some("Postfix 3.7.11"), Some("Postfix 3.6.4"), None] {
        let mail = Mail {
            headers: headers.clone(),
            body: sealed_body.clone(),
            mta_version,
            ..Mail::original(&["<bob@b.test>"]).outside()
        };
        edits.push(opened_back_to_the_original(&receiver, &mail).await);
    }
    assert!(
        edits[0] < edits[1] && edits[1] == edits[2],
        "header edits in place, counted wrongly, unknown: {edits:?}"
    );
    assert_eq!(receiver.metrics.messages(Kind::Decrypted), 3);
    receiver.stop().await;
}

/// Sends the sealed `mail` through `receiver` and checks that it opens
/// back to the original; the number of header edits it took.
async fn opened_back_to_the_original(receiver: &Milter, mail: &Mail<'_>) -> usize {
    let (status, actions) = send(receiver.addr, mail).await;
    assert_eq!(status, Status::Continue);
    let (opened, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    let (first, rest) = opened.split_first().unwrap();
    assert_eq!(first.0, "Authentication-Results");
    assert!(
        first.1.starts_with(" mx.b.test; x-ibemail=pass"),
        "{}",
        first.1
    );
    // Unsigned, and said so: a filter can tell it from "not checked".
    assert!(first.1.contains("ibesig=none"), "{}", first.1);
    // Every recipient of this copy sees the same field: it names none of
    // them (one may be another's Bcc).
    assert!(!first.1.contains("bob@b.test"), "{}", first.1);
    assert_eq!(
        rest[0], mail.headers[0],
        "the transit Received stays on top"
    );
    let original: Vec<(String, String)> = ORIGINAL_HEADERS
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(&rest[1..], &original[..], "inner headers restored exactly");
    actions
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                EomAction::AddHeader { .. }
                    | EomAction::InsertHeader { .. }
                    | EomAction::ChangeHeader { .. }
                    | EomAction::DeleteHeader { .. }
            )
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_inside_and_outside_and_every_substitution_fails() {
    let world = World::new();
    let sender = Milter::start(&world.signing_sender_config()).await;
    let mail = Mail::original(&["<bob@b.test>"]);
    let (status, actions) = send(sender.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(sender.metrics.messages(Kind::Encrypted), 1);
    let (sealed_headers, sealed_body) = apply(&mail.headers, &mail.body, &actions);
    let outer_sig = field_value(&sealed_headers, "IBE-Signature", 0);
    assert!(outer_sig.contains("i=alice@a.test"), "{outer_sig}");
    assert!(outer_sig.contains("n=1;"), "{outer_sig}");

    // b.test requires valid signatures from a.test.
    let receiver = Milter::start(&format!(
        "{}[policy.domains.\"a.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let (results, held, opened, body) =
        receive(&receiver, sealed_headers.clone(), sealed_body.clone()).await;
    assert!(!held);
    assert!(results.contains("x-ibemail=pass"), "{results}");
    assert!(
        results.contains(
            "ibesig=pass (inside and outside the encryption, generation 1) header.i=alice@a.test"
        ),
        "{results}"
    );
    assert_eq!(body, ORIGINAL_BODY);
    // The inner signature is delivered (it verifies on the plaintext); the
    // outer one, over the ciphertext, is not.
    assert_eq!(
        opened.iter().filter(|(n, _)| n == "IBE-Signature").count(),
        1
    );
    let inner_message = to_message(&opened[1..], &body);
    let inner = ibemail_message::signature::signatures(&inner_message)
        .remove(0)
        .unwrap();
    let a_params = Store::open(&world.a_dir).unwrap().records()[0]
        .signing
        .unwrap();
    inner.verify(&inner_message, &a_params).unwrap();

    // A man in the middle who had a.test encrypt to his parameters can read
    // the message and re-encrypt it to b.test's real ones, keeping every
    // header, including the outer signature: that fails.
    let b_store = Store::open(&world.b_dir).unwrap();
    let b_record = &b_store.records()[0];
    let bob = ibemail_ibe::Identity::parse("bob@b.test").unwrap();
    let recipient = ibemail_message::IbeRecipient {
        identity: bob,
        generation: b_record.generation,
        params: b_record.params.clone(),
    };
    let resealed = ibemail_message::seal(
        &inner_message,
        &[&recipient as &dyn ibemail_message::Recipient],
        &mut OsRng,
        &ibemail_message::Limits::default(),
    )
    .unwrap();
    let (mut resealed_headers, resealed_body) = from_message(&resealed.to_bytes());
    resealed_headers.insert(0, ("IBE-Signature".to_string(), outer_sig.to_string()));
    let (results, held, _, body) =
        receive(&receiver, resealed_headers.clone(), resealed_body.clone()).await;
    assert!(results.contains("ibesig=fail"), "{results}");
    assert!(results.contains("body hash"), "{results}");
    assert!(held, "quarantined under signature = require");
    assert_eq!(body, ORIGINAL_BODY, "still decrypted for the hold queue");
    assert_eq!(receiver.metrics.messages(Kind::Unsigned), 1);
    assert_eq!(receiver.metrics.signature_results("pass"), 1);
    assert_eq!(receiver.metrics.signature_results("fail"), 1);
    assert_eq!(sender.metrics.signatures_made(), 2, "inside and outside");

    // Dropping the outer signature instead does not help.
    resealed_headers.remove(0);
    let (results, held, _, _) =
        receive(&receiver, resealed_headers.clone(), resealed_body.clone()).await;
    assert!(
        results.contains("ibesig=fail (signed inside but not outside"),
        "{results}"
    );
    assert!(held);
    // Nor does putting a junk signature of a domain whose DNS fails in its
    // place: it is not by the From address, so it fails without a lookup
    // instead of turning the result into a temporary error.
    let mut junk_headers = resealed_headers;
    junk_headers.insert(
        0,
        (
            "IBE-Signature".to_string(),
            outer_sig.replace("i=alice@a.test", "i=x@d.test"),
        ),
    );
    let (results, held, _, _) = receive(&receiver, junk_headers, resealed_body).await;
    assert!(results.contains("ibesig=fail"), "{results}");
    assert!(held);

    // Delivering the decrypted message in plaintext instead fails too: its
    // signature was made for the sealed copy (e=1).
    let (plain_headers, plain_body) = from_message(&inner_message);
    let (results, held, _, _) = receive(&receiver, plain_headers, plain_body).await;
    assert!(
        results.contains("ibesig=fail (signed to travel encrypted, but arrived decrypted)"),
        "{results}"
    );
    assert!(held);

    // A field added on top of the sealed message (over-signed) breaks the
    // outer signature.
    let mut injected = sealed_headers.clone();
    injected.insert(0, ("Reply-To".into(), " attacker@evil.test".into()));
    let (results, held, _, _) = receive(&receiver, injected, sealed_body.clone()).await;
    assert!(results.contains("ibesig=fail (outside:"), "{results}");
    assert!(held);
    receiver.stop().await;

    // With the default policy (report), the same failure is delivered,
    // marked.
    let reporting = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&reporting, sealed_headers, sealed_body).await;
    assert!(results.contains("ibesig=pass"), "{results}");
    assert!(!held);
    reporting.stop().await;
    sender.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_own_addresses_are_signed_and_a_forged_from_fails() {
    let world = World::new();
    let sender = Milter::start(&world.signing_sender_config()).await;
    // To a domain without ibemail: the message is signed, not encrypted;
    // only a header field is added.
    let mail = Mail::original(&["<carol@c.test>"]);
    let (status, actions) = send(sender.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(sender.metrics.messages(Kind::Plaintext), 1);
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    assert_eq!(headers[0].0, "IBE-Signature");
    assert_eq!(&headers[1..], &mail.headers[..]);

    // Mixed: the plaintext copy for carol carries a signature without
    // e=1; the sealed copy for bob one with it (checked at b.test in the
    // test above).
    let mixed = Mail::original(&["<bob@b.test>", "<carol@c.test>"]);
    let (status, _) = send(sender.addr, &mixed).await;
    assert_eq!(status, Status::Continue);
    let copies = world.sink.received();
    let copy = String::from_utf8_lossy(&copies.last().unwrap().data).into_owned();
    // Below the one-time token of the re-injection listener.
    let (token, copy) = copy.split_once("\r\n").unwrap();
    assert!(token.starts_with("IBE-Reinjected: "), "{token}");
    assert!(copy.starts_with("IBE-Signature:"), "{copy}");
    assert!(copy.contains("i=alice@a.test"), "{copy}");
    assert!(!copy.contains("e=1;"), "{copy}");
    assert_eq!(
        sender.metrics.signatures_made(),
        4,
        "1 + inner, outer, copy"
    );

    // Bob, logged in, sending as Alice: not signed.
    let forged = Mail {
        auth: Some("bob"),
        sender: "<bob@a.test>",
        ..Mail::original(&["<carol@c.test>"])
    };
    let (status, actions) = send(sender.addr, &forged).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    // Alice logged in as "alice" (no domain) is signed.
    let own = Mail {
        auth: Some("alice"),
        ..Mail::original(&["<carol@c.test>"])
    };
    let (_, actions) = send(sender.addr, &own).await;
    assert_eq!(actions.actions.len(), 1, "{actions:?}");
    sender.stop().await;
    // With two local domains a bare login is ambiguous (alice@a.test or
    // alice@a2.test?): not signed; the full address is.
    let two_domains = Milter::start(&world.signing_sender_config().replace(
        "local_domains = [\"a.test\"]",
        "local_domains = [\"a.test\", \"a2.test\"]",
    ))
    .await;
    let (_, actions) = send(two_domains.addr, &own).await;
    assert!(actions.actions.is_empty(), "{actions:?}");
    let full = Mail {
        auth: Some("alice@a.test"),
        ..Mail::original(&["<carol@c.test>"])
    };
    let (_, actions) = send(two_domains.addr, &full).await;
    assert_eq!(actions.actions.len(), 1, "{actions:?}");
    two_domains.stop().await;

    // Bob's valid signature on a message From Alice (made with his own key,
    // as a rogue user of a.test could) fails at b.test.
    let a_store = Store::open(&world.a_dir).unwrap();
    let plain = to_message(&mail.headers, &mail.body);
    let (headers, body) = from_message(&signed_by(&a_store, "bob@a.test", &plain));
    let receiver = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&receiver, headers, body).await;
    assert!(
        results.contains("ibesig=fail (signed by bob@a.test, but From is alice@a.test)"),
        "{results}"
    );
    assert!(!held, "reported, not held, under the default policy");
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_that_cannot_be_checked_now_is_deferred_only_when_required() {
    let world = World::new();
    // x@d.test signs with a valid key, but d.test's DNS is broken (SERVFAIL).
    let tmp = tempfile::tempdir().unwrap();
    let d = Store::setup(&tmp.path().join("d"), "d.test", now(), None, &mut OsRng).unwrap();
    let plain = b"From: x@d.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let (headers, body) = from_message(&signed_by(&d, "x@d.test", plain));

    let reporting = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&reporting, headers.clone(), body.clone()).await;
    assert!(results.contains("ibesig=temperror"), "{results}");
    assert!(!held);
    reporting.stop().await;

    let requiring = Milter::start(&format!(
        "{}[policy.domains.\"d.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let mail = Mail {
        headers,
        body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &mail).await;
    // An outside client learns that it must retry, not why.
    assert_eq!(
        tempfail_reason(&status),
        "451 4.7.0 ibemail: temporary failure, please try again later"
    );
    assert!(actions.actions.is_empty());
    // A From that names no single address does not escape a require
    // policy: the strictest configured policy applies.
    let mangled = Mail {
        headers: vec![("From".into(), " x@d.test, ceo@d.test".into())],
        body: b"hello\r\n".to_vec(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &mangled).await;
    assert_eq!(status, Status::Continue);
    assert!(has(&actions, |a| matches!(a, EomAction::Quarantine { .. })));
    // Unsigned mail from a domain whose signatures are required is held.
    let unsigned_mail = Mail {
        headers: vec![("From".into(), " x@d.test".into())],
        body: b"hello\r\n".to_vec(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &unsigned_mail).await;
    assert_eq!(status, Status::Continue);
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("ibesig=none"))
    ));
    // The same from one of our own (internal) clients is only reported:
    // mail that stays inside is never signed.
    let internal = Mail {
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..unsigned_mail
    };
    let (status, actions) = send(requiring.addr, &internal).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    requiring.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_recipients_split_with_a_plaintext_copy_reinjected_first() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("")).await;
    let mail = Mail::original(&["<bob@b.test>", "<carol@c.test>", "<dave@x.test>"]);
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let copies = world.sink.received();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].sender, "<alice@a.test>");
    assert_eq!(copies[0].recipients, ["<carol@c.test>", "<dave@x.test>"]);
    let copy = String::from_utf8_lossy(&copies[0].data);
    assert!(
        copy.contains("Subject: the merger,\r\n\tsecret\r\n"),
        "{copy}"
    );
    assert!(copy.ends_with("\r\n.leading dot\r\n\r\nBye\r\n"), "{copy}");
    for rcpt in ["<carol@c.test>", "<dave@x.test>"] {
        assert!(has(
            &actions,
            |a| matches!(a, EomAction::DeleteRecipient { rcpt: r } if r.to_str().unwrap() == rcpt)
        ));
    }
    assert!(!has(
        &actions,
        |a| matches!(a, EomAction::DeleteRecipient { rcpt } if rcpt.to_str().unwrap() == "<bob@b.test>")
    ));
    assert!(has(&actions, |a| matches!(
        a,
        EomAction::ReplaceBody { .. }
    )));
    assert_eq!(milter.metrics.messages(Kind::Split), 1);

    // The transaction failed after the copy went out (a milter after us
    // refused it, Postfix's milter timeout fired) and the client sends it
    // again, with a new Received on top, even to a restarted milter: the
    // recipients of the copy are taken off again, but get no second copy.
    milter.stop().await;
    let milter = Milter::start(&world.sender_config("")).await;
    let mut retry = Mail::original(&["<bob@b.test>", "<carol@c.test>", "<dave@x.test>"]);
    retry.headers.insert(
        0,
        (
            "Received".into(),
            " from client.a.test by mx.a.test (retry)".into(),
        ),
    );
    let (status, actions) = send(milter.addr, &retry).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(world.sink.received().len(), 1, "no second plaintext copy");
    for rcpt in ["<carol@c.test>", "<dave@x.test>"] {
        assert!(has(
            &actions,
            |a| matches!(a, EomAction::DeleteRecipient { rcpt: r } if r.to_str().unwrap() == rcpt)
        ));
    }
    assert!(has(&actions, |a| matches!(
        a,
        EomAction::ReplaceBody { .. }
    )));

    // Another message (here: no Message-ID, so never taken for a retry)
    // gets its own copy every time.
    let mut anonymous = Mail::original(&["<bob@b.test>", "<carol@c.test>"]);
    anonymous.headers.retain(|(n, _)| n != "Message-ID");
    for copies in [2, 3] {
        let (status, _) = send(milter.addr, &anonymous).await;
        assert_eq!(status, Status::Continue);
        assert_eq!(world.sink.received().len(), copies);
    }

    // The copy refused: tempfail, no recipient removed, nothing changed.
    world.sink.refuse(true);
    let (status, actions) = send(milter.addr, &anonymous).await;
    let reason = tempfail_reason(&status);
    assert!(reason.contains("re-injecting"), "{reason}");
    assert!(actions.actions.is_empty());
    assert_eq!(world.sink.received().len(), 3);
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_temporary_failure_is_a_tempfail_never_plaintext() {
    let world = World::new();
    // DNS SERVFAIL for the recipient's domain.
    let milter = Milter::start(&world.sender_config("")).await;
    let (status, actions) = send(milter.addr, &Mail::original(&["<x@d.test>"])).await;
    assert!(tempfail_reason(&status).contains("d.test"));
    assert!(actions.actions.is_empty());
    // Policy require, domain without parameters.
    milter.stop().await;
    let milter =
        Milter::start(&world.sender_config("[policy.domains.\"c.test\"]\nencrypt = \"require\""))
            .await;
    let (status, _) = send(milter.addr, &Mail::original(&["<carol@c.test>"])).await;
    assert!(tempfail_reason(&status).contains("requires encryption"));
    // Opportunistic, no parameters: sent as it is.
    let (status, actions) = send(
        milter.addr,
        &Mail::original(&["<y@nx2.test>", "<x@nx.test>"]),
    )
    .await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    milter.stop().await;
    // A name server that never answers.
    let silent = Silent::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let config = format!(
        "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\nstate_dir = \"{}\"\n\
         [dns]\nresolvers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        world.state_dir("silent").display(),
        silent.addr
    );
    let milter = Milter::start(&config).await;
    let (status, _) = send(milter.addr, &Mail::original(&["<bob@b.test>"])).await;
    tempfail_reason(&status);
    milter.stop().await;
    // Mixed recipients without a re-injection target.
    let config = format!(
        "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\nstate_dir = \"{}\"\n{}",
        world.state_dir("unsplit").display(),
        world.dns()
    );
    let milter = Milter::start(&config).await;
    let (status, _) = send(
        milter.addr,
        &Mail::original(&["<bob@b.test>", "<c@c.test>"]),
    )
    .await;
    assert!(tempfail_reason(&status).contains("reinject"));
    // Authenticated clients from anywhere are outbound too.
    let mut mail = Mail::original(&["<x@d.test>"]).outside();
    mail.auth = Some("alice");
    let (status, _) = send(milter.addr, &mail).await;
    tempfail_reason(&status);
    // Unauthenticated outside clients relaying are not ours to encrypt.
    let (status, actions) = send(milter.addr, &Mail::original(&["<x@d.test>"]).outside()).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kgc_unreachable_is_a_tempfail_and_bad_ciphertext_is_quarantined() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    let socket = world.b_dir.parent().unwrap().join("no-kgc.sock");
    let receiver = Milter::start(&world.receiver_config(socket.to_str().unwrap())).await;
    let mail = Mail {
        headers: sealed_headers.clone(),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &mail).await;
    // The reason (naming the KGC socket) is for the local log only.
    let reason = tempfail_reason(&status);
    assert!(reason.contains("try again later"), "{reason}");
    assert!(!reason.contains("no-kgc.sock"), "{reason}");
    assert!(actions.actions.is_empty());
    receiver.stop().await;

    let receiver = Milter::start(&world.receiver_config("")).await;
    // Corrupt one base64 character in the middle of the CMS.
    let mut body = sealed_body.clone();
    let mid = body.len() / 2;
    let pos = (mid..body.len())
        .find(|&i| body[i].is_ascii_alphanumeric())
        .unwrap();
    body[pos] = if body[pos] == b'A' { b'B' } else { b'A' };
    let bad = Mail {
        headers: sealed_headers.clone(),
        body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &bad).await;
    assert_eq!(
        status,
        Status::Continue,
        "quarantined, not refused or dropped"
    );
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("cannot decrypt"))
    ));
    assert!(!has(&actions, |a| matches!(
        a,
        EomAction::ReplaceBody { .. }
    )));
    assert_eq!(receiver.metrics.messages(Kind::Undecryptable), 1);

    // Also addressed to another domain (relayed on): not opened here, so
    // no plaintext travels further.
    let relayed = Mail {
        headers: sealed_headers.clone(),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>", "<x@elsewhere.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &relayed).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");

    // Sealed for someone else at b.test: not ours to open, delivered as is.
    let other = Mail {
        headers: sealed_headers,
        body: sealed_body,
        ..Mail::original(&["<carol@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &other).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    receiver.stop().await;
    // ...unless a.test's signatures are required: unsigned, it is held
    // even though it is not opened here.
    let requiring = Milter::start(&format!(
        "{}[policy.domains.\"a.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let (status, actions) = send(requiring.addr, &other).await;
    assert_eq!(status, Status::Continue);
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("ibesig=none"))
    ));
    requiring.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_authentication_results_with_our_id_are_removed() {
    let world = World::new();
    let receiver = Milter::start(&world.receiver_config("")).await;
    let mut mail = Mail::original(&["<bob@b.test>"]).outside();
    // Ours, anywhere (Postfix hides its own Received from milters, so the
    // top is no evidence of this hop: a milter before us reports under its
    // own id); others' are not ours to remove.
    let arrived = |value: &str| ("Authentication-Results".to_string(), value.to_string());
    mail.headers.insert(1, arrived(" other.example; spf=pass"));
    mail.headers
        .insert(2, arrived(" mx.b.test; x-ibemail=pass"));
    mail.headers.push(arrived(" MX.B.TEST 1; dkim=pass"));
    mail.headers
        .insert(0, arrived(" mx.b.test; dkim=pass header.d=a.test"));
    mail.headers
        .insert(0, arrived(" dkim.mx.b.test; dkim=pass header.d=a.test"));
    let (status, actions) = send(receiver.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    let results: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        results,
        [
            " dkim.mx.b.test; dkim=pass header.d=a.test",
            " other.example; spf=pass"
        ]
    );
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_whole_never_truncated() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("max_message_size = \"10k\"")).await;
    let mut mail = Mail::original(&["<bob@b.test>"]);
    mail.body = b"0123456789abcdef\r\n".repeat(1000);
    let (status, actions) = send(milter.addr, &mail).await;
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");
    assert!(actions.actions.is_empty());
    milter.stop().await;
}

/// Inbound sessions fed arbitrary bytes, and mutations of a real sealed
/// message, never panic and never hang: each gets a proper answer.
#[test]
fn arbitrary_bodies_never_break_a_session() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let world = World::new();
    let (sealed_headers, sealed_body) = rt.block_on(seal_via_milter(&world));
    let receiver = rt.block_on(Milter::start(&world.receiver_config("")));
    let addr = receiver.addr;
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        junk in proptest::collection::vec(any::<u8>(), 0..2048),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        use_sealed in any::<bool>(),
    )| {
        let mut body = if use_sealed { sealed_body.clone() } else { junk };
        for (index, byte) in &flips {
            if !body.is_empty() {
                let i = index.index(body.len());
                body[i] = *byte;
            }
        }
        let mail = Mail {
            headers: sealed_headers.clone(),
            body,
            ..Mail::original(&["<bob@b.test>"]).outside()
        };
        let (status, _) = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), send(addr, &mail)).await.unwrap()
        });
        let answered = matches!(
            status,
            Status::Continue | Status::Tempfail { .. } | Status::Reject { .. }
        );
        prop_assert!(answered, "unexpected status {:?}", status);
    });
    rt.block_on(receiver.stop());
}
