//! The header a decrypted message is delivered with (RFC 9788's receiver
//! rule), the counterpart of [`OUTER_FIELDS`](crate::OUTER_FIELDS): the
//! receiver's `Authentication-Results`, the trace fields added on the way,
//! then the inner header — the one the sender sealed. Every other outer
//! field is dropped: the outer header is not authenticated, and a field an
//! attacker prepended (a second `From:`, a `Disposition-Notification-To:`
//! that would mail the decrypted Subject back to him) must never appear
//! above the receiver's result.

use std::collections::HashSet;

use crate::Field;
use crate::SMIME_FIELDS;
use crate::signature::SIGNATURE_FIELD;

/// The results field (RFC 8601).
const RESULTS_FIELD: &str = "Authentication-Results";

/// Trace fields (RFC 5322 §3.6.7, RFC 8617 ARC): added by the servers a
/// message passes through, kept from the outside when added after sealing.
const TRACE_FIELDS: [&str; 5] = [
    "Return-Path",
    "Received",
    "ARC-Seal",
    "ARC-Message-Signature",
    "ARC-Authentication-Results",
];

/// Outer fields every sealed message has and that are dropped without
/// comment: the S/MIME fields, the obscured Subject, and signatures of the
/// ciphertext (ours and DKIM's), which cannot verify on the plaintext and
/// whose results are in the Authentication-Results already.
fn expected_outer(name: &str) -> bool {
    SMIME_FIELDS
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
        || ["Subject", "DKIM-Signature", SIGNATURE_FIELD]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// The delivered header, apart from our own `Authentication-Results`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Trace fields added after sealing, in their order.
    pub transit: Vec<Field>,
    /// The inner header, without `Authentication-Results` forged inside.
    pub inner: Vec<Field>,
    /// Names of outer fields dropped that a sealed message does not carry
    /// (for the log: someone added them on the way).
    pub dropped: Vec<String>,
}

/// Chooses the delivered fields from the `outer` header as received and
/// the `inner` header of the opened message (values compared as given: pass
/// both in one form).
///
/// Outer `Authentication-Results` are kept only when `trusted_results`
/// says so of their value (milters that ran before the opener at this
/// host, under their own id, which remove forged results of that id
/// themselves). Any other arrived with the message and is not the
/// receiver's to vouch for; inner ones that `forged_results` says claim the
/// receiver's own id are dropped. (Position cannot tell this hop's fields
/// from an attacker's: Postfix hides its own `Received` from milters.)
///
/// Linear in the number of fields: an attacker controls both headers.
pub fn delivered(
    outer: &[Field],
    inner: Vec<Field>,
    trusted_results: impl Fn(&[u8]) -> bool,
    forged_results: impl Fn(&[u8]) -> bool,
) -> Delivered {
    let inner_fields: HashSet<(String, &[u8])> = inner
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_slice()))
        .collect();
    let mut out = Delivered::default();
    for field in outer {
        let name = field.0.as_str();
        if inner_fields.contains(&(name.to_ascii_lowercase(), field.1.as_slice())) {
            continue; // the sealed copy's own outer copy of an inner field
        }
        let trace = TRACE_FIELDS.iter().any(|n| n.eq_ignore_ascii_case(name));
        let results = name.eq_ignore_ascii_case(RESULTS_FIELD);
        if trace || (results && trusted_results(&field.1)) {
            out.transit.push(field.clone());
        } else if !expected_outer(name) && !results {
            out.dropped.push(field.0.clone());
        }
    }
    drop(inner_fields);
    out.inner = inner
        .into_iter()
        .filter(|(name, value)| {
            !(name.eq_ignore_ascii_case(RESULTS_FIELD) && forged_results(value))
        })
        .collect();
    out
}
