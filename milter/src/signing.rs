//! Identity-based signatures in the milter: who may be signed for, asking
//! the KGC to sign, and verifying inbound signatures against the sender
//! domain's published `S=` parameter.
//!
//! Outbound, the sender's address signs twice when the message is
//! encrypted: inside (the original message, before sealing) and outside
//! (the sealed message). Inbound, both must pass: a man in the middle who
//! got the sender to encrypt to parameters of his own can read and
//! re-encrypt the message, but cannot re-sign the outside without the
//! sender's key (the paper's §5 argument).

use ibemail_discovery::{DomainPolicy, Lookup, Outcome, RefusedReason};
use ibemail_ibe::{Equation, Generation, Identity};
use ibemail_message::signature::{
    self, Algorithm, MessageSignature, SIGNATURE_FIELD, SignatureError,
};

use crate::ports::{KeyAccess, KeyError, Parameters};

/// Who signs one outbound message, and with which generation.
#[derive(Clone, Debug)]
pub(crate) struct Signer {
    /// The sender's address (its From).
    pub(crate) identity: Identity,
    /// The active generation of its domain when the message was taken.
    pub(crate) generation: Generation,
}

/// Asks `keys` to sign `digest` as `identity` at `generation` with
/// `algorithm` (SIGN or SIGN-CERTIFIED).
pub(crate) async fn sign_digest(
    keys: &dyn KeyAccess,
    algorithm: Algorithm,
    identity: &Identity,
    generation: Generation,
    digest: &[u8; 32],
) -> Result<MessageSignature, KeyError> {
    match algorithm {
        Algorithm::Certified => keys
            .sign_certified(identity, generation, digest)
            .await
            .map(MessageSignature::from),
        Algorithm::ChaCheon => keys
            .sign(identity, generation, digest)
            .await
            .map(MessageSignature::from),
    }
}

/// The result of verifying a message's signatures (RFC 8601 result words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigResult {
    /// A valid signature by the From address.
    Pass {
        /// The signer.
        identity: String,
        /// Its generation.
        generation: Generation,
    },
    /// A signature is present but does not verify (or one is missing where
    /// the other layer has one).
    Fail(String),
    /// No signature.
    None,
    /// Verification could not complete now (DNS trouble).
    TempError(String),
    /// The signature cannot be checked (unsupported, no parameters).
    PermError(String),
}

impl SigResult {
    /// The result word for Authentication-Results.
    pub fn word(&self) -> &'static str {
        match self {
            SigResult::Pass { .. } => "pass",
            SigResult::Fail(_) => "fail",
            SigResult::None => "none",
            SigResult::TempError(_) => "temperror",
            SigResult::PermError(_) => "permerror",
        }
    }

    /// `ibesig=...` for Authentication-Results (`layers` describes what was
    /// checked, e.g. "inside and outside the encryption").
    pub fn resinfo(&self, layers: &str) -> String {
        let text = match self {
            SigResult::Pass {
                identity,
                generation,
            } => format!("ibesig=pass ({layers}, generation {generation}) header.i={identity}"),
            SigResult::None => "ibesig=none".to_string(),
            SigResult::Fail(reason)
            | SigResult::TempError(reason)
            | SigResult::PermError(reason) => {
                format!(
                    "ibesig={} ({})",
                    self.word(),
                    reason.replace(['(', ')'], "")
                )
            }
        };
        text.replace(['\r', '\n'], " ")
    }
}

