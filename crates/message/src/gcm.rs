//! AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce and no associated
//! data, processed in pieces.
//!
//! `aes-gcm` only offers one-shot encryption, which makes sealing a pass of
//! CTR over the whole message and then a pass of GHASH over it, before the
//! separate base64 pass. This is the same construction from the same
//! building blocks (`aes`, `ctr` and `polyval`, the versions `aes-gcm` 0.11
//! itself uses, so nothing new is compiled), fed in cache-sized chunks so
//! that encryption, authentication and base64 encoding each touch a chunk
//! while it is in cache. GHASH is POLYVAL over byte-reversed blocks
//! (RFC 8452, appendix A), as in the `ghash` crate. The unit tests check
//! ciphertext and tag against `aes-gcm` byte for byte.

use aes::Aes256;
use ctr::cipher::{BlockCipherEncrypt, InnerIvInit, KeyInit, StreamCipher};
use polyval::Polyval;
use polyval::universal_hash::UniversalHash;
use subtle::ConstantTimeEq;

use crate::seal::{CEK_BYTES, NONCE_BYTES, TAG_BYTES};

/// GCM's limit on the plaintext of one message: 2^39 − 256 bits.
const MAX_BYTES: u64 = (1 << 36) - 32;

/// Bytes processed per step when decrypting in place (partial blocks are
/// carried over, so any size works; 16 KiB stays in cache).
const DECRYPT_CHUNK: usize = 16 * 1024;

/// One GCM message in progress (encryption or decryption).
pub(crate) struct Gcm {
    ctr: ctr::Ctr32BE<Aes256>,
    /// GHASH computed as POLYVAL of byte-reversed blocks (RFC 8452,
    /// appendix A): the `ghash` crate does the same, but one clone per four
    /// blocks on the way costs more than reversing 512 bytes at a time here.
    polyval: Polyval,
    /// `E(K, J0)`, XORed into the GHASH result to make the tag.
    mask: [u8; 16],
    /// Ciphertext not yet hashed because it is less than one block.
    partial: [u8; 16],
    partial_len: usize,
    /// Ciphertext bytes so far.
    len: u64,
}

/// More than GCM can encrypt under one nonce (64 GiB).
#[derive(Debug)]
pub(crate) struct TooLong;

impl Gcm {
    pub(crate) fn new(key: &[u8; CEK_BYTES], nonce: &[u8; NONCE_BYTES]) -> Self {
        let aes = Aes256::new(key.into());
        let mut h = polyval::Key::default();
        aes.encrypt_block(&mut h);
        // POLYVAL key = mulX_POLYVAL(ByteReverse(H)).
        let h = u128::from_be_bytes(h.into());
        let h = (h << 1) ^ if h >> 127 == 1 { 0xc2 << 120 | 1 } else { 0 };
        let polyval = Polyval::new(&h.to_le_bytes().into());
        // J0 = nonce ‖ 0^31 ‖ 1; the tag mask is E(K, J0) and the keystream
        // starts at inc32(J0).
        let mut j0 = [0u8; 16];
        j0[..NONCE_BYTES].copy_from_slice(nonce);
        j0[15] = 1;
        let mut mask = j0.into();
        aes.encrypt_block(&mut mask);
        j0[15] = 2;
        Gcm {
            ctr: ctr::Ctr32BE::from_core(ctr::CtrCore::inner_iv_init(aes, &j0.into())),
            polyval,
            mask: mask.into(),
            partial: [0; 16],
            partial_len: 0,
            len: 0,
        }
    }

    fn count(&mut self, n: usize) -> Result<(), TooLong> {
        self.len = self
            .len
            .checked_add(n as u64)
            .filter(|&l| l <= MAX_BYTES)
            .ok_or(TooLong)?;
        Ok(())
    }

