//! # ibemail-kgc
//!
//! Will own the master-key store, rotation and the `ibemail-kgc` commands and
//! daemon (DESIGN.md §6). (Not implemented yet.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]