/// The inner and outer results of an encrypted message, combined: both
/// must pass, by the same signer.
pub fn combine(outer: SigResult, inner: SigResult) -> SigResult {
    match (outer, inner) {
        (SigResult::None, SigResult::None) => SigResult::None,
        (SigResult::TempError(e), _) | (_, SigResult::TempError(e)) => SigResult::TempError(e),
        (
            SigResult::Pass {
                identity: a,
                generation,
            },
            SigResult::Pass { identity: b, .. },
        ) if a == b => SigResult::Pass {
            identity: a,
            generation,
        },
        (SigResult::Pass { identity: a, .. }, SigResult::Pass { identity: b, .. }) => {
            SigResult::Fail(format!("outside signed by {a}, inside by {b}"))
        }
        (SigResult::None, _) => SigResult::Fail(
            "signed inside but not outside: the encryption may have been replaced".into(),
        ),
        (_, SigResult::None) => SigResult::Fail("signed outside but not inside".into()),
        (SigResult::Fail(e), _) => SigResult::Fail(format!("outside: {e}")),
        (_, SigResult::Fail(e)) => SigResult::Fail(format!("inside: {e}")),
        (SigResult::PermError(e), _) => SigResult::PermError(format!("outside: {e}")),
        (_, SigResult::PermError(e)) => SigResult::PermError(format!("inside: {e}")),
    }
}

/// Verifies the `IBE-Signature` fields of `message` up to their pairing
/// equations; [`Verification::settle`] gives the result — pass if one by
/// the From address verifies, otherwise the most telling failure — or
/// [`settle_both`] with another message's at about the cost of one. The
/// signer domain's parameters are looked up with `discovery` under
/// `policy`; `on_lookup` sees every lookup (metrics). `arrived_sealed`:
/// `message` came out of an encrypted message (a signature made for
/// sealing, `e=1`, fails anywhere else: someone decrypted it on the way).
///
/// Signatures not by the From address fail before any lookup, so a junk
/// signature of some other domain can neither cost a DNS query nor turn a
/// failure into a temporary error.
pub async fn verify_deferred(
    discovery: &dyn Parameters,
    policy: impl Fn(&str) -> DomainPolicy,
    on_lookup: impl Fn(&Lookup),
    message: &[u8],
    arrived_sealed: bool,
    now: u64,
) -> Verification {
    let mut checked = Vec::new();
    for parsed in signature::signatures(message) {
        checked.push(match parsed {
            Err(e @ SignatureError::Unsupported(_)) => {
                Checked::Known(SigResult::PermError(e.to_string()))
            }
            Err(e) => Checked::Known(SigResult::Fail(e.to_string())),
            Ok(parsed) if parsed.sealed && !arrived_sealed => Checked::Known(SigResult::Fail(
                "signed to travel encrypted, but arrived decrypted".into(),
            )),
            Ok(parsed) => match parsed.check_signer(message) {
                Err(e) => Checked::Known(SigResult::Fail(e.to_string())),
                Ok(()) => verify_one(discovery, &policy, &on_lookup, message, parsed, now).await,
            },
        });
    }
    Verification(checked)
}

/// One signature's outcome, or the pairing equation that decides it.
#[derive(Debug)]
enum Checked {
    Known(SigResult),
    /// Everything checked but the equation: a pass if it holds.
    Pending {
        identity: Identity,
        generation: Generation,
        equation: Box<Equation>,
    },
}

/// A message's signatures (top first), verified up to their pairing
/// equations.
#[derive(Debug)]
pub struct Verification(Vec<Checked>);

impl Verification {
    /// The first signature whose equation decides it.
    fn first_pending(&self) -> Option<&Equation> {
        self.0.iter().find_map(|c| match c {
            Checked::Pending { equation, .. } => Some(&**equation),
            Checked::Known(_) => None,
        })
    }

    /// The result: pass if one signature's equation holds (the first
    /// that does), otherwise the most telling failure, in order.
    /// `first_holds` is what a batch check found for the first pending
    /// equation, if it found that it holds. Each other pending equation
    /// costs a pairing check here.
    fn decide(self, mut first_holds: Option<bool>) -> SigResult {
        let mut result = SigResult::None;
        for checked in self.0 {
            let outcome = match checked {
                Checked::Known(outcome) => outcome,
                Checked::Pending {
                    identity,
                    generation,
                    equation,
                } => {
                    if first_holds.take().unwrap_or_else(|| equation.holds()) {
                        SigResult::Pass {
                            identity: identity.to_string(),
                            generation,
                        }
                    } else {
                        SigResult::Fail(SignatureError::BadSignature.to_string())
                    }
                }
            };
            result = match (result, outcome) {
                (_, pass @ SigResult::Pass { .. }) => return pass,
                (SigResult::None, other) => other,
                (SigResult::TempError(e), _) => SigResult::TempError(e),
                (_, SigResult::TempError(e)) => SigResult::TempError(e),
                (SigResult::Fail(e), _) => SigResult::Fail(e),
                (_, other) => other,
            };
        }
        result
    }

