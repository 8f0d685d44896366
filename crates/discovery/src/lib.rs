//! # ibemail-discovery
//!
//! Finds a domain's ibemail parameters in DNS (`_ibemailkey.<domain>` TXT),
//! the way a sending server needs them (the record: `docs/spec.md`):
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
//! - pinning that follows continuity-signed rotations, and the domains'
//!   published policies ([`pin::PinStore`]): a domain that published
//!   `p=require` is never taken for a non-ibemail domain while its policy
//!   is in force, whatever plain DNS says.

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
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use ibemail_params::{ParseError, Record, RecordSet, record_name};
use lru::LruCache;
use thiserror::Error;

pub use pin::{PinPolicy, PinStatus, PinStore};

/// TXT records read at most from one answer. A domain publishes two or
/// three during a rotation; each costs parsing and, for pins, a pairing.
pub const MAX_RECORDS: usize = 8;

/// CNAMEs followed at most from `_ibemailkey.<domain>`.
const MAX_CNAMES: usize = 8;

/// A cached answer is dropped on request ([`Discovery::forget`]) at most
/// this often per domain.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

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
    /// The parameters contradict the pins, and the pin policy (`enforce`,
    /// or `policy` while the domain's published policy is in force)
    /// refuses that.
    Pin(PinStatus),
    /// The domain published `p=require`, in force until `until`, and now
    /// publishes no usable record: mail is deferred, never sent in clear.
    PolicyRequires {
        /// Unix time the policy runs out unless seen again.
        until: u64,
    },
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

/// What a lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// Sending to the domain: pins are made and checked.
    Send,
    /// Verifying a signature the domain's mail claims: pins are checked
    /// but never made.
    Verify,
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
    /// When each domain's answer was last dropped on request.
    forgotten: Mutex<LruCache<String, Instant>>,
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

