//! Base64 for the S/MIME body (RFC 2045 §6.8): 76-character lines ending in
//! CRLF, with SIMD encoding and decoding (`base64-turbo`, runtime CPU
//! detection) for the bulk.

use base64_turbo::STANDARD;

use crate::error::Malformed;

/// Input bytes of one full line (57 bytes → 76 characters).
pub(crate) const LINE_BYTES: usize = 57;
const LINE_CHARS: usize = 76;
/// A line with its CRLF.
const LINE_OUT: usize = LINE_CHARS + 2;
/// Lines encoded per SIMD run into the staging buffer (about 5 KB, in L1).
const BLOCK_LINES: usize = 64;

/// Length of the wrapped base64 text of `len` bytes.
pub(crate) fn wrapped_len(len: usize) -> usize {
    let rest = len % LINE_BYTES;
    len / LINE_BYTES * LINE_OUT
        + if rest == 0 {
            0
        } else {
            rest.div_ceil(3) * 4 + 2
        }
}

/// Encodes a byte stream, written in pieces of any size, as base64 lines
/// appended to a `Vec`. The text is the same as encoding the concatenation
/// of the pieces at once. Whole lines are appended as soon as their 57 input
/// bytes are in; the start of a shorter line waits here.
pub(crate) struct LineEncoder {
    /// The start of a line still short of 57 bytes.
    pending: [u8; LINE_BYTES],
    pending_len: usize,
    /// The characters of up to `BLOCK_LINES` lines, before wrapping.
    staging: Vec<u8>,
}

impl LineEncoder {
    pub(crate) fn new() -> Self {
        LineEncoder {
            pending: [0; LINE_BYTES],
            pending_len: 0,
            staging: vec![0u8; BLOCK_LINES * LINE_CHARS],
        }
    }

