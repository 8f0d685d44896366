//! A sealed message's two signatures (outside and inside) are checked as
//! one batch of pairing equations (`signing::settle_both`). The batch must
//! give exactly the results that checking each alone gives: a bad
//! signature on either side, both, two bad ones that would cancel out, or
//! a bad signature above a good one in the same message.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::fake_dns::{Dns, FakeDns};
use ibemail_discovery::DomainPolicy;
use ibemail_ibe::{CertifiedSignature, SIGNATURE_BYTES};
use ibemail_ibe::{Generation, Identity};
use ibemail_kgc::service::{KeyService, Peer};
use ibemail_kgc::store::Store;
use ibemail_message::MessageSigner;
use ibemail_message::signature::{Algorithm, MessageSignature, Unsigned};
use ibemail_milter::signing::{SigResult, settle_both, verify_deferred};
use rand_core::OsRng;

/// c.test's key service signing as carol, with either algorithm.
struct Carol(Arc<KeyService>, Identity, Algorithm);

impl MessageSigner for Carol {
    fn identity(&self) -> &Identity {
        &self.1
    }
    fn generation(&self) -> Generation {
        1
    }
    fn algorithm(&self) -> Algorithm {
        self.2
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        let service = &self.0;
        match self.2 {
            Algorithm::ChaCheon => service
                .sign(self.1.as_str(), 1, digest, Peer::default())
                .map(MessageSignature::from),
            Algorithm::Certified => service
                .sign_certified(self.1.as_str(), 1, digest, Peer::default())
                .map(MessageSignature::from),
        }
        .map_err(|e| e.to_string())
    }
}

struct World {
    _tmp: tempfile::TempDir,
    dns: FakeDns,
    carol: Carol,
}

fn world(algorithm: Algorithm) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    Store::setup(&dir, "c.test", 0, None, &mut OsRng).unwrap();
    let record = Store::open(&dir).unwrap().records()[0].clone();
    let kgc = Arc::new(KeyService::load(&[dir], 16).unwrap());
    World {
        _tmp: tmp,
        dns: FakeDns(HashMap::from([(
            "c.test".to_string(),
            Dns::Params(Box::new(record)),
        )])),
        carol: Carol(kgc, Identity::parse("carol@c.test").unwrap(), algorithm),
    }
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: carol@c.test\r\nTo: alice@a.test\r\nSubject: {subject}\r\n\r\nHello.\r\n")
        .into_bytes()
}

impl World {
    fn signed(&mut self, subject: &str) -> Vec<u8> {
        ibemail_message::sign_message(&message(subject), &mut self.carol).unwrap()
    }

    /// Both messages' results: batched, and each checked alone.
    async fn both(&self, outer: &[u8], inner: &[u8]) -> [(SigResult, SigResult); 2] {
        let deferred = |m: &'static [u8]| {
            verify_deferred(&self.dns, |_| DomainPolicy::default(), |_| {}, m, true, 0)
        };
        let (outer, inner): (&'static [u8], &'static [u8]) =
            (outer.to_vec().leak(), inner.to_vec().leak());
        let batched = settle_both(deferred(outer).await, deferred(inner).await).await;
        let alone = (
            deferred(outer).await.settle().await,
            deferred(inner).await.settle().await,
        );
        [batched, alone]
    }
}

/// Every test runs with both signature algorithms.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::ChaCheon, Algorithm::Certified];

fn pass() -> SigResult {
    SigResult::Pass {
        identity: "carol@c.test".into(),
        generation: 1,
    }
}

fn bad() -> SigResult {
    SigResult::Fail("signature does not verify".into())
}

