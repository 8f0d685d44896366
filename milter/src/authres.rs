//! `Authentication-Results` (RFC 8601): whose results a field claims to be,
//! and the fields this milter writes.
//!
//! A field that claims our authserv-id but arrived with the message is
//! forged (RFC 8601 §5) and is removed, outside the encryption and inside
//! it. The authserv-id is read by the RFC's grammar, not by splitting at
//! the first space: `mx.b.test (c); dkim=pass` and `"mx.b.test"; none`
//! claim `mx.b.test` as surely as `mx.b.test; none` does.

/// The field name.
pub const FIELD: &str = "Authentication-Results";

/// The authserv-id an `Authentication-Results` value claims:
///
/// ```text
/// authres-header-field = "Authentication-Results:" authserv-id
///                        [ CFWS authres-version ] ( no-result / 1*resinfo ) CRLF
/// authserv-id = value          ; RFC 2045: token / quoted-string
/// ```
///
/// with comments and folding white space allowed before it. `None` if the
/// value does not start with one.
pub fn authserv_id(value: &[u8]) -> Option<String> {
    let rest = skip_cfws(value);
    match rest.first()? {
        b'"' => quoted_string(&rest[1..]),
        _ => {
            let end = rest
                .iter()
                .position(|&b| !is_token_char(b))
                .unwrap_or(rest.len());
            (end > 0).then(|| String::from_utf8_lossy(&rest[..end]).into_owned())
        }
    }
}

/// True if the value may claim `ours`, as any reader might take it: its
/// authserv-id is `ours` (case-insensitively, a final dot ignored: it is a
/// host name in practice), or it has none by the grammar (an unterminated
/// comment, say), or `ours` appears as a word before the first `;`. Fails
/// closed: a field we cannot read is one we cannot vouch was not forged.
pub fn claims(value: &[u8], ours: &str) -> bool {
    let ours = ours.trim_end_matches('.');
    let same = |id: &str| id.trim_end_matches('.').eq_ignore_ascii_case(ours);
    let Some(id) = authserv_id(value) else {
        return true;
    };
    if same(&id) {
        return true;
    }
    let head = value.split(|&b| b == b';').next().unwrap_or_default();
    head.split(|&b| !(b.is_ascii_alphanumeric() || b"-._".contains(&b)))
        .any(|word| same(&String::from_utf8_lossy(word)))
}

/// RFC 2045 token characters: printable ASCII except SPACE and tspecials.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b)
}

/// Skips white space (folded or not) and nested RFC 5322 comments.
fn skip_cfws(mut s: &[u8]) -> &[u8] {
    loop {
        while let Some((&b, rest)) = s.split_first() {
            if b.is_ascii_whitespace() {
                s = rest;
            } else {
                break;
            }
        }
        if s.first() != Some(&b'(') {
            return s;
        }
        let mut depth = 0usize;
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        if i >= s.len() {
            return &[]; // unterminated comment: no authserv-id
        }
        s = &s[i + 1..];
    }
}

/// The content of a quoted string whose opening quote was consumed.
fn quoted_string(s: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
            b'\\' => {
                out.push(*s.get(i + 1)?);
                i += 2;
            }
            b'\r' | b'\n' => i += 1, // folding inside the quotes
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// The value of an `Authentication-Results` field by `authserv_id` with
/// the given results (`method=result (comment) ptype.property=value`),
/// each on its own folded line; line breaks inside a result are flattened,
/// so no text (a reason) can start a field of its own.
pub fn value(authserv_id: &str, results: &[String]) -> Vec<u8> {
    let mut out = format!(" {authserv_id};");
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            out.push_str(";\n\t");
        } else {
            out.push(' ');
        }
        out.push_str(&result.replace(['\r', '\n'], " "));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authserv_id_is_read_by_the_grammar() {
        let cases: [(&[u8], Option<&str>); 10] = [
            (b" mx.b.test; x-ibemail=pass", Some("mx.b.test")),
            (b"MX.B.TEST 1; none", Some("MX.B.TEST")),
            (b" mx.b.test (c); dkim=pass", Some("mx.b.test")),
            (b" mx.b.test(c); dkim=pass", Some("mx.b.test")),
            (b" (comment (nested)) mx.b.test; none", Some("mx.b.test")),
            (b"\n\t \"mx.b.test\"; none", Some("mx.b.test")),
            (b" \"mx.\\b.test\" ; none", Some("mx.b.test")),
            (b" mx.b.test.evil; none", Some("mx.b.test.evil")),
            (b" (unterminated mx.b.test; none", None),
            (b" ; none", None),
        ];
        for (value, expected) in cases {
            assert_eq!(
                authserv_id(value).as_deref(),
                expected,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        assert!(claims(b" mx.b.test (c); x", "mx.b.test"));
        assert!(claims(b" \"MX.b.test\"; x", "mx.b.test"));
        assert!(!claims(b" mx.b.test.evil; none", "mx.b.test"));
        assert!(!claims(b" other.example; spf=pass", "mx.b.test"));
        // Fail closed: what another reader might take for ours is ours.
        for forged in [
            " (\\) mx.b.test; ibesig=pass header.i=ceo@b.test",
            " (x mx.b.test; ibesig=pass header.i=ceo@b.test",
            " mx.b.test.; ibesig=pass header.i=ceo@b.test",
            " other.example (mx.b.test); ibesig=pass",
            " ; ibesig=pass",
        ] {
            assert!(claims(forged.as_bytes(), "mx.b.test"), "{forged:?}");
        }
        assert!(!claims(
            b" other.example (via mx.b.test.evil); x",
            "mx.b.test"
        ));
    }

    #[test]
    fn values_fold_each_result_and_flatten_line_breaks() {
        assert_eq!(
            value(
                "mx.b.test",
                &["x-ibemail=pass".into(), "ibesig=fail (a\r\nb)".into()]
            ),
            b" mx.b.test; x-ibemail=pass;\n\tibesig=fail (a  b)".to_vec()
        );
    }
}
