//! Sealing: the original message becomes the AES-256-GCM-encrypted content of
//! an AuthEnvelopedData, with one KEMRecipientInfo per recipient.

use aes_kw::{KeyInit, KwAes256};
use cms::content_info::CmsVersion;
use cms::enveloped_data::{OtherRecipientInfo, RecipientIdentifier, RecipientInfo};
use der::Encode;
use der::asn1::{Any, OctetString};
use hkdf::Hkdf;
use ibemail_ibe::{Generation, Identity, PublicParams, SharedSecret, encapsulate};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use zeroize::Zeroizing;

use crate::b64::{LineEncoder, wrapped_len};
use crate::cms::{
    CmsOriForKemOtherInfo, GcmParameters, ID_AES256_GCM, ID_AES256_WRAP, ID_ALG_HKDF_WITH_SHA256,
    ID_CT_AUTH_ENVELOPED_DATA, ID_DATA, ID_ORI_KEM, KemAlgorithmIdentifier, KemRecipientInfo,
    LargeOid,
};
use crate::error::{LimitExceeded, SealError};
use crate::frame::{header_len, push_header, push_tlv, tag};
use crate::header::{HeaderSection, push_crlf_normalised};
use crate::{Limits, OUTER_FIELDS};

/// Domain-separation tag of the recipient identifier hash.
pub(crate) const RID_TAG: &[u8] = b"IBEMAIL-V1-RID";
/// Domain-separation tag of the nonce derivation.
pub(crate) const NONCE_TAG: &[u8] = b"IBEMAIL-V1-NONCE";
/// Bytes of the per-recipient salt carried in `ukm`.
pub(crate) const UKM_BYTES: usize = 16;
pub(crate) const CEK_BYTES: usize = 32;
pub(crate) const NONCE_BYTES: usize = 12;
pub(crate) const TAG_BYTES: usize = 16;
pub(crate) const WRAPPED_KEY_BYTES: usize = CEK_BYTES + 8;

/// A message's content-encryption key. Zeroized on drop.
pub struct ContentKey(pub(crate) Zeroizing<[u8; CEK_BYTES]>);

impl ContentKey {
    /// The key bytes, for [`Recipient`] implementations that wrap it.
    pub fn as_bytes(&self) -> &[u8; CEK_BYTES] {
        &self.0
    }
}

impl core::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

/// Someone a message is sealed to: produces the DER of one CMS
/// `RecipientInfo` that lets them recover the content key.
///
/// [`IbeRecipient`] is the only one ibemail itself uses; the trait is the
/// extension point (tests use it to add a recipient `openssl` can decrypt).
pub trait Recipient {
    /// The DER encoding of a `RecipientInfo` for `cek`.
    fn recipient_info(
        &self,
        cek: &ContentKey,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Vec<u8>, SealError>;
}

/// A recipient address with its domain's parameters for one generation.
#[derive(Clone, Debug)]
pub struct IbeRecipient {
    /// The recipient (normalised envelope address).
    pub identity: Identity,
    /// The generation of `params`.
    pub generation: Generation,
    /// The recipient domain's public parameters.
    pub params: PublicParams,
}

/// The recipient identifier: `SHA-256("IBEMAIL-V1-RID" ‖ ukm ‖ address)`.
pub(crate) fn recipient_id(ukm: &[u8], identity: &Identity) -> [u8; 32] {
    Sha256::new()
        .chain_update(RID_TAG)
        .chain_update(ukm)
        .chain_update(identity.as_str().as_bytes())
        .finalize()
        .into()
}

fn encoding_error(e: der::Error) -> SealError {
    SealError::Encoding(e.to_string())
}

pub(crate) fn wrap_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ID_AES256_WRAP,
        parameters: None,
    }
}

/// RFC 9629 §5: `KEK = HKDF-SHA256(salt = none, IKM = ss, info = DER(CMSORIforKEMOtherInfo))`.
pub(crate) fn derive_kek(
    secret: &SharedSecret,
    ukm: Option<&OctetString>,
) -> Result<Zeroizing<[u8; CEK_BYTES]>, der::Error> {
    let info = CmsOriForKemOtherInfo {
        wrap: wrap_algorithm(),
        kek_length: CEK_BYTES as u16,
        ukm: ukm.cloned(),
    }
    .to_der()?;
    let mut kek = Zeroizing::new([0u8; CEK_BYTES]);
    // 32 bytes is far below HKDF-SHA256's output limit; expand cannot fail.
    let _ = Hkdf::<Sha256>::new(None, secret.as_bytes()).expand(&info, kek.as_mut());
    Ok(kek)
}

