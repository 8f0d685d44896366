//! `ibemail-kgc serve` as a real process: concurrency, access control,
//! hostile frames, reload and shutdown.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::access::KeyError;
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::clock::now;
use ibemail_kgc::protocol::{Request, frame};
use ibemail_kgc::store::Store;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, socket: &Path, extra: &[&str]) -> Daemon {
        Self::start_logging(dir, socket, extra, Stdio::inherit())
    }

    /// [`Daemon::start`] with its log (standard error) going to `log`.
    fn start_logging(dir: &Path, socket: &Path, extra: &[&str], log: Stdio) -> Daemon {
        let child = Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
            .args(["serve", "--dir"])
            .arg(dir)
            .arg("--socket")
            .arg(socket)
            .args(extra)
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket: socket.to_path_buf(),
        }
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), signal).unwrap();
    }

    fn client(&self) -> KgcClient {
        KgcClient::new(&self.socket, Duration::from_secs(10))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A daemon serving `dir` on `tmp/NAME.sock` with `extra`, its log going
/// to `tmp/NAME.log` (returned).
fn logged(dir: &Path, tmp: &Path, name: &str, extra: &[&str]) -> (Daemon, PathBuf) {
    let log_path = tmp.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let socket = tmp.join(format!("{name}.sock"));
    let daemon = Daemon::start_logging(dir, &socket, extra, Stdio::from(log));
    (daemon, log_path)
}

fn new_store(tmp: &Path) -> PathBuf {
    let dir = tmp.join("kgc");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_clients_each_open_their_capsule() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let daemon = Daemon::start(&dir, &tmp.path().join("kgc.sock"), &[]);
    let params = Store::open(&dir).unwrap().params(1).unwrap().clone();

    let mut tasks = Vec::new();
    for i in 0..64 {
        let client = daemon.client();
        let params = params.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha20Rng::seed_from_u64(i);
            let identity = Identity::parse(&format!("user{i}@b.test")).unwrap();
            let mut opened = 0;
            for _ in 0..4 {
                let (capsule, secret) = encapsulate(&params, &identity, 1, &mut rng).unwrap();
                let got = client.open(&identity, 1, &capsule).await.unwrap();
                assert_eq!(got, secret, "client {i} got another secret");
                opened += 1;
            }
            opened
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 256);

    // A capsule for someone else is rejected, not opened.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let (capsule, _) = encapsulate(
        &params,
        &Identity::parse("alice@b.test").unwrap(),
        1,
        &mut rng,
    )
    .unwrap();
    let bob = Identity::parse("bob@b.test").unwrap();
    assert_eq!(
        daemon.client().open(&bob, 1, &capsule).await.unwrap_err(),
        KeyError::Rejected
    );
    assert_eq!(
        daemon.client().open(&bob, 9, &capsule).await.unwrap_err(),
        KeyError::UnknownGeneration(9)
    );
    let carol = Identity::parse("carol@c.test").unwrap();
    assert!(matches!(
        daemon.client().open(&carol, 1, &capsule).await.unwrap_err(),
        KeyError::NotServed(_)
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_requests_sign_as_the_identity_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let daemon = Daemon::start(&dir, &tmp.path().join("kgc.sock"), &[]);
    let store = Store::open(&dir).unwrap();
    let params = store.records()[0].signing.unwrap();
    let alice = Identity::parse("alice@b.test").unwrap();
    let digest = [0x5a; 32];
    let signature = daemon.client().sign(&alice, 1, &digest).await.unwrap();
    ibemail_ibe::verify(&params, &alice, 1, &digest, &signature).unwrap();
    // Not Bob's signature, not of another digest.
    let bob = Identity::parse("bob@b.test").unwrap();
    assert!(ibemail_ibe::verify(&params, &bob, 1, &digest, &signature).is_err());
    assert!(ibemail_ibe::verify(&params, &alice, 1, &[0x5b; 32], &signature).is_err());
    // Other domains, unknown generations and oversized digests are refused.
    let carol = Identity::parse("carol@c.test").unwrap();
    assert!(matches!(
        daemon.client().sign(&carol, 1, &digest).await.unwrap_err(),
        KeyError::NotServed(reason) if reason.contains("does not serve")
    ));
    assert!(matches!(
        daemon.client().sign(&alice, 7, &digest).await.unwrap_err(),
        KeyError::UnknownGeneration(7)
    ));
    assert!(daemon.client().sign(&alice, 1, &[0; 65]).await.is_err());
}

#[tokio::test]
async fn a_uid_outside_the_allow_list_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let daemon = Daemon::start(
        &dir,
        &tmp.path().join("kgc.sock"),
        &["--allow-uid", "4242424"],
    );
    let params = Store::open(&dir).unwrap().params(1).unwrap().clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, _) = encapsulate(&params, &bob, 1, &mut ChaCha20Rng::seed_from_u64(1)).unwrap();
    // A milter the daemon does not grant is misconfigured: the mail stays
    // queued (a temporary error), it is not quarantined as undecryptable.
    match daemon.client().open(&bob, 1, &capsule).await.unwrap_err() {
        KeyError::Forbidden(reason) => assert!(reason.contains("no grant"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A local user without a grant who connects over and over cannot fill the
/// journal: every connection is refused, the first 20 in a minute are
/// logged, then one line says logging pauses, and the rest are counted only.
/// Nor can one whose grant does not cover what it asks for.
#[tokio::test]
async fn a_flood_of_refused_connections_is_logged_within_a_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (daemon, log_path) = logged(&dir, tmp.path(), "kgc", &["--allow-uid", "4242424"]);
    for _ in 0..200 {
        match daemon.client().hello().await.unwrap_err() {
            KeyError::Forbidden(reason) => assert!(reason.contains("no grant"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // A clean stop says how many were kept out of the log (without it,
    // the count waited for a refusal after the window, which may never
    // come; while running, the daemon says it once the window is over).
    let mut daemon = daemon;
    daemon.signal(Signal::TERM);
    assert!(daemon.child.wait().unwrap().success());
    drop(daemon);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused connection from"))
        .collect();
    // 20 lines and the pause line (its place among them is not fixed:
    // the daemon's threads write their lines concurrently).
    assert_eq!(refused.len(), 21, "{log}");
    assert_eq!(
        refused.iter().filter(|l| l.contains("not logged")).count(),
        1,
        "{log}"
    );
    // 201 refusals (the start-up check's connection is one): 20 logged,
    // the pause line, 180 counted.
    assert!(
        log.contains("180 more refused connections were not logged"),
        "{log}"
    );

    // A uid that may open asks to sign, over and over: the same limit.
    let me = rustix::process::geteuid().as_raw().to_string();
    let (opener, log_path) = logged(&dir, tmp.path(), "opener", &["--allow-open", &me]);
    let bob = Identity::parse("bob@b.test").unwrap();
    for _ in 0..200 {
        match opener.client().sign(&bob, 1, &[0; 32]).await.unwrap_err() {
            KeyError::Forbidden(reason) => assert!(reason.contains("no sign grant"), "{reason}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    drop(opener);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let refused = log.lines().filter(|l| l.contains("refused sign")).count();
    assert_eq!(refused, 21, "{log}");
}

/// Grants are per capability: a uid allowed to open (a delivery-time
/// decrypt filter) cannot sign as the domain's users, and one allowed to
/// sign cannot read their mail.
#[tokio::test]
async fn open_and_sign_are_granted_separately() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let me = rustix::process::geteuid().as_raw().to_string();
    let params = Store::open(&dir).unwrap().params(1).unwrap().clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) =
        encapsulate(&params, &bob, 1, &mut ChaCha20Rng::seed_from_u64(2)).unwrap();
    let digest = [0x5a; 32];

    let opener = Daemon::start(&dir, &tmp.path().join("open.sock"), &["--allow-open", &me]);
    let opened = opener.client().open(&bob, 1, &capsule).await.unwrap();
    assert_eq!(opened.as_bytes(), secret.as_bytes());
    match opener.client().sign(&bob, 1, &digest).await.unwrap_err() {
        KeyError::Forbidden(reason) => assert!(reason.contains("no sign grant"), "{reason}"),
        other => panic!("signing must be refused, got {other:?}"),
    }
    match opener
        .client()
        .sign_certified(&bob, 1, &digest)
        .await
        .unwrap_err()
    {
        KeyError::Forbidden(reason) => assert!(reason.contains("no sign grant"), "{reason}"),
        other => panic!("certified signing must be refused, got {other:?}"),
    }
    drop(opener);

    let signer = Daemon::start(&dir, &tmp.path().join("sign.sock"), &["--allow-sign", &me]);
    signer.client().sign(&bob, 1, &digest).await.unwrap();
    let signature = signer
        .client()
        .sign_certified(&bob, 1, &digest)
        .await
        .unwrap();
    let signing = Store::open(&dir).unwrap().records()[0].signing.unwrap();
    ibemail_ibe::verify_certified(&signing, &bob, 1, &digest, &signature).unwrap();
    match signer.client().open(&bob, 1, &capsule).await.unwrap_err() {
        KeyError::Forbidden(reason) => assert!(reason.contains("no open grant"), "{reason}"),
        other => panic!("opening must be refused, got {other:?}"),
    }
    drop(signer);

    // UID:ADDRESS: a user's own filter opens that user's mail only.
    let alice = Identity::parse("alice@b.test").unwrap();
    let (alice_capsule, alice_secret) =
        encapsulate(&params, &alice, 1, &mut ChaCha20Rng::seed_from_u64(3)).unwrap();
    let own = format!("{me}:Alice@B.test");
    let filter = Daemon::start(&dir, &tmp.path().join("own.sock"), &["--allow-open", &own]);
    let opened = filter
        .client()
        .open(&alice, 1, &alice_capsule)
        .await
        .unwrap();
    assert_eq!(opened.as_bytes(), alice_secret.as_bytes());
    match filter.client().open(&bob, 1, &capsule).await.unwrap_err() {
        KeyError::Forbidden(reason) => assert!(reason.contains("no open grant"), "{reason}"),
        other => panic!("another user's mail must be refused, got {other:?}"),
    }
    drop(filter);

    // --allow-uid grants both, as before.
    let both = Daemon::start(&dir, &tmp.path().join("both.sock"), &["--allow-uid", &me]);
    both.client().open(&bob, 1, &capsule).await.unwrap();
    both.client().sign(&bob, 1, &digest).await.unwrap();
}

/// A granted client (here: the daemon's own uid) names an identity with
/// line breaks in it: the audit log shows it escaped on the one line of that
/// key use, and gains no line that looks like another key use.
#[tokio::test]
async fn identities_cannot_forge_audit_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let (daemon, log_path) = logged(&dir, tmp.path(), "kgc", &[]);
    let socket = daemon.socket.clone();
    let forged = "key use: open identity=ceo@b.test generation=1 outcome=opened peer_uid=0";
    let identity = format!("x@b.test\n{forged}\r\n{forged}");
    for request in [
        Request::Open {
            generation: 1,
            identity: identity.clone(),
            capsule: vec![0; 128],
        },
        Request::Sign {
            generation: 1,
            identity: identity.clone(),
            message: vec![0; 32],
            certified: false,
        },
        Request::Sign {
            generation: 1,
            identity: identity.clone(),
            message: vec![0; 32],
            certified: true,
        },
    ] {
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        stream.write_all(&frame(&request.encode())).await.unwrap();
        let mut length = [0; 4];
        stream.read_exact(&mut length).await.unwrap();
        let mut answer = vec![0; u32::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).await.unwrap();
        assert_ne!(answer[1], 0, "refused, not a key use: {answer:?}");
    }
    // The daemon still serves, and has written both lines by now.
    assert_eq!(
        daemon.client().hello().await.unwrap(),
        vec![("b.test".to_string(), 1)]
    );
    drop(daemon);
    let log = std::fs::read_to_string(&log_path).unwrap();
    let uses: Vec<&str> = log.lines().filter(|l| l.contains("key use:")).collect();
    assert_eq!(uses.len(), 3, "one line per key use:\n{log}");
    assert_eq!(
        uses.iter()
            .filter(|l| l.contains("key use: sign-certified "))
            .count(),
        1,
        "SIGN-CERTIFIED logged as itself:\n{log}"
    );
    for line in &uses {
        assert!(
            line.contains("ibemail_kgc::audit"),
            "a line of its own:\n{log}"
        );
        assert!(
            line.contains(r"identity=x@b.test\nkey use: open identity=ceo@b.test"),
            "escaped:\n{log}"
        );
    }
}

async fn raw_exchange(socket: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn oversized_and_garbage_frames_are_refused_without_harm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let socket = tmp.path().join("kgc.sock");
    let daemon = Daemon::start(&dir, &socket, &[]);

    // 4 GiB announced: refused with BadRequest (status 5), connection closed.
    let answer = raw_exchange(&socket, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(&answer[4..6], &[1, 5], "{answer:?}");
    // A well-sized frame of garbage.
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend([0xa5; 64]);
    let answer = raw_exchange(&socket, &garbage).await;
    assert_eq!(answer[5], 7, "unsupported version 0xa5: {answer:?}");
    // Truncated OPEN with the right version.
    let mut short = 3u32.to_be_bytes().to_vec();
    short.extend([1, 1, 0]);
    let answer = raw_exchange(&socket, &short).await;
    assert_eq!(answer[5], 5);
    // A client that announces a frame and goes silent does not block others.
    let mut slow = tokio::net::UnixStream::connect(&socket).await.unwrap();
    slow.write_all(&100u32.to_be_bytes()).await.unwrap();

    // The daemon still serves.
    let domains = daemon.client().hello().await.unwrap();
    assert_eq!(domains, vec![("b.test".to_string(), 1)]);
}

#[tokio::test]
async fn sighup_reloads_after_rotation_and_sigterm_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_store(tmp.path());
    let socket = tmp.path().join("kgc.sock");
    // A stale socket from a crashed daemon is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut daemon = Daemon::start(&dir, &socket, &[]);
    assert_eq!(daemon.client().hello().await.unwrap()[0].1, 1);

    let mut store = Store::open(&dir).unwrap();
    store
        .rotate(3600, now(), None, &mut ChaCha20Rng::seed_from_u64(5))
        .unwrap();
    daemon.signal(Signal::HUP);
    // Reloaded when generation 2 opens mail.
    let bob = Identity::parse("bob@b.test").unwrap();
    let params2 = store.params(2).unwrap().clone();
    let (capsule2, _) = encapsulate(&params2, &bob, 2, &mut ChaCha20Rng::seed_from_u64(8)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.client().open(&bob, 2, &capsule2).await.is_err() {
        assert!(Instant::now() < deadline, "reload not seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It keeps signing with generation 1: nothing has seen generation 2
    // published in DNS, so receivers may not know it yet.
    assert_eq!(daemon.client().hello().await.unwrap()[0].1, 1);
    // Both generations open mail during the overlap.
    for generation in [1, 2] {
        let params = store.params(generation).unwrap().clone();
        let (capsule, secret) = encapsulate(
            &params,
            &bob,
            generation,
            &mut ChaCha20Rng::seed_from_u64(7),
        )
        .unwrap();
        assert_eq!(
            daemon
                .client()
                .open(&bob, generation, &capsule)
                .await
                .unwrap(),
            secret
        );
    }

    // A second daemon on the same socket refuses to steal it.
    let second = Command::new(assert_cmd::cargo::cargo_bin("ibemail-kgc"))
        .args(["serve", "--dir"])
        .arg(&dir)
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by a running daemon"));

    daemon.signal(Signal::TERM);
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket removed on shutdown");
}
