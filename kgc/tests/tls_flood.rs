//! Review 5: the KGC's TLS listener against hosts that hold no pinned
//! certificate.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ibemail_kgc::client::{Endpoint, KgcClient};
use ibemail_kgc::server::{Grant, ServerConfig, serve_tls};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_kgc::tls::{Pin, TlsIdentity, client_config, generate_certificate, server_config};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn identity(dir: &Path, name: &str) -> (TlsIdentity, Pin) {
    let made = generate_certificate(name, 30).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &made.certificate_pem).unwrap();
    std::fs::write(&key, made.key_pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        TlsIdentity::load(&cert, &key).unwrap(),
        made.fingerprints.certificate_pin(),
    )
}

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

/// A TLS daemon with the daemon's default limits (as `ibemail-kgc serve`
/// runs it: 256 connections, 5 s for a handshake).
async fn start(
    dir: &Path,
    server: &TlsIdentity,
    grants: Vec<(Pin, Grant)>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
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
    tokio::spawn(serve_tls(listener, tls, service, config, async {
        let _ = stopped.await;
    }));
    (addr, stop)
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
    let (addr, _stop) = start(&dir, &server, vec![(milter_pin, Grant::all())]).await;

    let client = KgcClient::with_endpoints(
        vec![Endpoint::Tls {
            host: addr.ip().to_string(),
            port: addr.port(),
        }],
        Some((client_config(&milter, &[server_pin]).unwrap(), milter_pin)),
        Duration::from_secs(2),
        false,
    )
    .unwrap();
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
