//! `ibemail-milter run`: process work around [`crate::run`] —
//! logging, the socket (a stale Unix socket is replaced), the metrics
//! listener, SIGHUP reload and SIGTERM drain.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{self, Metrics};
use ibemail_kgc::logging::{self, LogFormat};
use indymilter::{EitherListener, Listener};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

/// A TCP listener tuned for the milter protocol's many small messages in
/// both directions. Each is a write the other side waits for, so the
/// usual TCP batching only adds latency:
///
/// - our side sends each write at once (`TCP_NODELAY`): at the end of a
///   message the milter answers with several small messages in a row
///   (header changes, the body, the verdict), and with Nagle's algorithm
///   each after the first would wait for Postfix's acknowledgement;
/// - our side acknowledges at once (`TCP_QUICKACK`, re-armed after each
///   read, see [`QuickAck`]): Postfix sends its commands (each header,
///   body chunks) as separate small writes without `TCP_NODELAY`, so each
///   after the first waits for our acknowledgement, which Linux delays by
///   up to 40 ms.
///
/// Measured with `ibemail-bench-postfix` (docs/benchmarks.md): about
/// 95 → 140 msg/s with the first, and more with both. A Unix socket
/// (`unix:PATH`) has neither delay.
pub struct MilterTcp(pub TcpListener);

impl Listener for MilterTcp {
    type Io = QuickAck;

    fn poll_accept(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(stream, _)| {
            // Without them the milter still works, only slower.
            let _ = stream.set_nodelay(true);
            let _ = rustix::net::sockopt::set_tcp_quickack(&stream, true);
            QuickAck(stream)
        })
    }
}

/// A TCP stream that asks for immediate acknowledgements after every
/// read: Linux falls back to delayed acknowledgements on its own, so
/// `TCP_QUICKACK` is not sticky.
pub struct QuickAck(tokio::net::TcpStream);

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if polled.is_ready() {
            let _ = rustix::net::sockopt::set_tcp_quickack(&self.0, true);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

async fn bind(socket: &str) -> Result<EitherListener<MilterTcp, UnixListener>, String> {
    if let Some(addr) = socket.strip_prefix("inet:") {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("socket {socket}: {e}"))?;
        Ok(EitherListener::Tcp(MilterTcp(listener)))
    } else if let Some(path) = socket.strip_prefix("unix:") {
        let path = Path::new(path);
        let listener = ibemail_kgc::socket::bind_replacing_stale(path, 0o660)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                UnixListener::from_std(l)
            })
            .map_err(|e| format!("socket {socket}: {e}"))?;
        Ok(EitherListener::Unix(listener))
    } else {
        Err(format!(
            "socket {socket}: expected inet:HOST:PORT or unix:PATH"
        ))
    }
}

/// Why `run` stopped with an error.
pub enum RunError {
    /// The configuration cannot work (a mistake in the file, a key store
    /// or pin file it cannot read): restarting will not help.
    Config(String),
    /// Anything else (the socket busy, an I/O error).
    Failed(String),
}

/// Runs the milter until SIGTERM or SIGINT. `log_format` (the command
/// line's) overrides the configuration's.
pub fn run(config_path: &Path, log_format: Option<LogFormat>) -> Result<(), RunError> {
    let config = Config::load(config_path).map_err(RunError::Config)?;
    logging::init(log_format.unwrap_or(config.log_format), "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(format!("tokio runtime: {e}")))?;
    let metrics = Arc::new(Metrics::default());
    let running = config.clone();
    let engine = {
        // The resolver is built on the runtime it will run on.
        let _runtime = runtime.enter();
        Arc::new(Engine::new(config, metrics.clone()).map_err(RunError::Config)?)
    };
    runtime
        .block_on(serve(config_path, running, engine, metrics))
        .map_err(RunError::Failed)
}

async fn serve(
    config_path: &Path,
    running: Config,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
) -> Result<(), String> {
    let socket = running.socket.clone();
    let metrics_addr = running.metrics;
    let listener = bind(&socket).await?;
    if let Some(addr) = metrics_addr {
        let l = metrics::bind(addr)
            .await
            .map_err(|e| format!("metrics {addr}: {e}"))?;
        tokio::spawn(metrics::serve(l, metrics.clone()));
        info!(%addr, "metrics endpoint listening");
    }
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let mut hangup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let path = config_path.to_path_buf();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let rebuilt = Config::load(&path).and_then(|c| {
                // Everything else applies to the next message; these
                // are bound once, at start.
                for change in running.needs_restart(&c) {
                    warn!("{change}: not applied by a reload; restart the milter for it");
                }
                Engine::new(c, metrics.clone())
            });
            match rebuilt {
                Ok(engine) => {
                    let _ = reload_tx.send(Arc::new(engine)).await;
                }
                Err(e) => {
                    error!(error = %e, "reload failed; keeping the running configuration")
                }
            }
        }
    });
    info!(socket = %socket_name(&listener), "ibemail-milter started");
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        info!("shutting down; finishing messages in progress");
    };
    crate::run(listener, engine, reload_rx, shutdown)
        .await
        .map_err(|e| format!("milter: {e}"))?;
    info!("stopped");
    Ok(())
}

fn socket_name(listener: &EitherListener<MilterTcp, UnixListener>) -> String {
    match listener {
        EitherListener::Tcp(MilterTcp(l)) => l
            .local_addr()
            .map_or_else(|_| "inet".into(), |a| format!("inet:{a}")),
        EitherListener::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_else(|| "unix".into()),
    }
}
