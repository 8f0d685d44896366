//! Opening: find the local recipients' KEMRecipientInfos, have the KGC open a
//! capsule, unwrap the content key and decrypt in place.
//!
//! Two phases, so the caller decides where keys live and may do I/O in
//! between: [`inspect`] parses the message and lists the ibemail recipients;
//! [`Envelope::candidates`] matches them against local envelope recipients;
//! the caller opens one capsule (in process or through the KGC daemon);
//! [`Envelope::unwrap_key`] and [`Envelope::decrypt`] finish. [`open`] does
//! all of it with a closure.

use aes_kw::{KeyInit, KwAes256};
use cms::content_info::CmsVersion;
use cms::enveloped_data::RecipientIdentifier;
use der::Decode;
use der::asn1::OctetString;
use ibemail_ibe::{CAPSULE_BYTES, Capsule, Generation, Identity, SharedSecret};
use spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

use crate::Limits;
use crate::b64::decode_base64_in_place;
use crate::cms::{
    GcmParameters, ID_AES256_GCM, ID_ALG_HKDF_WITH_SHA256, ID_CT_AUTH_ENVELOPED_DATA, ID_DATA,
    ID_ORI_KEM, KemRecipientInfo, LargeOid,
};
use crate::error::{CapsuleError, LimitExceeded, Malformed, OpenError};
use crate::frame::{Reader, tag};
use crate::header::{ContentType, HeaderSection, unfold};
use crate::seal::{
    CEK_BYTES, ContentKey, NONCE_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES, content_nonce, derive_kek,
    recipient_id, wrap_algorithm,
};

/// One ibemail recipient of a sealed message, as found in the CMS.
#[derive(Clone, Debug)]
struct KemRecipient {
    rid: Vec<u8>,
    ukm: OctetString,
    generation: Generation,
    capsule: Vec<u8>,
    encrypted_key: [u8; WRAPPED_KEY_BYTES],
}

/// A local recipient whose identifier matches a KEMRecipientInfo.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The local recipient.
    pub identity: Identity,
    /// The generation the message was sealed under for them.
    pub generation: Generation,
    /// The capsule to open (encoding as in the message; validated on use).
    pub capsule: Vec<u8>,
    index: usize,
}

impl Candidate {
    /// The capsule, decoded and validated.
    pub fn capsule(&self) -> Result<Capsule, OpenError> {
        Capsule::from_bytes(&self.capsule)
            .map_err(|_| OpenError::AuthenticationFailed("invalid capsule"))
    }
}

/// A parsed sealed message, ready to be opened.
pub struct Envelope {
    der: Vec<u8>,
    ciphertext: (usize, usize),
    nonce: [u8; NONCE_BYTES],
    mac: [u8; TAG_BYTES],
    recipients: Vec<KemRecipient>,
    recipient_infos: usize,
}

impl core::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Envelope")
            .field("content_bytes", &(self.ciphertext.1 - self.ciphertext.0))
            .field("ibemail_recipients", &self.recipients.len())
            .field("recipient_infos", &self.recipient_infos)
            .finish()
    }
}

/// The result of opening.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The original message, byte for byte.
    pub message: Vec<u8>,
    /// The local recipient whose key opened it.
    pub recipient: Identity,
    /// Every one of the local recipients passed to [`open`] that the message
    /// carries a recipient info for (in every layer removed), in the order
    /// given. Only these may be shown the plaintext: the message was not
    /// sealed to the others, who were added to the envelope on the way (a
    /// replay, or a mistake).
    pub sealed_to: Vec<Identity>,
    /// The generation it was sealed under.
    pub generation: Generation,
    /// Layers of ibemail encryption removed (1 unless nested).
    pub layers: usize,
}

impl core::fmt::Debug for Opened {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened")
            .field("message_bytes", &self.message.len())
            .field("recipient", &self.recipient)
            .field("sealed_to", &self.sealed_to)
            .field("generation", &self.generation)
            .field("layers", &self.layers)
            .finish()
    }
}

/// True if the header section says the message is S/MIME
/// (`application/pkcs7-mime`): perhaps our encryption, worth trying to
/// open. The header is not proof of encryption (signed-data has the same
/// type); [`crate::is_cms_encrypted`] looks at the body.
pub fn is_encrypted(message: &[u8]) -> bool {
    let section = HeaderSection::parse(message);
    section.get("Content-Type").is_some_and(|f| {
        let ct = ContentType::parse(f.value());
        is_pkcs7_mime(&ct)
    })
}

