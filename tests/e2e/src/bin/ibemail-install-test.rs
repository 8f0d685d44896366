//! `ibemail-install-test`: installs the Debian packages (`scripts/package`
//! built them into target/debian/) on this machine and uses them as an
//! administrator would, from the installed files only, then purges them.
//! `scripts/test` runs it; it needs root, and changes the system (the
//! packages, their accounts, /etc/ibemail, /var/lib/ibemail).
//!
//! 1. `dpkg -i`: the accounts, directories and modes exist; nothing is
//!    enabled or started; `systemd-analyze verify` accepts the units.
//! 2. Two domains, each with its own Postfix (on loopback addresses, from
//!    the test harness): a.test runs the plain units (`ibemail-kgc.service`
//!    serving /var/lib/ibemail/kgc, `ibemail-milter.service` with the
//!    edited conffile), b.test the templated ones (`ibemail-kgc@b.test`,
//!    `ibemail-milter@b.test`). Key stores are made by root with `ibemail-kgc
//!    setup` and published by the a.test daemon itself (TSIG key owned by
//!    ibemail-kgc) and by `ibemail-kgc publish` for b.test. Postfix gets the
//!    packaged main.cf and master.cf snippets. Without systemd as PID 1 the
//!    units are run by [`Unit::start`], which reads each installed unit and
//!    does what systemd would (user, group, environment, directories,
//!    umask, conditions, ExecStart).
//! 3. `ibemail-milter --check-config` and `ibemail-milter doctor` on the
//!    live installation; a mail from alice@a.test to bob@b.test arrives as
//!    the original, signed, and crossed as ciphertext.
//! 4. `dpkg --purge`: the package's files, conffiles and pin files go; the
//!    key stores stay.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibemail_e2e::{
    REINJECT_PORT, configure, delivered_original, message, strings, wait_until_ready,
};
use ibemail_kgc::accounts::{Account, by_name};
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::postfix::{Postfix, PostfixConfig};
use ibemail_test_support::proxy::Recorder;
use ibemail_test_support::{free_port, is_root};

const UNITS: &str = "/lib/systemd/system";
const DOC: &str = "/usr/share/doc/ibemail-milter/examples/postfix";
/// Where this test's two stores go (and only these are cleaned up).
const A_STORE: &str = "/var/lib/ibemail/kgc/a.test";
const B_STORE: &str = "/var/lib/ibemail/b.test";
const TSIG_KEY: &str = "/etc/ibemail/update.key";
const ANCHOR: &str = "/etc/ibemail/test.anchor";
const B_CONFIG: &str = "/etc/ibemail/b.test.toml";

fn step(text: &str) {
    println!("==> {text}");
}

/// Runs a command; panics with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &str) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

fn account(name: &str) -> Account {
    by_name(name).unwrap_or_else(|| panic!("the package did not create the user {name}"))
}

/// A unit as systemd would run it, read from its installed file.
struct Unit {
    name: String,
    settings: BTreeMap<String, Vec<String>>,
}

