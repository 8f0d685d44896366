//! Continuity-signature vectors in `tests/vectors/continuity/`, one test
//! case per file: `kat_*` are recomputed from their seeds and must match
//! (and verify from their encoded fields alone); `fail_*` must be rejected
//! with the named error (`rejected`: any).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ibemail_ibe::{
    ContinuitySignature, DecodeError, MasterKey, PublicParams, SigningParams, Successor,
    verify_successor,
};
use libtest_mimic::{Arguments, Failed, Trial};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Vector(HashMap<String, String>);

impl Vector {
    fn load(path: &Path) -> Result<Self, Failed> {
        let mut map = HashMap::new();
        for line in std::fs::read_to_string(path)?.lines() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(" =")
                .ok_or_else(|| format!("malformed line: {line}"))?;
            map.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Vector(map))
    }

    fn text(&self, key: &str) -> Result<&str, String> {
        self.0
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("vector lacks `{key}`"))
    }

    fn bytes(&self, key: &str) -> Result<Vec<u8>, String> {
        hex::decode(self.text(key)?).map_err(|e| format!("{key}: {e}"))
    }

    /// Verifies the vector's signature from its encoded fields alone.
    fn verify(&self) -> Result<(), String> {
        let field = |key: &str| self.bytes(key);
        let signer = SigningParams::from_bytes(&field("signer_S")?).map_err(|e| e.to_string())?;
        let params =
            PublicParams::from_components(&field("X")?, &field("Y")?).map_err(|e| e.to_string())?;
        let signing = SigningParams::from_bytes(&field("S")?).map_err(|e| e.to_string())?;
        let generation: u32 = self
            .text("generation_decimal")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let successor = Successor {
            domain: self.text("domain_text")?,
            generation,
            params: &params,
            signing: &signing,
            policy: self.text("policy_text")?.as_bytes(),
        };
        if let Ok(message) = self.bytes("message")
            && message != successor.message()
        {
            return Err("message differs from the one built from the fields".into());
        }
        let signature =
            ContinuitySignature::from_bytes(&field("signature")?).map_err(|e| decode_error(&e))?;
        verify_successor(&signer, &successor, &signature).map_err(|_| "bad_signature".into())
    }
}

fn decode_error(e: &DecodeError) -> String {
    match e {
        DecodeError::Length { .. } => "length",
        DecodeError::NotOnCurve { .. } => "not_on_curve",
        DecodeError::NotInSubgroup { .. } => "not_in_subgroup",
        DecodeError::IdentityPoint { .. } => "identity_point",
        _ => "other",
    }
    .into()
}

fn run_kat(v: &Vector) -> Result<(), Failed> {
    let seed = |key: &str| -> Result<[u8; 32], Failed> {
        v.bytes(key)?
            .try_into()
            .map_err(|_| format!("{key}: not 32 bytes").into())
    };
    let signer = MasterKey::generate(&mut ChaCha20Rng::from_seed(seed("signer_rng_seed")?));
    let successor = MasterKey::generate(&mut ChaCha20Rng::from_seed(seed("successor_rng_seed")?));
    let expect = |key: &str, actual: &[u8]| -> Result<(), Failed> {
        if v.bytes(key)? == actual {
            Ok(())
        } else {
            Err(format!("{key} mismatch: got {}", hex::encode(actual)).into())
        }
    };
    expect("signer_S", &signer.signing_params().to_bytes())?;
    let (params, signing) = (successor.public_params(), successor.signing_params());
    expect("X", &params.x_bytes())?;
    expect("Y", &params.y_bytes())?;
    expect("S", &signing.to_bytes())?;
    let s = Successor {
        domain: v.text("domain_text")?,
        generation: v.text("generation_decimal")?.parse()?,
        params: &params,
        signing: &signing,
        policy: v.text("policy_text")?.as_bytes(),
    };
    expect("message", &s.message())?;
    expect("signature", &signer.sign_successor(&s).to_bytes())?;
    v.verify().map_err(Failed::from)
}

fn run_fail(v: &Vector) -> Result<(), Failed> {
    let expect = v.text("expect")?;
    match v.verify() {
        Ok(()) => Err(format!("accepted; expected {expect}").into()),
        // `rejected`: any reason will do (a flipped bit may land off the
        // curve, outside the subgroup, or on another valid point).
        Err(got) if got == expect || expect == "rejected" => Ok(()),
        Err(got) => Err(format!("rejected as {got}, expected {expect}").into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/continuity");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/vectors/continuity exists")
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    entries.sort();
    let names: Vec<String> = entries
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("kat_")) && names.iter().any(|n| n.starts_with("fail_")),
        "the directory must hold kat_ and fail_ vectors"
    );
    let trials = entries
        .into_iter()
        .zip(names)
        .map(|(path, name)| {
            let must_fail = name.starts_with("fail_");
            Trial::test(name, move || {
                let v = Vector::load(&path)?;
                if must_fail { run_fail(&v) } else { run_kat(&v) }
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
