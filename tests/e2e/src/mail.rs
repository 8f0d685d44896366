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

/// A raw SMTP client from `client` to `server` on the world's runtime:
/// `commands` are sent one by one (each answered), then `DATA` and `data`.
/// Returns the transcript.
pub fn raw_smtp(
    rt: &tokio::runtime::Runtime,
    client: std::net::IpAddr,
    server: std::net::SocketAddr,
    commands: &[&[u8]],
    data: &[u8],
) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(client, 0))
            .expect("bind the client address");
        let stream = socket.connect(server).await.expect("connect");
        let mut smtp = BufReader::new(stream);
        let mut transcript = Vec::new();
        async fn reply(smtp: &mut BufReader<tokio::net::TcpStream>, transcript: &mut Vec<u8>) {
            loop {
                let mut line = Vec::new();
                if smtp.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                transcript.extend_from_slice(&line);
                if line.len() < 4 || line[3] != b'-' {
                    return;
                }
            }
        }
        reply(&mut smtp, &mut transcript).await;
        for command in commands {
            transcript.extend_from_slice(b"> ");
            transcript.extend_from_slice(command);
            transcript.push(b'\n');
            let mut line = command.to_vec();
            line.extend_from_slice(b"\r\n");
            smtp.get_mut().write_all(&line).await.expect("send");
            reply(&mut smtp, &mut transcript).await;
        }
        smtp.get_mut().write_all(b"DATA\r\n").await.expect("send");
        reply(&mut smtp, &mut transcript).await;
        let mut body = data.to_vec();
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        smtp.get_mut().write_all(&body).await.expect("send");
        reply(&mut smtp, &mut transcript).await;
        let _ = smtp.get_mut().write_all(b"QUIT\r\n").await;
        String::from_utf8_lossy(&transcript).into_owned()
    })
}
