//! The sender's protocol in one call: sign inside (`e=1`), seal, sign
//! outside. Both signatures verify, by the sender, on what the receiver
//! sees; the outer one is on top of the sealed message.

#![allow(clippy::unwrap_used)]

use ibemail_ibe::{Generation, Identity, MasterKey};
use ibemail_message::signature::{
    Algorithm, MessageSignature, SignatureError, Unsigned, signatures,
};
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
    algorithm: Algorithm,
    signed: usize,
}

impl MessageSigner for Key {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn generation(&self) -> Generation {
        1
    }
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        self.signed += 1;
        let mut rng = ChaCha20Rng::seed_from_u64(self.signed as u64);
        Ok(match self.algorithm {
            Algorithm::ChaCheon => self
                .master
                .extract_signing(&self.identity, 1)
                .sign(digest, &mut rng)
                .into(),
            Algorithm::Certified => self
                .master
                .extract_certified(&self.identity, 1)
                .unwrap()
                .sign(digest)
                .into(),
        })
    }
}

const ALGORITHMS: [Algorithm; 2] = [Algorithm::ChaCheon, Algorithm::Certified];

#[test]
fn sealed_and_signed_inside_and_outside() {
    for algorithm in ALGORITHMS {
        sealed_and_signed_with(algorithm);
    }
}

fn sealed_and_signed_with(algorithm: Algorithm) {
    let a = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let b = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let mut alice = Key {
        master: a.clone(),
        identity: Identity::parse("alice@a.test").unwrap(),
        algorithm,
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
    assert_eq!(outer.algorithm(), algorithm);
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
    for algorithm in ALGORITHMS {
        let mut alice = Key {
            master: a.clone(),
            identity: Identity::parse("alice@a.test").unwrap(),
            algorithm,
            signed: 0,
        };
        let signed = sign_message(MESSAGE, &mut alice).unwrap();
        assert!(signed.ends_with(MESSAGE));
        let parsed = signatures(&signed).remove(0).unwrap();
        assert!(!parsed.sealed);
        assert_eq!(parsed.algorithm(), algorithm);
        parsed.verify(&signed, &a.signing_params()).unwrap();
        // Changed after signing: fails, for either algorithm.
        let changed = String::from_utf8(signed)
            .unwrap()
            .replace("The plans.", "The plan.");
        assert_eq!(
            parsed.verify(changed.as_bytes(), &a.signing_params()),
            Err(SignatureError::BodyHash)
        );
        let changed = changed
            .replace("The plan.", "The plans.")
            .replace("Subject: plans", "Subject: plan");
        assert_eq!(
            parsed.verify(changed.as_bytes(), &a.signing_params()),
            Err(SignatureError::BadSignature)
        );
    }
}

/// A signature whose `a=` was switched to the other algorithm, with its
/// `b=` left, does not parse as a signature of that algorithm (the sizes
/// differ), and one that names the certified algorithm but is signed by the
/// other's key fails.
#[test]
fn the_algorithm_is_bound_to_the_signature() {
    let a = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let mut alice = Key {
        master: a.clone(),
        identity: Identity::parse("alice@a.test").unwrap(),
        algorithm: Algorithm::ChaCheon,
        signed: 0,
    };
    let signed = String::from_utf8(sign_message(MESSAGE, &mut alice).unwrap()).unwrap();
    let switched = signed.replace("a=cc-bls12-381-sha256", "a=ed25519-cc-sha256");
    assert!(matches!(
        signatures(switched.as_bytes()).remove(0),
        Err(SignatureError::Syntax(_))
    ));
    let unsigned = Unsigned::new(MESSAGE, &alice.identity, 1, Algorithm::Certified);
    let cha_cheon = alice.sign(unsigned.digest()).unwrap();
    assert!(unsigned.field_value(&cha_cheon).is_err());
}
