//! The master-key store: one directory per domain, one file per generation.
//!
//! ```text
//! DIR/                   0700, owned by the KGC's user
//!   kgc.store            "format: ibemail-kgc-store 1", "domain: b.test"
//!   gen-00000001.retired tombstone: generation 1 was retired, key destroyed
//!   gen-00000002.key     0600: generation 2's master key, policy, continuity signature
//!   gen-00000002.state   0600: retire-at, published-since, absent-since (no secret)
//!   gen-00000003.key     0600: generation 3's master key (active: the highest)
//!   .lock                flock(2) target for writers
//! ```
//!
//! States are derived, not stored: the highest generation with a key is
//! **active**; a lower one with a key is **retiring** (it still opens mail
//! and is still published) until its `retire-at`, then **withdrawn** (no
//! longer published, still opening mail); a generation with a tombstone is
//! **retired** and its key has been destroyed.
//!
//! A key file is written once, when its generation is created, and never
//! rewritten: what changes later (retire-at, what DNS was seen to publish)
//! lives in the generation's `.state` file. So no copy of a key is ever
//! left behind in a replaced inode; destroying a key overwrites its file in
//! place before unlinking it.
//!
//! **Retirement never loses mail** ([`Store::retire_due`]): a withdrawn
//! generation's key is destroyed only once DNS has been *seen* not to
//! publish it ([`Store::note_published`]) for longer than the record TTL,
//! plus the longest time mail may wait in a sender's queue, plus the
//! generation's policy max-age ([`Retention`]). Until then senders may
//! still hold mail sealed to it.
//!
//! Every write goes to a temporary file that is fsynced, renamed into place
//! and followed by an fsync of the directory; writers hold an exclusive
//! lock. Rotation first marks the old generation retiring, then writes the
//! new one, so a crash at any point leaves either "old active" or "new
//! active, old retiring" — never a lost key. Leftover temporary files are
//! ignored and removed by the next writer.
//!
//! **Replication** ([`Role`], `crate::replica`): a store copied to several
//! hosts is the **primary** on one of them and a **replica** on the others.
//! A replica never rotates or retires by itself; it mirrors the primary.
//! A primary's rotation only *stages* the new generation: it is
//! **pending** (`pending-since` in its state file, written before its key
//! file), opens mail but is neither published nor used for signing, until
//! [`Store::release`] — when every replica serves it — makes it active and
//! starts the old one's overlap.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::ContinuitySignature;
use ibemail_ibe::{
    Capsule, CertifiedKey, DecapsulationError, Generation, Identity, MasterKey, PublicParams,
    SharedSecret, SigningKey, UserKey,
};
use ibemail_params::{MAX_NAME_LEN, MAX_PUBLISHING_DOMAIN_LEN, Policy, Record, record_name};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::Zeroizing;

const STORE_FILE: &str = "kgc.store";
const LOCK_FILE: &str = ".lock";
const TEMP_PREFIX: &str = ".tmp-";
const STORE_FORMAT: &str = "ibemail-kgc-store 1";
const KEY_FORMAT: &str = "ibemail-kgc-key 1";
const RETIRED_FORMAT: &str = "ibemail-kgc-retired 1";
const STATE_FORMAT: &str = "ibemail-kgc-state 1";

/// Postfix's `maximal_queue_lifetime`: how long a sender may keep mail it
/// sealed to a generation before giving up.
pub const DEFAULT_QUEUE_LIFETIME: u64 = 5 * 86_400;

/// How long a withdrawn generation's key must outlive its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// TTL of the published records (resolvers may serve the old RRset
    /// that long after it changed).
    pub ttl: u64,
    /// The longest a sender's queue keeps mail (Postfix: 5 days).
    pub queue_lifetime: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            ttl: 3600,
            queue_lifetime: DEFAULT_QUEUE_LIFETIME,
        }
    }
}

impl Retention {
    /// How long a generation with `policy` must stay openable after DNS
    /// stopped publishing it: TTL + queue lifetime + policy max-age. This is
    /// also the floor of a rotation's overlap.
    pub fn floor(&self, policy: Option<&Policy>) -> u64 {
        self.ttl
            .saturating_add(self.queue_lifetime)
            .saturating_add(policy.map_or(0, |p| p.max_age))
    }
}

