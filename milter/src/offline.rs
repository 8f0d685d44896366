//! The offline commands' logic: where `encrypt` gets parameters from, and
//! how `lookup` reports what a sender would use.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ibemail_discovery::{Lookup, NotIbeReason, Outcome, PinStatus, RefusedReason};
use ibemail_params::{RecordSet, record_name};

/// Exit status of the offline commands (sysexits.h where one fits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// The work could not be done (no parameters, not ours, bad input).
    Failed = 1,
    /// Parameters exist but policy forbids using them.
    Refused = 3,
    /// Bad command line.
    Usage = 64,
    /// Temporary failure (DNS, KGC unreachable): try again later.
    TempFail = 75,
    /// The milter cannot start with its configuration (bad file, socket
    /// in use, key store unreadable); not restarted by the units.
    Config = 78,
}

/// Parameters given on the command line (`--record`, `--record-file`).
///
/// A file may hold raw record texts (one per line, used for every
/// recipient domain) and zone-file lines as `ibemail-kgc record` prints
/// them (`_ibemailkey.<domain>. TTL IN TXT "..." ["..."]`), which apply to
/// their domain only. Blank lines and `;`/`#` comments are skipped.
#[derive(Clone, Debug, Default)]
pub struct RecordBook {
    any: Vec<Vec<String>>,
    by_domain: BTreeMap<String, Vec<Vec<String>>>,
}

impl RecordBook {
    /// A book from one record text given on the command line.
    pub fn add_text(&mut self, text: &str) {
        self.any.push(vec![text.trim().to_string()]);
    }

    /// Adds the records of a file's contents; errors name the line.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if !line.contains('"') {
                self.add_text(line);
                continue;
            }
            let (owner, strings) = zone_line(line)
                .ok_or_else(|| format!("line {}: not a TXT zone-file line", number + 1))?;
            let domain = owner
                .trim_end_matches('.')
                .to_ascii_lowercase()
                .strip_prefix(&format!("{}.", ibemail_params::RECORD_LABEL))
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "line {}: owner {owner} is not an {}.<domain> name",
                        number + 1,
                        ibemail_params::RECORD_LABEL
                    )
                })?;
            self.by_domain.entry(domain).or_default().push(strings);
        }
        Ok(())
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.by_domain.is_empty()
    }

    /// The records that apply to `domain` (its own lines, else the raw ones).
    pub fn records_for(&self, domain: &str) -> RecordSet {
        let lines = self
            .by_domain
            .get(&domain.to_ascii_lowercase())
            .unwrap_or(&self.any);
        RecordSet::from_txt_records(lines)
    }
}

/// Splits `owner [ttl] [class] TXT "a" "b"` into the owner and the strings.
fn zone_line(line: &str) -> Option<(String, Vec<String>)> {
    let quote = line.find('"')?;
    let head: Vec<&str> = line[..quote].split_whitespace().collect();
    if !head.iter().any(|t| t.eq_ignore_ascii_case("TXT")) {
        return None;
    }
    let owner = head.first()?.to_string();
    let mut strings = Vec::new();
    let mut rest = &line[quote..];
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let end = after.find('"')?;
        strings.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    Some((owner, strings))
}

/// The exit status `lookup` uses for an outcome.
pub fn lookup_exit(lookup: &Lookup) -> Exit {
    match lookup.outcome {
        Outcome::Parameters { .. } => Exit::Ok,
        Outcome::NotIbe(_) => Exit::Failed,
        Outcome::Refused(_) => Exit::Refused,
        Outcome::Temporary(_) => Exit::TempFail,
    }
}

