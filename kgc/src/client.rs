//! The client side of the daemon protocol, used by the milter and by
//! `ibemail-milter decrypt --kgc-socket`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ibemail_ibe::{Capsule, Generation, Identity, SharedSecret, Signature};
use ibemail_message::CapsuleError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::protocol::{self, Request, Response};
use crate::service::{SignError, response_to_secret, response_to_signature};

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

    /// Domains and active generations the daemon serves.
    pub async fn hello(&self) -> Result<Vec<(String, Generation)>, String> {
        match self.request(&Request::Hello).await? {
            Response::Hello(domains) => Ok(domains),
            Response::Error(status, reason) => Err(format!("{status:?}: {reason}")),
            Response::Opened(_) | Response::Signed(..) => Err("unexpected answer".into()),
        }
    }

    /// Asks the daemon to open a capsule. Connection problems are
    /// [`CapsuleError::Unavailable`] (temporary: the mail stays queued).
    pub async fn open(
        &self,
        identity: &Identity,
        generation: Generation,
        capsule: &Capsule,
    ) -> Result<SharedSecret, CapsuleError> {
        let request = Request::Open {
            generation,
            identity: identity.as_str().to_string(),
            capsule: capsule.to_bytes().to_vec(),
        };
        let response = self
            .request(&request)
            .await
            .map_err(CapsuleError::Unavailable)?;
        response_to_secret(response, generation)
    }

    /// Asks the daemon to sign `message` (a digest) as `identity`.
    /// Connection problems are [`SignError::Unavailable`].
    pub async fn sign(
        &self,
        identity: &Identity,
        generation: Generation,
        message: &[u8],
    ) -> Result<(Generation, Signature), SignError> {
        let request = Request::Sign {
            generation,
            identity: identity.as_str().to_string(),
            message: message.to_vec(),
        };
        let response = self
            .request(&request)
            .await
            .map_err(SignError::Unavailable)?;
        response_to_signature(response)
    }
}
