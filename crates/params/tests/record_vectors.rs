//! Worked examples of the `_ibemailkey` TXT record for `docs/spec.md`, in
//! `tests/vectors/encodings/`: a generation and its signed successor as
//! published, and how the parser treats odd, malformed and foreign text.
//!
//! Each test builds its file's text and requires it to equal the committed
//! file; `IBEMAIL_WRITE_VECTORS=1 cargo test -p ibemail-params --test
//! record_vectors` rewrites the files (a format change).

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::MasterKey;
use ibemail_params::{MAX_POLICY_AGE, ParseError, Policy, Record, RecordSet, record_name};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[derive(Default)]
struct Doc(String);

impl Doc {
    fn comment(&mut self, text: &str) {
        for line in text.lines() {
            writeln!(self.0, "# {line}").unwrap();
        }
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }

    fn hex(&mut self, key: &str, value: &[u8]) {
        let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(self.0, "{key} = {hex}").unwrap();
    }

    /// A `_text` line, if the value survives one (no line breaks, nothing
    /// to trim).
    fn text(&mut self, key: &str, value: &str) {
        assert!(key.ends_with("_text"), "{key}");
        if !value.contains(['\r', '\n', '\t']) && value.trim() == value && !value.is_empty() {
            writeln!(self.0, "{key} = {value}").unwrap();
        }
    }

    fn decimal(&mut self, key: &str, value: impl core::fmt::Display) {
        assert!(key.ends_with("_decimal"), "{key}");
        writeln!(self.0, "{key} = {value}").unwrap();
    }
}

fn settle(name: &str, doc: &Doc) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/encodings");
    let path = dir.join(name);
    if std::env::var_os("IBEMAIL_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, &doc.0).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (IBEMAIL_WRITE_VECTORS=1 writes it)",
            path.display()
        )
    });
    for (n, (want, got)) in committed.lines().zip(doc.0.lines()).enumerate() {
        assert_eq!(want, got, "{name}:{}: committed vs recomputed", n + 1);
    }
    assert_eq!(committed, doc.0, "{name}");
}

/// The keys of `tests/vectors/continuity/kat_001.txt`: generation 1
/// (the signer) and generation 2 of b.test.
fn keys() -> (MasterKey, MasterKey) {
    let seed = |which: u8| {
        let mut seed = [0u8; 32];
        seed[0] = 1;
        seed[1] = which;
        seed[31] = 0xc5;
        seed
    };
    (
        MasterKey::generate(&mut ChaCha20Rng::from_seed(seed(1))),
        MasterKey::generate(&mut ChaCha20Rng::from_seed(seed(2))),
    )
}

#[test]
fn published_records() {
    let (g1, g2) = keys();
    let domain = "b.test";
    let policy = Some(Policy::require(604_800));
    let first = Record::new(1, g1.public_params())
        .with_signing(g1.signing_params())
        .with_policy(policy);
    let signed = Policy::signed_bytes(policy.as_ref());
    let mut second = Record::new(2, g2.public_params())
        .with_signing(g2.signing_params())
        .with_policy(policy);
    let successor = second.successor(domain, &signed).unwrap();
    let message = successor.message();
    let cs = g1.sign_successor(&successor);
    second = second.with_continuity(Some(cs));
    second.expires = Some(1_900_000_000);
    assert!(second.continues(domain, &g1.signing_params()));

    let mut doc = Doc::default();
    doc.comment(
        "The _ibemailkey TXT record (docs/spec.md, \"Parameters in DNS\"): generation 1\n\
         of b.test and generation 2, signed by generation 1 (the keys of\n\
         tests/vectors/continuity/kat_001.txt). record_N_string_K are the TXT\n\
         character-strings as published (at most 255 bytes each); a receiver\n\
         concatenates them.",
    );
    doc.text("domain_text", domain);
    doc.text("owner_name_text", &format!("{}.", record_name(domain)));
    for (n, record) in [(1, &first), (2, &second)] {
        doc.blank();
        doc.text(&format!("record_{n}_text"), &record.to_text());
        let strings = record.to_strings();
        doc.decimal(&format!("record_{n}_strings_decimal"), strings.len());
        for (k, s) in strings.iter().enumerate() {
            doc.hex(&format!("record_{n}_string_{}", k + 1), s.as_bytes());
            doc.text(&format!("record_{n}_string_{}_text", k + 1), s);
        }
        assert_eq!(&Record::parse_strings(&strings).unwrap(), record);
        assert!(strings.iter().all(|s| s.len() <= 255));
    }
    doc.blank();
    doc.comment(
        "What generation 1 signs for generation 2 (the continuity signature cs=):\n\
         the policy as canonically re-encoded, the signed message, the signature.",
    );
    doc.text("policy_signed_text", core::str::from_utf8(&signed).unwrap());
    doc.hex("continuity_message", &message);
    doc.hex("continuity_signature", &cs.to_bytes());
    doc.hex("signer_S", &g1.signing_params().to_bytes());
    settle("record.txt", &doc);
}

