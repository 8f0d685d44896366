//! Tallies what `ibemail_message::open` (as the `open` target calls it) makes
//! of every file in the given directories, to see how deep a corpus reaches:
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml --example triage fuzz/corpus/open fuzz/seeds/open
//! ```

use std::collections::BTreeMap;

use ibemail_message::{CapsuleError, OpenError};

fn main() {
    let kgc = ibemail_fuzz::kgc();
    let limits = ibemail_fuzz::limits();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut decapsulations = 0usize;
    let mut files = 0usize;
    for dir in std::env::args().skip(1) {
        for entry in std::fs::read_dir(&dir).expect("read corpus dir") {
            let data = std::fs::read(entry.expect("dir entry").path()).expect("read input");
            files += 1;
            let message = ibemail_fuzz::as_message(&data);
            let result = ibemail_message::open(
                &message,
                std::slice::from_ref(&kgc.bob),
                &limits,
                |_, generation, capsule| {
                    if generation != ibemail_fuzz::GENERATION {
                        return Err(CapsuleError::UnknownGeneration(generation));
                    }
                    decapsulations += 1;
                    kgc.bob_key
                        .decapsulate(&kgc.params, capsule)
                        .map_err(|_| CapsuleError::Rejected)
                },
            );
            let key = match result {
                Ok(opened) => format!("opened ({} layers)", opened.layers),
                Err(OpenError::Malformed(m)) => format!("malformed: {m}"),
                Err(e) => e.to_string(),
            };
            // Group messages that differ only in a number or an element.
            let key: String = key.chars().take(60).collect();
            *tally.entry(key).or_default() += 1;
        }
    }
    let mut rows: Vec<_> = tally.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    for (outcome, n) in rows {
        println!("{n:>7}  {outcome}");
    }
    println!("{files} inputs, {decapsulations} capsules decapsulated");
}