impl Recipient for IbeRecipient {
    fn recipient_info(
        &self,
        cek: &ContentKey,
        rng: &mut dyn CryptoRngCore,
    ) -> Result<Vec<u8>, SealError> {
        let (capsule, secret) = encapsulate(&self.params, &self.identity, self.generation, rng)
            .map_err(|source| SealError::Encapsulation {
                identity: self.identity.to_string(),
                source,
            })?;
        let mut salt = [0u8; UKM_BYTES];
        rng.fill_bytes(&mut salt);
        let ukm = OctetString::new(salt).map_err(encoding_error)?;
        let kek = derive_kek(&secret, Some(&ukm)).map_err(encoding_error)?;
        let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
        KwAes256::new(&(*kek).into())
            .wrap_key(cek.as_bytes(), &mut wrapped)
            .map_err(|e| SealError::Encoding(format!("AES key wrap: {e:?}")))?;

        let kemri = KemRecipientInfo {
            version: CmsVersion::V0,
            rid: RecipientIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(
                OctetString::new(recipient_id(&salt, &self.identity)).map_err(encoding_error)?,
            )),
            kem: KemAlgorithmIdentifier {
                algorithm: LargeOid::ibemail_kem(),
                parameters: Some(Any::encode_from(&self.generation).map_err(encoding_error)?),
            },
            kem_ct: OctetString::new(capsule.to_bytes()).map_err(encoding_error)?,
            kdf: AlgorithmIdentifierOwned {
                oid: ID_ALG_HKDF_WITH_SHA256,
                parameters: None,
            },
            kek_length: CEK_BYTES as u16,
            ukm: Some(ukm),
            wrap: wrap_algorithm(),
            encrypted_key: OctetString::new(wrapped).map_err(encoding_error)?,
        };
        RecipientInfo::Ori(OtherRecipientInfo {
            ori_type: ID_ORI_KEM,
            ori_value: Any::encode_from(&kemri).map_err(encoding_error)?,
        })
        .to_der()
        .map_err(encoding_error)
    }
}

/// One header field: its name, and its value as it follows the colon
/// (leading space kept, folded with CRLF, no final CRLF).
pub type Field = (String, Vec<u8>);

/// A sealed message: the outer header fields and the base64 body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Outer header fields, top first.
    pub fields: Vec<Field>,
    /// The base64-encoded CMS, lines of 76 characters ending in CRLF.
    pub body: Vec<u8>,
}

impl Sealed {
    /// The header section: each field and its CRLF (no blank line).
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.fields {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The whole message: header, blank line, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = self.header();
        let mut out = Vec::with_capacity(header.len() + 2 + self.body.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The MIME header fields of every sealed message (RFC 8551 §3.3), in order.
pub const SMIME_FIELDS: [(&str, &str); 4] = [
    ("MIME-Version", "1.0"),
    (
        "Content-Type",
        "application/pkcs7-mime; smime-type=authEnveloped-data; name=\"smime.p7m\"",
    ),
    ("Content-Disposition", "attachment; filename=\"smime.p7m\""),
    ("Content-Transfer-Encoding", "base64"),
];

/// The outer Subject (RFC 9788 `hcp_baseline`).
pub const OBSCURED_SUBJECT: &str = "[...]";

/// Seals `message` (raw RFC 5322 bytes, any line endings) to `recipients`.
///
/// The encrypted content is `message` byte for byte. The outer header keeps
/// the trace and addressing fields named in [`OUTER_FIELDS`], replaces the
/// Subject with `[...]` and adds the S/MIME MIME fields.
///
/// This copies the message first; a caller that owns it and has no further
/// use for it should call [`seal_owned`], which encrypts it where it lies
/// (one pass over memory less, and no second copy at peak).
pub fn seal(
    message: &[u8],
    recipients: &[&dyn Recipient],
    rng: &mut dyn CryptoRngCore,
    limits: &Limits,
) -> Result<Sealed, SealError> {
    // Refuse before copying anything.
    check_limits(message.len(), recipients, limits)?;
    seal_owned(message.to_vec(), recipients, rng, limits)
}

/// [`seal`], taking the message by value: it is encrypted in place, in its
/// own buffer, which is dropped once the base64 body is written. Peak
/// memory is the message plus the sealed body (2.4 × the message).
///
/// The message is consumed whether or not sealing succeeds.
pub fn seal_owned(
    mut message: Vec<u8>,
    recipients: &[&dyn Recipient],
    rng: &mut dyn CryptoRngCore,
    limits: &Limits,
) -> Result<Sealed, SealError> {
    check_limits(message.len(), recipients, limits)?;
    // The outer header is read from the plaintext, before it is encrypted.
    let fields = outer_fields(&message);

    let mut cek = ContentKey(Zeroizing::new([0u8; CEK_BYTES]));
    rng.fill_bytes(cek.0.as_mut());

    // DER SET OF is sorted by encoding; that also hides the order of recipients.
    let mut infos = recipients
        .iter()
        .map(|r| r.recipient_info(&cek, rng))
        .collect::<Result<Vec<_>, _>>()?;
    infos.sort();

    let body = seal_body(&mut message, &infos, &cek)?;
    Ok(Sealed { fields, body })
}

fn check_limits(
    message_len: usize,
    recipients: &[&dyn Recipient],
    limits: &Limits,
) -> Result<(), SealError> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipients);
    }
    if recipients.len() > limits.max_recipients {
        return Err(LimitExceeded::Recipients {
            limit: limits.max_recipients,
            actual: recipients.len(),
        }
        .into());
    }
    if message_len > limits.max_message_bytes {
        return Err(LimitExceeded::MessageSize {
            limit: limits.max_message_bytes,
            actual: message_len,
        }
        .into());
    }
    Ok(())
}

