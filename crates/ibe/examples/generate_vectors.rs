//! Writes the known-answer vectors under `tests/vectors/ibe/`.
//!
//! `cargo run -p ibemail-ibe --example generate_vectors -- tests/vectors/ibe`
//!
//! The committed files are the reference: the test `vectors` recomputes every
//! value from the inputs and must agree. Regenerate only for a deliberate
//! format change (and then bump the scheme version in the DSTs).
//!
//! Each file is `name = value` lines (hex unless the name says otherwise);
//! `#` starts a comment. `fail_*` files describe inputs that must be rejected,
//! with `expect` naming the error.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use blstrs::{G1Affine, G2Affine};
use ibemail_ibe::{Identity, MasterKey, encapsulate_with_seed, hazmat, identity_scalar};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

fn write(dir: &Path, name: &str, body: &str) {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, body).unwrap();
    println!("wrote {}", path.display());
}

fn kat(dir: &Path, index: usize, address: &str, generation: u32) {
    let mut seed = [0u8; 32];
    seed[0] = index as u8;
    seed[31] = 0x5a;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let identity = Identity::parse(address).unwrap();
    let mut sigma = [0u8; 32];
    rng.fill_bytes(&mut sigma);
    let h = identity_scalar(&identity, generation);
    let r = hazmat::user_key_scalar(&master, &identity, generation);
    let key = master.extract(&identity, generation);
    let s = hazmat::fo_scalar(&sigma, &params, &identity, generation);
    let (capsule, secret) = encapsulate_with_seed(&params, &identity, generation, &sigma).unwrap();

    let mut out = String::new();
    writeln!(out, "# ibemail BB2-KEM known-answer vector {index}").unwrap();
    writeln!(
        out,
        "# master key drawn from ChaCha20(rng_seed); sigma is the next 32 bytes"
    )
    .unwrap();
    writeln!(out, "rng_seed = {}", hex::encode(seed)).unwrap();
    writeln!(
        out,
        "master_key = {}",
        hex::encode(master.to_bytes().as_ref())
    )
    .unwrap();
    writeln!(out, "X = {}", hex::encode(params.x_bytes())).unwrap();
    writeln!(out, "Y = {}", hex::encode(params.y_bytes())).unwrap();
    writeln!(out, "address_text = {address}").unwrap();
    writeln!(out, "identity_text = {}", identity.as_str()).unwrap();
    writeln!(out, "generation_decimal = {generation}").unwrap();
    writeln!(out, "h = {}", hex::encode(h.to_bytes_be())).unwrap();
    writeln!(out, "r = {}", hex::encode(r.to_bytes_be())).unwrap();
    writeln!(out, "user_key = {}", hex::encode(key.to_bytes().as_ref())).unwrap();
    writeln!(out, "sigma = {}", hex::encode(sigma)).unwrap();
    writeln!(out, "s = {}", hex::encode(s.to_bytes_be())).unwrap();
    writeln!(out, "v_pow_s = {}", hex::encode(hazmat::pairing_value(&s))).unwrap();
    writeln!(out, "capsule = {}", hex::encode(capsule.to_bytes())).unwrap();
    writeln!(out, "shared_secret = {}", hex::encode(secret.as_bytes())).unwrap();
    write(dir, &format!("kat_{index:03}.txt"), &out);
}

/// A compressed G1 encoding of a point on the curve but outside G1.
fn g1_outside_subgroup() -> [u8; 48] {
    for x in 1u64.. {
        let mut bytes = [0u8; 48];
        bytes[40..].copy_from_slice(&x.to_be_bytes());
        bytes[0] |= 0x80;
        if let Some(p) = Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(&bytes))
            && !bool::from(p.is_torsion_free())
        {
            return bytes;
        }
    }
    unreachable!()
}

/// A compressed G1 encoding whose x has no point on the curve.
fn g1_off_curve() -> [u8; 48] {
    for x in 1u64.. {
        let mut bytes = [0u8; 48];
        bytes[40..].copy_from_slice(&x.to_be_bytes());
        bytes[0] |= 0x80;
        if Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(&bytes)).is_none() {
            return bytes;
        }
    }
    unreachable!()
}

