//! A KGC for `b.test`, a sender that knows only the parameters and an address,
//! and the KGC opening the capsule: the KEM end to end in one process.

#![allow(clippy::print_stdout, missing_docs)]

use ibemail_ibe::{Identity, MasterKey, encapsulate};
use rand_core::OsRng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let master = MasterKey::generate(&mut OsRng);
    let params = master.public_params();
    println!(
        "KGC of b.test, generation 1: X, Y = {} bytes",
        params.to_bytes().len()
    );
    let bob = Identity::parse("Bob@B.test")?;
    let (capsule, secret) = encapsulate(&params, &bob, 1, &mut OsRng)?;
    println!(
        "sender: capsule for {bob} = {} bytes",
        capsule.to_bytes().len()
    );
    let key = master.extract(&bob, 1);
    let opened = key.decapsulate(&params, &capsule)?;
    println!(
        "KGC: opened for {bob}: secrets equal = {}",
        opened == secret
    );
    let eve = master.extract(&Identity::parse("eve@b.test")?, 1);
    println!(
        "KGC: eve@b.test's key opens it: {}",
        eve.decapsulate(&params, &capsule).is_ok()
    );
    Ok(())
}