fn outcome(result: &Result<Record, ParseError>) -> String {
    match result {
        Ok(_) => "record".into(),
        Err(ParseError::NotIbemailRecord) => "foreign".into(),
        Err(ParseError::NotAscii) => "error not_ascii".into(),
        Err(ParseError::Syntax { .. }) => "error syntax".into(),
        Err(ParseError::DuplicateTag(tag)) => format!("error duplicate_tag {tag}"),
        Err(ParseError::MissingTag(tag)) => format!("error missing_tag {tag}"),
        Err(ParseError::UnsupportedVersion(_)) => "error unsupported_version".into(),
        Err(ParseError::UnsupportedAlgorithm(_)) => "error unsupported_algorithm".into(),
        Err(ParseError::UnsupportedCurve(_)) => "error unsupported_curve".into(),
        Err(ParseError::BadValue { tag, .. }) => format!("error bad_value {tag}"),
        Err(ParseError::InvalidPoint { tag, .. }) => format!("error invalid_point {tag}"),
        Err(other) => format!("error {other:?}"),
    }
}

#[test]
fn parsing() {
    let (g1, g2) = keys();
    let p = g1.public_params();
    let x = STANDARD.encode(p.x_bytes());
    let y = STANDARD.encode(p.y_bytes());
    let s = STANDARD.encode(g1.signing_params().to_bytes());
    let x_url_safe = x.replace('+', "-").replace('/', "_");
    assert_ne!(x_url_safe, x);
    let cs = STANDARD.encode(
        g1.sign_successor(
            &Record::new(2, g2.public_params())
                .with_signing(g2.signing_params())
                .successor("b.test", b"")
                .unwrap(),
        )
        .to_bytes(),
    );
    let base = format!("ver=1; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}");
    let mut identity_point = [0u8; 48];
    identity_point[0] = 0xc0;
    let identity_point = STANDARD.encode(identity_point);

    let cases: Vec<(&str, Vec<String>)> = vec![
        ("the minimal record", vec![base.clone()]),
        (
            "with S=, a policy, an expiry",
            vec![format!("{base}; S={s}; p=require; ma=604800; e=1900000000")],
        ),
        (
            "whitespace around tags, values and separators; a trailing ;",
            vec![format!(
                " ver = 1 ;\ta=bb2-fo;c = bls12-381 ;  n=1;X = {x} ; Y={y} ; "
            )],
        ),
        ("one record in three character-strings, cut anywhere", {
            let (a, rest) = base.split_at(20);
            let (b, c) = rest.split_at(60);
            vec![a.into(), b.into(), c.into()]
        }),
        (
            "whitespace inside a base64 value",
            vec![format!(
                "ver=1; a=bb2-fo; c=bls12-381; n=1; X={} {}; Y={y}",
                &x[..30],
                &x[30..]
            )],
        ),
        (
            "unknown tags are ignored, wherever they are",
            vec![format!(
                "ver=1; zz=whatever; a=bb2-fo; c=bls12-381; n=1; future_tag=1; X={x}; Y={y}; s=lower-case-s"
            )],
        ),
        (
            "c= is compared case-insensitively",
            vec![base.replace("bls12-381", "BLS12-381")],
        ),
        ("a= is not", vec![base.replace("bb2-fo", "BB2-FO")]),
        ("ver=1 exactly", vec![base.replace("ver=1", "ver=2")]),
        (
            "leading zeros in a decimal",
            vec![base.replace("n=1", "n=0001")],
        ),
        ("generation 0", vec![base.replace("n=1", "n=0")]),
        ("generation 2^32", vec![base.replace("n=1", "n=4294967296")]),
        (
            "generation 2^32 - 1",
            vec![base.replace("n=1", "n=4294967295")],
        ),
        ("a signed decimal", vec![base.replace("n=1", "n=+1")]),
        (
            "a malformed e= makes the record unusable",
            vec![format!("{base}; e=soon")],
        ),
        (
            "e= may be any 64-bit number",
            vec![format!("{base}; e=18446744073709551615")],
        ),
        (
            "ver= must come first, or the string is not an ibemail record",
            vec![format!("a=bb2-fo; ver=1; c=bls12-381; n=1; X={x}; Y={y}")],
        ),
        ("other TXT records at the name", vec!["v=spf1 -all".into()]),
        ("a known tag twice", vec![format!("{base}; n=1")]),
        (
            "a known optional tag twice",
            vec![format!("{base}; S={s}; S={s}")],
        ),
        (
            "a missing required tag",
            vec![format!("ver=1; a=bb2-fo; c=bls12-381; n=1; X={x}")],
        ),
        ("an element without =", vec![format!("{base}; junk")]),
        (
            "an empty element before the end",
            vec![format!("ver=1;; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}")],
        ),
        (
            "a tag name that is not a letter then letters, digits, _",
            vec![format!("{base}; 1x=3")],
        ),
        (
            "base64 is the standard alphabet (RFC 4648 section 4), not the URL-safe one",
            vec![format!(
                "ver=1; a=bb2-fo; c=bls12-381; n=1; X={x_url_safe}; Y={y}"
            )],
        ),
        ("padding where none belongs", vec![format!("{base}=")]),
        (
            "Y= the point at infinity",
            vec![format!(
                "ver=1; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={identity_point}"
            )],
        ),
        (
            "X= 47 bytes",
            vec![format!(
                "ver=1; a=bb2-fo; c=bls12-381; n=1; X={}; Y={y}",
                STANDARD.encode([1u8; 47])
            )],
        ),
        (
            "a byte that is not printable ASCII",
            vec![format!("{base}; z=caf\u{e9}")],
        ),
        (
            "a malformed S= is ignored: the record is usable, without S",
            vec![format!("{base}; S=AAAA")],
        ),
        (
            "S= the point at infinity is ignored",
            vec![format!("{base}; S={identity_point}")],
        ),
        (
            "p=require without ma= is no policy",
            vec![format!("{base}; S={s}; p=require")],
        ),
        (
            "ma= without p= is no policy",
            vec![format!("{base}; S={s}; ma=604800")],
        ),
        ("p=none", vec![format!("{base}; S={s}; p=none; ma=604800")]),
        (
            "p= is compared exactly",
            vec![format!("{base}; S={s}; p=Require; ma=604800")],
        ),
        (
            "a malformed ma= is no policy",
            vec![format!("{base}; S={s}; p=require; ma=soon")],
        ),
        (
            "ma= above one year is capped at 31557600",
            vec![format!("{base}; S={s}; p=require; ma=999999999999")],
        ),
        (
            "a malformed cs= is ignored",
            vec![format!("{base}; S={s}; cs=AAAA")],
        ),
        (
            "a cs= that is a valid point is kept (whether it verifies is the sender's check)",
            vec![format!("{}; S={s}; cs={cs}", base.replace("n=1", "n=2"))],
        ),
    ];

    let mut doc = Doc::default();
    doc.comment(
        "How a receiver of _ibemailkey TXT data parses it (docs/spec.md, \"Record\n\
         grammar\"). One case per block: the character-strings of one TXT record\n\
         (input_hex, or input_string_K_hex for several), then outcome_text:\n\
         record (usable, with the fields below), foreign (not an ibemail record,\n\
         skipped silently), or error <reason> [tag] (an ibemail record that is\n\
         unusable). policy_text is the policy as a sender uses it and as the\n\
         continuity signature covers it.",
    );
    for (why, strings) in &cases {
        doc.blank();
        doc.comment(why);
        if let [one] = strings.as_slice() {
            doc.hex("input_hex", one.as_bytes());
            doc.text("input_text", one);
        } else {
            for (k, string) in strings.iter().enumerate() {
                doc.hex(&format!("input_string_{}_hex", k + 1), string.as_bytes());
            }
        }
        let result = Record::parse_strings(strings);
        doc.text("outcome_text", &outcome(&result));
        if let Ok(record) = &result {
            doc.decimal("generation_decimal", record.generation);
            doc.text(
                "expires_text",
                &record.expires.map_or("none".into(), |e| e.to_string()),
            );
            doc.text(
                "signing_text",
                if record.signing.is_some() {
                    "present"
                } else {
                    "absent"
                },
            );
            let policy = Policy::signed_bytes(record.policy.as_ref());
            doc.text(
                "policy_text",
                if policy.is_empty() {
                    "none"
                } else {
                    core::str::from_utf8(&policy).unwrap()
                },
            );
            doc.text(
                "continuity_text",
                if record.continuity.is_some() {
                    "present"
                } else {
                    "absent"
                },
            );
        }
    }
    // Spot checks of what the table promises.
    let parse = |t: &str| Record::parse(t);
    assert_eq!(
        parse(&format!("{base}; S={s}; p=require; ma=999999999999"))
            .unwrap()
            .policy,
        Some(Policy::require(MAX_POLICY_AGE))
    );
    assert!(parse(&format!("{base}; S=AAAA")).unwrap().signing.is_none());
    settle("record_parsing.txt", &doc);
}

