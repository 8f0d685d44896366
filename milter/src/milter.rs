//! The milter protocol side: thin indymilter callbacks around a
//! per-connection [`Session`] state machine, and [`run`].
//!
//! A session collects one message (envelope, header fields, body up to the
//! size cap); at end of message the [`Engine`] decides and the callbacks
//! apply its actions. The engine in use is swapped atomically on reload;
//! messages in progress finish with the engine they started with.

use std::ffi::{CStr, CString};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, Listener, MacroStage,
    NegotiateContext, ProtoOpts, SetErrorReply, SocketInfo, Status,
};
use tracing::{error, info, warn};

use crate::engine::{
    Action, Engine, Kind, Message, Origin, Reply, Verdict, postfix_counts_fields_right,
};

/// Where a session is in the SMTP conversation.
#[derive(Debug, Default)]
enum Stage {
    /// Between messages.
    #[default]
    Idle,
    /// Collecting a message.
    Message(Box<Message>),
}

/// Who Postfix says the client is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Peer {
    /// Mail submitted on this host: sendmail(1) and pickup, which Postfix's
    /// cleanup presents to `non_smtpd_milters` as a client `127.0.0.1`
    /// with port 0 (no TCP client has port 0), or a Unix-domain client.
    Local,
    /// An SMTP client at this address.
    Network(IpAddr),
    /// No connect information, or an address family Postfix could not
    /// tell: trusted with nothing.
    #[default]
    Unknown,
}

impl Peer {
    fn of(socket: &SocketInfo) -> Peer {
        match socket {
            SocketInfo::Inet(addr) if addr.port() == 0 && addr.ip().is_loopback() => Peer::Local,
            SocketInfo::Inet(addr) => Peer::Network(addr.ip()),
            SocketInfo::Unix(_) => Peer::Local,
            SocketInfo::Unknown => Peer::Unknown,
        }
    }
}

/// Per-connection state.
#[derive(Debug)]
pub struct Session {
    peer: Peer,
    /// The connection came in on the re-injection listener.
    reinjection: bool,
    origin: Origin,
    stage: Stage,
    /// The stages Postfix does not wait on (negotiated).
    no_reply: ProtoOpts,
    /// The MTA (macro `v`) addresses changed and deleted header fields as
    /// shown to milters ([`postfix_counts_fields_right`]).
    edits_in_place: bool,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            peer: Peer::Unknown,
            reinjection: false,
            origin: Origin::External,
            stage: Stage::Idle,
            no_reply: ProtoOpts::empty(),
            edits_in_place: false,
        }
    }
}

impl Session {
    fn message(&mut self) -> Option<&mut Message> {
        match &mut self.stage {
            Stage::Message(m) => Some(m),
            Stage::Idle => None,
        }
    }
}

/// The engine in use, replaced on reload.
pub type SharedEngine = Arc<RwLock<Arc<Engine>>>;

