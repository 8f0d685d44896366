//! The one log line per message that administrators read and grep: the
//! queue id (Postfix's, so the milter's line and Postfix's lines of one
//! message meet), the direction, the recipients' domains (their addresses
//! only with `log.addresses = true`), what was done and why, and the
//! signature made or checked. Nothing secret: no key, no content, no
//! subject.
//!
//! In text format the line reads
//!
//! ```text
//! INFO ibemail_milter::message: message queue_id=4Xk2 direction=outbound
//!     recipients=b.test,c.test outcome=split signature=signed
//!     detail="sealed for b.test; plaintext copy re-injected for c.test"
//! ```
//!
//! and in JSON (`log.format = "json"`) the same fields are keys. A message
//! that is not accepted (tempfail, reject) is logged at warn with `reason`.

use std::collections::BTreeSet;

use ibemail_kgc::logging::shown;
use tracing::{info, warn};

use crate::address::{Rcpt, canonical};
use crate::config::Config;
use crate::engine::verdict::{Kind, Message, Origin, Reply, Verdict};

/// Which way a message goes, as the engine decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From our users to at least one remote recipient.
    Outbound,
    /// For local recipients.
    Inbound,
    /// Neither (relayed mail, or no recipients we handle).
    Neither,
}

impl Direction {
    /// The direction of `recipients` (envelope arguments) from `origin`.
    pub fn of(config: &Config, recipients: &[String], origin: Origin) -> Direction {
        let local = |rcpt: &String| {
            Rcpt::parse(rcpt)
                .domain
                .is_some_and(|d| config.is_local(&d))
        };
        if origin != Origin::External && recipients.iter().any(|r| !local(r)) {
            Direction::Outbound
        } else if recipients.iter().any(local) {
            Direction::Inbound
        } else {
            Direction::Neither
        }
    }

    /// The word in the log.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Neither => "neither",
        }
    }
}

/// The recipients as logged: their distinct domains, sorted, or with
/// `log.addresses` their addresses as given.
pub fn recipients(config: &Config, recipients: &[String]) -> String {
    if config.log_addresses {
        return recipients
            .iter()
            .map(|r| shown(&canonical(r)))
            .collect::<Vec<_>>()
            .join(",");
    }
    let domains: BTreeSet<String> = recipients
        .iter()
        .map(|r| {
            Rcpt::parse(r)
                .domain
                .unwrap_or_else(|| "(local)".to_string())
        })
        .collect();
    domains.into_iter().collect::<Vec<_>>().join(",")
}

/// Logs the line of one processed message, with the verdict's note: what
/// was done about signatures (`signed n=2`, `ibesig=pass a.test`, ...) and
/// a short account of the actions (which domains got ciphertext, which a
/// copy).
pub fn message_processed(config: &Config, message: &Message, origin: Origin, verdict: &Verdict) {
    let signature = verdict.note.signature.as_deref();
    let detail = verdict.note.detail.as_str();
    let direction = Direction::of(config, &message.recipients, origin).label();
    let recipients = recipients(config, &message.recipients);
    let outcome = verdict.kind.label();
    let signature = signature.unwrap_or("-");
    // One set of fields, at info for accepted mail and at warn (with the
    // reason) for mail that is not.
    macro_rules! line {
        ($level:ident, $text:literal $($extra:tt)*) => {
            $level!(
                target: "ibemail_milter::message",
                queue_id = %message.queue_id,
                direction,
                recipients = %recipients,
                outcome,
                signature,
                detail,
                size = message.size,
                $($extra)*
                $text
            )
        };
    }
    match &verdict.reply {
        Reply::Continue => line!(info, "message"),
        Reply::Tempfail(reason) | Reply::Reject(reason) => {
            line!(warn, "message not accepted" reason = %shown(reason),)
        }
    }
}

/// The outcome's meaning in words, for `detail` when the engine has
/// nothing more precise.
pub fn describe(kind: Kind) -> &'static str {
    match kind {
        Kind::Untouched => "nothing to do",
        Kind::Encrypted => "sealed for every recipient",
        Kind::Split => "sealed for some recipients, plaintext copy re-injected for the others",
        Kind::Plaintext => "no recipient domain publishes parameters: sent as it is",
        Kind::Decrypted => "opened for the local recipients",
        Kind::Undecryptable => "could not be opened",
        Kind::Tempfail => "deferred",
        Kind::Rejected => "refused (too large)",
        Kind::Unsigned => "held: a required signature did not pass",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::engine::Note;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "socket = \"inet:127.0.0.1:8895\"\nauthserv_id = \"mx.a.test\"\n\
             local_domains = [\"a.test\"]\n[kgc]\nsocket = \"/k\"\n{extra}"
        ))
        .unwrap()
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| format!("<{r}>")).collect()
    }

    #[test]
    fn recipients_are_domains_unless_addresses_are_asked_for() {
        let list = rcpts(&["bob@B.test", "carol@c.test", "dave@b.test"]);
        assert_eq!(recipients(&config(""), &list), "b.test,c.test");
        assert_eq!(
            recipients(&config("[log]\naddresses = true\n"), &list),
            "bob@B.test,carol@c.test,dave@b.test"
        );
    }

    /// Log lines written while `f` runs, as JSON objects.
    fn captured(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn one_line_per_message_with_domains_outcome_and_the_reason_when_deferred() {
        let c = config("");
        let message = Message {
            queue_id: "4Xk2".into(),
            recipients: rcpts(&["bob@b.test", "carol@c.test"]),
            size: 1234,
            ..Message::default()
        };
        let accepted = Verdict {
            reply: Reply::Continue,
            actions: Vec::new(),
            kind: Kind::Split,
            note: Note {
                signature: Some("signed".into()),
                detail: "x".into(),
            },
        };
        let line = captured(|| message_processed(&c, &message, Origin::Internal, &accepted));
        for field in [
            "\"level\":\"INFO\"",
            "\"queue_id\":\"4Xk2\"",
            "\"direction\":\"outbound\"",
            "\"recipients\":\"b.test,c.test\"",
            "\"outcome\":\"split\"",
            "\"signature\":\"signed\"",
        ] {
            assert!(line.contains(field), "{field} in {line}");
        }
        assert!(!line.contains("bob@"), "{line}");
        let deferred = Verdict {
            reply: Reply::Tempfail("KGC unavailable".into()),
            actions: Vec::new(),
            kind: Kind::Tempfail,
            note: Note::default(),
        };
        let line = captured(|| message_processed(&c, &message, Origin::External, &deferred));
        assert!(line.contains("\"level\":\"WARN\""), "{line}");
        assert!(line.contains("\"reason\":\"KGC unavailable\""), "{line}");
    }

    #[test]
    fn direction_follows_the_engine_rule() {
        let c = config("");
        let remote = rcpts(&["bob@b.test"]);
        let local = rcpts(&["alice@a.test"]);
        assert_eq!(
            Direction::of(&c, &remote, Origin::Internal),
            Direction::Outbound
        );
        assert_eq!(
            Direction::of(&c, &local, Origin::External),
            Direction::Inbound
        );
        assert_eq!(Direction::of(&c, &local, Origin::Local), Direction::Inbound);
        assert_eq!(
            Direction::of(&c, &remote, Origin::External),
            Direction::Neither
        );
    }
}
