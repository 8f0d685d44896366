//! # ibemail-kgc
//!
//! The key generation center of one or more mail domains (DESIGN.md §6):
//!
//! - [`store`]: the master-key store on disk, generations and rotation;
//! - [`service`]: opening capsules with the master key and signing with
//!   keys derived on demand (cached);
//! - [`protocol`], [`server`], [`client`]: the `ibemail-kgc serve` daemon on a
//!   Unix socket and its client, so the milter never holds a key;
//! - [`tls`]: the same daemon over mutual TLS, clients allowed by pinned
//!   certificates, and the self-signed certificates for it;
//! - [`replica`]: replicas of a key store kept in step with their primary,
//!   whose rotations wait until every replica serves the new generation;
//! - [`export`]: a key store moved between hosts or into a backup,
//!   encrypted with age;
//! - [`accounts`]: system accounts; root running a command as a store's
//!   owner;
//! - [`socket`]: Unix sockets that appear with their final mode;
//! - [`check`]: comparing the published `_ibemailkey` records with the store;
//! - [`publish`], [`tsig`]: publishing them by TSIG-signed DNS UPDATE;
//! - [`duration`]: `30d`-style durations of the command line;
//! - [`metrics`]: the daemon's Prometheus counters and the HTTP endpoint
//!   both daemons serve them on;
//! - [`logging`]: log lines of both daemons (text or JSON, colour only on a
//!   terminal).
//!
//! The binary `ibemail-kgc` (`src/main.rs`) wraps these as the commands
//! `setup`, `record`, `status`, `extract`, `rotate`, `retire`, `check`, `publish`,
//! `serve`, and for several servers `tls-cert`, `tls-fingerprint`, `export`,
//! `import`, `role` and `release`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod check;
pub mod client;
pub mod duration;
pub mod export;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod replica;
pub mod server;
pub mod service;
pub mod socket;
pub mod store;
pub mod tls;
pub mod tsig;
pub mod upkeep;
