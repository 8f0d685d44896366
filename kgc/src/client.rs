//! The client side of the daemon protocol, used by the milter and by
//! `ibemail-milter decrypt --kgc-socket`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ibemail_ibe::{Capsule, Generation, Identity, SharedSecret, Signature};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::access::{BoxFuture, KeyAccess, KeyError};
use crate::protocol::{self, Request, Response, Status};

/// Talks to `ibemail-kgc serve` over its Unix socket.
#[derive(Clone, Debug)]
pub struct KgcClient {
    socket: PathBuf,
    timeout: Duration,
}

impl KgcClient {
    /// A client for the daemon at `socket`; each request must complete
    /// within `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        KgcClient {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    /// Sends one request on a fresh connection.
    pub async fn request(&self, request: &Request) -> Result<Response, String> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
            let sent = stream.write_all(&protocol::frame(&request.encode())).await;
            // A daemon that refuses our uid answers and closes at once,
            // possibly before our request is written (EPIPE): its answer
            // is still there to read, and says more than "broken pipe".
            let mut prefix = [0u8; 4];
            if let Err(e) = stream.read_exact(&mut prefix).await {
                return Err(match sent {
                    Err(send) => format!("send: {send}"),
                    Ok(()) => format!("receive: {e}"),
                });
            }
            let len = protocol::frame_length(prefix).map_err(|e| e.to_string())?;
            let mut payload = vec![0u8; len];
            stream
                .read_exact(&mut payload)
                .await
                .map_err(|e| format!("receive: {e}"))?;
            Response::decode(request, &payload).map_err(|e| e.to_string())
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {} within {:?}",
                    self.socket.display(),
                    self.timeout
                )
            })?
    }

    /// Domains and the generation each signs with, as the daemon serves them.
    pub async fn hello(&self) -> Result<Vec<(String, Generation)>, KeyError> {
        match self.ask(&Request::Hello).await? {
            Response::Hello(domains) => Ok(domains),
            other => Err(unexpected("HELLO", other)),
        }
    }

    /// Asks the daemon to open a capsule. Connection problems are
    /// [`KeyError::Unavailable`] (temporary: the mail stays queued).
    pub async fn open(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, KeyError> {
        let request = Request::Open {
            generation,
            identity: identity.as_str().to_string(),
            capsule: capsule.to_bytes().to_vec(),
        };
        match self.ask(&request).await? {
            Response::Opened(secret) => Ok(SharedSecret::from_bytes(secret)),
            other => Err(unexpected("OPEN", other)),
        }
    }

    /// Asks the daemon to sign `message` (a digest) as `identity`.
    pub async fn sign(
        &self,
        identity: &Identity,
        generation: Generation,
        message: &[u8],
    ) -> Result<Signature, KeyError> {
        let request = Request::Sign {
            generation,
            identity: identity.as_str().to_string(),
            message: message.to_vec(),
        };
        match self.ask(&request).await? {
            Response::Signed(signed, _) if signed != generation => Err(KeyError::Unavailable(
                format!("the KGC signed with generation {signed}, not {generation}"),
            )),
            Response::Signed(_, bytes) => Signature::from_bytes(&bytes).map_err(|e| {
                KeyError::Unavailable(format!("the KGC sent an invalid signature: {e}"))
            }),
            other => Err(unexpected("SIGN", other)),
        }
    }

    /// [`KgcClient::request`], with the daemon's errors as key errors.
    async fn ask(&self, request: &Request) -> Result<Response, KeyError> {
        match self.request(request).await.map_err(KeyError::Unavailable)? {
            Response::Error(status, reason) => Err(from_wire(status, reason)),
            response => Ok(response),
        }
    }
}

/// A daemon's error status as a key error.
fn from_wire(status: Status, reason: String) -> KeyError {
    match status {
        Status::UnknownGeneration => KeyError::UnknownGeneration(generation_in(&reason)),
        Status::Retired => KeyError::Retired(generation_in(&reason)),
        Status::Rejected => KeyError::Rejected,
        Status::WrongDomain => KeyError::NotServed(reason),
        Status::BadRequest => KeyError::Invalid(reason),
        // A daemon that does not grant us OPEN or SIGN is misconfigured,
        // which is fixed without the mail: it waits.
        Status::Forbidden => KeyError::Forbidden(reason),
        Status::Ok | Status::Internal | Status::UnsupportedVersion => {
            KeyError::Unavailable(format!("{status:?}: {reason}"))
        }
    }
}

/// The generation a daemon's reason names ("generation 3 was retired"), or 0.
fn generation_in(reason: &str) -> Generation {
    reason
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or(0)
}

fn unexpected(what: &str, response: Response) -> KeyError {
    KeyError::Unavailable(format!("unexpected answer to {what}: {response:?}"))
}

impl KeyAccess for KgcClient {
    fn served(&self) -> BoxFuture<'_, Result<Vec<(String, Generation)>, KeyError>> {
        Box::pin(self.hello())
    }

    fn open<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        capsule: &'a Capsule,
    ) -> BoxFuture<'a, Result<SharedSecret, KeyError>> {
        Box::pin(KgcClient::open(self, identity, generation, capsule))
    }

    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<Signature, KeyError>> {
        Box::pin(KgcClient::sign(self, identity, generation, digest))
    }
}
