//! Review 5: crafted exports fed to `ibemail-kgc import`.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use age::secrecy::SecretString;
use ibemail_kgc::clock::now;
use ibemail_kgc::export::{ExportError, Protection, Unlock, export, import};
use ibemail_kgc::store::{Role, Store};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

fn store(dir: &Path, seed: u64) {
    let mut store = Store::setup(
        dir,
        "b.test",
        now() - 100,
        None,
        &mut ChaCha20Rng::seed_from_u64(seed),
    )
    .unwrap();
    store.rotate(3600, now(), None, &mut OsRng).unwrap();
}

/// threat-model.md: an attacker "cannot ... slip a doctored [export] in:
/// age authenticates the file". age's X25519 recipients are public keys
/// (the guide has the operator print one with age-keygen and copy it to
/// the primary): anyone who saw it can encrypt a store of his own making
/// to it, and that file decrypts and imports like the genuine one. Whoever
/// can swap the file in transit or in the backup location then has the
/// importing KGC serve master keys he knows (as a restored primary: the
/// domain's published keys).
#[test]
fn an_export_made_by_someone_who_only_knows_the_age_recipient_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let genuine = tmp.path().join("genuine");
    store(&genuine, 1);
    let transfer_key = age::x25519::Identity::generate();
    let recipient = transfer_key.to_public();
    let unlock = Unlock::Identities(vec![Box::new(transfer_key)]);
    // What the operator meant to import works, checked against the
    // fingerprint `export` printed.
    let real = export(&genuine, Protection::Recipients(vec![recipient.clone()])).unwrap();
    import(
        &tmp.path().join("ok"),
        &real.bytes,
        &unlock,
        Role::Primary,
        Some(&real.fingerprint),
    )
    .unwrap();

    // The attacker: his own store for the domain, encrypted to the public
    // recipient; no secret of the operator's is used.
    let forged_dir = tmp.path().join("attacker");
    store(&forged_dir, 666);
    let forged = export(&forged_dir, Protection::Recipients(vec![recipient])).unwrap();
    let target = tmp.path().join("restored");
    let attacker_key = std::fs::read(forged_dir.join("gen-00000002.key")).unwrap();
    // Checked against the genuine fingerprint, or not checked at all:
    // refused either way, nothing written.
    for expected in [Some(real.fingerprint.as_str()), None] {
        let result = import(&target, &forged.bytes, &unlock, Role::Primary, expected);
        let imported_key = std::fs::read(target.join("gen-00000002.key")).ok();
        assert!(
            matches!(result, Err(ExportError::Unauthenticated(_))),
            "a store forged with only the public age recipient was imported as the primary \
             (expected {expected:?}); it holds the attacker's master key: {}",
            imported_key.as_deref() == Some(attacker_key.as_slice())
        );
        assert!(imported_key.is_none());
    }
}

/// The mode check refuses group/other bits but lets setuid, setgid, the
/// sticky bit and execute bits through, and `restore_metadata` puts them on
/// the imported files (`chmod` with the archive's mode, as the importing
/// user, which may be root).
#[test]
fn special_and_execute_mode_bits_from_an_archive_are_not_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store(&dir, 1);
    let store_file = std::fs::read(dir.join("kgc.store")).unwrap();
    let key_file = std::fs::read(dir.join("gen-00000002.key")).unwrap();
    // A passphrase export: the passphrase vouches for its maker, so no
    // fingerprint is needed and the modes are what is tested.
    let passphrase = SecretString::from("a long passphrase for the test".to_string());
    let mut plain = tar::Builder::new(Vec::new());
    for (name, mode, contents) in [
        ("kgc.store", 0o6700, &store_file[..]),
        ("gen-00000002.key", 0o4700, &key_file[..]),
    ] {
        let mut header = tar::Header::new_ustar();
        header.set_mode(mode);
        header.set_size(contents.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        plain.append_data(&mut header, name, contents).unwrap();
    }
    let plain = plain.into_inner().unwrap();
    let mut bytes = Vec::new();
    let mut writer = age::Encryptor::with_user_passphrase(passphrase.clone())
        .wrap_output(&mut bytes)
        .unwrap();
    std::io::Write::write_all(&mut writer, &plain).unwrap();
    writer.finish().unwrap();
    let target = tmp.path().join("copy");
    import(
        &target,
        &bytes,
        &Unlock::Passphrase(passphrase),
        Role::Replica,
        None,
    )
    .unwrap();
    for name in ["kgc.store", "gen-00000002.key"] {
        let mode = std::fs::metadata(target.join(name)).unwrap().mode() & 0o7777;
        assert_eq!(
            mode & !0o600,
            0,
            "{name} imported with mode {mode:04o} (setuid/setgid/exec from the archive)"
        );
    }
}

