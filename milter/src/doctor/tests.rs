//! The doctor's and the description's own logic.

#![allow(clippy::unwrap_used)]

use super::postfix::{milters, postfix_name};
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
