//! Unix sockets that appear with their final permissions.
//!
//! `bind(2)` creates the socket file with the process's umask (0077 under
//! the packaged units), and a `chmod` can only follow: a client of another
//! user connecting in between would be refused. So the umask is set to the
//! wanted mode's complement for the `bind` alone. (Binding under another
//! name and renaming would do too, but the kernel, `ss` and `lsof` would go
//! on naming the socket by its first name.) The daemons bind before they
//! create any other file, so the brief change of the process-wide umask
//! affects nothing else; files are created with explicit modes anyway.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::Path;

use rustix::fs::Mode;

/// Binds `path` with permissions `mode` from the start.
pub fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let previous = rustix::process::umask(Mode::from_raw_mode(!mode & 0o777));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound?;
    // Bits the umask cannot grant (none for a socket, created 0777) and
    // any doubt: the mode is set once more.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Binds `path` with `mode`, first removing a stale socket there — one
/// nobody listens on. A live socket (another daemon running) or a file
/// that is not a socket is never touched: the error says which.
pub fn bind_replacing_stale(path: &Path, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::symlink_metadata(path) {
        Err(_) => {}
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running daemon", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
    }
    bind_with_mode(path, mode)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn the_socket_has_its_mode_from_the_start_and_accepts() {
        let tmp = std::env::temp_dir().join(format!("ibemail-socket-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let path = tmp.join("kgc.sock");
        let listener = bind_with_mode(&path, 0o660).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o660);
        let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_stale_socket_is_replaced_a_live_one_or_a_file_never() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.sock");
        let live = bind_replacing_stale(&path, 0o600).unwrap();
        let refused = bind_replacing_stale(&path, 0o600).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        drop(live);
        // The file stays behind, nobody listening: replaced.
        assert!(path.exists());
        let _again = bind_replacing_stale(&path, 0o600).unwrap();
        let file = tmp.path().join("plain");
        std::fs::write(&file, "keep me").unwrap();
        assert!(bind_replacing_stale(&file, 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
