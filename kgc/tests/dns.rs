//! `ibemail-kgc check`, `publish` and `serve --publish-server` against a real
//! Knot DNS server (signed zones, TSIG-signed dynamic updates).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use ibemail_ibe::{Identity, MasterKey, encapsulate};
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::store::Store;
use ibemail_params::Record;
use ibemail_test_support::knot::{Knot, Signing, Tsig, Zone};
use ibemail_test_support::silent::Silent;
use predicates::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NAME: &str = "_ibemailkey.a.test";

fn kgc() -> Command {
    Command::cargo_bin("ibemail-kgc").unwrap()
}

fn knot(signing: Signing) -> Knot {
    Knot::start(&[Zone::new("a.test", signing, &[]).updatable()])
}

fn setup(tmp: &Path) -> PathBuf {
    let dir = tmp.join("kgc");
    kgc()
        .args(["setup", "--domain", "a.test", "--dir"])
        .arg(&dir)
        .assert()
        .success();
    dir
}

/// Writes a key file (mode 0600) in BIND `tsig-keygen` format.
fn bind_key(tmp: &Path, name: &str, tsig: &Tsig, secret: &str) -> PathBuf {
    let path = tmp.join(name);
    std::fs::write(
        &path,
        format!(
            "key \"{}\" {{\n\talgorithm {};\n\tsecret \"{secret}\";\n}};\n",
            tsig.name, tsig.algorithm
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn check(dir: &Path, knot: &Knot) -> Command {
    let mut cmd = kgc();
    cmd.args(["check", "--dir"])
        .arg(dir)
        .args(["--resolver", &knot.addr.to_string(), "--trust-anchor"])
        .arg(knot.trust_anchor_file());
    cmd
}

fn publish(dir: &Path, knot: &Knot, key: &Path) -> Command {
    let mut cmd = kgc();
    cmd.args(["publish", "--dir"])
        .arg(dir)
        .args(["--server", &knot.addr.to_string(), "--tsig-key"])
        .arg(key);
    cmd
}

/// The record texts the store publishes, sorted.
fn local_texts(dir: &Path) -> Vec<String> {
    let mut texts: Vec<String> = Store::open(dir)
        .unwrap()
        .records()
        .iter()
        .map(Record::to_text)
        .collect();
    texts.sort();
    texts
}

/// The TXT records published, unquoted, sorted.
fn published(knot: &Knot) -> Vec<String> {
    // kdig prints a record of several strings as `"a" "b"`.
    let mut texts: Vec<String> = knot
        .query_txt(NAME)
        .iter()
        .map(|l| l.split('"').skip(1).step_by(2).collect::<Vec<_>>().concat())
        .collect();
    texts.sort();
    texts
}

#[test]
fn publish_check_and_rotate_against_a_signed_zone() {
    let knot = knot(Signing::Signed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let key = bind_key(
        tmp.path(),
        "update.key",
        &knot.tsig,
        &knot.tsig.secret_base64,
    );

    // Nothing published yet.
    check(&dir, &knot)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("generation 1 (active): missing"))
        .stdout(predicate::str::contains("record NOT OK"));

    publish(&dir, &knot, &key)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "_ibemailkey.a.test. 3600 IN TXT \"ver=1;",
        ))
        .stderr(predicate::str::contains("Published 1 record"));
    assert_eq!(published(&knot), local_texts(&dir));

    check(&dir, &knot)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "generation 1 (active): published, matches",
        ))
        .stdout(predicate::str::contains("DNSSEC: secure"))
        .stdout(predicate::str::ends_with("record OK\n"));
    // Secure satisfies --dnssec require.
    check(&dir, &knot)
        .args(["--dnssec", "require"])
        .assert()
        .success();

    // A rotation is not published until `publish` runs again.
    kgc()
        .args(["rotate", "--overlap", "7d", "--dir"])
        .arg(&dir)
        .assert()
        .success();
    check(&dir, &knot)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("generation 2 (active): missing"))
        // Generation 1 is published without the e= it now carries.
        .stdout(predicate::str::contains(
            "generation 1 (retiring): MISMATCH (published e=none",
        ));

    publish(&dir, &knot, &key).assert().success();
    assert_eq!(published(&knot).len(), 2);
    assert_eq!(published(&knot), local_texts(&dir));
    check(&dir, &knot)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "generation 2 (active): published, matches",
        ))
        .stdout(predicate::str::contains(
            "generation 1 (retiring): published, matches",
        ));

    // A wrong secret is refused by the server, and nothing changes.
    let before = published(&knot);
    let wrong = bind_key(
        tmp.path(),
        "wrong.key",
        &knot.tsig,
        "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3I=",
    );
    kgc().args(["rotate", "--dir"]).arg(&dir).assert().success();
    publish(&dir, &knot, &wrong)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused the update"))
        .stderr(predicate::str::contains("BADSIG"));
    assert_eq!(published(&knot), before);

    // A key file others can read is refused before anything is sent.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    publish(&dir, &knot, &key)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("group or others"))
        .stderr(predicate::str::contains("chmod 600"));
    assert_eq!(published(&knot), before);
}

