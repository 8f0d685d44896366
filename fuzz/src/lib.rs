//! The bodies of ibemail's fuzz targets, shared by the one-line targets in
//! `fuzz_targets/` and the seed generator in `examples/make_seeds.rs`.
//!
//! Every function here must return normally for every input: a panic is a
//! bug in the library (or a broken invariant asserted here), and libFuzzer
//! reports it as a crash.

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cms::authenveloped_data::AuthEnvelopedData;
use cms::content_info::ContentInfo;
use cms::enveloped_data::RecipientInfo;
use der::{Decode, Encode};
use ibemail_ibe::{Capsule, Generation, Identity, MasterKey, PublicParams, UserKey};
use ibemail_message::cms::{KemRecipientInfo, LargeOid};
use ibemail_message::header::HeaderSection;
use ibemail_message::{CapsuleError, Limits, OpenError};
use ibemail_params::{Record, RecordSet};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Seed of the fixed test KGC; the seeds in `fuzz/seeds/` are sealed to it.
pub const KGC_SEED: u64 = 0x1be_f022;
/// The generation the test KGC serves.
pub const GENERATION: Generation = 1;
/// The local recipient the `open` target opens for.
pub const LOCAL: &str = "bob@b.test";
/// Byte that splits fuzz input into TXT character-strings (never valid in a record).
pub const STRING_SEPARATOR: u8 = 0xff;
/// Byte that splits fuzz input into TXT records.
pub const RECORD_SEPARATOR: u8 = 0xfe;
/// An input starting with this byte (an ASN.1 SEQUENCE tag, `0`) is raw DER;
/// the targets wrap it in the S/MIME header and base64 first.
pub const DER_MARKER: u8 = 0x30;
/// An input starting with this byte is a zero byte and then DER whose GCM
/// nonce the targets recompute from its recipientInfos before wrapping it,
/// as a sealer would. Without this, any change to a recipient info fails the
/// nonce check in `inspect`, and the fuzzer never reaches capsule decoding,
/// decapsulation or key unwrapping with mutated values.
pub const FIXUP_MARKER: u8 = 0x00;

/// The fixed KGC of b.test and bob's generation-1 key, made once per process.
pub struct TestKgc {
    /// The master key (for sealing seeds to other recipients).
    pub master: MasterKey,
    /// Its public parameters.
    pub params: PublicParams,
    /// `bob@b.test`, normalised.
    pub bob: Identity,
    /// Bob's user key for [`GENERATION`].
    pub bob_key: UserKey,
}

/// The process-wide test KGC.
pub fn kgc() -> &'static TestKgc {
    static KGC: OnceLock<TestKgc> = OnceLock::new();
    KGC.get_or_init(|| {
        let master = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(KGC_SEED));
        let params = master.public_params();
        let bob = Identity::parse(LOCAL).expect("fixed address parses");
        let bob_key = master.extract(&bob, GENERATION);
        TestKgc {
            master,
            params,
            bob,
            bob_key,
        }
    })
}

/// Small limits, so the fuzzer reaches every limit check with small inputs.
pub fn limits() -> Limits {
    Limits {
        max_message_bytes: 256 * 1024,
        max_recipients: 4,
        max_nesting: 2,
    }
}

