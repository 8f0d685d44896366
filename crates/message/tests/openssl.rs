//! Interoperability with code nobody on the team wrote: Debian's `openssl`
//! parses every sealed message, and decrypts one through a KEK recipient
//! (which proves our AES-GCM content and `mac` layout), and RustCrypto's
//! `cms` crate decodes the whole structure.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::process::Command;

use aes_kw::KwAes256;
use aes_kw::cipher::KeyInit;
use base64::Engine as _;
use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{KekIdentifier, KekRecipientInfo, RecipientInfo};
use common::{Kgc, as_dyn, corpus, rng};
use der::asn1::OctetString;
use der::{Decode, Encode};
use ibemail_message::header::HeaderSection;
use ibemail_message::{ContentKey, Limits, Recipient, SealError, seal};
use rand_core::CryptoRngCore;
use spki::AlgorithmIdentifierOwned;

fn openssl() -> Command {
    let probe = Command::new("openssl").arg("version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "openssl is required (scripts/test installs it)"
    );
    Command::new("openssl")
}

fn der_of(sealed: &[u8]) -> Vec<u8> {
    let section = HeaderSection::parse(sealed);
    let body: Vec<u8> = sealed[section.body_offset..]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn temp_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path
}

#[test]
fn openssl_and_cms_crate_parse_every_sealed_corpus_message() {
    let b = Kgc::new(10);
    let c = Kgc::new(11);
    let recipients = [b.recipient("bob@b.test"), c.recipient("carol@c.test")];
    let tmp = tempfile::tempdir().unwrap();
    for (i, (name, original)) in corpus().into_iter().enumerate() {
        let sealed = seal(
            &original,
            &as_dyn(&recipients),
            &mut rng(i as u64),
            &Limits::default(),
        )
        .unwrap()
        .to_bytes();
        let der = der_of(&sealed);

        // RustCrypto cms: the full structure decodes and re-encodes identically.
        let ci = ContentInfo::from_der(&der).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ci.to_der().unwrap(), der, "{name}: not canonical DER");
        let aed: AuthEnvelopedData = ci.content.decode_as().unwrap();
        assert_eq!(aed.recip_infos.0.len(), 2);
        assert!(
            aed.recip_infos
                .0
                .iter()
                .all(|r| matches!(r, RecipientInfo::Ori(_)))
        );
        assert_eq!(
            aed.auth_encrypted_content_info
                .encrypted_content
                .unwrap()
                .as_bytes()
                .len(),
            original.len()
        );

        let path = temp_file(&tmp, &format!("{i}.der"), &der);
        let out = openssl()
            .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("d.authEnvelopedData:"), "{name}");
        assert!(text.contains("aes-256-gcm"), "{name}");
        assert_eq!(
            text.matches("1.2.840.113549.1.9.16.13.3").count(),
            2,
            "{name}: two KEM recipients"
        );
        assert!(
            text.contains("2.25.39632899932755161904767908401202920215"),
            "{name}"
        );
        std::fs::remove_file(path).unwrap();
    }
}

/// A CMS KEKRecipientInfo (RFC 5652 §6.2.3) with a key shared with the test,
/// so that openssl can decrypt what we sealed.
struct KekRecipient {
    id: [u8; 8],
    kek: [u8; 32],
}

impl Recipient for KekRecipient {
    fn recipient_info(
        &self,
        cek: &ContentKey,
        _: &mut dyn CryptoRngCore,
    ) -> Result<Vec<u8>, SealError> {
        let mut wrapped = [0u8; 40];
        KwAes256::new(&self.kek.into())
            .wrap_key(cek.as_bytes(), &mut wrapped)
            .unwrap();
        Ok(RecipientInfo::Kekri(KekRecipientInfo {
            version: CmsVersion::V4,
            kek_id: KekIdentifier {
                kek_identifier: OctetString::new(self.id).unwrap(),
                date: None,
                other: None,
            },
            key_enc_alg: AlgorithmIdentifierOwned {
                oid: "2.16.840.1.101.3.4.1.45".parse().unwrap(),
                parameters: None,
            },
            encrypted_key: OctetString::new(wrapped).unwrap(),
        })
        .to_der()
        .unwrap())
    }
}

