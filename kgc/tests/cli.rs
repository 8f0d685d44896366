//! `ibemail-kgc` as an administrator runs it, refusals included.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use assert_cmd::Command;
use base64::Engine as _;
use ibemail_ibe::{Identity, UserKey};
use ibemail_kgc::store::Store;
use ibemail_params::Record;
use predicates::prelude::*;

fn kgc() -> Command {
    Command::cargo_bin("ibemail-kgc").unwrap()
}

fn setup(dir: &std::path::Path) -> String {
    let out = kgc()
        .args(["setup", "--domain", "B.Test", "--dir"])
        .arg(dir)
        .assert()
        .success()
        .stderr(predicate::str::contains("Publish this record"))
        .get_output()
        .stdout
        .clone();
    String::from_utf8(out).unwrap()
}

/// The record text of a zone-file line: its quoted strings, joined.
fn txt_of(zone_line: &str) -> String {
    zone_line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat()
}

#[test]
fn setup_prints_a_parseable_record_and_creates_private_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    let stdout = setup(&dir);
    let line = stdout.trim();
    assert!(
        line.starts_with("_ibemailkey.b.test. 3600 IN TXT \"ver=1;"),
        "{line}"
    );
    let record = Record::parse(&txt_of(line)).unwrap();
    assert_eq!(record.generation, 1);
    // It carries the signature parameter and, by default, a week's policy,
    // and it fits one TXT string.
    assert!(record.signing.is_some(), "{line}");
    assert_eq!(
        record.policy,
        Some(ibemail_params::Policy::require(604_800))
    );
    assert!(txt_of(line).len() <= 255, "{line}");

    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // `record` prints the same line.
    kgc()
        .args(["record", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(stdout.clone());
}

/// `_ibemailkey.<domain>` must fit DNS's 253 octets: a 241-octet domain
/// can publish, a 242-octet one (still a valid address domain) cannot, and
/// setup says so without creating anything.
#[test]
fn setup_refuses_a_domain_whose_record_name_dns_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = |last: usize| format!("{0}.{0}.{0}.{1}.test", "a".repeat(63), "b".repeat(last));
    let longest = labels(44);
    assert_eq!(longest.len(), 241);
    let fits = tmp.path().join("fits");
    kgc()
        .args(["setup", "--domain", &longest, "--dir"])
        .arg(&fits)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("_ibemailkey.{longest}.")));

    let too_long = labels(45);
    let dir = tmp.path().join("kgc");
    kgc()
        .args(["setup", "--domain", &too_long, "--dir"])
        .arg(&dir)
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "would be 254 octets, more than the 253 a DNS name may have",
        ))
        .stderr(predicate::str::contains("at most 241 octets"));
    assert!(!dir.exists(), "nothing is created for a refused domain");
}

#[test]
fn setup_refuses_to_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    let first = setup(&dir);
    kgc()
        .args(["setup", "--domain", "b.test", "--dir"])
        .arg(&dir)
        .assert()
        .failure()
        .stderr(predicate::str::contains("refusing to overwrite"));
    // The original key is untouched.
    kgc()
        .args(["record", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(first);
}

/// A domain that lost its store starts above the generations it published,
/// and rotates on from there.
#[test]
fn setup_can_start_at_a_later_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    let out = kgc()
        .args([
            "setup",
            "--domain",
            "b.test",
            "--first-generation",
            "7",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let record = String::from_utf8(out.stdout).unwrap();
    assert!(record.contains("n=7;"), "{record}");
    kgc().args(["rotate", "--dir"]).arg(&dir).assert().success();
    let records = kgc().args(["record", "--dir"]).arg(&dir).output().unwrap();
    let text = String::from_utf8(records.stdout).unwrap();
    assert!(text.contains("n=8;") && text.contains("n=7;"), "{text}");
    kgc()
        .args([
            "setup",
            "--domain",
            "c.test",
            "--first-generation",
            "0",
            "--dir",
        ])
        .arg(tmp.path().join("zero"))
        .assert()
        .failure();
}

#[test]
fn loose_permissions_are_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    setup(&dir);
    let key = dir.join("gen-00000001.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    kgc()
        .args(["record", "--dir"])
        .arg(&dir)
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("mode 0640 gives access to group or others")
                .and(predicate::str::contains("chmod 0600")),
        );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    kgc()
        .args(["extract", "--dir"])
        .arg(&dir)
        .arg("bob@b.test")
        .assert()
        .failure()
        .stderr(predicate::str::contains("chmod 0700"));
}

#[test]
fn extract_gives_the_key_that_verifies_and_refuses_other_domains_and_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    setup(&dir);
    let out = kgc()
        .args(["extract", "--dir"])
        .arg(&dir)
        .arg("Bob@B.test")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(out).unwrap().trim())
        .unwrap();
    let store = Store::open(&dir).unwrap();
    let key = UserKey::from_bytes(Identity::parse("bob@b.test").unwrap(), 1, &bytes).unwrap();
    key.verify(store.params(1).unwrap()).unwrap();

    kgc()
        .args(["extract", "--dir"])
        .arg(&dir)
        .arg("bob@a.test")
        .assert()
        .failure()
        .stderr(predicate::str::contains("not in b.test"));
    kgc()
        .args(["extract", "--generation", "7", "--dir"])
        .arg(&dir)
        .arg("bob@b.test")
        .assert()
        .failure()
        .stderr(predicate::str::contains("generation 7 does not exist"));
    kgc()
        .args(["extract", "--dir"])
        .arg(&dir)
        .arg("not an address")
        .assert()
        .failure()
        .stderr(predicate::str::contains("address"));
}

#[test]
fn rotation_publishes_both_generations_during_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    setup(&dir);
    let out = kgc()
        .args(["rotate", "--overlap", "2h", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stderr(predicate::str::contains("Generation 2 is active"))
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let newest = Record::parse(&txt_of(lines[0])).unwrap();
    let older = Record::parse(&txt_of(lines[1])).unwrap();
    assert_eq!((newest.generation, older.generation), (2, 1));
    assert!(newest.expires.is_none() && older.expires.is_some());
    // A new signature parameter comes with the new generation, and the
    // old generation vouches for the new one.
    assert!(newest.signing.is_some() && older.signing.is_some());
    assert_ne!(newest.signing, older.signing);
    assert!(newest.continues("b.test", &older.signing.unwrap()));
    // The 2 h overlap was raised to TTL + queue lifetime + max-age.
    let floor = 3600 + 5 * 86_400 + 7 * 86_400;
    let expires = older.expires.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expires >= now + floor - 60, "e={expires}");
    kgc()
        .args(["status", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(
            predicate::str::contains("generation    2  active")
                .and(predicate::str::contains("generation    1  retiring")),
        );
    kgc()
        .args(["retire", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "generation 1: still published until",
        ));
    kgc()
        .args(["rotate", "--overlap", "nonsense", "--dir"])
        .arg(&dir)
        .assert()
        .failure()
        .stderr(predicate::str::contains("not a duration"));
}

#[test]
fn every_command_has_help_for_a_new_administrator() {
    kgc()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("setup --domain example.org"));
    for command in [
        "setup", "record", "status", "extract", "rotate", "retire", "serve",
    ] {
        kgc()
            .args([command, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: ibemail-kgc"));
    }
}

#[test]
fn not_a_store_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    kgc()
        .args(["record", "--dir"])
        .arg(tmp.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("not an ibemail KGC key store"));
}
