//! Outbound: a message of our users for remote domains. Each recipient
//! domain's policy and parameters decide who gets ciphertext; the message
//! is signed inside, sealed, signed outside; recipients without ibemail
//! get a plaintext copy re-injected once (the ledger), and are taken off
//! the sealed original only once the copy is accepted.

use std::sync::Arc;

use ibemail_discovery::Outcome;
use ibemail_message::{IbeRecipient, Recipient};
use rand_core::OsRng;
use tracing::{info, warn};

use super::fields::{milter_value, replace_headers, rewrite_headers};
use super::verdict::{Action, Kind, Message, Note, Origin, Reply, Verdict};
use super::{Engine, now};
use crate::address::Rcpt;
use crate::config::EncryptPolicy;
use crate::ledger::{self, Claim};
use crate::reinject;
use crate::signing::Signer;

/// The verdict for a recipient our identity rules refuse (a quoted or
/// over-long local part) in a domain whose mail must or can be encrypted:
/// it can never be sealed to, so retrying would not help, and sending it
/// in clear is what the policy forbids.
fn unencryptable(rcpt: &str, domain: &str) -> Verdict {
    Verdict {
        reply: Reply::Reject(format!(
            "{rcpt} cannot be used as an encryption identity, and {domain} takes \
             only encrypted mail from this server"
        )),
        actions: Vec::new(),
        kind: Kind::Rejected,
        note: Note::default(),
    }
}

