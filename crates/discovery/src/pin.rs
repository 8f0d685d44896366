//! Trust-on-first-use pinning of domains' parameters (like SSH known_hosts
//! or MTA-STS): remember each generation's parameters the first time they
//! are seen and report any later change that is not a new generation.
//!
//! A pin is `(domain, generation) → (SHA-256(X ‖ Y), SHA-256(S))`, the
//! second for the signature parameter when the record has one (receivers
//! verify signatures with it, so an `S` swapped under the same `X, Y` must
//! count as a change too). A pin stored before `S=` existed gets its `S`
//! pinned on first sight. Rotation publishes a
//! higher generation, which is pinned when first seen. What is reported:
//! a pinned generation published with other parameters ([`PinStatus::Changed`])
//! and a highest published generation below one already seen
//! ([`PinStatus::Rollback`], an old record replayed).
//!
//! The store is kept in memory and, if given a path, in a file of
//! `domain generation fingerprint [signing-fingerprint]` lines rewritten
//! atomically on change.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use ibemail_params::{Record, RecordSet};
use sha2::{Digest, Sha256};

/// Per-domain pinning policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PinPolicy {
    /// No pinning.
    #[default]
    Off,
    /// Pin and log violations, but use the parameters.
    Report,
    /// Pin and refuse parameters that violate a pin.
    Enforce,
}

impl FromStr for PinPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(PinPolicy::Off),
            "report" => Ok(PinPolicy::Report),
            "enforce" => Ok(PinPolicy::Enforce),
            other => Err(format!(
                "pin policy {other:?}: expected off, report or enforce"
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
    /// A generation newer than any pinned one appeared and is now pinned.
    NewGeneration {
        /// The highest generation pinned before.
        previous: u32,
    },
    /// A pinned generation is published with different parameters.
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
}

impl PinStatus {
    /// True for the statuses that indicate tampering.
    pub fn is_violation(&self) -> bool {
        matches!(self, PinStatus::Changed { .. } | PinStatus::Rollback { .. })
    }
}

impl std::fmt::Display for PinStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinStatus::NotChecked => write!(f, "not checked"),
            PinStatus::FirstUse => write!(f, "first use (now pinned)"),
            PinStatus::Match => write!(f, "matches pin"),
            PinStatus::NewGeneration { previous } => {
                write!(f, "new generation (previous pinned: {previous})")
            }
            PinStatus::Changed { generation } => {
                write!(f, "CHANGED: generation {generation} differs from its pin")
            }
            PinStatus::Rollback { pinned, published } => write!(
                f,
                "ROLLBACK: highest published generation {published} is older than pinned {pinned}"
            ),
        }
    }
}

/// The pinned fingerprints of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pin {
    params: [u8; 32],
    signing: Option<[u8; 32]>,
}

type Pins = BTreeMap<String, BTreeMap<u32, Pin>>;

/// The pin store.
#[derive(Debug)]
pub struct PinStore {
    path: Option<PathBuf>,
    pins: Mutex<Pins>,
}