    /// Feeds ciphertext to GHASH (any length; whole blocks go straight through).
    fn authenticate(&mut self, mut data: &[u8]) {
        if self.partial_len > 0 {
            let take = (16 - self.partial_len).min(data.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&data[..take]);
            self.partial_len += take;
            data = &data[take..];
            if self.partial_len < 16 {
                return;
            }
            let block = self.partial;
            self.hash_blocks(&[block]);
            self.partial_len = 0;
        }
        let (blocks, rest) = data.as_chunks::<16>();
        self.hash_blocks(blocks);
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// GHASH of whole blocks.
    fn hash_blocks(&mut self, blocks: &[[u8; 16]]) {
        const STAGED: usize = 32;
        let mut staged = [polyval::Block::default(); STAGED];
        for group in blocks.chunks(STAGED) {
            for (out, block) in staged.iter_mut().zip(group) {
                *out = u128::from_be_bytes(*block).to_le_bytes().into();
            }
            self.polyval.update(&staged[..group.len()]);
        }
    }

    /// Encrypts the next piece of the message, `input` into `output` (same length).
    pub(crate) fn encrypt_b2b(&mut self, input: &[u8], output: &mut [u8]) -> Result<(), TooLong> {
        if input.len() != output.len() {
            return Err(TooLong);
        }
        self.count(input.len())?;
        self.ctr
            .try_apply_keystream_b2b(input, output)
            .map_err(|_| TooLong)?;
        self.authenticate(output);
        Ok(())
    }

    /// Encrypts the next piece of the message in place.
    #[cfg(test)]
    pub(crate) fn encrypt(&mut self, data: &mut [u8]) -> Result<(), TooLong> {
        self.count(data.len())?;
        self.ctr.try_apply_keystream(data).map_err(|_| TooLong)?;
        self.authenticate(data);
        Ok(())
    }

    /// Decrypts the next piece of the message in place. The plaintext is not
    /// authentic until [`Gcm::verify`] says so.
    fn decrypt(&mut self, data: &mut [u8]) -> Result<(), TooLong> {
        self.count(data.len())?;
        self.authenticate(data);
        self.ctr.try_apply_keystream(data).map_err(|_| TooLong)?;
        Ok(())
    }

    /// The authentication tag of everything processed.
    pub(crate) fn tag(mut self) -> [u8; TAG_BYTES] {
        if self.partial_len > 0 {
            let mut block = [0u8; 16];
            block[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
            self.hash_blocks(&[block]);
        }
        // len(A) ‖ len(C) in bits; no associated data, so the first half is zero.
        self.hash_blocks(&[u128::from(self.len * 8).to_be_bytes()]);
        let mut tag: [u8; 16] = self.polyval.finalize().into();
        tag.reverse();
        for (t, m) in tag.iter_mut().zip(self.mask) {
            *t ^= m;
        }
        tag
    }

    /// True if `expected` is the tag of everything processed (constant time).
    fn verify(self, expected: &[u8; TAG_BYTES]) -> bool {
        self.tag().ct_eq(expected).into()
    }
}

/// Decrypts `buf[start..end]` and moves the plaintext to the front, so that
/// `buf` becomes exactly the plaintext; one pass over memory (hash, move and
/// decrypt each chunk while it is in cache). Returns false — with `buf`
/// zeroed, never unauthenticated plaintext — if the tag does not verify.
pub(crate) fn decrypt_to_front(
    key: &[u8; CEK_BYTES],
    nonce: &[u8; NONCE_BYTES],
    buf: &mut Vec<u8>,
    (start, end): (usize, usize),
    tag: &[u8; TAG_BYTES],
) -> bool {
    let mut gcm = Gcm::new(key, nonce);
    let mut ok = true;
    let mut at = start;
    while at < end && ok {
        let n = DECRYPT_CHUNK.min(end - at);
        let to = at - start;
        buf.copy_within(at..at + n, to);
        ok = gcm.decrypt(&mut buf[to..to + n]).is_ok();
        at += n;
    }
    if ok && gcm.verify(tag) {
        buf.truncate(end - start);
        true
    } else {
        // Volatile wipe: an ordinary one may be elided when the caller
        // frees the buffer right after.
        zeroize::Zeroize::zeroize(buf.as_mut_slice());
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::{Aes256Gcm, Nonce};

    fn one_shot(key: &[u8; 32], nonce: &[u8; 12], data: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut buf = data.to_vec();
        let tag = Aes256Gcm::new(key.into())
            .encrypt_inout_detached(&Nonce::from(*nonce), b"", (&mut buf[..]).into())
            .unwrap();
        (buf, tag.into())
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Sizes around every boundary that matters: blocks, base64 lines,
    /// the sealing and decryption chunks.
    fn sizes() -> Vec<usize> {
        let mut sizes = vec![0, 1, 15, 16, 17, 31, 32, 33, 57, 4096];
        for boundary in [crate::seal::SEAL_CHUNK, DECRYPT_CHUNK] {
            for k in [1, 2, 3] {
                sizes.extend([k * boundary - 1, k * boundary, k * boundary + 1]);
            }
        }
        sizes.push(3 << 20);
        sizes.push((5 << 20) + 13);
        sizes
    }

    #[test]
    fn chunked_encryption_equals_aes_gcm() {
        let key = [0x42u8; 32];
        let nonce = *b"twelve bytes";
        for len in sizes() {
            let plain = data(len);
            let (expected, expected_tag) = one_shot(&key, &nonce, &plain);
            // Whole, in the sealing chunk size, and in odd pieces.
            for piece in [len.max(1), crate::seal::SEAL_CHUNK, 57, 4095, 7] {
                if len > 1 << 20 && piece < 4095 {
                    continue; // slow and adds nothing
                }
                let mut gcm = Gcm::new(&key, &nonce);
                let mut out = vec![0u8; len];
                for (i, o) in plain.chunks(piece).zip(out.chunks_mut(piece)) {
                    gcm.encrypt_b2b(i, o).unwrap();
                }
                assert!(out == expected, "ciphertext, len {len}, piece {piece}");
                assert_eq!(gcm.tag(), expected_tag, "tag, len {len}, piece {piece}");

                let mut in_place = plain.clone();
                let mut gcm = Gcm::new(&key, &nonce);
                for c in in_place.chunks_mut(piece) {
                    gcm.encrypt(c).unwrap();
                }
                assert!(in_place == expected);
                assert_eq!(gcm.tag(), expected_tag);
            }
        }
    }

    #[test]
    fn decrypt_to_front_recovers_plaintext_and_rejects_forgeries() {
        let key = [7u8; 32];
        let nonce = [9u8; 12];
        for len in sizes() {
            let plain = data(len);
            let (ct, tag) = one_shot(&key, &nonce, &plain);
            for start in [0usize, 1, 300, 20_000] {
                let mut buf = vec![0xeeu8; start];
                buf.extend_from_slice(&ct);
                buf.extend_from_slice(&[0x04, 0x10, 1, 2, 3]);
                let range = (start, start + len);
                assert!(decrypt_to_front(&key, &nonce, &mut buf, range, &tag));
                assert!(buf == plain, "len {len}, start {start}");
            }
            let mut bad = tag;
            bad[len % 16] ^= 1;
            let mut buf = ct.clone();
            assert!(!decrypt_to_front(&key, &nonce, &mut buf, (0, len), &bad));
            assert!(buf.iter().all(|&b| b == 0));
            if len > 0 {
                let mut buf = ct.clone();
                buf[len / 2] ^= 0x80;
                assert!(!decrypt_to_front(&key, &nonce, &mut buf, (0, len), &tag));
                assert!(buf.iter().all(|&b| b == 0));
            }
        }
    }
}
