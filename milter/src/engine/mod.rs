//! What the milter decides for one message, independent of the milter
//! protocol: the message as Postfix showed it goes in, a [`Verdict`] (a
//! reply and the modifications to make) comes out.
//!
//! Direction: a message from an authenticated, internal or local sender
//! to a remote domain is outbound ([`outbound`]); otherwise mail for
//! local recipients is inbound ([`inbound`]). Every internal error becomes
//! a tempfail, so Postfix keeps the mail. What the engine needs from
//! outside — parameters, keys, re-injection — comes through its
//! [`Ports`](crate::ports::Ports), so its policy is tested with fakes
//! (`milter/tests/policy_table.rs`).
//!
//! - [`verdict`]: the vocabulary (message, origin, verdict, actions);
//! - [`fields`]: header fields between bytes and milter actions;
//! - [`outbound`], [`inbound`]: the two paths;
//! - [`signatures`]: signing, verifying and the signature policy.

mod fields;
mod inbound;
mod outbound;
mod signatures;
pub mod verdict;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibemail_discovery::{Discovery, PinStore};
use ibemail_kgc::service::KeyService;
use ibemail_message::Limits;
use tracing::warn;

pub(crate) use fields::{delete_headers, postfix_counts_fields_right};
pub(crate) use inbound::capsule_error;
pub use verdict::{Action, Kind, Message, Note, Origin, Reply, Verdict};

use crate::address::Rcpt;
use crate::config::{Config, FailureAction, KeySource};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::ports::{KeyAccess, Ports, Reinjector, SmtpReinjector};
use crate::reinject;

pub(crate) use ibemail_kgc::clock::now;

/// Everything the milter needs to decide, built from one [`Config`]
/// (rebuilt on reload).
pub struct Engine {
    config: Config,
    ports: Ports,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// Copies re-injected lately (only with a re-injection target).
    ledger: Option<Arc<Ledger>>,
}

/// The pin store of `path`, shared by every engine of the process: a
/// reload's new engine must not keep a second copy that overwrites the
/// first's file (the last writer would win, losing pins).
fn shared_pins(path: &Path) -> Result<Arc<PinStore>, String> {
    static OPEN: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Weak<PinStore>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|(_, store)| store.strong_count() > 0);
    if let Some(store) = open
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, store)| store.upgrade())
    {
        return Ok(store);
    }
    let store =
        Arc::new(PinStore::open(path).map_err(|e| format!("pin file {}: {e}", path.display()))?);
    open.push((path.to_path_buf(), Arc::downgrade(&store)));
    Ok(store)
}

/// The key access `config` names: the KGC daemon's socket, or key stores
/// in this process; none if the milter neither opens nor signs.
pub fn key_access(config: &Config) -> Result<Option<Arc<dyn KeyAccess>>, String> {
    Ok(match &config.keys {
        None => None,
        Some(KeySource::Dirs(dirs)) => Some(Arc::new(
            KeyService::load(dirs, 10_000).map_err(|e| format!("kgc: {e}"))?,
        )),
        Some(KeySource::Daemon(kgc)) => Some(Arc::new(
            kgc.client(config.kgc_timeout)
                .map_err(|e| format!("kgc: {e}"))?,
        )),
    })
}

