//! Sealing then opening gives back the original bytes, for the whole shared
//! corpus (malformed messages included), for one and several recipients.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Kgc, as_dyn, corpus, rng};
use ibemail_message::header::HeaderSection;
use ibemail_message::{Limits, OUTER_FIELDS, seal, seal_owned};

#[test]
fn every_corpus_message_round_trips_for_one_recipient() {
    let b = Kgc::new(1);
    let bob = [b.recipient("bob@b.test")];
    for (i, (name, original)) in corpus().into_iter().enumerate() {
        let sealed = seal(
            &original,
            &as_dyn(&bob),
            &mut rng(i as u64),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_bytes();
        // Sealing the caller's own buffer in place is the same function.
        let owned = seal_owned(
            original.clone(),
            &as_dyn(&bob),
            &mut rng(i as u64),
            &Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_bytes();
        assert!(owned == sealed, "{name}: seal_owned differs from seal");
        let opened = b
            .open(&sealed, &["bob@b.test"])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            opened.message == original,
            "{name}: round trip changed the bytes"
        );
        assert_eq!(opened.recipient.as_str(), "bob@b.test");
        assert_eq!(opened.generation, 1);
    }
}

#[test]
fn every_corpus_message_round_trips_for_each_of_several_recipients() {
    let b = Kgc::new(2);
    let c = Kgc::new(3);
    let recipients = [
        b.recipient("bob@b.test"),
        b.recipient("Bea@B.test"),
        c.recipient("carol@c.test"),
    ];
    for (i, (name, original)) in corpus().into_iter().enumerate() {
        let sealed = seal(
            &original,
            &as_dyn(&recipients),
            &mut rng(1000 + i as u64),
            &Limits::default(),
        )
        .unwrap()
        .to_bytes();
        for (kgc, address) in [(&b, "bob@b.test"), (&b, "bea@b.test"), (&c, "carol@c.test")] {
            let opened = kgc
                .open(&sealed, &[address])
                .unwrap_or_else(|e| panic!("{name} for {address}: {e}"));
            assert!(opened.message == original, "{name} for {address}");
            assert_eq!(opened.recipient.as_str(), address);
        }
        // A server with both b.test recipients local opens it once.
        let both = b
            .open(&sealed, &["nobody@b.test", "bea@b.test", "bob@b.test"])
            .unwrap();
        assert!(both.message == original);
        // ...and says whom it was sealed to: not nobody@, who was added to
        // the envelope on the way (a replay) and must not get the plaintext.
        let sealed_to: Vec<&str> = both.sealed_to.iter().map(|id| id.as_str()).collect();
        assert_eq!(sealed_to, ["bea@b.test", "bob@b.test"], "{name}");
    }
}

#[test]
fn edge_shapes_round_trip() {
    let b = Kgc::new(4);
    let bob = [b.recipient("bob@b.test")];
    let big: Vec<u8> = b"Subject: big\r\n\r\n"
        .iter()
        .copied()
        .chain((0..3_000_000u32).map(|i| (i % 251) as u8))
        .collect();
    let cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\r\n".to_vec(),
        b"no header separator at all".to_vec(),
        b"Subject: only headers\r\n".to_vec(),
        b"Subject: bare LF\n\nbody\n".to_vec(),
        b"Subject: \xff\xfe 8-bit\r\n\r\n\x00\x01 binary\r\n".to_vec(),
        big,
    ];
    for (i, original) in cases.iter().enumerate() {
        let sealed = seal(
            original,
            &as_dyn(&bob),
            &mut rng(i as u64),
            &Limits::default(),
        )
        .unwrap()
        .to_bytes();
        assert_eq!(
            &b.open(&sealed, &["bob@b.test"]).unwrap().message,
            original,
            "case {i}"
        );
    }
}

#[test]
fn outer_header_keeps_only_delivery_fields_and_hides_the_subject() {
    let b = Kgc::new(5);
    let original = b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
From: Alice <alice@a.test>\r\n\
To: Bob <bob@b.test>,\r\n  Bea <bea@b.test>\n\
Cc: carol@c.test\r\n\
Subject: Quarterly numbers\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
Message-ID: <1@a.test>\r\n\
Bcc: secret@b.test\r\n\
X-Mailer: Secret Client 1.0\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain\r\n\
\r\n\
The numbers are up.\r\n";
    let sealed = seal(
        original,
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(5),
        &Limits::default(),
    )
    .unwrap();
    let header_bytes = sealed.header();
    let header = String::from_utf8(header_bytes.clone()).unwrap();
    let section = HeaderSection::parse(&header_bytes);
    let names: Vec<String> = section
        .fields
        .iter()
        .map(|f| String::from_utf8_lossy(f.name).to_ascii_lowercase())
        .collect();
    assert_eq!(
        names,
        [
            "received",
            "from",
            "to",
            "cc",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type",
            "content-disposition",
            "content-transfer-encoding"
        ]
    );
    assert!(header.contains("Subject: [...]\r\n"));
    assert!(
        header.contains("To: Bob <bob@b.test>,\r\n  Bea <bea@b.test>\r\n"),
        "folding kept, CRLF normalised"
    );
    assert!(header.contains(
        "Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=\"smime.p7m\"\r\n"
    ));
    for hidden in ["Quarterly", "secret@b.test", "Secret Client", "text/plain"] {
        assert!(
            !header.contains(hidden),
            "{hidden} leaked into the outer header"
        );
    }
    let whole = sealed.to_bytes();
    for hidden in [&b"Quarterly"[..], b"numbers are up", b"secret@b.test"] {
        assert!(!whole.windows(hidden.len()).any(|w| w == hidden));
    }
    for name in OUTER_FIELDS {
        assert!(!name.eq_ignore_ascii_case("subject") && !name.eq_ignore_ascii_case("bcc"));
    }
    // Body lines are at most 76 characters of base64.
    let body = String::from_utf8(sealed.body).unwrap();
    assert!(body.split("\r\n").all(|l| l.len() <= 76));
}

#[test]
fn messages_without_subject_get_no_obscured_subject() {
    let b = Kgc::new(6);
    let sealed = seal(
        b"From: a@a.test\r\n\r\nhi\r\n",
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(6),
        &Limits::default(),
    )
    .unwrap();
    assert!(
        !String::from_utf8(sealed.header())
            .unwrap()
            .contains("Subject")
    );
}
