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
//! | `a` | algorithm: Cha–Cheon IBS on BLS12-381 over a SHA-256 digest, or Ed25519 under a key certified by Cha–Cheon ([`Algorithm`]) |
//! | `c` | canonicalization, always `relaxed/relaxed` |
//! | `i` | the signer's address (normalised); its domain publishes `S=` |
//! | `n` | the parameter generation of the signer's domain |
//! | `e` | `1` when the message was sealed right after signing: a receiver fails the signature if it arrives outside an encrypted message (absent otherwise) |
//! | `h` | signed header fields, DKIM order (bottom-up per name); every name of [`SIGNED_FIELDS`] is listed once more than it occurs, so none can be added on top later; folded at colons |
//! | `bh` | SHA-256 of the relaxed-canonical body |
//! | `b` | the signature of the digest below (with `ed25519-cc-sha256`: certificate, key and signature) |
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

mod canon;
mod from;
mod sign;
#[cfg(test)]
mod tests;
mod verify;

use ibemail_ibe::{CertifiedSignature, Generation, Signature};
use thiserror::Error;

pub use canon::body_hash;
pub use from::from_address;
pub use sign::Unsigned;
pub use verify::{MAX_SIGNATURES, Parsed, signatures};

/// The header field name.
pub const SIGNATURE_FIELD: &str = "IBE-Signature";
/// The `a=` value of a Cha–Cheon signature of the digest.
pub const ALGORITHM: &str = "cc-bls12-381-sha256";
/// The `a=` value of a certified signature: Ed25519 of the digest under a
/// key the signer's KGC certified (spec 8.5).
pub const CERTIFIED_ALGORITHM: &str = "ed25519-cc-sha256";

/// How the digest is signed (`a=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `cc-bls12-381-sha256`: a Cha–Cheon signature (192 bytes); a
    /// pairing check per message.
    ChaCheon,
    /// `ed25519-cc-sha256`: certificate ‖ Ed25519 key ‖ Ed25519 signature
    /// (288 bytes); a pairing check per sender and generation, then an
    /// Ed25519 check per message.
    Certified,
}

impl Algorithm {
    /// The `a=` value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ChaCheon => ALGORITHM,
            Algorithm::Certified => CERTIFIED_ALGORITHM,
        }
    }

    /// The algorithm an `a=` value names, if known.
    pub fn from_name(name: &str) -> Option<Self> {
        [Algorithm::ChaCheon, Algorithm::Certified]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// A signature of a digest, of either [`Algorithm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageSignature {
    /// Cha–Cheon.
    ChaCheon(Signature),
    /// Certified Ed25519.
    Certified(CertifiedSignature),
}

impl MessageSignature {
    /// Its algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            MessageSignature::ChaCheon(_) => Algorithm::ChaCheon,
            MessageSignature::Certified(_) => Algorithm::Certified,
        }
    }

    /// Its encoding (`b=` before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            MessageSignature::ChaCheon(s) => s.to_bytes().to_vec(),
            MessageSignature::Certified(s) => s.to_bytes().to_vec(),
        }
    }
}

impl From<Signature> for MessageSignature {
    fn from(s: Signature) -> Self {
        MessageSignature::ChaCheon(s)
    }
}

impl From<CertifiedSignature> for MessageSignature {
    fn from(s: CertifiedSignature) -> Self {
        MessageSignature::Certified(s)
    }
}
/// Most occurrences of one field name signed (the rest of a message with
/// more, e.g. hundreds of `To` fields, stays unsigned).
pub(crate) const MAX_SIGNED_PER_NAME: usize = 64;
/// Most `h=` entries accepted when verifying (bounds the work per
/// signature).
pub(crate) const MAX_H_ENTRIES: usize = SIGNED_FIELDS.len() * (MAX_SIGNED_PER_NAME + 1);

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
