//! The engine's policy as a table: origin × recipients × what each
//! recipient domain publishes × its policy × signatures → verdict. The
//! engine runs behind fake ports (parameters from a table, keys from key
//! stores in this process, re-injection into a list), so the whole table
//! takes milliseconds and needs no DNS, KGC daemon, Postfix or SMTP. The
//! protocol and end-to-end tests cover the same paths with the real parts.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::fake_dns::{Dns, FakeDns};
use ibemail_ibe::Identity;
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_message::{IbeRecipient, Limits, Recipient};
use ibemail_milter::config::Config;
use ibemail_milter::engine::{Action, Engine, Kind, Message, Origin, Reply, Verdict};
use ibemail_milter::metrics::Metrics;
use ibemail_milter::ports::{BoxFuture, KeyAccess, Ports, Reinjector};
use ibemail_milter::reinject::Envelope;
use ibemail_params::Record;
use rand_core::OsRng;

/// Re-injected copies, kept.
#[derive(Default)]
struct Copies(Mutex<Vec<(Vec<String>, Vec<u8>)>>);

impl Reinjector for Copies {
    fn send<'a>(
        &'a self,
        envelope: &'a Envelope,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), String>> {
        self.0
            .lock()
            .unwrap()
            .push((envelope.recipients.clone(), message.to_vec()));
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Two key stores (a.test, ours; b.test, a remote domain) and the state
/// directory of the engine's ledger.
struct Keys {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    a: Arc<KeyService>,
    a_record: Record,
    b_record: Record,
}

fn keys() -> Keys {
    let tmp = tempfile::tempdir().unwrap();
    let store = |domain: &str| {
        let dir = tmp.path().join(domain);
        Store::setup(&dir, domain, 0, None, &mut OsRng).unwrap();
        (dir.clone(), Store::open(&dir).unwrap().records()[0].clone())
    };
    let (a_dir, a_record) = store("a.test");
    let (_, b_record) = store("b.test");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    Keys {
        a: Arc::new(KeyService::load(&[a_dir], 16).unwrap()),
        state,
        a_record,
        b_record,
        _tmp: tmp,
    }
}

/// One row's world: the configuration's extra lines, what DNS says.
fn engine(keys: &Keys, extra: &str, dns: &[(&str, Dns)], copies: &Arc<Copies>) -> Engine {
    let config = Config::parse(&format!(
        "socket = \"inet:127.0.0.1:1\"\nauthserv_id = \"mx.a.test\"\nlocal_domains = [\"a.test\"]\n\
         internal_networks = [\"10.0.0.0/8\"]\nstate_dir = \"{}\"\n{extra}\n\
         [kgc]\nsocket = \"/nonexistent\"\n[reinject]\naddress = \"127.0.0.1:1\"\n",
        keys.state.display()
    ))
    .unwrap();
    let ports = Ports {
        parameters: Arc::new(FakeDns(
            dns.iter()
                .map(|(d, a)| (d.to_string(), a.clone()))
                .collect(),
        )),
        keys: Some(keys.a.clone() as Arc<dyn KeyAccess>),
        reinjector: Some(copies.clone() as Arc<dyn Reinjector>),
    };
    Engine::with_ports(config, ports, Arc::new(Metrics::default())).unwrap()
}

fn message(from: &str, to: &[&str]) -> Message {
    let headers = vec![
        ("From".to_string(), format!(" {from}").into_bytes()),
        ("To".to_string(), format!(" {}", to.join(", ")).into_bytes()),
        ("Subject".to_string(), b" quarterly figures".to_vec()),
        ("Message-ID".to_string(), b" <t1@a.test>".to_vec()),
    ];
    let body = b"The figures.\r\n".to_vec();
    Message {
        queue_id: "Q1".into(),
        sender: format!("<{from}>"),
        auth_authen: None,
        recipients: to.iter().map(|r| format!("<{r}>")).collect(),
        size: 200,
        headers,
        body,
        edits_in_place: true,
        truncated: false,
    }
}

/// `message` sealed to `to` (a.test's own parameters), as it arrives.
fn sealed_for(keys: &Keys, from: &str, to: &[&str]) -> Message {
    let plain = message(from, to);
    let recipients: Vec<IbeRecipient> = to
        .iter()
        .map(|r| IbeRecipient {
            identity: Identity::parse(r).unwrap(),
            generation: keys.a_record.generation,
            params: keys.a_record.params.clone(),
        })
        .collect();
    let dyn_recipients: Vec<&dyn Recipient> =
        recipients.iter().map(|r| r as &dyn Recipient).collect();
    let sealed = ibemail_message::seal(
        &plain.to_bytes(),
        &dyn_recipients,
        &mut OsRng,
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let section = ibemail_message::header::HeaderSection::parse(&sealed);
    Message {
        headers: section
            .fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(f.name).into_owned(),
                    f.value().to_vec(),
                )
            })
            .collect(),
        body: sealed[section.body_offset..].to_vec(),
        size: sealed.len(),
        ..plain
    }
}

fn run(engine: &Engine, message: &Message, origin: Origin) -> Verdict {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.process(message, origin))
}

fn tempfails(v: &Verdict) -> bool {
    matches!(v.reply, Reply::Tempfail(_))
}

