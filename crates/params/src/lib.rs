//! # ibemail-params
//!
//! The `_ibemailkey.<domain>` TXT record (`docs/spec.md`): emit, parse, and
//! choose the generation a sender should use. No I/O: the caller does the DNS
//! query and passes the character-strings and the current time.
//!
//! ```text
//! _ibemailkey.b.test. IN TXT "ver=1; a=bb2-fo; c=bls12-381; n=1; X=<base64>; Y=<base64>"
//! ```
//!
//! Syntax (DKIM-like, RFC 6376 §3.2 tag-lists):
//! - a record is `tag=value` pairs separated by `;`, whitespace around tags,
//!   values and separators ignored, a trailing `;` allowed;
//! - the record must start with `ver=`; a TXT string that does not is not an
//!   ibemail record and is skipped (other TXT data may share the name);
//! - tags are case-sensitive; unknown tags are ignored; a known tag twice, a
//!   missing required tag, or a malformed value is an error naming the tag;
//! - base64 values (`X`, `Y`) may contain whitespace (as DKIM's `p=`).
//!
//! | tag | meaning | required |
//! |---|---|---|
//! | `ver` | record version, `1` | yes, first |
//! | `a` | KEM algorithm, `bb2-fo` | yes |
//! | `c` | curve, `bls12-381` | yes |
//! | `n` | parameter generation, 1 ..= 2^32-1 | yes |
//! | `X`, `Y` | compressed G1 points, base64 | yes |
//! | `S` | identity-based signature parameter (Cha–Cheon), a compressed G1 point, base64 | no (a domain without it does not sign; a malformed one is ignored, so it never costs the domain its encryption) |
//! | `e` | expiry, seconds since the Unix epoch; senders skip the generation from then on | no |
//! | `p` | published policy: `require` ("this domain always takes ibemail mail") or `none` | no |
//! | `ma` | the policy's max-age in seconds (≤ one year; required with `p=require`) | with `p` |
//! | `cs` | continuity signature: generation `n − 1` vouches for this record ([`ibemail_ibe::ContinuitySignature`], a compressed G2 point, base64) | no (generation 1 has none) |
//!
//! A malformed `S=`, `p=`/`ma=` or `cs=` is ignored (treated as absent), so
//! it never costs the domain its encryption; a sender then has no
//! signatures, no policy or no chain from that record.
//!
//! The policy is MTA-STS's `mode: enforce` with `max_age` for ibemail: a
//! sender that has seen `p=require` keeps encrypting to the domain for
//! `ma` seconds, deferring rather than sending in clear if the record
//! disappears. The continuity signature covers the domain, `n`, `X`, `Y`,
//! `S` and the policy (see [`Record::successor`]), so a sender that pinned
//! generation `n − 1` can tell the genuine generation `n` from an
//! attacker's without DNSSEC, and a policy can only be lowered through a
//! signed successor.
//!
//! Sizes: generation 1 with `S=` and a policy is about 251 bytes (the
//! emitter drops the optional spaces after `;` when that makes the record
//! fit one 255-byte character-string); a later generation with its
//! continuity signature is about 392 bytes, 406 with `e=`, published as
//! two character-strings ([`Record::to_strings`]). A record split over
//! several character-strings is concatenated first (RFC 7208 §3.3), so
//! `"ver=1; ... X=abc" "def..."` parses.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{
    ContinuitySignature, DecodeError, Generation, PublicParams, SigningParams, Successor,
    verify_successor,
};
use thiserror::Error;

/// The label under which parameters are published: `_ibemailkey.<domain>`.
pub const RECORD_LABEL: &str = "_ibemailkey";

/// The longest TXT character-string (RFC 1035); longer records are
/// published as several.
pub const MAX_STRING_LEN: usize = 255;

/// The longest `ma=` honoured: one year, as MTA-STS's `max_age`. A longer
/// one is capped, so a record seen once cannot bind senders for decades.
pub const MAX_POLICY_AGE: u64 = 31_557_600;

/// Record version this crate reads and writes.
pub const VERSION: &str = "1";
/// Algorithm name of the BB2 KEM with the FO transform.
pub const ALGORITHM_BB2_FO: &str = "bb2-fo";
/// Curve name.
pub const CURVE_BLS12_381: &str = "bls12-381";

/// The longest domain name DNS can hold, in octets of its text form
/// without the root dot (RFC 1035 §2.3.4: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;

