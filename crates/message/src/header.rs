//! The raw header section of an RFC 5322 message, read without changing a
//! byte: what to copy outside the encryption, and whether a message is sealed.
//!
//! Real mail is often malformed (bare LF, missing separator, lines without a
//! colon, 8-bit bytes); this reader never fails. It only has to find fields by
//! name; everything it cannot make sense of stays inside the encrypted copy.

/// One header field, exactly as it appears (name, colon, value, folding and
/// line endings included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawField<'a> {
    /// The field name (before the colon, trailing whitespace removed).
    pub name: &'a [u8],
    /// The whole field including its final line ending.
    pub raw: &'a [u8],
}

impl<'a> RawField<'a> {
    /// The value after the colon, unfolded is not attempted: raw bytes.
    pub fn value(&self) -> &'a [u8] {
        let colon = self
            .raw
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(self.raw.len());
        self.raw.get(colon + 1..).unwrap_or_default()
    }

    /// Case-insensitive name comparison.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A message split into header fields and body.
#[derive(Debug)]
pub struct HeaderSection<'a> {
    /// The header fields in order. Lines that are not fields (no colon) are
    /// skipped.
    pub fields: Vec<RawField<'a>>,
    /// Offset of the body (after the blank separator line), or the message
    /// length when there is no separator.
    pub body_offset: usize,
}

impl<'a> HeaderSection<'a> {
    /// Splits `message` (any line endings).
    pub fn parse(message: &'a [u8]) -> Self {
        let mut fields: Vec<RawField<'a>> = Vec::new();
        let mut current: Option<(usize, usize)> = None; // (start, name_end)
        let mut pos = 0;
        let close =
            |fields: &mut Vec<RawField<'a>>, current: Option<(usize, usize)>, end: usize| {
                if let Some((start, name_end)) = current {
                    let name = message[start..name_end].trim_ascii_end();
                    fields.push(RawField {
                        name,
                        raw: &message[start..end],
                    });
                }
            };
        while pos < message.len() {
            let line_end = message[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(message.len(), |i| pos + i + 1);
            let line = &message[pos..line_end];
            let content = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(line);
            if content.is_empty() && line.ends_with(b"\n") {
                close(&mut fields, current.take(), pos);
                return HeaderSection {
                    fields,
                    body_offset: line_end,
                };
            }
            if matches!(content.first(), Some(b' ' | b'\t')) {
                // Continuation of the current field (or of nothing: ignored).
            } else {
                close(&mut fields, current.take(), pos);
                current = content
                    .iter()
                    .position(|&b| b == b':')
                    .filter(|&colon| colon > 0)
                    .map(|colon| (pos, pos + colon));
            }
            pos = line_end;
        }
        close(&mut fields, current.take(), message.len());
        HeaderSection {
            fields,
            body_offset: message.len(),
        }
    }

    /// The first field named `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&RawField<'a>> {
        self.fields.iter().find(|f| f.is(name))
    }
}

/// Unfolds a raw header value and trims it: CR/LF removed, whitespace runs kept.
pub(crate) fn unfold(value: &[u8]) -> String {
    let text: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    String::from_utf8_lossy(&text).trim().to_string()
}

/// A parsed `Content-Type`: lower-cased `type/subtype` and parameters with
/// lower-cased names and unquoted values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ContentType {
    pub(crate) mime_type: String,
    pub(crate) params: Vec<(String, String)>,
}

impl ContentType {
    pub(crate) fn parse(value: &[u8]) -> Self {
        let text = unfold(value);
        let mut parts = split_params(&text).into_iter();
        let mime_type = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                let v = v.trim();
                let v = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v);
                Some((k.trim().to_ascii_lowercase(), v.to_string()))
            })
            .collect();
        ContentType { mime_type, params }
    }

    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits at `;` outside quoted strings.
fn split_params(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                current.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out
}

/// Appends `raw` with every line ending normalised to CRLF, ending in CRLF.
pub fn push_crlf_normalised(out: &mut Vec<u8>, raw: &[u8]) {
    let mut previous = 0u8;
    for &b in raw {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    if !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fields_keeping_folding_and_line_endings() {
        let msg = b"From: a@b\r\nSubject: one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n";
        let h = HeaderSection::parse(msg);
        assert_eq!(h.fields.len(), 3);
        assert_eq!(h.fields[1].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(h.get("subject").unwrap().value(), b" one\r\n two\r\n");
        assert_eq!(&msg[h.body_offset..], b"body\r\n");
    }

    #[test]
    fn handles_bare_lf_missing_separator_and_junk() {
        let h = HeaderSection::parse(b"From a@b Mon\nX: 1\nnot a field\nY: 2\n\nbody");
        let names: Vec<&[u8]> = h.fields.iter().map(|f| f.name).collect();
        assert_eq!(names, vec![&b"X"[..], &b"Y"[..]]);
        assert_eq!(h.body_offset, 36);

        let no_body = HeaderSection::parse(b"X: 1\r\nY: 2");
        assert_eq!(no_body.fields.len(), 2);
        assert_eq!(no_body.fields[1].raw, b"Y: 2");
        assert_eq!(no_body.body_offset, 10);

        let empty = HeaderSection::parse(b"");
        assert!(empty.fields.is_empty());
        let only_body = HeaderSection::parse(b"\r\nbody");
        assert!(only_body.fields.is_empty());
        assert_eq!(only_body.body_offset, 2);
    }

    #[test]
    fn parses_content_type_parameters() {
        let ct = ContentType::parse(
            b" Application/PKCS7-MIME;\r\n smime-type=\"authEnveloped-data\"; NAME=smime.p7m; x=\"a;b\"\r\n",
        );
        assert_eq!(ct.mime_type, "application/pkcs7-mime");
        assert_eq!(ct.param("smime-type"), Some("authEnveloped-data"));
        assert_eq!(ct.param("name"), Some("smime.p7m"));
        assert_eq!(ct.param("x"), Some("a;b"));
    }

    #[test]
    fn normalises_line_endings() {
        let mut out = Vec::new();
        push_crlf_normalised(&mut out, b"A: 1\n 2");
        assert_eq!(out, b"A: 1\r\n 2\r\n");
        let mut out = Vec::new();
        push_crlf_normalised(&mut out, b"A: 1\r\n");
        assert_eq!(out, b"A: 1\r\n");
    }
}
