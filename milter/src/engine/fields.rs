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
}
