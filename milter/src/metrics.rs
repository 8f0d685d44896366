//! Counters and latency histograms, served in the Prometheus text format
//! on a loopback address (`metrics = "127.0.0.1:9100"`).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ibemail_discovery::{Lookup, Outcome};
use tokio::net::TcpListener;

use crate::engine::verdict::Kind;
use crate::signing::SigResult;

/// Upper bounds (seconds) of the processing-time histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The milter's metrics.
#[derive(Default)]
pub struct Metrics {
    messages: [AtomicU64; Kind::ALL.len()],
    latency: Mutex<Histogram>,
    lookups: [AtomicU64; 4],
    cache_hits: AtomicU64,
    signatures: [AtomicU64; SIGNATURE_RESULTS.len()],
    signed: AtomicU64,
}

const LOOKUP_LABELS: [&str; 4] = ["parameters", "not_ibe", "temporary", "refused"];

/// Signature results, as the words of Authentication-Results.
const SIGNATURE_RESULTS: [&str; 5] = ["pass", "fail", "none", "temperror", "permerror"];

impl Metrics {
    /// Records one processed message.
    pub fn observe(&self, kind: Kind, seconds: f64) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            self.messages[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Records one parameter lookup.
    pub fn lookup(&self, lookup: &Lookup) {
        let i = match lookup.outcome {
            Outcome::Parameters { .. } => 0,
            Outcome::NotIbe(_) => 1,
            Outcome::Temporary(_) => 2,
            Outcome::Refused(_) => 3,
        };
        self.lookups[i].fetch_add(1, Ordering::Relaxed);
        if lookup.cached {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the signature result of one inbound message.
    pub fn signature(&self, result: &SigResult) {
        if let Some(i) = SIGNATURE_RESULTS.iter().position(|w| *w == result.word()) {
            self.signatures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records one signature made (outbound; two for encrypted mail).
    pub fn signed(&self) {
        self.signed.fetch_add(1, Ordering::Relaxed);
    }

    /// Inbound messages whose signature result was `word` (`pass`, …).
    pub fn signature_results(&self, word: &str) -> u64 {
        SIGNATURE_RESULTS
            .iter()
            .position(|w| *w == word)
            .map_or(0, |i| self.signatures[i].load(Ordering::Relaxed))
    }

    /// Signatures made.
    pub fn signatures_made(&self) -> u64 {
        self.signed.load(Ordering::Relaxed)
    }

    /// Messages processed with outcome `kind`.
    pub fn messages(&self, kind: Kind) -> u64 {
        Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.messages[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ibemail_messages_total Messages processed, by outcome.\n\
             # TYPE ibemail_messages_total counter"
        );
        for (i, kind) in Kind::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "ibemail_messages_total{{outcome=\"{}\"}} {}",
                kind.label(),
                self.messages[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ibemail_lookups_total Parameter lookups, by outcome.\n\
             # TYPE ibemail_lookups_total counter"
        );
        for (i, label) in LOOKUP_LABELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ibemail_lookups_total{{outcome=\"{label}\"}} {}",
                self.lookups[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ibemail_lookup_cache_hits_total Lookups answered from the cache.\n\
             # TYPE ibemail_lookup_cache_hits_total counter\n\
             ibemail_lookup_cache_hits_total {}",
            self.cache_hits.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP ibemail_signature_results_total Inbound messages by IBE-Signature result.\n\
             # TYPE ibemail_signature_results_total counter"
        );
        for (i, word) in SIGNATURE_RESULTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ibemail_signature_results_total{{result=\"{word}\"}} {}",
                self.signatures[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ibemail_signatures_made_total IBE-Signature fields added to outbound mail.\n\
             # TYPE ibemail_signatures_made_total counter\n\
             ibemail_signatures_made_total {}",
            self.signed.load(Ordering::Relaxed)
        );
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP ibemail_processing_seconds Time to decide on a message at end of data.\n\
             # TYPE ibemail_processing_seconds histogram"
        );
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "ibemail_processing_seconds_bucket{{le=\"{bound}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "ibemail_processing_seconds_bucket{{le=\"+Inf\"}} {}\n\
             ibemail_processing_seconds_sum {}\n\
             ibemail_processing_seconds_count {}",
            h.count, h.sum, h.count
        );
        out
    }
}

/// Serves `metrics` over HTTP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    ibemail_kgc::metrics::serve(listener, move || metrics.render()).await;
}

/// Binds the metrics listener (loopback only, checked by the config).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    ibemail_kgc::metrics::bind(addr).await
}
