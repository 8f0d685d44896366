//! OpenDKIM's `miltertest` (Debian package `miltertest`) as the MTA: the Lua
//! scripts in `tests/miltertest/` drive the real `ibemail-milter run`
//! binary, with a real DNS server (Knot) publishing the recipient domain's
//! parameters and a real key store opening inbound mail.
//!
//! Each script is also run where it must fail, so a script that checks
//! nothing would be caught.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ibemail_kgc::store::Store;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::{free_port, require_program};
use rand_core::OsRng;

const MILTER: &str = env!("CARGO_BIN_EXE_ibemail-milter");

const ORIGINAL_BODY: &str = "The merger closes on Friday.\r\n.leading dot\r\n\r\nBye\r\n";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/miltertest")
        .join(name)
}

/// `ibemail-milter run --config FILE` on a free loopback port, stopped with
/// SIGTERM (and killed if a test panics first).
struct RunningMilter {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl RunningMilter {
    /// Writes `settings` (everything but `socket`) to a configuration file
    /// in `dir` and starts the milter on it; returns once it accepts
    /// connections.
    fn start(dir: &Path, name: &str, settings: &str) -> RunningMilter {
        let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "socket = \"inet:127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{settings}",
                dir.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(MILTER)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("IBEMAIL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut milter = RunningMilter {
            child: Some(child),
            port,
            log,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return milter;
            }
            let exited = milter.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the milter did not start ({exited:?}):\n{}",
                milter.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The socket in miltertest's notation.
    fn socket(&self) -> String {
        format!("inet:{}@127.0.0.1", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as systemd stops it: the milter must exit 0 after finishing
    /// what it has in progress.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the milter ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "the milter exited with {status} after SIGTERM:\n{}",
            self.log()
        );
    }
}

impl Drop for RunningMilter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `miltertest -s SCRIPT -D name=value...`.
fn miltertest(script_name: &str, defines: &[(&str, String)]) -> Output {
    let program = require_program("miltertest", "miltertest");
    let mut command = Command::new(program);
    command.arg("-s").arg(script(script_name));
    for (name, value) in defines {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    command.stdin(Stdio::null()).output().unwrap()
}

fn describe(output: &Output, milter: &RunningMilter) -> String {
    format!(
        "miltertest exited with {}\n--- stdout\n{}--- stderr\n{}--- milter log\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        milter.log()
    )
}

#[test]
fn encrypt_script_sees_the_message_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Store::setup(
        &tmp.path().join("b.test"),
        "b.test",
        now(),
        None,
        &mut OsRng,
    )
    .unwrap();
    let record = format!("_ibemailkey TXT \"{}\"", b.records()[0].to_text());
    let knot = Knot::start(&[
        Zone::new("b.test", Signing::Signed, &[&record]),
        Zone::new("c.test", Signing::Signed, &["www A 127.0.0.1"]),
    ]);
    let milter = RunningMilter::start(
        tmp.path(),
        "sender",
        &format!(
            "authserv_id = \"mx.a.test\"\n\
             [dns]\nresolvers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout = \"2s\"\n",
            knot.addr,
            knot.trust_anchor_file().display()
        ),
    );

    let output = miltertest("encrypt.lua", &[("socket", milter.socket())]);
    assert!(output.status.success(), "{}", describe(&output, &milter));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("encrypt: sealed for bob@b.test"),
        "{}",
        describe(&output, &milter)
    );

    // c.test publishes no parameters: the message passes unchanged, and the
    // script must say so.
    let output = miltertest(
        "encrypt.lua",
        &[("socket", milter.socket()), ("rcpt", "carol@c.test".into())],
    );
    assert!(!output.status.success(), "{}", describe(&output, &milter));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the message was not encrypted"),
        "{}",
        describe(&output, &milter)
    );
    let log = milter.log();
    assert!(log.contains("MT1ENCRYPT"), "the queue id is logged:\n{log}");
    milter.stop();
}

#[test]
fn decrypt_script_sees_the_message_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b.test");
    let b = Store::setup(&b_dir, "b.test", now(), None, &mut OsRng).unwrap();
    let original = format!(
        "From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\nSubject: the merger\r\n\
         Message-ID: <mt2@a.test>\r\nDate: Mon, 23 Nov 2026 09:00:00 +0000\r\n\r\n{ORIGINAL_BODY}"
    );
    // Sealed offline, as a.test's milter would have (the paper's encrypter).
    let sealed = assert_cmd::Command::new(MILTER)
        .args(["encrypt", "--rcpt", "bob@b.test", "--record"])
        .arg(b.records()[0].to_text())
        .write_stdin(original)
        .output()
        .unwrap();
    assert!(
        sealed.status.success(),
        "{}",
        String::from_utf8_lossy(&sealed.stderr)
    );
    let message = tmp.path().join("sealed.eml");
    std::fs::write(&message, &sealed.stdout).unwrap();
    let expect = tmp.path().join("original-body.txt");
    std::fs::write(&expect, ORIGINAL_BODY).unwrap();

    let milter = RunningMilter::start(
        tmp.path(),
        "receiver",
        &format!(
            "authserv_id = \"mx.b.test\"\nlocal_domains = [\"b.test\"]\n\
             [kgc]\ndir = \"{}\"\n",
            b_dir.display()
        ),
    );
    let defines = [
        ("socket", milter.socket()),
        ("message", message.display().to_string()),
        ("expect", expect.display().to_string()),
    ];
    let output = miltertest("decrypt.lua", &defines);
    assert!(output.status.success(), "{}", describe(&output, &milter));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("decrypt: opened for bob@b.test"),
        "{}",
        describe(&output, &milter)
    );

    // The script compares the restored body byte for byte.
    let wrong = tmp.path().join("other-body.txt");
    std::fs::write(&wrong, ORIGINAL_BODY.replace("Friday", "Monday")).unwrap();
    let output = miltertest(
        "decrypt.lua",
        &[
            defines[0].clone(),
            defines[1].clone(),
            ("expect", wrong.display().to_string()),
        ],
    );
    assert!(!output.status.success(), "{}", describe(&output, &milter));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not by the original body"),
        "{}",
        describe(&output, &milter)
    );
    // Sealed for bob, delivered to carol@b.test: not hers to open.
    let output = miltertest(
        "decrypt.lua",
        &[
            defines[0].clone(),
            defines[1].clone(),
            defines[2].clone(),
            ("rcpt", "carol@b.test".into()),
        ],
    );
    assert!(!output.status.success(), "{}", describe(&output, &milter));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("was not decrypted"),
        "{}",
        describe(&output, &milter)
    );
    milter.stop();
}