/// The longest domain that can publish parameters: its record name
/// `_ibemailkey.<domain>` must fit [`MAX_NAME_LEN`]. Identities allow
/// domains of up to 253 octets; those of 242 and more have no record.
pub const MAX_PUBLISHING_DOMAIN_LEN: usize = MAX_NAME_LEN - RECORD_LABEL.len() - 1;

/// The DNS name that holds `domain`'s parameters.
///
/// It may be longer than DNS allows (see [`MAX_PUBLISHING_DOMAIN_LEN`]);
/// [`record_name_fits`] says whether it is not.
pub fn record_name(domain: &str) -> String {
    format!("{RECORD_LABEL}.{}", domain.trim_end_matches('.'))
}

/// True if `domain`'s record name fits DNS's limit of [`MAX_NAME_LEN`]
/// octets, i.e. the domain can publish parameters at all.
pub fn record_name_fits(domain: &str) -> bool {
    record_name(domain).len() <= MAX_NAME_LEN
}

/// One published generation of a domain's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Parameter generation (`n=`).
    pub generation: Generation,
    /// The KEM parameters (`X=`, `Y=`).
    pub params: PublicParams,
    /// Expiry in seconds since the Unix epoch (`e=`), if published.
    pub expires: Option<u64>,
    /// The signature parameter (`S=`), if the domain signs.
    pub signing: Option<SigningParams>,
    /// The published policy (`p=require; ma=`), if any.
    pub policy: Option<Policy>,
    /// The previous generation's signature on this record (`cs=`).
    pub continuity: Option<ContinuitySignature>,
}

/// A domain's published policy: it always takes ibemail mail, and senders
/// that have seen this keep encrypting (or defer) for `max_age` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Seconds a sender holds on to the policy after seeing it (at most
    /// [`MAX_POLICY_AGE`]).
    pub max_age: u64,
}

impl Policy {
    /// The policy with `max_age` capped at [`MAX_POLICY_AGE`].
    pub fn require(max_age: u64) -> Policy {
        Policy {
            max_age: max_age.min(MAX_POLICY_AGE),
        }
    }

    /// The canonical encoding a continuity signature covers:
    /// `p=require;ma=<seconds>`, or empty for no policy.
    pub fn signed_bytes(policy: Option<&Policy>) -> Vec<u8> {
        policy.map_or_else(Vec::new, |p| {
            format!("p=require;ma={}", p.max_age).into_bytes()
        })
    }
}

/// The tags of the record, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tag {
    /// `ver=`
    Version,
    /// `a=`
    Algorithm,
    /// `c=`
    Curve,
    /// `n=`
    Generation,
    /// `X=`
    X,
    /// `Y=`
    Y,
    /// `e=`
    Expires,
    /// `S=`
    Signing,
    /// `p=`
    Policy,
    /// `ma=`
    MaxAge,
    /// `cs=`
    Continuity,
}

impl Tag {
    fn name(self) -> &'static str {
        match self {
            Tag::Version => "ver",
            Tag::Algorithm => "a",
            Tag::Curve => "c",
            Tag::Generation => "n",
            Tag::X => "X",
            Tag::Y => "Y",
            Tag::Expires => "e",
            Tag::Signing => "S",
            Tag::Policy => "p",
            Tag::MaxAge => "ma",
            Tag::Continuity => "cs",
        }
    }

    fn from_name(name: &str) -> Option<Tag> {
        Some(match name {
            "ver" => Tag::Version,
            "a" => Tag::Algorithm,
            "c" => Tag::Curve,
            "n" => Tag::Generation,
            "X" => Tag::X,
            "Y" => Tag::Y,
            "e" => Tag::Expires,
            "S" => Tag::Signing,
            "p" => Tag::Policy,
            "ma" => Tag::MaxAge,
            "cs" => Tag::Continuity,
            _ => return None,
        })
    }
}

impl core::fmt::Display for Tag {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}=", self.name())
    }
}

