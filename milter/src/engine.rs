//! What the milter decides for one message, independent of the milter
//! protocol: the message as Postfix showed it goes in, a [`Verdict`] (a
//! reply and the modifications to make) comes out.
//!
//! Direction (DESIGN.md §7): a message from an authenticated, internal or
//! local sender to a remote domain is outbound; otherwise mail for local
//! recipients is inbound. Every internal error becomes a tempfail, so
//! Postfix keeps the mail.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ibemail_discovery::{Discovery, Outcome, PinStore};
use ibemail_ibe::{Capsule, Generation, Identity, SharedSecret};
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::service::KeyService;
use ibemail_message::header::{HeaderSection, push_crlf_normalised};
use ibemail_message::signature::{self, SIGNATURE_FIELD};
use ibemail_message::{CapsuleError, IbeRecipient, Limits, OpenError, Recipient};

const SIGNATURE_FIELD_LEN: usize = SIGNATURE_FIELD.len();
use rand_core::OsRng;
use tracing::{info, warn};

use crate::address::Rcpt;
use crate::authres;
use crate::config::{Config, EncryptPolicy, FailureAction, KeySource, SignaturePolicy};
use crate::ledger::{self, Claim, Ledger};
use crate::metrics::Metrics;
use crate::reinject;
use crate::signing::{SigResult, Signer, combine};
use crate::transit;

/// Where a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Submitted on this host (sendmail, pickup), or over a local socket.
    Local,
    /// An SMTP client in an internal network, or one that authenticated.
    Internal,
    /// Any other SMTP client.
    External,
}

/// One message as the milter saw it.
#[derive(Clone, Debug, Default)]
pub struct Message {
    /// Postfix queue id (macro `i`), for logs.
    pub queue_id: String,
    /// `MAIL FROM` argument as given (`<addr>` or `<>`).
    pub sender: String,
    /// The SASL login name (`{auth_authen}`), if the client authenticated.
    pub auth_authen: Option<String>,
    /// `RCPT TO` arguments as given.
    pub recipients: Vec<String>,
    /// Header fields: name and value exactly as sent (leading space kept).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (CRLF line endings, as Postfix sends it).
    pub body: Vec<u8>,
    /// Header and body bytes seen, including what was not kept.
    pub size: usize,
}

impl Message {
    /// The message as bytes: header fields, blank line, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size + 2 * self.headers.len() + 2);
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            // Postfix folds with a bare LF inside header values.
            push_crlf_normalised(&mut out, value);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// A modification of the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the `index`-th (1-based) field called `name`.
    DeleteHeader {
        /// Field name.
        name: String,
        /// Occurrence, 1-based.
        index: i32,
    },
    /// Append a field.
    AddHeader {
        /// Field name.
        name: String,
        /// Value, with its leading space and LF folding.
        value: Vec<u8>,
    },
    /// Insert a field at `index` (0 = top).
    InsertHeader {
        /// Position.
        index: i32,
        /// Field name.
        name: String,
        /// Value, with its leading space.
        value: Vec<u8>,
    },
    /// Replace the body.
    ReplaceBody(Vec<u8>),
    /// Remove an envelope recipient (as given in `RCPT TO`).
    DeleteRecipient(String),
    /// Put the message on hold, with a reason.
    Quarantine(String),
    /// Replace the envelope sender (and drop its ESMTP parameters).
    ChangeSender(String),
}

/// The reply to Postfix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Accept with the modifications.
    Continue,
    /// 4xx: keep the mail and retry later.
    Tempfail(String),
    /// 5xx.
    Reject(String),
}

/// The outcome of one message, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Nothing to do.
    Untouched,
    /// Sealed for all its (remote) recipients.
    Encrypted,
    /// Sealed for some recipients, a plaintext copy re-injected for the rest.
    Split,
    /// Remote recipients without ibemail: sent as it is.
    Plaintext,
    /// Opened for local recipients.
    Decrypted,
    /// Could not be opened: quarantined (or rejected, as configured).
    Undecryptable,
    /// Temporary failure.
    Tempfail,
    /// Rejected (oversize).
    Rejected,
    /// Quarantined for lack of a required valid signature.
    Unsigned,
}

impl Kind {
    /// Label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Untouched => "untouched",
            Kind::Encrypted => "encrypted",
            Kind::Split => "split",
            Kind::Plaintext => "plaintext",
            Kind::Decrypted => "decrypted",
            Kind::Undecryptable => "undecryptable",
            Kind::Tempfail => "tempfail",
            Kind::Rejected => "rejected",
            Kind::Unsigned => "unsigned",
        }
    }

    /// Every kind, for metrics.
    pub const ALL: [Kind; 9] = [
        Kind::Untouched,
        Kind::Encrypted,
        Kind::Split,
        Kind::Plaintext,
        Kind::Decrypted,
        Kind::Undecryptable,
        Kind::Tempfail,
        Kind::Rejected,
        Kind::Unsigned,
    ];
}

