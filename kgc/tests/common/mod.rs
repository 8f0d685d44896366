//! Helpers shared by the KGC's integration tests.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use ibemail_kgc::clock::now;
use ibemail_kgc::export::{Protection, Unlock, export, import};
use ibemail_kgc::replica::Replication;
use ibemail_kgc::store::{Retention, Role, Store};
use ibemail_kgc::tls::{Pin, TlsIdentity, generate_certificate};
use ibemail_kgc::upkeep::Upkeep;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A certificate and key written to `dir` as `name.pem` / `name.key` (the
/// key 0600): the identity, its certificate pin and the two paths.
pub(crate) fn identity_files(dir: &Path, name: &str) -> (TlsIdentity, Pin, PathBuf, PathBuf) {
    let made = generate_certificate(name, 30).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &made.certificate_pem).unwrap();
    std::fs::write(&key, made.key_pem.as_bytes()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    (
        TlsIdentity::load(&cert, &key).unwrap(),
        made.fingerprints.certificate_pin(),
        cert,
        key,
    )
}

/// [`identity_files`] without the paths.
pub(crate) fn identity(dir: &Path, name: &str) -> (TlsIdentity, Pin) {
    let (identity, pin, _, _) = identity_files(dir, name);
    (identity, pin)
}

/// A primary store of b.test in `tmp/primary` and a copy of it imported
/// from its (age) export as `role` in `tmp/copy`.
pub(crate) fn primary_and_copy(tmp: &Path, role: Role) -> (PathBuf, PathBuf) {
    primary_and_copy_of("b.test", &tmp.join("primary"), &tmp.join("copy"), role)
}

/// A primary store of `domain` in `primary` and a copy of it imported from
/// its (age) export as `role` in `copy`.
pub(crate) fn primary_and_copy_of(
    domain: &str,
    primary: &Path,
    copy: &Path,
    role: Role,
) -> (PathBuf, PathBuf) {
    let mut store = Store::setup(
        primary,
        domain,
        now(),
        None,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .unwrap();
    store.set_role(Role::Primary).unwrap();
    let age_key = age::x25519::Identity::generate();
    let exported = export(primary, Protection::Recipients(vec![age_key.to_public()])).unwrap();
    let (exported, fingerprint) = (exported.bytes, exported.fingerprint);
    import(
        copy,
        &exported,
        &Unlock::Identities(vec![Box::new(age_key)]),
        role,
        Some(&fingerprint),
    )
    .unwrap();
    (primary.to_path_buf(), copy.to_path_buf())
}

/// A primary's upkeep (60 s TTL and queue lifetime) releasing rotations
/// by `replication`'s reports.
pub(crate) fn replicating_upkeep(replication: &Arc<Replication>) -> Upkeep {
    let mut upkeep = Upkeep::new(Retention {
        ttl: 60,
        queue_lifetime: 60,
    });
    upkeep.replication = Some(replication.clone());
    upkeep
}
