//! Is a message already encrypted? The outbound milter leaves end-to-end
//! encrypted mail alone and seals everything else, so this must not be
//! fooled by a header: S/MIME *signed* mail (`smime-type=signed-data`,
//! what Outlook sends for opaque signing) carries the same
//! `application/pkcs7-mime` type and is readable by anyone.

use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::ContentInfo;
use cms::enveloped_data::EnvelopedData;
use der::{Decode, Encode};

use crate::b64::decode_base64_general;
use crate::cms::{ID_CT_AUTH_ENVELOPED_DATA, ID_ENVELOPED_DATA};
use crate::header::{ContentType, HeaderSection, unfold};
use crate::open::is_pkcs7_mime;

/// True only if `message` is S/MIME whose body really is a CMS
/// `EnvelopedData` or `AuthEnvelopedData` (RFC 5652, RFC 5083) with at least
/// one recipient and its encrypted content present — someone's encryption,
/// perhaps ours. The `smime-type` parameter is not trusted: the body
/// decides. Signed, compressed or malformed bodies are not encrypted.
///
/// DER and BER (indefinite lengths, as streaming S/MIME writers produce)
/// are both accepted.
pub fn is_cms_encrypted(message: &[u8]) -> bool {
    let section = HeaderSection::parse(message);
    let Some(content_type) = section.get("Content-Type") else {
        return false;
    };
    if !is_pkcs7_mime(&ContentType::parse(content_type.value())) {
        return false;
    }
    let base64 = section
        .get("Content-Transfer-Encoding")
        .is_some_and(|f| unfold(f.value()).eq_ignore_ascii_case("base64"));
    let body = &message[section.body_offset.min(message.len())..];
    let der = if base64 {
        match decode_base64_general(body) {
            Ok(der) => der,
            Err(_) => return false,
        }
    } else {
        body.to_vec() // binary transfer encoding
    };
    is_encrypted_content_info(&der)
}

/// True if `ber` is a ContentInfo holding EnvelopedData or AuthEnvelopedData
/// with recipients and encrypted content.
fn is_encrypted_content_info(ber: &[u8]) -> bool {
    let Ok(info) = ContentInfo::from_ber(ber) else {
        return false;
    };
    // The content, re-encoded whole (tag, length, value) for its own decoder.
    let Ok(content) = info.content.to_der() else {
        return false;
    };
    if info.content_type == ID_ENVELOPED_DATA {
        EnvelopedData::from_ber(&content).is_ok_and(|data| {
            !data.recip_infos.0.is_empty() && data.encrypted_content.encrypted_content.is_some()
        })
    } else if info.content_type == ID_CT_AUTH_ENVELOPED_DATA {
        AuthEnvelopedData::from_ber(&content).is_ok_and(|data| {
            !data.recip_infos.0.is_empty()
                && data.auth_encrypted_content_info.encrypted_content.is_some()
        })
    } else {
        false
    }
}
