//! Error types of sealing and opening.

use ibemail_ibe::{EncapsulationError, Generation};
use thiserror::Error;

/// A configured limit that a message exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LimitExceeded {
    /// The message is larger than `Limits::max_message_bytes`.
    #[error("message of {actual} bytes exceeds the limit of {limit} bytes")]
    MessageSize {
        /// The limit.
        limit: usize,
        /// The message size.
        actual: usize,
    },
    /// More recipients than `Limits::max_recipients`.
    #[error("{actual} recipients exceed the limit of {limit}")]
    Recipients {
        /// The limit.
        limit: usize,
        /// The number of recipients.
        actual: usize,
    },
    /// More nested layers of encryption than `Limits::max_nesting`.
    #[error("more than {limit} nested layers of encryption")]
    Nesting {
        /// The limit.
        limit: usize,
    },
}

/// Ways in which a sealed message is structurally wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The DER ends early or a length points past the end.
    #[error("truncated DER")]
    Truncated,
    /// DER rule violated (BER forms, non-minimal lengths, multi-byte tags).
    #[error("invalid DER: {0}")]
    Der(&'static str),
    /// A structure has the wrong tag.
    #[error("unexpected tag for {0}")]
    UnexpectedTag(&'static str),
    /// Bytes after the end of a structure.
    #[error("trailing data after {0}")]
    TrailingData(&'static str),
    /// The MIME body is not valid base64, or not base64-encoded at all.
    #[error("body is not valid base64")]
    Base64,
    /// A structure uses a version, algorithm or option we do not implement.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A field has an invalid value.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The `der`/`cms` decoder rejected a recipient info.
    #[error("recipient info: {0}")]
    RecipientInfo(String),
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SealError {
    /// No recipients were given.
    #[error("no recipients")]
    NoRecipients,
    /// A limit was exceeded.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The KEM could not encapsulate for a recipient.
    #[error("cannot encapsulate for {identity}: {source}")]
    Encapsulation {
        /// The recipient.
        identity: String,
        /// The KEM error.
        source: EncapsulationError,
    },
    /// Encoding the CMS structure failed (an internal error).
    #[error("CMS encoding failed: {0}")]
    Encoding(String),
    /// The signer could not sign (the key service's reason).
    #[error("signing failed: {0}")]
    Signing(String),
}

/// What an opener (the KGC, in process or over its socket) reports when it
/// cannot open a capsule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CapsuleError {
    /// The KGC has no key for this generation (never had, or retired).
    #[error("no key for generation {0}")]
    UnknownGeneration(Generation),
    /// The capsule did not open with the recipient's key.
    #[error("capsule rejected")]
    Rejected,
    /// The key service is temporarily unavailable; try again later.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// The key service refused the request (permissions, identity not served).
    #[error("key service refused: {0}")]
    Refused(String),
}

impl CapsuleError {
    /// True for failures that may succeed later (the mail should be kept
    /// in the queue, not quarantined).
    pub fn is_temporary(&self) -> bool {
        matches!(self, CapsuleError::Unavailable(_))
    }
}

/// Why a message could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The message is not an S/MIME authEnveloped-data message.
    #[error("not an encrypted message")]
    NotEncrypted,
    /// S/MIME, but without any ibemail recipient: someone else's encryption.
    #[error("encrypted, but not with ibemail")]
    NotOurs,
    /// ibemail recipients, but none of them is a local recipient.
    #[error("no recipient of this message is among the local recipients")]
    NoMatchingRecipient,
    /// The KGC has no key for the generation the message was sealed under.
    #[error("sealed under generation {0}, for which the KGC has no key (retired or unknown)")]
    UnknownGeneration(Generation),
    /// Some integrity check failed: the message was forged or corrupted.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(&'static str),
    /// The structure is not a valid sealed message.
    #[error("malformed message: {0}")]
    Malformed(#[from] Malformed),
    /// A limit was exceeded.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// The key service failed; `temporary` says whether to retry.
    #[error("key service: {0}")]
    KeyService(CapsuleError),
}

impl OpenError {
    /// True for failures that may succeed later; everything else is final
    /// for this message (quarantine it).
    pub fn is_temporary(&self) -> bool {
        matches!(self, OpenError::KeyService(e) if e.is_temporary())
    }
}
