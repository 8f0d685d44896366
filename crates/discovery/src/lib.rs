//! # ibemail-discovery
//!
//! Finds a domain's ibemail parameters in DNS (`_ibemailkey.<domain>` TXT),
//! the way a sending server needs them (DESIGN.md §4, §7):
//!
//! - configurable name servers, timeouts and attempts (hickory-resolver);
//! - a bounded cache honouring TTLs, with negative caching of NXDOMAIN and
//!   NODATA (temporary failures are never cached);
//! - outcomes kept apart: [`Outcome::Parameters`], [`Outcome::NotIbe`]
//!   (NXDOMAIN, NODATA, no usable record), [`Outcome::Temporary`] (SERVFAIL,
//!   REFUSED, timeout, DNSSEC bogus) and [`Outcome::Refused`] (what the
//!   domain's policy forbids using: insecure answers under `dnssec =
//!   require`, pin mismatches under `pin = enforce`). The milter tempfails on
//!   `Temporary` and never treats it as "send plaintext";
//! - DNSSEC validated **in process** by hickory against configured trust
//!   anchors (the root KSKs by default), so the result does not depend on
//!   trusting a resolver's AD bit; each answer is Secure, Insecure or Bogus;
//! - optional trust-on-first-use pinning ([`pin::PinStore`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pin;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use ibemail_params::{ParseError, Record, RecordSet, record_name};
use lru::LruCache;
use thiserror::Error;

pub use pin::{PinPolicy, PinStatus, PinStore};

/// Where the DNSSEC trust anchors come from.
#[derive(Clone, Debug, Default)]
pub enum TrustAnchor {
    /// The IANA root KSKs built into hickory.
    #[default]
    Root,
    /// A file of `name [ttl] [IN] DNSKEY flags protocol algorithm key` lines
    /// (the class may be omitted, as `keymgr` and some tools print them).
    File(PathBuf),
    /// The same, inline.
    Text(String),
}

/// Resolver settings.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Name servers to ask (recursive resolvers, or an authoritative server
    /// in tests). Queried over UDP with TCP fallback.
    pub servers: Vec<SocketAddr>,
    /// Time to wait for one answer.
    pub timeout: Duration,
    /// Attempts per query.
    pub attempts: usize,
    /// DNSSEC trust anchors.
    pub trust_anchor: TrustAnchor,
    /// Domains kept in the cache.
    pub cache_capacity: usize,
    /// Longest time an answer is cached, whatever its TTL.
    pub max_ttl: Duration,
    /// Longest time a negative answer is cached.
    pub max_negative_ttl: Duration,
    /// Set the RD bit (true for recursive resolvers).
    pub recursion_desired: bool,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            servers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(5),
            attempts: 2,
            trust_anchor: TrustAnchor::Root,
            cache_capacity: 10_000,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3600),
            recursion_desired: true,
        }
    }
}

/// Per-domain DNSSEC policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DnssecPolicy {
    /// No validation.
    Off,
    /// Validate; use Secure and Insecure answers; Bogus is a temporary failure.
    #[default]
    Prefer,
    /// Validate; use only Secure answers.
    Require,
}

impl FromStr for DnssecPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(DnssecPolicy::Off),
            "prefer" => Ok(DnssecPolicy::Prefer),
            "require" => Ok(DnssecPolicy::Require),
            other => Err(format!(
                "dnssec policy {other:?}: expected off, prefer or require"
            )),
        }
    }
}

/// The policy applied to one lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainPolicy {
    /// DNSSEC policy.
    pub dnssec: DnssecPolicy,
    /// Pinning policy.
    pub pin: PinPolicy,
}

/// What DNSSEC says about an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnssecStatus {
    /// A chain of signatures from a trust anchor.
    Secure,
    /// Provably unsigned (no DS at a delegation).
    Insecure,
    /// Signatures fail to validate, or expected data is missing.
    Bogus,
    /// Not validated (policy `off`), or no answer to judge.
    Unchecked,
}

impl std::fmt::Display for DnssecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DnssecStatus::Secure => "secure",
            DnssecStatus::Insecure => "insecure",
            DnssecStatus::Bogus => "bogus",
            DnssecStatus::Unchecked => "unchecked",
        })
    }
}

/// Why a domain does not take ibemail mail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotIbeReason {
    /// The domain is not a valid host name (e.g. an address literal).
    InvalidDomain(String),
    /// `_ibemailkey.<domain>` does not exist.
    NxDomain,
    /// It exists but has no TXT records.
    NoData,
    /// TXT records exist but none is a usable ibemail record.
    NoUsableRecord {
        /// Why the ibemail-looking records were rejected.
        rejected: Vec<ParseError>,
        /// Generations published with conflicting parameters.
        conflicting: Vec<u32>,
    },
}

