//! Identity-based signatures: Cha–Cheon (PKC 2003) on BLS12-381.
//!
//! Notation (additive; `g1`, `g2` the standard generators):
//!
//! - signing master scalar `t = H_t(k_prf)` (HKDF from the generation's PRF
//!   key, so every generation has one and nothing new is stored);
//!   public signing parameter `S = t·g1` (the `S=` tag of the DNS record);
//! - identity point `Q = H_Q(address, generation)` in G2 (RFC 9380
//!   hash-to-curve);
//! - user signing key `D = t·Q`;
//! - signature on `m`: `r = H_r(D, fresh randomness, address, generation, m)`
//!   (hedged: deterministic if the RNG fails), `U = r·Q`,
//!   `h = H_h(U, address, generation, m)`, `V = (r + h)·D`; the signature is
//!   `U ‖ V`;
//! - verification: `e(g1, V) = e(S, U + h·Q)`, checked as one two-term
//!   multi-pairing against 1.
//!
//! Security: existential unforgeability under adaptive chosen-message and
//! chosen-identity attacks in the random-oracle model, under the
//! computational Diffie–Hellman assumption (Cha and Cheon, "An
//! Identity-Based Signature from Gap Diffie-Hellman Groups", PKC 2003,
//! Theorem 3, via the forking lemma). In the asymmetric setting used here
//! (`S` in G1, `Q`, `U`, `V`, `D` in G2) the reduction needs `t·g2` to
//! answer key-extraction queries, so the assumption is co-CDH with that
//! auxiliary element, the same one BLS signatures on BLS12-381 rely on. See
//! `SECURITY.md`.

use core::fmt;

use blstrs::{G1Affine, G2Affine, G2Projective, Scalar};
use ff::{Field, PrimeField};
use group::{Curve, Group, prime::PrimeCurveAffine};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{DecodeError, VerifyError};
use crate::hash::{self, hash_to_scalar};
use crate::identity::Identity;
use crate::kem::{
    G1_BYTES, G2_BYTES, Generation, MasterKey, decode_g1, decode_g2, decode_g2_on_curve, hex_short,
};

/// Bytes of an encoded signature: `U ‖ V`, two compressed G2 points.
pub const SIGNATURE_BYTES: usize = 2 * G2_BYTES;
/// Bytes of the encoded signing parameter `S` (a compressed G1 point).
pub const SIGNING_PARAMS_BYTES: usize = G1_BYTES;

/// The identity point `Q = H_Q(len ‖ address ‖ generation)` in G2.
fn identity_point(identity: &Identity, generation: Generation) -> G2Projective {
    let context = crate::kem::identity_context(identity, generation);
    G2Projective::hash_to_curve(&context, hash::DST_IBS_IDENTITY, &[])
}

/// How many identity points [`verifying_point`] keeps (public values,
/// about 300 bytes each).
const IDENTITY_POINTS: usize = 4096;

/// `Q` of `identity` at `generation` for verification, from a bounded
/// cache of recent signers: hashing to G2 is about a third of a pairing,
/// and a sender's mail comes in series (the inside and outside of one
/// message are batched apart from this). The values are public and
/// deterministic; a signer flood only evicts others, which then cost the
/// hash again.
fn verifying_point(identity: &Identity, generation: Generation) -> G2Projective {
    type Points = lru::LruCache<(Identity, Generation), G2Affine>;
    static CACHE: std::sync::LazyLock<std::sync::Mutex<Points>> = std::sync::LazyLock::new(|| {
        let capacity =
            core::num::NonZeroUsize::new(IDENTITY_POINTS).unwrap_or(core::num::NonZeroUsize::MIN);
        std::sync::Mutex::new(lru::LruCache::new(capacity))
    });
    let key = (identity.clone(), generation);
    if let Some(q) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return G2Projective::from(*q);
    }
    let q = identity_point(identity, generation);
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(key, q.to_affine());
    q
}

/// What a Cha–Cheon signature signs: a digest (the KGC's SIGN, the
/// `cc-bls12-381-sha256` message signature) or a per-message public key
/// (a certificate, [`crate::certified`]). Each has its own challenge and
/// nonce hash, so neither kind is ever a valid signature of the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A digest or other message.
    Message,
    /// An Ed25519 public key being certified.
    Certificate,
}

