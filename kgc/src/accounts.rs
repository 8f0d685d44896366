//! System accounts, and running a command as one of them.
//!
//! The packages run the KGC daemon as `ibemail-kgc` and the milter as
//! `ibemail`. Administrators type commands as root; a key store that root
//! rotated would hold root-owned files the daemon cannot read. So root runs
//! commands that write a store as the store's owner, and the milter's setup
//! check as the milter's user: the command re-executes itself as that user
//! (the standard library sets the ids between fork and exec; a process
//! cannot change its own user without unsafe code).
//!
//! Names come from `/etc/passwd` (system accounts are local; no NSS).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

/// Set in the environment of a command re-executed as another user, so it
/// never tries again.
const REEXECUTED: &str = "IBEMAIL_REEXECUTED_AS";

/// A local account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

fn passwd() -> Vec<Account> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            Some(Account {
                name: (*fields.first()?).to_string(),
                uid: fields.get(2)?.parse().ok()?,
                gid: fields.get(3)?.parse().ok()?,
            })
        })
        .collect()
}

/// The account called `name`.
pub fn by_name(name: &str) -> Option<Account> {
    passwd().into_iter().find(|a| a.name == name)
}

/// The account with user id `uid`.
pub fn by_uid(uid: u32) -> Option<Account> {
    passwd().into_iter().find(|a| a.uid == uid)
}

/// `uid` as `name (uid N)`, or `uid N` without an account.
pub fn describe_uid(uid: u32) -> String {
    match by_uid(uid) {
        Some(a) => format!("{} (uid {uid})", a.name),
        None => format!("uid {uid}"),
    }
}

/// The command prefix that runs a command as `uid` (for hints).
pub fn run_as_hint(uid: u32) -> String {
    match by_uid(uid) {
        Some(a) => format!("runuser -u {} --", a.name),
        None => format!("setpriv --reuid={uid} --regid={uid} --clear-groups"),
    }
}

/// The effective user id of this process.
pub fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The owner of `dir`, or for a directory that does not exist yet, of its
/// parent: whom a key store there belongs to. `None` if neither exists.
pub fn owner_of_store(dir: &Path) -> Option<(u32, u32)> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(_) => std::fs::metadata(dir.parent()?).ok()?,
    };
    Some((meta.uid(), meta.gid()))
}

/// When this process is root and `uid` is not, replaces it with the same
/// command run as `uid`/`gid` (without supplementary groups). Returns
/// `Ok(())` without doing anything otherwise; returns only on failure when
/// it re-executes.
pub fn become_user(uid: u32, gid: u32) -> Result<(), String> {
    if current_uid() != 0 || uid == 0 {
        return Ok(());
    }
    if std::env::var_os(REEXECUTED).is_some() {
        return Err(format!(
            "still root after switching to {}",
            describe_uid(uid)
        ));
    }
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // The standard library switches group, then user, between fork and
    // exec, and as root drops the supplementary groups.
    let error = Command::new(exe)
        .args(args)
        .env(REEXECUTED, uid.to_string())
        .gid(gid)
        .uid(uid)
        .exec();
    Err(format!("cannot run as {}: {error}", describe_uid(uid)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn root_is_in_passwd_and_described_by_name() {
        assert_eq!(by_name("root").map(|a| a.uid), Some(0));
        assert_eq!(describe_uid(0), "root (uid 0)");
        assert_eq!(describe_uid(4_000_000_000), "uid 4000000000");
    }

    #[test]
    fn a_missing_store_belongs_to_the_owner_of_its_parent() {
        let tmp = std::env::temp_dir();
        let parent = std::fs::metadata(&tmp).unwrap();
        assert_eq!(
            owner_of_store(&tmp.join("no-such-store-here")),
            Some((parent.uid(), parent.gid()))
        );
    }
}