pub(crate) fn is_pkcs7_mime(ct: &ContentType) -> bool {
    matches!(
        ct.mime_type.as_str(),
        "application/pkcs7-mime" | "application/x-pkcs7-mime"
    )
}

/// Parses a sealed message. Fails with [`OpenError::NotEncrypted`] for
/// ordinary mail and [`OpenError::NotOurs`] for other S/MIME encryption.
///
/// The body is copied, then decoded; [`inspect_owned`] decodes it where it
/// lies.
pub fn inspect(sealed: &[u8], limits: &Limits) -> Result<Envelope, OpenError> {
    let body = smime_body(sealed, limits)?;
    parse_content_info(decode_base64_in_place(sealed[body..].to_vec(), 0)?, limits)
}

/// [`inspect`], taking the sealed message by value: its base64 body is
/// decoded into the front of the same buffer, which then holds the DER (and,
/// once decrypted, the message). The sealed message is consumed whether or
/// not it parses.
pub fn inspect_owned(sealed: Vec<u8>, limits: &Limits) -> Result<Envelope, OpenError> {
    let body = smime_body(&sealed, limits)?;
    parse_content_info(decode_base64_in_place(sealed, body)?, limits)
}

/// Checks the header section of a sealed message and returns where its
/// base64 body starts.
fn smime_body(sealed: &[u8], limits: &Limits) -> Result<usize, OpenError> {
    let section = HeaderSection::parse(sealed);
    let ct = section
        .get("Content-Type")
        .map(|f| ContentType::parse(f.value()))
        .ok_or(OpenError::NotEncrypted)?;
    if !is_pkcs7_mime(&ct) {
        return Err(OpenError::NotEncrypted);
    }
    match ct.param("smime-type") {
        Some(t) if t.eq_ignore_ascii_case("authEnveloped-data") => {}
        None => {} // decide from the CMS content type
        Some(_) => return Err(OpenError::NotOurs),
    }
    if sealed.len() > limits.max_message_bytes {
        return Err(LimitExceeded::MessageSize {
            limit: limits.max_message_bytes,
            actual: sealed.len(),
        }
        .into());
    }
    let base64 = section
        .get("Content-Transfer-Encoding")
        .is_some_and(|f| unfold(f.value()).eq_ignore_ascii_case("base64"));
    if !base64 {
        return Err(Malformed::Base64.into());
    }
    Ok(section.body_offset)
}