impl Purpose {
    fn challenge_dst(self) -> &'static [u8] {
        match self {
            Purpose::Message => hash::DST_IBS_CHALLENGE,
            Purpose::Certificate => hash::DST_IBS_CERT_CHALLENGE,
        }
    }

    fn nonce_dst(self) -> &'static [u8] {
        match self {
            Purpose::Message => hash::DST_IBS_NONCE,
            Purpose::Certificate => hash::DST_IBS_CERT_NONCE,
        }
    }
}

/// `h = H_h(U ‖ len ‖ address ‖ generation ‖ m)`.
fn challenge(
    u: &G2Affine,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    purpose: Purpose,
) -> Scalar {
    let context = crate::kem::identity_context(identity, generation);
    hash_to_scalar(
        &[&u.to_compressed(), &context, message],
        purpose.challenge_dst(),
    )
}

impl MasterKey {
    /// The signing master scalar `t`, derived from the generation's PRF key
    /// under its own HKDF label (independent of every user-key scalar).
    /// `counter` skips the (probability 2^-255) zero value, so `t` is never
    /// a weak constant.
    pub(crate) fn signing_scalar(&self) -> Scalar {
        let mut counter = 0u8;
        loop {
            let mut okm = Zeroizing::new([0u8; 48]);
            let _ = self.prf_expand(&[hash::INFO_IBS_MASTER, &[counter]], okm.as_mut());
            let t = hash::scalar_from_wide(&okm);
            if !bool::from(t.is_zero()) {
                return t;
            }
            counter = counter.wrapping_add(1);
        }
    }

    /// The public signing parameter `S = t·g1` of this generation.
    pub fn signing_params(&self) -> SigningParams {
        SigningParams {
            s: (G1Affine::generator() * self.signing_scalar()).to_affine(),
        }
    }

    /// Derives the signing key of `identity` for this generation.
    ///
    /// Deterministic, like [`MasterKey::extract`].
    pub fn extract_signing(&self, identity: &Identity, generation: Generation) -> SigningKey {
        let q = identity_point(identity, generation);
        let d = (q * self.signing_scalar()).to_affine();
        SigningKey {
            identity: identity.clone(),
            generation,
            q: q.to_affine(),
            d_uncompressed: Zeroizing::new(d.to_uncompressed()),
        }
    }
}

// ---------------------------------------------------------------------------
// Signing parameters

/// A domain's public signing parameter for one generation (`S=` in DNS).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SigningParams {
    s: G1Affine,
}

impl SigningParams {
    /// The point `S`.
    pub(crate) fn point(&self) -> G1Affine {
        self.s
    }
}

impl fmt::Debug for SigningParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningParams({})", hex_short(&self.s.to_compressed()))
    }
}

impl SigningParams {
    /// Decodes `S` (compressed G1, subgroup-checked, not the identity).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; G1_BYTES] = bytes.try_into().map_err(|_| DecodeError::Length {
            what: "signing parameter S",
            expected: G1_BYTES,
            actual: bytes.len(),
        })?;
        Ok(SigningParams {
            s: decode_g1(bytes, "signing parameter S")?,
        })
    }

    /// The compressed `S`.
    pub fn to_bytes(&self) -> [u8; SIGNING_PARAMS_BYTES] {
        self.s.to_compressed()
    }
}

// ---------------------------------------------------------------------------
// Signing key

