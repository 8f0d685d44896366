//! The setup check (`ibemail-milter doctor`) and the explanation of a
//! configuration (`ibemail-milter --check-config`), in the spirit of
//! `opendkim-testkey` and `opendkim -n`.
//!
//! The doctor looks at a live installation from the milter's side: what
//! Postfix is told (`postconf`, honouring `-c`), whether the milter and the
//! KGC answer on their sockets, whether each local domain's published
//! record is one the KGC can open (a capsule sealed to the published
//! parameters must open), DNSSEC, and the pin file. Each finding is one
//! line with its fix; any [`Severity::Error`] means the setup is not sound.

use std::collections::BTreeMap;
use std::fmt;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ibemail_discovery::{Discovery, DnssecStatus, Outcome, PinPolicy, PinStore};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::service::KeyService;
use ibemail_params::record_name;
use rand_core::OsRng;

use crate::config::{Config, KeySource, SignPolicy};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Works, but not as well or as safely as it could.
    Warning,
    /// Mail is deferred, lost to plaintext, or cannot be opened.
    Error,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// What it is about (`postfix`, `kgc`, a domain, ...).
    pub subject: String,
    /// What was found.
    pub text: String,
    /// What to do, for warnings and errors.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        };
        write!(f, "{label:<8} {}: {}", self.subject, self.text)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The findings collected so far.
#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, severity: Severity, subject: &str, text: String, fix: Option<String>) {
        self.0.push(Finding {
            severity,
            subject: subject.to_string(),
            text,
            fix,
        });
    }
    fn ok(&mut self, subject: &str, text: String) {
        self.add(Severity::Ok, subject, text, None);
    }
    fn warn(&mut self, subject: &str, text: String, fix: String) {
        self.add(Severity::Warning, subject, text, Some(fix));
    }
    fn error(&mut self, subject: &str, text: String, fix: String) {
        self.add(Severity::Error, subject, text, Some(fix));
    }
}

/// Checks the installation described by the milter configuration at
/// `config_path` and Postfix's configuration in `postfix_dir` (Postfix's
/// default without one).
pub async fn run(config_path: &Path, postfix_dir: Option<&Path>) -> Vec<Finding> {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report.error(
                "config",
                e,
                format!(
                    "correct the file; `ibemail-milter --check-config --config {}` checks it",
                    config_path.display()
                ),
            );
            return report.0;
        }
    };
    report.ok("config", format!("{} parses", config_path.display()));
    if config.authserv_id == "mx.example.org" || config.is_local("example.org") {
        report.warn(
            "config",
            "still names example.org from the packaged sample".into(),
            format!(
                "set authserv_id and local_domains in {}",
                config_path.display()
            ),
        );
    }
    check_postfix(&mut report, &config, postfix_dir);
    check_milter_socket(&mut report, &config.socket);
    check_domains(&mut report, &config).await;
    check_pins(&mut report, &config);
    report.0
}

