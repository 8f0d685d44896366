//! The KGC and each local domain: served, published, matching (a capsule
//! sealed to the published parameters opens with the KGC's key), DNSSEC.

use std::sync::Arc;
use std::time::Duration;

use ibemail_discovery::{Discovery, DnssecStatus, Outcome};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::access::{KeyAccess, KeyError};
use ibemail_kgc::clock::now;
use ibemail_kgc::service::KeyService;
use ibemail_message::signature::Algorithm;
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
        Some(KeySource::Daemon(kgc)) => {
            let client = match kgc.client(Duration::from_secs(10)) {
                Ok(client) => client,
                Err(e) => {
                    report.error(
                        "kgc",
                        format!("cannot set up the KGC client: {e}"),
                        "correct kgc.tls_cert / kgc.tls_key (the milter's user must read the \
                         key, mode 0600; ibemail-kgc tls-cert makes a pair)"
                            .into(),
                    );
                    return;
                }
            };
            // Each endpoint on its own: a replica that is down is worth a
            // warning even while another answers.
            let mut served = None;
            let mut failures = Vec::new();
            for (i, endpoint) in client.endpoints().iter().enumerate() {
                let Some(one) = client.only(i) else { continue };
                match one.hello().await {
                    Ok(list) => {
                        let shown = list
                            .iter()
                            .map(|(d, n)| format!("{d} (generation {n})"))
                            .collect::<Vec<_>>()
                            .join(", ");
                        report.ok(
                            "kgc",
                            format!("{endpoint} answers this user and serves {shown}"),
                        );
                        served.get_or_insert(list);
                    }
                    Err(e) => failures.push((endpoint.to_string(), e.to_string())),
                }
            }
            for (endpoint, e) in &failures {
                if served.is_some() {
                    report.warn(
                        "kgc",
                        format!(
                            "{}; the others answer, so mail flows, without this failover",
                            kgc_problem(endpoint, e)
                        ),
                        kgc_fix(endpoint, e),
                    );
                } else {
                    report.error("kgc", kgc_problem(endpoint, e), kgc_fix(endpoint, e));
                }
            }
            let Some(served) = served else { return };
            (Arc::new(client) as Arc<dyn KeyAccess>, served)
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

fn kgc_problem(endpoint: &str, error: &str) -> String {
    format!("{endpoint} does not answer this user: {error}")
}

fn kgc_fix(endpoint: &str, error: &str) -> String {
    let uid = ibemail_kgc::accounts::current_uid();
    let forbidden = error.contains("Forbidden") || error.contains("not granted");
    if error.contains("TLS handshake refused") {
        "allow the milter's certificate on that KGC: ibemail-kgc serve --allow-cert PIN \
         (ibemail-kgc tls-fingerprint MILTER-CERT prints the pin)"
            .into()
    } else if error.contains("is not pinned") {
        "that server's certificate is not in kgc.tls_server_fingerprints: add its pin \
         (ibemail-kgc tls-fingerprint KGC-CERT on its host) if it is really your KGC"
            .into()
    } else if forbidden && endpoint.starts_with("tls:") {
        "grant the milter's certificate open+sign on that KGC (--allow-cert PIN=open+sign)".into()
    } else if endpoint.starts_with("tls:") {
        "start that KGC daemon with --tls-listen on that address (and let the network through)"
            .into()
    } else if forbidden {
        format!(
            "let the milter's user in: ibemail-kgc serve --allow-uid {uid} (the packaged unit \
             allows the user ibemail)"
        )
    } else if error.contains("ermission denied") {
        format!(
            "the milter's user needs group access to {endpoint} and its directory (the \
             packaged units: socket group ibemail, mode 0660)"
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
    if config.sign_policy(domain) == SignPolicy::Always {
        let algorithm = config.sign_algorithm;
        check_sign_grant(report, keys, domain, &postmaster, active, algorithm).await;
    }
    if config.sign_policy(domain) == SignPolicy::Always && record.signing.is_none() {
        report.error(
            domain,
            format!("signing is on but {name} has no S=: receivers cannot check the signatures"),
            "republish the records (ibemail-kgc publish); old records lack S=".into(),
        );
    }
}

/// Signing is on: the KGC must sign for this milter, or every outbound
/// message would wait in the queue.
pub(super) async fn check_sign_grant(
    report: &mut Report,
    keys: &Arc<dyn KeyAccess>,
    domain: &str,
    postmaster: &Identity,
    generation: Generation,
    algorithm: Algorithm,
) {
    // A random digest: the signature the check obtains signs nothing.
    let mut digest = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut digest);
    // What the milter asks for (a KGC older than SIGN-CERTIFIED fails the
    // certified one).
    let signed =
        crate::signing::sign_digest(&**keys, algorithm, postmaster, generation, &digest).await;
    match signed {
        Ok(_) => report.ok(
            domain,
            format!("the KGC signs for this milter (generation {generation})"),
        ),
        Err(KeyError::Forbidden(why)) => report.error(
            domain,
            format!(
                "signing is on, but the KGC does not let this milter sign ({why}): outbound \
                 mail would wait in the queue"
            ),
            format!(
                "grant signing: ibemail-kgc serve --allow-uid {} (open and sign) or \
                 --allow-sign {0}; over TLS --allow-cert PIN=open+sign",
                ibemail_kgc::accounts::current_uid()
            ),
        ),
        Err(e) => report.error(
            domain,
            format!("signing is on, but the KGC does not sign: {e}"),
            "see the KGC's log (journalctl -u ibemail-kgc)".into(),
        ),
    }
}
