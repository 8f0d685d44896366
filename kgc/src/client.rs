//! The client side of the daemon protocol, used by the milter and by
//! `ibemail-milter decrypt --kgc-socket`.
//!
//! A client knows one or more **endpoints**: the daemon's Unix socket on
//! this host, and daemons on other hosts over mutual TLS (replicas of one
//! domain's key store, [`crate::replica`]). Each request goes to the first
//! endpoint that answers, in the configured order or, with `spread`,
//! starting at the next one each time; an endpoint that failed is tried
//! last for [`DOWN_FOR`]. The whole request, failovers included, is bounded
//! by the timeout: each attempt gets an equal share of what is left, so a
//! hung endpoint leaves time for the others. Only when none answers is the
//! error temporary (the milter tempfails, the mail stays queued).
//!
//! Connections are kept for the next request (up to [`IDLE_PER_ENDPOINT`]
//! per endpoint, each until [`IDLE_FOR`] after it was opened, well within
//! the daemon's 60 s idle timeout): a mail server asks once or twice per
//! message, and a new connection costs both sides a connect/accept (and,
//! over TLS, a handshake) for a request that takes a millisecond. A kept
//! connection that fails (the daemon closed it, or restarted) is dropped
//! and the request is made once more on a new one, within the same
//! attempt (a kept one gets half the attempt's time, and its failure
//! closes the others kept for that endpoint): every request is safe to
//! repeat (opening a capsule twice gives the same secret; a second
//! signature is as good as the first).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibemail_ibe::{Capsule, CertifiedSignature, Generation, Identity, SharedSecret, Signature};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::access::{BoxFuture, KeyAccess, KeyError};
use crate::protocol::{self, MAX_FRAME, Request, Response, Status};
use crate::tls::{Pin, TlsIdentity};

/// How long an endpoint that failed is tried only after the others.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// Where a KGC daemon answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A Unix socket on this host (peer uid checked by the daemon).
    Unix(PathBuf),
    /// A daemon on another host, over mutual TLS.
    Tls {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tls { host, port } if host.contains(':') => write!(f, "tls:[{host}]:{port}"),
            Endpoint::Tls { host, port } => write!(f, "tls:{host}:{port}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    /// `/path`, `unix:/path`, `tls:HOST:PORT` or `tls:[IPv6]:PORT`.
    fn from_str(text: &str) -> Result<Endpoint, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("tls:") {
            let bad = || {
                format!(
                    "{text:?}: expected tls:HOST:PORT (a host name or address and the port of \
                     `ibemail-kgc serve --tls-listen`)"
                )
            };
            let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
                let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
                (host, port)
            } else {
                rest.rsplit_once(':').ok_or_else(bad)?
            };
            if host.is_empty() {
                return Err(bad());
            }
            let port: u16 = port.parse().map_err(|_| bad())?;
            return Ok(Endpoint::Tls {
                host: host.to_string(),
                port,
            });
        }
        let path = text.strip_prefix("unix:").unwrap_or(text);
        if !path.starts_with('/') {
            return Err(format!(
                "{text:?}: expected an absolute socket path (unix:/run/ibemail/kgc.sock) or \
                 tls:HOST:PORT"
            ));
        }
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }
}

/// What a client needs for TLS endpoints: its own certificate and key, and
/// the pins of the daemons' certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClientFiles {
    /// The client's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
    /// The daemons' certificates (any of them, at any TLS endpoint).
    pub servers: Vec<Pin>,
}

impl TlsClientFiles {
    /// Loads the certificate and key into a rustls configuration.
    pub fn load(&self) -> Result<(Arc<rustls::ClientConfig>, Pin), String> {
        let identity = TlsIdentity::load(&self.cert, &self.key).map_err(|e| e.to_string())?;
        let config =
            crate::tls::client_config(&identity, &self.servers).map_err(|e| e.to_string())?;
        Ok((config, identity.fingerprints().certificate_pin()))
    }
}

/// The endpoints of a client, as configured (the milter's `[kgc]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// In order of preference.
    pub endpoints: Vec<Endpoint>,
    /// Start each request at the next endpoint (spreading the load)
    /// instead of the first.
    pub spread: bool,
    /// For TLS endpoints.
    pub tls: Option<TlsClientFiles>,
}

impl Endpoints {
    /// One Unix socket.
    pub fn unix(socket: &Path) -> Endpoints {
        Endpoints {
            endpoints: vec![Endpoint::Unix(socket.to_path_buf())],
            spread: false,
            tls: None,
        }
    }

