//! The key daemon's upkeep of its stores, one round at a time: rotate when
//! due, publish what changed, watch what DNS really publishes, and destroy
//! a withdrawn generation's key only once that is safe.
//!
//! `ibemail-kgc serve` runs a round at start, on every maintenance tick, as
//! soon as a store changes on disk (`ibemail-kgc rotate` by hand) and on
//! SIGHUP, so a new generation is published at once rather than at the
//! next tick. Tests run rounds directly.
//!
//! The watch (an authoritative server, by default the one updates go to)
//! is what makes retirement safe: a generation is withdrawn from the
//! published set when its overlap ends, but its key is destroyed only after
//! DNS has been *seen* without it for the retention floor
//! ([`Retention::floor`]). If publishing fails or was never set up, the
//! withdrawn generation stays in DNS, is never seen absent, and its key
//! survives: mail senders keep sealing to it still opens. It also tells
//! when a new generation is published, which decides when it starts
//! signing ([`crate::service::SigningSwitch`]).
//!
//! A replica's store ([`Role::Replica`]) is left alone: it changes only as
//! its primary's does ([`crate::replica`]). A primary's rotation is staged,
//! and released here once every replica serves the new generation
//! ([`Upkeep::replication`]); then it is published.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ibemail_discovery::Discovery;
use ibemail_ibe::Generation;
use ibemail_params::Record;
use rand_core::OsRng;
use tracing::{error, info, warn};

use crate::publish::{UpdateTarget, publish};
use crate::replica::Replication;
use crate::service::KeyService;
use crate::store::{Retention, Role, Store, Wait};
use crate::tls::Pin;
use crate::tsig::TsigKey;

/// Where and how records are published.
#[derive(Debug)]
pub struct Publication {
    /// The zone's primary server.
    pub server: SocketAddr,
    /// The zone (default: each store's domain).
    pub zone: Option<String>,
    /// TTL of the records.
    pub ttl: u32,
    /// The TSIG key of the updates.
    pub key: TsigKey,
}

/// The daemon's periodic work over its stores.
pub struct Upkeep {
    /// Rotate when the active generation is this old.
    pub rotate_every: Option<u64>,
    /// Overlap of automatic rotations (raised to the retention floor).
    pub overlap: u64,
    /// How long withdrawn keys must outlive their records.
    pub retention: Retention,
    /// Dynamic updates, if the daemon publishes.
    pub publication: Option<Publication>,
    /// A resolver for the authoritative server to watch, if any.
    pub watch: Option<Discovery>,
    /// What the replicas serve, if the daemon has any: a primary's staged
    /// generation is released only when all of them serve it.
    pub replication: Option<Arc<Replication>>,
    published: HashMap<PathBuf, Vec<Record>>,
    waits: HashMap<(PathBuf, Generation), Wait>,
    holds: HashMap<(PathBuf, Generation), Vec<Pin>>,
}

impl std::fmt::Debug for Upkeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upkeep")
            .field("rotate_every", &self.rotate_every)
            .field("overlap", &self.overlap)
            .field("retention", &self.retention)
            .field("publication", &self.publication)
            .field("watching", &self.watch.is_some())
            .finish()
    }
}

impl Upkeep {
    /// Upkeep without automatic rotation, publication or watch.
    pub fn new(retention: Retention) -> Upkeep {
        Upkeep {
            rotate_every: None,
            overlap: 30 * 86_400,
            retention,
            publication: None,
            watch: None,
            replication: None,
            published: HashMap::new(),
            waits: HashMap::new(),
            holds: HashMap::new(),
        }
    }

    /// One round at `now` over `service`'s stores; the service is reloaded
    /// if a store changed.
    pub async fn run(&mut self, service: &KeyService, now: u64) {
        let mut changed = false;
        for dir in service.dirs().to_vec() {
            match self.run_store(&dir, service, now).await {
                Ok(c) => changed |= c,
                Err(e) => error!("{}: {e}", dir.display()),
            }
        }
        if changed && let Err(e) = service.reload() {
            warn!("reload after upkeep failed, serving the previous keys: {e}");
        }
    }

