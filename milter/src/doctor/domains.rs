//! The KGC and each local domain: served, published, matching (a capsule
//! sealed to the published parameters opens with the KGC's key), DNSSEC.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ibemail_discovery::{Discovery, DnssecStatus, Outcome};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::access::KeyAccess;
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::clock::now;
use ibemail_kgc::service::KeyService;
use ibemail_params::record_name;
use rand_core::OsRng;

use crate::config::{Config, KeySource, SignPolicy};

use super::Report;
use crate::config::describe::show_paths;

/// The KGC, then each local domain: served, published, matching, DNSSEC.
pub(super) async fn check_domains(report: &mut Report, config: &Config) {
    if config.local_domains.is_empty() {
        report.ok(
            "kgc",
            "no local_domains: this server only sends (nothing to decrypt)".into(),
        );
        return;
    }
    let (keys, served) = match &config.keys {
        Some(KeySource::Socket(path)) => {
            let client = KgcClient::new(path, Duration::from_secs(10));
            match client.hello().await {
                Ok(served) => {
                    let list = served
                        .iter()
                        .map(|(d, n)| format!("{d} (generation {n})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    report.ok(
                        "kgc",
                        format!("{} answers this user and serves {list}", path.display()),
                    );
                    (Arc::new(client) as Arc<dyn KeyAccess>, served)
                }
                Err(e) => {
                    let e = e.to_string();
                    report.error("kgc", kgc_problem(path, &e), kgc_fix(path, &e));
                    return;
                }
            }
        }
        Some(KeySource::Dirs(dirs)) => match KeyService::load(dirs, 16) {
            Ok(service) => {
                let served = service.hello();
                report.ok(
                    "kgc",
                    format!("this user reads the key store(s) {}", show_paths(dirs)),
                );
                (Arc::new(service) as Arc<dyn KeyAccess>, served)
            }
            Err(e) => {
                report.error(
                    "kgc",
                    format!("cannot load the key stores: {e}"),
                    "the milter's user must own kgc.dir (or use the KGC daemon: kgc.socket)".into(),
                );
                return;
            }
        },
        None => return,
    };
    let discovery = match Discovery::new(config.discovery_config(), None) {
        Ok(d) => d,
        Err(e) => {
            report.error(
                "dns",
                format!("cannot set up lookups: {e}"),
                "correct [dns] (resolvers, trust_anchor)".into(),
            );
            return;
        }
    };
    for domain in &config.local_domains {
        let Some((_, active)) = served.iter().find(|(d, _)| d == domain) else {
            report.error(
                domain,
                "the KGC does not serve it: its inbound mail cannot be opened".into(),
                format!(
                    "ibemail-kgc setup --domain {domain} --dir /var/lib/ibemail/kgc/{domain}, \
                     publish its record, restart ibemail-kgc"
                ),
            );
            continue;
        };
        check_domain(report, config, &discovery, &keys, domain, *active).await;
    }
}

fn kgc_problem(path: &Path, error: &str) -> String {
    format!("{} does not answer this user: {error}", path.display())
}

fn kgc_fix(path: &Path, error: &str) -> String {
    let uid = ibemail_kgc::accounts::current_uid();
    if error.contains("Forbidden") || error.contains("not granted") {
        format!(
            "let the milter's user in: ibemail-kgc serve --allow-uid {uid} (the packaged unit \
             allows the user ibemail)"
        )
    } else if error.contains("ermission denied") {
        format!(
            "the milter's user needs group access to {} and its directory (the packaged units: \
             socket group ibemail, mode 0660)",
            path.display()
        )
    } else {
        "start the KGC daemon (systemctl start ibemail-kgc; journalctl -u ibemail-kgc says why \
         it stopped)"
            .into()
    }
}

async fn check_domain(
    report: &mut Report,
    config: &Config,
    discovery: &Discovery,
    keys: &Arc<dyn KeyAccess>,
    domain: &str,
    active: Generation,
) {
    let name = record_name(domain);
    let policy = config.policy_for(domain).lookup;
    let lookup = discovery.lookup(domain, policy, now()).await;
    match lookup.dnssec {
        DnssecStatus::Secure => report.ok(domain, format!("{name} is DNSSEC-signed (secure)")),
        DnssecStatus::Insecure => report.warn(
            domain,
            format!("{name} is not DNSSEC-signed (insecure): it can be forged in transit"),
            format!("sign the {domain} zone and publish its DS record in the parent"),
        ),
        DnssecStatus::Bogus => report.error(
            domain,
            format!(
                "{name} does not validate (DNSSEC bogus): validating senders defer mail to {domain}"
            ),
            "repair the zone's signatures or DS; a lab zone not chained to the root needs its own \
             trust anchor in dns.trust_anchor (here and at the senders)"
                .into(),
        ),
        DnssecStatus::Unchecked => report.warn(
            domain,
            format!("{name} was not validated (dnssec = off)"),
            "use dnssec = \"prefer\" or \"require\"".into(),
        ),
    }
    let (record, published) = match lookup.outcome {
        Outcome::Parameters { record, published } => (record, published),
        _ => {
            report.error(
                domain,
                format!("senders find no usable parameters: {}", lookup.summary()),
                format!(
                    "publish the records `ibemail-kgc record --dir <{domain}'s store>` prints \
                     (or ibemail-kgc publish); then ibemail-kgc check"
                ),
            );
            return;
        }
    };
    if record.generation != active {
        let highest = published
            .records
            .iter()
            .map(|r| r.generation)
            .max()
            .unwrap_or(record.generation);
        report.error(
            domain,
            format!(
                "senders use generation {} but the KGC's active generation is {active} \
                 (published up to {highest})",
                record.generation
            ),
            "publish the store's current records (ibemail-kgc publish), or reload the KGC after \
             a rotation (systemctl reload ibemail-kgc)"
                .into(),
        );
    }
    // The proof: a capsule sealed to what senders see must open.
    let postmaster = match Identity::parse(&format!("postmaster@{domain}")) {
        Ok(id) => id,
        Err(e) => {
            report.error(
                domain,
                format!("not a usable domain: {e}"),
                "correct local_domains".into(),
            );
            return;
        }
    };
    let sealed =
        ibemail_ibe::encapsulate(&record.params, &postmaster, record.generation, &mut OsRng);
    match sealed {
        Ok((capsule, secret)) => match keys.open(&postmaster, record.generation, &capsule).await {
            Ok(opened) if opened.as_bytes() == secret.as_bytes() => report.ok(
                domain,
                format!(
                    "generation {} as published opens with the KGC's key",
                    record.generation
                ),
            ),
            Ok(_) | Err(_) => report.error(
                domain,
                format!(
                    "generation {} as published does NOT match the KGC's key: mail sealed to \
                     it cannot be opened",
                    record.generation
                ),
                "compare with ibemail-kgc check --dir <store>, then republish (ibemail-kgc \
                 publish) the store's records"
                    .into(),
            ),
        },
        Err(e) => report.error(
            domain,
            format!("the published parameters are unusable: {e}"),
            "republish the store's records".into(),
        ),
    }
    if config.sign_policy(domain) == SignPolicy::Always && record.signing.is_none() {
        report.error(
            domain,
            format!("signing is on but {name} has no S=: receivers cannot check the signatures"),
            "republish the records (ibemail-kgc publish); old records lack S=".into(),
        );
    }
}
