//! The Boneh–Boyen exponent-inversion KEM (BB2) with a Fujisaki–Okamoto
//! transform.
//!
//! Notation (additive; `g1`, `g2` the standard generators, `q` the group order):
//!
//! - master key `(x, y, k_prf)`; public parameters `X = x·g1`, `Y = y·g1`;
//! - identity scalar `h = H_id(address; domain, generation)` (RFC 9380);
//! - user key `(r, K)` with `r = PRF(k_prf, address, generation)` and
//!   `K = (1 / (h + x + r·y)) · g2`;
//! - encapsulation: random seed `σ`; `s = H_s(σ, X, Y, address, generation)`;
//!   capsule `C1 = s·(h·g1 + X)`, `C2 = s·Y`, `c3 = σ ⊕ H_mask(v^s)` with
//!   `v = e(g1, g2)`; shared secret `H_K(σ, capsule, X, Y, address, generation)`;
//! - decapsulation: `W = e(C1 + r·C2, K) = v^s`, `σ = c3 ⊕ H_mask(W)`, re-derive
//!   `s` and recompute `C1`, `C2`; any difference rejects the capsule;
//! - the KGC decapsulates with the master key instead
//!   ([`MasterKey::decapsulate`]): `W = e(y⁻¹·C2, g2)`, the same function of
//!   the capsule at a third of a pairing less.

use core::fmt;
use std::sync::{Arc, OnceLock};

use blstrs::{
    Bls12, Fp12, G1Affine, G1Projective, G2Affine, G2Prepared, G2Projective, Gt, Scalar, pairing,
};
use ff::Field;
use group::{Curve, Group, prime::PrimeCurveAffine};
use hkdf::Hkdf;
use pairing::{MillerLoopResult, MultiMillerLoop};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{DecapsulationError, DecodeError, EncapsulationError};
use crate::fixed_base::{G1Table, GtTable};
use crate::hash::{self, expand_message_xmd, hash_to_scalar};
use crate::identity::Identity;

/// A parameter generation number (`n=` in the DNS record). Generations start
/// at 1 and increase with every key rotation.
pub type Generation = u32;

/// Bytes of an encoded scalar (big-endian).
pub const SCALAR_BYTES: usize = 32;
/// Bytes of a compressed G1 point.
pub const G1_BYTES: usize = 48;
/// Bytes of a compressed G2 point.
pub const G2_BYTES: usize = 96;
/// Bytes of an encoded master key: `x ‖ y ‖ k_prf`.
pub const MASTER_KEY_BYTES: usize = 2 * SCALAR_BYTES + PRF_KEY_BYTES;
/// Bytes of encoded public parameters: `X ‖ Y`.
pub const PUBLIC_PARAMS_BYTES: usize = 2 * G1_BYTES;
/// Bytes of an encoded user key: `r ‖ K`.
pub const USER_KEY_BYTES: usize = SCALAR_BYTES + G2_BYTES;
/// Bytes of an encoded capsule: `C1 ‖ C2 ‖ c3`.
pub const CAPSULE_BYTES: usize = 2 * G1_BYTES + SEED_BYTES;
/// Bytes of the shared secret.
pub const SHARED_SECRET_BYTES: usize = 32;

const PRF_KEY_BYTES: usize = 32;
const SEED_BYTES: usize = 32;
const GT_BYTES: usize = 12 * 48;

/// `v = e(g1, g2)` with its exponentiation table, computed once per process.
fn v_table() -> &'static GtTable {
    static TABLE: OnceLock<GtTable> = OnceLock::new();
    TABLE.get_or_init(|| GtTable::new(&pairing(&G1Affine::generator(), &G2Affine::generator())))
}

/// The generator `g2` with its Miller-loop lines, computed once per process.
/// Public: pairing against it needs no secret lines (see
/// [`MasterKey::decapsulate`]).
fn g2_lines() -> &'static G2Prepared {
    static LINES: OnceLock<G2Prepared> = OnceLock::new();
    LINES.get_or_init(|| G2Prepared::from(G2Affine::generator()))
}