/// The DER of the ContentInfo up to the encrypted content octets (their
/// `[0]` header included), the GCM nonce, and the length of the whole DER
/// for `content_len` bytes of content.
fn der_prefix(
    content_len: usize,
    infos: &[Vec<u8>],
) -> Result<(Vec<u8>, [u8; NONCE_BYTES], usize), SealError> {
    let set_value: usize = infos.iter().map(Vec::len).sum();
    let mut recipient_set = Vec::with_capacity(header_len(set_value) + set_value);
    push_header(&mut recipient_set, tag::SET, set_value);
    for info in infos {
        recipient_set.extend_from_slice(info);
    }
    let nonce = content_nonce(&recipient_set);

    let oid_tlv = |oid: &const_oid::ObjectIdentifier| oid.to_der().map_err(encoding_error);
    let oid_aed = oid_tlv(&ID_CT_AUTH_ENVELOPED_DATA)?;
    let oid_data = oid_tlv(&ID_DATA)?;
    let gcm = AlgorithmIdentifierOwned {
        oid: ID_AES256_GCM,
        parameters: Some(
            Any::encode_from(&GcmParameters {
                nonce: OctetString::new(nonce).map_err(encoding_error)?,
                icv_len: TAG_BYTES as u8,
            })
            .map_err(encoding_error)?,
        ),
    }
    .to_der()
    .map_err(encoding_error)?;

    let ct_len = content_len;

    let eci_value = oid_data.len() + gcm.len() + header_len(ct_len) + ct_len;
    let mac_tlv = 2 + TAG_BYTES;
    let aed_value = 3 + recipient_set.len() + header_len(eci_value) + eci_value + mac_tlv;
    let aed = header_len(aed_value) + aed_value;
    let ci_value = oid_aed.len() + header_len(aed) + aed;
    let total = header_len(ci_value) + ci_value;

    let mut out = Vec::with_capacity(total - ct_len - mac_tlv);
    push_header(&mut out, tag::SEQUENCE, ci_value);
    out.extend_from_slice(&oid_aed);
    push_header(&mut out, tag::CONTEXT_0_CONSTRUCTED, aed);
    push_header(&mut out, tag::SEQUENCE, aed_value);
    push_tlv(&mut out, tag::INTEGER, &[0]);
    out.extend_from_slice(&recipient_set);
    push_header(&mut out, tag::SEQUENCE, eci_value);
    out.extend_from_slice(&oid_data);
    out.extend_from_slice(&gcm);
    push_header(&mut out, tag::CONTEXT_0_PRIMITIVE, ct_len);
    debug_assert_eq!(out.len() + ct_len + mac_tlv, total);
    Ok((out, nonce, total))
}

