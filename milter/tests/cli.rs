//! The offline commands as an administrator or a mail filter runs them:
//! `encrypt` and `decrypt` round trips (records on the command line, in a
//! file, or from a real DNS server; keys in-process or in the KGC daemon),
//! failures that leave stdout empty, and `lookup` for every DNS outcome
//! against a real Knot DNS server.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use ibemail_kgc::server::{ServerConfig, serve};
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::Store;
use ibemail_test_support::knot::{Knot, Signing, Zone};
use ibemail_test_support::silent::Silent;
use rand_core::OsRng;

const MESSAGE: &[u8] = b"From: Alice <alice@a.test>\r\nTo: Bob <bob@b.test>\r\n\
Subject: quarterly numbers\r\nMessage-ID: <1@a.test>\r\n\r\nThe numbers are in.\r\n";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn milter() -> Command {
    Command::cargo_bin("ibemail-milter").unwrap()
}

/// A KGC store for `domain` under `parent`.
fn kgc(parent: &Path, domain: &str) -> (PathBuf, Store) {
    let dir = parent.join(domain);
    let store = Store::setup(&dir, domain, now(), None, &mut OsRng).unwrap();
    (dir, store)
}

fn record_text(store: &Store) -> String {
    store.records()[0].to_text()
}

fn encrypt(args: &[&str], input: &[u8]) -> Vec<u8> {
    let out = milter()
        .arg("encrypt")
        .args(args)
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "encrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs decrypt; returns (exit code, stdout, stderr).
fn decrypt(args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    let out = milter()
        .arg("decrypt")
        .args(args)
        .write_stdin(input)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        out.stdout,
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn assert_ciphertext(sealed: &[u8]) {
    let text = String::from_utf8_lossy(sealed);
    assert!(text.contains("smime-type=authEnveloped-data"), "{text}");
    assert!(!text.contains("quarterly numbers"));
    assert!(!text.contains("The numbers are in"));
}

/// A failed decrypt: non-zero exit, nothing on stdout, one line on stderr.
fn assert_clean_failure((code, stdout, stderr): (i32, Vec<u8>, String), expected: i32, why: &str) {
    assert_eq!(code, expected, "stderr: {stderr}");
    assert!(stdout.is_empty(), "stdout must stay empty on failure");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr:?}");
    assert!(stderr.contains(why), "{stderr:?} should mention {why:?}");
}

#[test]
fn record_on_the_command_line_round_trips_through_the_key_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = kgc(tmp.path(), "b.test");
    let sealed = encrypt(
        &["--record", &record_text(&store), "--rcpt", "bob@b.test"],
        MESSAGE,
    );
    assert_ciphertext(&sealed);
    let (code, opened, stderr) = decrypt(
        &["--kgc-dir", dir.to_str().unwrap(), "--rcpt", "Bob@B.TEST"],
        &sealed,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(opened, MESSAGE);
}

#[test]
fn record_file_from_ibemail_kgc_record_serves_several_domains() {
    let tmp = tempfile::tempdir().unwrap();
    let (b_dir, b) = kgc(tmp.path(), "b.test");
    let (c_dir, c) = kgc(tmp.path(), "c.test");
    let file = tmp.path().join("records.zone");
    let lines: Vec<String> = [(&b, "b.test"), (&c, "c.test")]
        .iter()
        .flat_map(|(s, d)| s.records().into_iter().map(|r| r.zone_line(d, 3600)))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let sealed = encrypt(
        &[
            "--record-file",
            file.to_str().unwrap(),
            "--rcpt",
            "bob@b.test",
            "--rcpt",
            "carol@c.test",
        ],
        MESSAGE,
    );
    for (dir, rcpt) in [(&b_dir, "bob@b.test"), (&c_dir, "carol@c.test")] {
        let (code, opened, stderr) = decrypt(
            &["--kgc-dir", dir.to_str().unwrap(), "--rcpt", rcpt],
            &sealed,
        );
        assert_eq!(code, 0, "{rcpt}: {stderr}");
        assert_eq!(opened, MESSAGE);
    }
    // A domain the file does not cover is an error, not plaintext.
    let out = milter()
        .args(["encrypt", "--record-file", file.to_str().unwrap()])
        .args(["--rcpt", "dave@d.test"])
        .write_stdin(MESSAGE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no usable record for d.test"));
}

#[test]
fn decrypt_failures_print_one_line_and_nothing_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = kgc(tmp.path(), "b.test");
    let dir = dir.to_str().unwrap();
    let sealed = encrypt(
        &["--record", &record_text(&store), "--rcpt", "bob@b.test"],
        MESSAGE,
    );
    assert_clean_failure(
        decrypt(&["--kgc-dir", dir, "--rcpt", "eve@b.test"], &sealed),
        1,
        "no recipient",
    );
    assert_clean_failure(
        decrypt(&["--kgc-dir", dir, "--rcpt", "bob@b.test"], MESSAGE),
        1,
        "not an encrypted message",
    );
    // A corrupted body (one base64 character changed).
    let mut corrupt = sealed.clone();
    let pos = corrupt.len() - 40;
    corrupt[pos] = if corrupt[pos] == b'A' { b'B' } else { b'A' };
    let (code, stdout, stderr) = decrypt(&["--kgc-dir", dir, "--rcpt", "bob@b.test"], &corrupt);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1);
    // Another domain's key store cannot open it.
    let (other, _) = kgc(tmp.path(), "other.test");
    assert_clean_failure(
        decrypt(
            &["--kgc-dir", other.to_str().unwrap(), "--rcpt", "bob@b.test"],
            &sealed,
        ),
        1,
        "",
    );
    // A key store readable by others is refused.
    std::fs::set_permissions(
        Path::new(dir),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert_clean_failure(
        decrypt(&["--kgc-dir", dir, "--rcpt", "bob@b.test"], &sealed),
        1,
        "0700",
    );
}

/// The KGC daemon in a thread of this test; stops when dropped.
struct Daemon {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(dir: &Path, socket: PathBuf) -> Daemon {
        let service = Arc::new(KeyService::load(&[dir.to_path_buf()], 16).unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let path = socket.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&path).unwrap();
                ready_tx.send(()).unwrap();
                serve(listener, service, ServerConfig::default(), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        ready.recv_timeout(Duration::from_secs(10)).unwrap();
        Daemon {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn decrypt_through_the_kgc_daemon_and_tempfail_when_it_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, store) = kgc(tmp.path(), "b.test");
    let sealed = encrypt(
        &["--record", &record_text(&store), "--rcpt", "bob@b.test"],
        MESSAGE,
    );
    let socket = tmp.path().join("kgc.sock");
    let sock = socket.to_str().unwrap().to_string();
    {
        let _daemon = Daemon::start(&dir, socket.clone());
        let (code, opened, stderr) =
            decrypt(&["--kgc-socket", &sock, "--rcpt", "bob@b.test"], &sealed);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(opened, MESSAGE);
    }
    // Daemon gone: temporary (75) so a filter or the MTA retries.
    assert_clean_failure(
        decrypt(&["--kgc-socket", &sock, "--rcpt", "bob@b.test"], &sealed),
        75,
        "kgc",
    );
}

fn knot_with_every_case(b: &Store, two_old: &Store, two_new: &Store) -> Knot {
    let txt = |r: &ibemail_params::Record| format!("_ibemailkey TXT \"{}\"", r.to_text());
    let b_rec = txt(&b.records()[0]);
    let mut g1 = two_old.records()[0].clone();
    g1.generation = 1;
    let mut g2 = two_new.records()[0].clone();
    g2.generation = 2;
    Knot::start_on(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        &[
            Zone::new("b.test", Signing::Signed, &[&b_rec]),
            Zone::new("unsigned.test", Signing::Unsigned, &[&b_rec]),
            Zone::new("two.test", Signing::Signed, &[&txt(&g1), &txt(&g2)]),
            Zone::new("plain.test", Signing::Signed, &["www A 127.0.0.1"]),
            Zone::new(
                "bad.test",
                Signing::Signed,
                &["_ibemailkey TXT \"ver=1; a=bb2-fo; c=bls12-381; n=1; X=AAAA; Y=AAAA\""],
            ),
            Zone::new(
                "tampered.test",
                Signing::Tampered {
                    owner: "_ibemailkey".into(),
                    forged: format!("\"{}\"", g2.to_text()),
                },
                &[&b_rec],
            ),
            Zone::new("broken.test", Signing::Broken, &[]),
        ],
    )
}

/// Runs `command` with `args` and `input` on stdin; returns (exit code,
/// stdout).
fn run(command: &str, args: &[&str], input: &[u8]) -> (i32, String) {
    let out = milter()
        .arg(command)
        .args(args)
        .write_stdin(input)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// Runs lookup; returns (exit code, stdout).
fn lookup(knot_args: &[String], domain: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec![domain];
    args.extend(knot_args.iter().map(String::as_str));
    args.extend(extra);
    run("lookup", &args, b"")
}

#[test]
fn lookup_and_encrypt_against_a_real_dns_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (b_dir, b) = kgc(tmp.path(), "b.test");
    let (_, old) = kgc(tmp.path(), "old.test");
    let (_, new) = kgc(tmp.path(), "new.test");
    let knot = knot_with_every_case(&b, &old, &new);
    let args = vec![
        "--resolver".to_string(),
        knot.addr.to_string(),
        "--trust-anchor".to_string(),
        knot.trust_anchor_file().to_str().unwrap().to_string(),
        "--timeout".to_string(),
        "2".to_string(),
    ];

    let (code, out) = lookup(&args, "b.test", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("generation: 1 (published: 1)"), "{out}");
    assert!(out.contains("algorithm:  bb2-fo on bls12-381"), "{out}");
    assert!(out.contains("dnssec:     secure"), "{out}");
    let ttl: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("ttl:"))
        .and_then(|v| v.trim().strip_suffix('s'))
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&ttl), "the zone's TTL is 300: {out}");

    let (code, out) = lookup(&args, "two.test", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("generation: 2 (published: 1, 2)"), "{out}");

    let (code, out) = lookup(&args, "unsigned.test", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dnssec:     insecure"), "{out}");
    let (code, out) = lookup(&args, "unsigned.test", &["--dnssec", "require"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("dnssec=require but the answer is insecure"),
        "{out}"
    );

    let (code, out) = lookup(&args, "plain.test", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NXDOMAIN"), "{out}");
    let (code, out) = lookup(&args, "bad.test", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no usable ibemail record"), "{out}");

    let (code, out) = lookup(&args, "tampered.test", &[]);
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("temporary failure"), "{out}");
    // A bogus answer says what usually causes it on a trial.
    assert!(out.contains("lab zone"), "{out}");
    let (code, out) = lookup(&args, "broken.test", &[]);
    assert_eq!(code, 75, "{out}");

    // Pins: first use, then a match.
    let pins = tmp.path().join("pins");
    let pin_args = ["--pins", pins.to_str().unwrap(), "--pin", "enforce"];
    let (code, out) = lookup(&args, "b.test", &pin_args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pin:        first use"), "{out}");
    let (_, out) = lookup(&args, "b.test", &pin_args);
    assert!(out.contains("pin:        matches"), "{out}");

    // --config: the resolvers, trust anchor and policies of the milter's
    // configuration, without retyping them; its pin file is read, never
    // rewritten.
    let config = tmp.path().join("milter.toml");
    let config_pins = tmp.path().join("milter-pins");
    std::fs::write(
        &config,
        format!(
            "socket = \"inet:127.0.0.1:8895\"\nauthserv_id = \"mx.test\"\n\
             [dns]\nresolvers = [\"{}\"]\ntrust_anchor = \"{}\"\ntimeout = \"2s\"\npins = \"{}\"\n\
             [policy.domains.\"unsigned.test\"]\ndnssec = \"require\"\n\
             [policy.domains.\"b.test\"]\npin = \"report\"\n",
            knot.addr,
            knot.trust_anchor_file().display(),
            config_pins.display()
        ),
    )
    .unwrap();
    let config_arg = ["--config", config.to_str().unwrap()];
    let (code, out) = run("lookup", &["b.test", config_arg[0], config_arg[1]], b"");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dnssec:     secure"), "{out}");
    assert!(out.contains("pin:        first use"), "{out}");
    assert!(
        !config_pins.exists(),
        "lookup --config rewrote the milter's pins"
    );
    let (code, out) = run(
        "lookup",
        &["unsigned.test", config_arg[0], config_arg[1]],
        b"",
    );
    assert_eq!(
        code, 3,
        "the configuration requires DNSSEC for unsigned.test: {out}"
    );
    let (code, out) = run(
        "lookup",
        &[
            "unsigned.test",
            config_arg[0],
            config_arg[1],
            "--dnssec",
            "prefer",
        ],
        b"",
    );
    assert_eq!(code, 0, "a flag overrides the configuration: {out}");

    // encrypt --resolver seals with what lookup reported; the KGC opens it.
    let mut enc_args: Vec<&str> = args.iter().map(String::as_str).collect();
    enc_args.extend(["--dnssec", "require", "--rcpt", "bob@b.test"]);
    let sealed = encrypt(&enc_args, MESSAGE);
    assert_ciphertext(&sealed);
    let (code, opened, stderr) = decrypt(
        &["--kgc-dir", b_dir.to_str().unwrap(), "--rcpt", "bob@b.test"],
        &sealed,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(opened, MESSAGE);

    // No parameters: encrypt refuses rather than passing plaintext on.
    let out = milter()
        .arg("encrypt")
        .args(&args)
        .args(["--rcpt", "www@plain.test"])
        .write_stdin(MESSAGE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

#[test]
fn lookup_of_a_silent_server_is_a_temporary_failure() {
    let silent = Silent::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (code, out) = lookup(
        &[
            "--resolver".into(),
            silent.addr.to_string(),
            "--timeout".into(),
            "1".into(),
        ],
        "b.test",
        &[],
    );
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("temporary failure"), "{out}");
}

/// Runs verify; returns (exit code, stdout).
fn verify(dns_args: &[String], input: &[u8]) -> (i32, String) {
    let args: Vec<&str> = dns_args.iter().map(String::as_str).collect();
    run("verify", &args, input)
}

#[test]
fn verify_checks_a_signature_against_the_signers_dns() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, b) = kgc(tmp.path(), "b.test");
    let record = format!("_ibemailkey TXT \"{}\"", record_text(&b));
    let knot = Knot::start_on(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[Zone::new("b.test", Signing::Signed, &[&record])],
    );
    let args = vec![
        "--resolver".to_string(),
        knot.addr.to_string(),
        "--trust-anchor".to_string(),
        knot.trust_anchor_file().to_str().unwrap().to_string(),
    ];
    let message = b"From: Bob <bob@b.test>\r\nTo: alice@a.test\r\nSubject: hi\r\n\r\nHello.\r\n";
    let signed = common::signed_by(&b, "bob@b.test", message);

    let (code, out) = verify(&args, &signed);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ibesig=pass"), "{out}");
    assert!(out.contains("header.i=bob@b.test"), "{out}");

    let mut tampered = signed.clone();
    let at = tampered.len() - 4;
    tampered[at] ^= 0x20;
    let (code, out) = verify(&args, &tampered);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ibesig=fail (body hash mismatch)"), "{out}");

    let (code, out) = verify(&args, message);
    assert_eq!((code, out.trim()), (1, "ibesig=none"));

    let silent = Silent::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (code, out) = verify(
        &[
            "--resolver".into(),
            silent.addr.to_string(),
            "--timeout".into(),
            "1".into(),
        ],
        &signed,
    );
    assert_eq!(code, 75, "{out}");
    assert!(out.starts_with("ibesig=temperror"), "{out}");
}

/// `encrypt --sign` signs as the From address inside and outside, as the
/// milter does: `verify` passes on the sealed message (the outside) and on
/// the decrypted one (the inside, made to travel sealed).
#[test]
fn encrypt_signs_inside_and_outside_like_the_milter() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, a) = kgc(tmp.path(), "a.test");
    let (b_dir, b) = kgc(tmp.path(), "b.test");
    let knot = Knot::start_on(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[Zone::new(
            "a.test",
            Signing::Signed,
            &[&format!("_ibemailkey TXT \"{}\"", record_text(&a))],
        )],
    );
    let dns = vec![
        "--resolver".to_string(),
        knot.addr.to_string(),
        "--trust-anchor".to_string(),
        knot.trust_anchor_file().to_str().unwrap().to_string(),
    ];
    let message = b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n";
    let sealed = encrypt(
        &[
            "--record",
            &record_text(&b),
            "--rcpt",
            "bob@b.test",
            "--sign",
            "--kgc-dir",
            a_dir.to_str().unwrap(),
        ],
        message,
    );
    assert!(sealed.starts_with(b"IBE-Signature:"));
    let (code, out) = verify(&dns, &sealed);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("header.i=alice@a.test"), "{out}");
    let (code, opened, stderr) = decrypt(
        &["--kgc-dir", b_dir.to_str().unwrap(), "--rcpt", "bob@b.test"],
        &sealed,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(opened.ends_with(message));
    // The inside carries e=1: it passes only where it arrived sealed, and
    // `verify` of the decrypted message says so rather than passing it.
    assert!(String::from_utf8_lossy(&opened).contains("e=1"));
    // Without a key service to sign with, nothing is written.
    let out = milter()
        .args([
            "encrypt",
            "--record",
            &record_text(&b),
            "--rcpt",
            "bob@b.test",
            "--sign",
        ])
        .write_stdin(message.as_slice())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
}

/// `lookup`, as the administrator runs it, under an on-path DNS attacker
/// (the reproduction): once b.test was seen with its published
/// policy, stripping its record or substituting the attacker's generation
/// 999 is refused ("mail would be deferred"), never "plaintext".
#[test]
fn lookup_under_a_dns_attacker_never_says_plaintext_for_a_domain_with_a_policy() {
    use ibemail_test_support::dnsproxy::DnsProxy;

    let tmp = tempfile::tempdir().unwrap();
    let policy = Some(ibemail_params::Policy::require(7 * 86_400));
    let b = Store::setup(&tmp.path().join("b"), "b.test", now(), policy, &mut OsRng).unwrap();
    let record = b.records()[0].clone();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let genuine = Knot::start_on(
        lo,
        &[Zone::new(
            "b.test",
            Signing::Unsigned,
            &[&format!("_ibemailkey TXT {}", record.zone_rdata())],
        )],
    );
    let evil = Knot::start_on(lo, &[Zone::new("b.test", Signing::Unsigned, &[])]);
    let proxy = DnsProxy::start(lo, genuine.addr, evil.addr);
    let pins = tmp.path().join("pins");
    let args = [
        "--resolver".to_string(),
        proxy.addr.to_string(),
        "--trust-anchor".to_string(),
        genuine.trust_anchor_file().to_str().unwrap().to_string(),
        // Generous: under a loaded test run a first answer can take over
        // two seconds, and a timeout is a different (temporary) result.
        "--timeout".to_string(),
        "5".to_string(),
        "--pins".to_string(),
        pins.to_str().unwrap().to_string(),
        "--pin".to_string(),
        "policy".to_string(),
    ];
    let (code, out) = lookup(&args, "b.test", &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("policy:     require, max-age 604800s"),
        "{out}"
    );

    proxy.attack(true);
    let (code, out) = lookup(&args, "b.test", &[]);
    assert_eq!(code, 3, "stripped: {out}");
    assert!(out.contains("refused, mail would be deferred"), "{out}");
    assert!(!out.contains("plaintext"), "{out}");
    let substitute = Store::setup(
        &tmp.path().join("evil"),
        "b.test",
        now(),
        policy,
        &mut OsRng,
    )
    .unwrap()
    .records()[0]
        .clone();
    let mut substitute = substitute;
    substitute.generation = 999;
    evil.set_records(
        "b.test",
        "_ibemailkey",
        &[&format!("TXT {}", substitute.zone_rdata())],
    );
    let (code, out) = lookup(&args, "b.test", &[]);
    assert_eq!(code, 3, "substituted: {out}");
    assert!(out.contains("UNCHAINED: generation 999"), "{out}");
}

#[test]
fn check_config_explains_a_valid_file_and_names_the_key_of_a_mistake() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ibemail-milter.toml");
    let out = milter()
        .args(["--check-config", "--config"])
        .arg(&sample)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("socket:            inet:127.0.0.1:8895"),
        "{text}"
    );
    assert!(
        text.contains("the KGC daemon at /run/ibemail/kgc.sock"),
        "{text}"
    );
    assert!(text.contains("configuration OK"), "{text}");
    // The built-in trust anchor is explained where a trial will read it.
    assert!(text.contains("lab zone"), "{text}");
    // The same with `run`, as systemd's ExecStart names it.
    milter()
        .args(["run", "--check-config", "--config"])
        .arg(&sample)
        .assert()
        .success();

    let tmp = tempfile::tempdir().unwrap();
    let broken = tmp.path().join("broken.toml");
    std::fs::write(
        &broken,
        "socket = \"inet:127.0.0.1:8895\"\nauthserv_id = \"x\"\n[policy]\nencrypt = \"always\"\n",
    )
    .unwrap();
    milter()
        .args(["--check-config", "--config"])
        .arg(&broken)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("policy.encrypt"));
    // Without a file to check it is a usage error.
    milter()
        .args(["lookup", "example.org", "--check-config"])
        .assert()
        .code(64);
}
