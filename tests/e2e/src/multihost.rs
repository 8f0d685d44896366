//! One domain, several hosts (issue #20): a sending domain and two MX hosts
//! of b.test, each with Postfix and the milter, and two KGC replicas of
//! b.test on hosts of their own, reached over mutual TLS — every host a
//! network namespace on one bridge ([`ibemail_test_support::netns`]).
//!
//! ```text
//!            dns 10.23.0.53 (Knot: test., a.test, b.test with MX mx1, mx2)
//!  a 10.23.0.11 ──SMTP──▶ wire 10.23.0.41 ──▶ mx1 10.23.0.21 ─┐ TLS
//!  (Postfix, milter,      wire 10.23.0.42 ──▶ mx2 10.23.0.22 ─┤ ─▶ kgc1 10.23.0.31 (primary)
//!   a.test's KGC)         (recording relays)                  └ ─▶ kgc2 10.23.0.32 (replica)
//! ```
//!
//! a.test's Postfix finds b.test's two MX hosts of equal preference in DNS
//! (as any sender would) and spreads its deliveries over them; their
//! addresses are relays in a `wire` host that record everything a.test
//! sends (the independent observer). mx1 asks kgc1 first, mx2 kgc2 first.
//! kgc1 is b.test's primary (it publishes the records in Knot), kgc2 a
//! replica set up from `ibemail-kgc export` / `import --role replica`,
//! following kgc1 over mutual TLS. All daemons are the built programs,
//! Postfix and Knot the real ones.
//!
//! [`run`] sends N messages from a.test to bob@b.test, kills mx1's milter
//! and the primary KGC (SIGKILL) while mail flows and starts them again,
//! then checks that every message was delivered exactly once, decrypted,
//! that nothing crossed the wire in clear, and that no queue holds
//! anything; it returns the numbers (messages per second, deferrals,
//! failover time). `tests/multihost.rs` runs it with 1,000 messages,
//! `scripts/soak-multihost` with 10,000.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ibemail_kgc::client::{Endpoint, Endpoints, TlsClientFiles};
use ibemail_kgc::store::{Role, Store};
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::netns::{Lab, Netns};
use ibemail_test_support::postfix::{Postfix, PostfixConfig};
use ibemail_test_support::proxy::Recorder;
use rand_core::{OsRng, RngCore as _};

use crate::{REINJECT_PORT, Users, chown_tree, daemon_bin_dir, milter_config_from_sample, strings};

const fn net(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 23, 0, host)
}

const DNS: Ipv4Addr = net(53);
const A: Ipv4Addr = net(11);
const MX: [Ipv4Addr; 2] = [net(21), net(22)];
const WIRE: [Ipv4Addr; 2] = [net(41), net(42)];
const KGC: [Ipv4Addr; 2] = [net(31), net(32)];
const KGC_PORT: u16 = 4434;
/// The milter's socket, on each host's own loopback.
const MILTER: &str = "127.0.0.1:8895";
/// The milter's metrics, on each host's own loopback.
const METRICS: &str = "127.0.0.1:9100";

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Messages to send.
    pub messages: usize,
    /// SMTP sessions submitting at once to a.test.
    pub sessions: usize,
    /// How long a killed daemon stays down.
    pub outage: Duration,
    /// Give up waiting for the deliveries after this long.
    pub deadline: Duration,
}

