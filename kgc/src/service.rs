//! The key service: opens capsules with keys derived from the stores it
//! holds. The daemon serves it over a Unix socket; the milter can also embed
//! it (`kgc.dir`), so both paths run the same code.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ibemail_ibe::{Capsule, Generation, Identity, SharedSecret, Signature, SigningKey};
use lru::LruCache;
use rand_core::OsRng;
use tracing::{info, warn};

use crate::metrics::KgcMetrics;
use crate::protocol::{Response, Status};
use crate::store::{Store, StoreError};

/// Who asked, for the audit log.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    /// The peer's user id, if known (Unix socket credentials).
    pub uid: Option<u32>,
    /// The peer's process id, if known.
    pub pid: Option<i32>,
    /// The peer's address (TLS clients).
    pub address: Option<std::net::SocketAddr>,
    /// The pin its certificate matched (TLS clients).
    pub certificate: Option<crate::tls::Pin>,
}

impl std::fmt::Display for Peer {
    /// `uid U pid P` for Unix peers, `ADDR cert PIN` for TLS ones.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.address, self.certificate) {
            (Some(address), Some(pin)) => write!(f, "{address} cert {pin}"),
            (Some(address), None) => write!(f, "{address}"),
            (None, Some(pin)) => write!(f, "cert {pin}"),
            (None, None) => write!(
                f,
                "uid {} pid {}",
                self.uid.map_or("-".into(), |u| u.to_string()),
                self.pid.map_or("-".into(), |p| p.to_string())
            ),
        }
    }
}

/// Capsule-opening service over one or more key stores (one per domain).
pub struct KeyService {
    dirs: Vec<PathBuf>,
    stores: RwLock<Vec<Arc<Store>>>,
    signing_cache: Mutex<KeyCache<SigningKey>>,
    switch: SigningSwitch,
    metrics: KgcMetrics,
}

/// When a new generation starts signing mail: once DNS has been seen
/// publishing it for `ttl` seconds (receivers' caches then know it), or,
/// where nothing checks DNS, once it is `fallback` seconds old. Until then
/// the previous generation signs. See [`Store::signing_generation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigningSwitch {
    /// The records' TTL.
    pub ttl: u64,
    /// Age at which an unchecked generation signs anyway.
    pub fallback: u64,
}

