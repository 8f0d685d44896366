//! The `IBE-Signature` header field: an identity-based signature of a
//! message by its sender's address, in DKIM's syntax (RFC 6376) with relaxed
//! canonicalization of header and body.
//!
//! ```text
//! IBE-Signature: v=1; a=cc-bls12-381-sha256; c=relaxed/relaxed;
//!         i=alice@a.test; n=3; h=from:from:to:subject:date:message-id;
//!         bh=<base64 SHA-256 of the canonical body>;
//!         b=<base64 Cha–Cheon signature, 192 bytes>
//! ```
//!
//! | tag | meaning |
//! |---|---|
//! | `v` | version, `1` |
//! | `a` | algorithm: Cha–Cheon IBS on BLS12-381 over a SHA-256 digest |
//! | `c` | canonicalization, always `relaxed/relaxed` |
//! | `i` | the signer's address (normalised); its domain publishes `S=` |
//! | `n` | the parameter generation of the signer's domain |
//! | `e` | `1` when the message was sealed right after signing: a receiver fails the signature if it arrives outside an encrypted message (absent otherwise) |
//! | `h` | signed header fields, DKIM order (bottom-up per name); every name of [`SIGNED_FIELDS`] is listed once more than it occurs, so none can be added on top later; folded at colons |
//! | `bh` | SHA-256 of the relaxed-canonical body |
//! | `b` | the signature of the digest below |
//!
//! The signed digest is DKIM's (RFC 6376 §3.7): SHA-256 over the selected
//! header fields, relaxed-canonicalized, followed by this field itself with
//! the value of `b=` removed and without its final CRLF. The IBS algorithm
//! also binds `i` and `n` (they select the key and enter its hashes).
//!
//! A signature only *passes* if it verifies and `i=` is the message's one
//! `From` address: a valid signature by bob@a.test on mail "From:
//! alice@a.test" fails. The From address is read strictly: one mailbox,
//! one angle-addr, and a display name that shows an address (even in an
//! encoded word) must show this one.
//!
//! Why not `mail-auth`: its 0.13 series (the last that builds with Rust
//! 1.95) refuses to compile without a DNS resolver and a crypto backend
//! (`compile_error!`), which would put a resolver and a TLS stack into this
//! sans-I/O crate for the two canonicalization functions used here. They
//! are written out below and tested against RFC 6376 §3.4.5's example.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{Generation, Identity, Signature, SigningParams};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::header::HeaderSection;

/// The header field name.
pub const SIGNATURE_FIELD: &str = "IBE-Signature";
/// The `a=` value.
pub const ALGORITHM: &str = "cc-bls12-381-sha256";
/// Most occurrences of one field name signed (the rest of a message with
/// more, e.g. hundreds of `To` fields, stays unsigned).
const MAX_SIGNED_PER_NAME: usize = 64;
/// Most `h=` entries accepted when verifying (bounds the work per
/// signature).
const MAX_H_ENTRIES: usize = SIGNED_FIELDS.len() * (MAX_SIGNED_PER_NAME + 1);

/// Header fields signed (each occurrence, and once more), in this order.
pub const SIGNED_FIELDS: [&str; 14] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
];

/// Why a signature field is unusable or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The field does not parse.
    #[error("malformed IBE-Signature: {0}")]
    Syntax(String),
    /// A version or algorithm this implementation does not know.
    #[error("unsupported IBE-Signature {0}")]
    Unsupported(String),
    /// The body changed since signing.
    #[error("body hash mismatch")]
    BodyHash,
    /// The message has no single From address.
    #[error("message has no single From address")]
    NoFrom,
    /// The signer is not the From address.
    #[error("signed by {signer}, but From is {from}")]
    FromMismatch {
        /// `i=`.
        signer: String,
        /// The From address.
        from: String,
    },
    /// The signer's domain publishes no signature parameter for `n=`.
    #[error("no signing parameters for generation {0}")]
    NoParameters(Generation),
    /// The signature does not verify (changed headers, wrong key, forgery).
    #[error("signature does not verify")]
    BadSignature,
}

