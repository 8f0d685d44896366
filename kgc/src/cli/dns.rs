//! DNS options shared by every command that looks records up, in
//! `ibemail-kgc` (`check`) and `ibemail-milter` (`lookup`, `encrypt`,
//! `verify`): one spelling, one meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ibemail_discovery::{DiscoveryConfig, DnssecPolicy, TrustAnchor};

/// `--resolver`, `--trust-anchor`, `--dnssec`, `--timeout`.
#[derive(Args, Clone, Debug, Default)]
pub struct ResolverArgs {
    /// Name server to ask, ADDR:PORT (repeatable; default 127.0.0.1:53, a
    /// local validating resolver). An authoritative server works too.
    #[arg(long = "resolver", value_name = "ADDR:PORT")]
    pub resolvers: Vec<SocketAddr>,
    /// DNSSEC trust anchor file (DNSKEY lines); default: the root KSKs.
    #[arg(long, value_name = "FILE")]
    pub trust_anchor: Option<PathBuf>,
    /// DNSSEC policy: off (do not validate), prefer (validate; use secure
    /// and insecure answers) or require (use only secure answers).
    /// Default: prefer.
    #[arg(long, value_name = "off|prefer|require")]
    pub dnssec: Option<DnssecPolicy>,
    /// Seconds to wait for one DNS answer. Default: 5.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
}

impl ResolverArgs {
    /// `config` with the options given on the command line.
    pub fn apply(&self, mut config: DiscoveryConfig) -> DiscoveryConfig {
        if !self.resolvers.is_empty() {
            config.servers = self.resolvers.clone();
        }
        if let Some(path) = &self.trust_anchor {
            config.trust_anchor = TrustAnchor::File(path.clone());
        }
        if let Some(seconds) = self.timeout {
            config.timeout = Duration::from_secs(seconds.max(1));
        }
        config
    }
}
