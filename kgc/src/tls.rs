//! Mutual TLS between the KGC daemon and its clients on other hosts.
//!
//! Trust is by **pinning**, not by a certificate authority: the daemon
//! accepts a client whose certificate (or public key) has a SHA-256
//! fingerprint it was given on its command line (`--allow-cert`), each pin
//! with its grants; a client accepts a server whose certificate is one of
//! those in its configuration. Names, issuers and validity dates are not
//! looked at: there is no CA to ask, the pin is the whole trust decision,
//! and a certificate that expired would only turn into an outage. A stolen
//! key is answered by removing its pin (and making a new pair with
//! `ibemail-kgc tls-cert`).
//!
//! Only TLS 1.3 is offered, with rustls' `ring` provider (the same `ring`
//! that encrypts the messages). The handshake signatures are verified with
//! the pinned certificate's key, so a client or server must hold the
//! private key of a pinned certificate: a copy of the certificate alone
//! gets nowhere.
//!
//! A pin is written `sha256:HEX` (the certificate's fingerprint, as
//! `openssl x509 -noout -fingerprint -sha256` prints it; colons may stay)
//! or `spki-sha256:HEX` (the fingerprint of its SubjectPublicKeyInfo, which
//! survives a re-issued certificate for the same key).

use std::fmt;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest as _, Sha256};
use thiserror::Error;
use zeroize::{Zeroize as _, Zeroizing};

/// What can go wrong with certificates, keys and pins.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {error}{hint}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
        /// What to do about it.
        hint: String,
    },
    /// A private key file that others may read, or not a regular file.
    #[error(
        "{path}: {problem}; a private key must be readable by its owner only: chmod 600 {path}"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file that does not hold what it should.
    #[error("{path}: {problem}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A pin that does not parse.
    #[error(
        "{0:?} is not a certificate fingerprint: write sha256:HEX (the certificate's) or \
         spki-sha256:HEX (its public key's), 64 hexadecimal digits, as `ibemail-kgc tls-cert` \
         prints them"
    )]
    BadPin(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A SHA-256 pin on a certificate or on its public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pin {
    /// SHA-256 of the DER certificate.
    Certificate([u8; 32]),
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    PublicKey([u8; 32]),
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::Certificate(h) => write!(f, "sha256:{}", hex(h)),
            Pin::PublicKey(h) => write!(f, "spki-sha256:{}", hex(h)),
        }
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Pin {
    type Err = TlsError;
    fn from_str(text: &str) -> Result<Pin, TlsError> {
        let bad = || TlsError::BadPin(text.to_string());
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        let (public_key, digits) = if let Some(rest) = lower.strip_prefix("spki-sha256:") {
            (true, rest)
        } else if let Some(rest) = lower.strip_prefix("sha256:") {
            (false, rest)
        } else if let Some(rest) = lower.strip_prefix("sha256 fingerprint=") {
            // openssl x509 -fingerprint -sha256 output, pasted whole.
            (false, rest)
        } else {
            (false, lower.as_str())
        };
        let digits: String = digits.chars().filter(|&c| c != ':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(if public_key {
            Pin::PublicKey(hash)
        } else {
            Pin::Certificate(hash)
        })
    }
}

impl Pin {
    /// True if `fingerprints` (of a presented certificate) match this pin.
    pub fn matches(&self, fingerprints: &Fingerprints) -> bool {
        match self {
            Pin::Certificate(h) => *h == fingerprints.certificate,
            Pin::PublicKey(h) => Some(*h) == fingerprints.public_key,
        }
    }
}

/// The two fingerprints of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-256 of the certificate.
    pub certificate: [u8; 32],
    /// SHA-256 of its SubjectPublicKeyInfo (`None` if the certificate does
    /// not parse as X.509).
    pub public_key: Option<[u8; 32]>,
}

impl Fingerprints {
    /// The fingerprints of a DER certificate.
    pub fn of(certificate: &[u8]) -> Fingerprints {
        use der::{Decode as _, Encode as _};
        let public_key = x509_cert::Certificate::from_der(certificate)
            .ok()
            .and_then(|c| c.tbs_certificate().subject_public_key_info().to_der().ok())
            .map(|spki| Sha256::digest(&spki).into());
        Fingerprints {
            certificate: Sha256::digest(certificate).into(),
            public_key,
        }
    }

