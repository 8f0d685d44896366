//! Tampering, Bcc privacy, limits, and every typed failure of opening.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{Kgc, as_dyn, rng};
use ibemail_ibe::Identity;
use ibemail_message::header::HeaderSection;
use ibemail_message::{
    CapsuleError, LimitExceeded, Limits, Malformed, OpenError, SealError, inspect, open, seal,
};
use rand_core::RngCore;

const MESSAGE: &[u8] = b"From: Alice <alice@a.test>\r\n\
To: Bob <bob@b.test>\r\n\
Subject: the plan\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Message-ID: <plan@a.test>\r\n\
\r\n\
Meet at the usual place at noon. Bring the documents.\r\n";

fn der_and_header(sealed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let section = HeaderSection::parse(sealed);
    let body: Vec<u8> = sealed[section.body_offset..]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    (
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
        sealed[..section.body_offset].to_vec(),
    )
}

fn rewrap(header: &[u8], der: &[u8]) -> Vec<u8> {
    let mut out = header.to_vec();
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    for line in b64.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[test]
fn every_single_byte_change_of_the_cms_is_detected() {
    let b = Kgc::new(20);
    let c = Kgc::new(21);
    let recipients = [b.recipient("bob@b.test"), c.recipient("carol@c.test")];
    let sealed = seal(
        MESSAGE,
        &as_dyn(&recipients),
        &mut rng(20),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let (der, header) = der_and_header(&sealed);
    assert!(
        b.open(&rewrap(&header, &der), &["bob@b.test"])
            .unwrap()
            .message
            == MESSAGE
    );

    let mut flips = rng(99);
    let mut tried = 0;
    for position in 0..der.len() {
        // Four different changes per byte: low bit, high bit, all bits, random.
        let random = (flips.next_u32() as u8).max(1);
        for xor in [0x01u8, 0x80, 0xff, random] {
            let mut forged = der.clone();
            forged[position] ^= xor;
            let forged = rewrap(&header, &forged);
            // Both recipients' servers must refuse: a change in carol's
            // recipient info is caught by bob's server too (nonce binding).
            for (kgc, who) in [(&b, "bob@b.test"), (&c, "carol@c.test")] {
                match kgc.open(&forged, &[who]) {
                    Err(_) => {}
                    Ok(opened) => panic!(
                        "byte {position} ^ {xor:#04x} of {} accepted for {who} ({} bytes)",
                        der.len(),
                        opened.message.len()
                    ),
                }
            }
            tried += 1;
        }
    }
    assert!(tried >= 3000, "only {tried} changes tried");
}

#[test]
fn truncation_at_every_length_is_rejected() {
    let b = Kgc::new(22);
    let sealed = seal(
        MESSAGE,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(22),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let (der, header) = der_and_header(&sealed);
    for cut in 0..der.len() {
        assert!(
            b.open(&rewrap(&header, &der[..cut]), &["bob@b.test"])
                .is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn bcc_recipients_are_not_disclosed() {
    let b = Kgc::new(23);
    let c = Kgc::new(24);
    // bob is in To:, "hidden" is a Bcc recipient in the envelope only.
    let recipients = [
        b.recipient("bob@b.test"),
        c.recipient("hidden.person@c.test"),
    ];
    let sealed = seal(
        MESSAGE,
        &as_dyn(&recipients),
        &mut rng(23),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let (der, _) = der_and_header(&sealed);
    for needle in ["hidden.person", "c.test", "bob@b.test", "b.test"] {
        for haystack in [&der[..], &sealed[..]] {
            let found = haystack
                .windows(needle.len())
                .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
            // bob@b.test is visible in the outer To: (it was already); nothing else is.
            let expected =
                haystack == &sealed[..] && needle.contains('b') && needle != "hidden.person";
            assert_eq!(
                found,
                expected,
                "{needle:?} in {}",
                if haystack == &der[..] {
                    "CMS"
                } else {
                    "message"
                }
            );
        }
    }
    // Both can still open; a server for c.test learns nothing about bob.
    assert!(c.open(&sealed, &["hidden.person@c.test"]).is_ok());
    assert!(b.open(&sealed, &["bob@b.test"]).is_ok());
}

#[test]
fn plain_mail_is_not_encrypted_and_foreign_smime_is_not_ours() {
    let b = Kgc::new(25);
    assert_eq!(
        b.open(MESSAGE, &["bob@b.test"]).unwrap_err(),
        OpenError::NotEncrypted
    );
    let enveloped =
        b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\r\nMIIB\r\n";
    assert_eq!(
        b.open(enveloped, &["bob@b.test"]).unwrap_err(),
        OpenError::NotOurs
    );
    let signed = b"Content-Type: application/pkcs7-mime; smime-type=signed-data\r\n\r\nMIIB\r\n";
    assert_eq!(
        b.open(signed, &["bob@b.test"]).unwrap_err(),
        OpenError::NotOurs
    );
}

#[test]
fn unknown_recipient_generation_and_foreign_keys_are_told_apart() {
    let b = Kgc::new(26);
    let sealed = seal(
        MESSAGE,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(26),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();

    assert_eq!(
        b.open(&sealed, &["dave@b.test"]).unwrap_err(),
        OpenError::NoMatchingRecipient
    );
    assert_eq!(
        b.open(&sealed, &[]).unwrap_err(),
        OpenError::NoMatchingRecipient
    );

    // The KGC has moved on to generation 2 and destroyed generation 1.
    let mut rotated = Kgc::new(26);
    rotated.generation = 2;
    assert_eq!(
        rotated.open(&sealed, &["bob@b.test"]).unwrap_err(),
        OpenError::UnknownGeneration(1)
    );

    // Another KGC claiming b.test (wrong master key): the capsule is rejected.
    let impostor = Kgc::new(27);
    assert!(matches!(
        impostor.open(&sealed, &["bob@b.test"]).unwrap_err(),
        OpenError::AuthenticationFailed(_)
    ));
}

/// A sender who repeats one recipient's entry (our parameters are public,
/// so anyone can) gets one key-service call per local recipient, not one
/// per entry: otherwise one message of 1,000 entries made the KGC open
/// 1,000 capsules and write 1,000 audit lines.
#[test]
fn repeated_entries_for_one_recipient_cost_one_key_service_call() {
    let b = Kgc::new(29);
    let mut list = vec![b.recipient("bob@b.test"); 200];
    list.push(b.recipient("carol@b.test"));
    let sealed = seal(MESSAGE, &as_dyn(&list), &mut rng(29), &Limits::default())
        .unwrap()
        .to_bytes();
    let locals = [
        Identity::parse("bob@b.test").unwrap(),
        Identity::parse("carol@b.test").unwrap(),
    ];
    let mut calls = Vec::new();
    let err = open(&sealed, &locals, &Limits::default(), |id, _, _| {
        calls.push(id.as_str().to_string());
        Err(CapsuleError::Rejected)
    })
    .unwrap_err();
    assert!(matches!(err, OpenError::AuthenticationFailed(_)), "{err:?}");
    calls.sort();
    assert_eq!(calls, ["bob@b.test", "carol@b.test"]);
    // With the real key it opens, for either.
    assert_eq!(b.open(&sealed, &["carol@b.test"]).unwrap().message, MESSAGE);
    assert_eq!(b.open(&sealed, &["bob@b.test"]).unwrap().message, MESSAGE);
}

#[test]
fn key_service_outages_are_temporary_and_stop_the_attempt() {
    let b = Kgc::new(28);
    let sealed = seal(
        MESSAGE,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(28),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let bob = [Identity::parse("bob@b.test").unwrap()];
    let mut calls = 0;
    let err = open(&sealed, &bob, &Limits::default(), |_, _, _| {
        calls += 1;
        Err(CapsuleError::Unavailable("connection refused".into()))
    })
    .unwrap_err();
    assert!(err.is_temporary());
    assert_eq!(calls, 1);
    let refused = open(&sealed, &bob, &Limits::default(), |_, _, _| {
        Err(CapsuleError::Refused("uid".into()))
    })
    .unwrap_err();
    assert!(!refused.is_temporary());
}

#[test]
fn malformed_outer_mime_is_reported() {
    let b = Kgc::new(29);
    let sealed = seal(
        MESSAGE,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(29),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let text = String::from_utf8(sealed.clone()).unwrap();
    let qp = text.replace(
        "Content-Transfer-Encoding: base64",
        "Content-Transfer-Encoding: quoted-printable",
    );
    assert_eq!(
        b.open(qp.as_bytes(), &["bob@b.test"]).unwrap_err(),
        OpenError::Malformed(Malformed::Base64)
    );
    let junk = format!("{}!!!!\r\n", &text[..text.len() - 10]);
    assert!(matches!(
        b.open(junk.as_bytes(), &["bob@b.test"]).unwrap_err(),
        OpenError::Malformed(_)
    ));
    let empty_body = text.split("\r\n\r\n").next().unwrap().to_string() + "\r\n\r\n";
    assert!(matches!(
        b.open(empty_body.as_bytes(), &["bob@b.test"]).unwrap_err(),
        OpenError::Malformed(_)
    ));
}

#[test]
fn limits_are_enforced_when_sealing_and_opening() {
    let b = Kgc::new(30);
    let small = Limits {
        max_message_bytes: 100,
        max_recipients: 2,
        max_nesting: 1,
    };
    let many: Vec<_> = (0..3)
        .map(|i| b.recipient(&format!("u{i}@b.test")))
        .collect();
    assert_eq!(
        seal(MESSAGE, &as_dyn(&many), &mut rng(1), &small).unwrap_err(),
        SealError::Limit(LimitExceeded::Recipients {
            limit: 2,
            actual: 3
        })
    );
    assert_eq!(
        seal(MESSAGE, &as_dyn(&many[..1]), &mut rng(1), &small).unwrap_err(),
        SealError::Limit(LimitExceeded::MessageSize {
            limit: 100,
            actual: MESSAGE.len()
        })
    );
    assert_eq!(
        seal(MESSAGE, &[], &mut rng(1), &Limits::default()).unwrap_err(),
        SealError::NoRecipients
    );

    let sealed = seal(MESSAGE, &as_dyn(&many), &mut rng(1), &Limits::default())
        .unwrap()
        .to_bytes();
    let few = Limits {
        max_recipients: 2,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(&sealed, &few).unwrap_err(),
        OpenError::Limit(LimitExceeded::Recipients { .. })
    ));
    let tiny = Limits {
        max_message_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(&sealed, &tiny).unwrap_err(),
        OpenError::Limit(LimitExceeded::MessageSize { .. })
    ));
}

#[test]
fn nested_layers_are_removed_up_to_the_limit() {
    let b = Kgc::new(31);
    let bob = [b.recipient("bob@b.test")];
    let once = seal(MESSAGE, &as_dyn(&bob), &mut rng(1), &Limits::default())
        .unwrap()
        .to_bytes();
    let twice = seal(&once, &as_dyn(&bob), &mut rng(2), &Limits::default())
        .unwrap()
        .to_bytes();
    let opened = b.open(&twice, &["bob@b.test"]).unwrap();
    assert_eq!((opened.message.as_slice(), opened.layers), (MESSAGE, 2));

    let locals = [Identity::parse("bob@b.test").unwrap()];
    let one_layer = Limits {
        max_nesting: 1,
        ..Limits::default()
    };
    let err = open(&twice, &locals, &one_layer, |id, n, capsule| {
        b.master
            .extract(id, n)
            .decapsulate(&b.params, capsule)
            .map_err(|_| CapsuleError::Rejected)
    })
    .unwrap_err();
    assert_eq!(err, OpenError::Limit(LimitExceeded::Nesting { limit: 1 }));
}

#[test]
fn opening_never_panics_on_arbitrary_input() {
    use proptest::prelude::*;
    let b = Kgc::new(32);
    let sealed = seal(
        MESSAGE,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(32),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let (der, header) = der_and_header(&sealed);
    proptest!(ProptestConfig::with_cases(300), |(cut in 0usize..400, junk in proptest::collection::vec(any::<u8>(), 0..200))| {
        let mut forged = der[..cut.min(der.len())].to_vec();
        forged.extend_from_slice(&junk);
        let _ = b.open(&rewrap(&header, &forged), &["bob@b.test"]);
        let mut raw = sealed[..cut.min(sealed.len())].to_vec();
        raw.extend_from_slice(&junk);
        let _ = b.open(&raw, &["bob@b.test"]);
    });
}
