//! Constant-time fixed-base scalar multiplication with precomputed tables.
//!
//! Every base the KEM multiplies by a secret scalar is known in advance: the
//! generator `g1`, a domain's `X` and `Y`, and `v = e(g1, g2)` in the target
//! group. For those we precompute, per `W`-bit window `i`, the multiples
//! `j · 2^(W·i) · B` for `j = 1 ..= 2^(W-1)`, and evaluate `k · B` as a sum of
//! one table entry per window using signed digits in `[-2^(W-1), 2^(W-1))`.
//! That replaces ~255 doublings with ~52 additions.
//!
//! The digits are secret (they are the encapsulation randomness), so the
//! recoding is branch-free and each lookup reads the whole window with
//! `subtle` conditional selects: memory access and instruction flow do not
//! depend on the scalar. blstrs' own `Gt * Scalar` is a variable-time
//! double-and-add, which is one more reason not to use it here.

use blstrs::{Fp, Fp12, G1Affine, G1Projective, Gt, Scalar};
use group::{Curve, Group, prime::PrimeCurveAffine};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Window width for G1 tables: 52 windows of 16 affine points (78 KiB a base).
const G1_WINDOW: usize = 5;
/// Window width for the target-group table: 44 windows of 32 `Fp12` (792 KiB,
/// one per process). Measured: 4 → 311 µs, 5 → 269 µs, 6 → 237 µs, 7 → 236 µs
/// per exponentiation; wider windows cost more in selection than they save.
const GT_WINDOW: usize = 6;

/// Number of signed digits needed for a 255-bit scalar with window `w`; the
/// extra digit absorbs the final carry.
const fn digit_count(w: usize) -> usize {
    255usize.div_ceil(w) + 1
}

/// Reads `w` bits of a little-endian byte string starting at `bit`, zero past
/// the end. `bit` and `w` are public (loop indices), not secret.
fn bits_at(bytes: &[u8; 32], bit: usize, w: usize) -> u32 {
    let mut v = 0u32;
    for k in 0..w {
        let index = bit + k;
        if index < 256 {
            v |= u32::from((bytes[index / 8] >> (index % 8)) & 1) << k;
        }
    }
    v
}

/// Branch-free signed-window recoding: returns `(magnitude, is_negative)` per
/// digit, least significant first, with `k = Σ d_i · 2^(w·i)`.
fn signed_digits<const N: usize>(k: &Scalar, w: usize) -> [(u32, Choice); N] {
    let bytes = k.to_bytes_le();
    let mut out = [(0u32, Choice::from(0)); N];
    let mut carry = 0u32;
    for (i, slot) in out.iter_mut().enumerate() {
        let v = bits_at(&bytes, i * w, w) + carry; // 0 ..= 2^w
        carry = (v + (1 << (w - 1))) >> w; // 1 iff v >= 2^(w-1)
        let d = v as i32 - ((carry as i32) << w); // in [-2^(w-1), 2^(w-1))
        let negative = (d >> 31) & 1; // 1 iff d < 0
        let magnitude = ((d ^ -negative) + negative) as u32; // |d|
        *slot = (magnitude, Choice::from(negative as u8));
    }
    out
}

const G1_DIGITS: usize = digit_count(G1_WINDOW);
const G1_HALF: usize = 1 << (G1_WINDOW - 1);
const GT_DIGITS: usize = digit_count(GT_WINDOW);
const GT_HALF: usize = 1 << (GT_WINDOW - 1);

/// Limbs of an affine G1 point (`x ‖ y`, Montgomery form, as blst stores it).
const G1_LIMBS: usize = 12;
/// Limbs of an `Fp12` (twelve `Fp`, Montgomery form, as blst stores it).
const GT_LIMBS: usize = 72;

