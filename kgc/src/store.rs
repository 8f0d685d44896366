//! The master-key store: one directory per domain, one file per generation.
//!
//! ```text
//! DIR/                   0700, owned by the KGC's user
//!   kgc.store            "format: ibemail-kgc-store 1", "domain: b.test"
//!   gen-00000001.retired tombstone: generation 1 was retired, key destroyed
//!   gen-00000002.key     0600: generation 2's master key, retire-at set (retiring)
//!   gen-00000003.key     0600: generation 3's master key (active: the highest)
//!   .lock                flock(2) target for writers
//! ```
//!
//! States are derived, not stored: the highest generation with a key is
//! **active**; a lower one with a key is **retiring** (it still opens mail
//! and is still published) until its `retire-at`; a generation with a
//! tombstone is **retired** and its key has been destroyed.
//!
//! Every write goes to a temporary file that is fsynced, renamed into place
//! and followed by an fsync of the directory; writers hold an exclusive
//! lock. Rotation first marks the old generation retiring, then writes the
//! new one, so a crash at any point leaves either "old active" or "new
//! active, old retiring" — never a lost key. Leftover temporary files are
//! ignored and removed by the next writer.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{
    Capsule, DecapsulationError, Generation, Identity, MasterKey, PublicParams, SharedSecret,
    SigningKey, UserKey,
};
use ibemail_params::Record;
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

const STORE_FILE: &str = "kgc.store";
const LOCK_FILE: &str = ".lock";
const TEMP_PREFIX: &str = ".tmp-";
const STORE_FORMAT: &str = "ibemail-kgc-store 1";
const KEY_FORMAT: &str = "ibemail-kgc-key 1";
const RETIRED_FORMAT: &str = "ibemail-kgc-retired 1";

/// What can go wrong with the store.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// I/O on a store file.
    // Not a `source`: the text is in the message, and a chain would repeat it.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// `setup` on a directory that already holds something.
    #[error("{0} already exists and is not empty; refusing to overwrite a key store")]
    AlreadyExists(PathBuf),
    /// A store file or the directory is readable or writable by others, or
    /// owned by another user.
    #[error("{path}: {problem}; {fix}")]
    InsecurePermissions {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// A write to a store that belongs to another user (root writing a
    /// store would leave files its daemon cannot read).
    #[error(
        "{dir} belongs to {owner}; changing it as {writer} would leave files that {owner} \
         cannot read. Run it as the owner: {run_as} ibemail-kgc ..."
    )]
    NotOwner {
        /// The store.
        dir: PathBuf,
        /// Its owner, described.
        owner: String,
        /// The command prefix that runs a command as the owner.
        run_as: String,
        /// Who tried to write, described.
        writer: String,
    },
    /// A store file does not parse.
    #[error("{path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The directory has no `kgc.store`: not a key store.
    #[error(
        "{0} is not an ibemail KGC key store (no kgc.store) and holds none; create one with \
         `ibemail-kgc setup --domain DOMAIN --dir DIR`"
    )]
    NotAStore(PathBuf),
    /// No such generation was ever created.
    #[error("generation {0} does not exist")]
    UnknownGeneration(Generation),
    /// The generation was retired and its key destroyed.
    #[error("generation {0} was retired and its key destroyed")]
    Retired(Generation),
    /// The identity belongs to another domain.
    #[error("{identity} is not in {domain}, the domain this KGC serves")]
    WrongDomain {
        /// The identity asked for.
        identity: String,
        /// The store's domain.
        domain: String,
    },
    /// The store has no usable generation.
    #[error("the key store has no active generation")]
    NoActiveGeneration,
    /// Generation numbers are exhausted (2^32 - 1 rotations).
    #[error("generation numbers are exhausted")]
    GenerationOverflow,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The state of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The highest generation: senders encrypt to it.
    Active,
    /// Still opens mail and is still published, until `until`.
    Retiring {
        /// Seconds since the epoch at which it will be retired.
        until: u64,
    },
    /// Key destroyed.
    Retired {
        /// When it was retired.
        at: u64,
    },
}

/// One generation of the store.
pub struct GenerationEntry {
    generation: Generation,
    created: u64,
    retire_at: Option<u64>,
    retired_at: Option<u64>,
    key: Option<MasterKey>,
    params: Option<PublicParams>,
}