/// Why a TXT string is not a usable ibemail record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The string does not start with `ver=`: some other TXT record.
    #[error("not an ibemail record (does not start with ver=)")]
    NotIbemailRecord,
    /// The record is not UTF-8 / printable ASCII.
    #[error("record contains bytes that are not printable ASCII")]
    NotAscii,
    /// A `tag=value` element has no `=` or an invalid tag name.
    #[error("malformed tag-list element {element:?}")]
    Syntax {
        /// The offending element.
        element: String,
    },
    /// A known tag appears twice.
    #[error("duplicate tag {0}")]
    DuplicateTag(Tag),
    /// A required tag is absent.
    #[error("missing required tag {0}")]
    MissingTag(Tag),
    /// `ver=` is not a version this implementation reads.
    #[error("unsupported record version ver={0}")]
    UnsupportedVersion(String),
    /// `a=` names an algorithm this implementation does not implement.
    #[error("unsupported algorithm a={0}")]
    UnsupportedAlgorithm(String),
    /// `c=` names a curve this implementation does not implement.
    #[error("unsupported curve c={0}")]
    UnsupportedCurve(String),
    /// A value is malformed (not a number, out of range, bad base64).
    #[error("malformed value for {tag}: {reason}")]
    BadValue {
        /// The tag.
        tag: Tag,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `X=` or `Y=` is not a valid group element.
    #[error("invalid point in {tag}: {source}")]
    InvalidPoint {
        /// The tag.
        tag: Tag,
        /// The decoding error.
        source: DecodeError,
    },
}

impl ParseError {
    /// True when the string is another kind of TXT record rather than a broken
    /// ibemail record.
    pub fn is_foreign(&self) -> bool {
        matches!(self, ParseError::NotIbemailRecord)
    }
}

impl Record {
    /// Creates a record for one generation.
    pub fn new(generation: Generation, params: PublicParams) -> Self {
        Record {
            generation,
            params,
            expires: None,
            signing: None,
            policy: None,
            continuity: None,
        }
    }

    /// The record with a published policy.
    pub fn with_policy(mut self, policy: Option<Policy>) -> Self {
        self.policy = policy;
        self
    }

    /// The record with the previous generation's continuity signature.
    pub fn with_continuity(mut self, continuity: Option<ContinuitySignature>) -> Self {
        self.continuity = continuity;
        self
    }

