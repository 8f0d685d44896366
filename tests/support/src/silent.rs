//! A name server that never answers: UDP datagrams are read and dropped, TCP
//! connections are accepted and left hanging. Lookups against it time out.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::free_port;

pub struct Silent {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Silent {
    pub fn start(ip: IpAddr) -> Silent {
        let port = free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let udp = UdpSocket::bind(addr).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let tcp = TcpListener::bind(addr).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s1 = stop.clone();
        let s2 = stop.clone();
        let threads = vec![
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !s1.load(Ordering::Relaxed) {
                    let _ = udp.recv_from(&mut buf);
                }
            }),
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !s2.load(Ordering::Relaxed) {
                    if let Ok((stream, _)) = tcp.accept() {
                        held.push(stream);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }),
        ];
        Silent {
            addr,
            stop,
            threads,
        }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