/// Why usable-looking parameters must not be used under the domain's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusedReason {
    /// `dnssec = require`, but the answer was Insecure (or unchecked).
    DnssecRequired(DnssecStatus),
    /// `pin = enforce`, and the parameters contradict the pins.
    Pin(PinStatus),
}

/// The reason given for a bogus answer. It names the usual cause on a
/// trial installation: a zone not chained to the root (a lab zone under an
/// invented top-level domain) can only validate from its own trust anchor.
pub const BOGUS_REASON: &str = "DNSSEC validation failed (bogus answer; a zone not chained \
     to the root, such as a lab zone, needs its own trust anchor)";

/// The result of a lookup.
// One per lookup, moved rarely: boxing the parameters would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The domain publishes parameters; `record` is the generation to use.
    Parameters {
        /// The selected (highest unexpired) generation.
        record: Record,
        /// Everything published.
        published: RecordSet,
    },
    /// The domain does not take ibemail mail.
    NotIbe(NotIbeReason),
    /// Temporary trouble: try again later; never a reason to send plaintext.
    Temporary(String),
    /// Parameters exist but the domain's policy forbids using them.
    Refused(RefusedReason),
}

/// A lookup's outcome with its context.
#[derive(Clone, Debug)]
pub struct Lookup {
    /// The domain looked up (normalised).
    pub domain: String,
    /// What was found.
    pub outcome: Outcome,
    /// DNSSEC status of the answer.
    pub dnssec: DnssecStatus,
    /// Remaining time the answer may be cached.
    pub ttl: Duration,
    /// Whether the answer came from the cache.
    pub cached: bool,
    /// Pinning status.
    pub pin: PinStatus,
}

/// Setting up discovery failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The trust anchor file cannot be read.
    #[error("trust anchor {path}: {source}")]
    TrustAnchorFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The trust anchor does not parse.
    #[error("trust anchor does not parse: {0}")]
    TrustAnchorSyntax(String),
    /// No name servers configured.
    #[error("no name servers configured")]
    NoServers,
    /// hickory refused the configuration.
    #[error("resolver: {0}")]
    Resolver(String),
}

/// What DNS said, before policy: cached per domain and validation mode.
#[derive(Clone, Debug)]
enum Answer {
    Records(RecordSet),
    NxDomain,
    NoData,
    Bogus,
}

#[derive(Clone, Debug)]
struct CacheEntry {
    answer: Answer,
    dnssec: DnssecStatus,
    expires: Instant,
}

/// The discovery service. Cheap to share (`Arc`).
pub struct Discovery {
    validating: TokioResolver,
    plain: TokioResolver,
    cache: Mutex<LruCache<(String, bool), CacheEntry>>,
    pins: Option<Arc<PinStore>>,
    config: DiscoveryConfig,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("config", &self.config)
            .finish()
    }
}

