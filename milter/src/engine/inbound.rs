//! Inbound: mail for local recipients. Forged `Authentication-Results`
//! claiming our id are removed; ciphertext sealed to every local recipient
//! is opened (the KGC opens the capsule), its signatures inside and
//! outside are checked, the header is rebuilt from the sealed inner one
//! plus the trace fields added on the way, and notifications go to a local
//! address. Anything else is delivered as it arrived, with its signature
//! checked.
//!
//! A message counts as having arrived sealed — so that a signature made to
//! travel sealed (`e=1`) passes — only if it opened here or its body really
//! is CMS `EnvelopedData` or `AuthEnvelopedData`
//! ([`ibemail_message::is_cms_encrypted`], the test the outbound side uses
//! for "already encrypted"). Its Content-Type proves nothing: opaque-signed
//! S/MIME (`smime-type=signed-data`) has the same type and is readable by
//! anyone, so a man in the middle who decrypted a sealed copy of such mail
//! could otherwise deliver it with its `e=1` signature passing.

use ibemail_ibe::{Capsule, Generation, Identity, SharedSecret};
use ibemail_kgc::logging::shown;
use ibemail_message::{CapsuleError, OpenError};
use tracing::warn;

use super::fields::{delete_headers, replace_headers, rewrite_headers, split_message};
use super::verdict::{Action, Kind, Message, Note, Origin, Reply, Verdict};
use super::{Engine, now};
use crate::address::Rcpt;
use crate::authres;
use crate::config::{FailureAction, SignaturePolicy};
use crate::ports::KeyError;
use crate::signing::{SigResult, combine, settle_both};
use crate::transit;

/// Opens one capsule for the message crate, off the async threads.
type CapsuleOpener =
    dyn FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError> + Send;

/// A key error as the message crate's opener reports it.
pub(crate) fn capsule_error(e: KeyError) -> CapsuleError {
    match e {
        KeyError::UnknownGeneration(n) | KeyError::Retired(n) => CapsuleError::UnknownGeneration(n),
        KeyError::Rejected => CapsuleError::Rejected,
        e if e.is_temporary() => CapsuleError::Unavailable(e.to_string()),
        e => CapsuleError::Refused(e.to_string()),
    }
}

/// Names of dropped outer fields shown in a log line: each once, the first
/// [`DROPPED_SHOWN`], escaped, and how many more (a sender chooses them,
/// and as many as it likes: linear in their number).
fn dropped_names(dropped: &[String]) -> String {
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut more = 0usize;
    for name in dropped {
        if seen.insert(name.to_ascii_lowercase()) {
            if out.len() < DROPPED_SHOWN {
                out.push(shown(name));
            } else {
                more += 1;
            }
        }
    }
    if more > 0 {
        out.push(format!("and {more} more"));
    }
    out.join(", ")
}

/// See [`dropped_names`].
const DROPPED_SHOWN: usize = 20;

