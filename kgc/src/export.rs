//! Moving a key store between hosts and into backups: `ibemail-kgc export`
//! and `import`.
//!
//! The export is a tar archive of the store's files — `kgc.store`, every
//! generation's key, state file and tombstone, each with its mode and
//! modification time — encrypted with [age](https://age-encryption.org/v1)
//! to a passphrase (scrypt) or to age recipients (X25519 public keys), so a
//! backup can also be opened with the `age` tool itself (`age -d ... | tar
//! t`). The archive is written straight into the encryption: no plaintext
//! copy of the keys is made on disk or kept in memory beyond a file at a
//! time.
//!
//! An import never overwrites anything: the target directory must not
//! exist or be empty. Every entry is checked before anything is written (a
//! plain file of a known name, no permission for group or others, a key of
//! the store's domain); the files are written with their modes, the key
//! files before `kgc.store` (so an interrupted import is not taken for a
//! store), and the result must open as a store, or it is removed again.
//! The role is chosen at import (`--role replica` for a new replica,
//! `primary` to restore or move the primary): a copy never silently
//! becomes a second primary.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::str::FromStr as _;

use age::secrecy::SecretString;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::store::{
    FileKind, Role, STORE_FILE_NAME, Store, StoreError, claim_empty_dir, destroy, generation_file,
    io_err, write_atomic,
};

/// Largest file an archive may hold (a key file is well under a kilobyte).
const MAX_ENTRY: u64 = 1024 * 1024;

/// What can go wrong with an export or an import.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store itself.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Encryption or decryption.
    #[error("{0}")]
    Age(String),
    /// The archive inside does not hold a key store as `export` writes it.
    #[error("not a key store export: {0}")]
    Archive(String),
    /// The target of an import holds something.
    #[error("{0} exists and is not empty; an import never overwrites anything")]
    NotEmpty(std::path::PathBuf),
    /// An export encrypted to age recipients, imported without the
    /// fingerprint `export` printed, or with another.
    #[error("{0}")]
    Unauthenticated(String),
    /// Reading or writing the export.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What `export` wrote: the age file, and the fingerprint of what it
/// holds, which `import` checks (an age recipient is a public key: anyone
/// who knows it can make an export to it, so a recipients export proves
/// nothing about who made it).
pub struct Exported {
    /// The age file.
    pub bytes: Vec<u8>,
    /// `sha256:HEX` of the archived files ([`fingerprint`]).
    pub fingerprint: String,
}

/// The fingerprint of an export's files, in archive order: SHA-256 over
/// each file's name, a NUL, its mode, modification time and length (8
/// octets each, big-endian) and its contents.
fn fingerprint(entries: &[Entry]) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for entry in entries {
        hash.update(entry.name.as_bytes());
        hash.update([0]);
        hash.update(u64::from(entry.mode).to_be_bytes());
        hash.update(entry.mtime.to_be_bytes());
        hash.update((entry.contents.len() as u64).to_be_bytes());
        hash.update(&entry.contents[..]);
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// How an export is encrypted.
pub enum Protection {
    /// To a passphrase (age's scrypt recipient).
    Passphrase(SecretString),
    /// To age recipients (`age1...`).
    Recipients(Vec<age::x25519::Recipient>),
}

/// How an import is decrypted.
pub enum Unlock {
    /// With the passphrase.
    Passphrase(SecretString),
    /// With age identities (an identity file's contents).
    Identities(Vec<Box<dyn age::Identity>>),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlock::Passphrase(_) => f.write_str("Unlock::Passphrase(<redacted>)"),
            Unlock::Identities(ids) => write!(f, "Unlock::Identities({} identities)", ids.len()),
        }
    }
}

/// Parses `age1...` recipients, one per line (blank lines and `#`
/// comments skipped), as `age -R` reads them.
pub fn parse_recipients(text: &str) -> Result<Vec<age::x25519::Recipient>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            age::x25519::Recipient::from_str(l)
                .map_err(|e| format!("{l:?} is not an age recipient (age1...): {e}"))
        })
        .collect()
}

/// Reads age identities (`AGE-SECRET-KEY-1...` lines, as `age-keygen`
/// writes them) from a file that must be private to its owner.
pub fn read_identities(path: &Path) -> Result<Unlock, String> {
    let bytes = crate::tls::read_secret_file(path).map_err(|e| e.to_string())?;
    let file = age::IdentityFile::from_buffer(&bytes[..])
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let identities = file
        .into_identities()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if identities.is_empty() {
        return Err(format!("{}: no age identity in it", path.display()));
    }
    Ok(Unlock::Identities(identities))
}

/// Reads a passphrase (the file's first line) from a file that must be
/// private to its owner.
pub fn read_passphrase(path: &Path) -> Result<SecretString, String> {
    let bytes = crate::tls::read_secret_file(path).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| format!("{}: the passphrase is not UTF-8", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("{}: the passphrase is empty", path.display()));
    }
    Ok(SecretString::from(line.to_string()))
}

