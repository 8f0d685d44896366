//! TSIG keys (RFC 8945) for signing dynamic updates, read from the files
//! administrators already have. Three formats are accepted:
//!
//! ```text
//! # BIND, as printed by `tsig-keygen NAME` (and `ddns-confgen`):
//! key "ibemail-update" {
//!     algorithm hmac-sha256;
//!     secret "base64...";
//! };
//!
//! # Knot DNS, as printed by `keymgr -t NAME hmac-sha256`:
//! key:
//!   - id: ibemail-update
//!     algorithm: hmac-sha256
//!     secret: base64...
//!
//! # One line, as `kdig -y` / `knsupdate -y` take it:
//! hmac-sha256:ibemail-update:base64...
//! ```
//!
//! The file must hold exactly one key and must not be accessible to group or
//! others (mode 0600 or 0400), like the master keys.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use zeroize::Zeroizing;

/// The MAC algorithms we can sign with.
pub const SUPPORTED_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// A TSIG key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct TsigKey {
    name: String,
    algorithm: String,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A TSIG key file that cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TsigKeyError {
    /// The file cannot be read.
    // Not a `source`: the text is in the message, and a chain would repeat it.
    #[error("TSIG key {path}: {error}{hint}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
        /// What to do about it, when that is clear (`; ...`), or nothing.
        hint: String,
    },
    /// The file is readable or writable by group or others.
    #[error(
        "TSIG key {path}: {problem}; a TSIG key is a secret, readable only by the user that \
         runs ibemail-kgc (ibemail-kgc for the packaged daemon): chmod 600 {path}"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file does not hold one key in a known format.
    #[error(
        "TSIG key {path}: {problem} (expected a BIND `key \"name\" {{ algorithm ...; secret \"...\"; }};` \
         block, Knot `keymgr -t` output, or one `algorithm:name:secret` line)"
    )]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

impl TsigKey {
    /// Builds a key from its parts. The algorithm must be one of
    /// [`SUPPORTED_ALGORITHMS`] (case-insensitive, trailing dot allowed).
    pub fn new(name: &str, algorithm: &str, secret: Vec<u8>) -> Result<Self, String> {
        let secret = Zeroizing::new(secret);
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err("the key has no name".into());
        }
        let algorithm = algorithm.trim().trim_end_matches('.').to_ascii_lowercase();
        if !SUPPORTED_ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(format!(
                "algorithm {algorithm:?} is not supported (use one of {})",
                SUPPORTED_ALGORITHMS.join(", ")
            ));
        }
        if secret.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }

    /// Reads a key file, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<Self, TsigKeyError> {
        let io_err = |error: io::Error| TsigKeyError::Io {
            path: path.to_path_buf(),
            hint: if error.kind() == io::ErrorKind::PermissionDenied {
                format!(
                    "; the key must belong to the user that runs ibemail-kgc ({}; the packaged \
                     daemon runs as ibemail-kgc): chown ibemail-kgc: {p} && chmod 600 {p}",
                    crate::accounts::describe_uid(crate::accounts::current_uid()),
                    p = path.display()
                )
            } else {
                String::new()
            },
            error,
        };
        let meta = fs::metadata(path).map_err(io_err)?;
        if !meta.is_file() {
            return Err(TsigKeyError::InsecurePermissions {
                path: path.to_path_buf(),
                problem: "not a regular file".into(),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(TsigKeyError::InsecurePermissions {
                path: path.to_path_buf(),
                problem: format!(
                    "mode {:04o} gives access to group or others",
                    meta.mode() & 0o7777
                ),
            });
        }
        let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err)?);
        Self::parse(&text).map_err(|problem| TsigKeyError::Syntax {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses the text of a key file (any of the three formats).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.contains('{') {
            parse_bind(text)
        } else if text
            .lines()
            .map(|l| l.trim().trim_start_matches("- ").trim_start())
            .any(|l| l.starts_with("id:"))
        {
            parse_knot(text)
        } else {
            parse_line(text)
        }
    }

    /// The key's name (lower case, no trailing dot).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The algorithm, e.g. `hmac-sha256`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The shared secret.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let compact = Zeroizing::new(
        secret
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect::<String>(),
    );
    STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| "the secret is not valid base64".to_string())
}

/// Tokens of BIND's configuration syntax: words, quoted strings, `{`, `}`, `;`.
fn bind_tokens(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                        None => return Err("unterminated comment".into()),
                    }
                }
            }
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                tokens.push(s);
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push(s);
            }
        }
    }
    Ok(tokens)
}

