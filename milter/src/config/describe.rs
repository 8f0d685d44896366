//! What a configuration means, in words (`--check-config`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Config, KeySource};

/// What a configuration means, one line per topic (`--check-config`).
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "socket:            {} (name it in Postfix's smtpd_milters and non_smtpd_milters; \
         a restart is needed to move it)",
        config.socket
    );
    let _ = writeln!(
        out,
        "authserv_id:       {} (Authentication-Results: ours are added, forged ones removed)",
        config.authserv_id
    );
    let _ = writeln!(
        out,
        "local domains:     {}{}",
        list(&config.local_domains),
        if config.local_domains.is_empty() {
            " (this server only sends)"
        } else {
            " (their inbound mail is decrypted)"
        }
    );
    let keys = match &config.keys {
        None => "none".to_string(),
        Some(KeySource::Daemon(kgc)) => format!(
            "the KGC daemon at {}{} (timeout {}{})",
            kgc.endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", then "),
            if kgc.spread && kgc.endpoints.len() > 1 {
                ", spread"
            } else {
                ""
            },
            secs(config.kgc_timeout),
            match &kgc.tls {
                Some(tls) => format!(
                    "; TLS as {} trusting {}",
                    tls.cert.display(),
                    tls.servers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => String::new(),
            }
        ),
        Some(KeySource::Dirs(dirs)) => {
            format!("key stores opened in the milter: {}", show_paths(dirs))
        }
    };
    let _ = writeln!(out, "keys:              {keys}");
    let networks: Vec<String> = config
        .internal_networks
        .iter()
        .map(|(ip, len)| format!("{ip}/{len}"))
        .collect();
    let _ = writeln!(
        out,
        "outbound mail:     from {}, authenticated clients and this host",
        list(&networks)
    );
    let policy = |p: &crate::config::RemotePolicy| {
        format!(
            "encrypt {:?}, DNSSEC {:?}, pin {:?}, signature {:?}",
            p.encrypt, p.lookup.dnssec, p.lookup.pin, p.signature
        )
        .to_lowercase()
    };
    let _ = writeln!(out, "remote domains:    {}", policy(&config.default_policy));
    for (domain, p) in &config.domains {
        let _ = writeln!(out, "  {domain}: {}", policy(p));
    }
    let signing: Vec<String> = config
        .local_domains
        .iter()
        .map(|d| format!("{d} {:?}", config.sign_policy(d)).to_lowercase())
        .collect();
    let _ = writeln!(out, "signing:           {}", list(&signing));
    let anchor = match &config.trust_anchor {
        Some(path) => path.display().to_string(),
        None => "the root zone's KSKs (built in; a lab zone not chained to the root validates \
                 as bogus: set dns.trust_anchor)"
            .to_string(),
    };
    let resolvers: Vec<String> = config.resolvers.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "dns:               {} (timeout {} x {} attempts); trust anchor: {anchor}",
        list(&resolvers),
        secs(config.dns_timeout),
        config.dns_attempts
    );
    let _ = writeln!(
        out,
        "pins:              {}",
        config
            .pins
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let _ = writeln!(
        out,
        "mixed recipients:  {}",
        config
            .reinject
            .map_or("deferred (no reinject.address)".to_string(), |a| format!(
                "plaintext copies re-injected at {a} (HELO {})",
                config.reinject_helo
            ))
    );
    let _ = writeln!(
        out,
        "undecryptable:     {}; messages over {} bytes: {}",
        format!("{:?}", config.undecryptable).to_lowercase(),
        config.max_message_size,
        format!("{:?}", config.oversize).to_lowercase()
    );
    let _ = writeln!(
        out,
        "metrics:           {}",
        config.metrics.map_or("off".into(), |a| format!(
            "http://{a}/ (a restart is needed to change it)"
        ))
    );
    let _ = writeln!(
        out,
        "log:               {} lines; recipients shown as {}",
        format!("{:?}", config.log_format).to_lowercase(),
        if config.log_addresses {
            "addresses"
        } else {
            "domains"
        }
    );
    out
}

pub(crate) fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
