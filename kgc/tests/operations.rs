//! `ibemail-kgc` as the packages run it: root administering stores that
//! belong to the daemon's user, `serve` over a directory of stores (one per
//! domain), its Prometheus counters by outcome, and start-up failures that
//! say how to fix them and exit 78 so that systemd does not loop.
//!
//! These run as root (as CI does): they switch users.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::clock::now;
use ibemail_kgc::store::{Store, StoreError};
use ibemail_test_support::{free_port, is_root};
use rand_core::OsRng;

const KGC: &str = env!("CARGO_BIN_EXE_ibemail-kgc");
/// `nobody`: an unprivileged account every Debian system has.
const NOBODY: u32 = 65534;

/// A temporary directory others may traverse (the daemon runs as nobody).
fn open_tempdir() -> tempfile::TempDir {
    assert!(
        is_root(),
        "these tests switch users: run them as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// A directory owned by nobody, as the packages make /var/lib/ibemail/kgc
/// for ibemail-kgc.
fn nobodys_dir(path: &Path) -> PathBuf {
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    path.to_path_buf()
}

fn kgc_as_root(args: &[&str]) -> Output {
    Command::new(KGC).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn root_reads_any_store_and_writes_it_as_its_owner() {
    let tmp = open_tempdir();
    let stores = nobodys_dir(&tmp.path().join("kgc"));
    let dir = stores.join("x.test");
    let dir_arg = dir.to_str().unwrap();

    // setup as root: the store belongs to the owner of its directory.
    let out = kgc_as_root(&["setup", "--domain", "x.test", "--dir", dir_arg]);
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        dir.clone(),
        dir.join("gen-00000001.key"),
        dir.join("kgc.store"),
    ] {
        assert_eq!(
            std::fs::metadata(&file).unwrap().uid(),
            NOBODY,
            "{}",
            file.display()
        );
    }
    // Read-only commands as root, directly.
    for args in [
        &["record", "--dir", dir_arg][..],
        &["status", "--dir", dir_arg],
    ] {
        let out = kgc_as_root(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // rotate as root runs as the owner: the new key belongs to nobody too.
    let out = kgc_as_root(&["rotate", "--dir", dir_arg, "--overlap", "1d"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(dir.join("gen-00000002.key"))
            .unwrap()
            .uid(),
        NOBODY
    );

    // The library refuses root's writes to someone else's store, and says
    // how to run the command instead.
    let mut store = Store::open(&dir).unwrap();
    let refused = store.rotate(60, now(), None, &mut OsRng).unwrap_err();
    assert!(matches!(refused, StoreError::NotOwner { .. }), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("runuser -u nobody -- ibemail-kgc"),
        "{refused}"
    );
}

/// `ibemail-kgc serve --dir DIR --socket RUN/kgc.sock EXTRA` as nobody, as
/// the packaged unit runs it as ibemail-kgc; expected to stop at start.
fn serve_as_nobody(dir: &Path, run: &Path, extra: &[&str]) -> Output {
    Command::new(KGC)
        .args(["serve", "--dir"])
        .arg(dir)
        .arg("--socket")
        .arg(run.join("kgc.sock"))
        .args(extra)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap()
}

#[test]
fn a_store_the_daemon_cannot_use_is_reported_with_the_fix_and_status_78() {
    let tmp = open_tempdir();
    // A store root made in a root-owned directory, served by nobody.
    let dir = tmp.path().join("root-store");
    Store::setup(&dir, "x.test", now(), None, &mut OsRng).unwrap();
    let run = nobodys_dir(&tmp.path().join("run"));
    let out = serve_as_nobody(&dir, &run, &[]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot start"), "{stderr}");
    // The fix hands the store to the daemon's user, not to root.
    assert!(
        stderr.contains(&format!("chown -R nobody: {}", dir.display())),
        "{stderr}"
    );

    // An unreadable TSIG key: the same status, and who must own it.
    let key = tmp.path().join("update.key");
    std::fs::write(&key, "hmac-sha256:k:c2VjcmV0\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mine = nobodys_dir(&tmp.path().join("mine"));
    let store = mine.join("x.test");
    let out = kgc_as_root(&[
        "setup",
        "--domain",
        "x.test",
        "--dir",
        store.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = serve_as_nobody(
        &mine,
        &run,
        &[
            "--publish-server",
            "127.0.0.1:53",
            "--publish-tsig-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(stderr.contains("chown ibemail-kgc:"), "{stderr}");
    assert_eq!(stderr.matches("TSIG key").count(), 1, "said once: {stderr}");
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut page = String::new();
    stream.read_to_string(&mut page).unwrap();
    page
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_of_stores_is_served_and_every_key_use_is_counted() {
    let tmp = open_tempdir();
    let stores = tmp.path().join("kgc");
    std::fs::create_dir(&stores).unwrap();
    for domain in ["a.test", "b.test"] {
        Store::setup(&stores.join(domain), domain, now(), None, &mut OsRng).unwrap();
    }
    std::fs::create_dir(stores.join("not-a-store")).unwrap();
    let socket = tmp.path().join("kgc.sock");
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let metrics = std::net::SocketAddr::new(lo, free_port(lo));
    let _daemon = Daemon(
        Command::new(KGC)
            .args(["serve", "--dir"])
            .arg(&stores)
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics", &metrics.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = KgcClient::new(&socket, Duration::from_secs(10));
    let served = client.hello().await.unwrap();
    assert_eq!(
        served,
        [("a.test".to_string(), 1), ("b.test".to_string(), 1)]
    );

    let params = Store::open(&stores.join("b.test"))
        .unwrap()
        .params(1)
        .unwrap()
        .clone();
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, _) = encapsulate(&params, &bob, 1, &mut OsRng).unwrap();
    client.open(&bob, 1, &capsule).await.unwrap();
    client.open(&bob, 1, &capsule).await.unwrap();
    assert!(client.open(&bob, 9, &capsule).await.is_err());
    let carol = Identity::parse("carol@c.test").unwrap();
    assert!(client.sign(&carol, 1, &[0; 32]).await.is_err());

    let page = http_get(metrics);
    for series in [
        "ibemail_kgc_requests_total{operation=\"open\",outcome=\"opened\"} 2",
        "ibemail_kgc_requests_total{operation=\"open\",outcome=\"unknown-generation\"} 1",
        "ibemail_kgc_requests_total{operation=\"sign\",outcome=\"wrong-domain\"} 1",
        "ibemail_kgc_refused_connections_total 0",
    ] {
        assert!(page.contains(series), "{series} missing:\n{page}");
    }
}