/// The generator `g1` with its multiplication table, computed once per process.
fn g1_table() -> &'static G1Table {
    static TABLE: OnceLock<G1Table> = OnceLock::new();
    TABLE.get_or_init(|| G1Table::new(&G1Projective::generator()))
}

fn decode_scalar(bytes: &[u8; SCALAR_BYTES], what: &'static str) -> Result<Scalar, DecodeError> {
    let scalar = Option::<Scalar>::from(Scalar::from_bytes_be(bytes))
        .ok_or(DecodeError::NonCanonicalScalar { what })?;
    if bool::from(scalar.is_zero()) {
        return Err(DecodeError::ZeroScalar { what });
    }
    Ok(scalar)
}

/// Decodes a compressed G1 point, with the curve, subgroup and non-identity
/// checks done separately so the error says which one failed.
pub(crate) fn decode_g1(
    bytes: &[u8; G1_BYTES],
    what: &'static str,
) -> Result<G1Affine, DecodeError> {
    let point = decode_g1_on_curve(bytes, what)?;
    if !bool::from(point.is_torsion_free()) {
        return Err(DecodeError::NotInSubgroup { what });
    }
    Ok(point)
}

/// [`decode_g1`] without the subgroup check (a third of a multiplication),
/// for a point that is only ever compared with one recomputed in G1.
fn decode_g1_on_curve(bytes: &[u8; G1_BYTES], what: &'static str) -> Result<G1Affine, DecodeError> {
    let point = Option::<G1Affine>::from(G1Affine::from_compressed_unchecked(bytes))
        .ok_or(DecodeError::NotOnCurve { what })?;
    if bool::from(point.is_identity()) {
        return Err(DecodeError::IdentityPoint { what });
    }
    if !bool::from(point.is_on_curve()) {
        return Err(DecodeError::NotOnCurve { what });
    }
    Ok(point)
}

pub(crate) fn decode_g2(
    bytes: &[u8; G2_BYTES],
    what: &'static str,
) -> Result<G2Affine, DecodeError> {
    let point = decode_g2_on_curve(bytes, what)?;
    if !bool::from(point.is_torsion_free()) {
        return Err(DecodeError::NotInSubgroup { what });
    }
    Ok(point)
}

/// [`decode_g2`] without the subgroup check: on the curve, not the
/// identity. Only for points that are re-encoded, never computed with.
pub(crate) fn decode_g2_on_curve(
    bytes: &[u8; G2_BYTES],
    what: &'static str,
) -> Result<G2Affine, DecodeError> {
    let point = Option::<G2Affine>::from(G2Affine::from_compressed_unchecked(bytes))
        .ok_or(DecodeError::NotOnCurve { what })?;
    if bool::from(point.is_identity()) {
        return Err(DecodeError::IdentityPoint { what });
    }
    if !bool::from(point.is_on_curve()) {
        return Err(DecodeError::NotOnCurve { what });
    }
    Ok(point)
}

/// Point equality as a `Choice`. blst compares projective points with
/// constant-time field arithmetic (cross-multiplied coordinates).
fn points_equal(a: &G1Projective, b: &G1Projective) -> subtle::Choice {
    subtle::Choice::from(u8::from(a == b))
}

fn exact<'a, const N: usize>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a [u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::Length {
        what,
        expected: N,
        actual: bytes.len(),
    })
}

/// Canonical big-endian encoding of a target-group element (576 bytes).
fn gt_to_bytes(gt: &Gt) -> Zeroizing<[u8; GT_BYTES]> {
    let fp12 = Fp12::from(*gt);
    let mut out = Zeroizing::new([0u8; GT_BYTES]);
    let mut offset = 0;
    for fp6 in [fp12.c0(), fp12.c1()] {
        for fp2 in [fp6.c0(), fp6.c1(), fp6.c2()] {
            for fp in [fp2.c0(), fp2.c1()] {
                out[offset..offset + 48].copy_from_slice(&fp.to_bytes_be());
                offset += 48;
            }
        }
    }
    out
}

