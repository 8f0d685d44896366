//! # ibemail-kgc
//!
//! The key generation center of one or more mail domains:
//!
//! - [`store`]: the master-key store on disk, generations and rotation;
//! - [`service`]: opening capsules with the master key and signing with
//!   keys derived on demand (cached);
//! - [`access`]: [`access::KeyAccess`], the one way callers reach keys,
//!   whether the service runs in their process or behind the daemon;
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
//! - [`cli`]: the `ibemail-kgc` commands and the `serve` loop;
//! - [`duration`]: `30d`-style durations of the command line;
//! - [`clock`]: the one clock of policy decisions;
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

pub mod access;
pub mod accounts;
pub mod check;
pub mod cli;
pub mod client;
pub mod clock;
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
