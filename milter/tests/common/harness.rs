//! The milter protocol harness of the integration tests: a real milter
//! `run` on 127.0.0.1:0 driven by indymilter-test as the MTA, a real DNS
//! server (Knot) with a.test, b.test, c.test (no parameters) and d.test
//! (broken), real key stores, and a real SMTP listener as the re-injection
//! target.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ibemail_kgc::store::Store;
use ibemail_milter::config::Config;
use ibemail_milter::engine::{Engine, Kind};
use ibemail_milter::metrics::Metrics;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::smtp::Sink;
use indymilter_test::{EomAction, EomActions, Status, TestConnection};
use rand_core::OsRng;

pub(crate) const ORIGINAL_HEADERS: &[(&str, &str)] = &[
    (
        "Received",
        " from client.a.test by mx.a.test; Mon, 23 Nov 2026 09:00:00 +0000",
    ),
    ("From", " Alice <alice@a.test>"),
    ("To", " Bob <bob@b.test>"),
    ("Subject", " the merger,\n\tsecret"),
    ("Message-ID", " <m1@a.test>"),
    ("Date", " Mon, 23 Nov 2026 09:00:00 +0000"),
];
pub(crate) const ORIGINAL_BODY: &[u8] =
    b"The merger closes on Friday.\r\n.leading dot\r\n\r\nBye\r\n";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A milter running `config` on 127.0.0.1:0.
pub(crate) struct Milter {
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(crate) task: Option<tokio::task::JoinHandle<()>>,
}

