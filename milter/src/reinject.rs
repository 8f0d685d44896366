//! Re-injection of the plaintext copy for recipients that do not get
//! ciphertext: a minimal SMTP client speaking to a Postfix listener (see
//! `packaging/postfix/master.cf.snippet`).
//!
//! The copy counts as delivered only after the final `250` to the message
//! data; anything else is an error and the caller tempfails the original.
//!
//! The listener runs this milter too, under its own `{daemon_name}`
//! (`milter_macro_daemon_name = ibemail-reinject`): any local process can
//! connect to it, and mail it takes must not bypass the policy. A copy this
//! milter re-injects carries a one-time token in its first header field
//! ([`TOKEN_FIELD`]); the milter lets a message on that listener through
//! untouched only if it redeems an outstanding token, and treats anything
//! else there as mail submitted on this host (sealed, or deferred, as
//! policy says).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Envelope of the copy.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// `MAIL FROM` argument as received (`<addr>` or `<>`).
    pub sender: String,
    /// `RCPT TO` arguments as received.
    pub recipients: Vec<String>,
}

/// Longest reply line accepted from the server.
const MAX_LINE: usize = 4096;

/// The header field that carries a copy's one-time token.
pub const TOKEN_FIELD: &str = "IBE-Reinjected";

/// How long an issued token stays redeemable.
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// Tokens issued and not yet redeemed, process-wide (a reload keeps them).
fn tokens() -> std::sync::MutexGuard<'static, HashMap<String, Instant>> {
    static TOKENS: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    TOKENS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A new one-time token.
fn issue() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut tokens = tokens();
    tokens.retain(|_, issued| issued.elapsed() < TOKEN_LIFETIME);
    tokens.insert(token.clone(), Instant::now());
    token
}

/// True (once) if `value` is an outstanding token: a copy this process
/// re-injected.
pub fn redeem(value: &[u8]) -> bool {
    let Ok(token) = std::str::from_utf8(value) else {
        return false;
    };
    tokens()
        .remove(token.trim())
        .is_some_and(|issued| issued.elapsed() < TOKEN_LIFETIME)
}

/// Sends `message` (CRLF line endings) to `target`.
pub async fn send(
    target: SocketAddr,
    helo: &str,
    envelope: &Envelope,
    message: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let token = issue();
    let mut copy = format!("{TOKEN_FIELD}: {token}\r\n").into_bytes();
    copy.extend_from_slice(message);
    let result = tokio::time::timeout(timeout, transaction(target, helo, envelope, &copy))
        .await
        .map_err(|_| format!("{target}: no answer within {timeout:?}"))?;
    if result.is_err() {
        tokens().remove(&token);
    }
    result
}

async fn transaction(
    target: SocketAddr,
    helo: &str,
    envelope: &Envelope,
    message: &[u8],
) -> Result<(), String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("{target}: {e}"))?;
    // Commands and their replies alternate; the last piece of the body and
    // the final dot must not wait for an acknowledgement.
    let _ = stream.set_nodelay(true);
    let mut smtp = BufReader::new(stream);
    expect(&mut smtp, "greeting", 220).await?;
    command(&mut smtp, &format!("EHLO {helo}"), 250).await?;
    command(
        &mut smtp,
        &format!("MAIL FROM:{}", bracketed(&envelope.sender)),
        250,
    )
    .await?;
    for rcpt in &envelope.recipients {
        command(&mut smtp, &format!("RCPT TO:{}", bracketed(rcpt)), 250).await?;
    }
    command(&mut smtp, "DATA", 354).await?;
    let mut data = dot_stuff(message);
    data.extend_from_slice(b".\r\n");
    smtp.get_mut()
        .write_all(&data)
        .await
        .map_err(|e| format!("sending data: {e}"))?;
    expect(&mut smtp, "end of data", 250).await?;
    // The copy is accepted; a failing QUIT changes nothing.
    let _ = command(&mut smtp, "QUIT", 221).await;
    Ok(())
}

fn bracketed(address: &str) -> String {
    let a = address.trim();
    if a.starts_with('<') {
        a.to_string()
    } else {
        format!("<{a}>")
    }
}

/// CRLF line endings and leading dots doubled (RFC 5321 §4.5.2); a final
/// line ending is added if missing.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut at_line_start = true;
    let mut previous = 0u8;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        previous = b;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn command(smtp: &mut BufReader<TcpStream>, line: &str, expected: u16) -> Result<(), String> {
    smtp.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .map_err(|e| format!("sending {line}: {e}"))?;
    let what = line.split(':').next().unwrap_or(line);
    expect(smtp, what, expected).await
}

/// Reads a (possibly multi-line) reply and checks its code.
async fn expect(smtp: &mut BufReader<TcpStream>, what: &str, expected: u16) -> Result<(), String> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = (&mut *smtp)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| format!("reading reply to {what}: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed before the reply to {what}"));
        }
        text.push_str(line.trim_end());
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("malformed reply to {what}: {line:?}"))?;
        if line.as_bytes().get(3) == Some(&b'-') {
            text.push(' ');
            continue;
        }
        return if code == expected {
            Ok(())
        } else {
            Err(format!("{what}: {text}"))
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_are_redeemed_once() {
        let token = issue();
        assert!(!redeem(b"0123"));
        assert!(redeem(format!(" {token}").as_bytes()));
        assert!(!redeem(token.as_bytes()), "a token opens the door once");
    }

    #[test]
    fn dots_are_stuffed_and_lines_end_in_crlf() {
        assert_eq!(dot_stuff(b".a\r\nb\n.\r\n.."), b"..a\r\nb\r\n..\r\n...\r\n");
        assert_eq!(dot_stuff(b""), b"");
    }
}
