//! Worked examples of the encodings and hashes in `docs/spec.md`, kept in
//! `tests/vectors/encodings/` so that the numbers the specification quotes
//! cannot drift from the code.
//!
//! Each test builds its file's text and requires it to equal the committed
//! file. Where it can, it computes a value twice: through the public API,
//! and from the byte layout the specification gives (own
//! `expand_message_xmd`, own HKDF input, own scalar reduction), and the two
//! must agree. `IBEMAIL_WRITE_VECTORS=1 cargo test -p ibemail-ibe --test
//! encoding_vectors` rewrites the files instead (a format change).
//!
//! Files are `name = value` lines as in `tests/vectors/ibe/`: hex unless
//! the name ends in `_text` or `_decimal`; `#` starts a comment. Files
//! with several cases separate them by blank lines.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use blstrs::{
    Bls12, Fp, Fp2, Fp12, G1Affine, G1Projective, G2Affine, G2Projective, Gt, Scalar, pairing,
};
use ff::Field;
use group::{Curve, Group, prime::PrimeCurveAffine};
use hkdf::Hkdf;
use ibemail_ibe::{
    Capsule, DecodeError, Identity, IdentityError, MasterKey, PublicParams, UserKey,
    encapsulate_with_seed, hazmat, identity_scalar, verify, verify_certified,
};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Writing and comparing vector files

#[derive(Default)]
struct Doc(String);

impl Doc {
    fn comment(&mut self, text: &str) {
        for line in text.lines() {
            if line.is_empty() {
                self.0.push_str("#\n");
            } else {
                writeln!(self.0, "# {line}").unwrap();
            }
        }
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }

    fn hex(&mut self, key: &str, value: impl AsRef<[u8]>) {
        writeln!(self.0, "{key} = {}", hex::encode(value)).unwrap();
    }

    fn text(&mut self, key: &str, value: &str) {
        assert!(key.ends_with("_text"), "{key}");
        assert!(
            !value.contains(['\r', '\n']) && value.trim() == value,
            "{key}: {value:?} cannot be a _text line"
        );
        writeln!(self.0, "{key} = {value}").unwrap();
    }

    fn decimal(&mut self, key: &str, value: impl core::fmt::Display) {
        assert!(key.ends_with("_decimal"), "{key}");
        writeln!(self.0, "{key} = {value}").unwrap();
    }
}

fn vector_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/encodings")
}