/// `der` as a sealed message would carry it: S/MIME header, base64 body.
pub fn mime_wrap(der: &[u8]) -> Vec<u8> {
    let mut out = b"From: alice@a.test\r\nTo: bob@b.test\r\nMIME-Version: 1.0\r\n\
Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=\"smime.p7m\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let text = STANDARD.encode(der);
    for line in text.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The message a target should look at: `data` itself; for an input
/// starting with [`DER_MARKER`], that DER wrapped as a sealed message (so the
/// fuzzer mutates the CMS directly rather than its base64); for one starting
/// with [`FIXUP_MARKER`], the DER after it with its nonce fixed up, wrapped.
pub fn as_message(data: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    match data.split_first() {
        Some((&DER_MARKER, _)) => Cow::Owned(mime_wrap(data)),
        Some((&FIXUP_MARKER, der)) => {
            Cow::Owned(mime_wrap(&fix_nonce(der).unwrap_or_else(|| der.to_vec())))
        }
        _ => Cow::Borrowed(data),
    }
}

/// `der` (a ContentInfo with AuthEnvelopedData) with its GCM nonce replaced
/// by the one ibemail derives from the recipientInfos as they are encoded
/// (see `ibemail_message::cms`): the first 12 bytes of
/// `SHA-256("IBEMAIL-V1-NONCE" ‖ DER(recipientInfos))`. Every other byte is
/// kept. `None` if the path to the nonce is not there.
///
/// Patched in place rather than decoded and re-encoded with the `cms` crate,
/// which re-sorts a SET OF RecipientInfo in an order that is not DER's (its
/// `RecipientInfo::value_cmp` compares the encodings as `Vec<u8>`, i.e. as
/// SEQUENCE OF INTEGER), so a re-encoded multi-recipient message changes.
pub fn fix_nonce(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::{Digest, Sha256};
    // Position of the value of the TLV at `pos`, if its tag is `tag`.
    let enter = |pos: usize, tag: u8| -> Option<usize> {
        let (t, header, _) = tlv(der.get(pos..)?)?;
        (t == tag).then_some(pos + header)
    };
    // Position after the TLV at `pos`.
    let skip = |pos: usize| -> Option<usize> {
        let (_, header, len) = tlv(der.get(pos..)?)?;
        Some(pos + header + len)
    };
    let p = enter(0, 0x30)?; // ContentInfo
    let p = skip(p)?; // contentType
    let p = enter(p, 0xa0)?; // [0] EXPLICIT
    let p = enter(p, 0x30)?; // AuthEnvelopedData
    let mut p = skip(p)?; // version
    if der.get(p) == Some(&0xa0) {
        p = skip(p)?; // originatorInfo
    }
    if der.get(p) != Some(&0x31) {
        return None;
    }
    let set = p..skip(p)?; // recipientInfos
    let p = enter(set.end, 0x30)?; // authEncryptedContentInfo
    let p = skip(p)?; // contentType
    let p = enter(p, 0x30)?; // contentEncryptionAlgorithm
    let p = skip(p)?; // algorithm
    let p = enter(p, 0x30)?; // GCMParameters
    let (tag, header, len) = tlv(der.get(p..)?)?;
    if tag != 0x04 || len != 12 {
        return None;
    }
    let digest = Sha256::new()
        .chain_update(b"IBEMAIL-V1-NONCE")
        .chain_update(der.get(set)?)
        .finalize();
    let mut out = der.to_vec();
    out.get_mut(p + header..p + header + 12)?
        .copy_from_slice(&digest[..12]);
    Some(out)
}

/// Tag, header length and value length of the DER TLV at the start of `d`
/// (one-byte tags, definite lengths up to 4 bytes), if it fits in `d`.
fn tlv(d: &[u8]) -> Option<(u8, usize, usize)> {
    let (&tag, rest) = d.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        (
            2 + n,
            bytes.iter().fold(0usize, |a, &b| a << 8 | usize::from(b)),
        )
    };
    (d.len() - header >= len).then_some((tag, header, len))
}

/// `record_parser`: the `_ibemailkey` TXT record parser.
///
/// Checks: no panic; a parsed record's `to_strings()` are TXT strings (at
/// most 255 bytes) of its `to_text()`, which stays under 512 bytes and
/// re-parses to the same record; parsing split strings equals parsing their
/// concatenation; a `RecordSet` is sorted, deduplicated and free of the
/// conflicting generations it reports.
pub fn record_parser(data: &[u8]) {
    // The whole input as one string.
    check_record(data, Record::parse_bytes(data));

    // Split into character-strings at a byte no record contains.
    let strings: Vec<&[u8]> = data.split(|&b| b == STRING_SEPARATOR).collect();
    let joined: Vec<u8> = strings.concat();
    let split = Record::parse_strings(&strings);
    assert_eq!(
        split,
        Record::parse_bytes(&joined),
        "split strings parse differently from their concatenation"
    );
    check_record(&joined, split);

    // Several TXT records, each of several strings.
    let records: Vec<Vec<&[u8]>> = data
        .split(|&b| b == RECORD_SEPARATOR)
        .map(|r| r.split(|&b| b == STRING_SEPARATOR).collect())
        .collect();
    let set = RecordSet::from_txt_records(&records);
    assert!(set.records.len() + set.rejected.len() <= records.len());
    for pair in set.records.windows(2) {
        assert!(
            pair[0].generation > pair[1].generation,
            "records not sorted by generation or not deduplicated: {:?}",
            set.records
        );
    }
    for record in &set.records {
        assert!(!set.conflicting.contains(&record.generation));
        assert_eq!(set.generation(record.generation), Some(record));
        assert_eq!(Record::parse(&record.to_text()).as_ref(), Ok(record));
    }
    if let Some(chosen) = set.select(u64::MAX / 2) {
        assert!(!chosen.is_expired(u64::MAX / 2));
    }
}

