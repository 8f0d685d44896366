//! The From address a signature must be by, read strictly.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::Identity;

use super::*;
use crate::header::HeaderSection;

/// The single address of the message's single `From` field.
pub fn from_address(message: &[u8]) -> Result<Identity, SignatureError> {
    let section = HeaderSection::parse(message);
    let mut froms = section.fields.iter().filter(|f| f.is("From"));
    let (Some(from), None) = (froms.next(), froms.next()) else {
        return Err(SignatureError::NoFrom);
    };
    let value = String::from_utf8_lossy(from.value());
    mailbox_address(&value)
        .and_then(|a| Identity::parse(&a).ok())
        .ok_or(SignatureError::NoFrom)
}

/// The addr-spec of a one-mailbox `From` value, read strictly (RFC 5322
/// §3.4): comments are dropped, angle brackets and `@` count only outside
/// quoted strings and comments, there is at most one angle-addr and nothing
/// but white space after it. A display name that itself looks like an
/// address (or is an encoded word, which may hide one) must be that same
/// address, so a client cannot show one address while another is signed.
/// `None` for groups, lists and anything else.
pub(super) fn mailbox_address(value: &str) -> Option<String> {
    // Pass 1: split into display part and angle-addr, outside quotes and
    // comments; collect the display text with quotes kept as text.
    let mut display = String::new();
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut after_angle = false;
    let mut depth = 0usize;
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if c == '\r' || c == '\n' {
            continue;
        }
        if escaped {
            escaped = false;
            if depth == 0 {
                display.push(c);
            }
            continue;
        }
        if depth > 0 {
            match c {
                '\\' => escaped = true,
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => display.push(c),
            }
            continue;
        }
        match c {
            '(' => depth += 1,
            '"' if !in_angle && !after_angle => quoted = true,
            '<' if !in_angle && !after_angle && angle.is_none() => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => {
                in_angle = false;
                after_angle = true;
            }
            c if in_angle => angle.as_mut()?.push(c),
            c if after_angle && !c.is_whitespace() => return None,
            ',' | ';' | ':' | '<' | '>' | '"' => return None,
            c if !after_angle => display.push(c),
            _ => {}
        }
    }
    if in_angle || quoted || depth > 0 {
        return None;
    }
    let address = match angle {
        Some(a) => a.trim().to_string(),
        None => std::mem::take(&mut display).trim().to_string(),
    };
    if !is_dot_atom_address(&address) {
        return None;
    }
    let shown = decode_encoded_words(display.trim());
    if shown.contains('@') {
        let shown = shown.trim_matches(|c: char| c == '\'' || c.is_whitespace());
        if !shown.eq_ignore_ascii_case(&address) {
            return None;
        }
    }
    Some(address)
}

/// True for `local@domain` with a dot-atom local part (RFC 5322 `atext`
/// and dots) and a host-name domain: the addresses that can stand in `i=`
/// as they are. Quoted local parts (which may contain `;`, the tag-list
/// separator) are not signed or accepted.
pub(super) fn is_dot_atom_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    !local.is_empty()
        && local.chars().all(|c| atext(c) || c == '.')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
}

/// The text of RFC 2047 encoded words (`=?charset?Q|B?text?=`) decoded to
/// bytes and read as UTF-8 (lossily): enough to see an `@` hidden in a
/// display name. Anything that is not a well-formed encoded word is kept.
pub(super) fn decode_encoded_words(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("=?") {
        out.push_str(&rest[..start]);
        let word = &rest[start + 2..];
        // charset ? encoding ? payload ?=
        let mut fields = word.splitn(3, '?');
        let (Some(_charset), Some(encoding), Some(tail)) =
            (fields.next(), fields.next(), fields.next())
        else {
            out.push_str("=?");
            rest = word;
            continue;
        };
        let Some(end) = tail.find("?=") else {
            out.push_str("=?");
            rest = word;
            continue;
        };
        let payload = &tail[..end];
        let bytes = if encoding.eq_ignore_ascii_case("b") {
            STANDARD.decode(payload).unwrap_or_default()
        } else {
            decode_q(payload.as_bytes())
        };
        out.push_str(&String::from_utf8_lossy(&bytes));
        rest = &tail[end + 2..];
    }
    out.push_str(rest);
    out
}

/// RFC 2047 "Q" decoding: `_` is a space, `=XX` a byte.
pub(super) fn decode_q(raw: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'=', Some(b)) => {
                bytes.push(b);
                i += 3;
            }
            (b'_', _) => {
                bytes.push(b' ');
                i += 1;
            }
            (b, _) => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    bytes
}
