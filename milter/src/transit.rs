//! The header a decrypted message is delivered with: the message crate's
//! rule ([`ibemail_message::transit`]) with this milter's reading of
//! `Authentication-Results` — trusted: by one of `trusted_authserv_ids`;
//! forged: claiming our own authserv-id.

pub use ibemail_message::transit::Delivered;

use crate::authres;

/// A header field as the milter handles it: name, value with its leading
/// space and LF folding.
pub type Field = (String, Vec<u8>);

/// [`ibemail_message::transit::delivered`] for this host: outer results by
/// a `trusted` authserv-id stay; inner results claiming `authserv_id` go.
pub fn delivered(
    outer: &[Field],
    inner: Vec<Field>,
    authserv_id: &str,
    trusted: &[String],
) -> Delivered {
    ibemail_message::transit::delivered(
        outer,
        inner,
        |value| {
            authres::authserv_id(value)
                .is_some_and(|id| trusted.iter().any(|t| t.eq_ignore_ascii_case(&id)))
        },
        |value| authres::claims(value, authserv_id),
    )
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