/// Length-prefixed identity context shared by the FO and key derivations:
/// `len(address) ‖ address ‖ generation`.
pub(crate) fn identity_context(identity: &Identity, generation: Generation) -> Vec<u8> {
    let address = identity.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + address.len() + 4);
    out.extend_from_slice(
        &u16::try_from(address.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(address);
    out.extend_from_slice(&generation.to_be_bytes());
    out
}

/// The identity scalar `h = hash_to_field(address)` under the DST that binds
/// the domain and the generation.
pub fn identity_scalar(identity: &Identity, generation: Generation) -> Scalar {
    hash_to_scalar(
        &[identity.as_str().as_bytes()],
        &hash::identity_dst(identity.domain(), generation),
    )
}

// ---------------------------------------------------------------------------
// Master key

/// A domain's master key for one generation. Zeroized on drop; `Debug` is
/// redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    x: [u8; SCALAR_BYTES],
    y: [u8; SCALAR_BYTES],
    prf_key: [u8; PRF_KEY_BYTES],
    /// `X ‖ Y`, computed on first use by [`MasterKey::decapsulate`] (public).
    #[zeroize(skip)]
    params_bytes: OnceLock<[u8; PUBLIC_PARAMS_BYTES]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Draws a new master key from `rng`.
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let draw_scalar = |rng: &mut R| loop {
            let mut wide = Zeroizing::new([0u8; 48]);
            rng.fill_bytes(wide.as_mut());
            // Hashing the wide draw (rather than reducing it directly) keeps
            // the scalar uniform even for an RNG with slight biases.
            let s = hash_to_scalar(&[wide.as_ref()], hash::DST_MASTER_SCALAR);
            if !bool::from(s.is_zero()) {
                return s;
            }
        };
        let x = draw_scalar(rng);
        let y = draw_scalar(rng);
        let mut prf_key = [0u8; PRF_KEY_BYTES];
        rng.fill_bytes(&mut prf_key);
        MasterKey {
            x: x.to_bytes_be(),
            y: y.to_bytes_be(),
            prf_key,
            params_bytes: OnceLock::new(),
        }
    }

    /// Decodes `x ‖ y ‖ k_prf`; `x` and `y` must be canonical and non-zero.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; MASTER_KEY_BYTES] = exact(bytes, "master key")?;
        let mut key = MasterKey {
            x: [0; 32],
            y: [0; 32],
            prf_key: [0; 32],
            params_bytes: OnceLock::new(),
        };
        key.x.copy_from_slice(&bytes[..32]);
        key.y.copy_from_slice(&bytes[32..64]);
        key.prf_key.copy_from_slice(&bytes[64..]);
        decode_scalar(&key.x, "master key x")?;
        decode_scalar(&key.y, "master key y")?;
        Ok(key)
    }

    /// Encodes the key as `x ‖ y ‖ k_prf` (in a buffer zeroized on drop).
    pub fn to_bytes(&self) -> Zeroizing<[u8; MASTER_KEY_BYTES]> {
        let mut out = Zeroizing::new([0u8; MASTER_KEY_BYTES]);
        out[..32].copy_from_slice(&self.x);
        out[32..64].copy_from_slice(&self.y);
        out[64..].copy_from_slice(&self.prf_key);
        out
    }

    /// `HKDF-Expand(k_prf, info, out.len())` into `out`, `info` the
    /// concatenation of its parts: every value derived from the PRF key
    /// (user-key scalars, the signing master scalar, message keys) under
    /// its own label. `None` only if HKDF refused: a 32-byte uniformly
    /// random key is a valid PRK, and every output here is far below
    /// HKDF-Expand's 255·32-byte limit, so it does not.
    pub(crate) fn prf_expand(&self, info: &[&[u8]], out: &mut [u8]) -> Option<()> {
        Hkdf::<Sha256>::from_prk(&self.prf_key)
            .ok()?
            .expand_multi_info(info, out)
            .ok()
    }

    fn scalars(&self) -> (Scalar, Scalar) {
        // Validated at construction.
        let x = Option::from(Scalar::from_bytes_be(&self.x)).unwrap_or(Scalar::ZERO);
        let y = Option::from(Scalar::from_bytes_be(&self.y)).unwrap_or(Scalar::ZERO);
        (x, y)
    }

    /// The public parameters `X = x·g1`, `Y = y·g1`.
    pub fn public_params(&self) -> PublicParams {
        let (x, y) = self.public_points();
        PublicParams::from_points(x, y)
    }

    /// `X = x·g1`, `Y = y·g1`, without the tables.
    fn public_points(&self) -> (G1Affine, G1Affine) {
        let (x, y) = self.scalars();
        let table = g1_table();
        (table.mul(&x).to_affine(), table.mul(&y).to_affine())
    }

    /// The user-key scalar `r`: a PRF of the identity under `k_prf`, so every
    /// extraction of an identity yields the same key. `counter` skips the
    /// (probability 2^-255) values for which `h + x + r·y = 0`.
    fn user_scalar(&self, identity: &Identity, generation: Generation, counter: u8) -> Scalar {
        let context = identity_context(identity, generation);
        let mut okm = Zeroizing::new([0u8; 48]);
        let _ = self.prf_expand(&[hash::INFO_USER_KEY_R, &context, &[counter]], okm.as_mut());
        hash::scalar_from_wide(&okm)
    }

    /// Derives the user key of `identity` for this master key's generation.
    ///
    /// Deterministic: the same identity always gets the same key.
    pub fn extract(&self, identity: &Identity, generation: Generation) -> UserKey {
        let (x, y) = self.scalars();
        let h = identity_scalar(identity, generation);
        let mut counter = 0u8;
        loop {
            let r = self.user_scalar(identity, generation, counter);
            let denominator = h + x + r * y;
            if let Some(inverse) = Option::<Scalar>::from(denominator.invert()) {
                let k = (G2Projective::generator() * inverse).to_affine();
                return UserKey::from_parts(identity.clone(), generation, r, &k, Some(denominator));
            }
            counter = counter.wrapping_add(1);
        }
    }
}