impl Default for SigningSwitch {
    fn default() -> Self {
        SigningSwitch {
            ttl: 3600,
            fallback: 86_400,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Derived keys by (identity, generation).
type KeyCache<T> = LruCache<(String, Generation), Arc<T>>;

/// Why a message could not be signed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// Temporary: the KGC is unreachable or failed; try again later.
    #[error("KGC unavailable: {0}")]
    Unavailable(String),
    /// The KGC will not sign as this identity (not its domain, no key).
    #[error("KGC refused to sign: {0}")]
    Refused(String),
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("dirs", &self.dirs)
            .finish()
    }
}

impl KeyService {
    /// Loads the stores in `dirs`; `cache_size` signing keys are kept
    /// derived. (Opening needs no derived key: the master key opens a
    /// capsule directly, for less than extracting the user key would cost.)
    pub fn load(dirs: &[PathBuf], cache_size: usize) -> Result<Self, StoreError> {
        let stores = Self::open_all(dirs)?;
        Ok(KeyService {
            dirs: dirs.to_vec(),
            stores: RwLock::new(stores),
            signing_cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cache_size).unwrap_or(NonZeroUsize::MIN),
            )),
            switch: SigningSwitch::default(),
            metrics: KgcMetrics::default(),
        })
    }

    /// Key uses and refusals so far (every audit line is counted).
    pub fn metrics(&self) -> &KgcMetrics {
        &self.metrics
    }

    /// The service with another signing switch (the daemon's records TTL).
    pub fn with_signing_switch(mut self, switch: SigningSwitch) -> Self {
        self.switch = switch;
        self
    }

    fn signing_generation_of(&self, store: &Store) -> Option<Generation> {
        store.signing_generation(unix_now(), self.switch.ttl, self.switch.fallback)
    }

    fn open_all(dirs: &[PathBuf]) -> Result<Vec<Arc<Store>>, StoreError> {
        dirs.iter().map(|d| Store::open(d).map(Arc::new)).collect()
    }

    /// Re-reads the stores (after a rotation by another process). On error
    /// the previous stores stay in service.
    pub fn reload(&self) -> Result<(), StoreError> {
        let stores = Self::open_all(&self.dirs)?;
        *self.stores.write().unwrap_or_else(|e| e.into_inner()) = stores;
        self.signing_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    /// The store directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The stores currently in service.
    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `(domain, generation to sign with)` for each store: the active
    /// generation once receivers can know it, else the one before it.
    pub fn hello(&self) -> Vec<(String, Generation)> {
        self.stores()
            .iter()
            .filter_map(|s| Some((s.domain().to_string(), self.signing_generation_of(s)?)))
            .collect()
    }

    fn store_for(&self, domain: &str) -> Option<Arc<Store>> {
        self.stores().into_iter().find(|s| s.domain() == domain)
    }

    /// The key of `identity` at `generation` from `cache`, derived with
    /// `derive` (and cached) when absent.
    fn cached<T>(
        cache: &Mutex<KeyCache<T>>,
        identity: &Identity,
        generation: Generation,
        derive: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<Arc<T>, StoreError> {
        let cache_key = (identity.as_str().to_string(), generation);
        if let Some(key) = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
        {
            return Ok(key.clone());
        }
        let key = Arc::new(derive()?);
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .put(cache_key, key.clone());
        Ok(key)
    }

    /// The identity and the store of its domain, or why not.
    fn resolve(&self, identity: &str) -> Result<(Identity, Arc<Store>), (Status, String)> {
        let identity = Identity::parse(identity)
            .map_err(|e| (Status::BadRequest, format!("identity: {e}")))?;
        let store = self.store_for(identity.domain()).ok_or_else(|| {
            (
                Status::WrongDomain,
                format!("this KGC does not serve {}", identity.domain()),
            )
        })?;
        Ok((identity, store))
    }

    /// The generation `identity`'s domain signs with (as [`KeyService::hello`]),
    /// if this service holds its store.
    pub fn active_generation(&self, identity: &Identity) -> Option<Generation> {
        self.signing_generation_of(&*self.store_for(identity.domain())?)
    }

    /// Signs `message` (a digest) as `identity` at `generation`, and logs
    /// the key use like [`KeyService::open`].
    pub fn sign(
        &self,
        identity: &str,
        generation: Generation,
        message: &[u8],
        peer: Peer,
    ) -> Response {
        let response = self.sign_inner(identity, generation, message);
        self.audit("sign", identity, generation, &response, peer);
        response
    }

    fn sign_inner(&self, identity: &str, generation: Generation, message: &[u8]) -> Response {
        let (identity, store) = match self.resolve(identity) {
            Ok(found) => found,
            Err((status, reason)) => return Response::Error(status, reason),
        };
        match Self::cached(&self.signing_cache, &identity, generation, || {
            store.extract_signing(&identity, generation)
        }) {
            Ok(key) => Response::Signed(generation, key.sign(message, &mut OsRng).to_bytes()),
            Err(e) => store_error(e),
        }
    }

    /// In-process convenience: [`KeyService::sign`] with typed results.
    pub fn sign_as(
        &self,
        identity: &Identity,
        generation: Generation,
        message: &[u8],
    ) -> Result<(Generation, Signature), SignError> {
        response_to_signature(self.sign(identity.as_str(), generation, message, Peer::default()))
    }

    /// Opens `capsule` for `identity` at `generation` and logs the key use
    /// (identity, generation, outcome, peer; never key material).
    pub fn open(
        &self,
        identity: &str,
        generation: Generation,
        capsule: &[u8],
        peer: Peer,
    ) -> Response {
        self.open_logged(
            identity,
            generation,
            || Capsule::from_bytes(capsule).ok(),
            peer,
        )
    }

    /// In-process convenience: the same as [`KeyService::open`] (audit log
    /// included) for an already decoded capsule, as the message crate's
    /// opener passes it.
    pub fn open_capsule(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, ibemail_message::CapsuleError> {
        let response = self.open_logged(
            identity.as_str(),
            generation,
            || Some(capsule.clone()),
            Peer::default(),
        );
        response_to_secret(response, generation)
    }

    /// [`KeyService::open_inner`] and its audit line.
    fn open_logged(
        &self,
        identity: &str,
        generation: Generation,
        capsule: impl FnOnce() -> Option<Capsule>,
        peer: Peer,
    ) -> Response {
        let response = self.open_inner(identity, generation, capsule);
        self.audit("open", identity, generation, &response, peer);
        response
    }

    /// Resolves the identity, then decodes the capsule (so a request for a
    /// domain this KGC does not serve says so, whatever the capsule), then
    /// opens it with the master key.
    fn open_inner(
        &self,
        identity: &str,
        generation: Generation,
        capsule: impl FnOnce() -> Option<Capsule>,
    ) -> Response {
        let (identity, store) = match self.resolve(identity) {
            Ok(found) => found,
            Err((status, reason)) => return Response::Error(status, reason),
        };
        let Some(capsule) = capsule() else {
            return Response::Error(Status::Rejected, "invalid capsule".into());
        };
        match store.decapsulate(&identity, generation, &capsule) {
            Ok(Ok(secret)) => Response::Opened(*secret.as_bytes()),
            Ok(Err(_)) => Response::Error(Status::Rejected, "capsule rejected".into()),
            Err(e) => store_error(e),
        }
    }
}

/// A key store error as a response.
fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Retired(n) => {
            Response::Error(Status::Retired, format!("generation {n} was retired"))
        }
        StoreError::UnknownGeneration(n) => Response::Error(
            Status::UnknownGeneration,
            format!("generation {n} does not exist"),
        ),
        e => Response::Error(Status::Internal, e.to_string()),
    }
}