/// What to do with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The reply.
    pub reply: Reply,
    /// Modifications, in order (only applied with [`Reply::Continue`]).
    pub actions: Vec<Action>,
    /// For logs and metrics.
    pub kind: Kind,
    /// What the per-message log line says beyond the outcome.
    pub note: Note,
}

/// What the per-message log line says beyond the outcome: the signature
/// made or checked, and what was done for which domains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Note {
    /// `signed n=G`, or the `ibesig=` word and the signer's domain.
    pub signature: Option<String>,
    /// What was done, per domain.
    pub detail: String,
}

impl Verdict {
    fn untouched(actions: Vec<Action>) -> Self {
        Verdict {
            reply: Reply::Continue,
            actions,
            kind: Kind::Untouched,
            note: Note::default(),
        }
    }

    fn tempfail(reason: impl Into<String>) -> Self {
        Verdict {
            reply: Reply::Tempfail(reason.into()),
            actions: Vec::new(),
            kind: Kind::Tempfail,
            note: Note::default(),
        }
    }
}

/// The verdict for a recipient our identity rules refuse (a quoted or
/// over-long local part) in a domain whose mail must or can be encrypted:
/// it can never be sealed to, so retrying would not help, and sending it
/// in clear is what the policy forbids.
fn unencryptable(rcpt: &str, domain: &str) -> Verdict {
    Verdict {
        reply: Reply::Reject(format!(
            "{rcpt} cannot be used as an encryption identity, and {domain} takes \
             only encrypted mail from this server"
        )),
        actions: Vec::new(),
        kind: Kind::Rejected,
        note: Note::default(),
    }
}

/// Opens one capsule for the message crate, off the async threads.
type CapsuleOpener =
    dyn FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError> + Send;

/// How capsules are opened and messages signed.
pub(crate) enum Keys {
    None,
    InProcess(Arc<KeyService>),
    Daemon(KgcClient),
}

/// Everything the milter needs to decide, built from one [`Config`]
/// (rebuilt on reload).
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) discovery: Discovery,
    pub(crate) keys: Keys,
    limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    /// Copies re-injected lately (only with a re-injection target).
    ledger: Option<Arc<Ledger>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Header field value as Postfix wants it from a milter: leading space
/// kept, folding with bare LF.
fn milter_value(raw_value: &[u8]) -> Vec<u8> {
    let value = raw_value
        .strip_suffix(b"\n")
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
        .unwrap_or(raw_value);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

/// The header fields of `message` as (name, value) for milter actions, and
/// the body.
fn split_message(message: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let section = HeaderSection::parse(message);
    let fields = section
        .fields
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(f.name).into_owned(),
                milter_value(f.value()),
            )
        })
        .collect();
    (fields, &message[section.body_offset..])
}

/// Actions deleting every field of `headers` (highest occurrence first, so
/// indices stay valid), optionally only those `select`ed. Linear in the
/// number of fields (a message may carry very many).
fn delete_headers(
    headers: &[(String, Vec<u8>)],
    select: impl Fn(usize, &str, &[u8]) -> bool,
) -> Vec<Action> {
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let mut actions = Vec::new();
    for (position, (name, value)) in headers.iter().enumerate() {
        let index = seen.entry(name.to_ascii_lowercase()).or_insert(0);
        *index = index.saturating_add(1);
        if select(position, name, value) {
            actions.push(Action::DeleteHeader {
                name: name.clone(),
                index: *index,
            });
        }
    }
    actions.reverse();
    actions
}

