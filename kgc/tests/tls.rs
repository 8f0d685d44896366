//! The KGC over mutual TLS: what the pins let through and what they stop,
//! grants per certificate, silent unauthenticated connections, and a
//! client failing over between endpoints within its timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::identity;
use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::access::KeyError;
use ibemail_kgc::client::{Endpoint, KgcClient};
use ibemail_kgc::clock::now;
use ibemail_kgc::protocol::{Request, Response, Status};
use ibemail_kgc::server::{Grant, ServerConfig, serve_tls};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_kgc::tls::{Pin, TlsIdentity, client_config, server_config};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn new_store(tmp: &Path) -> PathBuf {
    let dir = tmp.join("store");
    Store::setup(
        &dir,
        "b.test",
        now(),
        None,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    dir
}

/// A TLS daemon on 127.0.0.1 serving the store in `dir`, presenting
/// `server`, with `grants`; stopped when dropped.
struct TlsDaemon {
    addr: SocketAddr,
    service: Arc<KeyService>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsDaemon {
    async fn start(dir: &Path, server: &TlsIdentity, grants: Vec<(Pin, Grant)>) -> TlsDaemon {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = Arc::new(KeyService::load(&[dir.to_path_buf()], 16).unwrap());
        let pins: Vec<Pin> = grants.iter().map(|(p, _)| *p).collect();
        let tls = server_config(server, &pins).unwrap();
        let config = ServerConfig {
            certificates: grants,
            ..ServerConfig::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_tls(listener, tls, service.clone(), config, async {
            let _ = stopped.await;
        }));
        TlsDaemon {
            addr,
            service,
            stop: Some(stop),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Tls {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
        }
    }

    /// Key uses of `operation` so far, whatever their outcome.
    fn uses(&self, operation: &str) -> u64 {
        self.service
            .metrics()
            .render()
            .lines()
            .filter(|l| l.contains(&format!("operation=\"{operation}\"")))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }

    fn refused(&self) -> u64 {
        self.service
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("ibemail_kgc_refused_connections_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TlsDaemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn client(
    endpoints: Vec<Endpoint>,
    me: &TlsIdentity,
    my_pin: Pin,
    servers: &[Pin],
    timeout: Duration,
) -> KgcClient {
    KgcClient::with_endpoints(
        endpoints,
        Some((client_config(me, servers).unwrap(), my_pin)),
        timeout,
        false,
    )
    .unwrap()
}

fn capsule_for(dir: &Path, who: &str, seed: u64) -> (Identity, ibemail_ibe::Capsule, [u8; 32]) {
    let params = Store::open(dir).unwrap().params(1).unwrap().clone();
    let identity = Identity::parse(who).unwrap();
    let (capsule, secret) =
        encapsulate(&params, &identity, 1, &mut ChaCha20Rng::seed_from_u64(seed)).unwrap();
    (identity, capsule, *secret.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_opens_and_signs_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc1");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let daemon = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    let client = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        Duration::from_secs(5),
    );
    assert_eq!(client.hello().await.unwrap(), vec![("b.test".into(), 1)]);
    let (bob, capsule, secret) = capsule_for(&dir, "bob@b.test", 1);
    assert_eq!(
        *client.open(&bob, 1, &capsule).await.unwrap().as_bytes(),
        secret
    );
    // The client checks that the daemon signed with generation 1.
    client.sign(&bob, 1, &[7; 32]).await.unwrap();
    // The key use is audited with the certificate, and counted.
    let metrics = daemon.service.metrics().render();
    assert!(
        metrics.contains("operation=\"open\",outcome=\"opened\"} 1"),
        "{metrics}"
    );
    assert_eq!(daemon.refused(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_key_pin_works_as_well_as_a_certificate_pin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, _) = identity(tmp.path(), "kgc1");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let server_spki = server.fingerprints().public_key_pin().unwrap();
    let milter_spki = milter.fingerprints().public_key_pin().unwrap();
    let daemon = TlsDaemon::start(&dir, &server, vec![(milter_spki, Grant::all())]).await;
    let client = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[server_spki],
        Duration::from_secs(5),
    );
    assert_eq!(client.hello().await.unwrap(), vec![("b.test".into(), 1)]);
}

/// One client certificate allowed twice, by its certificate pin and by its
/// public key pin, with different grants: which applies is ambiguous
/// (and a replica's reports would go by one while the primary waited for
/// the other), so the connection is refused.
#[tokio::test]
async fn a_certificate_matching_two_entries_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc1");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let milter_spki = milter.fingerprints().public_key_pin().unwrap();
    let daemon = TlsDaemon::start(
        &dir,
        &server,
        vec![
            (milter_spki, Grant::parse("open").unwrap()),
            (milter_pin, Grant::parse("replica").unwrap()),
        ],
    )
    .await;
    let client = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        Duration::from_secs(5),
    );
    assert!(client.hello().await.is_err());
    assert!(daemon.service.metrics().refused_connections() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_unknown_certificate_is_refused_at_the_handshake() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc1");
    let (_milter, milter_pin) = identity(tmp.path(), "milter");
    let (stranger, stranger_pin) = identity(tmp.path(), "stranger");
    let daemon = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    // The stranger trusts the server, but the server does not know it.
    let client = client(
        vec![daemon.endpoint()],
        &stranger,
        stranger_pin,
        &[server_pin],
        Duration::from_secs(5),
    );
    let (bob, capsule, _) = capsule_for(&dir, "bob@b.test", 2);
    let e = client.open(&bob, 1, &capsule).await.unwrap_err();
    let KeyError::Unavailable(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("TLS handshake refused"), "{why}");
    assert!(why.contains(&stranger_pin.to_string()), "{why}");
    assert_eq!(daemon.refused(), 1);
    // No key was used for it.
    assert_eq!(daemon.uses("open"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_certificate_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (_genuine, genuine_pin) = identity(tmp.path(), "kgc1");
    let (impostor, _) = identity(tmp.path(), "impostor");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    // The impostor lets the milter in (it would like its requests)...
    let daemon = TlsDaemon::start(&dir, &impostor, vec![(milter_pin, Grant::all())]).await;
    // ...but the milter only trusts the genuine KGC's certificate.
    let client = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[genuine_pin],
        Duration::from_secs(5),
    );
    let (bob, capsule, _) = capsule_for(&dir, "bob@b.test", 3);
    let e = client.open(&bob, 1, &capsule).await.unwrap_err();
    let KeyError::Unavailable(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.contains("is not pinned"), "{why}");
    // The capsule never reached it.
    assert_eq!(daemon.uses("open"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_per_certificate_and_replication_needs_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc1");
    let (opener, opener_pin) = identity(tmp.path(), "opener");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let daemon = TlsDaemon::start(
        &dir,
        &server,
        vec![
            (opener_pin, Grant::parse("open").unwrap()),
            (milter_pin, Grant::parse("open+sign").unwrap()),
        ],
    )
    .await;
    let bob = Identity::parse("bob@b.test").unwrap();
    let opener = client(
        vec![daemon.endpoint()],
        &opener,
        opener_pin,
        &[server_pin],
        Duration::from_secs(5),
    );
    let (_, capsule, secret) = capsule_for(&dir, "bob@b.test", 4);
    assert_eq!(
        *opener.open(&bob, 1, &capsule).await.unwrap().as_bytes(),
        secret
    );
    match opener.sign(&bob, 1, &[1; 32]).await {
        Err(KeyError::Forbidden(why)) => assert!(why.contains("no sign grant"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(daemon.service.metrics().requests("sign", "forbidden"), 1);
    // The milter's grant does not include the master keys.
    let milter = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        Duration::from_secs(5),
    );
    let sync = Request::Sync {
        domain: "b.test".into(),
        serving: vec![],
    };
    match milter.request(&sync).await.unwrap() {
        Response::Error(Status::Forbidden, why) => {
            assert!(why.contains("no replicate grant"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(Grant::parse("open+sign").unwrap(), Grant::all());
    assert!(Grant::parse("everything").is_err());
}

/// A host with no certificate at all opens as many TCP connections as the
/// daemon serves at once and never starts a handshake. Each holds a
/// connection slot for the whole handshake timeout, before anything is
/// known about it, and it simply reconnects when dropped: a pinned milter
/// meanwhile waits in the accept queue past its own timeout, and its mail
/// is deferred. Unauthenticated peers should not be able to take the
/// slots authenticated clients need.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_unauthenticated_connections_do_not_lock_out_a_pinned_milter() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc1");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    // With the daemon's default limits (as `ibemail-kgc serve` runs it:
    // 256 connections, 5 s for a handshake).
    let daemon = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    let addr = daemon.addr;
    let client = client(
        vec![daemon.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        Duration::from_secs(2),
    );
    // Sanity: it works without the attacker.
    client.hello().await.unwrap();

    // The attacker: plain TCP connections that say nothing.
    let max = ServerConfig::default().max_connections;
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let result = client.hello().await;
    assert!(
        result.is_ok(),
        "a pinned milter was locked out for {:?} by {max} unauthenticated, silent TCP \
         connections: {result:?}",
        started.elapsed()
    );
    drop(held);
}

/// A TCP listener that accepts and then says nothing: a hung KGC.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn tls(addr: SocketAddr) -> Endpoint {
    Endpoint::Tls {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_within_its_timeout_and_defers_only_when_none_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let good = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    let (hung, _hung_task) = silent_listener().await;
    let down = closed_port();
    let (bob, capsule, secret) = capsule_for(&dir, "bob@b.test", 5);
    let timeout = Duration::from_secs(4);

    // The first endpoint refuses connections: the next answers at once.
    let c = client(
        vec![tls(down), good.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        timeout,
    );
    let started = Instant::now();
    assert_eq!(*c.open(&bob, 1, &capsule).await.unwrap().as_bytes(), secret);
    assert!(started.elapsed() < timeout);

    // The first endpoint hangs: its share of the timeout is spent, then
    // the next answers, all within the timeout; and the hung one is tried
    // last from now on, so the next request does not wait for it.
    let c = client(
        vec![tls(hung), good.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        timeout,
    );
    let started = Instant::now();
    assert_eq!(*c.open(&bob, 1, &capsule).await.unwrap().as_bytes(), secret);
    let first = started.elapsed();
    assert!(first >= timeout / 2 && first < timeout, "{first:?}");
    let started = Instant::now();
    assert_eq!(*c.open(&bob, 1, &capsule).await.unwrap().as_bytes(), secret);
    assert!(started.elapsed() < timeout / 2, "{:?}", started.elapsed());

    // A Unix endpoint in the list is used like the others.
    let unix = tmp.path().join("none.sock");
    let c = client(
        vec![Endpoint::Unix(unix.clone()), good.endpoint()],
        &milter,
        milter_pin,
        &[server_pin],
        timeout,
    );
    assert_eq!(*c.open(&bob, 1, &capsule).await.unwrap().as_bytes(), secret);

    // None answers: a temporary error naming each, within the timeout.
    let c = client(
        vec![tls(down), tls(hung), Endpoint::Unix(unix)],
        &milter,
        milter_pin,
        &[server_pin],
        timeout,
    );
    let started = Instant::now();
    let e = c.open(&bob, 1, &capsule).await.unwrap_err();
    assert!(started.elapsed() < timeout + Duration::from_millis(500));
    let KeyError::Unavailable(why) = &e else {
        panic!("{e:?}")
    };
    assert!(why.starts_with("no KGC answered"), "{why}");
    assert!(why.contains(&format!("connect tls:{down}")), "{why}");
    assert!(why.contains(&format!("no answer from tls:{hung}")), "{why}");
    assert!(why.contains("none.sock"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spreading_sends_requests_to_every_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (server, server_pin) = identity(tmp.path(), "kgc");
    let (milter, milter_pin) = identity(tmp.path(), "milter");
    let one = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    let two = TlsDaemon::start(&dir, &server, vec![(milter_pin, Grant::all())]).await;
    let c = KgcClient::with_endpoints(
        vec![one.endpoint(), two.endpoint()],
        Some((client_config(&milter, &[server_pin]).unwrap(), milter_pin)),
        Duration::from_secs(5),
        true,
    )
    .unwrap();
    let (bob, capsule, _) = capsule_for(&dir, "bob@b.test", 6);
    for _ in 0..6 {
        c.open(&bob, 1, &capsule).await.unwrap();
    }
    for daemon in [&one, &two] {
        let metrics = daemon.service.metrics().render();
        assert!(
            metrics.contains("operation=\"open\",outcome=\"opened\"} 3"),
            "{metrics}"
        );
    }
}

#[test]
fn tls_cert_makes_a_private_key_and_prints_the_pins_the_daemon_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    let out = assert_cmd::Command::cargo_bin("ibemail-kgc")
        .unwrap()
        .args(["tls-cert", "--name", "kgc1.b.test", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    let printed = String::from_utf8(out.stdout).unwrap();
    let pins: Vec<Pin> = printed.lines().map(|l| l.parse().unwrap()).collect();
    let identity = TlsIdentity::load(&cert, &key).unwrap();
    assert_eq!(
        pins,
        vec![
            identity.fingerprints().certificate_pin(),
            identity.fingerprints().public_key_pin().unwrap()
        ]
    );
    // tls-fingerprint prints the same.
    let again = assert_cmd::Command::cargo_bin("ibemail-kgc")
        .unwrap()
        .arg("tls-fingerprint")
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), printed);
    // It never overwrites.
    let again = assert_cmd::Command::cargo_bin("ibemail-kgc")
        .unwrap()
        .args(["tls-cert", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(tmp.path().join("other.key"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}
