//! Domains' parameters from a table, for tests of the engine behind its
//! ports (no DNS server).

use std::collections::HashMap;
use std::time::Duration;

use ibemail_discovery::{
    DnssecStatus, DomainPolicy, Lookup, NotIbeReason, Outcome, PinStatus, RefusedReason,
};
use ibemail_milter::ports::{BoxFuture, Parameters};
use ibemail_params::{Record, RecordSet};

/// What each domain "publishes".
#[derive(Clone)]
pub(crate) enum Dns {
    Params(Box<Record>),
    None,
    Down,
    PolicyRequires,
}

/// Parameters from a table.
pub(crate) struct FakeDns(pub(crate) HashMap<String, Dns>);

impl FakeDns {
    fn answer(&self, domain: &str) -> Lookup {
        let outcome = match self.0.get(domain).cloned().unwrap_or(Dns::None) {
            Dns::Params(record) => Outcome::Parameters {
                published: RecordSet {
                    records: vec![(*record).clone()],
                    rejected: Vec::new(),
                    conflicting: Vec::new(),
                },
                record: *record,
            },
            Dns::None => Outcome::NotIbe(NotIbeReason::NxDomain),
            Dns::Down => Outcome::Temporary("no answer (timeout)".into()),
            Dns::PolicyRequires => Outcome::Refused(RefusedReason::PolicyRequires { until: 1 }),
        };
        Lookup {
            domain: domain.to_string(),
            outcome,
            dnssec: DnssecStatus::Unchecked,
            ttl: Duration::ZERO,
            cached: false,
            pin: PinStatus::NotChecked,
        }
    }
}

impl Parameters for FakeDns {
    fn lookup<'a>(&'a self, domain: &'a str, _: DomainPolicy, _: u64) -> BoxFuture<'a, Lookup> {
        Box::pin(std::future::ready(self.answer(domain)))
    }
    fn lookup_signer<'a>(
        &'a self,
        domain: &'a str,
        _: DomainPolicy,
        _: u64,
    ) -> BoxFuture<'a, Lookup> {
        Box::pin(std::future::ready(self.answer(domain)))
    }
    fn forget(&self, _: &str) -> bool {
        false
    }
}
