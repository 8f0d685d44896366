//! Minimal DER framing (tag, length, value) for the outer CMS layers.
//!
//! The large parts of a sealed message (the encrypted content) are framed by
//! hand so that the ciphertext is written and read in place: no copy of a
//! 25 MiB message passes through an owned ASN.1 type. The small parts
//! (recipient infos, algorithm parameters) use the `der`/`cms` crates.
//!
//! The reader accepts DER only: definite, minimally encoded lengths and
//! single-byte tags (every tag in our structures is a low tag number).

use crate::error::Malformed;

/// Universal and context-specific tags used by the outer layers.
pub(crate) mod tag {
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;
    /// `[0]` constructed (EXPLICIT content of ContentInfo; IMPLICIT originatorInfo).
    pub(crate) const CONTEXT_0_CONSTRUCTED: u8 = 0xa0;
    /// `[0]` primitive (IMPLICIT OCTET STRING encryptedContent).
    pub(crate) const CONTEXT_0_PRIMITIVE: u8 = 0x80;
    /// `[1]` constructed (IMPLICIT authAttrs).
    pub(crate) const CONTEXT_1_CONSTRUCTED: u8 = 0xa1;
    /// `[2]` constructed (IMPLICIT unauthAttrs).
    pub(crate) const CONTEXT_2_CONSTRUCTED: u8 = 0xa2;
    /// `[4]` constructed (IMPLICIT OtherRecipientInfo in RecipientInfo).
    pub(crate) const CONTEXT_4_CONSTRUCTED: u8 = 0xa4;
}

/// Bytes needed for a DER header (tag + length) of a value of `len` bytes.
pub(crate) fn header_len(len: usize) -> usize {
    1 + length_len(len)
}

fn length_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + (usize::BITS as usize / 8 - len.leading_zeros() as usize / 8)
    }
}

/// Appends a DER header for a value of `len` bytes.
pub(crate) fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets = length_len(len) - 1;
        out.push(0x80 | octets as u8);
        for i in (0..octets).rev() {
            out.push((len >> (8 * i)) as u8);
        }
    }
}

/// Appends a complete TLV.
pub(crate) fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    push_header(out, tag, value.len());
    out.extend_from_slice(value);
}

/// A cursor over DER bytes; positions are offsets into the original buffer so
/// callers can locate values (the ciphertext) for in-place processing.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

/// One decoded TLV: its tag and the range of its value in the buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv {
    pub(crate) tag: u8,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Tlv {
    pub(crate) fn value<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        &data[self.start..self.end]
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader {
            data,
            pos: 0,
            end: data.len(),
        }
    }

    /// A reader over the value of `tlv`.
    pub(crate) fn inside(data: &'a [u8], tlv: &Tlv) -> Self {
        Reader {
            data,
            pos: tlv.start,
            end: tlv.end,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        (self.pos < self.end).then(|| self.data[self.pos])
    }

    /// Reads the next TLV, whatever its tag.
    pub(crate) fn any(&mut self) -> Result<Tlv, Malformed> {
        let tag = *self
            .data
            .get(self.pos)
            .filter(|_| self.pos < self.end)
            .ok_or(Malformed::Truncated)?;
        if tag & 0x1f == 0x1f {
            return Err(Malformed::Der("multi-byte tag"));
        }
        let mut p = self.pos + 1;
        let first = *self
            .data
            .get(p)
            .filter(|_| p < self.end)
            .ok_or(Malformed::Truncated)?;
        p += 1;
        let len = if first < 0x80 {
            usize::from(first)
        } else if first == 0x80 {
            return Err(Malformed::Der("indefinite length (BER) is not DER"));
        } else {
            let octets = usize::from(first & 0x7f);
            if octets > core::mem::size_of::<usize>() || p + octets > self.end {
                return Err(Malformed::Truncated);
            }
            let mut len = 0usize;
            for &b in &self.data[p..p + octets] {
                len = (len << 8) | usize::from(b);
            }
            if len < 0x80 || self.data[p] == 0 {
                return Err(Malformed::Der("non-minimal length"));
            }
            p += octets;
            len
        };
        let end = p.checked_add(len).ok_or(Malformed::Truncated)?;
        if end > self.end {
            return Err(Malformed::Truncated);
        }
        self.pos = end;
        Ok(Tlv { tag, start: p, end })
    }

    /// Reads the next TLV and checks its tag.
    pub(crate) fn expect(&mut self, tag: u8, what: &'static str) -> Result<Tlv, Malformed> {
        let tlv = self.any()?;
        if tlv.tag != tag {
            return Err(Malformed::UnexpectedTag(what));
        }
        Ok(tlv)
    }

    /// Offset of the start of the next TLV (the full encoding, header included).
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn finish(&self, what: &'static str) -> Result<(), Malformed> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Malformed::TrailingData(what))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_across_length_forms() {
        for len in [
            0usize,
            1,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x10000,
            25 << 20,
        ] {
            let mut buf = Vec::new();
            push_header(&mut buf, tag::OCTET_STRING, len);
            assert_eq!(buf.len(), header_len(len), "len {len}");
            buf.resize(buf.len() + len, 0xab);
            let tlv = Reader::new(&buf).any().unwrap();
            assert_eq!((tlv.tag, tlv.end - tlv.start), (tag::OCTET_STRING, len));
        }
    }

    #[test]
    fn rejects_ber_and_non_minimal_lengths() {
        assert!(matches!(
            Reader::new(&[0x30, 0x80, 0, 0]).any(),
            Err(Malformed::Der(_))
        ));
        assert!(matches!(
            Reader::new(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).any(),
            Err(Malformed::Der(_))
        ));
        assert!(matches!(
            Reader::new(&[0x04, 0x82, 0x00, 0x90]).any(),
            Err(Malformed::Der(_)) | Err(Malformed::Truncated)
        ));
        assert!(matches!(
            Reader::new(&[0x1f, 0x01, 0x00]).any(),
            Err(Malformed::Der(_))
        ));
    }

    #[test]
    fn rejects_truncation_without_panicking() {
        let mut buf = Vec::new();
        push_tlv(&mut buf, tag::SEQUENCE, &[1, 2, 3, 4]);
        for cut in 0..buf.len() {
            assert!(Reader::new(&buf[..cut]).any().is_err(), "cut {cut}");
        }
        assert!(
            Reader::new(&[0x04, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
                .any()
                .is_err()
        );
    }
}