impl MasterKey {
    /// Opens `capsule` for `identity` at `generation` with the master key;
    /// `params` must be this key's public parameters (others are rejected).
    ///
    /// For every capsule the result is the same as
    /// `self.extract(identity, generation).decapsulate(params, capsule)`
    /// (see `SECURITY.md`), at a third of a pairing less: no key extraction,
    /// no multiplication by `r`, and the pairing is against the public `g2`,
    /// whose Miller-loop lines are precomputed once per process.
    ///
    /// `W = e(y⁻¹·C2, g2)`, which is `v^s` for an honest `C2 = s·Y`. The
    /// re-encryption check is `y⁻¹·C2 = s·g1` (that is, `C2 = s·Y`) and
    /// `C1 = (s·(h + x))·g1`, both with the fixed-base table of `g1`.
    pub fn decapsulate(
        &self,
        params: &PublicParams,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, DecapsulationError> {
        let (x, y) = self.scalars();
        // The equivalence with the user-key path holds for this key's own
        // parameters only; anything else is refused (cheaply: the encoding
        // of X ‖ Y is computed once per key).
        let own = self.params_bytes.get_or_init(|| {
            let (x, y) = self.public_points();
            encode_params(&x, &y)
        });
        if params.to_bytes() != *own {
            return Err(DecapsulationError::Rejected);
        }
        // y ≠ 0 (checked at construction), so the inverse exists.
        let y_inverse = Option::<Scalar>::from(y.invert()).unwrap_or(Scalar::ZERO);
        // C2 is in G1 (Capsule::from_bytes checked it), so no small-order
        // component meets the secret scalar.
        let z = G1Projective::from(capsule.c2) * y_inverse;
        let w = Bls12::multi_miller_loop(&[(&z.to_affine(), g2_lines())]).final_exponentiation();
        let seed = unmask_seed(&w, &capsule.c3);
        let context = identity_context(identity, generation);
        let s = fo_scalar(&seed, params, &context);
        let h = identity_scalar(identity, generation);
        let table = g1_table();
        let matches = !s.is_zero()
            & points_equal(&table.mul(&s), &z)
            & points_equal(&table.mul(&(s * (h + x))), &G1Projective::from(capsule.c1));
        if !bool::from(matches) {
            return Err(DecapsulationError::Rejected);
        }
        Ok(shared_secret(&seed, capsule, params, &context))
    }
}

// ---------------------------------------------------------------------------
// Public parameters

/// A domain's public parameters for one generation: `X` and `Y` in G1, with
/// precomputed multiplication tables (shared between clones).
#[derive(Clone)]
pub struct PublicParams {
    x: G1Affine,
    y: G1Affine,
    /// `X ‖ Y` compressed: hashed into every capsule's scalar and secret.
    encoded: [u8; PUBLIC_PARAMS_BYTES],
    tables: Arc<(G1Table, G1Table)>,
}

impl fmt::Debug for PublicParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicParams")
            .field("X", &hex_short(&self.x_bytes()))
            .field("Y", &hex_short(&self.y_bytes()))
            .finish()
    }
}

