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
//! parallel. The KGC daemons and milters run in this process (the same
//! library code `ibemail-kgc serve` and `ibemail-milter run` run); Postfix,
//! Knot and swaks are the real programs.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ibemail_kgc::publish::{UpdateTarget, publish};
use ibemail_kgc::server::{ServerConfig, serve};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_kgc::tsig::TsigKey;
use ibemail_milter::config::Config;
use ibemail_milter::engine::Engine;
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

/// One IBE mail domain.
pub struct Domain {
    pub name: String,
    pub ip: IpAddr,
    pub store_dir: PathBuf,
    pub kgc_socket: PathBuf,
    pub milter_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub postfix: Postfix,
    kgc: Task,
    milter: Task,
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
    /// The on-path DNS attacker between the milters and Knot, and his own
    /// Knot, when [`Options::dns_attacker`] is set.
    pub dns_attacker: Option<(DnsProxy, Knot)>,
    /// TTL of the published `_ibemailkey` records.
    pub records_ttl: u32,
    tsig: TsigKey,
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
}

fn start_kgc(rt: &Runtime, store_dir: &Path, socket: &Path) -> Task {
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

fn start_milter(rt: &Runtime, config: &str, addr: SocketAddr, metrics: Arc<Metrics>) -> Task {
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
        // Under attack, answers (the attacker's too) are kept a second at
        // most, so each step of a test meets DNS as it is now.
        let max_cache = if options.dns_attacker { "1s" } else { "1d" };
        let dns = format!(
            "[dns]\nresolvers = [\"{resolver}\"]\ntrust_anchor = \"{}\"\ntimeout = \"2s\"\n\
             max_cache = \"{max_cache}\"\n",
            knot.trust_anchor_file().display()
        );

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
            let kgc_socket = tmp.path().join(format!("kgc-{name}.sock"));
            let kgc = start_kgc(&rt, &store_dir, &kgc_socket);
            let milter_addr = SocketAddr::new(dom_ip, ibemail_test_support::free_port(dom_ip));
            let (top, tables) = match extra.split_once("\n[") {
                Some((top, tables)) => (top.to_string(), format!("[{tables}")),
                None => (extra.clone(), String::new()),
            };
            let submitters = if name == "a.test" && !options.a_loopback_not_internal {
                ", \"127.0.0.1/32\""
            } else {
                ""
            };
            let state_dir = tmp.path().join(format!("milter-state-{name}"));
            std::fs::create_dir_all(&state_dir).unwrap();
            let trusted = if name == "b.test" && options.dkim {
                format!("trusted_authserv_ids = [\"{DKIM_AUTHSERV_ID}\"]\n")
            } else {
                String::new()
            };
            let milter_config = format!(
                "socket = \"inet:{milter_addr}\"\nauthserv_id = \"mx.{name}\"\n{trusted}\
                 state_dir = \"{}\"\n\
                 local_domains = [\"{name}\"]\ninternal_networks = [\"{dom_ip}/32\"{submitters}]\n{top}\n\
                 [kgc]\nsocket = \"{}\"\ntimeout = \"3s\"\n{dns}\
                 [reinject]\naddress = \"{dom_ip}:{REINJECT_PORT}\"\nhelo = \"mx.{name}\"\n{tables}\n",
                state_dir.display(),
                kgc_socket.display()
            );
            let metrics = Arc::new(Metrics::default());
            let milter = start_milter(&rt, &milter_config, milter_addr, metrics.clone());
            let mut milters = before.clone();
            if !(name == "a.test" && options.a_without_ibemail) {
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
            domains.push(Domain {
                name: name.to_string(),
                ip: dom_ip,
                store_dir,
                kgc_socket,
                milter_addr,
                metrics,
                postfix,
                kgc,
                milter,
            });
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

    /// The runtime and `name`'s domain, borrowed together.
    fn runtime_and_domain(&mut self, name: &str) -> (&Runtime, &mut Domain) {
        let domain = if name == "a.test" {
            &mut self.a
        } else {
            &mut self.b
        };
        (&self.rt, domain)
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

    /// Rotates `domain`'s key (new generation published), with `overlap_secs`.
    pub fn rotate(&mut self, domain: &str, overlap_secs: u64) {
        self.rotate_unpublished(domain, overlap_secs);
        self.publish(domain);
    }

    /// Rotates `domain`'s key without publishing the new generation (a
    /// publish step that failed, or has not run yet).
    pub fn rotate_unpublished(&mut self, domain: &str, overlap_secs: u64) {
        let mut store = Store::open(&self.domain(domain).store_dir).unwrap();
        let policy = Some(ibemail_params::Policy::require(7 * 86_400));
        store
            .rotate(overlap_secs, now(), policy, &mut OsRng)
            .unwrap();
        self.restart_kgc(domain);
    }

    /// b.test's records as its store publishes them now.
    pub fn b_records(&self) -> Vec<ibemail_params::Record> {
        Store::open(&self.b.store_dir).unwrap().records()
    }

    /// Records that DNS has published `domain`'s current generations since
    /// `since` (what `ibemail-kgc serve` notes when it watches DNS), and
    /// reloads its KGC.
    pub fn note_published(&mut self, domain: &str, since: u64) {
        let mut store = Store::open(&self.domain(domain).store_dir).unwrap();
        let generations: Vec<u32> = store.records().iter().map(|r| r.generation).collect();
        store.note_published(&generations, since).unwrap();
        self.restart_kgc(domain);
    }

    /// Retires `generation` as an administrator does who knows it is gone
    /// (`ibemail-kgc retire --force`).
    pub fn retire(&mut self, domain: &str, generation: u32) {
        let mut store = Store::open(&self.domain(domain).store_dir).unwrap();
        store.force_retire(generation, now()).unwrap();
        self.publish(domain);
        self.restart_kgc(domain);
    }

    pub fn stop_kgc(&mut self, domain: &str) {
        let (rt, d) = self.runtime_and_domain(domain);
        d.kgc.stop(rt);
        let _ = std::fs::remove_file(&d.kgc_socket);
    }

    pub fn start_kgc(&mut self, domain: &str) {
        let (rt, d) = self.runtime_and_domain(domain);
        d.kgc = start_kgc(rt, &d.store_dir, &d.kgc_socket);
    }

    pub fn restart_kgc(&mut self, domain: &str) {
        self.stop_kgc(domain);
        self.start_kgc(domain);
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