/// Parses trust-anchor text, accepting DNSKEY lines without a class.
pub fn parse_trust_anchors(text: &str) -> Result<TrustAnchors, DiscoveryError> {
    let normalised: String = text
        .lines()
        .map(|line| {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                return String::new();
            }
            let tokens: Vec<&str> = trimmed.split_whitespace().collect();
            let has_class = tokens.iter().take(4).any(|t| t.eq_ignore_ascii_case("IN"));
            if has_class {
                trimmed.to_string()
            } else {
                trimmed.replacen(" DNSKEY ", " IN DNSKEY ", 1)
            }
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    TrustAnchors::from_str(&normalised)
        .map_err(|e| DiscoveryError::TrustAnchorSyntax(e.to_string()))
}

fn build_resolver(
    config: &DiscoveryConfig,
    anchors: Option<TrustAnchors>,
) -> Result<TokioResolver, DiscoveryError> {
    let servers = config
        .servers
        .iter()
        .map(|addr| {
            let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
            tcp.port = addr.port();
            NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.timeout = config.timeout;
    opts.attempts = config.attempts.max(1);
    opts.recursion_desired = config.recursion_desired;
    // Our cache (parsed outcomes, TTL-bounded) is the only one, so a record
    // changed at the server is seen as soon as our entry expires.
    opts.cache_size = 0;
    opts.validate = anchors.is_some();
    opts.try_tcp_on_error = true;
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts);
    if let Some(anchors) = anchors {
        builder = builder.with_trust_anchor(Arc::new(anchors));
    }
    builder
        .build()
        .map_err(|e| DiscoveryError::Resolver(e.to_string()))
}

fn combine_proofs(proofs: impl Iterator<Item = Proof>, validated: bool) -> DnssecStatus {
    if !validated {
        return DnssecStatus::Unchecked;
    }
    let mut status = None;
    for proof in proofs {
        let this = match proof {
            Proof::Secure => DnssecStatus::Secure,
            Proof::Insecure => DnssecStatus::Insecure,
            Proof::Bogus => DnssecStatus::Bogus,
            Proof::Indeterminate => DnssecStatus::Unchecked,
        };
        // The weakest proof of the set decides.
        status = Some(match (status, this) {
            (None, s) => s,
            (Some(DnssecStatus::Bogus), _) | (_, DnssecStatus::Bogus) => DnssecStatus::Bogus,
            (Some(DnssecStatus::Unchecked), _) | (_, DnssecStatus::Unchecked) => {
                DnssecStatus::Unchecked
            }
            (Some(DnssecStatus::Insecure), _) | (_, DnssecStatus::Insecure) => {
                DnssecStatus::Insecure
            }
            (Some(DnssecStatus::Secure), DnssecStatus::Secure) => DnssecStatus::Secure,
        });
    }
    status.unwrap_or(DnssecStatus::Unchecked)
}

impl Discovery {
    /// Builds the resolvers. `pins` enables pinning for domains whose
    /// policy asks for it.
    pub fn new(
        config: DiscoveryConfig,
        pins: Option<Arc<PinStore>>,
    ) -> Result<Self, DiscoveryError> {
        if config.servers.is_empty() {
            return Err(DiscoveryError::NoServers);
        }
        let anchors = match &config.trust_anchor {
            TrustAnchor::Root => TrustAnchors::default(),
            TrustAnchor::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    DiscoveryError::TrustAnchorFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                parse_trust_anchors(&text)?
            }
            TrustAnchor::Text(text) => parse_trust_anchors(text)?,
        };
        Ok(Discovery {
            validating: build_resolver(&config, Some(anchors))?,
            plain: build_resolver(&config, None)?,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(config.cache_capacity).unwrap_or(NonZeroUsize::MIN),
            )),
            pins,
            config,
        })
    }

    /// Forgets cached answers (e.g. on configuration reload).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.validating.clear_cache();
        self.plain.clear_cache();
    }

    /// Looks up `domain`'s parameters under `policy`; `now_unix` decides
    /// which published generations have expired.
    pub async fn lookup(&self, domain: &str, policy: DomainPolicy, now_unix: u64) -> Lookup {
        let domain = match ibemail_ibe::normalize_domain(domain) {
            Ok(d) => d,
            Err(e) => {
                return Lookup {
                    domain: domain.to_string(),
                    outcome: Outcome::NotIbe(NotIbeReason::InvalidDomain(e.to_string())),
                    dnssec: DnssecStatus::Unchecked,
                    ttl: Duration::ZERO,
                    cached: false,
                    pin: PinStatus::NotChecked,
                };
            }
        };
        let validate = policy.dnssec != DnssecPolicy::Off;
        let key = (domain.clone(), validate);
        let cached = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key) {
                Some(entry) if entry.expires > Instant::now() => Some(entry.clone()),
                Some(_) => {
                    cache.pop(&key);
                    None
                }
                None => None,
            }
        };
        let (entry, from_cache) = match cached {
            Some(entry) => (entry, true),
            None => match self.query(&domain, validate).await {
                Ok(entry) => {
                    if entry.expires > Instant::now() {
                        self.cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .put(key, entry.clone());
                    }
                    (entry, false)
                }
                Err(reason) => {
                    return Lookup {
                        domain,
                        outcome: Outcome::Temporary(reason),
                        dnssec: DnssecStatus::Unchecked,
                        ttl: Duration::ZERO,
                        cached: false,
                        pin: PinStatus::NotChecked,
                    };
                }
            },
        };
        self.apply_policy(domain, entry, from_cache, policy, now_unix)
    }

    fn apply_policy(
        &self,
        domain: String,
        entry: CacheEntry,
        cached: bool,
        policy: DomainPolicy,
        now_unix: u64,
    ) -> Lookup {
        let ttl = entry.expires.saturating_duration_since(Instant::now());
        let mut lookup = Lookup {
            domain,
            outcome: Outcome::Temporary(String::new()),
            dnssec: entry.dnssec,
            ttl,
            cached,
            pin: PinStatus::NotChecked,
        };
        lookup.outcome = match entry.answer {
            Answer::Bogus => Outcome::Temporary(BOGUS_REASON.into()),
            Answer::NxDomain => Outcome::NotIbe(NotIbeReason::NxDomain),
            Answer::NoData => Outcome::NotIbe(NotIbeReason::NoData),
            Answer::Records(set) => match set.select(now_unix).cloned() {
                None => Outcome::NotIbe(NotIbeReason::NoUsableRecord {
                    rejected: set.rejected.clone(),
                    conflicting: set.conflicting.clone(),
                }),
                Some(_)
                    if policy.dnssec == DnssecPolicy::Require
                        && entry.dnssec != DnssecStatus::Secure =>
                {
                    Outcome::Refused(RefusedReason::DnssecRequired(entry.dnssec))
                }
                Some(record) => {
                    if let (Some(pins), true) = (&self.pins, policy.pin != PinPolicy::Off) {
                        lookup.pin = pins.check(&lookup.domain, &set, &record);
                    }
                    if policy.pin == PinPolicy::Enforce && lookup.pin.is_violation() {
                        Outcome::Refused(RefusedReason::Pin(lookup.pin.clone()))
                    } else {
                        Outcome::Parameters {
                            record,
                            published: set,
                        }
                    }
                }
            },
        };
        lookup
    }

    async fn query(&self, domain: &str, validate: bool) -> Result<CacheEntry, String> {
        let resolver = if validate {
            &self.validating
        } else {
            &self.plain
        };
        let name = format!("{}.", record_name(domain));
        let now = Instant::now();
        match resolver.lookup(name.as_str(), RecordType::TXT).await {
            Ok(lookup) => {
                let txts: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == RecordType::TXT)
                    .collect();
                let dnssec = combine_proofs(txts.iter().map(|r| r.proof), validate);
                if dnssec == DnssecStatus::Bogus {
                    return Ok(self.negative(Answer::Bogus, dnssec, 0));
                }
                let rdata: Vec<Vec<Vec<u8>>> = txts
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| s.to_vec()).collect()),
                        _ => None,
                    })
                    .collect();
                if rdata.is_empty() {
                    return Ok(self.negative(Answer::NoData, dnssec, 60));
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(now)
                    .min(self.config.max_ttl);
                Ok(CacheEntry {
                    answer: Answer::Records(RecordSet::from_txt_records(&rdata)),
                    dnssec,
                    expires: now + ttl,
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                let dnssec = combine_proofs(none.soa.iter().map(|s| s.proof), validate);
                let ttl = none
                    .negative_ttl
                    .or_else(|| none.soa.as_ref().map(|s| s.ttl.min(s.data.minimum)))
                    .unwrap_or(60);
                let answer = if none.response_code == ResponseCode::NXDomain {
                    Answer::NxDomain
                } else {
                    Answer::NoData
                };
                Ok(self.negative(answer, dnssec, ttl))
            }
            Err(NetError::Dns(DnsError::Nsec {
                proof, response, ..
            })) => {
                let dnssec = combine_proofs(std::iter::once(proof), validate);
                let answer = if response.metadata.response_code == ResponseCode::NXDomain {
                    Answer::NxDomain
                } else {
                    Answer::NoData
                };
                Ok(self.negative(answer, dnssec, 60))
            }
            Err(NetError::Dns(DnsError::DnssecBogus)) => {
                Ok(self.negative(Answer::Bogus, DnssecStatus::Bogus, 0))
            }
            Err(NetError::Dns(DnsError::ResponseCode(code))) => {
                Err(format!("{domain}: name server answered {code}"))
            }
            Err(NetError::Timeout) => Err(format!(
                "{domain}: no answer from the name servers (timeout)"
            )),
            Err(e) => Err(format!("{domain}: {e}")),
        }
    }

    fn negative(&self, answer: Answer, dnssec: DnssecStatus, ttl_secs: u32) -> CacheEntry {
        let ttl = Duration::from_secs(u64::from(ttl_secs)).min(self.config.max_negative_ttl);
        CacheEntry {
            answer,
            dnssec,
            expires: Instant::now() + ttl,
        }
    }
}

impl Lookup {
    /// A one-line summary for logs and the `lookup` command.
    pub fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Parameters { record, published } => format!(
                "{}: ibemail generation {} (of {} published), dnssec {}, ttl {}s{}",
                self.domain,
                record.generation,
                published.records.len(),
                self.dnssec,
                self.ttl.as_secs(),
                if self.cached { ", cached" } else { "" }
            ),
            Outcome::NotIbe(reason) => format!(
                "{}: no ibemail ({reason:?}), dnssec {}",
                self.domain, self.dnssec
            ),
            Outcome::Temporary(reason) => format!("{}: temporary failure: {reason}", self.domain),
            Outcome::Refused(reason) => {
                format!("{}: parameters refused by policy: {reason:?}", self.domain)
            }
        }
    }
}