impl PartialEq for PublicParams {
    fn eq(&self, other: &Self) -> bool {
        self.x == other.x && self.y == other.y
    }
}
impl Eq for PublicParams {}

/// The first eight bytes in hex, for `Debug` output.
pub(crate) fn hex_short(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}

/// `X ‖ Y`, both compressed.
fn encode_params(x: &G1Affine, y: &G1Affine) -> [u8; PUBLIC_PARAMS_BYTES] {
    let mut out = [0u8; PUBLIC_PARAMS_BYTES];
    out[..G1_BYTES].copy_from_slice(&x.to_compressed());
    out[G1_BYTES..].copy_from_slice(&y.to_compressed());
    out
}

impl PublicParams {
    fn from_points(x: G1Affine, y: G1Affine) -> Self {
        let tables = Arc::new((G1Table::new(&x.into()), G1Table::new(&y.into())));
        PublicParams {
            x,
            y,
            encoded: encode_params(&x, &y),
            tables,
        }
    }

    /// Decodes `X ‖ Y` (two compressed G1 points).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; PUBLIC_PARAMS_BYTES] = exact(bytes, "public parameters")?;
        let (x, y) = bytes.split_at(G1_BYTES);
        Self::from_components(x, y)
    }

    /// Decodes the two components as published in DNS (`X=` and `Y=`).
    pub fn from_components(x: &[u8], y: &[u8]) -> Result<Self, DecodeError> {
        let x = decode_g1(exact(x, "parameter X")?, "parameter X")?;
        let y = decode_g1(exact(y, "parameter Y")?, "parameter Y")?;
        Ok(Self::from_points(x, y))
    }

    /// Encodes the parameters as `X ‖ Y`.
    pub fn to_bytes(&self) -> [u8; PUBLIC_PARAMS_BYTES] {
        self.encoded
    }

    /// The compressed `X` component.
    pub fn x_bytes(&self) -> [u8; G1_BYTES] {
        let mut out = [0u8; G1_BYTES];
        out.copy_from_slice(&self.encoded[..G1_BYTES]);
        out
    }

    /// The compressed `Y` component.
    pub fn y_bytes(&self) -> [u8; G1_BYTES] {
        let mut out = [0u8; G1_BYTES];
        out.copy_from_slice(&self.encoded[G1_BYTES..]);
        out
    }

    /// `C1 = s·(h·g1 + X) = (s·h)·g1 + s·X` and `C2 = s·Y`, all fixed-base.
    fn capsule_points(&self, h: &Scalar, s: &Scalar) -> (G1Projective, G1Projective) {
        let c1 = g1_table().mul(&(*s * h)) + self.tables.0.mul(s);
        let c2 = self.tables.1.mul(s);
        (c1, c2)
    }
}

// ---------------------------------------------------------------------------
// User key

