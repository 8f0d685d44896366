//! Error types, one enum per operation, each variant named for what went wrong.

use thiserror::Error;

/// Why an address is not a usable identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The address has no `@`.
    #[error("address has no '@'")]
    MissingAt,
    /// Nothing before the `@`.
    #[error("address has an empty local part")]
    EmptyLocalPart,
    /// The local part contains control characters, spaces or angle brackets.
    #[error("address local part contains a space, control character or angle bracket")]
    InvalidLocalPart,
    /// The local part is longer than 64 octets.
    #[error("address local part is longer than 64 octets")]
    LocalPartTooLong,
    /// Nothing after the `@`.
    #[error("address has an empty domain")]
    EmptyDomain,
    /// The domain is an address literal such as `[192.0.2.1]`.
    #[error("address literals have no identity-based keys")]
    AddressLiteral,
    /// The domain is not a valid (internationalised) host name.
    #[error("address domain is not a valid host name")]
    InvalidDomain,
    /// The domain is longer than 253 octets.
    #[error("address domain is longer than 253 octets")]
    DomainTooLong,
}

/// Why a byte string is not a valid key, parameter or capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input has the wrong length.
    #[error("{what}: expected {expected} bytes, got {actual}")]
    Length {
        /// What was being decoded.
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The bytes are not the compressed encoding of a point on the curve.
    #[error("{what}: not a valid compressed point on BLS12-381")]
    NotOnCurve {
        /// What was being decoded.
        what: &'static str,
    },
    /// The point is on the curve but outside the prime-order subgroup.
    #[error("{what}: point is not in the prime-order subgroup")]
    NotInSubgroup {
        /// What was being decoded.
        what: &'static str,
    },
    /// The point is the identity (point at infinity), never valid here.
    #[error("{what}: point at infinity")]
    IdentityPoint {
        /// What was being decoded.
        what: &'static str,
    },
    /// The scalar is not the canonical encoding of a value below the group order.
    #[error("{what}: scalar is not canonical (not below the group order)")]
    NonCanonicalScalar {
        /// What was being decoded.
        what: &'static str,
    },
    /// The scalar is zero, never valid here.
    #[error("{what}: scalar is zero")]
    ZeroScalar {
        /// What was being decoded.
        what: &'static str,
    },
    /// The key does not belong to the given public parameters and identity.
    #[error("user key does not match the public parameters and identity")]
    KeyMismatch,
}

impl DecodeError {
    /// What was being decoded when the error occurred, e.g. `"parameter Y"`.
    pub fn what(&self) -> &'static str {
        match self {
            DecodeError::Length { what, .. }
            | DecodeError::NotOnCurve { what }
            | DecodeError::NotInSubgroup { what }
            | DecodeError::IdentityPoint { what }
            | DecodeError::NonCanonicalScalar { what }
            | DecodeError::ZeroScalar { what } => what,
            DecodeError::KeyMismatch => "user key",
        }
    }
}

/// Why a capsule could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncapsulationError {
    /// The identity hashes to `-x`, so no capsule exists for it under these
    /// parameters. This happens with probability 2^-255 for honest parameters.
    #[error("identity is degenerate for these public parameters")]
    DegenerateIdentity,
}

/// Why a capsule could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecapsulationError {
    /// The capsule was not created for this identity, generation and
    /// parameters, or it was modified: the Fujisaki-Okamoto check failed.
    #[error("capsule rejected: not for this key, or modified")]
    Rejected,
}

/// Why a signature does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The pairing equation does not hold: wrong signer, generation,
    /// parameters or message, or a forged signature.
    #[error("signature does not verify")]
    BadSignature,
}
