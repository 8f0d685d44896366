//! An on-path DNS attacker against a sender's lookups: real Knot for the
//! genuine zones, a second Knot for the attacker's answers, and a proxy
//! that hands the sender the attacker's `_ibemailkey` answers on demand
//! (every other answer — DNSKEY, DS — stays genuine). For a DNSSEC-signed
//! zone and an unsigned one: stripping (NXDOMAIN, NODATA), substitution
//! with a higher generation, with a forged chain, and a replay of an older
//! genuine record. A domain whose published policy was seen is never taken
//! for a non-ibemail domain, and no attacker's parameters are ever used;
//! the genuine, signed rotation is followed without any manual step.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ibemail_discovery::{
    Discovery, DiscoveryConfig, DnssecPolicy, DomainPolicy, Lookup, Outcome, PinPolicy, PinStatus,
    PinStore, RefusedReason, TrustAnchor,
};
use ibemail_ibe::MasterKey;
use ibemail_params::{Policy, Record};
use ibemail_test_support::dnsproxy::DnsProxy;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_800_000_000;
const WEEK: u64 = 7 * 86_400;

fn key(seed: u64) -> MasterKey {
    MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

/// Generation `n` of `domain` from `seed`'s key with a week's policy,
/// signed by `previous` when given.
fn record(domain: &str, n: u32, seed: u64, previous: Option<&MasterKey>) -> Record {
    let k = key(seed);
    let policy = Some(Policy::require(WEEK));
    let mut r = Record::new(n, k.public_params())
        .with_signing(k.signing_params())
        .with_policy(policy);
    if let Some(previous) = previous {
        let bytes = Policy::signed_bytes(policy.as_ref());
        r.continuity = Some(previous.sign_successor(&r.successor(domain, &bytes).unwrap()));
    }
    r
}

fn txt(r: &Record) -> String {
    format!("TXT {}", r.zone_rdata())
}

struct Lab {
    genuine: Knot,
    attacker: Knot,
    proxy: DnsProxy,
    /// A sender: its resolver (through the proxy) and pins.
    discovery: Discovery,
}

/// A sender that has seen nothing yet.
fn sender(genuine: &Knot, proxy: &DnsProxy) -> Discovery {
    Discovery::new(
        DiscoveryConfig {
            servers: vec![proxy.addr],
            timeout: Duration::from_secs(2),
            attempts: 1,
            trust_anchor: TrustAnchor::File(genuine.trust_anchor_file()),
            recursion_desired: false,
            max_ttl: Duration::ZERO,
            max_negative_ttl: Duration::ZERO,
            ..DiscoveryConfig::default()
        },
        Some(std::sync::Arc::new(PinStore::in_memory())),
    )
    .unwrap()
}

impl Lab {
    fn start() -> Lab {
        let zones = |signed: Signing| {
            vec![
                Zone::new("sb.test", signed.clone(), &["www A 192.0.2.1"]),
                Zone::new("ub.test", Signing::Unsigned, &["www A 192.0.2.1"]),
            ]
        };
        let genuine = Knot::start(&zones(Signing::Signed));
        // The attacker serves the same names, unsigned: he has no keys.
        let attacker = Knot::start(&zones(Signing::Unsigned));
        let proxy = DnsProxy::start(IpAddr::V4(Ipv4Addr::LOCALHOST), genuine.addr, attacker.addr);
        let discovery = sender(&genuine, &proxy);
        Lab {
            genuine,
            attacker,
            proxy,
            discovery,
        }
    }

    async fn lookup(&self, domain: &str, pin: PinPolicy) -> Lookup {
        let policy = DomainPolicy {
            dnssec: DnssecPolicy::Prefer,
            pin,
        };
        self.discovery.lookup(domain, policy, NOW).await
    }
}

fn generation(l: &Lookup) -> u32 {
    match &l.outcome {
        Outcome::Parameters { record, .. } => record.generation,
        other => panic!("expected parameters, got {other:?} ({})", l.summary()),
    }
}

/// What the sender may never do under attack: use the attacker's
/// parameters, or take the domain for one without ibemail.
fn assert_held(l: &Lookup, what: &str) {
    assert!(
        matches!(l.outcome, Outcome::Temporary(_) | Outcome::Refused(_)),
        "{what}: {}",
        l.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_plaintext_and_no_attacker_key_for_a_pinned_domain_with_a_policy() {
    let mut lab = Lab::start();
    for (domain, signed) in [("ub.test", false), ("sb.test", true)] {
        for pin in [PinPolicy::Policy, PinPolicy::Enforce] {
            lab.discovery = sender(&lab.genuine, &lab.proxy);
            let g1 = record(domain, 1, 1, None);
            lab.genuine
                .set_txt(domain, "_ibemailkey", &[&g1.zone_rdata()]);
            lab.proxy.attack(false);
            let first = lab.lookup(domain, pin).await;
            assert_eq!(generation(&first), 1, "{domain}");

            lab.proxy.attack(true);
            // Stripping: NXDOMAIN, then NODATA.
            lab.attacker.set_records(domain, "_ibemailkey", &[]);
            assert_held(&lab.lookup(domain, pin).await, "NXDOMAIN");
            lab.attacker
                .set_records(domain, "_ibemailkey", &["A 192.0.2.66"]);
            assert_held(&lab.lookup(domain, pin).await, "NODATA");
            // Substitution with the attacker's generation 999.
            let evil = record(domain, 999, 66, None);
            lab.attacker
                .set_records(domain, "_ibemailkey", &[&txt(&evil)]);
            let l = lab.lookup(domain, pin).await;
            assert_held(&l, "substitution");
            if !signed {
                assert!(
                    matches!(
                        &l.outcome,
                        Outcome::Refused(RefusedReason::Pin(PinStatus::Unchained {
                            generation: 999,
                            ..
                        }))
                    ),
                    "{}",
                    l.summary()
                );
            }
            // A forged chain: generation 2 "signed" by the attacker's key.
            let forged = record(domain, 2, 67, Some(&key(66)));
            lab.attacker
                .set_records(domain, "_ibemailkey", &[&txt(&forged), &txt(&g1)]);
            assert_held(&lab.lookup(domain, pin).await, "forged chain");

            // The genuine rotation (2 signed by 1) is followed at once.
            lab.proxy.attack(false);
            let g2 = record(domain, 2, 2, Some(&key(1)));
            lab.genuine
                .set_txt(domain, "_ibemailkey", &[&g2.zone_rdata(), &g1.zone_rdata()]);
            let l = lab.lookup(domain, pin).await;
            assert_eq!(generation(&l), 2, "{domain}: {}", l.summary());
            if !signed {
                assert_eq!(l.pin, PinStatus::NewGeneration { previous: 1 });
            }
            // Replaying the genuine, older record set: a rollback.
            lab.proxy.attack(true);
            lab.attacker
                .set_records(domain, "_ibemailkey", &[&txt(&g1)]);
            let l = lab.lookup(domain, pin).await;
            assert_held(&l, "replay");
            if !signed {
                assert!(
                    matches!(
                        &l.outcome,
                        Outcome::Refused(RefusedReason::Pin(PinStatus::Rollback { .. }))
                    ),
                    "{}",
                    l.summary()
                );
            }
            // Over: the genuine generation 2 again. Then the domain really
            // stops publishing.
            lab.proxy.attack(false);
            assert_eq!(generation(&lab.lookup(domain, pin).await), 2);
            lab.genuine.set_records(domain, "_ibemailkey", &[]);
            let gone = lab.lookup(domain, pin).await;
            if signed {
                // A DNSSEC-proven absence is the domain's own word: its
                // policy ends.
                assert!(
                    matches!(gone.outcome, Outcome::NotIbe(_)),
                    "{}",
                    gone.summary()
                );
            } else {
                assert!(
                    matches!(
                        gone.outcome,
                        Outcome::Refused(RefusedReason::PolicyRequires { .. })
                    ),
                    "{}",
                    gone.summary()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_published_policy_pins_report_but_do_not_hold_mail() {
    let lab = Lab::start();
    let domain = "ub.test";
    let bare = |n, seed, previous: Option<&MasterKey>| {
        let mut r = record(domain, n, seed, None).with_policy(None);
        if let Some(previous) = previous {
            let bytes = Policy::signed_bytes(None);
            r.continuity = Some(previous.sign_successor(&r.successor(domain, &bytes).unwrap()));
        }
        r
    };
    lab.genuine
        .set_txt(domain, "_ibemailkey", &[&bare(1, 1, None).zone_rdata()]);
    assert_eq!(generation(&lab.lookup(domain, PinPolicy::Policy).await), 1);
    lab.proxy.attack(true);
    // Stripped: without a policy the domain looks like one without ibemail
    // (the sender's own `encrypt = "require"` is what protects it then).
    lab.attacker.set_records(domain, "_ibemailkey", &[]);
    assert!(matches!(
        lab.lookup(domain, PinPolicy::Policy).await.outcome,
        Outcome::NotIbe(_)
    ));
    // Substituted: reported and trusted anew under `policy`, refused under
    // `enforce`.
    let evil = bare(5, 66, None);
    lab.attacker
        .set_records(domain, "_ibemailkey", &[&txt(&evil)]);
    let l = lab.lookup(domain, PinPolicy::Enforce).await;
    assert!(
        matches!(l.outcome, Outcome::Refused(RefusedReason::Pin(_))),
        "{}",
        l.summary()
    );
    let l = lab.lookup(domain, PinPolicy::Policy).await;
    assert!(l.pin.is_violation(), "{}", l.summary());
    assert_eq!(generation(&l), 5);
}
