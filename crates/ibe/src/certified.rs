//! Certified per-message signatures: the KGC certifies, once per identity
//! and generation, an Ed25519 key of the user's with a Cha–Cheon signature
//! (the *certificate*), and each message is signed with that Ed25519 key.
//!
//! This is the "certification" construction of an identity-based signature
//! (Bellare, Namprempre and Neven, "Security Proofs for Identity-Based
//! Identification and Signature Schemes", EUROCRYPT 2004, section 4.1:
//! cert-IBS is secure if the two standard schemes are), with the
//! certificate made by an IBS instead of a standard signature, so that a
//! verifier still needs nothing but the domain's published `S`:
//!
//! - message key: `seed = HKDF-Expand(prf_key, INFO_MESSAGE_KEY ‖ len ‖
//!   address ‖ generation, 32)`, an Ed25519 key (RFC 8032) — deterministic,
//!   so every replica of a KGC derives the same one;
//! - certificate: the Cha–Cheon signature (section 8.2 of the spec) of the
//!   32-byte public key `A`, with the challenge and nonce hashes of
//!   certificates ([`crate::hash::DST_IBS_CERT_CHALLENGE`]): a signature the
//!   KGC makes on a digest (SIGN) is never a certificate;
//! - signature of `m`: `certificate ‖ A ‖ Ed25519(m)`, 288 bytes;
//! - verification: the Ed25519 signature under `A` (strict: canonical
//!   `R` and `s`, no small-order key or `R`; `A` as sent, which the
//!   certificate binds byte for byte), then the certificate under `S`,
//!   identity and generation — skipped if this very certificate was
//!   verified before under the same `S`, identity and generation (a bounded
//!   cache of verified certificates, keyed by a hash of all four).
//!
//! A sender's mail comes in series, so a receiver pays the pairing of a
//! certificate once per sender and generation, and then an Ed25519
//! verification (about a twentieth of a pairing) per message.

use core::fmt;
use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};

use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{DecodeError, VerifyError};
use crate::hash;
use crate::ibs::{
    Equation, Purpose, SIGNATURE_BYTES, Signature, SigningKey, SigningParams, equation_for,
};
use crate::identity::Identity;
use crate::kem::{Generation, MasterKey, identity_context};

/// Bytes of a per-message public key (Ed25519).
pub const MESSAGE_KEY_BYTES: usize = 32;
/// Bytes of a per-message Ed25519 signature.
pub const MESSAGE_SIGNATURE_BYTES: usize = 64;
/// Bytes of an encoded certified signature: certificate ‖ key ‖ signature.
pub const CERTIFIED_SIGNATURE_BYTES: usize =
    SIGNATURE_BYTES + MESSAGE_KEY_BYTES + MESSAGE_SIGNATURE_BYTES;

/// How many verified certificates [`remember`] keeps (32-byte keys).
const CERTIFICATES: usize = 4096;

impl MasterKey {
    /// The certified per-message key of `identity` at `generation`. All of
    /// it is deterministic: the Ed25519 key, and the certificate, whose
    /// nonce is derived without fresh randomness (it signs one message,
    /// the key, ever) — so every replica of a KGC, before and after a
    /// restart, hands out the same certificate, which receivers remember.
    ///
    /// `None` only if HKDF refused its fixed-size input (a 32-byte PRK,
    /// 32 bytes of output), which it does not — never a default key — or
    /// if the certificate did not verify (see [`MasterKey::certify`]).
    pub fn extract_certified(
        &self,
        identity: &Identity,
        generation: Generation,
    ) -> Option<CertifiedKey> {
        self.certify(&self.extract_signing(identity, generation))
    }

    /// The certified per-message key of `signing`'s identity and
    /// generation, certified with `signing` (which must be this master
    /// key's, [`MasterKey::extract_signing`]: a key service that caches
    /// signing keys certifies with the one it has).
    ///
    /// The certificate is checked before it is returned: its nonce is
    /// deterministic, so a fault while computing it (a flipped bit in `h`
    /// or `A`) would give a second signature with the same nonce as the
    /// genuine one, and the two together the user's signing key. A
    /// certificate that does not verify is never handed out (`None`).
    pub fn certify(&self, signing: &SigningKey) -> Option<CertifiedKey> {
        let (identity, generation) = (signing.identity(), signing.generation());
        let mut seed = Zeroizing::new([0u8; 32]);
        let context = identity_context(identity, generation);
        self.prf_expand(&[hash::INFO_MESSAGE_KEY, &context], seed.as_mut())?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let certificate = signing.sign_for(&public, Purpose::Certificate, &[0; 32]);
        let params = self.signing_params();
        let check = equation_for(
            &params,
            identity,
            generation,
            &public,
            &certificate,
            Purpose::Certificate,
        );
        if !check.computed() {
            return None;
        }
        Some(CertifiedKey {
            identity: identity.clone(),
            generation,
            key,
            public,
            certificate,
        })
    }
}