/// Why a withdrawn generation's key is not destroyed yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Still published, until `retire-at`.
    Published {
        /// When it is withdrawn.
        until: u64,
    },
    /// Withdrawn, but DNS has not been seen without it yet.
    NotSeenAbsent,
    /// Seen absent from DNS since `since`; destroyed at `until`.
    Floor {
        /// When DNS was first seen without it.
        since: u64,
        /// When its key may be destroyed.
        until: u64,
    },
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wait::Published { until } => write!(f, "still published until {until}"),
            Wait::NotSeenAbsent => write!(
                f,
                "withdrawn, but DNS has not been seen without it yet (its key is kept until \
                 a DNS check confirms it is gone)"
            ),
            Wait::Floor { since, until } => write!(
                f,
                "absent from DNS since {since}; kept until {until} (TTL + queue lifetime + \
                 policy max-age)"
            ),
        }
    }
}

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
    /// A change only the primary makes, asked of a replica.
    #[error(
        "{dir} is a replica of {domain}'s key store: only the primary rotates and retires \
         (its changes arrive by `serve --replica-of` or by import). If the primary is lost \
         for good, make this copy the primary: ibemail-kgc role --dir {dir} primary"
    )]
    Replica {
        /// The store.
        dir: PathBuf,
        /// Its domain.
        domain: String,
    },
    /// A rotation while an earlier one still waits for its release.
    #[error(
        "generation {0} is staged and not released yet (waiting until every replica serves \
         it); release it first (the primary daemon does, or ibemail-kgc release), or retire \
         it (ibemail-kgc retire --force {0})"
    )]
    AlreadyStaged(Generation),
    /// A release of a generation that is not pending.
    #[error("generation {0} is not staged: nothing to release")]
    NotStaged(Generation),
    /// The domain is a valid identity domain, but its record name
    /// `_ibemailkey.<domain>` is longer than DNS allows: its parameters
    /// could never be published.
    #[error(
        "{name} would be {} octets, more than the {MAX_NAME_LEN} a DNS name may have: \
         {domain} ({} octets) cannot publish ibemail parameters; a domain may have at most \
         {MAX_PUBLISHING_DOMAIN_LEN} octets",
        name.len(),
        domain.len()
    )]
    RecordNameTooLong {
        /// The (normalised) domain.
        domain: String,
        /// Its record name.
        name: String,
    },
}

/// Makes `dir` a new store's directory: creates it (0700), or takes an
/// existing empty one and makes it 0700; then checks it is private to this
/// user. `Ok(false)`, and nothing changed, if it holds anything: a store
/// is never written over.
pub(crate) fn claim_empty_dir(dir: &Path) -> Result<bool, StoreError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Ok(false);
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
    Ok(true)
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// How a store takes part in replication (`role:` in `kgc.store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The only copy that counts: rotations take effect at once.
    #[default]
    Standalone,
    /// The copy that rotates, retires and publishes for its replicas: a
    /// rotation is staged until every replica serves the new generation.
    Primary,
    /// A copy that mirrors the primary and never changes by itself.
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Replica => "replica",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s.trim() {
            "standalone" => Ok(Role::Standalone),
            "primary" => Ok(Role::Primary),
            "replica" => Ok(Role::Replica),
            other => Err(format!(
                "unknown role {other:?}: expected standalone, primary or replica"
            )),
        }
    }
}

/// The state of one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Staged by a primary's rotation: opens mail, not published yet.
    Pending {
        /// When it was staged.
        since: u64,
    },
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
    policy: Option<Policy>,
    continuity: Option<ContinuitySignature>,
    published_since: Option<u64>,
    absent_since: Option<u64>,
    pending_since: Option<u64>,
    pending_overlap: Option<u64>,
}

impl GenerationEntry {
    fn retired(generation: Generation, at: u64) -> GenerationEntry {
        GenerationEntry {
            generation,
            created: 0,
            retire_at: None,
            retired_at: Some(at),
            key: None,
            params: None,
            policy: None,
            continuity: None,
            published_since: None,
            absent_since: None,
            pending_since: None,
            pending_overlap: None,
        }
    }
}

