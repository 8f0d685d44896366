//! # ibemail-ibe
//!
//! The identity-based key encapsulation mechanism of ibemail: the Boneh–Boyen
//! "exponent inversion" scheme (BB2) on BLS12-381, made IND-ID-CCA secure with
//! a Fujisaki–Okamoto transform. A recipient's e-mail address is their public
//! key; their domain's key generation center (KGC) holds the [`MasterKey`] and
//! derives [`UserKey`]s on demand.
//!
//! ```
//! use ibemail_ibe::{Identity, MasterKey, encapsulate};
//! use rand_core::OsRng;
//!
//! let master = MasterKey::generate(&mut OsRng);
//! let params = master.public_params(); // published in DNS
//! let alice = Identity::parse("Alice@B.test")?;
//!
//! // The sender needs only the parameters and the address.
//! let (capsule, secret) = encapsulate(&params, &alice, 1, &mut OsRng)?;
//!
//! // The KGC derives Alice's key and opens the capsule.
//! let key = master.extract(&alice, 1);
//! assert_eq!(key.decapsulate(&params, &capsule)?, secret);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! It also has the matching identity-based signature (Cha–Cheon, in
//! [`SigningKey::sign`] and [`verify`]): the KGC signs as a user, anyone
//! with the domain's signing parameter `S` verifies; and certified
//! per-message signatures ([`CertifiedKey`], [`verify_certified`]): a
//! Cha–Cheon certificate on a user's Ed25519 key, which a receiver checks
//! once per sender, and an Ed25519 signature per message.
//!
//! ## What this crate does not do
//!
//! No I/O of any kind: no files, sockets, clocks or global RNG. Randomness is
//! passed in by the caller. Storage of master keys, DNS publication and
//! message formats live in other crates. See `SECURITY.md` for the scheme, the
//! hash domains, the proofs this construction relies on and what is not
//! protected.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod certified;
mod continuity;
mod error;
mod fixed_base;
mod hash;
mod ibs;
mod identity;
mod kem;

pub use certified::{
    CERTIFIED_SIGNATURE_BYTES, CertifiedKey, CertifiedSignature, MESSAGE_KEY_BYTES,
    MESSAGE_SIGNATURE_BYTES, certified_equation, verify_certified,
};
pub use continuity::{
    CONTINUITY_SIGNATURE_BYTES, ContinuitySignature, Successor, verify_successor,
};
pub use error::{DecapsulationError, DecodeError, EncapsulationError, IdentityError, VerifyError};
pub use ibs::{
    Equation, SIGNATURE_BYTES, SIGNING_PARAMS_BYTES, Signature, SigningKey, SigningParams,
    all_hold, equation, verify,
};
pub use identity::{Identity, MAX_DOMAIN, MAX_LOCAL_PART, normalize_domain};
pub use kem::{
    CAPSULE_BYTES, Capsule, G1_BYTES, G2_BYTES, Generation, MASTER_KEY_BYTES, MasterKey,
    PUBLIC_PARAMS_BYTES, PublicParams, SCALAR_BYTES, SHARED_SECRET_BYTES, SharedSecret,
    USER_KEY_BYTES, UserKey, encapsulate, encapsulate_with_seed, hazmat, identity_scalar,
};

/// Re-exported so callers can name the RNG traits this crate takes.
pub use rand_core;
