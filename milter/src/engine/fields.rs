//! Header fields between the message crate's bytes and milter actions.

use ibemail_message::header::HeaderSection;

use super::verdict::Action;

/// Header field value as Postfix wants it from a milter: leading space
/// kept, folding with bare LF.
pub(crate) fn milter_value(raw_value: &[u8]) -> Vec<u8> {
    let value = raw_value
        .strip_suffix(b"\n")
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
        .unwrap_or(raw_value);
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

/// The header fields of `message` as (name, value) for milter actions, and
/// the body.
pub(crate) fn split_message(message: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let section = HeaderSection::parse(message);
    let fields = section
        .fields
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(f.name).into_owned(),
                milter_value(f.value()),
            )
        })
        .collect();
    (fields, &message[section.body_offset..])
}

/// Actions deleting every field of `headers` (highest occurrence first, so
/// indices stay valid), optionally only those `select`ed. Linear in the
/// number of fields (a message may carry very many).
pub(crate) fn delete_headers(
    headers: &[(String, Vec<u8>)],
    select: impl Fn(usize, &str, &[u8]) -> bool,
) -> Vec<Action> {
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let mut actions = Vec::new();
    for (position, (name, value)) in headers.iter().enumerate() {
        let index = seen.entry(name.to_ascii_lowercase()).or_insert(0);
        *index = index.saturating_add(1);
        if select(position, name, value) {
            actions.push(Action::DeleteHeader {
                name: name.clone(),
                index: *index,
            });
        }
    }
    actions.reverse();
    actions
}