// ---------------------------------------------------------------------------
// Relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4)

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Relaxed header canonicalization of one field: lower-cased name, `:`,
/// value unfolded with whitespace runs as one space and trimmed.
fn relaxed_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
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
fn hash_relaxed_body(body: &[u8], hasher: &mut Sha256) {
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
fn canonical_headers(section: &HeaderSection<'_>, h: &[String], out: &mut Vec<u8>) {
    let mut used = vec![false; section.fields.len()];
    for name in h {
        if let Some(i) = (0..section.fields.len())
            .rev()
            .find(|&i| !used[i] && section.fields[i].is(name))
        {
            used[i] = true;
            let field = &section.fields[i];
            relaxed_field(out, field.name, field.value());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The value of a signature field with the value of `b=` removed.
fn without_b_value(value: &[u8]) -> Vec<u8> {
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
fn split_keep(value: &[u8]) -> Vec<(usize, usize)> {
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

fn digest(section: &HeaderSection<'_>, h: &[String], value_without_b: &[u8]) -> [u8; 32] {
    let mut data = Vec::new();
    canonical_headers(section, h, &mut data);
    relaxed_field(&mut data, SIGNATURE_FIELD.as_bytes(), value_without_b);
    Sha256::digest(&data).into()
}

// ---------------------------------------------------------------------------
// From

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
fn mailbox_address(value: &str) -> Option<String> {
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
fn is_dot_atom_address(address: &str) -> bool {
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
fn decode_encoded_words(text: &str) -> String {
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
fn decode_q(raw: &[u8]) -> Vec<u8> {
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

// ---------------------------------------------------------------------------
// Signing

/// A signature being made: everything but `b=`.
#[derive(Clone, Debug)]
pub struct Unsigned {
    identity: Identity,
    generation: Generation,
    sealed: bool,
    signed_fields: Vec<String>,
    body_hash: [u8; 32],
    digest: [u8; 32],
}

fn tags_without_b(
    identity: &Identity,
    generation: Generation,
    sealed: bool,
    h: &[String],
    bh: &[u8; 32],
) -> String {
    // Fold h= at colons so no line exceeds about 76 characters.
    let mut h_text = String::new();
    let mut line = 3usize;
    for (i, name) in h.iter().enumerate() {
        if i > 0 {
            h_text.push(':');
            line += 1;
            if line + name.len() > 72 {
                h_text.push_str("\r\n\t ");
                line = 2;
            }
        }
        h_text.push_str(name);
        line += name.len();
    }
    let sealed = if sealed { " e=1;" } else { "" };
    format!(
        " v=1; a={ALGORITHM}; c=relaxed/relaxed; i={identity}; n={generation};{sealed}\r\n\th={h_text};\r\n\tbh={};\r\n\tb=",
        STANDARD.encode(bh)
    )
}

impl Unsigned {
    /// Prepares a signature of `message` by `identity` (normally its From
    /// address) at `generation`, for a message that travels as it is.
    pub fn new(message: &[u8], identity: &Identity, generation: Generation) -> Unsigned {
        Self::build(message, identity, generation, false)
    }

    /// The same for a message that is sealed right after signing: the
    /// signature carries `e=1`, and a receiver fails it if it arrives
    /// outside an encrypted message (someone decrypted it on the way).
    pub fn new_sealed(message: &[u8], identity: &Identity, generation: Generation) -> Unsigned {
        Self::build(message, identity, generation, true)
    }

    fn build(
        message: &[u8],
        identity: &Identity,
        generation: Generation,
        sealed: bool,
    ) -> Unsigned {
        let section = HeaderSection::parse(message);
        let mut h = Vec::new();
        for name in SIGNED_FIELDS {
            // Each field once more than it occurs (DKIM "over-signing"):
            // a field of these names added later, on top, breaks the
            // signature instead of being shown under it.
            let count = section.fields.iter().filter(|f| f.is(name)).count();
            let count = count.min(MAX_SIGNED_PER_NAME) + 1;
            h.extend(std::iter::repeat_n(name.to_ascii_lowercase(), count));
        }
        let body_hash = body_hash(&message[section.body_offset..]);
        let value = tags_without_b(identity, generation, sealed, &h, &body_hash);
        let digest = digest(&section, &h, value.as_bytes());
        Unsigned {
            identity: identity.clone(),
            generation,
            sealed,
            signed_fields: h,
            body_hash,
            digest,
        }
    }

    /// What the signer signs: the 32-byte digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The signer's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The field value (leading space, CRLF folding, no final CRLF) with
    /// `signature` in `b=`.
    pub fn field_value(&self, signature: &Signature) -> String {
        let mut value = tags_without_b(
            &self.identity,
            self.generation,
            self.sealed,
            &self.signed_fields,
            &self.body_hash,
        );
        let b = STANDARD.encode(signature.to_bytes());
        for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                value.push_str("\r\n\t ");
            }
            value.push_str(&String::from_utf8_lossy(chunk));
        }
        value
    }

    /// `message` with the complete field prepended.
    pub fn prepend(&self, message: &[u8], signature: &Signature) -> Vec<u8> {
        let value = self.field_value(signature);
        let mut out = Vec::with_capacity(message.len() + value.len() + 20);
        out.extend_from_slice(SIGNATURE_FIELD.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        out
    }
}

// ---------------------------------------------------------------------------
// Verifying

/// A parsed `IBE-Signature` field.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// `i=`.
    pub identity: Identity,
    /// `n=`.
    pub generation: Generation,
    /// `e=1`: signed to travel sealed (see [`Unsigned::new_sealed`]).
    pub sealed: bool,
    signed_fields: Vec<String>,
    body_hash: Vec<u8>,
    signature: Signature,
    value_without_b: Vec<u8>,
}

/// Most `IBE-Signature` fields of one message looked at (the first ones,
/// from the top): each costs a lookup and a pairing check.
pub const MAX_SIGNATURES: usize = 8;

/// The `IBE-Signature` fields of `message`, top first (at most
/// [`MAX_SIGNATURES`]), parsed.
pub fn signatures(message: &[u8]) -> Vec<Result<Parsed, SignatureError>> {
    let section = HeaderSection::parse(message);
    section
        .fields
        .iter()
        .filter(|f| f.is(SIGNATURE_FIELD))
        .take(MAX_SIGNATURES)
        .map(|f| Parsed::parse(f.value()))
        .collect()
}

fn tag_values(value: &[u8]) -> Result<Vec<(String, String)>, SignatureError> {
    let text =
        std::str::from_utf8(value).map_err(|_| SignatureError::Syntax("not UTF-8".into()))?;
    let mut tags: Vec<(String, String)> = Vec::new();
    for element in text.split(';') {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (name, value) = element
            .split_once('=')
            .ok_or_else(|| SignatureError::Syntax(format!("element {element:?} has no '='")))?;
        let name = name.trim().to_string();
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(SignatureError::Syntax(format!("duplicate tag {name}=")));
        }
        tags.push((name, value.trim().to_string()));
    }
    Ok(tags)
}

impl Parsed {
    /// Parses a field value.
    pub fn parse(value: &[u8]) -> Result<Parsed, SignatureError> {
        let tags = tag_values(value)?;
        let get = |name: &str| {
            tags.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| SignatureError::Syntax(format!("missing tag {name}=")))
        };
        let compact = |v: &str| v.split_ascii_whitespace().collect::<String>();
        if get("v")? != "1" {
            return Err(SignatureError::Unsupported(format!("v={}", get("v")?)));
        }
        if get("a")? != ALGORITHM {
            return Err(SignatureError::Unsupported(format!("a={}", get("a")?)));
        }
        if let Ok(c) = get("c")
            && c != "relaxed/relaxed"
        {
            return Err(SignatureError::Unsupported(format!("c={c}")));
        }
        let identity =
            Identity::parse(get("i")?).map_err(|e| SignatureError::Syntax(format!("i=: {e}")))?;
        let generation: Generation = get("n")?
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| SignatureError::Syntax("n= is not a generation".into()))?;
        let signed_fields: Vec<String> = compact(get("h")?)
            .split(':')
            .filter(|n| !n.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if !signed_fields.iter().any(|n| n == "from") {
            return Err(SignatureError::Syntax("h= does not include from".into()));
        }
        if signed_fields.len() > MAX_H_ENTRIES {
            return Err(SignatureError::Syntax(format!(
                "h= lists {} fields (at most {MAX_H_ENTRIES})",
                signed_fields.len()
            )));
        }
        let sealed = match tags.iter().find(|(n, _)| n == "e") {
            None => false,
            Some((_, v)) if v == "1" => true,
            Some((_, v)) => return Err(SignatureError::Syntax(format!("e={v}"))),
        };
        let body_hash = STANDARD
            .decode(compact(get("bh")?))
            .map_err(|_| SignatureError::Syntax("bh= is not base64".into()))?;
        let signature = STANDARD
            .decode(compact(get("b")?))
            .map_err(|_| SignatureError::Syntax("b= is not base64".into()))?;
        let signature = Signature::from_bytes(&signature)
            .map_err(|e| SignatureError::Syntax(format!("b=: {e}")))?;
        Ok(Parsed {
            identity,
            generation,
            sealed,
            signed_fields,
            body_hash,
            signature,
            value_without_b: without_b_value(value),
        })
    }

    /// Checks the signature on `message` (which contains this field) with
    /// the signer domain's `params` for `n=`, and that the signer is the
    /// From address.
    pub fn verify(&self, message: &[u8], params: &SigningParams) -> Result<(), SignatureError> {
        self.check_signer(message)?;
        let section = HeaderSection::parse(message);
        if body_hash(&message[section.body_offset..]).as_slice() != self.body_hash {
            return Err(SignatureError::BodyHash);
        }
        let digest = digest(&section, &self.signed_fields, &self.value_without_b);
        ibemail_ibe::verify(
            params,
            &self.identity,
            self.generation,
            &digest,
            &self.signature,
        )
        .map_err(|_| SignatureError::BadSignature)
    }

    /// Checks, cheaply and before any lookup, that the signer is the
    /// message's one From address.
    pub fn check_signer(&self, message: &[u8]) -> Result<(), SignatureError> {
        let from = from_address(message)?;
        if from != self.identity {
            return Err(SignatureError::FromMismatch {
                signer: self.identity.to_string(),
                from: from.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const MESSAGE: &[u8] = b"Received: from x\r\nFrom: Alice <Alice@A.test>\r\nTo: bob@b.test\r\n\
Subject: hello  there\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHi Bob,\r\n\r\nsee you\r\n\r\n";

    fn sign(master: &MasterKey, message: &[u8], who: &str) -> Vec<u8> {
        let id = Identity::parse(who).unwrap();
        let unsigned = Unsigned::new(message, &id, 1);
        let sig = master
            .extract_signing(&id, 1)
            .sign(unsigned.digest(), &mut ChaCha20Rng::seed_from_u64(1));
        unsigned.prepend(message, &sig)
    }

    fn verify(master: &MasterKey, message: &[u8]) -> Result<Parsed, SignatureError> {
        let parsed = signatures(message).remove(0)?;
        parsed.verify(message, &master.signing_params())?;
        Ok(parsed)
    }

    fn master() -> MasterKey {
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(9))
    }

    #[test]
    fn rfc6376_relaxed_example() {
        // RFC 6376 §3.4.5.
        let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let section = HeaderSection::parse(message);
        let mut headers = Vec::new();
        canonical_headers(&section, &["a".into(), "b".into()], &mut headers);
        assert_eq!(headers, b"a:X\r\nb:Y Z\r\n");
        let mut expected = Sha256::new();
        expected.update(b" C\r\nD E\r\n");
        assert_eq!(
            body_hash(&message[section.body_offset..]),
            <[u8; 32]>::from(expected.finalize())
        );
        // An empty body, or one of blank lines only, hashes as empty.
        assert_eq!(body_hash(b""), body_hash(b"\r\n\r\n"));
        assert_eq!(body_hash(b"x"), body_hash(b"x\r\n"));
    }

    #[test]
    fn signed_messages_verify_and_survive_relaxed_changes() {
        let master = master();
        let signed = sign(&master, MESSAGE, "alice@a.test");
        let parsed = verify(&master, &signed).unwrap();
        assert_eq!(parsed.identity.as_str(), "alice@a.test");
        assert_eq!(parsed.generation, 1);
        // What relaxed canonicalization forgives: refolding, case of field
        // names, trailing whitespace, added blank lines at the end, an
        // added unsigned trace field on top.
        let text = String::from_utf8(signed.clone()).unwrap();
        let changed = format!(
            "Received: from y\r\n{}\r\n\r\n",
            text.replace("Subject: hello  there", "subject:   hello\r\n there   ")
                .replace("see you\r\n", "see you \t\r\n")
        );
        verify(&master, changed.as_bytes()).unwrap();
    }

    #[test]
    fn changes_to_signed_parts_fail() {
        let master = master();
        let signed = sign(&master, MESSAGE, "alice@a.test");
        let text = String::from_utf8(signed).unwrap();
        for (from, to, expect_body) in [
            ("see you", "see yoU", true),
            ("Hi Bob", "Hi Bob!", true),
            ("hello  there", "hello  thera", false),
            ("To: bob@b.test", "To: eve@b.test", false),
            ("Date: Mon", "Date: Tue", false),
            ("n=1;", "n=2;", false),
            ("i=alice@a.test", "i=bob@a.test", false),
        ] {
            let changed = text.replacen(from, to, 1);
            let err = verify(&master, changed.as_bytes()).unwrap_err();
            if expect_body {
                assert_eq!(err, SignatureError::BodyHash, "{from}");
            } else {
                assert!(
                    matches!(
                        err,
                        SignatureError::BadSignature | SignatureError::FromMismatch { .. }
                    ),
                    "{from}: {err:?}"
                );
            }
        }
        // Any signed field added on top (over-signed) breaks it.
        for added in [
            "From: mallory@a.test",
            "Reply-To: attacker@evil.test",
            "Subject: URGENT new bank details",
            "To: other@b.test",
            "Sender: attacker@evil.test",
        ] {
            let changed = format!("{added}\r\n{text}");
            assert!(
                verify(&master, changed.as_bytes()).is_err(),
                "{added} on top still verifies"
            );
        }
    }

    #[test]
    fn a_valid_signature_of_another_user_is_a_from_mismatch() {
        let master = master();
        // Bob signs a message that claims to be from Alice.
        let signed = sign(&master, MESSAGE, "bob@a.test");
        assert_eq!(
            verify(&master, &signed).unwrap_err(),
            SignatureError::FromMismatch {
                signer: "bob@a.test".into(),
                from: "alice@a.test".into()
            }
        );
        // Replayed onto another message, Alice's signature fails.
        let alice = sign(&master, MESSAGE, "alice@a.test");
        let field_end = alice.windows(2).position(|w| w == b"\r\n").unwrap();
        let mut field_end = field_end + 2;
        while matches!(alice[field_end], b' ' | b'\t') {
            field_end += alice[field_end..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .unwrap()
                + 2;
        }
        let other = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: other\r\n\r\nbody\r\n";
        let mut replayed = alice[..field_end].to_vec();
        replayed.extend_from_slice(other);
        assert!(verify(&master, &replayed).is_err());
    }

    #[test]
    fn wrong_parameters_fail() {
        let master = master();
        let signed = sign(&master, MESSAGE, "alice@a.test");
        let other = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(10));
        assert_eq!(
            verify(&other, &signed).unwrap_err(),
            SignatureError::BadSignature
        );
    }

    #[test]
    fn from_addresses_are_found_or_refused() {
        for (value, expected) in [
            ("alice@a.test", Some("alice@a.test")),
            ("Alice <ALICE@a.test>", Some("ALICE@a.test")),
            (
                "\"Smith, Alice\" <alice@a.test> (work)",
                Some("alice@a.test"),
            ),
            ("alice@a.test (Alice <x@y>)", Some("alice@a.test")),
            ("a@a.test, b@a.test", None),
            ("undisclosed:;", None),
            ("", None),
            ("Alice <alice@a.test", None),
            // A display name showing another address than the one signed.
            ("<ceo@bank.test> <mallory@a.test>", None),
            ("<ceo@bank.test> \"<mallory@a.test>\"", None),
            ("ceo@bank.test \"<mallory@a.test>\"", None),
            ("=?utf-8?q?ceo@bank.test?= <mallory@a.test>", None),
            ("=?utf-8?b?Y2VvQGJhbmsudGVzdA==?= <mallory@a.test>", None),
            ("\"ceo@bank.test\" <mallory@a.test>", None),
            ("<mallory@a.test> trailing", None),
            // ...but a display name that is the address itself is fine,
            // and so are encoded names without one.
            ("\"alice@a.test\" <alice@a.test>", Some("alice@a.test")),
            (
                "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <joerg@a.test>",
                Some("joerg@a.test"),
            ),
            ("\"M\\\"uller, Hans\" <hans@a.test>", Some("hans@a.test")),
            ("no-at-sign", None),
            // Not a dot-atom: could not stand in i= (`;` splits tags).
            ("`Bof <;ob@b.test>", None),
            ("\"a;b\"@a.test", None),
            ("a..b@a.test", None),
            ("o'brien+tag@a.test", Some("o'brien+tag@a.test")),
        ] {
            assert_eq!(mailbox_address(value).as_deref(), expected, "{value}");
        }
        assert_eq!(
            from_address(b"From: a@a.test\r\nFrom: b@a.test\r\n\r\n"),
            Err(SignatureError::NoFrom)
        );
        assert_eq!(
            from_address(b"From: Alice <Alice@A.Test>\r\n\r\n")
                .unwrap()
                .as_str(),
            "alice@a.test"
        );
    }

    #[test]
    fn malformed_fields_are_syntax_errors() {
        for value in [
            &b" v=1; a=cc-bls12-381-sha256"[..],
            b" v=2; a=cc-bls12-381-sha256; i=a@b; n=1; h=from; bh=AA==; b=AA==",
            b" v=1; a=rsa-sha256; i=a@b; n=1; h=from; bh=AA==; b=AA==",
            b" v=1; v=1",
            b" garbage",
        ] {
            assert!(Parsed::parse(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn many_fields_fold_and_the_sealed_flag_round_trips() {
        let master = master();
        let alice = Identity::parse("alice@a.test").unwrap();
        let mut message = String::from("From: alice@a.test\r\n");
        for i in 0..300 {
            message.push_str(&format!("To: user{i}@b.test\r\n"));
        }
        message.push_str("\r\nbody\r\n");
        let unsigned = Unsigned::new_sealed(message.as_bytes(), &alice, 1);
        let signature = master
            .extract_signing(&alice, 1)
            .sign(unsigned.digest(), &mut ChaCha20Rng::seed_from_u64(3));
        let value = unsigned.field_value(&signature);
        assert!(
            value.split("\r\n").all(|line| line.len() < 80),
            "unfolded line in {value}"
        );
        let signed = unsigned.prepend(message.as_bytes(), &signature);
        let parsed = verify(&master, &signed).unwrap();
        assert!(parsed.sealed);
        assert!(
            !Parsed::parse(
                Unsigned::new(b"From: a@b\r\n\r\n", &alice, 1)
                    .field_value(&signature)
                    .as_bytes()
            )
            .unwrap()
            .sealed
        );
        // An h= far longer than any signer writes is refused unread.
        let long = format!(
            " v=1; a={ALGORITHM}; i=a@a.test; n=1; h=from{}; bh=AA==; b=AA==",
            ":to".repeat(MAX_H_ENTRIES)
        );
        assert!(matches!(
            Parsed::parse(long.as_bytes()),
            Err(SignatureError::Syntax(e)) if e.contains("h= lists")
        ));
    }

    #[test]
    fn b_value_removal_keeps_everything_else() {
        assert_eq!(
            without_b_value(b" v=1; bh=xyz;\r\n\tb=abc\r\n\t def"),
            b" v=1; bh=xyz;\r\n\tb="
        );
        assert_eq!(without_b_value(b" b=abc; v=1"), b" b=; v=1");
    }
}