#[test]
fn openssl_decrypts_our_content_through_a_kek_recipient() {
    let b = Kgc::new(12);
    let bob = b.recipient("bob@b.test");
    let kek = KekRecipient {
        id: *b"testkey1",
        kek: [0x42; 32],
    };
    for (i, (name, original)) in corpus().into_iter().enumerate().step_by(7) {
        let tmp = tempfile::tempdir().unwrap();
        let recipients: [&dyn Recipient; 2] = [&bob, &kek];
        let sealed = seal(
            &original,
            &recipients,
            &mut rng(i as u64),
            &Limits::default(),
        )
        .unwrap()
        .to_bytes();
        let path = temp_file(&tmp, &format!("kek{i}.eml"), &sealed);
        let out = openssl()
            .args(["cms", "-decrypt", "-binary", "-in"])
            .arg(&path)
            .args([
                "-secretkey",
                &hex::encode(kek.kek),
                "-secretkeyid",
                &hex::encode(kek.id),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == original,
            "{name}: openssl decrypted something else"
        );

        // And our own reader still opens it for bob, ignoring the kekri.
        assert!(b.open(&sealed, &["bob@b.test"]).unwrap().message == original);

        // A flipped tag bit makes openssl refuse too.
        let mut der = der_of(&sealed);
        let last = der.len() - 1;
        der[last] ^= 1;
        let bad = temp_file(&tmp, &format!("kek{i}.der"), &der);
        let out = openssl()
            .args(["cms", "-decrypt", "-binary", "-inform", "DER", "-in"])
            .arg(&bad)
            .args([
                "-secretkey",
                &hex::encode(kek.kek),
                "-secretkeyid",
                &hex::encode(kek.id),
            ])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{name}: openssl accepted a forged tag"
        );
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(bad).unwrap();
    }
}

/// Only a body that really is CMS EnvelopedData or AuthEnvelopedData counts
/// as "already encrypted": S/MIME opaque-signed mail (Outlook's
/// `smime-type=signed-data`, readable by anyone) and compressed mail carry
/// the same Content-Type and must still be sealed. Made by `openssl smime`,
/// in DER and in streaming BER.
#[test]
fn only_real_enveloped_data_counts_as_already_encrypted() {
    use ibemail_message::is_cms_encrypted;

    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key.pem");
    let cert = tmp.path().join("cert.pem");
    let made = openssl()
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=alice@a.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let content = temp_file(
        &tmp,
        "content.txt",
        b"Content-Type: text/plain\r\n\r\nThe merger closes on Friday.\r\n",
    );
    let smime = |args: &[&str]| -> Vec<u8> {
        let out = openssl()
            .arg("cms")
            .arg("-in")
            .arg(&content)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl cms {args:?}: {out:?}");
        // A message header for the S/MIME part openssl wrote.
        let mut message = b"From: alice@a.test\r\nTo: bob@b.test\r\n".to_vec();
        message.extend_from_slice(&out.stdout);
        message
    };
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let enveloped = smime(&["-encrypt", "-aes256", cert]);
    let streamed = smime(&["-encrypt", "-aes256", "-stream", cert]);
    let auth_enveloped = smime(&["-encrypt", "-aes-256-gcm", cert]);
    let opaque_signed = smime(&["-sign", "-nodetach", "-signer", cert, "-inkey", key]);
    // Debian's openssl has no zlib for `-compress`: a compressed-data
    // ContentInfo is built here instead.
    let compressed = {
        let info = ContentInfo {
            content_type: der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.9"),
            content: der::Any::from_der(
                &OctetString::new(b"x".to_vec()).unwrap().to_der().unwrap(),
            )
            .unwrap(),
        };
        let body = base64::engine::general_purpose::STANDARD.encode(info.to_der().unwrap());
        format!(
            "From: alice@a.test\r\nContent-Type: application/pkcs7-mime; smime-type=compressed-data\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{body}\r\n"
        )
        .into_bytes()
    };

    for (name, message) in [
        ("enveloped-data", &enveloped),
        ("enveloped-data, streamed BER", &streamed),
        ("authEnveloped-data", &auth_enveloped),
    ] {
        assert!(
            is_cms_encrypted(message),
            "{name}:\n{}",
            String::from_utf8_lossy(message)
        );
    }
    let text = String::from_utf8_lossy(&opaque_signed);
    assert!(text.contains("signed-data"), "{text}");
    assert!(!is_cms_encrypted(&opaque_signed), "opaque signed-data");
    // The signed content is right there for anyone to read.
    assert!(ibemail_message::is_encrypted(&opaque_signed));
    // Lying about the type changes nothing: the body decides.
    let relabelled = text.replace("signed-data", "enveloped-data").into_bytes();
    assert!(!is_cms_encrypted(&relabelled), "relabelled signed-data");
    assert!(ibemail_message::is_encrypted(&compressed));
    assert!(!is_cms_encrypted(&compressed), "compressed-data");
    // An enveloped header over junk, and our own sealed mail.
    let junk =
        b"From: a@a.test\r\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nTUlJQmF1dGhFbnZlbG9wZWQ=\r\n";
    assert!(!is_cms_encrypted(junk));
    assert!(!is_cms_encrypted(b"From: a@a.test\r\n\r\nplain\r\n"));
    let b = Kgc::new(12);
    let sealed = seal(
        b"From: a@a.test\r\n\r\nhi\r\n",
        &as_dyn(&[b.recipient("bob@b.test")]),
        &mut rng(1),
        &Limits::default(),
    )
    .unwrap()
    .to_bytes();
    assert!(is_cms_encrypted(&sealed));
}
