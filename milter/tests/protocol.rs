//! The milter over the milter protocol (indymilter-test as the MTA) against
//! a real `run` on 127.0.0.1:0, with a real DNS server (Knot), real key
//! stores and a real SMTP listener as the re-injection target.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::signed_by;
use ibemail_kgc::store::Store;
use ibemail_milter::config::Config;
use ibemail_milter::engine::{Engine, Kind};
use ibemail_milter::metrics::Metrics;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::silent::Silent;
use ibemail_test_support::smtp::Sink;
use indymilter_test::{EomAction, EomActions, Status, TestConnection};
use proptest::prelude::*;
use rand_core::OsRng;

const ORIGINAL_HEADERS: &[(&str, &str)] = &[
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
const ORIGINAL_BODY: &[u8] = b"The merger closes on Friday.\r\n.leading dot\r\n\r\nBye\r\n";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A milter running `config` on 127.0.0.1:0.
struct Milter {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Milter {
    async fn start(config: &str) -> Milter {
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

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// The MTA side of one message.
struct Mail<'a> {
    client: IpAddr,
    auth: Option<&'a str>,
    sender: &'a str,
    rcpts: Vec<&'a str>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl<'a> Mail<'a> {
    fn original(rcpts: &[&'a str]) -> Mail<'a> {
        Mail {
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
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

    fn outside(mut self) -> Self {
        self.client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25));
        self
    }
}

/// Sends `mail` through the milter at `addr`.
async fn send(addr: SocketAddr, mail: &Mail<'_>) -> (Status, EomActions) {
    let mut conn = TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .unwrap();
    let status = conn
        .connect("client", SocketAddr::new(mail.client, 40000))
        .await
        .unwrap();
    assert_eq!(status, Status::Continue);
    let mut macros = vec![("i", "QID1")];
    if let Some(user) = mail.auth {
        macros.push(("{auth_authen}", user));
    }
    conn.macros(indymilter_test::MacroStage::Mail, macros)
        .await
        .unwrap();
    assert_eq!(conn.mail([mail.sender]).await.unwrap(), Status::Continue);
    for rcpt in &mail.rcpts {
        assert_eq!(conn.rcpt([*rcpt]).await.unwrap(), Status::Continue);
    }
    // Stages the milter did not ask for are not sent, as Postfix does.
    let opts = conn.negotiated_opts();
    if !opts.contains(indymilter_test::ProtoOpts::NO_DATA) {
        assert_eq!(conn.data().await.unwrap(), Status::Continue);
    }
    for (name, value) in &mail.headers {
        assert_eq!(
            conn.header(name.as_str(), value.as_str()).await.unwrap(),
            Status::Continue
        );
    }
    if !opts.contains(indymilter_test::ProtoOpts::NO_EOH) {
        assert_eq!(conn.eoh().await.unwrap(), Status::Continue);
    }
    for chunk in mail.body.chunks(65535) {
        assert_eq!(conn.body(chunk.to_vec()).await.unwrap(), Status::Continue);
    }
    let (actions, status) = conn.eom().await.unwrap();
    conn.close().await.unwrap();
    (status, actions)
}

/// Applies milter actions the way Postfix does, giving the new header list
/// and body.
fn apply(
    headers: &[(String, String)],
    body: &[u8],
    actions: &EomActions,
) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = headers.to_vec();
    let mut new_body: Option<Vec<u8>> = None;
    for action in &actions.actions {
        match action {
            EomAction::DeleteHeader { name, index } => {
                let name = name.to_str().unwrap();
                let pos = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                    .nth(usize::try_from(*index).unwrap() - 1)
                    .map(|(i, _)| i)
                    .unwrap();
                headers.remove(pos);
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

fn has(actions: &EomActions, f: impl Fn(&EomAction) -> bool) -> bool {
    actions.actions.iter().any(f)
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Two domains: a.test sends (and signs, when configured to), b.test
/// (signed zone, IBE) receives, c.test has no parameters, d.test's DNS is
/// broken.
struct World {
    _tmp: tempfile::TempDir,
    knot: Knot,
    a_dir: PathBuf,
    b_dir: PathBuf,
    sink: Sink,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let b_dir = tmp.path().join("b.test");
        let b = Store::setup(&b_dir, "b.test", now(), &mut OsRng).unwrap();
        let record = format!("_ibemailkey TXT \"{}\"", b.records()[0].to_text());
        let a_dir = tmp.path().join("a.test");
        let a = Store::setup(&a_dir, "a.test", now(), &mut OsRng).unwrap();
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

    fn dns(&self) -> String {
        format!(
            "[dns]\nresolvers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout = \"2s\"\n",
            self.knot.addr,
            self.knot.trust_anchor_file().display()
        )
    }

    /// a.test's milter (outbound).
    fn sender_config(&self, extra: &str) -> String {
        format!(
            "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\n{extra}\n{}\
             [reinject]\naddress = \"{}\"\nhelo = \"mx.a.test\"\n",
            self.dns(),
            self.sink.addr
        )
    }

    /// a.test's milter, signing its users' mail with keys in-process.
    fn signing_sender_config(&self) -> String {
        self.sender_config(&format!(
            "local_domains = [\"a.test\"]\n[kgc]\ndir = \"{}\"\n[signing]\nsign = \"always\"\n",
            self.a_dir.display()
        ))
    }

    /// b.test's milter (inbound), keys in-process or from `socket`.
    fn receiver_config(&self, kgc: &str) -> String {
        let kgc = if kgc.is_empty() {
            format!("[kgc]\ndir = \"{}\"\n", self.b_dir.display())
        } else {
            format!("[kgc]\nsocket = \"{kgc}\"\ntimeout = \"2s\"\n")
        };
        format!(
            "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.b.test\"\n\
             local_domains = [\"b.test\"]\n{kgc}{}",
            self.dns()
        )
    }
}

fn tempfail_reason(status: &Status) -> String {
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
async fn seal_via_milter(world: &World) -> (Vec<(String, String)>, Vec<u8>) {
    let milter = Milter::start(&world.sender_config("")).await;
    let mail = Mail::original(&["<bob@b.test>"]);
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(milter.metrics.messages(Kind::Encrypted), 1);
    milter.stop().await;
    apply(&mail.headers, &mail.body, &actions)
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_is_sealed_and_inbound_opened_back_to_the_original() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    assert_eq!(header(&sealed_headers, "Subject"), Some(" [...]"));
    assert!(
        header(&sealed_headers, "Content-Type")
            .unwrap()
            .contains("authEnveloped-data")
    );
    let sealed_text = String::from_utf8_lossy(&sealed_body);
    assert!(!sealed_text.contains("merger"));
    assert!(!sealed_headers.iter().any(|(_, v)| v.contains("merger")));

    // At b.test: a new Received on top, as an MX adds.
    let receiver = Milter::start(&world.receiver_config("")).await;
    let mut headers = vec![(
        "Received".to_string(),
        " from mx.a.test by mx.b.test; Mon, 23 Nov 2026 09:00:01 +0000".to_string(),
    )];
    headers.extend(sealed_headers);
    let mail = Mail {
        headers,
        body: sealed_body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let (opened, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    let (first, rest) = opened.split_first().unwrap();
    assert_eq!(first.0, "Authentication-Results");
    assert!(
        first.1.starts_with(" mx.b.test; x-ibemail=pass"),
        "{}",
        first.1
    );
    assert!(first.1.contains("smtp.rcptto=bob@b.test"));
    assert_eq!(
        rest[0], mail.headers[0],
        "the transit Received stays on top"
    );
    let original: Vec<(String, String)> = ORIGINAL_HEADERS
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(&rest[1..], &original[..], "inner headers restored exactly");
    assert_eq!(receiver.metrics.messages(Kind::Decrypted), 1);
    receiver.stop().await;
}

fn field_value<'h>(headers: &'h [(String, String)], name: &str, index: usize) -> &'h str {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .nth(index)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} #{index} in {headers:?}"))
}

fn to_message(headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}:{}\r\n", value.replace('\n', "\r\n")).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn from_message(message: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
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
async fn receive(
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

#[tokio::test(flavor = "multi_thread")]
async fn signed_inside_and_outside_and_every_substitution_fails() {
    let world = World::new();
    let sender = Milter::start(&world.signing_sender_config()).await;
    let mail = Mail::original(&["<bob@b.test>"]);
    let (status, actions) = send(sender.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(sender.metrics.messages(Kind::Encrypted), 1);
    let (sealed_headers, sealed_body) = apply(&mail.headers, &mail.body, &actions);
    let outer_sig = field_value(&sealed_headers, "IBE-Signature", 0);
    assert!(outer_sig.contains("i=alice@a.test"), "{outer_sig}");
    assert!(outer_sig.contains("n=1;"), "{outer_sig}");

    // b.test requires valid signatures from a.test.
    let receiver = Milter::start(&format!(
        "{}[policy.domains.\"a.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let (results, held, opened, body) =
        receive(&receiver, sealed_headers.clone(), sealed_body.clone()).await;
    assert!(!held);
    assert!(results.contains("x-ibemail=pass"), "{results}");
    assert!(
        results.contains(
            "ibesig=pass (inside and outside the encryption, generation 1) header.i=alice@a.test"
        ),
        "{results}"
    );
    assert_eq!(body, ORIGINAL_BODY);
    // The inner signature is delivered (it verifies on the plaintext); the
    // outer one, over the ciphertext, is not.
    assert_eq!(
        opened.iter().filter(|(n, _)| n == "IBE-Signature").count(),
        1
    );
    let inner_message = to_message(&opened[1..], &body);
    let inner = ibemail_message::signature::signatures(&inner_message)
        .remove(0)
        .unwrap();
    let a_params = Store::open(&world.a_dir).unwrap().records()[0]
        .signing
        .unwrap();
    inner.verify(&inner_message, &a_params).unwrap();

    // A man in the middle who had a.test encrypt to his parameters can read
    // the message and re-encrypt it to b.test's real ones, keeping every
    // header, including the outer signature: that fails.
    let b_store = Store::open(&world.b_dir).unwrap();
    let b_record = &b_store.records()[0];
    let bob = ibemail_ibe::Identity::parse("bob@b.test").unwrap();
    let recipient = ibemail_message::IbeRecipient {
        identity: bob,
        generation: b_record.generation,
        params: b_record.params.clone(),
    };
    let resealed = ibemail_message::seal(
        &inner_message,
        &[&recipient as &dyn ibemail_message::Recipient],
        &mut OsRng,
        &ibemail_message::Limits::default(),
    )
    .unwrap();
    let (mut resealed_headers, resealed_body) = from_message(&resealed.to_bytes());
    resealed_headers.insert(0, ("IBE-Signature".to_string(), outer_sig.to_string()));
    let (results, held, _, body) =
        receive(&receiver, resealed_headers.clone(), resealed_body.clone()).await;
    assert!(results.contains("ibesig=fail"), "{results}");
    assert!(results.contains("body hash"), "{results}");
    assert!(held, "quarantined under signature = require");
    assert_eq!(body, ORIGINAL_BODY, "still decrypted for the hold queue");
    assert_eq!(receiver.metrics.messages(Kind::Unsigned), 1);
    assert_eq!(receiver.metrics.signature_results("pass"), 1);
    assert_eq!(receiver.metrics.signature_results("fail"), 1);
    assert_eq!(sender.metrics.signatures_made(), 2, "inside and outside");

    // Dropping the outer signature instead does not help.
    resealed_headers.remove(0);
    let (results, held, _, _) =
        receive(&receiver, resealed_headers.clone(), resealed_body.clone()).await;
    assert!(
        results.contains("ibesig=fail (signed inside but not outside"),
        "{results}"
    );
    assert!(held);
    // Nor does putting a junk signature of a domain whose DNS fails in its
    // place: it is not by the From address, so it fails without a lookup
    // instead of turning the result into a temporary error.
    let mut junk_headers = resealed_headers;
    junk_headers.insert(
        0,
        (
            "IBE-Signature".to_string(),
            outer_sig.replace("i=alice@a.test", "i=x@d.test"),
        ),
    );
    let (results, held, _, _) = receive(&receiver, junk_headers, resealed_body).await;
    assert!(results.contains("ibesig=fail"), "{results}");
    assert!(held);

    // Delivering the decrypted message in plaintext instead fails too: its
    // signature was made for the sealed copy (e=1).
    let (plain_headers, plain_body) = from_message(&inner_message);
    let (results, held, _, _) = receive(&receiver, plain_headers, plain_body).await;
    assert!(
        results.contains("ibesig=fail (signed to travel encrypted, but arrived decrypted)"),
        "{results}"
    );
    assert!(held);

    // A field added on top of the sealed message (over-signed) breaks the
    // outer signature.
    let mut injected = sealed_headers.clone();
    injected.insert(0, ("Reply-To".into(), " attacker@evil.test".into()));
    let (results, held, _, _) = receive(&receiver, injected, sealed_body.clone()).await;
    assert!(results.contains("ibesig=fail (outside:"), "{results}");
    assert!(held);
    receiver.stop().await;

    // With the default policy (report), the same failure is delivered,
    // marked.
    let reporting = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&reporting, sealed_headers, sealed_body).await;
    assert!(results.contains("ibesig=pass"), "{results}");
    assert!(!held);
    reporting.stop().await;
    sender.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_own_addresses_are_signed_and_a_forged_from_fails() {
    let world = World::new();
    let sender = Milter::start(&world.signing_sender_config()).await;
    // To a domain without ibemail: the message is signed, not encrypted;
    // only a header field is added.
    let mail = Mail::original(&["<carol@c.test>"]);
    let (status, actions) = send(sender.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert_eq!(sender.metrics.messages(Kind::Plaintext), 1);
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    assert_eq!(headers[0].0, "IBE-Signature");
    assert_eq!(&headers[1..], &mail.headers[..]);

    // Mixed: the plaintext copy for carol carries a signature without
    // e=1; the sealed copy for bob one with it (checked at b.test in the
    // test above).
    let mixed = Mail::original(&["<bob@b.test>", "<carol@c.test>"]);
    let (status, _) = send(sender.addr, &mixed).await;
    assert_eq!(status, Status::Continue);
    let copies = world.sink.received();
    let copy = String::from_utf8_lossy(&copies.last().unwrap().data).into_owned();
    assert!(copy.starts_with("IBE-Signature:"), "{copy}");
    assert!(copy.contains("i=alice@a.test"), "{copy}");
    assert!(!copy.contains("e=1;"), "{copy}");
    assert_eq!(
        sender.metrics.signatures_made(),
        4,
        "1 + inner, outer, copy"
    );

    // Bob, logged in, sending as Alice: not signed.
    let forged = Mail {
        auth: Some("bob"),
        sender: "<bob@a.test>",
        ..Mail::original(&["<carol@c.test>"])
    };
    let (status, actions) = send(sender.addr, &forged).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    // Alice logged in as "alice" (no domain) is signed.
    let own = Mail {
        auth: Some("alice"),
        ..Mail::original(&["<carol@c.test>"])
    };
    let (_, actions) = send(sender.addr, &own).await;
    assert_eq!(actions.actions.len(), 1, "{actions:?}");
    sender.stop().await;
    // With two local domains a bare login is ambiguous (alice@a.test or
    // alice@a2.test?): not signed; the full address is.
    let two_domains = Milter::start(&world.signing_sender_config().replace(
        "local_domains = [\"a.test\"]",
        "local_domains = [\"a.test\", \"a2.test\"]",
    ))
    .await;
    let (_, actions) = send(two_domains.addr, &own).await;
    assert!(actions.actions.is_empty(), "{actions:?}");
    let full = Mail {
        auth: Some("alice@a.test"),
        ..Mail::original(&["<carol@c.test>"])
    };
    let (_, actions) = send(two_domains.addr, &full).await;
    assert_eq!(actions.actions.len(), 1, "{actions:?}");
    two_domains.stop().await;

    // Bob's valid signature on a message From Alice (made with his own key,
    // as a rogue user of a.test could) fails at b.test.
    let a_store = Store::open(&world.a_dir).unwrap();
    let plain = to_message(&mail.headers, &mail.body);
    let (headers, body) = from_message(&signed_by(&a_store, "bob@a.test", &plain));
    let receiver = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&receiver, headers, body).await;
    assert!(
        results.contains("ibesig=fail (signed by bob@a.test, but From is alice@a.test)"),
        "{results}"
    );
    assert!(!held, "reported, not held, under the default policy");
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_that_cannot_be_checked_now_is_deferred_only_when_required() {
    let world = World::new();
    // x@d.test signs with a valid key, but d.test's DNS is broken (SERVFAIL).
    let tmp = tempfile::tempdir().unwrap();
    let d = Store::setup(&tmp.path().join("d"), "d.test", now(), &mut OsRng).unwrap();
    let plain = b"From: x@d.test\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let (headers, body) = from_message(&signed_by(&d, "x@d.test", plain));

    let reporting = Milter::start(&world.receiver_config("")).await;
    let (results, held, _, _) = receive(&reporting, headers.clone(), body.clone()).await;
    assert!(results.contains("ibesig=temperror"), "{results}");
    assert!(!held);
    reporting.stop().await;

    let requiring = Milter::start(&format!(
        "{}[policy.domains.\"d.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let mail = Mail {
        headers,
        body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &mail).await;
    // An outside client learns that it must retry, not why.
    assert_eq!(
        tempfail_reason(&status),
        "451 4.7.0 ibemail: temporary failure, please try again later"
    );
    assert!(actions.actions.is_empty());
    // A From that names no single address does not escape a require
    // policy: the strictest configured policy applies.
    let mangled = Mail {
        headers: vec![("From".into(), " x@d.test, ceo@d.test".into())],
        body: b"hello\r\n".to_vec(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &mangled).await;
    assert_eq!(status, Status::Continue);
    assert!(has(&actions, |a| matches!(a, EomAction::Quarantine { .. })));
    // Unsigned mail from a domain whose signatures are required is held.
    let unsigned_mail = Mail {
        headers: vec![("From".into(), " x@d.test".into())],
        body: b"hello\r\n".to_vec(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &unsigned_mail).await;
    assert_eq!(status, Status::Continue);
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("ibesig=none"))
    ));
    // The same from one of our own (internal) clients is only reported:
    // mail that stays inside is never signed.
    let internal = Mail {
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ..unsigned_mail
    };
    let (status, actions) = send(requiring.addr, &internal).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");
    requiring.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_recipients_split_with_a_plaintext_copy_reinjected_first() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("")).await;
    let mail = Mail::original(&["<bob@b.test>", "<carol@c.test>", "<dave@x.test>"]);
    let (status, actions) = send(milter.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let copies = world.sink.received();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].sender, "<alice@a.test>");
    assert_eq!(copies[0].recipients, ["<carol@c.test>", "<dave@x.test>"]);
    let copy = String::from_utf8_lossy(&copies[0].data);
    assert!(
        copy.contains("Subject: the merger,\r\n\tsecret\r\n"),
        "{copy}"
    );
    assert!(copy.ends_with("\r\n.leading dot\r\n\r\nBye\r\n"), "{copy}");
    for rcpt in ["<carol@c.test>", "<dave@x.test>"] {
        assert!(has(
            &actions,
            |a| matches!(a, EomAction::DeleteRecipient { rcpt: r } if r.to_str().unwrap() == rcpt)
        ));
    }
    assert!(!has(
        &actions,
        |a| matches!(a, EomAction::DeleteRecipient { rcpt } if rcpt.to_str().unwrap() == "<bob@b.test>")
    ));
    assert!(has(&actions, |a| matches!(
        a,
        EomAction::ReplaceBody { .. }
    )));
    assert_eq!(milter.metrics.messages(Kind::Split), 1);

    // The copy refused: tempfail, no recipient removed, nothing changed.
    world.sink.refuse(true);
    let (status, actions) = send(milter.addr, &mail).await;
    let reason = tempfail_reason(&status);
    assert!(reason.contains("re-injecting"), "{reason}");
    assert!(actions.actions.is_empty());
    assert_eq!(world.sink.received().len(), 1);
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_temporary_failure_is_a_tempfail_never_plaintext() {
    let world = World::new();
    // DNS SERVFAIL for the recipient's domain.
    let milter = Milter::start(&world.sender_config("")).await;
    let (status, actions) = send(milter.addr, &Mail::original(&["<x@d.test>"])).await;
    assert!(tempfail_reason(&status).contains("d.test"));
    assert!(actions.actions.is_empty());
    // Policy require, domain without parameters.
    milter.stop().await;
    let milter =
        Milter::start(&world.sender_config("[policy.domains.\"c.test\"]\nencrypt = \"require\""))
            .await;
    let (status, _) = send(milter.addr, &Mail::original(&["<carol@c.test>"])).await;
    assert!(tempfail_reason(&status).contains("requires encryption"));
    // Opportunistic, no parameters: sent as it is.
    let (status, actions) = send(
        milter.addr,
        &Mail::original(&["<y@nx2.test>", "<x@nx.test>"]),
    )
    .await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    milter.stop().await;
    // A name server that never answers.
    let silent = Silent::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let config = format!(
        "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\n\
         [dns]\nresolvers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        silent.addr
    );
    let milter = Milter::start(&config).await;
    let (status, _) = send(milter.addr, &Mail::original(&["<bob@b.test>"])).await;
    tempfail_reason(&status);
    milter.stop().await;
    // Mixed recipients without a re-injection target.
    let config = format!(
        "socket = \"inet:127.0.0.1:0\"\nauthserv_id = \"mx.a.test\"\n{}",
        world.dns()
    );
    let milter = Milter::start(&config).await;
    let (status, _) = send(
        milter.addr,
        &Mail::original(&["<bob@b.test>", "<c@c.test>"]),
    )
    .await;
    assert!(tempfail_reason(&status).contains("reinject"));
    // Authenticated clients from anywhere are outbound too.
    let mut mail = Mail::original(&["<x@d.test>"]).outside();
    mail.auth = Some("alice");
    let (status, _) = send(milter.addr, &mail).await;
    tempfail_reason(&status);
    // Unauthenticated outside clients relaying are not ours to encrypt.
    let (status, actions) = send(milter.addr, &Mail::original(&["<x@d.test>"]).outside()).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    milter.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kgc_unreachable_is_a_tempfail_and_bad_ciphertext_is_quarantined() {
    let world = World::new();
    let (sealed_headers, sealed_body) = seal_via_milter(&world).await;
    let socket = world.b_dir.parent().unwrap().join("no-kgc.sock");
    let receiver = Milter::start(&world.receiver_config(socket.to_str().unwrap())).await;
    let mail = Mail {
        headers: sealed_headers.clone(),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &mail).await;
    // The reason (naming the KGC socket) is for the local log only.
    let reason = tempfail_reason(&status);
    assert!(reason.contains("try again later"), "{reason}");
    assert!(!reason.contains("no-kgc.sock"), "{reason}");
    assert!(actions.actions.is_empty());
    receiver.stop().await;

    let receiver = Milter::start(&world.receiver_config("")).await;
    // Corrupt one base64 character in the middle of the CMS.
    let mut body = sealed_body.clone();
    let mid = body.len() / 2;
    let pos = (mid..body.len())
        .find(|&i| body[i].is_ascii_alphanumeric())
        .unwrap();
    body[pos] = if body[pos] == b'A' { b'B' } else { b'A' };
    let bad = Mail {
        headers: sealed_headers.clone(),
        body,
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &bad).await;
    assert_eq!(
        status,
        Status::Continue,
        "quarantined, not refused or dropped"
    );
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("cannot decrypt"))
    ));
    assert!(!has(&actions, |a| matches!(
        a,
        EomAction::ReplaceBody { .. }
    )));
    assert_eq!(receiver.metrics.messages(Kind::Undecryptable), 1);

    // Also addressed to another domain (relayed on): not opened here, so
    // no plaintext travels further.
    let relayed = Mail {
        headers: sealed_headers.clone(),
        body: sealed_body.clone(),
        ..Mail::original(&["<bob@b.test>", "<x@elsewhere.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &relayed).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty(), "{actions:?}");

    // Sealed for someone else at b.test: not ours to open, delivered as is.
    let other = Mail {
        headers: sealed_headers,
        body: sealed_body,
        ..Mail::original(&["<carol@b.test>"]).outside()
    };
    let (status, actions) = send(receiver.addr, &other).await;
    assert_eq!(status, Status::Continue);
    assert!(actions.actions.is_empty());
    receiver.stop().await;
    // ...unless a.test's signatures are required: unsigned, it is held
    // even though it is not opened here.
    let requiring = Milter::start(&format!(
        "{}[policy.domains.\"a.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    let (status, actions) = send(requiring.addr, &other).await;
    assert_eq!(status, Status::Continue);
    assert!(has(
        &actions,
        |a| matches!(a, EomAction::Quarantine { reason } if reason.to_str().unwrap().contains("ibesig=none"))
    ));
    requiring.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_authentication_results_with_our_id_are_removed() {
    let world = World::new();
    let receiver = Milter::start(&world.receiver_config("")).await;
    let mut mail = Mail::original(&["<bob@b.test>"]).outside();
    // ORIGINAL_HEADERS starts with the Received field of the hop before
    // ours; what is below it arrived with the message.
    let arrived = |value: &str| ("Authentication-Results".to_string(), value.to_string());
    mail.headers.insert(1, arrived(" other.example; spf=pass"));
    mail.headers
        .insert(2, arrived(" mx.b.test; x-ibemail=pass"));
    mail.headers.push(arrived(" MX.B.TEST 1; dkim=pass"));
    // Above it: added at this hop by a milter before us (e.g. OpenDKIM).
    mail.headers
        .insert(0, arrived(" mx.b.test; dkim=pass header.d=a.test"));
    let (status, actions) = send(receiver.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    let (headers, body) = apply(&mail.headers, &mail.body, &actions);
    assert_eq!(body, ORIGINAL_BODY);
    let results: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Authentication-Results"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        results,
        [
            " mx.b.test; dkim=pass header.d=a.test",
            " other.example; spf=pass"
        ]
    );
    receiver.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_whole_never_truncated() {
    let world = World::new();
    let milter = Milter::start(&world.sender_config("max_message_size = \"10k\"")).await;
    let mut mail = Mail::original(&["<bob@b.test>"]);
    mail.body = b"0123456789abcdef\r\n".repeat(1000);
    let (status, actions) = send(milter.addr, &mail).await;
    assert!(matches!(status, Status::Reject { .. }), "{status:?}");
    assert!(actions.actions.is_empty());
    milter.stop().await;
}

/// Inbound sessions fed arbitrary bytes, and mutations of a real sealed
/// message, never panic and never hang: each gets a proper answer.
#[test]
fn arbitrary_bodies_never_break_a_session() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let world = World::new();
    let (sealed_headers, sealed_body) = rt.block_on(seal_via_milter(&world));
    let receiver = rt.block_on(Milter::start(&world.receiver_config("")));
    let addr = receiver.addr;
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        junk in proptest::collection::vec(any::<u8>(), 0..2048),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        use_sealed in any::<bool>(),
    )| {
        let mut body = if use_sealed { sealed_body.clone() } else { junk };
        for (index, byte) in &flips {
            if !body.is_empty() {
                let i = index.index(body.len());
                body[i] = *byte;
            }
        }
        let mail = Mail {
            headers: sealed_headers.clone(),
            body,
            ..Mail::original(&["<bob@b.test>"]).outside()
        };
        let (status, _) = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), send(addr, &mail)).await.unwrap()
        });
        let answered = matches!(
            status,
            Status::Continue | Status::Tempfail { .. } | Status::Reject { .. }
        );
        prop_assert!(answered, "unexpected status {:?}", status);
    });
    rt.block_on(receiver.stop());
}