/// A user's per-message Ed25519 key with its certificate. The private key
/// is zeroized on drop; `Debug` is redacted.
pub struct CertifiedKey {
    identity: Identity,
    generation: Generation,
    key: ed25519_dalek::SigningKey,
    public: [u8; MESSAGE_KEY_BYTES],
    certificate: Signature,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertifiedKey {
    /// The identity this key signs as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The generation of the key.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Signs `message` (callers sign a digest): Ed25519, deterministic.
    pub fn sign(&self, message: &[u8]) -> CertifiedSignature {
        CertifiedSignature {
            certificate: self.certificate.to_bytes(),
            public: self.public,
            signature: self.key.sign(message).to_bytes(),
        }
    }
}

/// A certified signature as it travels: `certificate ‖ A ‖ σ`. Decoding
/// checks the length only; the points of the certificate are decoded (and
/// subgroup-checked) when it is verified, and only if it was not before.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CertifiedSignature {
    certificate: [u8; SIGNATURE_BYTES],
    public: [u8; MESSAGE_KEY_BYTES],
    signature: [u8; MESSAGE_SIGNATURE_BYTES],
}

impl fmt::Debug for CertifiedSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CertifiedSignature(key {})",
            crate::kem::hex_short(&self.public)
        )
    }
}

impl CertifiedSignature {
    /// Splits `certificate ‖ A ‖ σ` (288 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != CERTIFIED_SIGNATURE_BYTES {
            return Err(DecodeError::Length {
                what: "certified signature",
                expected: CERTIFIED_SIGNATURE_BYTES,
                actual: bytes.len(),
            });
        }
        let (certificate, rest) = bytes.split_at(SIGNATURE_BYTES);
        let (public, signature) = rest.split_at(MESSAGE_KEY_BYTES);
        let mut out = CertifiedSignature {
            certificate: [0; SIGNATURE_BYTES],
            public: [0; MESSAGE_KEY_BYTES],
            signature: [0; MESSAGE_SIGNATURE_BYTES],
        };
        out.certificate.copy_from_slice(certificate);
        out.public.copy_from_slice(public);
        out.signature.copy_from_slice(signature);
        Ok(out)
    }

    /// Encodes `certificate ‖ A ‖ σ`.
    pub fn to_bytes(&self) -> [u8; CERTIFIED_SIGNATURE_BYTES] {
        let mut out = [0u8; CERTIFIED_SIGNATURE_BYTES];
        out[..SIGNATURE_BYTES].copy_from_slice(&self.certificate);
        out[SIGNATURE_BYTES..SIGNATURE_BYTES + MESSAGE_KEY_BYTES].copy_from_slice(&self.public);
        out[SIGNATURE_BYTES + MESSAGE_KEY_BYTES..].copy_from_slice(&self.signature);
        out
    }
}

