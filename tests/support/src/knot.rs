//! Knot DNS as a throwaway authoritative server for tests.
//!
//! Layout: a signed parent zone `test.` (its key is the trust anchor) with
//! one delegation per child zone, all served by the same `knotd` on a free
//! loopback port. Signed and tampered children get a DS in the parent; an
//! unsigned child gets none, so the parent's signed NSEC proves it insecure.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, is_root, require_program, run};

/// How a child zone is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed by Knot, with a DS in `test.`: answers validate as Secure.
    Signed,
    /// No signatures and no DS: answers validate as Insecure.
    Unsigned,
    /// Signed with a DS, then the TXT at `owner` replaced by `forged`
    /// without re-signing: answers validate as Bogus.
    Tampered {
        /// Owner name relative to the zone, e.g. `_ibemailkey`.
        owner: String,
        /// The forged TXT rdata (zone-file syntax, quoted strings).
        forged: String,
    },
    /// The zone file is missing: Knot answers SERVFAIL.
    Broken,
}

/// A child zone of `test.`.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Full name without trailing dot, e.g. `a.test`.
    pub name: String,
    /// How it is served.
    pub signing: Signing,
    /// Zone-file lines relative to the zone origin (SOA and NS are added).
    pub records: Vec<String>,
    /// Accept RFC 2136 updates signed with the harness's TSIG key.
    pub allow_update: bool,
}

impl Zone {
    pub fn new(name: &str, signing: Signing, records: &[&str]) -> Zone {
        Zone {
            name: name.to_string(),
            signing,
            records: records.iter().map(|r| r.to_string()).collect(),
            allow_update: false,
        }
    }

    pub fn updatable(mut self) -> Zone {
        self.allow_update = true;
        self
    }
}

/// The TSIG key that may update zones marked `allow_update`.
#[derive(Clone, Debug)]
pub struct Tsig {
    pub name: String,
    pub algorithm: String,
    pub secret_base64: String,
}

