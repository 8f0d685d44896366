//! A full pin store must not forget a domain whose published policy is
//! still in force, nor, after a restart, choose what to forget by name
//! (security review 4).
//!
//! The attack: every pin is made by the public `PinStore::check`, as a
//! lookup makes it. The store holds `MAX_DOMAINS`; one more (new) domain
//! used to evict the least recently used one, whatever its policy. Once a
//! domain is evicted, `Discovery::apply_policy` finds no `policy_until`
//! for it, so a stripped answer (NXDOMAIN, NODATA) is `NotIbe` —
//! plaintext under `encrypt = opportunistic` — and a substitute record is
//! `FirstUse`. The fix: only a domain whose policy is not in force makes
//! room; when there is none the new domain goes unpinned.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use ibemail_discovery::pin::MAX_DOMAINS;
use ibemail_discovery::{PinStatus, PinStore};
use ibemail_ibe::MasterKey;
use ibemail_params::{Policy, Record, RecordSet};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_800_000_000;
const YEAR: u64 = 365 * 86_400;

fn published(seed: u64, policy: Option<Policy>) -> (RecordSet, Record) {
    let k = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed));
    let r = Record::new(1, k.public_params())
        .with_signing(k.signing_params())
        .with_policy(policy);
    let set = RecordSet::from_txt_records(&[r.to_strings()]);
    let selected = set.select(NOW).unwrap().clone();
    (set, selected)
}

/// The victim published `p=require; ma=<a year>`; the sender saw it a
/// minute before the flood began. MAX_DOMAINS other domains (an attacker's
/// wildcard zone, pinned through the success notices and bounces this
/// server sends to addresses the attacker chooses) then push it out.
#[test]
fn a_full_store_keeps_a_domain_whose_policy_is_in_force() {
    let store = PinStore::in_memory();
    let (victim, victim_selected) = published(1, Some(Policy::require(YEAR)));
    assert_eq!(
        store.check("bank.test", &victim, &victim_selected, false, NOW),
        PinStatus::FirstUse
    );
    assert!(store.policy_until("bank.test").unwrap() > NOW + YEAR - 10);

    let (junk, junk_selected) = published(2, None);
    for i in 0..MAX_DOMAINS {
        let domain = format!("d{i}.attacker.test");
        store.check(&domain, &junk, &junk_selected, false, NOW + 60);
    }
    // The victim's policy runs for another year: it must still be known.
    let until = store.policy_until("bank.test");
    assert!(
        until.is_some_and(|u| u > NOW + 60),
        "bank.test's policy (in force until {}) was forgotten by a full store: \
         policy_until = {until:?}, knows = {}",
        NOW + YEAR,
        store.knows("bank.test")
    );
}

/// After a restart every domain read from the pin file used to have the
/// same `last_used` (0): the store, once full, evicted in name order, so
/// an attacker knew exactly which domain his next new pin removed — here
/// one that was looked up a second before the restart, with a year's
/// policy.
#[test]
fn after_a_restart_the_first_domain_by_name_is_not_the_one_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pins");
    let (victim, victim_selected) = published(1, Some(Policy::require(YEAR)));
    // The running milter pins the victim...
    {
        let store = PinStore::open(&path).unwrap();
        store.check("aaa-bank.test", &victim, &victim_selected, false, NOW);
        assert!(store.policy_until("aaa-bank.test").is_some());
    }
    // ...and has MAX_DOMAINS - 1 other domains in the file (written in the
    // file's own format, to keep the test fast).
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut text = String::new();
        for i in 0..MAX_DOMAINS - 1 {
            text.push_str(&format!("z{i}.other.test 1 {}\n", "ab".repeat(32)));
        }
        file.write_all(text.as_bytes()).unwrap();
    }
    // Restart: the victim's pins and policy are read back.
    let store = PinStore::open(&path).unwrap();
    assert_eq!(store.len(), MAX_DOMAINS);
    assert!(store.policy_until("aaa-bank.test").unwrap() > NOW + YEAR - 10);

    // One new domain, a second later.
    let (junk, junk_selected) = published(2, None);
    store.check("x.attacker.test", &junk, &junk_selected, false, NOW + 1);
    let until = store.policy_until("aaa-bank.test");
    assert!(
        until.is_some_and(|u| u > NOW + 1),
        "the first domain by name was evicted although its policy runs until {}: \
         policy_until = {until:?}, knows = {}",
        NOW + YEAR,
        store.knows("aaa-bank.test")
    );
}
