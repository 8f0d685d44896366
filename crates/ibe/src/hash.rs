//! Hashing: RFC 9380 `expand_message_xmd` (SHA-256) and `hash_to_field` for the
//! BLS12-381 scalar field, plus the domain-separation tags of every hash the
//! scheme uses.
//!
//! All random-oracle instantiations of the scheme go through
//! [`expand_message_xmd`] with a distinct domain-separation tag (DST), so no two
//! uses can collide. Variable-length inputs are length-prefixed before hashing.

use blstrs::Scalar;
use ff::PrimeField;
use sha2::{Digest, Sha256};

/// Prefix shared by every domain-separation tag of this scheme (version 1).
pub(crate) const DST_PREFIX: &str = "IBEMAIL-V1-BB2KEM-BLS12381-SHA256-";

/// DST of the Fujisaki-Okamoto derivation of the encapsulation scalar `s`.
pub(crate) const DST_FO_SCALAR: &[u8] = b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-FO-SCALAR";
/// DST of the mask that hides the FO seed under `e(g1, g2)^s`.
pub(crate) const DST_MASK: &[u8] = b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-MASK";
/// DST of the shared-secret derivation `K = H(seed, capsule, context)`.
pub(crate) const DST_SHARED_SECRET: &[u8] = b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-SHARED-SECRET";
/// HKDF `info` prefix for the per-identity user-key scalar `r`.
pub(crate) const INFO_USER_KEY_R: &[u8] = b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-USERKEY-R";
/// DST of master-key scalar sampling (wide reduction of RNG output).
pub(crate) const DST_MASTER_SCALAR: &[u8] = b"IBEMAIL-V1-BB2KEM-BLS12381-SHA256-MASTER-SCALAR";

/// RFC 9380 hash-to-curve DST of the IBS identity point `Q` (G2, SSWU, random oracle).
pub(crate) const DST_IBS_IDENTITY: &[u8] =
    b"IBEMAIL-V1-CCIBS-BLS12381G2_XMD:SHA-256_SSWU_RO_IDENTITY_";
/// DST of the IBS challenge scalar `h = H(U, identity, m)`.
pub(crate) const DST_IBS_CHALLENGE: &[u8] = b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-CHALLENGE";
/// DST of the hedged IBS nonce `r`.
pub(crate) const DST_IBS_NONCE: &[u8] = b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-NONCE";
/// RFC 9380 hash-to-curve DST of continuity signatures (G2, SSWU, random
/// oracle): a generation's signature on its successor's record.
pub(crate) const DST_CONTINUITY: &[u8] = b"IBEMAIL-V1-CONTINUITY-BLS12381G2_XMD:SHA-256_SSWU_RO_";
/// DST of the challenge of a certificate: the Cha–Cheon signature by which
/// the KGC certifies a user's per-message key (`h = H(U, identity, pk)`).
/// Apart from [`DST_IBS_CHALLENGE`], so that no signature the KGC makes on
/// a digest (its SIGN operation) is a certificate, and no certificate
/// signs a digest.
pub(crate) const DST_IBS_CERT_CHALLENGE: &[u8] = b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-CERT-CHALLENGE";
/// DST of the nonce of a certificate (deterministic: no fresh bytes).
pub(crate) const DST_IBS_CERT_NONCE: &[u8] = b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-CERT-NONCE";
/// HKDF `info` of a user's per-message Ed25519 key seed (from the
/// generation's PRF key, followed by the identity context).
pub(crate) const INFO_MESSAGE_KEY: &[u8] = b"IBEMAIL-V1-ED25519-MESSAGE-KEY";
/// Prefix of the cache key of a verified certificate.
pub(crate) const DST_CERT_CACHE: &[u8] = b"IBEMAIL-V1-CERT-CACHE";
/// HKDF `info` of the IBS master scalar `t` (from the generation's PRF key).
pub(crate) const INFO_IBS_MASTER: &[u8] = b"IBEMAIL-V1-CCIBS-BLS12381-SHA256-MASTER";

/// Salt for DSTs longer than 255 bytes (RFC 9380 §5.3.3).
const OVERSIZE_DST_SALT: &[u8] = b"H2C-OVERSIZE-DST-";

/// SHA-256 output size.
const B_IN_BYTES: usize = 32;
/// SHA-256 block size.
const S_IN_BYTES: usize = 64;

/// The DST for hashing identities of `domain` at parameter generation
/// `generation`: `IBEMAIL-V1-BB2KEM-BLS12381-SHA256-ID/<domain>/<generation>`.
///
/// Binding the domain and the generation into the tag makes the identity
/// scalar of `alice@b.test` at generation 2 unrelated to the one at
/// generation 1 or to any identity of another domain.
pub(crate) fn identity_dst(domain: &str, generation: u32) -> Vec<u8> {
    format!("{DST_PREFIX}ID/{domain}/{generation}").into_bytes()
}

