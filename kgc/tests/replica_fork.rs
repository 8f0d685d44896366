//! What a replica reports to its primary as served: never a generation it
//! holds with other keys than the primary's (a forked history, review 5),
//! nor one its running service does not hold (a failed reload, review 6).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{identity, primary_and_copy, replicating_upkeep};
use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::access::KeyError;
use ibemail_kgc::client::{Endpoint, KgcClient};
use ibemail_kgc::clock::now;
use ibemail_kgc::replica::{ReplicaSync, Replication};
use ibemail_kgc::server::{Grant, ServerConfig, serve_tls};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::{Role, State, Store};
use ibemail_kgc::tls::{Pin, TlsIdentity, client_config, server_config};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

async fn listen(
    service: Arc<KeyService>,
    tls: &TlsIdentity,
    certificates: Vec<(Pin, Grant)>,
    replication: Option<Arc<Replication>>,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pins: Vec<Pin> = certificates.iter().map(|(p, _)| *p).collect();
    let config = ServerConfig {
        certificates,
        replication,
        ..ServerConfig::default()
    };
    tokio::spawn(serve_tls(
        listener,
        server_config(tls, &pins).unwrap(),
        service,
        config,
        std::future::pending::<()>(),
    ));
    addr
}

fn tls(addr: SocketAddr) -> Endpoint {
    Endpoint::Tls {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

/// The primary's daemon: `replica` may replicate, `milter` open and sign.
async fn listen_primary(
    primary: Arc<KeyService>,
    tls: &TlsIdentity,
    replica: Pin,
    milter: Pin,
) -> (SocketAddr, Arc<Replication>) {
    let replication = Arc::new(Replication::new(vec![replica]));
    let replicate = Grant {
        replicate: true,
        ..Grant::default()
    };
    let addr = listen(
        primary,
        tls,
        vec![(replica, replicate), (milter, Grant::all())],
        Some(replication.clone()),
    )
    .await;
    (addr, replication)
}

/// A milter's client of `endpoints`, trusting the daemons `pins`.
fn milter_client(
    endpoints: Vec<Endpoint>,
    milter: &TlsIdentity,
    pin: Pin,
    pins: &[Pin],
) -> KgcClient {
    KgcClient::with_endpoints(
        endpoints,
        Some((client_config(milter, pins).unwrap(), pin)),
        Duration::from_secs(5),
        false,
    )
    .unwrap()
}

/// The situation docs/operations.md walks through: the primary staged a
/// generation and died before its replica synced it; the replica was
/// promoted and staged its own generation of that number; the old primary
/// came back and, as the table says, was made a replica
/// (`ibemail-kgc role --dir DIR replica`). Its key of that generation
/// differs: the sync reports a forked store and keeps it. But the replica
/// still reports the generation as served (SYNC names `with_keys()`), so
/// the new primary releases and publishes it; milters that ask that
/// replica get `Rejected`, which the client takes as final (no failover),
/// and the mail sealed to the published generation fails to open there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_replica_does_not_count_as_serving_the_primarys_generation() {
    let tmp = tempfile::tempdir().unwrap();
    // `primary_dir`: the promoted replica, now the primary. `old_dir`: the
    // old primary, which staged its own generation 2 before it died.
    let (primary_dir, old_dir) = primary_and_copy(tmp.path(), Role::Primary);
    let mut old = Store::open(&old_dir).unwrap();
    assert_eq!(old.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    // Back, and demoted as the operations guide says.
    old.set_role(Role::Replica).unwrap();
    // The new primary rotates on its own: another generation 2.
    let mut store = Store::open(&primary_dir).unwrap();
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);

    let (primary_tls, primary_pin) = identity(tmp.path(), "primary");
    let (old_tls, old_pin) = identity(tmp.path(), "old");
    let (milter_tls, milter_pin) = identity(tmp.path(), "milter");

    let primary = Arc::new(KeyService::load(std::slice::from_ref(&primary_dir), 16).unwrap());
    let (primary_addr, replication) =
        listen_primary(primary.clone(), &primary_tls, old_pin, milter_pin).await;
    let replica = Arc::new(KeyService::load(std::slice::from_ref(&old_dir), 16).unwrap());
    let replica_addr = listen(
        replica.clone(),
        &old_tls,
        vec![(milter_pin, Grant::all())],
        None,
    )
    .await;

    let link =
        ReplicaSync::new("127.0.0.1", primary_addr.port(), &old_tls, &[primary_pin]).unwrap();
    let outcome = link.sync(&replica).await;
    let applied = outcome[0].1.as_ref().unwrap();
    assert!(
        applied.conflicts.iter().any(|c| c.contains("differs")),
        "{applied:?}"
    );

    let mut upkeep = replicating_upkeep(&replication);
    upkeep.run(&primary, now()).await;
    let store = Store::open(&primary_dir).unwrap();
    let released = store.active_generation() == Some(2);
    let missing = replication.missing("b.test", 2);

    // Mail sealed to the primary's generation 2, opened by a milter whose
    // first endpoint is the forked replica.
    let params = store.params(2).unwrap().clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 2, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    let client = milter_client(
        vec![tls(replica_addr), tls(primary_addr)],
        &milter_tls,
        milter_pin,
        &[primary_pin, old_pin],
    );
    let opened = client.open(&bob, 2, &capsule).await;

    assert!(
        !released && !missing.is_empty(),
        "the primary released generation 2 (state {:?}) although its only replica holds a \
         different key for it (missing: {missing:?}); a milter asking that replica first now \
         gets {:?} for mail sealed to the published generation",
        store.state(2),
        opened
            .as_ref()
            .map(|s| *s.as_bytes() == *secret.as_bytes())
            .map_err(|e| match e {
                KeyError::Rejected => "Rejected (final: the primary is never asked)".to_string(),
                other => format!("{other:?}"),
            })
    );
    assert!(matches!(store.state(2), Some(State::Pending { .. })));
}

/// A milter's certificate (open+sign) asking SYNC with any list of
/// generations: refused, no key material, and no report that could make
/// the primary release (expected to pass: sound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_certificate_cannot_copy_keys_or_make_the_primary_release() {
    use ibemail_kgc::protocol::{Request, Response, Status};
    let tmp = tempfile::tempdir().unwrap();
    let (primary_dir, _) = primary_and_copy(tmp.path(), Role::Replica);
    let mut store = Store::open(&primary_dir).unwrap();
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    let (primary_tls, primary_pin) = identity(tmp.path(), "primary");
    let (_, replica_pin) = identity(tmp.path(), "replica");
    let (milter_tls, milter_pin) = identity(tmp.path(), "milter");
    let primary = Arc::new(KeyService::load(std::slice::from_ref(&primary_dir), 16).unwrap());
    let (addr, replication) =
        listen_primary(primary.clone(), &primary_tls, replica_pin, milter_pin).await;
    let client = milter_client(vec![tls(addr)], &milter_tls, milter_pin, &[primary_pin]);
    for serving in [vec![], vec![1, 2], vec![2; 1024]] {
        let answer = client
            .request(&Request::Sync {
                domain: "b.test".into(),
                serving,
            })
            .await
            .unwrap();
        assert!(
            matches!(answer, Response::Error(Status::Forbidden, _)),
            "{answer:?}"
        );
    }
    let mut upkeep = replicating_upkeep(&replication);
    upkeep.run(&primary, now()).await;
    assert!(matches!(
        Store::open(&primary_dir).unwrap().state(2),
        Some(State::Pending { .. })
    ));
    assert_eq!(replication.missing("b.test", 2).len(), 1);
}