    /// How many equations are left to check.
    fn pending(&self) -> usize {
        self.0
            .iter()
            .filter(|c| matches!(c, Checked::Pending { .. }))
            .count()
    }

    /// The result, its pairing checks made here if there are at most
    /// [`INLINE_EQUATIONS`], else on a blocking thread.
    pub async fn settle(self) -> SigResult {
        if self.pending() <= INLINE_EQUATIONS {
            return self.decide(None);
        }
        tokio::task::spawn_blocking(move || self.decide(None))
            .await
            .unwrap_or_else(|e| SigResult::TempError(format!("verification task: {e}")))
    }
}

/// A signature's digest is computed on the async thread — tens of
/// microseconds, less than handing the work to a blocking thread and
/// back — if its message is at most this size and its `h=` names at most
/// [`INLINE_SIGNED_FIELDS`] fields: the digest's cost grows with both
/// (linearly since header selection is indexed, but a sender may still
/// make either large on purpose, and several signatures multiply it).
/// Other digests go to a blocking thread.
const INLINE_BYTES: usize = 16 * 1024;

/// See [`INLINE_BYTES`].
const INLINE_SIGNED_FIELDS: usize = 32;

/// Up to this many pairing checks (one signature's: about a millisecond on
/// a slow core) are made on the async thread; more go to a blocking thread.
const INLINE_EQUATIONS: usize = 1;

/// The results of two messages' signatures — a sealed message's outside
/// and inside — with their first pairing equations checked as one batch
/// ([`ibemail_ibe::all_hold`]); if the batch fails, each is checked apart,
/// so that the results say which failed.
pub async fn settle_both(outer: Verification, inner: Verification) -> (SigResult, SigResult) {
    // The usual case, one equation on each side: the batch (about one
    // pairing) here, and if it holds nothing is left to check.
    if outer.pending() == 1
        && inner.pending() == 1
        && let (Some(a), Some(b)) = (outer.first_pending(), inner.first_pending())
        && ibemail_ibe::all_hold(&[a.clone(), b.clone()], &mut rand_core::OsRng)
    {
        return (outer.decide(Some(true)), inner.decide(Some(true)));
    }
    // Otherwise each alone (after a failed batch: to say which failed).
    let settle = move || (outer.decide(None), inner.decide(None));
    tokio::task::spawn_blocking(settle)
        .await
        .unwrap_or_else(|e| {
            let failed = SigResult::TempError(format!("verification task: {e}"));
            (failed.clone(), failed)
        })
}

