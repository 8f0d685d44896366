#![no_main]
//! See `ibemail_fuzz::signature` (fuzz/src/lib.rs) for what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| ibemail_fuzz::signature(data));