/// Requires the committed file to equal `doc`, or writes it when
/// `IBEMAIL_WRITE_VECTORS` is set.
fn settle(name: &str, doc: &Doc) {
    let path = vector_dir().join(name);
    if std::env::var_os("IBEMAIL_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(vector_dir()).unwrap();
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
    assert_eq!(
        committed.lines().count(),
        doc.0.lines().count(),
        "{name}: number of lines"
    );
    assert_eq!(committed, doc.0, "{name}");
}

// ---------------------------------------------------------------------------
// The specification's primitives, written out independently of the crate

/// RFC 9380 §5.3.1 `expand_message_xmd` with SHA-256 (§5.3.3 for long DSTs).
fn xmd(msg: &[u8], dst: &[u8], len: usize) -> Vec<u8> {
    let dst: Vec<u8> = if dst.len() > 255 {
        Sha256::new()
            .chain_update(b"H2C-OVERSIZE-DST-")
            .chain_update(dst)
            .finalize()
            .to_vec()
    } else {
        dst.to_vec()
    };
    let dst_prime = [&dst[..], &[dst.len() as u8]].concat();
    let ell = len.div_ceil(32);
    let b0 = Sha256::new()
        .chain_update([0u8; 64])
        .chain_update(msg)
        .chain_update((len as u16).to_be_bytes())
        .chain_update([0u8])
        .chain_update(&dst_prime)
        .finalize();
    let mut out = Vec::new();
    let mut previous = vec![0u8; 32];
    for i in 1..=ell {
        let chained: Vec<u8> = b0.iter().zip(&previous).map(|(a, b)| a ^ b).collect();
        let bi = Sha256::new()
            .chain_update(&chained)
            .chain_update([i as u8])
            .chain_update(&dst_prime)
            .finalize();
        out.extend_from_slice(&bi);
        previous = bi.to_vec();
    }
    out.truncate(len);
    out
}

/// OS2IP of big-endian bytes, reduced modulo the group order q.
fn os2ip_mod_q(bytes: &[u8]) -> Scalar {
    let base = Scalar::from(256u64);
    bytes.iter().fold(Scalar::ZERO, |acc, &b| {
        acc * base + Scalar::from(u64::from(b))
    })
}

/// RFC 9380 `hash_to_field` for the scalar field: 48 bytes, OS2IP mod q.
fn hash_to_scalar(msg: &[u8], dst: &[u8]) -> Scalar {
    os2ip_mod_q(&xmd(msg, dst, 48))
}

fn hkdf_expand(prk: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::from_prk(prk)
        .unwrap()
        .expand(info, &mut out)
        .unwrap();
    out
}

/// `u16(len(address)) ‖ address ‖ u32(generation)`, all big-endian.
fn identity_context(address: &str, generation: u32) -> Vec<u8> {
    let mut out = (address.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(address.as_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out
}

/// The 576-byte encoding of an `Fp12`: c0.c0.c0, c0.c0.c1, c0.c1.c0, …,
/// c1.c2.c1, each coefficient 48 bytes big-endian.
fn fp12_bytes(f: &Fp12) -> Vec<u8> {
    let mut out = Vec::with_capacity(576);
    for fp6 in [f.c0(), f.c1()] {
        for fp2 in [fp6.c0(), fp6.c1(), fp6.c2()] {
            for fp in [fp2.c0(), fp2.c1()] {
                out.extend_from_slice(&fp.to_bytes_be());
            }
        }
    }
    out
}

fn gt_bytes(g: &Gt) -> Vec<u8> {
    fp12_bytes(&Fp12::from(*g))
}

fn fp(n: u64) -> Fp {
    Fp::from(n)
}

fn fp2(c0: Fp, c1: Fp) -> Fp2 {
    Fp2::new(c0, c1)
}

/// The `Fp12` whose encoding has the coefficients `c` in order (built from
/// blst's layout, `fp6[i].fp2[j].fp[k]`, which the test ties to the
/// `c0()`/`c1()` accessors the encoding uses).
fn fp12(c: [Fp; 12]) -> Fp12 {
    let mut raw = blst::blst_fp12::default();
    let slots = raw
        .fp6
        .iter_mut()
        .flat_map(|fp6| fp6.fp2.iter_mut())
        .flat_map(|fp2| fp2.fp.iter_mut());
    for (slot, value) in slots.zip(c) {
        *slot = blst::blst_fp::from(value);
    }
    Fp12::from(raw)
}

const DST_PREFIX: &str = "IBEMAIL-V1-BB2KEM-BLS12381-SHA256-";

/// The master key of `tests/vectors/ibe/kat_001.txt`, and the RNG after it.
fn kat_001_master() -> (MasterKey, ChaCha20Rng) {
    let mut seed = [0u8; 32];
    seed[0] = 1;
    seed[31] = 0x5a;
    let mut rng = ChaCha20Rng::from_seed(seed);
    (MasterKey::generate(&mut rng), rng)
}

// ---------------------------------------------------------------------------
// e(g1, g2) and the target-group encoding

#[test]
fn pairing_g1_g2() {
    let g1 = G1Affine::generator();
    let g2 = G2Affine::generator();
    let v = pairing(&g1, &g2);

    // The tower the encoding names: u^2 = -1, v^3 = u + 1, w^2 = v, with
    // u, v, w the elements whose only non-zero coefficient (1) is at
    // c0.c0.c1, c0.c1.c0 and c1.c0.c0 of the encoding.
    let basis = |index: usize| {
        let mut coefficients = [Fp::ZERO; 12];
        coefficients[index] = Fp::ONE;
        fp12(coefficients)
    };
    let (one, u, v_basis, w) = (basis(0), basis(1), basis(2), basis(6));
    assert_eq!(one, Fp12::ONE);
    assert_eq!(u.square(), -Fp12::ONE, "u^2 = -1");
    assert_eq!(v_basis.square() * v_basis, one + u, "v^3 = u + 1");
    assert_eq!(w.square(), v_basis, "w^2 = v");
    // The encoding's order, on an element with known coefficients 1..12.
    let counting = fp12(core::array::from_fn(|i| fp(i as u64 + 1)));
    let encoded = fp12_bytes(&counting);
    for i in 0..12 {
        assert_eq!(
            encoded[48 * i..48 * (i + 1)],
            fp(i as u64 + 1).to_bytes_be(),
            "coefficient {i}"
        );
    }
    assert_eq!(counting.c1().c2().c1(), fp(12));
    assert_eq!(
        Fp12::from(fp2(fp(1), fp(2))),
        fp12(core::array::from_fn(|i| fp([
            1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        ][i])))
    );

    // ibemail's hashed value: the crate's encoding, blstrs' Gt generator.
    let e = gt_bytes(&v);
    assert_eq!(e, hazmat::pairing_value(&Scalar::ONE));
    assert_eq!(Gt::generator(), v);
    // The same value from the Miller loop and final exponentiation the
    // decapsulation uses.
    let prepared = blstrs::G2Prepared::from(g2);
    let from_loop = Bls12::multi_miller_loop(&[(&g1, &prepared)]).final_exponentiation();
    assert_eq!(from_loop, v);

    // T = f_{|z|,Q}(P)^((p^12-1)/r), the Miller loop over |z| without the
    // sign correction, is the element of order r with conj(T^3) = e(g1, g2);
    // cubing is a bijection on a group of order r (3 does not divide r), so
    // T is unique.
    // tests/vectors/encodings/reference_check.py computes T from first
    // principles (integers only) and checks it against this file.
    let inverse_of_3 = Scalar::from(3u64).invert().unwrap();
    let t = (-v) * inverse_of_3;
    assert_eq!(-(t * Scalar::from(3u64)), v, "e = conj(T^3) = T^-3");
    let mut conjugate = Fp12::from(t);
    conjugate.conjugate();
    assert_eq!(
        Gt::from(conjugate),
        -t,
        "conj(T) = T^-1 in the cyclotomic subgroup"
    );

    let mask = xmd(&e, b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-MASK", 32);

    let mut doc = Doc::default();
    doc.comment(
        "e(g1, g2): the pairing value ibemail hashes (docs/spec.md, \"The pairing\").\n\
         An Fp12 element is 576 bytes: twelve 48-byte big-endian Fp coefficients\n\
         c0.c0.c0, c0.c0.c1, c0.c1.c0, c0.c1.c1, c0.c2.c0, c0.c2.c1, c1.c0.c0, ..., c1.c2.c1,\n\
         where Fp2 = Fp[u]/(u^2 + 1), Fp6 = Fp2[v]/(v^3 - (u + 1)), Fp12 = Fp6[w]/(w^2 - v)\n\
         and coefficient cI.cJ.cK multiplies w^I v^J u^K.\n\
         \n\
         With z = -0xd201000000010000, psi(x, y) = (x / w^2, y / w^3) and\n\
         E = (p^12 - 1)/r:\n\
         ate_abs_z = T = f_{|z|,psi(g2)}(g1)^E (Miller loop over |z|, no sign correction);\n\
         ate_z = f_{z,psi(g2)}(g1)^E = conj(T) = T^-1, the optimal ate pairing with its\n\
         negative z (the value of the IRTF CFRG pairing-friendly-curves draft);\n\
         e_g1_g2 = ibemail's e = ate_z^3 = conj(T^3) = T^-3 (blst: Miller loop over |z|\n\
         conjugated for z < 0, final exponentiation to the power 3E).\n\
         reference_check.py computes T with integers only.",
    );
    doc.hex("g1", g1.to_compressed());
    doc.hex("g2", g2.to_compressed());
    doc.hex("e_g1_g2", &e);
    doc.hex("ate_z", gt_bytes(&-t));
    doc.hex("ate_abs_z", gt_bytes(&t));
    doc.hex("ate_abs_z_cubed", gt_bytes(&(t * Scalar::from(3u64))));
    doc.comment("expand_message_xmd(e_g1_g2, \"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-MASK\", 32)");
    doc.hex("mask_of_e_g1_g2", &mask);
    settle("pairing_g1_g2.txt", &doc);
}

// ---------------------------------------------------------------------------
// Points and scalars

/// The ZCash/IETF sign of a field element: true iff it exceeds (p - 1)/2,
/// i.e. iff its big-endian encoding exceeds that of its negation.
fn sign_fp(a: &Fp) -> bool {
    a.to_bytes_be() > (-*a).to_bytes_be()
}

fn sign_fp2(a: &Fp2) -> bool {
    if bool::from(a.c1().is_zero()) {
        sign_fp(&a.c0())
    } else {
        sign_fp(&a.c1())
    }
}

/// Compresses by the rules of the specification, not by blst.
fn compress_g1(p: &G1Affine) -> [u8; 48] {
    let mut out = p.x().to_bytes_be();
    out[0] |= 0x80 | if sign_fp(&p.y()) { 0x20 } else { 0 };
    out
}

fn compress_g2(p: &G2Affine) -> [u8; 96] {
    let mut out = [0u8; 96];
    out[..48].copy_from_slice(&p.x().c1().to_bytes_be());
    out[48..].copy_from_slice(&p.x().c0().to_bytes_be());
    out[0] |= 0x80 | if sign_fp2(&p.y()) { 0x20 } else { 0 };
    out
}

#[test]
fn points() {
    let g1 = G1Affine::generator();
    let g2 = G2Affine::generator();
    let neg_g1 = (-G1Projective::generator()).to_affine();
    let neg_g2 = (-G2Projective::generator()).to_affine();
    let two_g1 = G1Projective::generator().double().to_affine();
    for p in [g1, neg_g1, two_g1] {
        assert_eq!(compress_g1(&p), p.to_compressed());
    }
    for p in [g2, neg_g2] {
        assert_eq!(compress_g2(&p), p.to_compressed());
    }
    let mut infinity_g1 = [0u8; 48];
    infinity_g1[0] = 0xc0;
    let mut infinity_g2 = [0u8; 96];
    infinity_g2[0] = 0xc0;
    assert_eq!(G1Affine::identity().to_compressed(), infinity_g1);
    assert_eq!(G2Affine::identity().to_compressed(), infinity_g2);
    // ibemail refuses the point at infinity wherever a point is decoded.
    assert!(matches!(
        PublicParams::from_components(&g1.to_compressed(), &infinity_g1),
        Err(DecodeError::IdentityPoint { .. })
    ));
    let order_minus_one = (-Scalar::ONE).to_bytes_be();
    let mut order = order_minus_one;
    order[31] += 1; // q - 1 ends in 0x00
    assert!(bool::from(Scalar::from_bytes_be(&order).is_none()));

    let mut doc = Doc::default();
    doc.comment(
        "Point and scalar encodings (docs/spec.md, \"Encodings\").\n\
         Fp elements are 48 bytes big-endian; a compressed G1 point is x with the\n\
         flags 0x80 (compressed), 0x40 (infinity), 0x20 (y is the larger root) in\n\
         its first byte; a compressed G2 point is x.c1 || x.c0 with the flags in\n\
         the first byte of x.c1 and the sign taken from y.c1 (from y.c0 if y.c1 = 0).",
    );
    let mut modulus = (-Fp::ONE).to_bytes_be();
    modulus[47] += 1; // p - 1 ends in 0xaa
    assert_eq!(Fp::from_bytes_be(&modulus).is_none().unwrap_u8(), 1);
    doc.hex("field_modulus", modulus);
    doc.hex("g1_x", g1.x().to_bytes_be());
    doc.hex("g1_y", g1.y().to_bytes_be());
    doc.hex("g1_compressed", g1.to_compressed());
    doc.hex("g1_negated_compressed", neg_g1.to_compressed());
    doc.hex("g1_doubled_compressed", two_g1.to_compressed());
    doc.hex("g1_infinity_compressed", infinity_g1);
    doc.hex("g2_x_c0", g2.x().c0().to_bytes_be());
    doc.hex("g2_x_c1", g2.x().c1().to_bytes_be());
    doc.hex("g2_y_c0", g2.y().c0().to_bytes_be());
    doc.hex("g2_y_c1", g2.y().c1().to_bytes_be());
    doc.hex("g2_compressed", g2.to_compressed());
    doc.hex("g2_negated_compressed", neg_g2.to_compressed());
    doc.hex("g2_infinity_compressed", infinity_g2);
    doc.comment("Scalars are 32 bytes big-endian and must be below the group order q.");
    doc.hex("scalar_one", Scalar::ONE.to_bytes_be());
    doc.hex("scalar_largest_canonical", order_minus_one);
    doc.hex("scalar_group_order", order);
    settle("points.txt", &doc);
}

// ---------------------------------------------------------------------------
// Identity normalisation

fn error_name(e: IdentityError) -> &'static str {
    match e {
        IdentityError::MissingAt => "missing_at",
        IdentityError::EmptyLocalPart => "empty_local_part",
        IdentityError::InvalidLocalPart => "invalid_local_part",
        IdentityError::LocalPartTooLong => "local_part_too_long",
        IdentityError::EmptyDomain => "empty_domain",
        IdentityError::AddressLiteral => "address_literal",
        IdentityError::InvalidDomain => "invalid_domain",
        IdentityError::DomainTooLong => "domain_too_long",
        _ => "other",
    }
}

/// Shown as it is on one `_text` line: no controls, no space but U+0020,
/// no invisible format characters, nothing to trim.
fn printable(s: &str) -> bool {
    let invisible = |c: char| {
        c.is_control()
            || (c.is_whitespace() && c != ' ')
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
    };
    !s.chars().any(invisible) && s.trim() == s && !s.is_empty()
}

#[test]
fn identities() {
    let label63 = "a".repeat(63);
    let long_domain = format!("{label63}.{label63}.{label63}.{}.test", "b".repeat(56));
    assert_eq!(long_domain.len(), 253);
    let too_long_domain = format!("{label63}.{label63}.{label63}.{}.test", "b".repeat(57));
    let cases: Vec<(&str, String)> = vec![
        (
            "ASCII letters are lower-cased in both parts",
            "Alice.Smith@Example.COM".into(),
        ),
        ("dots and +tags are kept", "a.b+Tag@b.test".into()),
        (
            "U+212A KELVIN SIGN in the local part is kept (Unicode would fold it to k)",
            "\u{212A}elvin@b.test".into(),
        ),
        ("U+00C4 is not folded to U+00E4", "\u{C4}rger@b.test".into()),
        (
            "sharp s stays; only S, T, R, A, E fold",
            "STRA\u{DF}E@b.test".into(),
        ),
        ("U+0130 is kept", "\u{130}nci@b.test".into()),
        ("the split is at the last @", "\"odd@local\"@b.test".into()),
        (
            "one trailing dot of the domain is removed",
            "a@b.test.".into(),
        ),
        ("two are an empty label", "a@b.test..".into()),
        (
            "U-labels become A-labels",
            "user@B\u{FC}cher.example".into(),
        ),
        ("A-labels are kept", "user@xn--bcher-kva.example".into()),
        (
            "non-transitional UTS 46: sharp s is kept (xn--), not mapped to ss",
            "user@stra\u{DF}e.example".into(),
        ),
        (
            "UTS 46 mapping: U+212A in the domain maps to k",
            "user@\u{212A}.example".into(),
        ),
        (
            "UTS 46 mapping: full-width letters and U+3002 as a dot",
            "user@\u{FF25}\u{FF38}.example\u{3002}test".into(),
        ),
        (
            "CheckHyphens is off: -- in positions 3 and 4 passes UTS 46 (and LDH)",
            "user@ab--cd.test".into(),
        ),
        (
            "a label may not start with a hyphen (ibemail's LDH check)",
            "user@-ab.test".into(),
        ),
        (
            "UseSTD3ASCIIRules is off, but ibemail's LDH check refuses _",
            "user@under_score.test".into(),
        ),
        (
            "CheckBidi applies: a right-to-left label with a Latin letter",
            "user@\u{5D0}a.test".into(),
        ),
        (
            "CheckJoiners applies: U+200D outside its context",
            "user@a\u{200D}b.test".into(),
        ),
        (
            "invalid Punycode in an xn-- label",
            "user@xn--a.test".into(),
        ),
        ("253 octets of domain", format!("a@{long_domain}")),
        ("254 octets of domain", format!("a@{too_long_domain}")),
        ("a 64-octet label", format!("a@{}a.test", label63)),
        (
            "64 octets of local part",
            format!("{}@b.test", "x".repeat(64)),
        ),
        ("65 octets", format!("{}@b.test", "x".repeat(65))),
        (
            "32 two-octet characters are 64 octets",
            format!("{}@b.test", "\u{E9}".repeat(32)),
        ),
        (
            "33 are 66 octets",
            format!("{}@b.test", "\u{E9}".repeat(33)),
        ),
        ("no @", "no-at-sign".into()),
        ("empty local part", "@b.test".into()),
        ("empty domain", "a@".into()),
        ("address literals are refused", "a@[192.0.2.1]".into()),
        ("space in the local part", "a b@b.test".into()),
        ("angle brackets", "<a@b.test>".into()),
        ("C0 control", "a\tb@b.test".into()),
        ("C1 control U+0085", "a\u{85}b@b.test".into()),
        (
            "U+00A0 is not a control character and is kept",
            "a\u{A0}b@b.test".into(),
        ),
    ];

    let mut doc = Doc::default();
    doc.comment(
        "Identity normalisation (docs/spec.md, \"Identities\"). One case per block:\n\
         input_hex is the address (UTF-8); identity_hex the normalised identity,\n\
         or error_text the reason it is refused. The _text lines repeat the hex\n\
         where it prints.",
    );
    for (why, input) in &cases {
        doc.blank();
        doc.comment(why);
        doc.hex("input_hex", input.as_bytes());
        if printable(input) {
            doc.text("input_text", input);
        }
        match Identity::parse(input) {
            Ok(id) => {
                doc.hex("identity_hex", id.as_str().as_bytes());
                if printable(id.as_str()) {
                    doc.text("identity_text", id.as_str());
                }
            }
            Err(e) => doc.text("error_text", error_name(e)),
        }
    }
    // A few the table's rows promise, checked outright.
    let ok = |a: &str| Identity::parse(a).unwrap().as_str().to_string();
    assert_eq!(ok("\u{212A}elvin@b.test"), "\u{212A}elvin@b.test");
    assert_eq!(ok("STRA\u{DF}E@b.test"), "stra\u{DF}e@b.test");
    assert_eq!(ok("user@\u{212A}.example"), "user@k.example");
    assert_eq!(ok("user@stra\u{DF}e.example"), "user@xn--strae-oqa.example");
    settle("identities.txt", &doc);
}

// ---------------------------------------------------------------------------
// The KEM, step by step

#[test]
fn kem_worked_example() {
    let (master, mut rng) = kat_001_master();
    let params = master.public_params();
    let master_bytes = master.to_bytes();
    let (x_bytes, y_bytes, k_prf) = (
        &master_bytes[..32],
        &master_bytes[32..64],
        &master_bytes[64..],
    );
    let x = Scalar::from_bytes_be(x_bytes.try_into().unwrap()).unwrap();
    let y = Scalar::from_bytes_be(y_bytes.try_into().unwrap()).unwrap();
    assert_eq!(
        (G1Affine::generator() * x).to_affine().to_compressed(),
        params.x_bytes()
    );
    assert_eq!(
        (G1Affine::generator() * y).to_affine().to_compressed(),
        params.y_bytes()
    );
    let mut sigma = [0u8; 32];
    rng.fill_bytes(&mut sigma);

    let address = "alice@b.test";
    let generation = 1u32;
    let identity = Identity::parse(address).unwrap();
    let dst_id = format!("{DST_PREFIX}ID/{}/{generation}", identity.domain());
    let h = hash_to_scalar(address.as_bytes(), dst_id.as_bytes());
    assert_eq!(h, identity_scalar(&identity, generation));
    let context = identity_context(address, generation);

    // User key.
    let info_r = [
        b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-USERKEY-R".as_slice(),
        &context,
        &[0u8],
    ]
    .concat();
    let okm_r = hkdf_expand(k_prf, &info_r, 48);
    let r = os2ip_mod_q(&okm_r);
    assert_eq!(r, hazmat::user_key_scalar(&master, &identity, generation));
    let d = h + x + r * y;
    let k = (G2Affine::generator() * d.invert().unwrap()).to_affine();
    let user_key = [&r.to_bytes_be()[..], &k.to_compressed()].concat();
    let key = master.extract(&identity, generation);
    assert_eq!(key.to_bytes().as_ref(), &user_key[..]);

    // Encapsulation.
    let params_bytes = params.to_bytes();
    let fo_input = [&sigma[..], &params_bytes, &context].concat();
    let s = hash_to_scalar(&fo_input, b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-FO-SCALAR");
    assert_eq!(s, hazmat::fo_scalar(&sigma, &params, &identity, generation));
    let x_point = G1Affine::from_compressed(&params.x_bytes()).unwrap();
    let y_point = G1Affine::from_compressed(&params.y_bytes()).unwrap();
    let c1 = ((G1Projective::generator() * h + x_point) * s).to_affine();
    let c2 = (y_point * s).to_affine();
    let w = pairing(&G1Affine::generator(), &G2Affine::generator()) * s;
    let w_bytes = gt_bytes(&w);
    assert_eq!(w_bytes, hazmat::pairing_value(&s));
    let mask = xmd(&w_bytes, b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-MASK", 32);
    let c3: Vec<u8> = sigma.iter().zip(&mask).map(|(a, b)| a ^ b).collect();
    let capsule = [&c1.to_compressed()[..], &c2.to_compressed(), &c3].concat();
    let secret_input = [&sigma[..], &capsule, &params_bytes, &context].concat();
    let secret = xmd(
        &secret_input,
        b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-SHARED-SECRET",
        32,
    );
    let (api_capsule, api_secret) =
        encapsulate_with_seed(&params, &identity, generation, &sigma).unwrap();
    assert_eq!(api_capsule.to_bytes().as_slice(), &capsule[..]);
    assert_eq!(api_secret.as_bytes().as_slice(), &secret[..]);

    // Decapsulation: Z = C1 + r·C2 = (s·d)·g1 and W = e(Z, K).
    let z = (G1Projective::from(c1) + c2 * r).to_affine();
    assert_eq!(z, (G1Affine::generator() * (s * d)).to_affine());
    assert_eq!(gt_bytes(&pairing(&z, &k)), w_bytes);
    let decoded = UserKey::from_bytes(identity.clone(), generation, &user_key).unwrap();
    let opened = decoded
        .decapsulate(&params, &Capsule::from_bytes(&capsule).unwrap())
        .unwrap();
    assert_eq!(opened.as_bytes().as_slice(), &secret[..]);

    // An identity whose DST exceeds 255 bytes: the DST is hashed.
    let long_domain = format!("{0}.{0}.{0}.{1}.test", "a".repeat(63), "c".repeat(44));
    assert_eq!(
        long_domain.len(),
        241,
        "the longest domain that can publish"
    );
    let long_address = format!("bob@{long_domain}");
    let long_identity = Identity::parse(&long_address).unwrap();
    let long_generation = 7u32;
    let long_dst = format!("{DST_PREFIX}ID/{long_domain}/{long_generation}");
    assert!(long_dst.len() > 255);
    let hashed_dst = Sha256::new()
        .chain_update(b"H2C-OVERSIZE-DST-")
        .chain_update(long_dst.as_bytes())
        .finalize();
    let long_h = hash_to_scalar(long_address.as_bytes(), long_dst.as_bytes());
    assert_eq!(long_h, identity_scalar(&long_identity, long_generation));

    let mut doc = Doc::default();
    doc.comment(
        "The KEM step by step (docs/spec.md, \"The KEM\"), for the master key and seed\n\
         of tests/vectors/ibe/kat_001.txt. Every value is recomputed by\n\
         crates/ibe/tests/encoding_vectors.rs from the byte layouts of the\n\
         specification and through the crate's API.",
    );
    doc.hex("master_key", master_bytes.as_ref());
    doc.hex("x", x_bytes);
    doc.hex("y", y_bytes);
    doc.hex("k_prf", k_prf);
    doc.hex("X", params.x_bytes());
    doc.hex("Y", params.y_bytes());
    doc.text("identity_text", address);
    doc.decimal("generation_decimal", generation);
    doc.comment("Identity scalar h = hash_to_field(address) under the identity DST.");
    doc.text("identity_dst_text", &dst_id);
    doc.hex("identity_dst", dst_id.as_bytes());
    doc.hex("h", h.to_bytes_be());
    doc.comment("ctx = u16(len(address)) || address || u32(generation), big-endian.");
    doc.hex("identity_context", &context);
    doc.comment("User key: r = OS2IP(HKDF-Expand(k_prf, info, 48)) mod q, counter 0.");
    doc.hex("user_key_r_info", &info_r);
    doc.hex("user_key_r_okm", &okm_r);
    doc.hex("r", r.to_bytes_be());
    doc.hex("d", d.to_bytes_be());
    doc.hex("K", k.to_compressed());
    doc.hex("user_key", &user_key);
    doc.comment("Encapsulation with the seed sigma.");
    doc.hex("sigma", sigma);
    doc.hex("fo_input", &fo_input);
    doc.hex("s", s.to_bytes_be());
    doc.hex("C1", c1.to_compressed());
    doc.hex("C2", c2.to_compressed());
    doc.hex("W", &w_bytes);
    doc.hex("mask", &mask);
    doc.hex("c3", &c3);
    doc.hex("capsule", &capsule);
    doc.hex("shared_secret_input", &secret_input);
    doc.hex("shared_secret", &secret);
    doc.comment("Decapsulation: Z = C1 + r C2, W = e(Z, K).");
    doc.hex("Z", z.to_compressed());
    doc.blank();
    doc.comment(
        "An identity DST longer than 255 bytes is replaced by\n\
         SHA-256(\"H2C-OVERSIZE-DST-\" || DST) (RFC 9380 section 5.3.3).",
    );
    doc.text("long_identity_text", &long_address);
    doc.decimal("long_generation_decimal", long_generation);
    doc.hex("long_identity_dst", long_dst.as_bytes());
    doc.hex("long_identity_dst_hashed", hashed_dst);
    doc.hex("long_h", long_h.to_bytes_be());
    settle("kem_worked_example.txt", &doc);
}

// ---------------------------------------------------------------------------
// The identity-based signature, step by step

/// The signing values of kat_001's master key for `address` at
/// generation 1, from the specification's formulas: section 8.1.
struct Signer {
    master: MasterKey,
    k_prf: Vec<u8>,
    info_t: Vec<u8>,
    t: Scalar,
    s_point: G1Affine,
    identity: Identity,
    generation: u32,
    context: Vec<u8>,
    q: G2Affine,
    d: G2Affine,
}

fn signer(address: &str) -> Signer {
    let (master, _) = kat_001_master();
    let k_prf = master.to_bytes()[64..].to_vec();
    let info_t = [
        b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-MASTER".as_slice(),
        &[0u8],
    ]
    .concat();
    let t = os2ip_mod_q(&hkdf_expand(&k_prf, &info_t, 48));
    let s_point = (G1Affine::generator() * t).to_affine();
    assert_eq!(s_point.to_compressed(), master.signing_params().to_bytes());
    let generation = 1u32;
    let context = identity_context(address, generation);
    let q = G2Projective::hash_to_curve(
        &context,
        b"IBEMAIL-V1-CCIBS-BLS12381G2_XMD:SHA-256_SSWU_RO_IDENTITY_",
        &[],
    )
    .to_affine();
    Signer {
        identity: Identity::parse(address).unwrap(),
        d: (q * t).to_affine(),
        master,
        k_prf,
        info_t,
        t,
        s_point,
        generation,
        context,
        q,
    }
}

/// The values of a Cha–Cheon signature (spec 8.2) of `message` with the
/// fresh bytes `rho`, under the hashes named
/// `IBEMAIL-V1-CCIBS-BLS12381-SHA256-{kind}NONCE` and `...{kind}CHALLENGE`:
/// `kind` is empty for a message and `CERT-` for a certificate (spec 8.5).
struct Steps {
    nonce_input: Vec<u8>,
    r: Scalar,
    u: G2Affine,
    challenge_input: Vec<u8>,
    h: Scalar,
    v: G2Affine,
}

fn cha_cheon_steps(
    context: &[u8],
    q: G2Affine,
    d: G2Affine,
    rho: &[u8; 32],
    message: &[u8],
    kind: &str,
) -> Steps {
    let dst = |what: &str| format!("IBEMAIL-V1-CCIBS-BLS12381-SHA256-{kind}{what}");
    let nonce_input = [&d.to_uncompressed()[..], rho, context, &[0u8], message].concat();
    let r = hash_to_scalar(&nonce_input, dst("NONCE").as_bytes());
    let u = (q * r).to_affine();
    let challenge_input = [&u.to_compressed()[..], context, message].concat();
    let h = hash_to_scalar(&challenge_input, dst("CHALLENGE").as_bytes());
    Steps {
        nonce_input,
        r,
        u,
        challenge_input,
        h,
        v: (d * (r + h)).to_affine(),
    }
}

#[test]
fn ibs_worked_example() {
    let address = "alice@b.test";
    let Signer {
        master,
        k_prf,
        info_t,
        t,
        s_point,
        identity,
        generation,
        context,
        q,
        d,
    } = signer(address);
    let k_prf = k_prf.as_slice();
    let message: [u8; 32] = Sha256::digest(b"an ibemail signature example").into();

    let mut seed = [0u8; 32];
    seed[0] = 0x51;
    seed[31] = 0x5a;
    let mut rng = ChaCha20Rng::from_seed(seed);
    let signature = master
        .extract_signing(&identity, generation)
        .sign(&message, &mut rng);
    let mut rho = [0u8; 32];
    ChaCha20Rng::from_seed(seed).fill_bytes(&mut rho);
    let Steps {
        nonce_input,
        r,
        u,
        challenge_input,
        h,
        v,
    } = cha_cheon_steps(&context, q, d, &rho, &message, "");
    let encoded = [u.to_compressed(), v.to_compressed()].concat();
    assert_eq!(signature.to_bytes().as_slice(), &encoded[..]);
    verify(
        &master.signing_params(),
        &identity,
        generation,
        &message,
        &signature,
    )
    .unwrap();
    // The verification equation, written out: e(g1, V) = e(S, U + h Q).
    let rhs = (G2Projective::from(u) + q * h).to_affine();
    assert_eq!(pairing(&G1Affine::generator(), &v), pairing(&s_point, &rhs));

    let mut doc = Doc::default();
    doc.comment(
        "The identity-based signature (Cha-Cheon) step by step (docs/spec.md,\n\
         \"Signatures\"), with the master key of tests/vectors/ibe/kat_001.txt.\n\
         rho is the signer's fresh randomness (the first 32 bytes of\n\
         ChaCha20(rng_seed)); the nonce r is the signer's business, a verifier\n\
         needs only S, the identity, n, the message and the signature.",
    );
    doc.hex("k_prf", k_prf);
    doc.hex("signing_info", &info_t);
    doc.hex("t", t.to_bytes_be());
    doc.hex("S", s_point.to_compressed());
    doc.text("identity_text", address);
    doc.decimal("generation_decimal", generation);
    doc.hex("identity_context", &context);
    doc.hex("Q", q.to_compressed());
    doc.hex("D", d.to_compressed());
    doc.hex("message", message);
    doc.hex("rng_seed", seed);
    doc.hex("rho", rho);
    doc.hex("nonce_input", &nonce_input);
    doc.hex("r", r.to_bytes_be());
    doc.hex("U", u.to_compressed());
    doc.hex("challenge_input", &challenge_input);
    doc.hex("h", h.to_bytes_be());
    doc.hex("V", v.to_compressed());
    doc.hex("signature", &encoded);
    settle("ibs_worked_example.txt", &doc);
}

/// Spec 8.5: the message key from the PRF key, the certificate of its
/// public key (the Cha–Cheon steps with the certificate's hashes) and the
/// certified signature of a digest.
#[test]
fn certified_worked_example() {
    use ed25519_dalek::Signer as _;
    let address = "carol@a.test";
    let Signer {
        master,
        k_prf,
        s_point,
        identity,
        generation,
        context,
        q,
        d,
        ..
    } = signer(address);
    let key_info = [b"IBEMAIL-V1-ED25519-MESSAGE-KEY".as_slice(), &context].concat();
    let key_seed: [u8; 32] = hkdf_expand(&k_prf, &key_info, 32).try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&key_seed);
    let a = key.verifying_key().to_bytes();

    let certified = master.extract_certified(&identity, generation).unwrap();
    let rho = [0u8; 32];
    let Steps {
        nonce_input,
        r,
        u,
        challenge_input,
        h,
        v,
    } = cha_cheon_steps(&context, q, d, &rho, &a, "CERT-");
    let certificate = [u.to_compressed(), v.to_compressed()].concat();
    // The certificate's equation: e(g1, V) = e(S, U + h Q).
    let rhs = (G2Projective::from(u) + q * h).to_affine();
    assert_eq!(pairing(&G1Affine::generator(), &v), pairing(&s_point, &rhs));

    let message: [u8; 32] = Sha256::digest(b"an ibemail certified signature example").into();
    let sigma = key.sign(&message).to_bytes();
    let encoded = [&certificate[..], &a, &sigma].concat();
    let signature = certified.sign(&message);
    assert_eq!(signature.to_bytes().as_slice(), &encoded[..]);
    verify_certified(
        &master.signing_params(),
        &identity,
        generation,
        &message,
        &signature,
    )
    .unwrap();

    let mut doc = Doc::default();
    doc.comment(
        "A certified signature (docs/spec.md, \"Certified per-message\n\
         signatures\") step by step, with the master key of\n\
         tests/vectors/ibe/kat_001.txt (k_prf, S as in ibs_worked_example.txt).\n\
         key_seed is the Ed25519 private key (RFC 8032), A its public key. The\n\
         certificate is the Cha-Cheon signature of A with the certificate's\n\
         hashes, deterministic (rho is all zeros). sigma is the Ed25519\n\
         signature of message.",
    );
    doc.hex("k_prf", k_prf);
    doc.hex("S", s_point.to_compressed());
    doc.text("identity_text", address);
    doc.decimal("generation_decimal", generation);
    doc.hex("identity_context", &context);
    doc.hex("key_info", &key_info);
    doc.hex("key_seed", key_seed);
    doc.hex("A", a);
    doc.hex("Q", q.to_compressed());
    doc.hex("nonce_input", &nonce_input);
    doc.hex("r", r.to_bytes_be());
    doc.hex("U", u.to_compressed());
    doc.hex("challenge_input", &challenge_input);
    doc.hex("h", h.to_bytes_be());
    doc.hex("V", v.to_compressed());
    doc.hex("certificate", &certificate);
    doc.hex("message", message);
    doc.hex("sigma", sigma);
    doc.hex("signature", &encoded);
    settle("certified_signature.txt", &doc);
}

// ---------------------------------------------------------------------------
// The specification quotes only checked numbers

/// Every long hex or base64 string in `docs/spec.md` occurs in a vector
/// file, so a number the specification quotes is one the tests check.
#[test]
fn spec_quotes_only_vector_values() {
    if std::env::var_os("IBEMAIL_WRITE_VECTORS").is_some() {
        return; // the files are being rewritten under our feet
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let spec = std::fs::read_to_string(root.join("docs/spec.md")).unwrap();
    let mut corpus = String::new();
    for dir in [
        "tests/vectors/encodings",
        "tests/vectors/ibe",
        "tests/vectors/continuity",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "txt") {
                corpus.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let base64_char = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
    let mut checked = 0;
    for token in spec.split(|c: char| !base64_char(c)) {
        let token = token.strip_prefix("0x").unwrap_or(token);
        let hex = token.len() >= 24 && token.bytes().all(|b| b.is_ascii_hexdigit());
        let base64 = token.len() >= 40;
        if hex || base64 {
            assert!(
                corpus.contains(token),
                "docs/spec.md quotes {token}, which no vector file has"
            );
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} values checked");
}