impl fmt::Debug for GenerationEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationEntry")
            .field("generation", &self.generation)
            .field("created", &self.created)
            .field("retire_at", &self.retire_at)
            .field("retired_at", &self.retired_at)
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl GenerationEntry {
    /// The generation number.
    pub fn generation(&self) -> Generation {
        self.generation
    }
    /// Creation time, seconds since the epoch.
    pub fn created(&self) -> u64 {
        self.created
    }
    /// The public parameters (absent once retired).
    pub fn params(&self) -> Option<&PublicParams> {
        self.params.as_ref()
    }
}

/// A loaded key store. `Debug` never shows key material.
pub struct Store {
    dir: PathBuf,
    domain: String,
    generations: BTreeMap<Generation, GenerationEntry>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("domain", &self.domain)
            .field(
                "generations",
                &self.generations.values().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Holds the store's writer lock; released on drop.
struct WriteLock(File);

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn key_file(generation: Generation) -> String {
    format!("gen-{generation:08}.key")
}

fn retired_file(generation: Generation) -> String {
    format!("gen-{generation:08}.retired")
}

/// Checks that `path` (in the store `dir`) has no group/other permissions
/// and is owned by this process's user, or that this process is root, which
/// may read any store (its write commands run as the owner: [`Store::lock`]).
fn check_private(dir: &Path, path: &Path, is_dir: bool) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let mode = if is_dir { "0700" } else { "0600" };
    let insecure = |problem: String, fix: String| StoreError::InsecurePermissions {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    if meta.file_type().is_symlink() {
        return Err(insecure(
            "is a symbolic link".into(),
            "a key store holds its files itself: replace the link by the file it points to".into(),
        ));
    }
    let euid = crate::accounts::current_uid();
    if meta.uid() != euid && euid != 0 {
        let me = crate::accounts::describe_uid(euid);
        let me_name = crate::accounts::by_uid(euid).map_or(format!("{euid}"), |a| a.name);
        let owner = crate::accounts::describe_uid(meta.uid());
        let give = format!("chown -R {me_name}: {}", dir.display());
        return Err(insecure(
            format!("owned by {owner}, not by this process's user, {me}"),
            if meta.uid() == 0 {
                // Root made it (setup run by root in a root-owned place).
                format!(
                    "give the whole store to the user that serves it (ibemail-kgc for the \
                     packaged daemon): {give}"
                )
            } else {
                format!(
                    "run ibemail-kgc as the store's owner ({} ibemail-kgc ...), or give the \
                     whole store to {me}: {give}",
                    crate::accounts::run_as_hint(meta.uid())
                )
            },
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(insecure(
            format!(
                "mode {:04o} gives access to group or others",
                meta.mode() & 0o7777
            ),
            format!("fix with: chmod {mode} {}", path.display()),
        ));
    }
    Ok(())
}

/// `key: value` lines.
fn parse_fields(path: &Path, text: &str) -> Result<BTreeMap<String, String>, StoreError> {
    let mut fields = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.split_once(':').ok_or_else(|| StoreError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("line without ':' ({} bytes)", line.len()),
        })?;
        fields.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(fields)
}

fn field<'a>(
    path: &Path,
    fields: &'a BTreeMap<String, String>,
    name: &str,
) -> Result<&'a str, StoreError> {
    fields
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| StoreError::Corrupt {
            path: path.to_path_buf(),
            problem: format!("missing field `{name}`"),
        })
}

