//! Writes the continuity-signature vectors under `tests/vectors/continuity/`.
//!
//! `cargo run -p ibemail-ibe --example generate_continuity_vectors -- tests/vectors/continuity`
//!
//! The committed files are the reference: the test `continuity_vectors`
//! recomputes every value and must agree. Each file is `name = value` lines
//! (hex unless the name says `_text` or `_decimal`); `fail_*` files hold a
//! signature (or signed fields) that must be rejected, `expect` naming why.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use blstrs::G2Affine;
use ibemail_ibe::{MasterKey, Successor};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn seed(index: u8, which: u8) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[0] = index;
    seed[1] = which;
    seed[31] = 0xc5;
    seed
}

struct Case {
    index: u8,
    domain: &'static str,
    generation: u32,
    policy: &'static str,
}

/// The common fields of a vector: both generations' keys and the
/// successor's record fields, the signed message and the signature.
fn fields(case: &Case) -> (String, Vec<u8>) {
    let signer = MasterKey::generate(&mut ChaCha20Rng::from_seed(seed(case.index, 1)));
    let successor = MasterKey::generate(&mut ChaCha20Rng::from_seed(seed(case.index, 2)));
    let (params, signing) = (successor.public_params(), successor.signing_params());
    let s = Successor {
        domain: case.domain,
        generation: case.generation,
        params: &params,
        signing: &signing,
        policy: case.policy.as_bytes(),
    };
    let sig = signer.sign_successor(&s);
    let mut out = String::new();
    writeln!(
        out,
        "signer_rng_seed = {}",
        hex::encode(seed(case.index, 1))
    )
    .unwrap();
    writeln!(
        out,
        "signer_S = {}",
        hex::encode(signer.signing_params().to_bytes())
    )
    .unwrap();
    writeln!(
        out,
        "successor_rng_seed = {}",
        hex::encode(seed(case.index, 2))
    )
    .unwrap();
    writeln!(out, "domain_text = {}", case.domain).unwrap();
    writeln!(out, "generation_decimal = {}", case.generation).unwrap();
    writeln!(out, "X = {}", hex::encode(params.x_bytes())).unwrap();
    writeln!(out, "Y = {}", hex::encode(params.y_bytes())).unwrap();
    writeln!(out, "S = {}", hex::encode(signing.to_bytes())).unwrap();
    writeln!(out, "policy_text = {}", case.policy).unwrap();
    writeln!(out, "message = {}", hex::encode(s.message())).unwrap();
    (out, sig.to_bytes().to_vec())
}

fn write(dir: &Path, name: &str, body: &str) {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, body).unwrap();
    println!("wrote {}", path.display());
}

fn g2_outside_subgroup() -> [u8; 96] {
    for x in 1u64.. {
        let mut bytes = [0u8; 96];
        bytes[88..].copy_from_slice(&x.to_be_bytes());
        bytes[0] |= 0x80;
        if let Some(p) = Option::<G2Affine>::from(G2Affine::from_compressed_unchecked(&bytes))
            && !bool::from(p.is_torsion_free())
        {
            return bytes;
        }
    }
    unreachable!()
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/vectors/continuity".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        Case {
            index: 1,
            domain: "b.test",
            generation: 2,
            policy: "p=require;ma=604800",
        },
        Case {
            index: 2,
            domain: "xn--bcher-kva.example",
            generation: 17,
            policy: "",
        },
        Case {
            index: 3,
            domain: "example.org",
            generation: 4_294_967_295,
            policy: "p=require;ma=31557600",
        },
    ];
    for case in &cases {
        let (body, sig) = fields(case);
        write(
            &dir,
            &format!("kat_{:03}.txt", case.index),
            &format!(
                "# ibemail continuity signature {}: generation {} of {} signed by generation {}\n{body}signature = {}\n",
                case.index,
                case.generation,
                case.domain,
                case.generation - 1,
                hex::encode(sig)
            ),
        );
    }
    // Must-reject: the first case with one thing changed.
    let (body, sig) = fields(&cases[0]);
    let mut flipped = sig.clone();
    flipped[50] ^= 1;
    let other_signer = MasterKey::generate(&mut ChaCha20Rng::from_seed(seed(9, 1)));
    let other_s = hex::encode(other_signer.signing_params().to_bytes());
    let mut identity = [0u8; 96];
    identity[0] = 0xc0;
    let fails: [(&str, &str, String, String); 7] = [
        (
            "wrong_signer",
            "bad_signature",
            format!("signer_S = {other_s}\n"),
            hex::encode(&sig),
        ),
        (
            "generation_changed",
            "bad_signature",
            "generation_decimal = 3\n".into(),
            hex::encode(&sig),
        ),
        (
            "policy_lowered",
            "bad_signature",
            "policy_text = \n".into(),
            hex::encode(&sig),
        ),
        (
            "bit_flipped",
            "rejected",
            String::new(),
            hex::encode(&flipped),
        ),
        (
            "identity_point",
            "identity_point",
            String::new(),
            hex::encode(identity),
        ),
        (
            "outside_subgroup",
            "not_in_subgroup",
            String::new(),
            hex::encode(g2_outside_subgroup()),
        ),
        (
            "truncated",
            "length",
            String::new(),
            hex::encode(&sig[..95]),
        ),
    ];
    for (name, expect, change, signature) in fails {
        // The changed line replaces the vector's own.
        let mut text = String::new();
        let changed_key = change.split(" = ").next().unwrap_or("").to_string();
        for line in body.lines() {
            if line.starts_with("message = ") {
                continue; // recomputed from the fields by the test
            }
            if !changed_key.is_empty() && line.starts_with(&format!("{changed_key} = ")) {
                text.push_str(&change);
            } else {
                text.push_str(line);
                text.push('\n');
            }
        }
        write(
            &dir,
            &format!("fail_{name}.txt"),
            &format!(
                "# must be rejected: {name}\nexpect = {expect}\n{text}signature = {signature}\n"
            ),
        );
    }
}