fn parse_content_info(der: Vec<u8>, limits: &Limits) -> Result<Envelope, OpenError> {
    let data = der.as_slice();
    let mut top = Reader::new(data);
    let content_info = top.expect(tag::SEQUENCE, "ContentInfo")?;
    top.finish("ContentInfo")?;
    let mut ci = Reader::inside(data, &content_info);
    let content_type = ci.expect(tag::OID, "contentType")?;
    if content_type.value(data) != ID_CT_AUTH_ENVELOPED_DATA.as_bytes() {
        return Err(OpenError::NotOurs);
    }
    let explicit = ci.expect(tag::CONTEXT_0_CONSTRUCTED, "content")?;
    ci.finish("ContentInfo")?;
    let mut outer = Reader::inside(data, &explicit);
    let aed_tlv = outer.expect(tag::SEQUENCE, "AuthEnvelopedData")?;
    outer.finish("content")?;

    let mut aed = Reader::inside(data, &aed_tlv);
    let version = aed.expect(tag::INTEGER, "version")?;
    if version.value(data) != [0] {
        return Err(Malformed::Unsupported("AuthEnvelopedData version other than 0").into());
    }
    if aed.peek_tag() == Some(tag::CONTEXT_0_CONSTRUCTED) {
        aed.any()?; // originatorInfo: certificates we have no use for
    }
    let set_start = aed.position();
    let set = aed.expect(tag::SET, "recipientInfos")?;
    let (recipients, recipient_infos) = parse_recipient_infos(data, &set, limits)?;
    let expected_nonce = content_nonce(&data[set_start..set.end]);

    let eci = aed.expect(tag::SEQUENCE, "authEncryptedContentInfo")?;
    let mut eci_reader = Reader::inside(data, &eci);
    let eci_type = eci_reader.expect(tag::OID, "content type")?;
    if eci_type.value(data) != ID_DATA.as_bytes() {
        return Err(Malformed::Unsupported("encrypted content type other than id-data").into());
    }
    let alg_start = eci_reader.position();
    let alg_tlv = eci_reader.expect(tag::SEQUENCE, "contentEncryptionAlgorithm")?;
    let alg = AlgorithmIdentifierOwned::from_der(&data[alg_start..alg_tlv.end])
        .map_err(|_| Malformed::Invalid("contentEncryptionAlgorithm"))?;
    if alg.oid != ID_AES256_GCM {
        return Err(Malformed::Unsupported("content encryption other than AES-256-GCM").into());
    }
    let params: GcmParameters = alg
        .parameters
        .ok_or(Malformed::Invalid("GCM parameters"))?
        .decode_as()
        .map_err(|_| Malformed::Invalid("GCM parameters"))?;
    let nonce: [u8; NONCE_BYTES] = params
        .nonce
        .as_bytes()
        .try_into()
        .map_err(|_| Malformed::Unsupported("GCM nonce other than 12 bytes"))?;
    if usize::from(params.icv_len) != TAG_BYTES {
        return Err(Malformed::Unsupported("GCM tag other than 16 bytes").into());
    }
    if eci_reader.is_empty() {
        return Err(Malformed::Unsupported("detached encrypted content").into());
    }
    let content = eci_reader.expect(tag::CONTEXT_0_PRIMITIVE, "encryptedContent")?;
    eci_reader.finish("authEncryptedContentInfo")?;

    if aed.peek_tag() == Some(tag::CONTEXT_1_CONSTRUCTED) {
        return Err(Malformed::Unsupported("authenticated attributes").into());
    }
    let mac_tlv = aed.expect(tag::OCTET_STRING, "mac")?;
    let mac: [u8; TAG_BYTES] = mac_tlv
        .value(data)
        .try_into()
        .map_err(|_| Malformed::Invalid("mac length"))?;
    if aed.peek_tag() == Some(tag::CONTEXT_2_CONSTRUCTED) {
        aed.any()?; // unauthenticated attributes carry nothing we trust
    }
    aed.finish("AuthEnvelopedData")?;

    if recipients.is_empty() {
        return Err(OpenError::NotOurs);
    }
    if nonce != expected_nonce {
        return Err(OpenError::AuthenticationFailed(
            "recipient infos were modified",
        ));
    }
    Ok(Envelope {
        ciphertext: (content.start, content.end),
        der,
        nonce,
        mac,
        recipients,
        recipient_infos,
    })
}

fn parse_recipient_infos(
    data: &[u8],
    set: &crate::frame::Tlv,
    limits: &Limits,
) -> Result<(Vec<KemRecipient>, usize), OpenError> {
    let mut reader = Reader::inside(data, set);
    let mut recipients = Vec::new();
    let mut count = 0usize;
    let kem_oid = LargeOid::ibemail_kem();
    while !reader.is_empty() {
        let info = reader.any()?;
        count += 1;
        if count > limits.max_recipients {
            return Err(LimitExceeded::Recipients {
                limit: limits.max_recipients,
                actual: count,
            }
            .into());
        }
        if info.tag != tag::CONTEXT_4_CONSTRUCTED {
            continue; // ktri, kari, kekri, pwri: not ours
        }
        let mut ori = Reader::inside(data, &info);
        let ori_type = ori.expect(tag::OID, "oriType")?;
        if ori_type.value(data) != ID_ORI_KEM.as_bytes() {
            continue;
        }
        let value_start = ori.position();
        let value = ori.expect(tag::SEQUENCE, "KEMRecipientInfo")?;
        ori.finish("OtherRecipientInfo")?;
        let kemri = KemRecipientInfo::from_der(&data[value_start..value.end])
            .map_err(|e| Malformed::RecipientInfo(e.to_string()))?;
        if kemri.kem.algorithm != kem_oid {
            continue; // another KEM (ML-KEM, ...)
        }
        recipients.push(validate_kemri(kemri)?);
    }
    Ok((recipients, count))
}