/// The signing key of one identity at one generation. Zeroized on drop;
/// `Debug` is redacted.
#[derive(Clone)]
pub struct SigningKey {
    identity: Identity,
    generation: Generation,
    /// The identity point `Q` (public), kept so that signing does not hash
    /// to G2 again: the key service caches signing keys.
    q: G2Affine,
    d_uncompressed: Zeroizing<[u8; 2 * G2_BYTES]>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// The identity this key signs as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The generation of the key.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn point(&self) -> G2Affine {
        // Produced by `extract_signing` from a valid point.
        Option::from(G2Affine::from_uncompressed_unchecked(&self.d_uncompressed))
            .unwrap_or_else(G2Affine::identity)
    }

    /// Signs `message` (any bytes; callers sign a digest of what they
    /// protect). `rng` adds fresh randomness to the nonce; the nonce is
    /// also bound to the key and the message, so a broken RNG does not
    /// repeat nonces across messages.
    pub fn sign<R: RngCore + CryptoRng + ?Sized>(&self, message: &[u8], rng: &mut R) -> Signature {
        let mut fresh = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(fresh.as_mut());
        self.sign_for(message, Purpose::Message, &fresh)
    }

    /// Signs `message` under the hashes of `purpose`, with `fresh` in the
    /// nonce (all zeros for a certificate: there is one message per key,
    /// its public key, so the deterministic nonce never signs two).
    pub(crate) fn sign_for(&self, message: &[u8], purpose: Purpose, fresh: &[u8; 32]) -> Signature {
        let context = crate::kem::identity_context(&self.identity, self.generation);
        let q = G2Projective::from(self.q);
        let d = self.point();
        let mut counter = 0u8;
        loop {
            let r = hash_to_scalar(
                &[
                    self.d_uncompressed.as_ref(),
                    fresh.as_ref(),
                    &context,
                    &[counter],
                    message,
                ],
                purpose.nonce_dst(),
            );
            let u = (q * r).to_affine();
            let h = challenge(&u, &self.identity, self.generation, message, purpose);
            let rh = r + h;
            if bool::from(r.is_zero()) || bool::from(rh.is_zero()) {
                // Probability 2^-254: draw again rather than emit an
                // identity point.
                counter = counter.wrapping_add(1);
                continue;
            }
            let v = (d * rh).to_affine();
            return Signature { u, v };
        }
    }
}

// ---------------------------------------------------------------------------
// Signatures

/// A signature `U ‖ V` (two G2 points).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    u: G2Affine,
    v: G2Affine,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex_short(&self.u.to_compressed()))
    }
}

impl Signature {
    /// Decodes `U ‖ V`; both must be valid, non-identity points of the
    /// prime-order subgroup.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, decode_g2)
    }

    /// Decodes `U ‖ V` made by our own key service, which the caller
    /// only re-encodes into a message (the key service answered over an
    /// authenticated channel): the points must be on the curve and not the
    /// identity, but the prime-order subgroup is not checked (a third of a
    /// pairing's time per signature). Never for a signature to verify: use
    /// [`Signature::from_bytes`].
    pub fn from_own_key_service(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(bytes, decode_g2_on_curve)
    }

    /// Splits `U ‖ V` and decodes each half with `point`.
    fn decode(
        bytes: &[u8],
        point: fn(&[u8; G2_BYTES], &'static str) -> Result<G2Affine, DecodeError>,
    ) -> Result<Self, DecodeError> {
        let bytes: &[u8; SIGNATURE_BYTES] = bytes.try_into().map_err(|_| DecodeError::Length {
            what: "signature",
            expected: SIGNATURE_BYTES,
            actual: bytes.len(),
        })?;
        let (u, v) = bytes.split_at(G2_BYTES);
        let half = |bytes: &[u8], what: &'static str| {
            let bytes: &[u8; G2_BYTES] = bytes.try_into().map_err(|_| DecodeError::Length {
                what,
                expected: G2_BYTES,
                actual: bytes.len(),
            })?;
            point(bytes, what)
        };
        Ok(Signature {
            u: half(u, "signature U")?,
            v: half(v, "signature V")?,
        })
    }

    /// Encodes the signature as `U ‖ V`.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_BYTES] {
        let mut out = [0u8; SIGNATURE_BYTES];
        out[..G2_BYTES].copy_from_slice(&self.u.to_compressed());
        out[G2_BYTES..].copy_from_slice(&self.v.to_compressed());
        out
    }
}