impl Engine {
    pub(super) async fn outbound(
        &self,
        message: &Message,
        origin: Origin,
        local: &[Rcpt],
        remote: &[Rcpt],
    ) -> Verdict {
        let raw = message.to_bytes();
        // Already end-to-end encrypted by the user: leave it alone. The
        // body decides, not the Content-Type: opaque-signed S/MIME has the
        // same type and is readable by anyone.
        if ibemail_message::is_cms_encrypted(&raw) {
            return Verdict::untouched(Vec::new());
        }
        // Who signs (inside): the sealed copy gets a signature marked for
        // sealing (e=1), the re-injected copy and plaintext mail one
        // without, so a sealed copy decrypted on the way fails.
        let signer = match self.signer(message, origin, &raw) {
            None => None,
            Some(identity) => match self.signing_generation(&identity).await {
                Ok(generation) => Some(Signer {
                    identity,
                    generation,
                }),
                Err(e) => return Verdict::tempfail(format!("signing as {identity} failed: {e}")),
            },
        };
        let now = now();
        let mut sealed_for: Vec<IbeRecipient> = Vec::new();
        let mut plain: Vec<String> = local.iter().map(|r| r.arg.clone()).collect();
        // Remote domains that get the message in clear, for the log.
        let mut clear_domains: Vec<String> = Vec::new();
        for rcpt in remote {
            // No domain (a bare name, an address literal): no policy to
            // look up; it gets what it would get without ibemail.
            let Some(domain) = rcpt.domain.as_deref() else {
                plain.push(rcpt.arg.clone());
                continue;
            };
            let policy = self.config.policy_for(domain);
            if policy.encrypt == EncryptPolicy::Never {
                plain.push(rcpt.arg.clone());
                clear_domains.push(domain.to_string());
                continue;
            }
            if rcpt.identity.is_none() && policy.encrypt == EncryptPolicy::Require {
                return unencryptable(&rcpt.arg, domain);
            }
            let found = self
                .ports
                .parameters
                .lookup(domain, policy.lookup, now)
                .await;
            self.metrics.lookup(&found);
            let summary = found.summary();
            match (found.outcome, &rcpt.identity) {
                (Outcome::Parameters { record, .. }, Some(identity)) => {
                    sealed_for.push(IbeRecipient {
                        identity: identity.clone(),
                        generation: record.generation,
                        params: record.params,
                    })
                }
                // The domain takes encrypted mail, but this address can
                // never be sealed to: refuse rather than send it in clear.
                (Outcome::Parameters { .. }, None) => return unencryptable(&rcpt.arg, domain),
                (Outcome::NotIbe(_), _) if policy.encrypt == EncryptPolicy::Opportunistic => {
                    plain.push(rcpt.arg.clone());
                    clear_domains.push(domain.to_string());
                }
                (Outcome::NotIbe(_), _) => {
                    return Verdict::tempfail(format!(
                        "{domain} requires encryption but publishes no usable parameters"
                    ));
                }
                (Outcome::Temporary(_) | Outcome::Refused(_), _) => {
                    return Verdict::tempfail(summary);
                }
            }
        }
        let signature_note = signer
            .as_ref()
            .map(|s| format!("signed n={}", s.generation));
        clear_domains.sort();
        clear_domains.dedup();
        // The message crate signs, from a blocking thread, with the key
        // service behind a `MessageSigner`.
        let key_signer = match signer.as_ref().map(|s| self.message_signer(s)).transpose() {
            Ok(key_signer) => key_signer,
            Err(e) => return Verdict::tempfail(format!("signing failed: {e}")),
        };
        if sealed_for.is_empty() {
            let actions = match key_signer {
                None => Vec::new(),
                Some(mut key_signer) => {
                    let signed = tokio::task::spawn_blocking(move || {
                        ibemail_message::signature_field(&raw, &mut key_signer)
                    })
                    .await;
                    match signed {
                        Ok(Ok((name, value))) => vec![Action::InsertHeader {
                            index: 0,
                            name,
                            value: milter_value(&value),
                        }],
                        Ok(Err(e)) => return Verdict::tempfail(format!("signing failed: {e}")),
                        Err(e) => return Verdict::tempfail(format!("signing task failed: {e}")),
                    }
                }
            };
            return Verdict {
                reply: Reply::Continue,
                actions,
                kind: Kind::Plaintext,
                note: Note {
                    signature: signature_note,
                    detail: format!("sent in clear to {}", clear_domains.join(",")),
                },
            };
        }
        let mut sealed_domains: Vec<String> = sealed_for
            .iter()
            .map(|r| format!("{} (generation {})", r.identity.domain(), r.generation))
            .collect();
        sealed_domains.sort();
        sealed_domains.dedup();
        let mut detail = format!("sealed for {}", sealed_domains.join(", "));
        // The sealing task and the re-injected copy share one copy of a
        // possibly large message; without a copy to make, the sealing task
        // holds the only reference and encrypts the message where it lies.
        let raw = Arc::new(raw);
        let reinject_source = (!plain.is_empty()).then(|| raw.clone());
        let limits = self.limits;
        // Seal first (signed inside and outside by the message crate): a
        // failure here must not leave a re-injected copy.
        let mut seal_signer = key_signer.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let dyn_recipients: Vec<&dyn Recipient> =
                sealed_for.iter().map(|r| r as &dyn Recipient).collect();
            let content = Arc::unwrap_or_clone(raw);
            let signer = seal_signer
                .as_mut()
                .map(|s| s as &mut dyn ibemail_message::MessageSigner);
            ibemail_message::seal_signed(content, &dyn_recipients, signer, &mut OsRng, &limits)
        })
        .await;
        let sealed = match sealed {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(e)) => return Verdict::tempfail(format!("sealing failed: {e}")),
            Err(e) => return Verdict::tempfail(format!("sealing task failed: {e}")),
        };

        let mut actions = Vec::new();
        let kind = if let Some(raw) = reinject_source {
            let copy = match key_signer {
                None => Ok(raw),
                Some(mut key_signer) => tokio::task::spawn_blocking(move || {
                    ibemail_message::sign_message(&raw, &mut key_signer).map(Arc::new)
                })
                .await
                .unwrap_or_else(|e| Err(format!("signing task failed: {e}"))),
            };
            let copy = match copy {
                Ok(copy) => copy,
                Err(e) => return Verdict::tempfail(format!("signing the copy failed: {e}")),
            };
            if let Err(verdict) = self.reinject_once(message, &plain, &copy).await {
                return verdict;
            }
            actions.extend(plain.into_iter().map(Action::DeleteRecipient));
            detail.push_str("; plaintext copy re-injected");
            if !clear_domains.is_empty() {
                detail.push_str(&format!(" for {}", clear_domains.join(",")));
            }
            Kind::Split
        } else {
            Kind::Encrypted
        };
        let outer: Vec<_> = sealed
            .fields
            .iter()
            .map(|(name, value)| (name.clone(), milter_value(value)))
            .collect();
        actions.extend(if message.edits_in_place {
            // Never changed in place: a change Postfix's
            // milter_header_checks ignored would keep the original field
            // (the real Subject) outside the encryption.
            rewrite_headers(&message.headers, &outer, false)
        } else {
            replace_headers(&message.headers, &outer)
        });
        actions.push(Action::ReplaceBody(sealed.body));
        Verdict {
            reply: Reply::Continue,
            actions,
            kind,
            note: Note {
                signature: signature_note,
                detail,
            },
        }
    }

    /// Re-injects `copy` of `message` for `recipients`, once: a retry of a
    /// transaction that failed after its copy was accepted finds the copy
    /// in the ledger and does not send it again.
    async fn reinject_once(
        &self,
        message: &Message,
        recipients: &[String],
        copy: &[u8],
    ) -> Result<(), Verdict> {
        let what = "plaintext copy for recipients without ibemail";
        let (Some(reinjector), Some(ledger)) = (&self.ports.reinjector, &self.ledger) else {
            return Err(Verdict::tempfail(format!(
                "a {what} is needed, but reinject.address is not set"
            )));
        };
        let key = ledger::copy_key(&message.sender, recipients, &message.headers, &message.body);
        let pending = match key.map(|key| ledger.claim(key, now())) {
            None => None,
            Some(Claim::Pending(pending)) => Some(pending),
            Some(Claim::Sent) => {
                info!(
                    queue_id = %message.queue_id,
                    recipients = recipients.len(),
                    "{what} re-injected by an earlier attempt: not sent again"
                );
                return Ok(());
            }
            Some(Claim::Busy) => {
                return Err(Verdict::tempfail(
                    "another attempt of this message is being re-injected right now",
                ));
            }
        };
        let envelope = reinject::Envelope {
            sender: message.sender.clone(),
            recipients: recipients.to_vec(),
        };
        reinjector
            .send(&envelope, copy)
            .await
            .map_err(|e| Verdict::tempfail(format!("re-injecting the {what} failed: {e}")))?;
        if let Some(pending) = pending
            && let Err(e) = pending.sent(now())
        {
            warn!(error = %e, "cannot record the re-injected copy: a retry may send it again");
        }
        info!(
            queue_id = %message.queue_id,
            recipients = recipients.len(),
            "{what} re-injected"
        );
        Ok(())
    }
}
