//! A real Postfix instance in a temporary directory: its own configuration,
//! queue and Maildir tree, listening on one loopback address, delivering
//! its domain's mail with virtual(8) (no system users needed) and sending
//! other domains' mail where a transport map says (no MX lookups).
//!
//! Needs root (Postfix's master runs as root and drops privileges).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{is_root, require_program};

/// How to build an instance.
#[derive(Clone, Debug)]
pub struct PostfixConfig {
    /// Short name (directory and log prefix), e.g. `a`.
    pub name: String,
    /// The mail domain it is final destination for, e.g. `a.test`.
    pub domain: String,
    /// Loopback address its SMTP server listens on (port 25).
    pub ip: IpAddr,
    /// Mailbox users (local parts) of `domain`.
    pub users: Vec<String>,
    /// Milters for smtpd and non-smtpd mail, in order (`inet:HOST:PORT`).
    pub milters: Vec<String>,
    /// `domain -> smtp:[ip]:port` routes.
    pub transports: Vec<(String, String)>,
    /// Port of an extra listener (re-injection), if any.
    pub reinject_port: Option<u16>,
    /// The milter watching the re-injection listener (ibemail's, which
    /// recognises it by `{daemon_name}` = `ibemail-reinject`); none: the
    /// listener runs without milters.
    pub reinject_milter: Option<String>,
    /// Extra `main.cf` lines.
    pub extra: Vec<String>,
}

/// A running instance.
pub struct Postfix {
    pub config: PostfixConfig,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    running: bool,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<crate::netns::Netns>,
}