    async fn run_store(
        &mut self,
        dir: &std::path::Path,
        service: &KeyService,
        now: u64,
    ) -> Result<bool, crate::store::StoreError> {
        let mut store = Store::open(dir)?;
        if store.role() == Role::Replica {
            return Ok(false);
        }
        // What DNS publishes, before anything is changed.
        let (seen, conflict) = match self.watch(&mut store, now).await {
            Some((seen, conflict)) => (Some(seen), conflict),
            None => (None, None),
        };
        let highest = store.generations().map(|e| e.generation()).max();
        if let (Some(seen), Some(highest)) = (&seen, highest)
            && let Some(&above) = seen.iter().filter(|&&g| g > highest).max()
        {
            // A store restored from an old backup, or another KGC
            // publishing for the domain: publishing (or rotating to a
            // generation number already used with another key) would look
            // like an attack to every sender that pinned the newer one.
            error!(
                "{}: DNS publishes generation {above}, above this store's highest                  ({highest}); not publishing or rotating. Restore the newest store, or                  set up anew with --first-generation {}",
                store.domain(),
                above.saturating_add(1)
            );
            return Ok(false);
        }
        if let Some(seen) = conflict {
            error!(
                "{}: DNS publishes generation {seen} with other keys than this store's: \
                 another KGC publishes for the domain (an old primary, or a store set up \
                 twice). Not publishing or rotating; keep one primary and make the other \
                 copies replicas",
                store.domain()
            );
            return Ok(false);
        }
        let mut changed = self.rotate_if_due(&mut store, now);
        changed |= self.release_if_ready(&mut store, now);
        // The daemon serves what it publishes: a store changed on disk by
        // another process (`ibemail-kgc rotate`) is reloaded first.
        let records = store.records_at(now);
        let serving = service
            .stores()
            .iter()
            .find(|s| s.dir() == dir)
            .map(|s| s.records_at(now));
        changed |= serving.as_ref() != Some(&records);
        if changed && let Err(e) = service.reload() {
            error!("{}: reload failed, not publishing: {e}", store.domain());
            return Ok(false);
        }
        // DNS lost the records (a zone reloaded from a file that lacks
        // the dynamic updates, say): publish them again.
        if let Some(seen) = &seen {
            let mut wanted: Vec<Generation> = records.iter().map(|r| r.generation).collect();
            let mut seen = seen.clone();
            wanted.sort_unstable();
            seen.sort_unstable();
            let believed = self.published.get(dir).map(Vec::as_slice) == Some(records.as_slice());
            if wanted != seen && believed {
                self.published.remove(dir);
                warn!(
                    "{}: DNS publishes generation(s) {seen:?}, not {wanted:?}: publishing again",
                    store.domain()
                );
            }
        }
        self.publish(dir, &store, &records).await;
        changed |= self.retire(dir, &mut store, now);
        Ok(changed)
    }

    fn rotate_if_due(&self, store: &mut Store, now: u64) -> bool {
        let (Some(every), Some(active)) = (self.rotate_every, store.active_generation()) else {
            return false;
        };
        if !store.pending().is_empty() {
            // A staged rotation waits for its release (and says so).
            return false;
        }
        let Some(entry) = store.generations().find(|e| e.generation() == active) else {
            return false;
        };
        if now < entry.created().saturating_add(every) {
            return false;
        }
        let policy = entry.policy().copied();
        let overlap = self.overlap.max(self.retention.floor(policy.as_ref()));
        match store.rotate(overlap, now, policy, &mut OsRng) {
            Ok(n) => {
                info!(
                    "{}: rotated to generation {n} (the previous one retires in {overlap} s)",
                    store.domain()
                );
                true
            }
            Err(e) => {
                error!("{}: rotation failed: {e}", store.domain());
                false
            }
        }
    }

    /// Releases a primary's staged generation once every replica serves
    /// it (at once without replicas), and says (once per change) whom it
    /// waits for.
    fn release_if_ready(&mut self, store: &mut Store, now: u64) -> bool {
        let Some((generation, policy)) = store
            .pending()
            .first()
            .map(|e| (e.generation(), e.policy().copied()))
        else {
            return false;
        };
        let key = (store.dir().to_path_buf(), generation);
        let missing = self
            .replication
            .as_ref()
            .map(|r| r.missing(store.domain(), generation))
            .unwrap_or_default();
        if !missing.is_empty() {
            let pins: Vec<Pin> = missing.iter().map(|(pin, _)| *pin).collect();
            if self.holds.get(&key) != Some(&pins) {
                let who: Vec<String> = missing
                    .iter()
                    .map(|(pin, report)| match report {
                        Some(r) => format!(
                            "{pin} (serves {:?}, reported {} s ago)",
                            r.serving,
                            now.saturating_sub(r.at)
                        ),
                        None => format!("{pin} (not heard from since this daemon started)"),
                    })
                    .collect();
                warn!(
                    "{}: generation {generation} is staged; not published until every replica \
                     serves it; waiting for {}",
                    store.domain(),
                    who.join(", ")
                );
                self.holds.insert(key, pins);
            }
            return false;
        }
        let overlap = self.overlap.max(self.retention.floor(policy.as_ref()));
        match store.release(generation, overlap, now) {
            Ok(overlap) => {
                info!(
                    "{}: released generation {generation}: every replica serves it; the \
                     previous one retires in {overlap} s",
                    store.domain()
                );
                self.holds.remove(&key);
                true
            }
            Err(e) => {
                error!(
                    "{}: releasing generation {generation} failed: {e}",
                    store.domain()
                );
                false
            }
        }
    }