/// The pin store of `path`, shared by every engine of the process: a
/// reload's new engine must not keep a second copy that overwrites the
/// first's file (the last writer would win, losing pins).
fn shared_pins(path: &Path) -> Result<Arc<PinStore>, String> {
    static OPEN: std::sync::Mutex<Vec<(std::path::PathBuf, std::sync::Weak<PinStore>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    open.retain(|(_, store)| store.strong_count() > 0);
    if let Some(store) = open
        .iter()
        .find(|(p, _)| p == path)
        .and_then(|(_, store)| store.upgrade())
    {
        return Ok(store);
    }
    let store =
        Arc::new(PinStore::open(path).map_err(|e| format!("pin file {}: {e}", path.display()))?);
    open.push((path.to_path_buf(), Arc::downgrade(&store)));
    Ok(store)
}

impl Engine {
    /// Builds the engine: resolvers, pins, key access.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Engine, String> {
        let pins = match &config.pins {
            Some(path) => {
                // The pins must survive restarts: their directory must exist.
                if !path.parent().is_some_and(Path::is_dir) {
                    return Err(format!(
                        "pin file {}: its directory does not exist (create state_dir, \
                         writable by the milter's user only, or set dns.pins)",
                        path.display()
                    ));
                }
                Some(shared_pins(path)?)
            }
            None => None,
        };
        let discovery =
            Discovery::new(config.discovery_config(), pins).map_err(|e| e.to_string())?;
        let keys = match &config.keys {
            None => Keys::None,
            Some(KeySource::Dirs(dirs)) => Keys::InProcess(Arc::new(
                KeyService::load(dirs, 10_000).map_err(|e| format!("kgc: {e}"))?,
            )),
            Some(KeySource::Daemon(kgc)) => Keys::Daemon(
                kgc.client(config.kgc_timeout)
                    .map_err(|e| format!("kgc: {e}"))?,
            ),
        };
        let limits = Limits {
            max_message_bytes: config.max_message_size,
            ..Limits::default()
        };
        // Only a split re-injects, and only with a target to re-inject to.
        let ledger = match config.reinject {
            None => None,
            Some(_) => Some(
                Ledger::shared(&config.state_dir, config.reinject_window.as_secs(), now())
                    .map_err(|e| {
                        format!(
                            "state_dir {}: {e} (create it, writable by the milter's user \
                             only, or set state_dir)",
                            config.state_dir.display()
                        )
                    })?,
            ),
        };
        Ok(Engine {
            config,
            discovery,
            keys,
            limits,
            metrics,
            ledger,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides what to do with `message` from `origin`.
    pub async fn process(&self, message: &Message, origin: Origin) -> Verdict {
        let started = Instant::now();
        let verdict = self.decide(message, origin).await;
        self.metrics
            .observe(verdict.kind, started.elapsed().as_secs_f64());
        crate::message_log::message_processed(&self.config, message, origin, &verdict);
        verdict
    }

    /// Decides what to do with `message`, which arrived on the re-injection
    /// listener: a copy this milter re-injected (its first field redeems
    /// an outstanding token) passes untouched; anything else there was
    /// sent by some local process and is handled as mail submitted on this
    /// host, so it cannot bypass the policy.
    pub async fn process_reinjected(&self, message: &Message) -> Verdict {
        let ours = message.headers.first().is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case(reinject::TOKEN_FIELD) && reinject::redeem(value)
        });
        let strip = delete_headers(&message.headers, |_, name, _| {
            name.eq_ignore_ascii_case(reinject::TOKEN_FIELD)
        });
        if ours {
            return Verdict::untouched(strip);
        }
        warn!(
            queue_id = %message.queue_id,
            "mail on the re-injection listener without a valid token: handled as \
             mail submitted on this host"
        );
        let mut verdict = self.process(message, Origin::Local).await;
        if verdict.reply == Reply::Continue {
            // Unless the verdict rebuilds the header anyway.
            let mut actions: Vec<Action> = strip
                .into_iter()
                .filter(|a| !verdict.actions.contains(a))
                .collect();
            actions.append(&mut verdict.actions);
            verdict.actions = actions;
        }
        verdict
    }

    async fn decide(&self, message: &Message, origin: Origin) -> Verdict {
        if message.size > self.config.max_message_size {
            let reason = format!(
                "message of {} bytes exceeds the ibemail limit of {} bytes",
                message.size, self.config.max_message_size
            );
            return match self.config.oversize {
                FailureAction::Reject => Verdict {
                    reply: Reply::Reject(reason),
                    actions: Vec::new(),
                    kind: Kind::Rejected,
                    note: Note::default(),
                },
                _ => Verdict::tempfail(reason),
            };
        }
        let (local, remote): (Vec<Rcpt>, Vec<Rcpt>) = message
            .recipients
            .iter()
            .map(|arg| Rcpt::parse(arg))
            .partition(|r| r.domain.as_deref().is_some_and(|d| self.config.is_local(d)));
        if origin != Origin::External && !remote.is_empty() {
            self.outbound(message, origin, &local, &remote).await
        } else if !local.is_empty() {
            self.inbound(message, origin, &local, remote.len()).await
        } else {
            Verdict::untouched(Vec::new())
        }
    }

    async fn outbound(
        &self,
        message: &Message,
        origin: Origin,
        local: &[Rcpt],
        remote: &[Rcpt],
    ) -> Verdict {
        let raw = message.to_bytes();
        // Already end-to-end encrypted by the user: leave it alone. The
        // body decides, not the Content-Type: opaque-signed S/MIME has the
        // same type and is readable by anyone.
        if ibemail_message::is_cms_encrypted(&raw) {
            return Verdict::untouched(Vec::new());
        }
        // Who signs (inside): the sealed copy gets a signature marked for
        // sealing (e=1), the re-injected copy and plaintext mail one
        // without, so a sealed copy decrypted on the way fails.
        let signer = match self.signer(message, origin, &raw) {
            None => None,
            Some(identity) => match self.signing_generation(&identity).await {
                Ok(generation) => Some(Signer {
                    identity,
                    generation,
                }),
                Err(e) => return Verdict::tempfail(format!("signing as {identity} failed: {e}")),
            },
        };
        let now = now();
        let mut sealed_for: Vec<IbeRecipient> = Vec::new();
        let mut plain: Vec<String> = local.iter().map(|r| r.arg.clone()).collect();
        // Remote domains that get the message in clear, for the log.
        let mut clear_domains: Vec<String> = Vec::new();
        for rcpt in remote {
            // No domain (a bare name, an address literal): no policy to
            // look up; it gets what it would get without ibemail.
            let Some(domain) = rcpt.domain.as_deref() else {
                plain.push(rcpt.arg.clone());
                continue;
            };
            let policy = self.config.policy_for(domain);
            if policy.encrypt == EncryptPolicy::Never {
                plain.push(rcpt.arg.clone());
                clear_domains.push(domain.to_string());
                continue;
            }
            if rcpt.identity.is_none() && policy.encrypt == EncryptPolicy::Require {
                return unencryptable(&rcpt.arg, domain);
            }
            let found = self.discovery.lookup(domain, policy.lookup, now).await;
            self.metrics.lookup(&found);
            let summary = found.summary();
            match (found.outcome, &rcpt.identity) {
                (Outcome::Parameters { record, .. }, Some(identity)) => {
                    sealed_for.push(IbeRecipient {
                        identity: identity.clone(),
                        generation: record.generation,
                        params: record.params,
                    })
                }
                // The domain takes encrypted mail, but this address can
                // never be sealed to: refuse rather than send it in clear.
                (Outcome::Parameters { .. }, None) => return unencryptable(&rcpt.arg, domain),
                (Outcome::NotIbe(_), _) if policy.encrypt == EncryptPolicy::Opportunistic => {
                    plain.push(rcpt.arg.clone());
                    clear_domains.push(domain.to_string());
                }
                (Outcome::NotIbe(_), _) => {
                    return Verdict::tempfail(format!(
                        "{domain} requires encryption but publishes no usable parameters"
                    ));
                }
                (Outcome::Temporary(_) | Outcome::Refused(_), _) => {
                    return Verdict::tempfail(summary);
                }
            }
        }
        let signature_note = signer
            .as_ref()
            .map(|s| format!("signed n={}", s.generation));
        clear_domains.sort();
        clear_domains.dedup();
        if sealed_for.is_empty() {
            let actions = match &signer {
                None => Vec::new(),
                Some(signer) => match self.sign(signer, &raw, false).await {
                    Ok(value) => vec![Action::InsertHeader {
                        index: 0,
                        name: SIGNATURE_FIELD.into(),
                        value: milter_value(value.as_bytes()),
                    }],
                    Err(e) => {
                        return Verdict::tempfail(format!(
                            "signing as {} failed: {e}",
                            signer.identity
                        ));
                    }
                },
            };
            return Verdict {
                reply: Reply::Continue,
                actions,
                kind: Kind::Plaintext,
                note: Note {
                    signature: signature_note,
                    detail: format!("sent in clear to {}", clear_domains.join(",")),
                },
            };
        }
        let mut sealed_domains: Vec<String> = sealed_for
            .iter()
            .map(|r| format!("{} (generation {})", r.identity.domain(), r.generation))
            .collect();
        sealed_domains.sort();
        sealed_domains.dedup();
        let mut detail = format!("sealed for {}", sealed_domains.join(", "));
        // Unsigned, the sealing task and the re-injected copy share one
        // copy of a possibly large message.
        let raw = Arc::new(raw);

        // Seal first: a failure here must not leave a re-injected copy.
        let content = match self.signed_copy(signer.as_ref(), &raw, true).await {
            Ok(content) => content,
            Err(verdict) => return verdict,
        };
        // Keep the plaintext only for a re-injected copy. Otherwise the
        // sealing task holds the only reference and encrypts the message
        // where it lies, without copying it.
        let reinject_source = (!plain.is_empty()).then_some(raw);
        let limits = self.limits;
        let sealed = tokio::task::spawn_blocking(move || {
            let dyn_recipients: Vec<&dyn Recipient> =
                sealed_for.iter().map(|r| r as &dyn Recipient).collect();
            let content = Arc::unwrap_or_clone(content);
            ibemail_message::seal_owned(content, &dyn_recipients, &mut OsRng, &limits)
        })
        .await;
        let sealed = match sealed {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(e)) => return Verdict::tempfail(format!("sealing failed: {e}")),
            Err(e) => return Verdict::tempfail(format!("sealing task failed: {e}")),
        };
        // Then sign the outside, so that re-encrypting is detected.
        let outer_signature = match &signer {
            None => None,
            Some(signer) => match self.sign(signer, &sealed.to_bytes(), false).await {
                Ok(value) => Some(value),
                Err(e) => {
                    return Verdict::tempfail(format!("signing the sealed message failed: {e}"));
                }
            },
        };

        let mut actions = Vec::new();
        let kind = if let Some(raw) = reinject_source {
            let copy = match self.signed_copy(signer.as_ref(), &raw, false).await {
                Ok(copy) => copy,
                Err(verdict) => return verdict,
            };
            if let Err(verdict) = self.reinject_once(message, &plain, &copy).await {
                return verdict;
            }
            actions.extend(plain.into_iter().map(Action::DeleteRecipient));
            detail.push_str("; plaintext copy re-injected");
            if !clear_domains.is_empty() {
                detail.push_str(&format!(" for {}", clear_domains.join(",")));
            }
            Kind::Split
        } else {
            Kind::Encrypted
        };
        actions.extend(delete_headers(&message.headers, |_, _, _| true));
        actions.extend(outer_signature.map(|value| Action::AddHeader {
            name: SIGNATURE_FIELD.into(),
            value: milter_value(value.as_bytes()),
        }));
        let (outer, _) = split_message(&sealed.header);
        actions.extend(
            outer
                .into_iter()
                .map(|(name, value)| Action::AddHeader { name, value }),
        );
        actions.push(Action::ReplaceBody(sealed.body));
        Verdict {
            reply: Reply::Continue,
            actions,
            kind,
            note: Note {
                signature: signature_note,
                detail,
            },
        }
    }

    async fn inbound(
        &self,
        message: &Message,
        origin: Origin,
        local: &[Rcpt],
        remote_recipients: usize,
    ) -> Verdict {
        let authserv_id = self.config.authserv_id.clone();
        // RFC 8601 §5: results claiming to be ours that reach us are forged,
        // wherever they sit and whoever sent them. (Position tells nothing:
        // Postfix hides its own Received field from milters, so an
        // attacker's field can sit on top. Milters before this one at this
        // host report under their own authserv-id.)
        let remove_forged = delete_headers(&message.headers, |_, name, value| {
            name.eq_ignore_ascii_case(authres::FIELD) && authres::claims(value, &authserv_id)
        });
        let raw = message.to_bytes();
        let now = now();
        if !ibemail_message::is_encrypted(&raw) {
            return self
                .as_is(message, &raw, origin, remove_forged, false, now)
                .await;
        }
        if remote_recipients > 0 {
            // Relayed on to other domains as well: opening it here would
            // send the plaintext on. Deliver the ciphertext unchanged; the
            // local recipients can open it with `ibemail-milter decrypt`.
            warn!(
                queue_id = %message.queue_id,
                remote_recipients,
                "encrypted message also for other domains: not opened"
            );
            return self
                .as_is(message, &raw, origin, remove_forged, true, now)
                .await;
        }
        // Who opens capsules: the keys in this process or the KGC daemon.
        let open_capsule: Box<CapsuleOpener> = match &self.keys {
            Keys::None => return Verdict::tempfail("no KGC configured to open inbound mail"),
            Keys::InProcess(service) => {
                let service = service.clone();
                Box::new(move |id: &Identity, generation, capsule: &Capsule| {
                    service.open_capsule(id, generation, capsule)
                })
            }
            Keys::Daemon(client) => {
                let client = client.clone();
                let handle = tokio::runtime::Handle::current();
                Box::new(move |id: &Identity, generation, capsule: &Capsule| {
                    handle.block_on(client.open(id, generation, capsule))
                })
            }
        };
        // The signature outside is checked first, because opening consumes
        // the sealed copy: it is decoded and decrypted where it lies.
        let outer_result = self.verify(&raw, true, now).await;
        let outer_policy = self.signature_policy(&raw, origin);
        let identities: Vec<Identity> = local.iter().filter_map(|r| r.identity.clone()).collect();
        let limits = self.limits;
        let opened = tokio::task::spawn_blocking(move || {
            ibemail_message::open_owned(raw, &identities, &limits, open_capsule)
        })
        .await;
        let opened = match opened {
            Ok(result) => result,
            Err(e) => return Verdict::tempfail(format!("opening task failed: {e}")),
        };
        match opened {
            Ok(opened) => {
                // Plaintext only for the recipients it was sealed to. A
                // recipient added on the way (a replay of someone else's
                // mail) must not get it, and deleting a recipient from the
                // transaction is not reliable enough to guard that (Postfix
                // matches the deletion against its own form of the address,
                // which differs for source routes, quoting or 8-bit local
                // parts): so the message is not opened at all. Everybody
                // gets the ciphertext as it arrived; those it was sealed to
                // can open it with `ibemail-milter decrypt`.
                let not_sealed_to = local
                    .iter()
                    .filter(|r| {
                        !r.identity
                            .as_ref()
                            .is_some_and(|id| opened.sealed_to.contains(id))
                    })
                    .count();
                if not_sealed_to > 0 {
                    warn!(
                        queue_id = %message.queue_id,
                        recipients = not_sealed_to,
                        "encrypted message also for local recipients it was not sealed to \
                         (a replay?): delivered unopened"
                    );
                    return self.report_as_is(
                        message,
                        outer_result,
                        outer_policy,
                        remove_forged,
                        true,
                    );
                }
                let inner_result = self.verify(&opened.message, true, now).await;
                let signed = combine(outer_result, inner_result);
                self.metrics.signature(&signed);
                let policy = self.signature_policy(&opened.message, origin);
                let (inner, body) = split_message(&opened.message);
                let delivered = transit::delivered(
                    &message.headers,
                    inner,
                    &authserv_id,
                    &self.config.trusted_authserv_ids,
                );
                if !delivered.dropped.is_empty() {
                    warn!(
                        queue_id = %message.queue_id,
                        fields = %delivered.dropped.join(", "),
                        "outer header fields added on the way dropped on decryption"
                    );
                }
                // No recipient named: every recipient gets this copy, and
                // one of them may be another's Bcc.
                let mut results = vec![format!(
                    "x-ibemail=pass (decrypted) x-ibemail.generation={}",
                    opened.generation
                )];
                // The envelope sender is replaced below; say what it was
                // (when it is a plain address that cannot break the field).
                if let Some(sender) = crate::address::plain(&message.sender) {
                    results[0].push_str(&format!(" smtp.mailfrom={sender}"));
                }
                if signed != SigResult::None || policy == SignaturePolicy::Require {
                    results.push(signed.resinfo("inside and outside the encryption"));
                }
                let mut actions = delete_headers(&message.headers, |_, _, _| true);
                actions.push(Action::AddHeader {
                    name: authres::FIELD.into(),
                    value: authres::value(&authserv_id, &results),
                });
                actions.extend(
                    delivered
                        .transit
                        .into_iter()
                        .chain(delivered.inner)
                        .map(|(name, value)| Action::AddHeader { name, value }),
                );
                actions.push(Action::ReplaceBody(body.to_vec()));
                // Delivery status notifications of the plaintext (a success
                // notice the client asked for, a bounce if delivery fails)
                // would carry the decrypted header or message to the
                // envelope sender, whom a replay chooses: they go to a
                // local address instead.
                actions.push(Action::ChangeSender(self.bounce_address(local)));
                let mut domains: Vec<&str> =
                    local.iter().filter_map(|r| r.domain.as_deref()).collect();
                domains.sort_unstable();
                domains.dedup();
                let mut verdict =
                    self.apply_signature_policy(message, policy, &signed, actions, Kind::Decrypted);
                verdict.note.detail = format!(
                    "opened for {} (generation {})",
                    domains.join(","),
                    opened.generation
                );
                verdict
            }
            Err(e) if e.is_temporary() => Verdict::tempfail(format!("KGC unavailable: {e}")),
            // Someone else's S/MIME, or not for our recipients: deliver as is.
            Err(OpenError::NotOurs | OpenError::NotEncrypted | OpenError::NoMatchingRecipient) => {
                self.report_as_is(message, outer_result, outer_policy, remove_forged, true)
            }
            Err(e) => {
                let reason = format!("ibemail: cannot decrypt: {e}");
                warn!(queue_id = %message.queue_id, reason = %reason, "undecryptable message");
                match self.config.undecryptable {
                    FailureAction::Quarantine => {
                        let mut actions = remove_forged;
                        actions.push(Action::InsertHeader {
                            index: 0,
                            name: authres::FIELD.into(),
                            value: authres::value(
                                &authserv_id,
                                &[format!("x-ibemail=fail (cannot decrypt: {e})")],
                            ),
                        });
                        actions.push(Action::Quarantine(reason));
                        Verdict {
                            reply: Reply::Continue,
                            actions,
                            kind: Kind::Undecryptable,
                            note: Note::default(),
                        }
                    }
                    FailureAction::Tempfail => Verdict {
                        reply: Reply::Tempfail(reason),
                        actions: Vec::new(),
                        kind: Kind::Undecryptable,
                        note: Note::default(),
                    },
                    FailureAction::Reject => Verdict {
                        reply: Reply::Reject(reason),
                        actions: Vec::new(),
                        kind: Kind::Undecryptable,
                        note: Note::default(),
                    },
                }
            }
        }
    }

    /// Where notifications about a decrypted message go: the configured
    /// address, else the postmaster of the first local recipient's domain.
    fn bounce_address(&self, local: &[Rcpt]) -> String {
        match &self.config.bounce_to {
            Some(address) => format!("<{address}>"),
            None => {
                let domain = local
                    .iter()
                    .find_map(|r| r.domain.clone())
                    .or_else(|| self.config.local_domains.first().cloned())
                    .unwrap_or_else(|| "localhost".into());
                format!("<postmaster@{domain}>")
            }
        }
    }

    /// Re-injects `copy` of `message` for `recipients`, once: a retry of a
    /// transaction that failed after its copy was accepted finds the copy
    /// in the ledger and does not send it again.
    async fn reinject_once(
        &self,
        message: &Message,
        recipients: &[String],
        copy: &[u8],
    ) -> Result<(), Verdict> {
        let what = "plaintext copy for recipients without ibemail";
        let (Some(target), Some(ledger)) = (self.config.reinject, &self.ledger) else {
            return Err(Verdict::tempfail(format!(
                "a {what} is needed, but reinject.address is not set"
            )));
        };
        let key = ledger::copy_key(&message.sender, recipients, &message.headers, &message.body);
        let pending = match key.map(|key| ledger.claim(key, now())) {
            None => None,
            Some(Claim::Pending(pending)) => Some(pending),
            Some(Claim::Sent) => {
                info!(
                    queue_id = %message.queue_id,
                    recipients = recipients.len(),
                    "{what} re-injected by an earlier attempt: not sent again"
                );
                return Ok(());
            }
            Some(Claim::Busy) => {
                return Err(Verdict::tempfail(
                    "another attempt of this message is being re-injected right now",
                ));
            }
        };
        let envelope = reinject::Envelope {
            sender: message.sender.clone(),
            recipients: recipients.to_vec(),
        };
        reinject::send(
            target,
            &self.config.reinject_helo,
            &envelope,
            copy,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| Verdict::tempfail(format!("re-injecting the {what} failed: {e}")))?;
        if let Some(pending) = pending
            && let Err(e) = pending.sent(now())
        {
            warn!(error = %e, "cannot record the re-injected copy: a retry may send it again");
        }
        info!(
            queue_id = %message.queue_id,
            recipients = recipients.len(),
            "{what} re-injected"
        );
        Ok(())
    }
}

