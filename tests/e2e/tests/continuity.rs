//! Parameters an attacker can neither strip nor replace, even without
//! DNSSEC, and rotations that neither lose mail nor break signatures:
//! real Postfix, Knot, KGC daemons and milters, with an on-path DNS
//! attacker (a proxy that hands the milters his own Knot's `_ibemailkey`
//! answers) between the milters and the name server.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::time::Duration;

use ibemail_e2e::mail::text;
use ibemail_e2e::{Options, World, message};
use ibemail_ibe::MasterKey;
use ibemail_params::{Policy, Record};
use rand_core::OsRng;

const WAIT: Duration = Duration::from_secs(60);
/// Longer than the records' TTL (2 s): the milter asks DNS again.
const PAST_TTL: Duration = Duration::from_secs(3);

/// The attacker's answers for b.test: these records, or none.
fn attack(world: &World, records: &[&Record]) {
    let (proxy, evil) = world.dns_attacker.as_ref().unwrap();
    let rdata: Vec<String> = records
        .iter()
        .map(|r| format!("TXT {}", r.zone_rdata()))
        .collect();
    let rdata: Vec<&str> = rdata.iter().map(String::as_str).collect();
    evil.set_records("b.test", "_ibemailkey", &rdata);
    proxy.attack(true);
}

fn stop_attack(world: &World) {
    world.dns_attacker.as_ref().unwrap().0.attack(false);
}

/// The attacker's own generation `n` of b.test (a policy and all), signed
/// by his own key when `chained`.
fn evil_record(n: u32, chained: bool) -> Record {
    let key = MasterKey::generate(&mut OsRng);
    let policy = Some(Policy::require(7 * 86_400));
    let mut record = Record::new(n, key.public_params())
        .with_signing(key.signing_params())
        .with_policy(policy);
    if chained {
        let bytes = Policy::signed_bytes(policy.as_ref());
        let signer = MasterKey::generate(&mut OsRng);
        record.continuity =
            Some(signer.sign_successor(&record.successor("b.test", &bytes).unwrap()));
    }
    record
}

/// Sends one message from Alice to Bob; true if a.test accepted it (it
/// left or will leave sealed), false if a.test deferred it (4xx).
fn try_send(world: &World, secret: &str) -> bool {
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        secret,
        &format!("{secret}\r\n"),
    );
    let (ok, transcript) = world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m);
    assert!(ok || transcript.contains("451"), "{transcript}");
    ok
}

fn attacks_hold(signed: bool) {
    let mut world = World::start(Options {
        dns_attacker: true,
        b_unsigned: !signed,
        ..Options::default()
    });
    // First contact: b.test's genuine generation 1 (with its policy).
    assert!(try_send(&world, "first contact"));
    world.b.postfix.wait_for_mail("bob", 1, WAIT);

    let genuine_1 = world.b_records()[0].clone();
    for (what, records) in [
        ("stripped (NXDOMAIN)", vec![]),
        ("substituted, generation 999", vec![evil_record(999, false)]),
        (
            "substituted with a forged chain",
            vec![evil_record(2, true), genuine_1.clone()],
        ),
    ] {
        let refs: Vec<&Record> = records.iter().collect();
        attack(&world, &refs);
        std::thread::sleep(PAST_TTL);
        assert!(
            !try_send(&world, &format!("during the attack: {what}")),
            "{what}: accepted"
        );
        stop_attack(&world);
    }
    // The genuine rotation is followed without any manual step...
    world.rotate("b.test", 30 * 86_400);
    std::thread::sleep(PAST_TTL);
    assert!(try_send(&world, "after the rotation"));
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    assert!(
        text(&bob[1]).contains("x-ibemail.generation=2"),
        "{}",
        text(&bob[1])
    );
    // ...and replaying the older genuine record set is a rollback.
    attack(&world, &[&genuine_1]);
    std::thread::sleep(PAST_TTL);
    assert!(!try_send(&world, "during the replay"));
    stop_attack(&world);

    let wire = text(&world.wire.seen());
    assert!(!wire.contains("during the"), "plaintext crossed the wire");
    assert_eq!(world.b.postfix.mailbox("bob").len(), 2);
}

/// Without DNSSEC: the continuity chain and the published policy hold.
#[test]
fn an_unsigned_domain_with_a_policy_is_never_mailed_in_clear_or_to_an_attacker() {
    attacks_hold(false);
}

/// With DNSSEC the attacker's answers are bogus: deferred as well.
#[test]
fn a_signed_domain_is_never_mailed_in_clear_or_to_an_attacker() {
    attacks_hold(true);
}

const SIGN: &str = "[signing]\nsign = \"always\"";
const REQUIRE_A: &str = "[policy.domains.\"a.test\"]\nsignature = \"require\"";

/// Issue #10 item 6, as an administrator hit it: right after a rotation
/// the receiver still has the old record set cached (TTL 3600), so the
/// sender keeps signing with the old generation until receivers can know
/// the new one; a signature naming a generation the receiver does not know
/// makes it ask DNS again, past its cache, and if DNS does not have it yet
/// the mail is deferred, never held as forged.
#[test]
fn a_rotation_does_not_break_required_signatures() {
    let mut world = World::start(Options {
        a_milter: SIGN.into(),
        b_milter: REQUIRE_A.into(),
        records_ttl: Some(3600),
        ..Options::default()
    });
    let send = |world: &World, subject: &str| {
        let m = message(
            "Alice <alice@a.test>",
            "Bob <bob@b.test>",
            subject,
            "hi\r\n",
        );
        world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m)
    };
    assert!(send(&world, "before").0);
    let bob = world.b.postfix.wait_for_mail("bob", 1, WAIT);
    assert!(text(&bob[0]).contains("ibesig=pass"), "{}", text(&bob[0]));

    // a.test rotates; b.test has a.test's records cached for an hour.
    world.rotate("a.test", 30 * 86_400);
    assert!(send(&world, "right after the rotation").0);
    let bob = world.b.postfix.wait_for_mail("bob", 2, WAIT);
    assert!(
        text(&bob[1]).contains("ibesig=pass (inside and outside the encryption, generation 1)"),
        "{}",
        text(&bob[1])
    );

    // Generation 2 has been published longer than the TTL: a.test signs
    // with it, and b.test looks past its cache to find it.
    world.note_published("a.test", ibemail_e2e::now() - 3601);
    assert!(send(&world, "signed with generation 2").0);
    let bob = world.b.postfix.wait_for_mail("bob", 3, WAIT);
    assert!(
        text(&bob[2]).contains("ibesig=pass (inside and outside the encryption, generation 2)"),
        "{}",
        text(&bob[2])
    );

    // A generation DNS does not publish (yet): deferred at b.test, not held.
    world.rotate_unpublished("a.test", 30 * 86_400);
    world.note_published("a.test", ibemail_e2e::now() - 3601);
    assert!(send(&world, "signed with unpublished generation 3").0);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(world.b.postfix.held(), 0, "held as forged");
    assert_eq!(world.b.postfix.mailbox("bob").len(), 3);
    assert!(
        !world.a.postfix.queue().is_empty(),
        "a.test keeps it queued"
    );
    // Once published, it is delivered with a pass.
    world.publish("a.test");
    world.a.postfix.flush();
    let bob = world.b.postfix.wait_for_mail("bob", 4, WAIT);
    assert!(text(&bob[3]).contains("generation 3"), "{}", text(&bob[3]));
    assert_eq!(world.b.postfix.held(), 0);
}