impl Plan {
    /// `messages`, 8 sessions, 3 s outages, a deadline that grows with
    /// the number of messages.
    pub fn new(messages: usize) -> Plan {
        Plan {
            messages,
            sessions: 8,
            outage: Duration::from_secs(3),
            deadline: Duration::from_secs(180 + messages as u64 / 10),
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// Messages sent (and delivered).
    pub messages: usize,
    /// From the first submission to the last delivery.
    pub elapsed: Duration,
    /// Delivered per MX host.
    pub per_mx: [usize; 2],
    /// Capsules opened per KGC host (from their audit lines).
    pub opened_per_kgc: [usize; 2],
    /// a.test's deliveries that were deferred (`status=deferred` lines).
    pub deferrals: usize,
    /// Temporary refusals a.test met at an MX host (4xx replies, hosts that
    /// would not talk), each followed by the other MX host or a deferral.
    pub mx_soft_errors: usize,
    /// Submissions a.test answered with 4xx (retried by the sender).
    pub submission_tempfails: u64,
    /// Messages the MX milters deferred (their `tempfail` outcomes).
    pub mx_tempfails: u64,
    /// A request to mx1's KGC list while both KGCs answer.
    pub request_both_up: Duration,
    /// The first request after the primary KGC was killed (fails over).
    pub failover_first: Duration,
    /// The next request (the dead KGC is tried last by then).
    pub failover_next: Duration,
}

impl Report {
    /// Messages per second, end to end.
    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "multi-host run: {} messages in {:.1} s = {:.1} msg/s end to end",
            self.messages,
            self.elapsed.as_secs_f64(),
            self.per_second()
        )?;
        writeln!(
            f,
            "  delivered by mx1 {}, mx2 {}; capsules opened by kgc1 {}, kgc2 {}",
            self.per_mx[0], self.per_mx[1], self.opened_per_kgc[0], self.opened_per_kgc[1]
        )?;
        writeln!(
            f,
            "  deferrals: {} deliveries deferred at a.test ({} temporary refusals by an MX \
             host, the others tried the other MX), {} messages tempfailed by the MX milters, \
             {} submissions tempfailed at a.test",
            self.deferrals, self.mx_soft_errors, self.mx_tempfails, self.submission_tempfails
        )?;
        write!(
            f,
            "  KGC request from mx1: {:.1} ms with both up; {:.1} ms for the first after the \
             primary was killed (failover), {:.1} ms for the next",
            ms(self.request_both_up),
            ms(self.failover_first),
            ms(self.failover_next)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where a daemon answers once it is ready.
enum Ready {
    /// A TCP port in its namespace.
    Tcp(SocketAddr),
    /// A Unix socket (reachable from any namespace).
    Unix(PathBuf),
}

/// A daemon of the lab: how to start it again, and the running process.
struct Daemon {
    ns: Netns,
    program: &'static str,
    args: Vec<String>,
    user: (u32, u32),
    log: PathBuf,
    ready: Ready,
    child: Option<Child>,
}

impl Daemon {
    /// Starts it in its namespace as its user, and waits until it answers.
    fn start(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let program = daemon_bin_dir().join(self.program);
        let mut command = if self.user.0 == ibemail_kgc::accounts::current_uid() {
            self.ns.command(&program)
        } else {
            let mut command = self.ns.command("setpriv");
            command
                .arg(format!("--reuid={}", self.user.0))
                .arg(format!("--regid={}", self.user.1))
                .arg("--clear-groups")
                .arg("--")
                .arg(&program);
            command
        };
        command
            .args(&self.args)
            .env("NO_COLOR", "1")
            .env("IBEMAIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.program));
        let ns = self.ns.clone();
        crate::wait_until_ready(
            &mut child,
            &self.log,
            &format!("{} {}", self.program, self.args.join(" ")),
            || match &self.ready {
                Ready::Tcp(addr) => ns.connect(*addr, Duration::from_millis(200)).is_ok(),
                Ready::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
            },
        );
        self.child = Some(child);
    }

    /// SIGKILL, as a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Some(child) = &mut self.child {
                if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

/// The hosts and daemons of the lab (fields drop in order: daemons and
/// servers first, the namespaces last).
pub struct MultiHost {
    mx_milters: Vec<Daemon>,
    a_milter: Daemon,
    kgcs: Vec<Daemon>,
    a_kgc: Daemon,
    /// a.test's Postfix.
    pub a: Postfix,
    /// b.test's MX hosts' Postfix instances.
    pub mx: Vec<Postfix>,
    wire: Vec<Recorder>,
    _knot: Knot,
    hosts: BTreeMap<&'static str, Netns>,
    _tmp: tempfile::TempDir,
    mx_tls: Vec<TlsClientFiles>,
    _lab: Lab,
}

/// Runs `ibemail-kgc` with `args` (as root, as an administrator would)
/// and returns its standard output.
fn kgc_cli(args: &[&str]) -> String {
    let out = Command::new(daemon_bin_dir().join("ibemail-kgc"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ibemail-kgc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A certificate and key for `name` made with `ibemail-kgc tls-cert`,
/// given to `owner`; returns (cert, key, certificate pin).
fn certificate(dir: &Path, name: &str, owner: (u32, u32)) -> (PathBuf, PathBuf, String) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let printed = kgc_cli(&[
        "tls-cert",
        "--name",
        name,
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    std::os::unix::fs::chown(&key, Some(owner.0), Some(owner.1)).unwrap();
    let pin = printed.lines().next().unwrap().to_string();
    (cert, key, pin)
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

impl MultiHost {
    /// Brings up the lab: namespaces, Knot, the KGCs (b.test's primary
    /// and its replica made by export/import), the milters, Postfix.
    pub fn start() -> MultiHost {
        let lab = Lab::new("t");
        let mut hosts = BTreeMap::new();
        for (name, addresses) in [
            ("dns", vec![DNS]),
            ("a", vec![A]),
            ("wire", WIRE.to_vec()),
            ("mx1", vec![MX[0]]),
            ("mx2", vec![MX[1]]),
            ("kgc1", vec![KGC[0]]),
            ("kgc2", vec![KGC[1]]),
        ] {
            hosts.insert(name, lab.host(name, &addresses));
        }
        // a.test's Postfix finds b.test's MX hosts in DNS.
        lab.set_resolver(&hosts["a"], IpAddr::V4(DNS));
        let tmp = tempfile::Builder::new()
            .prefix("ibemail-multihost")
            .tempdir()
            .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let users = Users::find();
        let dns = SocketAddr::new(IpAddr::V4(DNS), 53);
        let knot = Knot::start_in(
            &hosts["dns"],
            dns,
            &[
                Zone::new("a.test", Signing::Signed, &["mx A 10.23.0.11"]).updatable(),
                Zone::new(
                    "b.test",
                    Signing::Signed,
                    &[
                        "@ MX 10 mx1",
                        "@ MX 10 mx2",
                        "mx1 A 10.23.0.41",
                        "mx2 A 10.23.0.42",
                    ],
                )
                .updatable(),
            ],
        );
        let anchor = tmp.path().join("anchor.txt");
        std::fs::copy(knot.trust_anchor_file(), &anchor).unwrap();
        let tsig = tmp.path().join("update.key");
        std::fs::write(
            &tsig,
            format!(
                "{}:{}:{}\n",
                knot.tsig.algorithm, knot.tsig.name, knot.tsig.secret_base64
            ),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&tsig, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::os::unix::fs::chown(&tsig, Some(users.kgc.0), Some(users.kgc.1)).unwrap();

        // b.test's key store: the primary's, and the replica's from its
        // encrypted export, as an administrator moves it between hosts.
        let policy = Some(ibemail_params::Policy::require(7 * 86_400));
        let primary = tmp.path().join("kgc1-store");
        let mut store = Store::setup(&primary, "b.test", crate::now(), policy, &mut OsRng).unwrap();
        store.set_role(Role::Primary).unwrap();
        let passphrase = tmp.path().join("passphrase");
        std::fs::write(&passphrase, "multi-host lab passphrase\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let export = tmp.path().join("b.test.age");
        kgc_cli(&[
            "export",
            "--dir",
            &s(&primary),
            "--passphrase-file",
            &s(&passphrase),
            "--output",
            &s(&export),
        ]);
        let replica = tmp.path().join("kgc2-store");
        kgc_cli(&[
            "import",
            "--role",
            "replica",
            "--dir",
            &s(&replica),
            "--passphrase-file",
            &s(&passphrase),
            "--input",
            &s(&export),
        ]);
        chown_tree(&primary, users.kgc);
        chown_tree(&replica, users.kgc);
        let a_store = tmp.path().join("kgc-a-store");
        Store::setup(&a_store, "a.test", crate::now(), policy, &mut OsRng).unwrap();
        chown_tree(&a_store, users.kgc);

        // Certificates: one per KGC host and one per MX milter.
        let certs = tmp.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let kgc_certs = [
            certificate(&certs, "kgc1", users.kgc),
            certificate(&certs, "kgc2", users.kgc),
        ];
        let mx_certs = [
            certificate(&certs, "mx1", users.milter),
            certificate(&certs, "mx2", users.milter),
        ];

        let kgc_addr = |i: usize| SocketAddr::new(IpAddr::V4(KGC[i]), KGC_PORT);
        let mut kgcs = Vec::new();
        for i in 0..2 {
            let (cert, key, _) = &kgc_certs[i];
            let mut args = vec![
                "serve".to_string(),
                "--dir".into(),
                s(if i == 0 { &primary } else { &replica }),
                "--tls-listen".into(),
                kgc_addr(i).to_string(),
                "--tls-cert".into(),
                s(cert),
                "--tls-key".into(),
                s(key),
            ];
            for (_, _, pin) in &mx_certs {
                args.extend(["--allow-cert".into(), format!("{pin}=open+sign")]);
            }
            if i == 0 {
                args.extend([
                    "--allow-cert".into(),
                    format!("{}=replica", kgc_certs[1].2),
                    "--publish-server".into(),
                    dns.to_string(),
                    "--publish-tsig-key".into(),
                    s(&tsig),
                    "--publish-ttl".into(),
                    "2".into(),
                ]);
            } else {
                args.extend([
                    "--replica-of".into(),
                    format!("tls:{}", kgc_addr(0)),
                    "--primary-cert".into(),
                    kgc_certs[0].2.clone(),
                    "--sync-interval".into(),
                    "2s".into(),
                ]);
            }
            let mut daemon = Daemon {
                ns: hosts[["kgc1", "kgc2"][i]].clone(),
                program: "ibemail-kgc",
                args,
                user: users.kgc,
                log: tmp.path().join(format!("kgc{}.log", i + 1)),
                ready: Ready::Tcp(kgc_addr(i)),
                child: None,
            };
            daemon.start();
            kgcs.push(daemon);
        }

        // a.test: its KGC on a Unix socket, publishing to Knot.
        let run_a = tmp.path().join("run-a");
        std::fs::create_dir(&run_a).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&run_a, std::fs::Permissions::from_mode(0o750)).unwrap();
        }
        chown_tree(&run_a, users.kgc);
        let a_socket = run_a.join("kgc.sock");
        let mut a_kgc = Daemon {
            ns: hosts["a"].clone(),
            program: "ibemail-kgc",
            args: vec![
                "serve".into(),
                "--dir".into(),
                s(&a_store),
                "--socket".into(),
                s(&a_socket),
                "--socket-mode".into(),
                "660".into(),
                "--allow-uid".into(),
                users.milter.0.to_string(),
                "--publish-server".into(),
                dns.to_string(),
                "--publish-tsig-key".into(),
                s(&tsig),
                "--publish-ttl".into(),
                "2".into(),
            ],
            user: users.kgc,
            log: tmp.path().join("kgc-a.log"),
            ready: Ready::Unix(a_socket.clone()),
            child: None,
        };
        a_kgc.start();
        // Both domains' records are published by their KGCs.
        for zone in ["a.test", "b.test"] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while knot.query_txt(&format!("_ibemailkey.{zone}")).is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{zone}'s record was not published:\n{}\n{}",
                    a_kgc.log(),
                    kgcs[0].log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        // The milters.
        let common = |name: &str, ip: Ipv4Addr, state: &Path| {
            vec![
                ("socket", toml::Value::from(format!("inet:{MILTER}"))),
                ("authserv_id", format!("{name}.test-mx").into()),
                ("internal_networks", strings(&[format!("{ip}/32")])),
                ("state_dir", s(state).into()),
                ("dns.resolvers", strings(&[dns.to_string()])),
                ("dns.max_cache", "1d".into()),
                ("dns.trust_anchor", s(&anchor).into()),
                ("dns.timeout", "2s".into()),
                ("reinject.address", format!("{ip}:{REINJECT_PORT}").into()),
                ("reinject.helo", format!("{name}.test-mx").into()),
                ("signing.sign", "never".into()),
                ("metrics", METRICS.into()),
            ]
        };
        let milter_daemon = |host: &str, settings: Vec<(&str, toml::Value)>| {
            let config = tmp.path().join(format!("milter-{host}.toml"));
            let mut text: toml::Table = milter_config_from_sample(&settings, "").parse().unwrap();
            // An MX host has endpoints instead of the sample's local socket.
            if settings.iter().any(|(k, _)| *k == "kgc.endpoints")
                && let Some(kgc) = text.get_mut("kgc").and_then(|t| t.as_table_mut())
            {
                kgc.remove("socket");
            }
            std::fs::write(&config, toml::to_string(&text).unwrap()).unwrap();
            Daemon {
                ns: hosts[host].clone(),
                program: "ibemail-milter",
                args: vec!["run".into(), "--config".into(), s(&config)],
                user: users.milter,
                log: tmp.path().join(format!("milter-{host}.log")),
                ready: Ready::Tcp(MILTER.parse().unwrap()),
                child: None,
            }
        };
        let state = |host: &str| {
            let dir = tmp.path().join(format!("milter-state-{host}"));
            std::fs::create_dir(&dir).unwrap();
            chown_tree(&dir, users.milter);
            dir
        };
        let mut settings = common("a", A, &state("a"));
        settings.extend([
            ("local_domains", strings(&["a.test".into()])),
            ("kgc.socket", s(&a_socket).into()),
            ("kgc.timeout", "3s".into()),
        ]);
        let mut a_milter = milter_daemon("a", settings);
        a_milter.start();
        let mut mx_milters = Vec::new();
        let mut mx_tls = Vec::new();
        for i in 0..2 {
            let host = ["mx1", "mx2"][i];
            // Each MX asks "its" KGC first, the other one when it fails.
            let order = [kgc_addr(i), kgc_addr(1 - i)];
            let tls = TlsClientFiles {
                cert: mx_certs[i].0.clone(),
                key: mx_certs[i].1.clone(),
                servers: kgc_certs.iter().map(|c| c.2.parse().unwrap()).collect(),
            };
            let mut settings = common(host, MX[i], &state(host));
            settings.extend([
                ("local_domains", strings(&["b.test".into()])),
                ("kgc.endpoints", strings(&order.map(|a| format!("tls:{a}")))),
                ("kgc.tls_cert", s(&tls.cert).into()),
                ("kgc.tls_key", s(&tls.key).into()),
                (
                    "kgc.tls_server_fingerprints",
                    strings(&kgc_certs.iter().map(|c| c.2.clone()).collect::<Vec<_>>()),
                ),
                ("kgc.timeout", "4s".into()),
            ]);
            let mut milter = milter_daemon(host, settings);
            milter.start();
            mx_milters.push(milter);
            mx_tls.push(tls);
        }

        // The observer: a.test's deliveries to mx1 and mx2 pass through it.
        let wire = (0..2)
            .map(|i| {
                let (listen, target) = (
                    SocketAddr::new(IpAddr::V4(WIRE[i]), 25),
                    SocketAddr::new(IpAddr::V4(MX[i]), 25),
                );
                hosts["wire"].run(|| Recorder::start(listen, target))
            })
            .collect();

        // Postfix: a.test delivers by MX lookups; the MX hosts by virtual(8).
        let milter = format!("inet:{MILTER}");
        let a = Postfix::start_in(
            PostfixConfig {
                name: "a".into(),
                domain: "a.test".into(),
                ip: IpAddr::V4(A),
                users: vec!["alice".into()],
                milters: vec![milter.clone()],
                transports: Vec::new(),
                reinject_port: Some(REINJECT_PORT),
                reinject_milter: Some(milter.clone()),
                extra: vec![
                    "smtp_dns_support_level = enabled".into(),
                    "smtp_host_lookup = dns".into(),
                    "smtp_connect_timeout = 2s".into(),
                    // Each delivery picks one of the equal MX hosts at
                    // random; cached sessions would stick to the host
                    // that answered last, and after an outage send
                    // everything to the other.
                    "smtp_connection_cache_on_demand = no".into(),
                ],
            },
            &hosts["a"],
        );
        let mx = (0..2)
            .map(|i| {
                Postfix::start_in(
                    PostfixConfig {
                        name: ["mx1", "mx2"][i].into(),
                        domain: "b.test".into(),
                        ip: IpAddr::V4(MX[i]),
                        users: vec!["bob".into()],
                        milters: vec![milter.clone()],
                        transports: Vec::new(),
                        reinject_port: Some(REINJECT_PORT),
                        reinject_milter: Some(milter.clone()),
                        extra: Vec::new(),
                    },
                    &hosts[["mx1", "mx2"][i]],
                )
            })
            .collect();
        MultiHost {
            mx_milters,
            a_milter,
            kgcs,
            a_kgc,
            a,
            mx,
            wire,
            _knot: knot,
            hosts,
            _tmp: tmp,
            mx_tls,
            _lab: lab,
        }
    }

    /// Messages in bob's Maildir at each MX host.
    fn delivered_counts(&self) -> [usize; 2] {
        let count = |p: &Postfix| {
            std::fs::read_dir(p.dir().join("mail/b.test/bob/new"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        [count(&self.mx[0]), count(&self.mx[1])]
    }

    /// The sum of a milter counter at `host`.
    fn milter_counter(&self, host: &str, series: &str) -> u64 {
        let ns = &self.hosts[host];
        let Ok(mut stream) = ns.connect(METRICS.parse().unwrap(), Duration::from_secs(2)) else {
            return 0;
        };
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut page = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut page);
        page.lines()
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<u64>().ok())
            .sum()
    }

    /// The time one HELLO takes through mx1's list of KGCs, from mx1's
    /// namespace, with the client state carried across calls.
    fn probe(&self, client: &ibemail_kgc::client::KgcClient) -> Duration {
        self.hosts["mx1"].run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let started = Instant::now();
            let served = rt.block_on(client.hello());
            assert!(served.is_ok(), "{served:?}");
            started.elapsed()
        })
    }

    fn probe_client(&self) -> ibemail_kgc::client::KgcClient {
        Endpoints {
            endpoints: (0..2)
                .map(|i| Endpoint::Tls {
                    host: KGC[i].to_string(),
                    port: KGC_PORT,
                })
                .collect(),
            spread: false,
            tls: Some(self.mx_tls[0].clone()),
        }
        .client(Duration::from_secs(4))
        .unwrap()
    }

    /// Everything the daemons logged, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for d in self
            .kgcs
            .iter()
            .chain(self.mx_milters.iter())
            .chain([&self.a_milter, &self.a_kgc])
        {
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                d.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        for p in std::iter::once(&self.a).chain(self.mx.iter()) {
            out.push_str(&format!(
                "--- postfix {} ---\n{}\n",
                p.config.name,
                p.log_tail(15)
            ));
        }
        out
    }
}

/// One SMTP reply: its code and text.
fn reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        text.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, text));
        }
    }
}

/// The body token of message `i` of run `run`: it must never cross the
/// wire in clear, and must be in the delivered message.
fn token(run: &str, i: usize, secret: &str) -> String {
    format!("secret-{run}-{i}-{secret}")
}

/// Submits messages `indices` to a.test over one SMTP session from a.test's
/// own address (an internal client), retrying those answered with 4xx
/// until `deadline`.
fn submit(
    ns: &Netns,
    server: SocketAddr,
    run: &str,
    indices: Vec<usize>,
    secrets: &[String],
    tempfails: &AtomicU64,
    deadline: Instant,
) {
    ns.run(|| {
        let connect = || {
            let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(120)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (code, text) = reply(&mut reader).unwrap();
            assert_eq!(code, 220, "{text}");
            let mut writer = stream;
            writer.write_all(b"EHLO load.a.test\r\n").unwrap();
            let (code, text) = reply(&mut reader).unwrap();
            assert_eq!(code, 250, "{text}");
            (reader, writer)
        };
        let (mut reader, mut writer) = connect();
        for i in indices {
            let message = format!(
                "From: alice@a.test\r\nTo: bob@b.test\r\nSubject: multihost {i}\r\n\
                 Date: Mon, 23 Nov 2026 09:00:00 +0000\r\nMessage-ID: <mh-{run}-{i}@a.test>\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
                 token: {}\r\n{}",
                token(run, i, &secrets[i]),
                "The quick brown fox jumps over the lazy dog. 0123456789\r\n".repeat(24)
            );
            loop {
                let mut step = |command: &[u8], want: u16| -> Result<(), u16> {
                    writer.write_all(command).map_err(|_| 0u16)?;
                    let (code, _) = reply(&mut reader).map_err(|_| 0u16)?;
                    if code == want { Ok(()) } else { Err(code) }
                };
                let sent = step(b"MAIL FROM:<alice@a.test>\r\n", 250)
                    .and_then(|()| step(b"RCPT TO:<bob@b.test>\r\n", 250))
                    .and_then(|()| step(b"DATA\r\n", 354))
                    .and_then(|()| {
                        let mut data = message.clone().into_bytes();
                        data.extend_from_slice(b".\r\n");
                        step(&data, 250)
                    });
                match sent {
                    Ok(()) => break,
                    Err(code) if (400..500).contains(&code) || code == 0 => {
                        assert!(
                            Instant::now() < deadline,
                            "a.test still answers {code} to message {i}"
                        );
                        tempfails.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(200));
                        let (r, w) = connect();
                        reader = r;
                        writer = w;
                    }
                    Err(code) => panic!("a.test refused message {i} with {code}"),
                }
            }
        }
        let _ = writer.write_all(b"QUIT\r\n");
    });
}

/// Sends `plan.messages` messages through the lab, kills and restarts mx1's
/// milter and the primary KGC on the way, checks every message and
/// returns the numbers.
pub fn run(plan: &Plan) -> Report {
    let lab = MultiHost::start();
    let n = plan.messages;
    let mut run_id = [0u8; 4];
    OsRng.fill_bytes(&mut run_id);
    let run: String = run_id.iter().map(|b| format!("{b:02x}")).collect();
    let secrets: Vec<String> = (0..n)
        .map(|_| {
            let mut b = [0u8; 6];
            OsRng.fill_bytes(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect()
        })
        .collect();
    let probe = lab.probe_client();
    let request_both_up = lab.probe(&probe);

    let tempfails = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let submitted = Arc::new(AtomicUsize::new(0));
    let mut lab = lab;
    let (failover_first, failover_next) = std::thread::scope(|scope| {
        let server = lab.a.smtp();
        let ns = lab.hosts["a"].clone();
        let deadline = started + plan.deadline;
        for session in 0..plan.sessions {
            let indices: Vec<usize> = (session..n).step_by(plan.sessions).collect();
            let (ns, run, secrets, tempfails, submitted) = (
                ns.clone(),
                &run,
                &secrets,
                tempfails.clone(),
                submitted.clone(),
            );
            scope.spawn(move || {
                let count = indices.len();
                submit(&ns, server, run, indices, secrets, &tempfails, deadline);
                submitted.fetch_add(count, Ordering::Relaxed);
            });
        }
        let wait_for = |lab: &MultiHost, count: usize, what: &str| loop {
            let [one, two] = lab.delivered_counts();
            if one + two >= count {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {n} delivered after {:?}\n{}",
                one + two,
                plan.deadline,
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // A quarter through: mx1's milter crashes, and comes back.
        wait_for(&lab, n / 4, "before the milter crash");
        lab.mx_milters[0].kill();
        std::thread::sleep(plan.outage);
        lab.mx_milters[0].start();
        // Over half through: the primary KGC crashes, and comes back.
        wait_for(&lab, n * 3 / 5, "before the KGC crash");
        lab.kgcs[0].kill();
        let failover_first = lab.probe(&probe);
        let failover_next = lab.probe(&probe);
        std::thread::sleep(plan.outage);
        lab.kgcs[0].start();
        wait_for(&lab, n, "the deliveries");
        (failover_first, failover_next)
    });
    let elapsed = started.elapsed();
    assert_eq!(submitted.load(Ordering::Relaxed), n);

    // Nothing is left in any queue (deferred, held or active).
    let deadline = Instant::now() + Duration::from_secs(30);
    for postfix in std::iter::once(&lab.a).chain(lab.mx.iter()) {
        while !postfix.queue().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{}'s queue: {:?}",
                postfix.config.name,
                postfix.queue()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Every message delivered exactly once, decrypted.
    let mut seen = vec![0usize; n];
    let per_mx = lab.delivered_counts();
    for postfix in &lab.mx {
        let dir = postfix.dir().join("mail/b.test/bob/new");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(
                !text.contains("application/pkcs7-mime"),
                "delivered still encrypted:\n{text}"
            );
            let i: usize = crate::mail::field(&text, "Subject")
                .first()
                .and_then(|s| s.strip_prefix("multihost "))
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("not one of ours:\n{text}"));
            assert!(
                text.contains(&format!("token: {}", token(&run, i, &secrets[i]))),
                "message {i} lacks its body:\n{text}"
            );
            seen[i] += 1;
        }
    }
    let missing: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).collect();
    let twice: Vec<usize> = (0..n).filter(|&i| seen[i] > 1).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert!(
        per_mx[0] > 0 && per_mx[1] > 0,
        "both MX hosts take mail: {per_mx:?}"
    );

    // Nothing crossed the wire in clear: no body token, no subject, and
    // every message went as S/MIME.
    let mut smime = 0;
    for recorder in &lab.wire {
        let seen = recorder.seen();
        let text = String::from_utf8_lossy(&seen);
        assert!(
            !text.contains(&format!("secret-{run}-")),
            "a message body crossed the wire in clear"
        );
        assert!(
            !text.contains("Subject: multihost"),
            "a subject crossed the wire in clear"
        );
        smime += text.matches("application/pkcs7-mime").count();
    }
    assert!(smime >= n, "{smime} S/MIME messages on the wire for {n}");

    let opened = |d: &Daemon| {
        d.log()
            .lines()
            .filter(|l| l.contains("key use: open") && l.contains("outcome=opened"))
            .count()
    };
    let opened_per_kgc = [opened(&lab.kgcs[0]), opened(&lab.kgcs[1])];
    assert!(
        opened_per_kgc[0] > 0 && opened_per_kgc[1] > 0,
        "both KGC replicas open capsules: {opened_per_kgc:?}"
    );
    assert!(
        opened_per_kgc[0] + opened_per_kgc[1] >= n,
        "{opened_per_kgc:?} capsules opened for {n} messages"
    );
    let a_log = lab.a.log();
    let deferrals = a_log
        .lines()
        .filter(|l| l.contains("status=deferred"))
        .count();
    let mx_soft_errors = a_log
        .lines()
        .filter(|l| {
            l.contains(" said: 4")
                || l.contains("refused to talk to me: 4")
                || l.contains("lost connection with mx")
        })
        .count();

    let mx_tempfails = ["mx1", "mx2"]
        .iter()
        .map(|h| lab.milter_counter(h, "ibemail_messages_total{outcome=\"tempfail\"}"))
        .sum();
    let report = Report {
        messages: n,
        elapsed,
        per_mx,
        opened_per_kgc,
        deferrals,
        mx_soft_errors,
        submission_tempfails: tempfails.load(Ordering::Relaxed),
        mx_tempfails,
        request_both_up,
        failover_first,
        failover_next,
    };
    drop(lab);
    report
}