impl Engine {
    /// `raw` as it leaves: as it is without a signer, or with the signer's
    /// `IBE-Signature` on top (`sealed`: made for the sealed copy).
    async fn signed_copy(
        &self,
        signer: Option<&Signer>,
        raw: &Arc<Vec<u8>>,
        sealed: bool,
    ) -> Result<Arc<Vec<u8>>, Verdict> {
        let Some(signer) = signer else {
            return Ok(raw.clone());
        };
        let value = self.sign(signer, raw, sealed).await.map_err(|e| {
            Verdict::tempfail(format!("signing as {} failed: {e}", signer.identity))
        })?;
        let mut signed = Vec::with_capacity(raw.len() + value.len() + SIGNATURE_FIELD_LEN + 3);
        signed.extend_from_slice(SIGNATURE_FIELD.as_bytes());
        signed.push(b':');
        signed.extend_from_slice(value.as_bytes());
        signed.extend_from_slice(b"\r\n");
        signed.extend_from_slice(raw);
        Ok(Arc::new(signed))
    }

    /// The signature policy for a message's sender domain (its From).
    /// Mail of our own users (internal or local origin) is only reported
    /// on: mail that stays inside is never signed, so requiring a
    /// signature there would hold all of it.
    fn signature_policy(&self, message: &[u8], origin: Origin) -> SignaturePolicy {
        if origin != Origin::External {
            return SignaturePolicy::Report;
        }
        match signature::from_address(message) {
            Ok(from) => self.config.policy_for(from.domain()).signature,
            // No single From address to choose a policy by: the strictest
            // configured one applies, or a mangled From would slip past a
            // domain's `require`.
            Err(_) => {
                let require = std::iter::once(&self.config.default_policy)
                    .chain(self.config.domains.values())
                    .any(|p| p.signature == SignaturePolicy::Require);
                if require {
                    SignaturePolicy::Require
                } else {
                    SignaturePolicy::Report
                }
            }
        }
    }

