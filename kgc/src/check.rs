//! `ibemail-kgc check`: is what DNS publishes what this store would publish?
//!
//! The records of the store (every published generation, with `e=` for the
//! retiring ones) are compared with the TXT records at `_ibemailkey.<domain>`
//! as a sender's discovery sees them, generation by generation, and the
//! DNSSEC status of the answer is reported. The comparison itself
//! ([`compare`]) does no I/O.

use ibemail_discovery::{
    Discovery, DnssecPolicy, DnssecStatus, DomainPolicy, Lookup, NotIbeReason, Outcome,
};
use ibemail_ibe::Generation;
use ibemail_params::{Record, RecordSet, record_name};

use crate::store::{State, Store};

/// What DNS says about one generation the store publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The exact record is published.
    Matches,
    /// No record of this generation is published.
    Missing,
    /// A record of this generation is published with other parameters.
    KeyMismatch,
    /// The parameters match but `e=` differs (published, local).
    ExpiryMismatch(Option<u64>, Option<u64>),
    /// The encryption parameters match but the signature parameter `S=`
    /// is missing (a record from before signatures) or differs: receivers
    /// cannot verify this domain's signatures.
    SigningMismatch {
        /// Whether the published record has an `S=` at all.
        published: bool,
    },
    /// The generation is published several times with different parameters
    /// (senders ignore it).
    Conflicting,
    /// The keys match but the published policy differs (published, local).
    PolicyMismatch,
    /// The keys match but the continuity signature is missing or differs:
    /// senders that pinned the previous generation refuse this one.
    ContinuityMismatch {
        /// Whether the published record has a `cs=` at all.
        published: bool,
    },
}

/// A published generation the store does not publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extra {
    /// The generation.
    pub generation: Generation,
    /// The store retired it (key destroyed).
    pub retired_locally: bool,
    /// Senders would choose it over the store's active generation: mail
    /// encrypted to it cannot be opened.
    pub preferred_by_senders: bool,
}

/// The comparison of the store with the published records.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// Each record of the store, highest generation first, with its verdict.
    pub local: Vec<(Record, Verdict)>,
    /// Published generations the store does not publish.
    pub extra: Vec<Extra>,
    /// Published strings that look like ibemail records but do not parse.
    pub rejected: Vec<String>,
}

impl Comparison {
    /// True if every local generation is published exactly and nothing
    /// published would make senders use a key this store lacks.
    pub fn ok(&self) -> bool {
        self.local.iter().all(|(_, v)| *v == Verdict::Matches)
            && !self.extra.iter().any(|e| e.preferred_by_senders)
    }
}

/// Compares the store's records with `published` (None: nothing published).
pub fn compare(store: &Store, published: Option<&RecordSet>, now: u64) -> Comparison {
    let empty = RecordSet::default();
    let published = published.unwrap_or(&empty);
    let local = store.records_at(now);
    let active = store.active_generation().unwrap_or(0);
    let local_verdicts = local
        .iter()
        .map(|mine| {
            let verdict = if published.conflicting.contains(&mine.generation) {
                Verdict::Conflicting
            } else {
                match published.generation(mine.generation) {
                    None => Verdict::Missing,
                    Some(theirs) if theirs.params != mine.params => Verdict::KeyMismatch,
                    Some(theirs) if theirs.signing != mine.signing => Verdict::SigningMismatch {
                        published: theirs.signing.is_some(),
                    },
                    Some(theirs) if theirs.expires != mine.expires => {
                        Verdict::ExpiryMismatch(theirs.expires, mine.expires)
                    }
                    Some(theirs) if theirs.policy != mine.policy => Verdict::PolicyMismatch,
                    Some(theirs) if theirs.continuity != mine.continuity => {
                        Verdict::ContinuityMismatch {
                            published: theirs.continuity.is_some(),
                        }
                    }
                    Some(_) => Verdict::Matches,
                }
            };
            (mine.clone(), verdict)
        })
        .collect();
    let extra = published
        .records
        .iter()
        .filter(|r| !local.iter().any(|l| l.generation == r.generation))
        .map(|r| Extra {
            generation: r.generation,
            retired_locally: matches!(store.state(r.generation), Some(State::Retired { .. })),
            preferred_by_senders: r.generation > active && !r.is_expired(now),
        })
        .collect();
    Comparison {
        local: local_verdicts,
        extra,
        rejected: published.rejected.iter().map(|e| e.to_string()).collect(),
    }
}

