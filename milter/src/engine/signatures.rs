//! Signatures and the engine: who signs outbound mail and with which
//! generation, asking the key service to sign, verifying inbound
//! signatures, and the per-domain signature policy (`report` or
//! `require`) applied to the result.

use std::sync::Arc;

use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::logging::shown;
use ibemail_message::MessageSigner;
use ibemail_message::signature::{self, Algorithm, MessageSignature};
use tracing::{info, warn};

use super::Engine;
use super::verdict::{Action, Kind, Message, Note, Origin, Reply, Verdict};
use crate::address::canonical;
use crate::config::{SignPolicy, SignaturePolicy};
use crate::metrics::Metrics;
use crate::ports::{KeyAccess, KeyError};
use crate::signing::{SigResult, Signer, Verification, verify_deferred};

/// The key service signing as one sender, for the message crate.
#[derive(Clone)]
pub(crate) struct KeySigner {
    keys: Arc<dyn KeyAccess>,
    algorithm: Algorithm,
    handle: tokio::runtime::Handle,
    signer: Signer,
    metrics: Arc<Metrics>,
}

impl MessageSigner for KeySigner {
    fn identity(&self) -> &Identity {
        &self.signer.identity
    }

    fn generation(&self) -> Generation {
        self.signer.generation
    }

    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        let identity = &self.signer.identity;
        let signature = self
            .handle
            .block_on(crate::signing::sign_digest(
                &*self.keys,
                self.algorithm,
                identity,
                self.signer.generation,
                digest,
            ))
            .map_err(|e| format!("as {identity}: {e}"))?;
        self.metrics.signed();
        Ok(signature)
    }
}

impl Engine {
    /// The address to sign `message` as, if this message is signed: the
    /// sender is ours (authenticated, internal or local), the From address
    /// is in a local domain that signs, and it is the sender's own address
    /// (the SASL login, or the envelope sender when not authenticated).
    pub(crate) fn signer(&self, message: &Message, origin: Origin, raw: &[u8]) -> Option<Identity> {
        if origin == Origin::External {
            return None;
        }
        let from = signature::from_address(raw).ok()?;
        if self.config.sign_policy(from.domain()) != SignPolicy::Always {
            return None;
        }
        let own = match &message.auth_authen {
            Some(login) => match Identity::parse(login) {
                Ok(login) => login == from,
                // A login without a domain names a user of our one local
                // domain; with several, `bob` would also sign as
                // bob@<every other domain>, so a full address is needed.
                Err(_) => {
                    !login.contains('@')
                        && self.config.local_domains.len() == 1
                        && Identity::parse(&format!("{login}@{}", from.domain()))
                            .is_ok_and(|l| l == from)
                }
            },
            None => Identity::parse(&canonical(&message.sender)).is_ok_and(|s| s == from),
        };
        if !own {
            info!(
                queue_id = %message.queue_id,
                from = %shown(from.as_str()),
                "not signed: From is not the sender's own address"
            );
            return None;
        }
        Some(from)
    }

    /// The generation `identity` signs with: its domain's active one, asked
    /// of the KGC once per message (the daemon: one HELLO).
    pub(crate) async fn signing_generation(
        &self,
        identity: &Identity,
    ) -> Result<Generation, KeyError> {
        self.keys()?.signing_generation(identity).await
    }

    fn keys(&self) -> Result<&dyn KeyAccess, KeyError> {
        self.ports
            .keys
            .as_deref()
            .ok_or_else(|| KeyError::NotServed("no KGC configured".into()))
    }

    /// The key service as the message crate's signer, for `signer`: used
    /// from a blocking thread (it waits for the key service there).
    pub(crate) fn message_signer(&self, signer: &Signer) -> Result<KeySigner, KeyError> {
        let keys = self
            .ports
            .keys
            .clone()
            .ok_or_else(|| KeyError::NotServed("no KGC configured".into()))?;
        Ok(KeySigner {
            keys,
            algorithm: self.config.sign_algorithm,
            handle: tokio::runtime::Handle::current(),
            signer: signer.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Verifies the `IBE-Signature` fields of `message` with this
    /// milter's DNS and per-domain lookup policy.
    pub(crate) async fn verify(&self, message: &[u8], arrived_sealed: bool, now: u64) -> SigResult {
        self.verify_deferred(message, arrived_sealed, now)
            .await
            .settle()
            .await
    }

    /// [`Engine::verify`] up to the pairing equations (see
    /// [`crate::signing::settle_both`]).
    pub(crate) async fn verify_deferred(
        &self,
        message: &[u8],
        arrived_sealed: bool,
        now: u64,
    ) -> Verification {
        verify_deferred(
            &*self.ports.parameters,
            |domain| self.config.policy_for(domain).lookup,
            |found| self.metrics.lookup(found),
            message,
            arrived_sealed,
            now,
        )
        .await
    }

    /// The signature policy for a message's sender domain (its From).
    /// Mail of our own users (internal or local origin) is only reported
    /// on: mail that stays inside is never signed, so requiring a
    /// signature there would hold all of it.
    pub(super) fn signature_policy(&self, message: &[u8], origin: Origin) -> SignaturePolicy {
        if origin != Origin::External {
            return SignaturePolicy::Report;
        }
        match signature::from_address(message) {
            Ok(from) => self.config.policy_for(from.domain()).signature,
            // No single From address to choose a policy by: the strictest
            // configured one applies, or a mangled From would slip past a
            // domain's `require`.
            Err(_) => {
                let require = std::iter::once(&self.config.default_policy)
                    .chain(self.config.domains.values())
                    .any(|p| p.signature == SignaturePolicy::Require);
                if require {
                    SignaturePolicy::Require
                } else {
                    SignaturePolicy::Report
                }
            }
        }
    }

    /// Applies `policy` to a signature `result`: with `require`, anything
    /// but a pass is quarantined (a temporary error is a tempfail).
    pub(super) fn apply_signature_policy(
        &self,
        message: &Message,
        policy: SignaturePolicy,
        result: &SigResult,
        mut actions: Vec<Action>,
        kind: Kind,
    ) -> Verdict {
        let note = Note {
            signature: match result {
                SigResult::None => None,
                SigResult::Pass { identity, .. } => Some(format!(
                    "ibesig=pass {}",
                    identity
                        .rsplit_once('@')
                        .map_or(identity.as_str(), |(_, d)| d)
                )),
                other => Some(format!("ibesig={}", other.word())),
            },
            detail: String::new(),
        };
        match (policy, result) {
            (SignaturePolicy::Report, _) | (_, SigResult::Pass { .. }) => Verdict {
                reply: Reply::Continue,
                actions,
                kind,
                note,
            },
            (SignaturePolicy::Require, SigResult::TempError(reason)) => {
                Verdict::tempfail(format!("signature check incomplete: {reason}"))
            }
            (SignaturePolicy::Require, other) => {
                let reason = format!(
                    "ibemail: sender signature required, result {}",
                    other.resinfo("")
                );
                warn!(
                    queue_id = %message.queue_id,
                    reason = %shown(&reason),
                    "signature required"
                );
                actions.push(Action::Quarantine(reason));
                Verdict {
                    reply: Reply::Continue,
                    actions,
                    kind: Kind::Unsigned,
                    note,
                }
            }
        }
    }
}
