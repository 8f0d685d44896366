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

/// Each field of `headers` with its occurrence among the fields of its name
/// (1-based, ASCII case-insensitive): how a milter's changes and
/// deletions name a field. Linear in the number of fields (a message may
/// carry very many).
fn numbered(headers: &[(String, Vec<u8>)]) -> impl Iterator<Item = (i32, &String, &Vec<u8>)> {
    let mut seen: std::collections::HashMap<String, i32> = std::collections::HashMap::new();
    headers.iter().map(move |(name, value)| {
        let index = seen.entry(name.to_ascii_lowercase()).or_insert(0);
        *index = index.saturating_add(1);
        (*index, name, value)
    })
}

/// Actions appending `fields`, in their order.
fn appended<'a>(
    fields: impl IntoIterator<Item = &'a (String, Vec<u8>)>,
) -> impl Iterator<Item = Action> {
    fields.into_iter().map(|(name, value)| Action::AddHeader {
        name: name.clone(),
        value: value.clone(),
    })
}

/// Actions deleting every field of `headers` (highest occurrence first, so
/// indices stay valid), optionally only those `select`ed.
pub(crate) fn delete_headers(
    headers: &[(String, Vec<u8>)],
    select: impl Fn(usize, &str, &[u8]) -> bool,
) -> Vec<Action> {
    let mut actions: Vec<Action> = numbered(headers)
        .enumerate()
        .filter(|(position, (_, name, value))| select(*position, name, value))
        .map(|(_, (index, name, _))| Action::DeleteHeader {
            name: name.clone(),
            index,
        })
        .collect();
    actions.reverse();
    actions
}

/// Actions that delete every field of `from` and append `to`: what
/// [`rewrite_headers`] does where in-place edits cannot be trusted.
pub(crate) fn replace_headers(from: &[(String, Vec<u8>)], to: &[(String, Vec<u8>)]) -> Vec<Action> {
    let mut actions = delete_headers(from, |_, _, _| true);
    actions.extend(appended(to));
    actions
}