/// How `check` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckStatus {
    /// Everything published and matching (and Secure, if required).
    Ok,
    /// Something is missing, differs, or DNSSEC is not as required.
    Problem,
    /// DNS did not answer usefully; try again.
    Temporary,
}

/// The report of `check`: one line per finding, then the verdict.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Lines for the administrator.
    pub lines: Vec<String>,
    /// The result.
    pub status: CheckStatus,
}

fn expiry(e: Option<u64>) -> String {
    e.map_or("none".into(), |e| e.to_string())
}

fn label(store: &Store, generation: Generation) -> String {
    match store.state(generation) {
        Some(State::Active) => format!("generation {generation} (active)"),
        Some(State::Retiring { .. }) => format!("generation {generation} (retiring)"),
        _ => format!("generation {generation}"),
    }
}

/// One line per published generation after the first: does its
/// continuity signature verify from the generation before it (as
/// published, or as this store knows it)?
fn chain_lines(store: &Store, published: Option<&RecordSet>) -> Vec<String> {
    let Some(published) = published else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for record in &published.records {
        let n = record.generation;
        let Some(previous) = n.checked_sub(1).filter(|&p| p > 0) else {
            continue;
        };
        let signer = published
            .generation(previous)
            .and_then(|r| r.signing)
            .or_else(|| store.master_key(previous).ok().map(|k| k.signing_params()));
        lines.push(match (signer, &record.continuity) {
            (_, None) => format!(
                "continuity: generation {n} carries no signature by generation {previous}: \
                 senders that pinned {previous} accept it only from a DNSSEC-secure answer"
            ),
            (None, Some(_)) => format!(
                "continuity: generation {n}'s signature cannot be checked here (generation \
                 {previous} is neither published nor in the store)"
            ),
            (Some(s), Some(_)) if record.continues(store.domain(), &s) => {
                format!("continuity: generation {n} is signed by generation {previous}: valid")
            }
            (Some(_), Some(_)) => format!(
                "continuity: generation {n}'s signature by generation {previous} is INVALID: \
                 pinning senders refuse it"
            ),
        });
    }
    lines
}

/// What a sender does if this store's keys were lost and a new store
/// published in their place: the recovery path.
fn recovery_line(store: &Store, dnssec: DnssecStatus, now: u64) -> String {
    let max_age = store
        .records_at(now)
        .first()
        .and_then(|r| r.policy)
        .map(|p| p.max_age);
    match (dnssec, max_age) {
        (DnssecStatus::Secure, _) => "recovery: should these keys be lost, a new store's \
            records are accepted at once: the zone is DNSSEC-signed and secure answers \
            override pins"
            .into(),
        (_, Some(ma)) => format!(
            "recovery: should these keys be lost, senders that saw this record refuse a new \
             store's parameters (and defer mail to this domain) for up to {ma} s \
             (the policy max-age) after they last saw it — sign the zone with DNSSEC to \
             recover at once; senders with pin = enforce need their administrator"
        ),
        (_, None) => "recovery: should these keys be lost, a new store's records are \
            accepted by senders without an enforced pin (no policy is published: mail may \
            then go in clear if the record disappears)"
            .into(),
    }
}