    /// What the previous generation signs for this record of `domain`
    /// (normalised): its generation, `X`, `Y`, `S` and policy. `None`
    /// without `S=` (no signing parameter, nothing to chain).
    pub fn successor<'a>(&'a self, domain: &'a str, policy: &'a [u8]) -> Option<Successor<'a>> {
        Some(Successor {
            domain,
            generation: self.generation,
            params: &self.params,
            signing: self.signing.as_ref()?,
            policy,
        })
    }

    /// True if this record carries a valid continuity signature by the
    /// generation before it, whose signing parameter is `predecessor`.
    pub fn continues(&self, domain: &str, predecessor: &SigningParams) -> bool {
        let policy = Policy::signed_bytes(self.policy.as_ref());
        match (self.successor(domain, &policy), &self.continuity) {
            (Some(successor), Some(signature)) => {
                verify_successor(predecessor, &successor, signature).is_ok()
            }
            _ => false,
        }
    }

    /// The record with the signature parameter `S=`.
    pub fn with_signing(mut self, signing: SigningParams) -> Self {
        self.signing = Some(signing);
        self
    }

    /// Parses one record given as its character-strings (concatenated).
    pub fn parse_strings<S: AsRef<[u8]>>(strings: &[S]) -> Result<Self, ParseError> {
        let mut joined = Vec::new();
        for s in strings {
            joined.extend_from_slice(s.as_ref());
        }
        Self::parse_bytes(&joined)
    }

    /// Parses one record.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        // Tag-lists are ASCII; tabs, CR and LF count as whitespace.
        if bytes.iter().any(|&b| {
            !(b.is_ascii_graphic() || b == b' ' || b == b'\t' || b == b'\r' || b == b'\n')
        }) {
            // Still classify foreign records correctly.
            let trimmed = bytes.trim_ascii_start();
            if !trimmed.starts_with(b"ver") {
                return Err(ParseError::NotIbemailRecord);
            }
            return Err(ParseError::NotAscii);
        }
        let text = core::str::from_utf8(bytes).map_err(|_| ParseError::NotAscii)?;
        Self::parse(text)
    }

    /// Parses one record from text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut elements = text.split(';').map(str::trim).peekable();
        // `ver` first, as DKIM's `v=`: anything else is not ours.
        match elements.peek() {
            Some(first) if first.split('=').next().map(str::trim) == Some("ver") => {}
            _ => return Err(ParseError::NotIbemailRecord),
        }

        let mut values: [Option<&str>; 11] = [None; 11];
        let slot = |tag: Tag| match tag {
            Tag::Version => 0,
            Tag::Algorithm => 1,
            Tag::Curve => 2,
            Tag::Generation => 3,
            Tag::X => 4,
            Tag::Y => 5,
            Tag::Expires => 6,
            Tag::Signing => 7,
            Tag::Policy => 8,
            Tag::MaxAge => 9,
            Tag::Continuity => 10,
        };
        let count = elements.clone().count();
        for (i, element) in elements.enumerate() {
            if element.is_empty() {
                // Only a trailing `;` may leave an empty element.
                if i + 1 == count {
                    continue;
                }
                return Err(ParseError::Syntax {
                    element: element.to_string(),
                });
            }
            let (name, value) = element.split_once('=').ok_or_else(|| ParseError::Syntax {
                element: element.to_string(),
            })?;
            let name = name.trim();
            let value = value.trim();
            let valid_name = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return Err(ParseError::Syntax {
                    element: element.to_string(),
                });
            }
            let Some(tag) = Tag::from_name(name) else {
                continue; // unknown tags are ignored
            };
            let entry = &mut values[slot(tag)];
            if entry.is_some() {
                return Err(ParseError::DuplicateTag(tag));
            }
            *entry = Some(value);
        }
        let get = |tag: Tag| values[slot(tag)].ok_or(ParseError::MissingTag(tag));

        let version = get(Tag::Version)?;
        if version != VERSION {
            return Err(ParseError::UnsupportedVersion(version.to_string()));
        }
        let algorithm = get(Tag::Algorithm)?;
        if algorithm != ALGORITHM_BB2_FO {
            return Err(ParseError::UnsupportedAlgorithm(algorithm.to_string()));
        }
        let curve = get(Tag::Curve)?;
        if !curve.eq_ignore_ascii_case(CURVE_BLS12_381) {
            return Err(ParseError::UnsupportedCurve(curve.to_string()));
        }
        let generation = parse_decimal(get(Tag::Generation)?, Tag::Generation)?;
        let generation = Generation::try_from(generation)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(ParseError::BadValue {
                tag: Tag::Generation,
                reason: "must be between 1 and 4294967295",
            })?;
        let x = decode_base64(get(Tag::X)?, Tag::X)?;
        let y = decode_base64(get(Tag::Y)?, Tag::Y)?;
        let params = decode_params(&x, &y)?;
        let expires = values[slot(Tag::Expires)]
            .map(|v| parse_decimal(v, Tag::Expires))
            .transpose()?;
        // A broken S= costs the domain its signatures, not its encryption:
        // the record stays usable and S is treated as absent (receivers
        // report permerror, `ibemail-kgc check` a mismatch).
        let signing = values[slot(Tag::Signing)].and_then(|v| {
            let bytes = decode_base64(v, Tag::Signing).ok()?;
            SigningParams::from_bytes(&bytes).ok()
        });
        // The same for the policy and the continuity signature: malformed
        // means absent (a sender keeps what it knew, see the crate docs).
        let policy = match (values[slot(Tag::Policy)], values[slot(Tag::MaxAge)]) {
            (Some("require"), Some(ma)) => parse_decimal(ma, Tag::MaxAge).ok().map(Policy::require),
            _ => None,
        };
        let continuity = values[slot(Tag::Continuity)].and_then(|v| {
            let bytes = decode_base64(v, Tag::Continuity).ok()?;
            ContinuitySignature::from_bytes(&bytes).ok()
        });
        Ok(Record {
            generation,
            params,
            expires,
            signing,
            policy,
            continuity,
        })
    }

    /// The record text, e.g. `ver=1; a=bb2-fo; c=bls12-381; n=1; X=…; Y=…`.
    /// Without the optional spaces when that makes it fit one TXT
    /// character-string; [`Record::to_strings`] splits a longer one.
    pub fn to_text(&self) -> String {
        let mut elements = vec![
            format!("ver={VERSION}"),
            format!("a={ALGORITHM_BB2_FO}"),
            format!("c={CURVE_BLS12_381}"),
            format!("n={}", self.generation),
            format!("X={}", STANDARD.encode(self.params.x_bytes())),
            format!("Y={}", STANDARD.encode(self.params.y_bytes())),
        ];
        if let Some(signing) = &self.signing {
            elements.push(format!("S={}", STANDARD.encode(signing.to_bytes())));
        }
        if let Some(policy) = &self.policy {
            elements.push("p=require".into());
            elements.push(format!("ma={}", policy.max_age));
        }
        if let Some(e) = self.expires {
            elements.push(format!("e={e}"));
        }
        if let Some(cs) = &self.continuity {
            elements.push(format!("cs={}", STANDARD.encode(cs.to_bytes())));
        }
        let spaced = elements.join("; ");
        let compact = elements.join(";");
        if spaced.len() > MAX_STRING_LEN && compact.len() <= MAX_STRING_LEN {
            compact
        } else {
            spaced
        }
    }

    /// The record as TXT character-strings of at most [`MAX_STRING_LEN`]
    /// bytes each, which receivers concatenate (RFC 7208 §3.3).
    pub fn to_strings(&self) -> Vec<String> {
        let text = self.to_text();
        // The text is ASCII, so every byte index is a char boundary.
        text.as_bytes()
            .chunks(MAX_STRING_LEN)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect()
    }

    /// The TXT RDATA in zone-file syntax: each character-string quoted,
    /// separated by a space (`"ver=1; …" "…"`).
    pub fn zone_rdata(&self) -> String {
        let quoted: Vec<String> = self
            .to_strings()
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        quoted.join(" ")
    }

    /// A zone-file line publishing this record for `domain`, e.g.
    /// `_ibemailkey.b.test. 3600 IN TXT "ver=1; …"`.
    pub fn zone_line(&self, domain: &str, ttl: u32) -> String {
        format!(
            "{}. {ttl} IN TXT {}",
            record_name(domain),
            self.zone_rdata()
        )
    }

    /// True if the record has expired at `now` (seconds since the epoch).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }
}

