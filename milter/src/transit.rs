//! The header a decrypted message is delivered with (RFC 9788's receiver
//! rule): our `Authentication-Results`, the trace fields added on the way,
//! then the inner header — the one the sender sealed. Every other outer
//! field is dropped: the outer header is not authenticated, and a field an
//! attacker prepended (a second `From:`, a `Disposition-Notification-To:`
//! that would mail the decrypted Subject back to him) must never appear
//! above a `x-ibemail=pass`.

use std::collections::HashSet;

use ibemail_message::SMIME_FIELDS;
use ibemail_message::signature::SIGNATURE_FIELD;

use crate::authres;

/// A header field as the milter handles it: name, value with its leading
/// space and LF folding.
pub type Field = (String, Vec<u8>);

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
/// the `inner` header of the opened message.
///
/// Outer `Authentication-Results` are kept only when their authserv-id is
/// one of `trusted`: milters that run before this one at this host under
/// their own id (OpenDKIM verifying the ciphertext), which remove forged
/// results of that id themselves. Any other arrived with the message and
/// is not ours to vouch for; ours (`authserv_id`) are forged, outside and
/// inside the ciphertext. (Position cannot tell this hop's fields from an
/// attacker's: Postfix hides its own `Received` from milters.)
///
/// Linear in the number of fields: an attacker controls both headers.
pub fn delivered(
    outer: &[Field],
    inner: Vec<Field>,
    authserv_id: &str,
    trusted: &[String],
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
        let results = name.eq_ignore_ascii_case(authres::FIELD);
        let trusted_results = results
            && authres::authserv_id(&field.1)
                .is_some_and(|id| trusted.iter().any(|t| t.eq_ignore_ascii_case(&id)));
        if trace || trusted_results {
            out.transit.push(field.clone());
        } else if !expected_outer(name) && !results {
            out.dropped.push(field.0.clone());
        }
    }
    drop(inner_fields);
    out.inner = inner
        .into_iter()
        .filter(|(name, value)| {
            !(name.eq_ignore_ascii_case(authres::FIELD) && authres::claims(value, authserv_id))
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, value: &str) -> Field {
        (name.to_string(), value.as_bytes().to_vec())
    }

    #[test]
    fn only_trace_fields_added_on_the_way_survive_above_the_inner_header() {
        let inner = vec![
            f("Received", " from client by mx.a.test"),
            f("From", " Alice <alice@a.test>"),
            f("Subject", " the merger"),
            f("Authentication-Results", " mx.b.test (c); x-ibemail=pass"),
            f("Authentication-Results", " mx.a.test; auth=pass"),
        ];
        let outer = vec![
            // OpenDKIM at this hop, under its own id.
            f("Authentication-Results", " dkim.mx.b.test; dkim=pass"),
            f("From", " The CEO <ceo@a.test>"), // injected
            f("Disposition-Notification-To", " spy@c.test"), // injected
            f("Authentication-Results", " mx.b.test; x-ibemail=pass"), // forged
            f("Authentication-Results", " relay.example; arc=none"),
            f("Received", " from mx.a.test by mx.b.test"),
            f("ARC-Seal", " i=1; cv=none"),
            f("Received", " from client by mx.a.test"), // copy of the inner one
            f("From", " Alice <alice@a.test>"),
            f("Subject", " [...]"),
            f("MIME-Version", " 1.0"),
            f("DKIM-Signature", " v=1"),
            f("IBE-Signature", " v=1"),
        ];
        let got = delivered(
            &outer,
            inner.clone(),
            "mx.b.test",
            &["DKIM.mx.b.test".into()],
        );
        assert_eq!(
            got.transit,
            vec![
                f("Authentication-Results", " dkim.mx.b.test; dkim=pass"),
                f("Received", " from mx.a.test by mx.b.test"),
                f("ARC-Seal", " i=1; cv=none"),
            ]
        );
        assert_eq!(got.inner, [&inner[..3], &inner[4..]].concat());
        assert_eq!(got.dropped, ["From", "Disposition-Notification-To"]);
    }
}
