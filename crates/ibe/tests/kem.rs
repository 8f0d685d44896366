//! Behaviour of the KEM through its public API.

#![allow(clippy::unwrap_used)]

use ibemail_ibe::{
    CAPSULE_BYTES, Capsule, DecapsulationError, DecodeError, Identity, MasterKey, PublicParams,
    USER_KEY_BYTES, UserKey, encapsulate,
};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn id(address: &str) -> Identity {
    Identity::parse(address).expect("valid test address")
}

fn random_address(rng: &mut ChaCha20Rng, domain: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789.+-_";
    let len = 1 + (rng.next_u32() % 40) as usize;
    let local: String = (0..len)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect();
    format!("{local}@{domain}")
}

/// Both decapsulations reject `capsule`: with `key`, and with the master
/// key for `key`'s identity and generation (the KGC's path).
fn assert_both_reject(
    master: &MasterKey,
    key: &UserKey,
    params: &PublicParams,
    capsule: &Capsule,
    what: &str,
) {
    assert_eq!(
        key.decapsulate(params, capsule),
        Err(DecapsulationError::Rejected),
        "user key: {what}"
    );
    assert_eq!(
        master.decapsulate(params, key.identity(), key.generation(), capsule),
        Err(DecapsulationError::Rejected),
        "master key: {what}"
    );
}

#[test]
fn round_trip_for_many_random_identities() {
    let mut rng = rng(1);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    for generation in [1, 2, 4_000_000_000] {
        for _ in 0..40 {
            let identity = id(&random_address(&mut rng, "b.test"));
            let (capsule, secret) = encapsulate(&params, &identity, generation, &mut rng).unwrap();
            let key = master.extract(&identity, generation);
            assert_eq!(key.decapsulate(&params, &capsule).unwrap(), secret);
            assert_eq!(
                master
                    .decapsulate(&params, &identity, generation, &capsule)
                    .unwrap(),
                secret
            );
        }
    }
}

#[test]
fn equivalent_spellings_of_an_address_share_a_key() {
    let mut rng = rng(2);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let (capsule, secret) = encapsulate(&params, &id("Alice@B.Test"), 1, &mut rng).unwrap();
    let key = master.extract(&id("alice@b.test."), 1);
    assert_eq!(key.decapsulate(&params, &capsule).unwrap(), secret);
}

#[test]
fn fresh_randomness_gives_fresh_secrets() {
    let mut rng = rng(3);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let (c1, s1) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    let (c2, s2) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    assert_ne!(c1, c2);
    assert_ne!(s1, s2);
}

#[test]
fn extraction_is_deterministic_and_verifiable() {
    let mut rng = rng(4);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let a = master.extract(&alice, 1);
    let b = master.extract(&alice, 1);
    assert_eq!(*a.to_bytes(), *b.to_bytes());
    a.verify(&params).unwrap();
    // The same bytes claimed for another identity or generation do not verify.
    let as_bob = UserKey::from_bytes(id("bob@b.test"), 1, a.to_bytes().as_ref()).unwrap();
    assert_eq!(as_bob.verify(&params), Err(DecodeError::KeyMismatch));
    let as_gen2 = UserKey::from_bytes(alice.clone(), 2, a.to_bytes().as_ref()).unwrap();
    assert_eq!(as_gen2.verify(&params), Err(DecodeError::KeyMismatch));
    let other = MasterKey::generate(&mut rng).public_params();
    assert_eq!(a.verify(&other), Err(DecodeError::KeyMismatch));
}

#[test]
fn wrong_identity_generation_domain_or_params_are_rejected() {
    let mut rng = rng(5);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let (capsule, _) = encapsulate(&params, &alice, 7, &mut rng).unwrap();

    let wrong_keys = [
        master.extract(&id("bob@b.test"), 7),
        master.extract(&id("alice2@b.test"), 7),
        master.extract(&alice, 6),
        master.extract(&alice, 8),
        // Same local part in another domain served by the same master key.
        master.extract(&id("alice@a.test"), 7),
    ];
    for key in &wrong_keys {
        assert_both_reject(&master, key, &params, &capsule, &format!("{key:?}"));
    }
    assert!(master.decapsulate(&params, &alice, 7, &capsule).is_ok());

    // The right key with another domain's parameters.
    let other = MasterKey::generate(&mut rng);
    let right_key = master.extract(&alice, 7);
    assert_eq!(
        right_key.decapsulate(&other.public_params(), &capsule),
        Err(DecapsulationError::Rejected)
    );
    // Another KGC's key for the same identity.
    assert_eq!(
        other.extract(&alice, 7).decapsulate(&params, &capsule),
        Err(DecapsulationError::Rejected)
    );
    assert_eq!(
        other.decapsulate(&other.public_params(), &alice, 7, &capsule),
        Err(DecapsulationError::Rejected)
    );
    assert_eq!(
        master.decapsulate(&other.public_params(), &alice, 7, &capsule),
        Err(DecapsulationError::Rejected)
    );
}