impl Engine {
    /// Builds the engine: resolvers, pins, key access.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Engine, String> {
        let pins = match &config.pins {
            Some(path) => {
                // The pins must survive restarts: their directory must exist.
                if !path.parent().is_some_and(Path::is_dir) {
                    return Err(format!(
                        "pin file {}: its directory does not exist (create state_dir, \
                         writable by the milter's user only, or set dns.pins)",
                        path.display()
                    ));
                }
                Some(shared_pins(path)?)
            }
            None => None,
        };
        let discovery =
            Discovery::new(config.discovery_config(), pins).map_err(|e| e.to_string())?;
        let keys = key_access(&config)?;
        let reinjector = config.reinject.map(|target| {
            Arc::new(SmtpReinjector {
                target,
                helo: config.reinject_helo.clone(),
                timeout: Duration::from_secs(60),
            }) as Arc<dyn Reinjector>
        });
        let ports = Ports {
            parameters: Arc::new(discovery),
            keys,
            reinjector,
        };
        Engine::with_ports(config, ports, metrics)
    }

    /// The engine with the given ports (fakes, in tests of its policy).
    /// The re-injection ledger lives in `config.state_dir`, which must
    /// exist when `ports` can re-inject.
    pub fn with_ports(
        config: Config,
        ports: Ports,
        metrics: Arc<Metrics>,
    ) -> Result<Engine, String> {
        let limits = Limits {
            max_message_bytes: config.max_message_size,
            ..Limits::default()
        };
        // Only a split re-injects, and only with a target to re-inject to.
        let ledger = match ports.reinjector {
            None => None,
            Some(_) => Some(
                Ledger::shared(&config.state_dir, config.reinject_window.as_secs(), now())
                    .map_err(|e| {
                        format!(
                            "state_dir {}: {e} (create it, writable by the milter's user \
                             only, or set state_dir)",
                            config.state_dir.display()
                        )
                    })?,
            ),
        };
        Ok(Engine {
            config,
            ports,
            limits,
            metrics,
            ledger,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides what to do with `message` from `origin`.
    pub async fn process(&self, message: &Message, origin: Origin) -> Verdict {
        let started = Instant::now();
        let verdict = self.decide(message, origin).await;
        self.metrics
            .observe(verdict.kind, started.elapsed().as_secs_f64());
        crate::message_log::message_processed(&self.config, message, origin, &verdict);
        verdict
    }

    /// Decides what to do with `message`, which arrived on the re-injection
    /// listener: a copy this milter re-injected (its first field redeems
    /// an outstanding token) passes untouched; anything else there was
    /// sent by some local process and is handled as mail submitted on this
    /// host, so it cannot bypass the policy.
    pub async fn process_reinjected(&self, message: &Message) -> Verdict {
        let ours = message.headers.first().is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case(reinject::TOKEN_FIELD) && reinject::redeem(value)
        });
        let strip = delete_headers(&message.headers, |_, name, _| {
            name.eq_ignore_ascii_case(reinject::TOKEN_FIELD)
        });
        if ours {
            return Verdict::untouched(strip);
        }
        warn!(
            queue_id = %message.queue_id,
            "mail on the re-injection listener without a valid token: handled as \
             mail submitted on this host"
        );
        // The verdict is made on the header as it is once the token fields
        // are gone, so that its field indices count what Postfix has then.
        let mut stripped = message.clone();
        stripped
            .headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(reinject::TOKEN_FIELD));
        let mut verdict = self.process(&stripped, Origin::Local).await;
        if verdict.reply == Reply::Continue {
            let mut actions = strip;
            actions.append(&mut verdict.actions);
            verdict.actions = actions;
        }
        verdict
    }

    async fn decide(&self, message: &Message, origin: Origin) -> Verdict {
        if message.size > self.config.max_message_size {
            let reason = format!(
                "message of {} bytes exceeds the ibemail limit of {} bytes",
                message.size, self.config.max_message_size
            );
            return match self.config.oversize {
                FailureAction::Reject => Verdict {
                    reply: Reply::Reject(reason),
                    actions: Vec::new(),
                    kind: Kind::Rejected,
                    note: Note::default(),
                },
                _ => Verdict::tempfail(reason),
            };
        }
        if message.truncated {
            // Past the limit in force when it arrived, within today's (a
            // reload raised it since): what was not kept cannot be sealed
            // or opened, and the retry will be kept whole.
            return Verdict::tempfail(
                "part of the message arrived past the size limit then in force (raised since)",
            );
        }
        let (local, remote): (Vec<Rcpt>, Vec<Rcpt>) = message
            .recipients
            .iter()
            .map(|arg| Rcpt::parse(arg))
            .partition(|r| r.domain.as_deref().is_some_and(|d| self.config.is_local(d)));
        if origin != Origin::External && !remote.is_empty() {
            self.outbound(message, origin, &local, &remote).await
        } else if !local.is_empty() {
            self.inbound(message, origin, &local, remote.len()).await
        } else {
            Verdict::untouched(Vec::new())
        }
    }
}
