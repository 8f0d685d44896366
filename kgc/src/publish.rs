//! Publishing the records by DNS UPDATE (RFC 2136) signed with TSIG.
//!
//! One UPDATE message replaces the whole TXT RRset at `_ibemailkey.<domain>`
//! (delete the RRset, then add one TXT record per published generation), so
//! the primary applies it atomically: resolvers never see a half-published
//! rotation. It is sent over TCP; the response must carry a valid TSIG.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_net::proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_net::proto::rr::{DNSClass, Name, RData, Record as DnsRecord, RecordType, TSigner};
use ibemail_params::{Record, record_name};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tsig::TsigKey;

/// Allowed clock difference with the server (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct UpdateTarget {
    /// The primary name server of the zone.
    pub server: SocketAddr,
    /// The zone to update (e.g. `example.org`); `_ibemailkey.<domain>` must
    /// be inside it.
    pub zone: String,
    /// TTL of the published records.
    pub ttl: u32,
    /// Time allowed for connecting and for the answer.
    pub timeout: Duration,
}

/// Publishing failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A name or the records cannot be put in an update.
    #[error("{0}")]
    Invalid(String),
    /// The record name is not in the zone.
    #[error("{name} is not in zone {zone}; pass the zone that contains it with --zone")]
    NotInZone {
        /// `_ibemailkey.<domain>`.
        name: String,
        /// The zone given.
        zone: String,
    },
    /// Connecting or talking to the server failed.
    #[error("{server}: {source}")]
    Network {
        /// The server.
        server: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// No answer in time.
    #[error("{server}: no answer within {secs}s")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// The time waited.
        secs: u64,
    },
    /// The answer is not a valid response to our update.
    #[error("{server}: malformed response: {problem}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// The server rejected our TSIG signature.
    #[error("{server} refused the update: TSIG error {error} ({hint}); rcode {rcode}")]
    TsigRejected {
        /// The server.
        server: SocketAddr,
        /// The TSIG error code (BADSIG, BADKEY, BADTIME, ...).
        error: String,
        /// What it usually means.
        hint: &'static str,
        /// The response code.
        rcode: String,
    },
    /// The response's TSIG is missing or does not verify.
    #[error("{server}: the response is not authenticated: {problem}")]
    Unauthenticated {
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// The server answered with an error code.
    #[error("{server} refused the update: {rcode} ({hint})")]
    Rcode {
        /// The server.
        server: SocketAddr,
        /// The response code.
        rcode: String,
        /// What it usually means.
        hint: String,
        /// Whether trying again later may help.
        temporary: bool,
    },
}

impl PublishError {
    /// True if the same update may succeed later (network trouble, timeout,
    /// SERVFAIL), false if the configuration must change.
    pub fn is_temporary(&self) -> bool {
        match self {
            PublishError::Network { .. } | PublishError::Timeout { .. } => true,
            PublishError::Rcode { temporary, .. } => *temporary,
            _ => false,
        }
    }
}

fn fqdn(name: &str) -> Result<Name, PublishError> {
    let text = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|e| PublishError::Invalid(format!("name {text:?}: {e}")))
}

fn algorithm(key: &TsigKey) -> TsigAlgorithm {
    match key.algorithm() {
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => TsigAlgorithm::HmacSha256,
    }
}

/// Builds the unsigned UPDATE message replacing the TXT RRset at
/// `_ibemailkey.<domain>` in `zone` with `records`.
pub fn update_message(
    domain: &str,
    zone: &str,
    records: &[Record],
    ttl: u32,
) -> Result<Message, PublishError> {
    let owner = fqdn(&record_name(domain))?;
    let zone_name = fqdn(zone)?;
    if !zone_name.zone_of(&owner) {
        return Err(PublishError::NotInZone {
            name: owner.to_string(),
            zone: zone_name.to_string(),
        });
    }
    if records.is_empty() {
        return Err(PublishError::Invalid(
            "the store has no generation to publish".into(),
        ));
    }
    let mut message = Message::new(
        rand_core::RngCore::next_u32(&mut rand_core::OsRng) as u16,
        MessageType::Query,
        OpCode::Update,
    );
    let mut zone_query = Query::new();
    zone_query
        .set_name(zone_name)
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    message.add_zone(zone_query);
    // RFC 2136 §2.5.2: delete the RRset (class ANY, TTL 0, no rdata) ...
    let mut delete = DnsRecord::update0(owner.clone(), 0, RecordType::TXT);
    delete.dns_class = DNSClass::ANY;
    message.add_update(delete);
    // ... then add each record (§2.5.1), all in the same message.
    // A record longer than one character-string (a later generation with
    // its continuity signature) goes as several, which readers concatenate.
    for record in records {
        message.add_update(DnsRecord::from_rdata(
            owner.clone(),
            ttl,
            RData::TXT(TXT::new(record.to_strings())),
        ));
    }
    Ok(message)
}