fn fingerprint(record: &Record) -> Pin {
    Pin {
        params: Sha256::digest(record.params.to_bytes()).into(),
        signing: record.signing.map(|s| Sha256::digest(s.to_bytes()).into()),
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    <[u8; 32]>::try_from(bytes).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl PinStore {
    /// A store that lives only in memory.
    pub fn in_memory() -> Self {
        PinStore {
            path: None,
            pins: Mutex::new(BTreeMap::new()),
        }
    }

    /// A store persisted in `path` (created on first change).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut pins: Pins = BTreeMap::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if fields.is_empty() || fields[0].starts_with('#') {
                        continue;
                    }
                    let parsed = (fields.len() == 3 || fields.len() == 4)
                        .then(|| {
                            let generation: u32 = fields[1].parse().ok()?;
                            let params = parse_hex32(fields[2])?;
                            let signing = match fields.get(3) {
                                Some(f) => Some(parse_hex32(f)?),
                                None => None,
                            };
                            Some((generation, Pin { params, signing }))
                        })
                        .flatten();
                    let (generation, fp) = parsed.ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!(
                                "{}:{}: not `domain generation fingerprint [signing-fingerprint]`",
                                path.display(),
                                n + 1
                            ),
                        )
                    })?;
                    pins.entry(fields[0].to_string())
                        .or_default()
                        .insert(generation, fp);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(PinStore {
            path: Some(path.to_path_buf()),
            pins: Mutex::new(pins),
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

    fn save(&self, pins: &Pins) {
        let Some(path) = &self.path else { return };
        let mut text =
            String::from("# ibemail parameter pins: domain generation sha256(X||Y) [sha256(S)]\n");
        for (domain, generations) in pins {
            for (generation, pin) in generations {
                text.push_str(&format!("{domain} {generation} {}", hex(&pin.params)));
                if let Some(s) = &pin.signing {
                    text.push_str(&format!(" {}", hex(s)));
                }
                text.push('\n');
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

    /// Checks `published` against the pins of `domain` and pins what is new
    /// (only when nothing contradicts the existing pins).
    pub fn check(&self, domain: &str, published: &RecordSet, selected: &Record) -> PinStatus {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        let known = pins.get(domain).cloned().unwrap_or_default();
        for record in &published.records {
            let Some(pin) = known.get(&record.generation) else {
                continue;
            };
            let seen = fingerprint(record);
            // A pin from before S= existed accepts (and then pins) any S.
            let signing_changed = pin.signing.is_some() && pin.signing != seen.signing;
            if pin.params != seen.params || signing_changed {
                return PinStatus::Changed {
                    generation: record.generation,
                };
            }
        }
        let highest_pinned = known.keys().next_back().copied();
        let status = match highest_pinned {
            None => PinStatus::FirstUse,
            Some(pinned) if selected.generation < pinned => {
                return PinStatus::Rollback {
                    pinned,
                    published: selected.generation,
                };
            }
            Some(pinned) if selected.generation > pinned => {
                PinStatus::NewGeneration { previous: pinned }
            }
            Some(_) => PinStatus::Match,
        };
        let entry = pins.entry(domain.to_string()).or_default();
        let mut changed = false;
        for record in &published.records {
            let seen = fingerprint(record);
            changed |= entry.insert(record.generation, seen) != Some(seen);
        }
        if changed {
            let snapshot = pins.clone();
            drop(pins);
            self.save(&snapshot);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn record(n: u32, seed: u64) -> Record {
        Record::new(
            n,
            MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)).public_params(),
        )
    }

    fn set(records: &[&Record]) -> RecordSet {
        let texts: Vec<Vec<String>> = records.iter().map(|r| vec![r.to_text()]).collect();
        RecordSet::from_txt_records(&texts)
    }

    #[test]
    fn first_use_match_rotation_change_and_rollback() {
        let store = PinStore::in_memory();
        let g1 = record(1, 1);
        let g2 = record(2, 2);
        let forged1 = record(1, 99);
        assert_eq!(
            store.check("b.test", &set(&[&g1]), &g1),
            PinStatus::FirstUse
        );
        assert_eq!(store.check("b.test", &set(&[&g1]), &g1), PinStatus::Match);
        assert_eq!(
            store.check("b.test", &set(&[&g2, &g1]), &g2),
            PinStatus::NewGeneration { previous: 1 }
        );
        assert_eq!(
            store.check("b.test", &set(&[&forged1]), &forged1),
            PinStatus::Changed { generation: 1 }
        );
        assert_eq!(
            store.check("b.test", &set(&[&g1]), &g1),
            PinStatus::Rollback {
                pinned: 2,
                published: 1
            }
        );
        // Other domains are independent.
        assert_eq!(
            store.check("c.test", &set(&[&forged1]), &forged1),
            PinStatus::FirstUse
        );
    }

    #[test]
    fn pins_persist_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        let g1 = record(1, 1);
        let forged = record(1, 7);
        {
            let store = PinStore::open(&path).unwrap();
            assert_eq!(
                store.check("b.test", &set(&[&g1]), &g1),
                PinStatus::FirstUse
            );
        }
        let store = PinStore::open(&path).unwrap();
        assert_eq!(store.check("b.test", &set(&[&g1]), &g1), PinStatus::Match);
        assert_eq!(
            store.check("b.test", &set(&[&forged]), &forged),
            PinStatus::Changed { generation: 1 }
        );
        std::fs::write(&path, "b.test one zz\n").unwrap();
        assert!(PinStore::open(&path).is_err());
    }

    #[test]
    fn the_signature_parameter_is_pinned_too() {
        let master = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let other = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
        let plain = Record::new(1, master.public_params());
        let signed = plain.clone().with_signing(master.signing_params());
        let swapped = plain.clone().with_signing(other.signing_params());
        // Same X, Y with another S: a change.
        let store = PinStore::in_memory();
        assert_eq!(
            store.check("b.test", &set(&[&signed]), &signed),
            PinStatus::FirstUse
        );
        assert_eq!(
            store.check("b.test", &set(&[&swapped]), &swapped),
            PinStatus::Changed { generation: 1 }
        );
        assert_eq!(
            store.check("b.test", &set(&[&plain]), &plain),
            PinStatus::Changed { generation: 1 }
        );
        // A pin file from before S= (three fields) pins S on first sight,
        // persistently.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins");
        std::fs::write(
            &path,
            format!(
                "b.test 1 {}\n",
                hex(&Sha256::digest(master.public_params().to_bytes()))
            ),
        )
        .unwrap();
        let store = PinStore::open(&path).unwrap();
        assert_eq!(
            store.check("b.test", &set(&[&signed]), &signed),
            PinStatus::Match
        );
        let store = PinStore::open(&path).unwrap();
        assert_eq!(
            store.check("b.test", &set(&[&swapped]), &swapped),
            PinStatus::Changed { generation: 1 }
        );
    }
}
