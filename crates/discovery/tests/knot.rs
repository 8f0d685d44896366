//! Discovery against a real authoritative server (Knot DNS) serving signed,
//! unsigned, tampered, split, multi-generation, malformed and broken zones.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ibemail_discovery::{
    Discovery, DiscoveryConfig, DnssecPolicy, DnssecStatus, DomainPolicy, NotIbeReason, Outcome,
    PinPolicy, PinStatus, PinStore, RefusedReason, TrustAnchor,
};
use ibemail_ibe::MasterKey;
use ibemail_params::Record;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::silent::Silent;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_800_000_000;

fn record(generation: u32, seed: u64) -> Record {
    Record::new(
        generation,
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)).public_params(),
    )
}

/// Generation `n` of pinned.test with its signing parameter, signed by the
/// key of `previous_seed` when given.
fn chained(generation: u32, seed: u64, previous_seed: Option<u64>) -> Record {
    let key = |seed| MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    let k = key(seed);
    let mut r = Record::new(generation, k.public_params()).with_signing(k.signing_params());
    if let Some(previous) = previous_seed {
        let successor = r.successor("pinned.test", b"").unwrap();
        r.continuity = Some(key(previous).sign_successor(&successor));
    }
    r
}

fn txt_line(r: &Record) -> String {
    format!("_ibemailkey TXT \"{}\"", r.to_text())
}

fn split_line(r: &Record) -> String {
    let t = r.to_text();
    let (a, rest) = t.split_at(60);
    let (b, c) = rest.split_at(70);
    format!("_ibemailkey TXT \"{a}\" \"{b}\" \"{c}\"")
}

/// One Knot for the whole file (starting one signs six zones).
fn knot() -> &'static Knot {
    static KNOT: OnceLock<Knot> = OnceLock::new();
    KNOT.get_or_init(|| {
        let forged = format!("\"{}\"", record(1, 666).to_text());
        Knot::start(&[
            Zone::new("signed.test", Signing::Signed, &[&txt_line(&record(1, 1))]),
            Zone::new(
                "unsigned.test",
                Signing::Unsigned,
                &[&txt_line(&record(1, 2))],
            ),
            Zone::new(
                "tampered.test",
                Signing::Tampered {
                    owner: "_ibemailkey".into(),
                    forged,
                },
                &[&txt_line(&record(1, 3))],
            ),
            Zone::new("split.test", Signing::Signed, &[&split_line(&record(7, 4))]),
            Zone::new(
                "two.test",
                Signing::Signed,
                &[
                    &txt_line(&record(1, 5)),
                    &txt_line(&record(2, 6)),
                    "_ibemailkey TXT \"v=spf1 -all\"",
                ],
            ),
            Zone::new(
                "malformed.test",
                Signing::Unsigned,
                &["_ibemailkey TXT \"ver=1; a=bb2-fo; c=bls12-381; n=one; X=AAAA; Y=AAAA\""],
            ),
            Zone::new(
                "foreign.test",
                Signing::Unsigned,
                &["_ibemailkey TXT \"google-site-verification=abc\""],
            ),
            Zone::new("nodata.test", Signing::Signed, &["_ibemailkey A 192.0.2.1"]),
            Zone::new(
                "shortttl.test",
                Signing::Unsigned,
                &[&format!("_ibemailkey 1 TXT \"{}\"", record(1, 8).to_text())],
            ),
            Zone::new(
                "pinned.test",
                Signing::Unsigned,
                &[&txt_line(&chained(1, 9, None))],
            ),
            Zone::new("servfail.test", Signing::Broken, &[]),
        ])
    })
}

fn discovery_for(servers: Vec<std::net::SocketAddr>, timeout: Duration) -> Discovery {
    Discovery::new(
        DiscoveryConfig {
            servers,
            timeout,
            attempts: 1,
            trust_anchor: TrustAnchor::Text(knot().trust_anchor().to_string()),
            ..DiscoveryConfig::default()
        },
        Some(Arc::new(PinStore::in_memory())),
    )
    .unwrap()
}

fn discovery() -> Discovery {
    discovery_for(vec![knot().addr], Duration::from_secs(3))
}

fn policy(dnssec: DnssecPolicy) -> DomainPolicy {
    DomainPolicy {
        dnssec,
        pin: PinPolicy::Off,
    }
}

fn params_of(outcome: &Outcome) -> &Record {
    match outcome {
        Outcome::Parameters { record, .. } => record,
        other => panic!("expected parameters, got {other:?}"),
    }
}

