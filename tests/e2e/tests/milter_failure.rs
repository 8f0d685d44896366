//! The milter itself fails under Postfix (`milter_default_action =
//! tempfail`): it is killed with SIGKILL in the middle of a transaction
//! (held at a known point: waiting for its KGC, which is stopped), mail
//! arrives while it is down, and it hangs. At a.test (sending) and at b.test
//! (receiving), no mail is lost, none leaves in plaintext, and everything
//! is delivered exactly once when the milter is back.
//!
//! The times Postfix takes to notice are printed (they are measurements,
//! not assertions; docs/operations.md records them).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ibemail_e2e::{Options, World, delivered_original, message};

const WAIT: Duration = Duration::from_secs(60);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What waits at the Unix socket `path`: connections not yet accepted
/// (`ss`'s Recv-Q for the listener) and bytes not yet read on accepted
/// ones (the milter keeps its connections, so a request may come on one).
fn pending_connections(path: &Path) -> usize {
    let out = Command::new("ss").args(["-xanH"]).output().unwrap();
    let path = path.display().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.split_whitespace().nth(4) == Some(path.as_str()))
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<usize>().ok())
        .sum()
}

/// Waits until someone (the milter) waits on `domain`'s stopped KGC.
fn wait_for_a_request_to_the_kgc(world: &World, domain: &str) {
    let socket = &world.domain(domain).kgc_socket;
    let deadline = Instant::now() + WAIT;
    while pending_connections(socket) == 0 {
        assert!(
            Instant::now() < deadline,
            "the milter never asked the KGC:\n{}",
            world.milter_log(domain)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// The SMTP reply code at which a failed swaks transcript stopped.
fn refusal(transcript: &str) -> &str {
    transcript
        .lines()
        .rev()
        .find(|l| l.starts_with("<** "))
        .unwrap_or("")
}

#[test]
fn a_killed_or_hung_milter_defers_mail_and_loses_none_and_leaks_none() {
    let mut world = World::start(Options {
        // a.test signs (so its milter asks its KGC for every message), and
        // waits long for the KGC: the test, not a timeout, ends the wait.
        a_milter: "[signing]\nsign = \"always\"\n[kgc]\ntimeout = \"300s\"".into(),
        b_milter: "[kgc]\ntimeout = \"300s\"".into(),
        ..Options::default()
    });
    let secret = |n: u32| format!("Secret number {n}");
    let mail = |n: u32| {
        message(
            "Alice <alice@a.test>",
            "Bob <bob@b.test>",
            &format!("Plans {n}"),
            &format!("{}\r\n", secret(n)),
        )
    };
    let (m1, m2, m3, m4, m5, m6) = (mail(1), mail(2), mail(3), mail(4), mail(5), mail(6));

    // 1. a.test's milter is killed while it waits for the KGC at the end
    //    of a message: Postfix sees the milter's connection close.
    world.signal_kgc("a.test", "STOP");
    let a_pid = world.milter_pid("a.test").unwrap();
    let (ok, transcript, noticed) = std::thread::scope(|scope| {
        let submission =
            scope.spawn(|| world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m1));
        wait_for_a_request_to_the_kgc(&world, "a.test");
        let killed = Instant::now();
        kill(a_pid);
        let (ok, transcript) = submission.join().unwrap();
        (ok, transcript, killed.elapsed())
    });
    eprintln!("killed mid-transaction: Postfix answered {noticed:?} after SIGKILL");
    assert!(!ok, "accepted without the milter:\n{transcript}");
    assert!(refusal(&transcript).contains(" 4"), "{transcript}");
    world.kill_milter("a.test"); // reaps the process
    world.signal_kgc("a.test", "CONT");

    // 2. While it is down: SMTP submissions are refused with 4xx (the
    //    client keeps the mail), local submissions wait in the maildrop.
    let started = Instant::now();
    let (ok, transcript) = world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m2);
    eprintln!(
        "milter down: the SMTP transaction was refused after {:?}",
        started.elapsed()
    );
    assert!(!ok, "accepted without the milter:\n{transcript}");
    assert!(refusal(&transcript).contains(" 4"), "{transcript}");
    world
        .a
        .postfix
        .sendmail("alice@a.test", &["bob@b.test"], &m3);
    std::thread::sleep(Duration::from_secs(2));
    assert!(world.b.postfix.mailbox("bob").is_empty());
    assert!(world.wire.seen().is_empty(), "nothing may leave a.test");

    // 3. The milter is back: the clients retry, pickup retries; each
    //    message arrives once, decrypted, and crossed as ciphertext.
    world.start_milter("a.test");
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m1);
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m2);
    world.a.postfix.kick_pickup();
    let bob = world.b.postfix.wait_for_mail("bob", 3, WAIT);
    for m in [&m1, &m2, &m3] {
        let copies: Vec<_> = bob
            .iter()
            .filter(|copy| delivered_original(copy, m).is_ok())
            .collect();
        assert_eq!(copies.len(), 1, "{}", text(m));
    }

    // 4. b.test's milter is killed while it waits for its KGC to open a
    //    message: a.test keeps the message queued, b.test has accepted
    //    nothing; then b.test's milter is down while a.test retries.
    world.signal_kgc("b.test", "STOP");
    let b_pid = world.milter_pid("b.test").unwrap();
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m4);
    wait_for_a_request_to_the_kgc(&world, "b.test");
    kill(b_pid);
    world.kill_milter("b.test");
    world.signal_kgc("b.test", "CONT");
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m5);
    let deadline = Instant::now() + WAIT;
    while world.a.postfix.queue().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", world.a.postfix.queue());
        std::thread::sleep(Duration::from_millis(100));
    }
    world.a.postfix.flush();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        world.b.postfix.mailbox("bob").len(),
        3,
        "b.test accepted mail unopened"
    );
    assert_eq!(world.a.postfix.queue().len(), 2, "a.test keeps both");
    world.start_milter("b.test");
    world.a.postfix.flush();
    let bob = world.b.postfix.wait_for_mail("bob", 5, WAIT);

    // 5. A hung milter (SIGSTOP): Postfix gives up after its milter
    //    timeouts, here lowered to 5 s, and the client retries.
    world.a.postfix.postconf("milter_command_timeout = 5s");
    world.a.postfix.postconf("milter_content_timeout = 5s");
    let a_pid = world.milter_pid("a.test").unwrap();
    Command::new("kill")
        .args(["-STOP", &a_pid.to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let (ok, transcript) = world.a.postfix.swaks("alice@a.test", &["bob@b.test"], &m6);
    eprintln!(
        "hung milter (milter_command_timeout = 5s): refused after {:?}",
        started.elapsed()
    );
    Command::new("kill")
        .args(["-CONT", &a_pid.to_string()])
        .status()
        .unwrap();
    assert!(!ok, "accepted without the milter:\n{transcript}");
    assert!(refusal(&transcript).contains(" 4"), "{transcript}");
    world.a.postfix.submit("alice@a.test", &["bob@b.test"], &m6);
    let bob_final = world.b.postfix.wait_for_mail("bob", 6, WAIT);

    // Exactly once each, and only ciphertext crossed.
    std::thread::sleep(Duration::from_secs(2));
    let bob_final = if world.b.postfix.mailbox("bob").len() == bob_final.len() {
        bob_final
    } else {
        panic!(
            "duplicates: {} messages",
            world.b.postfix.mailbox("bob").len()
        )
    };
    assert!(bob.len() <= bob_final.len());
    for m in [&m1, &m2, &m3, &m4, &m5, &m6] {
        let copies = bob_final
            .iter()
            .filter(|copy| delivered_original(copy, m).is_ok())
            .count();
        assert_eq!(copies, 1, "{}", text(m));
    }
    let wire = text(&world.wire.seen());
    assert!(wire.contains("smime-type=authEnveloped-data"));
    for n in 1..=6 {
        assert!(
            !wire.contains(&secret(n)),
            "message {n} crossed in plaintext"
        );
    }
}