    /// A message delivered as it arrived (not encrypted, or encrypted but
    /// not opened here): its signatures are checked and the policy of its
    /// sender domain applies.
    async fn as_is(
        &self,
        message: &Message,
        raw: &[u8],
        origin: Origin,
        remove_forged: Vec<Action>,
        encrypted: bool,
        now: u64,
    ) -> Verdict {
        let result = self.verify(raw, encrypted, now).await;
        let policy = self.signature_policy(raw, origin);
        self.report_as_is(message, result, policy, remove_forged, encrypted)
    }

    /// [`Engine::as_is`] with the signature verified already.
    fn report_as_is(
        &self,
        message: &Message,
        result: SigResult,
        policy: SignaturePolicy,
        remove_forged: Vec<Action>,
        encrypted: bool,
    ) -> Verdict {
        self.metrics.signature(&result);
        if result == SigResult::None && policy == SignaturePolicy::Report {
            return Verdict::untouched(remove_forged);
        }
        let layer = if encrypted {
            "outside the encryption, not opened here"
        } else {
            "unencrypted"
        };
        let mut actions = remove_forged;
        actions.push(Action::InsertHeader {
            index: 0,
            name: "Authentication-Results".into(),
            value: format!(" {}; {}", self.config.authserv_id, result.resinfo(layer)).into_bytes(),
        });
        self.apply_signature_policy(message, policy, &result, actions, Kind::Untouched)
    }

