//! Network namespaces for tests with several hosts: each "host" is a
//! namespace of its own with one interface (`eth0`) on a bridge that lives
//! in a namespace of its own too, so nothing of the test's network is
//! visible in the machine's namespace, and servers listen only inside the
//! namespaces the test created.
//!
//! Programs run in a namespace with `ip netns exec` ([`Netns::command`],
//! which also puts `/etc/netns/NAME/resolv.conf` in place of the machine's,
//! [`Lab::set_resolver`]). The test process itself reaches into a namespace
//! with a thread that enters it ([`Netns::run`], [`Netns::connect`]): a
//! socket created there stays in that namespace, whichever thread uses it.
//!
//! Needs root (CAP_SYS_ADMIN), which the CI has. Namespaces are named
//! `ibemail-mh-<pid>-<host>`; those of test processes that died without
//! cleaning up are removed by the next [`Lab::new`].

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::{is_root, require_program, run};

const PREFIX: &str = "ibemail-mh-";

/// A network namespace of the test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    /// Its name (`ip netns list`).
    pub name: String,
}

impl Netns {
    /// `ip netns exec NAME program`: the program in this namespace (and
    /// with this namespace's `/etc/netns/NAME` files).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(require_program("ip", "iproute2"));
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    /// Sockets it creates belong to the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    rustix::thread::move_into_link_name_space(
                        file.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("entering {}: {e}", self.name));
                    f()
                })
                .join()
                .unwrap()
        })
    }

    /// A TCP connection to `addr` from inside this namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// The processes in this namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new(require_program("ip", "iproute2"))
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }

    /// Takes the host's link down (it vanishes from the network, as a
    /// crashed machine or a cut cable) or up again.
    pub fn set_link(&self, up: bool) {
        run(Command::new(require_program("ip", "iproute2")).args([
            "-n",
            &self.name,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]));
    }
}

/// The namespaces of one test: a LAN (a bridge) and hosts on it. Dropping
/// it kills every process left in them and deletes them.
pub struct Lab {
    prefix: String,
    lan: Netns,
    hosts: Mutex<Vec<Netns>>,
}

fn ip(args: &[&str]) -> String {
    run(Command::new(require_program("ip", "iproute2")).args(args))
}

fn kill_all(ns: &Netns) {
    for pid in ns.pids() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn delete(ns: &Netns) {
    kill_all(ns);
    let _ = Command::new(require_program("ip", "iproute2"))
        .args(["netns", "delete", &ns.name])
        .output();
    let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns.name));
}

/// Removes the namespaces of test processes that no longer run.
fn remove_stale() {
    let list = ip(&["netns", "list"]);
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            delete(&Netns {
                name: name.to_string(),
            });
        }
    }
}

impl Lab {
    /// A LAN for this process (`tag` tells several labs of one process
    /// apart).
    pub fn new(tag: &str) -> Lab {
        assert!(
            is_root(),
            "network namespaces need root (the CI runs as root; use sudo scripts/test)"
        );
        remove_stale();
        let prefix = format!("{PREFIX}{}-{tag}", std::process::id());
        let lan = Netns {
            name: format!("{prefix}-lan"),
        };
        ip(&["netns", "add", &lan.name]);
        ip(&["-n", &lan.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.name, "link", "set", "br0", "up"]);
        Lab {
            prefix,
            lan,
            hosts: Mutex::new(Vec::new()),
        }
    }

    /// A host `short` (letters and digits, at most 12) on the LAN with the
    /// addresses `addresses` (each /24) on its `eth0`, and loopback up.
    pub fn host(&self, short: &str, addresses: &[Ipv4Addr]) -> Netns {
        assert!(short.len() <= 12 && short.chars().all(|c| c.is_ascii_alphanumeric()));
        let ns = Netns {
            name: format!("{}-{short}", self.prefix),
        };
        ip(&["netns", "add", &ns.name]);
        self.hosts.lock().unwrap().push(ns.clone());
        let port = format!("v{short}");
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.lan.name,
        ]);
        ip(&["-n", &self.lan.name, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.lan.name, "link", "set", &port, "up"]);
        for address in addresses {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
        }
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ns
    }

    /// Makes `server` the name server of programs run in `ns` with
    /// [`Netns::command`] (`/etc/netns/NAME/resolv.conf`).
    pub fn set_resolver(&self, ns: &Netns, server: IpAddr) {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.lock().unwrap().iter() {
            delete(ns);
        }
        delete(&self.lan);
    }
}
