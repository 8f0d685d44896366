//! One way to reach keys, whoever holds them: [`KeyAccess`], implemented by
//! the in-process [`KeyService`](crate::service::KeyService) (keys in this
//! process) and by [`KgcClient`](crate::client::KgcClient) (the daemon over
//! its socket). Callers — the milter, its offline commands, its doctor —
//! hold an `Arc<dyn KeyAccess>` and never match on which one it is.
//!
//! One vocabulary: [`KeyAccess::served`] (the domains and the generation
//! each signs with), [`KeyAccess::open`], [`KeyAccess::sign`], and one error
//! type, [`KeyError`], whose [`KeyError::is_temporary`] says whether mail
//! should wait (the key service is unreachable or misconfigured) or cannot
//! be helped by waiting (the generation is gone, the capsule is not for
//! this identity).

use std::future::Future;
use std::pin::Pin;

use ibemail_ibe::{Capsule, CertifiedSignature, Generation, Identity, SharedSecret, Signature};
use thiserror::Error;

/// A boxed future, for the object-safe [`KeyAccess`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a key operation failed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The key service cannot be reached or failed internally: try later.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// The key service does not grant this caller the operation (a
    /// configuration mistake, fixed without the mail: try later).
    #[error("not granted: {0}")]
    Forbidden(String),
    /// The identity's domain is not served here.
    #[error("not served here: {0}")]
    NotServed(String),
    /// The request is malformed (an identity that does not parse).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The generation does not exist.
    #[error("generation {0} does not exist")]
    UnknownGeneration(Generation),
    /// The generation was retired; its key is gone.
    #[error("generation {0} was retired")]
    Retired(Generation),
    /// The capsule does not open with the identity's key.
    #[error("capsule rejected")]
    Rejected,
}

impl KeyError {
    /// True if the same request may succeed later without anything about
    /// the message changing.
    pub fn is_temporary(&self) -> bool {
        matches!(self, KeyError::Unavailable(_) | KeyError::Forbidden(_))
    }
}

/// Access to the keys of the domains a key service serves.
pub trait KeyAccess: Send + Sync {
    /// The domains served, each with the generation it signs with now.
    fn served(&self) -> BoxFuture<'_, Result<Vec<(String, Generation)>, KeyError>>;

    /// Opens `capsule`, sealed to `identity` at `generation`.
    fn open<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        capsule: &'a Capsule,
    ) -> BoxFuture<'a, Result<SharedSecret, KeyError>>;

    /// Signs `digest` as `identity` with its key of `generation`.
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<Signature, KeyError>>;

    /// Signs `digest` as `identity` with its certified per-message key of
    /// `generation` (`ed25519-cc-sha256`).
    fn sign_certified<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<CertifiedSignature, KeyError>>;

    /// The generation `identity`'s domain signs with now.
    fn signing_generation<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Generation, KeyError>> {
        Box::pin(async move {
            self.served()
                .await?
                .into_iter()
                .find(|(domain, _)| domain == identity.domain())
                .map(|(_, generation)| generation)
                .ok_or_else(|| {
                    KeyError::NotServed(format!("the KGC has no key for {}", identity.domain()))
                })
        })
    }
}
