//! Pins: what a sender remembers of each domain's parameters, so that an
//! attacker who controls plain DNS can neither replace them nor strip them.
//!
//! Per domain the store keeps:
//!
//! - every generation seen: `SHA-256(X ‖ Y)` and the signing parameter `S`
//!   (whole, so that the next generation's continuity signature can be
//!   checked even after this one left DNS);
//! - until when the domain's published policy (`p=require; ma=`) requires
//!   encryption.
//!
//! A new generation is accepted only if its record carries a valid
//! continuity signature by a generation already pinned (or by one accepted
//! that way in the same answer: a chain), or if the answer is DNSSEC-secure.
//! Anything else — a pinned generation published with other parameters, a
//! tampered record, a highest generation below one already seen, a higher
//! generation without a valid chain — is a violation. What a violation
//! costs is the caller's [`PinPolicy`]: `enforce` refuses it always,
//! `policy` while the domain's published policy is in force, `report` never.
//!
//! The published policy is taken from the generation a sender would use.
//! It can always be raised (a longer max-age, or `p=require` where there
//! was none: the worst an attacker gains is deferred mail, which dropping
//! packets gains too), but lowered only by a record whose continuity
//! signature verifies from a pinned generation (the signature covers the
//! policy) or by a DNSSEC-secure answer; otherwise it runs out `ma`
//! seconds after it was last seen. A DNSSEC-secure "no such record" ends
//! it: the domain provably stopped publishing.
//!
//! The file (if any) holds `domain generation sha256(X‖Y) [S=<base64>]`
//! and `domain policy <unix time>` lines, rewritten atomically on change.
//! Files of the previous format (`domain generation sha256(X‖Y)
//! [sha256(S)]`) are read; their `S` is learned when next published.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::SigningParams;
use ibemail_params::{Policy, Record, RecordSet};
use sha2::{Digest, Sha256};

/// Per-domain pinning policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PinPolicy {
    /// No pins, and the domain's published policy is not honoured.
    #[default]
    Off,
    /// Pin and report violations, but use the parameters; the published
    /// policy is not honoured.
    Report,
    /// Pin, follow continuity chains, and honour the domain's published
    /// policy: while it is in force, violations are refused and a missing
    /// or unusable record defers mail; otherwise violations are reported
    /// and the new parameters pinned (trust on first use again).
    Policy,
    /// As `policy`, and violations are refused even without a published
    /// policy in force.
    Enforce,
}

impl PinPolicy {
    /// True if the domain's published policy is honoured.
    pub fn honours_policy(self) -> bool {
        matches!(self, PinPolicy::Policy | PinPolicy::Enforce)
    }
}

impl FromStr for PinPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(PinPolicy::Off),
            "report" => Ok(PinPolicy::Report),
            "policy" => Ok(PinPolicy::Policy),
            "enforce" => Ok(PinPolicy::Enforce),
            other => Err(format!(
                "pin policy {other:?}: expected off, report, policy or enforce"
            )),
        }
    }
}

/// What the pins say about a lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinStatus {
    /// Pinning was not applied.
    NotChecked,
    /// No pins for the domain yet; the published generations are now pinned.
    FirstUse,
    /// The published parameters match the pins.
    Match,
    /// A newer generation, signed by a pinned one, is now pinned.
    NewGeneration {
        /// The highest generation pinned before.
        previous: u32,
    },
    /// The pins were replaced from a DNSSEC-secure answer that contradicted
    /// them (a domain that lost its key recovers this way).
    Replaced,
    /// A pinned generation is published with different parameters (or its
    /// record was altered: its continuity signature fails).
    Changed {
        /// The generation.
        generation: u32,
    },
    /// The highest published generation is older than one already pinned.
    Rollback {
        /// Highest pinned generation.
        pinned: u32,
        /// Highest published generation.
        published: u32,
    },
    /// A generation newer than the pinned ones without a valid continuity
    /// signature from one of them.
    Unchained {
        /// The generation.
        generation: u32,
        /// The highest pinned generation.
        pinned: u32,
    },
}

impl PinStatus {
    /// True for the statuses that indicate tampering.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            PinStatus::Changed { .. } | PinStatus::Rollback { .. } | PinStatus::Unchained { .. }
        )
    }
}

