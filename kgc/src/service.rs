//! The key service: opens capsules with keys derived from the stores it
//! holds. The daemon serves it over a Unix socket; the milter can also embed
//! it (`kgc.dir`), so both paths run the same code.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use ibemail_ibe::{
    Capsule, CertifiedKey, CertifiedSignature, Generation, Identity, SharedSecret, Signature,
    SigningKey,
};
use lru::LruCache;
use rand_core::OsRng;
use tracing::{info, warn};

use crate::access::{BoxFuture, KeyAccess, KeyError};
use crate::metrics::KgcMetrics;
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
    signing_cache: Mutex<KeyCache<SigningKeys>>,
    switch: SigningSwitch,
    metrics: KgcMetrics,
}

/// The keys one identity signs with at one generation, derived together
/// and cached: its Cha–Cheon key (SIGN) and its certified per-message key
/// (SIGN-CERTIFIED), whose certificate costs a Cha–Cheon signature.
struct SigningKeys {
    cha_cheon: SigningKey,
    certified: CertifiedKey,
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

/// Derived keys by (identity, generation).
type KeyCache<T> = LruCache<(String, Generation), Arc<T>>;

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
        store.signing_generation(crate::clock::now(), self.switch.ttl, self.switch.fallback)
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
    fn resolve(&self, identity: &str) -> Result<(Identity, Arc<Store>), KeyError> {
        let identity =
            Identity::parse(identity).map_err(|e| KeyError::Invalid(format!("identity: {e}")))?;
        let store = self.store_for(identity.domain()).ok_or_else(|| {
            KeyError::NotServed(format!("this KGC does not serve {}", identity.domain()))
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
    ) -> Result<Signature, KeyError> {
        self.signed_with("sign", identity, generation, peer, |keys| {
            keys.cha_cheon.sign(message, &mut OsRng)
        })
    }

    /// Signs `message` (a digest) as `identity` at `generation` with its
    /// certified per-message key, and logs the key use like
    /// [`KeyService::sign`].
    pub fn sign_certified(
        &self,
        identity: &str,
        generation: Generation,
        message: &[u8],
        peer: Peer,
    ) -> Result<CertifiedSignature, KeyError> {
        self.signed_with("sign-certified", identity, generation, peer, |keys| {
            keys.certified.sign(message)
        })
    }

    /// `sign` with the signing keys of `identity` at `generation` (from the
    /// cache), the key use logged as `operation`.
    fn signed_with<T>(
        &self,
        operation: &str,
        identity: &str,
        generation: Generation,
        peer: Peer,
        sign: impl FnOnce(&SigningKeys) -> T,
    ) -> Result<T, KeyError> {
        let result = self.resolve(identity).and_then(|(identity, store)| {
            let keys = Self::cached(&self.signing_cache, &identity, generation, || {
                let cha_cheon = store.extract_signing(&identity, generation)?;
                let certified = store.certify(&cha_cheon)?;
                Ok(SigningKeys {
                    cha_cheon,
                    certified,
                })
            })
            .map_err(store_error)?;
            Ok(sign(&keys))
        });
        self.audit(operation, identity, generation, result.as_ref().err(), peer);
        result
    }

    /// Opens `capsule` for `identity` at `generation` and logs the key use
    /// (identity, generation, outcome, peer; never key material). The
    /// identity is resolved before the capsule is decoded, so a request for
    /// a domain this KGC does not serve says so, whatever the capsule.
    pub fn open(
        &self,
        identity: &str,
        generation: Generation,
        capsule: &[u8],
        peer: Peer,
    ) -> Result<SharedSecret, KeyError> {
        let result = self.resolve(identity).and_then(|(identity, store)| {
            let capsule = Capsule::from_bytes(capsule).map_err(|_| KeyError::Rejected)?;
            Self::decapsulate(&store, &identity, generation, &capsule)
        });
        self.audit("open", identity, generation, result.as_ref().err(), peer);
        result
    }

    /// [`KeyService::open`] for an already decoded capsule, as the message
    /// crate's opener passes it.
    pub fn open_capsule(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, KeyError> {
        let result = self
            .store_for(identity.domain())
            .ok_or_else(|| {
                KeyError::NotServed(format!("this KGC does not serve {}", identity.domain()))
            })
            .and_then(|store| Self::decapsulate(&store, identity, generation, capsule));
        self.audit(
            "open",
            identity.as_str(),
            generation,
            result.as_ref().err(),
            Peer::default(),
        );
        result
    }

    fn decapsulate(
        store: &Store,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, KeyError> {
        match store.decapsulate(identity, generation, capsule) {
            Ok(Ok(secret)) => Ok(secret),
            Ok(Err(_)) => Err(KeyError::Rejected),
            Err(e) => Err(store_error(e)),
        }
    }

    /// One audit line per key use: operation, identity, generation, outcome
    /// and peer — never key material; successes at info, everything else at
    /// warn. The outcome is also counted in [`KeyService::metrics`].
    fn audit(
        &self,
        operation: &str,
        identity: &str,
        generation: Generation,
        error: Option<&KeyError>,
        peer: Peer,
    ) {
        let outcome = match error {
            None if operation.starts_with("sign") => "signed",
            None => "opened",
            Some(KeyError::Rejected) => "rejected",
            Some(KeyError::Retired(_)) => "retired",
            Some(KeyError::UnknownGeneration(_)) => "unknown-generation",
            Some(KeyError::NotServed(_)) => "wrong-domain",
            Some(_) => "error",
        };
        let mut line = format!(
            "key use: {operation} identity={} generation={generation} outcome={outcome} \
             peer_uid={} peer_pid={}",
            crate::logging::shown(identity),
            peer.uid.map_or("-".into(), |u| u.to_string()),
            peer.pid.map_or("-".into(), |p| p.to_string()),
        );
        if let Some(address) = peer.address {
            line.push_str(&format!(" peer_addr={address}"));
        }
        if let Some(pin) = peer.certificate {
            line.push_str(&format!(" peer_cert={pin}"));
        }
        if error.is_none() {
            info!(target: "ibemail_kgc::audit", "{line}");
        } else {
            warn!(target: "ibemail_kgc::audit", "{line}");
        }
        self.metrics.request(operation, outcome);
    }
}

/// A key store error as a key error.
fn store_error(e: StoreError) -> KeyError {
    match e {
        StoreError::Retired(n) => KeyError::Retired(n),
        StoreError::UnknownGeneration(n) => KeyError::UnknownGeneration(n),
        e => KeyError::Unavailable(e.to_string()),
    }
}

impl KeyAccess for KeyService {
    fn served(&self) -> BoxFuture<'_, Result<Vec<(String, Generation)>, KeyError>> {
        Box::pin(std::future::ready(Ok(self.hello())))
    }

    fn open<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        capsule: &'a Capsule,
    ) -> BoxFuture<'a, Result<SharedSecret, KeyError>> {
        Box::pin(std::future::ready(
            self.open_capsule(identity, generation, capsule),
        ))
    }

    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<Signature, KeyError>> {
        Box::pin(std::future::ready(KeyService::sign(
            self,
            identity.as_str(),
            generation,
            digest,
            Peer::default(),
        )))
    }

    fn sign_certified<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<CertifiedSignature, KeyError>> {
        Box::pin(std::future::ready(KeyService::sign_certified(
            self,
            identity.as_str(),
            generation,
            digest,
            Peer::default(),
        )))
    }

    fn signing_generation<'a>(
        &'a self,
        identity: &'a Identity,
    ) -> BoxFuture<'a, Result<Generation, KeyError>> {
        Box::pin(std::future::ready(
            self.active_generation(identity).ok_or_else(|| {
                KeyError::NotServed(format!("the KGC has no key for {}", identity.domain()))
            }),
        ))
    }
}

/// Convenience for single-directory callers.
pub fn load_one(dir: &Path) -> Result<KeyService, StoreError> {
    KeyService::load(&[dir.to_path_buf()], 1024)
}