/// What `lookup` prints: one `key: value` line per fact.
pub fn lookup_report(lookup: &Lookup) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{:<11} {value}", format!("{key}:"));
    };
    line("domain", &lookup.domain);
    line("record", &record_name(&lookup.domain));
    match &lookup.outcome {
        Outcome::Parameters { record, published } => {
            line("result", "encrypt (the domain takes ibemail mail)");
            let mut generations: Vec<u32> =
                published.records.iter().map(|r| r.generation).collect();
            generations.sort_unstable();
            let generations = generations
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            line(
                "generation",
                &format!("{} (published: {generations})", record.generation),
            );
            line(
                "algorithm",
                &format!(
                    "{} on {}",
                    ibemail_params::ALGORITHM_BB2_FO,
                    ibemail_params::CURVE_BLS12_381
                ),
            );
            if let Some(expires) = record.expires {
                line("expires", &format!("{expires} (unix time)"));
            }
            if let Some(policy) = record.policy {
                line(
                    "policy",
                    &format!(
                        "require, max-age {}s (never sent in clear meanwhile)",
                        policy.max_age
                    ),
                );
            }
            for rejected in &published.rejected {
                line("ignored", &rejected.to_string());
            }
        }
        Outcome::NotIbe(reason) => {
            let why = match reason {
                NotIbeReason::InvalidDomain(e) => format!("invalid domain: {e}"),
                NotIbeReason::NxDomain => "no such name (NXDOMAIN)".to_string(),
                NotIbeReason::NoData => "no TXT record (NODATA)".to_string(),
                NotIbeReason::NoUsableRecord {
                    rejected,
                    conflicting,
                } => {
                    let mut why = "no usable ibemail record".to_string();
                    for r in rejected {
                        let _ = write!(why, "; {r}");
                    }
                    for g in conflicting {
                        let _ = write!(why, "; generation {g} published twice with different keys");
                    }
                    why
                }
            };
            line(
                "result",
                &format!("plaintext (not an ibemail domain: {why})"),
            );
        }
        Outcome::Temporary(reason) => {
            line(
                "result",
                &format!("temporary failure, mail would be deferred: {reason}"),
            );
        }
        Outcome::Refused(reason) => {
            let why = match reason {
                RefusedReason::DnssecRequired(status) => {
                    format!("dnssec=require but the answer is {status}")
                }
                RefusedReason::Pin(status) => format!("pin violation: {}", pin_text(status)),
                RefusedReason::PolicyRequires { until } => format!(
                    "the domain published p=require (in force until {until}, unix time) \
                     but no usable record is published now"
                ),
            };
            line("result", &format!("refused, mail would be deferred: {why}"));
        }
    }
    line(
        "ttl",
        &format!(
            "{}s{}",
            lookup.ttl.as_secs(),
            if lookup.cached { " (cached)" } else { "" }
        ),
    );
    line("dnssec", &lookup.dnssec.to_string());
    line("pin", &pin_text(&lookup.pin));
    out
}

fn pin_text(status: &PinStatus) -> String {
    match status {
        PinStatus::NotChecked => "not checked".to_string(),
        PinStatus::FirstUse => "first use, now pinned".to_string(),
        PinStatus::Match => "matches the pinned parameters".to_string(),
        PinStatus::NewGeneration { previous } => {
            format!("new generation after {previous}, signed by it, now pinned")
        }
        PinStatus::Replaced => "pins replaced from a DNSSEC-secure answer".to_string(),
        PinStatus::Unchained { generation, pinned } => format!(
            "UNCHAINED: generation {generation} is not signed by pinned generation {pinned}"
        ),
        PinStatus::Changed { generation } => {
            format!("CHANGED: generation {generation} differs from the pinned parameters")
        }
        PinStatus::Rollback { pinned, published } => {
            format!("ROLLBACK: generation {published} published, {pinned} already pinned")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ibemail_ibe::MasterKey;
    use ibemail_params::Record;
    use rand_core::OsRng;

    fn record(generation: u32) -> Record {
        Record::new(generation, MasterKey::generate(&mut OsRng).public_params())
    }

    #[test]
    fn record_file_lines_apply_to_their_domain() {
        let a = record(1);
        let b = record(2);
        let text = format!(
            "; comment\n{}\n\n{}\n",
            a.zone_line("a.test", 300),
            b.zone_line("B.Test", 300)
        );
        let mut book = RecordBook::default();
        book.add_file(&text).unwrap();
        assert_eq!(book.records_for("a.test").records, vec![a]);
        assert_eq!(book.records_for("b.test").records, vec![b]);
        assert!(book.records_for("c.test").records.is_empty());
    }

    #[test]
    fn raw_records_apply_to_every_domain_and_split_strings_join() {
        let a = record(4);
        let text = a.to_text();
        let (x, y) = text.split_at(40);
        let mut book = RecordBook::default();
        book.add_file(&format!(
            "{text}\n_ibemailkey.s.test. IN TXT \"{x}\" \"{y}\"\n"
        ))
        .unwrap();
        assert_eq!(book.records_for("any.test").records, vec![a.clone()]);
        assert_eq!(book.records_for("s.test").records, vec![a]);
    }

    #[test]
    fn foreign_owner_and_unterminated_strings_are_errors() {
        let mut book = RecordBook::default();
        let err = book.add_file("www.a.test. IN TXT \"x\"\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = book
            .add_file("_ibemailkey.a.test. IN TXT \"x\n")
            .unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
