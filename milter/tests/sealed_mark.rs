//! The `e=1` mark ("signed to travel sealed; fails if it arrives
//! decrypted") must hold for mail whose own Content-Type is
//! `application/pkcs7-mime` too — S/MIME opaque-signed mail (Outlook's
//! `smime-type=signed-data`), which ibemail seals like any readable mail
//! (security review 4).
//!
//! The attack: the man in the middle of threat-model §5 (he substituted
//! a.test's parameters at the sender's first lookup) decrypts what
//! c.test's milter sealed for alice@a.test and delivers the plaintext to
//! a.test's MX. Its inner signature carries `e=1`. For a text/plain
//! message the receiver fails it ("arrived decrypted") and, under
//! `signature = "require"`, holds it. For an opaque-signed message the
//! engine used to take the plaintext for ciphertext that is "not ours"
//! (`is_encrypted` reads only the Content-Type), verify it with
//! `arrived_sealed = true`, and report `ibesig=pass`: the mail was
//! delivered, not held, and the decryption on the way went unnoticed. The
//! fix: a message that does not open here counts as sealed only if its
//! body really is CMS EnvelopedData or AuthEnvelopedData
//! (`is_cms_encrypted`, the outbound side's test for "already encrypted").

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::fake_dns::{Dns, FakeDns};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::service::{KeyService, Peer};
use ibemail_kgc::store::Store;
use ibemail_message::header::HeaderSection;
use ibemail_message::signature::{Algorithm, MessageSignature};
use ibemail_message::{CapsuleError, IbeRecipient, Limits, MessageSigner, Recipient};
use ibemail_milter::config::Config;
use ibemail_milter::engine::{Action, Engine, Kind, Message, Origin, Reply, Verdict};
use ibemail_milter::metrics::Metrics;
use ibemail_milter::ports::{KeyAccess, Ports};
use ibemail_params::Record;
use rand_core::OsRng;

/// c.test's key service signing as carol (what c.test's milter does).
struct Carol {
    kgc: Arc<KeyService>,
    identity: Identity,
}

impl MessageSigner for Carol {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn generation(&self) -> Generation {
        1
    }
    fn algorithm(&self) -> Algorithm {
        Algorithm::Certified
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        self.kgc
            .sign_certified(self.identity.as_str(), 1, digest, Peer::default())
            .map(MessageSignature::from)
            .map_err(|e| e.to_string())
    }
}

struct World {
    _tmp: tempfile::TempDir,
    state: std::path::PathBuf,
    /// a.test's real KGC (the receiver).
    a: Arc<KeyService>,
    /// c.test's KGC (the sender's domain) and its record.
    c: Arc<KeyService>,
    c_record: Record,
    /// The attacker's substitute "a.test" store.
    mitm: Arc<KeyService>,
    mitm_record: Record,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let store = |name: &str, domain: &str| {
        let dir = tmp.path().join(name);
        Store::setup(&dir, domain, 0, None, &mut OsRng).unwrap();
        let record = Store::open(&dir).unwrap().records()[0].clone();
        (Arc::new(KeyService::load(&[dir], 16).unwrap()), record)
    };
    let (a, _) = store("a", "a.test");
    let (c, c_record) = store("c", "c.test");
    let (mitm, mitm_record) = store("mitm", "a.test");
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    World {
        _tmp: tmp,
        state,
        a,
        c,
        c_record,
        mitm,
        mitm_record,
    }
}

/// a.test's inbound milter; c.test's signatures are required.
fn receiver(w: &World) -> Engine {
    let config = Config::parse(&format!(
        "socket = \"inet:127.0.0.1:1\"\nauthserv_id = \"mx.a.test\"\nlocal_domains = [\"a.test\"]\n\
         state_dir = \"{}\"\n\
         [policy.domains.\"c.test\"]\nsignature = \"require\"\n\
         [kgc]\nsocket = \"/nonexistent\"\n",
        w.state.display()
    ))
    .unwrap();
    let ports = Ports {
        parameters: Arc::new(FakeDns(HashMap::from([(
            "c.test".to_string(),
            Dns::Params(Box::new(w.c_record.clone())),
        )]))),
        keys: Some(w.a.clone() as Arc<dyn KeyAccess>),
        reinjector: None,
    };
    Engine::with_ports(config, ports, Arc::new(Metrics::default())).unwrap()
}