fn validate_kemri(kemri: KemRecipientInfo) -> Result<KemRecipient, Malformed> {
    if kemri.version != CmsVersion::V0 {
        return Err(Malformed::Unsupported(
            "KEMRecipientInfo version other than 0",
        ));
    }
    let RecipientIdentifier::SubjectKeyIdentifier(ski) = kemri.rid else {
        return Err(Malformed::Invalid(
            "recipient identifier (not a subjectKeyIdentifier)",
        ));
    };
    let rid = ski.0.as_bytes().to_vec();
    if rid.len() != 32 {
        return Err(Malformed::Invalid("recipient identifier length"));
    }
    let generation: u32 = kemri
        .kem
        .parameters
        .ok_or(Malformed::Invalid("KEM parameters (generation)"))?
        .decode_as()
        .map_err(|_| Malformed::Invalid("KEM parameters (generation)"))?;
    if generation == 0 {
        return Err(Malformed::Invalid("generation 0"));
    }
    if kemri.kem_ct.as_bytes().len() != CAPSULE_BYTES {
        return Err(Malformed::Invalid("KEM ciphertext length"));
    }
    if kemri.kdf.oid != ID_ALG_HKDF_WITH_SHA256 || kemri.kdf.parameters.is_some() {
        return Err(Malformed::Unsupported("KDF other than HKDF-SHA256"));
    }
    if kemri.wrap != wrap_algorithm() {
        return Err(Malformed::Unsupported(
            "key wrap other than AES-256 key wrap",
        ));
    }
    if usize::from(kemri.kek_length) != CEK_BYTES {
        return Err(Malformed::Invalid(
            "kekLength (must be 32 for AES-256 key wrap)",
        ));
    }
    let ukm = kemri.ukm.ok_or(Malformed::Invalid(
        "missing ukm (recipient identifier salt)",
    ))?;
    let encrypted_key: [u8; WRAPPED_KEY_BYTES] = kemri
        .encrypted_key
        .as_bytes()
        .try_into()
        .map_err(|_| Malformed::Invalid("encryptedKey length"))?;
    Ok(KemRecipient {
        rid,
        ukm,
        generation,
        capsule: kemri.kem_ct.as_bytes().to_vec(),
        encrypted_key,
    })
}

impl Envelope {
    /// How many RecipientInfos the message has (of any kind).
    pub fn recipient_infos(&self) -> usize {
        self.recipient_infos
    }

    /// How many ibemail KEM recipients the message has.
    pub fn ibemail_recipients(&self) -> usize {
        self.recipients.len()
    }

    /// Bytes of the encrypted content (the original message).
    pub fn content_len(&self) -> usize {
        self.ciphertext.1 - self.ciphertext.0
    }

    /// The KEM recipients that are among `locals`, in message order.
    pub fn candidates(&self, locals: &[Identity]) -> Vec<Candidate> {
        let mut out = Vec::new();
        for (index, r) in self.recipients.iter().enumerate() {
            for local in locals {
                if recipient_id(r.ukm.as_bytes(), local)[..] == r.rid[..] {
                    out.push(Candidate {
                        identity: local.clone(),
                        generation: r.generation,
                        capsule: r.capsule.clone(),
                        index,
                    });
                }
            }
        }
        out
    }

    /// Derives the key-encryption key from the opened capsule's secret and
    /// unwraps the content key (AES key wrap checks its integrity).
    pub fn unwrap_key(
        &self,
        candidate: &Candidate,
        secret: &SharedSecret,
    ) -> Result<ContentKey, OpenError> {
        let r = self
            .recipients
            .get(candidate.index)
            .ok_or(OpenError::NoMatchingRecipient)?;
        let kek = derive_kek(secret, Some(&r.ukm)).map_err(|_| Malformed::Invalid("ukm"))?;
        let mut cek = ContentKey(Zeroizing::new([0u8; CEK_BYTES]));
        KwAes256::new(&(*kek).into())
            .unwrap_key(&r.encrypted_key, cek.0.as_mut())
            .map_err(|_| OpenError::AuthenticationFailed("content key does not unwrap"))?;
        Ok(cek)
    }

    /// Decrypts the content in place and returns it. Nothing is returned
    /// unless the GCM tag verifies.
    pub fn decrypt(self, cek: &ContentKey) -> Result<Vec<u8>, OpenError> {
        let Envelope {
            mut der,
            ciphertext: (start, end),
            nonce,
            mac,
            ..
        } = self;
        // Decrypted straight to the front of the buffer (no final memmove);
        // on failure the buffer is wiped: never hand back unauthenticated bytes.
        if !decrypt_to_front(&cek.0, &nonce, &mut der, (start, end), &mac) {
            return Err(OpenError::AuthenticationFailed(
                "content does not authenticate",
            ));
        }
        Ok(der)
    }
}

