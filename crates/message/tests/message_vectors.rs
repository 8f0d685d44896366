//! Worked examples of a sealed message and of the `IBE-Signature` field for
//! `docs/spec.md`, in `tests/vectors/encodings/`.
//!
//! Each test seals or signs through the crate's API with a seeded RNG, and
//! separately rebuilds the same bytes from the layouts the specification
//! gives (DER written out by hand, HKDF, AES key wrap, AES-GCM from other
//! crates, the canonical forms built directly); the two must agree, and the
//! committed file must equal what they produce. `IBEMAIL_WRITE_VECTORS=1
//! cargo test -p ibemail-message --test message_vectors` rewrites the files
//! (a format change).

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce};
use aes_kw::KwAes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use ibemail_ibe::{Identity, MasterKey, encapsulate_with_seed};
use ibemail_message::signature::{Algorithm, Unsigned, signatures};
use ibemail_message::{IbeRecipient, Limits, Recipient, open, seal};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Doc(String);

impl Doc {
    fn comment(&mut self, text: &str) {
        for line in text.lines() {
            writeln!(self.0, "# {line}").unwrap();
        }
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }

    fn hex(&mut self, key: &str, value: impl AsRef<[u8]>) {
        writeln!(self.0, "{key} = {}", hex::encode(value)).unwrap();
    }

    fn text(&mut self, key: &str, value: &str) {
        assert!(key.ends_with("_text") && !value.contains(['\r', '\n']));
        writeln!(self.0, "{key} = {value}").unwrap();
    }

    fn decimal(&mut self, key: &str, value: impl core::fmt::Display) {
        assert!(key.ends_with("_decimal"));
        writeln!(self.0, "{key} = {value}").unwrap();
    }
}

fn settle(name: &str, doc: &Doc) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors/encodings");
    let path = dir.join(name);
    if std::env::var_os("IBEMAIL_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, &doc.0).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (IBEMAIL_WRITE_VECTORS=1 writes it)",
            path.display()
        )
    });
    for (n, (want, got)) in committed.lines().zip(doc.0.lines()).enumerate() {
        assert_eq!(want, got, "{name}:{}: committed vs recomputed", n + 1);
    }
    assert_eq!(committed, doc.0, "{name}");
}

/// A DER TLV with a one-byte tag.
fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(value);
    out
}

/// DER INTEGER of a non-negative number.
fn integer(n: u64) -> Vec<u8> {
    let mut bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|&b| b == 0)
        .collect();
    if bytes.first().is_none_or(|&b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    tlv(0x02, &bytes)
}

fn oid(hex_value: &str) -> Vec<u8> {
    tlv(0x06, &hex::decode(hex_value).unwrap())
}

/// The object identifiers of the specification, as DER content octets.
const ID_CT_AUTH_ENVELOPED_DATA: &str = "2a864886f70d0109100117"; // 1.2.840.113549.1.9.16.1.23
const ID_DATA: &str = "2a864886f70d010701"; // 1.2.840.113549.1.7.1
const ID_ORI_KEM: &str = "2a864886f70d0109100d03"; // 1.2.840.113549.1.9.16.13.3
const ID_ALG_HKDF_WITH_SHA256: &str = "2a864886f70d010910031c"; // 1.2.840.113549.1.9.16.3.28
const ID_AES256_WRAP: &str = "60864801650304012d"; // 2.16.840.1.101.3.4.1.45
const ID_AES256_GCM: &str = "60864801650304012e"; // 2.16.840.1.101.3.4.1.46

/// `2.25.<uuid>`: 2·40 + 25 = 105, then the UUID in base 128.
fn kem_oid() -> Vec<u8> {
    let uuid: u128 = 0x1dd104d5_146d_43a0_907a_54c4a07cfb17;
    let mut arc = Vec::new();
    let mut v = uuid;
    while v > 0 {
        arc.push((v & 0x7f) as u8 | if arc.is_empty() { 0 } else { 0x80 });
        v >>= 7;
    }
    arc.reverse();
    tlv(0x06, &[&[105u8][..], &arc].concat())
}

/// The master key of `tests/vectors/ibe/kat_001.txt`.
fn kat_001_master() -> MasterKey {
    let mut seed = [0u8; 32];
    seed[0] = 1;
    seed[31] = 0x5a;
    MasterKey::generate(&mut ChaCha20Rng::from_seed(seed))
}