fn parse_decimal(value: &str, tag: Tag) -> Result<u64, ParseError> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::BadValue {
            tag,
            reason: "not a decimal number",
        });
    }
    value.parse().map_err(|_| ParseError::BadValue {
        tag,
        reason: "number out of range",
    })
}

fn decode_base64(value: &str, tag: Tag) -> Result<Vec<u8>, ParseError> {
    let compact: String = value.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).map_err(|_| ParseError::BadValue {
        tag,
        reason: "not valid base64",
    })
}

fn decode_params(x: &[u8], y: &[u8]) -> Result<PublicParams, ParseError> {
    PublicParams::from_components(x, y).map_err(|source| ParseError::InvalidPoint {
        tag: if source.what() == "parameter Y" {
            Tag::Y
        } else {
            Tag::X
        },
        source,
    })
}

/// The outcome of reading every TXT string published at `_ibemailkey.<domain>`.
#[derive(Clone, Debug, Default)]
pub struct RecordSet {
    /// Valid, supported records, sorted by generation, highest first.
    pub records: Vec<Record>,
    /// Strings that looked like ibemail records but were rejected, with why.
    pub rejected: Vec<ParseError>,
    /// Generations published more than once with different parameters. Such
    /// generations are unusable: a sender cannot know which is genuine.
    pub conflicting: Vec<Generation>,
}

impl RecordSet {
    /// Parses every TXT record of the RRset; each element is one TXT record
    /// given as its character-strings.
    pub fn from_txt_records<R, S>(records: &[R]) -> Self
    where
        R: AsRef<[S]>,
        S: AsRef<[u8]>,
    {
        let mut set = RecordSet::default();
        for rdata in records {
            match Record::parse_strings(rdata.as_ref()) {
                Ok(record) => set.records.push(record),
                Err(e) if e.is_foreign() => {}
                Err(e) => set.rejected.push(e),
            }
        }
        set.records
            .sort_by_key(|r| core::cmp::Reverse(r.generation));
        // Drop exact duplicates; mark generations with differing parameters.
        set.records.dedup();
        let mut conflicting: Vec<Generation> = set
            .records
            .windows(2)
            .filter(|w| w[0].generation == w[1].generation)
            .map(|w| w[0].generation)
            .collect();
        conflicting.dedup();
        set.records.retain(|r| !conflicting.contains(&r.generation));
        set.conflicting = conflicting;
        set
    }

    /// The generation a sender should use at `now`: the highest valid,
    /// unexpired one.
    pub fn select(&self, now: u64) -> Option<&Record> {
        self.records.iter().find(|r| !r.is_expired(now))
    }

