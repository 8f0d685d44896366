//! The doctor's and the description's own logic.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ibemail_ibe::{Capsule, CertifiedSignature, Generation, Identity, SharedSecret, Signature};
use ibemail_kgc::access::{BoxFuture, KeyAccess, KeyError};

use super::postfix::{check_header_edits, milters, postfix_name};
use super::*;

#[test]
fn postfix_milter_lists_are_normalised_before_comparing() {
    let q = "/var/spool/postfix";
    assert_eq!(
        milters(
            "inet:localhost:8891, { inet:[127.0.0.1]:8895, connect_timeout=10s } unix:/ibemail/milter.sock",
            q
        ),
        [
            "inet:127.0.0.1:8891",
            "inet:127.0.0.1:8895",
            "unix:/var/spool/postfix/ibemail/milter.sock"
        ]
    );
    assert_eq!(
        postfix_name("unix:/var/spool/postfix/ibemail/milter.sock", q),
        "unix:/var/spool/postfix/ibemail/milter.sock"
    );
}

#[test]
fn findings_are_one_line_with_their_fix() {
    let finding = Finding {
        severity: Severity::Error,
        subject: "postfix".into(),
        text: "milter_default_action = accept".into(),
        fix: Some("postconf -e 'milter_default_action = tempfail'".into()),
    };
    assert_eq!(
        finding.to_string(),
        "ERROR    postfix: milter_default_action = accept; fix: postconf -e 'milter_default_action = tempfail'"
    );
}

#[test]
fn header_edits_warn_of_old_postfix_missing_v_and_milter_header_checks() {
    let findings = |settings: [&str; 3]| {
        let mut report = Report::default();
        check_header_edits(&mut report, settings, &|s: &str| {
            format!("postconf -e '{s}'")
        });
        report
            .0
            .iter()
            .filter(|f| f.severity != Severity::Ok)
            .map(|f| f.text.split(':').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let good = ["3.7.11", "j {daemon_name} {daemon_addr} v _", ""];
    assert!(findings(good).is_empty(), "{:?}", findings(good));
    assert_eq!(
        findings(["3.6.4", good[1], good[2]]),
        [
            "Postfix 3.6.4 counts header fields one off after an access table's PREPEND or a milter inserting at the top"
        ]
    );
    assert_eq!(
        findings([good[0], "j {daemon_name}", good[2]]),
        ["milter_connect_macros lacks v"]
    );
    assert_eq!(
        findings([good[0], good[1], "pcre:/etc/postfix/milter_header_checks"]),
        ["milter_header_checks = pcre"]
    );
}

/// A KGC that opens but does not let this milter sign.
struct OpensOnly;

impl KeyAccess for OpensOnly {
    fn served(&self) -> BoxFuture<'_, Result<Vec<(String, Generation)>, KeyError>> {
        Box::pin(std::future::ready(Ok(vec![("a.test".to_string(), 1)])))
    }
    fn open<'a>(
        &'a self,
        _: &'a Identity,
        _: Generation,
        _: &'a Capsule,
    ) -> BoxFuture<'a, Result<SharedSecret, KeyError>> {
        Box::pin(std::future::ready(Err(KeyError::Rejected)))
    }
    fn sign<'a>(
        &'a self,
        _: &'a Identity,
        _: Generation,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<Signature, KeyError>> {
        Box::pin(std::future::ready(Err(KeyError::Forbidden(
            "uid 107 has no sign grant".into(),
        ))))
    }
    fn sign_certified<'a>(
        &'a self,
        _: &'a Identity,
        _: Generation,
        _: &'a [u8],
    ) -> BoxFuture<'a, Result<CertifiedSignature, KeyError>> {
        Box::pin(std::future::ready(Err(KeyError::Forbidden(
            "uid 107 has no sign grant".into(),
        ))))
    }
}

#[tokio::test]
async fn signing_without_a_sign_grant_is_an_error_with_its_fix() {
    let keys: Arc<dyn KeyAccess> = Arc::new(OpensOnly);
    let postmaster = Identity::parse("postmaster@a.test").unwrap();
    let mut report = Report::default();
    let certified = ibemail_message::signature::Algorithm::Certified;
    super::domains::check_sign_grant(&mut report, &keys, "a.test", &postmaster, 1, certified).await;
    let [finding] = &report.0[..] else {
        panic!("one finding expected")
    };
    assert_eq!(finding.severity, Severity::Error);
    assert!(
        finding.text.contains("does not let this milter sign"),
        "{finding}"
    );
    assert!(
        finding
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("--allow-sign"),
        "{finding}"
    );
}
