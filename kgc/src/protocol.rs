//! The KGC daemon's wire protocol (sans-I/O encoding and decoding).
//!
//! Each message is a frame: a 4-byte big-endian length, then that many bytes
//! of payload (at most [`MAX_FRAME`]). A payload starts with the protocol
//! version and an operation or status byte. Requests on one connection are
//! answered in order; clients open several connections for concurrency.
//!
//! ```text
//! request  = version(1) op(1) body
//!   HELLO  op 0: (empty)                      -> domains and active generations
//!   OPEN   op 1: generation(u32) len(u16) identity capsule(128)
//!   SIGN   op 2: generation(u32) len(u16) identity len(u16) message (<= 64 bytes)
//!   SYNC   op 3: len(u16) domain count(u16) { generation(u32) }*
//!   SIGN-CERTIFIED op 4: as SIGN
//! response = version(1) status(1) body
//!   OK (0): HELLO -> count(u16) { len(u16) domain generation(u32) }*
//!           OPEN  -> shared secret(32)
//!           SIGN  -> generation(u32) signature(192)
//!           SYNC  -> count(u16) { len(u16) name mode(u32) len(u32) contents }*
//!           SIGN-CERTIFIED -> generation(u32) certified signature(288)
//!
//! SIGN signs a digest (never the message itself) as the identity at the
//! generation asked for, which the caller learns from HELLO: the generation
//! is part of what the caller hashed into the digest. SIGN-CERTIFIED signs
//! it with the identity's certified per-message key instead (Ed25519 under a
//! Cha–Cheon certificate: `ed25519-cc-sha256`); a daemon older than it
//! answers BadRequest (an unknown operation).
//!   error (1..): UTF-8 reason
//! ```
//!
//! SYNC is the replicas' (`crate::replica`): a replica names a domain and
//! the generations it serves now, and gets the primary's store files back
//! (master keys included), so only a peer with the `replica` grant — a
//! pinned TLS certificate, never a Unix uid — may ask. Its answer may be
//! larger than [`MAX_FRAME`], up to [`MAX_SYNC_FRAME`].

use ibemail_ibe::{
    CAPSULE_BYTES, CERTIFIED_SIGNATURE_BYTES, Generation, SHARED_SECRET_BYTES, SIGNATURE_BYTES,
};
use thiserror::Error;
use zeroize::Zeroizing;

/// Protocol version spoken by this implementation.
pub const VERSION: u8 = 1;
/// Largest frame payload accepted, in bytes.
pub const MAX_FRAME: usize = 16 * 1024;

const OP_HELLO: u8 = 0;
const OP_OPEN: u8 = 1;
const OP_SIGN: u8 = 2;
const OP_SYNC: u8 = 3;
const OP_SIGN_CERTIFIED: u8 = 4;
/// Largest SYNC answer a replica accepts (a store's files).
pub const MAX_SYNC_FRAME: usize = 1024 * 1024;
/// Most generations a SYNC request names.
pub const MAX_SYNC_GENERATIONS: usize = 1024;
/// Largest message a SIGN request carries (a digest, not a mail message).
pub const MAX_SIGN_MESSAGE: usize = 64;

/// A request to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Which domains and generations does the daemon serve?
    Hello,
    /// Open a capsule for an identity at a generation.
    Open {
        /// The parameter generation.
        generation: Generation,
        /// The normalised recipient address.
        identity: String,
        /// The 128-byte capsule.
        capsule: Vec<u8>,
    },
    /// Sign a digest as an identity at a generation.
    Sign {
        /// The generation to sign with (active or retiring).
        generation: Generation,
        /// The normalised sender address.
        identity: String,
        /// What to sign (at most [`MAX_SIGN_MESSAGE`] bytes).
        message: Vec<u8>,
        /// With the certified per-message key (SIGN-CERTIFIED), not the
        /// Cha–Cheon key (SIGN).
        certified: bool,
    },
    /// A replica asks for a domain's store files, saying which generations
    /// it serves now.
    Sync {
        /// The domain.
        domain: String,
        /// The generations whose keys the replica serves.
        serving: Vec<Generation>,
    },
}

/// One file of a key store, as SYNC carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreFile {
    /// The file name (no directory).
    pub name: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its contents (a master key, for `gen-*.key`): wiped when dropped.
    pub contents: Zeroizing<Vec<u8>>,
}

impl core::fmt::Debug for StoreFile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoreFile")
            .field("name", &self.name)
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("bytes", &self.contents.len())
            .finish()
    }
}

