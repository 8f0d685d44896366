//! Envelope addresses as Postfix hands them to the milter, and the one
//! form both ends of ibemail agree on.
//!
//! The `MAIL FROM` / `RCPT TO` argument reaches the milter as the client
//! typed it, while Postfix routes by its own internal form: a source route
//! (`<@relay:bob@b.test>`) is ignored, unneeded quotes (`<"bob"@b.test>`)
//! are dropped. A sender that sealed to the typed form would seal to an
//! identity the receiving server never sees, so the canonical form
//! ([`canonical`]) is what identities are made of — on both sides.

use ibemail_ibe::{Identity, normalize_domain};

/// One envelope recipient, classified.
#[derive(Clone, Debug)]
pub struct Rcpt {
    /// The `RCPT TO` argument in its canonical form, bracketed (what
    /// deleting the recipient from the transaction names).
    pub arg: String,
    /// Its identity, if our identity rules accept the address.
    pub identity: Option<Identity>,
    /// Its domain (normalised), when it has one, even if the identity is
    /// refused (a quoted or over-long local part): the domain's policy
    /// still applies to it.
    pub domain: Option<String>,
}

impl Rcpt {
    /// Classifies a `RCPT TO` argument.
    pub fn parse(arg: &str) -> Rcpt {
        let address = canonical(arg);
        // A local part that was not UTF-8 arrives with U+FFFD: no identity.
        let identity = Identity::parse(&address)
            .ok()
            .filter(|_| !address.contains('\u{FFFD}'));
        let domain = match &identity {
            Some(id) => Some(id.domain().to_string()),
            None => address
                .rsplit_once('@')
                .and_then(|(_, d)| normalize_domain(d).ok()),
        };
        Rcpt {
            arg: format!("<{address}>"),
            identity,
            domain,
        }
    }
}

/// The address inside `<...>` of an envelope argument, as Postfix routes
/// it: without a source route, and with a quoted local part unquoted when
/// the quotes are not needed (its content is a dot-atom).
pub fn canonical(arg: &str) -> String {
    let arg = arg.trim();
    let mut address = arg
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(arg);
    // RFC 5321 §4.1.2, appendix C: a source route is to be ignored.
    if address.starts_with('@')
        && let Some((_, rest)) = address.split_once(':')
    {
        address = rest;
    }
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let local = unquoted(local).unwrap_or_else(|| local.to_string());
            format!("{local}@{domain}")
        }
        None => address.to_string(),
    }
}

/// The canonical address if it is plain enough to appear as a value in a
/// header field: a dot-atom local part and a host-name domain.
pub fn plain(arg: &str) -> Option<String> {
    let address = canonical(arg);
    let (local, domain) = address.rsplit_once('@')?;
    let domain = normalize_domain(domain).ok()?;
    is_dot_atom(local).then(|| format!("{local}@{domain}"))
}

/// The content of a quoted local part that needs no quotes.
fn unquoted(local: &str) -> Option<String> {
    let inner = local.strip_prefix('"')?.strip_suffix('"')?;
    let mut content = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        content.push(if c == '\\' { chars.next()? } else { c });
    }
    is_dot_atom(&content).then_some(content)
}

/// RFC 5322 dot-atom-text (ASCII atext).
fn is_dot_atom(text: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_is_postfixs() {
        for (typed, canonical_form) in [
            ("<bob@b.test>", "bob@b.test"),
            ("bob@b.test", "bob@b.test"),
            ("<@relay.test:bob@b.test>", "bob@b.test"),
            ("<@a.test,@b.test:bob@b.test>", "bob@b.test"),
            ("<\"bob\"@b.test>", "bob@b.test"),
            ("<\"b\\ob.smith\"@b.test>", "bob.smith@b.test"),
            ("<\"john smith\"@b.test>", "\"john smith\"@b.test"),
            ("<\".bob\"@b.test>", "\".bob\"@b.test"),
            ("<postmaster>", "postmaster"),
            ("<>", ""),
        ] {
            assert_eq!(canonical(typed), canonical_form, "{typed}");
        }
    }

    #[test]
    fn recipients_keep_their_domain_when_the_identity_is_refused() {
        let quoted = Rcpt::parse("<\"john smith\"@B.Test>");
        assert!(quoted.identity.is_none());
        assert_eq!(quoted.domain.as_deref(), Some("b.test"));
        let long = Rcpt::parse(&format!("<{}@b.test>", "x".repeat(65)));
        assert!(long.identity.is_none());
        assert_eq!(long.domain.as_deref(), Some("b.test"));
        assert_eq!(Rcpt::parse("<postmaster>").domain, None);
        assert_eq!(Rcpt::parse("<a@[192.0.2.1]>").domain, None);
        let eight_bit = Rcpt::parse("<carol+\u{FFFD}@b.test>");
        assert!(eight_bit.identity.is_none());
        assert_eq!(eight_bit.domain.as_deref(), Some("b.test"));
        let routed = Rcpt::parse("<@evil.test:carol@b.test>");
        assert_eq!(routed.identity.unwrap().as_str(), "carol@b.test");
        assert_eq!(routed.arg, "<carol@b.test>");
        assert_eq!(plain("<@r:Bob@B.test>").as_deref(), Some("Bob@b.test"));
        assert_eq!(plain("<\"a;b\"@b.test>"), None);
        assert_eq!(plain("<>"), None);
    }
}
