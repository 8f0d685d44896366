//! The CMS structures of a sealed message and their object identifiers.
//!
//! ```text
//! ContentInfo { id-ct-authEnvelopedData, [0] EXPLICIT AuthEnvelopedData {        -- RFC 5083
//!   version 0,
//!   recipientInfos SET OF [4] OtherRecipientInfo { id-ori-kem, KEMRecipientInfo {  -- RFC 9629
//!       version 0,
//!       rid [0] subjectKeyIdentifier = SHA-256(RID tag ‖ ukm ‖ address),
//!       kem { ibemail-bb2-kem (2.25.<uuid>), parameters INTEGER generation },
//!       kemct OCTET STRING (128-byte capsule),
//!       kdf { id-alg-hkdf-with-sha256 },                                         -- RFC 8619
//!       kekLength 32,
//!       ukm [0] EXPLICIT OCTET STRING (16 random bytes, the rid salt),
//!       wrap { id-aes256-wrap },                                                 -- RFC 3394
//!       encryptedKey OCTET STRING (40 bytes) } },
//!   authEncryptedContentInfo { id-data, { aes256-GCM, GCMParameters { nonce 12, ICVlen 16 } },  -- RFC 5084
//!                              [0] IMPLICIT ciphertext },
//!   mac OCTET STRING (GCM tag) } }
//! ```
//!
//! **The GCM nonce is `SHA-256("IBEMAIL-V1-NONCE" ‖ DER(recipientInfos))`
//! truncated to 12 bytes.** RFC 5083 authenticates the content but not the
//! recipient infos, so a change to one recipient's info would go unnoticed
//! by the others. Deriving the nonce from them binds them to the content:
//! the opener recomputes the nonce, and changing the transmitted nonce
//! instead breaks the GCM tag. The content key is fresh and used once, so a
//! deterministic nonce is safe. (The standard route, a digest in `authAttrs`,
//! is unusable: OpenSSL up to 2026 decodes `authAttrs` with the wrong tag and
//! then cannot parse the message at all — openssl/openssl#26101.)
//!
//! The KEM OID is a UUID arc (ITU-T X.667). `const-oid` stores arcs as `u32`,
//! so a 128-bit arc cannot be an `ObjectIdentifier`; [`LargeOid`] carries the
//! encoded bytes instead, and [`KemRecipientInfo`] mirrors
//! `cms::kemri::KemRecipientInfo` with that one field changed.

use cms::content_info::CmsVersion;
use cms::enveloped_data::RecipientIdentifier;
use const_oid::ObjectIdentifier;
use der::asn1::{Any, OctetString};
use der::{DecodeValue, EncodeValue, FixedTag, Header, Length, Reader, Sequence, Tag, Writer};
use spki::AlgorithmIdentifierOwned;

/// The ibemail BB2 KEM: `2.25.39632899932755161904767908401202920215`
/// (UUID 1dd104d5-146d-43a0-907a-54c4a07cfb17). Written down once, here.
pub const KEM_OID_UUID: u128 = 0x1dd104d5_146d_43a0_907a_54c4a07cfb17;

/// `id-ct-authEnvelopedData` (RFC 5083).
pub(crate) const ID_CT_AUTH_ENVELOPED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.23");
/// `id-envelopedData` (RFC 5652).
pub(crate) const ID_ENVELOPED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
/// `id-data` (RFC 5652).
pub(crate) const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// `id-ori-kem` (RFC 9629).
pub(crate) const ID_ORI_KEM: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.13.3");
/// `id-aes256-GCM` (RFC 5084).
pub(crate) const ID_AES256_GCM: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.46");
/// `id-aes256-wrap` (RFC 3565).
pub(crate) const ID_AES256_WRAP: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.45");
/// `id-alg-hkdf-with-sha256` (RFC 8619).
pub(crate) const ID_ALG_HKDF_WITH_SHA256: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.3.28");

/// An object identifier kept as its encoded content octets, for arcs larger
/// than `u32`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LargeOid(Vec<u8>);

impl LargeOid {
    /// `2.25.<uuid>` (ITU-T X.667).
    pub fn from_uuid(uuid: u128) -> Self {
        let mut arc = Vec::new();
        let mut v = uuid;
        loop {
            arc.push((v & 0x7f) as u8);
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        arc.reverse();
        let last = arc.len() - 1;
        for b in &mut arc[..last] {
            *b |= 0x80;
        }
        let mut bytes = vec![2 * 40 + 25];
        bytes.extend(arc);
        LargeOid(bytes)
    }

    /// The ibemail KEM OID.
    pub fn ibemail_kem() -> Self {
        Self::from_uuid(KEM_OID_UUID)
    }

    /// Dotted-decimal form, for diagnostics.
    pub fn to_dotted(&self) -> String {
        let mut arcs: Vec<u128> = Vec::new();
        let mut acc: u128 = 0;
        for &b in &self.0 {
            acc = (acc << 7) | u128::from(b & 0x7f);
            if b & 0x80 == 0 {
                arcs.push(acc);
                acc = 0;
            }
        }
        let mut out = String::new();
        if let Some(&first) = arcs.first() {
            let (a, b) = if first < 40 {
                (0, first)
            } else if first < 80 {
                (1, first - 40)
            } else {
                (2, first - 80)
            };
            out = format!("{a}.{b}");
        }
        for arc in arcs.iter().skip(1) {
            out.push_str(&format!(".{arc}"));
        }
        out
    }
}

impl FixedTag for LargeOid {
    const TAG: Tag = Tag::ObjectIdentifier;
}

impl<'a> DecodeValue<'a> for LargeOid {
    type Error = der::Error;
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let bytes = reader.read_vec(header.length())?;
        // Non-empty, last octet ends an arc, no arc starts with 0x80 (non-minimal).
        let mut arc_start = true;
        for &b in &bytes {
            if arc_start && b == 0x80 {
                return Err(Tag::ObjectIdentifier.value_error().into());
            }
            arc_start = b & 0x80 == 0;
        }
        if bytes.is_empty() || !arc_start {
            return Err(Tag::ObjectIdentifier.value_error().into());
        }
        Ok(LargeOid(bytes))
    }
}