/// The base64 body: the DER of the ContentInfo, with `message` encrypted
/// in place as its content.
///
/// `message` is encrypted in one call to `ring`'s AES-256-GCM (stitched
/// AES-NI/CLMUL assembly, twice the speed of a streaming GCM); then the DER
/// prefix, the ciphertext and the tag are base64-encoded in one pass onto
/// an output allocated at its exact size. No other buffer the size of the
/// message exists, and no output byte is written twice.
fn seal_body(
    message: &mut [u8],
    infos: &[Vec<u8>],
    cek: &ContentKey,
) -> Result<Vec<u8>, SealError> {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    let (prefix, nonce, total) = der_prefix(message.len(), infos)?;
    let sealed = UnboundKey::new(&AES_256_GCM, &cek.0[..]).and_then(|key| {
        LessSafeKey::new(key).seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            message,
        )
    });
    let Ok(tag) = sealed else {
        // Nothing says how far ring got: wipe (volatile) whatever plaintext
        // is left rather than hand it back to the allocator.
        zeroize::Zeroize::zeroize(message);
        return Err(SealError::Encoding("AES-GCM encryption failed".into()));
    };
    let mut mac = Vec::with_capacity(2 + TAG_BYTES);
    push_tlv(&mut mac, tag::OCTET_STRING, tag.as_ref());

    let text_len = wrapped_len(total);
    let mut out = Vec::with_capacity(text_len);
    let mut text = LineEncoder::new();
    text.write(&mut out, &prefix);
    text.write(&mut out, message);
    text.write(&mut out, &mac);
    text.finish(&mut out);
    if out.len() != text_len {
        return Err(SealError::Encoding(format!(
            "base64 body is {} bytes, expected {text_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// The GCM nonce: the first 12 bytes of
/// `SHA-256("IBEMAIL-V1-NONCE" ‖ DER(recipientInfos))` (see [`crate::cms`]).
pub(crate) fn content_nonce(recipient_set: &[u8]) -> [u8; NONCE_BYTES] {
    let digest = Sha256::new()
        .chain_update(NONCE_TAG)
        .chain_update(recipient_set)
        .finalize();
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&digest[..NONCE_BYTES]);
    nonce
}

/// The outer header: [`OUTER_FIELDS`] copied and the first Subject
/// obscured, each where it was in the original (RFC 9788's order: a
/// receiver that restores the inner header finds most fields already in
/// place), then the S/MIME fields.
fn outer_fields(message: &[u8]) -> Vec<Field> {
    let section = HeaderSection::parse(message);
    let mut out = Vec::new();
    let mut subject = false;
    for field in &section.fields {
        if OUTER_FIELDS.iter().any(|name| field.is(name)) {
            let mut value = Vec::with_capacity(field.value().len());
            push_crlf_normalised(&mut value, field.value());
            while value.ends_with(b"\r\n") {
                value.truncate(value.len() - 2);
            }
            out.push((String::from_utf8_lossy(field.name).into_owned(), value));
        } else if field.is("Subject") && !subject {
            subject = true;
            out.push((
                "Subject".into(),
                format!(" {OBSCURED_SUBJECT}").into_bytes(),
            ));
        }
    }
    for (name, value) in SMIME_FIELDS {
        out.push((name.into(), format!(" {value}").into_bytes()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::AeadInOut;
    use aes_gcm::{Aes256Gcm, Nonce};

    /// The sealed body built independently: the whole DER with the content
    /// encrypted by `aes-gcm` (not ring), then base64 of it by `base64`.
    fn reference_body(message: &[u8], infos: &[Vec<u8>], cek: &ContentKey) -> Vec<u8> {
        use base64::Engine as _;
        let (mut der, nonce, total) = der_prefix(message.len(), infos).unwrap();
        let ct_start = der.len();
        der.extend_from_slice(message);
        let mac = Aes256Gcm::new(&(*cek.0).into())
            .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut der[ct_start..]).into())
            .unwrap();
        push_tlv(&mut der, tag::OCTET_STRING, mac.as_slice());
        assert_eq!(der.len(), total);
        let text = base64::engine::general_purpose::STANDARD.encode(&der);
        let mut out = Vec::new();
        for line in text.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn body_equals_der_then_base64() {
        let cek = ContentKey(Zeroizing::new([0x5au8; CEK_BYTES]));
        // Around the base64 encoder's groups of 64 lines.
        const GROUP: usize = 57 * 64;
        let mut sizes = vec![0usize, 1, 2, 3, 15, 16, 17, 56, 57, 58, 127, 128, 4096];
        for k in [1, 2, 3] {
            sizes.extend([k * GROUP - 1, k * GROUP, k * GROUP + 1]);
        }
        sizes.push((2 << 20) + 5);
        for len in sizes {
            let message: Vec<u8> = (0..len).map(|i| (i * 3 + i / 97) as u8).collect();
            // Recipient infos of assorted lengths put the content at every
            // alignment to the 57-byte base64 lines (and across length forms).
            for info_len in [1usize, 2, 30, 56, 100, 200, 300, 1000, 60_000] {
                if len > GROUP && info_len % 3 != 0 {
                    continue; // keep the test quick: a few alignments suffice
                }
                let infos = vec![vec![0x30u8; info_len], vec![0xa4u8; info_len / 2 + 1]];
                let mut buffer = message.clone();
                let body = seal_body(&mut buffer, &infos, &cek).unwrap();
                assert!(
                    body == reference_body(&message, &infos, &cek),
                    "message {len} bytes, infos {info_len}"
                );
                // The buffer now holds the ciphertext, not the message.
                assert!(len < 16 || buffer != message);
            }
        }
    }
}