impl Unit {
    /// `file` (in /lib/systemd/system), for `instance` if it is a template.
    fn load(file: &str, instance: Option<&str>) -> Unit {
        let text = std::fs::read_to_string(Path::new(UNITS).join(file)).unwrap();
        let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with(['#', ';', '[']) || line.is_empty() {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let value = value
                    .replace("%i", instance.unwrap_or(""))
                    .replace("%%", "%");
                settings.entry(key.to_string()).or_default().push(value);
            }
        }
        Unit {
            name: file.replace('@', &format!("@{}", instance.unwrap_or(""))),
            settings,
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key)?.last().map(String::as_str)
    }

    /// Whether the unit's Condition*= settings hold (systemd would skip it
    /// otherwise).
    fn conditions_hold(&self) -> bool {
        let not_empty = |p: &str| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
        self.settings
            .get("ConditionDirectoryNotEmpty")
            .into_iter()
            .flatten()
            .all(|p| not_empty(p))
            && self
                .settings
                .get("ConditionPathExists")
                .into_iter()
                .flatten()
                .all(|p| Path::new(p).exists())
    }

    fn ids(&self) -> (u32, u32) {
        let user = account(self.get("User").unwrap());
        let group = std::fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.first() == Some(&self.get("Group").unwrap())).then(|| f[2].parse().unwrap())
            })
            .unwrap();
        (user.uid, group)
    }

    /// The environment: Environment= then EnvironmentFile= assignments.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for line in self.settings.get("Environment").into_iter().flatten() {
            for word in split_words(line, &[]) {
                if let Some((k, v)) = word.split_once('=') {
                    env.push((k.to_string(), v.to_string()));
                }
            }
        }
        for file in self.settings.get("EnvironmentFile").into_iter().flatten() {
            let (optional, file) = match file.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, file.as_str()),
            };
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    for line in text.lines().map(str::trim) {
                        if line.starts_with('#') || line.is_empty() {
                            continue;
                        }
                        if let Some((k, v)) = line.split_once('=') {
                            env.push((k.to_string(), v.trim_matches('"').to_string()));
                        }
                    }
                }
                Err(e) => assert!(optional, "{file}: {e}"),
            }
        }
        env
    }

    /// Makes `kind` (StateDirectory, RuntimeDirectory) as systemd does: the
    /// innermost directory owned by the unit's user, with its mode.
    fn make_directories(&self, kind: &str, base: &str) {
        let Some(dir) = self.get(kind) else { return };
        let path = Path::new(base).join(dir);
        std::fs::create_dir_all(&path).unwrap();
        let mode = self
            .get(&format!("{kind}Mode"))
            .map_or(0o755, |m| u32::from_str_radix(m, 8).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let (uid, gid) = self.ids();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }

    /// Starts ExecStart as systemd would; its standard error goes to `log`.
    fn start(&self, log: &Path) -> Child {
        use std::os::unix::process::CommandExt as _;
        assert!(self.conditions_hold(), "{}: a condition fails", self.name);
        self.make_directories("StateDirectory", "/var/lib");
        self.make_directories("RuntimeDirectory", "/run");
        let env = self.environment();
        let argv = split_words(self.get("ExecStart").unwrap(), &env);
        let (uid, gid) = self.ids();
        let umask = self.get("UMask").unwrap_or("0022");
        println!("    {} (uid {uid}): {}", self.name, argv.join(" "));
        Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$@\""))
            .arg("sh")
            .args(&argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .gid(gid)
            .uid(uid)
            .spawn()
            .unwrap()
    }
}

/// Splits a unit's command line into words as systemd does: whitespace
/// separates, single and double quotes group, `$$` is a dollar sign and
/// `$NAME` / `${NAME}` are replaced from `env`.
fn split_words(line: &str, env: &[(String, String)]) -> Vec<String> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or(String::new(), |(_, v)| v.clone())
    };
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\'' | '"', None) => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (q, Some(open)) if q == open => quote = None,
            ('\\', Some('"')) => word.get_or_insert_with(String::new).extend(chars.next()),
            (c, None) if c.is_whitespace() => words.extend(word.take()),
            ('$', _) if chars.peek() == Some(&'$') => {
                chars.next();
                word.get_or_insert_with(String::new).push('$');
            }
            ('$', _) if chars.peek() == Some(&'{') => {
                chars.next();
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                word.get_or_insert_with(String::new)
                    .push_str(&lookup(&name));
            }
            ('$', _)
                if chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_') =>
            {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                word.get_or_insert_with(String::new)
                    .push_str(&lookup(&name));
            }
            (c, _) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The daemons started from units; stopped when dropped, so a failed check