const MESSAGE: &[u8] =
    b"Received: from [192.0.2.7] by mx.a.test; Mon, 23 Nov 2026 10:00:01 +0000\r\n\
From: Carol <carol@a.test>\r\n\
To: alice@b.test, bob@b.test\r\n\
Subject: Lunch?\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@a.test>\r\n\
X-Mailer: example\r\n\
\r\n\
Shall we meet at  noon?\r\n";

#[test]
fn sealed_message() {
    let master = kat_001_master();
    let params = master.public_params();
    let generation = 1u32;
    let addresses = ["alice@b.test", "bob@b.test"];
    let recipients: Vec<IbeRecipient> = addresses
        .iter()
        .map(|a| IbeRecipient {
            identity: Identity::parse(a).unwrap(),
            generation,
            params: params.clone(),
        })
        .collect();
    let dyn_recipients: Vec<&dyn Recipient> =
        recipients.iter().map(|r| r as &dyn Recipient).collect();
    let mut seed = [0u8; 32];
    seed[0] = 0x5e;
    seed[31] = 0x5a;
    let sealed = seal(
        MESSAGE,
        &dyn_recipients,
        &mut ChaCha20Rng::from_seed(seed),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();

    // The same message built from the specification. The RNG gives, in
    // order: the content key, then per recipient sigma and the ukm.
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut cek = [0u8; 32];
    rng.fill_bytes(&mut cek);
    let mut doc = Doc::default();
    doc.comment(
        "A sealed message (docs/spec.md, \"The message\"): MESSAGE below sealed to\n\
         alice@b.test and bob@b.test, generation 1 of b.test with the master key of\n\
         tests/vectors/ibe/kat_001.txt. The sender's randomness is ChaCha20(rng_seed),\n\
         drawn in this order: cek (32 bytes), then for each recipient in the order\n\
         given, sigma (32) and ukm (16). crates/message/tests/message_vectors.rs\n\
         rebuilds every byte from the specification and with the crate.",
    );
    doc.hex("message", MESSAGE);
    doc.hex("rng_seed", seed);
    doc.hex("X", params.x_bytes());
    doc.hex("Y", params.y_bytes());
    doc.decimal("generation_decimal", generation);
    doc.text(
        "kem_oid_text",
        "2.25.39632899932755161904767908401202920215",
    );
    doc.text("kem_uuid_text", "1dd104d5-146d-43a0-907a-54c4a07cfb17");
    assert_eq!(
        u128::from_str_radix("1dd104d5146d43a0907a54c4a07cfb17", 16).unwrap(),
        39632899932755161904767908401202920215
    );
    doc.hex("kem_oid", kem_oid());
    doc.hex("cek", cek);
    let mut infos = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let identity = Identity::parse(address).unwrap();
        let mut sigma = [0u8; 32];
        rng.fill_bytes(&mut sigma);
        let mut ukm = [0u8; 16];
        rng.fill_bytes(&mut ukm);
        let (capsule, secret) =
            encapsulate_with_seed(&params, &identity, generation, &sigma).unwrap();
        let rid: [u8; 32] = Sha256::new()
            .chain_update(b"IBEMAIL-V1-RID")
            .chain_update(ukm)
            .chain_update(address.as_bytes())
            .finalize()
            .into();
        let wrap_alg = tlv(0x30, &oid(ID_AES256_WRAP));
        let ukm_field = tlv(0xa0, &tlv(0x04, &ukm));
        let kdf_info = tlv(0x30, &[&wrap_alg[..], &integer(32), &ukm_field].concat());
        let mut kek = [0u8; 32];
        Hkdf::<Sha256>::new(None, secret.as_bytes())
            .expand(&kdf_info, &mut kek)
            .unwrap();
        let mut wrapped = [0u8; 40];
        KwAes256::new(&kek.into())
            .wrap_key(&cek, &mut wrapped)
            .unwrap();
        let kemri = tlv(
            0x30,
            &[
                &integer(0)[..],
                &tlv(0x80, &rid),
                &tlv(0x30, &[kem_oid(), integer(u64::from(generation))].concat()),
                &tlv(0x04, &capsule.to_bytes()),
                &tlv(0x30, &oid(ID_ALG_HKDF_WITH_SHA256)),
                &integer(32),
                &ukm_field,
                &wrap_alg,
                &tlv(0x04, &wrapped),
            ]
            .concat(),
        );
        let info = tlv(0xa4, &[oid(ID_ORI_KEM), kemri].concat());
        let n = i + 1;
        doc.blank();
        doc.text(&format!("recipient_{n}_text"), address);
        doc.hex(&format!("recipient_{n}_sigma"), sigma);
        doc.hex(&format!("recipient_{n}_capsule"), capsule.to_bytes());
        doc.hex(&format!("recipient_{n}_shared_secret"), secret.as_bytes());
        doc.hex(&format!("recipient_{n}_ukm"), ukm);
        doc.hex(&format!("recipient_{n}_rid"), rid);
        doc.hex(&format!("recipient_{n}_kdf_info"), &kdf_info);
        doc.hex(&format!("recipient_{n}_kek"), kek);
        doc.hex(&format!("recipient_{n}_encrypted_key"), wrapped);
        doc.hex(&format!("recipient_{n}_recipient_info"), &info);
        infos.push(info);
    }
    // SET OF: the DER encodings in ascending order.
    infos.sort();
    let recipient_set = tlv(0x31, &infos.concat());
    let nonce: [u8; 12] = Sha256::new()
        .chain_update(b"IBEMAIL-V1-NONCE")
        .chain_update(&recipient_set)
        .finalize()[..12]
        .try_into()
        .unwrap();
    let mut ciphertext = MESSAGE.to_vec();
    let tag = Aes256Gcm::new(&cek.into())
        .encrypt_inout_detached(&Nonce::from(nonce), b"", (&mut ciphertext[..]).into())
        .unwrap();
    let gcm_parameters = tlv(0x30, &[tlv(0x04, &nonce), integer(16)].concat());
    let content_info = tlv(
        0x30,
        &[
            oid(ID_CT_AUTH_ENVELOPED_DATA),
            tlv(
                0xa0,
                &tlv(
                    0x30,
                    &[
                        integer(0),
                        recipient_set.clone(),
                        tlv(
                            0x30,
                            &[
                                oid(ID_DATA),
                                tlv(0x30, &[oid(ID_AES256_GCM), gcm_parameters].concat()),
                                tlv(0x80, &ciphertext),
                            ]
                            .concat(),
                        ),
                        tlv(0x04, tag.as_slice()),
                    ]
                    .concat(),
                ),
            ),
        ]
        .concat(),
    );
    let mut body = Vec::new();
    for line in STANDARD.encode(&content_info).as_bytes().chunks(76) {
        body.extend_from_slice(line);
        body.extend_from_slice(b"\r\n");
    }
    let header = "Received: from [192.0.2.7] by mx.a.test; Mon, 23 Nov 2026 10:00:01 +0000\r\n\
From: Carol <carol@a.test>\r\n\
To: alice@b.test, bob@b.test\r\n\
Subject: [...]\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <1@a.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=\"smime.p7m\"\r\n\
Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n";
    let rebuilt = [header.as_bytes(), &body].concat();
    assert!(
        rebuilt == sealed,
        "the specification's construction differs from seal()"
    );

    doc.blank();
    doc.hex("recipient_infos", &recipient_set);
    doc.hex("nonce", nonce);
    doc.hex("gcm_tag", tag.as_slice());
    doc.hex("content_info", &content_info);
    doc.hex("sealed_message", &sealed);
    settle("sealed_message.txt", &doc);

    // And it opens, for each recipient.
    for address in addresses {
        let identity = Identity::parse(address).unwrap();
        let opened = open(
            &sealed,
            std::slice::from_ref(&identity),
            &Limits::default(),
            |id, n, capsule| {
                master
                    .decapsulate(&params, id, n, capsule)
                    .map_err(|_| ibemail_message::CapsuleError::Rejected)
            },
        )
        .unwrap();
        assert_eq!(opened.message, MESSAGE);
        assert_eq!(opened.sealed_to, vec![identity]);
    }
}

