//! Making a signature: [`Unsigned`], then the signer's `b=`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{Generation, Identity};

use super::canon::*;
use super::*;
use crate::Sealed;
use crate::header::HeaderSection;

// ---------------------------------------------------------------------------
// Signing

/// A signature being made: everything but `b=`.
#[derive(Clone, Debug)]
pub struct Unsigned {
    identity: Identity,
    generation: Generation,
    sealed: bool,
    algorithm: Algorithm,
    signed_fields: Vec<String>,
    body_hash: [u8; 32],
    digest: [u8; 32],
}

pub(super) fn tags_without_b(
    algorithm: Algorithm,
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
        " v=1; a={}; c=relaxed/relaxed; i={identity}; n={generation};{sealed}\r\n\th={h_text};\r\n\tbh={};\r\n\tb=",
        algorithm.name(),
        STANDARD.encode(bh)
    )
}

impl Unsigned {
    /// Prepares a signature of `message` by `identity` (normally its From
    /// address) at `generation`, for a message that travels as it is.
    pub fn new(
        message: &[u8],
        identity: &Identity,
        generation: Generation,
        algorithm: Algorithm,
    ) -> Unsigned {
        Self::build(message, identity, generation, false, algorithm)
    }

    /// The same for a message that is sealed right after signing: the
    /// signature carries `e=1`, and a receiver fails it if it arrives
    /// outside an encrypted message (someone decrypted it on the way).
    pub fn new_sealed(
        message: &[u8],
        identity: &Identity,
        generation: Generation,
        algorithm: Algorithm,
    ) -> Unsigned {
        Self::build(message, identity, generation, true, algorithm)
    }

    /// Prepares a signature of the sealed message `sealed` (its outside),
    /// without putting the message together.
    pub fn for_sealed(
        sealed: &Sealed,
        identity: &Identity,
        generation: Generation,
        algorithm: Algorithm,
    ) -> Unsigned {
        let mut header = sealed.header();
        header.extend_from_slice(b"\r\n");
        Self::from_parts(
            &header,
            &sealed.body,
            identity,
            generation,
            false,
            algorithm,
        )
    }

    fn build(
        message: &[u8],
        identity: &Identity,
        generation: Generation,
        sealed: bool,
        algorithm: Algorithm,
    ) -> Unsigned {
        let section = HeaderSection::parse(message);
        let (header, body) = message.split_at(section.body_offset);
        Self::from_parts(header, body, identity, generation, sealed, algorithm)
    }

    /// From the header section (with or without its blank line) and the
    /// body, apart.
    fn from_parts(
        header: &[u8],
        body: &[u8],
        identity: &Identity,
        generation: Generation,
        sealed: bool,
        algorithm: Algorithm,
    ) -> Unsigned {
        let section = HeaderSection::parse(header);
        let mut h = Vec::new();
        for name in SIGNED_FIELDS {
            // Each field once more than it occurs (DKIM "over-signing"):
            // a field of these names added later, on top, breaks the
            // signature instead of being shown under it.
            let count = section.fields.iter().filter(|f| f.is(name)).count();
            let count = count.min(MAX_SIGNED_PER_NAME) + 1;
            h.extend(std::iter::repeat_n(name.to_ascii_lowercase(), count));
        }
        let body_hash = body_hash(body);
        let value = tags_without_b(algorithm, identity, generation, sealed, &h, &body_hash);
        let digest = digest(&section, &h, value.as_bytes());
        Unsigned {
            identity: identity.clone(),
            generation,
            sealed,
            algorithm,
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
    /// `signature` in `b=`; `Err` if the signature is not of the algorithm
    /// this was prepared for (the digest names that algorithm).
    pub fn field_value(&self, signature: &MessageSignature) -> Result<String, SignatureError> {
        if signature.algorithm() != self.algorithm {
            return Err(SignatureError::Unsupported(format!(
                "a {} signature for a field of a={}",
                signature.algorithm().name(),
                self.algorithm.name()
            )));
        }
        let mut value = tags_without_b(
            self.algorithm,
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
        Ok(value)
    }

    /// `message` with the complete field prepended.
    pub fn prepend(
        &self,
        message: &[u8],
        signature: &MessageSignature,
    ) -> Result<Vec<u8>, SignatureError> {
        let value = self.field_value(signature)?;
        let mut out = Vec::with_capacity(message.len() + value.len() + 20);
        out.extend_from_slice(SIGNATURE_FIELD.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}
