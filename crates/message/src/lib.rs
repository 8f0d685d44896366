//! # ibemail-message
//!
//! Will own sealing and opening of whole messages (DESIGN.md §5): CMS
//! AuthEnvelopedData with AES-256-GCM, one KEMRecipientInfo per recipient,
//! header protection. No I/O. (Not implemented yet.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]
