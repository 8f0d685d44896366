//! # ibemail-milter
//!
//! The Postfix side of ibemail (ARCHITECTURE.md, "The milter"):
//!
//! - [`config`]: the TOML configuration, validated up front;
//! - [`engine`]: what to do with one message — seal outbound mail for
//!   recipients whose domain publishes parameters (splitting off a
//!   plaintext copy for the others), open inbound mail for local
//!   recipients, quarantine what cannot be opened, tempfail on any
//!   temporary trouble;
//! - [`milter`]: the indymilter callbacks and [`milter::run`];
//! - [`reinject`]: the SMTP client for re-injected copies, and [`ledger`],
//!   which keeps a retried transaction from re-injecting its copy twice;
//! - [`transit`]: which outer header fields survive decryption;
//! - [`authres`]: reading and writing `Authentication-Results`;
//! - [`message_log`]: the one log line per message (queue id, direction,
//!   recipients' domains, outcome, signature);
//! - [`metrics`]: Prometheus counters and histograms;
//! - [`doctor`]: the setup check of a live installation and the
//!   explanation of a configuration (`doctor`, `--check-config`);
//! - [`offline`]: the `lookup`, `encrypt` and `decrypt` commands' logic
//!   (the paper's encrypter and decrypter, usable from procmail or Sieve).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod authres;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod engine;
pub mod ledger;
pub mod message_log;
pub mod metrics;
pub mod milter;
pub mod offline;
pub mod ports;
pub mod reinject;
pub mod signing;
pub mod transit;

pub use milter::run;