impl Milter {
    pub(crate) async fn start(config: &str) -> Milter {
        let config = Config::parse(config).unwrap();
        let metrics = Arc::new(Metrics::default());
        let engine = Arc::new(Engine::new(config, metrics.clone()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (_reload, reload_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(async move {
            let _keep = _reload;
            ibemail_milter::run(listener, engine, reload_rx, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Milter {
            addr,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// The MTA side of one message.
pub(crate) struct Mail<'a> {
    pub(crate) client: IpAddr,
    /// The client's port: 0 is how Postfix presents mail submitted on the
    /// host (sendmail, pickup) to `non_smtpd_milters`.
    pub(crate) client_port: u16,
    /// The `{daemon_name}` macro of the Postfix service (the re-injection
    /// listener's is `ibemail-reinject`).
    pub(crate) daemon_name: Option<&'a str>,
    /// The MTA's version (macro `v`): a Postfix that counts header fields
    /// as it shows them gets them edited in place.
    pub(crate) mta_version: Option<&'a str>,
    pub(crate) auth: Option<&'a str>,
    pub(crate) sender: &'a str,
    pub(crate) rcpts: Vec<&'a str>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl<'a> Mail<'a> {
    pub(crate) fn original(rcpts: &[&'a str]) -> Mail<'a> {
        Mail {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 40000,
            daemon_name: None,
            mta_version: Some("Postfix 3.9.1"),
            auth: None,
            sender: "<alice@a.test>",
            rcpts: rcpts.to_vec(),
            headers: ORIGINAL_HEADERS
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: ORIGINAL_BODY.to_vec(),
        }
    }

    pub(crate) fn outside(mut self) -> Self {
        self.client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25));
        self
    }
}

/// The milter goes on: "continue", or no answer at a stage it negotiated
/// not to answer (it decides everything at the end of the message).
pub(crate) fn assert_on(status: Status) {
    assert!(
        matches!(status, Status::Continue | Status::Noreply),
        "{status:?}"
    );
}

/// Sends `mail` through the milter at `addr`.
pub(crate) async fn send(addr: SocketAddr, mail: &Mail<'_>) -> (Status, EomActions) {
    let mut conn = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .unwrap();
    let connect_macros: Vec<(&str, &str)> =
        [("{daemon_name}", mail.daemon_name), ("v", mail.mta_version)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
    if !connect_macros.is_empty() {
        conn.macros(indymilter_test::MacroStage::Connect, connect_macros)
            .await
            .unwrap();
    }
    let status = conn
        .connect("client", SocketAddr::new(mail.client, mail.client_port))
        .await
        .unwrap();
    assert_on(status);
    let mut macros = vec![("i", "QID1")];
    if let Some(user) = mail.auth {
        macros.push(("{auth_authen}", user));
    }
    conn.macros(indymilter_test::MacroStage::Mail, macros)
        .await
        .unwrap();
    assert_on(conn.mail([mail.sender]).await.unwrap());
    for rcpt in &mail.rcpts {
        assert_on(conn.rcpt([*rcpt]).await.unwrap());
    }
    // Stages the milter did not ask for are not sent, as Postfix does.
    let opts = conn.negotiated_opts();
    if !opts.contains(indymilter_test::ProtoOpts::NO_DATA) {
        assert_eq!(conn.data().await.unwrap(), Status::Continue);
    }
    for (name, value) in &mail.headers {
        assert_on(conn.header(name.as_str(), value.as_str()).await.unwrap());
    }
    if !opts.contains(indymilter_test::ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    for chunk in mail.body.chunks(65535) {
        assert_on(conn.body(chunk.to_vec()).await.unwrap());
    }
    let (actions, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    (status, actions)
}

/// Where the `index`-th (1-based) field called `name` (ASCII
/// case-insensitive) is in `headers`.
fn occurrence(headers: &[(String, String)], name: &str, index: i32) -> usize {
    headers
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
        .nth(usize::try_from(index).unwrap() - 1)
        .map(|(i, _)| i)
        .unwrap()
}

/// Applies milter actions the way Postfix does, giving the new header list
/// and body.
pub(crate) fn apply(
    headers: &[(String, String)],
    body: &[u8],
    actions: &EomActions,
) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = headers.to_vec();
    let mut new_body: Option<Vec<u8>> = None;
    for action in &actions.actions {
        match action {
            EomAction::DeleteHeader { name, index } => {
                let pos = occurrence(&headers, name.to_str().unwrap(), *index);
                headers.remove(pos);
            }
            EomAction::ChangeHeader { name, index, value } => {
                let name = name.to_str().unwrap();
                let pos = occurrence(&headers, name, *index);
                headers[pos] = (name.to_string(), value.to_str().unwrap().to_string());
            }
            EomAction::AddHeader { name, value } => headers.push((
                name.to_str().unwrap().to_string(),
                value.to_str().unwrap().to_string(),
            )),
            EomAction::InsertHeader { index, name, value } => headers.insert(
                usize::try_from(*index).unwrap(),
                (
                    name.to_str().unwrap().to_string(),
                    value.to_str().unwrap().to_string(),
                ),
            ),
            EomAction::ReplaceBody { chunk } => new_body
                .get_or_insert_with(Vec::new)
                .extend_from_slice(chunk),
            _ => {}
        }
    }
    (headers, new_body.unwrap_or_else(|| body.to_vec()))
}

pub(crate) fn has(actions: &EomActions, f: impl Fn(&EomAction) -> bool) -> bool {
    actions.actions.iter().any(f)
}

pub(crate) fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Two domains: a.test sends (and signs, when configured to), b.test
/// (signed zone, IBE) receives, c.test has no parameters, d.test's DNS is
/// broken.
pub(crate) struct World {
    pub(crate) _tmp: tempfile::TempDir,
    pub(crate) knot: Knot,
    pub(crate) a_dir: PathBuf,
    pub(crate) b_dir: PathBuf,
    pub(crate) sink: Sink,
}

impl World {
    pub(crate) fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let b_dir = tmp.path().join("b.test");
        let b = Store::setup(
            &b_dir,
            "b.test",
            now(),
            Some(ibemail_params::Policy::require(7 * 86_400)),
            &mut OsRng,
        )
        .unwrap();
        let record = format!("_ibemailkey TXT \"{}\"", b.records()[0].to_text());
        let a_dir = tmp.path().join("a.test");
        let a = Store::setup(
            &a_dir,
            "a.test",
            now(),
            Some(ibemail_params::Policy::require(7 * 86_400)),
            &mut OsRng,
        )
        .unwrap();
        let a_record = format!("_ibemailkey TXT \"{}\"", a.records()[0].to_text());
        let knot = Knot::start(&[
            Zone::new("a.test", Signing::Signed, &[&a_record]),
            Zone::new("b.test", Signing::Signed, &[&record]),
            Zone::new("c.test", Signing::Signed, &["www A 127.0.0.1"]),
            Zone::new("d.test", Signing::Broken, &[]),
        ]);
        World {
            _tmp: tmp,
            knot,
            a_dir,
            b_dir,
            sink: Sink::start(),
        }
    }

    /// A milter's state directory (its re-injection ledger), kept across
    /// restarts of that milter within one test.
    pub(crate) fn state_dir(&self, name: &str) -> PathBuf {
        let dir = self._tmp.path().join(format!("state-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn dns(&self) -> String {
        format!(
            "[dns]\nresolvers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout = \"2s\"\n",
            self.knot.addr,
            self.knot.trust_anchor_file().display()
        )
    }

    /// a.test's milter (outbound).
    pub(crate) fn sender_config(&self, extra: &str) -> String {
        format!(
            "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\nstate_dir = \"{}\"\n\
             {extra}\n{}[reinject]\naddress = \"{}\"\nhelo = \"mx.a.test\"\n",
            self.state_dir("a").display(),
            self.dns(),
            self.sink.addr
        )
    }

    /// a.test's milter, signing its users' mail with keys in-process.
    pub(crate) fn signing_sender_config(&self) -> String {
        self.sender_config(&format!(
            "local_domains = [\"a.test\"]\n[kgc]\ndir = \"{}\"\n[signing]\nsign = \"always\"\n",
            self.a_dir.display()
        ))
    }

    /// b.test's milter (inbound), keys in-process or from `socket`.
    pub(crate) fn receiver_config(&self, kgc: &str) -> String {
        let kgc = if kgc.is_empty() {
            format!("[kgc]\ndir = \"{}\"\n", self.b_dir.display())
        } else {
            format!("[kgc]\nsocket = \"{kgc}\"\ntimeout = \"2s\"\n")
        };
        format!(
            "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.b.test\"\nstate_dir = \"{}\"\n\
             local_domains = [\"b.test\"]\n{kgc}{}",
            self.state_dir("b").display(),
            self.dns()
        )
    }

    /// b.test's milter with keys in-process and a re-injection target (the
    /// world's sink), so that it can split a message; `extra` goes on top.
    pub(crate) fn splitting_receiver_config(&self, extra: &str) -> String {
        format!(
            "{extra}\n{}[reinject]\naddress = \"{}\"\nhelo = \"mx.b.test\"\n",
            self.receiver_config(""),
            self.sink.addr
        )
    }
}

pub(crate) fn tempfail_reason(status: &Status) -> String {
    match status {
        Status::Tempfail { message } => message
            .as_ref()
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default(),
        other => panic!("expected tempfail, got {other:?}"),
    }
}

/// Sends the original through a.test's milter; returns the sealed headers
/// and body as they would leave a.test.
pub(crate) async fn seal_via_milter(world: &World) -> (Vec<(String, String)>, Vec<u8>) {
    let milter = Milter::start(&world.sender_config("")).await;
    let mail = Mail::original(&["<bob@b.test>"]);
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(milter.metrics.messages(Kind::Encrypted), 1);
    milter.stop().await;
    apply(&mail.headers, &mail.body, &actions)
}

pub(crate) fn field_value<'h>(
    headers: &'h [(String, String)],
    name: &str,
    index: usize,
) -> &'h str {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .nth(index)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} #{index} in {headers:?}"))
}

pub(crate) fn to_message(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}:{}\r\n", value.replace('\n', "\r\n")).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

pub(crate) fn from_message(message: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let section = ibemail_message::header::HeaderSection::parse(message);
    let headers = section
        .fields
        .iter()
        .map(|f| {
            let value = String::from_utf8_lossy(f.value());
            let value = value.strip_suffix("\r\n").unwrap_or(&value);
            (
                String::from_utf8_lossy(f.name).into_owned(),
                value.replace("\r\n", "\n"),
            )
        })
        .collect();
    (headers, message[section.body_offset..].to_vec())
}

/// The A-R field b.test adds, and whether the message was held.
pub(crate) async fn receive(
    receiver: &Milter,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
) -> (String, bool, Vec<(String, String)>, Vec<u8>) {
    let mail = Mail {
        headers,
        body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let held = has(&actions, |a| matches!(a, EomAction::Quarantine { .. }));
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    let results = field_value(&headers, "Authentication-Results", 0).to_string();
    (results, held, headers, body)
}