/// Verifies `signature` on `message` by `identity` at `generation` under
/// the signer domain's `params`.
pub fn verify(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    signature: &Signature,
) -> Result<(), VerifyError> {
    if equation(params, identity, generation, message, signature).holds() {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

/// The pairing equation a signature must satisfy,
/// `e(g1, V) = e(S, U + h·Q)`, with the challenge `h` computed and the
/// rest left to [`Equation::holds`] or [`all_hold`]: so that several
/// signatures (the two of a sealed message) are checked at about the cost
/// of one.
#[derive(Clone, Debug)]
pub struct Equation {
    s: G1Affine,
    identity: Identity,
    generation: Generation,
    u: G2Affine,
    v: G2Affine,
    h: Scalar,
    /// Already known to hold: a certificate verified before
    /// ([`crate::certified`]); nothing is left to compute.
    pub(crate) proven: bool,
    /// For a certificate: its cache key, remembered once it holds.
    remember: Option<[u8; 32]>,
}

/// The equation of `signature` on `message` by `identity` at `generation`
/// under `params`.
pub fn equation(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    signature: &Signature,
) -> Equation {
    equation_for(
        params,
        identity,
        generation,
        message,
        signature,
        Purpose::Message,
    )
}

/// The equation of `signature` on `message` under the hashes of `purpose`.
pub(crate) fn equation_for(
    params: &SigningParams,
    identity: &Identity,
    generation: Generation,
    message: &[u8],
    signature: &Signature,
    purpose: Purpose,
) -> Equation {
    Equation {
        s: params.s,
        identity: identity.clone(),
        generation,
        u: signature.u,
        v: signature.v,
        h: challenge(&signature.u, identity, generation, message, purpose),
        proven: false,
        remember: None,
    }
}

impl Equation {
    /// An equation known to hold (a certificate checked before).
    pub(crate) fn proven(
        params: &SigningParams,
        identity: &Identity,
        generation: Generation,
    ) -> Self {
        Equation {
            s: params.s,
            identity: identity.clone(),
            generation,
            u: G2Affine::identity(),
            v: G2Affine::identity(),
            h: Scalar::ZERO,
            proven: true,
            remember: None,
        }
    }

    /// This equation, remembered under `key` once it holds.
    pub(crate) fn remembered_as(mut self, key: [u8; 32]) -> Self {
        self.remember = Some(key);
        self
    }

    /// Whether the equation holds: hashing the identity to G2, one G2
    /// multiplication and one two-term multi-pairing (nothing for a
    /// certificate verified before).
    pub fn holds(&self) -> bool {
        if self.proven {
            return true;
        }
        let holds = self.computed();
        if let (true, Some(key)) = (holds, &self.remember) {
            crate::certified::remember(key);
        }
        holds
    }

    /// The same check as `other`.
    fn same_as(&self, other: &Equation) -> bool {
        self.s == other.s
            && self.identity == other.identity
            && self.generation == other.generation
            && self.u == other.u
            && self.v == other.v
            && self.h == other.h
    }

    pub(crate) fn computed(&self) -> bool {
        let q = verifying_point(&self.identity, self.generation);
        let rhs = (G2Projective::from(self.u) + q * self.h).to_affine();
        // e(S, O) = 1 ≠ e(g1, V) for the V ≠ O every signature has: it
        // cannot hold, and the pairing code need not see the identity.
        !bool::from(rhs.is_identity()) && pairs_with(&self.s, self.v, rhs)
    }
}

/// Whether every one of `equations` holds, checked together with random
/// 128-bit weights `ρᵢ` (small-exponent batch verification, Bellare,
/// Garay and Rabin, EUROCRYPT 1998):
///
/// `e(g1, Σ ρᵢ·Vᵢ) = Π e(S, Σ ρᵢ·Uᵢ + (Σ ρᵢ·hᵢ)·Q)`,
///
/// the product over the distinct signers (`S`, identity, generation), the
/// inner sums over each one's equations. Every point is in the
/// prime-order subgroup (signatures are decoded with the subgroup check,
/// `Q` is hashed into it), so if any one equation fails the batch holds
/// with probability at most 2⁻¹²⁸ over the weights — which `rng` must
/// draw fresh and unpredictably: an attacker who knew them could make two
/// bad signatures cancel. Two signatures by one signer (a sealed
/// message's inside and outside) cost one identity hash, three G2
/// multiplications and one two-term multi-pairing, against two hashes, two
/// multiplications and two multi-pairings apart: about 1.4 pairings less.
///
/// Equations known to hold (certificates verified before) are left out,
/// and identical ones (the inside and outside of a sealed message under one
/// certificate) count once. A certificate is remembered only when its
/// equation was checked alone: a batch's verdict rests on the caller's
/// weights, and a remembered certificate outlives the call.
pub fn all_hold<R: RngCore + CryptoRng + ?Sized>(equations: &[Equation], rng: &mut R) -> bool {
    let mut open: Vec<&Equation> = Vec::new();
    for eq in equations.iter().filter(|e| !e.proven) {
        if !open.iter().any(|o| o.same_as(eq)) {
            open.push(eq);
        }
    }
    match open.as_slice() {
        [] => true,
        [one] => one.holds(),
        _ => batch_holds(&open, rng),
    }
}

/// [`all_hold`] for at least two equations still to compute.
fn batch_holds<R: RngCore + CryptoRng + ?Sized>(equations: &[&Equation], rng: &mut R) -> bool {
    /// One signer's terms: Σ ρᵢ·Uᵢ and Σ ρᵢ·hᵢ.
    struct Signer<'a> {
        eq: &'a Equation,
        u: G2Projective,
        h: Scalar,
    }
    let mut lhs = G2Projective::identity();
    let mut signers: Vec<Signer<'_>> = Vec::new();
    for (i, &eq) in equations.iter().enumerate() {
        // The first weight is 1 (scaling everything by one nonzero factor
        // changes nothing), and costs no multiplication.
        let (v, u, h) = if i == 0 {
            (G2Projective::from(eq.v), G2Projective::from(eq.u), eq.h)
        } else {
            let w = weight(rng);
            (eq.v * w, eq.u * w, eq.h * w)
        };
        lhs += v;
        let same = |s: &&mut Signer<'_>| {
            s.eq.s == eq.s && s.eq.identity == eq.identity && s.eq.generation == eq.generation
        };
        match signers.iter_mut().find(same) {
            Some(signer) => {
                signer.u += u;
                signer.h += h;
            }
            None => signers.push(Signer { eq, u, h }),
        }
    }
    let lhs = lhs.to_affine();
    let g1 = G1Affine::generator();
    let sides: Vec<(G1Affine, G2Affine)> = signers
        .into_iter()
        .map(|signer| {
            let q = verifying_point(&signer.eq.identity, signer.eq.generation);
            let rhs = (signer.u + q * signer.h).to_affine();
            ((-signer.eq.s.to_curve()).to_affine(), rhs)
        })
        .collect();
    let mut terms: Vec<(&G1Affine, &G2Affine)> = vec![(&g1, &lhs)];
    terms.extend(sides.iter().map(|(s, rhs)| (s, rhs)));
    product_is_one(&terms)
}