/// The files of the store in `dir` in export order (`kgc.store` first),
/// with modes and times.
fn export_files(dir: &Path) -> Result<Vec<Entry>, StoreError> {
    let mut files = Vec::new();
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == STORE_FILE_NAME || generation_file(n).is_some())
        .collect();
    names.sort_by_key(|n| (n != STORE_FILE_NAME, n.clone()));
    for name in names {
        let path = dir.join(&name);
        let mut file = fs::File::open(&path).map_err(io_err(&path))?;
        let meta = file.metadata().map_err(io_err(&path))?;
        if !meta.is_file() {
            continue;
        }
        let mut contents = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
        file.read_to_end(&mut contents).map_err(io_err(&path))?;
        files.push(Entry {
            name,
            mode: meta.mode() & 0o7777,
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            contents,
        });
    }
    Ok(files)
}

/// Encrypts the store in `dir` (checked by opening it) and returns the
/// age file.
pub fn export(dir: &Path, protection: Protection) -> Result<Exported, ExportError> {
    Store::open(dir)?;
    let files = export_files(dir)?;
    let encryptor = match protection {
        Protection::Passphrase(passphrase) => age::Encryptor::with_user_passphrase(passphrase),
        Protection::Recipients(recipients) => {
            if recipients.is_empty() {
                return Err(ExportError::Age("no recipient".into()));
            }
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| ExportError::Age(e.to_string()))?
        }
    };
    let mut output = Vec::new();
    let writer = encryptor.wrap_output(&mut output)?;
    let mut archive = tar::Builder::new(writer);
    archive.mode(tar::HeaderMode::Complete);
    for file in &files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(file.contents.len() as u64);
        header.set_mode(file.mode);
        header.set_mtime(file.mtime);
        header.set_uid(0);
        header.set_gid(0);
        archive.append_data(&mut header, &file.name, &file.contents[..])?;
    }
    let writer = archive.into_inner()?;
    writer.finish()?;
    Ok(Exported {
        bytes: output,
        fingerprint: fingerprint(&files),
    })
}

/// One file of a store, as archived.
struct Entry {
    name: String,
    mode: u32,
    mtime: u64,
    contents: Zeroizing<Vec<u8>>,
}

/// Decrypts and checks an export; returns its entries.
fn read_archive(encrypted: &[u8], unlock: &Unlock) -> Result<Vec<Entry>, ExportError> {
    let decryptor = age::Decryptor::new_buffered(encrypted)
        .map_err(|e| ExportError::Age(format!("not an age file: {e}")))?;
    let scrypt;
    let identities: Vec<&dyn age::Identity> = match unlock {
        Unlock::Passphrase(passphrase) => {
            if !decryptor.is_scrypt() {
                return Err(ExportError::Age(
                    "the export is encrypted to age recipients, not to a passphrase: give \
                     --identity"
                        .into(),
                ));
            }
            scrypt = age::scrypt::Identity::new(passphrase.clone());
            vec![&scrypt]
        }
        Unlock::Identities(ids) => {
            if decryptor.is_scrypt() {
                return Err(ExportError::Age(
                    "the export is encrypted to a passphrase: give --passphrase-file".into(),
                ));
            }
            ids.iter().map(|i| i.as_ref()).collect()
        }
    };
    let reader = decryptor
        .decrypt(identities.into_iter())
        .map_err(|e| ExportError::Age(format!("cannot decrypt: {e}")))?;
    let mut archive = tar::Archive::new(reader);
    let mut entries = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for entry in archive.entries()? {
        let mut entry = entry.map_err(|e| ExportError::Archive(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| ExportError::Archive(e.to_string()))?;
        let name = path.to_string_lossy().into_owned();
        let bad = |problem: &str| ExportError::Archive(format!("{name:?}: {problem}"));
        if name.contains('/') || !(name == STORE_FILE_NAME || generation_file(&name).is_some()) {
            return Err(bad("not a file of a key store"));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad("not a regular file"));
        }
        let mode = entry.header().mode().map_err(|e| bad(&e.to_string()))? & 0o7777;
        if mode & 0o077 != 0 || mode & 0o600 == 0 {
            return Err(bad(&format!(
                "mode {mode:04o}: store files are private to their owner (0600)"
            )));
        }
        let size = entry.size();
        if size > MAX_ENTRY {
            return Err(bad("too large"));
        }
        if !names.insert(name.clone()) {
            return Err(bad("appears twice"));
        }
        let mtime = entry.header().mtime().unwrap_or(0);
        let mut contents = Zeroizing::new(Vec::with_capacity(size as usize));
        entry
            .read_to_end(&mut contents)
            .map_err(|e| ExportError::Archive(e.to_string()))?;
        entries.push(Entry {
            name,
            mode,
            mtime,
            contents,
        });
    }
    Ok(entries)
}

