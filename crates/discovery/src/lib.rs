//! # ibemail-discovery
//!
//! Will own the DNS lookup of `_ibemailkey.<domain>` (hickory-resolver), the
//! cache, the DNSSEC policy and parameter pinning (DESIGN.md §4, §7).
//! (Not implemented yet.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]
