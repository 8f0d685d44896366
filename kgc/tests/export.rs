//! `ibemail-kgc export` and `import`: an age-encrypted copy of a key store
//! that keeps every file, mode and time, opens the same mail, and is
//! refused whenever it would overwrite, is tampered with, or carries
//! files others could read.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::str::FromStr as _;

use age::secrecy::SecretString;
use ibemail_ibe::{Identity, encapsulate};
use ibemail_kgc::clock::now;
use ibemail_kgc::export::{ExportError, Exported, Protection, Unlock, export, import};
use ibemail_kgc::store::{Role, Store};
use rand_chacha::ChaCha20Rng;
use rand_core::{OsRng, SeedableRng};

/// A store with history: generation 1 retired, 2 retiring (with a state
/// file), 3 active.
fn store_with_history(dir: &Path) {
    let mut store = Store::setup(
        dir,
        "b.test",
        now() - 100,
        None,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    store.rotate(3600, now() - 50, None, &mut OsRng).unwrap();
    store.rotate(3600, now(), None, &mut OsRng).unwrap();
    store.force_retire(1, now()).unwrap();
    store.note_published(&[2, 3], now()).unwrap();
}

/// Every file of a store: name -> (mode, mtime, contents).
fn files(dir: &Path) -> BTreeMap<String, (u32, i64, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .map(|p| {
            let meta = std::fs::metadata(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    std::fs::read(&p).unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn an_export_imports_as_the_same_store_with_modes_times_and_history() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_history(&dir);
    // A read-only key stays read-only.
    std::fs::set_permissions(
        dir.join("gen-00000002.key"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let key = age::x25519::Identity::generate();
    let Exported {
        bytes: exported,
        fingerprint,
    } = export(&dir, Protection::Recipients(vec![key.to_public()])).unwrap();
    // The master keys are not readable in the export.
    let master = std::fs::read_to_string(dir.join("gen-00000003.key")).unwrap();
    let master_line = master
        .lines()
        .find(|l| l.starts_with("master-key"))
        .unwrap();
    let secret = master_line.split_once(": ").unwrap().1;
    assert!(
        !exported
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );

    let copy = tmp.path().join("copy");
    let store = import(
        &copy,
        &exported,
        &Unlock::Identities(vec![Box::new(key)]),
        Role::Standalone,
        Some(&fingerprint),
    )
    .unwrap();
    assert_eq!(files(&copy), files(&dir));
    assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o777, 0o700);
    assert_eq!(store.with_keys(), vec![2, 3]);
    let original = Store::open(&dir).unwrap();
    assert_eq!(store.records_at(now()), original.records_at(now()));
    // It opens what the original opens.
    let bob = Identity::parse("bob@b.test").unwrap();
    let (capsule, secret) = encapsulate(
        store.params(3).unwrap(),
        &bob,
        3,
        &mut ChaCha20Rng::seed_from_u64(5),
    )
    .unwrap();
    assert_eq!(
        store.decapsulate(&bob, 3, &capsule).unwrap().unwrap(),
        secret
    );
}

#[test]
fn the_role_is_chosen_at_import() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_history(&dir);
    let key = age::x25519::Identity::generate();
    let Exported {
        bytes: exported,
        fingerprint,
    } = export(&dir, Protection::Recipients(vec![key.to_public()])).unwrap();
    let unlock = Unlock::Identities(vec![Box::new(key)]);
    for role in [Role::Replica, Role::Primary, Role::Standalone] {
        let copy = tmp.path().join(role.to_string());
        assert_eq!(
            import(&copy, &exported, &unlock, role, Some(&fingerprint))
                .unwrap()
                .role(),
            role
        );
    }
}

#[test]
fn an_import_never_overwrites_and_wants_the_right_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_history(&dir);
    let key = age::x25519::Identity::generate();
    let Exported {
        bytes: exported,
        fingerprint,
    } = export(&dir, Protection::Recipients(vec![key.to_public()])).unwrap();
    let unlock = Unlock::Identities(vec![Box::new(key)]);

    // Onto an existing store, or any non-empty directory: refused.
    for target in [dir.clone(), tmp.path().to_path_buf()] {
        let before = files(&dir);
        match import(
            &target,
            &exported,
            &unlock,
            Role::Replica,
            Some(&fingerprint),
        ) {
            Err(ExportError::NotEmpty(p)) => assert_eq!(p, target),
            other => panic!("{other:?}"),
        }
        assert_eq!(files(&dir), before);
    }
    // Another age key, or a passphrase where a key was used: refused,
    // nothing written.
    let other = Unlock::Identities(vec![Box::new(age::x25519::Identity::generate())]);
    let target = tmp.path().join("copy");
    let e = import(
        &target,
        &exported,
        &other,
        Role::Replica,
        Some(&fingerprint),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot decrypt"), "{e}");
    let e = import(
        &target,
        &exported,
        &Unlock::Passphrase(SecretString::from("x".to_string())),
        Role::Replica,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--identity"), "{e}");
    assert!(!target.exists());
    // A flipped byte in the ciphertext: refused (age authenticates).
    let mut tampered = exported.clone();
    let at = tampered.len() - 40;
    tampered[at] ^= 1;
    assert!(
        import(
            &target,
            &tampered,
            &unlock,
            Role::Replica,
            Some(&fingerprint)
        )
        .is_err()
    );
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());
}

/// An age file of a tar archive made by hand, with `entries` (name, mode,
/// contents).
/// A name starting with `link:` is a symbolic link to the contents.
fn crafted(recipient: &age::x25519::Recipient, entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut archive = tar::Builder::new(Vec::new());
    for (name, mode, contents) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(*mode);
        if let Some(name) = name.strip_prefix("link:") {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            let target = std::str::from_utf8(contents).unwrap();
            archive.append_link(&mut header, name, target).unwrap();
            continue;
        }
        header.set_size(contents.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        archive.append_data(&mut header, name, *contents).unwrap();
    }
    let plain = archive.into_inner().unwrap();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let mut writer = encryptor.wrap_output(&mut out).unwrap();
    std::io::Write::write_all(&mut writer, &plain).unwrap();
    writer.finish().unwrap();
    out
}

#[test]
fn archives_with_loose_modes_strange_files_or_foreign_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_history(&dir);
    let store_file = std::fs::read(dir.join("kgc.store")).unwrap();
    let key_file = std::fs::read(dir.join("gen-00000003.key")).unwrap();
    let age_key = age::x25519::Identity::generate();
    let unlock = Unlock::Identities(vec![Box::new(age_key.clone())]);
    let recipient = age_key.to_public();
    let target = tmp.path().join("copy");
    let other_domain = String::from_utf8(store_file.clone())
        .unwrap()
        .replace("b.test", "c.test");
    for (entries, expected) in [
        (
            vec![
                ("kgc.store", 0o600, &store_file[..]),
                ("gen-00000003.key", 0o644, &key_file[..]),
            ],
            "mode 0644",
        ),
        (
            vec![
                ("kgc.store", 0o600, &store_file[..]),
                ("gen-00000003.key", 0o600, &key_file[..]),
                ("sub/gen-00000004.key", 0o600, &key_file[..]),
            ],
            "not a file of a key store",
        ),
        (
            vec![
                ("kgc.store", 0o600, &store_file[..]),
                ("gen-00000003.key", 0o600, &key_file[..]),
                ("link:gen-00000004.key", 0o600, b"/etc/shadow".as_slice()),
            ],
            "not a regular file",
        ),
        (
            vec![
                ("kgc.store", 0o600, other_domain.as_bytes()),
                ("gen-00000003.key", 0o600, &key_file[..]),
            ],
            "another domain",
        ),
        (vec![("kgc.store", 0o600, &store_file[..])], "no key in it"),
    ] {
        let bytes = crafted(&recipient, &entries);
        let e = import(&target, &bytes, &unlock, Role::Replica, None).unwrap_err();
        assert!(
            e.to_string().contains(expected),
            "{e} (expected {expected})"
        );
        assert!(!target.exists(), "{expected}: something was written");
    }
}

fn kgc() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("ibemail-kgc").unwrap()
}

#[test]
fn the_commands_take_a_passphrase_or_age_keys_from_private_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    store_with_history(&dir);
    let passphrase = tmp.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out_file = tmp.path().join("b.test.age");

    // A passphrase file others can read is refused.
    let out = kgc()
        .args(["export", "--dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .arg("--output")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
    std::fs::set_permissions(&passphrase, std::fs::Permissions::from_mode(0o600)).unwrap();
    kgc()
        .args(["export", "--dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .arg("--output")
        .arg(&out_file)
        .assert()
        .success();
    assert_eq!(std::fs::metadata(&out_file).unwrap().mode() & 0o777, 0o600);
    // Never over an existing file.
    kgc()
        .args(["export", "--dir"])
        .arg(&dir)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .arg("--output")
        .arg(&out_file)
        .assert()
        .failure();
    let copy = tmp.path().join("copy");
    let out = kgc()
        .args(["import", "--role", "replica", "--dir"])
        .arg(&copy)
        .arg("--passphrase-file")
        .arg(&passphrase)
        .arg("--input")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(files(&copy).len(), files(&dir).len());
    assert_eq!(Store::open(&copy).unwrap().role(), Role::Replica);

    // age keys: the recipient on the command line, the identity from a
    // private file, the export on standard output and input.
    let key = age::x25519::Identity::generate();
    let identity_file = tmp.path().join("key.txt");
    std::fs::write(
        &identity_file,
        format!(
            "# created by a test\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&key.to_string())
        ),
    )
    .unwrap();
    std::fs::set_permissions(&identity_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let exported = kgc()
        .args(["export", "--dir"])
        .arg(&dir)
        .arg("--recipient")
        .arg(key.to_public().to_string())
        .output()
        .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    assert!(age::x25519::Recipient::from_str(&key.to_public().to_string()).is_ok());
    // The fingerprint is the last line export prints on standard error.
    let stderr = String::from_utf8(exported.stderr).unwrap();
    let fingerprint = stderr.lines().last().unwrap().to_string();
    assert!(fingerprint.starts_with("sha256:"), "{stderr}");
    let copy = tmp.path().join("copy2");
    // Without it, or with another, an age-recipient export is refused.
    for expect in [None, Some(format!("sha256:{}", "0".repeat(64)))] {
        let mut import = kgc();
        import
            .args(["import", "--role", "primary", "--dir"])
            .arg(&copy)
            .arg("--identity")
            .arg(&identity_file);
        if let Some(expect) = &expect {
            import.arg("--expect").arg(expect);
        }
        import
            .write_stdin(exported.stdout.clone())
            .assert()
            .failure()
            .stderr(predicates::str::contains("fingerprint"));
        assert!(!copy.join("kgc.store").exists());
    }
    kgc()
        .args(["import", "--role", "primary", "--dir"])
        .arg(&copy)
        .arg("--identity")
        .arg(&identity_file)
        .arg("--expect")
        .arg(&fingerprint)
        .write_stdin(exported.stdout)
        .assert()
        .success();
    assert_eq!(Store::open(&copy).unwrap().role(), Role::Primary);
    // Without a role, import does not guess.
    kgc()
        .args(["import", "--dir"])
        .arg(tmp.path().join("copy3"))
        .arg("--identity")
        .arg(&identity_file)
        .assert()
        .failure();
}
