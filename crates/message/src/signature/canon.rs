//! Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4) and the signed digest.

use sha2::{Digest, Sha256};

use super::*;
use crate::header::HeaderSection;

// ---------------------------------------------------------------------------
// Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4)

pub(super) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Relaxed header canonicalization of one field: lower-cased name, `:`,
/// value unfolded with whitespace runs as one space and trimmed.
pub(super) fn relaxed_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend(name.trim_ascii().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = started,
            _ => {
                if pending_space {
                    out.push(b' ');
                }
                pending_space = false;
                started = true;
                out.push(b);
            }
        }
    }
}

/// Feeds the relaxed-canonical body of `body` to `hasher`.
pub(super) fn hash_relaxed_body(body: &[u8], hasher: &mut Sha256) {
    let mut blank_lines = 0usize;
    let mut line_buf = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Trailing whitespace goes; inner runs become one space.
        let line = {
            let end = line.iter().rposition(|&b| !is_wsp(b)).map_or(0, |i| i + 1);
            &line[..end]
        };
        if line.is_empty() {
            blank_lines += 1;
            continue;
        }
        for _ in 0..blank_lines {
            hasher.update(b"\r\n");
        }
        blank_lines = 0;
        let needs_work =
            line.windows(2).any(|w| is_wsp(w[0]) && is_wsp(w[1])) || line.contains(&b'\t');
        if needs_work {
            line_buf.clear();
            let mut in_wsp = false;
            for &b in line {
                if is_wsp(b) {
                    if !in_wsp {
                        line_buf.push(b' ');
                    }
                    in_wsp = true;
                } else {
                    line_buf.push(b);
                    in_wsp = false;
                }
            }
            hasher.update(&line_buf);
        } else {
            hasher.update(line);
        }
        hasher.update(b"\r\n");
    }
}

/// SHA-256 of the relaxed-canonical body.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hash_relaxed_body(body, &mut hasher);
    hasher.finalize().into()
}

/// The header fields named in `h`, selected as DKIM does: for each name,
/// the last occurrence not yet used; names with no occurrence left add
/// nothing.
///
/// Linear in the fields plus the names: each field named in `h` is listed
/// once under its name, and each name takes the last one left. (A scan of
/// the fields per name cost names × fields, which a sender controls both
/// of.)
pub(super) fn canonical_headers(section: &HeaderSection<'_>, h: &[String], out: &mut Vec<u8>) {
    let mut left: std::collections::HashMap<Vec<u8>, Vec<usize>> = h
        .iter()
        .map(|name| (name.as_bytes().to_ascii_lowercase(), Vec::new()))
        .collect();
    for (i, field) in section.fields.iter().enumerate() {
        if let Some(indices) = left.get_mut(&field.name.to_ascii_lowercase()) {
            indices.push(i);
        }
    }
    for name in h {
        let field = left
            .get_mut(&name.as_bytes().to_ascii_lowercase())
            .and_then(Vec::pop)
            .map(|i| &section.fields[i]);
        if let Some(field) = field {
            relaxed_field(out, field.name, field.value());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The value of a signature field with the value of `b=` removed.
pub(super) fn without_b_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut start = 0;
    for (begin, end) in split_keep(value) {
        let text = &value[begin..end];
        let name_end = text.iter().position(|&b| b == b'=');
        let is_b = name_end.is_some_and(|e| {
            let name: Vec<u8> = text[..e]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            name == b"b"
        });
        if is_b {
            let eq = begin + name_end.unwrap_or(0);
            out.extend_from_slice(&value[start..=eq]);
            start = end;
        }
    }
    out.extend_from_slice(&value[start..]);
    out
}

/// Byte ranges of the `;`-separated elements of a tag list.
pub(super) fn split_keep(value: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut begin = 0;
    for (i, &b) in value.iter().enumerate() {
        if b == b';' {
            out.push((begin, i));
            begin = i + 1;
        }
    }
    out.push((begin, value.len()));
    out
}

pub(super) fn digest(
    section: &HeaderSection<'_>,
    h: &[String],
    value_without_b: &[u8],
) -> [u8; 32] {
    let mut data = Vec::new();
    canonical_headers(section, h, &mut data);
    relaxed_field(&mut data, SIGNATURE_FIELD.as_bytes(), value_without_b);
    Sha256::digest(&data).into()
}

// ---------------------------------------------------------------------------
// From
