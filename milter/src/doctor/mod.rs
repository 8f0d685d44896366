//! The setup check (`ibemail-milter doctor`) and the explanation of a
//! configuration (`ibemail-milter --check-config`), in the spirit of
//! `opendkim-testkey` and `opendkim -n`.
//!
//! The doctor looks at a live installation from the milter's side: what
//! Postfix is told (`postconf`, honouring `-c`), whether the milter and the
//! KGC answer on their sockets, whether each local domain's published
//! record is one the KGC can open (a capsule sealed to the published
//! parameters must open), DNSSEC, and the pin file. Each finding is one
//! line with its fix; any [`Severity::Error`] means the setup is not sound.

mod domains;
mod postfix;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use ibemail_discovery::{PinPolicy, PinStore};

use crate::config::Config;

pub use crate::config::describe::describe;
use domains::check_domains;
use postfix::{check_milter_socket, check_postfix};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// As it should be.
    Ok,
    /// Works, but not as well or as safely as it could.
    Warning,
    /// Mail is deferred, lost to plaintext, or cannot be opened.
    Error,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub severity: Severity,
    /// What it is about (`postfix`, `kgc`, a domain, ...).
    pub subject: String,
    /// What was found.
    pub text: String,
    /// What to do, for warnings and errors.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok",
            Severity::Warning => "WARNING",
            Severity::Error => "ERROR",
        };
        write!(f, "{label:<8} {}: {}", self.subject, self.text)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The findings collected so far.
#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, severity: Severity, subject: &str, text: String, fix: Option<String>) {
        self.0.push(Finding {
            severity,
            subject: subject.to_string(),
            text,
            fix,
        });
    }
    fn ok(&mut self, subject: &str, text: String) {
        self.add(Severity::Ok, subject, text, None);
    }
    fn warn(&mut self, subject: &str, text: String, fix: String) {
        self.add(Severity::Warning, subject, text, Some(fix));
    }
    fn error(&mut self, subject: &str, text: String, fix: String) {
        self.add(Severity::Error, subject, text, Some(fix));
    }
}

/// Checks the installation described by the milter configuration at
/// `config_path` and Postfix's configuration in `postfix_dir` (Postfix's
/// default without one).
pub async fn run(config_path: &Path, postfix_dir: Option<&Path>) -> Vec<Finding> {
    let mut report = Report::default();
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(e) => {
            report.error(
                "config",
                e,
                format!(
                    "correct the file; `ibemail-milter --check-config --config {}` checks it",
                    config_path.display()
                ),
            );
            return report.0;
        }
    };
    report.ok("config", format!("{} parses", config_path.display()));
    if config.authserv_id == "mx.example.org" || config.is_local("example.org") {
        report.warn(
            "config",
            "still names example.org from the packaged sample".into(),
            format!(
                "set authserv_id and local_domains in {}",
                config_path.display()
            ),
        );
    }
    check_postfix(&mut report, &config, postfix_dir);
    check_milter_socket(&mut report, &config.socket);
    check_domains(&mut report, &config).await;
    check_pins(&mut report, &config);
    report.0
}

/// The pin file: readable, and its directory writable by this user.
fn check_pins(report: &mut Report, config: &Config) {
    let Some(path) = &config.pins else {
        let pins_used = config.default_policy.lookup.pin != PinPolicy::Off;
        if !pins_used {
            report.ok("pins", "no pin file (pin = off)".into());
        }
        return;
    };
    if let Err(e) = PinStore::snapshot(path) {
        report.error(
            "pins",
            format!("{}: {e}", path.display()),
            "make it readable by the milter's user, or remove a damaged file".into(),
        );
        return;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let probe = dir.join(format!(".ibemail-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            report.ok("pins", format!("{} can be rewritten", path.display()));
        }
        Err(e) => report.error(
            "pins",
            format!(
                "the milter cannot write in {} ({e}): new pins are lost",
                dir.display()
            ),
            format!(
                "chown the directory to the milter's user ({}; the packages use /var/lib/ibemail-milter)",
                ibemail_kgc::accounts::describe_uid(ibemail_kgc::accounts::current_uid())
            ),
        ),
    }
}
