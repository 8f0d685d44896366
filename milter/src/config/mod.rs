//! The milter's TOML configuration (sample: `packaging/ibemail-milter.toml`).
//!
//! [`Config::load`] reads and validates the file; every mistake is reported
//! with the key it concerns, before the milter takes any mail.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibemail_discovery::{DiscoveryConfig, DomainPolicy, TrustAnchor};
use ibemail_kgc::logging::LogFormat;

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
    /// The algorithm outbound signatures use (`signing.algorithm`): the
    /// certified one by default; Cha–Cheon for receivers older than it.
    pub sign_algorithm: ibemail_message::signature::Algorithm,
    /// Per-local-domain signing policies.
    pub sign_domains: BTreeMap<String, SignPolicy>,
    /// How log lines are written (`--log-format` overrides it).
    pub log_format: LogFormat,
    /// Whether per-message log lines name recipients' addresses (otherwise
    /// only their domains).
    pub log_addresses: bool,
}

pub mod describe;
mod kgc;
mod parse;
#[cfg(test)]
mod tests;

pub use parse::{in_network, parse_size};

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
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
