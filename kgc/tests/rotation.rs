//! Mail sealed under a generation opens during the overlap, and after it
//! for as long as senders may still hold such mail; the key is destroyed
//! only once DNS has been seen without the generation for the retention
//! floor, and then mail is refused with a clear error.

#![allow(clippy::unwrap_used)]

use ibemail_ibe::Identity;
use ibemail_kgc::access::KeyError;
use ibemail_kgc::service::KeyService;
use ibemail_kgc::store::{Retention, State, Store, Wait};
use ibemail_message::{CapsuleError, IbeRecipient, Limits, OpenError, Recipient, open, seal};
use ibemail_params::Policy;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The key service's errors as the message crate's opener reports them
/// (as the milter maps them).
fn to_capsule_error(e: KeyError) -> CapsuleError {
    match e {
        KeyError::UnknownGeneration(n) | KeyError::Retired(n) => CapsuleError::UnknownGeneration(n),
        KeyError::Rejected => CapsuleError::Rejected,
        e if e.is_temporary() => CapsuleError::Unavailable(e.to_string()),
        e => CapsuleError::Refused(e.to_string()),
    }
}

const MESSAGE: &[u8] =
    b"From: alice@a.test\r\nTo: bob@b.test\r\nSubject: queued\r\n\r\nsent before the rotation\r\n";
const T0: u64 = 1_700_000_000;

#[test]
fn sealed_mail_opens_during_overlap_and_is_refused_after_retirement() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("kgc");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let policy = Some(Policy::require(3600));
    let mut store = Store::setup(&dir, "b.test", T0, policy, &mut rng).unwrap();
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
    assert_eq!(store.rotate(7200, T0 + 60, policy, &mut rng).unwrap(), 2);
    let service = KeyService::load(std::slice::from_ref(&dir), 16).unwrap();
    let opened = open(
        &sealed,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| service.open_capsule(id, n, c).map_err(to_capsule_error),
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
            |id, n, c| service.open_capsule(id, n, c).map_err(to_capsule_error)
        )
        .is_ok()
    );

    // During the overlap both are published, and nothing is retired.
    let retention = Retention {
        ttl: 300,
        queue_lifetime: 5 * 86_400,
    };
    let published = |store: &Store, at| {
        store
            .records_at(at)
            .iter()
            .map(|r| r.generation)
            .collect::<Vec<_>>()
    };
    assert_eq!(published(&store, T0 + 3600), [2, 1]);
    store.note_published(&[2, 1], T0 + 3600).unwrap();
    assert_eq!(
        store.retire_due(T0 + 3600, &retention).unwrap(),
        [(
            1,
            Some(Wait::Published {
                until: T0 + 60 + 7200
            })
        )]
    );
    // After the overlap generation 1 is withdrawn, but DNS still publishes
    // it (the publish step failed): its key is kept, however long.
    let after = T0 + 60 + 7200;
    assert_eq!(published(&store, after), [2]);
    for later in [after, after + 30 * 86_400] {
        store.note_published(&[2, 1], later).unwrap();
        assert_eq!(
            store.retire_due(later, &retention).unwrap(),
            [(1, Some(Wait::NotSeenAbsent))]
        );
    }
    assert!(dir.join("gen-00000001.key").exists());
    // DNS is seen without it: kept for TTL + queue lifetime + max-age.
    let gone = after + 31 * 86_400;
    store.note_published(&[2], gone).unwrap();
    let floor = retention.floor(policy.as_ref());
    assert_eq!(floor, 300 + 5 * 86_400 + 3600);
    assert_eq!(
        store.retire_due(gone + floor - 1, &retention).unwrap(),
        [(
            1,
            Some(Wait::Floor {
                since: gone,
                until: gone + floor
            })
        )]
    );
    let opened = open(
        &sealed,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| service.open_capsule(id, n, c).map_err(to_capsule_error),
    );
    assert!(opened.is_ok(), "withdrawn, the key still opens queued mail");
    // Then the key is destroyed, its file overwritten before unlinking.
    let key_file = dir.join("gen-00000001.key");
    let held = std::fs::File::open(&key_file).unwrap();
    assert_eq!(
        store.retire_due(gone + floor, &retention).unwrap(),
        [(1, None)]
    );
    assert!(matches!(store.state(1), Some(State::Retired { .. })));
    assert!(!key_file.exists(), "key file destroyed");
    let mut left = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut left).unwrap();
    assert!(
        left.iter().all(|&b| b == 0),
        "the unlinked inode still held the key"
    );
    service.reload().unwrap();

    let err = open(
        &sealed,
        std::slice::from_ref(&bob),
        &Limits::default(),
        |id, n, c| service.open_capsule(id, n, c).map_err(to_capsule_error),
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
            |id, n, c| service.open_capsule(id, n, c).map_err(to_capsule_error)
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