#[test]
fn a_record_of_another_key_is_a_mismatch() {
    let knot = knot(Signing::Signed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let other = Record::new(
        1,
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(7)).public_params(),
    );
    knot.set_txt(
        "a.test",
        "_ibemailkey",
        &[&format!("\"{}\"", other.to_text())],
    );
    check(&dir, &knot)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "generation 1 (active): MISMATCH (published X/Y differ from the local key)",
        ))
        .stdout(predicate::str::contains("DNSSEC: secure"))
        .stdout(predicate::str::contains("record NOT OK"));
}

#[test]
fn an_unsigned_zone_is_insecure_and_fails_dnssec_require() {
    let knot = knot(Signing::Unsigned);
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    // The harness key in Knot's own format (`keymgr -t` output).
    let key = tmp.path().join("knot.key");
    std::fs::write(
        &key,
        format!(
            "# {alg}:{name}:{secret}\nkey:\n  - id: {name}\n    algorithm: {alg}\n    secret: {secret}\n",
            alg = knot.tsig.algorithm,
            name = knot.tsig.name,
            secret = knot.tsig.secret_base64
        ),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    publish(&dir, &knot, &key)
        .args(["--zone", "a.test.", "--ttl", "600"])
        .assert()
        .success()
        .stdout(predicate::str::contains("_ibemailkey.a.test. 600 IN TXT"));
    check(&dir, &knot)
        .assert()
        .success()
        .stdout(predicate::str::contains("DNSSEC: insecure"));
    check(&dir, &knot)
        .args(["--dnssec", "require"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("published, matches"))
        .stdout(predicate::str::contains("but --dnssec require"));
    // A zone that does not contain the name is refused locally.
    publish(&dir, &knot, &key)
        .args(["--zone", "b.test"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not in zone b.test."));
}

#[test]
fn a_silent_name_server_is_a_temporary_failure() {
    let silent = Silent::start("127.0.0.1".parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    kgc()
        .args(["check", "--timeout", "1", "--dnssec", "off", "--dir"])
        .arg(&dir)
        .args(["--resolver", &silent.addr.to_string()])
        .timeout(Duration::from_secs(30))
        .assert()
        .code(75)
        .stdout(predicate::str::contains("temporary DNS failure"))
        .stdout(predicate::str::contains("record NOT CHECKED"));

    // Publishing to it times out: also temporary.
    let key = tmp.path().join("k.key");
    std::fs::write(&key, "hmac-sha256:k:c2VjcmV0\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    kgc()
        .args(["publish", "--timeout", "1", "--dir"])
        .arg(&dir)
        .args(["--server", &silent.addr.to_string(), "--tsig-key"])
        .arg(&key)
        .timeout(Duration::from_secs(30))
        .assert()
        .code(75)
        .stderr(predicate::str::contains("no answer"));
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(knot: &Knot, what: &str, done: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let records = published(knot);
        if done(&records) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: published {records:?}\n{}",
            knot.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_publishes_at_start_and_after_changes() {
    let knot = knot(Signing::Signed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let key = bind_key(
        tmp.path(),
        "update.key",
        &knot.tsig,
        &knot.tsig.secret_base64,
    );
    // A backup taken now, at generation 1.
    let backup = tmp.path().join("backup");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&dir)
            .arg(&backup)
            .status()
            .unwrap()
            .success()
    );
    let socket = tmp.path().join("kgc.sock");
    let serve = |dir: &Path, stderr: std::process::Stdio| {
        Daemon(
            std::process::Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
                .args(["serve", "--maintenance-interval", "1s", "--dir"])
                .arg(dir)
                .arg("--socket")
                .arg(&socket)
                .args(["--publish-server", &knot.addr.to_string()])
                .arg("--publish-tsig-key")
                .arg(&key)
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    };
    let mut daemon = serve(&dir, std::process::Stdio::inherit());
    let expected = local_texts(&dir);
    wait_for(&knot, "generation 1 at start", |p| p == expected.as_slice());
    // The zone loses the record (reloaded from a file without the dynamic
    // update): the daemon sees it and publishes again.
    knot.set_records("a.test", "_ibemailkey", &[]);
    wait_for(&knot, "generation 1 again after the zone lost it", |p| {
        p == expected.as_slice()
    });

    // A rotation by the command line is noticed at the next tick.
    kgc().args(["rotate", "--dir"]).arg(&dir).assert().success();
    let expected = local_texts(&dir);
    assert_eq!(expected.len(), 2);
    wait_for(&knot, "both generations after rotation", |p| {
        p == expected.as_slice()
    });
    check(&dir, &knot).assert().success();

    // What it published, it serves: the new generation opens mail.
    let params = Store::open(&dir).unwrap().params(2).unwrap().clone();
    let bob = Identity::parse("bob@a.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 2, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    let opened = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(KgcClient::new(&socket, Duration::from_secs(10)).open(&bob, 2, &capsule))
        .unwrap();
    assert_eq!(opened, secret);

    // The store restored from the old backup: DNS publishes generation 2,
    // above anything it knows. It must not publish generation 1 alone (a
    // rollback to every pinned sender), nor rotate to a second "2".
    drop(daemon);
    let _ = std::fs::remove_file(&socket);
    daemon = serve(&backup, std::process::Stdio::piped());
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(published(&knot), expected, "DNS left as it was");
    daemon.0.kill().unwrap();
    let output = stderr_of(&mut daemon.0);
    assert!(
        output.contains("above this store's highest") && output.contains("--first-generation 3"),
        "{output}"
    );
}

#[test]
fn a_failing_publication_is_retried_and_never_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let key = tmp.path().join("k.key");
    std::fs::write(&key, "hmac-sha256:k:c2VjcmV0\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Nothing listens on this port: every attempt is refused at once.
    let port = ibemail_test_support::free_port("127.0.0.1".parse().unwrap());
    let socket = tmp.path().join("kgc.sock");
    let mut daemon = Daemon(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
            .args(["serve", "--maintenance-interval", "1s", "--dir"])
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--publish-server", &format!("127.0.0.1:{port}")])
            .arg("--publish-tsig-key")
            .arg(&key)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each round first asks the (absent) server what it publishes, which
    // times out after 2 s, then publishes: two rounds fit in 9 s.
    std::thread::sleep(Duration::from_millis(9000));
    assert!(daemon.0.try_wait().unwrap().is_none(), "the daemon exited");
    let hello = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(KgcClient::new(&socket, Duration::from_secs(10)).hello())
        .unwrap();
    assert_eq!(hello, vec![("a.test".to_string(), 1)]);
    daemon.0.kill().unwrap();
    let output = stderr_of(&mut daemon.0);
    assert!(
        output.matches("failed, will retry").count() >= 2,
        "{output}"
    );
}

/// Waits for an exited child and returns its standard error.
fn stderr_of(child: &mut Child) -> String {
    use std::io::Read as _;
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}

/// Rotation with publishing broken: the daemon cannot update DNS (a wrong
/// TSIG key), so DNS keeps publishing generation 1 after its overlap ended.
/// Watching DNS, the daemon keeps generation 1's key, and mail senders
/// sealed to it still opens. Once DNS really drops generation 1, its key is
/// destroyed after the retention floor (here TTL 1 s + queue lifetime 1 s,
/// no policy), and only then.
#[test]
fn a_generation_dns_still_publishes_keeps_its_key() {
    let knot = knot(Signing::Signed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    kgc()
        .args(["setup", "--domain", "a.test", "--no-policy", "--dir"])
        .arg(&dir)
        .assert()
        .success();
    let key = bind_key(
        tmp.path(),
        "update.key",
        &knot.tsig,
        &knot.tsig.secret_base64,
    );
    let wrong = bind_key(
        tmp.path(),
        "wrong.key",
        &knot.tsig,
        "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3I=",
    );
    publish(&dir, &knot, &key).assert().success();
    // A message sealed to generation 1, waiting in some sender's queue.
    let params = Store::open(&dir).unwrap().params(1).unwrap().clone();
    let bob = Identity::parse("bob@a.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 1, &mut ChaCha20Rng::seed_from_u64(9)).unwrap();

    let socket = tmp.path().join("kgc.sock");
    let _daemon = Daemon(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
            .args(["serve", "--maintenance-interval", "1s", "--dir"])
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--publish-server", &knot.addr.to_string()])
            .arg("--publish-tsig-key")
            .arg(&wrong)
            .args(["--publish-ttl", "1", "--queue-lifetime", "1s"])
            .spawn()
            .unwrap(),
    );
    kgc()
        .args([
            "rotate",
            "--overlap",
            "1s",
            "--ttl",
            "1",
            "--queue-lifetime",
            "1s",
        ])
        .args(["--no-policy", "--dir"])
        .arg(&dir)
        .assert()
        .success();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = KgcClient::new(&socket, Duration::from_secs(10));
    // Long past the overlap and the floor: DNS still has generation 1.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        published(&knot).len(),
        1,
        "the broken publisher changed DNS"
    );
    kgc()
        .args(["status", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("generation    1  withdrawn"));
    let opened = rt.block_on(client.open(&bob, 1, &capsule)).unwrap();
    assert_eq!(opened, secret, "queued mail for generation 1 opens");

    // Publishing is repaired (here by hand): DNS drops generation 1, the
    // daemon sees it gone, waits out the floor, and destroys the key.
    publish(&dir, &knot, &key).assert().success();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.join("gen-00000001.key").exists() {
        assert!(Instant::now() < deadline, "generation 1 never retired");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The daemon reloads its stores at the end of the round that removed
    // the file: from then on it opens nothing for generation 1.
    while rt.block_on(client.open(&bob, 1, &capsule)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the daemon still opens generation 1 after destroying its key"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Automatic rotation (`--rotate-every`) follows the same rules as a manual
/// one: the new generation is published at once, signed by the old one,
/// and signs mail only once DNS has published it for its TTL.
#[test]
fn automatic_rotation_publishes_at_once_and_signs_only_once_known() {
    let knot = knot(Signing::Signed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = setup(tmp.path());
    let key = bind_key(
        tmp.path(),
        "update.key",
        &knot.tsig,
        &knot.tsig.secret_base64,
    );
    let socket = tmp.path().join("kgc.sock");
    let _daemon = Daemon(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
            .args([
                "serve",
                "--maintenance-interval",
                "1s",
                "--rotate-every",
                "8s",
            ])
            .args(["--overlap", "30d", "--dir"])
            .arg(&dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--publish-server", &knot.addr.to_string()])
            .arg("--publish-tsig-key")
            .arg(&key)
            .args(["--publish-ttl", "3"])
            .spawn()
            .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = KgcClient::new(&socket, Duration::from_secs(10));
    let signing = || rt.block_on(client.hello()).unwrap()[0].1;
    wait_for(&knot, "generation 1", |p| p.len() == 1);
    assert_eq!(signing(), 1);
    // Rotated and published together.
    wait_for(&knot, "generation 2 published", |p| p.len() == 2);
    let published: Vec<Record> = published(&knot)
        .iter()
        .map(|t| Record::parse(t).unwrap())
        .collect();
    let (newest, older) = if published[0].generation == 2 {
        (&published[0], &published[1])
    } else {
        (&published[1], &published[0])
    };
    assert!(newest.continues("a.test", &older.signing.unwrap()));
    // Still signing with 1: receivers may have generation 1's set cached.
    assert_eq!(
        signing(),
        1,
        "signing with a generation receivers cannot know yet"
    );
    // Seen published for its TTL (3 s): now generation 2 signs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while signing() != 2 {
        assert!(Instant::now() < deadline, "never switched to generation 2");
        std::thread::sleep(Duration::from_millis(200));
    }
}
