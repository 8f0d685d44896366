//! The sender's protocol in one call: sign inside (`e=1`), seal, sign
//! outside. Both signatures verify, by the sender, on what the receiver
//! sees; the outer one is on top of the sealed message.

#![allow(clippy::unwrap_used)]

use ibemail_ibe::{Generation, Identity, MasterKey, Signature};
use ibemail_message::signature::signatures;
use ibemail_message::{
    IbeRecipient, Limits, MessageSigner, Recipient, open, seal_signed, sign_message,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const MESSAGE: &[u8] = b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: plans\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <p1@a.test>\r\n\r\nThe plans.\r\n";

struct Key {
    master: MasterKey,
    identity: Identity,
    signed: usize,
}

impl MessageSigner for Key {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn generation(&self) -> Generation {
        1
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Signature, String> {
        self.signed += 1;
        Ok(self
            .master
            .extract_signing(&self.identity, 1)
            .sign(digest, &mut ChaCha20Rng::seed_from_u64(self.signed as u64)))
    }
}

#[test]
fn sealed_and_signed_inside_and_outside() {
    let a = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let b = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let mut alice = Key {
        master: a.clone(),
        identity: Identity::parse("alice@a.test").unwrap(),
        signed: 0,
    };
    let bob = Identity::parse("bob@b.test").unwrap();
    let recipient = IbeRecipient {
        identity: bob.clone(),
        generation: 1,
        params: b.public_params(),
    };
    let sealed = seal_signed(
        MESSAGE.to_vec(),
        &[&recipient as &dyn Recipient],
        Some(&mut alice),
        &mut ChaCha20Rng::seed_from_u64(3),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(alice.signed, 2);
    assert_eq!(sealed.fields[0].0, "IBE-Signature");
    let wire = sealed.to_bytes();
    // Outside: by Alice, made for the sealed message as it travels.
    let outer = signatures(&wire).remove(0).unwrap();
    assert!(!outer.sealed);
    outer.verify(&wire, &a.signing_params()).unwrap();
    // Inside: by Alice, marked to travel sealed.
    let opened = open(
        &wire,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| Ok(b.decapsulate(&b.public_params(), id, n, c).unwrap()),
    )
    .unwrap();
    let inner = signatures(&opened.message).remove(0).unwrap();
    assert!(inner.sealed);
    inner.verify(&opened.message, &a.signing_params()).unwrap();
    assert!(opened.message.ends_with(MESSAGE));
    // Another key's parameters do not verify either.
    assert!(outer.verify(&wire, &b.signing_params()).is_err());
}

#[test]
fn a_message_that_travels_as_it_is_is_signed_on_top() {
    let a = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let mut alice = Key {
        master: a.clone(),
        identity: Identity::parse("alice@a.test").unwrap(),
        signed: 0,
    };
    let signed = sign_message(MESSAGE, &mut alice).unwrap();
    assert!(signed.ends_with(MESSAGE));
    let parsed = signatures(&signed).remove(0).unwrap();
    assert!(!parsed.sealed);
    parsed.verify(&signed, &a.signing_params()).unwrap();
}
