//! Signing and verifying, canonicalization against RFC 6376, From parsing.

#![allow(clippy::unwrap_used)]

use super::canon::{canonical_headers, without_b_value};
use super::from::mailbox_address;
use super::*;
use crate::header::HeaderSection;
use ibemail_ibe::Identity;
use ibemail_ibe::MasterKey;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};

const MESSAGE: &[u8] = b"Received: from x\r\nFrom: Alice <Alice@A.test>\r\nTo: bob@b.test\r\n\
Subject: hello  there\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHi Bob,\r\n\r\nsee you\r\n\r\n";

fn sign(master: &MasterKey, message: &[u8], who: &str) -> Vec<u8> {
    let id = Identity::parse(who).unwrap();
    let unsigned = Unsigned::new(message, &id, 1, Algorithm::ChaCheon);
    let sig = master
        .extract_signing(&id, 1)
        .sign(unsigned.digest(), &mut ChaCha20Rng::seed_from_u64(1));
    unsigned.prepend(message, &sig.into()).unwrap()
}

fn verify(master: &MasterKey, message: &[u8]) -> Result<Parsed, SignatureError> {
    let parsed = signatures(message).remove(0)?;
    parsed.verify(message, &master.signing_params())?;
    Ok(parsed)
}

fn master() -> MasterKey {
    MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(9))
}

#[test]
fn rfc6376_relaxed_example() {
    // RFC 6376 §3.4.5.
    let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
    let section = HeaderSection::parse(message);
    let mut headers = Vec::new();
    canonical_headers(&section, &["a".into(), "b".into()], &mut headers);
    assert_eq!(headers, b"a:X\r\nb:Y Z\r\n");
    let mut expected = Sha256::new();
    expected.update(b" C\r\nD E\r\n");
    assert_eq!(
        body_hash(&message[section.body_offset..]),
        <[u8; 32]>::from(expected.finalize())
    );
    // An empty body, or one of blank lines only, hashes as empty.
    assert_eq!(body_hash(b""), body_hash(b"\r\n\r\n"));
    assert_eq!(body_hash(b"x"), body_hash(b"x\r\n"));
}

/// Header selection as DKIM's, written the obvious (quadratic) way.
fn selected_by_scanning(section: &HeaderSection<'_>, h: &[String]) -> Vec<usize> {
    let mut used = vec![false; section.fields.len()];
    let mut out = Vec::new();
    for name in h {
        if let Some(i) = (0..section.fields.len())
            .rev()
            .find(|&i| !used[i] && section.fields[i].is(name))
        {
            used[i] = true;
            out.push(i);
        }
    }
    out
}

proptest::proptest! {
    /// The indexed selection takes the same fields in the same order as a
    /// scan per name: repeated names take earlier occurrences in turn,
    /// names past the last occurrence (oversigning) add nothing, case does
    /// not matter.
    #[test]
    fn header_selection_is_the_last_unused_occurrence_per_name(
        names in proptest::collection::vec(0usize..4, 0..12),
        h in proptest::collection::vec((0usize..5, proptest::bool::ANY), 0..12),
    ) {
        const NAMES: [&str; 5] = ["From", "To", "Subject", "received", "X-Absent"];
        let mut message = String::new();
        for (n, name) in names.iter().enumerate() {
            message.push_str(&format!("{}: value {n}\r\n", NAMES[*name]));
        }
        message.push_str("\r\nbody\r\n");
        let section = HeaderSection::parse(message.as_bytes());
        let h: Vec<String> = h
            .iter()
            .map(|(i, upper)| if *upper { NAMES[*i].to_uppercase() } else { NAMES[*i].to_lowercase() })
            .collect();
        let mut expected = Vec::new();
        for i in selected_by_scanning(&section, &h) {
            let field = &section.fields[i];
            super::canon::relaxed_field(&mut expected, field.name, field.value());
            expected.extend_from_slice(b"\r\n");
        }
        let mut got = Vec::new();
        canonical_headers(&section, &h, &mut got);
        proptest::prop_assert_eq!(got, expected);
    }
}

