//! # ibemail-milter
//!
//! Will own the Postfix milter and the offline `encrypt`/`decrypt`/`lookup`
//! commands (DESIGN.md §6, §7). (Not implemented yet.)

#![forbid(unsafe_code)]
#![warn(missing_docs)]