/// Response status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The generation does not exist.
    UnknownGeneration = 1,
    /// The generation was retired; its key is gone.
    Retired = 2,
    /// The capsule did not open with the identity's key.
    Rejected = 3,
    /// The identity is not in a domain this daemon serves.
    WrongDomain = 4,
    /// The request does not parse.
    BadRequest = 5,
    /// The daemon failed internally.
    Internal = 6,
    /// The protocol version is not supported.
    UnsupportedVersion = 7,
    /// The peer is not allowed to use the daemon.
    Forbidden = 8,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::UnknownGeneration,
            2 => Status::Retired,
            3 => Status::Rejected,
            4 => Status::WrongDomain,
            5 => Status::BadRequest,
            6 => Status::Internal,
            7 => Status::UnsupportedVersion,
            8 => Status::Forbidden,
            _ => return None,
        })
    }
}

/// A response from the daemon.
#[derive(Clone, PartialEq, Eq)]
pub enum Response {
    /// HELLO answer: `(domain, active generation)` pairs.
    Hello(Vec<(String, Generation)>),
    /// OPEN answer: the shared secret.
    Opened([u8; SHARED_SECRET_BYTES]),
    /// SIGN answer: the generation used and the signature.
    Signed(Generation, [u8; SIGNATURE_BYTES]),
    /// SIGN-CERTIFIED answer: the generation used and the certified
    /// signature.
    SignedCertified(Generation, Box<[u8; CERTIFIED_SIGNATURE_BYTES]>),
    /// SYNC answer: the store's files.
    Synced(Vec<StoreFile>),
    /// Any failure, with a reason for the log.
    Error(Status, String),
}

impl core::fmt::Debug for Response {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Response::Hello(d) => f.debug_tuple("Hello").field(d).finish(),
            Response::Opened(_) => f.write_str("Opened(<redacted>)"),
            Response::Signed(n, _) => f.debug_tuple("Signed").field(n).finish(),
            Response::SignedCertified(n, _) => f.debug_tuple("SignedCertified").field(n).finish(),
            Response::Synced(files) => f.debug_tuple("Synced").field(files).finish(),
            Response::Error(s, r) => f.debug_tuple("Error").field(s).field(r).finish(),
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The announced length exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    FrameTooLarge(usize),
    /// The payload ends early or has trailing bytes.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Unknown operation or status.
    #[error("unknown operation or status {0}")]
    Unknown(u8),
}

/// Reads the 4-byte length prefix and checks the limit.
pub fn frame_length(prefix: [u8; 4]) -> Result<usize, ProtocolError> {
    frame_length_within(prefix, MAX_FRAME)
}

/// Reads the 4-byte length prefix and checks it against `max`.
pub fn frame_length_within(prefix: [u8; 4], max: usize) -> Result<usize, ProtocolError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(ProtocolError::FrameTooLarge(len));
    }
    Ok(len)
}

/// Prepends the length prefix to a payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.data.len() < n {
            return Err(ProtocolError::Malformed(what));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let len = self.u16(what)? as usize;
        String::from_utf8(self.take(len, what)?.to_vec())
            .map_err(|_| ProtocolError::Malformed(what))
    }
    fn end(&self, what: &'static str) -> Result<(), ProtocolError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed(what))
        }
    }
}

