//! Postfix's side: its milter settings (`postconf`, honouring `-c`), the
//! re-injection service, and the milter answering on its socket.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::config::Config;
use crate::engine::postfix_counts_fields_right;

use super::{Report, Severity};

/// `postconf` output as `name -> value`.
fn postconf(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("postconf");
    if let Some(dir) = dir {
        command.arg("-c").arg(dir);
    }
    let out = command
        .args(args)
        .output()
        .map_err(|e| format!("postconf: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "postconf {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once(" ="))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The milters named in a Postfix milter list (grouped `{ ... }` entries
/// included), normalised as [`postfix_name`] does.
pub(super) fn milters(list: &str, queue_directory: &str) -> Vec<String> {
    list.split([',', ' ', '\t', '{', '}'])
        .filter(|item| item.starts_with("inet:") || item.starts_with("unix:"))
        .map(|item| postfix_name(item, queue_directory))
        .collect()
}

/// A milter socket as Postfix or our configuration names it, normalised:
/// `inet:` without brackets and with `localhost` as 127.0.0.1; `unix:`
/// paths absolute (Postfix names them relative to its chroot, the queue
/// directory, where that is where they are).
pub(super) fn postfix_name(name: &str, queue_directory: &str) -> String {
    if let Some(address) = name.strip_prefix("inet:") {
        let address = address.replace(['[', ']'], "");
        return format!("inet:{}", address.replacen("localhost:", "127.0.0.1:", 1));
    }
    match name.strip_prefix("unix:") {
        Some(path) if !path.starts_with(queue_directory) => {
            format!(
                "unix:{}",
                Path::new(queue_directory)
                    .join(path.trim_start_matches('/'))
                    .display()
            )
        }
        _ => name.to_string(),
    }
}

pub(super) fn check_postfix(report: &mut Report, config: &Config, dir: Option<&Path>) {
    let names = [
        "smtpd_milters",
        "non_smtpd_milters",
        "milter_default_action",
        "milter_protocol",
        "milter_mail_macros",
        "milter_connect_macros",
        "milter_header_checks",
        "mail_version",
        "queue_directory",
    ];
    let values = match postconf(dir, &names) {
        Ok(text) => settings(&text),
        Err(e) => {
            report.error(
                "postfix",
                e,
                "install Postfix, or point -c at its configuration directory".into(),
            );
            return;
        }
    };
    let get = |name: &str| values.get(name).map_or("", String::as_str);
    let queue = get("queue_directory");
    let ours = postfix_name(&config.socket, queue);
    let shown = match config.socket.strip_prefix("unix:") {
        Some(path) => format!("unix:{}", path.strip_prefix(queue).unwrap_or(path)),
        None => config.socket.clone(),
    };
    let postconf_e = |setting: &str| match dir {
        Some(dir) => format!(
            "postconf -c {} -e '{setting}' && postfix reload",
            dir.display()
        ),
        None => format!("postconf -e '{setting}' && postfix reload"),
    };
    for (name, severity, consequence) in [
        (
            "smtpd_milters",
            Severity::Error,
            "mail received over SMTP is neither encrypted nor decrypted",
        ),
        (
            "non_smtpd_milters",
            Severity::Warning,
            "mail submitted on this host (sendmail) leaves unencrypted",
        ),
    ] {
        let list = get(name);
        if milters(list, queue).contains(&ours) {
            report.ok("postfix", format!("{name} names {shown}"));
        } else {
            let setting = if list.is_empty() {
                format!("{name} = {shown}")
            } else {
                format!("{name} = {list}, {shown}")
            };
            report.add(
                severity,
                "postfix",
                format!("{name} does not name {shown} ({consequence})"),
                Some(postconf_e(&setting)),
            );
        }
    }
    match get("milter_default_action") {
        "tempfail" => report.ok(
            "postfix",
            "milter_default_action = tempfail (mail waits while the milter is down)".into(),
        ),
        other => report.error(
            "postfix",
            format!(
                "milter_default_action = {other}: while the milter is down or fails, mail \
                 passes unprocessed (or is refused for good)"
            ),
            postconf_e("milter_default_action = tempfail"),
        ),
    }
    match get("milter_protocol").parse::<u32>() {
        Ok(v) if v >= 6 => report.ok("postfix", format!("milter_protocol = {v}")),
        _ => report.error(
            "postfix",
            format!(
                "milter_protocol = {}: the milter needs protocol 6",
                get("milter_protocol")
            ),
            postconf_e("milter_protocol = 6"),
        ),
    }
    let macros = get("milter_mail_macros");
    if macros.split_whitespace().any(|m| m == "{auth_authen}") {
        report.ok("postfix", "milter_mail_macros has {auth_authen}".into());
    } else {
        report.warn(
            "postfix",
            "milter_mail_macros lacks {auth_authen}: mail of users who authenticate from \
             outside internal_networks is treated as mail from outside (not encrypted)"
                .into(),
            postconf_e(&format!("milter_mail_macros = {macros} {{auth_authen}}")),
        );
    }
    check_header_edits(
        report,
        [
            get("mail_version"),
            get("milter_connect_macros"),
            get("milter_header_checks"),
        ],
        &postconf_e,
    );
    check_reinjection(report, config, dir, &ours, get("smtpd_milters"), queue);
}

/// What the milter's header edits rely on: a Postfix (its `mail_version`)
/// that counts fields as it shows them and tells its version
/// (`milter_connect_macros` with `v`), no `milter_header_checks` ignoring
/// restored fields.
pub(super) fn check_header_edits(
    report: &mut Report,
    [version, connect, checks]: [&str; 3],
    postconf_e: &dyn Fn(&str) -> String,
) {
    if postfix_counts_fields_right(&format!("Postfix {version}")) {
        report.ok(
            "postfix",
            format!("Postfix {version} counts header fields as it shows them to milters"),
        );
    } else {
        report.warn(
            "postfix",
            format!(
                "Postfix {version} counts header fields one off after an access table's \
                 PREPEND or a milter inserting at the top: such a field can survive \
                 decryption (header edits fall back to rewriting every field)"
            ),
            "upgrade Postfix to 3.9, 3.8.6, 3.7.11, 3.6.15 or 3.5.25 or later".into(),
        );
    }
    if !connect.split_whitespace().any(|m| m == "v") {
        report.warn(
            "postfix",
            "milter_connect_macros lacks v: the milter cannot tell Postfix's version and \
             rewrites every header field (slower)"
                .into(),
            postconf_e(&format!("milter_connect_macros = {connect} v")),
        );
    }
    if !checks.is_empty() {
        report.warn(
            "postfix",
            format!(
                "milter_header_checks = {checks}: a rule that IGNOREs a field ibemail \
                 restores on decryption (Subject, From, To, the MIME fields) leaves the \
                 value it had outside the encryption"
            ),
            "make sure no rule IGNOREs such fields, or remove milter_header_checks".into(),
        );
    }
}

/// The re-injection listener: a master.cf service on `reinject.address`,
/// without this milter, answering SMTP.
fn check_reinjection(
    report: &mut Report,
    config: &Config,
    dir: Option<&Path>,
    ours: &str,
    global_milters: &str,
    queue: &str,
) {
    let snippet = "/usr/share/doc/ibemail-milter/examples/postfix/master.cf.snippet";
    let Some(address) = config.reinject else {
        report.warn(
            "reinject",
            "no reinject.address: mail for both ibemail and other recipients is deferred".into(),
            format!("set [reinject] address and add the service of {snippet} to master.cf"),
        );
        return;
    };
    let services = postconf(dir, &["-M"]).unwrap_or_default();
    let names = [
        address.to_string(),
        format!("[{}]:{}", address.ip(), address.port()),
    ];
    let Some(service) = services.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let name = fields.next()?;
        (names.iter().any(|n| n == name) && fields.next() == Some("inet")).then_some(name)
    }) else {
        report.error(
            "reinject",
            format!(
                "master.cf has no inet service on {address}: mail with mixed recipients is deferred"
            ),
            format!("add the service of {snippet} to master.cf, then postfix reload"),
        );
        return;
    };
    let options = settings(&postconf(dir, &["-P"]).unwrap_or_default());
    let option = |name: &str| options.get(&format!("{service}/inet/{name}")).cloned();
    let effective = option("smtpd_milters").unwrap_or_else(|| global_milters.to_string());
    let daemon_name = option("milter_macro_daemon_name").unwrap_or_default();
    let watched = milters(&effective, queue).iter().any(|m| m == ours);
    let no_milters = option("receive_override_options")
        .is_some_and(|o| o.split(',').any(|v| v.trim() == "no_milters"));
    if !watched || no_milters {
        // Any local process can connect to the listener: without the
        // milter, mail sent there bypasses encryption.
        report.error(
            "reinject",
            format!(
                "the service on {address} runs without this milter: any local process could \
                 send mail through it in clear"
            ),
            format!(
                "give it -o smtpd_milters={ours} and -o milter_macro_daemon_name={} \
                 (without no_milters) as in {snippet}",
                config.reinject_daemon_name
            ),
        );
    } else if daemon_name != config.reinject_daemon_name {
        // The milter recognises its listener by {daemon_name}: otherwise
        // it takes its own copies for new mail and seals them again.
        report.error(
            "reinject",
            format!(
                "the service on {address} has milter_macro_daemon_name {daemon_name:?}, not \
                 the configured {:?}: the milter would not recognise its own copies",
                config.reinject_daemon_name
            ),
            format!(
                "give it -o milter_macro_daemon_name={} ({snippet})",
                config.reinject_daemon_name
            ),
        );
    } else {
        report.ok(
            "reinject",
            format!(
                "master.cf service {service} runs this milter as {daemon_name} (its own copies \
                 pass, anything else is handled as local mail)"
            ),
        );
    }
    match smtp_greeting(address) {
        Ok(line) if line.starts_with("220") => {
            report.ok("reinject", format!("{address} answers SMTP"));
        }
        Ok(line) => report.error(
            "reinject",
            format!("{address} answers {line:?}, not a 220 greeting"),
            "check the service's restrictions (mynetworks must include this host)".into(),
        ),
        Err(e) => report.error(
            "reinject",
            format!("nothing answers on {address}: {e}"),
            "postfix reload (after adding the service), or correct reinject.address".into(),
        ),
    }
}

fn smtp_greeting(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 && stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let _ = stream.write_all(b"QUIT\r\n");
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Connects to the milter and negotiates (SMFIC_OPTNEG, offering what
/// Postfix offers: protocol 6, every action and protocol step), which only a
/// milter answers.
pub(super) fn check_milter_socket(report: &mut Report, socket: &str) {
    // length 13, 'O', version 6, actions 0x1ff, protocol steps 0x1fffff.
    let negotiate: [u8; 17] = [
        0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0x01, 0xff, 0, 0x1f, 0xff, 0xff,
    ];
    let exchange = |stream: &mut dyn ReadWrite| -> Result<bool, String> {
        stream
            .write_all(&negotiate)
            .and_then(|()| {
                let mut answer = [0u8; 5];
                stream.read_exact(&mut answer).map(|()| answer[4] == b'O')
            })
            .map_err(|e| format!("it accepted the connection but did not negotiate: {e}"))
    };
    let connected: std::io::Result<Box<dyn ReadWrite>> = if let Some(address) =
        socket.strip_prefix("inet:")
    {
        address
            .parse::<SocketAddr>()
            .map_err(|_| std::io::Error::other("not ADDRESS:PORT"))
            .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)))
            .and_then(|s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                Ok(Box::new(s) as Box<dyn ReadWrite>)
            })
    } else {
        std::os::unix::net::UnixStream::connect(socket.trim_start_matches("unix:")).and_then(|s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            Ok(Box::new(s) as Box<dyn ReadWrite>)
        })
    };
    let result = connected
        .map_err(|e| format!("nothing answers: {e}"))
        .and_then(|mut stream| exchange(&mut *stream));
    match result {
        Ok(true) => report.ok("milter", format!("{socket} answers the milter protocol")),
        Ok(false) => report.error(
            "milter",
            format!("{socket} answers, but not as a milter"),
            "another program holds the socket: move it or the milter's socket".into(),
        ),
        Err(e) => report.error(
            "milter",
            format!("{socket}: {e}"),
            "start the milter (systemctl start ibemail-milter; journalctl -u ibemail-milter \
             says why it stopped)"
                .into(),
        ),
    }
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}