fn check_record(input: &[u8], parsed: Result<Record, ibemail_params::ParseError>) {
    match parsed {
        Ok(record) => {
            let text = record.to_text();
            let strings = record.to_strings();
            assert!(
                strings
                    .iter()
                    .all(|s| s.len() <= ibemail_params::MAX_STRING_LEN)
                    && strings.concat() == text,
                "to_strings() are not TXT strings of the record: {strings:?}"
            );
            assert!(text.len() < 512, "record of {} bytes: {text:?}", text.len());
            assert_eq!(
                Record::parse(&text).as_ref(),
                Ok(&record),
                "to_text() does not re-parse to the same record; input {:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(Record::parse_bytes(text.as_bytes()).as_ref(), Ok(&record));
            let _ = record.zone_line("b.test", 3600);
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.is_foreign();
        }
    }
}

/// `open`: the whole receiving path with a real in-process key for
/// `bob@b.test` (decapsulation included).
///
/// Checks: no panic; anything that opens was an encrypted message, opened
/// for bob under generation 1 within the nesting limit, and is no larger
/// than its input.
pub fn open(data: &[u8]) {
    let kgc = kgc();
    let message = as_message(data);
    let limits = limits();
    let open_capsule = |identity: &Identity, generation, capsule: &Capsule| {
        if generation != GENERATION {
            return Err(CapsuleError::UnknownGeneration(generation));
        }
        if *identity != kgc.bob {
            return Err(CapsuleError::Refused("not a local identity".into()));
        }
        kgc.bob_key
            .decapsulate(&kgc.params, capsule)
            .map_err(|_| CapsuleError::Rejected)
    };
    let locals = std::slice::from_ref(&kgc.bob);
    let result = ibemail_message::open(&message, locals, &limits, open_capsule);
    // Opening in the caller's buffer (decoded and decrypted in place) is
    // the same function.
    let owned = ibemail_message::open_owned(message.to_vec(), locals, &limits, open_capsule);
    assert_eq!(
        result.as_ref().map(|o| (&o.message, o.layers)),
        owned.as_ref().map(|o| (&o.message, o.layers)),
    );
    match result {
        Ok(opened) => {
            assert!(ibemail_message::is_encrypted(&message));
            assert_eq!(opened.recipient, kgc.bob);
            assert_eq!(opened.generation, GENERATION);
            assert!(opened.layers >= 1 && opened.layers <= limits.max_nesting);
            assert!(opened.message.len() < message.len());
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(
                !e.is_temporary(),
                "no temporary failure was injected: {e:?}"
            );
        }
    }
}

/// `cms_decode`: [`ibemail_message::inspect`] on the input as a message and
/// as DER, plus the public ASN.1 types (`ContentInfo`, `AuthEnvelopedData`,
/// `KemRecipientInfo`, `LargeOid`) decoded directly.
///
/// Checks: no panic; what decodes re-encodes to DER that decodes to the same
/// value; an inspected envelope's counts are consistent and within limits.
pub fn cms_decode(data: &[u8]) {
    let limits = limits();
    let section = HeaderSection::parse(data);
    assert!(section.body_offset <= data.len());
    let _ = ibemail_message::is_encrypted(data);

    inspect(data, &limits);
    inspect(&mime_wrap(data), &limits);
    if let Some(fixed) = fix_nonce(data) {
        inspect(&mime_wrap(&fixed), &limits);
    }

    if let Ok(ci) = ContentInfo::from_der(data) {
        let der = ci.to_der().expect("decoded ContentInfo encodes");
        assert_eq!(ContentInfo::from_der(&der).as_ref(), Ok(&ci));
        if let Ok(aed) = ci.content.decode_as::<AuthEnvelopedData>() {
            let der = aed.to_der().expect("decoded AuthEnvelopedData encodes");
            let again = AuthEnvelopedData::from_der(&der).expect("re-encoded AED decodes");
            assert_eq!(again.to_der().as_ref(), Ok(&der));
            for info in aed.recip_infos.0.iter() {
                if let RecipientInfo::Ori(ori) = info
                    && let Ok(kemri) = ori.ori_value.decode_as::<KemRecipientInfo>()
                {
                    check_kemri(&kemri);
                }
            }
        }
    }
    if let Ok(kemri) = KemRecipientInfo::from_der(data) {
        check_kemri(&kemri);
    }
    if let Ok(oid) = LargeOid::from_der(data) {
        let _ = oid.to_dotted();
        let der = oid.to_der().expect("decoded OID encodes");
        assert_eq!(LargeOid::from_der(&der).as_ref(), Ok(&oid));
    }
}

fn inspect(message: &[u8], limits: &Limits) {
    match ibemail_message::inspect(message, limits) {
        Ok(envelope) => {
            assert!(envelope.ibemail_recipients() >= 1);
            assert!(envelope.ibemail_recipients() <= envelope.recipient_infos());
            assert!(envelope.recipient_infos() <= limits.max_recipients);
            assert!(envelope.content_len() < message.len());
            let kgc = kgc();
            for candidate in envelope.candidates(std::slice::from_ref(&kgc.bob)) {
                assert_eq!(candidate.identity, kgc.bob);
                assert!(candidate.generation >= 1);
                let _ = candidate.capsule();
            }
            let _ = format!("{envelope:?}");
        }
        Err(OpenError::Limit(_) | OpenError::NotEncrypted | OpenError::NotOurs) => {}
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fn check_kemri(kemri: &KemRecipientInfo) {
    let _ = kemri.kem.algorithm.to_dotted();
    let der = kemri.to_der().expect("decoded KEMRecipientInfo encodes");
    assert_eq!(KemRecipientInfo::from_der(&der).as_ref(), Ok(kemri));
}

/// `signature`: the `IBE-Signature` parsing, From parsing and verification
/// of `ibemail_message::signature` on arbitrary messages never panic; a
/// message signed by its From address (when it has one the test KGC
/// serves) verifies, and the signature parses back with the right signer.
pub fn signature(data: &[u8]) {
    use ibemail_message::signature::{Algorithm, Unsigned, from_address, signatures};
    let kgc = kgc();
    let params = kgc.master.signing_params();
    for parsed in signatures(data).into_iter().flatten() {
        let _ = parsed.check_signer(data);
        let _ = parsed.verify(data, &params);
    }
    let Ok(from) = from_address(data) else {
        return;
    };
    // A message starting with white space begins with a continuation
    // line, which a field prepended on top would absorb; no MTA hands a
    // milter such a message.
    if from.domain() != kgc.bob.domain() || data.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return;
    }
    // Deterministic signing for reproducible runs.
    let key = kgc.master.extract_signing(&from, GENERATION);
    for sealed in [false, true] {
        let unsigned = if sealed {
            Unsigned::new_sealed(data, &from, GENERATION, Algorithm::ChaCheon)
        } else {
            Unsigned::new(data, &from, GENERATION, Algorithm::ChaCheon)
        };
        let signature = key.sign(unsigned.digest(), &mut ChaCha20Rng::seed_from_u64(5));
        let signed = unsigned.prepend(data, &signature.into()).unwrap();
        let first = signatures(&signed)
            .into_iter()
            .next()
            .expect("the field just prepended is found");
        let parsed = first.expect("the field just prepended parses");
        assert_eq!(parsed.identity, from);
        assert_eq!(parsed.sealed, sealed);
        if let Err(e) = parsed.verify(&signed, &params) {
            panic!("a freshly signed message does not verify: {e}");
        }
    }
}
