//! The daemon side of the protocol: a Unix socket, peer credentials checked
//! against per-uid grants, bounded frames, concurrent connections.
//!
//! Grants are per capability: `open` (decrypt mail for the served domains)
//! and `sign` (sign as any of their users). The milter needs both; a
//! delivery-time `ibemail-milter decrypt` filter needs only `open`, and
//! given only that it cannot forge its users' signatures.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::access::KeyError;
use crate::protocol::{self, MAX_FRAME, ProtocolError, Request, Response, Status};
use crate::service::{KeyService, Peer};

/// What one user id may ask of the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// OPEN: open capsules, i.e. read the served domains' mail.
    pub open: bool,
    /// If not empty, OPEN only for these identities (normalised
    /// addresses): a user's own delivery filter reads that user's mail and
    /// nobody else's.
    pub open_as: BTreeSet<String>,
    /// SIGN: sign as any user of the served domains.
    pub sign: bool,
}

impl Grant {
    /// Both capabilities, for every identity (the milter's).
    pub fn all() -> Grant {
        Grant {
            open: true,
            open_as: BTreeSet::new(),
            sign: true,
        }
    }

    /// True if OPEN for `identity` (as requested) is granted.
    fn may_open(&self, identity: &str) -> bool {
        self.open
            && (self.open_as.is_empty()
                || ibemail_ibe::Identity::parse(identity)
                    .is_ok_and(|id| self.open_as.contains(id.as_str())))
    }

    /// Nothing granted.
    fn is_empty(&self) -> bool {
        !self.open && !self.sign
    }
}

/// Limits and access control of the daemon.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Grants by user id (checked with SO_PEERCRED); a uid without one may
    /// not connect.
    pub grants: BTreeMap<u32, Grant>,
    /// Connections served at once; more wait.
    pub max_connections: usize,
    /// A connection idle this long between requests is closed.
    pub idle_timeout: Duration,
    /// A request frame must arrive completely within this time.
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grants: BTreeMap::from([(rustix::process::geteuid().as_raw(), Grant::all())]),
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` completes; then stops
/// accepting and waits for connections in progress to finish their request.
pub async fn serve(
    listener: UnixListener,
    service: Arc<KeyService>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let service = service.clone();
                let config = config.clone();
                tasks.spawn(async move {
                    handle_connection(stream, service, &config).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// The answer to a request for `capability` (`open` or `sign`) from a
/// peer without that grant, audit-logged.
fn forbidden(capability: &str, identity: &str, peer: Peer) -> Response {
    warn!(
        target: "ibemail_kgc::audit",
        "refused {capability} as {identity:?} for uid {} pid {}: no {capability} grant",
        peer.uid.map_or("-".into(), |u| u.to_string()),
        peer.pid.map_or("-".into(), |p| p.to_string())
    );
    Response::Error(
        Status::Forbidden,
        format!("this uid has no {capability} grant (ibemail-kgc serve --allow-{capability})"),
    )
}

/// The service's answer on the wire: only the server speaks the protocol.
fn to_wire(result: Result<Response, KeyError>) -> Response {
    result.unwrap_or_else(|e| {
        let status = match &e {
            KeyError::Unavailable(_) => Status::Internal,
            KeyError::Forbidden(_) => Status::Forbidden,
            KeyError::NotServed(_) => Status::WrongDomain,
            KeyError::Invalid(_) => Status::BadRequest,
            KeyError::UnknownGeneration(_) => Status::UnknownGeneration,
            KeyError::Retired(_) => Status::Retired,
            KeyError::Rejected => Status::Rejected,
        };
        let reason = match e {
            KeyError::Unavailable(r)
            | KeyError::Forbidden(r)
            | KeyError::NotServed(r)
            | KeyError::Invalid(r) => r,
            other => other.to_string(),
        };
        Response::Error(status, reason)
    })
}

/// Runs key work (pairings, scalar multiplications) off the async threads.
async fn off_thread(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Response::Error(Status::Internal, "worker failed".into()))
}

async fn send(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    stream.write_all(&protocol::frame(&response.encode())).await
}

async fn handle_connection(
    mut stream: UnixStream,
    service: Arc<KeyService>,
    config: &ServerConfig,
) {
    let (peer, grant) = match stream.peer_cred() {
        Ok(cred) => (
            Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            config.grants.get(&cred.uid()).cloned().unwrap_or_default(),
        ),
        Err(e) => {
            warn!("cannot read peer credentials: {e}");
            return;
        }
    };
    if grant.is_empty() {
        service.metrics().refused_connection();
        warn!(
            target: "ibemail_kgc::audit",
            "refused connection from uid {} pid {}: no grant",
            peer.uid.map_or("-".into(), |u| u.to_string()),
            peer.pid.map_or("-".into(), |p| p.to_string())
        );
        let _ = send(
            &mut stream,
            &Response::Error(Status::Forbidden, "this uid has no grant".into()),
        )
        .await;
        return;
    }
    loop {
        let mut prefix = [0u8; 4];
        match tokio::time::timeout(config.idle_timeout, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            _ => return, // closed, idle or broken
        }
        let len = match protocol::frame_length(prefix) {
            Ok(len) => len,
            Err(e) => {
                debug!("bad frame from uid {:?}: {e}", peer.uid);
                let _ = send(
                    &mut stream,
                    &Response::Error(Status::BadRequest, e.to_string()),
                )
                .await;
                return;
            }
        };
        let mut payload = vec![0u8; len.min(MAX_FRAME)];
        match tokio::time::timeout(config.read_timeout, stream.read_exact(&mut payload)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let response = match Request::decode(&payload) {
            Ok(Request::Hello) => Response::Hello(service.hello()),
            Ok(Request::Open { identity, .. }) if !grant.may_open(&identity) => {
                forbidden("open", &identity, peer)
            }
            Ok(Request::Open {
                generation,
                identity,
                capsule,
            }) => {
                let service = service.clone();
                off_thread(move || {
                    to_wire(
                        service
                            .open(&identity, generation, &capsule, peer)
                            .map(|secret| Response::Opened(*secret.as_bytes())),
                    )
                })
                .await
            }
            Ok(Request::Sign { identity, .. }) if !grant.sign => forbidden("sign", &identity, peer),
            Ok(Request::Sign {
                generation,
                identity,
                message,
            }) => {
                let service = service.clone();
                off_thread(move || {
                    to_wire(
                        service
                            .sign(&identity, generation, &message, peer)
                            .map(|signature| Response::Signed(generation, signature.to_bytes())),
                    )
                })
                .await
            }
            Err(e) => {
                let status = match e {
                    ProtocolError::UnsupportedVersion(_) => Status::UnsupportedVersion,
                    _ => Status::BadRequest,
                };
                let _ = send(&mut stream, &Response::Error(status, e.to_string())).await;
                return;
            }
        };
        if send(&mut stream, &response).await.is_err() {
            return;
        }
    }
}
