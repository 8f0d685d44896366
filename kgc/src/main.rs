//! `ibemail-kgc`: the key generation center of a mail domain.
//!
//! Process concerns only (arguments, logging, signals, sockets); the work is
//! in the library.

#![forbid(unsafe_code)]
// A command-line tool prints its results.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};
use ibemail_ibe::Identity;
use ibemail_kgc::duration::parse_duration;
use ibemail_kgc::server::{ServerConfig, serve};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::{State, Store};
use rand_core::OsRng;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "ibemail-kgc",
    version,
    about = "Key generation center for ibemail identity-based e-mail encryption",
    long_about = "Key generation center (KGC) for ibemail.\n\n\
        A KGC holds a domain's master key. Senders find its public parameters in DNS at \
        _ibemailkey.<domain>; the KGC derives each user's private key from the master key \
        when the milter needs to open a message. First steps:\n\n  \
        ibemail-kgc setup --domain example.org --dir /var/lib/ibemail/kgc\n  \
        (publish the printed TXT record in the example.org zone)\n  \
        ibemail-kgc check --dir /var/lib/ibemail/kgc\n  \
        ibemail-kgc serve --dir /var/lib/ibemail/kgc --socket /run/ibemail/kgc.sock"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a key store with a new master key (generation 1) and print the
    /// DNS record to publish.
    Setup {
        /// The mail domain this KGC serves.
        #[arg(long)]
        domain: String,
        /// Directory for the key store (created 0700; must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// TTL of the printed zone-file line, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Print the zone-file lines of every published generation.
    Record {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// TTL of the zone-file lines, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Show the generations of the store and their states.
    Status {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a user's private key (base64), as the paper's `kgc -g`.
    ///
    /// Normally keys never leave the KGC: the milter asks `serve` to open
    /// messages. This is for inspection and offline recovery.
    Extract {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// The user's address.
        address: String,
        /// Generation (default: the active one).
        #[arg(long)]
        generation: Option<u32>,
    },
    /// Start a new generation. The previous one keeps opening mail during
    /// the overlap, then is retired and its key destroyed.
    Rotate {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// How long the previous generation stays usable (e.g. 30d). Must
        /// exceed the DNS TTL plus the longest time mail waits in queues.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        overlap: u64,
        /// TTL of the printed zone-file lines, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Retire (destroy the keys of) generations whose overlap has ended.
    Retire {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the key daemon: open capsules for the milter over a Unix socket.
    Serve {
        /// Key store(s), one per domain served.
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
        /// Unix socket to listen on (a stale one is replaced).
        #[arg(long)]
        socket: PathBuf,
        /// User ids allowed to connect (default: this process's uid). The
        /// milter's uid must be listed.
        #[arg(long = "allow-uid")]
        allow_uid: Vec<u32>,
        /// Permissions of the socket file (octal).
        #[arg(long, default_value = "660")]
        socket_mode: String,
        /// Derived user keys kept in memory.
        #[arg(long, default_value_t = 10_000)]
        cache_size: usize,
        /// Rotate automatically when the active generation is this old (e.g. 90d).
        #[arg(long, value_parser = parse_duration)]
        rotate_every: Option<u64>,
        /// Overlap used by automatic rotations.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        overlap: u64,
        /// How often to retire expired generations and check for rotation.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        maintenance_interval: u64,
    },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn print_records(store: &Store, ttl: u32) {
    for record in store.records() {
        println!("{}", record.zone_line(store.domain(), ttl));
    }
}

fn describe(state: State, now: u64) -> String {
    match state {
        State::Active => "active".into(),
        State::Retiring { until } if until == u64::MAX => "retiring (no retirement time)".into(),
        State::Retiring { until } => format!(
            "retiring, retired in {}",
            humanize(until.saturating_sub(now))
        ),
        State::Retired { at } => format!(
            "retired {} ago, key destroyed",
            humanize(now.saturating_sub(at))
        ),
    }
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Setup { domain, dir, ttl } => {
            let store = Store::setup(&dir, &domain, now(), &mut OsRng)?;
            eprintln!(
                "Created the key store of {} in {} (generation 1).\nPublish this record in the {} zone:",
                store.domain(),
                dir.display(),
                store.domain()
            );
            print_records(&store, ttl);
        }
        Command::Record { dir, ttl } => print_records(&Store::open(&dir)?, ttl),
        Command::Status { dir } => {
            let store = Store::open(&dir)?;
            println!("domain {}", store.domain());
            let now = now();
            for entry in store.generations() {
                let state = store
                    .state(entry.generation())
                    .map_or("unknown".into(), |s| describe(s, now));
                println!("generation {:>4}  {state}", entry.generation());
            }
        }
        Command::Extract {
            dir,
            address,
            generation,
        } => {
            let store = Store::open(&dir)?;
            let identity =
                Identity::parse(&address).with_context(|| format!("address {address:?}"))?;
            let generation = match generation {
                Some(n) => n,
                None => store
                    .active_generation()
                    .context("the store has no active generation")?,
            };
            let key = store.extract(&identity, generation)?;
            println!("{}", STANDARD.encode(key.to_bytes().as_ref()));
        }
        Command::Rotate { dir, overlap, ttl } => {
            let mut store = Store::open(&dir)?;
            let generation = store.rotate(overlap, now(), &mut OsRng)?;
            eprintln!(
                "Generation {generation} is active. Publish these records (or run `ibemail-kgc publish`):"
            );
            print_records(&store, ttl);
        }
        Command::Retire { dir } => {
            let mut store = Store::open(&dir)?;
            let retired = store.retire_expired(now())?;
            if retired.is_empty() {
                eprintln!("Nothing to retire.");
            }
            for n in retired {
                eprintln!("Retired generation {n}; its key was destroyed.");
            }
        }
        Command::Serve {
            dir,
            socket,
            allow_uid,
            socket_mode,
            cache_size,
            rotate_every,
            overlap,
            maintenance_interval,
        } => {
            let mode =
                u32::from_str_radix(&socket_mode, 8).context("--socket-mode must be octal")?;
            let mut config = ServerConfig::default();
            if !allow_uid.is_empty() {
                config.allowed_uids = allow_uid;
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(daemon(
                dir,
                &socket,
                mode,
                config,
                cache_size,
                rotate_every,
                overlap,
                maintenance_interval,
            ))?;
        }
    }
    Ok(())
}

/// Binds the socket, replacing a stale one but never a live daemon's.
async fn bind(socket: &Path, mode: u32) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!("{} is in use by a running daemon", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

#[allow(clippy::too_many_arguments)]
async fn daemon(
    dirs: Vec<PathBuf>,
    socket: &Path,
    mode: u32,
    config: ServerConfig,
    cache_size: usize,
    rotate_every: Option<u64>,
    overlap: u64,
    maintenance_interval: u64,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let service = Arc::new(KeyService::load(&dirs, cache_size)?);
    let listener = bind(socket, mode).await?;
    for (domain, generation) in service.hello() {
        info!("serving {domain} (active generation {generation})");
    }
    info!(
        "listening on {} for uids {:?}",
        socket.display(),
        config.allowed_uids
    );

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, service.clone(), config, async {
        let _ = stop_rx.await;
    }));

    let mut tick = tokio::time::interval(Duration::from_secs(maintenance_interval.max(1)));
    loop {
        tokio::select! {
            _ = hangup.recv() => match service.reload() {
                Ok(()) => info!("reloaded key stores"),
                Err(e) => error!("reload failed, keeping the previous keys: {e}"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => maintenance(&service, rotate_every, overlap),
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Retires expired generations and rotates when due, then reloads.
fn maintenance(service: &KeyService, rotate_every: Option<u64>, overlap: u64) {
    let now = now();
    let mut changed = false;
    for dir in service.dirs() {
        let mut store = match Store::open(dir) {
            Ok(s) => s,
            Err(e) => {
                error!("{}: {e}", dir.display());
                continue;
            }
        };
        if let (Some(every), Some(active)) = (rotate_every, store.active_generation()) {
            let created = store
                .generations()
                .find(|e| e.generation() == active)
                .map_or(0, |e| e.created());
            if now >= created.saturating_add(every) {
                match store.rotate(overlap, now, &mut OsRng) {
                    Ok(n) => {
                        info!(
                            "{}: rotated to generation {n}; publish the new record",
                            store.domain()
                        );
                        changed = true;
                    }
                    Err(e) => error!("{}: rotation failed: {e}", store.domain()),
                }
            }
        }
        match store.retire_expired(now) {
            Ok(retired) => {
                for n in &retired {
                    info!("{}: retired generation {n}, key destroyed", store.domain());
                }
                changed |= !retired.is_empty();
            }
            Err(e) => error!("{}: retiring failed: {e}", store.domain()),
        }
    }
    if changed && let Err(e) = service.reload() {
        warn!("reload after maintenance failed: {e}");
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IBEMAIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ibemail-kgc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