    /// The record of a given generation, expired or not (receivers and the
    /// KGC's `check` look up specific generations).
    pub fn generation(&self, generation: Generation) -> Option<&Record> {
        self.records.iter().find(|r| r.generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn params(seed: u64) -> PublicParams {
        MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)).public_params()
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn text(n: u32, p: &PublicParams) -> String {
        Record::new(n, p.clone()).to_text()
    }

    #[test]
    fn emitted_record_fits_one_string_and_parses_back() {
        let p = params(1);
        let mut record = Record::new(u32::MAX, p);
        record.expires = Some(u64::MAX);
        let t = record.to_text();
        assert!(t.len() <= MAX_STRING_LEN, "{} bytes", t.len());
        assert!(t.starts_with("ver=1; a=bb2-fo; c=bls12-381; n=4294967295; X="));
        assert_eq!(Record::parse(&t).unwrap(), record);
    }

    #[test]
    fn signing_parameter_is_optional_and_round_trips() {
        let master = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(3));
        let record = Record::new(7, master.public_params()).with_signing(master.signing_params());
        let t = record.to_text();
        assert!(
            t.starts_with("ver=1; a=bb2-fo; c=bls12-381; n=7; X="),
            "{t}"
        );
        assert!(t.contains("; S="), "{t}");
        assert_eq!(Record::parse(&t).unwrap(), record);
        // The largest values still fit one string, compacted if need be.
        let mut big =
            Record::new(u32::MAX, master.public_params()).with_signing(master.signing_params());
        big.expires = Some(999_999_999_999);
        let t = big.to_text();
        assert!(t.len() <= MAX_STRING_LEN, "{} bytes: {t}", t.len());
        assert_eq!(Record::parse(&t).unwrap(), big);
        // A typical rotation record keeps the spaced form.
        let mut typical = record.clone();
        typical.expires = Some(1_900_000_000);
        assert!(typical.to_text().contains("; e=1900000000"));
        // A bad S= leaves the record usable for encryption, without S;
        // without S= the record is fine too.
        let bad = t.replace(";S=", ";S=AAAA");
        let parsed = Record::parse(&bad).unwrap();
        assert_eq!(parsed.signing, None);
        assert_eq!(parsed.params, big.params);
        assert_eq!(
            Record::parse(&Record::new(7, master.public_params()).to_text())
                .unwrap()
                .signing,
            None
        );
    }

