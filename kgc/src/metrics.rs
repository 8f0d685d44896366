//! The KGC daemon's counters in the Prometheus text format
//! (`serve --metrics 127.0.0.1:9101`), and the small HTTP server that both
//! daemons use to serve their metrics on a loopback address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Operations counted, as in the audit log.
pub const OPERATIONS: [&str; 4] = ["open", "sign", "sign-certified", "replicate"];

/// Outcomes of one key use, as in the audit log.
pub const OUTCOMES: [&str; 8] = [
    "opened",
    "signed",
    "rejected",
    "retired",
    "unknown-generation",
    "wrong-domain",
    "error",
    "forbidden",
];

/// Key uses by operation and outcome, and refused connections.
#[derive(Debug, Default)]
pub struct KgcMetrics {
    requests: [[AtomicU64; OUTCOMES.len()]; OPERATIONS.len()],
    refused: AtomicU64,
}

fn position(list: &[&str], word: &str) -> Option<usize> {
    list.iter().position(|w| *w == word)
}

impl KgcMetrics {
    /// Counts one key use (`operation` and `outcome` as in the audit log;
    /// other words are not counted).
    pub fn request(&self, operation: &str, outcome: &str) {
        if let (Some(op), Some(out)) = (
            position(&OPERATIONS, operation),
            position(&OUTCOMES, outcome),
        ) {
            self.requests[op][out].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a connection refused because its peer's uid is not allowed.
    pub fn refused_connection(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Key uses with this operation and outcome so far.
    pub fn requests(&self, operation: &str, outcome: &str) -> u64 {
        match (
            position(&OPERATIONS, operation),
            position(&OUTCOMES, outcome),
        ) {
            (Some(op), Some(out)) => self.requests[op][out].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Connections refused so far.
    pub fn refused_connections(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from(
            "# HELP ibemail_kgc_requests_total Key uses, by operation and outcome.\n\
             # TYPE ibemail_kgc_requests_total counter\n",
        );
        for operation in OPERATIONS {
            for outcome in OUTCOMES {
                let _ = writeln!(
                    out,
                    "ibemail_kgc_requests_total{{operation=\"{operation}\",outcome=\"{outcome}\"}} {}",
                    self.requests(operation, outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP ibemail_kgc_refused_connections_total Connections refused: no grant for the peer (uid or certificate), or a failed TLS handshake.\n\
             # TYPE ibemail_kgc_refused_connections_total counter\n\
             ibemail_kgc_refused_connections_total {}",
            self.refused_connections()
        );
        out
    }
}

/// Binds a metrics listener; `addr` must be a loopback address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} is not a loopback address"),
        ));
    }
    TcpListener::bind(addr).await
}

/// Answers every HTTP request on `listener` (any path) with `render()` as
/// Prometheus text, until the task is dropped.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Clone + Send + 'static,
{
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), then answer.
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let body = render();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_and_outcome_is_rendered_and_unknown_words_are_not_counted() {
        let m = KgcMetrics::default();
        m.request("open", "opened");
        m.request("open", "opened");
        m.request("sign", "wrong-domain");
        m.request("open", "bogus");
        m.refused_connection();
        let text = m.render();
        assert!(
            text.contains("ibemail_kgc_requests_total{operation=\"open\",outcome=\"opened\"} 2")
        );
        assert!(
            text.contains(
                "ibemail_kgc_requests_total{operation=\"sign\",outcome=\"wrong-domain\"} 1"
            )
        );
        assert!(text.contains("ibemail_kgc_refused_connections_total 1"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("ibemail_kgc_requests_total{"))
                .count(),
            OPERATIONS.len() * OUTCOMES.len()
        );
    }
}
