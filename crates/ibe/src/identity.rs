//! Identities: an e-mail address, normalised so that every server derives the
//! same identity from the same mailbox.
//!
//! Normalisation (the contract between sender and receiver; changing it is a
//! format break):
//! - the address is split at its last `@`;
//! - the domain is converted with UTS #46 (IDNA) to its ASCII A-label form,
//!   lower-cased, one trailing dot removed; it must be a host name made of
//!   letters, digits and hyphens (no address literals);
//! - in the local part, the ASCII letters `A`–`Z` are lower-cased and every
//!   other character is kept exactly as given. RFC 5321 lets a receiving
//!   server treat local parts case-sensitively, but practically every server
//!   folds ASCII case, and a case-sensitive identity would make `Alice@` and
//!   `alice@` two keys for one mailbox. Non-ASCII characters are *not*
//!   folded: Unicode case mapping merges characters that are distinct
//!   mailboxes (U+212A KELVIN SIGN lower-cases to `k`, U+0130 to `i̇`), and
//!   two mailboxes must never share a key. So `Kelvin` (with U+212A) and
//!   `kelvin` are two identities, and so are `Ärger` and `ärger`; `Straße`
//!   becomes `straße`. No removal of dots or `+tags` either: those are the
//!   domain's business.

use core::fmt;

use crate::error::IdentityError;

/// Longest local part accepted, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;
/// Longest domain accepted, in octets (RFC 1035).
pub const MAX_DOMAIN: usize = 253;

/// A normalised e-mail address: the public key of its owner.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    address: String,
    at: usize,
}

impl Identity {
    /// Parses and normalises an envelope address such as `Alice@Example.COM`.
    ///
    /// Angle brackets are not accepted: pass the bare address.
    pub fn parse(address: &str) -> Result<Self, IdentityError> {
        let (local, domain) = address.rsplit_once('@').ok_or(IdentityError::MissingAt)?;
        let local = normalize_local_part(local)?;
        let domain = normalize_domain(domain)?;
        let at = local.len();
        Ok(Identity {
            address: format!("{local}@{domain}"),
            at,
        })
    }

    /// The normalised address, `local@domain`.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// The normalised local part.
    pub fn local_part(&self) -> &str {
        &self.address[..self.at]
    }

    /// The normalised domain (A-label form).
    pub fn domain(&self) -> &str {
        &self.address[self.at + 1..]
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.address)
    }
}

impl core::str::FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

fn normalize_local_part(local: &str) -> Result<String, IdentityError> {
    if local.is_empty() {
        return Err(IdentityError::EmptyLocalPart);
    }
    if local
        .chars()
        .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
    {
        return Err(IdentityError::InvalidLocalPart);
    }
    // ASCII only: see the module documentation.
    let lowered = local.to_ascii_lowercase();
    if lowered.len() > MAX_LOCAL_PART {
        return Err(IdentityError::LocalPartTooLong);
    }
    Ok(lowered)
}

/// Normalises a domain name to lower-case A-labels (UTS #46, IDNA2008
/// compatible processing) and checks it is a plain host name.
pub fn normalize_domain(domain: &str) -> Result<String, IdentityError> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err(IdentityError::EmptyDomain);
    }
    if domain.starts_with('[') {
        return Err(IdentityError::AddressLiteral);
    }
    let ascii = idna::domain_to_ascii(domain).map_err(|_| IdentityError::InvalidDomain)?;
    if ascii.is_empty() {
        return Err(IdentityError::EmptyDomain);
    }
    if ascii.len() > MAX_DOMAIN {
        return Err(IdentityError::DomainTooLong);
    }
    for label in ascii.split('.') {
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !ldh
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(IdentityError::InvalidDomain);
        }
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_of_both_parts() {
        let id = Identity::parse("Alice.Smith@Example.COM").unwrap();
        assert_eq!(id.as_str(), "alice.smith@example.com");
        assert_eq!(id.local_part(), "alice.smith");
        assert_eq!(id.domain(), "example.com");
    }

    /// Unicode case mapping would merge distinct mailboxes (U+212A KELVIN
    /// SIGN lower-cases to ASCII `k`): only ASCII letters are folded.
    #[test]
    fn only_ascii_case_is_folded_so_distinct_mailboxes_never_merge() {
        let kelvin = Identity::parse("\u{212A}elvin@b.test").unwrap();
        let k = Identity::parse("kelvin@b.test").unwrap();
        assert_ne!(kelvin, k);
        assert_eq!(kelvin.local_part(), "\u{212A}elvin");
        let dotted = Identity::parse("\u{130}nci@b.test").unwrap();
        assert_ne!(dotted, Identity::parse("inci@b.test").unwrap());
        assert_ne!(
            Identity::parse("\u{c4}rger@b.test").unwrap(),
            Identity::parse("\u{e4}rger@b.test").unwrap()
        );
        assert_eq!(
            Identity::parse("STRA\u{df}E@b.test").unwrap().local_part(),
            "stra\u{df}e"
        );
        assert_eq!(
            Identity::parse("Alice@b.test").unwrap(),
            Identity::parse("alice@b.test").unwrap()
        );
    }

    #[test]
    fn converts_unicode_domain_to_a_label() {
        let id = Identity::parse("user@Bücher.example").unwrap();
        assert_eq!(id.domain(), "xn--bcher-kva.example");
        let again = Identity::parse("user@xn--bcher-kva.example").unwrap();
        assert_eq!(id, again);
    }

    #[test]
    fn keeps_plus_tags_and_dots() {
        let id = Identity::parse("a.b+tag@b.test").unwrap();
        assert_eq!(id.local_part(), "a.b+tag");
    }

    #[test]
    fn splits_at_last_at_sign() {
        let id = Identity::parse("\"odd@local\"@b.test").unwrap();
        assert_eq!(id.local_part(), "\"odd@local\"");
        assert_eq!(id.domain(), "b.test");
    }

    #[test]
    fn strips_one_trailing_dot() {
        assert_eq!(Identity::parse("a@b.test.").unwrap().domain(), "b.test");
        assert!(Identity::parse("a@b.test..").is_err());
    }

    #[test]
    fn rejects_malformed_addresses() {
        let cases = [
            ("no-at-sign", IdentityError::MissingAt),
            ("@b.test", IdentityError::EmptyLocalPart),
            ("a@", IdentityError::EmptyDomain),
            ("a@[127.0.0.1]", IdentityError::AddressLiteral),
            ("a b@b.test", IdentityError::InvalidLocalPart),
            ("a\r\n@b.test", IdentityError::InvalidLocalPart),
            ("a@-bad.test", IdentityError::InvalidDomain),
            ("a@under_score.test", IdentityError::InvalidDomain),
            ("a@b..test", IdentityError::InvalidDomain),
        ];
        for (input, expected) in cases {
            assert_eq!(Identity::parse(input), Err(expected), "{input}");
        }
        let long_local = format!("{}@b.test", "x".repeat(65));
        assert_eq!(
            Identity::parse(&long_local),
            Err(IdentityError::LocalPartTooLong)
        );
        let long_domain = format!("a@{}.test", vec!["x".repeat(60); 5].join("."));
        assert_eq!(
            Identity::parse(&long_domain),
            Err(IdentityError::DomainTooLong)
        );
    }
}