impl fmt::Debug for GenerationEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationEntry")
            .field("generation", &self.generation)
            .field("created", &self.created)
            .field("retire_at", &self.retire_at)
            .field("retired_at", &self.retired_at)
            .field("policy", &self.policy)
            .field("published_since", &self.published_since)
            .field("absent_since", &self.absent_since)
            .field("pending_since", &self.pending_since)
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
    /// The policy its record publishes.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }
    /// When DNS was first seen publishing it.
    pub fn published_since(&self) -> Option<u64> {
        self.published_since
    }
    /// When DNS was first seen not publishing it (once withdrawn).
    pub fn absent_since(&self) -> Option<u64> {
        self.absent_since
    }
    /// When it is (or was) withdrawn from DNS, if it is retiring.
    pub fn retire_at(&self) -> Option<u64> {
        self.retire_at
    }
    /// When a primary staged it, while it waits for its release.
    pub fn pending_since(&self) -> Option<u64> {
        self.pending_since
    }
    /// True if it still has its key (it opens mail).
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }
    /// True if staged and not released.
    fn is_pending(&self) -> bool {
        self.key.is_some() && self.pending_since.is_some()
    }
}

/// What changes about a generation after it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct GenerationState {
    retire_at: Option<u64>,
    published_since: Option<u64>,
    absent_since: Option<u64>,
    pending_since: Option<u64>,
    pending_overlap: Option<u64>,
}

impl GenerationEntry {
    fn state(&self) -> GenerationState {
        GenerationState {
            retire_at: self.retire_at,
            published_since: self.published_since,
            absent_since: self.absent_since,
            pending_since: self.pending_since,
            pending_overlap: self.pending_overlap,
        }
    }
}

