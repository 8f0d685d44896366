//! The milter's TOML configuration (sample: `packaging/ibemail-milter.toml`).
//!
//! [`Config::load`] reads and validates the file; every mistake is reported
//! with the key it concerns, before the milter takes any mail.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibemail_discovery::{DiscoveryConfig, DnssecPolicy, DomainPolicy, PinPolicy, TrustAnchor};
use ibemail_kgc::logging::LogFormat;
use serde::Deserialize;

/// Where the milter keeps its state unless `state_dir` says otherwise (the
/// systemd unit's `StateDirectory`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ibemail-milter";

/// Parses one of the `choices` keywords; the error lists them all.
fn keyword<T: Copy>(text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = choices.iter().find(|(k, _)| *k == text) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(k, _)| *k).collect();
    let expected = match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("{text:?}: expected {expected}"))
}

/// What to do for a remote domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptPolicy {
    /// Never encrypt (plaintext, as if the domain published nothing).
    Never,
    /// Encrypt when the domain publishes usable parameters.
    Opportunistic,
    /// Encrypt, or keep the mail queued (tempfail) until it can be.
    Require,
}

impl std::str::FromStr for EncryptPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        keyword(
            s,
            &[
                ("never", EncryptPolicy::Never),
                ("opportunistic", EncryptPolicy::Opportunistic),
                ("require", EncryptPolicy::Require),
            ],
        )
    }
}

/// Whether outbound mail of a local domain is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignPolicy {
    /// Never sign.
    Never,
    /// Sign every message an eligible sender sends (authenticated, internal
    /// or local, and only as their own From address); KGC trouble is a
    /// tempfail, never an unsigned message.
    Always,
}

impl std::str::FromStr for SignPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        keyword(
            s,
            &[("never", SignPolicy::Never), ("always", SignPolicy::Always)],
        )
    }
}

/// What to require of the signatures on mail from a remote domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignaturePolicy {
    /// Verify and report the result in Authentication-Results.
    Report,
    /// Verify; mail without a passing signature is quarantined (a
    /// temporary verification error is a tempfail).
    Require,
}

impl std::str::FromStr for SignaturePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        keyword(
            s,
            &[
                ("report", SignaturePolicy::Report),
                ("require", SignaturePolicy::Require),
            ],
        )
    }
}

/// What to do with a message that cannot be processed as it should:
/// inbound ciphertext that does not open, or a message over the size cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    /// Accept it into Postfix's hold queue, with the reason logged.
    Quarantine,
    /// 4xx: the client keeps it and retries.
    Tempfail,
    /// 5xx: the client bounces it to its sender.
    Reject,
}

impl std::str::FromStr for FailureAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        keyword(
            s,
            &[
                ("quarantine", FailureAction::Quarantine),
                ("tempfail", FailureAction::Tempfail),
                ("reject", FailureAction::Reject),
            ],
        )
    }
}

/// Where the milter's keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Key stores opened in the milter process (single-server setups).
    Dirs(Vec<PathBuf>),
    /// The `ibemail-kgc serve` daemon(s): its Unix socket (`kgc.socket`),
    /// or several endpoints, Unix or mutual TLS, tried in order
    /// (`kgc.endpoints`).
    Daemon(ibemail_kgc::client::Endpoints),
}

