//! Pins: what a sender remembers of each domain's parameters, so that an
//! attacker who controls plain DNS can neither replace them nor strip them.
//!
//! Per domain the store keeps:
//!
//! - the highest few generations seen ([`MAX_GENERATIONS`]): `SHA-256(X ‖ Y)`
//!   and the signing parameter `S` (whole, so that the next generation's
//!   continuity signature can be checked even after this one left DNS);
//! - until when the domain's published policy (`p=require; ma=`) requires
//!   encryption, and the max-age it was last vouched for with.
//!
//! Trust flows only from what was pinned *before* an answer arrived:
//!
//! - On first use every published generation is pinned (trust on first use).
//! - Later, a generation above the highest pinned one is accepted only with
//!   a valid continuity signature from a pinned generation (or from one
//!   accepted that way in the same answer: a chain). Generations below the
//!   highest pinned one are never added: an attacker cannot slip in a
//!   forged predecessor and then sign with its key.
//! - A pinned generation published with other parameters, or whose
//!   continuity signature fails against its pinned predecessor, is
//!   `Changed`; a highest usable generation below the pinned one is a
//!   `Rollback`; a newer generation without a valid chain is `Unchained`.
//!   What a violation costs is the caller's [`PinPolicy`]: `enforce` refuses
//!   it always, `policy` while the domain's published policy is in force,
//!   `report` never.
//! - A DNSSEC-secure answer replaces pins it contradicts (a domain that lost
//!   its key recovers this way), except that it never rolls back to a lower
//!   generation: a replayed, still validly signed old RRset must not undo a
//!   rotation.
//!
//! The published policy is taken from the generation a sender would use.
//! A record *vouched for* — DNSSEC-secure, or carrying a continuity
//! signature that verifies from a generation pinned earlier (the signature
//! covers the policy) — sets it: raises, lowers or ends it. Any other record
//! can only extend it, and by no more than the max-age last vouched for (or
//! a day when none was): one spoofed answer cannot impose a year-long
//! policy, nor shorten one. A DNSSEC-secure "no such record" ends it.
//!
//! The file (if any) holds `domain generation sha256(X‖Y) [S=<base64>]`
//! and `domain policy <unix time> [max-age]` lines. It is a journal: a
//! change appends the domain's lines after a `domain -` line (which drops
//! what came before for it), synced; once the appended lines outgrow the
//! rest the file is rewritten whole (a fresh temporary file, synced,
//! renamed, the directory synced). One writer at a time. A policy's
//! deadline that only moved forward is written once it moved by more than
//! a quarter of its max-age. Lines that do not parse are skipped with a
//! warning rather than stopping the milter. Files of the previous formats
//! (`domain generation sha256(X‖Y) [sha256(S)]`) are read; a hashed `S` is
//! learned when a record matching it is published, an unknown one only
//! from a DNSSEC-secure answer.
//!
//! At most [`MAX_DOMAINS`] domains are kept. A full store makes room for a
//! new domain by forgetting the least recently used domain whose policy is
//! not in force; a domain whose policy is in force is never forgotten (its
//! policy is what keeps a stripped or substituted record from being
//! accepted), so when every domain has one the new domain is used without
//! being pinned. The file is written oldest use first, and a domain's
//! recency on reading is where its last line stands: after a restart the
//! store still forgets the least recently used domain, not the first by
//! name. A file of more than [`MAX_DOMAINS`] domains is read down to the
//! domains with a policy in force, then the most recently used.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{SIGNING_PARAMS_BYTES, SigningParams};
use ibemail_params::{Policy, Record, RecordSet};
use sha2::{Digest, Sha256};

/// Generations pinned per domain (the highest ones).
pub const MAX_GENERATIONS: usize = 4;

/// Domains pinned at most. Past it a new domain replaces the least
/// recently used one whose policy is not in force, or is not pinned at all.
pub const MAX_DOMAINS: usize = 100_000;

/// How long a policy may be extended by an answer that is not vouched for,
/// when no max-age was ever vouched for.
pub const UNVOUCHED_POLICY_CAP: u64 = 86_400;
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
    /// Pinned from a record without `S=`: it vouches for no successor.
    Unknown,
    /// A pin file of the previous format: the hash only.
    Hash([u8; 32]),
    /// The parameter itself, encoded (decoded when it vouches: a store of
    /// many domains opens without decoding a point per generation).
    Known([u8; SIGNING_PARAMS_BYTES]),
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
                .map_or(SigningPin::Unknown, |s| SigningPin::Known(s.to_bytes())),
        }
    }

    /// True if `record` shows this generation with other parameters.
    fn contradicts(&self, record: &Record) -> bool {
        let params: [u8; 32] = Sha256::digest(record.params.to_bytes()).into();
        let signing = match (self.signing, record.signing) {
            (SigningPin::Unknown, _) => false,
            (SigningPin::Known(s), Some(seen)) => s != seen.to_bytes(),
            (SigningPin::Hash(h), Some(seen)) => Sha256::digest(seen.to_bytes()).as_slice() != h,
            (_, None) => true,
        };
        params != self.params || signing
    }

    /// The signing parameter this pin vouches for: the pinned one, or the
    /// published one when the pin holds its hash. `Unknown` vouches for
    /// nothing (learning `S` from the same answer that uses it would let an
    /// attacker bring his own).
    fn vouching(&self, published: Option<&Record>) -> Option<SigningParams> {
        match self.signing {
            SigningPin::Known(s) => SigningParams::from_bytes(&s).ok(),
            SigningPin::Hash(h) => published?
                .signing
                .filter(|s| Sha256::digest(s.to_bytes()).as_slice() == h),
            SigningPin::Unknown => None,
        }
    }
}