    /// A client for these endpoints (reading the TLS certificate and key).
    pub fn client(&self, timeout: Duration) -> Result<KgcClient, String> {
        let tls = self.tls.as_ref().map(TlsClientFiles::load).transpose()?;
        KgcClient::with_endpoints(self.endpoints.clone(), tls, timeout, self.spread)
    }
}

/// How many connections to one endpoint are kept for later requests.
pub const IDLE_PER_ENDPOINT: usize = 4;

/// How long after it was opened a connection is still reused (the daemon
/// closes connections idle for 60 s: this stays well clear of that race,
/// and bounds how long a connection lives however busy it is).
pub const IDLE_FOR: Duration = Duration::from_secs(20);

/// Which endpoints failed lately, where the next spread request starts,
/// and the connections kept for reuse.
#[derive(Debug, Default)]
struct Health {
    next: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
    idle: Mutex<Vec<Vec<(Connection, Instant)>>>,
}

impl Health {
    /// The state of `n` endpoints: all up, none connected.
    fn new(n: usize) -> Arc<Health> {
        Arc::new(Health {
            next: AtomicUsize::new(0),
            down_until: Mutex::new(vec![None; n]),
            idle: Mutex::new((0..n).map(|_| Vec::new()).collect()),
        })
    }
}

/// An open connection to one endpoint.
enum Connection {
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Connection::Unix(_) => "Connection::Unix",
            Connection::Tls(_) => "Connection::Tls",
        })
    }
}

impl Connection {
    /// One request and its answer.
    async fn exchange(&mut self, request: &Request) -> Result<Response, String> {
        match self {
            Connection::Unix(stream) => exchange(stream, request, MAX_FRAME).await,
            Connection::Tls(stream) => exchange(&mut **stream, request, MAX_FRAME).await,
        }
    }
}

/// Talks to `ibemail-kgc serve` over its Unix socket or over mutual TLS,
/// failing over between endpoints.
#[derive(Clone)]
pub struct KgcClient {
    endpoints: Arc<[Endpoint]>,
    tls: Option<(tokio_rustls::TlsConnector, Pin)>,
    timeout: Duration,
    spread: bool,
    health: Arc<Health>,
}

impl fmt::Debug for KgcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KgcClient")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("spread", &self.spread)
            .finish()
    }
}

/// A transport failure (the endpoint is marked down) or an answer that
/// another endpoint may better (it is not).
enum Attempt {
    Failed(String),
    Answered(Response),
}

