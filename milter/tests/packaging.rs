//! The files under `packaging/` agree with the code: the sample
//! configuration parses (as shipped, and with every optional line switched
//! on), documents every key and tells the truth about defaults; the Postfix
//! snippets name the sample's sockets; the example zone's records parse.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibemail_discovery::{DnssecPolicy, PinPolicy};
use ibemail_milter::config::{
    Config, EncryptPolicy, FailureAction, KeySource, SignPolicy, SignaturePolicy,
};
use ibemail_milter::offline::RecordBook;

fn packaging(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(path)
}

fn read(path: &str) -> String {
    let path = packaging(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn sample() -> String {
    read("ibemail-milter.toml")
}

/// Every key `Config::parse` accepts, as `table.key` (top level: `key`;
/// per-domain tables: `policy.domains.*`).
const KEYS: &[&str] = &[
    "socket",
    "state_dir",
    "authserv_id",
    "trusted_authserv_ids",
    "local_domains",
    "internal_networks",
    "max_message_size",
    "oversize",
    "metrics",
    "kgc.dir",
    "kgc.dirs",
    "kgc.socket",
    "kgc.endpoints",
    "kgc.spread",
    "kgc.tls_cert",
    "kgc.tls_key",
    "kgc.tls_server_fingerprints",
    "kgc.timeout",
    "dns.resolvers",
    "dns.trust_anchor",
    "dns.timeout",
    "dns.attempts",
    "dns.max_cache",
    "dns.pins",
    "policy.encrypt",
    "policy.dnssec",
    "policy.pin",
    "policy.domains.*.encrypt",
    "policy.domains.*.dnssec",
    "policy.domains.*.pin",
    "policy.signature",
    "policy.domains.*.signature",
    "signing.sign",
    "signing.algorithm",
    "signing.domains.*.sign",
    "inbound.on_failure",
    "inbound.bounce_to",
    "reinject.address",
    "reinject.helo",
    "reinject.remember",
    "reinject.daemon_name",
    "log.format",
    "log.addresses",
];

/// One line of the sample: a table header, a setting (active or commented
/// out as `#key = value`), or anything else.
enum Line<'a> {
    Table(String),
    Setting { key: &'a str, active: bool },
    Other,
}

fn classify(line: &str) -> Line<'_> {
    let (text, active) = match line.strip_prefix('#') {
        Some(rest) => (rest, false),
        None => (line, true),
    };
    if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return Line::Table(name.to_string());
    }
    match text.split_once(" = ") {
        Some((key, _))
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
        {
            Line::Setting { key, active }
        }
        _ => Line::Other,
    }
}

