//! The daemon side of the protocol: a Unix socket, peer credentials checked
//! against per-uid grants, bounded frames, concurrent connections. The same
//! requests are served over mutual TLS ([`crate::tls`], [`serve_tls`]) to
//! clients on other hosts, whose pinned certificates carry the grants.
//!
//! Grants are per capability: `open` (decrypt mail for the served domains)
//! and `sign` (sign as any of their users). The milter needs both; a
//! delivery-time `ibemail-milter decrypt` filter needs only `open`, and
//! given only that it cannot forge its users' signatures. `replicate`
//! (copy the master keys, [`crate::replica`]) is for replica daemons, and
//! only ever to a certificate.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::access::KeyError;
use crate::logging::LogLimit;
use crate::protocol::{self, MAX_FRAME, ProtocolError, Request, Response, Status};
use crate::replica::{Replication, scope_covers};
use crate::service::{KeyService, Peer};
use crate::tls::{Fingerprints, Pin};

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
    /// SYNC: copy the served stores, master keys included (a replica
    /// daemon; certificates only).
    pub replicate: bool,
    /// If not empty, SYNC only of these domains (normalised): a replica
    /// host of one domain gets no other domain's master keys from a
    /// primary that serves several.
    pub replicate_only: BTreeSet<String>,
}

impl Grant {
    /// Both capabilities, for every identity (the milter's).
    pub fn all() -> Grant {
        Grant {
            open: true,
            open_as: BTreeSet::new(),
            sign: true,
            replicate: false,
            replicate_only: BTreeSet::new(),
        }
    }

    /// The grant a `--allow-cert PIN=WHAT` names: `open`, `sign`,
    /// `open+sign` (the milter's, and the default), `replica` (every
    /// served domain) or `replica:DOMAIN[,DOMAIN…]`.
    pub fn parse(what: &str) -> Result<Grant, String> {
        let mut grant = Grant::default();
        let mut every_domain = false;
        for part in what.split('+') {
            match part.trim() {
                "open" => grant.open = true,
                "sign" => grant.sign = true,
                "replica" => {
                    grant.replicate = true;
                    every_domain = true;
                }
                other => match other.strip_prefix("replica:") {
                    Some(domains) => {
                        grant.replicate = true;
                        for domain in domains.split(',') {
                            let normal = ibemail_ibe::normalize_domain(domain.trim())
                                .map_err(|e| format!("replica:{domain}: {e}"))?;
                            grant.replicate_only.insert(normal);
                        }
                    }
                    None => {
                        return Err(format!(
                            "unknown grant {other:?}: expected open, sign, open+sign, replica \
                             or replica:DOMAIN"
                        ));
                    }
                },
            }
        }
        if every_domain && !grant.replicate_only.is_empty() {
            return Err(
                "replica (every domain) and replica:DOMAIN together: name one of them".into(),
            );
        }
        Ok(grant)
    }

    /// The grant in the words of [`Grant::parse`].
    pub fn describe(&self) -> String {
        let mut words = Vec::new();
        if self.open {
            words.push("open");
        }
        if self.sign {
            words.push("sign");
        }
        let scoped;
        if self.replicate {
            if self.replicate_only.is_empty() {
                words.push("replica");
            } else {
                let domains: Vec<&str> = self.replicate_only.iter().map(String::as_str).collect();
                scoped = format!("replica:{}", domains.join(","));
                words.push(&scoped);
            }
        }
        if words.is_empty() {
            "nothing".into()
        } else {
            words.join("+")
        }
    }

