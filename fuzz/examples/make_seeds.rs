//! Writes the seed corpus of the fuzz targets to `fuzz/seeds/<target>/`:
//! real records and real sealed messages (to the fixed test KGC of
//! `ibemail_fuzz::kgc`, so the `open` target can open them).
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds [SEEDS_DIR]
//! ```
//!
//! Deterministic (fixed RNG seeds): re-running it rewrites the same files
//! unless the KEM or the message format changed.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::ContentInfo;
use cms::enveloped_data::RecipientInfo;
use der::{Decode, Encode};
use ibemail_ibe::MasterKey;
use ibemail_message::{IbeRecipient, Limits, Recipient, seal};
use ibemail_params::Record;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create seeds dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

/// The CMS DER inside a sealed message (its base64 body).
fn der_of(sealed: &[u8]) -> Vec<u8> {
    let split = sealed
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    let body: Vec<u8> = sealed[split + 4..]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(body).expect("sealed body is base64")
}

fn main() {
    let out = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
        PathBuf::from,
    );
    let kgc = ibemail_fuzz::kgc();
    let other = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(7)).public_params();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let limits = Limits::default();

    // --- record_parser
    let dir = out.join("record_parser");
    let mut record = Record::new(1, kgc.params.clone());
    let plain = record.to_text();
    write(&dir, "valid", plain.as_bytes());
    record.expires = Some(1_900_000_000);
    let expiring = record.to_text();
    write(&dir, "valid_expires", expiring.as_bytes());
    let (a, b) = plain.split_at(plain.len() / 2);
    write(
        &dir,
        "split_strings",
        &[a.as_bytes(), b.as_bytes()].join(&0xffu8),
    );
    let two = Record::new(2, other.clone()).to_text();
    write(
        &dir,
        "two_records",
        &[plain.as_bytes(), two.as_bytes()].join(&0xfeu8),
    );
    let conflict = Record::new(1, other.clone()).to_text();
    write(
        &dir,
        "conflicting_generation",
        &[plain.as_bytes(), conflict.as_bytes(), b"v=spf1 -all"].join(&0xfeu8),
    );
    let spaced = plain.replace("; ", " ;\t").replace("X=", "X = ");
    write(&dir, "whitespace", spaced.as_bytes());
    write(&dir, "foreign", b"v=spf1 include:_spf.b.test -all");
    write(
        &dir,
        "unknown_tag",
        format!("{plain}; z=future;").as_bytes(),
    );
    write(
        &dir,
        "bad_version",
        plain.replacen("ver=1", "ver=2", 1).as_bytes(),
    );

    // --- open and cms_decode: real sealed messages
    let bob = IbeRecipient {
        identity: kgc.bob.clone(),
        generation: ibemail_fuzz::GENERATION,
        params: kgc.params.clone(),
    };
    let carol = IbeRecipient {
        identity: ibemail_ibe::Identity::parse("carol@b.test").expect("address"),
        ..bob.clone()
    };
    let dave = IbeRecipient {
        identity: ibemail_ibe::Identity::parse("dave@c.test").expect("address"),
        generation: 3,
        params: other.clone(),
    };
    let bob_gen2 = IbeRecipient {
        generation: 2,
        ..bob.clone()
    };
    let extra: Vec<IbeRecipient> = (0..4)
        .map(|i| IbeRecipient {
            identity: ibemail_ibe::Identity::parse(&format!("u{i}@b.test")).expect("address"),
            ..bob.clone()
        })
        .collect();

    let original = b"Return-Path: <alice@a.test>\r\nFrom: Alice <alice@a.test>\r\n\
To: bob@b.test\r\nCc: carol@b.test\r\nSubject: fuzz seed\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\
Message-ID: <seed@a.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello Bob.\r\n";
    let mut seal_to = |message: &[u8], recipients: &[&IbeRecipient]| -> Vec<u8> {
        let dyns: Vec<&dyn Recipient> = recipients.iter().map(|r| *r as &dyn Recipient).collect();
        seal(message, &dyns, &mut rng, &limits)
            .expect("seal")
            .to_bytes()
    };

    let mut many: Vec<&IbeRecipient> = vec![&bob];
    many.extend(extra.iter());
    let once = seal_to(original, &[&bob]);
    let twice = seal_to(&once, &[&bob]);
    let mut messages: Vec<(&str, Vec<u8>)> = vec![
        ("bob", seal_to(original, &[&bob])),
        ("bob_carol_dave", seal_to(original, &[&bob, &carol, &dave])),
        ("carol_only", seal_to(original, &[&carol])),
        ("bob_generation_2", seal_to(original, &[&bob_gen2])),
        ("five_recipients", seal_to(original, &many)),
        ("empty_body", seal_to(b"From: a@a.test\r\n\r\n", &[&bob])),
        ("no_header", seal_to(b"just a line\n", &[&bob])),
        ("nested_2", twice.clone()),
        ("nested_3", seal_to(&twice, &[&bob])),
        ("nested_foreign_outer", seal_to(&once, &[&carol])),
    ];
    // One real-world message from the shared corpus, if it is beside the checkout.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/mail-parser/rfc");
    if let Ok(entries) = std::fs::read_dir(&corpus) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        {
            let bytes = std::fs::read(path).expect("read corpus message");
            if bytes.len() < 3000 {
                messages.push(("corpus_rfc", seal_to(&bytes, &[&bob])));
                break;
            }
        }
    }

    for (name, sealed) in &messages {
        // What the `open` target makes of it, so a seed that stopped opening shows.
        let outcome = ibemail_message::open(
            sealed,
            std::slice::from_ref(&kgc.bob),
            &ibemail_fuzz::limits(),
            |_, generation, capsule| {
                if generation != ibemail_fuzz::GENERATION {
                    return Err(ibemail_message::CapsuleError::UnknownGeneration(generation));
                }
                kgc.bob_key
                    .decapsulate(&kgc.params, capsule)
                    .map_err(|_| ibemail_message::CapsuleError::Rejected)
            },
        );
        match outcome {
            Ok(opened) => println!("{name:<22} opens for bob ({} layers)", opened.layers),
            Err(e) => println!("{name:<22} {e}"),
        }
        let der = der_of(sealed);
        for target in ["open", "cms_decode"] {
            let dir = out.join(target);
            write(&dir, &format!("{name}.eml"), sealed);
            // Inputs starting with 0x30 are raw DER (see ibemail_fuzz::as_message).
            write(&dir, &format!("{name}.der"), &der);
        }
        // 0x00 + DER: the targets recompute the nonce (ibemail_fuzz::fix_nonce).
        let fixed = ibemail_fuzz::fix_nonce(&der).expect("nonce found in seed DER");
        assert_eq!(fixed, der, "fix_nonce must not change a genuine message");
        write(
            &out.join("open"),
            &format!("{name}.fix"),
            &[&[0u8][..], &der].concat(),
        );
        // The KEMRecipientInfos alone, for cms_decode's direct decoding.
        let ci = ContentInfo::from_der(&der).expect("ContentInfo");
        let aed: AuthEnvelopedData = ci.content.decode_as().expect("AuthEnvelopedData");
        for (i, info) in aed.recip_infos.0.iter().enumerate() {
            if let RecipientInfo::Ori(ori) = info {
                let kemri = ori.ori_value.to_der().expect("encode");
                write(&out.join("cms_decode"), &format!("{name}.kemri{i}"), &kemri);
            }
        }
    }
    println!("seeds written to {}", out.display());
}