/// Looks up the store's record name through `discovery` and compares.
/// `dnssec` is the policy asked for on the command line: `require` fails
/// unless the answer is Secure.
pub async fn check(
    store: &Store,
    discovery: &Discovery,
    dnssec: DnssecPolicy,
    now: u64,
) -> CheckReport {
    let name = record_name(store.domain());
    let mut lines = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    // `require` is judged here, so that a non-Secure answer is still compared.
    let lookup_policy = |dnssec| DomainPolicy {
        dnssec,
        ..DomainPolicy::default()
    };
    let validate = if dnssec == DnssecPolicy::Off {
        DnssecPolicy::Off
    } else {
        DnssecPolicy::Prefer
    };
    let mut lookup: Lookup = discovery
        .lookup(store.domain(), lookup_policy(validate), now)
        .await;
    let dnssec_status = lookup.dnssec;
    if matches!(lookup.outcome, Outcome::Temporary(_)) && dnssec_status == DnssecStatus::Bogus {
        // Still show what is published.
        lookup = discovery
            .lookup(store.domain(), lookup_policy(DnssecPolicy::Off), now)
            .await;
    }

    let published: Option<RecordSet> = match &lookup.outcome {
        Outcome::Parameters { published, .. } => Some(published.clone()),
        Outcome::NotIbe(NotIbeReason::NxDomain) => {
            lines.push(format!("{name}: does not exist (NXDOMAIN)"));
            None
        }
        Outcome::NotIbe(NotIbeReason::NoData) => {
            lines.push(format!("{name}: no TXT records"));
            None
        }
        Outcome::NotIbe(NotIbeReason::NoUsableRecord {
            rejected,
            conflicting,
        }) => {
            lines.push(format!("{name}: no usable ibemail record"));
            Some(RecordSet {
                records: Vec::new(),
                rejected: rejected.clone(),
                conflicting: conflicting.clone(),
            })
        }
        Outcome::NotIbe(NotIbeReason::InvalidDomain(e)) => {
            lines.push(format!("{}: not a valid domain: {e}", store.domain()));
            lines.push("record NOT OK".into());
            return CheckReport {
                lines,
                status: CheckStatus::Problem,
            };
        }
        Outcome::Temporary(reason) => {
            lines.push(format!("{name}: temporary DNS failure: {reason}"));
            lines.push(
                "record NOT CHECKED: the name servers did not answer usefully; try again later"
                    .into(),
            );
            return CheckReport {
                lines,
                status: CheckStatus::Temporary,
            };
        }
        Outcome::Refused(reason) => {
            lines.push(format!("{name}: refused by policy: {reason:?}"));
            lines.push("record NOT OK".into());
            return CheckReport {
                lines,
                status: CheckStatus::Problem,
            };
        }
    };

    let comparison = compare(store, published.as_ref(), now);
    for (record, verdict) in &comparison.local {
        let n = record.generation;
        let what = label(store, n);
        match verdict {
            Verdict::Matches => lines.push(format!("{what}: published, matches")),
            Verdict::Missing => {
                lines.push(format!("{what}: missing"));
                problems.push(format!("generation {n} missing"));
            }
            Verdict::KeyMismatch => {
                lines.push(format!(
                    "{what}: MISMATCH (published X/Y differ from the local key)"
                ));
                problems.push(format!("generation {n} MISMATCH"));
            }
            Verdict::SigningMismatch { published } => {
                lines.push(format!(
                    "{what}: MISMATCH ({}; receivers cannot check this domain's signatures — publish again)",
                    if *published {
                        "published S= differs from the local key"
                    } else {
                        "published record has no S="
                    }
                ));
                problems.push(format!("generation {n} MISMATCH (S=)"));
            }
            Verdict::ExpiryMismatch(theirs, mine) => {
                lines.push(format!(
                    "{what}: MISMATCH (published e={}, local retirement e={})",
                    expiry(*theirs),
                    expiry(*mine)
                ));
                problems.push(format!("generation {n} MISMATCH (e=)"));
            }
            Verdict::Conflicting => {
                lines.push(format!(
                    "{what}: MISMATCH (published several times with different X/Y; senders ignore it)"
                ));
                problems.push(format!("generation {n} MISMATCH"));
            }
            Verdict::PolicyMismatch => {
                lines.push(format!(
                    "{what}: MISMATCH (published p=/ma= differ from the store's; publish again)"
                ));
                problems.push(format!("generation {n} MISMATCH (policy)"));
            }
            Verdict::ContinuityMismatch { published } => {
                lines.push(format!(
                    "{what}: MISMATCH ({}; senders that pinned generation {} refuse it without \
                     DNSSEC — publish again)",
                    if *published {
                        "published cs= differs from the store's"
                    } else {
                        "published record has no continuity signature cs="
                    },
                    n.saturating_sub(1)
                ));
                problems.push(format!("generation {n} MISMATCH (cs=)"));
            }
        }
    }
    lines.extend(chain_lines(store, published.as_ref()));
    for extra in &comparison.extra {
        let n = extra.generation;
        if extra.preferred_by_senders {
            lines.push(format!(
                "generation {n}: published but not in this store, and senders prefer it: \
                 mail encrypted to it cannot be opened here"
            ));
            problems.push(format!("foreign generation {n} published"));
        } else if extra.retired_locally {
            lines.push(format!(
                "warning: generation {n} is still published but was retired here (key destroyed); \
                 remove it (ibemail-kgc publish)"
            ));
        } else {
            lines.push(format!(
                "warning: generation {n} is published but not in this store"
            ));
        }
    }
    for rejected in &comparison.rejected {
        lines.push(format!(
            "warning: a broken ibemail record is published: {rejected}"
        ));
    }

    let validated = dnssec != DnssecPolicy::Off;
    lines.push(match dnssec_status {
        DnssecStatus::Secure => "DNSSEC: secure".to_string(),
        DnssecStatus::Insecure => {
            "DNSSEC: insecure (no chain of trust: the record can be forged in transit)".to_string()
        }
        DnssecStatus::Bogus => {
            problems.push("DNSSEC bogus".into());
            "DNSSEC: BOGUS (does not validate from the trust anchor: validating senders defer \
             mail; a zone not chained to the root, such as a lab zone, validates only from its \
             own anchor: --trust-anchor FILE with its DNSKEY, or --dnssec off for a trial)"
                .to_string()
        }
        DnssecStatus::Unchecked if !validated => "DNSSEC: not validated (--dnssec off)".into(),
        DnssecStatus::Unchecked => "DNSSEC: indeterminate".to_string(),
    });
    if dnssec == DnssecPolicy::Require && dnssec_status != DnssecStatus::Secure {
        problems.push(format!("DNSSEC {dnssec_status}, but --dnssec require"));
    }
    lines.push(recovery_line(store, dnssec_status, now));
    let status = if problems.is_empty() {
        lines.push("record OK".into());
        CheckStatus::Ok
    } else {
        lines.push(format!("record NOT OK: {}", problems.join(", ")));
        CheckStatus::Problem
    };
    CheckReport { lines, status }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const NOW: u64 = 1_800_000_000;

    fn store(tmp: &std::path::Path) -> Store {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut store = Store::setup(&tmp.join("kgc"), "a.test", NOW, None, &mut rng).unwrap();
        store.rotate(86_400, NOW + 10, None, &mut rng).unwrap();
        store
    }

    fn set(records: &[Record]) -> RecordSet {
        let texts: Vec<Vec<String>> = records.iter().map(|r| vec![r.to_text()]).collect();
        RecordSet::from_txt_records(&texts)
    }

    #[test]
    fn exact_records_match() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let c = compare(&store, Some(&set(&store.records())), NOW);
        assert!(c.ok(), "{c:?}");
        assert_eq!(c.local.len(), 2);
        assert!(c.extra.is_empty());
    }

    #[test]
    fn missing_mismatched_and_foreign_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store(tmp.path());
        let records = store.records();
        // Nothing published.
        let c = compare(&store, None, NOW);
        assert!(c.local.iter().all(|(_, v)| *v == Verdict::Missing));
        assert!(!c.ok());
        // Only the old generation.
        let c = compare(&store, Some(&set(&records[1..])), NOW);
        assert_eq!(c.local[0].1, Verdict::Missing);
        assert_eq!(c.local[1].1, Verdict::Matches);
        // Other parameters for generation 2, and e= missing on 1.
        let other = Record::new(
            2,
            MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(9)).public_params(),
        );
        let mut old = records[1].clone();
        old.expires = None;
        let c = compare(&store, Some(&set(&[other, old])), NOW);
        assert_eq!(c.local[0].1, Verdict::KeyMismatch);
        assert_eq!(
            c.local[1].1,
            Verdict::ExpiryMismatch(None, records[1].expires)
        );
        // A record from before signatures (no S=), and one with another S=.
        let mut unsigned = records[0].clone();
        unsigned.signing = None;
        let mut other_s = records[1].clone();
        other_s.signing =
            Some(MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(10)).signing_params());
        let c = compare(&store, Some(&set(&[unsigned, other_s])), NOW);
        assert_eq!(c.local[0].1, Verdict::SigningMismatch { published: false });
        assert_eq!(c.local[1].1, Verdict::SigningMismatch { published: true });
        assert!(!c.ok());
        // A higher generation this store does not have.
        let foreign = Record::new(
            3,
            MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(9)).public_params(),
        );
        let mut all = records.clone();
        all.push(foreign);
        let c = compare(&store, Some(&set(&all)), NOW);
        assert_eq!(
            c.extra,
            vec![Extra {
                generation: 3,
                retired_locally: false,
                preferred_by_senders: true
            }]
        );
        assert!(!c.ok());
    }
}
