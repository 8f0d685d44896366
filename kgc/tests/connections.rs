//! The client keeps its connections to the daemon: one connection serves
//! request after request, a connection the daemon has closed is replaced
//! within the same request, and a burst leaves at most a bounded number
//! open.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ibemail_kgc::client::{IDLE_PER_ENDPOINT, KgcClient};
use ibemail_kgc::protocol::{Request, Response, frame, frame_length_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// A stand-in daemon on `socket` that answers HELLO on each connection,
/// `per_connection` requests at most (then closes it), and counts the
/// connections it accepted.
fn daemon(listener: UnixListener, per_connection: usize) -> Arc<AtomicUsize> {
    daemon_then(listener, per_connection, false)
}

/// As [`daemon`]; with `hang`, after `per_connection` answers a connection
/// is kept open and never answered again (a path that silently drops).
fn daemon_then(listener: UnixListener, per_connection: usize, hang: bool) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let stream = answer(stream, per_connection).await;
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                drop(stream);
            });
        }
    });
    accepted
}

async fn answer(mut stream: UnixStream, per_connection: usize) -> UnixStream {
    for _ in 0..per_connection {
        let mut prefix = [0u8; 4];
        if stream.read_exact(&mut prefix).await.is_err() {
            return stream;
        }
        let len = frame_length_within(prefix, 1 << 20).unwrap();
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        assert_eq!(Request::decode(&payload).unwrap(), Request::Hello);
        // A little work, so that concurrent requests overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let hello = Response::Hello(vec![("b.test".into(), 1)]);
        stream.write_all(&frame(&hello.encode())).await.unwrap();
    }
    stream
}

/// The real daemon (the library's `serve`) for a new store of b.test on
/// `tmp/kgc.sock`, with `config`: its socket, the sender that stops it,
/// and its task.
fn real_daemon(
    tmp: &std::path::Path,
    config: ibemail_kgc::server::ServerConfig,
) -> (
    std::path::PathBuf,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let dir = tmp.join("store");
    ibemail_kgc::store::Store::setup(
        &dir,
        "b.test",
        ibemail_kgc::clock::now(),
        None,
        &mut rand_core::OsRng,
    )
    .unwrap();
    let service =
        Arc::new(ibemail_kgc::service::KeyService::load(std::slice::from_ref(&dir), 16).unwrap());
    let socket = tmp.join("kgc.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ibemail_kgc::server::serve(
        listener,
        service,
        config,
        async {
            let _ = stopped.await;
        },
    ));
    (socket, stop, server)
}

fn client(socket: &std::path::Path) -> KgcClient {
    KgcClient::new(socket, Duration::from_secs(5))
}

/// Three requests through `client`, each answered on a new connection
/// (counted by the stand-in daemon in `accepted`).
async fn each_request_opens_one_connection(client: &KgcClient, accepted: &AtomicUsize) {
    for n in 1..=3 {
        assert_eq!(client.hello().await.unwrap(), vec![("b.test".into(), 1)]);
        assert_eq!(accepted.load(Ordering::SeqCst), n);
    }
}

#[tokio::test]
async fn one_connection_serves_request_after_request() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("kgc.sock");
    let accepted = daemon(UnixListener::bind(&socket).unwrap(), usize::MAX);
    let client = client(&socket);
    for _ in 0..5 {
        assert_eq!(client.hello().await.unwrap(), vec![("b.test".into(), 1)]);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.kept_connections(), 1);
    // Clones share the kept connections (the milter clones its client).
    let clone = client.clone();
    clone.hello().await.unwrap();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_daemon_closed_is_replaced_within_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("kgc.sock");
    // The daemon closes each connection after one answer (as after its
    // idle timeout, or a restart).
    let accepted = daemon(UnixListener::bind(&socket).unwrap(), 1);
    let client = client(&socket);
    each_request_opens_one_connection(&client, &accepted).await;
}

#[tokio::test]
async fn a_kept_connection_that_hangs_leaves_time_for_a_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("kgc.sock");
    // Each connection answers once, then goes silent without closing.
    let accepted = daemon_then(UnixListener::bind(&socket).unwrap(), 1, true);
    let client = KgcClient::new(&socket, Duration::from_secs(2));
    each_request_opens_one_connection(&client, &accepted).await;
}

#[tokio::test]
async fn a_stopping_daemon_closes_kept_connections_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (socket, stop, server) = real_daemon(tmp.path(), Default::default());
    let client = client(&socket);
    client.hello().await.unwrap();
    assert_eq!(client.kept_connections(), 1);
    // The daemon stops while the client keeps its connection: it must not
    // wait for the 60 s idle timeout.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the daemon waited for a kept connection")
        .unwrap()
        .unwrap();
}

/// A granted peer that sends requests and never reads the answers: once
/// the buffers are full the daemon's write waits; it gives up after the
/// write timeout, so the peer holds neither its connection nor a stopping
/// daemon for ever.
#[tokio::test]
async fn a_peer_that_never_reads_cannot_hold_a_stopping_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let config = ibemail_kgc::server::ServerConfig {
        write_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let (socket, stop, server) = real_daemon(tmp.path(), config);
    // Far more HELLO answers than the socket buffers hold, none read.
    let mut peer = UnixStream::connect(&socket).await.unwrap();
    let hello = frame(&Request::Hello.encode());
    let requests: Vec<u8> = hello
        .iter()
        .copied()
        .cycle()
        .take(hello.len() * 50_000)
        .collect();
    let writer = tokio::spawn(async move {
        let _ = peer.write_all(&requests).await;
        peer
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the daemon waited for a peer that does not read")
        .unwrap()
        .unwrap();
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_keeps_a_bounded_number_of_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("kgc.sock");
    let accepted = daemon(UnixListener::bind(&socket).unwrap(), usize::MAX);
    let client = client(&socket);
    let burst = 3 * IDLE_PER_ENDPOINT;
    let tasks: Vec<_> = (0..burst)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.hello().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened > 1 && opened <= burst, "{opened} connections");
    assert_eq!(client.kept_connections(), IDLE_PER_ENDPOINT.min(opened));
    // The next requests reuse them.
    for _ in 0..IDLE_PER_ENDPOINT {
        client.hello().await.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), opened);
}