#[test]
fn signed_messages_verify_and_survive_relaxed_changes() {
    let master = master();
    let signed = sign(&master, MESSAGE, "alice@a.test");
    let parsed = verify(&master, &signed).unwrap();
    assert_eq!(parsed.identity.as_str(), "alice@a.test");
    assert_eq!(parsed.generation, 1);
    // What relaxed canonicalization forgives: refolding, case of field
    // names, trailing whitespace, added blank lines at the end, an
    // added unsigned trace field on top.
    let text = String::from_utf8(signed.clone()).unwrap();
    let changed = format!(
        "Received: from y\r\n{}\r\n\r\n",
        text.replace("Subject: hello  there", "subject:   hello\r\n there   ")
            .replace("see you\r\n", "see you \t\r\n")
    );
    verify(&master, changed.as_bytes()).unwrap();
}

#[test]
fn changes_to_signed_parts_fail() {
    let master = master();
    let signed = sign(&master, MESSAGE, "alice@a.test");
    let text = String::from_utf8(signed).unwrap();
    for (from, to, expect_body) in [
        ("see you", "see yoU", true),
        ("Hi Bob", "Hi Bob!", true),
        ("hello  there", "hello  thera", false),
        ("To: bob@b.test", "To: eve@b.test", false),
        ("Date: Mon", "Date: Tue", false),
        ("n=1;", "n=2;", false),
        ("i=alice@a.test", "i=bob@a.test", false),
    ] {
        let changed = text.replacen(from, to, 1);
        let err = verify(&master, changed.as_bytes()).unwrap_err();
        if expect_body {
            assert_eq!(err, SignatureError::BodyHash, "{from}");
        } else {
            assert!(
                matches!(
                    err,
                    SignatureError::BadSignature | SignatureError::FromMismatch { .. }
                ),
                "{from}: {err:?}"
            );
        }
    }
    // Any signed field added on top (over-signed) breaks it.
    for added in [
        "From: mallory@a.test",
        "Reply-To: attacker@evil.test",
        "Subject: URGENT new bank details",
        "To: other@b.test",
        "Sender: attacker@evil.test",
    ] {
        let changed = format!("{added}\r\n{text}");
        assert!(
            verify(&master, changed.as_bytes()).is_err(),
            "{added} on top still verifies"
        );
    }
}

#[test]
fn a_valid_signature_of_another_user_is_a_from_mismatch() {
    let master = master();
    // Bob signs a message that claims to be from Alice.
    let signed = sign(&master, MESSAGE, "bob@a.test");
    assert_eq!(
        verify(&master, &signed).unwrap_err(),
        SignatureError::FromMismatch {
            signer: "bob@a.test".into(),
            from: "alice@a.test".into()
        }
    );
    // Replayed onto another message, Alice's signature fails.
    let alice = sign(&master, MESSAGE, "alice@a.test");
    let field_end = alice.windows(2).position(|w| w == b"\r\n").unwrap();
    let mut field_end = field_end + 2;
    while matches!(alice[field_end], b' ' | b'\t') {
        field_end += alice[field_end..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap()
            + 2;
    }
    let other = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: other\r\n\r\nbody\r\n";
    let mut replayed = alice[..field_end].to_vec();
    replayed.extend_from_slice(other);
    assert!(verify(&master, &replayed).is_err());
}

#[test]
fn wrong_parameters_fail() {
    let master = master();
    let signed = sign(&master, MESSAGE, "alice@a.test");
    let other = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(10));
    assert_eq!(
        verify(&other, &signed).unwrap_err(),
        SignatureError::BadSignature
    );
}