#[tokio::test]
async fn signed_zone_is_secure_and_usable_under_every_policy() {
    let d = discovery();
    for p in [DnssecPolicy::Prefer, DnssecPolicy::Require] {
        let l = d.lookup("signed.test", policy(p), NOW).await;
        assert_eq!(params_of(&l.outcome).params, record(1, 1).params, "{p:?}");
        assert_eq!(l.dnssec, DnssecStatus::Secure);
        assert!(
            l.ttl <= Duration::from_secs(300) && l.ttl > Duration::from_secs(200),
            "{:?}",
            l.ttl
        );
    }
    let off = d
        .lookup("signed.test", policy(DnssecPolicy::Off), NOW)
        .await;
    assert_eq!(off.dnssec, DnssecStatus::Unchecked);
    assert_eq!(params_of(&off.outcome).generation, 1);
}

#[tokio::test]
async fn unsigned_zone_is_insecure_refused_only_when_dnssec_is_required() {
    let d = discovery();
    let l = d
        .lookup("unsigned.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert_eq!(l.dnssec, DnssecStatus::Insecure);
    assert_eq!(params_of(&l.outcome).params, record(1, 2).params);
    let l = d
        .lookup("unsigned.test", policy(DnssecPolicy::Require), NOW)
        .await;
    assert!(
        matches!(
            l.outcome,
            Outcome::Refused(RefusedReason::DnssecRequired(DnssecStatus::Insecure))
        ),
        "{:?}",
        l.outcome
    );
}

#[tokio::test]
async fn tampered_zone_is_bogus_and_a_temporary_failure_never_plaintext() {
    let d = discovery();
    for p in [DnssecPolicy::Prefer, DnssecPolicy::Require] {
        let l = d.lookup("tampered.test", policy(p), NOW).await;
        assert_eq!(l.dnssec, DnssecStatus::Bogus, "{p:?}");
        assert!(
            matches!(l.outcome, Outcome::Temporary(_)),
            "{p:?}: {:?}",
            l.outcome
        );
    }
    // With validation off the forged record is what one gets: that is what
    // `dnssec = off` means, and why it is not the default.
    let l = d
        .lookup("tampered.test", policy(DnssecPolicy::Off), NOW)
        .await;
    assert_eq!(params_of(&l.outcome).params, record(1, 666).params);
}

#[tokio::test]
async fn record_split_into_strings_parses() {
    let l = discovery()
        .lookup("split.test", policy(DnssecPolicy::Require), NOW)
        .await;
    let r = params_of(&l.outcome);
    assert_eq!((r.generation, &r.params), (7, &record(7, 4).params));
}

#[tokio::test]
async fn highest_generation_is_selected_when_two_are_published() {
    let l = discovery()
        .lookup("two.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    match &l.outcome {
        Outcome::Parameters {
            record: r,
            published,
        } => {
            assert_eq!(r.generation, 2);
            assert_eq!(published.records.len(), 2, "the SPF-like string is ignored");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nxdomain_nodata_malformed_and_foreign_records_mean_no_ibemail() {
    let d = discovery();
    let l = d
        .lookup("absent.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert_eq!(l.dnssec, DnssecStatus::Secure, "signed denial of existence");
    assert!(
        matches!(l.outcome, Outcome::NotIbe(NotIbeReason::NxDomain)),
        "{:?}",
        l.outcome
    );

    let l = d
        .lookup("nodata.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(
        matches!(l.outcome, Outcome::NotIbe(NotIbeReason::NoData)),
        "{:?}",
        l.outcome
    );

    let l = d
        .lookup("malformed.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    match l.outcome {
        Outcome::NotIbe(NotIbeReason::NoUsableRecord { rejected, .. }) => {
            assert_eq!(rejected.len(), 1);
            assert!(rejected[0].to_string().contains("n="), "{}", rejected[0]);
        }
        other => panic!("{other:?}"),
    }
    let l = d
        .lookup("foreign.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(
        matches!(&l.outcome, Outcome::NotIbe(NotIbeReason::NoUsableRecord { rejected, .. }) if rejected.is_empty()),
        "{:?}",
        l.outcome
    );
    let l = d
        .lookup("[192.0.2.1]", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(matches!(
        l.outcome,
        Outcome::NotIbe(NotIbeReason::InvalidDomain(_))
    ));
}

#[tokio::test]
async fn servfail_refused_and_silence_are_temporary_and_not_cached() {
    let d = discovery();
    for _ in 0..2 {
        let l = d
            .lookup("servfail.test", policy(DnssecPolicy::Prefer), NOW)
            .await;
        assert!(
            matches!(&l.outcome, Outcome::Temporary(r) if r.contains("SERVFAIL") || r.contains("Server Failure")),
            "{:?}",
            l.outcome
        );
        assert!(!l.cached);
    }
    let l = d
        .lookup("example.org", policy(DnssecPolicy::Off), NOW)
        .await;
    assert!(
        matches!(&l.outcome, Outcome::Temporary(r) if r.to_lowercase().contains("refused")),
        "{:?}",
        l.outcome
    );

    let silent = Silent::start(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
    let d = discovery_for(vec![silent.addr], Duration::from_millis(500));
    let started = std::time::Instant::now();
    let l = d
        .lookup("signed.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(
        matches!(&l.outcome, Outcome::Temporary(r) if r.contains("timeout") || r.contains("timed out")),
        "{:?}",
        l.outcome
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by the configured timeout"
    );
}

#[tokio::test]
async fn answers_are_cached_for_their_ttl_including_negative_ones() {
    let d = discovery();
    let first = d
        .lookup("signed.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    let second = d
        .lookup("signed.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(!first.cached && second.cached);
    let nx1 = d
        .lookup("absent.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    let nx2 = d
        .lookup("absent.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(!nx1.cached && nx2.cached);
    assert!(matches!(
        nx2.outcome,
        Outcome::NotIbe(NotIbeReason::NxDomain)
    ));

    // A one-second TTL: after it expires the change in DNS is seen.
    let l = d
        .lookup("shortttl.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert_eq!(params_of(&l.outcome).generation, 1);
    knot().set_txt(
        "shortttl.test",
        "_ibemailkey",
        &[&format!("\"{}\"", record(2, 10).to_text())],
    );
    let cached = d
        .lookup("shortttl.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(cached.cached || params_of(&cached.outcome).generation == 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = d
        .lookup("shortttl.test", policy(DnssecPolicy::Prefer), NOW)
        .await;
    assert!(!fresh.cached);
    assert_eq!(params_of(&fresh.outcome).generation, 2);
}

#[tokio::test]
async fn pinning_reports_or_refuses_changed_parameters() {
    let d = discovery();
    let report = DomainPolicy {
        dnssec: DnssecPolicy::Prefer,
        pin: PinPolicy::Report,
    };
    let enforce = DomainPolicy {
        dnssec: DnssecPolicy::Prefer,
        pin: PinPolicy::Enforce,
    };
    assert_eq!(
        d.lookup("pinned.test", report, NOW).await.pin,
        PinStatus::FirstUse
    );
    assert_eq!(
        d.lookup("pinned.test", report, NOW).await.pin,
        PinStatus::Match
    );

    // The domain's generation 1 now carries other parameters (an attacker
    // with the zone's keys, or an admin who reran setup).
    knot().set_txt(
        "pinned.test",
        "_ibemailkey",
        &[&format!("\"{}\"", chained(1, 4242, None).to_text())],
    );
    d.clear_cache();
    let l = d.lookup("pinned.test", report, NOW).await;
    assert_eq!(l.pin, PinStatus::Changed { generation: 1 });
    assert!(
        matches!(l.outcome, Outcome::Parameters { .. }),
        "report still uses them"
    );
    let l = d.lookup("pinned.test", enforce, NOW).await;
    assert!(matches!(
        l.outcome,
        Outcome::Refused(RefusedReason::Pin(PinStatus::Changed { generation: 1 }))
    ));

    // A new generation not signed by the pinned one is refused too...
    knot().set_txt(
        "pinned.test",
        "_ibemailkey",
        &[&chained(2, 77, None).zone_rdata()],
    );
    d.clear_cache();
    let l = d.lookup("pinned.test", enforce, NOW).await;
    assert!(matches!(
        l.outcome,
        Outcome::Refused(RefusedReason::Pin(PinStatus::Unchained {
            generation: 2,
            ..
        }))
    ));
    // ...and a proper rotation, signed by generation 1, is accepted.
    knot().set_txt(
        "pinned.test",
        "_ibemailkey",
        &[
            &chained(2, 77, Some(9)).zone_rdata(),
            &chained(1, 9, None).zone_rdata(),
        ],
    );
    d.clear_cache();
    let l = d.lookup("pinned.test", enforce, NOW).await;
    assert_eq!(l.pin, PinStatus::NewGeneration { previous: 1 });
    assert_eq!(params_of(&l.outcome).generation, 2);
}