/// What the man in the middle gets: carol's message as c.test's milter
/// signs (inside, e=1) and seals it — to the attacker's parameters —
/// opened with the attacker's key.
fn decrypted_on_the_way(w: &World, original: &[u8]) -> Vec<u8> {
    let alice = Identity::parse("alice@a.test").unwrap();
    let to = IbeRecipient {
        identity: alice.clone(),
        generation: w.mitm_record.generation,
        params: w.mitm_record.params.clone(),
    };
    let mut carol = Carol {
        kgc: w.c.clone(),
        identity: Identity::parse("carol@c.test").unwrap(),
    };
    let sealed = ibemail_message::seal_signed(
        original.to_vec(),
        &[&to as &dyn Recipient],
        Some(&mut carol),
        &mut OsRng,
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    let mitm = w.mitm.clone();
    let opened = ibemail_message::open(&sealed, &[alice], &Limits::default(), |id, g, capsule| {
        mitm.open(id.as_str(), g, &capsule.to_bytes(), Peer::default())
            .map_err(|_| CapsuleError::Rejected)
    })
    .unwrap();
    assert!(
        String::from_utf8_lossy(&opened.message).contains(" e=1;"),
        "the inner signature carries e=1"
    );
    opened.message
}

/// The plaintext as the MITM hands it to a.test's MX over SMTP.
fn arriving(bytes: &[u8]) -> Message {
    arriving_for(bytes, &["<alice@a.test>"])
}

/// The same, for `recipients`.
fn arriving_for(bytes: &[u8], recipients: &[&str]) -> Message {
    let section = HeaderSection::parse(bytes);
    Message {
        queue_id: "Q1".into(),
        sender: "<carol@c.test>".into(),
        auth_authen: None,
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
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
        body: bytes[section.body_offset..].to_vec(),
        size: bytes.len(),
        edits_in_place: true,
        truncated: false,
    }
}

fn run(engine: &Engine, message: &Message) -> Verdict {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(engine.process(message, Origin::External))
}

fn held(v: &Verdict) -> bool {
    v.actions.iter().any(|a| matches!(a, Action::Quarantine(_)))
}

fn results(v: &Verdict) -> String {
    v.actions
        .iter()
        .filter_map(|a| match a {
            Action::InsertHeader { name, value, .. } | Action::AddHeader { name, value }
                if name == "Authentication-Results" =>
            {
                Some(String::from_utf8_lossy(value).into_owned())
            }
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

#[test]
fn a_decrypted_plain_message_fails_its_sealed_signature() {
    // Control: the e=1 rule works for ordinary mail.
    let w = world();
    let original = b"From: Carol <carol@c.test>\r\nTo: alice@a.test\r\nSubject: the merger\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m1@c.test>\r\n\
Content-Type: text/plain\r\n\r\nConfidential.\r\n";
    let plain = decrypted_on_the_way(&w, original);
    let verdict = run(&receiver(&w), &arriving(&plain));
    assert!(
        held(&verdict) && verdict.kind == Kind::Unsigned,
        "{verdict:?}"
    );
    assert!(
        results(&verdict).contains("ibesig=fail"),
        "{}",
        results(&verdict)
    );
}

/// Outlook-style opaque-signed S/MIME: readable by anyone, so ibemail
/// seals it (attacks.rs::signed_smime_is_sealed_like_any_mail).
const OPAQUE_SIGNED: &[u8] =
    b"From: Carol <carol@c.test>\r\nTo: alice@a.test\r\nSubject: the merger\r\n\
Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m2@c.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Disposition: attachment; filename=smime.p7m\r\n\r\n\
MIAGCSqGSIb3DQEHAqCAMIACAQExADCABgkqhkiG9w0BBwGggCSABA1Db25maWRlbnRpYWwuAAAA\r\n\
AAAAMQAAAAAAAA==\r\n";

#[test]
fn a_decrypted_opaque_signed_message_does_not_pass_its_sealed_signature() {
    let w = world();
    let plain = decrypted_on_the_way(&w, OPAQUE_SIGNED);
    assert!(
        !ibemail_message::is_cms_encrypted(&plain),
        "what arrives is not encrypted"
    );
    let verdict = run(&receiver(&w), &arriving(&plain));
    let results = results(&verdict);
    assert!(
        !results.contains("ibesig=pass"),
        "a signature made to travel sealed (e=1), arriving decrypted, shows as a pass: {results}"
    );
    assert!(
        held(&verdict) || matches!(verdict.reply, Reply::Tempfail(_) | Reply::Reject(_)),
        "signature = require, yet the decrypted copy is delivered: {verdict:?}"
    );
}

/// The same, addressed to a remote recipient as well: such mail is not
/// opened here (the plaintext would travel on), and must not count as
/// sealed on that path either.
#[test]
fn a_decrypted_opaque_signed_message_also_for_another_domain_does_not_pass() {
    let w = world();
    let plain = decrypted_on_the_way(&w, OPAQUE_SIGNED);
    let verdict = run(
        &receiver(&w),
        &arriving_for(&plain, &["<alice@a.test>", "<dave@d.test>"]),
    );
    let results = results(&verdict);
    assert!(
        results.contains("ibesig=fail"),
        "a signature made to travel sealed (e=1), arriving decrypted: {results}"
    );
    assert!(
        held(&verdict) || matches!(verdict.reply, Reply::Tempfail(_) | Reply::Reject(_)),
        "signature = require, yet the decrypted copy is delivered: {verdict:?}"
    );
}
