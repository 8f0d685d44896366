//! Reading delivered mail in the end-to-end tests.

/// Bytes as text (lossy).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The values of the header fields called `name`, unfolded and trimmed.
pub fn field(mail: &str, name: &str) -> Vec<String> {
    let header = mail.split("\n\n").next().unwrap_or("");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in header.lines() {
        match (line.starts_with([' ', '\t']), fields.last_mut()) {
            (true, Some((_, value))) => {
                value.push(' ');
                value.push_str(line.trim());
            }
            _ => {
                if let Some((n, v)) = line.split_once(':') {
                    fields.push((n.to_string(), v.trim().to_string()));
                }
            }
        }
    }
    fields
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Delivered fields on top of the original may only be trace fields and
/// `extra`.
pub fn assert_only_added(added: &[String], extra: &[&str]) {
    for name in added {
        if extra.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            continue;
        }
        assert!(
            [
                "Return-Path",
                "X-Original-To",
                "Delivered-To",
                "Received",
                "Authentication-Results",
            ]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name)),
            "unexpected field {name} added on delivery: {added:?}"
        );
    }
}
