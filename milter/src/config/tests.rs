//! The configuration: parsing, defaults and every mistake named by its key.

#![allow(clippy::unwrap_used)]

use super::parse::parse_network;
use super::*;
use ibemail_discovery::{DnssecPolicy, PinPolicy};

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
            std::path::Path::new("/run/kgc.sock")
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
    // The certified algorithm unless the old one is asked for.
    use ibemail_message::signature::Algorithm;
    assert_eq!(c.sign_algorithm, Algorithm::Certified);
    let old = Config::parse(&format!(
        "{MINIMAL}[signing]\nalgorithm = \"cc-bls12-381-sha256\"\n"
    ))
    .unwrap();
    assert_eq!(old.sign_algorithm, Algorithm::ChaCheon);
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
            &format!("{MINIMAL}[signing]\nalgorithm = \"rsa-sha256\"\n"),
            "signing.algorithm",
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
