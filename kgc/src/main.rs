//! `ibemail-kgc`: the key generation center of a mail domain.
//!
//! Arguments and exit status only: the commands are in the library
//! (`ibemail_kgc::cli`).

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use ibemail_kgc::cli::{Cli, EXIT_CONFIG, StartupFailure, run};
use ibemail_kgc::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // hickory's DNSSEC validator logs every failed proof at error level,
    // with whole messages; `check` reports the outcome itself.
    // IBEMAIL_LOG=debug shows everything.
    logging::init(
        cli.log_format,
        "info,hickory_net=off,hickory_resolver=off,hickory_proto=off",
    );
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is::<StartupFailure>() => {
            eprintln!("ibemail-kgc: cannot start: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("ibemail-kgc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
