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

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{Name, RecordType};

use ibemail_discovery::{
    Discovery, DiscoveryConfig, DnssecPolicy, DnssecStatus, DomainPolicy, Lookup, Outcome,
    PinPolicy, PinStatus, PinStore, RefusedReason, TrustAnchor,
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

/// The sender first met ub.test at generation 2 (1 had left DNS) and
/// pinned its week-long policy. The attacker publishes the genuine 2 with
/// the policy removed and a continuity signature of his own, next to a
/// forged generation 1 carrying his key; then strips the record, or
/// substitutes his own. Trust comes only from pins made before: the
/// forged predecessor vouches for nothing, the policy stands.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_predecessor_cannot_end_a_policy() {
    let lab = Lab::start();
    let domain = "ub.test";
    let g2 = record(domain, 2, 2, Some(&key(1)));
    lab.genuine
        .set_txt(domain, "_ibemailkey", &[&g2.zone_rdata()]);
    assert_eq!(generation(&lab.lookup(domain, PinPolicy::Policy).await), 2);

    lab.proxy.attack(true);
    let evil = key(66);
    let fake1 = record(domain, 1, 66, None).with_policy(None);
    let mut doctored = g2.clone().with_policy(None);
    let bytes = Policy::signed_bytes(None);
    doctored.continuity = Some(evil.sign_successor(&doctored.successor(domain, &bytes).unwrap()));
    lab.attacker
        .set_records(domain, "_ibemailkey", &[&txt(&doctored), &txt(&fake1)]);
    let l = lab.lookup(domain, PinPolicy::Policy).await;
    assert_eq!(generation(&l), 2, "{}", l.summary());
    // Stripped: still held.
    lab.attacker.set_records(domain, "_ibemailkey", &[]);
    assert_held(&lab.lookup(domain, PinPolicy::Policy).await, "strip");
    // Substituted by the attacker's own generation: refused.
    let mine = record(domain, 999, 77, None);
    lab.attacker
        .set_records(domain, "_ibemailkey", &[&txt(&mine)]);
    assert_held(&lab.lookup(domain, PinPolicy::Policy).await, "substitute");
    // The genuine record is used again as soon as the attack stops.
    lab.proxy.attack(false);
    assert_eq!(generation(&lab.lookup(domain, PinPolicy::Policy).await), 2);
}

/// The attacker answers the victim's name with a CNAME into a zone he
/// signs himself (eb.test), or to a name that does not exist there. A
/// chain is only as secure as its weakest link: the unsigned CNAME makes
/// the answer insecure, so pins and policy hold — and for a signed victim
/// the forged CNAME is bogus.
#[tokio::test(flavor = "multi_thread")]
async fn a_cname_into_a_signed_zone_is_no_secure_answer() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 185, 1));
    let zones = [
        Zone::new("eb.test", Signing::Signed, &["www A 192.0.2.1"]),
        Zone::new("ub.test", Signing::Unsigned, &["www A 192.0.2.1"]),
        Zone::new("sb.test", Signing::Signed, &["www A 192.0.2.1"]),
    ];
    let genuine = Knot::start_on(ip, &zones);
    let attacker = Knot::start_on(
        ip,
        &[
            Zone::new("ub.test", Signing::Unsigned, &[]),
            Zone::new("sb.test", Signing::Unsigned, &[]),
        ],
    );
    let proxy = DnsProxy::start(ip, genuine.addr, attacker.addr);
    proxy.attack_only(&["_ibemailkey.ub.test", "_ibemailkey.sb.test"]);
    let evil = record("eb.test", 1, 66, None);
    genuine.set_txt("eb.test", "_ibemailkey", &[&evil.zone_rdata()]);
    for (domain, dnssec) in [
        ("ub.test", DnssecPolicy::Prefer),
        ("sb.test", DnssecPolicy::Require),
    ] {
        let discovery = sender(&genuine, &proxy);
        let policy = DomainPolicy {
            dnssec,
            pin: PinPolicy::Enforce,
        };
        let genuine_record = record(domain, 1, 1, None);
        genuine.set_txt(domain, "_ibemailkey", &[&genuine_record.zone_rdata()]);
        proxy.attack(false);
        let l = discovery.lookup(domain, policy, NOW).await;
        assert_eq!(generation(&l), 1, "{}", l.summary());
        proxy.attack(true);
        for target in ["_ibemailkey.eb.test.", "_nothing-here.eb.test."] {
            attacker.set_records(domain, "_ibemailkey", &[&format!("CNAME {target}")]);
            let l = discovery.lookup(domain, policy, NOW + 10).await;
            assert_held(&l, &format!("{domain} CNAME {target}"));
            assert_ne!(l.dnssec, DnssecStatus::Secure, "{}", l.summary());
        }
    }
}

