//! Shared test fixtures: KGCs for b.test and c.test, the shared corpus.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ibemail_ibe::{Capsule, Identity, MasterKey, PublicParams};
use ibemail_message::{
    CapsuleError, IbeRecipient, Limits, OpenError, Opened, Recipient, open, open_owned,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// A domain's KGC with its generation-1 key.
pub struct Kgc {
    pub master: MasterKey,
    pub params: PublicParams,
    pub generation: u32,
}

impl Kgc {
    pub fn new(seed: u64) -> Self {
        let master = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(seed));
        let params = master.public_params();
        Kgc {
            master,
            params,
            generation: 1,
        }
    }

    pub fn recipient(&self, address: &str) -> IbeRecipient {
        IbeRecipient {
            identity: Identity::parse(address).unwrap(),
            generation: self.generation,
            params: self.params.clone(),
        }
    }

    /// Opens `sealed` for `locals` as the milter would with an in-process
    /// KGC: both from a borrowed message and in the caller's own buffer,
    /// which must come to the same.
    pub fn open(&self, sealed: &[u8], locals: &[&str]) -> Result<Opened, OpenError> {
        let locals: Vec<Identity> = locals.iter().map(|a| Identity::parse(a).unwrap()).collect();
        let open_capsule = |id: &Identity, generation, capsule: &Capsule| {
            if generation != self.generation {
                return Err(CapsuleError::UnknownGeneration(generation));
            }
            self.master
                .extract(id, generation)
                .decapsulate(&self.params, capsule)
                .map_err(|_| CapsuleError::Rejected)
        };
        let borrowed = open(sealed, &locals, &Limits::default(), open_capsule);
        let owned = open_owned(sealed.to_vec(), &locals, &Limits::default(), open_capsule);
        let summary = |r: &Result<Opened, OpenError>| {
            r.as_ref()
                .map(|o| {
                    (
                        o.message.clone(),
                        o.recipient.clone(),
                        o.sealed_to.clone(),
                        o.generation,
                        o.layers,
                    )
                })
                .map_err(Clone::clone)
        };
        assert_eq!(
            summary(&borrowed),
            summary(&owned),
            "open and open_owned differ"
        );
        borrowed
    }
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn as_dyn(recipients: &[IbeRecipient]) -> Vec<&dyn Recipient> {
    recipients.iter().map(|r| r as &dyn Recipient).collect()
}

/// The corpus directory (`tests/corpus` in the repository, a copy of the
/// team's shared corpus, or `$IBEMAIL_CORPUS`). Missing corpus is a test
/// failure, not a skip.
pub fn corpus_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IBEMAIL_CORPUS") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/corpus")
}

/// Every `.eml` file of the corpus, sorted.
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "eml") {
                out.push(path);
            }
        }
    }
    let root = corpus_dir();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    paths.sort();
    assert!(
        paths.len() >= 100,
        "corpus at {} has only {} messages",
        root.display(),
        paths.len()
    );
    paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&root).unwrap().display().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}
