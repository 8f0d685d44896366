//! Known-answer vectors in `tests/vectors/ibe/`, one test case per file.
//!
//! `kat_*` files: every intermediate value is recomputed from the inputs and
//! must match. `fail_*` files: the input must be rejected with the named error.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ibemail_ibe::{
    Capsule, DecapsulationError, DecodeError, Identity, MasterKey, PublicParams, UserKey,
    encapsulate_with_seed, hazmat, identity_scalar,
};
use libtest_mimic::{Arguments, Failed, Trial};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/ibe")
}

struct Vector(HashMap<String, String>);

impl Vector {
    fn load(path: &Path) -> Result<Self, Failed> {
        let text = std::fs::read_to_string(path)?;
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(" = ")
                .ok_or_else(|| format!("malformed line: {line}"))?;
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("duplicate key {k}").into());
            }
        }
        Ok(Vector(map))
    }

    fn text(&self, key: &str) -> Result<&str, Failed> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("vector lacks `{key}`").into())
    }

    fn bytes(&self, key: &str) -> Result<Vec<u8>, Failed> {
        Ok(hex::decode(self.text(key)?).map_err(|e| format!("{key}: {e}"))?)
    }

    fn array<const N: usize>(&self, key: &str) -> Result<[u8; N], Failed> {
        self.bytes(key)?
            .try_into()
            .map_err(|_| format!("{key}: wrong length").into())
    }

    fn generation(&self) -> Result<u32, Failed> {
        Ok(self.text("generation_decimal")?.parse()?)
    }

    fn identity(&self) -> Result<Identity, Failed> {
        Ok(Identity::parse(self.text("identity_text")?)?)
    }
}

fn check(name: &str, expected: &[u8], actual: &[u8]) -> Result<(), Failed> {
    if expected == actual {
        Ok(())
    } else {
        Err(format!(
            "{name} mismatch\n expected {}\n   actual {}",
            hex::encode(expected),
            hex::encode(actual)
        )
        .into())
    }
}

fn run_kat(v: &Vector) -> Result<(), Failed> {
    let mut rng = ChaCha20Rng::from_seed(v.array("rng_seed")?);
    let master = MasterKey::generate(&mut rng);
    check(
        "master_key",
        &v.bytes("master_key")?,
        master.to_bytes().as_ref(),
    )?;
    let params = master.public_params();
    check("X", &v.bytes("X")?, &params.x_bytes())?;
    check("Y", &v.bytes("Y")?, &params.y_bytes())?;

    let identity = Identity::parse(v.text("address_text")?)?;
    if identity.as_str() != v.text("identity_text")? {
        return Err(format!("identity normalised to {identity}").into());
    }
    let generation = v.generation()?;
    check(
        "h",
        &v.bytes("h")?,
        &identity_scalar(&identity, generation).to_bytes_be(),
    )?;
    check(
        "r",
        &v.bytes("r")?,
        &hazmat::user_key_scalar(&master, &identity, generation).to_bytes_be(),
    )?;
    let key = master.extract(&identity, generation);
    check("user_key", &v.bytes("user_key")?, key.to_bytes().as_ref())?;
    key.verify(&params)?;

    let mut sigma = [0u8; 32];
    rng.fill_bytes(&mut sigma);
    check("sigma", &v.bytes("sigma")?, &sigma)?;
    let s = hazmat::fo_scalar(&sigma, &params, &identity, generation);
    check("s", &v.bytes("s")?, &s.to_bytes_be())?;
    check("v_pow_s", &v.bytes("v_pow_s")?, &hazmat::pairing_value(&s))?;
    let (capsule, secret) = encapsulate_with_seed(&params, &identity, generation, &sigma)?;
    check("capsule", &v.bytes("capsule")?, &capsule.to_bytes())?;
    check(
        "shared_secret",
        &v.bytes("shared_secret")?,
        secret.as_bytes(),
    )?;

    // And the receiving side, from the encoded forms only.
    let params = PublicParams::from_components(&v.bytes("X")?, &v.bytes("Y")?)?;
    let key = UserKey::from_bytes(identity, generation, &v.bytes("user_key")?)?;
    let capsule = Capsule::from_bytes(&v.bytes("capsule")?)?;
    check(
        "decapsulated secret",
        &v.bytes("shared_secret")?,
        key.decapsulate(&params, &capsule)?.as_bytes(),
    )?;
    check(
        "secret decapsulated with the master key",
        &v.bytes("shared_secret")?,
        master
            .decapsulate(&params, key.identity(), generation, &capsule)?
            .as_bytes(),
    )
}

fn error_name(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Length { .. } => "length",
        DecodeError::NotOnCurve { .. } => "not_on_curve",
        DecodeError::NotInSubgroup { .. } => "not_in_subgroup",
        DecodeError::IdentityPoint { .. } => "identity_point",
        DecodeError::NonCanonicalScalar { .. } => "non_canonical_scalar",
        DecodeError::ZeroScalar { .. } => "zero_scalar",
        DecodeError::KeyMismatch => "key_mismatch",
        _ => "unknown",
    }
}

fn run_fail(v: &Vector) -> Result<(), Failed> {
    let expect = v.text("expect")?;
    let input = v.bytes("input")?;
    let outcome: Result<(), String> = match v.text("kind")? {
        "capsule" => match Capsule::from_bytes(&input) {
            Err(e) => Err(error_name(&e).into()),
            Ok(capsule) => {
                let master = MasterKey::from_bytes(&v.bytes("master_key")?)?;
                let params = PublicParams::from_components(&v.bytes("X")?, &v.bytes("Y")?)?;
                let (identity, generation) = (v.identity()?, v.generation()?);
                let key = master.extract(&identity, generation);
                let by_user_key = key.decapsulate(&params, &capsule);
                // The KGC's master-key path must agree on every capsule.
                let by_master = master.decapsulate(&params, &identity, generation, &capsule);
                if by_user_key != by_master {
                    return Err(format!(
                        "user-key path {by_user_key:?} but master-key path {by_master:?}"
                    )
                    .into());
                }
                match by_user_key {
                    Err(DecapsulationError::Rejected) => Err("rejected".into()),
                    Err(other) => Err(format!("{other:?}")),
                    Ok(_) => Ok(()),
                }
            }
        },
        "public_params" => PublicParams::from_bytes(&input)
            .map(|_| ())
            .map_err(|e| error_name(&e).into()),
        "user_key" => UserKey::from_bytes(v.identity()?, v.generation()?, &input)
            .map(|_| ())
            .map_err(|e| error_name(&e).into()),
        "master_key" => MasterKey::from_bytes(&input)
            .map(|_| ())
            .map_err(|e| error_name(&e).into()),
        other => return Err(format!("unknown kind {other}").into()),
    };
    match outcome {
        Ok(()) => Err(format!("input was accepted; expected {expect}").into()),
        Err(got) if got == expect => Ok(()),
        Err(got) => Err(format!("rejected as {got}, expected {expect}").into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(vector_dir())
        .expect("tests/vectors/ibe exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    entries.sort();
    assert!(
        entries
            .iter()
            .any(|p| p.file_name().unwrap().to_string_lossy().starts_with("kat_"))
            && entries.iter().any(|p| p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fail_")),
        "vector directory must hold kat_ and fail_ vectors"
    );
    let trials = entries
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let must_fail = name.starts_with("fail_");
            Trial::test(name, move || {
                let v = Vector::load(&path)?;
                if must_fail { run_fail(&v) } else { run_kat(&v) }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
