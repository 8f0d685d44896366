//! The re-injection ledger: makes splitting a message idempotent across
//! retries.
//!
//! A split re-injects a copy for some recipients (the plaintext copy for
//! those without ibemail) *before* Postfix commits the original. If the transaction then fails — a milter after us refuses it,
//! Postfix's milter timeout fires, cleanup cannot write — the client sends
//! the message again, and without a record those recipients would get a
//! second copy. The ledger remembers each copy sent (a hash of the
//! envelope and content, never the content) for a window as long as
//! clients keep retrying (Postfix's queue lifetime, 5 days), so the retry
//! deletes those recipients without re-injecting.
//!
//! What makes two transactions "the same message": the envelope sender,
//! the recipients of the copy, every header field but `Received` (the
//! receiving hop's own field differs on each attempt) and the body. Only
//! messages with a `Message-ID` are deduplicated: without one, two
//! identical alerts a device sends a minute apart are two messages, and
//! treating the second as a retry would lose it. (Postfix adds a
//! Message-ID to mail submitted on the host or by its own clients.)
//!
//! A retry that arrives while the first attempt is still re-injecting is
//! refused with a tempfail (it will come again), so two attempts never
//! both send a copy.
//!
//! File format: one line per copy, `<sha256 hex> <unix seconds>`, appended
//! as copies are sent; expired lines are dropped when the ledger is opened.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sha2::{Digest, Sha256};

/// The identity of one re-injected copy.
pub type CopyKey = [u8; 32];

/// The file name in the state directory.
pub const FILE_NAME: &str = "reinjected";

/// The key of a copy of `headers`/`body` from `sender` to `recipients`, or
/// `None` if the message has no `Message-ID` (never deduplicated).
pub fn copy_key(
    sender: &str,
    recipients: &[String],
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Option<CopyKey> {
    let has_id = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("Message-ID") && !v.trim_ascii().is_empty());
    if !has_id {
        return None;
    }
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(b"IBEMAIL-V1-REINJECTED-PLAINTEXT");
    field(sender.as_bytes());
    let mut sorted: Vec<&String> = recipients.iter().collect();
    sorted.sort();
    field(&(sorted.len() as u64).to_be_bytes());
    for rcpt in sorted {
        field(rcpt.as_bytes());
    }
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("Received") {
            continue;
        }
        field(name.to_ascii_lowercase().as_bytes());
        field(value);
    }
    field(body);
    Some(hash.finalize().into())
}

struct State {
    sent: HashMap<CopyKey, u64>,
    in_flight: HashSet<CopyKey>,
    file: Option<File>,
    /// Lines in the file (live or expired).
    lines: usize,
}

/// Writes `sent` to `dir`'s ledger file atomically and opens it to append.
fn rewrite(dir: &Path, sent: &HashMap<CopyKey, u64>) -> std::io::Result<File> {
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = String::new();
        for (key, at) in sent {
            text.push_str(&line(key, *at));
        }
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    OpenOptions::new().append(true).mode(0o600).open(&path)
}

/// Copies sent in the last `window` seconds, on disk (or only in memory).
pub struct Ledger {
    path: Option<PathBuf>,
    window: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("window", &self.window)
            .finish()
    }
}

/// What to do about one copy.
#[derive(Debug)]
pub enum Claim {
    /// Sent already (an earlier attempt of this transaction): do not send
    /// it again.
    Sent,
    /// Not sent: send it, then [`Pending::sent`].
    Pending(Pending),
    /// Another attempt is sending it right now: try again later.
    Busy,
}

/// A copy being sent; dropped without [`Pending::sent`], it is forgotten.
#[derive(Debug)]
pub struct Pending {
    ledger: Arc<Ledger>,
    key: CopyKey,
}

impl Ledger {
    /// A ledger kept only in memory (retries after a restart may duplicate).
    pub fn in_memory(window: u64) -> Ledger {
        Ledger {
            path: None,
            window,
            state: Mutex::new(State {
                sent: HashMap::new(),
                in_flight: HashSet::new(),
                file: None,
                lines: 0,
            }),
        }
    }

