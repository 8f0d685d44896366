//! Helpers shared by the milter's integration tests.

#![allow(dead_code)]

pub(crate) mod fake_dns;
pub(crate) mod harness;

use ibemail_ibe::Identity;
use ibemail_kgc::store::Store;
use ibemail_message::signature::{Algorithm, Unsigned};
use rand_core::OsRng;

/// `message` with an `IBE-Signature` by `address` (generation 1) on top,
/// made with the key `store` derives, as a sending ibemail server would.
pub(crate) fn signed_by(store: &Store, address: &str, message: &[u8]) -> Vec<u8> {
    let signer = Identity::parse(address).expect("signer address parses");
    let unsigned = Unsigned::new(message, &signer, 1, Algorithm::ChaCheon);
    let signature = store
        .extract_signing(&signer, 1)
        .expect("the store serves the signer's domain")
        .sign(unsigned.digest(), &mut OsRng);
    unsigned.prepend(message, &signature.into()).unwrap()
}