impl KgcClient {
    /// A client for the daemon at `socket`; each request must complete
    /// within `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        KgcClient {
            endpoints: Arc::from(vec![Endpoint::Unix(socket.to_path_buf())]),
            tls: None,
            timeout,
            spread: false,
            health: Health::new(1),
        }
    }

    /// A client for several endpoints; `tls` (the configuration and this
    /// client's certificate pin, for messages) is needed for TLS ones.
    pub fn with_endpoints(
        endpoints: Vec<Endpoint>,
        tls: Option<(Arc<rustls::ClientConfig>, Pin)>,
        timeout: Duration,
        spread: bool,
    ) -> Result<Self, String> {
        if endpoints.is_empty() {
            return Err("no KGC endpoint".into());
        }
        if tls.is_none()
            && let Some(e) = endpoints.iter().find(|e| matches!(e, Endpoint::Tls { .. }))
        {
            return Err(format!(
                "{e} needs a client certificate, a key and the server's fingerprint"
            ));
        }
        let n = endpoints.len();
        Ok(KgcClient {
            endpoints: Arc::from(endpoints),
            tls: tls.map(|(config, pin)| (tokio_rustls::TlsConnector::from(config), pin)),
            timeout,
            spread,
            health: Health::new(n),
        })
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// A client for the `index`th endpoint alone (the setup check asks
    /// each one).
    pub fn only(&self, index: usize) -> Option<KgcClient> {
        let endpoint = self.endpoints.get(index)?.clone();
        Some(KgcClient {
            endpoints: Arc::from(vec![endpoint]),
            tls: self.tls.clone(),
            timeout: self.timeout,
            spread: false,
            health: Health::new(1),
        })
    }

    /// The order in which to try the endpoints now: from the start (or the
    /// next one, when spreading), those that failed lately last.
    fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let start = if self.spread {
            self.health.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let now = Instant::now();
        let down = self
            .health
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (mut up, mut failed): (Vec<usize>, Vec<usize>) = (0..n)
            .map(|i| (start + i) % n)
            .partition(|&i| down.get(i).copied().flatten().is_none_or(|t| t <= now));
        up.append(&mut failed);
        up
    }

    fn mark(&self, index: usize, failed: bool) {
        let mut down = self
            .health
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = down.get_mut(index) {
            *slot = failed.then(|| Instant::now() + DOWN_FOR);
        }
    }

    /// Sends one request to the first endpoint
    /// that answers it for good (see the module documentation). A
    /// transport failure of every endpoint, or of some while the others
    /// gave no final answer, is an `Err` (temporary).
    pub async fn request(&self, request: &Request) -> Result<Response, String> {
        let deadline = Instant::now() + self.timeout;
        let order = self.order();
        let mut failures = Vec::new();
        let mut answers = Vec::new();
        for (tried, &index) in order.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(format!("{}: not tried (timeout)", self.endpoints[index]));
                continue;
            }
            let remaining = (order.len() - tried) as u32;
            let budget = left / remaining;
            match self.attempt(index, request, budget).await {
                Attempt::Answered(response) if is_final(&response) => {
                    self.mark(index, false);
                    return Ok(response);
                }
                Attempt::Answered(response) => {
                    self.mark(index, false);
                    answers.push((index, response));
                }
                Attempt::Failed(why) => {
                    self.mark(index, true);
                    failures.push(why);
                }
            }
        }
        if failures.is_empty() && !answers.is_empty() {
            // Every endpoint answered and none for good: the first answer
            // stands (a generation no replica has is unknown indeed).
            return Ok(answers.swap_remove(0).1);
        }
        if self.endpoints.len() == 1 {
            return Err(failures.join("; "));
        }
        let mut why = failures;
        for (index, response) in answers {
            why.push(format!(
                "{}: {}",
                self.endpoints[index],
                match response {
                    Response::Error(status, reason) => format!("{status:?}: {reason}"),
                    other => format!("{other:?}"),
                }
            ));
        }
        Err(format!("no KGC answered: {}", why.join("; ")))
    }

    /// One attempt at the `index`th endpoint within `budget`: on a kept
    /// connection if there is one (and, if that fails, on a new one), else
    /// on a new one; the connection is kept after an answer.
    async fn attempt(&self, index: usize, request: &Request, budget: Duration) -> Attempt {
        let endpoint = &self.endpoints[index];
        let exchange = async {
            // A kept connection that fails was closed by the daemon since
            // (idle, restarted, stopping), or its path silently dropped (a
            // firewall's state lost): then a new one, with half the budget
            // left for it, and the other kept ones are likely gone too.
            if let Some((mut kept, opened)) = self.take_idle(index) {
                match tokio::time::timeout(budget / 2, kept.exchange(request)).await {
                    Ok(Ok(response)) => {
                        self.keep(index, kept, opened);
                        return Ok(response);
                    }
                    _ => self.forget(index),
                }
            }
            let mut connection = match endpoint {
                Endpoint::Unix(path) => Connection::Unix(
                    UnixStream::connect(path)
                        .await
                        .map_err(|e| format!("connect {}: {e}", path.display()))?,
                ),
                Endpoint::Tls { host, port } => {
                    Connection::Tls(Box::new(self.connect_tls(host, *port).await?))
                }
            };
            let response = connection.exchange(request).await.map_err(|e| {
                match (endpoint, self.tls.as_ref().map(|(_, pin)| *pin)) {
                    // TLS 1.3: a client certificate the daemon refuses
                    // shows as an alert on the first read.
                    (Endpoint::Tls { .. }, Some(own)) if e.contains("alert") => {
                        refused_hint(endpoint, &e, own)
                    }
                    (Endpoint::Tls { .. }, _) => format!("{endpoint}: {e}"),
                    (Endpoint::Unix(_), _) => e,
                }
            })?;
            self.keep(index, connection, Instant::now());
            Ok(response)
        };
        match tokio::time::timeout(budget, exchange).await {
            Ok(Ok(response)) => Attempt::Answered(response),
            Ok(Err(why)) => Attempt::Failed(why),
            Err(_) => Attempt::Failed(format!("no answer from {endpoint} within {budget:?}")),
        }
    }

    /// A kept connection to the `index`th endpoint, opened less than
    /// [`IDLE_FOR`] ago, with when it was opened (older ones are closed).
    fn take_idle(&self, index: usize) -> Option<(Connection, Instant)> {
        let mut idle = self.health.idle.lock().unwrap_or_else(|e| e.into_inner());
        let kept = idle.get_mut(index)?;
        let now = Instant::now();
        kept.retain(|(_, opened)| now.saturating_duration_since(*opened) < IDLE_FOR);
        kept.pop()
    }

    /// Keeps `connection` to the `index`th endpoint, opened at `opened`,
    /// for a later request, unless [`IDLE_PER_ENDPOINT`] are kept already.
    fn keep(&self, index: usize, connection: Connection, opened: Instant) {
        let mut idle = self.health.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = idle.get_mut(index)
            && kept.len() < IDLE_PER_ENDPOINT
        {
            kept.push((connection, opened));
        }
    }

    /// Closes every kept connection to the `index`th endpoint.
    fn forget(&self, index: usize) {
        let mut idle = self.health.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = idle.get_mut(index) {
            kept.clear();
        }
    }

    /// How many connections are kept now, over all endpoints.
    pub fn kept_connections(&self) -> usize {
        self.health
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(Vec::len)
            .sum()
    }

    /// A TLS connection to `host:port`, the server's certificate checked
    /// against the pins.
    async fn connect_tls(
        &self,
        host: &str,
        port: u16,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let Some((connector, own)) = &self.tls else {
            return Err(format!(
                "tls:{host}:{port}: no client certificate configured"
            ));
        };
        connect_tls(connector, *own, host, port).await
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
        match self
            .ask_to_sign(identity, generation, message, false)
            .await?
        {
            // Our own KGC's signature, only re-encoded into the message:
            // the recipient's verification checks the subgroup.
            Response::Signed(_, bytes) => Signature::from_own_key_service(&bytes).map_err(|e| {
                KeyError::Unavailable(format!("the KGC sent an invalid signature: {e}"))
            }),
            other => Err(unexpected("SIGN", other)),
        }
    }

    /// Asks the daemon to sign `message` (a digest) as `identity` with its
    /// certified per-message key.
    pub async fn sign_certified(
        &self,
        identity: &Identity,
        generation: Generation,
        message: &[u8],
    ) -> Result<CertifiedSignature, KeyError> {
        match self.ask_to_sign(identity, generation, message, true).await {
            // Checked by the recipient (the certificate's points when it
            // is verified).
            Ok(Response::SignedCertified(_, bytes)) => {
                CertifiedSignature::from_bytes(bytes.as_slice()).map_err(|e| {
                    KeyError::Unavailable(format!("the KGC sent an invalid signature: {e}"))
                })
            }
            Ok(other) => Err(unexpected("SIGN-CERTIFIED", other)),
            Err(KeyError::Invalid(reason)) if is_unknown_operation(&reason) => {
                Err(KeyError::Unavailable(format!(
                    "the KGC does not know SIGN-CERTIFIED ({reason}): upgrade ibemail-kgc \
                     before the milters it serves"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// SIGN or SIGN-CERTIFIED (`certified`), refused if the daemon signed
    /// with another generation than asked: the caller hashed `generation`
    /// into the digest.
    async fn ask_to_sign(
        &self,
        identity: &Identity,
        generation: Generation,
        message: &[u8],
        certified: bool,
    ) -> Result<Response, KeyError> {
        let request = Request::Sign {
            generation,
            identity: identity.as_str().to_string(),
            message: message.to_vec(),
            certified,
        };
        let response = self.ask(&request).await?;
        if let Response::Signed(signed, _) | Response::SignedCertified(signed, _) = &response
            && *signed != generation
        {
            return Err(KeyError::Unavailable(format!(
                "the KGC signed with generation {signed}, not {generation}"
            )));
        }
        Ok(response)
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

    fn sign_certified<'a>(
        &'a self,
        identity: &'a Identity,
        generation: Generation,
        digest: &'a [u8],
    ) -> BoxFuture<'a, Result<CertifiedSignature, KeyError>> {
        Box::pin(KgcClient::sign_certified(
            self, identity, generation, digest,
        ))
    }
}

/// True for an answer no other endpoint could better: a success, or a
/// refusal that every replica would give alike (keys are the same
/// everywhere). Errors that depend on the daemon (not serving the domain,
/// not knowing a generation yet, not granting this client, failing) are
/// not: another endpoint is asked.
fn is_final(response: &Response) -> bool {
    match response {
        // A daemon older than the operation (during a rolling upgrade):
        // an upgraded replica may know it.
        Response::Error(Status::BadRequest, reason) if is_unknown_operation(reason) => false,
        Response::Error(status, _) => {
            matches!(status, Status::Rejected | Status::BadRequest)
        }
        _ => true,
    }
}

/// Whether a daemon's BadRequest reason says it does not know the
/// operation (what every release answers to a newer one).
fn is_unknown_operation(reason: &str) -> bool {
    reason.starts_with("unknown operation")
}

/// A TLS connection to `host:port` with `connector`, whose own certificate
/// is `own` (named in the message when the daemon refuses it).
pub(crate) async fn connect_tls(
    connector: &tokio_rustls::TlsConnector,
    own: Pin,
    host: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let shown = if host.contains(':') {
        format!("tls:[{host}]:{port}")
    } else {
        format!("tls:{host}:{port}")
    };
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {shown}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{shown}: {e}"))?;
    connector.connect(name, tcp).await.map_err(|e| {
        let text = crate::tls::describe_error(&e);
        if text.contains("alert") {
            refused_hint(&shown, &text, own)
        } else {
            format!("{shown}: TLS handshake failed: {text}")
        }
    })
}

/// The message for a TLS alert from the daemon: most likely it does not
/// allow our certificate.
fn refused_hint(endpoint: &dyn fmt::Display, error: &str, own: Pin) -> String {
    format!(
        "{endpoint}: TLS handshake refused ({error}): does that KGC allow this client's \
         certificate {own} (ibemail-kgc serve --allow-cert)?"
    )
}

/// Writes `request` and reads the response (at most `max_frame` bytes).
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &Request,
    max_frame: usize,
) -> Result<Response, String> {
    let sent = async {
        stream
            .write_all(&protocol::frame(&request.encode()))
            .await?;
        stream.flush().await
    }
    .await;
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
    let len = protocol::frame_length_within(prefix, max_frame).map_err(|e| e.to_string())?;
    let mut payload = zeroize::Zeroizing::new(vec![0u8; len]);
    stream
        .read_exact(&mut payload)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    Response::decode(request, &payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An older daemon's answer to an operation it does not know sends the
    /// request on to the next endpoint (an upgraded replica may know it);
    /// other bad requests and rejections are final.
    #[test]
    fn unknown_operations_are_asked_elsewhere() {
        let older = crate::protocol::ProtocolError::Unknown(4).to_string();
        assert!(!is_final(&Response::Error(Status::BadRequest, older)));
        assert!(is_final(&Response::Error(
            Status::BadRequest,
            "malformed SIGN message".into()
        )));
        assert!(is_final(&Response::Error(Status::Rejected, String::new())));
        assert!(!is_final(&Response::Error(Status::Internal, String::new())));
    }

    #[test]
    fn endpoints_parse_and_print_back() {
        for (text, endpoint) in [
            (
                "/run/ibemail/kgc.sock",
                Endpoint::Unix("/run/ibemail/kgc.sock".into()),
            ),
            ("unix:/run/k.sock", Endpoint::Unix("/run/k.sock".into())),
            (
                "tls:kgc1.example.org:4434",
                Endpoint::Tls {
                    host: "kgc1.example.org".into(),
                    port: 4434,
                },
            ),
            (
                "tls:[2001:db8::1]:4434",
                Endpoint::Tls {
                    host: "2001:db8::1".into(),
                    port: 4434,
                },
            ),
        ] {
            assert_eq!(text.parse::<Endpoint>().unwrap(), endpoint, "{text}");
            let shown = endpoint.to_string();
            assert_eq!(shown.parse::<Endpoint>().unwrap(), endpoint, "{shown}");
        }
        for bad in [
            "kgc.sock",
            "tls:host",
            "tls::4434",
            "tls:host:http",
            "tcp:h:1",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tls_endpoints_need_a_certificate() {
        let e = KgcClient::with_endpoints(
            vec![Endpoint::Tls {
                host: "127.0.0.1".into(),
                port: 1,
            }],
            None,
            Duration::from_secs(1),
            false,
        )
        .unwrap_err();
        assert!(e.contains("client certificate"), "{e}");
    }

    #[test]
    fn failed_endpoints_are_tried_last_and_spreading_rotates() {
        let endpoints: Vec<Endpoint> = (0..3)
            .map(|i| Endpoint::Unix(format!("/run/{i}.sock").into()))
            .collect();
        let client =
            KgcClient::with_endpoints(endpoints.clone(), None, Duration::from_secs(1), false)
                .unwrap();
        assert_eq!(client.order(), vec![0, 1, 2]);
        client.mark(0, true);
        assert_eq!(client.order(), vec![1, 2, 0]);
        client.mark(0, false);
        assert_eq!(client.order(), vec![0, 1, 2]);
        let spread =
            KgcClient::with_endpoints(endpoints, None, Duration::from_secs(1), true).unwrap();
        let firsts: Vec<usize> = (0..6).map(|_| spread.order()[0]).collect();
        assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    }
}