fn qualified(table: &str, key: &str) -> String {
    let table = if table.starts_with("policy.domains.") {
        "policy.domains.*"
    } else if table.starts_with("signing.domains.") {
        "signing.domains.*"
    } else {
        table
    };
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// The sample with every commented-out table and setting switched on. A
/// commented setting replaces an active one of the same key in the same
/// table (the later of several alternatives wins), and key-store
/// directories replace the daemon's socket.
fn everything_on(text: &str) -> String {
    let mut out: Vec<Option<String>> = Vec::new();
    let mut table = String::new();
    // (table, key) -> index in `out` of the line in use.
    let mut in_use: std::collections::BTreeMap<(String, String), usize> =
        std::collections::BTreeMap::new();
    for line in text.lines() {
        match classify(line) {
            Line::Table(name) => {
                table = name;
                out.push(Some(format!("[{table}]")));
            }
            Line::Setting { key, active } => {
                let setting = line.trim_start_matches('#').to_string();
                let id = (table.clone(), key.to_string());
                if let Some(previous) = in_use.insert(id, out.len()) {
                    out[previous] = None;
                }
                // The alternatives of [kgc]: endpoints replace the socket,
                // key-store directories replace both (and the TLS keys).
                let replaced: &[&str] = match key {
                    "endpoints" => &["socket"],
                    "dir" | "dirs" => &[
                        "socket",
                        "endpoints",
                        "spread",
                        "tls_cert",
                        "tls_key",
                        "tls_server_fingerprints",
                    ],
                    _ => &[],
                };
                if !active && table == "kgc" {
                    for other in replaced {
                        if let Some(i) = in_use.remove(&("kgc".into(), (*other).into())) {
                            out[i] = None;
                        }
                    }
                }
                out.push(Some(setting));
            }
            Line::Other => {}
        }
    }
    out.into_iter().flatten().collect::<Vec<_>>().join("\n")
}

#[test]
fn the_sample_configuration_parses_as_shipped() {
    let c = Config::parse(&sample()).unwrap();
    assert_eq!(c.socket, "inet:127.0.0.1:8895");
    assert_eq!(c.local_domains, ["example.org"]);
    assert_eq!(
        c.keys,
        Some(KeySource::Daemon(ibemail_kgc::client::Endpoints::unix(
            Path::new("/run/ibemail/kgc.sock")
        )))
    );
    assert_eq!(c.metrics, None);
    assert_eq!(
        c.pins.as_deref(),
        Some(std::path::Path::new("/var/lib/ibemail-milter/pins"))
    );
    assert_eq!(c.reinject, Some("127.0.0.1:10026".parse().unwrap()));
    assert!(c.domains.is_empty());
    assert_eq!(c.sign_policy("example.org"), SignPolicy::Always);
}

#[test]
fn the_sample_states_the_defaults_truly() {
    // Active lines are the built-in defaults unless their comment says
    // otherwise (socket, authserv_id, local_domains, kgc.socket and the
    // reinject settings are the sample's own).
    let sample = Config::parse(&sample()).unwrap();
    let defaults =
        Config::parse("socket = \"inet:127.0.0.1:8895\"\nauthserv_id = \"x\"\n").unwrap();
    assert_eq!(sample.internal_networks, defaults.internal_networks);
    assert_eq!(sample.max_message_size, defaults.max_message_size);
    assert_eq!(sample.oversize, defaults.oversize);
    assert_eq!(sample.kgc_timeout, defaults.kgc_timeout);
    assert_eq!(sample.resolvers, defaults.resolvers);
    assert_eq!(sample.trust_anchor, defaults.trust_anchor);
    assert_eq!(sample.dns_timeout, defaults.dns_timeout);
    assert_eq!(sample.dns_attempts, defaults.dns_attempts);
    assert_eq!(sample.default_policy, defaults.default_policy);
    assert_eq!(sample.undecryptable, defaults.undecryptable);
    assert_eq!(sample.log_format, defaults.log_format);
    assert_eq!(sample.log_addresses, defaults.log_addresses);
    assert_eq!(defaults.metrics, None);
    assert_eq!(defaults.reinject, None);
    assert_eq!(defaults.reinject_helo, "localhost");
    assert_eq!(defaults.sign, SignPolicy::Never, "the sample says it signs");
    assert_eq!(sample.max_message_size, 100 << 20);
    assert_eq!(sample.kgc_timeout, Duration::from_secs(10));
    assert_eq!(sample.dns_timeout, Duration::from_secs(5));
}

#[test]
fn every_optional_line_of_the_sample_is_valid() {
    let text = everything_on(&sample());
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(c.socket, "unix:/var/spool/postfix/ibemail/milter.sock");
    assert_eq!(
        c.keys,
        Some(KeySource::Dirs(vec![
            "/var/lib/ibemail-milter/keys/example.org".into(),
            "/var/lib/ibemail-milter/keys/example.net".into(),
            "/var/lib/ibemail-milter/keys/example.org".into(),
        ]))
    );
    assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(
        c.trust_anchor.as_deref(),
        Some(Path::new("/usr/share/dns/root.key"))
    );
    assert!(c.pins.is_some());
    let partner = c.policy_for("partner.example");
    assert_eq!(partner.encrypt, EncryptPolicy::Require);
    assert_eq!(partner.lookup.dnssec, DnssecPolicy::Require);
    assert_eq!(partner.lookup.pin, PinPolicy::Enforce);
    assert_eq!(c.policy_for("lists.example").encrypt, EncryptPolicy::Never);
    assert_eq!(partner.signature, SignaturePolicy::Require);
    assert_eq!(c.sign_policy("example.org"), SignPolicy::Never);
    assert_eq!(c.undecryptable, FailureAction::Quarantine);
}

#[test]
fn the_samples_several_kgc_endpoints_parse() {
    // The [kgc] endpoint lines switched on, the socket off: what an
    // administrator of several servers does.
    let mut table = String::new();
    let mut lines = Vec::new();
    for line in sample().lines() {
        match classify(line) {
            Line::Table(name) => table = name,
            Line::Setting { key, active } if table == "kgc" => {
                if key == "socket" && active {
                    continue;
                }
                if !active && (key == "endpoints" || key == "spread" || key.starts_with("tls_")) {
                    lines.push(line.trim_start_matches('#').to_string());
                    continue;
                }
            }
            _ => {}
        }
        lines.push(line.to_string());
    }
    let text = lines.join("\n");
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    let Some(KeySource::Daemon(kgc)) = &c.keys else {
        panic!("{:?}", c.keys)
    };
    assert_eq!(kgc.endpoints.len(), 2);
    assert!(kgc.spread);
    let tls = kgc.tls.as_ref().unwrap();
    assert_eq!(tls.cert, Path::new("/etc/ibemail/kgc-client.pem"));
    assert_eq!(tls.servers.len(), 1);
}

#[test]
fn the_sample_documents_every_key() {
    let mut table = String::new();
    let mut seen = BTreeSet::new();
    for line in sample().lines() {
        match classify(line) {
            Line::Table(name) => table = name,
            Line::Setting { key, .. } => {
                seen.insert(qualified(&table, key));
            }
            Line::Other => {}
        }
    }
    let expected: BTreeSet<String> = KEYS.iter().map(|k| k.to_string()).collect();
    let missing: Vec<_> = expected.difference(&seen).collect();
    let unknown: Vec<_> = seen.difference(&expected).collect();
    assert!(missing.is_empty(), "keys not in the sample: {missing:?}");
    assert!(
        unknown.is_empty(),
        "keys the milter does not know: {unknown:?}"
    );
    // And the list above is complete: an unknown key is refused.
    let err = Config::parse("socket = \"inet:127.0.0.1:1\"\nauthserv_id = \"x\"\nbogus = 1\n")
        .unwrap_err();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn the_postfix_snippets_match_the_sample() {
    let c = Config::parse(&sample()).unwrap();
    let main_cf = read("postfix/main.cf.snippet");
    let master_cf = read("postfix/master.cf.snippet");
    let milter = format!("inet:{}", c.socket.strip_prefix("inet:").unwrap());
    for key in ["smtpd_milters", "non_smtpd_milters"] {
        assert!(
            main_cf
                .lines()
                .any(|l| l.starts_with(key) && l.contains(&milter)),
            "main.cf.snippet: {key} should name {milter}"
        );
    }
    assert!(main_cf.contains("milter_default_action = tempfail"));
    let reinject = c.reinject.unwrap().to_string();
    let service = master_cf
        .lines()
        .find(|l| l.starts_with(&reinject))
        .unwrap_or_else(|| panic!("master.cf.snippet: no {reinject} service"));
    assert!(service.contains("smtpd"), "{service}");
    let options: String = master_cf
        .lines()
        .skip_while(|l| !l.starts_with(&reinject))
        .skip(1)
        .take_while(|l| l.starts_with(char::is_whitespace))
        .collect();
    // The milter watches the listener (any local process can use it),
    // recognising it by its daemon name.
    for option in [
        format!("-o smtpd_milters={milter}"),
        format!("-o milter_macro_daemon_name={}", c.reinject_daemon_name),
    ] {
        assert!(options.contains(&option), "{reinject} lacks {option}");
    }
    assert!(!options.contains("no_milters"), "{reinject}: no_milters");
    // A milter sees recipients before virtual alias mapping, so the copy's
    // recipients must be mapped by this listener.
    assert!(
        !options.contains("no_address_mappings"),
        "{reinject} must map the copy's recipients"
    );
}

#[test]
fn the_example_zone_publishes_a_rotation() {
    let zone = read("dns/example.zone");
    let lines: String = zone
        .lines()
        .filter(|l| l.starts_with("_ibemailkey."))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut book = RecordBook::default();
    book.add_file(&lines).unwrap();
    let set = book.records_for("example.org");
    assert!(set.rejected.is_empty(), "{:?}", set.rejected);
    let generations: Vec<u32> = set.records.iter().map(|r| r.generation).collect();
    assert_eq!(generations, [2, 1]);
    let retiring = &set.records[1];
    let expires = retiring.expires.unwrap();
    // Before the old generation expires senders still pick the new one;
    // after it, only the new one is left.
    assert_eq!(set.select(expires - 1).unwrap().generation, 2);
    assert_eq!(set.select(expires + 1).unwrap().generation, 2);
    assert!(set.records[0].expires.is_none());
    // Both generations carry their signature parameter, and they differ.
    let signing: Vec<_> = set.records.iter().map(|r| r.signing.unwrap()).collect();
    assert_ne!(signing[0], signing[1]);
}
