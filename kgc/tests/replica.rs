//! Replicas of a key store: they follow their primary over mutual TLS, the
//! primary's rotation is released only once every replica serves the new
//! generation, retirement reaches them, and they refuse to change by
//! themselves.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::identity_files as identity;
use common::primary_and_copy;
use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::clock::now;
use ibemail_kgc::replica::{ReplicaSync, Replication};
use ibemail_kgc::server::{Grant, ServerConfig, serve_tls};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::{Role, State, Store, StoreError};
use ibemail_kgc::tls::server_config;
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

/// A primary daemon over mutual TLS on 127.0.0.1 serving `service`,
/// allowing one replica with its grant and noting its reports in
/// `replication`: its address, and the sender that stops it.
async fn primary_over_tls(
    tls: &ibemail_kgc::tls::TlsIdentity,
    service: &Arc<KeyService>,
    (replica_pin, grant): (ibemail_kgc::tls::Pin, Grant),
    replication: &Arc<Replication>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        certificates: vec![(replica_pin, grant)],
        replication: Some(replication.clone()),
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve_tls(
        listener,
        server_config(tls, &[replica_pin]).unwrap(),
        service.clone(),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_published_only_once_the_replica_serves_it_and_retirement_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary_dir, replica_dir) = primary_and_copy(tmp.path(), Role::Replica);
    let (primary_tls, primary_pin, ..) = identity(tmp.path(), "primary");
    let (replica_tls, replica_pin, ..) = identity(tmp.path(), "replica");

    // The primary daemon, allowing the replica.
    let primary = Arc::new(KeyService::load(std::slice::from_ref(&primary_dir), 16).unwrap());
    let replication = Arc::new(Replication::new(vec![replica_pin]));
    let grant = Grant {
        replicate: true,
        ..Grant::default()
    };
    let (addr, _stop) =
        primary_over_tls(&primary_tls, &primary, (replica_pin, grant), &replication).await;
    let mut upkeep = common::replicating_upkeep(&replication);

    // The replica daemon's service and its link to the primary.
    let replica = KeyService::load(std::slice::from_ref(&replica_dir), 16).unwrap();
    let link = ReplicaSync::new("127.0.0.1", addr.port(), &replica_tls, &[primary_pin]).unwrap();
    let outcome = link.sync(&replica).await;
    assert_eq!(outcome.len(), 1);
    assert!(!outcome[0].1.as_ref().unwrap().changed(), "{outcome:?}");
    assert!(replication.missing("b.test", 1).is_empty());

    // The primary rotates: generation 2 is staged, not published.
    let mut store = Store::open(&primary_dir).unwrap();
    let staged = store.rotate(3600, now(), None, &mut OsRng).unwrap();
    assert_eq!(staged, 2);
    assert!(matches!(store.state(2), Some(State::Pending { .. })));
    assert_eq!(store.active_generation(), Some(1));
    assert_eq!(
        store
            .records()
            .iter()
            .map(|r| r.generation)
            .collect::<Vec<_>>(),
        vec![1]
    );
    upkeep.run(&primary, now()).await;
    let store = Store::open(&primary_dir).unwrap();
    assert!(matches!(store.state(2), Some(State::Pending { .. })));
    assert_eq!(
        replication
            .missing("b.test", 2)
            .iter()
            .map(|(p, _)| *p)
            .collect::<Vec<_>>(),
        vec![replica_pin]
    );

    // The replica syncs: it gets the key and reports serving it.
    let outcome = link.sync(&replica).await;
    assert_eq!(outcome[0].1.as_ref().unwrap().added, vec![2], "{outcome:?}");
    assert!(replication.missing("b.test", 2).is_empty());
    let params = store.params(2).unwrap().clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 2, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    assert_eq!(replica.open_capsule(&bob, 2, &capsule).unwrap(), secret);
    // Still pending on the replica too: it signs with generation 1.
    assert_eq!(replica.hello(), vec![("b.test".into(), 1)]);

    // Now the primary releases it, and publishes both generations.
    upkeep.run(&primary, now()).await;
    let store = Store::open(&primary_dir).unwrap();
    assert_eq!(store.active_generation(), Some(2));
    assert!(matches!(store.state(1), Some(State::Retiring { .. })));
    assert_eq!(
        store
            .records()
            .iter()
            .map(|r| r.generation)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    link.sync(&replica).await;
    let copy = Store::open(&replica_dir).unwrap();
    assert_eq!(copy.active_generation(), Some(2));
    assert_eq!(copy.records(), store.records());

    // The primary retires generation 1: the replica destroys its copy.
    let mut store = Store::open(&primary_dir).unwrap();
    store.force_retire(1, now()).unwrap();
    let outcome = link.sync(&replica).await;
    assert_eq!(
        outcome[0].1.as_ref().unwrap().retired,
        vec![1],
        "{outcome:?}"
    );
    assert!(!replica_dir.join("gen-00000001.key").exists());
    assert!(replica_dir.join("gen-00000001.retired").exists());
    assert!(matches!(
        Store::open(&replica_dir).unwrap().state(1),
        Some(State::Retired { .. })
    ));

    // A replica changes only as its primary does.
    let mut copy = Store::open(&replica_dir).unwrap();
    assert!(matches!(
        copy.rotate(3600, now(), None, &mut OsRng),
        Err(StoreError::Replica { .. })
    ));
    assert!(matches!(
        copy.force_retire(2, now()),
        Err(StoreError::Replica { .. })
    ));
}

/// A primary that serves two domains, and a replica host granted only one
/// of them (`replica:b.test`): the replica's SYNC of the other is refused,
/// so that host never holds c.test's master keys, and c.test's rotation
/// does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_granted_one_domain_gets_no_other_domains_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (b_primary, b_copy) =
        common::primary_and_copy_of("b.test", &t.join("b"), &t.join("b-copy"), Role::Replica);
    let (c_primary, c_copy) =
        common::primary_and_copy_of("c.test", &t.join("c"), &t.join("c-copy"), Role::Replica);
    let (primary_tls, primary_pin, ..) = identity(t, "primary");
    let (replica_tls, replica_pin, ..) = identity(t, "replica");

    let grant = Grant::parse("replica:B.Test.").unwrap();
    assert_eq!(grant.describe(), "replica:b.test");
    let primary = Arc::new(KeyService::load(&[b_primary.clone(), c_primary.clone()], 16).unwrap());
    let replication = Arc::new(Replication::scoped([(
        replica_pin,
        grant.replicate_only.clone(),
    )]));
    let (addr, _stop) =
        primary_over_tls(&primary_tls, &primary, (replica_pin, grant), &replication).await;

    // Generation 2 of each domain is staged at the primary.
    for dir in [&b_primary, &c_primary] {
        let mut store = Store::open(dir).unwrap();
        assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    }
    // The replica host holds (imported) copies of both; it syncs both.
    let replica = KeyService::load(&[b_copy.clone(), c_copy.clone()], 16).unwrap();
    let link = ReplicaSync::new("127.0.0.1", addr.port(), &replica_tls, &[primary_pin]).unwrap();
    let outcome = link.sync(&replica).await;
    let result = |domain: &str| {
        outcome
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert_eq!(result("b.test").unwrap().added, vec![2], "{outcome:?}");
    let refused = result("c.test").unwrap_err();
    assert!(
        refused.contains("Forbidden") && refused.contains("c.test"),
        "{refused}"
    );
    assert!(b_copy.join("gen-00000002.key").exists());
    assert!(!c_copy.join("gen-00000002.key").exists());

    // b.test's rotation waits for the replica until it reports; c.test's
    // never does.
    assert!(replication.missing("c.test", 2).is_empty());
    let mut upkeep = common::replicating_upkeep(&replication);
    upkeep.run(&primary, now()).await;
    assert_eq!(
        Store::open(&c_primary).unwrap().active_generation(),
        Some(2)
    );
    assert!(replication.missing("b.test", 2).is_empty(), "{outcome:?}");
    assert_eq!(
        Store::open(&b_primary).unwrap().active_generation(),
        Some(2)
    );

    // Mixing every domain with one is a configuration error, and so is a
    // name that is not a domain.
    assert!(Grant::parse("replica+replica:b.test").is_err());
    assert!(Grant::parse("replica:").is_err());
    assert!(
        Grant::parse("open+replica:b.test,c.test")
            .unwrap()
            .may_replicate("C.TEST")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_store_is_reported_never_overwritten_and_only_a_primary_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary_dir, _) = primary_and_copy(tmp.path(), Role::Replica);
    // A "replica" set up on its own: same domain, other keys.
    let stranger_dir = tmp.path().join("stranger");
    let mut stranger = Store::setup(
        &stranger_dir,
        "b.test",
        now(),
        None,
        &mut ChaCha20Rng::seed_from_u64(9),
    )
    .unwrap();
    stranger.set_role(Role::Replica).unwrap();
    let before = std::fs::read(stranger_dir.join("gen-00000001.key")).unwrap();
    let mut applied = stranger
        .apply_primary_files(&ibemail_kgc::replica::store_files(&primary_dir).unwrap())
        .unwrap();
    assert_eq!(applied.conflicts.len(), 1, "{applied:?}");
    assert!(applied.conflicts[0].contains("differs"), "{applied:?}");
    assert_eq!(
        std::fs::read(stranger_dir.join("gen-00000001.key")).unwrap(),
        before
    );
    applied.conflicts.clear();
    assert!(applied.added.is_empty());

    // A primary's own store does not take files, and a standalone store is
    // not copied (its rotations would not wait).
    let mut primary = Store::open(&primary_dir).unwrap();
    assert!(primary.apply_primary_files(&[]).is_err());
    primary.set_role(Role::Standalone).unwrap();
    let service = KeyService::load(std::slice::from_ref(&primary_dir), 4).unwrap();
    let answer =
        ibemail_kgc::replica::answer_sync(&service, None, "b.test", &[], Default::default());
    match answer {
        ibemail_kgc::protocol::Response::Error(_, why) => {
            assert!(why.contains("not the primary"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

// --- the daemons as processes -------------------------------------------

fn kgc() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[String], ready: impl Fn() -> bool) -> Daemon {
    let mut child = kgc().args(args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(child.try_wait().unwrap().is_none(), "{args:?} exited");
        assert!(Instant::now() < deadline, "{args:?} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon(child)
}

fn status(dir: &Path) -> String {
    let out = kgc().arg("status").arg("--dir").arg(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn primary_and_replica_daemons_stage_sync_and_release_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary_dir, replica_dir) = primary_and_copy(tmp.path(), Role::Replica);
    let (_, primary_pin, primary_cert, primary_key) = identity(tmp.path(), "primary");
    let (_, replica_pin, replica_cert, replica_key) = identity(tmp.path(), "replica");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let primary_sock = tmp.path().join("primary.sock");
    let _primary = start(
        &[
            "serve".into(),
            "--dir".into(),
            s(&primary_dir),
            "--socket".into(),
            s(&primary_sock),
            "--tls-listen".into(),
            addr.to_string(),
            "--tls-cert".into(),
            s(&primary_cert),
            "--tls-key".into(),
            s(&primary_key),
            "--allow-cert".into(),
            format!("{replica_pin}=replica"),
        ],
        || std::net::TcpStream::connect(addr).is_ok(),
    );
    let replica_sock = tmp.path().join("replica.sock");
    let replica_args = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--dir".into(),
            s(&replica_dir),
            "--socket".into(),
            s(&replica_sock),
            "--replica-of".into(),
            format!("tls:{addr}"),
            "--primary-cert".into(),
            primary_pin.to_string(),
            "--tls-cert".into(),
            s(&replica_cert),
            "--tls-key".into(),
            s(&replica_key),
            "--sync-interval".into(),
            "1s".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    // A replica refuses to rotate, by hand or by itself (exit 78, which
    // the unit does not restart).
    let out = kgc()
        .args(["rotate", "--dir"])
        .arg(&replica_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the primary rotates"),
        "{out:?}"
    );
    let out = kgc()
        .args(replica_args(&["--rotate-every", "1d"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the primary rotates"),
        "{out:?}"
    );

    let _replica = start(&replica_args(&[]), || {
        std::os::unix::net::UnixStream::connect(&replica_sock).is_ok()
    });

    // The rotation by hand is staged, then released once the replica has
    // the key: both stores then say generation 2 is active.
    let out = kgc()
        .args(["rotate", "--dir"])
        .arg(&primary_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is staged"),
        "{out:?}"
    );
    wait_for("the release", Duration::from_secs(30), || {
        status(&primary_dir).contains("generation    2  active")
            && status(&replica_dir).contains("generation    2  active")
    });
    assert!(status(&replica_dir).contains("role replica"));
    assert!(status(&primary_dir).contains("role primary"));

    // The replica's own socket opens mail sealed to the new generation.
    let params = Store::open(&primary_dir)
        .unwrap()
        .params(2)
        .unwrap()
        .clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 2, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opened = rt
        .block_on(KgcClient::new(&replica_sock, Duration::from_secs(5)).open(&bob, 2, &capsule))
        .unwrap();
    assert_eq!(opened, secret);
}

#[test]
fn serve_refuses_replicas_for_a_store_that_is_not_the_primary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    Store::setup(&dir, "b.test", now(), None, &mut OsRng).unwrap();
    let (_, pin, cert, key) = identity(tmp.path(), "kgc");
    // `serve` over TLS with these --allow-cert grants must refuse to
    // start (exit 78): its message.
    let refused = |grants: &[String]| {
        let mut serve = kgc();
        serve
            .args(["serve", "--dir"])
            .arg(&dir)
            .args(["--tls-listen", "127.0.0.1:1", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key);
        for grant in grants {
            serve.arg("--allow-cert").arg(grant);
        }
        let out = serve.output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(&[format!("{pin}=replica")]);
    assert!(stderr.contains("role --dir"), "{stderr}");
    assert!(stderr.contains("standalone"), "{stderr}");
    // ibemail-kgc role makes it the primary.
    let out = kgc()
        .args(["role", "--dir"])
        .arg(&dir)
        .arg("primary")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = kgc().args(["role", "--dir"]).arg(&dir).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "primary");
    // A replica grant for a domain this daemon does not serve is a typo.
    let stderr = refused(&[format!("{pin}=replica:c.test")]);
    assert!(stderr.contains("serves no store of c.test"), "{stderr}");
    // One grant per certificate: two would let the grant applied and the
    // rotation tracker go by different ones.
    let stderr = refused(&[format!("{pin}=replica"), format!("{pin}=replica:b.test")]);
    assert!(stderr.contains("allowed twice"), "{stderr}");
}

#[test]
fn a_staged_rotation_that_crashed_before_its_key_leaves_the_old_generation_active() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut store = Store::setup(&dir, "b.test", now(), None, &mut OsRng).unwrap();
    store.set_role(Role::Primary).unwrap();
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    // The state file is written first: a crash before the key file leaves
    // only it, which is no generation at all.
    std::fs::remove_file(dir.join("gen-00000002.key")).unwrap();
    let mut store = Store::open(&dir).unwrap();
    assert_eq!(store.active_generation(), Some(1));
    assert!(store.pending().is_empty());
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    assert!(matches!(store.state(2), Some(State::Pending { .. })));
    // A second rotation waits for the release of the first.
    assert!(matches!(
        store.rotate(3600, now(), None, &mut OsRng),
        Err(StoreError::AlreadyStaged(2))
    ));
    // The release starts the overlap the rotation was given.
    let at = now();
    assert_eq!(store.release(2, 99, at).unwrap(), 3600);
    assert_eq!(store.active_generation(), Some(2));
    assert_eq!(store.state(1), Some(State::Retiring { until: at + 3600 }));
    assert!(matches!(
        store.release(2, 99, at),
        Err(StoreError::NotStaged(2))
    ));

    // A standalone store that inherits a staged state file from a crash
    // as a primary does not make its own rotation pending.
    let mut store = Store::open(&dir).unwrap();
    store.set_role(Role::Primary).unwrap();
    store.rotate(3600, now(), None, &mut OsRng).unwrap();
    std::fs::remove_file(dir.join("gen-00000003.key")).unwrap();
    let mut store = Store::open(&dir).unwrap();
    store.set_role(Role::Standalone).unwrap();
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 3);
    assert_eq!(store.active_generation(), Some(3));
}