/// The private key of one identity at one generation. Zeroized on drop;
/// `Debug` is redacted.
///
/// Kept as bytes so it can be wiped: `r` canonical big-endian and `K`
/// uncompressed (validated once, so using it needs no square root or
/// subgroup check).
#[derive(Clone)]
pub struct UserKey {
    identity: Identity,
    generation: Generation,
    r: Zeroizing<[u8; SCALAR_BYTES]>,
    k_uncompressed: Zeroizing<[u8; 2 * G2_BYTES]>,
    /// `d = h + x + r·y`, known only where the key was extracted (the KGC).
    /// It makes the FO check one fixed-base multiplication cheaper. Never
    /// serialised: two identities' `(r, d)` would reveal `x` and `y`.
    d: Option<Zeroizing<[u8; SCALAR_BYTES]>>,
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserKey")
            .field("identity", &self.identity)
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl UserKey {
    fn from_parts(
        identity: Identity,
        generation: Generation,
        r: Scalar,
        k: &G2Affine,
        d: Option<Scalar>,
    ) -> Self {
        UserKey {
            identity,
            generation,
            r: Zeroizing::new(r.to_bytes_be()),
            k_uncompressed: Zeroizing::new(k.to_uncompressed()),
            d: d.map(|d| Zeroizing::new(d.to_bytes_be())),
        }
    }

    /// Decodes `r ‖ K` for `identity` at `generation`.
    ///
    /// This validates the encoding only; [`UserKey::verify`] checks that the
    /// key belongs to a domain's parameters.
    pub fn from_bytes(
        identity: Identity,
        generation: Generation,
        bytes: &[u8],
    ) -> Result<Self, DecodeError> {
        let bytes: &[u8; USER_KEY_BYTES] = exact(bytes, "user key")?;
        let (r, k) = bytes.split_at(SCALAR_BYTES);
        let r = decode_scalar(exact(r, "user key r")?, "user key r")?;
        let k = decode_g2(exact(k, "user key K")?, "user key K")?;
        Ok(Self::from_parts(identity, generation, r, &k, None))
    }

    /// Encodes the key as `r ‖ K` (compressed), in a buffer zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; USER_KEY_BYTES]> {
        let (r, k) = self.parts();
        let mut out = Zeroizing::new([0u8; USER_KEY_BYTES]);
        out[..SCALAR_BYTES].copy_from_slice(&r.to_bytes_be());
        out[SCALAR_BYTES..].copy_from_slice(&k.to_compressed());
        out
    }

    /// The identity this key opens capsules for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The generation this key belongs to.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    fn parts(&self) -> (Scalar, G2Affine) {
        let r = Option::from(Scalar::from_bytes_be(&self.r)).unwrap_or(Scalar::ZERO);
        let k = Option::from(G2Affine::from_uncompressed_unchecked(&self.k_uncompressed))
            .unwrap_or_else(G2Affine::identity);
        (r, k)
    }

    /// Checks `e(h·g1 + X + r·Y, K) = e(g1, g2)`: the key is the one the KGC of
    /// `params` issues for this identity and generation. Costs one pairing.
    pub fn verify(&self, params: &PublicParams) -> Result<(), DecodeError> {
        let (r, k) = self.parts();
        let h = identity_scalar(&self.identity, self.generation);
        let q = g1_table().mul(&h) + params.x + params.tables.1.mul(&r);
        if pairing(&q.to_affine(), &k) == Gt::generator() {
            Ok(())
        } else {
            Err(DecodeError::KeyMismatch)
        }
    }

    /// Opens `capsule`, which must have been made for this key's identity and
    /// generation under `params`. Any other or modified capsule is rejected.
    pub fn decapsulate(
        &self,
        params: &PublicParams,
        capsule: &Capsule,
    ) -> Result<SharedSecret, DecapsulationError> {
        // C1 is added to r·C2 and paired with K below: keep any small-order
        // component out of that arithmetic (from_bytes did not check it).
        if !bool::from(capsule.c1.is_torsion_free()) {
            return Err(DecapsulationError::Rejected);
        }
        let (r, k) = self.parts();
        let z = capsule.c2 * r + capsule.c1;
        let w = pairing(&z.to_affine(), &k);
        let seed = unmask_seed(&w, &capsule.c3);
        let context = identity_context(&self.identity, self.generation);
        let s = fo_scalar(&seed, params, &context);
        // Re-encryption check. `(C1, C2) ↦ (Z = C1 + r·C2, C2)` is a
        // bijection, so with `d` known, `Z = (s·d)·g1 ∧ C2 = s·Y` is the same
        // test as `C1 = s·(h·g1 + X) ∧ C2 = s·Y`, one multiplication cheaper.
        let first_matches = match &self.d {
            Some(d) => {
                let d = Option::from(Scalar::from_bytes_be(d)).unwrap_or(Scalar::ZERO);
                points_equal(&g1_table().mul(&(s * d)), &z)
            }
            None => {
                let h = identity_scalar(&self.identity, self.generation);
                let c1 = g1_table().mul(&(s * h)) + params.tables.0.mul(&s);
                points_equal(&c1, &G1Projective::from(capsule.c1))
            }
        };
        let c2 = params.tables.1.mul(&s);
        let matches =
            !s.is_zero() & first_matches & points_equal(&c2, &G1Projective::from(capsule.c2));
        if !bool::from(matches) {
            return Err(DecapsulationError::Rejected);
        }
        Ok(shared_secret(&seed, capsule, params, &context))
    }
}

