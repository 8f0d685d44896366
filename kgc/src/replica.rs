//! Replicas: several daemons serving one domain from copies of one key
//! store, so that the milters of several mail hosts keep opening mail when
//! one KGC host is down.
//!
//! User keys are derived from the master key, so every copy opens every
//! capsule; what must stay one is the *history* of the store: which
//! generations exist, with which keys, and which were retired. So exactly
//! one copy, the **primary** ([`Role::Primary`]), rotates, retires and
//! publishes; the others are **replicas** ([`Role::Replica`]) that refuse
//! to change by themselves and mirror the primary:
//!
//! 1. A replica daemon (`serve --replica-of tls:HOST:PORT`) asks the
//!    primary every `--sync-interval` (SYNC over mutual TLS, its
//!    certificate granted `replica`), naming the generations it serves
//!    now, and gets the primary's generation files back: keys it lacks
//!    are written (after their state files), state files replace its own,
//!    tombstones destroy its copies of retired keys. A key file that
//!    differs from the replica's own copy is never overwritten: that is a
//!    forked history, reported, not repaired.
//! 2. The primary's rotation only stages the new generation (pending:
//!    it opens mail, but is neither published nor used to sign). The
//!    primary notes what each replica reports serving ([`Replication`]);
//!    its upkeep releases a pending generation only when *every* replica
//!    allowed on its command line has reported serving it, and publishes
//!    it then. So DNS never names a generation a replica cannot open.
//!
//! Failure cases (written out in `docs/operations.md`): a replica that is
//! down or cut off during a rotation holds the release back (the old
//! generation stays active and published, mail keeps flowing, the primary
//! logs which replica it waits for); once it is back it syncs, reports,
//! and the release follows. A replica cut off after a release already had
//! the key. The primary down: replicas keep serving what they have; no
//! rotation happens until it is back, or until a replica is promoted
//! (`ibemail-kgc role --dir DIR primary`) and the others follow it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ibemail_ibe::Generation;
use tracing::{debug, error, info, warn};
use zeroize::Zeroizing;

use crate::protocol::{MAX_SYNC_FRAME, Request, Response, Status, StoreFile};
use crate::service::{KeyService, Peer};
use crate::store::{
    FileKind, Role, Store, StoreError, destroy, generation_file, io_err, key_file, state_file,
    write_atomic,
};
use crate::tls::Pin;

/// Whether a replica allowed to copy `domains` (normalised; none named:
/// every domain) may copy `domain` (normalised).
pub(crate) fn scope_covers(domains: &BTreeSet<String>, domain: &str) -> bool {
    domains.is_empty() || domains.contains(domain)
}

/// What the replicas of a primary daemon report serving.
#[derive(Debug)]
pub struct Replication {
    /// Each replica's pin and the domains it may copy (`replica:DOMAIN`;
    /// none named: every domain).
    replicas: Vec<(Pin, BTreeSet<String>)>,
    reports: Mutex<BTreeMap<(Pin, String), Report>>,
    changed: tokio::sync::Notify,
}

/// One replica's last report for one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The generations it serves.
    pub serving: BTreeSet<Generation>,
    /// When it said so (seconds since the epoch).
    pub at: u64,
}

impl Replication {
    /// The tracker for the replicas allowed by these pins, each for
    /// every domain.
    pub fn new(replicas: Vec<Pin>) -> Replication {
        Replication::scoped(replicas.into_iter().map(|pin| (pin, BTreeSet::new())))
    }