/// Verifies one signature by the From address against its domain's `S=`
/// for the generation it names. A generation newer than the (cached)
/// published ones is looked up once more past the cache — the signer may
/// have rotated within our cache's TTL — and if DNS still does not have it,
/// the result is a temporary error (the mail is retried), never a failure.
async fn verify_one(
    discovery: &dyn Parameters,
    policy: &impl Fn(&str) -> DomainPolicy,
    on_lookup: &impl Fn(&Lookup),
    message: &[u8],
    parsed: signature::Parsed,
    now: u64,
) -> Checked {
    let domain = parsed.identity.domain().to_string();
    let mut found = discovery.lookup_signer(&domain, policy(&domain), now).await;
    on_lookup(&found);
    let newer = |found: &Lookup| match &found.outcome {
        Outcome::Parameters { published, .. } => {
            published.generation(parsed.generation).is_none()
                && published
                    .records
                    .iter()
                    .all(|r| r.generation < parsed.generation)
        }
        _ => false,
    };
    // Just after a rotation the cached record set may lack the generation
    // the sender now signs with: ask DNS again — for the next generation
    // only (a signature naming any other cannot flush the cache), and at
    // most once a minute per domain (Discovery::forget).
    let next = |found: &Lookup| match &found.outcome {
        Outcome::Parameters { record, .. } => {
            record.generation.checked_add(1) == Some(parsed.generation)
        }
        _ => false,
    };
    if newer(&found) && found.cached && next(&found) && discovery.forget(&domain) {
        found = discovery.lookup_signer(&domain, policy(&domain), now).await;
        on_lookup(&found);
    }
    if newer(&found) {
        return Checked::Known(SigResult::TempError(format!(
            "signed with generation {} of {domain}, newer than DNS publishes (yet)",
            parsed.generation
        )));
    }
    let known = match found.outcome {
        Outcome::Parameters { published, .. } => {
            match published
                .generation(parsed.generation)
                .and_then(|r| r.signing)
            {
                None => SigResult::PermError(
                    SignatureError::NoParameters(parsed.generation).to_string(),
                ),
                Some(params) => {
                    // The body hash and digest (the pairings come later):
                    // here for a small message, off the async threads for a
                    // large one.
                    let (identity, generation) = (parsed.identity.clone(), parsed.generation);
                    let inline = message.len() <= INLINE_BYTES
                        && parsed.signed_field_count() <= INLINE_SIGNED_FIELDS;
                    let equation = if inline {
                        Ok(parsed.equation(message, &params))
                    } else {
                        let bytes = message.to_vec();
                        tokio::task::spawn_blocking(move || parsed.equation(&bytes, &params)).await
                    };
                    return match equation {
                        Ok(Ok(equation)) => Checked::Pending {
                            identity,
                            generation,
                            equation: Box::new(equation),
                        },
                        Ok(Err(e)) => Checked::Known(SigResult::Fail(e.to_string())),
                        Err(e) => {
                            Checked::Known(SigResult::TempError(format!("verification task: {e}")))
                        }
                    };
                }
            }
        }
        Outcome::NotIbe(_) => {
            SigResult::PermError(format!("{domain} publishes no ibemail parameters"))
        }
        Outcome::Temporary(reason) => SigResult::TempError(reason),
        // Its record vanished while its published policy is in force:
        // DNS trouble or an attack, not the domain's word.
        Outcome::Refused(RefusedReason::PolicyRequires { .. }) => {
            SigResult::TempError(format!("{domain} publishes no usable record right now"))
        }
        Outcome::Refused(_) => SigResult::PermError(found_summary(&domain)),
    };
    Checked::Known(known)
}

fn found_summary(domain: &str) -> String {
    format!("{domain}'s parameters are refused by local policy (DNSSEC or pin)")
}

/// The value of a header field named [`SIGNATURE_FIELD`]: true for names
/// that are one.
pub fn is_signature_field(name: &str) -> bool {
    name.eq_ignore_ascii_case(SIGNATURE_FIELD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(who: &str) -> SigResult {
        SigResult::Pass {
            identity: who.into(),
            generation: 1,
        }
    }

    #[test]
    fn both_layers_must_pass_by_the_same_signer() {
        assert_eq!(
            combine(pass("a@a.test"), pass("a@a.test")),
            pass("a@a.test")
        );
        assert_eq!(combine(SigResult::None, SigResult::None), SigResult::None);
        for (outer, inner) in [
            (SigResult::None, pass("a@a.test")),
            (pass("a@a.test"), SigResult::None),
            (pass("a@a.test"), pass("b@a.test")),
            (SigResult::Fail("x".into()), pass("a@a.test")),
            (pass("a@a.test"), SigResult::Fail("x".into())),
        ] {
            assert_eq!(combine(outer, inner).word(), "fail");
        }
        assert_eq!(
            combine(SigResult::TempError("dns".into()), pass("a@a.test")).word(),
            "temperror"
        );
    }

    #[test]
    fn results_render_for_authentication_results() {
        assert_eq!(
            pass("a@a.test").resinfo("inside and outside"),
            "ibesig=pass (inside and outside, generation 1) header.i=a@a.test"
        );
        assert_eq!(
            SigResult::Fail("body (hash)\r\n".into()).resinfo("x"),
            "ibesig=fail (body hash  )"
        );
    }
}
