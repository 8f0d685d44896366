//! Continuity signatures: each generation of a domain's parameters vouches
//! for the next, so a sender that pinned generation `n` can accept `n + 1`
//! without DNSSEC and refuse anything else.
//!
//! The signature is a BLS signature (Boneh–Lynn–Shacham, in the
//! "minimal-pubkey-size" arrangement: public key in G1, signature in G2)
//! under the *previous* generation's signing master scalar `t`, whose
//! public key `S = t·g1` that generation already publishes (`S=`):
//!
//! ```text
//! m   = "IBEMAIL-V1-CONTINUITY" ‖ len16(domain) ‖ domain ‖ n32
//!       ‖ X ‖ Y ‖ S' ‖ len16(policy) ‖ policy          (the successor's)
//! H   = hash_to_curve_G2(m, DST_CONTINUITY)             (RFC 9380, SSWU, RO)
//! σ   = t·H                                            (96 bytes compressed)
//! ok  ⇔ e(g1, σ) = e(S, H)
//! ```
//!
//! Key separation: `t` also signs users' mail (Cha–Cheon IBS), where user
//! keys are `t·H_Q(identity)`. The two uses hash with distinct RFC 9380
//! domain-separation tags, so they are independent random oracles, and in
//! the random-oracle model each scheme's signatures and keys can be
//! simulated in the other's security game (programming its oracle with
//! points of known discrete logarithm, given `t·g2` as co-CDH provides):
//! neither helps forge the other. The argument is spelled out in
//! `SECURITY.md`. The KEM keys (`x`, `y`) are never used here.
//!
//! BLS signatures are deterministic: signing the same successor twice gives
//! the same bytes, so a store can re-derive a lost one while the previous
//! generation's key exists.

use core::fmt;

use blstrs::{G2Affine, G2Projective};
use group::Curve;

use crate::error::{DecodeError, VerifyError};
use crate::hash;
use crate::ibs::{SigningParams, pairs_with};
use crate::kem::{G2_BYTES, Generation, MasterKey, PublicParams, decode_g2, hex_short};

/// Bytes of an encoded continuity signature (one compressed G2 point).
pub const CONTINUITY_SIGNATURE_BYTES: usize = G2_BYTES;

/// Prefix of the signed message (the hash-to-curve DST separates too; the
/// prefix makes the message self-describing in test vectors).
const MESSAGE_PREFIX: &[u8] = b"IBEMAIL-V1-CONTINUITY";

/// What a continuity signature covers: the successor generation's record,
/// all of it that a sender acts on except its expiry (`e=` is added when
/// the generation starts retiring, long after it was signed).
#[derive(Clone, Copy, Debug)]
pub struct Successor<'a> {
    /// The domain, normalised (lower-case A-labels, no trailing dot).
    pub domain: &'a str,
    /// The successor's generation (the signer's plus one).
    pub generation: Generation,
    /// The successor's KEM parameters.
    pub params: &'a PublicParams,
    /// The successor's signing parameter.
    pub signing: &'a SigningParams,
    /// The successor's published policy, canonically encoded by the record
    /// crate (empty for none).
    pub policy: &'a [u8],
}

impl Successor<'_> {
    /// The signed message `m` (see the module documentation).
    pub fn message(&self) -> Vec<u8> {
        let domain = self.domain.as_bytes();
        let mut m = Vec::with_capacity(MESSAGE_PREFIX.len() + 160 + domain.len());
        m.extend_from_slice(MESSAGE_PREFIX);
        m.extend_from_slice(&len16(domain.len()).to_be_bytes());
        m.extend_from_slice(domain);
        m.extend_from_slice(&self.generation.to_be_bytes());
        m.extend_from_slice(&self.params.to_bytes());
        m.extend_from_slice(&self.signing.to_bytes());
        m.extend_from_slice(&len16(self.policy.len()).to_be_bytes());
        m.extend_from_slice(self.policy);
        m
    }

    fn point(&self) -> G2Projective {
        G2Projective::hash_to_curve(&self.message(), hash::DST_CONTINUITY, &[])
    }
}

