//! `ibemail-milter run`: process work around [`crate::run`] —
//! logging, the socket (a stale Unix socket is replaced), the metrics
//! listener, SIGHUP reload and SIGTERM drain.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{self, Metrics};
use ibemail_kgc::logging::{self, LogFormat};
use indymilter::EitherListener;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

async fn bind(socket: &str) -> Result<EitherListener<TcpListener, UnixListener>, String> {
    if let Some(addr) = socket.strip_prefix("inet:") {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("socket {socket}: {e}"))?;
        Ok(EitherListener::Tcp(listener))
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

fn socket_name(listener: &EitherListener<TcpListener, UnixListener>) -> String {
    match listener {
        EitherListener::Tcp(l) => l
            .local_addr()
            .map_or_else(|_| "inet".into(), |a| format!("inet:{a}")),
        EitherListener::Unix(l) => l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
            .unwrap_or_else(|| "unix".into()),
    }
}