/// `postconf` output as `name -> value`.
fn postconf(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("postconf");
    if let Some(dir) = dir {
        command.arg("-c").arg(dir);
    }
    let out = command
        .args(args)
        .output()
        .map_err(|e| format!("postconf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postconf {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(" ="))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The milters named in a Postfix milter list (grouped `{ ... }` entries
/// included), normalised as [`postfix_name`] does.
fn milters(list: &str, queue_directory: &str) -> Vec<String> {
    list.split([',', ' ', '\t', '{', '}'])
        .filter(|item| item.starts_with("inet:") || item.starts_with("unix:"))
        .map(|item| postfix_name(item, queue_directory))
        .collect()
}

/// A milter socket as Postfix or our configuration names it, normalised:
/// `inet:` without brackets and with `localhost` as 127.0.0.1; `unix:`
/// paths absolute (Postfix names them relative to its chroot, the queue
/// directory, where that is where they are).
fn postfix_name(name: &str, queue_directory: &str) -> String {
    if let Some(address) = name.strip_prefix("inet:") {
        let address = address.replace(['[', ']'], "");
        return format!("inet:{}", address.replacen("localhost:", "127.0.0.1:", 1));
    }
    match name.strip_prefix("unix:") {
        Some(path) if !path.starts_with(queue_directory) => {
            format!(
                "unix:{}",
                Path::new(queue_directory)
                    .join(path.trim_start_matches('/'))
                    .display()
            )
        }
        _ => name.to_string(),
    }
}

fn check_postfix(report: &mut Report, config: &Config, dir: Option<&Path>) {
    let names = [
        "smtpd_milters",
        "non_smtpd_milters",
        "milter_default_action",
        "milter_protocol",
        "milter_mail_macros",
        "queue_directory",
    ];
    let values = match postconf(dir, &names) {
        Ok(text) => settings(&text),
        Err(e) => {
            report.error(
                "postfix",
                e,
                "install Postfix, or point -c at its configuration directory".into(),
            );
            return;
        }
    };
    let get = |name: &str| values.get(name).map_or("", String::as_str);
    let queue = get("queue_directory");
    let ours = postfix_name(&config.socket, queue);
    let shown = match config.socket.strip_prefix("unix:") {
        Some(path) => format!("unix:{}", path.strip_prefix(queue).unwrap_or(path)),
        None => config.socket.clone(),
    };
    let postconf_e = |setting: &str| match dir {
        Some(dir) => format!(
            "postconf -c {} -e '{setting}' && postfix reload",
            dir.display()
        ),
        None => format!("postconf -e '{setting}' && postfix reload"),
    };
    for (name, severity, consequence) in [
        (
            "smtpd_milters",
            Severity::Error,
            "mail received over SMTP is neither encrypted nor decrypted",
        ),
        (
            "non_smtpd_milters",
            Severity::Warning,
            "mail submitted on this host (sendmail) leaves unencrypted",
        ),
    ] {
        let list = get(name);
        if milters(list, queue).contains(&ours) {
            report.ok("postfix", format!("{name} names {shown}"));
        } else {
            let setting = if list.is_empty() {
                format!("{name} = {shown}")
            } else {
                format!("{name} = {list}, {shown}")
            };
            report.add(
                severity,
                "postfix",
                format!("{name} does not name {shown} ({consequence})"),
                Some(postconf_e(&setting)),
            );
        }
    }
    match get("milter_default_action") {
        "tempfail" => report.ok(
            "postfix",
            "milter_default_action = tempfail (mail waits while the milter is down)".into(),
        ),
        other => report.error(
            "postfix",
            format!(
                "milter_default_action = {other}: while the milter is down or fails, mail \
                 passes unprocessed (or is refused for good)"
            ),
            postconf_e("milter_default_action = tempfail"),
        ),
    }
    match get("milter_protocol").parse::<u32>() {
        Ok(v) if v >= 6 => report.ok("postfix", format!("milter_protocol = {v}")),
        _ => report.error(
            "postfix",
            format!(
                "milter_protocol = {}: the milter needs protocol 6",
                get("milter_protocol")
            ),
            postconf_e("milter_protocol = 6"),
        ),
    }
    let macros = get("milter_mail_macros");
    if macros.split_whitespace().any(|m| m == "{auth_authen}") {
        report.ok("postfix", "milter_mail_macros has {auth_authen}".into());
    } else {
        report.warn(
            "postfix",
            "milter_mail_macros lacks {auth_authen}: mail of users who authenticate from \
             outside internal_networks is treated as mail from outside (not encrypted)"
                .into(),
            postconf_e(&format!("milter_mail_macros = {macros} {{auth_authen}}")),
        );
    }
    check_reinjection(report, config, dir, &ours, get("smtpd_milters"), queue);
}

/// The re-injection listener: a master.cf service on `reinject.address`,
/// without this milter, answering SMTP.
fn check_reinjection(
    report: &mut Report,
    config: &Config,
    dir: Option<&Path>,
    ours: &str,
    global_milters: &str,
    queue: &str,
) {
    let snippet = "/usr/share/doc/ibemail-milter/examples/postfix/master.cf.snippet";
    let Some(address) = config.reinject else {
        report.warn(
            "reinject",
            "no reinject.address: mail for both ibemail and other recipients is deferred".into(),
            format!("set [reinject] address and add the service of {snippet} to master.cf"),
        );
        return;
    };
    let services = postconf(dir, &["-M"]).unwrap_or_default();
    let names = [
        address.to_string(),
        format!("[{}]:{}", address.ip(), address.port()),
    ];
    let Some(service) = services.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.next()?;
        (names.iter().any(|n| n == name) && fields.next() == Some("inet")).then_some(name)
    }) else {
        report.error(
            "reinject",
            format!(
                "master.cf has no inet service on {address}: mail with mixed recipients is deferred"
            ),
            format!("add the service of {snippet} to master.cf, then postfix reload"),
        );
        return;
    };
    let options = settings(&postconf(dir, &["-P"]).unwrap_or_default());
    let option = |name: &str| options.get(&format!("{service}/inet/{name}")).cloned();
    let effective = option("smtpd_milters").unwrap_or_else(|| global_milters.to_string());
    let daemon_name = option("milter_macro_daemon_name").unwrap_or_default();
    let watched = milters(&effective, queue).iter().any(|m| m == ours);
    let no_milters = option("receive_override_options")
        .is_some_and(|o| o.split(',').any(|v| v.trim() == "no_milters"));
    if !watched || no_milters {
        // Any local process can connect to the listener: without the
        // milter, mail sent there bypasses encryption.
        report.error(
            "reinject",
            format!(
                "the service on {address} runs without this milter: any local process could \
                 send mail through it in clear"
            ),
            format!(
                "give it -o smtpd_milters={ours} and -o milter_macro_daemon_name={} \
                 (without no_milters) as in {snippet}",
                config.reinject_daemon_name
            ),
        );
    } else if daemon_name != config.reinject_daemon_name {
        // The milter recognises its listener by {daemon_name}: otherwise
        // it takes its own copies for new mail and seals them again.
        report.error(
            "reinject",
            format!(
                "the service on {address} has milter_macro_daemon_name {daemon_name:?}, not \
                 the configured {:?}: the milter would not recognise its own copies",
                config.reinject_daemon_name
            ),
            format!(
                "give it -o milter_macro_daemon_name={} ({snippet})",
                config.reinject_daemon_name
            ),
        );
    } else {
        report.ok(
            "reinject",
            format!(
                "master.cf service {service} runs this milter as {daemon_name} (its own copies \
                 pass, anything else is handled as local mail)"
            ),
        );
    }
    match smtp_greeting(address) {
        Ok(line) if line.starts_with("220") => {
            report.ok("reinject", format!("{address} answers SMTP"));
        }
        Ok(line) => report.error(
            "reinject",
            format!("{address} answers {line:?}, not a 220 greeting"),
            "check the service's restrictions (mynetworks must include this host)".into(),
        ),
        Err(e) => report.error(
            "reinject",
            format!("nothing answers on {address}: {e}"),
            "postfix reload (after adding the service), or correct reinject.address".into(),
        ),
    }
}

fn smtp_greeting(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 && stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let _ = stream.write_all(b"QUIT\r\n");
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Connects to the milter and negotiates (SMFIC_OPTNEG, offering what
/// Postfix offers: protocol 6, every action and protocol step), which only a
/// milter answers.
fn check_milter_socket(report: &mut Report, socket: &str) {
    // length 13, 'O', version 6, actions 0x1ff, protocol steps 0x1fffff.
    let negotiate: [u8; 17] = [
        0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff,
    ];
    let exchange = |stream: &mut dyn ReadWrite| -> Result<bool, String> {
        stream
            .write_all(&negotiate)
            .and_then(|()| {
                let mut answer = [0u8; 5];
                stream.read_exact(&mut answer).map(|()| answer[4] == b'O')
            })
            .map_err(|e| format!("it accepted the connection but did not negotiate: {e}"))
    };
    let connected: std::io::Result<Box<dyn ReadWrite>> = if let Some(address) =
        socket.strip_prefix("inet:")
    {
        address
            .parse::<SocketAddr>()
            .map_err(|_| std::io::Error::other("not ADDRESS:PORT"))
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)))
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(Box::new(s) as Box<dyn ReadWrite>)
            })
    } else {
        std::os::unix::net::UnixStream::connect(socket.trim_start_matches("unix:")).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(Box::new(s) as Box<dyn ReadWrite>)
        })
    };
    let result = connected
        .map_err(|e| format!("nothing answers: {e}"))
        .and_then(|mut stream| exchange(&mut *stream));
    match result {
        Ok(true) => report.ok("milter", format!("{socket} answers the milter protocol")),
        Ok(false) => report.error(
            "milter",
            format!("{socket} answers, but not as a milter"),
            "another program holds the socket: move it or the milter's socket".into(),
        ),
        Err(e) => report.error(
            "milter",
            format!("{socket}: {e}"),
            "start the milter (systemctl start ibemail-milter; journalctl -u ibemail-milter \
             says why it stopped)"
                .into(),
        ),
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// How the doctor reaches the keys: as the milter does.
enum Keys {
    Daemon(KgcClient),
    InProcess(Box<KeyService>),
}

impl Keys {
    async fn open(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &ibemail_ibe::Capsule,
    ) -> Result<[u8; 32], String> {
        let opened = match self {
            Keys::Daemon(client) => client.open(identity, generation, capsule).await,
            Keys::InProcess(service) => service.open_capsule(identity, generation, capsule),
        };
        opened.map(|s| *s.as_bytes()).map_err(|e| e.to_string())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The KGC, then each local domain: served, published, matching, DNSSEC.
async fn check_domains(report: &mut Report, config: &Config) {
    if config.local_domains.is_empty() {
        report.ok(
            "kgc",
            "no local_domains: this server only sends (nothing to decrypt)".into(),
        );
        return;
    }
    let (keys, served) = match &config.keys {
        Some(KeySource::Socket(path)) => {
            let client = KgcClient::new(path, Duration::from_secs(10));
            match client.hello().await {
                Ok(served) => {
                    let list = served
                        .iter()
                        .map(|(d, n)| format!("{d} (generation {n})"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    report.ok(
                        "kgc",
                        format!("{} answers this user and serves {list}", path.display()),
                    );
                    (Keys::Daemon(client), served)
                }
                Err(e) => {
                    report.error("kgc", kgc_problem(path, &e), kgc_fix(path, &e));
                    return;
                }
            }
        }
        Some(KeySource::Dirs(dirs)) => match KeyService::load(dirs, 16) {
            Ok(service) => {
                let served = service.hello();
                report.ok(
                    "kgc",
                    format!("this user reads the key store(s) {}", show_paths(dirs)),
                );
                (Keys::InProcess(Box::new(service)), served)
            }
            Err(e) => {
                report.error(
                    "kgc",
                    format!("cannot load the key stores: {e}"),
                    "the milter's user must own kgc.dir (or use the KGC daemon: kgc.socket)".into(),
                );
                return;
            }
        },
        None => return,
    };
    let discovery = match Discovery::new(config.discovery_config(), None) {
        Ok(d) => d,
        Err(e) => {
            report.error(
                "dns",
                format!("cannot set up lookups: {e}"),
                "correct [dns] (resolvers, trust_anchor)".into(),
            );
            return;
        }
    };
    for domain in &config.local_domains {
        let Some((_, active)) = served.iter().find(|(d, _)| d == domain) else {
            report.error(
                domain,
                "the KGC does not serve it: its inbound mail cannot be opened".into(),
                format!(
                    "ibemail-kgc setup --domain {domain} --dir /var/lib/ibemail/kgc/{domain}, \
                     publish its record, restart ibemail-kgc"
                ),
            );
            continue;
        };
        check_domain(report, config, &discovery, &keys, domain, *active).await;
    }
}

fn kgc_problem(path: &Path, error: &str) -> String {
    format!("{} does not answer this user: {error}", path.display())
}

fn kgc_fix(path: &Path, error: &str) -> String {
    let uid = ibemail_kgc::accounts::current_uid();
    if error.contains("Forbidden") {
        format!(
            "let the milter's user in: ibemail-kgc serve --allow-uid {uid} (the packaged unit \
             allows the user ibemail)"
        )
    } else if error.contains("ermission denied") {
        format!(
            "the milter's user needs group access to {} and its directory (the packaged units: \
             socket group ibemail, mode 0660)",
            path.display()
        )
    } else {
        "start the KGC daemon (systemctl start ibemail-kgc; journalctl -u ibemail-kgc says why \
         it stopped)"
            .into()
    }
}

fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn check_domain(
    report: &mut Report,
    config: &Config,
    discovery: &Discovery,
    keys: &Keys,
    domain: &str,
    active: Generation,
) {
    let name = record_name(domain);
    let policy = config.policy_for(domain).lookup;
    let lookup = discovery.lookup(domain, policy, now()).await;
    match lookup.dnssec {
        DnssecStatus::Secure => report.ok(domain, format!("{name} is DNSSEC-signed (secure)")),
        DnssecStatus::Insecure => report.warn(
            domain,
            format!("{name} is not DNSSEC-signed (insecure): it can be forged in transit"),
            format!("sign the {domain} zone and publish its DS record in the parent"),
        ),
        DnssecStatus::Bogus => report.error(
            domain,
            format!(
                "{name} does not validate (DNSSEC bogus): validating senders defer mail to {domain}"
            ),
            "repair the zone's signatures or DS; a lab zone not chained to the root needs its own \
             trust anchor in dns.trust_anchor (here and at the senders)"
                .into(),
        ),
        DnssecStatus::Unchecked => report.warn(
            domain,
            format!("{name} was not validated (dnssec = off)"),
            "use dnssec = \"prefer\" or \"require\"".into(),
        ),
    }
    let (record, published) = match lookup.outcome {
        Outcome::Parameters { record, published } => (record, published),
        _ => {
            report.error(
                domain,
                format!("senders find no usable parameters: {}", lookup.summary()),
                format!(
                    "publish the records `ibemail-kgc record --dir <{domain}'s store>` prints \
                     (or ibemail-kgc publish); then ibemail-kgc check"
                ),
            );
            return;
        }
    };
    if record.generation != active {
        let highest = published
            .records
            .iter()
            .map(|r| r.generation)
            .max()
            .unwrap_or(record.generation);
        report.error(
            domain,
            format!(
                "senders use generation {} but the KGC's active generation is {active} \
                 (published up to {highest})",
                record.generation
            ),
            "publish the store's current records (ibemail-kgc publish), or reload the KGC after \
             a rotation (systemctl reload ibemail-kgc)"
                .into(),
        );
    }
    // The proof: a capsule sealed to what senders see must open.
    let postmaster = match Identity::parse(&format!("postmaster@{domain}")) {
        Ok(id) => id,
        Err(e) => {
            report.error(
                domain,
                format!("not a usable domain: {e}"),
                "correct local_domains".into(),
            );
            return;
        }
    };
    let sealed =
        ibemail_ibe::encapsulate(&record.params, &postmaster, record.generation, &mut OsRng);
    match sealed {
        Ok((capsule, secret)) => match keys.open(&postmaster, record.generation, &capsule).await {
            Ok(opened) if opened == *secret.as_bytes() => report.ok(
                domain,
                format!(
                    "generation {} as published opens with the KGC's key",
                    record.generation
                ),
            ),
            Ok(_) | Err(_) => report.error(
                domain,
                format!(
                    "generation {} as published does NOT match the KGC's key: mail sealed to \
                     it cannot be opened",
                    record.generation
                ),
                "compare with ibemail-kgc check --dir <store>, then republish (ibemail-kgc \
                 publish) the store's records"
                    .into(),
            ),
        },
        Err(e) => report.error(
            domain,
            format!("the published parameters are unusable: {e}"),
            "republish the store's records".into(),
        ),
    }
    if config.sign_policy(domain) == SignPolicy::Always && record.signing.is_none() {
        report.error(
            domain,
            format!("signing is on but {name} has no S=: receivers cannot check the signatures"),
            "republish the records (ibemail-kgc publish); old records lack S=".into(),
        );
    }
}

/// The pin file: readable, and its directory writable by this user.
fn check_pins(report: &mut Report, config: &Config) {
    let Some(path) = &config.pins else {
        let pins_used = config.default_policy.lookup.pin != PinPolicy::Off;
        if !pins_used {
            report.ok("pins", "no pin file (pin = off)".into());
        }
        return;
    };
    if let Err(e) = PinStore::snapshot(path) {
        report.error(
            "pins",
            format!("{}: {e}", path.display()),
            "make it readable by the milter's user, or remove a damaged file".into(),
        );
        return;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".ibemail-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            report.ok("pins", format!("{} can be rewritten", path.display()));
        }
        Err(e) => report.error(
            "pins",
            format!(
                "the milter cannot write in {} ({e}): new pins are lost",
                dir.display()
            ),
            format!(
                "chown the directory to the milter's user ({}; the packages use /var/lib/ibemail-milter)",
                ibemail_kgc::accounts::describe_uid(ibemail_kgc::accounts::current_uid())
            ),
        ),
    }
}

/// What a configuration means, one line per topic (`--check-config`).
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let secs = |d: Duration| format!("{}s", d.as_secs());
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let _ = writeln!(
        out,
        "socket:            {} (name it in Postfix's smtpd_milters and non_smtpd_milters; \
         a restart is needed to move it)",
        config.socket
    );
    let _ = writeln!(
        out,
        "authserv_id:       {} (Authentication-Results: ours are added, forged ones removed)",
        config.authserv_id
    );
    let _ = writeln!(
        out,
        "local domains:     {}{}",
        list(&config.local_domains),
        if config.local_domains.is_empty() {
            " (this server only sends)"
        } else {
            " (their inbound mail is decrypted)"
        }
    );
    let keys = match &config.keys {
        None => "none".to_string(),
        Some(KeySource::Socket(path)) => format!(
            "the KGC daemon at {} (timeout {})",
            path.display(),
            secs(config.kgc_timeout)
        ),
        Some(KeySource::Dirs(dirs)) => {
            format!("key stores opened in the milter: {}", show_paths(dirs))
        }
    };
    let _ = writeln!(out, "keys:              {keys}");
    let networks: Vec<String> = config
        .internal_networks
        .iter()
        .map(|(ip, len)| format!("{ip}/{len}"))
        .collect();
    let _ = writeln!(
        out,
        "outbound mail:     from {}, authenticated clients and this host",
        list(&networks)
    );
    let policy = |p: &crate::config::RemotePolicy| {
        format!(
            "encrypt {:?}, DNSSEC {:?}, pin {:?}, signature {:?}",
            p.encrypt, p.lookup.dnssec, p.lookup.pin, p.signature
        )
        .to_lowercase()
    };
    let _ = writeln!(out, "remote domains:    {}", policy(&config.default_policy));
    for (domain, p) in &config.domains {
        let _ = writeln!(out, "  {domain}: {}", policy(p));
    }
    let signing: Vec<String> = config
        .local_domains
        .iter()
        .map(|d| format!("{d} {:?}", config.sign_policy(d)).to_lowercase())
        .collect();
    let _ = writeln!(out, "signing:           {}", list(&signing));
    let anchor = match &config.trust_anchor {
        Some(path) => path.display().to_string(),
        None => "the root zone's KSKs (built in; a lab zone not chained to the root validates \
                 as bogus: set dns.trust_anchor)"
            .to_string(),
    };
    let resolvers: Vec<String> = config.resolvers.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "dns:               {} (timeout {} x {} attempts); trust anchor: {anchor}",
        list(&resolvers),
        secs(config.dns_timeout),
        config.dns_attempts
    );
    let _ = writeln!(
        out,
        "pins:              {}",
        config
            .pins
            .as_ref()
            .map_or("none".into(), |p| p.display().to_string())
    );
    let _ = writeln!(
        out,
        "mixed recipients:  {}",
        config
            .reinject
            .map_or("deferred (no reinject.address)".to_string(), |a| format!(
                "plaintext copies re-injected at {a} (HELO {})",
                config.reinject_helo
            ))
    );
    let _ = writeln!(
        out,
        "undecryptable:     {}; messages over {} bytes: {}",
        format!("{:?}", config.undecryptable).to_lowercase(),
        config.max_message_size,
        format!("{:?}", config.oversize).to_lowercase()
    );
    let _ = writeln!(
        out,
        "metrics:           {}",
        config.metrics.map_or("off".into(), |a| format!(
            "http://{a}/ (a restart is needed to change it)"
        ))
    );
    let _ = writeln!(
        out,
        "log:               {} lines; recipients shown as {}",
        format!("{:?}", config.log_format).to_lowercase(),
        if config.log_addresses {
            "addresses"
        } else {
            "domains"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn postfix_milter_lists_are_normalised_before_comparing() {
        let q = "/var/spool/postfix";
        assert_eq!(
            milters(
                "inet:localhost:8891, { inet:[127.0.0.1]:8895, connect_timeout=10s } unix:/ibemail/milter.sock",
                q
            ),
            [
                "inet:127.0.0.1:8891",
                "inet:127.0.0.1:8895",
                "unix:/var/spool/postfix/ibemail/milter.sock"
            ]
        );
        assert_eq!(
            postfix_name("unix:/var/spool/postfix/ibemail/milter.sock", q),
            "unix:/var/spool/postfix/ibemail/milter.sock"
        );
    }

    #[test]
    fn findings_are_one_line_with_their_fix() {
        let finding = Finding {
            severity: Severity::Error,
            subject: "postfix".into(),
            text: "milter_default_action = accept".into(),
            fix: Some("postconf -e 'milter_default_action = tempfail'".into()),
        };
        assert_eq!(
            finding.to_string(),
            "ERROR    postfix: milter_default_action = accept; fix: postconf -e 'milter_default_action = tempfail'"
        );
    }
}
