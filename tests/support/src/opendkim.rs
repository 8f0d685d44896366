//! OpenDKIM as a milter beside ibemail: a signer for one domain (key made
//! with `opendkim-genkey`), or a verifier asking a given name server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_program, run};

pub struct OpenDkim {
    pub addr: SocketAddr,
    /// The DKIM key record for the zone (`s1._domainkey TXT "..."`), signers only.
    pub key_record: Option<String>,
    child: Child,
    dir: tempfile::TempDir,
}

impl OpenDkim {
    /// Signs mail from `domain` with selector `s1`, listening on `ip`.
    pub fn signer(ip: IpAddr, domain: &str) -> OpenDkim {
        let dir = tempfile::Builder::new()
            .prefix("opendkim")
            .tempdir()
            .unwrap();
        run(
            Command::new(require_program("opendkim-genkey", "opendkim-tools"))
                .args(["-b", "2048", "-d", domain, "-s", "s1", "-D"])
                .arg(dir.path()),
        );
        let txt = std::fs::read_to_string(dir.path().join("s1.txt")).unwrap();
        // `s1._domainkey IN TXT ( "v=DKIM1; ..." "p=..." ) ; comment`
        let record = format!(
            "s1._domainkey TXT {}",
            quoted_strings(&txt)
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let key = dir.path().join("s1.private");
        let conf = format!(
            "Domain {domain}\nSelector s1\nKeyFile {}\nMode s\nInternalHosts 127.0.0.0/8\nSignHeaders From,To,Subject,Date,Message-ID\n",
            key.display()
        );
        Self::start(ip, dir, &conf, Some(record))
    }

    /// Verifies signatures with the signers' public keys given directly
    /// (OpenDKIM's `TestPublicKeys`: its libunbound resolver would not use
    /// the test name server on loopback), reporting as `authserv_id`.
    pub fn verifier(ip: IpAddr, signers: &[(&str, &OpenDkim)], authserv_id: &str) -> OpenDkim {
        let dir = tempfile::Builder::new()
            .prefix("opendkim")
            .tempdir()
            .unwrap();
        let mut keys = String::new();
        for (domain, signer) in signers {
            let record = signer.key_record.as_deref().unwrap_or_default();
            let data: String = quoted_strings(record).concat();
            keys.push_str(&format!("s1._domainkey.{domain} {data}\n"));
        }
        let keys_path = dir.path().join("keys");
        std::fs::write(&keys_path, keys).unwrap();
        let conf = format!(
            "Mode v\nTestPublicKeys {}\nAuthservID {authserv_id}\n",
            keys_path.display()
        );
        Self::start(ip, dir, &conf, None)
    }

    fn start(
        ip: IpAddr,
        dir: tempfile::TempDir,
        extra: &str,
        key_record: Option<String>,
    ) -> OpenDkim {
        let port = free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let conf_path: PathBuf = dir.path().join("opendkim.conf");
        std::fs::write(
            &conf_path,
            format!(
                "Syslog no\nSocket inet:{port}@{ip}\nBackground no\nUserID root\n\
                 RequireSafeKeys false\nCanonicalization relaxed/simple\n{extra}"
            ),
        )
        .unwrap();
        let child = Command::new(require_program("opendkim", "opendkim"))
            .args(["-f", "-x"])
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "opendkim did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OpenDkim {
            addr,
            key_record,
            child,
            dir,
        }
    }

    /// `inet:HOST:PORT` for Postfix's milter lists.
    pub fn milter(&self) -> String {
        format!("inet:{}", self.addr)
    }

    /// CPU seconds (user + system) the process used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::process_cpu_seconds(self.child.id())
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The contents of the double-quoted strings in `text`, in order.
fn quoted_strings(text: &str) -> Vec<&str> {
    text.split('"').skip(1).step_by(2).collect()
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