// ---------------------------------------------------------------------------
// Capsules and shared secrets

/// An encapsulation: `C1 ‖ C2 ‖ c3`, 128 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Capsule {
    c1: G1Affine,
    c2: G1Affine,
    c3: [u8; SEED_BYTES],
}

impl fmt::Debug for Capsule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capsule({})", hex_short(&self.to_bytes()))
    }
}

impl Capsule {
    /// Decodes a capsule. Both points must be valid, non-identity curve
    /// points and `C2` must be in G1.
    ///
    /// `C1`'s subgroup membership is left to decapsulation, which accepts
    /// only a `C1` equal to one it recomputes in G1 (and, with a user key,
    /// checks it before `C1` meets the key): that saves a third of a
    /// multiplication on every message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let bytes: &[u8; CAPSULE_BYTES] = exact(bytes, "capsule")?;
        let c1 = decode_g1_on_curve(exact(&bytes[..G1_BYTES], "capsule C1")?, "capsule C1")?;
        let c2 = decode_g1(
            exact(&bytes[G1_BYTES..2 * G1_BYTES], "capsule C2")?,
            "capsule C2",
        )?;
        let mut c3 = [0u8; SEED_BYTES];
        c3.copy_from_slice(&bytes[2 * G1_BYTES..]);
        Ok(Capsule { c1, c2, c3 })
    }

    /// Encodes the capsule.
    pub fn to_bytes(&self) -> [u8; CAPSULE_BYTES] {
        let mut out = [0u8; CAPSULE_BYTES];
        out[..G1_BYTES].copy_from_slice(&self.c1.to_compressed());
        out[G1_BYTES..2 * G1_BYTES].copy_from_slice(&self.c2.to_compressed());
        out[2 * G1_BYTES..].copy_from_slice(&self.c3);
        out
    }
}

/// The 32-byte secret shared by encapsulation and decapsulation. Zeroized on
/// drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Zeroizing<[u8; SHARED_SECRET_BYTES]>);

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