fn push_string(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Request {
    /// The payload (without length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Request::Hello => out.push(OP_HELLO),
            Request::Open {
                generation,
                identity,
                capsule,
            } => {
                out.push(OP_OPEN);
                out.extend_from_slice(&generation.to_be_bytes());
                push_string(&mut out, identity);
                out.extend_from_slice(capsule);
            }
            Request::Sign {
                generation,
                identity,
                message,
                certified,
            } => {
                out.push(if *certified {
                    OP_SIGN_CERTIFIED
                } else {
                    OP_SIGN
                });
                out.extend_from_slice(&generation.to_be_bytes());
                push_string(&mut out, identity);
                out.extend_from_slice(&(message.len() as u16).to_be_bytes());
                out.extend_from_slice(message);
            }
            Request::Sync { domain, serving } => {
                out.push(OP_SYNC);
                push_string(&mut out, domain);
                let serving = &serving[..serving.len().min(MAX_SYNC_GENERATIONS)];
                out.extend_from_slice(&(serving.len() as u16).to_be_bytes());
                for generation in serving {
                    out.extend_from_slice(&generation.to_be_bytes());
                }
            }
        }
        out
    }

    /// Parses a payload.
    pub fn decode(payload: &[u8]) -> Result<Request, ProtocolError> {
        let mut c = Cursor { data: payload };
        let version = c.u8("request")?;
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let request = match c.u8("request")? {
            OP_HELLO => Request::Hello,
            OP_OPEN => Request::Open {
                generation: c.u32("OPEN generation")?,
                identity: c.string("OPEN identity")?,
                capsule: c.take(CAPSULE_BYTES, "OPEN capsule")?.to_vec(),
            },
            op @ (OP_SIGN | OP_SIGN_CERTIFIED) => {
                let generation = c.u32("SIGN generation")?;
                let identity = c.string("SIGN identity")?;
                let len = c.u16("SIGN message")? as usize;
                if len > MAX_SIGN_MESSAGE {
                    return Err(ProtocolError::Malformed("SIGN message (too long)"));
                }
                Request::Sign {
                    generation,
                    identity,
                    message: c.take(len, "SIGN message")?.to_vec(),
                    certified: op == OP_SIGN_CERTIFIED,
                }
            }
            OP_SYNC => {
                let domain = c.string("SYNC domain")?;
                let count = c.u16("SYNC count")? as usize;
                if count > MAX_SYNC_GENERATIONS {
                    return Err(ProtocolError::Malformed("SYNC count (too many)"));
                }
                let serving = (0..count)
                    .map(|_| c.u32("SYNC generation"))
                    .collect::<Result<_, _>>()?;
                Request::Sync { domain, serving }
            }
            other => return Err(ProtocolError::Unknown(other)),
        };
        c.end("request")?;
        Ok(request)
    }
}