/// The domain of a `kgc.store` text, and the text with `role` set.
fn with_role(text: &str, role: Role) -> Result<(String, String), ExportError> {
    let mut domain = None;
    let mut out = String::new();
    for line in text.lines() {
        match line.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("role", _)) => continue,
            Some(("domain", d)) => domain = Some(d.to_string()),
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    if role != Role::Standalone {
        out.push_str(&format!("role: {role}\n"));
    }
    let domain = domain.ok_or_else(|| ExportError::Archive("kgc.store names no domain".into()))?;
    Ok((domain, out))
}

/// Decrypts an export into `dir` (which must not exist or be empty) as a
/// store of `role`, and opens it.
///
/// `expected` is the fingerprint `export` printed ([`Exported::fingerprint`]),
/// obtained from its maker by a channel an attacker cannot rewrite. It is
/// required for an export to age recipients: the recipient is public, so
/// anyone could have made one, with master keys of their own. A
/// passphrase export is authenticated by the passphrase; the fingerprint
/// is checked there too when given.
pub fn import(
    dir: &Path,
    encrypted: &[u8],
    unlock: &Unlock,
    role: Role,
    expected: Option<&str>,
) -> Result<Store, ExportError> {
    let entries = read_archive(encrypted, unlock)?;
    let Some(store_entry) = entries.iter().find(|e| e.name == STORE_FILE_NAME) else {
        return Err(ExportError::Archive("no kgc.store in it".into()));
    };
    let store_text = std::str::from_utf8(&store_entry.contents)
        .map_err(|_| ExportError::Archive("kgc.store is not text".into()))?;
    let (domain, store_text) = with_role(store_text, role)?;
    // Check everything before writing anything.
    let mut keys = 0;
    for entry in &entries {
        let path = dir.join(&entry.name);
        let Some((generation, kind)) = generation_file(&entry.name) else {
            continue;
        };
        let text = std::str::from_utf8(&entry.contents)
            .map_err(|_| ExportError::Archive(format!("{} is not text", entry.name)))?;
        match kind {
            FileKind::Key => {
                Store::parse_key(&path, text, &domain, generation)?;
                keys += 1;
            }
            FileKind::State => Store::check_state_text(&path, text, generation)?,
            FileKind::Retired => Store::check_tombstone_text(&path, text, generation)?,
        }
    }
    if keys == 0 {
        return Err(ExportError::Archive("no key in it".into()));
    }
    // Then who made it, still before writing anything.
    let found = fingerprint(&entries);
    match (expected, unlock) {
        (Some(expected), _) if expected.trim().eq_ignore_ascii_case(&found) => {}
        (Some(expected), _) => {
            return Err(ExportError::Unauthenticated(format!(
                "the export's fingerprint is not {}: it is not the export that was made \
                 (replaced on the way, or another one); nothing was imported",
                expected.trim()
            )));
        }
        (None, Unlock::Identities(_)) => {
            return Err(ExportError::Unauthenticated(
                "an export to an age recipient must be checked against the fingerprint \
                 `ibemail-kgc export` printed where it was made (--expect sha256:..., read \
                 there, not from this host): the recipient is a public key, so anyone could \
                 have made this file with master keys of their own"
                    .into(),
            ));
        }
        (None, Unlock::Passphrase(_)) => {}
    }
    if !claim_empty_dir(dir)? {
        return Err(ExportError::NotEmpty(dir.to_path_buf()));
    }
    let written = (|| -> Result<Store, ExportError> {
        // Tombstones and states, then keys, then what makes it a store.
        let mut ordered: BTreeMap<(u8, &str), &Entry> = BTreeMap::new();
        for entry in &entries {
            let rank = match generation_file(&entry.name).map(|(_, k)| k) {
                Some(FileKind::Retired) => 0,
                Some(FileKind::State) => 1,
                Some(FileKind::Key) => 2,
                None => continue,
            };
            ordered.insert((rank, entry.name.as_str()), entry);
        }
        for entry in ordered.values() {
            write_atomic(dir, &entry.name, &entry.contents)?;
            restore_metadata(dir, entry)?;
        }
        write_atomic(dir, STORE_FILE_NAME, store_text.as_bytes())?;
        restore_metadata(
            dir,
            &Entry {
                name: STORE_FILE_NAME.into(),
                mode: store_entry.mode,
                mtime: store_entry.mtime,
                contents: Zeroizing::new(Vec::new()),
            },
        )?;
        Ok(Store::open(dir)?)
    })();
    if written.is_err() {
        for entry in &entries {
            let _ = destroy(&dir.join(&entry.name));
        }
    }
    written
}

/// Gives an imported file its archived mode and modification time.
fn restore_metadata(dir: &Path, entry: &Entry) -> Result<(), StoreError> {
    let path = dir.join(&entry.name);
    let file = fs::File::options()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(entry.mtime);
    file.set_modified(time).map_err(io_err(&path))?;
    // Read and write for the owner at most: no execute, setuid, setgid or
    // sticky bit comes from an archive.
    file.set_permissions(fs::Permissions::from_mode(entry.mode & 0o600))
        .map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))
}

/// Writes an export to `path`, created 0600 and never overwritten.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