fn postfix_cmd(
    dir: &Path,
    netns: Option<&crate::netns::Netns>,
    args: &[&str],
) -> std::process::Output {
    let program = require_program("postfix", "postfix");
    let mut command = match netns {
        Some(ns) => ns.command(program),
        None => Command::new(program),
    };
    // postfix(1) logs to syslog unless it has a terminal; read maillog instead.
    command
        .arg("-c")
        .arg(dir.join("conf"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn uid_gid(user: &str) -> (u32, u32) {
    let out = Command::new("id").arg("-u").arg(user).output().unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id").arg("-g").arg(user).output().unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

impl Postfix {
    /// Writes the configuration and starts Postfix.
    pub fn start(config: PostfixConfig) -> Postfix {
        Self::start_with(config, None)
    }

    /// As [`Postfix::start`], in the network namespace `netns` (its
    /// `config.ip` is an address of that namespace).
    pub fn start_in(config: PostfixConfig, netns: &crate::netns::Netns) -> Postfix {
        Self::start_with(config, Some(netns.clone()))
    }

    fn start_with(config: PostfixConfig, netns: Option<crate::netns::Netns>) -> Postfix {
        assert!(
            is_root(),
            "Postfix tests need root (the CI runs as root; use sudo scripts/test)"
        );
        require_program("postfix", "postfix");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("postfix-{}-", config.name))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (postfix_uid, postfix_gid) = uid_gid("postfix");
        std::os::unix::fs::chown(dir.join("data"), Some(postfix_uid), Some(postfix_gid)).unwrap();
        let (nobody_uid, nobody_gid) = uid_gid("nobody");
        std::os::unix::fs::chown(dir.join("mail"), Some(nobody_uid), Some(nobody_gid)).unwrap();

        let mut mailboxes = String::new();
        for user in &config.users {
            writeln!(mailboxes, "{user}@{d} {d}/{user}/", d = config.domain).unwrap();
        }
        std::fs::write(dir.join("conf/vmailbox"), mailboxes).unwrap();
        let mut transport = String::new();
        for (domain, route) in &config.transports {
            writeln!(transport, "{domain} {route}").unwrap();
        }
        std::fs::write(dir.join("conf/transport"), transport).unwrap();

        let d = dir.display();
        let milters = config.milters.join(", ");
        let mut main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.{domain}\n\
             mydomain = {domain}\n\
             myorigin = {domain}\n\
             mydestination =\n\
             inet_interfaces = all\n\
             inet_protocols = ipv4\n\
             smtp_bind_address = {ip}\n\
             mynetworks = {ip}/32\n\
             smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination\n\
             virtual_mailbox_domains = {domain}\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = texthash:{d}/conf/vmailbox\n\
             virtual_uid_maps = static:{nobody_uid}\n\
             virtual_gid_maps = static:{nobody_gid}\n\
             transport_maps = texthash:{d}/conf/transport\n\
             smtp_dns_support_level = disabled\n\
             maillog_file_prefixes = /tmp, /var\n\
             maillog_file = {d}/maillog\n\
             smtputf8_enable = no\n\
             alias_maps =\n\
             alias_database =\n\
             message_size_limit = 52428800\n\
             virtual_mailbox_limit = 0\n\
             queue_run_delay = 1s\n\
             minimal_backoff_time = 1s\n\
             maximal_backoff_time = 2s\n\
             smtp_connect_timeout = 5s\n\
             milter_default_action = tempfail\n\
             milter_protocol = 6\n\
             milter_mail_macros = i {{auth_authen}} {{auth_type}}\n\
             smtpd_milters = {milters}\n\
             non_smtpd_milters = {milters}\n",
            domain = config.domain,
            ip = config.ip,
        );
        // An extra line replaces the setting of the same name (Postfix would
        // take the last one too, but warn about it in every process's log).
        for line in &config.extra {
            let name = line.split('=').next().unwrap_or("").trim();
            main = main
                .lines()
                .filter(|l| name.is_empty() || l.split('=').next().unwrap_or("").trim() != name)
                .map(|l| format!("{l}\n"))
                .collect();
            writeln!(main, "{line}").unwrap();
        }
        std::fs::write(dir.join("conf/main.cf"), main).unwrap();

        let ip = config.ip;
        let mut master = format!("{ip}:25 inet n - n - - smtpd\n");
        if let Some(port) = config.reinject_port {
            let milters = match &config.reinject_milter {
                Some(milter) => format!(
                    "-o smtpd_milters={milter} -o milter_macro_daemon_name=ibemail-reinject \
                     -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks"
                ),
                None => "-o smtpd_milters= -o receive_override_options=\
                         no_unknown_recipient_checks,no_header_body_checks,no_milters"
                    .into(),
            };
            writeln!(
                master,
                "{ip}:{port} inet n - n - - smtpd {milters} -o non_smtpd_milters= \
                 -o mynetworks=127.0.0.0/8"
            )
            .unwrap();
        }
        master.push_str(MASTER_SERVICES);
        std::fs::write(dir.join("conf/master.cf"), master).unwrap();

        let mut postfix = Postfix {
            config,
            dir,
            _tmp: tmp,
            running: false,
            netns,
        };
        postfix.start_again();
        postfix
    }

    /// Starts (again) after [`Postfix::stop`], and waits until it answers
    /// SMTP. An instance that listens but does not greet within 30 s (seen
    /// twice under heavy load: nothing logged, not even master's "daemon
    /// started", which points at the logging path) is reported with its
    /// processes' kernel wait channels, killed and started once more.
    pub fn start_again(&mut self) {
        for attempt in 1..=2 {
            let out = postfix_cmd(&self.dir, self.netns.as_ref(), &["start"]);
            assert!(
                out.status.success(),
                "postfix {} did not start: {}\n{}",
                self.config.name,
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            self.running = true;
            self.wait_for_port(25);
            if self.greets(Duration::from_secs(30)) {
                break;
            }
            eprintln!(
                "postfix {}: listening but silent after 30 s (attempt {attempt}); processes:\n{}\nlog:\n{}",
                self.config.name,
                self.process_report(),
                self.log_tail(20)
            );
            assert!(attempt < 2, "postfix {} never greeted", self.config.name);
            self.kill_processes();
        }
        if let Some(port) = self.config.reinject_port {
            self.wait_for_port(port);
        }
    }

    /// True if port 25 sends a reply line (a greeting, or a 421 if a milter
    /// is down) within `timeout`.
    fn greets(&self, timeout: Duration) -> bool {
        use std::io::{BufRead as _, Write as _};
        let Ok(stream) = self.connect(self.smtp(), Duration::from_secs(5)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(timeout));
        let mut reader = std::io::BufReader::new(&stream);
        let mut line = String::new();
        let answered = reader.read_line(&mut line).is_ok_and(|n| n > 0);
        let _ = (&stream).write_all(b"QUIT\r\n");
        answered
    }

    /// The PIDs of this instance's processes (found by their working
    /// directory, the queue).
    fn pids(&self) -> Vec<String> {
        let queue = self.dir.join("queue");
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                std::fs::read_link(entry.path().join("cwd")).is_ok_and(|c| c.starts_with(&queue))
            })
            .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
            .collect()
    }

    /// One line per process: pid, command, state and kernel wait channel.
    fn process_report(&self) -> String {
        self.pids()
            .iter()
            .map(|pid| {
                let read = |f: &str| {
                    std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                };
                format!("  {pid} {} wchan={}", read("cmdline"), read("wchan"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kills every process of this instance.
    fn kill_processes(&self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }

    fn wait_for_port(&self, port: u16) {
        let addr = SocketAddr::new(self.config.ip, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.connect(addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix {} does not listen on {addr}:\n{}",
                self.config.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the instance (mail stays queued).
    pub fn stop(&mut self) {
        if self.running {
            self.stop_or_kill();
            self.running = false;
            // master exits asynchronously; wait for the port to close.
            let addr = SocketAddr::new(self.config.ip, 25);
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.connect(addr, Duration::from_millis(100)).is_ok()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A TCP connection to `addr` from where this instance runs.
    pub fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<std::net::TcpStream> {
        match &self.netns {
            Some(ns) => ns.connect(addr, timeout),
            None => std::net::TcpStream::connect_timeout(&addr, timeout),
        }
    }

    /// The SMTP address.
    pub fn smtp(&self) -> SocketAddr {
        SocketAddr::new(self.config.ip, 25)
    }

    /// Attempts delivery of everything deferred now.
    pub fn flush(&self) {
        let _ = Command::new(require_program("postqueue", "postfix"))
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("-f")
            .output();
    }

    /// The queue as `postqueue -j` lines (JSON objects).
    pub fn queue(&self) -> Vec<String> {
        let out = Command::new(require_program("postqueue", "postfix"))
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("-j")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Messages in the hold queue (quarantined).
    pub fn held(&self) -> usize {
        self.queue()
            .iter()
            .filter(|l| l.contains("\"queue_name\": \"hold\""))
            .count()
    }

    /// Waits until at least `count` messages are in the hold queue.
    pub fn wait_for_held(&self, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.held() < count {
            assert!(
                Instant::now() < deadline,
                "{} held of {count} after {timeout:?}\n{}",
                self.held(),
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The Maildir files of `user`, oldest first.
    pub fn mailbox(&self, user: &str) -> Vec<Vec<u8>> {
        let dir = self
            .dir
            .join("mail")
            .join(&self.config.domain)
            .join(user)
            .join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH)
        });
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// Waits until `user` has at least `count` messages.
    pub fn wait_for_mail(&self, user: &str, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mail = self.mailbox(user);
            if mail.len() >= count {
                return mail;
            }
            assert!(
                Instant::now() < deadline,
                "{user}@{} has {} of {count} messages after {timeout:?}\nqueue: {:?}\n{}",
                self.config.domain,
                mail.len(),
                self.queue(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Submits `message` with swaks over SMTP from this instance's address
    /// (an internal client). Returns swaks' transcript; panics on failure.
    pub fn submit(&self, from: &str, to: &[&str], message: &[u8]) -> String {
        let out = self.swaks(from, to, message);
        assert!(out.0, "swaks failed:\n{}\n{}", out.1, self.log_tail(30));
        out.1
    }

    /// Runs swaks from this instance's own address (an internal client);
    /// returns (success, transcript).
    pub fn swaks(&self, from: &str, to: &[&str], message: &[u8]) -> (bool, String) {
        self.swaks_from(self.config.ip, from, to, message)
    }

    /// Runs swaks from `client` (any loopback address: an outside client
    /// when it is not in this instance's networks); returns (success,
    /// transcript).
    pub fn swaks_from(
        &self,
        client: IpAddr,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> (bool, String) {
        let data = self.dir.join(format!(
            "submit-{}.eml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // swaks ends the data with CRLF "." CRLF itself: a final CRLF in the
        // file would add an empty line.
        std::fs::write(&data, message.strip_suffix(b"\r\n").unwrap_or(message)).unwrap();
        let out = Command::new(require_program("swaks", "swaks"))
            .args(["--server", &self.smtp().to_string()])
            .args(["--local-interface", &client.to_string()])
            .args(["--from", from])
            .args(["--to", &to.join(",")])
            .args(["--data", &format!("@{}", data.display())])
            .args(["--timeout", "120"])
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&data);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Submits `message` on this host with Postfix's sendmail(1), as a local
    /// program would: it goes through postdrop, pickup and cleanup (the
    /// non_smtpd_milters). Panics if sendmail fails.
    pub fn sendmail(&self, from: &str, to: &[&str], message: &[u8]) {
        use std::io::Write as _;
        let mut child = Command::new(require_program("sendmail", "postfix"))
            .arg("-C")
            .arg(self.dir.join("conf"))
            .args(["-f", from, "-i", "--"])
            .args(to)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // sendmail takes LF line endings, as a local program writes them.
        let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sendmail failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
    }

    /// Wakes pickup, which takes mail left in the maildrop (as after a
    /// temporary failure) without waiting for its next periodic scan.
    pub fn kick_pickup(&self) {
        let _ = Command::new(require_program("postkick", "postfix"))
            .arg("-c")
            .arg(self.dir.join("conf"))
            .args(["public", "pickup", "W"])
            .output();
    }

    /// Files waiting in the maildrop (submitted, not yet picked up).
    pub fn maildrop(&self) -> usize {
        std::fs::read_dir(self.dir.join("queue/maildrop"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// Sets `name = value` in main.cf (`postconf -e`) and restarts the
    /// instance (queued mail stays). Not `postfix reload`: under reload,
    /// Postfix 3.7's `master -t` has been seen to block for good on the
    /// postlogd socket.
    pub fn postconf(&mut self, setting: &str) {
        let status = Command::new(require_program("postconf", "postfix"))
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("-e")
            .arg(setting)
            .status()
            .unwrap();
        assert!(status.success(), "postconf -e {setting}: {status}");
        self.stop();
        self.start_again();
    }

    /// The configuration directory (for `postconf -c`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.join("conf")
    }

    /// Postfix's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The last `n` log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The instance directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Postfix {
    /// `postfix stop`, bounded: Postfix 3.7's postlogd has been seen to
    /// block on its own log socket (every logging process then blocks,
    /// `postfix stop` included). After 20 s every process of this instance
    /// (found by its working directory, the queue) is killed.
    fn stop_or_kill(&self) {
        let mut child = Command::new(require_program("postfix", "postfix"))
            .arg("-c")
            .arg(self.dir.join("conf"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "postfix {}: stop hung; killing its processes:\n{}",
            self.config.name,
            self.process_report()
        );
        self.kill_processes();
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.running {
            self.stop_or_kill();
        }
    }
}

/// Services besides the SMTP listeners, none chrooted.
const MASTER_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";
