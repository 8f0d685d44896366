//! Helpers shared by the KGC's integration tests.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use ibemail_kgc::tls::{Pin, TlsIdentity, generate_certificate};

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