/// Decrypts `buf[start..end]` and moves the plaintext to the front, so that
/// `buf` becomes exactly the plaintext. Returns false — with `buf` zeroed,
/// never unauthenticated plaintext — if the tag does not verify.
///
/// This is `ring`'s AES-256-GCM (stitched AES-NI/CLMUL assembly, about twice
/// the speed of RustCrypto's `aes-gcm` here), which can open in one call because the whole
/// ciphertext is in memory already. `ring` wants the tag right after the
/// ciphertext; the DER that follows the ciphertext has been parsed already,
/// so the tag is copied over it.
pub(crate) fn decrypt_to_front(
    key: &[u8; CEK_BYTES],
    nonce: &[u8; NONCE_BYTES],
    buf: &mut Vec<u8>,
    (start, end): (usize, usize),
    tag: &[u8; TAG_BYTES],
) -> bool {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

    let mut open = || {
        let tag_end = end.checked_add(TAG_BYTES).filter(|_| start <= end)?;
        if buf.len() < tag_end {
            buf.resize(tag_end, 0);
        }
        buf[end..tag_end].copy_from_slice(tag);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
        let nonce = Nonce::assume_unique_for_key(*nonce);
        key.open_within(nonce, Aad::empty(), &mut buf[..tag_end], start..)
            .ok()
            .map(|plain| plain.len())
    };
    match open() {
        Some(len) => {
            buf.truncate(len);
            true
        }
        None => {
            // Volatile wipe: an ordinary one may be elided when the caller
            // frees the buffer right after.
            zeroize::Zeroize::zeroize(buf.as_mut_slice());
            false
        }
    }
}

/// Opens `sealed` for one of the `locals` (normalised envelope recipients on
/// this server), asking `open_capsule` — the KGC — to open the capsule.
///
/// Nested ibemail layers (a sealed message inside a sealed message) are
/// removed up to `limits.max_nesting`.
///
/// This copies the body of `sealed` first; a caller that owns the sealed
/// message and has no further use for it should call [`open_owned`].
pub fn open<F>(
    sealed: &[u8],
    locals: &[Identity],
    limits: &Limits,
    open_capsule: F,
) -> Result<Opened, OpenError>
where
    F: FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError>,
{
    open_layers(inspect(sealed, limits)?, locals, limits, open_capsule)
}

/// [`open`], taking the sealed message by value: it is decoded and
/// decrypted in its own buffer, which becomes the opened message. Peak
/// memory is the sealed message alone (1.4 × the opened one). The sealed
/// message is consumed whether or not it opens.
pub fn open_owned<F>(
    sealed: Vec<u8>,
    locals: &[Identity],
    limits: &Limits,
    open_capsule: F,
) -> Result<Opened, OpenError>
where
    F: FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError>,
{
    open_layers(inspect_owned(sealed, limits)?, locals, limits, open_capsule)
}

