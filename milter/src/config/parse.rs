//! Reading the TOML: the raw file as written, then every key checked and
//! turned into a [`Config`], each mistake named by its key.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ibemail_discovery::{DnssecPolicy, DomainPolicy, PinPolicy};
use ibemail_kgc::logging::LogFormat;
use ibemail_message::signature::Algorithm;
use serde::Deserialize;

use super::kgc::RawKgc;
use super::*;

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
    algorithm: Option<String>,
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

pub(super) fn parse_network(text: &str) -> Result<(IpAddr, u8), String> {
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
        let sign_algorithm = match raw.signing.algorithm.as_deref() {
            None => Algorithm::Certified,
            Some(name) => Algorithm::from_name(name).ok_or_else(|| {
                format!(
                    "signing.algorithm: {name:?} is not {:?} or {:?}",
                    Algorithm::Certified.name(),
                    Algorithm::ChaCheon.name()
                )
            })?,
        };
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
            sign_algorithm,
            sign_domains,
            log_format: field("log.format", raw.log.format.as_ref(), LogFormat::Text)?,
            log_addresses: raw.log.addresses.unwrap_or(false),
        })
    }
}