#[test]
fn record_sets() {
    let (g1, g2) = keys();
    let text = |n: u32, key: &MasterKey, expires: Option<u64>| {
        let mut r = Record::new(n, key.public_params()).with_signing(key.signing_params());
        r.expires = expires;
        vec![r.to_text()]
    };
    let cases: Vec<(&str, Vec<Vec<String>>, u64)> = vec![
        (
            "the highest generation that has not expired",
            vec![text(1, &g1, None), text(2, &g2, Some(2_000_000_000))],
            1_999_999_999,
        ),
        (
            "expired at e= itself",
            vec![text(1, &g1, None), text(2, &g2, Some(2_000_000_000))],
            2_000_000_000,
        ),
        (
            "the same generation twice, identical: one",
            vec![text(1, &g1, None), text(1, &g1, None)],
            0,
        ),
        (
            "the same generation with different keys: neither is used",
            vec![text(1, &g1, None), text(2, &g1, None), text(2, &g2, None)],
            0,
        ),
        (
            "the same generation differing only in e=: neither is used",
            vec![text(1, &g1, None), text(1, &g1, Some(5))],
            0,
        ),
        (
            "broken and foreign records beside a usable one",
            vec![
                vec!["v=spf1 -all".into()],
                vec!["ver=1; a=bb2-fo; broken".into()],
                text(1, &g1, None),
            ],
            0,
        ),
        ("nothing usable", vec![vec!["ver=1; n=1".into()]], 0),
    ];
    let mut doc = Doc::default();
    doc.comment(
        "Choosing the generation from every TXT record at the name (docs/spec.md,\n\
         \"Generation selection\"). One case per block: the records (each one\n\
         character-string here), the time now_decimal (Unix seconds), and the\n\
         generation a sender uses (selected_text), the generations dropped as\n\
         conflicting, and how many ibemail records were unusable.",
    );
    for (why, records, now) in &cases {
        doc.blank();
        doc.comment(why);
        for (k, r) in records.iter().enumerate() {
            doc.text(&format!("record_{}_text", k + 1), &r[0]);
        }
        doc.decimal("now_decimal", now);
        let set = RecordSet::from_txt_records(records);
        doc.text(
            "selected_text",
            &set.select(*now)
                .map_or("none".into(), |r| r.generation.to_string()),
        );
        doc.text(
            "conflicting_text",
            &if set.conflicting.is_empty() {
                "none".into()
            } else {
                set.conflicting
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        doc.decimal("rejected_decimal", set.rejected.len());
    }
    settle("record_sets.txt", &doc);
}
