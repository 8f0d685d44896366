//! Unix sockets that appear with their final permissions.
//!
//! `bind(2)` creates the socket file with the process's umask (0077 under
//! the packaged units) and `chmod` can only follow: a client of another
//! user connecting in between is refused. So the socket is bound under a
//! temporary name in the same directory, given its mode, and renamed into
//! place; a listener keeps working when its file is renamed.

use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds `path` with permissions `mode`. Whatever is at `path` is replaced
/// (callers check first that it is a stale socket).
pub fn bind_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a socket path needs a name"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    temporary_name.push(format!(".{}", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(listener)
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
        // Only the socket is left in the directory.
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