    /// Publishes the records if they differ from what was last published.
    async fn publish(&mut self, dir: &std::path::Path, store: &Store, records: &[Record]) {
        let Some(publication) = &self.publication else {
            return;
        };
        if self.published.get(dir).map(Vec::as_slice) == Some(records) {
            return;
        }
        let target = UpdateTarget {
            server: publication.server,
            zone: publication
                .zone
                .clone()
                .unwrap_or_else(|| store.domain().to_string()),
            ttl: publication.ttl,
            timeout: Duration::from_secs(10),
        };
        let generations = records
            .iter()
            .map(|r| r.generation.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match publish(&target, &publication.key, store.domain(), records).await {
            Ok(()) => {
                info!(
                    "{}: published generation(s) {generations} to {} (zone {})",
                    store.domain(),
                    target.server,
                    target.zone
                );
                self.published.insert(dir.to_path_buf(), records.to_vec());
            }
            Err(e) => error!(
                "{}: publishing generation(s) {generations} failed, will retry: {e}",
                store.domain()
            ),
        }
    }

    /// Notes which generations DNS publishes now, and returns them (`None`
    /// if nothing watches, or DNS could not be asked), with a generation
    /// it publishes with other keys than this store's, if any (a second
    /// primary, or an old one come back).
    async fn watch(
        &self,
        store: &mut Store,
        now: u64,
    ) -> Option<(Vec<Generation>, Option<Generation>)> {
        let watch = self.watch.as_ref()?;
        match watch.published(store.domain()).await {
            Ok(set) => {
                let records = set.map(|s| s.records).unwrap_or_default();
                let conflict = records.iter().find_map(|record| {
                    let ours = store.params(record.generation).ok()?;
                    (ours.to_bytes() != record.params.to_bytes()).then_some(record.generation)
                });
                let generations: Vec<Generation> = records.iter().map(|r| r.generation).collect();
                if conflict.is_none()
                    && let Err(e) = store.note_published(&generations, now)
                {
                    error!("{}: cannot record what DNS publishes: {e}", store.domain());
                }
                Some((generations, conflict))
            }
            Err(e) => {
                warn!(
                    "{}: cannot see what DNS publishes ({e}); no key is destroyed meanwhile",
                    store.domain()
                );
                None
            }
        }
    }

    /// Destroys what is due, and says (once per change) why the others wait.
    fn retire(&mut self, dir: &std::path::Path, store: &mut Store, now: u64) -> bool {
        let outcome = match store.retire_due(now, &self.retention) {
            Ok(outcome) => outcome,
            Err(e) => {
                error!("{}: retiring failed: {e}", store.domain());
                return false;
            }
        };
        let mut retired = false;
        for (generation, wait) in outcome {
            let key = (dir.to_path_buf(), generation);
            match wait {
                None => {
                    info!(
                        "{}: retired generation {generation}, key destroyed",
                        store.domain()
                    );
                    self.waits.remove(&key);
                    retired = true;
                }
                Some(wait) => {
                    if self.waits.get(&key) != Some(&wait) {
                        if matches!(wait, Wait::NotSeenAbsent) && self.watch.is_none() {
                            warn!(
                                "{}: generation {generation}: {wait}; nothing watches DNS here \
                                 (serve --watch-server, or `ibemail-kgc retire --resolver`)",
                                store.domain()
                            );
                        } else {
                            info!("{}: generation {generation}: {wait}", store.domain());
                        }
                        self.waits.insert(key, wait);
                    }
                }
            }
        }
        retired
    }
}