    /// Opens (or creates, mode 0600) the ledger in `dir`, dropping entries
    /// older than `window` seconds at `now`.
    pub fn open(dir: &Path, window: u64, now: u64) -> std::io::Result<Ledger> {
        let path = dir.join(FILE_NAME);
        let mut sent = HashMap::new();
        match File::open(&path) {
            Ok(file) => {
                for line in BufReader::new(file).lines() {
                    if let Some((key, at)) = parse_line(&line?)
                        && at.saturating_add(window) > now
                    {
                        sent.insert(key, at);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Rewrite without the expired entries, then append from there.
        let file = rewrite(dir, &sent)?;
        let lines = sent.len();
        Ok(Ledger {
            path: Some(path),
            window,
            state: Mutex::new(State {
                sent,
                in_flight: HashSet::new(),
                file: Some(file),
                lines,
            }),
        })
    }

    /// The ledger in `dir` already open in this process (a reloaded
    /// configuration keeps using it, so no entry is lost to a second file
    /// handle), or [`Ledger::open`]. The window of the first opening stays.
    pub fn shared(dir: &Path, window: u64, now: u64) -> std::io::Result<Arc<Ledger>> {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Ledger>>>> = OnceLock::new();
        let mut open = OPEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.retain(|_, ledger| ledger.strong_count() > 0);
        let path = dir.join(FILE_NAME);
        if let Some(ledger) = open.get(&path).and_then(Weak::upgrade) {
            return Ok(ledger);
        }
        let ledger = Arc::new(Ledger::open(dir, window, now)?);
        open.insert(path, Arc::downgrade(&ledger));
        Ok(ledger)
    }

    /// The file, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the copy `key` must be sent at `now`.
    pub fn claim(self: &Arc<Self>, key: CopyKey, now: u64) -> Claim {
        let mut state = self.state();
        if let Some(&at) = state.sent.get(&key) {
            if at.saturating_add(self.window) > now {
                return Claim::Sent;
            }
            state.sent.remove(&key);
        }
        if !state.in_flight.insert(key) {
            return Claim::Busy;
        }
        Claim::Pending(Pending {
            ledger: self.clone(),
            key,
        })
    }
}

impl Pending {
    /// Records that the copy was sent (accepted by the re-injection
    /// listener) at `now`. A failure to write is reported, but the copy
    /// stays remembered in memory.
    pub fn sent(self, now: u64) -> std::io::Result<()> {
        let ledger = &self.ledger;
        let mut state = ledger.state();
        state.sent.insert(self.key, now);
        state.in_flight.remove(&self.key);
        // Expired entries go, in memory and, once they are most of the
        // file, on disk: the ledger stays as large as the window's copies.
        let window = ledger.window;
        if state.lines > 2 * state.sent.len() + 1024 {
            state.sent.retain(|_, at| at.saturating_add(window) > now);
            if let Some(dir) = ledger.path.as_deref().and_then(Path::parent) {
                let file = rewrite(dir, &state.sent)?;
                state.file = Some(file);
                state.lines = state.sent.len();
                return Ok(());
            }
        }
        state.lines += 1;
        match state.file.as_mut() {
            // Durable before the original is accepted: a crash must not
            // forget a copy that went out.
            Some(file) => file
                .write_all(line(&self.key, now).as_bytes())
                .and_then(|()| file.sync_data()),
            None => Ok(()),
        }
        // `Drop` finds nothing left to release.
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.ledger.state().in_flight.remove(&self.key);
    }
}

fn line(key: &CopyKey, at: u64) -> String {
    let mut text = String::with_capacity(80);
    for b in key {
        text.push_str(&format!("{b:02x}"));
    }
    text.push_str(&format!(" {at}\n"));
    text
}

fn parse_line(line: &str) -> Option<(CopyKey, u64)> {
    let (hex, at) = line.trim().split_once(' ')?;
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((key, at.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn headers(received: &str) -> Vec<(String, Vec<u8>)> {
        vec![
            ("Received".into(), received.as_bytes().to_vec()),
            ("Message-ID".into(), b" <1@a.test>".to_vec()),
            ("Subject".into(), b" hi".to_vec()),
        ]
    }

    #[test]
    fn a_retry_has_the_key_of_the_first_attempt_and_other_messages_do_not() {
        let rcpts = vec!["<c@c.test>".to_string(), "<d@c.test>".to_string()];
        let key =
            |h: &[(String, Vec<u8>)], r: &[String], body: &[u8]| copy_key("<a@a.test>", r, h, body);
        let first = key(&headers(" by mx; 1"), &rcpts, b"body").unwrap();
        // Another Received (a new attempt), recipients in another order.
        let reordered = vec![rcpts[1].clone(), rcpts[0].clone()];
        assert_eq!(key(&headers(" by mx; 2"), &reordered, b"body"), Some(first));
        assert_ne!(key(&headers(" by mx; 1"), &rcpts, b"bodY"), Some(first));
        assert_ne!(
            key(&headers(" by mx; 1"), &rcpts[..1], b"body"),
            Some(first)
        );
        let mut subject = headers(" by mx; 1");
        subject[2].1 = b" hi!".to_vec();
        assert_ne!(key(&subject, &rcpts, b"body"), Some(first));
        // No Message-ID: never deduplicated.
        let without: Vec<_> = headers("")
            .into_iter()
            .filter(|(n, _)| n != "Message-ID")
            .collect();
        assert_eq!(key(&without, &rcpts, b"body"), None);
    }

    #[test]
    fn copies_are_remembered_across_restarts_until_the_window_ends() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(dir.path(), 100, 1000).unwrap());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let Claim::Pending(pending) = ledger.claim(a, 1000) else {
            panic!("a new copy must be sent")
        };
        assert!(matches!(ledger.claim(a, 1000), Claim::Busy));
        pending.sent(1000).unwrap();
        assert!(matches!(ledger.claim(a, 1050), Claim::Sent));
        // A copy whose sending failed is forgotten: the retry sends it.
        let Claim::Pending(failed) = ledger.claim(b, 1000) else {
            panic!()
        };
        drop(failed);
        assert!(matches!(ledger.claim(b, 1001), Claim::Pending(_)));
        drop(ledger);

        let reopened = Arc::new(Ledger::open(dir.path(), 100, 1050).unwrap());
        assert!(matches!(reopened.claim(a, 1050), Claim::Sent));
        assert!(matches!(reopened.claim(b, 1050), Claim::Pending(_)));
        assert!(matches!(reopened.claim(a, 1100), Claim::Pending(_)));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Expired entries are dropped when the ledger is opened.
        drop(reopened);
        Ledger::open(dir.path(), 100, 2000).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.is_empty(), "{text}");
    }
}