/// A compressed G2 encoding of a point on the twist but outside G2.
fn g2_outside_subgroup() -> [u8; 96] {
    for x in 1u64.. {
        let mut bytes = [0u8; 96];
        bytes[88..].copy_from_slice(&x.to_be_bytes()); // x = 0·u + x
        bytes[0] |= 0x80;
        if let Some(p) = Option::<G2Affine>::from(G2Affine::from_compressed_unchecked(&bytes))
            && !bool::from(p.is_torsion_free())
        {
            return bytes;
        }
    }
    unreachable!()
}

fn identity_g1() -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = 0xc0;
    b
}

fn identity_g2() -> [u8; 96] {
    let mut b = [0u8; 96];
    b[0] = 0xc0;
    b
}

/// The BLS12-381 group order q, big-endian: the smallest non-canonical scalar.
const ORDER: &str = "73eda753299d7d483339d80809a1d80553bda402fffe5bfeffffffff00000001";

fn fail(dir: &Path, name: &str, kind: &str, expect: &str, why: &str, input: &str, extra: &str) {
    let body = format!("# {why}\nkind = {kind}\nexpect = {expect}\n{extra}input = {input}\n");
    write(dir, &format!("fail_{name}.txt"), &body);
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/vectors/ibe".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();

    kat(&dir, 1, "alice@b.test", 1);
    kat(&dir, 2, "Bob.Smith+news@B.Test", 2);
    kat(&dir, 3, "carol@xn--bcher-kva.example", 4_294_967_295);
    kat(&dir, 4, "user@Bücher.example", 1);

    // A valid reference capsule and user key to corrupt.
    let mut rng = ChaCha20Rng::from_seed([9u8; 32]);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = Identity::parse("alice@b.test").unwrap();
    let (capsule, _) = encapsulate_with_seed(&params, &alice, 1, &[7u8; 32]).unwrap();
    let capsule = capsule.to_bytes();
    let key = master.extract(&alice, 1).to_bytes();
    let context = format!(
        "master_key = {}\nidentity_text = alice@b.test\ngeneration_decimal = 1\n",
        hex::encode(master.to_bytes().as_ref())
    );
    let params_hex = format!(
        "X = {}\nY = {}\n",
        hex::encode(params.x_bytes()),
        hex::encode(params.y_bytes())
    );

    let with_c1 = |c1: &[u8]| hex::encode([c1, &capsule[48..]].concat());
    let with_c2 = |c2: &[u8]| hex::encode([&capsule[..48], c2, &capsule[96..]].concat());
    fail(
        &dir,
        "capsule_c1_off_curve",
        "capsule",
        "not_on_curve",
        "C1 x-coordinate has no point on the curve",
        &with_c1(&g1_off_curve()),
        "",
    );
    fail(
        &dir,
        "capsule_c1_wrong_subgroup",
        "capsule",
        "rejected",
        "C1 is on the curve but not in G1 (small cofactor component): decoding defers C1's \
         subgroup check, the FO re-encryption check must reject",
        &with_c1(&g1_outside_subgroup()),
        &format!("{context}{params_hex}"),
    );
    fail(
        &dir,
        "capsule_c2_wrong_subgroup",
        "capsule",
        "not_in_subgroup",
        "C2 is on the curve but not in G1 (small cofactor component)",
        &with_c2(&g1_outside_subgroup()),
        "",
    );
    fail(
        &dir,
        "capsule_c2_identity",
        "capsule",
        "identity_point",
        "C2 is the point at infinity",
        &with_c2(&identity_g1()),
        "",
    );
    fail(
        &dir,
        "capsule_c1_uncompressed_flag",
        "capsule",
        "not_on_curve",
        "C1 lacks the compression flag",
        &with_c1(&{
            let mut b = [0u8; 48];
            b.copy_from_slice(&capsule[..48]);
            b[0] &= 0x7f;
            b
        }),
        "",
    );
    fail(
        &dir,
        "capsule_c1_x_not_reduced",
        "capsule",
        "not_on_curve",
        "C1 x-coordinate is >= p",
        &with_c1(&{
            let mut b = [0xffu8; 48];
            b[0] = 0x9f;
            b
        }),
        "",
    );
    fail(
        &dir,
        "capsule_truncated",
        "capsule",
        "length",
        "capsule one byte short",
        &hex::encode(&capsule[..127]),
        "",
    );
    fail(
        &dir,
        "capsule_extended",
        "capsule",
        "length",
        "capsule one byte long",
        &hex::encode([&capsule[..], &[0u8]].concat()),
        "",
    );
    fail(
        &dir,
        "capsule_c3_modified",
        "capsule",
        "rejected",
        "valid points, c3 changed: the FO re-encryption check must reject",
        &hex::encode({
            let mut c = capsule;
            c[127] ^= 1;
            c
        }),
        &format!("{context}{params_hex}"),
    );
    fail(
        &dir,
        "capsule_c2_swapped_for_c1",
        "capsule",
        "rejected",
        "valid points in the wrong order",
        &hex::encode([&capsule[48..96], &capsule[..48], &capsule[96..]].concat()),
        &format!("{context}{params_hex}"),
    );

    let x = params.x_bytes();
    let y = params.y_bytes();
    fail(
        &dir,
        "params_x_wrong_subgroup",
        "public_params",
        "not_in_subgroup",
        "X on the curve, outside G1",
        &hex::encode([&g1_outside_subgroup()[..], &y].concat()),
        "",
    );
    fail(
        &dir,
        "params_y_identity",
        "public_params",
        "identity_point",
        "Y is the point at infinity",
        &hex::encode([&x[..], &identity_g1()].concat()),
        "",
    );
    fail(
        &dir,
        "params_x_off_curve",
        "public_params",
        "not_on_curve",
        "X has no point on the curve",
        &hex::encode([&g1_off_curve()[..], &y].concat()),
        "",
    );
    fail(
        &dir,
        "params_truncated",
        "public_params",
        "length",
        "parameters 95 bytes",
        &hex::encode(&[&x[..], &y].concat()[..95]),
        "",
    );

    let r = &key[..32];
    let k = &key[32..];
    fail(
        &dir,
        "user_key_r_equals_order",
        "user_key",
        "non_canonical_scalar",
        "r = q is not canonical",
        &format!("{ORDER}{}", hex::encode(k)),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );
    fail(
        &dir,
        "user_key_r_all_ones",
        "user_key",
        "non_canonical_scalar",
        "r = 2^256 - 1",
        &format!("{}{}", "ff".repeat(32), hex::encode(k)),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );
    fail(
        &dir,
        "user_key_r_zero",
        "user_key",
        "zero_scalar",
        "r = 0",
        &format!("{}{}", "00".repeat(32), hex::encode(k)),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );
    fail(
        &dir,
        "user_key_k_wrong_subgroup",
        "user_key",
        "not_in_subgroup",
        "K on the twist, outside G2",
        &format!("{}{}", hex::encode(r), hex::encode(g2_outside_subgroup())),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );
    fail(
        &dir,
        "user_key_k_identity",
        "user_key",
        "identity_point",
        "K is the point at infinity",
        &format!("{}{}", hex::encode(r), hex::encode(identity_g2())),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );
    fail(
        &dir,
        "user_key_truncated",
        "user_key",
        "length",
        "user key one byte short",
        &hex::encode(&key[..127]),
        "identity_text = alice@b.test\ngeneration_decimal = 1\n",
    );

    let m = master.to_bytes();
    fail(
        &dir,
        "master_key_x_non_canonical",
        "master_key",
        "non_canonical_scalar",
        "x = q",
        &format!("{ORDER}{}", hex::encode(&m[32..])),
        "",
    );
    fail(
        &dir,
        "master_key_y_zero",
        "master_key",
        "zero_scalar",
        "y = 0",
        &format!(
            "{}{}{}",
            hex::encode(&m[..32]),
            "00".repeat(32),
            hex::encode(&m[64..])
        ),
        "",
    );
}
