//! The engine's vocabulary: the message as Postfix showed it
//! ([`Message`], [`Origin`]) and what to do with it ([`Verdict`]: a
//! [`Reply`], the [`Action`]s, the [`Kind`] for metrics and a [`Note`] for
//! the log line).

use ibemail_message::header::push_crlf_normalised;

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
    /// Some of it was not kept (past the size limit when it arrived): the
    /// message is refused whatever the limit is at its end.
    pub truncated: bool,
    /// Header fields may be changed and deleted in place (the MTA counts
    /// them as it showed them); else they are all deleted and re-added.
    pub edits_in_place: bool,
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
    /// Replace the value of the `index`-th (1-based) field called `name`.
    ChangeHeader {
        /// Field name.
        name: String,
        /// Occurrence, 1-based.
        index: i32,
        /// New value, with its leading space and LF folding.
        value: Vec<u8>,
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
    /// Accept, with `actions`.
    pub(crate) fn untouched(actions: Vec<Action>) -> Self {
        Verdict {
            reply: Reply::Continue,
            actions,
            kind: Kind::Untouched,
            note: Note::default(),
        }
    }

    /// Keep the mail and have the client retry.
    pub(crate) fn tempfail(reason: impl Into<String>) -> Self {
        Verdict {
            reply: Reply::Tempfail(reason.into()),
            actions: Vec::new(),
            kind: Kind::Tempfail,
            note: Note::default(),
        }
    }
}