impl Engine {
    pub(super) async fn inbound(
        &self,
        message: &Message,
        origin: Origin,
        local: &[Rcpt],
        remote_recipients: usize,
    ) -> Verdict {
        let authserv_id = self.config.authserv_id.clone();
        // RFC 8601 §5: results claiming to be ours that reach us are forged,
        // wherever they sit and whoever sent them. (Position tells nothing:
        // Postfix hides its own Received field from milters, so an
        // attacker's field can sit on top. Milters before this one at this
        // host report under their own authserv-id.)
        let remove_forged = delete_headers(&message.headers, |_, name, value| {
            name.eq_ignore_ascii_case(authres::FIELD) && authres::claims(value, &authserv_id)
        });
        let raw = message.to_bytes();
        let now = now();
        // Not S/MIME at all. (S/MIME by its Content-Type is worth trying
        // to open, so that a damaged ciphertext is held with a reason; it
        // is taken for sealed only as the module comment says.)
        if !ibemail_message::is_encrypted(&raw) {
            return self
                .as_is(message, &raw, origin, remove_forged, false, now)
                .await;
        }
        if remote_recipients > 0 {
            // Relayed on to other domains as well: opening it here would
            // send the plaintext on. Deliver the ciphertext unchanged; the
            // local recipients can open it with `ibemail-milter decrypt`.
            warn!(
                queue_id = %message.queue_id,
                remote_recipients,
                "encrypted message also for other domains: not opened"
            );
            let sealed = ibemail_message::is_cms_encrypted(&raw);
            return self
                .as_is(message, &raw, origin, remove_forged, sealed, now)
                .await;
        }
        // Who opens capsules: the keys in this process or the KGC daemon.
        let Some(keys) = self.ports.keys.clone() else {
            return Verdict::tempfail("no KGC configured to open inbound mail");
        };
        let handle = tokio::runtime::Handle::current();
        let open_capsule: Box<CapsuleOpener> =
            Box::new(move |id: &Identity, generation, capsule: &Capsule| {
                handle
                    .block_on(keys.open(id, generation, capsule))
                    .map_err(capsule_error)
            });
        // The signature outside is checked first, because opening consumes
        // the sealed copy: it is decoded and decrypted where it lies. It is
        // checked as having arrived sealed, and that result stands only if
        // the message opens (which proves it) or its body is CMS-encrypted
        // (checked below if it does not open: the check decodes the whole
        // body, which a message that opens need not pay twice).
        // (Its pairing equation is checked later, with the inside's.)
        let outer = self.verify_deferred(&raw, true, now).await;
        let outer_policy = self.signature_policy(&raw, origin);
        let identities: Vec<Identity> = local.iter().filter_map(|r| r.identity.clone()).collect();
        let limits = self.limits;
        let opened = tokio::task::spawn_blocking(move || {
            ibemail_message::open_owned(raw, &identities, &limits, open_capsule)
        })
        .await;
        let opened = match opened {
            Ok(result) => result,
            Err(e) => return Verdict::tempfail(format!("opening task failed: {e}")),
        };
        match opened {
            Ok(opened) => {
                // Plaintext only for the recipients it was sealed to. A
                // recipient added on the way (a replay of someone else's
                // mail) must not get it, and deleting a recipient from the
                // transaction is not reliable enough to guard that (Postfix
                // matches the deletion against its own form of the address,
                // which differs for source routes, quoting or 8-bit local
                // parts): so the message is not opened at all. Everybody
                // gets the ciphertext as it arrived; those it was sealed to
                // can open it with `ibemail-milter decrypt`.
                let not_sealed_to = local
                    .iter()
                    .filter(|r| {
                        !r.identity
                            .as_ref()
                            .is_some_and(|id| opened.sealed_to.contains(id))
                    })
                    .count();
                if not_sealed_to > 0 {
                    warn!(
                        queue_id = %message.queue_id,
                        recipients = not_sealed_to,
                        "encrypted message also for local recipients it was not sealed to \
                         (a replay?): delivered unopened"
                    );
                    return self.report_as_is(
                        message,
                        outer.settle().await,
                        outer_policy,
                        remove_forged,
                        true,
                    );
                }
                let inner = self.verify_deferred(&opened.message, true, now).await;
                let (outer_result, inner_result) = settle_both(outer, inner).await;
                let signed = combine(outer_result, inner_result);
                self.metrics.signature(&signed);
                let policy = self.signature_policy(&opened.message, origin);
                let (inner, body) = split_message(&opened.message);
                let delivered = transit::delivered(
                    &message.headers,
                    inner,
                    &authserv_id,
                    &self.config.trusted_authserv_ids,
                );
                if !delivered.dropped.is_empty() {
                    warn!(
                        queue_id = %message.queue_id,
                        fields = %dropped_names(&delivered.dropped),
                        "outer header fields added on the way dropped on decryption"
                    );
                }
                // No recipient named: every recipient gets this copy, and
                // one of them may be another's Bcc.
                let mut results = vec![format!(
                    "x-ibemail=pass (decrypted) x-ibemail.generation={}",
                    opened.generation
                )];
                // The envelope sender is replaced below; say what it was
                // (when it is a plain address that cannot break the field).
                if let Some(sender) = crate::address::plain(&message.sender) {
                    results[0].push_str(&format!(" smtp.mailfrom={sender}"));
                }
                // Always said, `none` included: a filter or reader of the
                // decrypted mail can tell "unsigned" from "not checked".
                results.push(signed.resinfo("inside and outside the encryption"));
                let results = (
                    authres::FIELD.to_string(),
                    authres::value(&authserv_id, &results),
                );
                let mut wanted: Vec<_> = delivered
                    .transit
                    .into_iter()
                    .chain(delivered.inner)
                    .collect();
                let mut actions = if message.edits_in_place {
                    let mut actions = rewrite_headers(&message.headers, &wanted, true);
                    // At the top, last: Postfix counts insert positions
                    // differently from changed and deleted fields.
                    actions.push(Action::InsertHeader {
                        index: 0,
                        name: results.0,
                        value: results.1,
                    });
                    actions
                } else {
                    // An MTA that may count fields otherwise than it showed
                    // them: everything goes, the wanted header is appended.
                    wanted.insert(0, results);
                    replace_headers(&message.headers, &wanted)
                };
                actions.push(Action::ReplaceBody(body.to_vec()));
                // Delivery status notifications of the plaintext (a success
                // notice the client asked for, a bounce if delivery fails)
                // would carry the decrypted header or message to the
                // envelope sender, whom a replay chooses: they go to a
                // local address instead.
                actions.push(Action::ChangeSender(self.bounce_address(local)));
                let mut domains: Vec<&str> =
                    local.iter().filter_map(|r| r.domain.as_deref()).collect();
                domains.sort_unstable();
                domains.dedup();
                let mut verdict =
                    self.apply_signature_policy(message, policy, &signed, actions, Kind::Decrypted);
                verdict.note.detail = format!(
                    "opened for {} (generation {})",
                    domains.join(","),
                    opened.generation
                );
                verdict
            }
            Err(e) if e.is_temporary() => Verdict::tempfail(format!("KGC unavailable: {e}")),
            // Someone else's S/MIME, or not for our recipients: deliver as
            // is — as sealed only if its body really is encrypted.
            Err(OpenError::NotOurs | OpenError::NotEncrypted | OpenError::NoMatchingRecipient) => {
                let raw = message.to_bytes();
                if ibemail_message::is_cms_encrypted(&raw) {
                    let outer_result = outer.settle().await;
                    self.report_as_is(message, outer_result, outer_policy, remove_forged, true)
                } else {
                    self.as_is(message, &raw, origin, remove_forged, false, now)
                        .await
                }
            }
            Err(e) => {
                let reason = format!("ibemail: cannot decrypt: {e}");
                warn!(
                    queue_id = %message.queue_id,
                    reason = %shown(&reason),
                    "undecryptable message"
                );
                match self.config.undecryptable {
                    FailureAction::Quarantine => {
                        let mut actions = remove_forged;
                        actions.push(Action::InsertHeader {
                            index: 0,
                            name: authres::FIELD.into(),
                            value: authres::value(
                                &authserv_id,
                                &[format!("x-ibemail=fail (cannot decrypt: {e})")],
                            ),
                        });
                        actions.push(Action::Quarantine(reason));
                        Verdict {
                            reply: Reply::Continue,
                            actions,
                            kind: Kind::Undecryptable,
                            note: Note::default(),
                        }
                    }
                    FailureAction::Tempfail => Verdict {
                        reply: Reply::Tempfail(reason),
                        actions: Vec::new(),
                        kind: Kind::Undecryptable,
                        note: Note::default(),
                    },
                    FailureAction::Reject => Verdict {
                        reply: Reply::Reject(reason),
                        actions: Vec::new(),
                        kind: Kind::Undecryptable,
                        note: Note::default(),
                    },
                }
            }
        }
    }