impl std::fmt::Display for PinStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinStatus::NotChecked => write!(f, "not checked"),
            PinStatus::FirstUse => write!(f, "first use (now pinned)"),
            PinStatus::Match => write!(f, "matches pin"),
            PinStatus::NewGeneration { previous } => write!(
                f,
                "new generation, signed by pinned generation (previous pinned: {previous})"
            ),
            PinStatus::Replaced => write!(f, "pins replaced from a DNSSEC-secure answer"),
            PinStatus::Changed { generation } => {
                write!(f, "CHANGED: generation {generation} differs from its pin")
            }
            PinStatus::Rollback { pinned, published } => write!(
                f,
                "ROLLBACK: highest published generation {published} is older than pinned {pinned}"
            ),
            PinStatus::Unchained { generation, pinned } => write!(
                f,
                "UNCHAINED: generation {generation} is not signed by pinned generation {pinned}"
            ),
        }
    }
}

/// What is pinned of a generation's signing parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SigningPin {
    /// Pinned before the record had `S=`: any `S` is learned on sight.
    Unknown,
    /// A pin file of the previous format: the hash only.
    Hash([u8; 32]),
    /// The parameter itself.
    Known(SigningParams),
}

/// The pinned fingerprints of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pin {
    params: [u8; 32],
    signing: SigningPin,
}

impl Pin {
    fn of(record: &Record) -> Pin {
        Pin {
            params: Sha256::digest(record.params.to_bytes()).into(),
            signing: record
                .signing
                .map_or(SigningPin::Unknown, SigningPin::Known),
        }
    }

    /// True if `record` shows this generation with other parameters.
    fn contradicts(&self, record: &Record) -> bool {
        let params: [u8; 32] = Sha256::digest(record.params.to_bytes()).into();
        let signing = match (self.signing, record.signing) {
            (SigningPin::Unknown, _) => false,
            (SigningPin::Known(s), Some(seen)) => s != seen,
            (SigningPin::Hash(h), Some(seen)) => Sha256::digest(seen.to_bytes()).as_slice() != h,
            (_, None) => true,
        };
        params != self.params || signing
    }

    fn signing(&self) -> Option<SigningParams> {
        match self.signing {
            SigningPin::Known(s) => Some(s),
            _ => None,
        }
    }
}

/// One domain's pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DomainPins {
    generations: BTreeMap<u32, Pin>,
    /// Until when the published policy requires encryption.
    policy_until: Option<u64>,
}

impl DomainPins {
    /// The signing parameter of `generation`, from the pins or, when its
    /// pin matches, from the published record.
    fn signing(&self, generation: u32, published: &RecordSet) -> Option<SigningParams> {
        let pin = self.generations.get(&generation)?;
        pin.signing().or_else(|| {
            let record = published.generation(generation)?;
            (!pin.contradicts(record)).then_some(record.signing?)
        })
    }

    /// Takes the policy of the record a sender uses: raised always,
    /// lowered only when `authenticated`.
    fn take_policy(&mut self, policy: Option<&Policy>, authenticated: bool, now: u64) {
        match policy {
            Some(p) => {
                let until = now.saturating_add(p.max_age);
                self.policy_until = Some(if authenticated {
                    until
                } else {
                    self.policy_until.unwrap_or(0).max(until)
                });
            }
            None if authenticated => self.policy_until = None,
            None => {}
        }
    }

    /// Pins every record of `published` (learning `S` where only its hash
    /// or nothing was known).
    fn pin_all(&mut self, published: &RecordSet) {
        for record in &published.records {
            self.generations.insert(record.generation, Pin::of(record));
        }
    }
}

type Pins = BTreeMap<String, DomainPins>;

/// The pin store.
#[derive(Debug)]
pub struct PinStore {
    path: Option<PathBuf>,
    pins: Mutex<Pins>,
    verified: Verified,
}

/// Continuity signatures already verified (a pairing each), so that a
/// lookup served from the cache costs hashing, not pairings.
#[derive(Debug, Default)]
struct Verified(Mutex<std::collections::HashSet<[u8; 32]>>);

impl Verified {
    /// Entries kept at most (then the set starts over).
    const CAPACITY: usize = 4096;