/// A loaded key store. `Debug` never shows key material.
pub struct Store {
    dir: PathBuf,
    domain: String,
    role: Role,
    generations: BTreeMap<Generation, GenerationEntry>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("domain", &self.domain)
            .field("role", &self.role)
            .field(
                "generations",
                &self.generations.values().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Holds the store's writer lock; released on drop.
pub(crate) struct WriteLock(File);

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

pub(crate) fn key_file(generation: Generation) -> String {
    format!("gen-{generation:08}.key")
}

pub(crate) fn retired_file(generation: Generation) -> String {
    format!("gen-{generation:08}.retired")
}

pub(crate) fn state_file(generation: Generation) -> String {
    format!("gen-{generation:08}.state")
}

/// The kinds of a generation's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `gen-N.key`: the master key (secret).
    Key,
    /// `gen-N.state`: what changed later.
    State,
    /// `gen-N.retired`: the tombstone.
    Retired,
}

/// The generation and kind of a store file name (`gen-00000002.key`), or
/// `None` for anything else (`kgc.store`, `.lock`, temporaries).
pub(crate) fn generation_file(name: &str) -> Option<(Generation, FileKind)> {
    let rest = name.strip_prefix("gen-")?;
    let (number, kind) = rest.split_once('.')?;
    if number.len() != 8 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match kind {
        "key" => FileKind::Key,
        "state" => FileKind::State,
        "retired" => FileKind::Retired,
        _ => return None,
    };
    Some((number.parse().ok()?, kind))
}

/// The name of the file that says what a directory is.
pub(crate) const STORE_FILE_NAME: &str = STORE_FILE;

/// Checks that `path` (in the store `dir`) has no group/other permissions
/// and is owned by this process's user, or that this process is root, which
/// may read any store (its write commands run as the owner: [`Store::lock`]).
pub(crate) fn check_private(dir: &Path, path: &Path, is_dir: bool) -> Result<(), StoreError> {
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

/// Parsed fields of a key file (the master key among them), wiped when
/// dropped.
struct WipeFields(BTreeMap<String, String>);

impl std::ops::Deref for WipeFields {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for WipeFields {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
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

pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `contents` to `dir/name` atomically and durably, mode 0600.
pub(crate) fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
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
pub(crate) fn destroy(path: &Path) -> Result<(), StoreError> {
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
    /// Creates a new store for `domain` in `dir` with generation 1, whose
    /// record publishes `policy`.
    ///
    /// `dir` must not exist or be empty. It is created 0700, the key 0600.
    pub fn setup(
        dir: &Path,
        domain: &str,
        now: u64,
        policy: Option<Policy>,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Store, StoreError> {
        Self::setup_at(dir, domain, 1, now, policy, rng)
    }

    /// As [`Store::setup`], starting at generation `first` (a domain that
    /// lost its store starts above every generation it ever published: a
    /// lower one would look like a rollback to senders that pinned it).
    pub fn setup_at(
        dir: &Path,
        domain: &str,
        first: Generation,
        now: u64,
        policy: Option<Policy>,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Store, StoreError> {
        if first == 0 {
            return Err(StoreError::Corrupt {
                path: dir.to_path_buf(),
                problem: "generations start at 1".into(),
            });
        }
        let domain = ibemail_ibe::normalize_domain(domain).map_err(|e| StoreError::Corrupt {
            path: dir.to_path_buf(),
            problem: format!("domain {domain:?}: {e}"),
        })?;
        // Refused before anything is created: a store whose record DNS
        // cannot hold would be a domain nobody can ever send to.
        let name = record_name(&domain);
        if name.len() > MAX_NAME_LEN {
            return Err(StoreError::RecordNameTooLong { domain, name });
        }
        if !claim_empty_dir(dir)? {
            return Err(StoreError::AlreadyExists(dir.to_path_buf()));
        }
        let _lock = Self::lock(dir)?;
        write_atomic(
            dir,
            STORE_FILE,
            format!("format: {STORE_FORMAT}\ndomain: {domain}\n").as_bytes(),
        )?;
        let key = MasterKey::generate(rng);
        Self::write_key(dir, &domain, first, now, policy, None, &key)?;
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
        let role = match fields.get("role") {
            None => Role::Standalone,
            Some(role) => role.parse().map_err(|problem| StoreError::Corrupt {
                path: store_path.clone(),
                problem,
            })?,
        };

        let mut generations: BTreeMap<Generation, GenerationEntry> = BTreeMap::new();
        let mut retired: BTreeMap<Generation, u64> = BTreeMap::new();
        let mut states: BTreeMap<Generation, GenerationState> = BTreeMap::new();
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
                .and_then(|r| r.strip_suffix(".state"))
            {
                let generation: Generation = number(&path, n, "file name")?;
                states.insert(generation, Self::read_state(&path, generation)?);
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
        for (generation, state) in states {
            if let Some(entry) = generations.get_mut(&generation) {
                // retire-at moved from the key file to the state file.
                entry.retire_at = state.retire_at.or(entry.retire_at);
                entry.published_since = state.published_since;
                entry.absent_since = state.absent_since;
                entry.pending_since = state.pending_since;
                entry.pending_overlap = state.pending_overlap;
            }
        }
        // A tombstone wins over a key file left by a crash mid-retirement.
        for (generation, at) in retired {
            generations.insert(generation, GenerationEntry::retired(generation, at));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            domain,
            role,
            generations,
        })
    }

    fn read_key(
        path: &Path,
        domain: &str,
        generation: Generation,
    ) -> Result<GenerationEntry, StoreError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
        Self::parse_key(path, &text, domain, generation)
    }

    /// Parses and checks the text of `generation`'s key file (as
    /// [`Store::open`] reads it, or as a replica receives it).
    pub(crate) fn parse_key(
        path: &Path,
        text: &str,
        domain: &str,
        generation: Generation,
    ) -> Result<GenerationEntry, StoreError> {
        let fields = WipeFields(parse_fields(path, text)?);
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
        let policy = match fields.get("policy").map(String::as_str) {
            None | Some("none") => None,
            Some(text) => {
                let max_age = text
                    .strip_prefix("require ")
                    .and_then(|ma| ma.trim().parse().ok())
                    .ok_or_else(|| corrupt("policy is neither `none` nor `require SECONDS`"))?;
                Some(Policy::require(max_age))
            }
        };
        let continuity = fields
            .get("continuity")
            .map(|b64| {
                STANDARD
                    .decode(b64.as_bytes())
                    .ok()
                    .and_then(|bytes| ContinuitySignature::from_bytes(&bytes).ok())
                    .ok_or_else(|| corrupt("continuity is not a valid signature"))
            })
            .transpose()?;
        Ok(GenerationEntry {
            generation,
            created,
            retire_at,
            retired_at: None,
            key: Some(key),
            params: Some(params),
            policy,
            continuity,
            published_since: None,
            absent_since: None,
            pending_since: None,
            pending_overlap: None,
        })
    }

    fn read_state(path: &Path, generation: Generation) -> Result<GenerationState, StoreError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        Self::parse_state(path, &text, generation)
    }

    /// Parses the text of `generation`'s state file.
    fn parse_state(
        path: &Path,
        text: &str,
        generation: Generation,
    ) -> Result<GenerationState, StoreError> {
        let fields = parse_fields(path, text)?;
        if field(path, &fields, "format")? != STATE_FORMAT
            || number::<Generation>(path, field(path, &fields, "generation")?, "generation")?
                != generation
        {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                problem: "not this generation's state file".into(),
            });
        }
        let time = |name: &str| {
            fields
                .get(name)
                .map(|v| number::<u64>(path, v, name))
                .transpose()
        };
        Ok(GenerationState {
            retire_at: time("retire-at")?,
            published_since: time("published-since")?,
            absent_since: time("absent-since")?,
            pending_since: time("pending-since")?,
            pending_overlap: time("pending-overlap")?,
        })
    }

    /// Checks that `text` is `generation`'s state file (a replica checks
    /// what it receives before writing it).
    pub(crate) fn check_state_text(
        path: &Path,
        text: &str,
        generation: Generation,
    ) -> Result<(), StoreError> {
        Self::parse_state(path, text, generation).map(|_| ())
    }

    /// Checks that `text` is `generation`'s tombstone.
    pub(crate) fn check_tombstone_text(
        path: &Path,
        text: &str,
        generation: Generation,
    ) -> Result<(), StoreError> {
        let fields = parse_fields(path, text)?;
        if field(path, &fields, "format")? != RETIRED_FORMAT
            || number::<Generation>(path, field(path, &fields, "generation")?, "generation")?
                != generation
        {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                problem: "not this generation's tombstone".into(),
            });
        }
        number::<u64>(path, field(path, &fields, "retired")?, "retired")?;
        Ok(())
    }

