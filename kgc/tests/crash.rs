//! Crash safety of rotation: `strace`'s fault injection kills `ibemail-kgc
//! rotate` with SIGKILL at the N-th call of each file-system syscall it makes,
//! for every N. After every crash the store must load, no promised key may be
//! missing, and the next rotation must succeed.
//!
//! (No crash hooks in production code: the kernel delivers the kill.)

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use ibemail_kgc::store::{State, Store};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn copy_store(from: &Path, to: &Path) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let _ = std::fs::remove_dir_all(to);
    std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to.join(entry.file_name()))
            .unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
    }
}

fn check_invariants(dir: &Path, context: &str) -> u32 {
    let store = Store::open(dir).unwrap_or_else(|e| panic!("{context}: store does not load: {e}"));
    // Generation 1 was promised before the rotation started: its key must exist.
    store
        .master_key(1)
        .unwrap_or_else(|e| panic!("{context}: generation 1 lost: {e}"));
    let active = store.active_generation().unwrap();
    match active {
        1 => assert_eq!(store.state(1), Some(State::Active), "{context}"),
        2 => {
            store.master_key(2).unwrap();
            assert!(
                matches!(store.state(1), Some(State::Retiring { .. })),
                "{context}"
            );
        }
        other => panic!("{context}: unexpected active generation {other}"),
    }
    active
}

#[test]
fn rotation_survives_sigkill_at_every_file_system_call() {
    let strace = Command::new("strace").arg("-V").output();
    assert!(
        strace.is_ok_and(|o| o.status.success()),
        "strace is required (scripts/test installs it)"
    );

    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Store::setup(
        &pristine,
        "b.test",
        now,
        None,
        &mut ChaCha20Rng::seed_from_u64(3),
    )
    .unwrap();
    let work = tmp.path().join("work");
    let kgc = assert_cmd::cargo::cargo_bin("ibemail-kgc");

    let mut crashes = 0;
    let mut outcomes = [0u32; 3];
    for syscall in ["openat", "write", "fsync", "rename", "flock"] {
        for n in 1.. {
            copy_store(&pristine, &work);
            let status = Command::new("strace")
                .args(["-f", "-qq", "-o", "/dev/null", "-e"])
                .arg(format!("trace={syscall}"))
                .arg("-e")
                .arg(format!("inject={syscall}:signal=KILL:when={n}"))
                .arg(&kgc)
                .args(["rotate", "--overlap", "1h", "--dir"])
                .arg(&work)
                .output()
                .unwrap()
                .status;
            let context = format!("killed at {syscall} #{n}");
            if status.signal() != Some(9) {
                // The rotation completed before the n-th call: all points covered.
                assert!(status.success(), "{context}: {status:?}");
                assert_eq!(check_invariants(&work, &context), 2);
                break;
            }
            crashes += 1;
            outcomes[check_invariants(&work, &context) as usize] += 1;
            // Recovery: the next rotation works and leaves a consistent store.
            let retry = Command::new(&kgc)
                .args(["rotate", "--overlap", "1h", "--dir"])
                .arg(&work)
                .output()
                .unwrap();
            assert!(
                retry.status.success(),
                "{context}: retry failed: {}",
                String::from_utf8_lossy(&retry.stderr)
            );
            let store = Store::open(&work).unwrap();
            store.master_key(1).unwrap();
            assert!(store.active_generation().unwrap() >= 2, "{context}");
            assert!(
                !std::fs::read_dir(&work).unwrap().any(|e| e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")),
                "{context}: temporary files left after recovery"
            );
            assert!(n < 200, "runaway loop");
        }
    }
    // Crashes hit both before and after the new generation became durable.
    assert!(crashes >= 30, "only {crashes} crash points");
    assert!(outcomes[1] > 0 && outcomes[2] > 0, "{outcomes:?}");
}