impl SharedSecret {
    /// Wraps secret bytes received from elsewhere (e.g. the KGC daemon).
    pub fn from_bytes(bytes: [u8; SHARED_SECRET_BYTES]) -> Self {
        SharedSecret(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8; SHARED_SECRET_BYTES] {
        &self.0
    }
}

/// `σ = c3 ⊕ H_mask(W)`.
fn unmask_seed(w: &Gt, c3: &[u8; SEED_BYTES]) -> Zeroizing<[u8; SEED_BYTES]> {
    // σ ⊕ c3: as secret as σ.
    let mask = Zeroizing::new(expand_message_xmd::<SEED_BYTES>(
        &[gt_to_bytes(w).as_ref()],
        hash::DST_MASK,
    ));
    let mut seed = Zeroizing::new([0u8; SEED_BYTES]);
    for (out, (c, m)) in seed.iter_mut().zip(c3.iter().zip(mask.iter())) {
        *out = c ^ m;
    }
    seed
}

fn fo_scalar(seed: &[u8; SEED_BYTES], params: &PublicParams, context: &[u8]) -> Scalar {
    hash_to_scalar(&[seed, &params.to_bytes(), context], hash::DST_FO_SCALAR)
}

fn shared_secret(
    seed: &[u8; SEED_BYTES],
    capsule: &Capsule,
    params: &PublicParams,
    context: &[u8],
) -> SharedSecret {
    SharedSecret(Zeroizing::new(expand_message_xmd::<SHARED_SECRET_BYTES>(
        &[seed, &capsule.to_bytes(), &params.to_bytes(), context],
        hash::DST_SHARED_SECRET,
    )))
}

/// Creates a capsule and shared secret for `identity` at `generation` under
/// the domain's `params`.
pub fn encapsulate<R: RngCore + CryptoRng + ?Sized>(
    params: &PublicParams,
    identity: &Identity,
    generation: Generation,
    rng: &mut R,
) -> Result<(Capsule, SharedSecret), EncapsulationError> {
    let mut seed = Zeroizing::new([0u8; SEED_BYTES]);
    rng.fill_bytes(seed.as_mut());
    encapsulate_with_seed(params, identity, generation, &seed)
}

/// Deterministic encapsulation from a given seed `σ`.
///
/// **The seed must be 32 fresh uniformly random bytes**; reusing one reuses
/// the shared secret. This exists for known-answer tests; use [`encapsulate`].
pub fn encapsulate_with_seed(
    params: &PublicParams,
    identity: &Identity,
    generation: Generation,
    seed: &[u8; SEED_BYTES],
) -> Result<(Capsule, SharedSecret), EncapsulationError> {
    let context = identity_context(identity, generation);
    let h = identity_scalar(identity, generation);
    let s = fo_scalar(seed, params, &context);
    let (c1, c2) = params.capsule_points(&h, &s);
    if bool::from(c1.is_identity()) || bool::from(s.is_zero()) {
        return Err(EncapsulationError::DegenerateIdentity);
    }
    let w = v_table().mul(&s);
    let mask = expand_message_xmd::<SEED_BYTES>(&[gt_to_bytes(&w).as_ref()], hash::DST_MASK);
    let mut c3 = [0u8; SEED_BYTES];
    for (out, (s, m)) in c3.iter_mut().zip(seed.iter().zip(mask.iter())) {
        *out = s ^ m;
    }
    let mut points = [G1Affine::identity(); 2];
    G1Projective::batch_normalize(&[c1, c2], &mut points);
    let capsule = Capsule {
        c1: points[0],
        c2: points[1],
        c3,
    };
    let secret = shared_secret(seed, &capsule, params, &context);
    Ok((capsule, secret))
}

/// Intermediate values, exposed for known-answer tests and interoperability
/// work. Nothing here is needed to use the KEM.
pub mod hazmat {
    use super::*;

    /// The FO-derived encapsulation scalar `s` for a seed.
    pub fn fo_scalar(
        seed: &[u8; 32],
        params: &PublicParams,
        identity: &Identity,
        generation: Generation,
    ) -> Scalar {
        super::fo_scalar(seed, params, &identity_context(identity, generation))
    }

    /// The user-key scalar `r` (counter 0) of an identity.
    pub fn user_key_scalar(
        master: &MasterKey,
        identity: &Identity,
        generation: Generation,
    ) -> Scalar {
        master.user_scalar(identity, generation, 0)
    }

    /// `e(g1, g2)^s`, canonically encoded (576 bytes, big-endian `Fp`
    /// coefficients in the order c0.c0.c0, c0.c0.c1, c0.c1.c0, …, c1.c2.c1).
    pub fn pairing_value(s: &Scalar) -> Vec<u8> {
        gt_to_bytes(&v_table().mul(s)).to_vec()
    }
}
