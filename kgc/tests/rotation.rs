//! Mail sealed under a generation opens during the overlap and is refused
//! with a clear error after retirement.

#![allow(clippy::unwrap_used)]

use ibemail_ibe::Identity;
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::{State, Store};
use ibemail_message::{IbeRecipient, Limits, OpenError, Recipient, open, seal};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const MESSAGE: &[u8] =
    b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: queued\r\n\r\nsent before the rotation\r\n";
const T0: u64 = 1_700_000_000;

#[test]
fn sealed_mail_opens_during_overlap_and_is_refused_after_retirement() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut store = Store::setup(&dir, "b.test", T0, &mut rng).unwrap();
    let bob = Identity::parse("bob@b.test").unwrap();
    let recipient = IbeRecipient {
        identity: bob.clone(),
        generation: 1,
        params: store.params(1).unwrap().clone(),
    };
    let sealed = seal(
        MESSAGE,
        &[&recipient as &dyn Recipient],
        &mut rng,
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();

    // Rotate with a two-hour overlap: generation 1 keeps opening mail.
    assert_eq!(store.rotate(7200, T0 + 60, &mut rng).unwrap(), 2);
    let service = KeyService::load(std::slice::from_ref(&dir), 16).unwrap();
    let opened = open(
        &sealed,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| service.open_capsule(id, n, c),
    )
    .unwrap();
    assert_eq!((opened.message.as_slice(), opened.generation), (MESSAGE, 1));

    // Mail to generation 2 opens too.
    let recipient2 = IbeRecipient {
        identity: bob.clone(),
        generation: 2,
        params: store.params(2).unwrap().clone(),
    };
    let sealed2 = seal(
        MESSAGE,
        &[&recipient2 as &dyn Recipient],
        &mut rng,
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    assert!(
        open(
            &sealed2,
            std::slice::from_ref(&bob),
            &Limits::default(),
            |id, n, c| service.open_capsule(id, n, c)
        )
        .is_ok()
    );

    // Not yet due: nothing retired.
    assert!(store.retire_expired(T0 + 3600).unwrap().is_empty());
    // After the overlap the key is destroyed.
    assert_eq!(store.retire_expired(T0 + 60 + 7200).unwrap(), vec![1]);
    assert!(matches!(store.state(1), Some(State::Retired { .. })));
    assert!(!dir.join("gen-00000001.key").exists(), "key file destroyed");
    service.reload().unwrap();

    let err = open(
        &sealed,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| service.open_capsule(id, n, c),
    )
    .unwrap_err();
    assert_eq!(err, OpenError::UnknownGeneration(1));
    assert!(
        !err.is_temporary(),
        "a retired generation is final: quarantine, do not retry"
    );
    assert_eq!(
        err.to_string(),
        "sealed under generation 1, for which the KGC has no key (retired or unknown)"
    );
    // The newer generation still works.
    assert!(
        open(
            &sealed2,
            std::slice::from_ref(&bob),
            &Limits::default(),
            |id, n, c| service.open_capsule(id, n, c)
        )
        .is_ok()
    );
    // Only generation 2 is published now.
    let records = store.records();
    assert_eq!(
        records.iter().map(|r| r.generation).collect::<Vec<_>>(),
        vec![2]
    );
}