impl KeyService {
    /// One audit line per key use: operation, identity, generation, outcome
    /// and peer — never key material; successes at info, everything else at
    /// warn. The outcome is also counted in [`KeyService::metrics`].
    fn audit(
        &self,
        operation: &str,
        identity: &str,
        generation: Generation,
        response: &Response,
        peer: Peer,
    ) {
        let outcome = audit(operation, identity, generation, response, peer);
        self.metrics.request(operation, outcome);
    }
}

/// Writes the audit line; returns the outcome word.
fn audit(
    operation: &str,
    identity: &str,
    generation: Generation,
    response: &Response,
    peer: Peer,
) -> &'static str {
    let outcome = match response {
        Response::Opened(_) => "opened",
        Response::Signed(..) => "signed",
        Response::Error(Status::Rejected, _) => "rejected",
        Response::Error(Status::Retired, _) => "retired",
        Response::Error(Status::UnknownGeneration, _) => "unknown-generation",
        Response::Error(Status::WrongDomain, _) => "wrong-domain",
        Response::Error(_, _) => "error",
        Response::Hello(_) | Response::Synced(_) => "unexpected",
    };
    let mut line = format!(
        "key use: {operation} identity={identity} generation={generation} outcome={outcome} peer_uid={} peer_pid={}",
        peer.uid.map_or("-".into(), |u| u.to_string()),
        peer.pid.map_or("-".into(), |p| p.to_string()),
    );
    if let Some(address) = peer.address {
        line.push_str(&format!(" peer_addr={address}"));
    }
    if let Some(pin) = peer.certificate {
        line.push_str(&format!(" peer_cert={pin}"));
    }
    if matches!(response, Response::Opened(_) | Response::Signed(..)) {
        info!(target: "ibemail_kgc::audit", "{line}");
    } else {
        warn!(target: "ibemail_kgc::audit", "{line}");
    }
    outcome
}

/// Maps a SIGN response to a signature.
pub fn response_to_signature(response: Response) -> Result<(Generation, Signature), SignError> {
    match response {
        Response::Signed(generation, bytes) => Signature::from_bytes(&bytes)
            .map(|s| (generation, s))
            .map_err(|e| SignError::Unavailable(format!("KGC sent an invalid signature: {e}"))),
        Response::Error(Status::Internal, reason) => Err(SignError::Unavailable(reason)),
        Response::Error(status, reason) => Err(SignError::Refused(format!("{status:?}: {reason}"))),
        Response::Hello(_) | Response::Opened(_) | Response::Synced(_) => {
            Err(SignError::Unavailable("unexpected answer to SIGN".into()))
        }
    }
}

/// Maps a daemon response to what the message crate expects of an opener.
pub fn response_to_secret(
    response: Response,
    generation: Generation,
) -> Result<SharedSecret, ibemail_message::CapsuleError> {
    use ibemail_message::CapsuleError;
    match response {
        Response::Opened(secret) => Ok(SharedSecret::from_bytes(secret)),
        Response::Error(Status::UnknownGeneration | Status::Retired, _) => {
            Err(CapsuleError::UnknownGeneration(generation))
        }
        Response::Error(Status::Rejected, _) => Err(CapsuleError::Rejected),
        // A daemon that does not grant us OPEN is misconfigured, which is
        // fixed without the mail: keep it queued, do not quarantine it.
        Response::Error(Status::Internal | Status::Forbidden, reason) => {
            Err(CapsuleError::Unavailable(reason))
        }
        Response::Error(status, reason) => {
            Err(CapsuleError::Refused(format!("{status:?}: {reason}")))
        }
        Response::Hello(_) | Response::Signed(..) | Response::Synced(_) => Err(
            CapsuleError::Unavailable("unexpected answer to OPEN".into()),
        ),
    }
}

/// Convenience for single-directory callers.
pub fn load_one(dir: &Path) -> Result<KeyService, StoreError> {
    KeyService::load(&[dir.to_path_buf()], 1024)
}