/// The attacker appends his own validly signed `_ibemailkey` RRset (of
/// eb.test, a signed zone he owns) to the genuine signed answer for a
/// signed victim. Only records owned by the name asked count.
#[tokio::test(flavor = "multi_thread")]
async fn records_of_another_name_in_the_answer_are_ignored() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 186, 1));
    let genuine = Knot::start_on(
        ip,
        &[
            Zone::new("eb.test", Signing::Signed, &["www A 192.0.2.1"]),
            Zone::new("sb.test", Signing::Signed, &["www A 192.0.2.1"]),
        ],
    );
    let victim = record("sb.test", 1, 1, None);
    let evil = record("eb.test", 999, 66, None);
    genuine.set_txt("eb.test", "_ibemailkey", &[&evil.zone_rdata()]);
    genuine.set_txt("sb.test", "_ibemailkey", &[&victim.zone_rdata()]);
    let merging = merging_proxy(
        ip,
        genuine.addr,
        "_ibemailkey.sb.test.",
        "_ibemailkey.eb.test.",
    );
    let discovery = Discovery::new(
        DiscoveryConfig {
            servers: vec![merging],
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
    .unwrap();
    let policy = DomainPolicy {
        dnssec: DnssecPolicy::Require,
        pin: PinPolicy::Enforce,
    };
    let l = discovery.lookup("sb.test", policy, NOW).await;
    assert_eq!(generation(&l), 1, "{}", l.summary());
    assert_eq!(l.dnssec, DnssecStatus::Secure);
    match &l.outcome {
        Outcome::Parameters { published, .. } => assert_eq!(published.records.len(), 1),
        other => panic!("{other:?}"),
    }
}

/// A UDP proxy to `genuine` that appends to every answer for `victim` the
/// answer section of the same query for `extra`.
fn merging_proxy(
    ip: IpAddr,
    genuine: std::net::SocketAddr,
    victim: &'static str,
    extra: &'static str,
) -> std::net::SocketAddr {
    use hickory_resolver::proto::op::Message;
    use hickory_resolver::proto::rr::Name;
    use std::net::{SocketAddr, UdpSocket};
    fn ask(to: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
        let out = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).ok()?;
        out.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        out.send_to(query, to).ok()?;
        let mut answer = [0u8; 65_535];
        let (n, _) = out.recv_from(&mut answer).ok()?;
        Some(answer[..n].to_vec())
    }
    let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        loop {
            let Ok((n, client)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let query = buf[..n].to_vec();
            let Some(answer) = ask(genuine, &query) else {
                continue;
            };
            let parsed = Message::from_vec(&query).unwrap();
            let name = parsed.queries[0].name().to_ascii().to_ascii_lowercase();
            let reply = if name == victim {
                let mut other = parsed.clone();
                other.queries[0].set_name(Name::from_ascii(extra).unwrap());
                let added =
                    Message::from_vec(&ask(genuine, &other.to_vec().unwrap()).unwrap()).unwrap();
                let mut merged = Message::from_vec(&answer).unwrap();
                merged.answers.extend(added.answers);
                merged.to_vec().unwrap()
            } else {
                answer
            };
            let _ = udp.send_to(&reply, client);
        }
    });
    addr
}