/// leaves none behind.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            stop(child);
        }
    }
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes what this test put on the system outside the packages: its two
/// key stores and files in /etc/ibemail. Other stores are never touched.
fn clean_up() {
    // A run that stopped half-way leaves the packages installed with its
    // configuration: start from nothing, as on a fresh machine.
    let _ = Command::new("dpkg")
        .args(["--purge", "ibemail-milter", "ibemail-kgc"])
        .output();
    for dir in [A_STORE, B_STORE, "/run/ibemail-b.test"] {
        let _ = std::fs::remove_dir_all(dir);
    }
    for file in [TSIG_KEY, ANCHOR, B_CONFIG] {
        let _ = std::fs::remove_file(file);
    }
    for dir in [
        "/var/lib/ibemail/kgc",
        "/var/lib/ibemail",
        "/etc/ibemail",
        "/run/ibemail",
    ] {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The non-comment `name = value` lines of the packaged main.cf snippet,
/// with the milter socket replaced.
fn main_cf_settings(milter: &str) -> Vec<String> {
    std::fs::read_to_string(format!("{DOC}/main.cf.snippet"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| l.replace("inet:127.0.0.1:8895", milter))
        .collect()
}

fn main() {
    assert!(is_root(), "the install test needs root (dpkg, Postfix)");
    let debs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    assert!(
        debs.len() == 2 && debs.iter().all(|d| d.exists()),
        "usage: ibemail-install-test target/debian/ibemail-milter_*.deb target/debian/ibemail-kgc_*.deb"
    );
    let debs: Vec<&str> = debs.iter().map(|d| d.to_str().unwrap()).collect();
    clean_up();

    step("dpkg -i");
    let mut install = vec!["-i"];
    install.extend(&debs);
    run("dpkg", &install);
    let (kgc, milter) = (account("ibemail-kgc"), account("ibemail"));
    assert_eq!(kgc.gid, milter.gid, "both users are in the group ibemail");
    assert_eq!(mode("/var/lib/ibemail/kgc"), (0o700, kgc.uid, kgc.gid));
    assert_eq!(
        mode("/var/lib/ibemail-milter"),
        (0o700, milter.uid, milter.gid)
    );
    assert_eq!(mode("/etc/ibemail/ibemail-milter.toml").0, 0o644);
    let conffiles = run(
        "dpkg-query",
        &[
            "-W",
            "-f",
            "${Conffiles}\n",
            "ibemail-milter",
            "ibemail-kgc",
        ],
    );
    for conffile in [
        "/etc/ibemail/ibemail-milter.toml",
        "/etc/default/ibemail-kgc",
    ] {
        assert!(
            conffiles.contains(conffile),
            "{conffile} is not a conffile:\n{conffiles}"
        );
    }
    for file in [
        "/usr/share/man/man8/ibemail-milter.8.gz",
        "/usr/share/man/man8/ibemail-kgc.8.gz",
        "/usr/share/doc/ibemail-kgc/examples/example.zone",
    ] {
        assert!(Path::new(file).exists(), "{file} is missing");
    }
    // Nothing enabled, nothing running: there is no configuration yet.
    for unit in ["ibemail-milter.service", "ibemail-kgc.service"] {
        assert!(
            !Path::new("/etc/systemd/system/multi-user.target.wants")
                .join(unit)
                .exists(),
            "{unit} was enabled on installation"
        );
    }
    for user in ["ibemail", "ibemail-kgc"] {
        let running = Command::new("pgrep").args(["-u", user]).output().unwrap();
        assert!(
            !running.status.success(),
            "a process of {user} runs after installation"
        );
    }
    assert!(
        !Unit::load("ibemail-kgc.service", None).conditions_hold(),
        "ibemail-kgc.service would start without a key store"
    );

    step("systemd-analyze verify");
    for unit in [
        "ibemail-kgc.service",
        "ibemail-milter.service",
        "ibemail-kgc@b.test.service",
        "ibemail-milter@b.test.service",
    ] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", unit])
            .output()
            .unwrap();
        let complaints = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success() && !complaints.contains(unit.split('@').next().unwrap()),
            "systemd-analyze verify {unit}:\n{complaints}"
        );
    }

    step("DNS (Knot) for a.test and b.test");
    let block = 199;
    let ip = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, block, last));
    let knot = Knot::start_at(
        SocketAddr::new(ip(53), free_port(ip(53))),
        &[
            Zone::new("a.test", Signing::Signed, &["mx A 127.0.0.1"]).updatable(),
            Zone::new("b.test", Signing::Signed, &["mx A 127.0.0.1"]).updatable(),
        ],
    );
    // The lab zones are not chained to the root: the milters need their
    // trust anchor, readable by the user ibemail.
    std::fs::copy(knot.trust_anchor_file(), ANCHOR).unwrap();
    std::fs::set_permissions(ANCHOR, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The TSIG key belongs to the user that publishes: ibemail-kgc.
    std::fs::write(
        TSIG_KEY,
        format!(
            "key \"{}\" {{\n\talgorithm {};\n\tsecret \"{}\";\n}};\n",
            knot.tsig.name, knot.tsig.algorithm, knot.tsig.secret_base64
        ),
    )
    .unwrap();
    std::fs::set_permissions(TSIG_KEY, std::fs::Permissions::from_mode(0o600)).unwrap();
    run("chown", &["ibemail-kgc:ibemail", TSIG_KEY]);

    step("key stores, made by root with ibemail-kgc setup");
    run(
        "ibemail-kgc",
        &["setup", "--domain", "a.test", "--dir", A_STORE],
    );
    run(
        "install",
        &[
            "-d",
            "-o",
            "ibemail-kgc",
            "-g",
            "ibemail",
            "-m",
            "0700",
            B_STORE,
        ],
    );
    run(
        "ibemail-kgc",
        &["setup", "--domain", "b.test", "--dir", B_STORE],
    );
    for store in [A_STORE, B_STORE] {
        assert_eq!(
            mode(store),
            (0o700, kgc.uid, kgc.gid),
            "{store} belongs to ibemail-kgc"
        );
        assert_eq!(mode(&format!("{store}/gen-00000001.key")).1, kgc.uid);
        // Root may read a store it does not own.
        run("ibemail-kgc", &["status", "--dir", store]);
    }
    // a.test's daemon publishes its records itself; b.test's are published
    // by hand.
    std::fs::write(
        "/etc/default/ibemail-kgc",
        format!(
            "KGC_OPTS=\"--publish-server {} --publish-tsig-key {TSIG_KEY} --publish-ttl 2\"\n",
            knot.addr
        ),
    )
    .unwrap();
    run(
        "ibemail-kgc",
        &[
            "publish",
            "--dir",
            B_STORE,
            "--server",
            &knot.addr.to_string(),
            "--tsig-key",
            TSIG_KEY,
            "--ttl",
            "2",
        ],
    );

    step("the KGC daemons, from their units");
    let logs = tempfile::Builder::new()
        .prefix("ibemail-install")
        .tempdir()
        .unwrap();
    let log = |name: &str| logs.path().join(name);
    let mut daemons = Running(Vec::new());
    for (file, instance, socket) in [
        ("ibemail-kgc.service", None, "/run/ibemail/kgc.sock"),
        (
            "ibemail-kgc@.service",
            Some("b.test"),
            "/run/ibemail-b.test/kgc.sock",
        ),
    ] {
        let unit = Unit::load(file, instance);
        let name = format!("{}.log", unit.name);
        daemons.0.push(unit.start(&log(&name)));
        let child = daemons.0.last_mut().unwrap();
        wait_until_ready(child, &log(&name), &unit.name, || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
        assert_eq!(mode(socket), (0o660, kgc.uid, kgc.gid), "{socket}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while knot.query_txt("_ibemailkey.a.test").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the a.test daemon did not publish:\n{}",
            std::fs::read_to_string(log("ibemail-kgc.service.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    step("the milters' configurations, edited from the packaged sample");
    let sample = std::fs::read_to_string("/etc/ibemail/ibemail-milter.toml").unwrap();
    let (a_ip, b_ip) = (ip(11), ip(12));
    let wire = Recorder::start(SocketAddr::new(ip(20), 2525), SocketAddr::new(b_ip, 25));
    let milter_addr = |ip: IpAddr| SocketAddr::new(ip, free_port(ip));
    let (a_milter, b_milter) = (milter_addr(a_ip), milter_addr(b_ip));
    let b_metrics = milter_addr(b_ip);
    for (path, domain, dom_ip, socket, kgc_socket, extra) in [
        (
            "/etc/ibemail/ibemail-milter.toml",
            "a.test",
            a_ip,
            a_milter,
            "/run/ibemail/kgc.sock",
            "",
        ),
        (
            B_CONFIG,
            "b.test",
            b_ip,
            b_milter,
            "/run/ibemail-b.test/kgc.sock",
            // b.test pins a.test's parameters and requires its signature.
            "[policy.domains.\"a.test\"]\nsignature = \"require\"\npin = \"report\"\n",
        ),
    ] {
        let mut settings = vec![
            ("socket", toml::Value::from(format!("inet:{socket}"))),
            ("authserv_id", format!("mx.{domain}").into()),
            ("local_domains", strings(&[domain.to_string()])),
            ("internal_networks", strings(&[format!("{dom_ip}/32")])),
            ("kgc.socket", kgc_socket.into()),
            ("dns.resolvers", strings(&[knot.addr.to_string()])),
            ("dns.trust_anchor", ANCHOR.into()),
            (
                "reinject.address",
                format!("{dom_ip}:{REINJECT_PORT}").into(),
            ),
            ("reinject.helo", format!("mx.{domain}").into()),
        ];
        if domain == "b.test" {
            settings.push(("state_dir", "/var/lib/ibemail-milter/b.test".into()));
            settings.push(("metrics", b_metrics.to_string().into()));
        }
        std::fs::write(path, configure(&sample, &settings, extra)).unwrap();
        let checked = run("ibemail-milter", &["--check-config", "--config", path]);
        assert!(checked.contains("configuration OK"), "{checked}");
    }

    step("the milters, from their units");
    for (file, instance, addr) in [
        ("ibemail-milter.service", None, a_milter),
        ("ibemail-milter@.service", Some("b.test"), b_milter),
    ] {
        let unit = Unit::load(file, instance);
        let name = format!("{}.log", unit.name);
        daemons.0.push(unit.start(&log(&name)));
        let child = daemons.0.last_mut().unwrap();
        wait_until_ready(child, &log(&name), &unit.name, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
    }

    step("Postfix for a.test and b.test, with the packaged snippets");
    let master_service = std::fs::read_to_string(format!("{DOC}/master.cf.snippet")).unwrap();
    let mut instances = Vec::new();
    for (name, dom_ip, milter, transports) in [
        (
            "a.test",
            a_ip,
            a_milter,
            vec![(
                "b.test".to_string(),
                format!("smtp:[{}]:{}", wire.addr.ip(), wire.addr.port()),
            )],
        ),
        (
            "b.test",
            b_ip,
            b_milter,
            vec![("a.test".to_string(), format!("smtp:[{a_ip}]:25"))],
        ),
    ] {
        let mut postfix = Postfix::start(PostfixConfig {
            name: format!("install-{}", name.trim_end_matches(".test")),
            domain: name.to_string(),
            ip: dom_ip,
            users: ["alice", "bob"].map(String::from).to_vec(),
            milters: Vec::new(),
            transports,
            reinject_port: None,
            reinject_milter: None,
            extra: main_cf_settings(&format!("inet:{milter}")),
        });
        // The re-injection service, on this instance's address.
        let master = postfix.conf_dir().join("master.cf");
        let mut text = std::fs::read_to_string(&master).unwrap();
        text.push_str(
            &master_service
                .replace("127.0.0.1:10026", &format!("{dom_ip}:{REINJECT_PORT}"))
                .replace("inet:127.0.0.1:8895", &format!("inet:{milter}")),
        );
        std::fs::write(&master, text).unwrap();
        postfix.stop();
        postfix.start_again();
        instances.push(postfix);
    }
    let (a_postfix, b_postfix) = (&instances[0], &instances[1]);

    step("ibemail-milter doctor (as root, checking as the user ibemail)");
    for (config, postfix) in [
        ("/etc/ibemail/ibemail-milter.toml", a_postfix),
        (B_CONFIG, b_postfix),
    ] {
        let conf = postfix.conf_dir();
        let out = Command::new("ibemail-milter")
            .args(["doctor", "--config", config, "-c", conf.to_str().unwrap()])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{report}");
        assert!(
            out.status.success(),
            "doctor found errors:\n{report}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!report.contains("ERROR"), "{report}");
        assert!(
            report.contains("as published opens with the KGC's key"),
            "{report}"
        );
    }

    step("a mail from alice@a.test to bob@b.test");
    let m = message(
        "Alice <alice@a.test>",
        "Bob <bob@b.test>",
        "Installed from the packages",
        "The packaged daemons carried this.\r\n",
    );
    a_postfix.submit("alice@a.test", &["bob@b.test"], &m);
    let bob = b_postfix.wait_for_mail("bob", 1, Duration::from_secs(60));
    delivered_original(&bob[0], &m).unwrap();
    let delivered = String::from_utf8_lossy(&bob[0]).into_owned();
    assert!(delivered.contains("x-ibemail=pass"), "{delivered}");
    assert!(delivered.contains("ibesig=pass"), "{delivered}");
    let crossed = String::from_utf8_lossy(&wire.seen()).into_owned();
    assert!(
        crossed.contains("smime-type=authEnveloped-data"),
        "{crossed}"
    );
    assert!(!crossed.contains("carried this") && !crossed.contains("Installed from"));
    // The sender pins what it sealed to (a signature on inbound mail never
    // pins a stranger's domain).
    let pins = std::fs::read_to_string("/var/lib/ibemail-milter/pins").unwrap_or_default();
    assert!(
        pins.lines().any(|l| l.starts_with("b.test ")),
        "a.test's milter pinned b.test: {pins}"
    );
    println!("    delivered, decrypted and signature-checked; only ciphertext crossed");

    step("dpkg --purge");
    drop(daemons);
    drop(instances);
    run("dpkg", &["--purge", "ibemail-milter", "ibemail-kgc"]);
    for gone in [
        "/usr/sbin/ibemail-milter",
        "/usr/sbin/ibemail-kgc",
        "/etc/ibemail/ibemail-milter.toml",
        "/etc/default/ibemail-kgc",
        "/lib/systemd/system/ibemail-kgc@.service",
        "/var/lib/ibemail-milter",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} survived the purge");
    }
    for kept in [A_STORE, B_STORE] {
        assert!(
            Path::new(kept).join("kgc.store").exists()
                && Path::new(kept).join("gen-00000001.key").exists(),
            "the purge destroyed the key store {kept}"
        );
    }
    println!("    the key stores survive the purge");
    clean_up();
    println!("==> install test passed");
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn unit_command_lines_split_and_expand_as_systemd_does() {
        let env = [(
            "KGC_OPTS".to_string(),
            "--metrics 127.0.0.1:9101".to_string(),
        )];
        assert_eq!(
            split_words(
                r#"/bin/sh -c 'exec serve --allow-uid "$(id -u ibemail)" $KGC_OPTS' $$x ${KGC_OPTS}"#,
                &env
            ),
            [
                "/bin/sh",
                "-c",
                r#"exec serve --allow-uid "$(id -u ibemail)" --metrics 127.0.0.1:9101"#,
                "$x",
                "--metrics 127.0.0.1:9101",
            ]
        );
        assert_eq!(
            split_words("IBEMAIL_LOG=info NO_COLOR=1", &[]),
            ["IBEMAIL_LOG=info", "NO_COLOR=1"]
        );
    }
}