    /// Applies `policy` to a signature `result`: with `require`, anything
    /// but a pass is quarantined (a temporary error is a tempfail).
    fn apply_signature_policy(
        &self,
        message: &Message,
        policy: SignaturePolicy,
        result: &SigResult,
        mut actions: Vec<Action>,
        kind: Kind,
    ) -> Verdict {
        let note = Note {
            signature: match result {
                SigResult::None => None,
                SigResult::Pass { identity, .. } => Some(format!(
                    "ibesig=pass {}",
                    identity
                        .rsplit_once('@')
                        .map_or(identity.as_str(), |(_, d)| d)
                )),
                other => Some(format!("ibesig={}", other.word())),
            },
            detail: String::new(),
        };
        match (policy, result) {
            (SignaturePolicy::Report, _) | (_, SigResult::Pass { .. }) => Verdict {
                reply: Reply::Continue,
                actions,
                kind,
                note,
            },
            (SignaturePolicy::Require, SigResult::TempError(reason)) => {
                Verdict::tempfail(format!("signature check incomplete: {reason}"))
            }
            (SignaturePolicy::Require, other) => {
                let reason = format!(
                    "ibemail: sender signature required, result {}",
                    other.resinfo("")
                );
                warn!(queue_id = %message.queue_id, reason = %reason, "signature required");
                actions.push(Action::Quarantine(reason));
                Verdict {
                    reply: Reply::Continue,
                    actions,
                    kind: Kind::Unsigned,
                    note,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn messages_are_rebuilt_with_crlf_and_folding() {
        let m = Message {
            headers: vec![
                ("Subject".into(), b" a\n\tb".to_vec()),
                ("To".into(), b" x@y".to_vec()),
            ],
            body: b"hi\r\n".to_vec(),
            ..Message::default()
        };
        assert_eq!(m.to_bytes(), b"Subject: a\r\n\tb\r\nTo: x@y\r\n\r\nhi\r\n");
        let bytes = m.to_bytes();
        let (fields, body) = split_message(&bytes);
        assert_eq!(fields, m.headers);
        assert_eq!(body, b"hi\r\n");
    }

    #[test]
    fn deletions_go_from_the_last_occurrence() {
        let headers = vec![
            ("Received".to_string(), b" a".to_vec()),
            ("To".to_string(), b" b".to_vec()),
            ("received".to_string(), b" c".to_vec()),
        ];
        assert_eq!(
            delete_headers(&headers, |_, _, _| true),
            vec![
                Action::DeleteHeader {
                    name: "received".into(),
                    index: 2
                },
                Action::DeleteHeader {
                    name: "To".into(),
                    index: 1
                },
                Action::DeleteHeader {
                    name: "Received".into(),
                    index: 1
                },
            ]
        );
    }
}