impl EncodeValue for LargeOid {
    fn value_len(&self) -> der::Result<Length> {
        Length::try_from(self.0.len())
    }
    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        writer.write(&self.0)
    }
}

/// `KEMAlgorithmIdentifier` with a [`LargeOid`].
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct KemAlgorithmIdentifier {
    /// The KEM.
    pub algorithm: LargeOid,
    /// For ibemail: the parameter generation, an INTEGER.
    #[asn1(optional = "true")]
    pub parameters: Option<Any>,
}

/// RFC 9629 `KEMRecipientInfo`, with the KEM identifier as a [`LargeOid`].
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub struct KemRecipientInfo {
    /// Always 0.
    pub version: CmsVersion,
    /// For ibemail: `subjectKeyIdentifier` = salted hash of the address.
    pub rid: RecipientIdentifier,
    /// The KEM and its parameters.
    pub kem: KemAlgorithmIdentifier,
    /// The KEM ciphertext (capsule).
    pub kem_ct: OctetString,
    /// The key-derivation function.
    pub kdf: AlgorithmIdentifierOwned,
    /// Length of the key-encryption key, in bytes.
    pub kek_length: u16,
    /// User keying material (for ibemail: the salt of `rid`).
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub ukm: Option<OctetString>,
    /// The key-wrap algorithm.
    pub wrap: AlgorithmIdentifierOwned,
    /// The wrapped content-encryption key.
    pub encrypted_key: OctetString,
}

/// RFC 9629 `CMSORIforKEMOtherInfo`: the KDF `info` input.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct CmsOriForKemOtherInfo {
    pub(crate) wrap: AlgorithmIdentifierOwned,
    pub(crate) kek_length: u16,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub(crate) ukm: Option<OctetString>,
}

/// RFC 5084 `GCMParameters`.
#[derive(Clone, Debug, PartialEq, Eq, Sequence)]
pub(crate) struct GcmParameters {
    pub(crate) nonce: OctetString,
    #[asn1(default = "default_icv_len")]
    pub(crate) icv_len: u8,
}

fn default_icv_len() -> u8 {
    12
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{Decode, Encode};

    #[test]
    fn kem_oid_encodes_as_x667_uuid_arc() {
        let oid = LargeOid::ibemail_kem();
        assert_eq!(
            oid.to_dotted(),
            "2.25.39632899932755161904767908401202920215"
        );
        let der = oid.to_der().unwrap();
        assert_eq!(der[0], 0x06);
        assert_eq!(LargeOid::from_der(&der).unwrap(), oid);
        // A small OID decodes and prints too.
        let small = LargeOid::from_der(&ID_AES256_GCM.to_der().unwrap()).unwrap();
        assert_eq!(small.to_dotted(), "2.16.840.1.101.3.4.1.46");
    }

    #[test]
    fn rejects_non_minimal_or_unterminated_oids() {
        assert!(LargeOid::from_der(&[0x06, 0x02, 0x69, 0x80]).is_err());
        assert!(LargeOid::from_der(&[0x06, 0x03, 0x69, 0x80, 0x01]).is_err());
        assert!(LargeOid::from_der(&[0x06, 0x00]).is_err());
    }

    #[test]
    fn kdf_info_matches_rfc9629_encoding() {
        // CMSORIforKEMOtherInfo { aes256-wrap, 32 } as RFC 9629 / 9936 encode it.
        let info = CmsOriForKemOtherInfo {
            wrap: AlgorithmIdentifierOwned {
                oid: ID_AES256_WRAP,
                parameters: None,
            },
            kek_length: 32,
            ukm: None,
        };
        assert_eq!(
            hex::encode(info.to_der().unwrap()),
            "3010300b060960864801650304012d020120"
        );
    }

    #[test]
    fn gcm_parameters_encode_the_non_default_tag_length() {
        let p = GcmParameters {
            nonce: OctetString::new([0u8; 12]).unwrap(),
            icv_len: 16,
        };
        let der = p.to_der().unwrap();
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x10]);
        assert_eq!(GcmParameters::from_der(&der).unwrap(), p);
    }
}
