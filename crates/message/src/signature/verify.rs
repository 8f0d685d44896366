//! Reading and verifying `IBE-Signature` fields.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ibemail_ibe::{CertifiedSignature, Equation, Generation, Identity, Signature, SigningParams};

use super::canon::*;
use super::*;
use crate::header::HeaderSection;

// ---------------------------------------------------------------------------
// Verifying

/// A parsed `IBE-Signature` field.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// `i=`.
    pub identity: Identity,
    /// `n=`.
    pub generation: Generation,
    /// `e=1`: signed to travel sealed (see [`Unsigned::new_sealed`]).
    pub sealed: bool,
    signed_fields: Vec<String>,
    body_hash: Vec<u8>,
    signature: MessageSignature,
    value_without_b: Vec<u8>,
}

/// Most `IBE-Signature` fields of one message looked at (the first ones,
/// from the top): each costs a lookup and a pairing check.
pub const MAX_SIGNATURES: usize = 8;

/// The `IBE-Signature` fields of `message`, top first (at most
/// [`MAX_SIGNATURES`]), parsed.
pub fn signatures(message: &[u8]) -> Vec<Result<Parsed, SignatureError>> {
    let section = HeaderSection::parse(message);
    section
        .fields
        .iter()
        .filter(|f| f.is(SIGNATURE_FIELD))
        .take(MAX_SIGNATURES)
        .map(|f| Parsed::parse(f.value()))
        .collect()
}

pub(super) fn tag_values(value: &[u8]) -> Result<Vec<(String, String)>, SignatureError> {
    let text =
        std::str::from_utf8(value).map_err(|_| SignatureError::Syntax("not UTF-8".into()))?;
    let mut tags: Vec<(String, String)> = Vec::new();
    for element in text.split(';') {
        let element = element.trim();
        if element.is_empty() {
            continue;
        }
        let (name, value) = element
            .split_once('=')
            .ok_or_else(|| SignatureError::Syntax(format!("element {element:?} has no '='")))?;
        let name = name.trim().to_string();
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(SignatureError::Syntax(format!("duplicate tag {name}=")));
        }
        tags.push((name, value.trim().to_string()));
    }
    Ok(tags)
}

impl Parsed {
    /// Parses a field value.
    pub fn parse(value: &[u8]) -> Result<Parsed, SignatureError> {
        let tags = tag_values(value)?;
        let get = |name: &str| {
            tags.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| SignatureError::Syntax(format!("missing tag {name}=")))
        };
        let compact = |v: &str| v.split_ascii_whitespace().collect::<String>();
        if get("v")? != "1" {
            return Err(SignatureError::Unsupported(format!("v={}", get("v")?)));
        }
        let a = get("a")?;
        let algorithm =
            Algorithm::from_name(a).ok_or_else(|| SignatureError::Unsupported(format!("a={a}")))?;
        if let Ok(c) = get("c")
            && c != "relaxed/relaxed"
        {
            return Err(SignatureError::Unsupported(format!("c={c}")));
        }
        let identity =
            Identity::parse(get("i")?).map_err(|e| SignatureError::Syntax(format!("i=: {e}")))?;
        let generation: Generation = get("n")?
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| SignatureError::Syntax("n= is not a generation".into()))?;
        let signed_fields: Vec<String> = compact(get("h")?)
            .split(':')
            .filter(|n| !n.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if !signed_fields.iter().any(|n| n == "from") {
            return Err(SignatureError::Syntax("h= does not include from".into()));
        }
        if signed_fields.len() > MAX_H_ENTRIES {
            return Err(SignatureError::Syntax(format!(
                "h= lists {} fields (at most {MAX_H_ENTRIES})",
                signed_fields.len()
            )));
        }
        let sealed = match tags.iter().find(|(n, _)| n == "e") {
            None => false,
            Some((_, v)) if v == "1" => true,
            Some((_, v)) => return Err(SignatureError::Syntax(format!("e={v}"))),
        };
        let body_hash = STANDARD
            .decode(compact(get("bh")?))
            .map_err(|_| SignatureError::Syntax("bh= is not base64".into()))?;
        let signature = STANDARD
            .decode(compact(get("b")?))
            .map_err(|_| SignatureError::Syntax("b= is not base64".into()))?;
        let signature = match algorithm {
            Algorithm::ChaCheon => Signature::from_bytes(&signature).map(MessageSignature::from),
            Algorithm::Certified => {
                CertifiedSignature::from_bytes(&signature).map(MessageSignature::from)
            }
        }
        .map_err(|e| SignatureError::Syntax(format!("b=: {e}")))?;
        Ok(Parsed {
            identity,
            generation,
            sealed,
            signed_fields,
            body_hash,
            signature,
            value_without_b: without_b_value(value),
        })
    }

    /// Checks the signature on `message` (which contains this field) with
    /// the signer domain's `params` for `n=`, and that the signer is the
    /// From address.
    pub fn verify(&self, message: &[u8], params: &SigningParams) -> Result<(), SignatureError> {
        if self.equation(message, params)?.holds() {
            Ok(())
        } else {
            Err(SignatureError::BadSignature)
        }
    }

    /// Everything [`Parsed::verify`] checks but the pairing equation,
    /// which is returned: the caller checks it alone
    /// ([`Equation::holds`]) or with others ([`ibemail_ibe::all_hold`]).
    pub fn equation(
        &self,
        message: &[u8],
        params: &SigningParams,
    ) -> Result<Equation, SignatureError> {
        self.check_signer(message)?;
        let section = HeaderSection::parse(message);
        if body_hash(&message[section.body_offset..]).as_slice() != self.body_hash {
            return Err(SignatureError::BodyHash);
        }
        let digest = digest(&section, &self.signed_fields, &self.value_without_b);
        match &self.signature {
            MessageSignature::ChaCheon(signature) => Ok(ibemail_ibe::equation(
                params,
                &self.identity,
                self.generation,
                &digest,
                signature,
            )),
            // The Ed25519 signature is checked here; what is left is the
            // certificate's equation (or nothing, if it was checked before).
            MessageSignature::Certified(signature) => ibemail_ibe::certified_equation(
                params,
                &self.identity,
                self.generation,
                &digest,
                signature,
            )
            .map_err(|_| SignatureError::BadSignature),
        }
    }

    /// `a=`.
    pub fn algorithm(&self) -> Algorithm {
        self.signature.algorithm()
    }

    /// How many header fields `h=` names.
    pub fn signed_field_count(&self) -> usize {
        self.signed_fields.len()
    }

    /// Checks, cheaply and before any lookup, that the signer is the
    /// message's one From address.
    pub fn check_signer(&self, message: &[u8]) -> Result<(), SignatureError> {
        let from = from_address(message)?;
        if from != self.identity {
            return Err(SignatureError::FromMismatch {
                signer: self.identity.to_string(),
                from: from.to_string(),
            });
        }
        Ok(())
    }
}