/// A domain (or an attacker) publishing many records: more than
/// MAX_RECORDS are not parsed at all — each would cost parsing and, for
/// pins, a pairing, on every uncached lookup.
#[tokio::test(flavor = "multi_thread")]
async fn an_answer_of_too_many_records_is_not_parsed() {
    let lab = Lab::start();
    let domain = "ub.test";
    let records: Vec<Record> = (1..=ibemail_discovery::MAX_RECORDS as u32 + 1)
        .map(|n| record(domain, n, u64::from(n), None))
        .collect();
    let rdata: Vec<String> = records.iter().map(|r| r.zone_rdata()).collect();
    let refs: Vec<&str> = rdata.iter().map(String::as_str).collect();
    lab.genuine.set_txt(domain, "_ibemailkey", &refs);
    let l = lab.lookup(domain, PinPolicy::Policy).await;
    match &l.outcome {
        Outcome::Temporary(reason) => assert!(reason.contains("at most"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

fn ask_udp(to: SocketAddr, query: &[u8]) -> Option<Vec<u8>> {
    let out = UdpSocket::bind(SocketAddr::new(to.ip(), 0)).ok()?;
    out.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    out.send_to(query, to).ok()?;
    let mut answer = [0u8; 65_535];
    let (n, _) = out.recv_from(&mut answer).ok()?;
    Some(answer[..n].to_vec())
}

/// A UDP forwarder to `genuine`; while `attacking`, queries for `victim`
/// of type TXT or CNAME are answered NXDOMAIN with the signed SOA RRset
/// of `soa_zone` (fetched from the genuine server, RRSIG included).
fn forging_proxy(
    ip: IpAddr,
    genuine: SocketAddr,
    victim: &'static str,
    soa_zone: &'static str,
    rcode: ResponseCode,
    attacking: Arc<std::sync::atomic::AtomicBool>,
) -> SocketAddr {
    let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_535];
        loop {
            let Ok((n, client)) = udp.recv_from(&mut buf) else {
                continue;
            };
            let query = buf[..n].to_vec();
            let Some(answer) = ask_udp(genuine, &query) else {
                continue;
            };
            let parsed = Message::from_vec(&query).unwrap();
            let q = &parsed.queries[0];
            let name = q.name().to_ascii().to_ascii_lowercase();
            let forge = attacking.load(std::sync::atomic::Ordering::SeqCst)
                && name == victim
                && matches!(q.query_type(), RecordType::TXT | RecordType::CNAME);
            let reply = if forge {
                // The genuine, signed SOA of another zone, asked with the
                // client's own EDNS flags (DO bit).
                let mut soa_query = parsed.clone();
                soa_query.queries[0].set_name(Name::from_ascii(soa_zone).unwrap());
                soa_query.queries[0].set_query_type(RecordType::SOA);
                let soa =
                    Message::from_vec(&ask_udp(genuine, &soa_query.to_vec().unwrap()).unwrap())
                        .unwrap();
                let mut forged = Message::from_vec(&answer).unwrap();
                forged.answers.clear();
                forged.authorities = soa.answers;
                forged.additionals.clear();
                forged.metadata.response_code = rcode;
                forged.to_vec().unwrap()
            } else {
                answer
            };
            let _ = udp.send_to(&reply, client);
        }
    });
    addr
}

/// One run: a sender meets ub.test (week-long policy), then the attacker
/// answers with `rcode` and the signed SOA of `soa_zone`. Returns what the
/// sender concluded, if it was not a deferral.
async fn forged_denial(
    genuine: &Knot,
    ip: IpAddr,
    soa_zone: &'static str,
    rcode: ResponseCode,
) -> Option<String> {
    let attacking = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = forging_proxy(
        ip,
        genuine.addr,
        "_ibemailkey.ub.test.",
        soa_zone,
        rcode,
        attacking.clone(),
    );
    let pins = Arc::new(PinStore::in_memory());
    let discovery = Discovery::new(
        DiscoveryConfig {
            servers: vec![proxy],
            timeout: Duration::from_secs(2),
            attempts: 1,
            trust_anchor: TrustAnchor::File(genuine.trust_anchor_file()),
            recursion_desired: false,
            max_ttl: Duration::ZERO,
            max_negative_ttl: Duration::ZERO,
            ..DiscoveryConfig::default()
        },
        Some(pins.clone()),
    )
    .unwrap();
    let policy = DomainPolicy {
        dnssec: DnssecPolicy::Prefer,
        pin: PinPolicy::Policy,
    };
    // The sender meets ub.test and its week-long policy.
    let first = discovery.lookup("ub.test", policy, NOW).await;
    assert!(
        matches!(first.outcome, Outcome::Parameters { .. }),
        "{}",
        first.summary()
    );
    assert_eq!(pins.policy_until("ub.test"), Some(NOW + WEEK));
    // The attacker strips the record with a forged denial.
    attacking.store(true, std::sync::atomic::Ordering::SeqCst);
    let l = discovery.lookup("ub.test", policy, NOW + 60).await;
    let held = matches!(
        l.outcome,
        Outcome::Refused(RefusedReason::PolicyRequires { .. }) | Outcome::Temporary(_)
    );
    (!held).then(|| {
        format!(
            "SOA of {soa_zone}, {rcode}: {} (dnssec {}); policy now {:?}",
            l.summary(),
            l.dnssec,
            pins.policy_until("ub.test")
        )
    })
}

/// An on-path attacker answers `_ibemailkey.ub.test` (unsigned, under the
/// signed `test.`) with NXDOMAIN or an empty answer and, in the authority
/// section, a genuine signed SOA RRset of another zone (the parent, or one
/// he owns): public, replayable, no key needed. A signed SOA proves
/// nothing alone: a denial is secure only with a validated NSEC/NSEC3 and
/// the SOA of a zone enclosing the name, so the policy holds.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_denial_with_a_signed_soa_of_another_zone_is_not_secure() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 190, 1));
    let genuine = Knot::start_on(
        ip,
        &[
            Zone::new("ub.test", Signing::Unsigned, &["www A 192.0.2.1"]),
            // Any signed zone will do: say, one the attacker owns.
            Zone::new("attacker.test", Signing::Signed, &["www A 192.0.2.1"]),
        ],
    );
    let k = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let g1 = Record::new(1, k.public_params())
        .with_signing(k.signing_params())
        .with_policy(Some(Policy::require(WEEK)));
    genuine.set_txt("ub.test", "_ibemailkey", &[&g1.zone_rdata()]);
    let mut broken = Vec::new();
    for (zone, rcode) in [
        ("test.", ResponseCode::NXDomain),
        ("attacker.test.", ResponseCode::NXDomain),
        ("attacker.test.", ResponseCode::NoError),
    ] {
        broken.extend(forged_denial(&genuine, ip, zone, rcode).await);
    }
    assert!(
        broken.is_empty(),
        "a stripped record of a domain with a policy in force must defer the mail, but:\n{}",
        broken.join("\n")
    );
}
