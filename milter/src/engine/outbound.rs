//! Outbound: a message of our users for remote domains. Each recipient
//! domain's policy and parameters decide who gets ciphertext; the message
//! is signed inside, sealed, signed outside; recipients without ibemail
//! get a plaintext copy re-injected once (the ledger), and are taken off
//! the sealed original only once the copy is accepted.

use std::sync::Arc;

use ibemail_discovery::Outcome;
use ibemail_message::signature::SIGNATURE_FIELD;
use ibemail_message::{IbeRecipient, Recipient};
use rand_core::OsRng;
use tracing::{info, warn};

use super::fields::{delete_headers, milter_value, split_message};
use super::verdict::{Action, Kind, Message, Note, Origin, Reply, Verdict};
use super::{Engine, now};
use crate::address::Rcpt;
use crate::config::EncryptPolicy;
use crate::ledger::{self, Claim};
use crate::reinject;
use crate::signing::Signer;

const SIGNATURE_FIELD_LEN: usize = SIGNATURE_FIELD.len();

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
        if sealed_for.is_empty() {
            let actions = match &signer {
                None => Vec::new(),
                Some(signer) => match self.sign(signer, &raw, false).await {
                    Ok(value) => vec![Action::InsertHeader {
                        index: 0,
                        name: SIGNATURE_FIELD.into(),
                        value: milter_value(value.as_bytes()),
                    }],
                    Err(e) => {
                        return Verdict::tempfail(format!(
                            "signing as {} failed: {e}",
                            signer.identity
                        ));
                    }
                },
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
        // Unsigned, the sealing task and the re-injected copy share one
        // copy of a possibly large message.
        let raw = Arc::new(raw);

        // Seal first: a failure here must not leave a re-injected copy.
        let content = match self.signed_copy(signer.as_ref(), &raw, true).await {
            Ok(content) => content,
            Err(verdict) => return verdict,
        };
        // Keep the plaintext only for a re-injected copy. Otherwise the
        // sealing task holds the only reference and encrypts the message
        // where it lies, without copying it.
        let reinject_source = (!plain.is_empty()).then_some(raw);
        let limits = self.limits;
        let sealed = tokio::task::spawn_blocking(move || {
            let dyn_recipients: Vec<&dyn Recipient> =
                sealed_for.iter().map(|r| r as &dyn Recipient).collect();
            let content = Arc::unwrap_or_clone(content);
            ibemail_message::seal_owned(content, &dyn_recipients, &mut OsRng, &limits)
        })
        .await;
        let sealed = match sealed {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(e)) => return Verdict::tempfail(format!("sealing failed: {e}")),
            Err(e) => return Verdict::tempfail(format!("sealing task failed: {e}")),
        };
        // Then sign the outside, so that re-encrypting is detected.
        let outer_signature = match &signer {
            None => None,
            Some(signer) => match self.sign(signer, &sealed.to_bytes(), false).await {
                Ok(value) => Some(value),
                Err(e) => {
                    return Verdict::tempfail(format!("signing the sealed message failed: {e}"));
                }
            },
        };

        let mut actions = Vec::new();
        let kind = if let Some(raw) = reinject_source {
            let copy = match self.signed_copy(signer.as_ref(), &raw, false).await {
                Ok(copy) => copy,
                Err(verdict) => return verdict,
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
        actions.extend(delete_headers(&message.headers, |_, _, _| true));
        actions.extend(outer_signature.map(|value| Action::AddHeader {
            name: SIGNATURE_FIELD.into(),
            value: milter_value(value.as_bytes()),
        }));
        let (outer, _) = split_message(&sealed.header);
        actions.extend(
            outer
                .into_iter()
                .map(|(name, value)| Action::AddHeader { name, value }),
        );
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

    /// `raw` as it leaves: as it is without a signer, or with the signer's
    /// `IBE-Signature` on top (`sealed`: made for the sealed copy).
    async fn signed_copy(
        &self,
        signer: Option<&Signer>,
        raw: &Arc<Vec<u8>>,
        sealed: bool,
    ) -> Result<Arc<Vec<u8>>, Verdict> {
        let Some(signer) = signer else {
            return Ok(raw.clone());
        };
        let value = self.sign(signer, raw, sealed).await.map_err(|e| {
            Verdict::tempfail(format!("signing as {} failed: {e}", signer.identity))
        })?;
        let mut signed = Vec::with_capacity(raw.len() + value.len() + SIGNATURE_FIELD_LEN + 3);
        signed.extend_from_slice(SIGNATURE_FIELD.as_bytes());
        signed.push(b':');
        signed.extend_from_slice(value.as_bytes());
        signed.extend_from_slice(b"\r\n");
        signed.extend_from_slice(raw);
        Ok(Arc::new(signed))
    }
}