    /// Encodes `data` and appends the full lines (76 characters and CRLF)
    /// it completes to `out`.
    pub(crate) fn write(&mut self, out: &mut Vec<u8>, mut data: &[u8]) {
        if self.pending_len > 0 {
            let take = (LINE_BYTES - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < LINE_BYTES {
                return;
            }
            let line = self.pending;
            self.whole_lines(out, &line);
            self.pending_len = 0;
        }
        let whole = data.len() / LINE_BYTES * LINE_BYTES;
        self.whole_lines(out, &data[..whole]);
        let rest = &data[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Encodes `data`, a multiple of 57 bytes, as full lines onto `out`.
    fn whole_lines(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        for group in data.chunks(LINE_BYTES * BLOCK_LINES) {
            // One SIMD run over the whole group (in L1), then each line's 76
            // characters and its CRLF onto the output. Appending, rather
            // than writing into a zeroed buffer, saves a pass over memory.
            let text = encode_into(group, &mut self.staging);
            for line in text.chunks_exact(LINE_CHARS) {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Appends the last, shorter line (padded, ending in CRLF too).
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        if self.pending_len == 0 {
            return;
        }
        let mut line = [0u8; LINE_CHARS];
        out.extend_from_slice(encode_into(&self.pending[..self.pending_len], &mut line));
        out.extend_from_slice(b"\r\n");
    }
}

/// Encodes `data` (padded) into the start of `dst` and returns the text.
/// Panics if `dst` is too short.
fn encode_into<'a>(data: &[u8], dst: &'a mut [u8]) -> &'a [u8] {
    let dst = &mut dst[..STANDARD.encoded_len(data.len())];
    // `dst` has exactly the room the text needs: encoding cannot fail.
    let n = STANDARD.encode_slice(data, &mut *dst).unwrap_or(0);
    &dst[..n]
}

// ---------------------------------------------------------------------------
// Decoding any layout: the in-place fast path, then the general one.

/// Decodes the base64 MIME body at `buf[start..]`, skipping whitespace,
/// into `buf` itself, which becomes the decoded bytes. The usual layout
/// (what [`crate::seal()`] writes: 76-character lines) is decoded in place,
/// by lines, with SIMD; wherever that stops, [`decode_base64_general`]
/// decodes the rest.
pub(crate) fn decode_base64_in_place(mut buf: Vec<u8>, start: usize) -> Result<Vec<u8>, Malformed> {
    let done = decode_lines_in_place(&mut buf, start);
    let mut len = done.len;
    if let Some(rest) = done.rest {
        // Whole groups of 4 characters, without padding, were decoded
        // before `rest`: decoding the rest alone and appending it is
        // decoding the whole (with nothing more, the whole was valid).
        let tail = &buf[rest..];
        if len == 0 || !tail.trim_ascii().is_empty() {
            let tail = decode_base64_general(tail)?;
            // The decoded front ends at or before `rest`, and the tail
            // decodes to fewer bytes than its text.
            buf[len..len + tail.len()].copy_from_slice(&tail);
            len += tail.len();
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`decode_base64_in_place`] of a borrowed body.
#[cfg(test)]
pub(crate) fn decode_base64(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    decode_base64_in_place(body.to_vec(), 0)
}

/// Decodes a base64 MIME body with whitespace anywhere, in bounded chunks
/// so the only large allocation is the output.
pub(crate) fn decode_base64_general(body: &[u8]) -> Result<Vec<u8>, Malformed> {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    const CHUNK: usize = 4 * 1024;
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 3);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut finished = false;
    // Decodes the longest prefix of `chunk` that is whole 4-character groups
    // (all of it when `last`), keeping the rest for the next round.
    let flush = |chunk: &mut Vec<u8>, out: &mut Vec<u8>, finished: &mut bool, last: bool| {
        let whole = if last {
            chunk.len()
        } else {
            chunk.len() / 4 * 4
        };
        if whole == 0 {
            return Ok(());
        }
        if *finished {
            return Err(Malformed::Base64); // data after padding
        }
        let start = out.len();
        out.resize(start + whole / 4 * 3 + 3, 0);
        let n = STANDARD
            .decode_slice(&chunk[..whole], &mut out[start..])
            .map_err(|_| Malformed::Base64)?;
        out.truncate(start + n);
        *finished = chunk[..whole].ends_with(b"=");
        chunk.drain(..whole);
        Ok(())
    };
    // Copy whole runs between whitespace (the 76-character lines), not
    // byte by byte: this loop dominated opening large messages.
    let mut rest = body;
    while !rest.is_empty() {
        let skip = rest
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[skip..];
        let run = rest
            .iter()
            .position(u8::is_ascii_whitespace)
            .unwrap_or(rest.len());
        chunk.extend_from_slice(&rest[..run]);
        rest = &rest[run..];
        if chunk.len() >= CHUNK {
            flush(&mut chunk, &mut out, &mut finished, false)?;
        }
    }
    flush(&mut chunk, &mut out, &mut finished, true)?;
    if out.is_empty() {
        return Err(Malformed::Base64);
    }
    Ok(out)
}

/// Base64 of `data` in 76-character lines ending in CRLF (RFC 2045 §6.8),
/// allocated once at its exact size.
#[cfg(test)]
pub(crate) fn encode_wrapped(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(wrapped_len(data.len()));
    let mut encoder = LineEncoder::new();
    encoder.write(&mut out, data);
    encoder.finish(&mut out);
    out
}

/// How far [`decode_lines_in_place`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Bytes decoded into the front of the buffer.
    pub(crate) len: usize,
    /// `None` if that is the whole body; otherwise where the input that is
    /// still to decode starts. It is untouched, and the decoded front ends
    /// before it.
    pub(crate) rest: Option<usize>,
}

/// Decodes the base64 body at `buf[start..]`, laid out as the encoder
/// writes it — lines of 76 characters separated by CRLF or LF, the last one
/// 76 or fewer, whitespace before and after the text — into the front of
/// `buf` itself: no second buffer the size of the message.
///
/// Lines are gathered into a small buffer and decoded from there to a
/// position that never passes the first unread input byte (each group of
/// 52 lines, 3952 characters and at least 52 separators, decodes to 2964
/// bytes, so the decoded front falls further behind with every group).
/// Until it trails the group being decoded by the group's whole decoded
/// size, a group is decoded into a scratch buffer first and copied back
/// only once it decoded. So when the layout turns out to be irregular, or
/// a character invalid, decoding stops at the start of the group in
/// question and says where: `buf[..len]` holds the bytes decoded so far and
/// the input from `rest` on is intact, for the general decoder.
///
/// The bytes decoded here are what the general decoder gives for the same
/// text: the lines contain no whitespace (the strict decoder refuses it
/// inside a line), so stripping whitespace leaves exactly their
/// concatenation; each group is whole 4-character quanta decoded strictly,
/// padding only in the last one. A body this stops on part-way is the
/// decoded groups followed by what the general decoder makes of the rest.
pub(crate) fn decode_lines_in_place(buf: &mut [u8], start: usize) -> Decoded {
    const GROUP_LINES: usize = 52; // 3952 characters, a multiple of 4
    let stop = |len, at| Decoded {
        len,
        rest: Some(at),
    };
    let body = &buf[start..];
    let mut r = start + (body.len() - body.trim_ascii_start().len());
    let end = r + body.trim_ascii().len();
    let sep = match buf.get(r + LINE_CHARS..(r + LINE_CHARS + 2).min(end)) {
        None | Some([]) => 0, // one line at most
        Some(b"\r\n") => 2,
        Some([b'\n', ..]) => 1,
        Some(_) => return stop(0, start),
    };
    let mut group = vec![0u8; GROUP_LINES * LINE_CHARS];
    let mut scratch = vec![0u8; GROUP_LINES * LINE_BYTES];
    let mut filled = 0;
    let mut group_start = r;
    let mut w = 0;
    while end - r > LINE_CHARS {
        let next = r + LINE_CHARS + sep;
        let separated = match sep {
            2 => buf.get(r + LINE_CHARS..next) == Some(b"\r\n"),
            1 => buf.get(r + LINE_CHARS) == Some(&b'\n'),
            _ => false,
        };
        // An empty last line would mean trailing whitespace, trimmed above.
        if !separated || next >= end {
            return stop(w, group_start);
        }
        group[filled..filled + LINE_CHARS].copy_from_slice(&buf[r..r + LINE_CHARS]);
        filled += LINE_CHARS;
        r = next;
        if filled == group.len() {
            // Not the end: the group must decode in full, without padding.
            match decode_group(buf, w, group_start, &group, &mut scratch) {
                Some(n) if n == scratch.len() => w += n,
                _ => return stop(w, group_start),
            }
            filled = 0;
            group_start = r;
        }
    }
    let last = filled + (end - r);
    if last > group.len() {
        return stop(w, group_start);
    }
    group[filled..last].copy_from_slice(&buf[r..end]);
    match decode_group(buf, w, group_start, &group[..last], &mut scratch) {
        // Nothing at all: the general decoder says what is wrong.
        Some(0) if w == 0 => stop(0, start),
        Some(n) => Decoded {
            len: w + n,
            rest: None,
        },
        None => stop(w, group_start),
    }
}

/// Decodes `text`, the characters of the group of lines whose input began
/// at `group_start`, to `buf[w..]` and returns how many bytes it wrote;
/// `None` if the text is not valid base64. Straight into place when that
/// cannot reach the group's own input, which must stay intact in case the
/// text fails; through `scratch` otherwise, copied back only on success.
fn decode_group(
    buf: &mut [u8],
    w: usize,
    group_start: usize,
    text: &[u8],
    scratch: &mut [u8],
) -> Option<usize> {
    let room = STANDARD.decoded_len_estimate(text.len());
    if w + room <= group_start {
        return STANDARD.decode_slice(text, &mut buf[w..w + room]).ok();
    }
    let n = STANDARD.decode_slice(text, scratch).ok()?;
    buf[w..w + n].copy_from_slice(&scratch[..n]);
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(data: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = Vec::new();
        for line in text.as_bytes().chunks(LINE_CHARS) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn encoder_matches_reference_for_any_pieces() {
        for len in [
            0usize, 1, 2, 3, 56, 57, 58, 113, 114, 115, 3648, 3649, 100_000,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 300) as u8).collect();
            let expected = reference(&data);
            assert_eq!(wrapped_len(len), expected.len(), "len {len}");
            assert!(encode_wrapped(&data) == expected, "len {len}");
            for piece in [1usize, 2, 56, 57, 58, 1000, 3648, 5000, len.max(1)] {
                let mut enc = LineEncoder::new();
                let mut out = Vec::new();
                let mut consumed = 0;
                for p in data.chunks(piece) {
                    enc.write(&mut out, p);
                    consumed += p.len();
                    // Only whole lines, each as soon as its 57 bytes are in.
                    assert_eq!(out.len() % LINE_OUT, 0);
                    assert_eq!(
                        out.len() / LINE_OUT * LINE_BYTES + enc.pending_len,
                        consumed
                    );
                    assert!(enc.pending_len < LINE_BYTES);
                }
                enc.finish(&mut out);
                assert!(out == expected, "len {len}, piece {piece}");
            }
        }
    }

    /// The line decoder alone, on `body` behind a header (as in a message):
    /// `Some` only if it decoded the whole body.
    fn decode_lines(body: &[u8]) -> Option<Vec<u8>> {
        const HEADER: &[u8] = b"Content-Transfer-Encoding: base64\r\n\r\n";
        let mut buf = HEADER.to_vec();
        buf.extend_from_slice(body);
        let done = decode_lines_in_place(&mut buf, HEADER.len());
        match done.rest {
            None => Some(buf[..done.len].to_vec()),
            Some(rest) => {
                // Stopped: the rest of the input is as it was.
                assert!(done.len <= rest);
                assert_eq!(buf[rest..], [HEADER, body].concat()[rest..]);
                None
            }
        }
    }

    #[test]
    fn line_decoder_decodes_what_the_encoder_writes() {
        for len in [
            1usize,
            2,
            3,
            56,
            57,
            58,
            3951,
            3952 / 4 * 3,
            2964 + 1,
            100_000,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 77) as u8).collect();
            let crlf = reference(&data);
            assert_eq!(decode_lines(&crlf), Some(data.clone()), "len {len}");
            let lf: Vec<u8> = crlf.iter().copied().filter(|&b| b != b'\r').collect();
            assert_eq!(decode_lines(&lf), Some(data.clone()), "LF, len {len}");
            let mut spaced = b"\r\n  ".to_vec();
            spaced.extend_from_slice(&crlf);
            spaced.extend_from_slice(b"\r\n\t\r\n");
            assert_eq!(decode_lines(&spaced), Some(data), "len {len}");
        }
    }

