//! The message protocol of a signing sender, in one place: sign the
//! message as its sender (marked `e=1`: it travels sealed), seal it, sign
//! the outside. A receiver checks both signatures and that they are by the
//! same sender: a man in the middle who re-encrypts cannot re-sign the
//! outside. [`seal_signed`] does all three with a [`MessageSigner`] (the
//! key service behind it); [`sign_message`] signs a message that travels
//! as it is.

use ibemail_ibe::{Generation, Identity};
use rand_core::CryptoRngCore;

use crate::signature::{Algorithm, MessageSignature, SIGNATURE_FIELD, Unsigned};
use crate::{Field, Limits, Recipient, SealError, Sealed, seal_owned};

/// Signs digests as one identity with one generation's key: the KGC, in
/// the caller's process or behind its socket.
pub trait MessageSigner {
    /// The signer (the message's From address).
    fn identity(&self) -> &Identity;
    /// The generation whose key signs.
    fn generation(&self) -> Generation;
    /// The algorithm of its signatures (named in the signed field, so
    /// known before the digest).
    fn algorithm(&self) -> Algorithm;
    /// Signs a 32-byte digest; `Err` with the reason.
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String>;
}

/// The field `IBE-Signature: <value>` and its CRLF.
fn field(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNATURE_FIELD.len() + value.len() + 3);
    out.extend_from_slice(SIGNATURE_FIELD.as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// Signs `message` (inside, `e=1`) as `signer`, seals it to `recipients`,
/// and signs the sealed message's outside: the signature field of the
/// outside comes first in [`Sealed::fields`]. Without a signer, this is
/// [`seal_owned`]. The message is consumed; the inner signature field is
/// put in front of it in its own buffer.
pub fn seal_signed(
    mut message: Vec<u8>,
    recipients: &[&dyn Recipient],
    signer: Option<&mut dyn MessageSigner>,
    rng: &mut dyn CryptoRngCore,
    limits: &Limits,
) -> Result<Sealed, SealError> {
    let Some(signer) = signer else {
        return seal_owned(message, recipients, rng, limits);
    };
    let (identity, generation) = (signer.identity().clone(), signer.generation());
    let algorithm = signer.algorithm();
    let inner = Unsigned::new_sealed(&message, &identity, generation, algorithm);
    let inner_field = field(&signed_value(&inner, signer).map_err(SealError::Signing)?);
    message.splice(0..0, inner_field);
    let mut sealed = seal_owned(message, recipients, rng, limits)?;
    let outer = Unsigned::for_sealed(&sealed, &identity, generation, algorithm);
    let value = signed_value(&outer, signer).map_err(SealError::Signing)?;
    sealed
        .fields
        .insert(0, (SIGNATURE_FIELD.to_string(), value.into_bytes()));
    Ok(sealed)
}

/// `unsigned`'s field value, signed by `signer`.
fn signed_value(unsigned: &Unsigned, signer: &mut dyn MessageSigner) -> Result<String, String> {
    let signature = signer.sign(unsigned.digest())?;
    unsigned.field_value(&signature).map_err(|e| e.to_string())
}

/// `signer`'s signature field for `message`, which travels as it is (to
/// go on top of it).
pub fn signature_field(message: &[u8], signer: &mut dyn MessageSigner) -> Result<Field, String> {
    let unsigned = Unsigned::new(
        message,
        signer.identity(),
        signer.generation(),
        signer.algorithm(),
    );
    let value = signed_value(&unsigned, signer)?;
    Ok((SIGNATURE_FIELD.to_string(), value.into_bytes()))
}

/// `message`, which travels as it is, with `signer`'s signature field on
/// top.
pub fn sign_message(message: &[u8], signer: &mut dyn MessageSigner) -> Result<Vec<u8>, String> {
    let (_, value) = signature_field(message, signer)?;
    let field = field(&String::from_utf8_lossy(&value));
    let mut out = Vec::with_capacity(field.len() + message.len());
    out.extend_from_slice(&field);
    out.extend_from_slice(message);
    Ok(out)
}