    /// True if `record` carries a valid continuity signature by `previous`.
    fn continues(&self, domain: &str, previous: &SigningParams, record: &Record) -> bool {
        let mut hash = Sha256::new();
        hash.update(domain.as_bytes());
        hash.update([0]);
        hash.update(previous.to_bytes());
        hash.update(record.to_text().as_bytes());
        let key: [u8; 32] = hash.finalize().into();
        let seen = |set: &mut std::collections::HashSet<[u8; 32]>| set.contains(&key);
        if seen(&mut self.0.lock().unwrap_or_else(|e| e.into_inner())) {
            return true;
        }
        let valid = record.continues(domain, previous);
        if valid {
            let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if set.len() >= Self::CAPACITY {
                set.clear();
            }
            set.insert(key);
        }
        valid
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    <[u8; 32]>::try_from(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One line of a pin file.
fn parse_line(pins: &mut Pins, fields: &[&str]) -> Option<()> {
    let domain = pins.entry(fields.first()?.to_string()).or_default();
    if fields.get(1) == Some(&"policy") {
        domain.policy_until = Some(fields.get(2)?.parse().ok()?);
        return (fields.len() == 3).then_some(());
    }
    let generation: u32 = fields.get(1)?.parse().ok()?;
    let params = parse_hex32(fields.get(2)?)?;
    let signing = match fields.get(3) {
        None => SigningPin::Unknown,
        Some(f) => match f.strip_prefix("S=") {
            Some(b64) => {
                SigningPin::Known(SigningParams::from_bytes(&STANDARD.decode(b64).ok()?).ok()?)
            }
            None => SigningPin::Hash(parse_hex32(f)?),
        },
    };
    if fields.len() > 4 {
        return None;
    }
    domain
        .generations
        .insert(generation, Pin { params, signing });
    Some(())
}

impl PinStore {
    /// A store that lives only in memory.
    pub fn in_memory() -> Self {
        PinStore {
            path: None,
            pins: Mutex::new(BTreeMap::new()),
            verified: Verified::default(),
        }
    }

    /// A store persisted in `path` (created on first change; its directory
    /// must exist).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut pins: Pins = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if fields.is_empty() || fields[0].starts_with('#') {
                        continue;
                    }
                    parse_line(&mut pins, &fields).ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}:{}: not `domain generation fingerprint [S=signing]` \
                                 or `domain policy time`",
                                path.display(),
                                n + 1
                            ),
                        )
                    })?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(PinStore {
            path: Some(path.to_path_buf()),
            pins: Mutex::new(pins),
            verified: Verified::default(),
        })
    }

    /// The file, if persisted.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, pins: &Pins) {
        let Some(path) = &self.path else { return };
        let mut text = String::from(
            "# ibemail parameter pins 2: domain generation sha256(X||Y) [S=base64]; \
             domain policy require-until\n",
        );
        for (domain, entry) in pins {
            for (generation, pin) in &entry.generations {
                text.push_str(&format!("{domain} {generation} {}", hex(&pin.params)));
                match pin.signing {
                    SigningPin::Known(s) => {
                        text.push_str(&format!(" S={}", STANDARD.encode(s.to_bytes())));
                    }
                    SigningPin::Hash(h) => text.push_str(&format!(" {}", hex(&h))),
                    SigningPin::Unknown => {}
                }
                text.push('\n');
            }
            if let Some(until) = entry.policy_until {
                text.push_str(&format!("{domain} policy {until}\n"));
            }
        }
        let temp = path.with_extension("tmp");
        let result = std::fs::File::create(&temp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, path));
        if let Err(e) = result {
            tracing::warn!("cannot save pins to {}: {e}", path.display());
        }
    }

    /// Stores `entry` for `domain` if it changed.
    fn update(&self, mut pins: std::sync::MutexGuard<'_, Pins>, domain: &str, entry: DomainPins) {
        if pins.get(domain) == Some(&entry) {
            return;
        }
        pins.insert(domain.to_string(), entry);
        let snapshot = pins.clone();
        drop(pins);
        self.save(&snapshot);
    }

    /// Until when `domain`'s published policy requires encryption, if a
    /// policy was seen.
    pub fn policy_until(&self, domain: &str) -> Option<u64> {
        self.lock().get(domain).and_then(|d| d.policy_until)
    }

    /// A DNSSEC-secure answer proved that `domain` publishes no record: its
    /// policy ends (the domain's own, signed word).
    pub fn end_policy(&self, domain: &str) {
        let pins = self.lock();
        let Some(mut entry) = pins.get(domain).cloned() else {
            return;
        };
        entry.policy_until = None;
        self.update(pins, domain, entry);
    }

    /// Checks `published` (of which `selected` is the generation a sender
    /// would use) against the pins of `domain` at `now`, and pins what is
    /// acceptable: new generations with a valid chain, the policy. `secure`:
    /// the answer is DNSSEC-secure, which is accepted whatever the pins say
    /// (and replaces them). On a violation nothing is changed.
    pub fn check(
        &self,
        domain: &str,
        published: &RecordSet,
        selected: &Record,
        secure: bool,
        now: u64,
    ) -> PinStatus {
        let pins = self.lock();
        let old = pins.get(domain).cloned().unwrap_or_default();
        let judged = judge(&self.verified, domain, &old, published, selected);
        let mut entry = old.clone();
        let status = match judged {
            Judgement::Violation(status) if !secure => return status,
            Judgement::Violation(_) => {
                entry.generations.clear();
                entry.pin_all(published);
                PinStatus::Replaced
            }
            Judgement::Accepted { status, .. } => {
                entry.pin_all(published);
                status
            }
        };
        // A record vouched for by a pinned generation may lower the policy.
        let authenticated =
            secure || continues(&self.verified, domain, &entry, published, selected);
        entry.take_policy(selected.policy.as_ref(), authenticated, now);
        self.update(pins, domain, entry);
        status
    }

    /// Pins `published` afresh after a violation the caller's policy lets
    /// through (trust on first use again): the old pins are dropped, the
    /// policy is the selected record's.
    pub fn repin(&self, domain: &str, published: &RecordSet, selected: &Record, now: u64) {
        let pins = self.lock();
        let mut entry = DomainPins::default();
        entry.pin_all(published);
        entry.take_policy(selected.policy.as_ref(), false, now);
        self.update(pins, domain, entry);
    }
}