#[test]
fn every_single_bit_flip_of_a_capsule_is_rejected() {
    let mut rng = rng(6);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let key = master.extract(&alice, 1);
    let (capsule, secret) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    let bytes = capsule.to_bytes();
    assert_eq!(bytes.len(), CAPSULE_BYTES);

    // The KGC's key (extracted, knows d) and the same key decoded from its
    // bytes (does not) run different re-encryption checks; test both.
    let decoded = UserKey::from_bytes(alice.clone(), 1, key.to_bytes().as_ref()).unwrap();
    let mut decode_failures = 0;
    for bit in 0..CAPSULE_BYTES * 8 {
        let mut flipped = bytes;
        flipped[bit / 8] ^= 1 << (bit % 8);
        match Capsule::from_bytes(&flipped) {
            // Most flips in C1/C2 leave the curve; those are decoding errors.
            Err(_) => decode_failures += 1,
            Ok(modified) => {
                let what = format!("bit {bit} flipped");
                assert_both_reject(&master, &key, &params, &modified, &what);
                assert_eq!(
                    decoded.decapsulate(&params, &modified),
                    Err(DecapsulationError::Rejected),
                    "decoded user key: {what}"
                );
            }
        }
    }
    assert_eq!(decoded.decapsulate(&params, &capsule).unwrap(), secret);
    // Sanity: the 256 bits of c3 always decode, so FO caught those.
    assert!(decode_failures <= 2 * 48 * 8);
    assert_eq!(key.decapsulate(&params, &capsule).unwrap(), secret);
    assert_eq!(
        master.decapsulate(&params, &alice, 1, &capsule).unwrap(),
        secret
    );
}

/// A compressed G1 encoding of a curve point outside G1.
fn g1_outside_subgroup() -> [u8; 48] {
    (1u64..)
        .find_map(|x| {
            let mut bytes = [0u8; 48];
            bytes[40..].copy_from_slice(&x.to_be_bytes());
            bytes[0] |= 0x80;
            let p = Option::<blstrs::G1Affine>::from(blstrs::G1Affine::from_compressed_unchecked(
                &bytes,
            ))?;
            (!bool::from(p.is_torsion_free())).then_some(bytes)
        })
        .unwrap()
}

#[test]
fn small_order_components_are_refused_by_decoding_or_decapsulation() {
    let mut rng = rng(16);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let key = master.extract(&alice, 1);
    let (capsule, _) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    let bytes = capsule.to_bytes();
    let outside = g1_outside_subgroup();

    // C2 meets a secret scalar in both paths, so decoding refuses it.
    let mut with_c2 = bytes;
    with_c2[48..96].copy_from_slice(&outside);
    assert!(matches!(
        Capsule::from_bytes(&with_c2),
        Err(DecodeError::NotInSubgroup { .. })
    ));

    // C1 decodes (its check is deferred) and every decapsulation rejects it.
    let mut with_c1 = bytes;
    with_c1[..48].copy_from_slice(&outside);
    let modified = Capsule::from_bytes(&with_c1).unwrap();
    assert_both_reject(&master, &key, &params, &modified, "C1 outside G1");
    // So does the honest C1 plus a small-order point: T = q·P for a curve
    // point P outside G1 (q the group order, as (q - 1)·P + P).
    let p =
        blstrs::G1Projective::from(blstrs::G1Affine::from_compressed_unchecked(&outside).unwrap());
    let torsion = p * -blstrs::Scalar::from(1u64) + p;
    assert!(!bool::from(group::Group::is_identity(&torsion)), "sanity");
    let honest = blstrs::G1Affine::from_compressed(&bytes[..48].try_into().unwrap()).unwrap();
    let shifted = group::Curve::to_affine(&(blstrs::G1Projective::from(honest) + torsion));
    let mut with_torsion = bytes;
    with_torsion[..48].copy_from_slice(&shifted.to_compressed());
    let modified = Capsule::from_bytes(&with_torsion).unwrap();
    assert_both_reject(&master, &key, &params, &modified, "C1 plus torsion");
    assert!(master.decapsulate(&params, &alice, 1, &capsule).is_ok());
}