    /// True if SYNC of `domain` (as requested) is granted.
    pub fn may_replicate(&self, domain: &str) -> bool {
        self.replicate
            && (self.replicate_only.is_empty()
                || ibemail_ibe::normalize_domain(domain)
                    .is_ok_and(|d| scope_covers(&self.replicate_only, &d)))
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
        !self.open && !self.sign && !self.replicate
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
    /// A request frame must arrive completely within this time (and a
    /// TLS handshake).
    pub read_timeout: Duration,
    /// An answer must be written within this time (a peer that does not
    /// read would otherwise hold its connection, and a stopping daemon,
    /// for ever); long enough for a replica's SYNC answer (up to 1 MiB)
    /// over a slow link.
    pub write_timeout: Duration,
    /// Grants of TLS clients, by the pin their certificate matches. A
    /// certificate that matches none fails the handshake; one that
    /// matches two entries is refused.
    pub certificates: Vec<(Pin, Grant)>,
    /// What replicas report serving (a primary's), if any replica is
    /// allowed.
    pub replication: Option<Arc<Replication>>,
    /// The log limit of refused connections (without a grant, failed TLS
    /// handshakes): anyone who reaches a listener causes these. Shared by
    /// the listeners of one configuration.
    pub refusals: Arc<LogLimit>,
    /// The log limit of requests beyond a granted peer's grant, apart from
    /// [`ServerConfig::refusals`] so that anonymous noise cannot keep an
    /// insider's refusals out of the log.
    pub beyond_grant: Arc<LogLimit>,
}

impl ServerConfig {
    /// Every `--allow-cert` entry a client certificate matches: one pin of
    /// its certificate (`sha256:`) and one of its public key
    /// (`spki-sha256:`) can both be given, and nothing at start-up can
    /// tell that they are the same client's. Two would make the grant
    /// applied and the replicas awaited go by different entries.
    fn matching_entries(&self, fingerprints: &Fingerprints) -> Vec<&(Pin, Grant)> {
        self.certificates
            .iter()
            .filter(|(pin, _)| pin.matches(fingerprints))
            .collect()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grants: BTreeMap::from([(rustix::process::geteuid().as_raw(), Grant::all())]),
            max_connections: 256,
            idle_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            certificates: Vec::new(),
            replication: None,
            refusals: Arc::new(LogLimit::refusals()),
            beyond_grant: Arc::new(LogLimit::refusals()),
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
    let (stop, stopping) = tokio::sync::watch::channel(false);
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
                // Waiting for a free connection must not keep a stop from
                // being noticed.
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                };
                let (service, config, stopping) = (service.clone(), config.clone(), stopping.clone());
                tasks.spawn(async move {
                    handle_unix(stream, service, &config, stopping).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    // Connections waiting for their next request close now; requests in
    // progress are answered first.
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Serves `service` over mutual TLS on `listener` until `shutdown`
/// completes, as [`serve`] does on a Unix socket: the client's pinned
/// certificate ([`ServerConfig::certificates`]) stands for the uid.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<KeyService>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let config = Arc::new(config);
    // Authenticated connections take a permit; handshakes do not. A
    // handshake in progress is anyone's (no certificate checked yet): past
    // `max_connections` of them the oldest is dropped, so a host that
    // opens connections and stays silent cannot hold the port — a pinned
    // client's handshake completes in milliseconds, long before it is the
    // oldest.
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let pending = Arc::new(std::sync::Mutex::new(Handshakes::default()));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, address) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (id, evicted) = pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .admit(config.max_connections.max(1));
                let (service, config, acceptor, permits, pending, stopping) = (
                    service.clone(),
                    config.clone(),
                    acceptor.clone(),
                    permits.clone(),
                    pending.clone(),
                    stopping.clone(),
                );
                tasks.spawn(async move {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(config.read_timeout, acceptor.accept(stream)) => {
                            Some(done)
                        }
                        _ = evicted => None,
                    };
                    pending.lock().unwrap_or_else(|e| e.into_inner()).done(id);
                    let Some(handshake) = handshake else {
                        debug!("TLS handshake with {address} dropped: too many handshakes pending");
                        return;
                    };
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            // A port probe, or a client gone before a
                            // word: nothing was refused.
                            debug!("TLS connection from {address} closed before the handshake");
                            return;
                        }
                        Ok(Err(e)) => {
                            refused(&service, &config, || format!(
                                "refused TLS connection from {address}: {}",
                                crate::tls::describe_error(&e)
                            ));
                            return;
                        }
                        Err(_) => {
                            debug!("TLS handshake with {address} timed out");
                            return;
                        }
                    };
                    let fingerprints = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| Fingerprints::of(cert));
                    // The handshake only completes with a pinned
                    // certificate; its grant is looked up again here.
                    let matched = fingerprints
                        .map(|f| config.matching_entries(&f))
                        .unwrap_or_default();
                    let (pin, grant) = match matched.as_slice() {
                        [one] => (*one).clone(),
                        [] => {
                            refused(&service, &config, || format!("refused TLS connection from {address}: no grant"));
                            return;
                        }
                        several => {
                            let pins: Vec<String> = several.iter().map(|(p, _)| p.to_string()).collect();
                            refused(&service, &config, || format!(
                                "refused TLS connection from {address}: its certificate matches {} --allow-cert \
                                 entries ({}); give it one",
                                pins.len(),
                                pins.join(", ")
                            ));
                            return;
                        }
                    };
                    let peer = Peer {
                        address: Some(address),
                        certificate: Some(pin),
                        ..Peer::default()
                    };
                    let Ok(permit) = permits.acquire_owned().await else { return };
                    serve_requests(stream, peer, grant, service, &config, stopping).await;
                    drop(permit);
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// TLS handshakes in progress, oldest first, each with the sender that
/// drops it.
#[derive(Default)]
struct Handshakes {
    next: u64,
    queue: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
}

impl Handshakes {
    /// Admits a new handshake, dropping the oldest beyond `limit`; returns
    /// its id and what tells it it was dropped.
    fn admit(&mut self, limit: usize) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next;
        self.next += 1;
        let (drop_it, dropped) = tokio::sync::oneshot::channel();
        self.queue.push_back((id, drop_it));
        while self.queue.len() > limit {
            if let Some((_, oldest)) = self.queue.pop_front() {
                let _ = oldest.send(());
            }
        }
        (id, dropped)
    }

