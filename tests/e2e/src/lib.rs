//! # ibemail-e2e
//!
//! The whole system on one machine, torn down on drop:
//!
//! - Knot DNS serving the signed parent `test.` (trust anchor) and the
//!   signed, dynamically updatable zones `a.test` and `b.test`, whose
//!   `_ibemailkey` records are published by `ibemail-kgc publish`'s code
//!   (RFC 2136 + TSIG); `c.test` publishes nothing;
//! - for `a.test` and `b.test`: a KGC store, the KGC daemon on a Unix socket,
//!   the milter (asking the daemon to open capsules) and a Postfix instance
//!   with the milter in `smtpd_milters` and `non_smtpd_milters`
//!   (`milter_default_action = tempfail`) and a re-injection listener;
//! - `c.test`: a Postfix without ibemail;
//! - a recording relay between `a.test` and `b.test`: an independent
//!   observer of what crosses the wire.
//!
//! Each [`World`] takes its own `127.0.N.0/24` block, so tests can run in
//! parallel. By default ([`Daemons::Processes`]) the KGC daemons and milters
//! are the built programs, `ibemail-kgc serve` and `ibemail-milter run
//! --config FILE`, each a child process with a configuration written from
//! the packaged sample, and, when the tests run as root and the packages'
//! accounts exist, as the users `ibemail-kgc` and `ibemail`. The binaries
//! are found next to the test executable (`target/<profile>/`, built by
//! `cargo build -p ibemail-milter -p ibemail-kgc`, which `scripts/test`
//! runs first) or in `IBEMAIL_BIN_DIR`. [`Daemons::InProcess`] runs the same
//! library code on the world's runtime instead. Postfix, Knot and swaks are
//! always the real programs.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ibemail_kgc::publish::{UpdateTarget, publish};
use ibemail_kgc::server::{ServerConfig, serve};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_kgc::tsig::TsigKey;
use ibemail_milter::config::Config;
use ibemail_milter::engine::{Engine, Kind};
use ibemail_milter::metrics::Metrics;
use ibemail_test_support::dnsproxy::DnsProxy;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::opendkim::OpenDkim;
use ibemail_test_support::postfix::{Postfix, PostfixConfig};
use ibemail_test_support::proxy::Recorder;
use rand_core::OsRng;
use tokio::runtime::Runtime;

pub use ibemail_test_support::postfix;

pub mod fault;
pub mod mail;
pub mod multihost;

/// Port of the re-injection listener on every instance.
pub const REINJECT_PORT: u16 = 10026;

/// The authserv-id of b.test's OpenDKIM (its own, not the milter's), which
/// b.test's milter trusts.
pub const DKIM_AUTHSERV_ID: &str = "dkim.mx.b.test";

static NEXT_BLOCK: AtomicU8 = AtomicU8::new(0);

/// Claims a free `127.0.N.0/24` block, also against other processes (test
/// binaries and demos running at once): a lock file per block, held for the
/// life of the world.
fn claim_block() -> (u8, std::fs::File) {
    for _ in 0..=160 {
        let block = 10 + NEXT_BLOCK.fetch_add(1, Ordering::Relaxed) % 160;
        let path = std::env::temp_dir().join(format!("ibemail-e2e-block-{block}.lock"));
        let Ok(file) = std::fs::File::create(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            return (block, file);
        }
    }
    panic!("no free 127.0.N.0/24 block for an e2e world");
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A task on the world's runtime that can be stopped and started again.
struct Task {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Task {
    fn stop(&mut self, rt: &Runtime) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = rt.block_on(handle);
        }
    }
}

/// How the KGC daemons and the milters run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Daemons {
    /// The built binaries as child processes, configured from files, as
    /// the packaged users where they exist: what administrators run.
    #[default]
    Processes,
    /// The same library code as tasks in this process.
    InProcess,
}

/// A daemon of a domain: a task here, or a child process.
enum Daemon {
    Task(Task),
    Process(Child),
    Stopped,
}