    /// The certificate pin.
    pub fn certificate_pin(&self) -> Pin {
        Pin::Certificate(self.certificate)
    }

    /// The public key pin, if the certificate parses.
    pub fn public_key_pin(&self) -> Option<Pin> {
        self.public_key.map(Pin::PublicKey)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a file that holds a secret (a private key, a passphrase, an age
/// identity): a regular file, not readable or writable by group or
/// others, read into memory that is wiped when dropped. The mode is
/// checked on the opened file, so a file swapped in between is not read.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let io = |error: std::io::Error| TlsError::Io {
        path: path.to_path_buf(),
        hint: if error.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                " (it must belong to the user that reads it, {}: chown that user {p} && chmod 600 {p})",
                crate::accounts::describe_uid(crate::accounts::current_uid()),
                p = path.display()
            )
        } else {
            String::new()
        },
        error,
    };
    let mut file = File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(TlsError::InsecurePermissions {
            path: path.to_path_buf(),
            problem: "not a regular file".into(),
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(TlsError::InsecurePermissions {
            path: path.to_path_buf(),
            problem: format!(
                "mode {:04o} gives access to group or others",
                meta.mode() & 0o7777
            ),
        });
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// A certificate and its private key: this side's TLS identity.
pub struct TlsIdentity {
    key: Arc<CertifiedKey>,
    fingerprints: Fingerprints,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("certificate", &self.fingerprints.certificate_pin())
            .finish()
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate (the first one is ours; more are ignored by
    /// pinning peers but sent along) and its PEM private key, which must be
    /// private to its owner (0600).
    pub fn load(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let pem = std::fs::read(cert).map_err(|error| TlsError::Io {
            path: cert.to_path_buf(),
            error,
            hint: String::new(),
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Content {
                path: cert.to_path_buf(),
                problem: format!("not a PEM certificate: {e}"),
            })?;
        let Some(first) = certs.first() else {
            return Err(TlsError::Content {
                path: cert.to_path_buf(),
                problem: "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
            });
        };
        let fingerprints = Fingerprints::of(first);
        let key_pem = read_secret_file(key)?;
        let mut key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Content {
                path: key.to_path_buf(),
                problem: format!("not a PEM private key: {e}"),
            })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key_der);
        key_der.zeroize();
        let signing = signing.map_err(|e| TlsError::Content {
            path: key.to_path_buf(),
            problem: format!("unusable private key: {e}"),
        })?;
        let certified = CertifiedKey::new(certs, signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(TlsError::Content {
                    path: key.to_path_buf(),
                    problem: format!("is not the private key of {}", cert.display()),
                });
            }
        }
        Ok(TlsIdentity {
            key: Arc::new(certified),
            fingerprints,
        })
    }

    /// The fingerprints of our certificate.
    pub fn fingerprints(&self) -> Fingerprints {
        self.fingerprints
    }
}

/// rustls with `ring`, as the brief of issue #20 asks (no C toolchain for
/// aws-lc, and the `ring` already compiled for the messages). rustls
/// deprecates it for lacking post-quantum key exchange; that buys nothing
/// here: what the channel carries (capsule secrets, signatures, master
/// keys to replicas) is pairing-based and falls to a quantum computer from
/// the public parameters in DNS alone.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An "unknown certificate" error carrying its fingerprint, so that the
/// side that refused can log what to pin, and the refused side learns why.
#[derive(Debug)]
struct NotPinned {
    role: &'static str,
    fingerprints: Fingerprints,
}

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} certificate {} is not pinned",
            self.role,
            self.fingerprints.certificate_pin()
        )
    }
}

impl std::error::Error for NotPinned {}

fn not_pinned(role: &'static str, fingerprints: Fingerprints) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(NotPinned { role, fingerprints }),
    )))
}

/// A TLS failure in words: "the server certificate sha256:... is not
/// pinned" rather than rustls' debug form.
pub fn describe_error(error: &std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        rustls_error
        && let Some(not_pinned) = other.0.downcast_ref::<NotPinned>()
    {
        return not_pinned.to_string();
    }
    error.to_string()
}