/// RFC 6376 relaxed header canonicalization of one field, written out.
fn relaxed(name: &str, value: &str) -> String {
    let unfolded = value.replace(['\r', '\n'], "");
    let words: Vec<&str> = unfolded
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    format!("{}:{}\r\n", name.to_ascii_lowercase(), words.join(" "))
}

#[test]
fn signed_message() {
    let master = kat_001_master();
    let signer = Identity::parse("carol@a.test").unwrap();
    let generation = 1u32;
    let unsigned = Unsigned::new_sealed(MESSAGE, &signer, generation, Algorithm::ChaCheon);
    let mut seed = [0u8; 32];
    seed[0] = 0x5f;
    seed[31] = 0x5a;
    let signature = master
        .extract_signing(&signer, generation)
        .sign(unsigned.digest(), &mut ChaCha20Rng::from_seed(seed));
    let value = unsigned.field_value(&signature.into()).unwrap();
    let signed = unsigned.prepend(MESSAGE, &signature.into()).unwrap();

    // The specification's construction: the body hash, then the selected
    // fields and this field without the value of b=, relaxed.
    let body = b"Shall we meet at noon?\r\n";
    let bh: [u8; 32] = Sha256::digest(body).into();
    let h = "from:from:sender:reply-to:to:to:cc:subject:subject:date:date:message-id:\
             message-id:in-reply-to:references:mime-version:content-type:\
             content-transfer-encoding:content-disposition";
    // The value up to and including "b=" (where the signer folds is its
    // choice; relaxed canonicalization makes it irrelevant).
    let b_at = value.rfind("\r\n\tb=").unwrap() + 5;
    let without_b = value[..b_at].to_string();
    let canonical = relaxed("IBE-Signature", &without_b);
    assert_eq!(
        canonical.replace(' ', ""),
        format!(
            "ibe-signature:v=1;a=cc-bls12-381-sha256;c=relaxed/relaxed;i=carol@a.test;\
             n=1;e=1;h={h};bh={};b=\r\n",
            STANDARD.encode(bh)
        )
    );
    let signed_data = [
        relaxed("From", " Carol <carol@a.test>"),
        relaxed("To", " alice@b.test, bob@b.test"),
        relaxed("Subject", " Lunch?"),
        relaxed("Date", " Mon, 23 Nov 2026 10:00:00 +0000"),
        relaxed("Message-ID", " <1@a.test>"),
        relaxed("IBE-Signature", &without_b)
            .trim_end_matches("\r\n")
            .to_string(),
    ]
    .concat();
    let digest: [u8; 32] = Sha256::digest(signed_data.as_bytes()).into();
    assert_eq!(&digest, unsigned.digest());
    assert_eq!(
        signed,
        [
            b"IBE-Signature:".as_slice(),
            value.as_bytes(),
            b"\r\n",
            MESSAGE
        ]
        .concat()
    );
    let b_value: String = value[without_b.len()..].split_ascii_whitespace().collect();
    assert_eq!(STANDARD.decode(&b_value).unwrap(), signature.to_bytes());

    let parsed = signatures(&signed).remove(0).unwrap();
    assert!(parsed.sealed);
    parsed.verify(&signed, &master.signing_params()).unwrap();

    let mut doc = Doc::default();
    doc.comment(
        "An IBE-Signature field (docs/spec.md, \"The IBE-Signature field\"): the\n\
         message of sealed_message.txt signed by carol@a.test, generation 1, for\n\
         sealing (e=1), with the master key of tests/vectors/ibe/kat_001.txt\n\
         (S as in ibs_worked_example.txt). The signer's fresh randomness is\n\
         ChaCha20(rng_seed). h_text is the h= list unfolded; signed_data is the\n\
         exact input of the SHA-256 digest that the Cha-Cheon signature signs.",
    );
    doc.hex("message", MESSAGE);
    doc.text("signer_text", signer.as_str());
    doc.decimal("generation_decimal", generation);
    doc.hex("S", master.signing_params().to_bytes());
    doc.text("h_text", h);
    doc.hex("canonical_body", body);
    doc.hex("bh", bh);
    doc.text("bh_text", &STANDARD.encode(bh));
    doc.hex("signed_data", signed_data.as_bytes());
    doc.hex("digest", digest);
    doc.hex("rng_seed", seed);
    doc.hex("signature", signature.to_bytes());
    doc.hex("field_value", value.as_bytes());
    doc.hex("signed_message", &signed);
    settle("signed_message.txt", &doc);
}