#[test]
fn from_addresses_are_found_or_refused() {
    for (value, expected) in [
        ("alice@a.test", Some("alice@a.test")),
        ("Alice <ALICE@a.test>", Some("ALICE@a.test")),
        (
            "\"Smith, Alice\" <alice@a.test> (work)",
            Some("alice@a.test"),
        ),
        ("alice@a.test (Alice <x@y>)", Some("alice@a.test")),
        ("a@a.test, b@a.test", None),
        ("undisclosed:;", None),
        ("", None),
        ("Alice <alice@a.test", None),
        // A display name showing another address than the one signed.
        ("<ceo@bank.test> <mallory@a.test>", None),
        ("<ceo@bank.test> \"<mallory@a.test>\"", None),
        ("ceo@bank.test \"<mallory@a.test>\"", None),
        ("=?utf-8?q?ceo@bank.test?= <mallory@a.test>", None),
        ("=?utf-8?b?Y2VvQGJhbmsudGVzdA==?= <mallory@a.test>", None),
        ("\"ceo@bank.test\" <mallory@a.test>", None),
        ("<mallory@a.test> trailing", None),
        // ...but a display name that is the address itself is fine,
        // and so are encoded names without one.
        ("\"alice@a.test\" <alice@a.test>", Some("alice@a.test")),
        (
            "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@a.test>",
            Some("joerg@a.test"),
        ),
        ("\"M\\\"uller, Hans\" <hans@a.test>", Some("hans@a.test")),
        ("no-at-sign", None),
        // Not a dot-atom: could not stand in i= (`;` splits tags).
        ("`Bof <;ob@b.test>", None),
        ("\"a;b\"@a.test", None),
        ("a..b@a.test", None),
        ("o'brien+tag@a.test", Some("o'brien+tag@a.test")),
    ] {
        assert_eq!(mailbox_address(value).as_deref(), expected, "{value}");
    }
    assert_eq!(
        from_address(b"From: a@a.test\r\nFrom: b@a.test\r\n\r\n"),
        Err(SignatureError::NoFrom)
    );
    assert_eq!(
        from_address(b"From: Alice <Alice@A.Test>\r\n\r\n")
            .unwrap()
            .as_str(),
        "alice@a.test"
    );
}

#[test]
fn malformed_fields_are_syntax_errors() {
    for value in [
        &b" v=1; a=cc-bls12-381-sha256"[..],
        b" v=2; a=cc-bls12-381-sha256; i=a@b; n=1; h=from; bh=AA==; b=AA==",
        b" v=1; a=rsa-sha256; i=a@b; n=1; h=from; bh=AA==; b=AA==",
        b" v=1; v=1",
        b" garbage",
    ] {
        assert!(Parsed::parse(value).is_err(), "{value:?}");
    }
}

#[test]
fn many_fields_fold_and_the_sealed_flag_round_trips() {
    let master = master();
    let alice = Identity::parse("alice@a.test").unwrap();
    let mut message = String::from("From: alice@a.test\r\n");
    for i in 0..300 {
        message.push_str(&format!("To: user{i}@b.test\r\n"));
    }
    message.push_str("\r\nbody\r\n");
    let unsigned = Unsigned::new_sealed(message.as_bytes(), &alice, 1, Algorithm::ChaCheon);
    let signature = master
        .extract_signing(&alice, 1)
        .sign(unsigned.digest(), &mut ChaCha20Rng::seed_from_u64(3));
    let value = unsigned.field_value(&signature.into()).unwrap();
    assert!(
        value.split("\r\n").all(|line| line.len() < 80),
        "unfolded line in {value}"
    );
    let signed = unsigned
        .prepend(message.as_bytes(), &signature.into())
        .unwrap();
    let parsed = verify(&master, &signed).unwrap();
    assert!(parsed.sealed);
    assert!(
        !Parsed::parse(
            Unsigned::new(b"From: a@b\r\n\r\n", &alice, 1, Algorithm::ChaCheon)
                .field_value(&signature.into())
                .unwrap()
                .as_bytes()
        )
        .unwrap()
        .sealed
    );
    // An h= far longer than any signer writes is refused unread.
    let long = format!(
        " v=1; a={ALGORITHM}; i=a@a.test; n=1; h=from{}; bh=AA==; b=AA==",
        ":to".repeat(MAX_H_ENTRIES)
    );
    assert!(matches!(
        Parsed::parse(long.as_bytes()),
        Err(SignatureError::Syntax(e)) if e.contains("h= lists")
    ));
}

#[test]
fn b_value_removal_keeps_everything_else() {
    assert_eq!(
        without_b_value(b" v=1; bh=xyz;\r\n\tb=abc\r\n\t def"),
        b" v=1; bh=xyz;\r\n\tb="
    );
    assert_eq!(without_b_value(b" b=abc; v=1"), b" b=; v=1");
}