/// A running `knotd`.
pub struct Knot {
    dir: tempfile::TempDir,
    child: Child,
    /// knotd's own pid (the child is its guarding shell).
    pid: u32,
    conf: PathBuf,
    pub addr: SocketAddr,
    pub tsig: Tsig,
    anchor: String,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<crate::netns::Netns>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

impl Knot {
    /// Starts Knot on 127.0.0.1 with `test.` and the given children.
    pub fn start(zones: &[Zone]) -> Knot {
        Self::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), zones)
    }

    /// Starts Knot on `ip` (any loopback address), on a free port.
    pub fn start_on(ip: IpAddr, zones: &[Zone]) -> Knot {
        Self::start_at(SocketAddr::new(ip, free_port(ip)), zones)
    }

    /// Starts Knot on `addr` (e.g. port 53 for resolvers that cannot be
    /// given a port, like OpenDKIM's).
    pub fn start_at(addr: SocketAddr, zones: &[Zone]) -> Knot {
        Self::start_with(addr, zones, None)
    }

    /// Starts Knot on `addr` in the network namespace `netns`.
    pub fn start_in(netns: &crate::netns::Netns, addr: SocketAddr, zones: &[Zone]) -> Knot {
        Self::start_with(addr, zones, Some(netns.clone()))
    }

    /// `program` here, or in the namespace.
    fn command(netns: Option<&crate::netns::Netns>, program: &str) -> Command {
        match netns {
            Some(ns) => ns.command(program),
            None => Command::new(program),
        }
    }

    fn start_with(addr: SocketAddr, zones: &[Zone], netns: Option<crate::netns::Netns>) -> Knot {
        let ip = addr.ip();
        let knotd = require_program("knotd", "knot");
        let keymgr = require_program("keymgr", "knot");
        require_program("kdig", "knot-dnsutils");
        let dir = tempfile::Builder::new().prefix("knot").tempdir().unwrap();
        let root = dir.path();
        for sub in ["storage", "kasp", "run"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        let secret = {
            use std::io::Read as _;
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .unwrap()
                .read_exact(&mut bytes)
                .unwrap();
            base64_encode(&bytes)
        };
        let tsig = Tsig {
            name: "ibemail-update".into(),
            algorithm: "hmac-sha256".into(),
            secret_base64: secret,
        };
        let conf = root.join("knot.conf");
        std::fs::write(&conf, config(root, addr, &tsig, zones, false)).unwrap();

        // Keys first, so the parent can carry the children's DS records.
        let keymgr_cmd = |zone: &str, args: &[&str]| {
            run(Command::new(&keymgr)
                .arg("-c")
                .arg(&conf)
                .arg(fqdn(zone))
                .args(args))
        };
        let gen_args = [
            "generate",
            "algorithm=ecdsap256sha256",
            "ksk=yes",
            "zsk=yes",
        ];
        keymgr_cmd("test", &gen_args);
        let mut parent = String::new();
        writeln!(parent, "$ORIGIN test.\n$TTL 300").unwrap();
        writeln!(
            parent,
            "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 300"
        )
        .unwrap();
        writeln!(parent, "@ NS ns.test.\nns A {ip}").unwrap();
        for zone in zones {
            let label = zone.name.trim_end_matches(".test");
            writeln!(parent, "{label} NS ns.test.").unwrap();
            if matches!(zone.signing, Signing::Signed | Signing::Tampered { .. }) {
                keymgr_cmd(&zone.name, &gen_args);
                for line in keymgr_cmd(&zone.name, &["ds"]).lines() {
                    // SHA-256 digests only (digest type 2).
                    if line.split_whitespace().nth(4) == Some("2") {
                        writeln!(parent, "{line}").unwrap();
                    }
                }
            }
        }
        std::fs::write(root.join("storage/test.zone"), parent).unwrap();
        for zone in zones.iter().filter(|z| z.signing != Signing::Broken) {
            let mut text = String::new();
            writeln!(text, "$ORIGIN {}\n$TTL 300", fqdn(&zone.name)).unwrap();
            writeln!(
                text,
                "@ SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n@ NS ns.test."
            )
            .unwrap();
            for record in &zone.records {
                writeln!(text, "{record}").unwrap();
            }
            std::fs::write(root.join(format!("storage/{}.zone", zone.name)), text).unwrap();
        }
        let anchor = keymgr_cmd("test", &["dnskey"])
            .lines()
            .map(|l| l.replacen(" DNSKEY ", " IN DNSKEY ", 1))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        std::fs::write(root.join("anchor.txt"), &anchor).unwrap();

        let log = std::fs::File::create(root.join("knotd.log")).unwrap();
        // knotd runs under a shell that kills it when our end of its stdin
        // closes: when this Knot is dropped, and also when the test process
        // exits without dropping it (a server kept in a static).
        let mut child = Self::command(netns.as_ref(), "sh")
            .arg("-c")
            .arg("\"$0\" -c \"$1\" </dev/null & pid=$!; echo $pid; read _; kill $pid; wait $pid")
            .arg(&knotd)
            .arg(&conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = {
            use std::io::BufRead as _;
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            line.trim().parse::<u32>().unwrap()
        };
        let knot = Knot {
            dir,
            child,
            pid,
            conf,
            addr,
            tsig,
            anchor,
            netns,
        };
        knot.wait_until_serving(zones);

        // Tamper after signing: signing off, then change the record.
        if zones
            .iter()
            .any(|z| matches!(z.signing, Signing::Tampered { .. }))
        {
            std::fs::write(
                &knot.conf,
                config(knot.dir.path(), addr, &knot.tsig, zones, true),
            )
            .unwrap();
            knot.knotc(&["reload"]);
            for zone in zones {
                if let Signing::Tampered { owner, forged } = &zone.signing {
                    let z = fqdn(&zone.name);
                    knot.knotc(&["zone-begin", &z]);
                    knot.knotc(&["zone-unset", &z, owner, "TXT"]);
                    knot.knotc(&["zone-set", &z, owner, "300", "TXT", forged]);
                    knot.knotc(&["zone-commit", &z]);
                }
            }
        }
        knot
    }

    fn wait_until_serving(&self, zones: &[Zone]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let names: Vec<String> = std::iter::once("test".to_string())
            .chain(
                zones
                    .iter()
                    .filter(|z| z.signing != Signing::Broken)
                    .map(|z| z.name.clone()),
            )
            .collect();
        for name in names {
            loop {
                let out = Self::command(self.netns.as_ref(), "kdig")
                    .arg(format!("@{}", self.addr.ip()))
                    .args([
                        "-p",
                        &self.addr.port().to_string(),
                        "+dnssec",
                        "+norec",
                        "+timeout=1",
                        "+retry=0",
                    ])
                    .arg(fqdn(&name))
                    .arg("SOA")
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                // Signed zones must already carry their RRSIG.
                let signed = zones
                    .iter()
                    .any(|z| z.name == name && z.signing != Signing::Unsigned)
                    || name == "test";
                if text.contains("status: NOERROR") && (!signed || text.contains("RRSIG")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "knot did not serve {name}:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs `knotc` against this server.
    pub fn knotc(&self, args: &[&str]) -> String {
        run(Command::new(require_program("knotc", "knot"))
            .arg("-c")
            .arg(&self.conf)
            .args(args))
    }

    /// The trust anchor (`test. IN DNSKEY ...`).
    pub fn trust_anchor(&self) -> &str {
        &self.anchor
    }

    /// A file holding the trust anchor.
    pub fn trust_anchor_file(&self) -> PathBuf {
        self.dir.path().join("anchor.txt")
    }

    /// Replaces the TXT RRset at `owner` (relative to `zone`); signed zones
    /// are re-signed by Knot.
    pub fn set_txt(&self, zone: &str, owner: &str, rdata: &[&str]) {
        let z = fqdn(zone);
        self.knotc(&["zone-begin", &z]);
        let _ = Command::new(require_program("knotc", "knot"))
            .arg("-c")
            .arg(&self.conf)
            .args(["zone-unset", &z, owner, "TXT"])
            .output();
        for r in rdata {
            self.knotc(&["zone-set", &z, owner, "300", "TXT", r]);
        }
        self.knotc(&["zone-commit", &z]);
    }

    /// Replaces every record at `owner` (relative to `zone`) by `records`
    /// (`TYPE RDATA` each; none: the name disappears, NXDOMAIN).
    pub fn set_records(&self, zone: &str, owner: &str, records: &[&str]) {
        let z = fqdn(zone);
        self.knotc(&["zone-begin", &z]);
        let _ = Command::new(require_program("knotc", "knot"))
            .arg("-c")
            .arg(&self.conf)
            .args(["zone-unset", &z, owner])
            .output();
        for r in records {
            let (rtype, rdata) = r.split_once(' ').unwrap_or((r, ""));
            self.knotc(&["zone-set", &z, owner, "300", rtype, rdata]);
        }
        self.knotc(&["zone-commit", &z]);
    }

    /// The TXT records at `name`, as kdig prints them (+short).
    pub fn query_txt(&self, name: &str) -> Vec<String> {
        let out = run(Self::command(self.netns.as_ref(), "kdig")
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string(), "+short", "+norec"])
            .arg(fqdn(name))
            .arg("TXT"));
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Freezes the server (SIGSTOP): queries time out, as when it is down.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        run(Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid.to_string()));
    }

    /// Knot's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    /// The harness directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        // Closing stdin makes the shell kill knotd and wait for it.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn config(root: &Path, addr: SocketAddr, tsig: &Tsig, zones: &[Zone], tampered: bool) -> String {
    let root = root.display();
    let mut c = String::new();
    writeln!(
        c,
        "server:\n    rundir: \"{root}/run\"\n    listen: {}@{}",
        addr.ip(),
        addr.port()
    )
    .unwrap();
    if is_root() {
        writeln!(c, "    user: root:root").unwrap();
    }
    writeln!(c, "log:\n  - target: stderr\n    any: info").unwrap();
    writeln!(
        c,
        "database:\n    storage: \"{root}/storage\"\n    kasp-db: \"{root}/kasp\""
    )
    .unwrap();
    writeln!(
        c,
        "key:\n  - id: {}\n    algorithm: {}\n    secret: {}",
        tsig.name, tsig.algorithm, tsig.secret_base64
    )
    .unwrap();
    writeln!(
        c,
        "acl:\n  - id: update\n    key: {}\n    action: update",
        tsig.name
    )
    .unwrap();
    writeln!(
        c,
        "policy:\n  - id: test\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    \
         ksk-lifetime: 0\n    zsk-lifetime: 0\n    rrsig-lifetime: 30d\n    rrsig-refresh: 7d\n    nsec3: off"
    )
    .unwrap();
    writeln!(
        c,
        "template:\n  - id: default\n    storage: \"{root}/storage\"\n    file: \"%s.zone\"\n    \
         zonefile-sync: -1\n    journal-content: all\n    semantic-checks: off"
    )
    .unwrap();
    writeln!(
        c,
        "zone:\n  - domain: test.\n    dnssec-signing: on\n    dnssec-policy: test"
    )
    .unwrap();
    for zone in zones {
        writeln!(c, "  - domain: {}", fqdn(&zone.name)).unwrap();
        match &zone.signing {
            Signing::Signed => {
                writeln!(c, "    dnssec-signing: on\n    dnssec-policy: test").unwrap()
            }
            Signing::Tampered { .. } if tampered => writeln!(c, "    dnssec-signing: off").unwrap(),
            Signing::Tampered { .. } => {
                writeln!(c, "    dnssec-signing: on\n    dnssec-policy: test").unwrap()
            }
            Signing::Unsigned => {}
            Signing::Broken => {
                writeln!(c, "    file: \"/nonexistent/{}.zone\"", zone.name).unwrap()
            }
        }
        if zone.allow_update {
            writeln!(c, "    acl: update").unwrap();
        }
    }
    c
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