    /// The tracker for these replicas, each allowed the domains named
    /// (normalised; none named: every domain). A rotation of a domain
    /// waits only for the replicas allowed to copy it.
    pub fn scoped(replicas: impl IntoIterator<Item = (Pin, BTreeSet<String>)>) -> Replication {
        Replication {
            replicas: replicas.into_iter().collect(),
            reports: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Completes when a replica reports serving other generations than it
    /// did (the primary's upkeep then runs at once).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Notes that the replica `pin` serves `serving` of `domain` at `now`.
    pub fn report(&self, pin: Pin, domain: &str, serving: &[Generation], now: u64) {
        let serving: BTreeSet<Generation> = serving.iter().copied().collect();
        let previous = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (pin, domain.to_string()),
                Report {
                    serving: serving.clone(),
                    at: now,
                },
            );
        if previous.is_none_or(|p| p.serving != serving) {
            self.changed.notify_one();
        }
    }

    /// The replicas allowed to copy `domain` that have not reported
    /// serving its `generation`, with their last report, if any.
    pub fn missing(&self, domain: &str, generation: Generation) -> Vec<(Pin, Option<Report>)> {
        let reports = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        self.replicas
            .iter()
            .filter(|(_, domains)| scope_covers(domains, domain))
            .map(|(pin, _)| pin)
            .filter_map(|pin| {
                let report = reports.get(&(*pin, domain.to_string()));
                match report {
                    Some(r) if r.serving.contains(&generation) => None,
                    _ => Some((*pin, report.cloned())),
                }
            })
            .collect()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The generation files of the store in `dir` (keys, states, tombstones),
/// with their modes, read from disk now.
pub fn store_files(dir: &Path) -> Result<Vec<StoreFile>, StoreError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if generation_file(&name).is_none() {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
        if !meta.is_file() {
            continue;
        }
        let contents = Zeroizing::new(std::fs::read(&path).map_err(io_err(&path))?);
        files.push(StoreFile {
            name,
            mode: meta.mode() & 0o7777,
            contents,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// The primary's answer to a replica's SYNC: notes what the replica
/// serves and sends the store's generation files. Only a primary's store
/// is replicated (a standalone store's rotations would not wait).
pub fn answer_sync(
    service: &KeyService,
    replication: Option<&Replication>,
    domain: &str,
    serving: &[Generation],
    peer: Peer,
) -> Response {
    let Some(store) = service.stores().into_iter().find(|s| s.domain() == domain) else {
        warn!(
            target: "ibemail_kgc::audit",
            "refused to replicate {} to {peer}: not served here",
            crate::logging::shown(domain)
        );
        return Response::Error(
            Status::WrongDomain,
            format!("this KGC does not serve {domain}"),
        );
    };
    if store.role() != Role::Primary {
        warn!(
            target: "ibemail_kgc::audit",
            "refused to replicate {domain} to {peer}: its store here is {}, not the primary",
            store.role()
        );
        return Response::Error(
            Status::Forbidden,
            format!(
                "{domain}'s store at this KGC is {}, not the primary: only a primary's \
                 rotations wait for their replicas (ibemail-kgc role --dir {} primary)",
                store.role(),
                store.dir().display()
            ),
        );
    }
    if let (Some(replication), Some(pin)) = (replication, peer.certificate) {
        replication.report(pin, domain, serving, unix_now());
    }
    match store_files(store.dir()) {
        Ok(files) => {
            let sent: Vec<Generation> = files
                .iter()
                .filter_map(|f| match generation_file(&f.name) {
                    Some((g, FileKind::Key)) if !serving.contains(&g) => Some(g),
                    _ => None,
                })
                .collect();
            if sent.is_empty() {
                debug!("sync of {domain} for {peer}: serving {serving:?}");
            } else {
                info!(
                    target: "ibemail_kgc::audit",
                    "key use: replicate domain={domain} generations={sent:?} peer={peer}"
                );
            }
            Response::Synced(files)
        }
        Err(e) => {
            error!("{domain}: cannot read the store for a replica: {e}");
            Response::Error(Status::Internal, e.to_string())
        }
    }
}

/// What a sync changed in a replica's store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Generations whose keys were written.
    pub added: Vec<Generation>,
    /// Generations whose keys were destroyed (retired at the primary).
    pub retired: Vec<Generation>,
    /// State files written.
    pub states: usize,
    /// Problems that were not repaired (a forked history).
    pub conflicts: Vec<String>,
    /// The generations of those problems: a key here that differs from
    /// the primary's or that the primary never had. They are not reported
    /// to the primary as served.
    pub forked: Vec<Generation>,
}

impl Applied {
    /// True if a file changed.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.retired.is_empty() || self.states > 0
    }
}

impl Store {
    /// Makes this replica's generation files those of its primary:
    /// checks every file first (names, domain, formats), then writes the
    /// state files, then the keys it lacks, then destroys the keys the
    /// primary retired. A key that differs from the one here, or a key
    /// here that the primary never had, is reported in
    /// [`Applied::conflicts`] and left alone.
    pub fn apply_primary_files(&mut self, files: &[StoreFile]) -> Result<Applied, StoreError> {
        if self.role() != Role::Replica {
            return Err(StoreError::Corrupt {
                path: self.dir().to_path_buf(),
                problem: format!(
                    "is a {} store, not a replica: it does not take the primary's files",
                    self.role()
                ),
            });
        }
        let dir = self.dir().to_path_buf();
        let _lock = Store::lock(&dir)?;
        *self = Store::open(&dir)?;
        let mut incoming: BTreeMap<(Generation, u8), &StoreFile> = BTreeMap::new();
        for file in files {
            let path = dir.join(&file.name);
            let Some((generation, kind)) = generation_file(&file.name) else {
                return Err(StoreError::Corrupt {
                    path,
                    problem: "the primary sent a file that is no generation file".into(),
                });
            };
            let text = std::str::from_utf8(&file.contents).map_err(|_| StoreError::Corrupt {
                path: path.clone(),
                problem: "the primary sent a file that is not text".into(),
            })?;
            let order = match kind {
                FileKind::State => {
                    Store::check_state_text(&path, text, generation)?;
                    0
                }
                FileKind::Key => {
                    Store::parse_key(&path, text, self.domain(), generation)?;
                    1
                }
                FileKind::Retired => {
                    Store::check_tombstone_text(&path, text, generation)?;
                    2
                }
            };
            incoming.insert((generation, order), file);
        }
        let mut applied = Applied::default();
        let retired_here: BTreeSet<Generation> = self
            .generations()
            .filter(|e| !e.has_key())
            .map(|e| e.generation())
            .collect();
        let primary_knows: BTreeSet<Generation> = incoming.keys().map(|(g, _)| *g).collect();
        let tombstoned: BTreeSet<Generation> = incoming
            .keys()
            .filter(|(_, order)| *order == 2)
            .map(|(g, _)| *g)
            .collect();
        for ((generation, order), file) in &incoming {
            let path = dir.join(&file.name);
            if retired_here.contains(generation) || (*order < 2 && tombstoned.contains(generation))
            {
                continue;
            }
            let current = match std::fs::read(&path) {
                Ok(bytes) => Some(Zeroizing::new(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&path)(e)),
            };
            if current.as_deref().map(Vec::as_slice) == Some(file.contents.as_slice()) {
                continue;
            }
            match order {
                0 => {
                    write_atomic(&dir, &file.name, &file.contents)?;
                    applied.states += 1;
                }
                1 if current.is_some() => {
                    applied.conflicts.push(format!(
                        "generation {generation}: the primary's key differs from this \
                         replica's (a forked store); it is kept as it is here and not \
                         reported to the primary as served"
                    ));
                    applied.forked.push(*generation);
                }
                1 => {
                    write_atomic(&dir, &file.name, &file.contents)?;
                    applied.added.push(*generation);
                }
                _ => {
                    write_atomic(&dir, &file.name, &file.contents)?;
                    destroy(&dir.join(key_file(*generation)))?;
                    destroy(&dir.join(state_file(*generation)))?;
                    applied.retired.push(*generation);
                }
            }
        }
        for entry in self.generations().filter(|e| e.has_key()) {
            if !primary_knows.contains(&entry.generation()) {
                applied.forked.push(entry.generation());
                applied.conflicts.push(format!(
                    "generation {}: this replica has a key the primary never had (a store \
                     not copied from this primary?)",
                    entry.generation()
                ));
            }
        }
        crate::store::fsync_dir(&dir)?;
        *self = Store::open(&dir)?;
        Ok(applied)
    }
}

/// A replica daemon's link to its primary.
#[derive(Clone)]
pub struct ReplicaSync {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
    own: Pin,
    /// Per domain, the generations whose keys here were found equal to the
    /// primary's at the last sync: only those are reported as served. A
    /// domain not synced yet reports none, so a key of a forked store
    /// never counts as the primary's.
    verified: Arc<std::sync::Mutex<BTreeMap<String, Vec<Generation>>>>,
    /// Time allowed for one SYNC exchange.
    pub timeout: Duration,
}

impl std::fmt::Debug for ReplicaSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaSync(tls:{}:{})", self.host, self.port)
    }
}

impl ReplicaSync {
    /// A link to the primary at `host:port`, whose certificate must match
    /// one of `primary`, this replica presenting `identity`.
    pub fn new(
        host: &str,
        port: u16,
        identity: &crate::tls::TlsIdentity,
        primary: &[Pin],
    ) -> Result<ReplicaSync, crate::tls::TlsError> {
        let config = crate::tls::client_config(identity, primary)?;
        Ok(ReplicaSync {
            host: host.to_string(),
            port,
            connector: tokio_rustls::TlsConnector::from(config),
            own: identity.fingerprints().certificate_pin(),
            verified: Arc::default(),
            timeout: Duration::from_secs(10),
        })
    }

    /// The primary, as `tls:HOST:PORT`.
    pub fn primary(&self) -> String {
        format!("tls:{}:{}", self.host, self.port)
    }

    /// What to report as served for `store`'s domain: the keys the running
    /// `service` holds (not the disk's: a reload that failed leaves the
    /// service on older keys) that the last sync found equal to the
    /// primary's.
    fn serving(&self, store: &Store, service: &KeyService) -> Vec<Generation> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let known = verified.get(store.domain()).cloned().unwrap_or_default();
        service
            .stores()
            .into_iter()
            .find(|s| s.domain() == store.domain())
            .map(|s| s.with_keys())
            .unwrap_or_default()
            .into_iter()
            .filter(|g| known.contains(g))
            .collect()
    }

    /// One SYNC for `store`: reports what it serves, gets the primary's
    /// files.
    async fn fetch(&self, store: &Store, service: &KeyService) -> Result<Vec<StoreFile>, String> {
        let serving = self.serving(store, service);
        let request = Request::Sync {
            domain: store.domain().to_string(),
            serving,
        };
        let exchange = async {
            let mut stream =
                crate::client::connect_tls(&self.connector, self.own, &self.host, self.port)
                    .await?;
            let response = crate::client::exchange(&mut stream, &request, MAX_SYNC_FRAME).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            response
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {:?}",
                    self.primary(),
                    self.timeout
                )
            })??;
        match response {
            Response::Synced(files) => Ok(files),
            Response::Error(status, reason) => Err(format!("{status:?}: {reason}")),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Syncs every replica store `service` serves once; reloads the
    /// service if something changed, and then reports again at once (so
    /// the primary learns that the new keys are served). Returns, per
    /// store, what changed or why it could not.
    pub async fn sync(&self, service: &KeyService) -> Vec<(String, Result<Applied, String>)> {
        let mut outcome = Vec::new();
        let mut changed = false;
        for dir in service.dirs().to_vec() {
            let mut store = match Store::open(&dir) {
                Ok(store) if store.role() == Role::Replica => store,
                Ok(_) => continue,
                Err(e) => {
                    outcome.push((dir.display().to_string(), Err(e.to_string())));
                    continue;
                }
            };
            let domain = store.domain().to_string();
            let reported = self.serving(&store, service);
            let result = match self.fetch(&store, service).await {
                Ok(files) => {
                    let applied = tokio::task::spawn_blocking(move || {
                        store
                            .apply_primary_files(&files)
                            .map(|applied| (applied, store.with_keys()))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("sync task failed: {e}")));
                    applied.map(|(applied, keys)| {
                        let verified: Vec<Generation> = keys
                            .into_iter()
                            .filter(|g| !applied.forked.contains(g))
                            .collect();
                        // Served now but not reported so (new keys, or the
                        // first sync): report again below.
                        changed |= applied.changed() || verified != reported;
                        self.verified
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(domain.clone(), verified);
                        applied
                    })
                }
                Err(e) => Err(e),
            };
            outcome.push((domain, result));
        }
        if changed {
            match service.reload() {
                Ok(()) => {
                    // Tell the primary at once what is served now.
                    for dir in service.dirs().to_vec() {
                        if let Ok(store) = Store::open(&dir)
                            && store.role() == Role::Replica
                            && let Err(e) = self.fetch(&store, service).await
                        {
                            warn!("{}: reporting to {}: {e}", store.domain(), self.primary());
                        }
                    }
                }
                Err(e) => error!("reload after a sync failed, serving the previous keys: {e}"),
            }
        }
        outcome
    }
}

/// Runs [`ReplicaSync::sync`] every `interval` until `stop` fires, and
/// logs each change, and each problem once until it changes.
pub async fn run(
    link: ReplicaSync,
    service: Arc<KeyService>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_problem: BTreeMap<String, String> = BTreeMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for (domain, result) in link.sync(&service).await {
            match result {
                Ok(applied) => {
                    if last_problem.remove(&domain).is_some() {
                        info!("{domain}: in sync with {} again", link.primary());
                    }
                    if !applied.added.is_empty() {
                        info!(
                            "{domain}: now serving generation(s) {:?} from {}",
                            applied.added,
                            link.primary()
                        );
                    }
                    if !applied.retired.is_empty() {
                        info!(
                            "{domain}: generation(s) {:?} retired at the primary; keys destroyed",
                            applied.retired
                        );
                    }
                    for conflict in &applied.conflicts {
                        error!("{domain}: {conflict}");
                    }
                }
                Err(e) => {
                    if last_problem.get(&domain) != Some(&e) {
                        warn!(
                            "{domain}: cannot sync with the primary {}: {e}; serving the \
                             generations held here",
                            link.primary()
                        );
                        last_problem.insert(domain, e);
                    }
                }
            }
        }
    }
}