/// How far an answer is trusted to set a domain's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    /// DNSSEC-secure, or vouched for by a pinned generation.
    Vouched,
    /// The first answer seen for the domain.
    FirstUse,
    /// Anything else.
    Unvouched,
}

/// One domain's pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct DomainPins {
    generations: BTreeMap<u32, Pin>,
    /// Until when the published policy requires encryption.
    policy_until: Option<u64>,
    /// The max-age last vouched for: how far an unvouched answer may
    /// extend the policy.
    policy_max_age: Option<u64>,
    /// `policy_until` as last written to the file.
    saved_until: Option<u64>,
    /// When a lookup last used the pins, on the store's use counter (not
    /// saved; read back from the domain's position in the file): the least
    /// recently used domain without a policy in force makes room in a full
    /// store.
    last_used: u64,
}

impl DomainPins {
    /// True if the published policy is still in force at `now` (as
    /// `Discovery` honours it: `until > now`).
    fn policy_in_force(&self, now: u64) -> bool {
        self.policy_until.is_some_and(|until| until > now)
    }

    fn highest(&self) -> Option<u32> {
        self.generations.keys().next_back().copied()
    }

    /// The signing parameter that pinned `generation` vouches for.
    fn signing(&self, generation: u32, published: &RecordSet) -> Option<SigningParams> {
        self.generations
            .get(&generation)?
            .vouching(published.generation(generation))
    }

    /// Takes the policy of the record a sender uses, as far as `trust`
    /// allows.
    fn take_policy(&mut self, policy: Option<&Policy>, trust: Trust, now: u64) {
        let fresh =
            trust == Trust::Vouched || (trust == Trust::FirstUse && self.policy_until.is_none());
        match policy {
            Some(p) if fresh => {
                self.policy_until = Some(now.saturating_add(p.max_age));
                self.policy_max_age = Some(p.max_age);
            }
            Some(p) => {
                let allowed = p
                    .max_age
                    .min(self.policy_max_age.unwrap_or(UNVOUCHED_POLICY_CAP));
                let until = now.saturating_add(allowed);
                self.policy_until = Some(self.policy_until.unwrap_or(0).max(until));
            }
            None if trust == Trust::Vouched => {
                self.policy_until = None;
                self.policy_max_age = None;
            }
            None => {}
        }
    }

    /// Pins the highest [`MAX_GENERATIONS`] records of `published`.
    fn pin_published(&mut self, published: &RecordSet) {
        for record in &published.records {
            self.generations.insert(record.generation, Pin::of(record));
        }
        self.trim();
    }

    /// Keeps the highest [`MAX_GENERATIONS`] generations.
    fn trim(&mut self) {
        while self.generations.len() > MAX_GENERATIONS {
            self.generations.pop_first();
        }
    }