    /// Generation 1 with a policy fits one string; a later generation with
    /// its continuity signature takes two, well under 512 bytes; policy and
    /// signature round-trip, and the signature verifies only as the
    /// predecessor's.
    #[test]
    fn policy_and_continuity_round_trip_in_records_well_under_512_bytes() {
        let g1 = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(21));
        let g2 = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(22));
        let policy = Some(Policy::require(604_800));
        let first = Record::new(1, g1.public_params())
            .with_signing(g1.signing_params())
            .with_policy(policy);
        assert!(
            first.to_text().len() <= MAX_STRING_LEN,
            "{}",
            first.to_text()
        );
        assert_eq!(first.to_strings().len(), 1);
        assert_eq!(Record::parse(&first.to_text()).unwrap(), first);

        let mut second = Record::new(2, g2.public_params())
            .with_signing(g2.signing_params())
            .with_policy(policy);
        let bytes = Policy::signed_bytes(second.policy.as_ref());
        assert_eq!(bytes, b"p=require;ma=604800");
        let cs = g1.sign_successor(&second.successor("b.test", &bytes).unwrap());
        second = second.with_continuity(Some(cs));
        second.expires = Some(1_900_000_000);
        let text = second.to_text();
        assert!(text.len() < 420, "{} bytes: {text}", text.len());
        let strings = second.to_strings();
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|s| s.len() <= MAX_STRING_LEN));
        assert_eq!(Record::parse_strings(&strings).unwrap(), second);
        assert!(second.zone_line("b.test", 300).contains("\" \""));

        assert!(second.continues("b.test", &g1.signing_params()));
        assert!(!second.continues("b.test", &g2.signing_params()));
        assert!(!second.continues("c.test", &g1.signing_params()));
        // Lowering the policy (or dropping it) breaks the signature.
        for lowered in [None, Some(Policy::require(60))] {
            let doctored = second.clone().with_policy(lowered);
            assert!(!doctored.continues("b.test", &g1.signing_params()));
        }
        assert!(!first.continues("b.test", &g1.signing_params()), "no cs=");
    }

    #[test]
    fn malformed_policy_and_continuity_are_ignored_not_fatal() {
        let g1 = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(23));
        let base = Record::new(1, g1.public_params()).with_signing(g1.signing_params());
        let text = base.to_text();
        for extra in [
            "; p=require",
            "; p=require; ma=soon",
            "; p=maybe; ma=60",
            "; ma=60",
            "; cs=AAAA",
            "; cs=!!",
        ] {
            let parsed = Record::parse(&format!("{text}{extra}")).unwrap();
            assert_eq!(parsed, base, "{extra}");
        }
        assert_eq!(
            Record::parse(&format!("{text}; p=none; ma=60"))
                .unwrap()
                .policy,
            None
        );
        // An over-long max-age is capped at a year.
        let capped = Record::parse(&format!("{text}; p=require; ma=999999999999")).unwrap();
        assert_eq!(capped.policy, Some(Policy::require(MAX_POLICY_AGE)));
    }

    #[test]
    fn zone_line_quotes_the_record() {
        let r = Record::new(1, params(1));
        let line = r.zone_line("b.test.", 300);
        assert!(line.starts_with("_ibemailkey.b.test. 300 IN TXT \"ver=1; "));
        assert!(line.ends_with("\""));
    }

    #[test]
    fn split_strings_and_odd_whitespace_parse() {
        let p = params(2);
        let t = text(3, &p);
        let (a, b) = t.split_at(100);
        let (b, c) = b.split_at(40);
        assert_eq!(Record::parse_strings(&[a, b, c]).unwrap().params, p);

        let spaced = format!(
            "  ver = 1 ;\ta=bb2-fo;c = bls12-381 ;  n=3;X = {} ; Y={} ; ",
            b64(&p.x_bytes()),
            b64(&p.y_bytes())
        );
        assert_eq!(Record::parse(&spaced).unwrap().generation, 3);

        // Whitespace inside base64 values, as DKIM allows in p=.
        let x = b64(&p.x_bytes());
        let broken_x = format!("{} {}", &x[..30], &x[30..]);
        let t = format!(
            "ver=1; a=bb2-fo; c=bls12-381; n=3; X={broken_x}; Y={}",
            b64(&p.y_bytes())
        );
        assert_eq!(Record::parse(&t).unwrap().params, p);
    }

    #[test]
    fn unknown_tags_are_ignored_in_any_position() {
        let p = params(3);
        let t = format!(
            "ver=1; zz=whatever; a=bb2-fo; c=bls12-381; n=1; future_tag=1; X={}; Y={}; s=abc",
            b64(&p.x_bytes()),
            b64(&p.y_bytes())
        );
        assert_eq!(Record::parse(&t).unwrap().generation, 1);
    }

    #[test]
    fn errors_name_the_tag() {
        let p = params(4);
        let x = b64(&p.x_bytes());
        let y = b64(&p.y_bytes());
        let base = |rest: &str| format!("ver=1; {rest}");
        let cases: Vec<(String, ParseError)> = vec![
            (
                base(&format!(
                    "a=bb2-fo; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}"
                )),
                ParseError::DuplicateTag(Tag::Algorithm),
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}; n=2")),
                ParseError::DuplicateTag(Tag::Generation),
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; X={x}; Y={y}")),
                ParseError::MissingTag(Tag::Generation),
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=1; X={x}")),
                ParseError::MissingTag(Tag::Y),
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=0; X={x}; Y={y}")),
                ParseError::BadValue {
                    tag: Tag::Generation,
                    reason: "must be between 1 and 4294967295",
                },
            ),
            (
                base(&format!(
                    "a=bb2-fo; c=bls12-381; n=4294967296; X={x}; Y={y}"
                )),
                ParseError::BadValue {
                    tag: Tag::Generation,
                    reason: "must be between 1 and 4294967295",
                },
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=-1; X={x}; Y={y}")),
                ParseError::BadValue {
                    tag: Tag::Generation,
                    reason: "not a decimal number",
                },
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=1; X=!!notbase64; Y={y}")),
                ParseError::BadValue {
                    tag: Tag::X,
                    reason: "not valid base64",
                },
            ),
            (
                base(&format!("a=rsa; c=bls12-381; n=1; X={x}; Y={y}")),
                ParseError::UnsupportedAlgorithm("rsa".into()),
            ),
            (
                base(&format!("a=bb2-fo; c=bn254; n=1; X={x}; Y={y}")),
                ParseError::UnsupportedCurve("bn254".into()),
            ),
            (
                format!("ver=2; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}"),
                ParseError::UnsupportedVersion("2".into()),
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}; e=soon")),
                ParseError::BadValue {
                    tag: Tag::Expires,
                    reason: "not a decimal number",
                },
            ),
            (
                base(&format!("a=bb2-fo; ;c=bls12-381; n=1; X={x}; Y={y}")),
                ParseError::Syntax {
                    element: String::new(),
                },
            ),
            (
                base(&format!("a=bb2-fo; c=bls12-381; n=1; X={x}; Y={y}; junk")),
                ParseError::Syntax {
                    element: "junk".into(),
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Record::parse(&input), Err(expected), "{input}");
        }
    }

    #[test]
    fn invalid_points_are_rejected_naming_the_tag() {
        let p = params(5);
        let x = b64(&p.x_bytes());
        let mut identity = [0u8; 48];
        identity[0] = 0xc0;
        let t = format!(
            "ver=1; a=bb2-fo; c=bls12-381; n=1; X={x}; Y={}",
            b64(&identity)
        );
        assert!(matches!(
            Record::parse(&t),
            Err(ParseError::InvalidPoint {
                tag: Tag::Y,
                source: DecodeError::IdentityPoint { .. }
            })
        ));
        let t = format!(
            "ver=1; a=bb2-fo; c=bls12-381; n=1; X={}; Y={x}",
            b64(&[1u8; 47])
        );
        assert!(matches!(
            Record::parse(&t),
            Err(ParseError::InvalidPoint { tag: Tag::X, .. })
        ));
    }

    #[test]
    fn foreign_records_are_told_apart() {
        for foreign in [
            "v=spf1 -all",
            "google-site-verification=abc",
            "",
            "a=bb2-fo; ver=1",
        ] {
            assert_eq!(
                Record::parse(foreign),
                Err(ParseError::NotIbemailRecord),
                "{foreign}"
            );
        }
        assert_eq!(
            Record::parse_bytes(b"v=DKIM1; \xff"),
            Err(ParseError::NotIbemailRecord)
        );
        assert_eq!(
            Record::parse_bytes(b"ver=1; a=\xff"),
            Err(ParseError::NotAscii)
        );
    }

    #[test]
    fn selection_prefers_the_highest_unexpired_generation() {
        let (p1, p2, p3) = (params(6), params(7), params(8));
        let mut r3 = Record::new(3, p3);
        r3.expires = Some(1000);
        let set = RecordSet::from_txt_records(&[
            vec![text(1, &p1)],
            vec!["v=spf1 -all".to_string()],
            vec![r3.to_text()],
            vec![text(2, &p2)],
            vec!["ver=1; a=bb2-fo; broken".to_string()],
        ]);
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.rejected.len(), 1);
        assert_eq!(set.select(999).unwrap().generation, 3);
        assert_eq!(set.select(1000).unwrap().generation, 2);
        assert_eq!(set.generation(1).unwrap().params, p1);
        assert!(set.generation(4).is_none());
    }

    #[test]
    fn conflicting_generations_are_unusable_but_exact_duplicates_are_fine() {
        let (p1, p2, q2) = (params(9), params(10), params(11));
        let set = RecordSet::from_txt_records(&[
            vec![text(1, &p1)],
            vec![text(1, &p1)],
            vec![text(2, &p2)],
            vec![text(2, &q2)],
        ]);
        assert_eq!(set.conflicting, vec![2]);
        assert_eq!(set.select(0).unwrap().generation, 1);
        assert!(set.generation(2).is_none());
    }

    #[test]
    fn empty_rrset_selects_nothing() {
        let set = RecordSet::from_txt_records::<Vec<String>, String>(&[]);
        assert!(set.select(0).is_none());
    }

    #[test]
    fn record_name_strips_root_dot() {
        assert_eq!(record_name("b.test."), "_ibemailkey.b.test");
    }

    #[test]
    fn record_names_past_dns_limit_do_not_fit() {
        assert_eq!(MAX_PUBLISHING_DOMAIN_LEN, 241);
        let longest = format!("{0}.{0}.{0}.{1}.test", "a".repeat(63), "b".repeat(44));
        assert_eq!(longest.len(), MAX_PUBLISHING_DOMAIN_LEN);
        assert_eq!(record_name(&longest).len(), MAX_NAME_LEN);
        assert!(record_name_fits(&longest));
        assert!(record_name_fits(&format!("{longest}.")));
        let too_long = format!("{0}.{0}.{0}.{1}.test", "a".repeat(63), "b".repeat(45));
        assert!(!record_name_fits(&too_long));
        assert!(record_name_fits("b.test"));
    }
}