fn open_layers<F>(
    envelope: Envelope,
    locals: &[Identity],
    limits: &Limits,
    mut open_capsule: F,
) -> Result<Opened, OpenError>
where
    F: FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError>,
{
    let mut opened = open_envelope(envelope, locals, &mut open_capsule)?;
    while is_encrypted(&opened.message) {
        // Borrowed: if the inner layer is not ours, `opened` is delivered.
        let inner = inspect(&opened.message, limits)
            .and_then(|envelope| open_envelope(envelope, locals, &mut open_capsule));
        match inner {
            Ok(inner) => {
                if opened.layers >= limits.max_nesting {
                    return Err(LimitExceeded::Nesting {
                        limit: limits.max_nesting,
                    }
                    .into());
                }
                // Plaintext only for those every layer was sealed to.
                let sealed_to = inner
                    .sealed_to
                    .into_iter()
                    .filter(|id| opened.sealed_to.contains(id))
                    .collect();
                opened = Opened {
                    layers: opened.layers + 1,
                    sealed_to,
                    ..inner
                };
            }
            // Someone else's S/MIME inside ours: deliver it as it is.
            Err(OpenError::NotOurs | OpenError::NotEncrypted | OpenError::NoMatchingRecipient) => {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(opened)
}

fn open_envelope<F>(
    envelope: Envelope,
    locals: &[Identity],
    open_capsule: &mut F,
) -> Result<Opened, OpenError>
where
    F: FnMut(&Identity, Generation, &Capsule) -> Result<SharedSecret, CapsuleError>,
{
    let candidates = envelope.candidates(locals);
    let sealed_to: Vec<Identity> = locals
        .iter()
        .filter(|local| candidates.iter().any(|c| c.identity == **local))
        .cloned()
        .collect();
    let mut first_error: Option<OpenError> = None;
    // One attempt per identity: its first entry. A message sealed to a
    // recipient has one entry for it; more are a sender making the key
    // service open capsule after capsule (anyone can make entries, the
    // parameters are public).
    let mut tried: Vec<&Identity> = Vec::new();
    for candidate in &candidates {
        if tried.contains(&&candidate.identity) {
            continue;
        }
        tried.push(&candidate.identity);
        let attempt = candidate.capsule().and_then(|capsule| {
            open_capsule(&candidate.identity, candidate.generation, &capsule).map_err(|e| match e {
                CapsuleError::UnknownGeneration(n) => OpenError::UnknownGeneration(n),
                CapsuleError::Rejected => {
                    OpenError::AuthenticationFailed("capsule rejected by the recipient's key")
                }
                other => OpenError::KeyService(other),
            })
        });
        let attempt = attempt.and_then(|secret| envelope.unwrap_key(candidate, &secret));
        match attempt {
            Ok(cek) => {
                let message = envelope.decrypt(&cek)?;
                return Ok(Opened {
                    message,
                    recipient: candidate.identity.clone(),
                    sealed_to,
                    generation: candidate.generation,
                    layers: 1,
                });
            }
            // The KGC being down affects every candidate: stop and retry later.
            Err(e) if e.is_temporary() => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(OpenError::NoMatchingRecipient))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b64::{decode_base64, decode_base64_general};
    use der::Encode;

    /// `ring` opens what an independent implementation (`aes-gcm`) sealed,
    /// wherever the ciphertext sits in the buffer, and on any forgery
    /// leaves a zeroed buffer, never plaintext.
    #[test]
    fn decrypt_to_front_recovers_plaintext_and_rejects_forgeries() {
        use aes_gcm::aead::AeadInOut;
        use aes_gcm::{Aes256Gcm, Nonce};

        let key = [7u8; 32];
        let nonce = [9u8; 12];
        let mut sizes = vec![0usize, 1, 15, 16, 17, 31, 32, 33, 57, 4096, 65_537];
        sizes.push((3 << 20) + 13);
        for len in sizes {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 + i / 251) as u8).collect();
            let mut ct = plain.clone();
            let tag: [u8; 16] = Aes256Gcm::new(&key.into())
                .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut ct[..]).into())
                .unwrap()
                .into();
            for start in [0usize, 1, 300, 20_000] {
                let mut buf = vec![0xeeu8; start];
                buf.extend_from_slice(&ct);
                buf.extend_from_slice(&[0x04, 0x10, 1, 2, 3]);
                let range = (start, start + len);
                assert!(decrypt_to_front(&key, &nonce, &mut buf, range, &tag));
                assert!(buf == plain, "len {len}, start {start}");
            }
            let mut bad = tag;
            bad[len % 16] ^= 1;
            let mut buf = ct.clone();
            assert!(!decrypt_to_front(&key, &nonce, &mut buf, (0, len), &bad));
            assert!(buf.iter().all(|&b| b == 0));
            if len > 0 {
                let mut buf = ct.clone();
                buf[len / 2] ^= 0x80;
                assert!(!decrypt_to_front(&key, &nonce, &mut buf, (0, len), &tag));
                assert!(buf.iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn base64_decoder_accepts_wrapped_lines_and_rejects_junk() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let wrapped = crate::b64::encode_wrapped(&data);
        assert_eq!(decode_base64(&wrapped).unwrap(), data);
        let mut bad = wrapped.clone();
        bad[10] = b'*';
        assert_eq!(decode_base64(&bad), Err(Malformed::Base64));
        assert_eq!(decode_base64(b"  \r\n"), Err(Malformed::Base64));
        assert_eq!(decode_base64(b"QQ==QQ=="), Err(Malformed::Base64));
    }

    #[test]
    fn unusual_wrapping_decodes_too() {
        use base64::Engine as _;
        let data: Vec<u8> = (0..100u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&data);
        // 7-character lines with LF only: chunk boundaries not aligned to lines.
        let odd: Vec<u8> = text
            .as_bytes()
            .chunks(7)
            .flat_map(|c| c.iter().copied().chain(std::iter::once(b'\n')))
            .collect();
        assert_eq!(decode_base64(&odd).unwrap(), data);
    }

    #[test]
    fn line_decoding_that_stops_part_way_is_finished_by_the_general_decoder() {
        let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let wrapped = crate::b64::encode_wrapped(&data);
        // Groups are 52 lines. In the third group (decoded through the
        // scratch buffer) and in the seventh (decoded straight into place):
        // a line ending in " \n" instead of CRLF, and a line split in two.
        // Valid base64 for the general decoder, irregular for the lines.
        for line in [120, 330] {
            let mut odd = wrapped.clone();
            odd[line * 78 + 76] = b' ';
            odd[line * 78 + 77] = b'\n';
            odd.splice((line + 20) * 78 + 30..(line + 20) * 78 + 30, *b"\r\n");
            let mut message = b"Content-Type: x\r\n\r\n".to_vec();
            let start = message.len();
            message.extend_from_slice(&odd);
            assert_eq!(
                decode_base64_in_place(message, start).unwrap(),
                data,
                "line {line}"
            );
            // And a bad character there is refused, not skipped.
            let mut bad = wrapped.clone();
            bad[line * 78 + 10] = b'*';
            assert_eq!(decode_base64_in_place(bad, 0), Err(Malformed::Base64));
        }
    }

    proptest::proptest! {
        /// The line-by-line SIMD path gives exactly what the general decoder
        /// gives (the same bytes or an error), whatever the layout and junk.
        #[test]
        fn fast_and_general_base64_decoding_agree(
            // Up to seven groups of the line decoder (2964 bytes each); from
            // the fourth on, it decodes straight into place.
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            line in proptest::sample::select(vec![76usize, 72, 4, 7, 76]),
            sep in proptest::sample::select(vec![&b"\r\n"[..], b"\n", b" ", b"\r\n"]),
            edits in proptest::collection::vec(
                (proptest::prelude::any::<usize>(),
                 proptest::sample::select(b"=A/+ \r\n*\x00\xff".to_vec())),
                0..3),
            lead in 0usize..3,
        ) {
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&data);
            let mut body = b"\r\n ".repeat(lead);
            for l in text.as_bytes().chunks(line) {
                body.extend_from_slice(l);
                body.extend_from_slice(sep);
            }
            for (at, b) in edits {
                if !body.is_empty() {
                    let at = at % body.len();
                    body[at] = b;
                }
            }
            let general = decode_base64_general(&body);
            proptest::prop_assert_eq!(decode_base64(&body), general.clone());
            // In place behind a header, as in a message; wherever the line
            // decoder stops, the general decoder finishes.
            let mut message = b"Subject: x\r\n\r\n".to_vec();
            let start = message.len();
            message.extend_from_slice(&body);
            proptest::prop_assert_eq!(decode_base64_in_place(message, start), general);
        }
    }

    #[test]
    fn der_encodes_oid_as_expected() {
        // Sanity: the OID bytes we compare against are the value bytes.
        let der = ID_DATA.to_der().unwrap();
        assert_eq!(&der[2..], ID_DATA.as_bytes());
    }

    #[test]
    fn base64_with_irregular_whitespace_decodes_across_chunk_boundaries() {
        use base64::Engine as _;
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let clean = base64::engine::general_purpose::STANDARD.encode(&data);
        // Runs of 1..=97 characters separated by assorted whitespace, so runs
        // straddle the 4 KiB decoding chunks at every alignment.
        let mut messy = Vec::new();
        let mut rest = clean.as_bytes();
        let mut n = 0usize;
        while !rest.is_empty() {
            let take = (n * 37 % 97 + 1).min(rest.len());
            messy.extend_from_slice(&rest[..take]);
            messy.extend_from_slice([&b"\r\n"[..], b" ", b"\t\n", b"\n  "][n % 4]);
            rest = &rest[take..];
            n += 1;
        }
        assert_eq!(decode_base64(&messy).unwrap(), data);
        let mut after_padding = b"QQ==\r\n".to_vec();
        after_padding.extend_from_slice(b"QQ==\r\n");
        assert!(decode_base64(&after_padding).is_err());
        assert!(decode_base64(b" \r\n ").is_err());
    }
}