fn number<T: std::str::FromStr>(path: &Path, value: &str, name: &str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        path: path.to_path_buf(),
        problem: format!("field `{name}` is not a number"),
    })
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `contents` to `dir/name` atomically and durably, mode 0600.
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    let mut suffix = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
    let temp = dir.join(format!("{TEMP_PREFIX}{}-{name}", hex_lower(&suffix)));
    let target = dir.join(name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io_err(&temp))?;
        file.write_all(contents).map_err(io_err(&temp))?;
        file.sync_all().map_err(io_err(&temp))?;
        drop(file);
        fs::rename(&temp, &target).map_err(io_err(&target))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Overwrites a key file with zeros, syncs, and unlinks it. (On copy-on-write
/// or flash storage the old blocks may survive; full-disk encryption is the
/// real answer there, see the man page.)
fn destroy(path: &Path) -> Result<(), StoreError> {
    if let Ok(meta) = fs::metadata(path)
        && let Ok(mut file) = OpenOptions::new().write(true).open(path)
    {
        let zeros = vec![0u8; meta.len() as usize];
        let _ = file.write_all(&zeros);
        let _ = file.sync_all();
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Creates a new store for `domain` in `dir` with generation 1.
    ///
    /// `dir` must not exist or be empty. It is created 0700, the key 0600.
    pub fn setup(
        dir: &Path,
        domain: &str,
        now: u64,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Store, StoreError> {
        let domain = ibemail_ibe::normalize_domain(domain).map_err(|e| StoreError::Corrupt {
            path: dir.to_path_buf(),
            problem: format!("domain {domain:?}: {e}"),
        })?;
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(StoreError::AlreadyExists(dir.to_path_buf()));
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err(dir))?;
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
        check_private(dir, dir, true)?;
        let _lock = Self::lock(dir)?;
        write_atomic(
            dir,
            STORE_FILE,
            format!("format: {STORE_FORMAT}\ndomain: {domain}\n").as_bytes(),
        )?;
        let key = MasterKey::generate(rng);
        Self::write_key(dir, &domain, 1, now, None, &key)?;
        Store::open(dir)
    }

    /// The key stores `dir` names: `dir` itself if it is one, otherwise
    /// every subdirectory of it that is one (sorted), as in the packaged
    /// layout `/var/lib/ibemail/kgc/<domain>`. None is an error.
    pub fn find(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
        // A directory this user may not enter: say whose it is and what to
        // do (a store root created for the daemon, typically).
        let denied = |e: io::Error| {
            if e.kind() == io::ErrorKind::PermissionDenied {
                check_private(dir, dir, true)
                    .err()
                    .unwrap_or_else(|| io_err(dir)(e))
            } else {
                io_err(dir)(e)
            }
        };
        match fs::symlink_metadata(dir.join(STORE_FILE)) {
            Ok(_) => return Ok(vec![dir.to_path_buf()]),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Err(denied(e)),
            Err(_) => {}
        }
        let mut stores: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(denied)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join(STORE_FILE).exists())
            .collect();
        if stores.is_empty() {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        stores.sort();
        Ok(stores)
    }

    /// Loads the store in `dir`, refusing insecure permissions.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        check_private(dir, dir, true)?;
        let store_path = dir.join(STORE_FILE);
        if !store_path.exists() {
            return Err(StoreError::NotAStore(dir.to_path_buf()));
        }
        check_private(dir, &store_path, false)?;
        let text = fs::read_to_string(&store_path).map_err(io_err(&store_path))?;
        let fields = parse_fields(&store_path, &text)?;
        if field(&store_path, &fields, "format")? != STORE_FORMAT {
            return Err(StoreError::Corrupt {
                path: store_path,
                problem: "unsupported store format".into(),
            });
        }
        let domain = field(&store_path, &fields, "domain")?.to_string();

        let mut generations: BTreeMap<Generation, GenerationEntry> = BTreeMap::new();
        let mut retired: BTreeMap<Generation, u64> = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if let Some(n) = name
                .strip_prefix("gen-")
                .and_then(|r| r.strip_suffix(".key"))
            {
                check_private(dir, &path, false)?;
                let generation = number(&path, n, "file name")?;
                let loaded = Self::read_key(&path, &domain, generation)?;
                generations.insert(generation, loaded);
            } else if let Some(n) = name
                .strip_prefix("gen-")
                .and_then(|r| r.strip_suffix(".retired"))
            {
                let generation: Generation = number(&path, n, "file name")?;
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                let fields = parse_fields(&path, &text)?;
                if field(&path, &fields, "format")? != RETIRED_FORMAT {
                    return Err(StoreError::Corrupt {
                        path,
                        problem: "unsupported tombstone format".into(),
                    });
                }
                retired.insert(
                    generation,
                    number(&path, field(&path, &fields, "retired")?, "retired")?,
                );
            }
        }
        // A tombstone wins over a key file left by a crash mid-retirement.
        for (generation, at) in retired {
            let entry = generations.entry(generation).or_insert(GenerationEntry {
                generation,
                created: 0,
                retire_at: None,
                retired_at: None,
                key: None,
                params: None,
            });
            entry.key = None;
            entry.params = None;
            entry.retired_at = Some(at);
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            domain,
            generations,
        })
    }

    fn read_key(
        path: &Path,
        domain: &str,
        generation: Generation,
    ) -> Result<GenerationEntry, StoreError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
        let fields = parse_fields(path, &text)?;
        let corrupt = |problem: &str| StoreError::Corrupt {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        if field(path, &fields, "format")? != KEY_FORMAT {
            return Err(corrupt("unsupported key format"));
        }
        if field(path, &fields, "domain")? != domain {
            return Err(corrupt("key file belongs to another domain"));
        }
        if number::<Generation>(path, field(path, &fields, "generation")?, "generation")?
            != generation
        {
            return Err(corrupt("generation in file does not match its name"));
        }
        let created = number(path, field(path, &fields, "created")?, "created")?;
        let retire_at = fields
            .get("retire-at")
            .map(|v| number(path, v, "retire-at"))
            .transpose()?;
        let key_b64 = Zeroizing::new(field(path, &fields, "master-key")?.to_string());
        let key_bytes = Zeroizing::new(
            STANDARD
                .decode(key_b64.as_bytes())
                .map_err(|_| corrupt("master-key is not base64"))?,
        );
        let key =
            MasterKey::from_bytes(&key_bytes).map_err(|e| corrupt(&format!("master-key: {e}")))?;
        let params = key.public_params();
        Ok(GenerationEntry {
            generation,
            created,
            retire_at,
            retired_at: None,
            key: Some(key),
            params: Some(params),
        })
    }

    fn write_key(
        dir: &Path,
        domain: &str,
        generation: Generation,
        created: u64,
        retire_at: Option<u64>,
        key: &MasterKey,
    ) -> Result<(), StoreError> {
        let mut text = Zeroizing::new(format!(
            "format: {KEY_FORMAT}\ndomain: {domain}\ngeneration: {generation}\ncreated: {created}\n"
        ));
        if let Some(at) = retire_at {
            text.push_str(&format!("retire-at: {at}\n"));
        }
        let encoded = Zeroizing::new(STANDARD.encode(key.to_bytes().as_ref()));
        text.push_str(&format!("master-key: {}\n", encoded.as_str()));
        write_atomic(dir, &key_file(generation), text.as_bytes())
    }

    /// Takes the writer lock. Only the store's owner writes: root may read
    /// any store, but files it wrote would be unreadable to the daemon.
    fn lock(dir: &Path) -> Result<WriteLock, StoreError> {
        let owner = fs::metadata(dir).map_err(io_err(dir))?.uid();
        let writer = crate::accounts::current_uid();
        if owner != writer {
            return Err(StoreError::NotOwner {
                dir: dir.to_path_buf(),
                owner: crate::accounts::describe_uid(owner),
                run_as: crate::accounts::run_as_hint(owner),
                writer: crate::accounts::describe_uid(writer),
            });
        }
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        // Remove temporaries a crashed writer may have left.
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    let _ = destroy(&entry.path());
                }
            }
        }
        Ok(WriteLock(file))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The domain this store serves.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Every generation ever created, lowest first.
    pub fn generations(&self) -> impl Iterator<Item = &GenerationEntry> {
        self.generations.values()
    }

    /// The state of a generation.
    pub fn state(&self, generation: Generation) -> Option<State> {
        let entry = self.generations.get(&generation)?;
        if let Some(at) = entry.retired_at {
            return Some(State::Retired { at });
        }
        if Some(generation) == self.active_generation() {
            Some(State::Active)
        } else {
            Some(State::Retiring {
                until: entry.retire_at.unwrap_or(u64::MAX),
            })
        }
    }

    /// The active generation (the highest one with a key).
    pub fn active_generation(&self) -> Option<Generation> {
        self.generations
            .values()
            .rev()
            .find(|e| e.key.is_some())
            .map(|e| e.generation)
    }

    /// The generations still published: active and retiring, highest first.
    pub fn published(&self) -> Vec<&GenerationEntry> {
        self.generations
            .values()
            .rev()
            .filter(|e| e.key.is_some())
            .collect()
    }

    /// The DNS records to publish, highest generation first. A retiring
    /// generation carries its retirement time as `e=`.
    pub fn records(&self) -> Vec<Record> {
        let active = self.active_generation();
        self.published()
            .into_iter()
            .filter_map(|e| {
                let mut record = Record::new(e.generation, e.params.clone()?)
                    .with_signing(e.key.as_ref()?.signing_params());
                if Some(e.generation) != active {
                    record.expires = e.retire_at;
                }
                Some(record)
            })
            .collect()
    }

    /// The master key of a generation.
    pub fn master_key(&self, generation: Generation) -> Result<&MasterKey, StoreError> {
        let entry = self
            .generations
            .get(&generation)
            .ok_or(StoreError::UnknownGeneration(generation))?;
        entry.key.as_ref().ok_or(StoreError::Retired(generation))
    }

    /// The public parameters of a generation.
    pub fn params(&self, generation: Generation) -> Result<&PublicParams, StoreError> {
        let entry = self
            .generations
            .get(&generation)
            .ok_or(StoreError::UnknownGeneration(generation))?;
        entry.params.as_ref().ok_or(StoreError::Retired(generation))
    }

    /// The master key that derives `identity`'s keys at `generation`:
    /// only for identities of this store's domain.
    fn master_key_for(
        &self,
        identity: &Identity,
        generation: Generation,
    ) -> Result<&MasterKey, StoreError> {
        if identity.domain() != self.domain {
            return Err(StoreError::WrongDomain {
                identity: identity.to_string(),
                domain: self.domain.clone(),
            });
        }
        self.master_key(generation)
    }

    /// Derives the user key of `identity` for `generation`.
    pub fn extract(
        &self,
        identity: &Identity,
        generation: Generation,
    ) -> Result<UserKey, StoreError> {
        Ok(self
            .master_key_for(identity, generation)?
            .extract(identity, generation))
    }

    /// Derives the signing key of `identity` for `generation`.
    pub fn extract_signing(
        &self,
        identity: &Identity,
        generation: Generation,
    ) -> Result<SigningKey, StoreError> {
        Ok(self
            .master_key_for(identity, generation)?
            .extract_signing(identity, generation))
    }

    /// Opens a capsule for `identity` at `generation`.
    pub fn decapsulate(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<Result<SharedSecret, DecapsulationError>, StoreError> {
        let master = self.master_key_for(identity, generation)?;
        Ok(master.decapsulate(self.params(generation)?, identity, generation, capsule))
    }

    /// Rotates: the active generation becomes retiring for `overlap_secs`,
    /// a new generation becomes active, and expired generations are retired.
    /// Returns the new generation.
    pub fn rotate(
        &mut self,
        overlap_secs: u64,
        now: u64,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Generation, StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        let highest = self.generations.keys().next_back().copied().unwrap_or(0);
        let next = highest
            .checked_add(1)
            .ok_or(StoreError::GenerationOverflow)?;
        if let Some(active) = self.active_generation() {
            let entry = &self.generations[&active];
            if let Some(key) = &entry.key {
                let retire_at = now.saturating_add(overlap_secs);
                Self::write_key(
                    &self.dir,
                    &self.domain,
                    active,
                    entry.created,
                    Some(retire_at),
                    key,
                )?;
            }
        }
        let key = MasterKey::generate(rng);
        Self::write_key(&self.dir, &self.domain, next, now, None, &key)?;
        *self = Store::open(&self.dir)?;
        self.retire_expired_locked(now)?;
        Ok(next)
    }

    /// Retires every retiring generation whose time has come: writes the
    /// tombstone, then destroys the key file. Returns the generations retired.
    pub fn retire_expired(&mut self, now: u64) -> Result<Vec<Generation>, StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.retire_expired_locked(now)
    }

    fn retire_expired_locked(&mut self, now: u64) -> Result<Vec<Generation>, StoreError> {
        let active = self.active_generation();
        let due: Vec<Generation> = self
            .generations
            .values()
            .filter(|e| {
                Some(e.generation) != active
                    && e.retired_at.is_none()
                    && e.retire_at.is_some_and(|at| at <= now)
            })
            .map(|e| e.generation)
            .collect();
        for &generation in &due {
            write_atomic(
                &self.dir,
                &retired_file(generation),
                format!(
                    "format: {RETIRED_FORMAT}\ndomain: {}\ngeneration: {generation}\nretired: {now}\n",
                    self.domain
                )
                .as_bytes(),
            )?;
            destroy(&self.dir.join(key_file(generation)))?;
            fsync_dir(&self.dir)?;
        }
        // Tombstones win over any key file a crash left behind: destroy those.
        for entry in self.generations.values().filter(|e| e.retired_at.is_some()) {
            let leftover = self.dir.join(key_file(entry.generation));
            if leftover.exists() {
                destroy(&leftover)?;
            }
        }
        *self = Store::open(&self.dir)?;
        Ok(due)
    }
}