/// Actions that turn the header `from` (as this milter was shown it) into
/// `to`, leaving in place what already matches. Each wanted field in turn is
/// the next field of `from` with exactly its name: kept if the value is the
/// same too, changed in place if not; the fields of `from` passed over on
/// the way are deleted. Once a wanted field has no such match, the fields
/// of `from` that remain are deleted and the wanted ones that remain
/// appended. So the result is `to`, in its order, with at most
/// `from.len() + to.len()` actions, and far fewer when `to` mostly keeps
/// the fields of `from` in their order (a sealed message's outer header
/// and its inner one): Postfix re-reads its queue file's header for every
/// change or deletion and links every new field in at the file's end.
///
/// Only name-and-occurrence changes, deletions and appends are used:
/// Postfix counts its own hidden `Received` field for insertions but not
/// for these, so they cannot land one field off.
pub(crate) fn rewrite_headers(from: &[(String, Vec<u8>)], to: &[(String, Vec<u8>)]) -> Vec<Action> {
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    let mut changes = Vec::new();
    let mut deletions = Vec::new();
    let mut wanted = to.iter().peekable();
    for (name, value) in from {
        let index = seen.entry(name.to_ascii_lowercase()).or_insert(0);
        *index = index.saturating_add(1);
        match wanted.peek() {
            Some((want_name, want_value)) if want_name == name => {
                if want_value != value {
                    changes.push(Action::ChangeHeader {
                        name: name.clone(),
                        index: *index,
                        value: want_value.clone(),
                    });
                }
                wanted.next();
            }
            _ => deletions.push(Action::DeleteHeader {
                name: name.clone(),
                index: *index,
            }),
        }
    }
    // The last occurrence first, so that the indices of those still to go
    // stay valid; changes before any deletion, for the same reason.
    deletions.reverse();
    changes.extend(deletions);
    changes.extend(wanted.map(|(name, value)| Action::AddHeader {
        name: name.clone(),
        value: value.clone(),
    }));
    changes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::engine::Message;

    #[test]
    fn messages_are_rebuilt_with_crlf_and_folding() {
        let m = Message {
            headers: vec![
                ("Subject".into(), b" a\n\tb".to_vec()),
                ("To".into(), b" x@y".to_vec()),
            ],
            body: b"hi\r\n".to_vec(),
            ..Message::default()
        };
        assert_eq!(m.to_bytes(), b"Subject: a\r\n\tb\r\nTo: x@y\r\n\r\nhi\r\n");
        let bytes = m.to_bytes();
        let (fields, body) = split_message(&bytes);
        assert_eq!(fields, m.headers);
        assert_eq!(body, b"hi\r\n");
    }

    #[test]
    fn deletions_go_from_the_last_occurrence() {
        let headers = vec![
            ("Received".to_string(), b" a".to_vec()),
            ("To".to_string(), b" b".to_vec()),
            ("received".to_string(), b" c".to_vec()),
        ];
        assert_eq!(
            delete_headers(&headers, |_, _, _| true),
            vec![
                Action::DeleteHeader {
                    name: "received".into(),
                    index: 2
                },
                Action::DeleteHeader {
                    name: "To".into(),
                    index: 1
                },
                Action::DeleteHeader {
                    name: "Received".into(),
                    index: 1
                },
            ]
        );
    }

    /// Applies header actions as Postfix does to the fields it shows a
    /// milter: by name (ASCII case-insensitive) and occurrence, appends
    /// at the end.
    fn postfix_applies(from: &[(String, Vec<u8>)], actions: &[Action]) -> Vec<(String, Vec<u8>)> {
        let mut header = from.to_vec();
        let position = |header: &[(String, Vec<u8>)], name: &str, index: i32| {
            header
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                .nth(usize::try_from(index - 1).unwrap())
                .map(|(i, _)| i)
                .unwrap()
        };
        for action in actions {
            match action {
                Action::DeleteHeader { name, index } => {
                    let at = position(&header, name, *index);
                    header.remove(at);
                }
                Action::ChangeHeader { name, index, value } => {
                    let at = position(&header, name, *index);
                    header[at] = (name.clone(), value.clone());
                }
                Action::AddHeader { name, value } => header.push((name.clone(), value.clone())),
                other => panic!("not a header action: {other:?}"),
            }
        }
        header
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn an_opened_header_keeps_the_outer_fields_it_shares() {
        let outer = fields(&[
            ("Received", " from mx.a.test"),
            ("IBE-Signature", " outer"),
            ("From", " a@a.test"),
            ("To", " b@b.test"),
            ("Subject", " [...]"),
            ("Date", " today"),
            ("Message-ID", " <1@a.test>"),
            ("MIME-Version", " 1.0"),
            ("Content-Type", " application/pkcs7-mime"),
            ("Content-Disposition", " attachment"),
            ("Content-Transfer-Encoding", " base64"),
        ]);
        let inner = fields(&[
            ("Received", " from mx.a.test"),
            ("IBE-Signature", " inner"),
            ("From", " a@a.test"),
            ("To", " b@b.test"),
            ("Subject", " Lunch?"),
            ("Date", " today"),
            ("Message-ID", " <1@a.test>"),
            ("X-Mailer", " x"),
        ]);
        let actions = rewrite_headers(&outer, &inner);
        assert_eq!(postfix_applies(&outer, &actions), inner);
        // Two changes and four deletions, then X-Mailer; deleting
        // everything and adding the inner header back took 19.
        assert_eq!(actions.len(), 7, "{actions:#?}");
        assert!(
            matches!(actions.last(), Some(Action::AddHeader { name, .. }) if name == "X-Mailer")
        );
    }

    #[test]
    fn changes_come_before_deletions_of_the_same_name() {
        let from = fields(&[("X", " a"), ("Y", " y"), ("x", " b")]);
        let to = fields(&[("Y", " y"), ("x", " c")]);
        let actions = rewrite_headers(&from, &to);
        assert_eq!(postfix_applies(&from, &actions), to);
    }

    proptest::proptest! {
        /// Whatever the two headers, the result is exactly the wanted one
        /// (names, their case and order, values), in at most as many
        /// actions as deleting and re-adding everything.
        #[test]
        fn any_header_becomes_exactly_the_wanted_one(
            from in proptest::collection::vec((0usize..5, 0usize..3), 0..12),
            to in proptest::collection::vec((0usize..5, 0usize..3), 0..12),
        ) {
            const NAMES: [&str; 5] = ["From", "from", "To", "Received", "Subject"];
            const VALUES: [&str; 3] = [" a", " b", " c\n\td"];
            let make = |list: &[(usize, usize)]| -> Vec<(String, Vec<u8>)> {
                list.iter()
                    .map(|&(n, v)| (NAMES[n].to_string(), VALUES[v].as_bytes().to_vec()))
                    .collect()
            };
            let (from, to) = (make(&from), make(&to));
            let actions = rewrite_headers(&from, &to);
            proptest::prop_assert_eq!(postfix_applies(&from, &actions), to.clone());
            proptest::prop_assert!(actions.len() <= from.len() + to.len());
        }
    }
}