/// Verifies that a peer holds the key of a pinned certificate.
#[derive(Debug)]
struct Pinned {
    pins: Vec<Pin>,
    algorithms: WebPkiSupportedAlgorithms,
    role: &'static str,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let fingerprints = Fingerprints::of(end_entity);
        if self.pins.iter().any(|p| p.matches(&fingerprints)) {
            Ok(())
        } else {
            Err(not_pinned(self.role, fingerprints))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Refused here; logged (within the refusal log limit, with this
        // certificate's pin) where the handshake fails.
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The daemon's TLS configuration: its identity, and the client
/// certificates it lets complete a handshake (those with a grant).
pub fn server_config(
    identity: &TlsIdentity,
    clients: &[Pin],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        pins: clients.to_vec(),
        algorithms: provider.signature_verification_algorithms,
        role: "client",
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS configuration: its identity, and the server
/// certificates it trusts.
pub fn client_config(
    identity: &TlsIdentity,
    servers: &[Pin],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        pins: servers.to_vec(),
        algorithms: provider.signature_verification_algorithms,
        role: "server",
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.key.clone())));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The ALPN protocol name of the KGC protocol over TLS: a client of some
/// other protocol that reaches the port fails the handshake.
pub const ALPN: &[u8] = b"ibemail-kgc/1";

/// A new self-signed certificate and private key (ECDSA P-256), as PEM.
pub struct GeneratedCertificate {
    /// The certificate.
    pub certificate_pem: String,
    /// The private key (wiped when dropped).
    pub key_pem: Zeroizing<String>,
    /// Its fingerprints.
    pub fingerprints: Fingerprints,
}

/// Makes a self-signed certificate for `name` (a host name or any label;
/// peers pin the certificate, they do not check the name), valid for
/// `days` days from now.
pub fn generate_certificate(name: &str, days: u32) -> Result<GeneratedCertificate, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("certificate name {name:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after =
        (now + std::time::Duration::from_secs(u64::from(days).saturating_mul(86_400))).into();
    let certificate = params
        .self_signed(&key)
        .map_err(|e| format!("signing the certificate: {e}"))?;
    Ok(GeneratedCertificate {
        fingerprints: Fingerprints::of(certificate.der()),
        certificate_pem: certificate.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pins_parse_in_every_written_form_and_print_back() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        let cert = Pin::Certificate([0xab; 32]);
        for text in [
            format!("sha256:{hex64}"),
            hex64.clone(),
            colons.clone(),
            format!("SHA256:{colons}"),
            format!("sha256 Fingerprint={colons}"),
        ] {
            assert_eq!(text.parse::<Pin>().unwrap(), cert, "{text}");
        }
        assert_eq!(
            format!("spki-sha256:{hex64}").parse::<Pin>().unwrap(),
            Pin::PublicKey([0xab; 32])
        );
        assert_eq!(cert.to_string().parse::<Pin>().unwrap(), cert);
        for bad in ["", "sha256:abcd", &format!("md5:{hex64}"), &"zz".repeat(32)] {
            let e = bad.parse::<Pin>().unwrap_err();
            assert!(
                e.to_string().contains("not a certificate fingerprint"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_generated_certificate_has_both_pins_and_loads_with_its_key() {
        let generated = generate_certificate("kgc1.b.test", 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &generated.certificate_pem).unwrap();
        std::fs::write(&key, generated.key_pem.as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = TlsIdentity::load(&cert, &key).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let identity = TlsIdentity::load(&cert, &key).unwrap();
        assert_eq!(identity.fingerprints(), generated.fingerprints);
        assert!(generated.fingerprints.public_key.is_some());
        assert!(
            generated
                .fingerprints
                .certificate_pin()
                .matches(&identity.fingerprints())
        );
        // Another key is not this certificate's.
        let other = generate_certificate("x", 1).unwrap();
        std::fs::write(&key, other.key_pem.as_bytes()).unwrap();
        let e = TlsIdentity::load(&cert, &key).unwrap_err();
        assert!(e.to_string().contains("is not the private key"), "{e}");
    }
}