/// Verifies `signature` on `message` by `identity` at `generation` under
/// the signer domain's `params`.
pub fn verify_certified(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    signature: &CertifiedSignature,
) -> Result<(), VerifyError> {
    if certified_equation(params, identity, generation, message, signature)?.holds() {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// Checks the Ed25519 signature of `message` and returns what is left: the
/// certificate's pairing equation (for [`Equation::holds`] or
/// [`crate::all_hold`]), or an equation known to hold if this certificate
/// was verified before under the same `params`, identity and generation.
/// An Ed25519 signature that does not verify, or a certificate that does
/// not decode, is [`VerifyError::BadSignature`].
pub fn certified_equation(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    signature: &CertifiedSignature,
) -> Result<Equation, VerifyError> {
    let public = ed25519_dalek::VerifyingKey::from_bytes(&signature.public)
        .map_err(|_| VerifyError::BadSignature)?;
    public
        .verify_strict(
            message,
            &ed25519_dalek::Signature::from_bytes(&signature.signature),
        )
        .map_err(|_| VerifyError::BadSignature)?;
    let key = cache_key(params, identity, generation, signature);
    if known(&key) {
        return Ok(Equation::proven(params, identity, generation));
    }
    let certificate =
        Signature::from_bytes(&signature.certificate).map_err(|_| VerifyError::BadSignature)?;
    Ok(equation_for(
        params,
        identity,
        generation,
        &signature.public,
        &certificate,
        Purpose::Certificate,
    )
    .remembered_as(key))
}

/// `SHA-256(DST ‖ S ‖ len ‖ address ‖ generation ‖ certificate ‖ A)`: what
/// a verified certificate is remembered by. Every input of the
/// certificate's equation is in it, so a remembered key stands for exactly
/// the check that was made.
fn cache_key(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    signature: &CertifiedSignature,
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hash::DST_CERT_CACHE);
    h.update(params.to_bytes());
    h.update(identity_context(identity, generation));
    h.update(signature.certificate);
    h.update(signature.public);
    h.finalize().into()
}

type Certificates = lru::LruCache<[u8; 32], ()>;

static VERIFIED: LazyLock<Mutex<Certificates>> = LazyLock::new(|| {
    let capacity = NonZeroUsize::new(CERTIFICATES).unwrap_or(NonZeroUsize::MIN);
    Mutex::new(lru::LruCache::new(capacity))
});

fn known(key: &[u8; 32]) -> bool {
    VERIFIED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .is_some()
}

/// Remembers a certificate whose equation was just found to hold alone.
pub(crate) fn remember(key: &[u8; 32]) {
    VERIFIED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(*key, ());
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use ed25519_dalek::Verifier as _;

    use super::*;
    use crate::all_hold;

    fn setup(seed: u64) -> (MasterKey, SigningParams, Identity, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let master = MasterKey::generate(&mut rng);
        let params = master.signing_params();
        let alice = Identity::parse("alice@a.test").unwrap();
        (master, params, alice, rng)
    }

    #[test]
    fn certified_signatures_verify_and_keys_are_deterministic() {
        let (master, params, alice, _) = setup(1);
        let key = master.extract_certified(&alice, 3).unwrap();
        let again = master.extract_certified(&alice, 3).unwrap();
        let (a, b) = (key.sign(b"digest"), again.sign(b"digest"));
        // Everything is deterministic, the certificate included.
        assert_eq!(a, b);
        for s in [a, b] {
            verify_certified(&params, &alice, 3, b"digest", &s).unwrap();
            let decoded = CertifiedSignature::from_bytes(&s.to_bytes()).unwrap();
            assert_eq!(decoded, s);
        }
        // Another generation: another key.
        let other = master.extract_certified(&alice, 4).unwrap().sign(b"digest");
        assert_ne!(other.public, a.public);
    }

    /// A certificate that does not verify is never handed out: here one
    /// made with another KGC's signing key (what a fault in the
    /// computation would also give).
    #[test]
    fn a_certificate_that_does_not_verify_is_not_handed_out() {
        let (master, _, alice, mut rng) = setup(7);
        let other = MasterKey::generate(&mut rng);
        assert!(master.certify(&other.extract_signing(&alice, 1)).is_none());
        assert!(master.certify(&master.extract_signing(&alice, 1)).is_some());
    }

    #[test]
    fn wrong_message_identity_generation_or_params_fail() {
        let (master, params, alice, mut rng) = setup(2);
        let s = master.extract_certified(&alice, 1).unwrap().sign(b"m");
        // Verified once, so the certificate is remembered: the checks below
        // must fail all the same.
        verify_certified(&params, &alice, 1, b"m", &s).unwrap();
        let bob = Identity::parse("bob@a.test").unwrap();
        let other_params = MasterKey::generate(&mut rng).signing_params();
        assert!(verify_certified(&params, &alice, 1, b"n", &s).is_err());
        assert!(verify_certified(&params, &bob, 1, b"m", &s).is_err());
        assert!(verify_certified(&params, &alice, 2, b"m", &s).is_err());
        assert!(verify_certified(&other_params, &alice, 1, b"m", &s).is_err());
    }

    /// An attacker with his own Ed25519 key and a genuine certificate (of
    /// someone else's key, or a KGC signature made for a digest) cannot
    /// pass: the certificate signs the key, under its own hashes.
    #[test]
    fn a_key_without_its_own_certificate_fails() {
        let (master, params, alice, mut rng) = setup(3);
        let genuine = master.extract_certified(&alice, 1).unwrap().sign(b"m");
        verify_certified(&params, &alice, 1, b"m", &genuine).unwrap();
        let mallory = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let mallory_public = mallory.verifying_key().to_bytes();
        let forged = |certificate: [u8; SIGNATURE_BYTES]| CertifiedSignature {
            certificate,
            public: mallory_public,
            signature: mallory.sign(b"m").to_bytes(),
        };
        // Alice's certificate with Mallory's key.
        assert!(verify_certified(&params, &alice, 1, b"m", &forged(genuine.certificate)).is_err());
        // The KGC's SIGN of Mallory's key as a digest (what a peer with a
        // SIGN grant could ask for): a message signature, not a
        // certificate.
        let signed = master
            .extract_signing(&alice, 1)
            .sign(&mallory_public, &mut rng);
        assert!(verify_certified(&params, &alice, 1, b"m", &forged(signed.to_bytes())).is_err());
        // And a certificate is not a message signature.
        let cert = Signature::from_bytes(&genuine.certificate).unwrap();
        assert!(crate::verify(&params, &alice, 1, &genuine.public, &cert).is_err());
    }

    #[test]
    fn every_single_bit_flip_fails() {
        let (master, params, alice, _) = setup(4);
        let s = master.extract_certified(&alice, 1).unwrap().sign(b"m");
        verify_certified(&params, &alice, 1, b"m", &s).unwrap();
        let bytes = s.to_bytes();
        // Every bit of key and signature, and a sample of the certificate's
        // (each of those costs a pairing).
        let positions =
            (0..bytes.len() * 8).filter(|bit| bit / 8 >= SIGNATURE_BYTES || bit % 13 == 0);
        for bit in positions {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            let s = CertifiedSignature::from_bytes(&flipped).unwrap();
            assert!(
                verify_certified(&params, &alice, 1, b"m", &s).is_err(),
                "bit {bit}"
            );
        }
        assert!(CertifiedSignature::from_bytes(&bytes[1..]).is_err());
    }

    #[test]
    fn batches_remember_only_what_holds() {
        let (master, params, alice, mut rng) = setup(5);
        let bob = Identity::parse("bob@a.test").unwrap();
        let good = master.extract_certified(&alice, 1).unwrap().sign(b"m");
        let bad = {
            // Bob's key with a certificate over another key of Bob's
            // generation 2: decodes, does not hold.
            let mut s = master.extract_certified(&bob, 1).unwrap().sign(b"m");
            s.certificate = master
                .extract_certified(&bob, 2)
                .unwrap()
                .certificate
                .to_bytes();
            s
        };
        let eq = |id: &Identity, s: &CertifiedSignature| {
            certified_equation(&params, id, 1, b"m", s).unwrap()
        };
        assert!(!all_hold(&[eq(&alice, &good), eq(&bob, &bad)], &mut rng));
        // Neither was remembered: each still needs its pairing, and the bad
        // one still fails.
        assert!(!eq(&alice, &good).proven);
        assert!(!eq(&bob, &bad).holds());
        // Two good certificates in one batch hold, and are not remembered
        // (the batch rests on the caller's weights).
        let carol = Identity::parse("carol@a.test").unwrap();
        let other = master.extract_certified(&carol, 1).unwrap().sign(b"m");
        assert!(all_hold(&[eq(&alice, &good), eq(&carol, &other)], &mut rng));
        assert!(!eq(&alice, &good).proven);
        // The same certificate twice is one equation, checked alone, and
        // remembered.
        assert!(all_hold(&[eq(&alice, &good), eq(&alice, &good)], &mut rng));
        assert!(eq(&alice, &good).proven);
        assert!(!eq(&bob, &bad).proven);
    }

    /// Ed25519's strict rules: a non-canonical `s` (`s + L`), a
    /// small-order key, a signature by another key.
    #[test]
    fn non_canonical_or_weak_ed25519_values_fail() {
        let (master, params, alice, _) = setup(6);
        let genuine = master.extract_certified(&alice, 1).unwrap().sign(b"m");
        verify_certified(&params, &alice, 1, b"m", &genuine).unwrap();
        // s + L, little-endian: the same point equation, not canonical.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut high = genuine;
        let mut carry = 0u16;
        for (i, l) in L.iter().enumerate() {
            let sum = u16::from(high.signature[32 + i]) + u16::from(*l) + carry;
            high.signature[32 + i] = sum as u8;
            carry = sum >> 8;
        }
        assert_ne!(high.signature, genuine.signature);
        assert!(verify_certified(&params, &alice, 1, b"m", &high).is_err());
        // The identity point as the key (small order) with R = identity
        // and s = 0: [0]B = R + [k]A for every message, which a
        // non-strict verifier accepts.
        let mut weak = genuine;
        weak.public = [0; 32];
        weak.public[0] = 1;
        weak.signature = [0; 64];
        weak.signature[0] = 1;
        assert!(verify_certified(&params, &alice, 1, b"m", &weak).is_err());
        let identity = ed25519_dalek::VerifyingKey::from_bytes(&weak.public).unwrap();
        let forged = ed25519_dalek::Signature::from_bytes(&weak.signature);
        assert!(
            identity.verify(b"m", &forged).is_ok(),
            "the forgery strictness stops"
        );
    }
}
