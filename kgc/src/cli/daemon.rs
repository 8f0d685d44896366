//! `ibemail-kgc serve`'s loop: the socket, signals (SIGHUP reloads), the
//! upkeep rounds (rotation, publication, watching DNS, retirement) on a
//! timer and whenever another process changes a store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::now;
use crate::server::{ServerConfig, serve, serve_tls};
use crate::service::KeyService;
use crate::upkeep::Upkeep;
use anyhow::{Context as _, Result};

use super::network::Network;
use tracing::{error, info};

/// The events of the two refusal log limits, for their counts.
const REFUSED: &str = "refused connections";
/// See [`REFUSED`].
const BEYOND_GRANT: &str = "requests beyond a grant";

/// Binds the socket, replacing a stale one but never a live daemon's.
async fn bind(socket: &Path, mode: u32) -> Result<tokio::net::UnixListener> {
    let listener = crate::socket::bind_replacing_stale(socket, mode)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .with_context(|| format!("binding {}", socket.display()))?;
    Ok(listener)
}

/// The store directories' modification times: a rotation or retirement
/// by another process changes them.
fn stamps(dirs: &[PathBuf]) -> Vec<Option<SystemTime>> {
    dirs.iter()
        .map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
        .collect()
}

// One call site; the arguments are the daemon's parts.
#[allow(clippy::too_many_arguments)]
pub(super) async fn daemon(
    service: KeyService,
    socket: Option<&Path>,
    mode: u32,
    config: ServerConfig,
    network: Network,
    metrics: Option<SocketAddr>,
    mut upkeep: Upkeep,
    interval: Duration,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let service = Arc::new(service);
    let listener = match socket {
        Some(socket) => Some(bind(socket, mode).await?),
        None => None,
    };
    let mut tls_listeners = Vec::new();
    if let Some((addrs, _)) = &network.tls {
        for addr in addrs {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--tls-listen {addr}"))?;
            tls_listeners.push((*addr, listener));
        }
    }
    if let Some(addr) = metrics {
        let listener = crate::metrics::bind(addr)
            .await
            .with_context(|| format!("metrics {addr}"))?;
        let service = service.clone();
        tokio::spawn(crate::metrics::serve(listener, move || {
            service.metrics().render()
        }));
        info!(%addr, "metrics endpoint listening");
    }
    for (domain, generation) in service.hello() {
        info!("serving {domain} (signing with generation {generation})");
    }
    let grants: Vec<String> = config
        .grants
        .iter()
        .map(|(uid, g)| {
            let what = g.describe();
            if g.open_as.is_empty() {
                format!("{uid}:{what}")
            } else {
                let who: Vec<&str> = g.open_as.iter().map(String::as_str).collect();
                format!("{uid}:{what}({})", who.join(","))
            }
        })
        .collect();
    if let Some(socket) = socket {
        info!(
            "listening on {} for uids {}",
            socket.display(),
            grants.join(" ")
        );
    }
    let certificates: Vec<String> = config
        .certificates
        .iter()
        .map(|(pin, g)| format!("{pin}={}", g.describe()))
        .collect();
    for (addr, _) in &tls_listeners {
        info!(
            "listening on tls:{addr} for certificates {}",
            certificates.join(" ")
        );
    }

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    let replication = config.replication.clone();
    if let Some(listener) = listener {
        servers.spawn(serve(
            listener,
            service.clone(),
            config.clone(),
            stopped(stop_rx.clone()),
        ));
    }
    if let Some((_, tls)) = &network.tls {
        for (_, listener) in tls_listeners {
            servers.spawn(serve_tls(
                listener,
                tls.clone(),
                service.clone(),
                config.clone(),
                stopped(stop_rx.clone()),
            ));
        }
    }
    if let Some((link, every)) = network.replica {
        info!(
            "replica of {}: syncing every {} s",
            link.primary(),
            every.as_secs()
        );
        let (service, stop) = (service.clone(), stop_rx.clone());
        servers.spawn(async move {
            crate::replica::run(link, service, every, stop).await;
            Ok(())
        });
    }

    let mut tick = tokio::time::interval(interval);
    // A store changed by another process (`ibemail-kgc rotate`) is noticed
    // within seconds and published at once, not at the next tick.
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut seen = stamps(service.dirs());
    loop {
        let reported = async {
            match &replication {
                Some(r) => r.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup.recv() => {
                match service.reload() {
                    Ok(()) => info!("reloaded key stores"),
                    Err(e) => error!("reload failed, keeping the previous keys: {e}"),
                }
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => {
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            // A replica reported something new: a staged generation may
            // be released now.
            () = reported => {
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            _ = poll.tick() => {
                config.refusals.report_unlogged(false, REFUSED);
                config.beyond_grant.report_unlogged(false, BEYOND_GRANT);
                let now_seen = stamps(service.dirs());
                if now_seen != seen {
                    upkeep.run(&service, now()).await;
                    seen = stamps(service.dirs());
                }
            }
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    config.refusals.report_unlogged(true, REFUSED);
    config.beyond_grant.report_unlogged(true, BEYOND_GRANT);
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}