/// A uniformly random nonzero 128-bit scalar.
fn weight<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Scalar {
    loop {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        let w = u128::from_le_bytes(bytes);
        if w != 0 {
            return Scalar::from_u128(w);
        }
    }
}

/// `e(g1, lhs) = e(s, rhs)`, checked as `e(g1, lhs) · e(−s, rhs) = 1`.
/// Signature verification here and of continuity signatures
/// ([`crate::continuity`]).
pub(crate) fn pairs_with(s: &G1Affine, lhs: G2Affine, rhs: G2Affine) -> bool {
    let minus_s = (-s.to_curve()).to_affine();
    product_is_one(&[(&G1Affine::generator(), &lhs), (&minus_s, &rhs)])
}

/// Whether `Π e(pᵢ, qᵢ) = 1`: one Miller loop over all the pairs and one
/// final exponentiation.
///
/// blst's pairing context (`blst::Pairing`, up to eight pairs per loop)
/// computes the pairs' lines as it goes and squares the shared accumulator
/// once per step for all of them; blstrs's `multi_miller_loop` runs a
/// separate loop per pair (and needs each G2 point's lines computed into a
/// `G2Prepared` first), which for the fresh G2 points of a signature check
/// costs about a quarter of a pairing more per pair. A pair with the
/// identity in either group contributes `e = 1` and is left out, as
/// blstrs does (blst must not see it).
pub(crate) fn product_is_one(terms: &[(&G1Affine, &G2Affine)]) -> bool {
    let mut context = blst::Pairing::new(false, &[]);
    let mut paired = false;
    for (p, q) in terms {
        if bool::from(p.is_identity() | q.is_identity()) {
            continue;
        }
        context.raw_aggregate((*q).as_ref(), (*p).as_ref());
        paired = true;
    }
    if !paired {
        // The empty product.
        return true;
    }
    context.commit();
    context.finalverify(None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use blstrs::{Bls12, G1Projective, G2Prepared, Gt};
    use pairing::{MillerLoopResult, MultiMillerLoop};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn setup() -> (MasterKey, SigningParams, Identity, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let master = MasterKey::generate(&mut rng);
        let params = master.signing_params();
        (
            master,
            params,
            Identity::parse("alice@a.test").unwrap(),
            rng,
        )
    }

    #[test]
    fn signatures_verify_and_keys_are_deterministic() {
        let (master, params, alice, mut rng) = setup();
        let key = master.extract_signing(&alice, 1);
        let again = master.extract_signing(&alice, 1);
        assert_eq!(*key.d_uncompressed, *again.d_uncompressed);
        let sig = key.sign(b"message", &mut rng);
        verify(&params, &alice, 1, b"message", &sig).unwrap();
        let decoded = Signature::from_bytes(&sig.to_bytes()).unwrap();
        assert_eq!(decoded, sig);
        verify(&params, &alice, 1, b"message", &decoded).unwrap();
        // Fresh randomness: two signatures of one message differ, both verify.
        let sig2 = key.sign(b"message", &mut rng);
        assert_ne!(sig.to_bytes(), sig2.to_bytes());
        verify(&params, &alice, 1, b"message", &sig2).unwrap();
    }

    /// blstrs's product of pairings, the reference for [`product_is_one`].
    fn blstrs_product_is_one(terms: &[(&G1Affine, &G2Affine)]) -> bool {
        let prepared: Vec<(G1Affine, G2Prepared)> = terms
            .iter()
            .map(|(p, q)| (**p, G2Prepared::from(**q)))
            .collect();
        let refs: Vec<(&G1Affine, &G2Prepared)> = prepared.iter().map(|(p, q)| (p, q)).collect();
        let result: Gt =
            <Bls12 as MultiMillerLoop>::multi_miller_loop(&refs).final_exponentiation();
        bool::from(result.is_identity())
    }

    #[test]
    fn pairing_products_agree_with_blstrs() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let g1 = G1Affine::generator();
        let g2 = G2Affine::generator();
        let o1 = G1Affine::identity();
        let o2 = G2Affine::identity();
        for _ in 0..4 {
            let a = Scalar::random(&mut rng);
            let b = Scalar::random(&mut rng);
            let c = Scalar::random(&mut rng);
            let ag1 = (g1 * a).to_affine();
            let bg2 = (g2 * b).to_affine();
            let minus_ab = (g1 * -(a * b)).to_affine();
            let minus_abc = (g1 * -(a * b * c)).to_affine();
            let cg2 = (g2 * c).to_affine();
            let random1 = G1Projective::random(&mut rng).to_affine();
            let random2 = G2Projective::random(&mut rng).to_affine();
            let cases: Vec<(Vec<(&G1Affine, &G2Affine)>, bool)> = vec![
                // e(a·g1, b·g2) · e(−ab·g1, g2) = 1.
                (vec![(&ag1, &bg2), (&minus_ab, &g2)], true),
                // One pair too many, or a wrong one: ≠ 1.
                (vec![(&ag1, &bg2), (&minus_ab, &g2), (&ag1, &bg2)], false),
                (vec![(&ag1, &bg2), (&minus_abc, &g2)], false),
                (vec![(&minus_abc, &g2), (&ag1, &bg2), (&ag1, &bg2)], false),
                (vec![(&random1, &random2)], false),
                (vec![(&random1, &random2), (&ag1, &cg2)], false),
                // Identity terms contribute 1, whichever side they are on.
                (vec![(&o1, &bg2), (&ag1, &bg2), (&minus_ab, &g2)], true),
                (vec![(&ag1, &o2), (&ag1, &bg2), (&minus_ab, &g2)], true),
                (vec![(&o1, &random2), (&random1, &o2)], true),
                (vec![(&o1, &o2)], true),
                (vec![(&o1, &o2), (&random1, &random2)], false),
                (vec![], true),
            ];
            for (terms, expected) in cases {
                assert_eq!(blstrs_product_is_one(&terms), expected, "reference");
                assert_eq!(product_is_one(&terms), expected, "{} terms", terms.len());
            }
            // Eight pairs or more fill blst's context more than once.
            let mut many: Vec<(&G1Affine, &G2Affine)> = Vec::new();
            for _ in 0..9 {
                many.push((&ag1, &bg2));
                many.push((&minus_ab, &g2));
            }
            assert!(product_is_one(&many));
            many.push((&random1, &random2));
            assert!(!product_is_one(&many));
        }
    }

    #[test]
    fn batches_hold_only_if_every_equation_does() {
        let (master, params, alice, mut rng) = setup();
        let other = MasterKey::generate(&mut rng);
        let other_params = other.signing_params();
        let bob = Identity::parse("bob@b.test").unwrap();
        let key = master.extract_signing(&alice, 1);
        let good = [
            equation(
                &params,
                &alice,
                1,
                b"inside",
                &key.sign(b"inside", &mut rng),
            ),
            equation(
                &params,
                &alice,
                1,
                b"outside",
                &key.sign(b"outside", &mut rng),
            ),
            equation(
                &other_params,
                &bob,
                2,
                b"third",
                &other.extract_signing(&bob, 2).sign(b"third", &mut rng),
            ),
            equation(
                &params,
                &alice,
                2,
                b"g2",
                &master.extract_signing(&alice, 2).sign(b"g2", &mut rng),
            ),
        ];
        assert!(all_hold(&[], &mut rng));
        for n in 1..=good.len() {
            assert!(all_hold(&good[..n], &mut rng), "{n} good equations");
        }
        // Each one made bad in turn, in a batch of two and of all four:
        // signed by another key, over another message, or another signer's.
        let forged = master
            .extract_signing(&Identity::parse("mallory@a.test").unwrap(), 1)
            .sign(b"inside", &mut rng);
        for i in 0..good.len() {
            let mut wrong_message = good.clone();
            wrong_message[i].h =
                challenge(&wrong_message[i].u, &alice, 1, b"changed", Purpose::Message);
            let mut wrong_key = good.clone();
            wrong_key[i].u = forged.u;
            wrong_key[i].v = forged.v;
            let mut wrong_signer = good.clone();
            wrong_signer[i].s = if i == 2 { params.s } else { other_params.s };
            for bad in [&wrong_message, &wrong_key, &wrong_signer] {
                assert!(!bad[i].holds());
                assert!(!all_hold(bad, &mut rng), "equation {i} bad among four");
                let pair = if i == 0 { &bad[..2] } else { &bad[i - 1..=i] };
                assert!(!all_hold(pair, &mut rng), "equation {i} bad in a pair");
            }
        }
        // Two bad signatures that cancel with weights 1 and 1 (V and U
        // swapped between them) are caught by the random weights.
        let (a, b) = (&good[0], &good[1]);
        let mut crossed = [a.clone(), b.clone()];
        crossed[0].v = b.v;
        crossed[1].v = a.v;
        assert!(!crossed[0].holds() && !crossed[1].holds());
        assert!(!all_hold(&crossed, &mut rng));
    }

    #[test]
    fn cached_identity_points_are_the_hashed_ones() {
        let alice = Identity::parse("alice@a.test").unwrap();
        for generation in [1, 2] {
            let hashed = identity_point(&alice, generation);
            assert_eq!(verifying_point(&alice, generation), hashed, "first");
            assert_eq!(verifying_point(&alice, generation), hashed, "cached");
        }
        assert_ne!(verifying_point(&alice, 1), verifying_point(&alice, 2));
    }

    #[test]
    fn own_key_service_signatures_decode_like_checked_ones() {
        let (master, params, alice, mut rng) = setup();
        let sig = master.extract_signing(&alice, 1).sign(b"message", &mut rng);
        let decoded = Signature::from_own_key_service(&sig.to_bytes()).unwrap();
        assert_eq!(decoded, sig);
        verify(&params, &alice, 1, b"message", &decoded).unwrap();
        assert!(Signature::from_own_key_service(&[0u8; 10]).is_err());
        assert!(Signature::from_own_key_service(&[0u8; SIGNATURE_BYTES]).is_err());
        let mut identity = [0u8; SIGNATURE_BYTES];
        identity[0] = 0xc0;
        identity[G2_BYTES] = 0xc0;
        assert!(Signature::from_own_key_service(&identity).is_err());
    }

    #[test]
    fn wrong_identity_generation_params_or_message_fail() {
        let (master, params, alice, mut rng) = setup();
        let sig = master.extract_signing(&alice, 1).sign(b"message", &mut rng);
        let bob = Identity::parse("bob@a.test").unwrap();
        let other_domain = Identity::parse("alice@b.test").unwrap();
        assert_eq!(
            verify(&params, &bob, 1, b"message", &sig),
            Err(VerifyError::BadSignature)
        );
        assert!(verify(&params, &other_domain, 1, b"message", &sig).is_err());
        assert!(verify(&params, &alice, 2, b"message", &sig).is_err());
        assert!(verify(&params, &alice, 1, b"messagf", &sig).is_err());
        let other = MasterKey::generate(&mut rng).signing_params();
        assert!(verify(&other, &alice, 1, b"message", &sig).is_err());
        // Bob's valid signature is not Alice's.
        let bob_sig = master.extract_signing(&bob, 1).sign(b"message", &mut rng);
        verify(&params, &bob, 1, b"message", &bob_sig).unwrap();
        assert!(verify(&params, &alice, 1, b"message", &bob_sig).is_err());
        // A key of generation 1 does not sign for generation 2.
        let gen2 = master.extract_signing(&alice, 2);
        let sig2 = gen2.sign(b"message", &mut rng);
        verify(&params, &alice, 2, b"message", &sig2).unwrap();
        assert!(verify(&params, &alice, 1, b"message", &sig2).is_err());
    }

    #[test]
    fn replay_onto_another_message_fails() {
        let (master, params, alice, mut rng) = setup();
        let key = master.extract_signing(&alice, 1);
        let a = key.sign(b"first", &mut rng);
        let b = key.sign(b"second", &mut rng);
        assert!(verify(&params, &alice, 1, b"second", &a).is_err());
        assert!(verify(&params, &alice, 1, b"first", &b).is_err());
        // Mixing halves of two valid signatures fails too.
        let mut mixed = a.to_bytes();
        mixed[G2_BYTES..].copy_from_slice(&b.to_bytes()[G2_BYTES..]);
        if let Ok(mixed) = Signature::from_bytes(&mixed) {
            assert!(verify(&params, &alice, 1, b"first", &mixed).is_err());
            assert!(verify(&params, &alice, 1, b"second", &mixed).is_err());
        }
    }

    #[test]
    fn every_single_bit_flip_of_message_or_signature_fails() {
        let (master, params, alice, mut rng) = setup();
        let message = *b"a 32-byte digest of the message!";
        let sig = master.extract_signing(&alice, 1).sign(&message, &mut rng);
        let bytes = sig.to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            if let Ok(s) = Signature::from_bytes(&flipped) {
                assert!(
                    verify(&params, &alice, 1, &message, &s).is_err(),
                    "signature bit {bit} flipped still verifies"
                );
            }
        }
        for bit in 0..message.len() * 8 {
            let mut flipped = message;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                verify(&params, &alice, 1, &flipped, &sig).is_err(),
                "message bit {bit} flipped still verifies"
            );
        }
    }

    #[test]
    fn malformed_encodings_are_errors() {
        assert!(matches!(
            Signature::from_bytes(&[0u8; 10]),
            Err(DecodeError::Length { .. })
        ));
        assert!(Signature::from_bytes(&[0u8; SIGNATURE_BYTES]).is_err());
        // Compressed identity points are refused.
        let mut identity = [0u8; SIGNATURE_BYTES];
        identity[0] = 0xc0;
        identity[G2_BYTES] = 0xc0;
        assert!(matches!(
            Signature::from_bytes(&identity),
            Err(DecodeError::IdentityPoint { .. })
        ));
        assert!(SigningParams::from_bytes(&[0u8; 47]).is_err());
        let mut s = [0u8; G1_BYTES];
        s[0] = 0xc0;
        assert!(SigningParams::from_bytes(&s).is_err());
    }

    #[test]
    fn signing_key_is_independent_of_the_kem_key() {
        let (master, params, _, _) = setup();
        let kem = master.public_params();
        assert_ne!(params.to_bytes(), kem.x_bytes());
        assert_ne!(params.to_bytes(), kem.y_bytes());
        assert_eq!(
            SigningParams::from_bytes(&params.to_bytes()).unwrap(),
            params
        );
    }
}