    /// True if the file must be rewritten to hold `self` instead of `old`.
    fn needs_save(&self, old: Option<&DomainPins>) -> bool {
        let Some(old) = old else { return true };
        if old.generations != self.generations || old.policy_max_age != self.policy_max_age {
            return true;
        }
        match (old.saved_until, self.policy_until) {
            (None, None) => false,
            (Some(saved), Some(until)) => {
                let slack = self.policy_max_age.unwrap_or(UNVOUCHED_POLICY_CAP) / 4;
                until < saved || until - saved > slack
            }
            _ => true,
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
    /// Held while the file is written: one writer at a time, each writing
    /// what the pins are when it got here, so the last write is the newest.
    writing: Mutex<Journal>,
    /// The use counter (`DomainPins::last_used`), advanced under the pins'
    /// lock.
    uses: AtomicU64,
    /// When the store last warned that it is full of domains whose policy
    /// is in force (a new domain then goes unpinned).
    full_warned: AtomicU64,
}

/// How often, at most, the store warns that it is full of domains whose
/// policy is in force.
const FULL_WARNING_INTERVAL: u64 = 3600;

/// The file is a journal: a change appends the changed domains' lines
/// (after a `domain -` line that drops what came before for it), and once
/// the appended lines outgrow the rest the file is written whole again.
/// Adding a domain to a large store costs a line, not a rewrite.
#[derive(Debug, Default)]
struct Journal {
    /// Bytes of the file when it was last written whole.
    whole: u64,
    /// Bytes appended since.
    appended: u64,
}

/// Appended bytes below which the file is never rewritten whole.
const COMPACT_AFTER: u64 = 1 << 20;

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
        if self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
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

/// The file lines of one domain's pins.
fn lines_of(domain: &str, entry: &DomainPins) -> String {
    let mut text = String::new();
    for (generation, pin) in &entry.generations {
        text.push_str(&format!("{domain} {generation} {}", hex(&pin.params)));
        match pin.signing {
            SigningPin::Known(s) => text.push_str(&format!(" S={}", STANDARD.encode(s))),
            SigningPin::Hash(h) => text.push_str(&format!(" {}", hex(&h))),
            SigningPin::Unknown => {}
        }
        text.push('\n');
    }
    if let Some(until) = entry.policy_until {
        text.push_str(&format!("{domain} policy {until}"));
        if let Some(max_age) = entry.policy_max_age {
            text.push_str(&format!(" {max_age}"));
        }
        text.push('\n');
    }
    text
}

/// One line of a pin file.
fn parse_line(pins: &mut Pins, fields: &[&str]) -> Option<()> {
    let name = fields.first()?;
    if fields.get(1) == Some(&"-") {
        pins.remove(*name);
        return (fields.len() == 2).then_some(());
    }
    if fields.get(1) == Some(&"policy") {
        let until: u64 = fields.get(2)?.parse().ok()?;
        let max_age: Option<u64> = match fields.get(3) {
            Some(f) => Some(f.parse().ok()?),
            None => None,
        };
        if fields.len() > 4 {
            return None;
        }
        let domain = pins.entry(name.to_string()).or_default();
        domain.policy_until = Some(until);
        domain.saved_until = Some(until);
        domain.policy_max_age = max_age;
        return Some(());
    }
    let generation: u32 = fields.get(1)?.parse().ok()?;
    let params = parse_hex32(fields.get(2)?)?;
    let signing = match fields.get(3) {
        None => SigningPin::Unknown,
        Some(f) => match f.strip_prefix("S=") {
            Some(b64) => SigningPin::Known(STANDARD.decode(b64).ok()?.try_into().ok()?),
            None => SigningPin::Hash(parse_hex32(f)?),
        },
    };
    if fields.len() > 4 {
        return None;
    }
    let domain = pins.entry(name.to_string()).or_default();
    domain
        .generations
        .insert(generation, Pin { params, signing });
    domain.trim();
    Some(())
}

/// A fresh name for a temporary file next to `path`.
fn temporary(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

impl PinStore {
    /// A store that lives only in memory.
    pub fn in_memory() -> Self {
        PinStore {
            path: None,
            pins: Mutex::new(BTreeMap::new()),
            verified: Verified::default(),
            writing: Mutex::new(Journal::default()),
            uses: AtomicU64::new(0),
            full_warned: AtomicU64::new(0),
        }
    }

    /// A store persisted in `path` (created on first change; its directory
    /// must exist). Lines that do not parse are skipped with a warning.
    /// A domain's recency is where its last line stands in the file; of a
    /// file of more than [`MAX_DOMAINS`] domains, those whose policy is in
    /// force now are kept first, then the most recently used.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self::open_at(path, now)
    }

    /// [`PinStore::open`] at `now` (unix seconds), which decides whose
    /// policy is in force should the file hold too many domains.
    fn open_at(path: &Path, now: u64) -> std::io::Result<Self> {
        let mut pins: Pins = BTreeMap::new();
        let mut size = 0;
        let mut uses = 0;
        match std::fs::read_to_string(path) {
            Ok(text) => {
                size = text.len() as u64;
                for (n, line) in text.lines().enumerate() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if fields.is_empty() || fields[0].starts_with('#') {
                        continue;
                    }
                    uses += 1;
                    if parse_line(&mut pins, &fields).is_some() {
                        if let Some(entry) = pins.get_mut(fields[0]) {
                            entry.last_used = uses;
                        }
                    } else {
                        tracing::warn!(
                            "{}:{}: skipped: not `domain generation fingerprint [S=signing]` \
                             or `domain policy time [max-age]`",
                            path.display(),
                            n + 1
                        );
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let dropped = keep_at_most(&mut pins, MAX_DOMAINS, now);
        if dropped > 0 {
            tracing::warn!(
                "{}: {dropped} domains over the limit of {MAX_DOMAINS} not read \
                 (kept: those whose policy is in force, then the most recently used)",
                path.display()
            );
        }
        let whole = pins
            .iter()
            .map(|(domain, entry)| lines_of(domain, entry).len() as u64)
            .sum::<u64>();
        Ok(PinStore {
            path: Some(path.to_path_buf()),
            pins: Mutex::new(pins),
            verified: Verified::default(),
            writing: Mutex::new(Journal {
                whole,
                appended: size.saturating_sub(whole),
            }),
            uses: AtomicU64::new(uses),
            full_warned: AtomicU64::new(0),
        })
    }

    /// The pins in `path`, held in memory only: lookups through it check
    /// against them but never change the file (for `lookup --config`, which
    /// must not rewrite the milter's pins as another user).
    pub fn snapshot(path: &Path) -> std::io::Result<Self> {
        let mut store = Self::open(path)?;
        store.path = None;
        Ok(store)
    }

    /// The file, if persisted.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Domains pinned.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if no domain is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pins> {
        self.pins.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, domain: &str) -> Option<DomainPins> {
        self.lock().get(domain).cloned()
    }

    /// Writes what `domains` (changed or evicted) are now: appended to the
    /// journal, or the whole file when the journal has grown too long.
    fn save(&self, domains: &[&str]) {
        let Some(path) = &self.path else { return };
        let mut journal = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        {
            let mut pins = self.lock();
            for domain in domains {
                text.push_str(&format!("{domain} -\n"));
                if let Some(entry) = pins.get_mut(*domain) {
                    entry.saved_until = entry.policy_until;
                    text.push_str(&lines_of(domain, entry));
                }
            }
        }
        let appended = journal.appended.saturating_add(text.len() as u64);
        let result = if appended > COMPACT_AFTER.max(journal.whole) || !path.exists() {
            self.rewrite(path, &mut journal)
        } else {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    f.write_all(text.as_bytes())?;
                    f.sync_data()
                })
                .map(|()| journal.appended = appended)
        };
        if let Err(e) = result {
            tracing::warn!("cannot save pins to {}: {e}", path.display());
        }
    }

    /// Writes the whole file afresh (a temporary file, synced, renamed).
    fn rewrite(&self, path: &Path, journal: &mut Journal) -> std::io::Result<()> {
        let mut text = String::from(
            "# ibemail parameter pins 4: domain generation sha256(X||Y) [S=base64]; \
             domain policy require-until [max-age]; domain - (forget the lines above)\n",
        );
        {
            // Oldest use first: reading the file back gives each domain its
            // recency by position (never an order by name).
            let mut pins = self.lock();
            let mut entries: Vec<_> = pins.iter_mut().collect();
            entries.sort_unstable_by_key(|(_, entry)| entry.last_used);
            for (domain, entry) in entries {
                entry.saved_until = entry.policy_until;
                text.push_str(&lines_of(domain, entry));
            }
        }
        let temp = temporary(path);
        let result = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, path))
            .and_then(|()| match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
                _ => Ok(()),
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result?;
        journal.whole = text.len() as u64;
        journal.appended = 0;
        Ok(())
    }

    /// Replaces `domain`'s pins by `entry` if they are still `expected`
    /// (false otherwise: another lookup changed them meanwhile), and marks
    /// the domain used. A new domain in a full store takes the place of the
    /// least recently used domain whose policy is not in force at `now`;
    /// if there is none it is not pinned (true all the same: the lookup
    /// goes on as a first use).
    fn replace(
        &self,
        domain: &str,
        expected: Option<&DomainPins>,
        mut entry: DomainPins,
        now: u64,
    ) -> bool {
        let mut pins = self.lock();
        let current = pins.get(domain);
        if current != expected {
            return false;
        }
        let used = self.uses.fetch_add(1, Ordering::Relaxed) + 1;
        if current == Some(&entry) {
            if let Some(current) = pins.get_mut(domain) {
                current.last_used = used;
            }
            return true;
        }
        let save = entry.needs_save(current);
        entry.saved_until = current.and_then(|c| c.saved_until);
        entry.last_used = used;
        let evicted = if current.is_none() && pins.len() >= MAX_DOMAINS {
            let Some(name) = least_recently_used_without_policy(&pins, now) else {
                drop(pins);
                self.warn_full(now);
                return true;
            };
            pins.remove(&name);
            tracing::info!("pin store full ({MAX_DOMAINS} domains): {name} forgotten");
            Some(name)
        } else {
            None
        };
        pins.insert(domain.to_string(), entry);
        drop(pins);
        let mut changed = Vec::new();
        if save {
            changed.push(domain);
        }
        changed.extend(evicted.as_deref());
        if !changed.is_empty() {
            self.save(&changed);
        }
        true
    }

    /// Warns, at most once per [`FULL_WARNING_INTERVAL`], that a new
    /// domain went unpinned because every pinned domain's policy is in
    /// force.
    fn warn_full(&self, now: u64) {
        let last = self.full_warned.load(Ordering::Relaxed);
        if (last == 0 || now >= last.saturating_add(FULL_WARNING_INTERVAL))
            && self
                .full_warned
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "pin store full: all {MAX_DOMAINS} domains have a published policy in force, \
                 none is forgotten; new domains are used without being pinned (trust on \
                 first use at every lookup) until one expires"
            );
        }
    }

    /// Until when `domain`'s published policy requires encryption, if a
    /// policy was seen.
    pub fn policy_until(&self, domain: &str) -> Option<u64> {
        self.lock().get(domain).and_then(|d| d.policy_until)
    }

    /// True if `domain` has pins.
    pub fn knows(&self, domain: &str) -> bool {
        self.lock().contains_key(domain)
    }

    /// A DNSSEC-secure answer proved that `domain` publishes no record: its
    /// policy ends (the domain's own, signed word).
    pub fn end_policy(&self, domain: &str, now: u64) {
        loop {
            let Some(old) = self.entry(domain) else {
                return;
            };
            let mut entry = old.clone();
            entry.policy_until = None;
            entry.policy_max_age = None;
            if self.replace(domain, Some(&old), entry, now) {
                return;
            }
        }
    }

    /// Checks `published` (of which `selected` is the generation a sender
    /// would use) against the pins of `domain` at `now`, and pins what is
    /// acceptable: new generations with a valid chain, the policy.
    /// `secure`: the answer is DNSSEC-secure, which replaces pins it
    /// contradicts (but never rolls back a generation). On a violation
    /// nothing is changed.
    ///
    /// The pairings are done outside the store's lock: a long chain of one
    /// domain does not hold up the others' lookups.
    pub fn check(
        &self,
        domain: &str,
        published: &RecordSet,
        selected: &Record,
        secure: bool,
        now: u64,
    ) -> PinStatus {
        loop {
            let old = self.entry(domain);
            let (status, entry) = judge(
                &self.verified,
                domain,
                old.as_ref(),
                published,
                selected,
                secure,
                now,
            );
            let Some(entry) = entry else { return status };
            if self.replace(domain, old.as_ref(), entry, now) {
                return status;
            }
        }
    }

    /// Pins `published` afresh after a violation the caller's policy lets
    /// through (trust on first use again): the old pins are dropped; the
    /// selected record's policy is taken as an unvouched one (at most
    /// [`UNVOUCHED_POLICY_CAP`]), so an attacker's substitute cannot
    /// impose a long policy.
    pub fn repin(&self, domain: &str, published: &RecordSet, selected: &Record, now: u64) {
        loop {
            let old = self.entry(domain);
            let mut entry = DomainPins::default();
            entry.pin_published(published);
            entry.take_policy(selected.policy.as_ref(), Trust::Unvouched, now);
            if self.replace(domain, old.as_ref(), entry, now) {
                return;
            }
        }
    }

    /// Drops from `published` the generations of `domain` that are not
    /// pinned (below the highest pinned one, never vouched for), so that
    /// nothing uses them — e.g. to verify a signature. A domain without
    /// pins is left alone.
    pub fn retain_pinned(&self, domain: &str, published: &mut RecordSet) {
        let pins = self.lock();
        let Some(entry) = pins.get(domain) else {
            return;
        };
        published.records.retain(|r| {
            entry
                .generations
                .get(&r.generation)
                .is_some_and(|pin| !pin.contradicts(r))
        });
    }
}