impl Daemon {
    /// Stops it: the task ends, the process gets SIGTERM and is waited for
    /// (SIGKILL after 20 s).
    fn stop(&mut self, rt: &Runtime) {
        match std::mem::replace(self, Daemon::Stopped) {
            Daemon::Task(mut task) => task.stop(rt),
            Daemon::Process(mut child) => {
                signal(child.id(), "TERM");
                let deadline = Instant::now() + Duration::from_secs(20);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            Daemon::Stopped => {}
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Daemon::Process(child) => Some(child.id()),
            _ => None,
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Who runs the daemons of a process-mode world.
#[derive(Clone, Copy, Debug)]
struct Users {
    /// The KGC daemon's uid and gid (the shared group).
    kgc: (u32, u32),
    /// The milter's uid and gid.
    milter: (u32, u32),
}

impl Users {
    /// The packages' accounts when this process may switch to them, else
    /// this process's own user for both.
    fn find() -> Users {
        use ibemail_kgc::accounts::{by_name, current_uid};
        let me = current_uid();
        let own = (me, rustix::process::getegid().as_raw());
        match (me, by_name("ibemail-kgc"), by_name("ibemail")) {
            (0, Some(kgc), Some(milter)) => Users {
                kgc: (kgc.uid, milter.gid),
                milter: (milter.uid, milter.gid),
            },
            _ => Users {
                kgc: own,
                milter: own,
            },
        }
    }
}

/// Where the built `ibemail-kgc` and `ibemail-milter` are: `IBEMAIL_BIN_DIR`,
/// or the profile directory of this executable (`target/<profile>/`, or its
/// parent for tests in `target/<profile>/deps/`).
pub fn bin_dir() -> PathBuf {
    let has_both =
        |dir: &Path| dir.join("ibemail-kgc").exists() && dir.join("ibemail-milter").exists();
    if let Some(dir) = std::env::var_os("IBEMAIL_BIN_DIR") {
        let dir = PathBuf::from(dir);
        assert!(
            has_both(&dir),
            "IBEMAIL_BIN_DIR={} lacks ibemail-kgc or ibemail-milter",
            dir.display()
        );
        return dir;
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .find(|dir| has_both(dir))
        .map(Path::to_path_buf)
        .unwrap_or_else(|| {
            panic!(
                "ibemail-kgc and ibemail-milter are not built next to {}: run \
                 `cargo build -p ibemail-milter -p ibemail-kgc` (scripts/test does), or set \
                 IBEMAIL_BIN_DIR",
                exe.display()
            )
        })
}

/// [`bin_dir`], or, when a directory on the way to it is closed to other
/// users (a checkout under /root), a world-readable copy of the two
/// binaries in the temporary directory (one per build directory, refreshed
/// when the build is newer), so the daemons' users can run them.
fn daemon_bin_dir() -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    use std::os::unix::fs::PermissionsExt as _;
    static STAGED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    STAGED
        .get_or_init(|| {
            let dir = bin_dir().canonicalize().unwrap();
            let open = dir
                .ancestors()
                .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
            if open {
                return dir;
            }
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            dir.hash(&mut hasher);
            let staged =
                std::env::temp_dir().join(format!("ibemail-e2e-bin-{:x}", hasher.finish()));
            std::fs::create_dir_all(&staged).unwrap();
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
            for program in ["ibemail-kgc", "ibemail-milter"] {
                let (from, to) = (dir.join(program), staged.join(program));
                let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
                if modified(&to) < modified(&from) {
                    // Copy beside, then rename: other test processes may be
                    // starting the old copy right now.
                    let temp = staged.join(format!(".{program}.{}", std::process::id()));
                    std::fs::copy(&from, &temp).unwrap();
                    std::fs::rename(&temp, &to).unwrap();
                }
            }
            staged
        })
        .clone()
}

/// The milter's counters: read in this process, or from the process's
/// Prometheus endpoint.
#[derive(Clone)]
pub enum MetricsView {
    /// The in-process milter's.
    Local(Arc<Metrics>),
    /// `ibemail-milter run`'s `metrics` endpoint.
    Remote(SocketAddr),
}

impl MetricsView {
    /// The Prometheus text.
    pub fn render(&self) -> String {
        match self {
            MetricsView::Local(m) => m.render(),
            MetricsView::Remote(addr) => {
                use std::io::{Read as _, Write as _};
                let mut stream = std::net::TcpStream::connect(addr)
                    .unwrap_or_else(|e| panic!("metrics at {addr}: {e}"));
                stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                let mut page = String::new();
                stream.read_to_string(&mut page).unwrap();
                page.split_once("\r\n\r\n")
                    .map(|(_, body)| body.to_string())
                    .unwrap_or_default()
            }
        }
    }

    fn counter(&self, series: &str) -> u64 {
        self.render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Messages processed with outcome `kind`.
    pub fn messages(&self, kind: Kind) -> u64 {
        match self {
            MetricsView::Local(m) => m.messages(kind),
            MetricsView::Remote(_) => self.counter(&format!(
                "ibemail_messages_total{{outcome=\"{}\"}}",
                kind.label()
            )),
        }
    }

    /// Inbound messages whose signature result was `word`.
    pub fn signature_results(&self, word: &str) -> u64 {
        match self {
            MetricsView::Local(m) => m.signature_results(word),
            MetricsView::Remote(_) => self.counter(&format!(
                "ibemail_signature_results_total{{result=\"{word}\"}}"
            )),
        }
    }

    /// Signatures made.
    pub fn signatures_made(&self) -> u64 {
        match self {
            MetricsView::Local(m) => m.signatures_made(),
            MetricsView::Remote(_) => self.counter("ibemail_signatures_made_total"),
        }
    }
}

/// One IBE mail domain.
pub struct Domain {
    pub name: String,
    pub ip: IpAddr,
    pub store_dir: PathBuf,
    pub kgc_socket: PathBuf,
    pub milter_addr: SocketAddr,
    pub metrics: MetricsView,
    pub postfix: Postfix,
    /// The milter's configuration file (written in both modes).
    pub milter_config: PathBuf,
    kgc_log: PathBuf,
    milter_log: PathBuf,
    kgc: Daemon,
    milter: Daemon,
}

/// The two-domain system.
pub struct World {
    pub rt: Runtime,
    pub knot: Knot,
    pub a: Domain,
    pub b: Domain,
    pub c: Postfix,
    pub wire: Recorder,
    /// What a.test sent to b.test, when [`Options::intercept_b`] is set.
    pub interceptor: Option<ibemail_test_support::smtp::Sink>,
    /// OpenDKIM signer (a.test) and verifier (b.test), when asked for.
    pub dkim: Option<(OpenDkim, OpenDkim)>,
    /// The on-path DNS attacker ([`Options::dns_attacker`]): the proxy the
    /// milters ask, and the attacker's own name server.
    pub dns_attacker: Option<(DnsProxy, Knot)>,
    /// TTL of the published records.
    pub records_ttl: u32,
    tsig: TsigKey,
    daemons: Daemons,
    users: Users,
    _tmp: tempfile::TempDir,
    _block_lock: Option<std::fs::File>,
}

/// Options for [`World::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Extra milter configuration for a.test (TOML, top-level keys first).
    pub a_milter: String,
    /// Extra milter configuration for b.test.
    pub b_milter: String,
    /// Extra Postfix milters for a.test, before ibemail.
    pub a_milters_before: Vec<String>,
    /// Extra Postfix milters for a.test, after ibemail.
    pub a_milters_after: Vec<String>,
    /// Extra Postfix milters for b.test, before ibemail.
    pub b_milters_before: Vec<String>,
    /// Fixed address block (`127.0.N.0/24`) instead of the next free one.
    pub block: Option<u8>,
    /// OpenDKIM beside ibemail: a.test signs after encryption, b.test
    /// verifies before decryption.
    pub dkim: bool,
    /// Leave ibemail out of a.test's Postfix (benchmarks).
    pub a_without_ibemail: bool,
    /// Leave ibemail out of b.test's Postfix (benchmarks).
    pub b_without_ibemail: bool,
    /// Extra `main.cf` lines for a.test.
    pub a_postfix_extra: Vec<String>,
    /// Extra `main.cf` lines for b.test.
    pub b_postfix_extra: Vec<String>,
    /// Route a.test's mail for b.test into [`World::interceptor`] (a man in
    /// the middle) instead of to b.test.
    pub intercept_b: bool,
    /// Leave loopback out of a.test's `internal_networks` (mail submitted
    /// on the host must be outbound all the same).
    pub a_loopback_not_internal: bool,
    /// Put an on-path DNS attacker ([`World::dns_attacker`]) between the
    /// milters and the name server.
    pub dns_attacker: bool,
    /// Serve b.test unsigned (no DNSSEC).
    pub b_unsigned: bool,
    /// TTL of the published records (default 2 s).
    pub records_ttl: Option<u32>,
    /// How the KGC daemons and milters run.
    pub daemons: Daemons,
}

fn start_kgc_task(rt: &Runtime, store_dir: &Path, socket: &Path) -> Task {
    let _ = std::fs::remove_file(socket);
    let service = Arc::new(KeyService::load(&[store_dir.to_path_buf()], 1024).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(socket).unwrap() });
    let handle = rt.spawn(async move {
        let _ = serve(listener, service, ServerConfig::default(), async {
            let _ = stopped.await;
        })
        .await;
    });
    Task {
        stop: Some(stop),
        handle: Some(handle),
    }
}

fn start_milter_task(rt: &Runtime, config: &str, addr: SocketAddr, metrics: Arc<Metrics>) -> Task {
    let config = Config::parse(config).unwrap();
    let engine = Arc::new(Engine::new(config, metrics).unwrap());
    let listener = rt.block_on(async {
        // The previous instance may still be releasing the port.
        for _ in 0..100 {
            if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot bind the milter to {addr}");
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = rt.spawn(async move {
        let (_reload, reload_rx) = tokio::sync::mpsc::channel(1);
        let _ = ibemail_milter::run(listener, engine, reload_rx, async {
            let _ = stopped.await;
        })
        .await;
        drop(_reload);
    });
    Task {
        stop: Some(stop),
        handle: Some(handle),
    }
}

/// Spawns `program args` as `user`, its standard error appended to `log`,
/// and waits until `ready` says it serves (panicking with the log if it
/// exits first or takes over 30 s).
fn spawn_daemon(
    program: &str,
    args: &[String],
    user: (u32, u32),
    log: &Path,
    ready: impl Fn() -> bool,
) -> Child {
    use std::os::unix::process::CommandExt as _;
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut command = Command::new(daemon_bin_dir().join(program));
    command
        .args(args)
        .env("NO_COLOR", "1")
        .env("IBEMAIL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    if ibemail_test_support::is_root() {
        command.gid(user.1).uid(user.0);
    }
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{program}: {e}"));
    wait_until_ready(
        &mut child,
        log,
        &format!("{program} {}", args.join(" ")),
        ready,
    );
    child
}

/// Waits until `ready` says the daemon `child` serves; panics with its
/// `log` if it exits first or 30 s pass.
pub fn wait_until_ready(child: &mut Child, log: &Path, what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "{what} did not start ({exited:?}):\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives `path` and everything below it to `owner`.
fn chown_tree(path: &Path, (uid, gid): (u32, u32)) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), (uid, gid));
        }
    }
}

/// Sets `key` (a dotted path such as `kgc.socket`) in `table`.
fn set(table: &mut toml::Table, key: &str, value: impl Into<toml::Value>) {
    let (tables, last) = match key.rsplit_once('.') {
        Some((tables, last)) => (tables.split('.').collect::<Vec<_>>(), last),
        None => (Vec::new(), key),
    };
    let mut table = table;
    for name in tables {
        table = table
            .entry(name)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap();
    }
    table.insert(last.to_string(), value.into());
}

/// Merges `extra` into `base`, table by table; `extra`'s values win.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The packaged sample configuration (`packaging/ibemail-milter.toml`).
pub const SAMPLE_CONFIG: &str = include_str!("../../../packaging/ibemail-milter.toml");

/// A milter configuration made as an administrator makes one: the packaged
/// sample with this server's settings, then `extra` (TOML) on top.
pub fn milter_config_from_sample(settings: &[(&str, toml::Value)], extra: &str) -> String {
    configure(SAMPLE_CONFIG, settings, extra)
}

/// `sample` (a milter configuration) with `settings` (dotted keys) set and
/// `extra` (TOML) merged on top.
pub fn configure(sample: &str, settings: &[(&str, toml::Value)], extra: &str) -> String {
    let mut table: toml::Table = sample.parse().unwrap();
    for (key, value) in settings {
        set(&mut table, key, value.clone());
    }
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("extra milter configuration: {e}\n{extra}"));
    merge(&mut table, extra);
    toml::to_string(&table).unwrap()
}

/// A TOML array of strings.
pub fn strings(items: &[String]) -> toml::Value {
    toml::Value::Array(
        items
            .iter()
            .map(|s| toml::Value::String(s.clone()))
            .collect(),
    )
}

/// `ibemail-kgc serve` for `domain`, as the KGC's user.
fn spawn_kgc(domain: &Domain, users: Users) -> Daemon {
    let _ = std::fs::remove_file(&domain.kgc_socket);
    let args = [
        "serve".to_string(),
        "--dir".into(),
        domain.store_dir.display().to_string(),
        "--socket".into(),
        domain.kgc_socket.display().to_string(),
        "--socket-mode".into(),
        "660".into(),
        "--allow-uid".into(),
        users.milter.0.to_string(),
    ];
    let socket = domain.kgc_socket.clone();
    Daemon::Process(spawn_daemon(
        "ibemail-kgc",
        &args,
        users.kgc,
        &domain.kgc_log,
        || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
    ))
}

/// `ibemail-milter run --config FILE` for `domain`, as the milter's user.
fn spawn_milter(domain: &Domain, users: Users) -> Daemon {
    let args = [
        "run".to_string(),
        "--config".into(),
        domain.milter_config.display().to_string(),
    ];
    let addr = domain.milter_addr;
    Daemon::Process(spawn_daemon(
        "ibemail-milter",
        &args,
        users.milter,
        &domain.milter_log,
        || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
    ))
}

impl World {
    /// Brings everything up and publishes both domains' parameters.
    pub fn start(options: Options) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (block, block_lock) = match options.block {
            Some(block) => (block, None),
            None => {
                let (block, lock) = claim_block();
                (block, Some(lock))
            }
        };
        let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, block, last));
        let tmp = tempfile::Builder::new()
            .prefix("ibemail-e2e")
            .tempdir()
            .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        let dkim_signer = options.dkim.then(|| OpenDkim::signer(ip(11), "a.test"));
        let mut a_records = vec!["mx A 127.0.0.1".to_string()];
        a_records.extend(dkim_signer.as_ref().and_then(|d| d.key_record.clone()));
        let a_records: Vec<&str> = a_records.iter().map(String::as_str).collect();
        let dns_addr = SocketAddr::new(ip(53), ibemail_test_support::free_port(ip(53)));
        let knot = Knot::start_at(
            dns_addr,
            &[
                Zone::new("a.test", Signing::Signed, &a_records).updatable(),
                Zone::new(
                    "b.test",
                    if options.b_unsigned {
                        Signing::Unsigned
                    } else {
                        Signing::Signed
                    },
                    &["mx A 127.0.0.1"],
                )
                .updatable(),
                Zone::new("c.test", Signing::Signed, &["mx A 127.0.0.1"]),
            ],
        );
        // The attacker serves the same zones, unsigned: he has no keys.
        let dns_attacker = options.dns_attacker.then(|| {
            let evil = Knot::start_on(
                ip(54),
                &["a.test", "b.test", "c.test"]
                    .map(|z| Zone::new(z, Signing::Unsigned, &["mx A 127.0.0.1"])),
            );
            (DnsProxy::start(ip(55), knot.addr, evil.addr), evil)
        });
        let resolver = dns_attacker
            .as_ref()
            .map_or(knot.addr, |(proxy, _)| proxy.addr);
        // Under attack, answers (the attacker's too) are kept a second at
        // most, so each step of a test meets DNS as it is now.
        let max_cache = if options.dns_attacker { "1s" } else { "1d" };
        let tsig = TsigKey::parse(&format!(
            "{}:{}:{}",
            knot.tsig.algorithm, knot.tsig.name, knot.tsig.secret_base64
        ))
        .unwrap();

        let (a_ip, b_ip, c_ip) = (ip(11), ip(12), ip(13));
        // a.test -> b.test goes through the observer (or to the man in the
        // middle).
        let wire = Recorder::start(SocketAddr::new(ip(20), 2525), SocketAddr::new(b_ip, 25));
        let interceptor = options
            .intercept_b
            .then(ibemail_test_support::smtp::Sink::start);
        let a_to_b = match &interceptor {
            Some(sink) => format!("smtp:[{}]:{}", sink.addr.ip(), sink.addr.port()),
            None => format!("smtp:[{}]:{}", wire.addr.ip(), wire.addr.port()),
        };
        let users = Users::find();

        let dkim_verifier = dkim_signer
            .as_ref()
            .map(|signer| OpenDkim::verifier(ip(12), &[("a.test", signer)], DKIM_AUTHSERV_ID));
        let mut a_after = options.a_milters_after.clone();
        a_after.extend(dkim_signer.as_ref().map(OpenDkim::milter));
        let mut b_before = options.b_milters_before.clone();
        b_before.extend(dkim_verifier.as_ref().map(OpenDkim::milter));
        let mut domains = Vec::new();
        for (name, dom_ip, extra, before, after, transports) in [
            (
                "a.test",
                a_ip,
                &options.a_milter,
                &options.a_milters_before,
                &a_after,
                vec![
                    ("b.test".to_string(), a_to_b.clone()),
                    ("c.test".to_string(), format!("smtp:[{c_ip}]:25")),
                ],
            ),
            (
                "b.test",
                b_ip,
                &options.b_milter,
                &b_before,
                &Vec::new(),
                vec![
                    ("a.test".to_string(), format!("smtp:[{a_ip}]:25")),
                    ("c.test".to_string(), format!("smtp:[{c_ip}]:25")),
                ],
            ),
        ] {
            let store_dir = tmp.path().join(format!("kgc-{name}"));
            Store::setup(
                &store_dir,
                name,
                now(),
                Some(ibemail_params::Policy::require(7 * 86_400)),
                &mut OsRng,
            )
            .unwrap();
            // The socket's directory: the KGC's, open to the shared group.
            let run_dir = tmp.path().join(format!("run-{name}"));
            std::fs::create_dir(&run_dir).unwrap();
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
            }
            let kgc_socket = run_dir.join("kgc.sock");
            let milter_addr = SocketAddr::new(dom_ip, ibemail_test_support::free_port(dom_ip));
            let metrics_addr = SocketAddr::new(dom_ip, ibemail_test_support::free_port(dom_ip));
            let mut internal = vec![format!("{dom_ip}/32")];
            if name == "a.test" && !options.a_loopback_not_internal {
                internal.push("127.0.0.1/32".into());
            }
            let state_dir = tmp.path().join(format!("milter-state-{name}"));
            std::fs::create_dir_all(&state_dir).unwrap();
            let mut settings = vec![
                ("socket", toml::Value::from(format!("inet:{milter_addr}"))),
                ("authserv_id", format!("mx.{name}").into()),
                ("local_domains", strings(&[name.to_string()])),
                ("internal_networks", strings(&internal)),
                ("kgc.socket", kgc_socket.display().to_string().into()),
                ("kgc.timeout", "3s".into()),
                ("state_dir", state_dir.display().to_string().into()),
                ("dns.resolvers", strings(&[resolver.to_string()])),
                ("dns.max_cache", max_cache.into()),
                (
                    "dns.trust_anchor",
                    knot.trust_anchor_file().display().to_string().into(),
                ),
                ("dns.timeout", "2s".into()),
                (
                    "reinject.address",
                    format!("{dom_ip}:{REINJECT_PORT}").into(),
                ),
                ("reinject.helo", format!("mx.{name}").into()),
                ("signing.sign", "never".into()),
            ];
            if name == "b.test" && options.dkim {
                settings.push((
                    "trusted_authserv_ids",
                    strings(&[DKIM_AUTHSERV_ID.to_string()]),
                ));
            }
            if options.daemons == Daemons::Processes {
                settings.push(("metrics", metrics_addr.to_string().into()));
            }
            let milter_config_text = milter_config_from_sample(&settings, extra);
            let milter_config = tmp.path().join(format!("milter-{name}.toml"));
            std::fs::write(&milter_config, &milter_config_text).unwrap();
            let (kgc, milter, metrics) = match options.daemons {
                Daemons::InProcess => {
                    let metrics = Arc::new(Metrics::default());
                    (
                        Daemon::Task(start_kgc_task(&rt, &store_dir, &kgc_socket)),
                        Daemon::Task(start_milter_task(
                            &rt,
                            &milter_config_text,
                            milter_addr,
                            metrics.clone(),
                        )),
                        MetricsView::Local(metrics),
                    )
                }
                Daemons::Processes => {
                    chown_tree(&store_dir, users.kgc);
                    chown_tree(&run_dir, users.kgc);
                    chown_tree(&state_dir, users.milter);
                    (
                        Daemon::Stopped,
                        Daemon::Stopped,
                        MetricsView::Remote(metrics_addr),
                    )
                }
            };
            let mut milters = before.clone();
            let without = match name {
                "a.test" => options.a_without_ibemail,
                _ => options.b_without_ibemail,
            };
            if !without {
                milters.push(format!("inet:{milter_addr}"));
            }
            milters.extend(after.iter().cloned());
            let postfix = Postfix::start(PostfixConfig {
                name: name.trim_end_matches(".test").to_string(),
                domain: name.to_string(),
                ip: dom_ip,
                users: ["alice", "bob", "carol", "dave"].map(String::from).to_vec(),
                milters,
                transports,
                reinject_port: Some(REINJECT_PORT),
                reinject_milter: Some(format!("inet:{milter_addr}")),
                // Load generators (smtp-source) cannot bind an address: at
                // a.test, 127.0.0.1 is an internal submitter too.
                extra: if name == "a.test" {
                    let mut extra = vec![format!("mynetworks = {dom_ip}/32 127.0.0.1/32")];
                    extra.extend(options.a_postfix_extra.iter().cloned());
                    extra
                } else {
                    options.b_postfix_extra.clone()
                },
            });
            let mut domain = Domain {
                name: name.to_string(),
                ip: dom_ip,
                store_dir,
                kgc_socket,
                milter_addr,
                metrics,
                postfix,
                milter_config,
                kgc_log: tmp.path().join(format!("kgc-{name}.log")),
                milter_log: tmp.path().join(format!("milter-{name}.log")),
                kgc,
                milter,
            };
            if options.daemons == Daemons::Processes {
                domain.kgc = spawn_kgc(&domain, users);
                domain.milter = spawn_milter(&domain, users);
            }
            domains.push(domain);
        }
        let b = domains.pop().unwrap();
        let a = domains.pop().unwrap();
        let c = Postfix::start(PostfixConfig {
            name: "c".into(),
            domain: "c.test".into(),
            ip: c_ip,
            users: ["carol", "dave"].map(String::from).to_vec(),
            milters: Vec::new(),
            transports: Vec::new(),
            reinject_port: None,
            reinject_milter: None,
            extra: Vec::new(),
        });
        let world = World {
            rt,
            knot,
            a,
            b,
            c,
            wire,
            interceptor,
            dkim: dkim_signer.zip(dkim_verifier),
            dns_attacker,
            records_ttl: options.records_ttl.unwrap_or(2),
            tsig,
            daemons: options.daemons,
            users,
            _tmp: tmp,
            _block_lock: block_lock,
        };
        world.publish("a.test");
        world.publish("b.test");
        world
    }

    pub fn domain(&self, name: &str) -> &Domain {
        if name == "a.test" { &self.a } else { &self.b }
    }

    fn domain_mut(&mut self, name: &str) -> &mut Domain {
        if name == "a.test" {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// Publishes `domain`'s records with `ibemail-kgc publish`'s code.
    pub fn publish(&self, domain: &str) {
        let store = Store::open(&self.domain(domain).store_dir).unwrap();
        self.publish_records(domain, &store.records());
    }

    /// Replaces `domain`'s published records with `records` (an attacker's,
    /// in the tests that need one).
    pub fn publish_records(&self, domain: &str, records: &[ibemail_params::Record]) {
        let target = UpdateTarget {
            server: self.knot.addr,
            zone: domain.to_string(),
            ttl: self.records_ttl,
            timeout: Duration::from_secs(5),
        };
        self.rt
            .block_on(publish(&target, &self.tsig, domain, records))
            .unwrap();
    }

    /// Changes `domain`'s key store as root can: in process mode the store
    /// belongs to the KGC's user, who alone may write it, so it is lent to
    /// this process for the change and given back.
    fn edit_store(&mut self, domain: &str, change: impl FnOnce(&mut Store)) {
        let dir = self.domain(domain).store_dir.clone();
        let lend = self.daemons == Daemons::Processes;
        if lend {
            chown_tree(
                &dir,
                (
                    rustix::process::geteuid().as_raw(),
                    rustix::process::getegid().as_raw(),
                ),
            );
        }
        let mut store = Store::open(&dir).unwrap();
        change(&mut store);
        if lend {
            chown_tree(&dir, self.users.kgc);
        }
        self.restart_kgc(domain);
    }

    /// Rotates `domain`'s key (new generation published), with `overlap_secs`.
    pub fn rotate(&mut self, domain: &str, overlap_secs: u64) {
        self.rotate_unpublished(domain, overlap_secs);
        self.publish(domain);
    }

    /// Rotates `domain`'s key without publishing the new generation (a
    /// publish step that failed, or has not run yet).
    pub fn rotate_unpublished(&mut self, domain: &str, overlap_secs: u64) {
        self.edit_store(domain, |store| {
            let policy = Some(ibemail_params::Policy::require(7 * 86_400));
            store
                .rotate(overlap_secs, now(), policy, &mut OsRng)
                .unwrap();
        });
    }

    /// b.test's records as its store publishes them now.
    pub fn b_records(&self) -> Vec<ibemail_params::Record> {
        Store::open(&self.b.store_dir).unwrap().records()
    }

    /// Records that DNS has published `domain`'s current generations since
    /// `since` (what `ibemail-kgc serve` notes when it watches DNS), and
    /// reloads its KGC.
    pub fn note_published(&mut self, domain: &str, since: u64) {
        self.edit_store(domain, |store| {
            let generations: Vec<u32> = store.records().iter().map(|r| r.generation).collect();
            store.note_published(&generations, since).unwrap();
        });
    }

    /// Retires `generation` as an administrator does who knows it is gone
    /// (`ibemail-kgc retire --force`).
    pub fn retire(&mut self, domain: &str, generation: u32) {
        self.edit_store(domain, |store| {
            store.force_retire(generation, now()).unwrap();
        });
        self.publish(domain);
    }

    pub fn stop_kgc(&mut self, domain: &str) {
        let rt = &self.rt;
        let d = if domain == "a.test" {
            &mut self.a
        } else {
            &mut self.b
        };
        d.kgc.stop(rt);
        let _ = std::fs::remove_file(&d.kgc_socket);
    }

    pub fn start_kgc(&mut self, domain: &str) {
        let (daemons, users) = (self.daemons, self.users);
        let d = if domain == "a.test" {
            &mut self.a
        } else {
            &mut self.b
        };
        d.kgc = match daemons {
            Daemons::InProcess => {
                Daemon::Task(start_kgc_task(&self.rt, &d.store_dir, &d.kgc_socket))
            }
            Daemons::Processes => spawn_kgc(d, users),
        };
    }

    pub fn restart_kgc(&mut self, domain: &str) {
        self.stop_kgc(domain);
        self.start_kgc(domain);
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to `domain`'s KGC
    /// daemon process.
    pub fn signal_kgc(&self, domain: &str, name: &str) {
        let pid = self
            .domain(domain)
            .kgc
            .pid()
            .expect("the KGC runs as a process");
        signal(pid, name);
    }

    /// Kills `domain`'s milter process with SIGKILL, as a crash would, and
    /// waits until it is gone.
    pub fn kill_milter(&mut self, domain: &str) {
        let d = self.domain_mut(domain);
        let Daemon::Process(child) = &mut d.milter else {
            panic!("kill_milter needs Daemons::Processes");
        };
        let _ = child.kill();
        let _ = child.wait();
        d.milter = Daemon::Stopped;
    }

    /// Starts `domain`'s milter process again (after [`World::kill_milter`]).
    pub fn start_milter(&mut self, domain: &str) {
        let users = self.users;
        let d = self.domain_mut(domain);
        assert!(matches!(d.milter, Daemon::Stopped), "the milter runs");
        d.milter = spawn_milter(d, users);
    }

    /// The milter process of `domain`, if it runs as one.
    pub fn milter_pid(&self, domain: &str) -> Option<u32> {
        self.domain(domain).milter.pid()
    }

    /// What `domain`'s milter process logged (nothing in-process).
    pub fn milter_log(&self, domain: &str) -> String {
        std::fs::read_to_string(&self.domain(domain).milter_log).unwrap_or_default()
    }

    /// What `domain`'s KGC process logged.
    pub fn kgc_log(&self, domain: &str) -> String {
        std::fs::read_to_string(&self.domain(domain).kgc_log).unwrap_or_default()
    }

    /// The user ids the milter and the KGC run as.
    pub fn daemon_uids(&self) -> (u32, u32) {
        (self.users.milter.0, self.users.kgc.0)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.a.postfix.stop();
        self.b.postfix.stop();
        self.c.stop();
        let rt = &self.rt;
        for d in [&mut self.a, &mut self.b] {
            d.milter.stop(rt);
            d.kgc.stop(rt);
        }
        // Process mode: the store and socket directories belong to the
        // daemons' users; root removes them with the rest.
    }
}

/// A test message with the given headers and body (CRLF).
pub fn message(from: &str, to: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n\
         Message-ID: <{}.{}@a.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        now(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
    .into_bytes()
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The part of a delivered Maildir file after the fields delivery added on
/// top, with LF line endings; and the names of those added fields.
pub fn delivered_original(mailbox_file: &[u8], submitted: &[u8]) -> Result<Vec<String>, String> {
    let submitted: Vec<u8> = String::from_utf8_lossy(submitted)
        .replace("\r\n", "\n")
        .into_bytes();
    if !mailbox_file.ends_with(&submitted) {
        return Err(format!(
            "the mailbox copy does not end with the submitted message:\n{}",
            String::from_utf8_lossy(mailbox_file)
        ));
    }
    let prefix = &mailbox_file[..mailbox_file.len() - submitted.len()];
    let text = String::from_utf8_lossy(prefix);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect())
}
