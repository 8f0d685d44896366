//! `cargo bench -p ibemail-ibe`: the KEM beside a raw BLS12-381 pairing and
//! beside the `ibe` crate's CGWKV KEM (the scheme of PostGuard), in one run.
//!
//! A small harness of our own rather than criterion, because the point is the
//! ratio table at the end (the targets in docs/benchmarks.md). Each operation is timed in
//! batches for a fixed wall-clock budget; the median per-operation time of the
//! batches is reported.

#![allow(clippy::print_stdout, clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use blstrs::{Bls12, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Scalar, pairing};
use ff::Field;
use group::{Curve, Group, prime::PrimeCurveAffine};
use ibe::Derive;
use ibe::kem::IBKEM;
use ibe::kem::cgw_kv::CGWKV;
use ibemail_ibe::{Identity, MasterKey, encapsulate};
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Median nanoseconds per call of `f`.
fn measure(name: &str, budget: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up and size a batch to ~10 ms.
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < Duration::from_millis(200) {
        f();
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / f64::from(calls);
    let batch = ((0.01 / per_call).ceil() as u32).max(1);

    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 10 {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        samples.push(t.elapsed().as_nanos() as f64 / f64::from(batch));
    }
    samples.sort_by(f64::total_cmp);
    let median = samples[samples.len() / 2];
    println!(
        "{name:<34} {:>10.1} µs   ({} samples × {batch})",
        median / 1000.0,
        samples.len()
    );
    median
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent; keep
    // that quick and meaningful by running each operation once.
    let quick = !std::env::args().any(|a| a == "--bench");
    let budget = if quick {
        Duration::from_millis(1)
    } else {
        Duration::from_secs(3)
    };

    let mut rng = ChaCha20Rng::seed_from_u64(42);
    let mut rng08 = rand08::rngs::StdRng::seed_from_u64(42);

    println!("ibemail-ibe KEM benchmark (median time per operation)");
    println!();

    let p = G1Projective::random(&mut rng).to_affine();
    let q = G2Projective::random(&mut rng).to_affine();
    let t_pairing = measure("BLS12-381 pairing (blstrs)", budget, || {
        black_box(pairing(black_box(&p), black_box(&q)));
    });

    // Building blocks of the pairing and of the KEM, to see where time goes.
    let g2 = G2Prepared::from(G2Affine::generator());
    measure("  Miller loop", budget, || {
        black_box(Bls12::multi_miller_loop(&[(
            black_box(&p),
            &G2Prepared::from(q),
        )]));
    });
    measure("  Miller loop, g2 lines precomputed", budget, || {
        black_box(Bls12::multi_miller_loop(&[(black_box(&p), &g2)]));
    });
    let ml = Bls12::multi_miller_loop(&[(&p, &g2)]);
    measure("  final exponentiation", budget, || {
        black_box(black_box(&ml).final_exponentiation());
    });
    let compressed = p.to_compressed();
    measure("  G1 decompress + subgroup check", budget, || {
        black_box(G1Affine::from_compressed(black_box(&compressed)).unwrap());
    });
    measure("  G1 decompress (on curve only)", budget, || {
        black_box(G1Affine::from_compressed_unchecked(black_box(&compressed)).unwrap());
    });
    let k = Scalar::random(&mut rng);
    measure("  G1 variable-base multiplication", budget, || {
        black_box(G1Projective::from(black_box(p)) * black_box(k));
    });
    measure("  v^s, fixed-base table (+ encoding)", budget, || {
        black_box(ibemail_ibe::hazmat::pairing_value(black_box(&k)));
    });

    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = Identity::parse("alice@b.test").unwrap();
    let t_params = measure("ibemail params + tables from X, Y", budget, || {
        black_box(ibemail_ibe::PublicParams::from_bytes(&params.to_bytes()).unwrap());
    });
    let t_extract = measure("ibemail BB2 extract", budget, || {
        black_box(master.extract(black_box(&alice), 1));
    });
    let key = master.extract(&alice, 1);
    let t_encaps = measure("ibemail BB2 encapsulate", budget, || {
        black_box(encapsulate(&params, black_box(&alice), 1, &mut rng).unwrap());
    });
    let (capsule, _) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    let t_decaps = measure("ibemail BB2 decapsulate (user key)", budget, || {
        black_box(key.decapsulate(&params, black_box(&capsule)).unwrap());
    });
    let t_decaps_master = measure("ibemail BB2 decapsulate (KGC)", budget, || {
        black_box(
            master
                .decapsulate(&params, &alice, 1, black_box(&capsule))
                .unwrap(),
        );
    });

    // Identity-based signatures (issue 8).
    let t_sign_extract = measure("ibemail Cha-Cheon extract", budget, || {
        black_box(master.extract_signing(black_box(&alice), 1));
    });
    let signing_key = master.extract_signing(&alice, 1);
    let digest = [7u8; 32];
    let t_sign = measure("ibemail Cha-Cheon sign (digest)", budget, || {
        black_box(signing_key.sign(black_box(&digest), &mut rng));
    });
    let signature = signing_key.sign(&digest, &mut rng);
    let signing_params = master.signing_params();
    let t_verify = measure("ibemail Cha-Cheon verify", budget, || {
        ibemail_ibe::verify(&signing_params, &alice, 1, black_box(&digest), &signature).unwrap();
    });
    let other = signing_key.sign(b"another digest", &mut rng);
    let eqs = [
        ibemail_ibe::equation(&signing_params, &alice, 1, &digest, &signature),
        ibemail_ibe::equation(&signing_params, &alice, 1, b"another digest", &other),
    ];
    let t_equation = measure("ibemail Cha-Cheon equation (challenge)", budget, || {
        black_box(ibemail_ibe::equation(
            &signing_params,
            &alice,
            1,
            black_box(&digest),
            &signature,
        ));
    });
    let t_two = measure("ibemail Cha-Cheon 2 equations batched", budget, || {
        assert!(ibemail_ibe::all_hold(black_box(&eqs), &mut rng));
    });
    let r2 = G2Projective::random(&mut rng);
    measure("  G2 variable-base multiplication", budget, || {
        black_box(black_box(r2) * black_box(k));
    });
    let q2 = G2Prepared::from(q);
    let p2 = G1Projective::random(&mut rng).to_affine();
    let q3 = G2Prepared::from(G2Projective::random(&mut rng).to_affine());
    let q4 = G2Prepared::from(G2Projective::random(&mut rng).to_affine());
    measure("  Miller loop, 2 terms", budget, || {
        black_box(Bls12::multi_miller_loop(&[
            (black_box(&p), &q2),
            (&p2, &q3),
        ]));
    });
    measure("  Miller loop, 4 terms", budget, || {
        black_box(Bls12::multi_miller_loop(&[
            (black_box(&p), &q2),
            (&p2, &q3),
            (&p, &q4),
            (&p2, &q2),
        ]));
    });
    measure("  G2Prepared from affine", budget, || {
        black_box(G2Prepared::from(black_box(q)));
    });
    let sig_bytes = signature.to_bytes();
    let t_sig_decode = measure("ibemail Cha-Cheon signature decode", budget, || {
        black_box(ibemail_ibe::Signature::from_bytes(black_box(&sig_bytes)).unwrap());
    });

    // Certified per-message signatures (spec 8.5).
    let t_certify = measure(
        "ibemail certified key (extract + certificate)",
        budget,
        || {
            black_box(master.extract_certified(black_box(&alice), 1).unwrap());
        },
    );
    let certified = master.extract_certified(&alice, 1).unwrap();
    let t_sign_certified = measure("ibemail certified sign (Ed25519)", budget, || {
        black_box(certified.sign(black_box(&digest)));
    });
    let certified_signature = certified.sign(&digest);
    // The certificate is remembered after the first check: this is a
    // known sender's message.
    ibemail_ibe::verify_certified(&signing_params, &alice, 1, &digest, &certified_signature)
        .unwrap();
    let t_verify_certified = measure("ibemail certified verify, known sender", budget, || {
        ibemail_ibe::verify_certified(
            &signing_params,
            &alice,
            1,
            black_box(&digest),
            &certified_signature,
        )
        .unwrap();
    });
    // A new sender's: every iteration a certificate not seen before (the
    // time includes making it, measured above, which is subtracted).
    let mut n = 0u64;
    let t_new_sender = measure("  (certify + verify, new sender)", budget, || {
        n += 1;
        let who = Identity::parse(&format!("user{n}@b.test")).unwrap();
        let key = master.extract_certified(&who, 1).unwrap();
        ibemail_ibe::verify_certified(&signing_params, &who, 1, &digest, &key.sign(&digest))
            .unwrap();
    });

    let (pk, sk) = CGWKV::setup(&mut rng08);
    let id = <CGWKV as IBKEM>::Id::derive_str("alice@b.test");
    let t_cgw_extract = measure("ibe 0.3 CGWKV extract", budget, || {
        black_box(CGWKV::extract_usk(Some(&pk), &sk, &id, &mut rng08));
    });
    let usk = CGWKV::extract_usk(Some(&pk), &sk, &id, &mut rng08);
    let t_cgw_encaps = measure("ibe 0.3 CGWKV encapsulate", budget, || {
        black_box(CGWKV::encaps(&pk, &id, &mut rng08));
    });
    let (ct, _) = CGWKV::encaps(&pk, &id, &mut rng08);
    let t_cgw_decaps = measure("ibe 0.3 CGWKV decapsulate", budget, || {
        black_box(CGWKV::decaps(Some(&pk), &usk, &ct).unwrap());
    });

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!("ratios (targets: docs/benchmarks.md)");
    let r = t_encaps / t_pairing;
    println!(
        "  encapsulate / pairing        {r:>6.2}   target <= 0.80  {}",
        verdict(r <= 0.8)
    );
    let r = t_decaps / t_pairing;
    println!(
        "  decapsulate / pairing        {r:>6.2}   target <= 1.50  {}   (user key)",
        verdict(r <= 1.5)
    );
    let r = t_decaps_master / t_pairing;
    println!(
        "  decapsulate / pairing        {r:>6.2}   target <= 1.50  {}   (KGC, master key: what the milter uses)",
        verdict(r <= 1.5)
    );
    let r = t_cgw_encaps / t_encaps;
    println!(
        "  CGWKV / BB2 encapsulate      {r:>6.2}x  target >= 5     {}",
        verdict(r >= 5.0)
    );
    let r = t_cgw_decaps / t_decaps;
    println!(
        "  CGWKV / BB2 decapsulate      {r:>6.2}x  target >= 5     {}   (user key)",
        verdict(r >= 5.0)
    );
    let r = t_cgw_extract / t_extract;
    println!("  CGWKV / BB2 extract          {r:>6.2}x  (no target)");
    println!(
        "  params decode + tables       {:>6.2}   × pairing (once per domain and generation, cached)",
        t_params / t_pairing
    );
    println!(
        "  two signatures: verified apart {:.2}, batched (equations + one check) {:.2} × pairing",
        2.0 * t_verify / t_pairing,
        (2.0 * t_equation + t_two) / t_pairing
    );
    println!(
        "  signature: {} bytes; verify + decode {:.2} × pairing; sign {:.2}, extract {:.2} × pairing",
        ibemail_ibe::SIGNATURE_BYTES,
        (t_verify + t_sig_decode) / t_pairing,
        t_sign / t_pairing,
        t_sign_extract / t_pairing
    );
    println!(
        "  certified: {} bytes; verify {:.3} × pairing (known sender), {:.2} (new sender); \
         sign {:.3}; certify once {:.2} × pairing",
        ibemail_ibe::CERTIFIED_SIGNATURE_BYTES,
        t_verify_certified / t_pairing,
        (t_new_sender - t_certify) / t_pairing,
        t_sign_certified / t_pairing,
        t_certify / t_pairing
    );
    if quick {
        println!();
        println!("(quick mode: run `cargo bench -p ibemail-ibe` for real numbers)");
    }
}
