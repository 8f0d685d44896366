//! The `[kgc]` table: key stores in the milter (`dir`), or the KGC
//! daemon on this host (`socket`) or on several (`endpoints`, Unix or
//! mutual TLS, with the milter's certificate and the daemons' pins).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKgc {
    pub(super) dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) dirs: Vec<PathBuf>,
    pub(super) socket: Option<PathBuf>,
    #[serde(default)]
    pub(super) endpoints: Vec<String>,
    pub(super) spread: Option<bool>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(super) tls_server_fingerprints: Vec<String>,
    pub(super) timeout: Option<String>,
}

impl RawKgc {
    /// `socket` as a one-element list, or `endpoints` with their TLS
    /// settings; `None` if neither is set.
    pub(super) fn endpoints(&self) -> Result<Option<ibemail_kgc::client::Endpoints>, String> {
        use ibemail_kgc::client::{Endpoint, Endpoints, TlsClientFiles};
        let endpoints = match (&self.socket, self.endpoints.is_empty()) {
            (Some(_), false) => {
                return Err(
                    "kgc: set socket (one daemon on this host) or endpoints (several), not both"
                        .into(),
                );
            }
            (Some(socket), true) => vec![Endpoint::Unix(socket.clone())],
            (None, false) => self
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.parse()
                        .map_err(|why| format!("kgc.endpoints[{i}]: {why}"))
                })
                .collect::<Result<Vec<Endpoint>, String>>()?,
            (None, true) => {
                if self.tls_cert.is_some() || self.tls_key.is_some() {
                    return Err("kgc.tls_cert/tls_key are set, but no kgc.endpoints".into());
                }
                return Ok(None);
            }
        };
        let needs_tls = endpoints.iter().any(|e| matches!(e, Endpoint::Tls { .. }));
        let tls = match (needs_tls, &self.tls_cert, &self.tls_key) {
            (true, Some(cert), Some(key)) => {
                if self.tls_server_fingerprints.is_empty() {
                    return Err("kgc.tls_server_fingerprints: the fingerprints of the KGC \
                                daemons' certificates are needed for tls: endpoints \
                                (ibemail-kgc tls-fingerprint CERT prints them)"
                        .into());
                }
                let servers = self
                    .tls_server_fingerprints
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        p.parse()
                            .map_err(|e| format!("kgc.tls_server_fingerprints[{i}]: {e}"))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Some(TlsClientFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    servers,
                })
            }
            (true, _, _) => {
                return Err(
                    "kgc.tls_cert and kgc.tls_key: the milter's certificate and key \
                            are needed for tls: endpoints (ibemail-kgc tls-cert makes them)"
                        .into(),
                );
            }
            (false, None, None) if self.tls_server_fingerprints.is_empty() => None,
            (false, _, _) => {
                return Err(
                    "kgc.tls_cert, tls_key and tls_server_fingerprints are only for \
                            tls: endpoints, and none is listed"
                        .into(),
                );
            }
        };
        Ok(Some(Endpoints {
            endpoints,
            spread: self.spread.unwrap_or(false),
            tls,
        }))
    }
}
