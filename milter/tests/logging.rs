//! What `ibemail-milter run` writes to its log when it is not on a
//! terminal (the journal, a file): no colour codes, text or JSON lines as
//! configured, and a warning when a reload cannot apply a setting.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibemail_test_support::free_port;

const MILTER: &str = env!("CARGO_BIN_EXE_ibemail-milter");

struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Running {
    /// Starts the milter with its standard error in a file (not a
    /// terminal), NO_COLOR unset, and `args` after `run --config FILE`.
    fn start(config: &Path, addr: SocketAddr, args: &[&str]) -> Running {
        let log = config.with_extension("log");
        let child = Command::new(MILTER)
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("IBEMAIL_LOG_FORMAT")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let running = Running { child, log };
        running.wait_for(|| TcpStream::connect(addr).is_ok(), "the socket");
        // The socket accepts a moment before the start is logged.
        running.wait_for(
            || running.log().contains("ibemail-milter started"),
            "the start line",
        );
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, done: impl Fn() -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "no {what}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, addr: SocketAddr, extra: &str) -> std::path::PathBuf {
    let path = dir.join("milter.toml");
    std::fs::write(
        &path,
        // state_dir first: `extra` may open tables.
        format!(
            "socket = \"inet:{addr}\"\nauthserv_id = \"mx.test\"\nstate_dir = \"{}\"\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn loopback_port() -> SocketAddr {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    SocketAddr::new(lo, free_port(lo))
}

#[test]
fn text_lines_are_plain_off_a_terminal_and_a_reload_names_what_needs_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let addr = loopback_port();
    let path = config(tmp.path(), addr, "");
    let running = Running::start(&path, addr, &[]);
    let log = running.log();
    assert!(log.contains("ibemail-milter started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );

    // Adding metrics needs a restart: the reload says so and keeps going.
    let metrics = loopback_port();
    config(tmp.path(), addr, &format!("metrics = \"{metrics}\"\n"));
    Command::new("kill")
        .args(["-HUP", &running.child.id().to_string()])
        .status()
        .unwrap();
    running.wait_for(
        || running.log().contains("configuration reloaded"),
        "reload",
    );
    let log = running.log();
    assert!(
        log.contains(&format!("metrics changed from unset to {metrics}"))
            && log.contains("restart the milter"),
        "{log}"
    );
    assert!(
        TcpStream::connect(metrics).is_err(),
        "not bound by a reload"
    );
}

#[test]
fn json_lines_from_the_configuration_or_the_command_line() {
    for (extra, args) in [
        ("[log]\nformat = \"json\"\n", &[][..]),
        ("", &["--log-format", "json"][..]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let addr = loopback_port();
        let path = config(tmp.path(), addr, extra);
        let running = Running::start(&path, addr, args);
        let log = running.log();
        let started = log
            .lines()
            .find(|l| l.contains("ibemail-milter started"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            started.starts_with('{') && started.ends_with('}'),
            "{started}"
        );
        for field in [
            "\"level\":\"INFO\"",
            "\"message\":\"ibemail-milter started\"",
            &format!("\"socket\":\"inet:{addr}\""),
        ] {
            assert!(started.contains(field), "{field} in {started}");
        }
        assert!(!log.contains('\u{1b}'), "{log:?}");
    }
}