/// The domain a full store forgets for a new one: the least recently used
/// among those whose policy is not in force at `now`. None if every
/// domain's policy is in force.
fn least_recently_used_without_policy(pins: &Pins, now: u64) -> Option<String> {
    pins.iter()
        .filter(|(_, entry)| !entry.policy_in_force(now))
        .min_by_key(|(_, entry)| entry.last_used)
        .map(|(name, _)| name.clone())
}

/// Bounds a store read from a file to `max` domains: those whose policy is
/// in force at `now` first, then the most recently used (never by name).
/// Returns how many were dropped.
fn keep_at_most(pins: &mut Pins, max: usize, now: u64) -> usize {
    if pins.len() <= max {
        return 0;
    }
    let mut order: Vec<(bool, u64, &String)> = pins
        .iter()
        .map(|(name, entry)| (entry.policy_in_force(now), entry.last_used, name))
        .collect();
    order.sort_unstable_by_key(|&(in_force, used, _)| std::cmp::Reverse((in_force, used)));
    let dropped: Vec<String> = order
        .iter()
        .skip(max)
        .map(|(_, _, name)| (*name).clone())
        .collect();
    for name in &dropped {
        pins.remove(name);
    }
    dropped.len()
}

/// The outcome of comparing an answer with the pins: the status, and the
/// pins to store (none on a violation).
fn judge(
    verified: &Verified,
    domain: &str,
    old: Option<&DomainPins>,
    published: &RecordSet,
    selected: &Record,
    secure: bool,
    now: u64,
) -> (PinStatus, Option<DomainPins>) {
    let fresh = |trust: Trust| {
        let mut entry = old.cloned().unwrap_or_default();
        entry.generations.clear();
        entry.pin_published(published);
        entry.take_policy(selected.policy.as_ref(), trust, now);
        entry
    };
    let Some(old) = old.filter(|o| !o.generations.is_empty()) else {
        let trust = if secure {
            Trust::Vouched
        } else {
            Trust::FirstUse
        };
        return (PinStatus::FirstUse, Some(fresh(trust)));
    };
    let violation = |status: PinStatus| {
        // A secure answer is the domain's signed word — but a replayed one
        // must not undo a rotation.
        if secure && !matches!(status, PinStatus::Rollback { .. }) {
            (PinStatus::Replaced, Some(fresh(Trust::Vouched)))
        } else {
            (status, None)
        }
    };
    let highest = old.highest().unwrap_or(0);
    // Pinned generations: same parameters, and a continuity signature that
    // can be checked against the pinned predecessor must verify (else the
    // record was altered, e.g. its policy lowered).
    let mut vouched_pinned = Vec::new();
    for record in &published.records {
        let Some(pin) = old.generations.get(&record.generation) else {
            continue;
        };
        if pin.contradicts(record) {
            return violation(PinStatus::Changed {
                generation: record.generation,
            });
        }
        let predecessor = record
            .generation
            .checked_sub(1)
            .and_then(|p| old.signing(p, published));
        if let (Some(s), Some(_)) = (predecessor, &record.continuity) {
            if !verified.continues(domain, &s, record) {
                return violation(PinStatus::Changed {
                    generation: record.generation,
                });
            }
            vouched_pinned.push(record.generation);
        }
    }
    if selected.generation < highest {
        return violation(PinStatus::Rollback {
            pinned: highest,
            published: selected.generation,
        });
    }
    // Newer generations: each signed by the one before, from a pinned one.
    let mut newer: Vec<&Record> = published
        .records
        .iter()
        .filter(|r| r.generation > highest)
        .collect();
    newer.sort_by_key(|r| r.generation);
    let mut accepted: Vec<&Record> = Vec::new();
    for record in newer {
        let previous = record.generation - 1;
        let signing = match accepted.last() {
            Some(last) if last.generation == previous => last.signing,
            _ => old.signing(previous, published),
        };
        if !signing.is_some_and(|s| verified.continues(domain, &s, record)) {
            return violation(PinStatus::Unchained {
                generation: record.generation,
                pinned: highest,
            });
        }
        accepted.push(record);
    }
    let mut entry = old.clone();
    for record in &accepted {
        entry.generations.insert(record.generation, Pin::of(record));
    }
    // Learn a hashed S that the published record matches; an S never
    // pinned only from a DNSSEC-secure answer (a spoofed one would bring
    // the attacker's key, to vouch for his successor next time).
    for (generation, pin) in entry.generations.iter_mut() {
        let Some(record) = published.generation(*generation) else {
            continue;
        };
        let learn = match pin.signing {
            SigningPin::Hash(_) => pin.vouching(Some(record)),
            SigningPin::Unknown if secure => record.signing,
            _ => None,
        };
        if let Some(s) = learn {
            pin.signing = SigningPin::Known(s.to_bytes());
        }
    }
    entry.trim();
    let vouched = secure
        || accepted.iter().any(|r| r.generation == selected.generation)
        || vouched_pinned.contains(&selected.generation);
    let trust = if vouched {
        Trust::Vouched
    } else {
        Trust::Unvouched
    };
    entry.take_policy(selected.policy.as_ref(), trust, now);
    let status = match accepted.last() {
        Some(_) => PinStatus::NewGeneration { previous: highest },
        None => PinStatus::Match,
    };
    (status, Some(entry))
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
        // An unvouched record extends the policy by at most the max-age
        // last vouched for: one spoofed answer cannot impose a long one.
        let fresh = PinStore::in_memory();
        check(
            &fresh,
            &[&record(1, 1, Some(Policy::require(DAY)), None)],
            0,
        );
        check(&fresh, &[&record(1, 1, Some(week), None)], DAY / 2);
        assert_eq!(fresh.policy_until("b.test"), Some(DAY + DAY / 2));
        let year = Policy::require(365 * DAY);
        let fresh = PinStore::in_memory();
        check(&fresh, &[&record(1, 1, None, None)], 0);
        check(&fresh, &[&record(1, 1, Some(year), None)], 10);
        assert_eq!(
            fresh.policy_until("b.test"),
            Some(10 + UNVOUCHED_POLICY_CAP),
            "a policy spoofed onto a pinned domain lasts a day at most"
        );
        // A chained record may raise it: that is the domain's word.
        let g2_year = record(2, 2, Some(year), Some(&key(1)));
        check(&fresh, &[&g2_year, &record(1, 1, None, None)], 20);
        assert_eq!(fresh.policy_until("b.test"), Some(20 + 365 * DAY));
        // A DNSSEC-secure denial ends the policy.
        let fresh = PinStore::in_memory();
        check(&fresh, &[&g1], 0);
        fresh.end_policy("b.test", 0);
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
        // A damaged line is skipped, not fatal: the milter still starts.
        std::fs::write(&path, "b.test one zz\nc.test policy 99 7\n").unwrap();
        let store = PinStore::open(&path).unwrap();
        assert_eq!(store.policy_until("c.test"), Some(99));
        assert!(!store.knows("b.test"));
    }

    /// A sender pinned generation 2 first (1 had left DNS). An attacker
    /// publishes the genuine 2 without its policy and with a continuity
    /// signature of his own, next to a forged generation 1 carrying his key.
    /// Nothing of it is pinned and the policy stands.
    #[test]
    fn a_forged_predecessor_neither_joins_the_pins_nor_lowers_the_policy() {
        let store = PinStore::in_memory();
        let week = Some(Policy::require(7 * DAY));
        let g2 = record(2, 2, week, Some(&key(1)));
        assert_eq!(check(&store, &[&g2], 0), PinStatus::FirstUse);
        let evil = key(66);
        let fake1 = record(1, 66, None, None);
        let mut doctored = g2.clone().with_policy(None);
        let bytes = Policy::signed_bytes(None);
        doctored.continuity =
            Some(evil.sign_successor(&doctored.successor("b.test", &bytes).unwrap()));
        assert!(!check(&store, &[&doctored, &fake1], 60).is_violation());
        assert_eq!(store.policy_until("b.test"), Some(7 * DAY), "policy kept");
        let mut published = set(&[&doctored, &fake1]);
        store.retain_pinned("b.test", &mut published);
        assert_eq!(
            published
                .records
                .iter()
                .map(|r| r.generation)
                .collect::<Vec<_>>(),
            vec![2],
            "the forged generation 1 is not pinned"
        );
        // Its key cannot vouch for a successor either.
        let g3 = record(3, 77, None, Some(&evil));
        assert_eq!(
            check(&store, &[&g3, &fake1], 120),
            PinStatus::Unchained {
                generation: 3,
                pinned: 2
            }
        );
    }

    /// A pin of the format before `S=`: the attacker publishes the pinned
    /// generation with its genuine X, Y and his own S, and a successor
    /// signed with it. An S never pinned vouches for nothing.
    #[test]
    fn a_pin_without_s_vouches_for_no_successor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let g2 = record(2, 2, None, Some(&key(1)));
        std::fs::write(
            &path,
            format!("b.test 2 {}\n", hex(&Sha256::digest(g2.params.to_bytes()))),
        )
        .unwrap();
        let store = PinStore::open(&path).unwrap();
        let evil = key(66);
        let mut with_evil_s = g2.clone().with_signing(evil.signing_params());
        with_evil_s.continuity = None;
        let evil3 = record(3, 77, Some(Policy::require(7 * DAY)), Some(&evil));
        assert!(check(&store, &[&evil3, &with_evil_s], 0).is_violation());
    }

    /// Two spoofed answers: the pinned generation (pinned without S) with
    /// the attacker's S, then his generation 2 signed with it. An S learned
    /// from an answer that is not DNSSEC-secure vouches for nothing.
    #[test]
    fn an_s_learned_from_a_spoofed_answer_vouches_for_nothing() {
        let store = PinStore::in_memory();
        let week = Some(Policy::require(7 * DAY));
        let g1 = Record::new(1, key(1).public_params()).with_policy(week);
        assert_eq!(check(&store, &[&g1], 0), PinStatus::FirstUse);
        let evil = key(66);
        let g1_evil_s = g1.clone().with_signing(evil.signing_params());
        check(&store, &[&g1_evil_s], 60);
        let mine = key(77);
        let mut g2 = Record::new(2, mine.public_params()).with_signing(mine.signing_params());
        let bytes = Policy::signed_bytes(None);
        g2.continuity = Some(evil.sign_successor(&g2.successor("b.test", &bytes).unwrap()));
        assert!(check(&store, &[&g2], 120).is_violation());
        assert_eq!(
            store.policy_until("b.test"),
            Some(60 + 7 * DAY),
            "policy stands"
        );
        // From a DNSSEC-secure answer it is learned, and then vouches.
        let genuine = key(1);
        let g1_real = g1.clone().with_signing(genuine.signing_params());
        let published = set(&[&g1_real]);
        store.check("b.test", &published, &g1_real, true, 180);
        let g2_real = record(2, 2, week, Some(&genuine));
        assert_eq!(
            check(&store, &[&g2_real], 240),
            PinStatus::NewGeneration { previous: 1 }
        );
    }

    /// A new domain in a large store costs a few appended lines, not a
    /// rewrite of the file; reopening replays the journal.
    #[test]
    fn a_new_domain_is_appended_not_rewritten() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let s = STANDARD.encode(key(5).signing_params().to_bytes());
        let mut text = String::new();
        for n in 0..5000 {
            for g in 1..=4 {
                text.push_str(&format!("r{n}.example {g} {} S={s}\n", "ab".repeat(32)));
            }
        }
        std::fs::write(&path, &text).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        let store = PinStore::open(&path).unwrap();
        assert_eq!(store.len(), 5000);
        let g1 = record(1, 1, Some(Policy::require(DAY)), None);
        assert_eq!(check(&store, &[&g1], 0), PinStatus::FirstUse);
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.ino(), before.ino(), "the file was rewritten");
        assert!(
            after.len() - before.len() < 1024,
            "{} bytes added",
            after.len() - before.len()
        );
        // A change of the same domain appends its lines anew, after `-`.
        let g2 = record(2, 2, None, Some(&key(1)));
        check(&store, &[&g2, &g1], 10);
        drop(store);
        let store = PinStore::open(&path).unwrap();
        assert_eq!(store.len(), 5001);
        assert_eq!(store.policy_until("b.test"), None, "the last lines count");
        assert_eq!(check(&store, &[&g2], 20), PinStatus::Match);
    }

    /// A full store makes room for a new domain by forgetting the least
    /// recently used domain without a policy in force; a lookup that only
    /// matches the pins counts as a use.
    #[test]
    fn a_full_store_forgets_the_least_recently_used_domain_without_a_policy() {
        let store = PinStore::in_memory();
        let junk = record(1, 5, None, None);
        let junk_set = set(&[&junk]);
        let policy = record(1, 6, Some(Policy::require(365 * DAY)), None);
        let policy_set = set(&[&policy]);
        // The least recently used of all, but its policy is in force.
        store.check("p.example", &policy_set, &policy, false, 1);
        for n in 1..MAX_DOMAINS {
            store.check(&format!("r{n}.example"), &junk_set, &junk, false, 1);
        }
        // r1 is used again (its pins unchanged): it is the most recent now.
        assert_eq!(
            store.check("r1.example", &junk_set, &junk, false, 2),
            PinStatus::Match
        );
        let g1 = record(1, 1, Some(Policy::require(7 * DAY)), None);
        assert_eq!(check(&store, &[&g1], 3), PinStatus::FirstUse);
        assert_eq!(store.policy_until("b.test"), Some(3 + 7 * DAY));
        assert_eq!(store.len(), MAX_DOMAINS);
        assert!(store.knows("p.example"), "a policy in force is kept");
        assert!(store.knows("r1.example"));
        assert!(!store.knows("r2.example"), "the least recently used went");
    }

    /// When every pinned domain's policy is in force a new domain is not
    /// pinned (its lookup is a first use all the same); once policies
    /// expire their domains make room again, least recently used first.
    #[test]
    fn a_store_full_of_policies_in_force_pins_no_new_domain() {
        let store = PinStore::in_memory();
        let junk = record(1, 5, Some(Policy::require(DAY)), None);
        let junk_set = set(&[&junk]);
        for n in 0..MAX_DOMAINS {
            store.check(&format!("r{n}.example"), &junk_set, &junk, false, 1);
        }
        store.check("r0.example", &junk_set, &junk, false, 2);
        let g1 = record(1, 1, Some(Policy::require(7 * DAY)), None);
        assert_eq!(check(&store, &[&g1], 3), PinStatus::FirstUse);
        assert!(!store.knows("b.test"));
        assert_eq!(store.len(), MAX_DOMAINS);
        assert!(store.knows("r0.example") && store.knows("r1.example"));
        assert_eq!(check(&store, &[&g1], 4), PinStatus::FirstUse);
        assert!(!store.knows("b.test"));
        // A day later every policy has expired.
        assert_eq!(check(&store, &[&g1], 3 * DAY), PinStatus::FirstUse);
        assert!(store.knows("b.test"));
        assert_eq!(store.len(), MAX_DOMAINS);
        assert!(store.knows("r0.example"));
        assert!(!store.knows("r1.example"), "the least recently used went");
    }

    /// The file is written oldest use first and read back with each
    /// domain's recency by position, so after a restart a full store
    /// still forgets the least recently used domain, not the first by name.
    #[test]
    fn recency_survives_a_rewrite_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let junk = record(1, 5, None, None);
        let junk_set = set(&[&junk]);
        {
            let store = PinStore::open(&path).unwrap();
            for (n, name) in ["b.example", "c.example", "a.example"].iter().enumerate() {
                store.check(name, &junk_set, &junk, false, n as u64);
            }
            // Used again, its pins unchanged: the most recent now.
            store.check("b.example", &junk_set, &junk, false, 10);
            store
                .rewrite(&path, &mut store.writing.lock().unwrap())
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let order: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(order, ["c.example", "a.example", "b.example"]);
        let store = PinStore::open(&path).unwrap();
        let used = |name: &str| store.lock().get(name).unwrap().last_used;
        assert!(used("c.example") < used("a.example"));
        assert!(used("a.example") < used("b.example"));
    }

    /// A file of more than MAX_DOMAINS domains is read down to those whose
    /// policy is in force, then the most recently used (the last in the
    /// file) — never an order by name.
    #[test]
    fn an_oversized_file_keeps_policies_in_force_then_the_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let fingerprint = "ab".repeat(32);
        let now = 1_000_000;
        let mut text = format!(
            "zz-policy.example 1 {fingerprint}\nzz-policy.example policy {} {DAY}\n\
             expired.example 1 {fingerprint}\nexpired.example policy {now} {DAY}\n\
             aa-first.example 1 {fingerprint}\n",
            now + DAY
        );
        for n in 0..MAX_DOMAINS - 1 {
            text.push_str(&format!("r{n}.example 1 {fingerprint}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let store = PinStore::open_at(&path, now).unwrap();
        assert_eq!(store.len(), MAX_DOMAINS);
        assert!(store.knows("zz-policy.example"), "its policy is in force");
        assert!(!store.knows("expired.example"), "its policy has expired");
        assert!(!store.knows("aa-first.example"), "the least recently used");
        assert!(store.knows("r0.example"));
    }

    /// A replayed, still validly signed RRset of an older generation must
    /// not undo a rotation; a secure answer replaces pins otherwise.
    #[test]
    fn a_secure_answer_never_rolls_back() {
        let store = PinStore::in_memory();
        let week = Some(Policy::require(7 * DAY));
        let g1 = record(1, 1, week, None);
        let g2 = record(2, 2, week, Some(&key(1)));
        check(&store, &[&g1], 0);
        check(&store, &[&g2, &g1], 10);
        let old = set(&[&g1]);
        assert_eq!(
            store.check("b.test", &old, &g1, true, 20),
            PinStatus::Rollback {
                pinned: 2,
                published: 1
            }
        );
        let again = record(3, 50, None, None);
        let published = set(&[&again]);
        assert_eq!(
            store.check("b.test", &published, &again, true, 30),
            PinStatus::Replaced
        );
    }

    /// Lower generations are not pinned after first use, and at most
    /// MAX_GENERATIONS are kept: the file stays small.
    #[test]
    fn pins_per_domain_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let store = PinStore::open(&path).unwrap();
        let junk: Vec<Record> = (1..=20)
            .map(|n| record(n, u64::from(n), None, None))
            .collect();
        let top = record(1000, 100, None, None);
        let mut first: Vec<&Record> = vec![&top];
        first.extend(junk.iter());
        assert_eq!(check(&store, &first, 0), PinStatus::FirstUse);
        for round in 0..5u32 {
            let lower: Vec<Record> = junk
                .iter()
                .map(|r| Record {
                    generation: 40 + r.generation + round * 10,
                    ..r.clone()
                })
                .collect();
            let mut all: Vec<&Record> = vec![&top];
            all.extend(lower.iter());
            assert_eq!(check(&store, &all, u64::from(round)), PinStatus::Match);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().filter(|l| !l.starts_with('#')).count(),
            MAX_GENERATIONS
        );
    }

    /// Lookups of several domains at once, each saving: every save leaves a
    /// readable file, and the last one holds everything.
    #[test]
    fn concurrent_saves_neither_corrupt_nor_lose_pins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let store = std::sync::Arc::new(PinStore::open(&path).unwrap());
        let g1 = record(1, 1, Some(Policy::require(DAY)), None);
        for round in 0..20u32 {
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let store = store.clone();
                    let r = g1.clone();
                    std::thread::spawn(move || {
                        let published = set(&[&r]);
                        store.check(&format!("d{round}-{t}.test"), &published, &r, false, 0);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let reread = PinStore::open(&path).unwrap();
            assert_eq!(reread.len(), 8 * (round as usize + 1));
        }
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }

    /// A policy's deadline moving forward a little on every lookup does not
    /// rewrite the file each time.
    #[test]
    fn extending_a_policy_is_saved_sparingly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let store = PinStore::open(&path).unwrap();
        let g1 = record(1, 1, Some(Policy::require(4 * DAY)), None);
        check(&store, &[&g1], 0);
        let written = |path: &Path| std::fs::read_to_string(path).unwrap();
        let first = written(&path);
        check(&store, &[&g1], 60);
        assert_eq!(written(&path), first);
        assert_eq!(store.policy_until("b.test"), Some(60 + 4 * DAY));
        check(&store, &[&g1], DAY + 1);
        assert!(written(&path).contains(&format!("policy {}", 5 * DAY + 1)));
    }
}