/// RFC 9380 §5.3.1 `expand_message_xmd` with SHA-256, output length `L`.
///
/// `msg` is given as parts that are concatenated; callers length-prefix any
/// variable-length part. `L` must be at most 255 * 32 bytes, which the const
/// assertion enforces at compile time.
pub(crate) fn expand_message_xmd<const L: usize>(msg: &[&[u8]], dst: &[u8]) -> [u8; L] {
    const { assert!(L > 0 && L <= 255 * B_IN_BYTES && L <= u16::MAX as usize) };

    let hashed_dst;
    let dst = if dst.len() > 255 {
        hashed_dst = Sha256::new()
            .chain_update(OVERSIZE_DST_SALT)
            .chain_update(dst)
            .finalize();
        &hashed_dst[..]
    } else {
        dst
    };
    let dst_len = [u8::try_from(dst.len()).unwrap_or(u8::MAX)];
    let ell = L.div_ceil(B_IN_BYTES);
    let l_i_b_str = u16::try_from(L).unwrap_or(u16::MAX).to_be_bytes();

    let mut h = Sha256::new();
    h.update([0u8; S_IN_BYTES]);
    for part in msg {
        h.update(part);
    }
    h.update(l_i_b_str);
    h.update([0u8]);
    h.update(dst);
    h.update(dst_len);
    let b0: [u8; B_IN_BYTES] = h.finalize().into();

    let mut out = [0u8; L];
    let mut previous = [0u8; B_IN_BYTES];
    for i in 1..=ell {
        let mut chained = [0u8; B_IN_BYTES];
        for (c, (a, b)) in chained.iter_mut().zip(b0.iter().zip(previous.iter())) {
            *c = a ^ b;
        }
        let bi: [u8; B_IN_BYTES] = Sha256::new()
            .chain_update(chained)
            .chain_update([u8::try_from(i).unwrap_or(u8::MAX)])
            .chain_update(dst)
            .chain_update(dst_len)
            .finalize()
            .into();
        let start = (i - 1) * B_IN_BYTES;
        let end = (start + B_IN_BYTES).min(L);
        out[start..end].copy_from_slice(&bi[..end - start]);
        previous = bi;
    }
    out
}

/// Reduces a 48-byte big-endian integer modulo the group order `q`.
///
/// 48 bytes is RFC 9380's `L = ceil((ceil(log2(q)) + k) / 8)` for `k = 128`,
/// so the result is statistically close to uniform.
pub(crate) fn scalar_from_wide(bytes: &[u8; 48]) -> Scalar {
    let chunk = |i: usize| {
        let mut c = [0u8; 16];
        c.copy_from_slice(&bytes[16 * i..16 * (i + 1)]);
        Scalar::from_u128(u128::from_be_bytes(c))
    };
    let two_64 = Scalar::from_u128(1u128 << 64);
    let two_128 = two_64 * two_64;
    (chunk(0) * two_128 + chunk(1)) * two_128 + chunk(2)
}

/// RFC 9380 §5.2 `hash_to_field(msg, count = 1)` for the scalar field of
/// BLS12-381 (`m = 1`, `L = 48`) with `expand_message_xmd`/SHA-256.
pub(crate) fn hash_to_scalar(msg: &[&[u8]], dst: &[u8]) -> Scalar {
    scalar_from_wide(&expand_message_xmd::<48>(msg, dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ff::Field;

    const QUUX: &[u8] = b"QUUX-V01-CS02-with-expander-SHA256-128";

    // RFC 9380, Appendix K.1 (expand_message_xmd, SHA-256).
    #[test]
    fn rfc9380_k1_empty_message() {
        let out = expand_message_xmd::<32>(&[b""], QUUX);
        assert_eq!(
            hex::encode(out),
            "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"
        );
    }

    #[test]
    fn rfc9380_k1_abc() {
        let out = expand_message_xmd::<32>(&[b"abc"], QUUX);
        assert_eq!(
            hex::encode(out),
            "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"
        );
    }

    #[test]
    fn message_parts_concatenate() {
        let whole = expand_message_xmd::<48>(&[b"abcdef"], QUUX);
        let split = expand_message_xmd::<48>(&[b"ab", b"", b"cdef"], QUUX);
        assert_eq!(whole, split);
    }

    #[test]
    fn oversize_dst_is_hashed_not_truncated() {
        let long_a = vec![b'a'; 300];
        let mut long_b = long_a.clone();
        long_b[299] = b'b';
        let a = expand_message_xmd::<32>(&[b"m"], &long_a);
        let b = expand_message_xmd::<32>(&[b"m"], &long_b);
        assert_ne!(a, b);
        // RFC 9380 §5.3.3: an oversize DST is replaced by its salted hash.
        let hashed = Sha256::new()
            .chain_update(OVERSIZE_DST_SALT)
            .chain_update(&long_a)
            .finalize();
        assert_eq!(a, expand_message_xmd::<32>(&[b"m"], &hashed));
    }

    #[test]
    fn wide_reduction_matches_scalar_arithmetic() {
        // 2^383 + 5 computed two ways.
        let mut bytes = [0u8; 48];
        bytes[0] = 0x80;
        bytes[47] = 5;
        let mut expected = Scalar::from(1u64);
        for _ in 0..383 {
            expected = expected.double();
        }
        expected += Scalar::from(5u64);
        assert_eq!(scalar_from_wide(&bytes), expected);
    }

    #[test]
    fn identity_dst_binds_domain_and_generation() {
        assert_ne!(identity_dst("a.test", 1), identity_dst("b.test", 1));
        assert_ne!(identity_dst("a.test", 1), identity_dst("a.test", 2));
        assert_ne!(identity_dst("a.test", 12), identity_dst("a.test1", 2));
    }
}
