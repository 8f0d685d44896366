//! What a sender puts in a message cannot forge or garble the milter's log:
//! text taken from the message (a signature's tag values, header field
//! names) reaches a log line escaped and bounded. The log is captured as
//! the daemon writes it (tracing's text format, no colours).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::harness::*;
use indymilter_test::{EomAction, Status};

/// Everything logged in this test binary.
fn log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .init();
        log
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signature_tags_reach_the_log_escaped() {
    let log = log();
    let world = World::new();
    let requiring = Milter::start(&format!(
        "{}[policy.domains.\"d.test\"]\nsignature = \"require\"\n",
        world.receiver_config("")
    ))
    .await;
    // A terminal escape that erases the line and moves up, a bell, a
    // right-to-left override, a line separator before a fake line.
    let tag = "v=2\u{1b}[2K\u{1b}[1A\u{7}\u{202e}txet\u{2028}WARN forged";
    let mail = Mail {
        headers: vec![
            ("From".into(), " x@d.test".into()),
            ("IBE-Signature".into(), format!(" {tag}; i=x@d.test")),
        ],
        body: b"hello\r\n".to_vec(),
        ..Mail::original(&["<bob@b.test>"]).outside()
    };
    let (status, actions) = send(requiring.addr, &mail).await;
    assert_eq!(status, Status::Continue);
    assert!(
        actions
            .actions
            .iter()
            .any(|a| matches!(a, EomAction::Quarantine { .. })),
        "held under signature = require"
    );
    requiring.stop().await;
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("signature required"))
        .unwrap_or_else(|| panic!("no line for the held message:\n{text}"));
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2028}'] {
        assert!(!text.contains(raw), "{raw:?} reached the log: {line:?}");
    }
    assert!(line.contains(r"\u{1b}[2K"), "{line}");
    assert!(
        !text.lines().any(|l| l.starts_with("WARN forged")),
        "{text}"
    );
}
