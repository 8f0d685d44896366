//! # ibemail-milter
//!
//! The Postfix side of ibemail (DESIGN.md §6, §7):
//!
//! - [`offline`]: the `lookup`, `encrypt` and `decrypt` commands' logic
//!   (the paper's encrypter and decrypter, usable from procmail or Sieve).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod offline;