/// `signed` with its Subject changed after signing: the digest changes,
/// so only the pairing equation fails (not the body hash or the syntax).
fn tampered(signed: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(signed.to_vec()).unwrap();
    text.replacen("Subject: ", "Subject: Re: ", 1).into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn batched_results_equal_the_results_of_each_alone() {
    for algorithm in ALGORITHMS {
        let mut w = world(algorithm);
        let outer = w.signed("outside");
        let inner = w.signed("inside");
        let cases = [
            ("both good", outer.clone(), inner.clone(), pass(), pass()),
            (
                "outside bad",
                tampered(&outer),
                inner.clone(),
                bad(),
                pass(),
            ),
            ("inside bad", outer.clone(), tampered(&inner), pass(), bad()),
            ("both bad", tampered(&outer), tampered(&inner), bad(), bad()),
        ];
        for (name, outer, inner, want_outer, want_inner) in cases {
            let [batched, alone] = w.both(&outer, &inner).await;
            assert_eq!(batched, (want_outer.clone(), want_inner.clone()), "{name}");
            assert_eq!(alone, batched, "{name}: alone");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_signature_above_a_good_one_still_passes() {
    for algorithm in ALGORITHMS {
        let mut w = world(algorithm);
        let good = w.signed("first");
        // carol's valid signature of another message, put on top: it parses,
        // names the From address and c.test's generation, and fails only its
        // pairing equation; the good one below passes.
        let other = w.signed("second");
        let foreign_field = &other[..other.windows(6).position(|x| x == b"From: ").unwrap()];
        let stacked = [foreign_field, &good].concat();
        let inner = w.signed("inside");
        let [batched, alone] = w.both(&stacked, &inner).await;
        assert_eq!(batched, (pass(), pass()));
        assert_eq!(alone, batched);
        // With the inside bad as well, each result is still its own.
        let [batched, alone] = w.both(&stacked, &tampered(&inner)).await;
        assert_eq!(batched, (pass(), bad()));
        assert_eq!(alone, batched);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_swapped_between_the_layers_fail_both() {
    for algorithm in ALGORITHMS {
        let mut w = world(algorithm);
        let outer = w.signed("outside");
        let inner = w.signed("inside");
        let field_end = |m: &[u8]| m.windows(6).position(|x| x == b"From: ").unwrap();
        let (outer_field, outer_rest) = outer.split_at(field_end(&outer));
        let (inner_field, inner_rest) = inner.split_at(field_end(&inner));
        let swapped_outer = [inner_field, outer_rest].concat();
        let swapped_inner = [outer_field, inner_rest].concat();
        let [batched, alone] = w.both(&swapped_outer, &swapped_inner).await;
        // The bodies are equal, so each body hash matches: both fail on their
        // pairing equations, in the batch and alone.
        assert_eq!(batched, (bad(), bad()));
        assert_eq!(alone, batched);
    }
}

/// An attacker's own key under a sender's genuine certificate: the
/// Ed25519 signature verifies, the certificate does not certify that key.
/// It fails alone and in the batch, whatever the cache holds (the
/// sender's certificate was verified and remembered before).
#[tokio::test(flavor = "multi_thread")]
async fn a_genuine_certificate_does_not_vouch_for_another_key() {
    let mut w = world(Algorithm::Certified);
    let inner = w.signed("inside");
    // Carol's mail passes first: her certificate is remembered.
    let outer = w.signed("outside");
    let [batched, _] = w.both(&outer, &inner).await;
    assert_eq!(batched, (pass(), pass()));
    let kgc = &w.carol.0;
    let carol = kgc
        .sign_certified("carol@c.test", 1, &[0; 32], Peer::default())
        .unwrap()
        .to_bytes();
    // Mallory (another user of c.test) signs the digest of a message
    // "From: carol" with her own certified key.
    let message = message("outside");
    let unsigned = Unsigned::new(&message, &w.carol.1, 1, Algorithm::Certified);
    let mallory = kgc
        .sign_certified("mallory@c.test", 1, unsigned.digest(), Peer::default())
        .unwrap()
        .to_bytes();
    let mut forged = mallory;
    forged[..SIGNATURE_BYTES].copy_from_slice(&carol[..SIGNATURE_BYTES]);
    let forged = CertifiedSignature::from_bytes(&forged).unwrap();
    let outer = unsigned.prepend(&message, &forged.into()).unwrap();
    let [batched, alone] = w.both(&outer, &inner).await;
    assert_eq!(batched, (bad(), pass()));
    assert_eq!(alone, batched);
    // Mallory's own certificate and key in a field naming carol: the
    // certificate is for mallory's identity, not carol's.
    let own = CertifiedSignature::from_bytes(&mallory).unwrap();
    let outer = unsigned.prepend(&message, &own.into()).unwrap();
    let [batched, _] = w.both(&outer, &inner).await;
    assert_eq!(batched, (bad(), pass()));
}

/// Two certificates never seen before (their own world: fresh keys) are
/// checked as one batch: both good, then one of them on another key. The
/// batched results equal the results alone.
#[tokio::test(flavor = "multi_thread")]
async fn two_certificates_are_one_batch() {
    let mut w = world(Algorithm::Certified);
    let kgc = w.carol.0.clone();
    let mut dave = Carol(
        kgc.clone(),
        Identity::parse("dave@c.test").unwrap(),
        Algorithm::Certified,
    );
    let from_dave =
        b"From: dave@c.test\r\nTo: alice@a.test\r\nSubject: inside\r\n\r\nHello.\r\n".to_vec();
    let inner = ibemail_message::sign_message(&from_dave, &mut dave).unwrap();
    let outer = w.signed("outside");
    let dave_pass = SigResult::Pass {
        identity: "dave@c.test".into(),
        generation: 1,
    };
    let [batched, alone] = w.both(&outer, &inner).await;
    assert_eq!(batched, (pass(), dave_pass.clone()));
    assert_eq!(alone, batched);
    // Dave's message again, its field now carrying erin's key and
    // signature under dave's genuine certificate (remembered by now, but
    // only with dave's key), beside a message of frank's, whose
    // certificate is new: two equations to check, one of them bad.
    let unsigned = Unsigned::new(&from_dave, &dave.1, 1, Algorithm::Certified);
    let erin = kgc
        .sign_certified("erin@c.test", 1, unsigned.digest(), Peer::default())
        .unwrap()
        .to_bytes();
    let genuine = kgc
        .sign_certified("dave@c.test", 1, &[0; 32], Peer::default())
        .unwrap()
        .to_bytes();
    let mut forged = erin;
    forged[..SIGNATURE_BYTES].copy_from_slice(&genuine[..SIGNATURE_BYTES]);
    let forged = CertifiedSignature::from_bytes(&forged).unwrap();
    let inner = unsigned.prepend(&from_dave, &forged.into()).unwrap();
    let mut frank = Carol(
        kgc,
        Identity::parse("frank@c.test").unwrap(),
        Algorithm::Certified,
    );
    let from_frank =
        b"From: frank@c.test\r\nTo: alice@a.test\r\nSubject: outside\r\n\r\nHello.\r\n".to_vec();
    let outer = ibemail_message::sign_message(&from_frank, &mut frank).unwrap();
    let frank_pass = SigResult::Pass {
        identity: "frank@c.test".into(),
        generation: 1,
    };
    let [batched, alone] = w.both(&outer, &inner).await;
    assert_eq!(batched, (frank_pass, bad()));
    assert_eq!(alone, batched);
}