/// Whether Postfix would take `value` in a change for an empty one: it
/// deletes the field then (and the milter drops NUL bytes on the way).
fn empty_for_postfix(value: &[u8]) -> bool {
    value.iter().all(|&b| b == 0)
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
/// A wanted field with an empty value is never reached by a change:
/// Postfix takes a change to an empty value for a deletion, after which
/// every later index of that name would be one off (so an outer field
/// meant to go would stay). Only name-and-occurrence changes, deletions
/// and appends are used: Postfix counts its own hidden `Received` field
/// for insert positions but not for these. Postfix counted occurrences
/// wrongly before 3.5.25, 3.6.15, 3.7.11 and 3.8.6 (when a field had been
/// prepended above its own Received): use [`replace_headers`] there
/// ([`postfix_counts_fields_right`]).
///
/// With `change` false a field is only kept or deleted, never changed:
/// sealing, where Postfix's `milter_header_checks` ignoring a change (it
/// keeps the old field then) would leave the real Subject outside.
pub(crate) fn rewrite_headers(
    from: &[(String, Vec<u8>)],
    to: &[(String, Vec<u8>)],
    change: bool,
) -> Vec<Action> {
    let mut changes = Vec::new();
    let mut deletions = Vec::new();
    let mut wanted = to.iter().peekable();
    for (index, name, value) in numbered(from) {
        match wanted.peek() {
            Some((want_name, want_value))
                if want_name == name
                    && (want_value == value || (change && !empty_for_postfix(want_value))) =>
            {
                if want_value != value {
                    changes.push(Action::ChangeHeader {
                        name: name.clone(),
                        index,
                        value: want_value.clone(),
                    });
                }
                wanted.next();
            }
            _ => deletions.push(Action::DeleteHeader {
                name: name.clone(),
                index,
            }),
        }
    }
    // The last occurrence first, so that the indices of those still to go
    // stay valid; changes before any deletion, for the same reason.
    deletions.reverse();
    changes.extend(deletions);
    changes.extend(appended(wanted));
    changes
}

/// Whether the MTA version `v` (the milter macro: `Postfix 3.7.11`,
/// `Postfix 3.10-20250101` for a snapshot) names a Postfix that addresses
/// a changed or deleted field by the occurrence its milters were shown.
/// Before the fix of 2023-12-13 (in 3.9, backported to 3.8.6, 3.7.11,
/// 3.6.15 and 3.5.25) Postfix skipped the first field of the header rather
/// than its own hidden Received field, so after a field was prepended
/// above that (an access table's PREPEND, a milter inserting at the top)
/// the indices were one off. Anything else, or no version: false.
pub(crate) fn postfix_counts_fields_right(v: &str) -> bool {
    let Some(version) = v.trim().strip_prefix("Postfix ") else {
        return false;
    };
    let (release, snapshot) = match version.split_once('-') {
        Some((release, date)) => (release, Some(date.parse::<u32>().unwrap_or(0))),
        None => (version, None),
    };
    let mut numbers = release.split('.').map(|n| n.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (numbers.next(), numbers.next()) else {
        return false;
    };
    let patch = match numbers.next() {
        None => None,
        Some(Some(patch)) => Some(patch),
        Some(None) => return false,
    };
    if let Some(date) = snapshot {
        // An experimental or pre-release snapshot: fixed from its date on.
        return (major, minor) >= (3, 9) && date >= 20231213;
    }
    let fixed_patch = match (major, minor) {
        (major, _) if major > 3 => return true,
        (3, minor) if minor >= 9 => return true,
        (3, 8) => 6,
        (3, 7) => 11,
        (3, 6) => 15,
        (3, 5) => 25,
        _ => return false,
    };
    patch.is_some_and(|patch| patch >= fixed_patch)
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

    /// Applies header actions as Postfix (3.9, or 3.7.11 and the other
    /// fixed releases) does to the fields it shows a milter: by name (ASCII
    /// case-insensitive) and occurrence; a change to an empty value
    /// deletes; a change of an occurrence that does not exist appends; a
    /// deletion of one does nothing; NUL bytes never arrive.
    fn postfix_applies(from: &[(String, Vec<u8>)], actions: &[Action]) -> Vec<(String, Vec<u8>)> {
        let mut header = from.to_vec();
        let position = |header: &[(String, Vec<u8>)], name: &str, index: i32| {
            header
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| n.eq_ignore_ascii_case(name))
                .nth(usize::try_from(index - 1).unwrap())
                .map(|(i, _)| i)
        };
        for action in actions {
            match action {
                Action::DeleteHeader { name, index } => {
                    if let Some(at) = position(&header, name, *index) {
                        header.remove(at);
                    }
                }
                Action::ChangeHeader { name, index, value } => {
                    let value = without_nul(value);
                    match position(&header, name, *index) {
                        Some(at) if value.is_empty() => {
                            header.remove(at);
                        }
                        Some(at) => header[at] = (name.clone(), value),
                        None if value.is_empty() => {}
                        None => header.push((name.clone(), value)),
                    }
                }
                Action::AddHeader { name, value } => {
                    header.push((name.clone(), without_nul(value)))
                }
                other => panic!("not a header action: {other:?}"),
            }
        }
        header
    }

    /// A value as it reaches Postfix: the milter drops NUL bytes.
    fn without_nul(value: &[u8]) -> Vec<u8> {
        value.iter().copied().filter(|&b| b != 0).collect()
    }

    /// `to` as Postfix stores it.
    fn as_stored(to: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        to.iter()
            .map(|(n, v)| (n.clone(), without_nul(v)))
            .collect()
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
        let actions = rewrite_headers(&outer, &inner, true);
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
        let actions = rewrite_headers(&from, &to, true);
        assert_eq!(postfix_applies(&from, &actions), to);
    }

    /// An empty inner Subject and a second outer Subject added on the way:
    /// changing the first to "" would delete it, and the deletion of the
    /// second would then find nothing (the attacker's Subject delivered).
    #[test]
    fn an_empty_wanted_value_is_appended_not_changed_to() {
        let from = fields(&[
            ("Subject", " [...]"),
            ("From", " a@a.test"),
            ("Subject", " Wire the money"),
        ]);
        for empty in ["", "\0"] {
            let to = fields(&[("Subject", empty), ("From", " a@a.test")]);
            let actions = rewrite_headers(&from, &to, true);
            assert_eq!(
                postfix_applies(&from, &actions),
                as_stored(&to),
                "{actions:#?}"
            );
        }
    }

    #[test]
    fn postfix_versions_that_count_fields_right() {
        for right in [
            "Postfix 3.7.11",
            "Postfix 3.7.20",
            "Postfix 3.8.6",
            "Postfix 3.6.15",
            "Postfix 3.5.25",
            "Postfix 3.9.0",
            "Postfix 3.10.1",
            "Postfix 4.0.0",
            "Postfix 3.9-20231213",
            "Postfix 3.10-20250101",
        ] {
            assert!(postfix_counts_fields_right(right), "{right}");
        }
        for wrong in [
            "Postfix 3.7.10",
            "Postfix 3.8.5",
            "Postfix 3.6.4",
            "Postfix 3.5.24",
            "Postfix 3.4.30",
            "Postfix 2.11.0",
            "Postfix 3.9-20231130",
            "Postfix 3.9-x",
            "Postfix 3.7",
            "Postfix 3.x.1",
            "Sendmail 8.18.1",
            "",
        ] {
            assert!(!postfix_counts_fields_right(wrong), "{wrong}");
        }
    }

    proptest::proptest! {
        /// Whatever the two headers, the result is exactly the wanted one
        /// (names, their case and order, values), in at most as many
        /// actions as deleting and re-adding everything.
        #[test]
        fn any_header_becomes_exactly_the_wanted_one(
            // Postfix never shows a milter a NUL byte: not the last value.
            from in proptest::collection::vec((0usize..5, 0usize..4), 0..12),
            to in proptest::collection::vec((0usize..5, 0usize..5), 0..12),
        ) {
            const NAMES: [&str; 5] = ["From", "from", "To", "Received", "Subject"];
            const VALUES: [&str; 5] = [" a", " b", " c\n\td", "", "\0"];
            let make = |list: &[(usize, usize)]| -> Vec<(String, Vec<u8>)> {
                list.iter()
                    .map(|&(n, v)| (NAMES[n].to_string(), VALUES[v].as_bytes().to_vec()))
                    .collect()
            };
            let (from, to) = (make(&from), make(&to));
            for change in [true, false] {
                let actions = rewrite_headers(&from, &to, change);
                proptest::prop_assert_eq!(postfix_applies(&from, &actions), as_stored(&to));
                proptest::prop_assert!(actions.len() <= from.len() + to.len());
                let changes = actions
                    .iter()
                    .filter(|a| matches!(a, Action::ChangeHeader { .. }))
                    .count();
                proptest::prop_assert!(change || changes == 0, "{} changes", changes);
            }
        }
    }
}