impl Response {
    /// The payload (without length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Response::Hello(domains) => {
                out.push(Status::Ok as u8);
                out.extend_from_slice(&(domains.len() as u16).to_be_bytes());
                for (domain, generation) in domains {
                    push_string(&mut out, domain);
                    out.extend_from_slice(&generation.to_be_bytes());
                }
            }
            Response::Opened(secret) => {
                out.push(Status::Ok as u8);
                out.extend_from_slice(secret);
            }
            Response::Signed(generation, signature) => {
                out.push(Status::Ok as u8);
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(signature);
            }
            Response::SignedCertified(generation, signature) => {
                out.push(Status::Ok as u8);
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(signature.as_slice());
            }
            Response::Synced(files) => {
                out.push(Status::Ok as u8);
                out.extend_from_slice(&(files.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for file in files.iter().take(u16::MAX as usize) {
                    push_string(&mut out, &file.name);
                    out.extend_from_slice(&file.mode.to_be_bytes());
                    out.extend_from_slice(&(file.contents.len() as u32).to_be_bytes());
                    out.extend_from_slice(&file.contents);
                }
            }
            Response::Error(status, reason) => {
                out.push(*status as u8);
                out.extend_from_slice(reason.as_bytes());
            }
        }
        out
    }

    /// Parses the payload answering `request`.
    pub fn decode(request: &Request, payload: &[u8]) -> Result<Response, ProtocolError> {
        let mut c = Cursor { data: payload };
        let version = c.u8("response")?;
        if version != VERSION {
            return Err(ProtocolError::UnsupportedVersion(version));
        }
        let status_byte = c.u8("response")?;
        let status = Status::from_byte(status_byte).ok_or(ProtocolError::Unknown(status_byte))?;
        if status != Status::Ok {
            return Ok(Response::Error(
                status,
                String::from_utf8_lossy(c.data).into_owned(),
            ));
        }
        let response = match request {
            Request::Hello => {
                let count = c.u16("HELLO count")?;
                let mut domains = Vec::new();
                for _ in 0..count {
                    let domain = c.string("HELLO domain")?;
                    domains.push((domain, c.u32("HELLO generation")?));
                }
                Response::Hello(domains)
            }
            Request::Open { .. } => {
                let mut secret = [0u8; SHARED_SECRET_BYTES];
                secret.copy_from_slice(c.take(SHARED_SECRET_BYTES, "OPEN secret")?);
                Response::Opened(secret)
            }
            Request::Sign {
                certified: false, ..
            } => {
                let generation = c.u32("SIGN generation")?;
                let mut signature = [0u8; SIGNATURE_BYTES];
                signature.copy_from_slice(c.take(SIGNATURE_BYTES, "SIGN signature")?);
                Response::Signed(generation, signature)
            }
            Request::Sign {
                certified: true, ..
            } => {
                let generation = c.u32("SIGN-CERTIFIED generation")?;
                let mut signature = Box::new([0u8; CERTIFIED_SIGNATURE_BYTES]);
                signature.copy_from_slice(
                    c.take(CERTIFIED_SIGNATURE_BYTES, "SIGN-CERTIFIED signature")?,
                );
                Response::SignedCertified(generation, signature)
            }
            Request::Sync { .. } => {
                let count = c.u16("SYNC count")?;
                let mut files = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let name = c.string("SYNC file name")?;
                    let mode = c.u32("SYNC file mode")?;
                    let len = c.u32("SYNC file length")? as usize;
                    let contents = Zeroizing::new(c.take(len, "SYNC file")?.to_vec());
                    files.push(StoreFile {
                        name,
                        mode,
                        contents,
                    });
                }
                Response::Synced(files)
            }
        };
        c.end("response")?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let open = Request::Open {
            generation: 7,
            identity: "bob@b.test".into(),
            capsule: vec![9; CAPSULE_BYTES],
        };
        let sign = Request::Sign {
            generation: 2,
            identity: "alice@a.test".into(),
            message: vec![3; 32],
            certified: false,
        };
        let sign_certified = Request::Sign {
            generation: 2,
            identity: "alice@a.test".into(),
            message: vec![3; 32],
            certified: true,
        };
        for r in [
            Request::Hello,
            open.clone(),
            sign.clone(),
            sign_certified.clone(),
        ] {
            assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        }
        let hello = Response::Hello(vec![("b.test".into(), 3), ("c.test".into(), 1)]);
        assert_eq!(
            Response::decode(&Request::Hello, &hello.encode()).unwrap(),
            hello
        );
        let opened = Response::Opened([5; 32]);
        assert_eq!(Response::decode(&open, &opened.encode()).unwrap(), opened);
        let signed = Response::Signed(4, [7; SIGNATURE_BYTES]);
        assert_eq!(Response::decode(&sign, &signed.encode()).unwrap(), signed);
        let certified = Response::SignedCertified(4, Box::new([8; CERTIFIED_SIGNATURE_BYTES]));
        assert_eq!(
            Response::decode(&sign_certified, &certified.encode()).unwrap(),
            certified
        );
        // Each answer is the length its request expects.
        assert!(Response::decode(&sign, &certified.encode()).is_err());
        assert!(Response::decode(&sign_certified, &signed.encode()).is_err());
        let mut long = Request::Sign {
            generation: 1,
            identity: "alice@a.test".into(),
            message: vec![0; MAX_SIGN_MESSAGE + 1],
            certified: true,
        }
        .encode();
        assert!(Request::decode(&long).is_err());
        long.truncate(long.len() - 2);
        assert!(Request::decode(&long).is_err());
        let err = Response::Error(Status::Retired, "generation 1 retired".into());
        assert_eq!(Response::decode(&open, &err.encode()).unwrap(), err);
        let sync = Request::Sync {
            domain: "b.test".into(),
            serving: vec![1, 2],
        };
        assert_eq!(Request::decode(&sync.encode()).unwrap(), sync);
        let synced = Response::Synced(vec![StoreFile {
            name: "gen-00000002.key".into(),
            mode: 0o600,
            contents: Zeroizing::new(b"master-key: secret".to_vec()),
        }]);
        assert_eq!(Response::decode(&sync, &synced.encode()).unwrap(), synced);
        assert!(!format!("{synced:?}").contains("secret"));
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(
            frame_length((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(ProtocolError::FrameTooLarge(MAX_FRAME + 1))
        );
        assert_eq!(
            Request::decode(&[]),
            Err(ProtocolError::Malformed("request"))
        );
        assert_eq!(
            Request::decode(&[2, 0]),
            Err(ProtocolError::UnsupportedVersion(2))
        );
        assert_eq!(Request::decode(&[1, 9]), Err(ProtocolError::Unknown(9)));
        assert_eq!(
            Request::decode(&[1, 0, 0]),
            Err(ProtocolError::Malformed("request"))
        );
        let mut short = Request::Open {
            generation: 1,
            identity: "a@b".into(),
            capsule: vec![0; CAPSULE_BYTES],
        }
        .encode();
        short.pop();
        assert_eq!(
            Request::decode(&short),
            Err(ProtocolError::Malformed("OPEN capsule"))
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        assert_eq!(
            format!("{:?}", Response::Opened([0xab; 32])),
            "Opened(<redacted>)"
        );
    }
}