/// A replica serving two domains: one of its stores cannot be opened any
/// more (damaged on disk), so `KeyService::reload` fails as a whole after
/// a sync wrote the primary's new generation of the other domain. The
/// running service still holds the old keys ("serving the previous keys"),
/// yet the next sync reports the new generation as served, because
/// `ReplicaSync::serving` reads the store on disk, not the service. The
/// primary releases it; the replica cannot open mail sealed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_reload_failed_does_not_report_keys_it_does_not_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let (primary_dir, copy_dir) = primary_and_copy(tmp.path(), Role::Replica);
    // A second domain on the same replica.
    let other_dir = tmp.path().join("other");
    let mut other = Store::setup(
        &other_dir,
        "c.test",
        now(),
        None,
        &mut ChaCha20Rng::seed_from_u64(7),
    )
    .unwrap();
    other.set_role(Role::Replica).unwrap();

    let (primary_tls, primary_pin) = identity(tmp.path(), "primary");
    let (replica_tls, replica_pin) = identity(tmp.path(), "replica");
    let (milter_tls, milter_pin) = identity(tmp.path(), "milter");

    let primary = Arc::new(KeyService::load(std::slice::from_ref(&primary_dir), 16).unwrap());
    let (primary_addr, replication) =
        listen_primary(primary.clone(), &primary_tls, replica_pin, milter_pin).await;
    let replica = Arc::new(KeyService::load(&[copy_dir.clone(), other_dir.clone()], 16).unwrap());
    let replica_addr = listen(
        replica.clone(),
        &replica_tls,
        vec![(milter_pin, Grant::all())],
        None,
    )
    .await;
    let link = ReplicaSync::new(
        "127.0.0.1",
        primary_addr.port(),
        &replica_tls,
        &[primary_pin],
    )
    .unwrap();
    // A first sync, all well: generation 1 verified.
    let _ = link.sync(&replica).await;

    // The other domain's store is damaged on disk: every reload fails.
    std::fs::write(other_dir.join("kgc.store"), b"garbage\n").unwrap();
    assert!(
        replica.reload().is_err(),
        "the damaged store must fail a reload"
    );

    // The primary stages generation 2; the replica syncs it (to disk),
    // its reload fails, and it syncs again a tick later.
    let mut store = Store::open(&primary_dir).unwrap();
    assert_eq!(store.rotate(3600, now(), None, &mut OsRng).unwrap(), 2);
    primary.reload().unwrap();
    let first = link.sync(&replica).await;
    let b = first.iter().find(|(d, _)| d == "b.test").unwrap();
    assert!(
        b.1.as_ref().is_ok_and(|a| a.added.contains(&2)),
        "{first:?}"
    );
    let _ = link.sync(&replica).await;

    let mut upkeep = replicating_upkeep(&replication);
    upkeep.run(&primary, now()).await;
    let store = Store::open(&primary_dir).unwrap();
    let released = store.active_generation() == Some(2);

    let params = store.params(2).unwrap().clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 2, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    let client = milter_client(
        vec![tls(replica_addr)],
        &milter_tls,
        milter_pin,
        &[primary_pin, replica_pin],
    );
    let opened = client.open(&bob, 2, &capsule).await;
    let replica_opens = opened
        .as_ref()
        .is_ok_and(|s| *s.as_bytes() == *secret.as_bytes());
    assert!(
        !released || replica_opens,
        "the primary released generation 2 (missing: {:?}) on the replica's report, but the \
         replica's running service cannot open it: {:?}",
        replication.missing("b.test", 2),
        opened.map(|_| ()).map_err(|e| format!("{e:?}"))
    );
}