fn parse_bind(text: &str) -> Result<TsigKey, String> {
    let tokens = Zeroizing::new(bind_tokens(text)?);
    let mut found: Option<TsigKey> = None;
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] != "key" {
            return Err(format!("unexpected {:?} outside a key block", tokens[i]));
        }
        let name = tokens.get(i + 1).ok_or("key without a name")?.clone();
        if tokens.get(i + 2).map(String::as_str) != Some("{") {
            return Err(format!("key {name:?}: expected `{{`"));
        }
        i += 3;
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tokens.get(i).map(String::as_str) {
                None => return Err(format!("key {name:?}: missing `}}`")),
                Some("}") => break,
                Some(option @ ("algorithm" | "secret")) => {
                    let value = tokens
                        .get(i + 1)
                        .ok_or_else(|| format!("key {name:?}: {option} without a value"))?;
                    if tokens.get(i + 2).map(String::as_str) != Some(";") {
                        return Err(format!("key {name:?}: expected `;` after {option}"));
                    }
                    if option == "algorithm" {
                        algorithm = Some(value.clone());
                    } else {
                        secret = Some(Zeroizing::new(value.clone()));
                    }
                    i += 3;
                }
                Some(other) => return Err(format!("key {name:?}: unknown option {other:?}")),
            }
        }
        i += 1;
        if tokens.get(i).map(String::as_str) == Some(";") {
            i += 1;
        }
        if found.is_some() {
            return Err("the file holds more than one key".into());
        }
        let algorithm = algorithm.ok_or_else(|| format!("key {name:?} has no algorithm"))?;
        let secret = secret.ok_or_else(|| format!("key {name:?} has no secret"))?;
        found = Some(TsigKey::new(&name, &algorithm, decode_secret(&secret)?)?);
    }
    found.ok_or_else(|| "no key in the file".into())
}

fn parse_knot(text: &str) -> Result<TsigKey, String> {
    let (mut name, mut algorithm, mut secret) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "key:" {
            continue;
        }
        let line = line.strip_prefix("- ").unwrap_or(line).trim_start();
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| "a line is not `option: value`".to_string())?;
        let v = v.trim().trim_matches('"').to_string();
        let slot = match k.trim() {
            "id" => &mut name,
            "algorithm" => &mut algorithm,
            "secret" => &mut secret,
            other => return Err(format!("unknown option {other:?}")),
        };
        if slot.is_some() {
            return Err("the file holds more than one key".into());
        }
        *slot = Some(Zeroizing::new(v));
    }
    let name = name.ok_or("no `id:`")?;
    let algorithm = algorithm.ok_or("no `algorithm:`")?;
    let secret = secret.ok_or("no `secret:`")?;
    TsigKey::new(&name, &algorithm, decode_secret(&secret)?)
}

fn parse_line(text: &str) -> Result<TsigKey, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("the file is empty")?;
    if lines.next().is_some() {
        return Err("more than one line in `algorithm:name:secret` form".into());
    }
    let parts: Vec<&str> = line.split(':').collect();
    match parts.as_slice() {
        [algorithm, name, secret] => TsigKey::new(name, algorithm, decode_secret(secret)?),
        [name, secret] => TsigKey::new(name, "hmac-sha256", decode_secret(secret)?),
        _ => Err("not in `algorithm:name:secret` form".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "Q/A3yx72z9oiFR8fZW2vmiSCLF0Dtwi2UqjNpgl013U=";

    fn check(key: &TsigKey) {
        assert_eq!(key.name(), "ibemail-update");
        assert_eq!(key.algorithm(), "hmac-sha256");
        assert_eq!(key.secret(), STANDARD.decode(SECRET).unwrap());
    }

    #[test]
    fn bind_format() {
        let text = format!(
            "# generated by tsig-keygen\nkey \"ibemail-update\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{SECRET}\";\n}};\n"
        );
        check(&TsigKey::parse(&text).unwrap());
        let compact =
            format!("key ibemail-update. {{ algorithm HMAC-SHA256.; secret \"{SECRET}\"; }}; // x");
        check(&TsigKey::parse(&compact).unwrap());
    }

    #[test]
    fn knot_format() {
        let text = format!(
            "# hmac-sha256:ibemail-update:{SECRET}\nkey:\n  - id: ibemail-update\n    algorithm: hmac-sha256\n    secret: {SECRET}\n"
        );
        check(&TsigKey::parse(&text).unwrap());
    }

    #[test]
    fn line_format() {
        check(&TsigKey::parse(&format!("hmac-sha256:ibemail-update:{SECRET}\n")).unwrap());
        check(&TsigKey::parse(&format!("ibemail-update:{SECRET}")).unwrap());
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "key \"k\" { algorithm hmac-sha256; };",
            "key \"k\" { algorithm hmac-md5; secret \"AAAA\"; };",
            "key \"k\" { algorithm hmac-sha256; secret \"AAAA\"; }; key \"j\" { algorithm hmac-sha256; secret \"AAAA\"; };",
            "key \"k\" { algorithm hmac-sha256; secret \"not base64!\"; };",
            "hmac-sha256:k",
            "a:b:c:d",
        ] {
            assert!(TsigKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = TsigKey::parse(&format!("hmac-sha256:k:{SECRET}")).unwrap();
        assert!(!format!("{key:?}").contains(SECRET));
    }
}