#[test]
fn user_key_and_params_encodings_round_trip() {
    let mut rng = rng(7);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    assert_eq!(
        PublicParams::from_bytes(&params.to_bytes()).unwrap(),
        params
    );
    assert_eq!(
        PublicParams::from_components(&params.x_bytes(), &params.y_bytes()).unwrap(),
        params
    );
    let again = MasterKey::from_bytes(master.to_bytes().as_ref()).unwrap();
    assert_eq!(again.public_params(), params);
    let key = master.extract(&id("alice@b.test"), 3);
    let decoded = UserKey::from_bytes(id("alice@b.test"), 3, key.to_bytes().as_ref()).unwrap();
    assert_eq!(decoded.to_bytes().len(), USER_KEY_BYTES);
    assert_eq!(*decoded.to_bytes(), *key.to_bytes());
}

#[test]
fn debug_output_redacts_secrets() {
    let mut rng = rng(8);
    let master = MasterKey::generate(&mut rng);
    let params = master.public_params();
    let alice = id("alice@b.test");
    let key = master.extract(&alice, 1);
    let (_, secret) = encapsulate(&params, &alice, 1, &mut rng).unwrap();
    let key_hex = hex::encode(&key.to_bytes()[..8]);
    let master_hex = hex::encode(&master.to_bytes()[..8]);
    let secret_hex = hex::encode(&secret.as_bytes()[..8]);
    for text in [
        format!("{master:?}"),
        format!("{key:?}"),
        format!("{secret:?}"),
    ] {
        assert!(text.contains("redacted"), "{text}");
        for leaked in [&key_hex, &master_hex, &secret_hex] {
            assert!(!text.contains(leaked.as_str()), "{text}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn capsule_encoding_round_trips(seed in any::<u64>(), local in "[a-z0-9.+_-]{1,30}", generation in 1u32..) {
        let mut rng = rng(seed);
        let params = MasterKey::generate(&mut rng).public_params();
        let identity = id(&format!("{local}@b.test"));
        let (capsule, _) = encapsulate(&params, &identity, generation, &mut rng).unwrap();
        prop_assert_eq!(Capsule::from_bytes(&capsule.to_bytes()).unwrap(), capsule);
    }

    #[test]
    fn key_encodings_round_trip(seed in any::<u64>(), generation in 1u32..) {
        let mut rng = rng(seed);
        let master = MasterKey::generate(&mut rng);
        let master_bytes = master.to_bytes();
        let decoded = MasterKey::from_bytes(master_bytes.as_ref()).unwrap();
        prop_assert_eq!(*decoded.to_bytes(), *master_bytes);
        let params = master.public_params();
        prop_assert_eq!(PublicParams::from_bytes(&params.to_bytes()).unwrap(), params);
        let identity = id("carol@c.test");
        let key = master.extract(&identity, generation);
        let key_bytes = key.to_bytes();
        let decoded = UserKey::from_bytes(identity, generation, key_bytes.as_ref()).unwrap();
        prop_assert_eq!(*decoded.to_bytes(), *key_bytes);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Capsule::from_bytes(&bytes);
        let _ = PublicParams::from_bytes(&bytes);
        let _ = MasterKey::from_bytes(&bytes);
        let _ = UserKey::from_bytes(id("a@b.test"), 1, &bytes);
    }

    #[test]
    fn address_normalisation_is_idempotent(local in "[A-Za-z0-9.+_-]{1,40}", domain in "[A-Za-z0-9]{1,20}\\.[a-z]{2,6}") {
        let first = id(&format!("{local}@{domain}"));
        let second = id(first.as_str());
        prop_assert_eq!(first, second);
    }
}
