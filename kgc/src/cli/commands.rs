//! What each command does.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::check::{CheckStatus, check};
use crate::clock::now;
use crate::publish::{UpdateTarget, publish};
use crate::server::{Grant, ServerConfig};
use crate::service::{KeyService, SigningSwitch};
use crate::store::{Role, State, Store, Wait};
use crate::tsig::TsigKey;
use crate::upkeep::{Publication, Upkeep};
use anyhow::{Context as _, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_discovery::{Discovery, DiscoveryConfig, DnssecPolicy};
use ibemail_ibe::Identity;
use ibemail_params::{Policy, record_name};
use rand_core::OsRng;

use super::daemon::daemon;
use super::network::{self, Network};
use super::*;

pub(super) fn print_records(store: &Store, ttl: u32) {
    for record in store.records_at(now()) {
        println!("{}", record.zone_line(store.domain(), ttl));
    }
}

fn describe(state: State, now: u64) -> String {
    match state {
        State::Pending { since } => format!(
            "staged {} ago, not published until every replica serves it",
            humanize(now.saturating_sub(since))
        ),
        State::Active => "active".into(),
        State::Retiring { until } if until == u64::MAX => "retiring (no retirement time)".into(),
        State::Retiring { until } if until > now => format!(
            "retiring, withdrawn from DNS in {}",
            humanize(until.saturating_sub(now))
        ),
        State::Retiring { until } => format!(
            "withdrawn {} ago, still opens mail",
            humanize(now.saturating_sub(until))
        ),
        State::Retired { at } => format!(
            "retired {} ago, key destroyed",
            humanize(now.saturating_sub(at))
        ),
    }
}

/// A resolver that asks `server` directly (authoritative, no recursion,
/// no validation) what it publishes.
fn watcher(server: SocketAddr) -> Result<Discovery> {
    Ok(Discovery::new(
        DiscoveryConfig {
            servers: vec![server],
            timeout: Duration::from_secs(2),
            attempts: 1,
            recursion_desired: false,
            ..DiscoveryConfig::default()
        },
        None,
    )?)
}

fn print_waits(domain: &str, outcome: &[(u32, Option<Wait>)]) {
    for (generation, wait) in outcome {
        match wait {
            None => eprintln!("{domain}: retired generation {generation}; its key was destroyed."),
            Some(wait) => eprintln!("{domain}: generation {generation}: {wait}"),
        }
    }
    if outcome.is_empty() {
        eprintln!("{domain}: nothing to retire.");
    }
}

pub(super) fn humanize(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}

/// Runs the command; the exit code on success.
pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Setup {
            domain,
            dir,
            ttl,
            first_generation,
            policy,
        } => {
            as_store_owner(&dir)?;
            let store = Store::setup_at(
                &dir,
                &domain,
                first_generation,
                now(),
                policy.policy(),
                &mut OsRng,
            )?;
            eprintln!(
                "Created the key store of {} in {} (generation {first_generation}).\nPublish this record in the {} zone:",
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
            if store.role() != Role::Standalone {
                println!("role {}", store.role());
            }
            let now = now();
            for entry in store.generations() {
                let mut state = store
                    .state(entry.generation())
                    .map_or("unknown".into(), |s| describe(s, now));
                if let Some(since) = entry.absent_since() {
                    state.push_str(&format!(
                        "; absent from DNS for {}",
                        humanize(now.saturating_sub(since))
                    ));
                }
                if let Some(policy) = entry.policy() {
                    state.push_str(&format!(
                        "; policy require, max-age {}",
                        humanize(policy.max_age)
                    ));
                }
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
        Command::Rotate {
            dir,
            overlap,
            ttl,
            policy,
            retention,
        } => {
            as_store_owner(&dir)?;
            let mut store = Store::open(&dir)?;
            let policy = policy.policy();
            let floor = retention
                .retention(ttl)
                .floor(store_policy(&store).as_ref());
            if overlap < floor {
                eprintln!(
                    "The overlap is raised to {} (TTL + queue lifetime + policy max-age): \
                     senders may hold mail sealed to the old generation that long.",
                    humanize(floor)
                );
            }
            let generation = store.rotate(overlap.max(floor), now(), policy, &mut OsRng)?;
            if store.role() == Role::Primary {
                eprintln!(
                    "Generation {generation} is staged: the primary daemon (serve) publishes it \
                     once every replica serves it (see its log, and `ibemail-kgc status`). \
                     Until then generation {} stays active.",
                    generation - 1
                );
                return Ok(0);
            }
            eprintln!(
                "Generation {generation} is active, signed by generation {}. Publish these \
                 records (or run `ibemail-kgc publish`; a running `serve --publish-server` \
                 publishes them within seconds):",
                generation - 1
            );
            print_records(&store, ttl);
        }
        Command::Release {
            dir,
            overlap,
            ttl,
            retention,
        } => return network::release(dir, overlap, ttl, retention),
        Command::Role { dir, role } => return network::role(dir, role),
        Command::TlsCert {
            cert,
            key,
            name,
            days,
        } => return network::tls_cert(cert, key, name, days),
        Command::TlsFingerprint { cert } => return network::tls_fingerprint(cert),
        Command::Export {
            dir,
            output,
            recipients,
            recipients_file,
            passphrase_file,
        } => {
            return network::export_store(
                dir,
                output,
                recipients,
                recipients_file,
                passphrase_file,
            );
        }
        Command::Import {
            dir,
            input,
            identity,
            passphrase_file,
            expect,
            role,
        } => {
            return network::import_store(dir, input, identity, passphrase_file, expect, role);
        }
        Command::Retire {
            dir,
            resolver,
            ttl,
            retention,
            force,
        } => {
            as_store_owner(&dir)?;
            let mut store = Store::open(&dir)?;
            let now = now();
            if let Some(generation) = force {
                store.force_retire(generation, now)?;
                eprintln!("Retired generation {generation} on request; its key was destroyed.");
                return Ok(0);
            }
            if let Some(server) = resolver {
                let runtime = tokio::runtime::Runtime::new()?;
                let published = runtime.block_on(async {
                    watcher(server)?
                        .published(store.domain())
                        .await
                        .map_err(anyhow::Error::msg)
                });
                match published {
                    Ok(set) => {
                        let generations: Vec<u32> = set
                            .map(|s| s.records.iter().map(|r| r.generation).collect())
                            .unwrap_or_default();
                        store.note_published(&generations, now)?;
                    }
                    Err(e) => {
                        eprintln!("ibemail-kgc: cannot see what {server} publishes: {e}");
                        return Ok(EXIT_TEMPFAIL);
                    }
                }
            }
            let outcome = store.retire_due(now, &retention.retention(ttl))?;
            print_waits(store.domain(), &outcome);
        }
        Command::Check { dir, dns } => {
            let store = Store::open(&dir)?;
            let config = dns.apply(DiscoveryConfig::default());
            let dnssec = dns.dnssec.unwrap_or(DnssecPolicy::Prefer);
            let servers = config
                .servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{}: asking {servers} (DNSSEC {})",
                record_name(store.domain()),
                match dnssec {
                    DnssecPolicy::Off => "off",
                    DnssecPolicy::Prefer => "prefer",
                    DnssecPolicy::Require => "require",
                }
            );
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(async {
                let discovery = Discovery::new(config, None)?;
                anyhow::Ok(check(&store, &discovery, dnssec, now()).await)
            })?;
            for line in &report.lines {
                println!("{line}");
            }
            return Ok(match report.status {
                CheckStatus::Ok => 0,
                CheckStatus::Problem => 1,
                CheckStatus::Temporary => EXIT_TEMPFAIL,
            });
        }
        Command::Publish { dir, update } => {
            let store = Store::open(&dir)?;
            let key = TsigKey::load(&update.tsig_key)?;
            let target = UpdateTarget {
                server: update.server,
                zone: update
                    .zone
                    .clone()
                    .unwrap_or_else(|| store.domain().to_string()),
                ttl: update.ttl,
                timeout: Duration::from_secs(update.timeout.max(1)),
            };
            let records = store.records();
            let runtime = tokio::runtime::Runtime::new()?;
            if let Err(e) = runtime.block_on(publish(&target, &key, store.domain(), &records)) {
                eprintln!("ibemail-kgc: publishing failed: {e}");
                return Ok(if e.is_temporary() { EXIT_TEMPFAIL } else { 1 });
            }
            eprintln!(
                "Published {} record(s) at {} in zone {} on {} (TSIG key {}):",
                records.len(),
                record_name(store.domain()),
                target.zone,
                target.server,
                key.name()
            );
            print_records(&store, update.ttl);
        }
        Command::Serve {
            dir,
            socket,
            allow_uid,
            allow_open,
            allow_sign,
            socket_mode,
            cache_size,
            rotate_every,
            overlap,
            maintenance_interval,
            metrics,
            publish,
            watch_server,
            retention,
            network,
        } => {
            let mode =
                u32::from_str_radix(&socket_mode, 8).context("--socket-mode must be octal")?;
            let dir = match dir
                .iter()
                .map(|d| Store::find(d))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(found) => found.concat(),
                Err(e) => return startup_failure(e.into()),
            };
            let mut config = ServerConfig::default();
            if !(allow_uid.is_empty() && allow_open.is_empty() && allow_sign.is_empty()) {
                config.grants.clear();
                for uid in allow_uid {
                    config.grants.insert(uid, Grant::all());
                }
                for grant in allow_open {
                    let (uid, address) = match grant.split_once(':') {
                        Some((uid, address)) => (uid, Some(address)),
                        None => (grant.as_str(), None),
                    };
                    let uid: u32 = uid
                        .parse()
                        .with_context(|| format!("--allow-open {grant}: not UID[:ADDRESS]"))?;
                    let entry = config.grants.entry(uid).or_default();
                    entry.open = true;
                    if let Some(address) = address {
                        let identity = Identity::parse(address)
                            .with_context(|| format!("--allow-open {grant}"))?;
                        entry.open_as.insert(identity.as_str().to_string());
                    }
                }
                for uid in allow_sign {
                    config.grants.entry(uid).or_default().sign = true;
                }
            }
            let network = match Network::configure(&network, &dir, &mut config) {
                Ok(network) => network,
                Err(e) => return startup_failure(e),
            };
            let stores = match dir
                .iter()
                .map(|d| Store::open(d))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(stores) => stores,
                Err(e) => return startup_failure(e.into()),
            };
            if let Some(replica) = stores.iter().find(|s| s.role() == Role::Replica) {
                let refuse = |what: &str| {
                    startup_failure(anyhow::anyhow!(
                        "{}: {} is a replica; only the primary {what} (serve the primary with \
                         it, or make this copy the primary: ibemail-kgc role --dir {} primary)",
                        replica.domain(),
                        replica.dir().display(),
                        replica.dir().display()
                    ))
                };
                if rotate_every.is_some() {
                    return refuse("rotates (--rotate-every)");
                }
                if publish.publish_server.is_some() {
                    return refuse("publishes (--publish-server)");
                }
            }
            let publication = match (publish.publish_server, publish.publish_tsig_key) {
                (Some(server), Some(key)) => Some(Publication {
                    server,
                    zone: publish.publish_zone,
                    ttl: publish.publish_ttl,
                    key: match TsigKey::load(&key) {
                        Ok(key) => key,
                        Err(e) => return startup_failure(e.into()),
                    },
                }),
                _ => None,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let watch = watch_server.or(publish.publish_server);
            let mut upkeep = Upkeep::new(retention.retention(publish.publish_ttl));
            upkeep.rotate_every = rotate_every;
            upkeep.overlap = overlap;
            upkeep.publication = publication;
            upkeep.replication = config.replication.clone();
            let service = KeyService::load(&dir, cache_size)
                .map_err(StartupFailure::from)?
                .with_signing_switch(SigningSwitch {
                    ttl: u64::from(publish.publish_ttl),
                    ..SigningSwitch::default()
                });
            runtime.block_on(async {
                upkeep.watch = watch.map(watcher).transpose()?;
                daemon(
                    service,
                    socket.as_deref(),
                    mode,
                    config,
                    network,
                    metrics,
                    upkeep,
                    Duration::from_secs(maintenance_interval.max(1)),
                )
                .await
            })?;
        }
    }
    Ok(0)
}

/// The policy of the store's active generation.
pub(super) fn store_policy(store: &Store) -> Option<Policy> {
    let active = store.active_generation()?;
    store
        .generations()
        .find(|e| e.generation() == active)
        .and_then(|e| e.policy().copied())
}

/// As root, re-runs this command as the owner of the key store `dir` (or
/// of the directory it will be created in), so the files it writes stay
/// readable by the daemon. Read-only commands need no switch: root may
/// read any store.
pub(super) fn as_store_owner(dir: &Path) -> Result<()> {
    if let Some((uid, gid)) = crate::accounts::owner_of_store(dir) {
        crate::accounts::become_user(uid, gid).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// A reason `serve` cannot start that a restart will not cure.
#[derive(Debug)]
pub struct StartupFailure(anyhow::Error);

impl std::fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StartupFailure {}

impl From<crate::store::StoreError> for StartupFailure {
    fn from(e: crate::store::StoreError) -> Self {
        StartupFailure(e.into())
    }
}

/// Reports a start-up failure of `serve` and exits with EX_CONFIG.
fn startup_failure(e: anyhow::Error) -> Result<u8> {
    Err(StartupFailure(e).into())
}