#[test]
fn the_policy_table() {
    let keys = keys();
    let b = || Dns::Params(Box::new(keys.b_record.clone()));
    let opportunistic = "";
    let require_b = "[policy.domains.\"b.test\"]\nencrypt = \"require\"\n";
    let never_b = "[policy.domains.\"b.test\"]\nencrypt = \"never\"\n";
    let sign = "[signing]\nsign = \"always\"\n";
    let require_sig = "[policy.domains.\"c.test\"]\nsignature = \"require\"\n";
    let alice_to = |to: &[&str]| message("alice@a.test", to);

    // (name, extra config, DNS, message, origin, expected kind, tempfail?)
    #[allow(clippy::type_complexity)]
    let rows: Vec<(&str, &str, Vec<(&str, Dns)>, Message, Origin, Kind, bool)> = vec![
        (
            "ibemail domain: sealed",
            opportunistic,
            vec![("b.test", b())],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Encrypted,
            false,
        ),
        (
            // Part of it was past the size limit when it arrived (a reload
            // raised the limit since): never sealed short, never in clear.
            "truncated on arrival: tempfail",
            opportunistic,
            vec![("b.test", b())],
            Message {
                truncated: true,
                ..alice_to(&["bob@b.test"])
            },
            Origin::Internal,
            Kind::Tempfail,
            true,
        ),
        (
            "submitted on the host: sealed too",
            opportunistic,
            vec![("b.test", b())],
            alice_to(&["bob@b.test"]),
            Origin::Local,
            Kind::Encrypted,
            false,
        ),
        (
            "no ibemail, opportunistic: as it is",
            opportunistic,
            vec![],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Plaintext,
            false,
        ),
        (
            "no ibemail, require: deferred",
            require_b,
            vec![],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Tempfail,
            true,
        ),
        (
            "DNS down: deferred, never plaintext",
            opportunistic,
            vec![("b.test", Dns::Down)],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Tempfail,
            true,
        ),
        (
            "record stripped under its policy: deferred",
            opportunistic,
            vec![("b.test", Dns::PolicyRequires)],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Tempfail,
            true,
        ),
        (
            "encrypt never: as it is",
            never_b,
            vec![("b.test", b())],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Plaintext,
            false,
        ),
        (
            "mixed recipients: sealed, copy re-injected",
            opportunistic,
            vec![("b.test", b())],
            alice_to(&["bob@b.test", "carol@c.test"]),
            Origin::Internal,
            Kind::Split,
            false,
        ),
        (
            "an address that cannot be an identity: refused",
            opportunistic,
            vec![("b.test", b())],
            alice_to(&["\"bob smith\"@b.test"]),
            Origin::Internal,
            Kind::Rejected,
            false,
        ),
        (
            "outside client to a remote domain: not ours",
            opportunistic,
            vec![("b.test", b())],
            message("mallory@c.test", &["bob@b.test"]),
            Origin::External,
            Kind::Untouched,
            false,
        ),
        (
            "plain inbound, no signature, report: as it is",
            opportunistic,
            vec![],
            message("carol@c.test", &["alice@a.test"]),
            Origin::External,
            Kind::Untouched,
            false,
        ),
        (
            "plain inbound, signature required: held",
            require_sig,
            vec![],
            message("carol@c.test", &["alice@a.test"]),
            Origin::External,
            Kind::Unsigned,
            false,
        ),
        (
            "sealed to its recipient: opened",
            opportunistic,
            vec![],
            sealed_for(&keys, "carol@c.test", &["alice@a.test"]),
            Origin::External,
            Kind::Decrypted,
            false,
        ),
        (
            "sealed, plus a local recipient it was not sealed to: not opened",
            opportunistic,
            vec![],
            Message {
                recipients: vec!["<alice@a.test>".into(), "<dave@a.test>".into()],
                ..sealed_for(&keys, "carol@c.test", &["alice@a.test"])
            },
            Origin::External,
            Kind::Untouched,
            false,
        ),
        (
            "signed and sealed by our user",
            sign,
            vec![("b.test", b())],
            alice_to(&["bob@b.test"]),
            Origin::Internal,
            Kind::Encrypted,
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (name, extra, dns, message, origin, kind, tempfail) in rows {
        let copies = Arc::new(Copies::default());
        let verdict = run(&engine(&keys, extra, &dns, &copies), &message, origin);
        if verdict.kind != kind || tempfails(&verdict) != tempfail {
            failures.push(format!("{name}: expected {kind:?}, got {verdict:?}"));
            continue;
        }
        // What each verdict must carry besides its kind.
        match kind {
            Kind::Split => {
                let sent = copies.0.lock().unwrap();
                if sent.len() != 1 || sent[0].0 != ["<carol@c.test>"] {
                    failures.push(format!("{name}: copies {:?}", sent.iter().map(|c| &c.0)));
                }
                if !verdict
                    .actions
                    .contains(&Action::DeleteRecipient("<carol@c.test>".into()))
                {
                    failures.push(format!("{name}: carol not taken off the sealed original"));
                }
            }
            Kind::Decrypted => {
                let body = verdict.actions.iter().find_map(|a| match a {
                    Action::ReplaceBody(b) => Some(b.clone()),
                    _ => None,
                });
                if body.as_deref() != Some(b"The figures.\r\n".as_slice()) {
                    failures.push(format!("{name}: body {body:?}"));
                }
                if !verdict
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::ChangeSender(s) if s == "<postmaster@a.test>"))
                {
                    failures.push(format!("{name}: notifications not kept local"));
                }
            }
            Kind::Unsigned
                if !verdict
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Quarantine(_))) =>
            {
                failures.push(format!("{name}: not held"));
            }
            Kind::Encrypted
                if extra == sign && verdict.note.signature.as_deref() != Some("signed n=1") =>
            {
                failures.push(format!("{name}: note {:?}", verdict.note));
            }
            Kind::Encrypted | Kind::Plaintext | Kind::Untouched => {
                // Nothing readable leaves when sealed: the body is replaced.
                let replaced = verdict
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::ReplaceBody(_)));
                if replaced != (kind == Kind::Encrypted) {
                    failures.push(format!("{name}: body replaced = {replaced}"));
                }
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