/// The DNSSEC status of a "no such record" answer for `qname`. A signed
/// SOA proves nothing by itself — any signed zone's SOA can be replayed
/// into a forged denial: the answer is secure only if its SOA is of a zone
/// enclosing the name and a validated NSEC or NSEC3 record proves the
/// absence. Otherwise it is at best insecure (and a policy in force holds).
fn denial_status(none: &NoRecords, qname: &Name, validated: bool) -> DnssecStatus {
    let status = combine_proofs(none.soa.iter().map(|s| s.proof), validated);
    if status != DnssecStatus::Secure {
        return status;
    }
    let enclosing = none.soa.as_ref().is_some_and(|soa| soa.name.zone_of(qname));
    let proven = none.authorities.as_deref().is_some_and(|records| {
        records.iter().any(|r| {
            matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)
                && r.proof == Proof::Secure
        })
    });
    if enclosing && proven {
        DnssecStatus::Secure
    } else {
        DnssecStatus::Insecure
    }
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
            forgotten: Mutex::new(LruCache::new(
                NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
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

    /// Forgets `domain`'s cached answers, so that the next lookup asks DNS
    /// (a signature naming a generation newer than the cached record set).
    /// Mail from anyone can ask for this, so it is done at most once a
    /// minute per domain: false if refused (or the domain is invalid).
    pub fn forget(&self, domain: &str) -> bool {
        let Ok(domain) = ibemail_ibe::normalize_domain(domain) else {
            return false;
        };
        {
            let mut forgotten = self.forgotten.lock().unwrap_or_else(|e| e.into_inner());
            if forgotten
                .get(&domain)
                .is_some_and(|at| at.elapsed() < FORGET_INTERVAL)
            {
                return false;
            }
            forgotten.put(domain.clone(), Instant::now());
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for validate in [false, true] {
            cache.pop(&(domain.clone(), validate));
        }
        true
    }

    /// What DNS publishes at `_ibemailkey.<domain>` right now, uncached and
    /// without DNSSEC validation (the KGC watching its own zone): `None`
    /// for NXDOMAIN or NODATA, else every record (usable or not).
    pub async fn published(&self, domain: &str) -> Result<Option<RecordSet>, String> {
        let domain = ibemail_ibe::normalize_domain(domain).map_err(|e| e.to_string())?;
        match self.query(&domain, false).await?.answer {
            Answer::Records(set) => Ok(Some(set)),
            Answer::NxDomain | Answer::NoData => Ok(None),
            Answer::Bogus => Err(format!("{domain}: bogus answer")),
        }
    }

    /// Looks up `domain`'s parameters under `policy`, to send to it;
    /// `now_unix` decides which published generations have expired.
    pub async fn lookup(&self, domain: &str, policy: DomainPolicy, now_unix: u64) -> Lookup {
        self.lookup_for(domain, policy, now_unix, Purpose::Send)
            .await
    }

    /// Looks up `domain`'s parameters to verify a signature its mail
    /// claims. Anyone can send mail naming any domain, so a domain without
    /// pins is not pinned from here (the pin store does not grow with
    /// strangers' domains); a pinned one is checked as for sending, and
    /// only its pinned generations are returned.
    pub async fn lookup_signer(&self, domain: &str, policy: DomainPolicy, now_unix: u64) -> Lookup {
        self.lookup_for(domain, policy, now_unix, Purpose::Verify)
            .await
    }

    async fn lookup_for(
        &self,
        domain: &str,
        policy: DomainPolicy,
        now_unix: u64,
        purpose: Purpose,
    ) -> Lookup {
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
        self.apply_policy(domain, entry, from_cache, policy, now_unix, purpose)
    }

    fn apply_policy(
        &self,
        domain: String,
        entry: CacheEntry,
        cached: bool,
        policy: DomainPolicy,
        now_unix: u64,
        purpose: Purpose,
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
        let secure = entry.dnssec == DnssecStatus::Secure;
        let pins = self
            .pins
            .as_ref()
            .filter(|_| policy.pin != PinPolicy::Off)
            .filter(|p| purpose == Purpose::Send || p.knows(&lookup.domain));
        // The domain's published policy, if this sender honours it and it
        // is still in force.
        let policy_until = pins
            .filter(|_| policy.pin.honours_policy())
            .and_then(|p| p.policy_until(&lookup.domain))
            .filter(|&until| until > now_unix);
        let stripped = |reason: NotIbeReason| match policy_until {
            Some(until) => Outcome::Refused(RefusedReason::PolicyRequires { until }),
            None => Outcome::NotIbe(reason),
        };
        lookup.outcome = match entry.answer {
            Answer::Bogus => Outcome::Temporary(BOGUS_REASON.into()),
            // Provably (DNSSEC) no record: the domain ended its policy.
            Answer::NxDomain | Answer::NoData if secure => {
                if let Some(pins) = pins {
                    pins.end_policy(&lookup.domain, now_unix);
                }
                Outcome::NotIbe(match entry.answer {
                    Answer::NxDomain => NotIbeReason::NxDomain,
                    _ => NotIbeReason::NoData,
                })
            }
            Answer::NxDomain => stripped(NotIbeReason::NxDomain),
            Answer::NoData => stripped(NotIbeReason::NoData),
            Answer::Records(set) => match set.select(now_unix).cloned() {
                None => stripped(NotIbeReason::NoUsableRecord {
                    rejected: set.rejected.clone(),
                    conflicting: set.conflicting.clone(),
                }),
                Some(_) if policy.dnssec == DnssecPolicy::Require && !secure => {
                    Outcome::Refused(RefusedReason::DnssecRequired(entry.dnssec))
                }
                Some(record) => {
                    let mut set = set;
                    if let Some(pins) = pins {
                        lookup.pin = pins.check(&lookup.domain, &set, &record, secure, now_unix);
                    }
                    let refuse = lookup.pin.is_violation()
                        && match policy.pin {
                            PinPolicy::Enforce => true,
                            PinPolicy::Policy => policy_until.is_some(),
                            PinPolicy::Report | PinPolicy::Off => false,
                        };
                    if refuse {
                        Outcome::Refused(RefusedReason::Pin(lookup.pin.clone()))
                    } else {
                        if let (true, PinPolicy::Policy, Some(pins)) =
                            (lookup.pin.is_violation(), policy.pin, pins)
                        {
                            // No policy in force: trust on first use again.
                            pins.repin(&lookup.domain, &set, &record, now_unix);
                        }
                        if let (false, Some(pins)) = (lookup.pin.is_violation(), pins) {
                            pins.retain_pinned(&lookup.domain, &mut set);
                        }
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
        let qname = Name::from_ascii(&name).map_err(|e| format!("{domain}: {e}"))?;
        let now = Instant::now();
        match resolver.lookup(name.as_str(), RecordType::TXT).await {
            Ok(lookup) => {
                // Only the records on the chain from the name asked count
                // (an attacker may append other, validly signed RRsets), and
                // every link of the chain counts towards the DNSSEC status
                // (a CNAME from an unsigned zone into a signed one is no
                // secure answer).
                let answers = lookup.answers();
                let mut owner = qname;
                let mut proofs = Vec::new();
                for _ in 0..MAX_CNAMES {
                    let alias = answers.iter().find_map(|r| match &r.data {
                        RData::CNAME(target) if r.name == owner => {
                            Some((r.proof, target.0.clone()))
                        }
                        _ => None,
                    });
                    let Some((proof, target)) = alias else { break };
                    proofs.push(proof);
                    owner = target;
                }
                let txts: Vec<_> = answers
                    .iter()
                    .filter(|r| r.name == owner && r.record_type() == RecordType::TXT)
                    .collect();
                let dnssec = if txts.is_empty() {
                    DnssecStatus::Unchecked
                } else {
                    combine_proofs(
                        proofs.into_iter().chain(txts.iter().map(|r| r.proof)),
                        validate,
                    )
                };
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
                if rdata.len() > MAX_RECORDS {
                    return Err(format!(
                        "{domain}: {} TXT records at {name}; at most {MAX_RECORDS} are read",
                        rdata.len()
                    ));
                }
                let ttl = lookup
                    .valid_until()
                    .saturating_duration_since(now)
                    .min(self.config.max_ttl);
                // Parsing builds tables for each record: not on a runtime
                // worker.
                let set = tokio::task::spawn_blocking(move || RecordSet::from_txt_records(&rdata))
                    .await
                    .map_err(|e| format!("{domain}: parsing the records: {e}"))?;
                Ok(CacheEntry {
                    answer: Answer::Records(set),
                    dnssec,
                    expires: now + ttl,
                })
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                let qname = Name::from_ascii(&name).map_err(|e| format!("{domain}: {e}"))?;
                let mut dnssec = denial_status(&none, &qname, validate);
                if dnssec == DnssecStatus::Secure {
                    dnssec = self.unaliased(&name).await;
                }
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
                let mut dnssec = combine_proofs(std::iter::once(proof), validate);
                if dnssec == DnssecStatus::Secure {
                    dnssec = self.unaliased(&name).await;
                }
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

    /// The DNSSEC status of a "no such record" for `name` that validated as
    /// secure. The resolver follows CNAMEs, so the denial may be of the
    /// alias's target — provable in any signed zone, and no word of the
    /// domain's: ask for a CNAME at `name` itself. Secure only if provably
    /// there is none.
    async fn unaliased(&self, name: &str) -> DnssecStatus {
        match self.validating.lookup(name, RecordType::CNAME).await {
            Ok(_) => DnssecStatus::Insecure,
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => match Name::from_ascii(name) {
                Ok(qname) => denial_status(&none, &qname, true),
                Err(_) => DnssecStatus::Insecure,
            },
            Err(NetError::Dns(DnsError::Nsec { proof, .. })) => {
                combine_proofs(std::iter::once(proof), true)
            }
            Err(_) => DnssecStatus::Insecure,
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
