//! # ibemail-message
//!
//! Sealing and opening whole RFC 5322 messages (`docs/spec.md`). No I/O: bytes
//! in, bytes out; randomness and the capsule-opening function come from the
//! caller.
//!
//! A sealed message is an S/MIME `application/pkcs7-mime;
//! smime-type=authEnveloped-data` message whose body is a CMS
//! `AuthEnvelopedData` (RFC 5083) with AES-256-GCM (RFC 5084) and one
//! `KEMRecipientInfo` (RFC 9629) per recipient; see [`cms`] for the exact
//! structure. Anything that parses S/MIME can at least parse it
//! (`openssl cms -cmsout -print` does, in the tests).
//!
//! ```
//! use ibemail_ibe::{Identity, MasterKey};
//! use ibemail_message::{IbeRecipient, Limits, Recipient, open, seal};
//! use rand_core::OsRng;
//!
//! let kgc = MasterKey::generate(&mut OsRng);
//! let bob = Identity::parse("bob@b.test")?;
//! let recipient = IbeRecipient { identity: bob.clone(), generation: 1, params: kgc.public_params() };
//!
//! let original = b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello\r\n";
//! let sealed = seal(original, &[&recipient as &dyn Recipient], &mut OsRng, &Limits::default())?.to_bytes();
//!
//! let opened = open(&sealed, &[bob], &Limits::default(), |id, generation, capsule| {
//!     Ok(kgc.extract(id, generation).decapsulate(&kgc.public_params(), capsule)
//!         .map_err(|_| ibemail_message::CapsuleError::Rejected)?)
//! })?;
//! assert_eq!(opened.message, original);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Header protection
//!
//! The encrypted content is the original message, every header and body
//! byte unchanged, so opening restores it exactly. The outer header keeps
//! only what delivery needs ([`OUTER_FIELDS`]), an obscured `Subject: [...]`
//! (RFC 9788's baseline policy) and the S/MIME MIME fields.
//!
//! Departure from RFC 9788: we do not add `hp="cipher"` and `HP-Outer` fields
//! to the inner message, because that would change its bytes and its
//! Content-Type (which may be absent or malformed in real mail). ibemail
//! decrypts on the receiving server, before delivery, so no mail client ever
//! sees the inner part as a protected payload.
//!
//! ## Recipients and Bcc
//!
//! A recipient is identified by `SHA-256("IBEMAIL-V1-RID" ‖ salt ‖ address)`
//! with a fresh 16-byte salt per recipient (carried in `ukm`, which also feeds
//! the key derivation), so a server learns nothing about the other
//! recipients beyond their number. It can *confirm a guess* of an address,
//! which is inherent in matching without trial decryption.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod b64;
pub mod cms;
mod detect;
mod error;
mod frame;
pub mod header;
mod open;
mod protocol;
mod seal;
pub mod signature;
pub mod transit;

pub use detect::is_cms_encrypted;
pub use error::{CapsuleError, LimitExceeded, Malformed, OpenError, SealError};
pub use open::{
    Candidate, Envelope, Opened, inspect, inspect_owned, is_encrypted, open, open_owned,
};
pub use protocol::{MessageSigner, seal_signed, sign_message, signature_field};
pub use seal::{
    ContentKey, Field, IbeRecipient, OBSCURED_SUBJECT, Recipient, SMIME_FIELDS, Sealed, seal,
    seal_owned,
};

/// Header fields copied from the original to the outside of a sealed
/// message (case-insensitive): trace fields, which MTAs need for loop
/// detection, and the addressing fields delivery and threading need. Every
/// other field — Subject included — is only inside.
pub const OUTER_FIELDS: [&str; 7] = [
    "Return-Path",
    "Received",
    "From",
    "To",
    "Cc",
    "Date",
    "Message-ID",
];

/// Size and structure limits, enforced with errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message sealed, and largest sealed message opened, in bytes.
    pub max_message_bytes: usize,
    /// Most recipients sealed to, and most RecipientInfos accepted.
    pub max_recipients: usize,
    /// Most nested ibemail layers removed when opening.
    pub max_nesting: usize,
}

impl Default for Limits {
    /// 100 MiB, 1000 recipients (Postfix's `smtpd_recipient_limit`), 3 layers.
    fn default() -> Self {
        Limits {
            max_message_bytes: 100 << 20,
            max_recipients: 1000,
            max_nesting: 3,
        }
    }
}