    fn write_state(
        &self,
        generation: Generation,
        state: &GenerationState,
    ) -> Result<(), StoreError> {
        let mut text = format!("format: {STATE_FORMAT}\ngeneration: {generation}\n");
        for (name, value) in [
            ("retire-at", state.retire_at),
            ("published-since", state.published_since),
            ("absent-since", state.absent_since),
            ("pending-since", state.pending_since),
            ("pending-overlap", state.pending_overlap),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("{name}: {value}\n"));
            }
        }
        write_atomic(&self.dir, &state_file(generation), text.as_bytes())
    }

    /// Writes a new generation's key file (once: key files are never
    /// rewritten).
    fn write_key(
        dir: &Path,
        domain: &str,
        generation: Generation,
        created: u64,
        policy: Option<Policy>,
        continuity: Option<&ContinuitySignature>,
        key: &MasterKey,
    ) -> Result<(), StoreError> {
        let mut text = Zeroizing::new(format!(
            "format: {KEY_FORMAT}\ndomain: {domain}\ngeneration: {generation}\ncreated: {created}\n"
        ));
        match policy {
            Some(p) => text.push_str(&format!("policy: require {}\n", p.max_age)),
            None => text.push_str("policy: none\n"),
        }
        if let Some(cs) = continuity {
            text.push_str(&format!("continuity: {}\n", STANDARD.encode(cs.to_bytes())));
        }
        let encoded = Zeroizing::new(STANDARD.encode(key.to_bytes().as_ref()));
        text.push_str(&format!("master-key: {}\n", encoded.as_str()));
        write_atomic(dir, &key_file(generation), text.as_bytes())
    }

    /// Takes the writer lock. Only the store's owner writes: root may read
    /// any store, but files it wrote would be unreadable to the daemon.
    pub(crate) fn lock(dir: &Path) -> Result<WriteLock, StoreError> {
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

    /// How this copy takes part in replication.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Makes this copy `role` (`ibemail-kgc role`): a replica promoted to
    /// primary after the primary was lost, a standalone store that gets
    /// replicas, an old primary turned into a replica.
    pub fn set_role(&mut self, role: Role) -> Result<(), StoreError> {
        let _lock = Self::lock(&self.dir)?;
        let mut text = format!("format: {STORE_FORMAT}\ndomain: {}\n", self.domain);
        if role != Role::Standalone {
            text.push_str(&format!("role: {role}\n"));
        }
        write_atomic(&self.dir, STORE_FILE, text.as_bytes())?;
        *self = Store::open(&self.dir)?;
        Ok(())
    }

    /// Refuses what only the primary (or a standalone store) does.
    fn not_replica(&self) -> Result<(), StoreError> {
        if self.role == Role::Replica {
            return Err(StoreError::Replica {
                dir: self.dir.clone(),
                domain: self.domain.clone(),
            });
        }
        Ok(())
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
        if let (true, Some(since)) = (entry.is_pending(), entry.pending_since) {
            return Some(State::Pending { since });
        }
        if Some(generation) == self.active_generation() {
            Some(State::Active)
        } else {
            Some(State::Retiring {
                until: entry.retire_at.unwrap_or(u64::MAX),
            })
        }
    }

    /// The active generation (the highest one with a key that is not
    /// pending).
    pub fn active_generation(&self) -> Option<Generation> {
        self.generations
            .values()
            .rev()
            .find(|e| e.key.is_some() && !e.is_pending())
            .map(|e| e.generation)
    }

    /// The generations with a key (active, retiring, withdrawn), highest
    /// first: every generation that still opens mail, but those staged
    /// and not released ([`Store::pending`]).
    pub fn published(&self) -> Vec<&GenerationEntry> {
        self.generations
            .values()
            .rev()
            .filter(|e| e.key.is_some() && !e.is_pending())
            .collect()
    }

    /// Staged generations waiting for their release, lowest first.
    pub fn pending(&self) -> Vec<&GenerationEntry> {
        self.generations
            .values()
            .filter(|e| e.is_pending())
            .collect()
    }

    /// Every generation that opens mail here, pending ones included.
    pub fn with_keys(&self) -> Vec<Generation> {
        self.generations
            .values()
            .filter(|e| e.key.is_some())
            .map(|e| e.generation)
            .collect()
    }

    /// The DNS records to publish at `now`, highest generation first: the
    /// active generation and those retiring whose `retire-at` has not come
    /// (with it as `e=`). A withdrawn generation is not published but keeps
    /// its key (see [`Store::retire_due`]).
    pub fn records_at(&self, now: u64) -> Vec<Record> {
        let active = self.active_generation();
        self.published()
            .into_iter()
            .filter(|e| Some(e.generation) == active || e.retire_at.is_none_or(|at| at > now))
            .filter_map(|e| {
                let mut record = Record::new(e.generation, e.params.clone()?)
                    .with_signing(e.key.as_ref()?.signing_params())
                    .with_policy(e.policy);
                record.continuity = e.continuity.or_else(|| self.continuity_for(&record));
                if Some(e.generation) != active {
                    record.expires = e.retire_at;
                }
                Some(record)
            })
            .collect()
    }

    /// [`Store::records_at`] now.
    pub fn records(&self) -> Vec<Record> {
        self.records_at(crate::clock::now())
    }

    /// The continuity signature of `record` by the generation before it,
    /// if that generation's key is still here (BLS is deterministic, so
    /// this is the signature made when the generation was created).
    fn continuity_for(&self, record: &Record) -> Option<ContinuitySignature> {
        let previous = self.master_key(record.generation.checked_sub(1)?).ok()?;
        let policy = Policy::signed_bytes(record.policy.as_ref());
        Some(previous.sign_successor(&record.successor(&self.domain, &policy)?))
    }

    /// The generation to sign mail with at `now`: the active one once DNS
    /// has been seen publishing it for `ttl` seconds (so receivers' caches
    /// know it), or once it is `fallback` seconds old when nothing checks
    /// DNS; until then the generation before it, which is still published.
    pub fn signing_generation(&self, now: u64, ttl: u64, fallback: u64) -> Option<Generation> {
        let mut with_keys = self.published().into_iter();
        let active = with_keys.next()?;
        let known = match active.published_since {
            Some(since) => now >= since.saturating_add(ttl),
            None => now >= active.created.saturating_add(fallback),
        };
        let previous = with_keys.next();
        match previous {
            Some(previous) if !known => Some(previous.generation),
            _ => Some(active.generation),
        }
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

    /// The certified per-message key of `signing`'s identity and
    /// generation (`signing` from [`Store::extract_signing`]).
    pub fn certify(&self, signing: &SigningKey) -> Result<CertifiedKey, StoreError> {
        let generation = signing.generation();
        self.master_key_for(signing.identity(), generation)?
            .certify(signing)
            .ok_or_else(|| StoreError::Corrupt {
                path: self.dir.clone(),
                problem: format!(
                    "no certified message key for generation {generation} (a fault while \
                     computing it?)"
                ),
            })
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
    /// and a new generation, publishing `policy`, becomes active, its record
    /// signed by the generation before it (the continuity signature).
    /// Returns the new generation. Nothing is destroyed here: see
    /// [`Store::retire_due`].
    ///
    /// A primary's rotation only stages the new generation (pending, the
    /// old one stays active and keeps its overlap unstarted) until
    /// [`Store::release`]; a replica refuses.
    pub fn rotate(
        &mut self,
        overlap_secs: u64,
        now: u64,
        policy: Option<Policy>,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Generation, StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.not_replica()?;
        if let Some(staged) = self.pending().first() {
            return Err(StoreError::AlreadyStaged(staged.generation));
        }
        let highest = self.generations.keys().next_back().copied().unwrap_or(0);
        let next = highest
            .checked_add(1)
            .ok_or(StoreError::GenerationOverflow)?;
        if self.role == Role::Primary {
            // The state file comes first: a key file without it would be
            // active at once, published before the replicas have it.
            self.write_state(
                next,
                &GenerationState {
                    pending_since: Some(now),
                    pending_overlap: Some(overlap_secs),
                    ..GenerationState::default()
                },
            )?;
        } else {
            // A pending state left by a primary's crashed rotation must
            // not make this one pending.
            destroy(&self.dir.join(state_file(next)))?;
            if let Some(active) = self.active_generation() {
                let mut state = self.generations[&active].state();
                state.retire_at = Some(now.saturating_add(overlap_secs));
                self.write_state(active, &state)?;
            }
        }
        let key = MasterKey::generate(rng);
        let record = Record::new(next, key.public_params())
            .with_signing(key.signing_params())
            .with_policy(policy);
        let continuity = self.continuity_for(&record);
        Self::write_key(
            &self.dir,
            &self.domain,
            next,
            now,
            policy,
            continuity.as_ref(),
            &key,
        )?;
        *self = Store::open(&self.dir)?;
        Ok(next)
    }

    /// Releases the staged `generation`: the active one starts its overlap
    /// (retiring), the one [`Store::rotate`] was given, or `overlap_secs`
    /// if none was recorded; then `generation` stops being pending and
    /// becomes active — to be published. A crash in between leaves it
    /// pending, and the release is simply made again. Returns the overlap.
    pub fn release(
        &mut self,
        generation: Generation,
        overlap_secs: u64,
        now: u64,
    ) -> Result<u64, StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.not_replica()?;
        let Some(entry) = self.generations.get(&generation).filter(|e| e.is_pending()) else {
            return Err(StoreError::NotStaged(generation));
        };
        let mut released = entry.state();
        let overlap = released.pending_overlap.unwrap_or(overlap_secs);
        if let Some(active) = self.active_generation() {
            let mut state = self.generations[&active].state();
            state.retire_at = Some(now.saturating_add(overlap));
            self.write_state(active, &state)?;
        }
        released.pending_since = None;
        released.pending_overlap = None;
        self.write_state(generation, &released)?;
        *self = Store::open(&self.dir)?;
        Ok(overlap)
    }

    /// Records what DNS was seen to publish at `now` (the generations of
    /// the `_ibemailkey` RRset as the authoritative server or a resolver
    /// answered): when each generation was first seen published, and when a
    /// withdrawn generation was first seen absent. A generation seen again
    /// after it was absent is not absent any more.
    pub fn note_published(&mut self, published: &[Generation], now: u64) -> Result<(), StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.not_replica()?;
        let mut changes = Vec::new();
        for entry in self.generations.values().filter(|e| e.key.is_some()) {
            let mut state = entry.state();
            if published.contains(&entry.generation) {
                state.published_since.get_or_insert(now);
                state.absent_since = None;
            } else if entry.retire_at.is_some_and(|at| at <= now) {
                state.absent_since.get_or_insert(now);
            }
            if state != entry.state() {
                changes.push((entry.generation, state));
            }
        }
        for (generation, state) in &changes {
            self.write_state(*generation, state)?;
        }
        if !changes.is_empty() {
            *self = Store::open(&self.dir)?;
        }
        Ok(())
    }

    /// Destroys the keys of withdrawn generations that DNS has been seen
    /// without for longer than `retention`'s floor, and says why each other
    /// non-active generation still waits. Returns (generation, `None` if it
    /// was retired now, or why it waits).
    pub fn retire_due(
        &mut self,
        now: u64,
        retention: &Retention,
    ) -> Result<Vec<(Generation, Option<Wait>)>, StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.not_replica()?;
        let active = self.active_generation();
        let mut outcome = Vec::new();
        let mut due = Vec::new();
        for e in self.generations.values() {
            if Some(e.generation) == active || e.key.is_none() || e.is_pending() {
                continue;
            }
            let wait = match (e.retire_at, e.absent_since) {
                (Some(until), _) if until > now => Some(Wait::Published { until }),
                (None, _) => Some(Wait::Published { until: u64::MAX }),
                (Some(_), None) => Some(Wait::NotSeenAbsent),
                (Some(_), Some(since)) => {
                    let until = since.saturating_add(retention.floor(e.policy.as_ref()));
                    (until > now).then_some(Wait::Floor { since, until })
                }
            };
            if wait.is_none() {
                due.push(e.generation);
            }
            outcome.push((e.generation, wait));
        }
        for &generation in &due {
            self.retire_locked(generation, now)?;
        }
        self.clear_leftovers()?;
        *self = Store::open(&self.dir)?;
        Ok(outcome)
    }

    /// Retires `generation` now, whatever DNS says: the administrator's
    /// decision (`ibemail-kgc retire --force`). Mail still sealed to it can
    /// no longer be opened. The active generation cannot be retired.
    pub fn force_retire(&mut self, generation: Generation, now: u64) -> Result<(), StoreError> {
        let _lock = Self::lock(&self.dir)?;
        *self = Store::open(&self.dir)?;
        self.not_replica()?;
        if Some(generation) == self.active_generation() {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                problem: format!("generation {generation} is active; rotate first"),
            });
        }
        match self.generations.get(&generation) {
            None => return Err(StoreError::UnknownGeneration(generation)),
            Some(e) if e.key.is_none() => return Err(StoreError::Retired(generation)),
            Some(_) => {}
        }
        self.retire_locked(generation, now)?;
        self.clear_leftovers()?;
        *self = Store::open(&self.dir)?;
        Ok(())
    }

    /// Writes the tombstone, then destroys the key and state files.
    pub(crate) fn retire_locked(&self, generation: Generation, now: u64) -> Result<(), StoreError> {
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
        destroy(&self.dir.join(state_file(generation)))?;
        fsync_dir(&self.dir)
    }

    /// Tombstones win over any key file a crash left behind: destroys those.
    fn clear_leftovers(&self) -> Result<(), StoreError> {
        for entry in self.generations.values().filter(|e| e.retired_at.is_some()) {
            for name in [key_file(entry.generation), state_file(entry.generation)] {
                let leftover = self.dir.join(name);
                if leftover.exists() {
                    destroy(&leftover)?;
                }
            }
        }
        Ok(())
    }
}