    /// Where notifications about a decrypted message go: the configured
    /// address, else the postmaster of the first local recipient's domain.
    fn bounce_address(&self, local: &[Rcpt]) -> String {
        match &self.config.bounce_to {
            Some(address) => format!("<{address}>"),
            None => {
                let domain = local
                    .iter()
                    .find_map(|r| r.domain.clone())
                    .or_else(|| self.config.local_domains.first().cloned())
                    .unwrap_or_else(|| "localhost".into());
                format!("<postmaster@{domain}>")
            }
        }
    }

    /// A message delivered as it arrived (not encrypted, or encrypted but
    /// not opened here): its signatures are checked and the policy of its
    /// sender domain applies.
    pub(super) async fn as_is(
        &self,
        message: &Message,
        raw: &[u8],
        origin: Origin,
        remove_forged: Vec<Action>,
        encrypted: bool,
        now: u64,
    ) -> Verdict {
        let result = self.verify(raw, encrypted, now).await;
        let policy = self.signature_policy(raw, origin);
        self.report_as_is(message, result, policy, remove_forged, encrypted)
    }

    /// [`Engine::as_is`] with the signature verified already.
    fn report_as_is(
        &self,
        message: &Message,
        result: SigResult,
        policy: SignaturePolicy,
        remove_forged: Vec<Action>,
        encrypted: bool,
    ) -> Verdict {
        self.metrics.signature(&result);
        if result == SigResult::None && policy == SignaturePolicy::Report {
            return Verdict::untouched(remove_forged);
        }
        let layer = if encrypted {
            "outside the encryption, not opened here"
        } else {
            "unencrypted"
        };
        let mut actions = remove_forged;
        actions.push(Action::InsertHeader {
            index: 0,
            name: authres::FIELD.into(),
            value: authres::value(&self.config.authserv_id, &[result.resinfo(layer)]),
        });
        self.apply_signature_policy(message, policy, &result, actions, Kind::Untouched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_field_names_are_shown_once_each_escaped_and_bounded() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            dropped_names(&names(&["X-A", "x-a", "X-B\u{1b}[2K"])),
            r"X-A, X-B\u{1b}[2K"
        );
        let many: Vec<String> = (0..1000).map(|i| format!("X-{i}")).collect();
        let shown = dropped_names(&many);
        assert!(shown.starts_with("X-0, X-1, "), "{shown}");
        assert!(shown.ends_with("X-19, and 980 more"), "{shown}");
        assert_eq!(dropped_names(&vec!["X".to_string(); 100_000]), "X");
    }
}