/// The outcome of comparing an answer with the pins.
enum Judgement {
    Accepted { status: PinStatus },
    Violation(PinStatus),
}

/// True if `record`'s continuity signature verifies from the (pinned or
/// pinned-and-published) signing parameter of the generation before it.
fn continues(
    verified: &Verified,
    domain: &str,
    pins: &DomainPins,
    published: &RecordSet,
    record: &Record,
) -> bool {
    record
        .generation
        .checked_sub(1)
        .and_then(|previous| pins.signing(previous, published))
        .is_some_and(|s| verified.continues(domain, &s, record))
}

fn judge(
    verified: &Verified,
    domain: &str,
    pins: &DomainPins,
    published: &RecordSet,
    selected: &Record,
) -> Judgement {
    let Some(&highest) = pins.generations.keys().next_back() else {
        return Judgement::Accepted {
            status: PinStatus::FirstUse,
        };
    };
    // Pinned generations: same parameters, and a record whose continuity
    // signature can be checked must carry a valid one (else it was altered,
    // e.g. its policy lowered).
    for record in &published.records {
        let Some(pin) = pins.generations.get(&record.generation) else {
            continue;
        };
        let checkable = record.continuity.is_some()
            && record
                .generation
                .checked_sub(1)
                .and_then(|p| pins.signing(p, published))
                .is_some();
        if pin.contradicts(record)
            || (checkable && !continues(verified, domain, pins, published, record))
        {
            return Judgement::Violation(PinStatus::Changed {
                generation: record.generation,
            });
        }
    }
    if selected.generation < highest {
        return Judgement::Violation(PinStatus::Rollback {
            pinned: highest,
            published: selected.generation,
        });
    }
    // Newer generations: each signed by the one before, from a pinned one.
    let mut chain = pins.clone();
    let mut newest = highest;
    let mut newer: Vec<&Record> = published
        .records
        .iter()
        .filter(|r| r.generation > highest)
        .collect();
    newer.sort_by_key(|r| r.generation);
    for record in newer {
        if !continues(verified, domain, &chain, published, record) {
            return Judgement::Violation(PinStatus::Unchained {
                generation: record.generation,
                pinned: highest,
            });
        }
        chain.generations.insert(record.generation, Pin::of(record));
        newest = record.generation;
    }
    Judgement::Accepted {
        status: if newest > highest {
            PinStatus::NewGeneration { previous: highest }
        } else {
            PinStatus::Match
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const DAY: u64 = 86_400;

    fn key(seed: u64) -> MasterKey {
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    /// Generation `n` of b.test made from `seed`, with the policy, signed by
    /// `previous` when given.
    fn record(n: u32, seed: u64, policy: Option<Policy>, previous: Option<&MasterKey>) -> Record {
        let k = key(seed);
        let mut r = Record::new(n, k.public_params())
            .with_signing(k.signing_params())
            .with_policy(policy);
        if let Some(previous) = previous {
            let bytes = Policy::signed_bytes(policy.as_ref());
            r.continuity = Some(previous.sign_successor(&r.successor("b.test", &bytes).unwrap()));
        }
        r
    }

    fn set(records: &[&Record]) -> RecordSet {
        let texts: Vec<Vec<String>> = records.iter().map(|r| r.to_strings()).collect();
        RecordSet::from_txt_records(&texts)
    }

    fn check(store: &PinStore, records: &[&Record], now: u64) -> PinStatus {
        let published = set(records);
        let selected = published.select(now).unwrap().clone();
        store.check("b.test", &published, &selected, false, now)
    }

    #[test]
    fn a_signed_rotation_is_followed_and_everything_else_is_a_violation() {
        let store = PinStore::in_memory();
        let week = Some(Policy::require(7 * DAY));
        let g1 = record(1, 1, week, None);
        let g2 = record(2, 2, week, Some(&key(1)));
        let g3 = record(3, 3, week, Some(&key(2)));
        assert_eq!(check(&store, &[&g1], 0), PinStatus::FirstUse);
        assert_eq!(check(&store, &[&g1], 10), PinStatus::Match);
        // The genuine rotation: accepted, during and after the overlap.
        assert_eq!(
            check(&store, &[&g2, &g1], 20),
            PinStatus::NewGeneration { previous: 1 }
        );
        assert_eq!(check(&store, &[&g2], 30), PinStatus::Match);
        // A chain of two in one answer, from the pinned 2.
        let g4 = record(4, 4, week, Some(&key(3)));
        assert_eq!(
            check(&store, &[&g4, &g3], 40),
            PinStatus::NewGeneration { previous: 2 }
        );

        // An attacker's generation 999: unsigned, or signed by himself.
        let forged = record(999, 66, week, None);
        let self_signed = record(5, 67, week, Some(&key(66)));
        assert_eq!(
            check(&store, &[&forged], 50),
            PinStatus::Unchained {
                generation: 999,
                pinned: 4
            }
        );
        assert_eq!(
            check(&store, &[&self_signed, &g4], 50),
            PinStatus::Unchained {
                generation: 5,
                pinned: 4
            }
        );
        // A gap: 6 is signed by 5, which nobody pinned.
        let g6 = record(6, 6, week, Some(&key(5)));
        assert!(check(&store, &[&g6, &g4], 50).is_violation());
        // Replaying the genuine, older generation 2 alone: a rollback.
        assert_eq!(
            check(&store, &[&g2], 60),
            PinStatus::Rollback {
                pinned: 4,
                published: 2
            }
        );
        // The pinned generation 4 with other keys.
        let other4 = record(4, 68, week, Some(&key(3)));
        assert_eq!(
            check(&store, &[&other4], 70),
            PinStatus::Changed { generation: 4 }
        );
        // Nothing above was pinned: the genuine 4 still matches.
        assert_eq!(check(&store, &[&g4], 80), PinStatus::Match);
    }

    #[test]
    fn the_policy_is_raised_freely_but_lowered_only_through_a_chain_or_a_secure_answer() {
        let store = PinStore::in_memory();
        let week = Policy::require(7 * DAY);
        let g1 = record(1, 1, Some(week), None);
        check(&store, &[&g1], 0);
        assert_eq!(store.policy_until("b.test"), Some(7 * DAY));
        // Generation 1 re-published without the policy (no chain to prove
        // it is the domain's word): the policy stays, and runs out.
        let g1_bare = record(1, 1, None, None);
        assert_eq!(check(&store, &[&g1_bare], DAY), PinStatus::Match);
        assert_eq!(store.policy_until("b.test"), Some(7 * DAY));
        // Tampering with a chained record's policy breaks its signature.
        let g2 = record(2, 2, Some(week), Some(&key(1)));
        check(&store, &[&g2, &g1], 2 * DAY);
        assert_eq!(store.policy_until("b.test"), Some(9 * DAY));
        let mut lowered = g2.clone();
        lowered.policy = Some(Policy::require(60));
        assert_eq!(
            check(&store, &[&lowered], 3 * DAY),
            PinStatus::Changed { generation: 2 }
        );
        assert_eq!(store.policy_until("b.test"), Some(9 * DAY));
        // The domain lowers it by rotating: generation 3, signed, no policy.
        let g3 = record(3, 3, None, Some(&key(2)));
        assert_eq!(
            check(&store, &[&g3, &g2], 4 * DAY),
            PinStatus::NewGeneration { previous: 2 }
        );
        assert_eq!(store.policy_until("b.test"), None);
        // A policy added to the chained record without re-signing it: the
        // signature fails, a violation like any alteration.
        let mut raised = g3.clone();
        raised.policy = Some(Policy::require(DAY));
        assert_eq!(
            check(&store, &[&raised], 5 * DAY),
            PinStatus::Changed { generation: 3 }
        );
        // Raising needs no chain: generation 1 with a longer max-age.
        let fresh = PinStore::in_memory();
        check(
            &fresh,
            &[&record(1, 1, Some(Policy::require(DAY)), None)],
            0,
        );
        check(&fresh, &[&record(1, 1, Some(week), None)], 0);
        assert_eq!(fresh.policy_until("b.test"), Some(7 * DAY));
        // A DNSSEC-secure denial ends the policy.
        let fresh = PinStore::in_memory();
        check(&fresh, &[&g1], 0);
        fresh.end_policy("b.test");
        assert_eq!(fresh.policy_until("b.test"), None);
    }

    #[test]
    fn a_secure_answer_replaces_pins_and_a_repin_trusts_again() {
        let store = PinStore::in_memory();
        let g1 = record(1, 1, Some(Policy::require(DAY)), None);
        check(&store, &[&g1], 0);
        // The domain lost its key and starts again at generation 1.
        let again = record(1, 50, None, None);
        let published = set(&[&again]);
        assert_eq!(
            store.check("b.test", &published, &again, false, 10),
            PinStatus::Changed { generation: 1 }
        );
        assert_eq!(
            store.check("b.test", &published, &again, true, 10),
            PinStatus::Replaced
        );
        assert_eq!(store.policy_until("b.test"), None, "lowered by DNSSEC");
        assert_eq!(
            store.check("b.test", &published, &again, false, 20),
            PinStatus::Match
        );
        // Without DNSSEC, the caller may decide to trust anew.
        let third = record(1, 51, None, None);
        let published = set(&[&third]);
        store.repin("b.test", &published, &third, 30);
        assert_eq!(
            store.check("b.test", &published, &third, false, 40),
            PinStatus::Match
        );
    }

    #[test]
    fn pins_persist_across_restarts_and_old_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let g1 = record(1, 1, Some(Policy::require(DAY)), None);
        let g2 = record(2, 2, None, Some(&key(1)));
        {
            let store = PinStore::open(&path).unwrap();
            assert_eq!(check(&store, &[&g1], 0), PinStatus::FirstUse);
        }
        let store = PinStore::open(&path).unwrap();
        assert_eq!(store.policy_until("b.test"), Some(DAY));
        // Generation 1 left DNS, but its S is pinned: 2 still chains.
        assert_eq!(
            check(&store, &[&g2], 10),
            PinStatus::NewGeneration { previous: 1 }
        );
        drop(store);
        // The previous format: `domain generation sha256(X||Y) [sha256(S)]`.
        let old = key(1);
        std::fs::write(
            &path,
            format!(
                "b.test 1 {} {}\n",
                hex(&Sha256::digest(old.public_params().to_bytes())),
                hex(&Sha256::digest(old.signing_params().to_bytes()))
            ),
        )
        .unwrap();
        let store = PinStore::open(&path).unwrap();
        // Only the hash of S is known: 2 chains once 1 is seen with it.
        assert!(check(&store, &[&g2], 10).is_violation());
        assert_eq!(
            check(&store, &[&g2, &g1], 10),
            PinStatus::NewGeneration { previous: 1 }
        );
        let swapped = record(1, 1, None, None).with_signing(key(9).signing_params());
        let store = PinStore::open(&path).unwrap();
        assert!(check(&store, &[&swapped], 20).is_violation());
        std::fs::write(&path, "b.test one zz\n").unwrap();
        assert!(PinStore::open(&path).is_err());
    }
}