/// The entry of `window` whose index is `magnitude - 1`, or `none` when
/// `magnitude` is 0, reading every entry and every limb whatever the
/// magnitude: each entry is masked by an all-ones or all-zeros word and the
/// masked entries are OR-ed together (they are mutually exclusive).
///
/// Tables hold raw limbs rather than blstrs types because blstrs' own
/// `conditional_select` goes limb by limb through nested structs and
/// costs more than the multiplications it feeds (measured: 10% of sealing).
fn select<const L: usize>(window: &[[u64; L]], none: &[u64; L], magnitude: u32) -> [u64; L] {
    let mask = |hit: Choice| u64::from(hit.unwrap_u8()).wrapping_neg();
    let keep_none = mask(magnitude.ct_eq(&0));
    let mut out = none.map(|limb| limb & keep_none);
    for (j, entry) in window.iter().enumerate() {
        let m = mask(magnitude.ct_eq(&(j as u32 + 1)));
        for (o, e) in out.iter_mut().zip(entry.iter()) {
            *o |= e & m;
        }
    }
    out
}

fn fp_limbs(fp: Fp) -> [u64; 6] {
    blst::blst_fp::from(fp).l
}

fn fp_from_limbs(limbs: &[u64]) -> Fp {
    let mut l = [0u64; 6];
    l.copy_from_slice(limbs);
    Fp::from_raw_unchecked(l)
}

/// blst represents the affine identity as `(0, 0)`, so every limb array
/// read from a table (or all zeros) is a valid affine point, and negating
/// `y` (0 stays 0) negates any of them.
fn g1_to_limbs(point: &G1Affine) -> [u64; G1_LIMBS] {
    let mut out = [0u64; G1_LIMBS];
    out[..6].copy_from_slice(&fp_limbs(point.x()));
    out[6..].copy_from_slice(&fp_limbs(point.y()));
    out
}

fn gt_to_limbs(value: &Fp12) -> [u64; GT_LIMBS] {
    let raw = blst::blst_fp12::from(*value);
    let mut out = [0u64; GT_LIMBS];
    let fps = raw
        .fp6
        .iter()
        .flat_map(|fp6| fp6.fp2.iter())
        .flat_map(|fp2| fp2.fp.iter());
    for (chunk, fp) in out.chunks_exact_mut(6).zip(fps) {
        chunk.copy_from_slice(&fp.l);
    }
    out
}

fn gt_from_limbs(limbs: &[u64; GT_LIMBS]) -> Fp12 {
    let mut raw = blst::blst_fp12::default();
    let fps = raw
        .fp6
        .iter_mut()
        .flat_map(|fp6| fp6.fp2.iter_mut())
        .flat_map(|fp2| fp2.fp.iter_mut());
    for (fp, chunk) in fps.zip(limbs.chunks_exact(6)) {
        fp.l.copy_from_slice(chunk);
    }
    Fp12::from(raw)
}

/// A precomputed table for constant-time multiplication of one G1 base.
#[derive(Clone)]
pub(crate) struct G1Table {
    windows: Vec<[[u64; G1_LIMBS]; G1_HALF]>,
}

impl G1Table {
    pub(crate) fn new(base: &G1Projective) -> Self {
        let mut projective = Vec::with_capacity(G1_DIGITS * G1_HALF);
        let mut window_base = *base;
        for _ in 0..G1_DIGITS {
            let mut multiple = window_base;
            for _ in 0..G1_HALF {
                projective.push(multiple);
                multiple += window_base;
            }
            for _ in 0..G1_WINDOW {
                window_base = window_base.double();
            }
        }
        let mut affine = vec![G1Affine::identity(); projective.len()];
        G1Projective::batch_normalize(&projective, &mut affine);
        let windows = affine
            .chunks_exact(G1_HALF)
            .map(|chunk| {
                let mut window = [[0u64; G1_LIMBS]; G1_HALF];
                for (slot, point) in window.iter_mut().zip(chunk) {
                    *slot = g1_to_limbs(point);
                }
                window
            })
            .collect();
        G1Table { windows }
    }