fn len16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

/// A continuity signature (`cs=` in the DNS record).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ContinuitySignature {
    sigma: G2Affine,
}

impl fmt::Debug for ContinuitySignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ContinuitySignature({})",
            hex_short(&self.sigma.to_compressed())
        )
    }
}

impl ContinuitySignature {
    /// Decodes a compressed G2 point, subgroup-checked and not the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; G2_BYTES] = bytes.try_into().map_err(|_| DecodeError::Length {
            what: "continuity signature",
            expected: G2_BYTES,
            actual: bytes.len(),
        })?;
        Ok(ContinuitySignature {
            sigma: decode_g2(bytes, "continuity signature")?,
        })
    }

    /// The compressed encoding.
    pub fn to_bytes(&self) -> [u8; CONTINUITY_SIGNATURE_BYTES] {
        self.sigma.to_compressed()
    }
}

impl MasterKey {
    /// Signs `successor` with this generation's signing master scalar.
    ///
    /// The caller must be the generation immediately before
    /// `successor.generation`; verification uses that generation's `S`.
    pub fn sign_successor(&self, successor: &Successor<'_>) -> ContinuitySignature {
        ContinuitySignature {
            sigma: (successor.point() * self.signing_scalar()).to_affine(),
        }
    }
}

/// Verifies that the generation whose signing parameter is `predecessor`
/// signed `successor`.
pub fn verify_successor(
    predecessor: &SigningParams,
    successor: &Successor<'_>,
    signature: &ContinuitySignature,
) -> Result<(), VerifyError> {
    // e(g1, σ) = e(S, H)
    if pairs_with(
        &predecessor.point(),
        signature.sigma,
        successor.point().to_affine(),
    ) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn key(seed: u64) -> MasterKey {
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn a_generation_vouches_for_exactly_its_successor() {
        let (old, new, other) = (key(1), key(2), key(3));
        let (params, signing) = (new.public_params(), new.signing_params());
        let successor = Successor {
            domain: "b.test",
            generation: 2,
            params: &params,
            signing: &signing,
            policy: b"p=require;ma=604800",
        };
        let sig = old.sign_successor(&successor);
        verify_successor(&old.signing_params(), &successor, &sig).unwrap();
        // Deterministic, and round-trips.
        assert_eq!(old.sign_successor(&successor), sig);
        let decoded = ContinuitySignature::from_bytes(&sig.to_bytes()).unwrap();
        verify_successor(&old.signing_params(), &successor, &decoded).unwrap();

        // Any other signer, domain, generation, parameter or policy fails.
        let wrong_signer = other.sign_successor(&successor);
        assert!(verify_successor(&old.signing_params(), &successor, &wrong_signer).is_err());
        assert!(verify_successor(&other.signing_params(), &successor, &sig).is_err());
        let other_params = other.public_params();
        let other_signing = other.signing_params();
        for changed in [
            Successor {
                domain: "c.test",
                ..successor
            },
            Successor {
                generation: 3,
                ..successor
            },
            Successor {
                params: &other_params,
                ..successor
            },
            Successor {
                signing: &other_signing,
                ..successor
            },
            Successor {
                policy: b"",
                ..successor
            },
            Successor {
                policy: b"p=require;ma=60",
                ..successor
            },
        ] {
            assert!(
                verify_successor(&old.signing_params(), &changed, &sig).is_err(),
                "{changed:?}"
            );
        }
    }

    #[test]
    fn the_continuity_hash_is_not_the_identity_hash() {
        // A user signing key t·H_Q(x) must never be a continuity signature:
        // the two oracles differ even on equal input.
        let m = b"same input";
        let q = G2Projective::hash_to_curve(m, hash::DST_IBS_IDENTITY, &[]);
        let c = G2Projective::hash_to_curve(m, hash::DST_CONTINUITY, &[]);
        assert_ne!(q.to_affine(), c.to_affine());
    }
}