/// A tar entry with a raw name (no checks by the tar builder), type and
/// contents.
fn raw_entry(
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    contents: &[u8],
    link: Option<&[u8]>,
) -> Vec<u8> {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(mode);
    header.set_size(contents.len() as u64);
    header.set_entry_type(kind);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    }
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(contents);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn encrypt(recipient: &age::x25519::Recipient, plain: &[u8]) -> Vec<u8> {
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out).unwrap();
    std::io::Write::write_all(&mut writer, plain).unwrap();
    writer.finish().unwrap();
    out
}

/// Path traversal, absolute names, hard links, devices, FIFOs, duplicate
/// entries and oversized entries are all refused before anything is
/// written (expected to pass: sound).
#[test]
fn traversal_links_devices_duplicates_and_huge_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store(&dir, 1);
    let store_file = std::fs::read(dir.join("kgc.store")).unwrap();
    let key_file = std::fs::read(dir.join("gen-00000002.key")).unwrap();
    let age_key = age::x25519::Identity::generate();
    let recipient = age_key.to_public();
    let unlock = Unlock::Identities(vec![Box::new(age_key)]);
    let base = || {
        let mut v = raw_entry(
            b"kgc.store",
            tar::EntryType::Regular,
            0o600,
            &store_file,
            None,
        );
        v.extend(raw_entry(
            b"gen-00000002.key",
            tar::EntryType::Regular,
            0o600,
            &key_file,
            None,
        ));
        v
    };
    let huge = vec![b'a'; 2 * 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            raw_entry(
                b"../gen-00000003.key",
                tar::EntryType::Regular,
                0o600,
                &key_file,
                None,
            ),
        ),
        (
            "absolute",
            raw_entry(
                b"/tmp/gen-00000003.key",
                tar::EntryType::Regular,
                0o600,
                &key_file,
                None,
            ),
        ),
        (
            "hardlink",
            raw_entry(
                b"gen-00000003.key",
                tar::EntryType::Link,
                0o600,
                b"",
                Some(b"/etc/passwd"),
            ),
        ),
        (
            "chardev",
            raw_entry(b"gen-00000003.key", tar::EntryType::Char, 0o600, b"", None),
        ),
        (
            "fifo",
            raw_entry(b"gen-00000003.key", tar::EntryType::Fifo, 0o600, b"", None),
        ),
        (
            "dir",
            raw_entry(
                b"gen-00000003.key",
                tar::EntryType::Directory,
                0o700,
                b"",
                None,
            ),
        ),
        (
            "duplicate",
            raw_entry(
                b"gen-00000002.key",
                tar::EntryType::Regular,
                0o600,
                &key_file,
                None,
            ),
        ),
        (
            "huge",
            raw_entry(
                b"gen-00000003.state",
                tar::EntryType::Regular,
                0o600,
                &huge,
                None,
            ),
        ),
        (
            "dot",
            raw_entry(b".lock", tar::EntryType::Regular, 0o600, b"", None),
        ),
    ];
    for (what, extra) in cases {
        let mut plain = base();
        plain.extend(extra);
        plain.extend(vec![0u8; 1024]);
        let target = tmp.path().join(format!("copy-{what}"));
        let result = import(
            &target,
            &encrypt(&recipient, &plain),
            &unlock,
            Role::Replica,
            None,
        );
        assert!(result.is_err(), "{what}: imported");
        assert!(!target.exists(), "{what}: something was written");
        assert!(!tmp.path().join("gen-00000003.key").exists(), "{what}");
    }
}
