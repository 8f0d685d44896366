//! `ibemail-milter run` as a process: the Prometheus endpoint, SIGHUP reload
//! (a bad file keeps the running configuration), SIGTERM, and the Unix
//! socket's stale-file handling.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibemail_test_support::free_port;
use indymilter_test::{Status, TestConnection};

const MILTER: &str = env!("CARGO_BIN_EXE_ibemail-milter");

struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn start(config: &Path, wait_for: SocketAddr) -> Running {
        let log = config.with_extension("log");
        let child = Command::new(MILTER)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut running = Running { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&wait_for, Duration::from_millis(200)).is_err() {
            assert!(
                running.child.try_wait().unwrap().is_none() && Instant::now() < deadline,
                "did not start:\n{}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        assert!(
            Command::new("kill")
                .arg(format!("-{name}"))
                .arg(self.child.id().to_string())
                .status()
                .unwrap()
                .success()
        );
    }

    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn terminate(mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}:\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message from an outside client to an address that is not ours: no
/// lookups, no keys; the reply depends only on the size limit.
async fn send(addr: SocketAddr, body_len: usize) -> Status {
    let mut conn = TestConnection::open(addr).await.unwrap();
    conn.connect("client", SocketAddr::from(([192, 0, 2, 25], 40000)))
        .await
        .unwrap();
    conn.mail(["<x@example.net>"]).await.unwrap();
    conn.rcpt(["<y@example.org>"]).await.unwrap();
    conn.header("Subject", " hello").await.unwrap();
    conn.body(vec![b'a'; body_len]).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    status
}

fn http_get(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn metrics_are_served_and_sighup_reloads_keeping_the_old_config_on_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let milter = SocketAddr::new(lo, free_port(lo));
    let metrics = SocketAddr::new(lo, free_port(lo));
    let config = tmp.path().join("milter.toml");
    let write = |cap: &str| {
        std::fs::write(
            &config,
            format!(
                "socket = \"inet:{milter}\"\nauthserv_id = \"mx.test\"\n\
                 state_dir = \"{}\"\n\
                 metrics = \"{metrics}\"\nmax_message_size = \"{cap}\"\n",
                tmp.path().display()
            ),
        )
        .unwrap();
    };
    write("1k");
    let running = Running::start(&config, milter);
    let rt = tokio::runtime::Runtime::new().unwrap();

    assert!(matches!(
        rt.block_on(send(milter, 2000)),
        Status::Reject { .. }
    ));
    assert_eq!(rt.block_on(send(milter, 100)), Status::Continue);
    let page = http_get(metrics);
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(
        page.contains("ibemail_messages_total{outcome=\"rejected\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("ibemail_messages_total{outcome=\"untouched\"} 1"),
        "{page}"
    );
    assert!(
        page.contains("ibemail_processing_seconds_count 2"),
        "{page}"
    );

    // A larger cap after SIGHUP: the same message now passes.
    write("10k");
    running.signal("HUP");
    running.wait_for_log("configuration reloaded");
    assert_eq!(rt.block_on(send(milter, 2000)), Status::Continue);

    // A broken file: logged, and the running configuration stays.
    std::fs::write(&config, "socket = \n").unwrap();
    running.signal("HUP");
    running.wait_for_log("reload failed");
    assert_eq!(rt.block_on(send(milter, 2000)), Status::Continue);
    let page = http_get(metrics);
    assert!(
        page.contains("ibemail_messages_total{outcome=\"untouched\"} 3"),
        "{page}"
    );
    running.terminate();
}

#[test]
fn a_stale_unix_socket_is_replaced_and_other_files_are_not_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("milter.sock");
    // A stale socket: bound, then its listener gone.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = tmp.path().join("milter.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"unix:{}\"\nauthserv_id = \"mx.test\"\nstate_dir = \"{}\"\n",
            socket.display(),
            tmp.path().display()
        ),
    )
    .unwrap();
    let log = tmp.path().join("milter.log");
    let mut child = Command::new(MILTER)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();

    // A regular file where the socket should be is an error, and is kept.
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, "important").unwrap();
    let out = Command::new(MILTER)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "important");
}