fn engine(shared: &SharedEngine) -> Arc<Engine> {
    shared.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Bytes as a C string for the milter protocol (NUL cannot be sent).
fn cstring(bytes: &[u8]) -> CString {
    CString::new(
        bytes
            .iter()
            .copied()
            .filter(|&b| b != 0)
            .collect::<Vec<u8>>(),
    )
    .unwrap_or_default()
}

fn macro_value(macros: &indymilter::Macros, name: &CStr) -> Option<String> {
    macros
        .get(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// The stages whose answer is always "continue": the milter decides
/// everything at the end of the message. Postfix need not wait for them,
/// which saves a round trip per header field, body chunk and recipient.
const NO_REPLY: ProtoOpts = ProtoOpts::NOREPLY_CONNECT
    .union(ProtoOpts::NOREPLY_MAIL)
    .union(ProtoOpts::NOREPLY_RCPT)
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_BODY);

/// "Continue", or no answer where Postfix agreed not to wait for one.
fn carry_on(cx: &Context<Session>, stage: ProtoOpts) -> Status {
    if cx.data.as_ref().is_some_and(|s| s.no_reply.contains(stage)) {
        Status::Noreply
    } else {
        Status::Continue
    }
}

async fn negotiate(cx: &mut NegotiateContext<Session>, offered: ProtoOpts) -> Status {
    let no_reply = offered & NO_REPLY;
    cx.requested_opts |= no_reply;
    cx.data = Some(Session {
        no_reply,
        ..Session::default()
    });
    cx.requested_actions |= Actions::ADD_HEADER
        | Actions::CHANGE_SENDER
        | Actions::CHANGE_HEADER
        | Actions::REPLACE_BODY
        | Actions::ADD_RCPT
        | Actions::DELETE_RCPT
        | Actions::QUARANTINE;
    cx.requested_opts |= ProtoOpts::LEADING_SPACE;
    for (stage, names) in [
        (MacroStage::Connect, "j {daemon_name} {client_addr} v"),
        (MacroStage::Mail, "{auth_authen} i"),
        (MacroStage::Eom, "i"),
    ] {
        if let Ok(names) = CString::new(names) {
            cx.requested_macros.insert(stage, names);
        }
    }
    Status::Continue
}

fn connect(cx: &mut Context<Session>, socket: SocketInfo, shared: &SharedEngine) -> Status {
    let daemon = macro_value(&cx.macros, c"{daemon_name}");
    let reinjection =
        daemon.as_deref() == Some(engine(shared).config().reinject_daemon_name.as_str());
    let no_reply = cx.data.as_ref().map_or(ProtoOpts::empty(), |s| s.no_reply);
    let edits_in_place =
        macro_value(&cx.macros, c"v").is_some_and(|v| postfix_counts_fields_right(&v));
    cx.data = Some(Session {
        peer: Peer::of(&socket),
        reinjection,
        no_reply,
        edits_in_place,
        ..Session::default()
    });
    carry_on(cx, ProtoOpts::NOREPLY_CONNECT)
}

fn mail(cx: &mut Context<Session>, args: Vec<CString>, shared: &SharedEngine) -> Status {
    let auth_authen = macro_value(&cx.macros, c"{auth_authen}").filter(|a| !a.is_empty());
    let authenticated = auth_authen.is_some();
    let queue_id = macro_value(&cx.macros, c"i").unwrap_or_default();
    let session = cx.data.get_or_insert_with(Session::default);
    let config_engine = engine(shared);
    // Mail submitted on this host is ours whatever internal_networks says,
    // and so is mail on the re-injection listener that is not our copy.
    session.origin = match session.peer {
        _ if session.reinjection => Origin::Local,
        Peer::Local => Origin::Local,
        _ if authenticated => Origin::Internal,
        Peer::Network(ip) if config_engine.config().is_internal(ip) => Origin::Internal,
        Peer::Network(_) | Peer::Unknown => Origin::External,
    };
    let sender = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    session.stage = Stage::Message(Box::new(Message {
        queue_id,
        sender,
        auth_authen,
        edits_in_place: session.edits_in_place,
        ..Message::default()
    }));
    carry_on(cx, ProtoOpts::NOREPLY_MAIL)
}

fn rcpt(cx: &mut Context<Session>, args: Vec<CString>) -> Status {
    if let Some(message) = cx.data.as_mut().and_then(Session::message)
        && let Some(rcpt) = args.first()
    {
        message.recipients.push(rcpt.to_string_lossy().into_owned());
    }
    carry_on(cx, ProtoOpts::NOREPLY_RCPT)
}

fn header(cx: &mut Context<Session>, name: CString, value: CString, cap: usize) -> Status {
    if let Some(message) = cx.data.as_mut().and_then(Session::message) {
        let len = name.as_bytes().len() + value.as_bytes().len() + 3;
        message.size = message.size.saturating_add(len);
        if message.size <= cap {
            message
                .headers
                .push((name.to_string_lossy().into_owned(), value.into_bytes()));
        } else {
            message.truncated = true;
        }
    }
    carry_on(cx, ProtoOpts::NOREPLY_HEADER)
}

fn body(cx: &mut Context<Session>, chunk: Bytes, cap: usize) -> Status {
    if let Some(message) = cx.data.as_mut().and_then(Session::message) {
        message.size = message.size.saturating_add(chunk.len() + 2);
        // Past the cap the engine refuses the message; keep counting only.
        if message.size <= cap {
            message.body.extend_from_slice(&chunk);
        } else {
            message.truncated = true;
        }
    }
    carry_on(cx, ProtoOpts::NOREPLY_BODY)
}

async fn apply(cx: &EomContext<Session>, actions: &[Action]) -> Result<(), String> {
    let act = &cx.actions;
    for action in actions {
        let result = match action {
            Action::DeleteHeader { name, index } => {
                act.change_header(name.as_str(), *index, None::<CString>)
                    .await
            }
            Action::ChangeHeader { name, index, value } => {
                act.change_header(name.as_str(), *index, Some(cstring(value)))
                    .await
            }
            Action::AddHeader { name, value } => {
                act.add_header(name.as_str(), cstring(value)).await
            }
            Action::InsertHeader { index, name, value } => {
                act.insert_header(*index, name.as_str(), cstring(value))
                    .await
            }
            Action::ReplaceBody(body) => act.replace_body(body).await,
            Action::DeleteRecipient(rcpt) => act.delete_recipient(rcpt.as_str()).await,
            Action::Quarantine(reason) => act.quarantine(reason.replace(['\r', '\n'], " ")).await,
            Action::ChangeSender(sender) => {
                act.change_sender(sender.as_str(), None::<CString>).await
            }
        };
        result.map_err(|e| {
            format!("{action:?}: {e}")
                .chars()
                .take(200)
                .collect::<String>()
        })?;
    }
    Ok(())
}

/// Texts an SMTP client outside our users gets: the reason (which may name
/// the KGC socket, the re-injection listener or a DNS server) stays in the
/// milter's log, under the queue id that Postfix logs with this reply.
const TEMPFAIL_TEXT: &str = "ibemail: temporary failure, please try again later";
const TOO_LARGE_TEXT: &str = "ibemail: message too large";
const REFUSED_TEXT: &str = "ibemail: message refused";

/// The reply text for `reason`: the reason itself for our own users (they,
/// and the administrator reading their bounce, need to know which domain
/// requires encryption), a generic text for anyone else.
fn reply_text(origin: Origin, reason: &str, generic: &str) -> String {
    let text = match origin {
        Origin::Local | Origin::Internal => {
            format!("ibemail: {}", reason.replace(['\r', '\n'], " "))
        }
        Origin::External => generic.to_string(),
    };
    text.chars().take(900).collect()
}

fn reply_status(cx: &mut EomContext<Session>, verdict: &Verdict, origin: Origin) -> Status {
    match &verdict.reply {
        Reply::Continue => Status::Continue,
        Reply::Tempfail(reason) => {
            let text = reply_text(origin, reason, TEMPFAIL_TEXT);
            let _ = cx.reply.set_error_reply("451", Some("4.7.0"), [text]);
            Status::Tempfail
        }
        Reply::Reject(reason) => {
            let (code, extended, generic) = match verdict.kind {
                Kind::Rejected => ("552", "5.3.4", TOO_LARGE_TEXT),
                _ => ("554", "5.7.0", REFUSED_TEXT),
            };
            let text = reply_text(origin, reason, generic);
            let _ = cx.reply.set_error_reply(code, Some(extended), [text]);
            Status::Reject
        }
    }
}

async fn eom(cx: &mut EomContext<Session>, shared: SharedEngine) -> Status {
    let queue_id = macro_value(&cx.macros, c"i");
    let Some(session) = cx.data.as_mut() else {
        return Status::Continue;
    };
    let Stage::Message(mut message) = std::mem::take(&mut session.stage) else {
        return Status::Continue;
    };
    if let Some(id) = queue_id {
        message.queue_id = id;
    }
    let origin = session.origin;
    let reinjection = session.reinjection;
    let engine = engine(&shared);
    let verdict = if reinjection {
        engine.process_reinjected(&message).await
    } else {
        engine.process(&message, origin).await
    };
    if verdict.reply == Reply::Continue
        && let Err(e) = apply(cx, &verdict.actions).await
    {
        error!(queue_id = %message.queue_id, error = %e, "modifying the message failed");
        let _ = cx
            .reply
            .set_error_reply("451", Some("4.7.0"), ["ibemail: internal error"]);
        return Status::Tempfail;
    }
    reply_status(cx, &verdict, origin)
}

fn callbacks(shared: SharedEngine) -> Callbacks<Session> {
    let cap = |shared: &SharedEngine| engine(shared).config().max_message_size.saturating_add(1);
    let (s0, s1, s2, s3, s4) = (
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared.clone(),
        shared,
    );
    Callbacks::new()
        .on_negotiate(|cx, _, offered| Box::pin(negotiate(cx, offered)))
        .on_connect(move |cx, _, socket| {
            let shared = s0.clone();
            Box::pin(async move { connect(cx, socket, &shared) })
        })
        .on_mail(move |cx, args| {
            let shared = s1.clone();
            Box::pin(async move { mail(cx, args, &shared) })
        })
        .on_rcpt(|cx, args| Box::pin(async move { rcpt(cx, args) }))
        .on_header(move |cx, name, value| {
            let limit = cap(&s2);
            Box::pin(async move { header(cx, name, value, limit) })
        })
        .on_body(move |cx, chunk| {
            let limit = cap(&s3);
            Box::pin(async move { body(cx, chunk, limit) })
        })
        .on_eom(move |cx| Box::pin(eom(cx, s4.clone())))
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(session) = cx.data.as_mut() {
                    session.stage = Stage::Idle;
                }
                Status::Continue
            })
        })
}

/// Runs the milter on `listener` until `shutdown` completes; each value
/// received on `reload` replaces the engine (new mail uses it at once).
pub async fn run(
    listener: impl Listener,
    engine: Arc<Engine>,
    mut reload: tokio::sync::mpsc::Receiver<Arc<Engine>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared: SharedEngine = Arc::new(RwLock::new(engine));
    let swapper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(new) = reload.recv().await {
                *shared.write().unwrap_or_else(|e| e.into_inner()) = new;
                info!("configuration reloaded");
            }
        })
    };
    let config = indymilter::Config {
        max_connections: 256,
        ..Default::default()
    };
    let result = indymilter::run(listener, callbacks(shared), config, shutdown).await;
    swapper.abort();
    if let Err(e) = &result {
        warn!(error = %e, "milter stopped");
    }
    result
}