    #[test]
    fn line_decoder_declines_anything_irregular() {
        let data: Vec<u8> = (0..=255u8).cycle().take(20_000).collect();
        let good = reference(&data);
        assert!(decode_lines(&good).is_some());
        // A space inside a line, a junk character, a line too long, a blank
        // line in the middle, padding in the middle, mixed separators.
        let mut bad = Vec::new();
        let mut with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            bad.push(v);
        };
        with(10, b' ');
        with(10, b'*');
        with(78 * 60 + 3, b'\n');
        with(76, b'A');
        with(78 * 100 + 75, b'=');
        with(78 * 51 + 75, b'=');
        // Non-canonical: 20000 bytes end in one `=`, so the character
        // before it carries two zero bits; 'B' (1) sets one of them.
        assert_eq!(&good[good.len() - 3..], b"=\r\n");
        with(good.len() - 4, b'B');
        let mut blank = good.clone();
        blank.splice(78 * 5..78 * 5, *b"\r\n");
        bad.push(blank);
        let mut mixed = good.clone();
        mixed.remove(78 * 7 + 76);
        bad.push(mixed);
        bad.push(b"QQ==QQ==".to_vec());
        bad.push(b"   ".to_vec());
        bad.push(Vec::new());
        for (i, b) in bad.iter().enumerate() {
            assert_eq!(decode_lines(b), None, "case {i}");
        }
    }
}