/// The RFC mnemonic of a response code (`NOTAUTH`, not "Not authorized").
fn mnemonic(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

fn rcode_hint(rcode: ResponseCode, zone: &str) -> (String, bool) {
    match rcode {
        ResponseCode::Refused => (
            format!(
                "the server does not allow this key to update zone {zone}, or it is not the primary"
            ),
            false,
        ),
        ResponseCode::NotAuth => (
            format!("the server is not authoritative for zone {zone}, or did not accept the key"),
            false,
        ),
        ResponseCode::NotZone => (format!("the name is not in zone {zone}"), false),
        ResponseCode::ServFail => ("server failure; try again later".into(), true),
        ResponseCode::FormErr => ("the server could not parse the update".into(), false),
        ResponseCode::NotImp => ("the server does not support dynamic updates".into(), false),
        _ => ("see the server's log".into(), false),
    }
}

fn tsig_hint(error: &TsigError) -> (&'static str, &'static str) {
    match error {
        TsigError::BadSig => ("BADSIG", "wrong secret"),
        TsigError::BadKey => (
            "BADKEY",
            "the server does not know this key name and algorithm, or not for this zone",
        ),
        TsigError::BadTime => ("BADTIME", "the clocks of this host and the server differ"),
        TsigError::BadTrunc => ("BADTRUNC", "truncated MAC refused"),
        TsigError::Unknown(_) => ("unknown", "see the server's log"),
    }
}

/// Sends one TSIG-signed UPDATE replacing the TXT RRset of `domain` with
/// `records`, and checks the (signed) answer.
pub async fn publish(
    target: &UpdateTarget,
    key: &TsigKey,
    domain: &str,
    records: &[Record],
) -> Result<(), PublishError> {
    let server = target.server;
    let mut message = update_message(domain, &target.zone, records, target.ttl)?;
    let signer = TSigner::new(
        key.secret().to_vec(),
        algorithm(key),
        fqdn(key.name())?,
        FUDGE,
    )
    .map_err(|e| PublishError::Invalid(format!("TSIG key: {e}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verifier = message
        .finalize(&signer, now)
        .map_err(|e| PublishError::Invalid(format!("signing the update: {e}")))?;
    let request = message
        .to_vec()
        .map_err(|e| PublishError::Invalid(format!("encoding the update: {e}")))?;
    let length = u16::try_from(request.len())
        .map_err(|_| PublishError::Invalid("the update is too large".into()))?;

    let exchange = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(request.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&request);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    let bytes = tokio::time::timeout(target.timeout, exchange)
        .await
        .map_err(|_| PublishError::Timeout {
            server,
            secs: target.timeout.as_secs(),
        })?
        .map_err(|source| PublishError::Network { server, source })?;

    let response = Message::from_vec(&bytes).map_err(|e| PublishError::Malformed {
        server,
        problem: e.to_string(),
    })?;
    if response.metadata.id != message.metadata.id
        || response.metadata.message_type != MessageType::Response
    {
        return Err(PublishError::Malformed {
            server,
            problem: "not a response to our update".into(),
        });
    }
    let rcode = response.metadata.response_code;
    if let Some(tsig) = response.signature() {
        if let Some(error) = &tsig.data.error {
            let (error, hint) = tsig_hint(error);
            return Err(PublishError::TsigRejected {
                server,
                error: error.into(),
                hint,
                rcode: mnemonic(rcode),
            });
        }
        if let Some(mut verifier) = verifier {
            verifier
                .verify(&bytes)
                .map_err(|e| PublishError::Unauthenticated {
                    server,
                    problem: e.to_string(),
                })?;
        }
    } else if rcode == ResponseCode::NoError {
        return Err(PublishError::Unauthenticated {
            server,
            problem: "the server did not sign its answer".into(),
        });
    }
    // An unsigned error cannot be trusted, but it is all there is: report it.
    if rcode != ResponseCode::NoError {
        let (hint, temporary) = rcode_hint(rcode, &target.zone);
        return Err(PublishError::Rcode {
            server,
            rcode: mnemonic(rcode),
            hint,
            temporary,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ibemail_ibe::MasterKey;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    fn record(n: u32) -> Record {
        Record::new(
            n,
            MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(n.into())).public_params(),
        )
    }

    #[test]
    fn update_replaces_the_rrset_atomically() {
        let message = update_message("a.test", "a.test", &[record(2), record(1)], 600).unwrap();
        assert_eq!(message.metadata.op_code, OpCode::Update);
        assert_eq!(message.zones().len(), 1);
        assert_eq!(message.zones()[0].name().to_string(), "a.test.");
        let updates = message.updates();
        assert_eq!(updates.len(), 3);
        assert_eq!(updates[0].dns_class, DNSClass::ANY);
        assert_eq!(updates[0].data, RData::Update0(RecordType::TXT));
        for (update, n) in updates[1..].iter().zip([2, 1]) {
            assert_eq!(update.name.to_string(), "_ibemailkey.a.test.");
            assert_eq!(update.ttl, 600);
            let RData::TXT(txt) = &update.data else {
                panic!("not TXT")
            };
            assert_eq!(txt.txt_data.len(), 1);
            let text = std::str::from_utf8(&txt.txt_data[0]).unwrap();
            assert_eq!(Record::parse(text).unwrap(), record(n));
        }
    }

    #[test]
    fn the_name_must_be_in_the_zone() {
        assert!(matches!(
            update_message("a.test", "b.test", &[record(1)], 600),
            Err(PublishError::NotInZone { .. })
        ));
        assert!(update_message("mail.a.test", "a.test", &[record(1)], 600).is_ok());
        assert!(update_message("a.test", "a.test", &[], 600).is_err());
    }
}