    /// The handshake `id` is over (done, failed or dropped).
    fn done(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }
}

/// A refused connection: counted, and `line` audit-logged within the
/// refusal log limit.
fn refused(service: &KeyService, config: &ServerConfig, line: impl FnOnce() -> String) {
    service.metrics().refused_connection();
    config.refusals.warn(line);
}

/// The answer to a request for `capability` (`open`, `sign` or
/// `replicate`) from a peer without that grant, audit-logged.
/// Counted (outcome `forbidden`) and logged within the refusal limit: a
/// peer with some grant may ask for what it lacks in a loop.
fn forbidden(
    capability: &str,
    identity: &str,
    peer: Peer,
    config: &ServerConfig,
    service: &KeyService,
) -> Response {
    forbidden_operation(capability, capability, identity, peer, config, service)
}

/// [`forbidden`] for an `operation` that needs the grant `capability`
/// (SIGN-CERTIFIED needs `sign`): counted and logged as the operation.
fn forbidden_operation(
    capability: &str,
    operation: &str,
    identity: &str,
    peer: Peer,
    config: &ServerConfig,
    service: &KeyService,
) -> Response {
    service.metrics().request(operation, "forbidden");
    config.beyond_grant.warn(|| {
        format!(
            "refused {operation} as {} for {peer}: no {capability} grant",
            crate::logging::shown(identity)
        )
    });
    let reason = match (capability, peer.certificate.is_some()) {
        ("replicate", true) => format!(
            "this certificate has no replicate grant for {} (ibemail-kgc serve --allow-cert \
             PIN=replica:DOMAIN)",
            crate::logging::shown(identity)
        ),
        ("replicate", false) => "replication is for certificates over mutual TLS \
                                 (ibemail-kgc serve --allow-cert PIN=replica:DOMAIN)"
            .into(),
        (_, true) => format!(
            "this certificate has no {capability} grant (ibemail-kgc serve --allow-cert \
             PIN={capability})"
        ),
        (_, false) => {
            format!("this uid has no {capability} grant (ibemail-kgc serve --allow-{capability})")
        }
    };
    Response::Error(Status::Forbidden, reason)
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

/// Runs long key work (a replica's sync: whole stores) off the async
/// threads.
async fn off_thread(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|_| Response::Error(Status::Internal, "worker failed".into()))
}