    /// `k · base`, in constant time with respect to `k`.
    pub(crate) fn mul(&self, k: &Scalar) -> G1Projective {
        let digits: [(u32, Choice); G1_DIGITS] = signed_digits(k, G1_WINDOW);
        let identity = [0u64; G1_LIMBS];
        let mut acc = G1Projective::identity();
        for (window, (magnitude, negative)) in self.windows.iter().zip(digits.iter()) {
            let limbs = select(window, &identity, *magnitude);
            // Negate through the field, not `-G1Affine`: blstrs' point
            // negation branches on the identity, i.e. on a zero digit.
            let y = fp_from_limbs(&limbs[6..]);
            let y = Fp::conditional_select(&y, &-y, *negative);
            acc += G1Affine::from_raw_unchecked(fp_from_limbs(&limbs[..6]), y, false);
        }
        acc
    }
}

/// A precomputed table for constant-time exponentiation of one target-group
/// base (used for `v = e(g1, g2)`).
pub(crate) struct GtTable {
    windows: Vec<[[u64; GT_LIMBS]; GT_HALF]>,
    one: [u64; GT_LIMBS],
}

impl GtTable {
    pub(crate) fn new(base: &Gt) -> Self {
        let mut windows = Vec::with_capacity(GT_DIGITS);
        let mut window_base = *base;
        for _ in 0..GT_DIGITS {
            let mut window = [[0u64; GT_LIMBS]; GT_HALF];
            let mut multiple = window_base;
            for slot in window.iter_mut() {
                *slot = gt_to_limbs(&Fp12::from(multiple));
                multiple += window_base;
            }
            windows.push(window);
            for _ in 0..GT_WINDOW {
                window_base = window_base.double();
            }
        }
        GtTable {
            windows,
            one: gt_to_limbs(&Fp12::from(Gt::identity())),
        }
    }

    /// `base^k` (written `k · base` additively), constant time in `k`.
    pub(crate) fn mul(&self, k: &Scalar) -> Gt {
        let digits: [(u32, Choice); GT_DIGITS] = signed_digits(k, GT_WINDOW);
        let mut acc = Gt::identity();
        for (window, (magnitude, negative)) in self.windows.iter().zip(digits.iter()) {
            let selected = gt_from_limbs(&select(window, &self.one, *magnitude));
            // In the cyclotomic subgroup the inverse is the conjugate.
            let mut inverse = selected;
            inverse.conjugate();
            acc += Gt::from(Fp12::conditional_select(&selected, &inverse, *negative));
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blstrs::{G2Affine, pairing};
    use ff::Field;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn edge_scalars() -> Vec<Scalar> {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut v = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(15u64),
            Scalar::from(16u64),
            Scalar::from(17u64),
            Scalar::from(u64::MAX),
            -Scalar::from(16u64),
        ];
        v.extend((0..24).map(|_| Scalar::random(&mut rng)));
        v
    }

    #[test]
    fn signed_digits_reconstruct_the_scalar() {
        for k in edge_scalars() {
            for w in [4usize, 5, 6] {
                let digits: [(u32, Choice); 65] = signed_digits(&k, w);
                let mut acc = Scalar::ZERO;
                for (magnitude, negative) in digits.iter().rev() {
                    for _ in 0..w {
                        acc = acc.double();
                    }
                    let d = Scalar::from(u64::from(*magnitude));
                    acc += if bool::from(*negative) { -d } else { d };
                    assert!(*magnitude <= 1 << (w - 1));
                }
                assert_eq!(acc, k, "w = {w}");
            }
        }
    }

    #[test]
    fn g1_table_matches_generic_multiplication() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let base = G1Projective::random(&mut rng);
        let table = G1Table::new(&base);
        for k in edge_scalars() {
            assert_eq!(table.mul(&k), base * k);
        }
    }

    #[test]
    fn gt_table_matches_generic_exponentiation() {
        let base = pairing(&G1Affine::generator(), &G2Affine::generator());
        let table = GtTable::new(&base);
        for k in edge_scalars().into_iter().take(12) {
            assert_eq!(table.mul(&k), base * k);
        }
    }
}
