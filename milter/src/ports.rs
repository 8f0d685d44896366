//! What the engine needs from outside, as traits: the engine is a core
//! with ports, so that its policy can be tested with fakes, in
//! milliseconds, without DNS, a KGC or an SMTP server.
//!
//! - [`Parameters`]: recipient and signer domains' parameters (DNS, in
//!   [`Discovery`]);
//! - [`KeyAccess`] (from `ibemail-kgc`): opening capsules and signing, in
//!   process or through the KGC daemon;
//! - [`Reinjector`]: sending a plaintext copy back into Postfix (SMTP, in
//!   [`SmtpReinjector`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ibemail_discovery::{Discovery, DomainPolicy, Lookup};
pub use ibemail_kgc::access::{BoxFuture, KeyAccess, KeyError};

use crate::reinject::{self, Envelope};

/// Where domains' parameters come from.
pub trait Parameters: Send + Sync {
    /// `domain`'s parameters, to send to it.
    fn lookup<'a>(
        &'a self,
        domain: &'a str,
        policy: DomainPolicy,
        now: u64,
    ) -> BoxFuture<'a, Lookup>;

    /// `domain`'s parameters, to verify a signature its mail claims.
    fn lookup_signer<'a>(
        &'a self,
        domain: &'a str,
        policy: DomainPolicy,
        now: u64,
    ) -> BoxFuture<'a, Lookup>;

    /// Drops `domain`'s cached answer (rate-limited); false if refused.
    fn forget(&self, domain: &str) -> bool;
}

impl Parameters for Discovery {
    fn lookup<'a>(
        &'a self,
        domain: &'a str,
        policy: DomainPolicy,
        now: u64,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(Discovery::lookup(self, domain, policy, now))
    }

    fn lookup_signer<'a>(
        &'a self,
        domain: &'a str,
        policy: DomainPolicy,
        now: u64,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(Discovery::lookup_signer(self, domain, policy, now))
    }

    fn forget(&self, domain: &str) -> bool {
        Discovery::forget(self, domain)
    }
}

/// Sends a plaintext copy back into Postfix.
pub trait Reinjector: Send + Sync {
    /// Sends `message` with `envelope`; `Err` with the reason if the copy
    /// was not accepted.
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The re-injection listener over SMTP.
#[derive(Clone, Debug)]
pub struct SmtpReinjector {
    /// The listener.
    pub target: SocketAddr,
    /// Our HELO name.
    pub helo: String,
    /// Time allowed for the whole transaction.
    pub timeout: Duration,
}

impl Reinjector for SmtpReinjector {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(reinject::send(
            self.target,
            &self.helo,
            envelope,
            message,
            self.timeout,
        ))
    }
}

/// The engine's ports.
#[derive(Clone)]
pub struct Ports {
    /// Domains' parameters.
    pub parameters: Arc<dyn Parameters>,
    /// Keys, if this milter opens or signs mail.
    pub keys: Option<Arc<dyn KeyAccess>>,
    /// Re-injection, if configured.
    pub reinjector: Option<Arc<dyn Reinjector>>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ports")
            .field("keys", &self.keys.is_some())
            .field("reinjector", &self.reinjector.is_some())
            .finish()
    }
}