/// Writes `response` within `within`; the encoded copies (shared
/// secrets, master keys for a replica) are wiped afterwards. A peer that
/// does not read in time gets an error (and its connection closed).
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
    within: Duration,
) -> std::io::Result<()> {
    let payload = zeroize::Zeroizing::new(response.encode());
    let framed = zeroize::Zeroizing::new(protocol::frame(&payload));
    let write = async {
        stream.write_all(&framed).await?;
        stream.flush().await
    };
    tokio::time::timeout(within, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

async fn handle_unix(
    mut stream: UnixStream,
    service: Arc<KeyService>,
    config: &ServerConfig,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let (peer, grant) = match stream.peer_cred() {
        Ok(cred) => (
            Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
                ..Peer::default()
            },
            config.grants.get(&cred.uid()).cloned().unwrap_or_default(),
        ),
        Err(e) => {
            warn!("cannot read peer credentials: {e}");
            return;
        }
    };
    if grant.is_empty() {
        refused(&service, config, || {
            format!("refused connection from {peer}: no grant")
        });
        let _ = send(
            &mut stream,
            &Response::Error(Status::Forbidden, "this uid has no grant".into()),
            config.write_timeout,
        )
        .await;
        return;
    }
    serve_requests(stream, peer, grant, service, config, stopping).await;
}

/// Answers the requests of one connection, whose peer has `grant`, until
/// it closes, stays idle for [`ServerConfig::idle_timeout`], or the daemon
/// is `stopping` while it waits for a request (clients keep connections
/// open between requests: they must not hold a stopping daemon up).
async fn serve_requests<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: Peer,
    grant: Grant,
    service: Arc<KeyService>,
    config: &ServerConfig,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut prefix = [0u8; 4];
        tokio::select! {
            read = tokio::time::timeout(config.idle_timeout, stream.read_exact(&mut prefix)) => {
                match read {
                    Ok(Ok(_)) => {}
                    _ => return, // closed, idle or broken
                }
            }
            _ = stopping.wait_for(|stop| *stop) => return,
        }
        let len = match protocol::frame_length(prefix) {
            Ok(len) => len,
            Err(e) => {
                debug!("bad frame from {peer}: {e}");
                let _ = send(
                    &mut stream,
                    &Response::Error(Status::BadRequest, e.to_string()),
                    config.write_timeout,
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
                forbidden("open", &identity, peer, config, &service)
            }
            Ok(Request::Open {
                generation,
                identity,
                capsule,
            }) => {
                // One decapsulation (about a pairing): cheaper done here
                // than handed to another thread and back.
                to_wire(
                    service
                        .open(&identity, generation, &capsule, peer)
                        .map(|secret| Response::Opened(*secret.as_bytes())),
                )
            }
            Ok(Request::Sign {
                identity,
                certified,
                ..
            }) if !grant.sign => {
                let operation = if certified { "sign-certified" } else { "sign" };
                forbidden_operation("sign", operation, &identity, peer, config, &service)
            }
            Ok(Request::Sign {
                generation,
                identity,
                message,
                certified: false,
            }) => {
                // Two G2 multiplications (the signing keys are cached; a
                // miss derives both keys and checks the certificate, about
                // two pairings, once per identity and generation): as for
                // OPEN, cheaper here than on another thread.
                to_wire(
                    service
                        .sign(&identity, generation, &message, peer)
                        .map(|signature| Response::Signed(generation, signature.to_bytes())),
                )
            }
            Ok(Request::Sign {
                generation,
                identity,
                message,
                certified: true,
            }) => {
                // One Ed25519 signature (a Cha–Cheon certificate the first
                // time an identity signs at a generation).
                to_wire(
                    service
                        .sign_certified(&identity, generation, &message, peer)
                        .map(|signature| {
                            Response::SignedCertified(generation, Box::new(signature.to_bytes()))
                        }),
                )
            }
            Ok(Request::Sync { domain, .. }) if !grant.may_replicate(&domain) => {
                forbidden("replicate", &domain, peer, config, &service)
            }
            Ok(Request::Sync { domain, serving }) => {
                let (service, replication) = (service.clone(), config.replication.clone());
                off_thread(move || {
                    crate::replica::answer_sync(
                        &service,
                        replication.as_deref(),
                        &domain,
                        &serving,
                        peer,
                    )
                })
                .await
            }
            Err(e) => {
                let status = match e {
                    ProtocolError::UnsupportedVersion(_) => Status::UnsupportedVersion,
                    _ => Status::BadRequest,
                };
                let _ = send(
                    &mut stream,
                    &Response::Error(status, e.to_string()),
                    config.write_timeout,
                )
                .await;
                return;
            }
        };
        if send(&mut stream, &response, config.write_timeout)
            .await
            .is_err()
        {
            return;
        }
    }
}
