//! # ibemail-params
//!
//! Will own the `_ibemailkey` TXT record (DESIGN.md §4): emitting and parsing
//! `ver=1; a=...; c=bls12-381; n=...; X=...; Y=...`, and choosing the generation
//! a sender uses when several are published. No I/O. (Not implemented yet.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]