/// Policy for one remote domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePolicy {
    /// Whether to encrypt.
    pub encrypt: EncryptPolicy,
    /// What to require of its senders' signatures.
    pub signature: SignaturePolicy,
    /// DNSSEC and pinning for its lookups.
    pub lookup: DomainPolicy,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The socket Postfix connects to: `inet:HOST:PORT` or `unix:PATH`.
    pub socket: String,
    /// Our authserv-id in `Authentication-Results` (usually the host name).
    pub authserv_id: String,
    /// Authserv-ids of milters that run before this one at this host (e.g.
    /// OpenDKIM with its own `AuthservID`), whose results for the
    /// ciphertext are kept above a decrypted message.
    pub trusted_authserv_ids: Vec<String>,
    /// Domains whose mail this server receives (inbound handling).
    pub local_domains: Vec<String>,
    /// Client networks whose mail counts as our users' (outbound handling).
    pub internal_networks: Vec<(IpAddr, u8)>,
    /// Largest message handled, in bytes (header and body).
    pub max_message_size: usize,
    /// What to do with larger ones (never truncated, never passed on
    /// unencrypted).
    pub oversize: FailureAction,
    /// Loopback address for the Prometheus metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Where keys come from.
    pub keys: Option<KeySource>,
    /// Time allowed for one KGC request.
    pub kgc_timeout: Duration,
    /// Name servers for parameter lookups.
    pub resolvers: Vec<SocketAddr>,
    /// DNSSEC trust anchor file (default: the root KSKs).
    pub trust_anchor: Option<PathBuf>,
    /// Time to wait for one DNS answer.
    pub dns_timeout: Duration,
    /// DNS attempts per lookup.
    pub dns_attempts: usize,
    /// Longest time a DNS answer is cached, whatever its TTL (negative
    /// answers: at most an hour).
    pub dns_max_cache: Duration,
    /// Pin file (pinned parameters and the domains' published policies),
    /// unless every policy sets `pin = "off"`. Default `state_dir/pins`.
    pub pins: Option<PathBuf>,
    /// Policy for domains not listed in `domains`.
    pub default_policy: RemotePolicy,
    /// Per-domain policies.
    pub domains: BTreeMap<String, RemotePolicy>,
    /// Inbound ciphertext that cannot be opened.
    pub undecryptable: FailureAction,
    /// Envelope sender of decrypted messages (where their delivery
    /// notices go); default the postmaster of the recipient's domain.
    pub bounce_to: Option<String>,
    /// Where plaintext copies for non-IBE recipients are re-injected.
    pub reinject: Option<SocketAddr>,
    /// HELO name used when re-injecting.
    pub reinject_helo: String,
    /// The `{daemon_name}` macro of the re-injection listener (its
    /// `milter_macro_daemon_name`): mail there passes untouched only with
    /// a token this milter issued.
    pub reinject_daemon_name: String,
    /// How long a re-injected copy is remembered, so that a retried
    /// transaction does not send it twice.
    pub reinject_window: Duration,
    /// The milter's own state (the re-injection ledger), writable by it
    /// alone.
    pub state_dir: PathBuf,
    /// Signing policy for local domains not listed in `sign_domains`.
    pub sign: SignPolicy,
    /// Per-local-domain signing policies.
    pub sign_domains: BTreeMap<String, SignPolicy>,
    /// How log lines are written (`--log-format` overrides it).
    pub log_format: LogFormat,
    /// Whether per-message log lines name recipients' addresses (otherwise
    /// only their domains).
    pub log_addresses: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<String>,
    state_dir: Option<PathBuf>,
    authserv_id: Option<String>,
    #[serde(default)]
    trusted_authserv_ids: Vec<String>,
    #[serde(default)]
    local_domains: Vec<String>,
    internal_networks: Option<Vec<String>>,
    max_message_size: Option<String>,
    oversize: Option<String>,
    metrics: Option<String>,
    #[serde(default)]
    kgc: RawKgc,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    inbound: RawInbound,
    #[serde(default)]
    reinject: RawReinject,
    #[serde(default)]
    signing: RawSigning,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    addresses: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    sign: Option<String>,
    #[serde(default)]
    domains: BTreeMap<String, RawSignDomain>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSignDomain {
    sign: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKgc {
    dir: Option<PathBuf>,
    #[serde(default)]
    dirs: Vec<PathBuf>,
    socket: Option<PathBuf>,
    #[serde(default)]
    endpoints: Vec<String>,
    spread: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    tls_server_fingerprints: Vec<String>,
    timeout: Option<String>,
}

impl RawKgc {
    /// `socket` as a one-element list, or `endpoints` with their TLS
    /// settings; `None` if neither is set.
    fn endpoints(&self) -> Result<Option<ibemail_kgc::client::Endpoints>, String> {
        use ibemail_kgc::client::{Endpoint, Endpoints, TlsClientFiles};
        let endpoints = match (&self.socket, self.endpoints.is_empty()) {
            (Some(_), false) => {
                return Err(
                    "kgc: set socket (one daemon on this host) or endpoints (several), not both"
                        .into(),
                );
            }
            (Some(socket), true) => vec![Endpoint::Unix(socket.clone())],
            (None, false) => self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.parse()
                        .map_err(|why| format!("kgc.endpoints[{i}]: {why}"))
                })
                .collect::<Result<Vec<Endpoint>, String>>()?,
            (None, true) => {
                if self.tls_cert.is_some() || self.tls_key.is_some() {
                    return Err("kgc.tls_cert/tls_key are set, but no kgc.endpoints".into());
                }
                return Ok(None);
            }
        };
        let needs_tls = endpoints.iter().any(|e| matches!(e, Endpoint::Tls { .. }));
        let tls = match (needs_tls, &self.tls_cert, &self.tls_key) {
            (true, Some(cert), Some(key)) => {
                if self.tls_server_fingerprints.is_empty() {
                    return Err("kgc.tls_server_fingerprints: the fingerprints of the KGC \
                                daemons' certificates are needed for tls: endpoints \
                                (ibemail-kgc tls-fingerprint CERT prints them)"
                        .into());
                }
                let servers = self
                    .tls_server_fingerprints
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        p.parse()
                            .map_err(|e| format!("kgc.tls_server_fingerprints[{i}]: {e}"))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Some(TlsClientFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    servers,
                })
            }
            (true, _, _) => {
                return Err(
                    "kgc.tls_cert and kgc.tls_key: the milter's certificate and key \
                            are needed for tls: endpoints (ibemail-kgc tls-cert makes them)"
                        .into(),
                );
            }
            (false, None, None) if self.tls_server_fingerprints.is_empty() => None,
            (false, _, _) => {
                return Err(
                    "kgc.tls_cert, tls_key and tls_server_fingerprints are only for \
                            tls: endpoints, and none is listed"
                        .into(),
                );
            }
        };
        Ok(Some(Endpoints {
            endpoints,
            spread: self.spread.unwrap_or(false),
            tls,
        }))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    resolvers: Vec<String>,
    trust_anchor: Option<PathBuf>,
    timeout: Option<String>,
    attempts: Option<usize>,
    max_cache: Option<String>,
    pins: Option<PathBuf>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawDomainPolicy {
    encrypt: Option<String>,
    signature: Option<String>,
    dnssec: Option<String>,
    pin: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    encrypt: Option<String>,
    signature: Option<String>,
    dnssec: Option<String>,
    pin: Option<String>,
    #[serde(default)]
    domains: BTreeMap<String, RawDomainPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    on_failure: Option<String>,
    bounce_to: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReinject {
    address: Option<String>,
    helo: Option<String>,
    remember: Option<String>,
    daemon_name: Option<String>,
}

/// Parses `50M`, `100k`, `1G` or a plain byte count.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 50M"))?;
    let factor: usize = match unit.trim() {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (use k, M or G)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?}: too large"))
}

fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: expected ADDRESS[/PREFIX]"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok((addr, len))
}

/// True if `addr` is inside `network`.
pub fn in_network(addr: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn duration(key: &str, value: Option<&String>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(v) => ibemail_kgc::duration::parse_duration(v)
            .map(Duration::from_secs)
            .map_err(|e| format!("{key}: {e}")),
    }
}

fn field<T: std::str::FromStr<Err = String>>(
    key: &str,
    value: Option<&String>,
    default: T,
) -> Result<T, String> {
    match value {
        None => Ok(default),
        Some(v) => v.parse().map_err(|e| format!("{key}: {e}")),
    }
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{key}: {text:?} is not ADDRESS:PORT"))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let socket = raw
            .socket
            .ok_or("socket: required (inet:127.0.0.1:8895 or unix:/run/ibemail/milter.sock)")?;
        if !(socket.starts_with("inet:") || socket.starts_with("unix:")) {
            return Err(format!("socket: {socket:?} must start with inet: or unix:"));
        }
        let authserv_id = raw
            .authserv_id
            .ok_or("authserv_id: required (this host's name, as in Authentication-Results)")?;
        // An RFC 2045 token, so that it reads back as one (crate::authres).
        let tspecial = |c: char| "()<>@,;:\\\"/[]?=".contains(c);
        if authserv_id.is_empty()
            || authserv_id.contains(|c: char| !c.is_ascii_graphic() || tspecial(c))
        {
            return Err(format!("authserv_id: {authserv_id:?} is not a valid token"));
        }
        let local_domains = raw
            .local_domains
            .iter()
            .map(|d| {
                ibemail_ibe::normalize_domain(d).map_err(|e| format!("local_domains: {d:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let internal_networks = raw
            .internal_networks
            .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()])
            .iter()
            .map(|n| parse_network(n).map_err(|e| format!("internal_networks: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_message_size = match &raw.max_message_size {
            None => 100 << 20,
            Some(s) => parse_size(s).map_err(|e| format!("max_message_size: {e}"))?,
        };
        let oversize = field("oversize", raw.oversize.as_ref(), FailureAction::Reject)?;
        if oversize == FailureAction::Quarantine {
            return Err(
                "oversize: must be tempfail or reject (an oversized message is never \
                        passed on unprocessed)"
                    .into(),
            );
        }
        let metrics = match &raw.metrics {
            None => None,
            Some(m) => {
                let addr = socket_addr("metrics", m)?;
                if !addr.ip().is_loopback() {
                    return Err(format!("metrics: {addr} is not a loopback address"));
                }
                Some(addr)
            }
        };
        let mut dirs = raw.kgc.dirs.clone();
        dirs.extend(raw.kgc.dir.clone());
        let keys = match (dirs.is_empty(), raw.kgc.endpoints()?) {
            (true, None) => None,
            (false, None) => Some(KeySource::Dirs(dirs)),
            (true, Some(endpoints)) => Some(KeySource::Daemon(endpoints)),
            (false, Some(_)) => {
                return Err(
                    "kgc: set either dir (in-process keys) or socket/endpoints (the daemon)".into(),
                );
            }
        };
        if keys.is_none() && !local_domains.is_empty() {
            return Err(
                "kgc: local_domains are set, so kgc.dir, kgc.socket or kgc.endpoints is \
                        required to open their mail"
                    .into(),
            );
        }
        let kgc_timeout = duration(
            "kgc.timeout",
            raw.kgc.timeout.as_ref(),
            Duration::from_secs(10),
        )?;
        let resolvers = if raw.dns.resolvers.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 53))]
        } else {
            raw.dns
                .resolvers
                .iter()
                .map(|r| socket_addr("dns.resolvers", r))
                .collect::<Result<Vec<_>, _>>()?
        };
        let dns_timeout = duration(
            "dns.timeout",
            raw.dns.timeout.as_ref(),
            Duration::from_secs(5),
        )?;
        let default_policy = RemotePolicy {
            encrypt: field(
                "policy.encrypt",
                raw.policy.encrypt.as_ref(),
                EncryptPolicy::Opportunistic,
            )?,
            signature: field(
                "policy.signature",
                raw.policy.signature.as_ref(),
                SignaturePolicy::Report,
            )?,
            lookup: DomainPolicy {
                dnssec: field(
                    "policy.dnssec",
                    raw.policy.dnssec.as_ref(),
                    DnssecPolicy::Prefer,
                )?,
                pin: field("policy.pin", raw.policy.pin.as_ref(), PinPolicy::Policy)?,
            },
        };
        let mut domains = BTreeMap::new();
        for (name, p) in &raw.policy.domains {
            let domain = ibemail_ibe::normalize_domain(name)
                .map_err(|e| format!("policy.domains: {name:?}: {e}"))?;
            let key = |k: &str| format!("policy.domains.\"{name}\".{k}");
            domains.insert(
                domain,
                RemotePolicy {
                    encrypt: field(&key("encrypt"), p.encrypt.as_ref(), default_policy.encrypt)?,
                    signature: field(
                        &key("signature"),
                        p.signature.as_ref(),
                        default_policy.signature,
                    )?,
                    lookup: DomainPolicy {
                        dnssec: field(
                            &key("dnssec"),
                            p.dnssec.as_ref(),
                            default_policy.lookup.dnssec,
                        )?,
                        pin: field(&key("pin"), p.pin.as_ref(), default_policy.lookup.pin)?,
                    },
                },
            );
        }
        let uses_pins = default_policy.lookup.pin != PinPolicy::Off
            || domains.values().any(|p| p.lookup.pin != PinPolicy::Off);
        let state_dir = raw
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let pins = uses_pins.then(|| {
            raw.dns
                .pins
                .clone()
                .unwrap_or_else(|| state_dir.join("pins"))
        });
        let undecryptable = field(
            "inbound.on_failure",
            raw.inbound.on_failure.as_ref(),
            FailureAction::Quarantine,
        )?;
        let bounce_to = match &raw.inbound.bounce_to {
            None => None,
            Some(address) => Some(
                ibemail_ibe::Identity::parse(address)
                    .map_err(|e| format!("inbound.bounce_to: {address:?}: {e}"))?
                    .to_string(),
            ),
        };
        let sign = field("signing.sign", raw.signing.sign.as_ref(), SignPolicy::Never)?;
        let mut sign_domains = BTreeMap::new();
        for (name, d) in &raw.signing.domains {
            let domain = ibemail_ibe::normalize_domain(name)
                .map_err(|e| format!("signing.domains: {name:?}: {e}"))?;
            if !local_domains.contains(&domain) {
                return Err(format!(
                    "signing.domains: {name:?} is not one of local_domains"
                ));
            }
            let key = format!("signing.domains.\"{name}\".sign");
            sign_domains.insert(domain, field(&key, d.sign.as_ref(), sign)?);
        }
        let signs = sign == SignPolicy::Always && !local_domains.is_empty()
            || sign_domains.values().any(|&p| p == SignPolicy::Always);
        if signs && keys.is_none() {
            return Err("signing: signing needs kgc.dir or kgc.socket".into());
        }
        let reinject = raw
            .reinject
            .address
            .as_deref()
            .map(|a| socket_addr("reinject.address", a))
            .transpose()?;
        Ok(Config {
            socket,
            authserv_id,
            trusted_authserv_ids: raw.trusted_authserv_ids,
            local_domains,
            internal_networks,
            max_message_size,
            oversize,
            metrics,
            keys,
            kgc_timeout,
            resolvers,
            trust_anchor: raw.dns.trust_anchor,
            dns_timeout,
            dns_attempts: raw.dns.attempts.unwrap_or(2),
            dns_max_cache: duration(
                "dns.max_cache",
                raw.dns.max_cache.as_ref(),
                Duration::from_secs(86_400),
            )?,
            pins,
            default_policy,
            domains,
            undecryptable,
            bounce_to,
            reinject,
            reinject_helo: raw.reinject.helo.unwrap_or_else(|| "localhost".into()),
            reinject_daemon_name: raw
                .reinject
                .daemon_name
                .unwrap_or_else(|| "ibemail-reinject".into()),
            reinject_window: duration(
                "reinject.remember",
                raw.reinject.remember.as_ref(),
                Duration::from_secs(5 * 86_400),
            )?,
            state_dir,
            sign,
            sign_domains,
            log_format: field("log.format", raw.log.format.as_ref(), LogFormat::Text)?,
            log_addresses: raw.log.addresses.unwrap_or(false),
        })
    }

    /// The settings that differ between `self` (running) and `new` but
    /// that only a restart applies: one sentence each, for the reload log.
    pub fn needs_restart(&self, new: &Config) -> Vec<String> {
        let show = |value: Option<String>| value.unwrap_or_else(|| "unset".into());
        let mut changed = Vec::new();
        if self.socket != new.socket {
            changed.push(format!(
                "socket changed from {} to {}",
                self.socket, new.socket
            ));
        }
        if self.metrics != new.metrics {
            changed.push(format!(
                "metrics changed from {} to {}",
                show(self.metrics.map(|a| a.to_string())),
                show(new.metrics.map(|a| a.to_string()))
            ));
        }
        if self.log_format != new.log_format {
            changed.push(format!(
                "log.format changed from {:?} to {:?}",
                self.log_format, new.log_format
            ));
        }
        changed
    }

    /// The resolver settings of `[dns]`, for tools that look up parameters
    /// as the milter does (`lookup --config`, `doctor`).
    pub fn discovery_config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            servers: self.resolvers.clone(),
            timeout: self.dns_timeout,
            attempts: self.dns_attempts,
            max_ttl: self.dns_max_cache,
            max_negative_ttl: self.dns_max_cache.min(std::time::Duration::from_secs(3600)),
            trust_anchor: self
                .trust_anchor
                .clone()
                .map_or(TrustAnchor::Root, TrustAnchor::File),
            ..DiscoveryConfig::default()
        }
    }

    /// The policy for a remote domain (normalised name).
    pub fn policy_for(&self, domain: &str) -> RemotePolicy {
        self.domains
            .get(domain)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// The signing policy of a local domain (normalised name); `Never` for
    /// domains that are not ours.
    pub fn sign_policy(&self, domain: &str) -> SignPolicy {
        if !self.is_local(domain) {
            return SignPolicy::Never;
        }
        self.sign_domains.get(domain).copied().unwrap_or(self.sign)
    }

    /// True if `domain` (normalised) is one of ours.
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d == domain)
    }

    /// True if `addr` is in an internal network.
    pub fn is_internal(&self, addr: IpAddr) -> bool {
        self.internal_networks
            .iter()
            .any(|&net| in_network(addr, net))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MINIMAL: &str = "socket = \"inet:127.0.0.1:8895\"\nauthserv_id = \"mx.a.test\"\n";

    #[test]
    fn minimal_config_has_safe_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.default_policy.encrypt, EncryptPolicy::Opportunistic);
        assert_eq!(c.default_policy.lookup.dnssec, DnssecPolicy::Prefer);
        assert_eq!(c.undecryptable, FailureAction::Quarantine);
        assert_eq!(c.oversize, FailureAction::Reject);
        assert_eq!(c.max_message_size, 100 << 20);
        assert!(c.is_internal("127.0.0.1".parse().unwrap()));
        assert!(c.is_internal("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!c.is_internal("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn full_config_parses() {
        let text = format!(
            "{MINIMAL}local_domains = [\"A.Test\"]\ninternal_networks = [\"10.0.0.0/8\"]\n\
             max_message_size = \"30M\"\noversize = \"tempfail\"\nmetrics = \"127.0.0.1:9100\"\n\
             [kgc]\nsocket = \"/run/kgc.sock\"\ntimeout = \"3s\"\n\
             [dns]\nresolvers = [\"127.0.0.1:5353\"]\ntimeout = \"2s\"\npins = \"/var/lib/pins\"\n\
             [policy]\nencrypt = \"opportunistic\"\n\
             [policy.domains.\"b.test\"]\nencrypt = \"require\"\ndnssec = \"require\"\npin = \"enforce\"\n\
             [inbound]\non_failure = \"tempfail\"\n\
             [reinject]\naddress = \"127.0.0.1:10026\"\nhelo = \"mx.a.test\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.local_domains, ["a.test"]);
        assert!(c.is_internal("10.1.2.3".parse().unwrap()));
        assert!(!c.is_internal("127.0.0.1".parse().unwrap()));
        assert_eq!(c.max_message_size, 30 << 20);
        assert_eq!(
            c.keys,
            Some(KeySource::Daemon(ibemail_kgc::client::Endpoints::unix(
                Path::new("/run/kgc.sock")
            )))
        );
        let b = c.policy_for("b.test");
        assert_eq!(b.encrypt, EncryptPolicy::Require);
        assert_eq!(b.lookup.dnssec, DnssecPolicy::Require);
        assert_eq!(b.lookup.pin, PinPolicy::Enforce);
        assert_eq!(c.policy_for("c.test").encrypt, EncryptPolicy::Opportunistic);
        assert_eq!(c.reinject, Some("127.0.0.1:10026".parse().unwrap()));
        assert_eq!(c.sign_policy("a.test"), SignPolicy::Never);
        assert_eq!(b.signature, SignaturePolicy::Report);
    }

    #[test]
    fn several_kgc_endpoints_with_tls() {
        use ibemail_kgc::client::{Endpoint, Endpoints, TlsClientFiles};
        let pin = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "{MINIMAL}local_domains = [\"a.test\"]\n[kgc]\n\
             endpoints = [\"tls:kgc1.a.test:4434\", \"tls:[2001:db8::2]:4434\", \"/run/kgc.sock\"]\n\
             spread = true\ntls_cert = \"/etc/ibemail/milter.pem\"\n\
             tls_key = \"/etc/ibemail/milter.key\"\ntls_server_fingerprints = [\"{pin}\"]\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(
            c.keys,
            Some(KeySource::Daemon(Endpoints {
                endpoints: vec![
                    Endpoint::Tls {
                        host: "kgc1.a.test".into(),
                        port: 4434
                    },
                    Endpoint::Tls {
                        host: "2001:db8::2".into(),
                        port: 4434
                    },
                    Endpoint::Unix("/run/kgc.sock".into()),
                ],
                spread: true,
                tls: Some(TlsClientFiles {
                    cert: "/etc/ibemail/milter.pem".into(),
                    key: "/etc/ibemail/milter.key".into(),
                    servers: vec![pin.parse().unwrap()],
                }),
            }))
        );
    }

    #[test]
    fn signing_and_signature_policies() {
        let text = format!(
            "{MINIMAL}local_domains = [\"a.test\", \"a2.test\"]\n[kgc]\ndir = \"/k\"\n\
             [signing]\nsign = \"always\"\n[signing.domains.\"a2.test\"]\nsign = \"never\"\n\
             [policy]\nsignature = \"require\"\n[policy.domains.\"c.test\"]\nsignature = \"report\"\n"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.sign_policy("a.test"), SignPolicy::Always);
        assert_eq!(c.sign_policy("a2.test"), SignPolicy::Never);
        assert_eq!(c.sign_policy("b.test"), SignPolicy::Never);
        assert_eq!(c.policy_for("b.test").signature, SignaturePolicy::Require);
        assert_eq!(c.policy_for("c.test").signature, SignaturePolicy::Report);
        assert_eq!(
            Config::parse(MINIMAL).unwrap().default_policy.signature,
            SignaturePolicy::Report
        );
    }

    #[test]
    fn mistakes_name_their_key() {
        for (text, key) in [
            ("authserv_id = \"x\"\n", "socket"),
            ("socket = \"tcp:1\"\nauthserv_id = \"x\"\n", "socket"),
            (
                &format!("{MINIMAL}metrics = \"192.0.2.1:9100\"\n"),
                "metrics",
            ),
            (&format!("{MINIMAL}oversize = \"quarantine\"\n"), "oversize"),
            (&format!("{MINIMAL}local_domains = [\"a.test\"]\n"), "kgc"),
            (
                &format!("{MINIMAL}[policy]\nencrypt = \"always\"\n"),
                "policy.encrypt",
            ),
            (
                &format!("{MINIMAL}internal_networks = [\"10.0.0.0/40\"]\n"),
                "internal_networks",
            ),
            (
                &format!("{MINIMAL}max_message_size = \"5X\"\n"),
                "max_message_size",
            ),
            (
                &format!("{MINIMAL}[kgc]\ndir = \"/a\"\nsocket = \"/b\"\n"),
                "kgc",
            ),
            (
                &format!("{MINIMAL}[kgc]\nsocket = \"/a\"\nendpoints = [\"/b\"]\n"),
                "not both",
            ),
            (
                &format!("{MINIMAL}[kgc]\nendpoints = [\"/a\", \"tls:kgc1\"]\n"),
                "kgc.endpoints[1]",
            ),
            (
                &format!("{MINIMAL}[kgc]\nendpoints = [\"tls:kgc1:4434\"]\n"),
                "kgc.tls_cert",
            ),
            (
                &format!(
                    "{MINIMAL}[kgc]\nendpoints = [\"tls:kgc1:4434\"]\ntls_cert = \"/c\"\n\
                     tls_key = \"/k\"\n"
                ),
                "kgc.tls_server_fingerprints",
            ),
            (
                &format!(
                    "{MINIMAL}[kgc]\nendpoints = [\"tls:kgc1:4434\"]\ntls_cert = \"/c\"\n\
                     tls_key = \"/k\"\ntls_server_fingerprints = [\"sha256:12\"]\n"
                ),
                "kgc.tls_server_fingerprints[0]",
            ),
            (
                &format!("{MINIMAL}[kgc]\nsocket = \"/a\"\ntls_cert = \"/c\"\n"),
                "only for",
            ),
            (&format!("{MINIMAL}typo = 1\n"), "typo"),
            (
                &format!("{MINIMAL}[signing]\nsign = \"sometimes\"\n"),
                "signing.sign",
            ),
            (
                &format!("{MINIMAL}[signing.domains.\"x.test\"]\nsign = \"always\"\n"),
                "signing.domains",
            ),
            (
                &format!("{MINIMAL}[policy]\nsignature = \"maybe\"\n"),
                "policy.signature",
            ),
            (&format!("{MINIMAL}[log]\nformat = \"xml\"\n"), "log.format"),
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(key), "{err:?} should name {key}");
        }
    }

    #[test]
    fn keyword_errors_list_the_choices() {
        let err = Config::parse(&format!("{MINIMAL}[policy]\nencrypt = \"always\"\n")).unwrap_err();
        assert!(
            err.contains("\"always\": expected never, opportunistic or require"),
            "{err}"
        );
        assert_eq!(
            "sometimes".parse::<SignPolicy>().unwrap_err(),
            "\"sometimes\": expected never or always"
        );
        assert_eq!("require".parse(), Ok(SignaturePolicy::Require));
    }

    #[test]
    fn settings_that_need_a_restart_are_named() {
        let running = Config::parse(MINIMAL).unwrap();
        let same = Config::parse(&format!("{MINIMAL}[policy]\nencrypt = \"require\"\n")).unwrap();
        assert!(running.needs_restart(&same).is_empty());
        let moved = Config::parse(
            "socket = \"inet:127.0.0.1:1\"\nauthserv_id = \"x\"\nmetrics = \"127.0.0.1:9100\"\n\
             [log]\nformat = \"json\"\n",
        )
        .unwrap();
        let changed = running.needs_restart(&moved);
        assert_eq!(changed.len(), 3, "{changed:?}");
        assert!(changed[1].contains("metrics changed from unset to 127.0.0.1:9100"));
        assert!(changed[2].starts_with("log.format"));
    }

    #[test]
    fn networks_match_by_prefix() {
        let net = parse_network("192.0.2.0/24").unwrap();
        assert!(in_network("192.0.2.200".parse().unwrap(), net));
        assert!(!in_network("192.0.3.1".parse().unwrap(), net));
        assert!(in_network(
            "8.8.8.8".parse().unwrap(),
            parse_network("0.0.0.0/0").unwrap()
        ));
        let v6 = parse_network("2001:db8::/32").unwrap();
        assert!(in_network("2001:db8:1::1".parse().unwrap(), v6));
        assert!(!in_network("192.0.2.1".parse().unwrap(), v6));
    }
}
