//! An on-path DNS attacker: a UDP and TCP forwarder between a resolver and
//! the genuine authoritative server that, when told to, answers queries for
//! `_ibemailkey.*` from another server (the attacker's Knot) instead — so
//! it can strip, replace or replay a domain's records while every other
//! answer (DNSKEY, DS, SOA) stays genuine. DNSSEC then shows what it can
//! and cannot protect: the attacker's answers carry no valid signature.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The label whose answers the attacker takes over.
const TARGET_LABEL: &[u8] = b"_ibemailkey";

/// A running proxy.
pub struct DnsProxy {
    /// Where resolvers send their queries (UDP and TCP).
    pub addr: SocketAddr,
    attacking: Arc<AtomicBool>,
    attacker: Arc<Mutex<Option<SocketAddr>>>,
    /// If set, only these query names go to the attacker.
    only: Arc<Mutex<Option<Vec<String>>>>,
    stop: Arc<AtomicBool>,
}

/// The first question's name, lower case, without the final dot.
fn query_name(query: &[u8]) -> String {
    let mut at = 12;
    let mut labels = Vec::new();
    while let Some(&len) = query.get(at) {
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let label = query.get(at + 1..at + 1 + usize::from(len)).unwrap_or(&[]);
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + usize::from(len);
    }
    labels.join(".")
}

/// True if the query's first question name starts with `_ibemailkey`.
fn is_target(query: &[u8]) -> bool {
    // Header: 12 bytes; then the first label (length, bytes).
    let Some(&len) = query.get(12) else {
        return false;
    };
    query
        .get(13..13 + usize::from(len))
        .is_some_and(|label| label.eq_ignore_ascii_case(TARGET_LABEL))
}

impl DnsProxy {
    /// Forwards to `genuine`; `_ibemailkey` queries go to `attacker` while
    /// [`DnsProxy::attack`] is on.
    pub fn start(ip: std::net::IpAddr, genuine: SocketAddr, attacker: SocketAddr) -> DnsProxy {
        // A free UDP port may be taken for TCP (by another test running
        // in parallel): then another port.
        let (udp, addr, tcp) = (0..20)
            .find_map(|_| {
                let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
                let addr = udp.local_addr().ok()?;
                let tcp = TcpListener::bind(addr).ok()?;
                Some((udp, addr, tcp))
            })
            .expect("a port free for both UDP and TCP");
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let attacking = Arc::new(AtomicBool::new(false));
        let attacker = Arc::new(Mutex::new(Some(attacker)));
        let only: Arc<Mutex<Option<Vec<String>>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = {
            let (attacking, attacker, only) = (attacking.clone(), attacker.clone(), only.clone());
            move |query: &[u8]| -> SocketAddr {
                let chosen = match &*only.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(names) => names.contains(&query_name(query)),
                    None => is_target(query),
                };
                match *attacker.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(evil) if attacking.load(Ordering::SeqCst) && chosen => evil,
                    _ => genuine,
                }
            }
        };
        {
            let (stop, upstream) = (stop.clone(), upstream.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, client)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    let query = buf[..n].to_vec();
                    let to = upstream(&query);
                    let udp = udp.try_clone().unwrap();
                    std::thread::spawn(move || {
                        let Ok(out) = UdpSocket::bind(SocketAddr::new(to.ip(), 0)) else {
                            return;
                        };
                        let _ = out.set_read_timeout(Some(Duration::from_secs(3)));
                        if out.send_to(&query, to).is_ok() {
                            let mut answer = [0u8; 65_535];
                            if let Ok((m, _)) = out.recv_from(&mut answer) {
                                let _ = udp.send_to(&answer[..m], client);
                            }
                        }
                    });
                }
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((client, _)) => {
                            let upstream = upstream.clone();
                            std::thread::spawn(move || {
                                let _ = tcp_session(client, &upstream);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        DnsProxy {
            addr,
            attacking,
            attacker,
            only,
            stop,
        }
    }

    /// Starts (or stops) answering `_ibemailkey` from the attacker.
    pub fn attack(&self, on: bool) {
        self.attacking.store(on, Ordering::SeqCst);
    }

    /// Takes over only these query names (e.g. `_ibemailkey.ub.test`), all
    /// types; every other query, including other `_ibemailkey` names, goes
    /// to the genuine server.
    pub fn attack_only(&self, names: &[&str]) {
        *self.only.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(names.iter().map(|n| n.to_ascii_lowercase()).collect());
    }
}

/// Relays length-prefixed DNS messages on one TCP connection.
fn tcp_session(
    mut client: TcpStream,
    upstream: &impl Fn(&[u8]) -> SocketAddr,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    loop {
        let mut prefix = [0u8; 2];
        client.read_exact(&mut prefix)?;
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        client.read_exact(&mut query)?;
        let mut server = TcpStream::connect_timeout(&upstream(&query), Duration::from_secs(3))?;
        server.set_read_timeout(Some(Duration::from_secs(5)))?;
        server.write_all(&prefix)?;
        server.write_all(&query)?;
        server.read_exact(&mut prefix)?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        server.read_exact(&mut answer)?;
        client.write_all(&prefix)?;
        client.write_all(&answer)?;
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        *self.attacker.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
