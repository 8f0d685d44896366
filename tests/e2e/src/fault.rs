//! A milter that fails transactions on purpose: placed after ibemail in
//! Postfix's milter list, it makes a transaction fail *after* ibemail has
//! done its work (re-injected a copy), as a spam filter's refusal or
//! Postfix's milter timeout would.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use indymilter::{Callbacks, Status};

/// A running fault milter.
pub struct FaultMilter {
    pub addr: SocketAddr,
    remaining: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultMilter {
    /// Listens on `ip` and tempfails the end of the next `count` messages,
    /// then accepts every message unchanged.
    pub fn start(ip: IpAddr, count: usize) -> FaultMilter {
        let remaining = Arc::new(AtomicUsize::new(count));
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let left = remaining.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let callbacks = Callbacks::<()>::new().on_eom(move |_| {
                    let left = left.clone();
                    Box::pin(async move {
                        let failed = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if failed {
                            Status::Tempfail
                        } else {
                            Status::Continue
                        }
                    })
                });
                let _ = indymilter::run(listener, callbacks, Default::default(), async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        FaultMilter {
            addr,
            remaining,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The milter as Postfix's `smtpd_milters` names it.
    pub fn milter(&self) -> String {
        format!("inet:{}", self.addr)
    }

    /// Failures still to come.
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::SeqCst)
    }
}

impl Drop for FaultMilter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
