//! `ibemail-milter`: the Postfix milter of ibemail and its offline tools.
//!
//! Arguments and exit status only: the commands are in the library
//! (`ibemail_milter::cli`, `ibemail_milter::daemon`).

#![forbid(unsafe_code)]
// A command-line tool prints its results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ibemail_discovery::PinPolicy;
use ibemail_kgc::logging::LogFormat;
use ibemail_milter::cli::{
    DnsArgs, Failure, check_config, decrypt, doctor, encrypt, lookup, verify,
};
use ibemail_milter::daemon;
use ibemail_milter::offline::Exit;

#[derive(Parser)]
#[command(
    name = "ibemail-milter",
    version,
    about = "Identity-based e-mail encryption for Postfix: the milter and its offline tools",
    long_about = "ibemail-milter encrypts outbound mail for recipients whose domain publishes \
        ibemail parameters in DNS (_ibemailkey.<domain> TXT) and decrypts inbound mail with the \
        local KGC.\n\n\
        Offline tools:\n  \
        ibemail-milter lookup example.org\n  \
        ibemail-milter encrypt --resolver 127.0.0.1:53 --rcpt bob@example.org < in.eml > out.eml\n  \
        ibemail-milter decrypt --kgc-socket /run/ibemail/kgc.sock --rcpt bob@example.org < out.eml\n  \
        ibemail-milter verify --resolver 127.0.0.1:53 < signed.eml"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (the same as `run --config FILE`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration file (--config) and print what it means,
    /// then exit: 0 if it is valid, 1 if not (as `opendkim -n`).
    #[arg(long, global = true)]
    check_config: bool,
    /// Log lines on standard error: text (coloured only on a terminal,
    /// never with NO_COLOR set) or json (one object per line). Overrides
    /// the configuration's log.format.
    #[arg(
        long,
        global = true,
        env = "IBEMAIL_LOG_FORMAT",
        value_name = "text|json"
    )]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the milter for Postfix (the default command).
    ///
    /// SIGHUP reloads the configuration (the socket stays); SIGTERM stops
    /// taking connections and lets messages in progress finish.
    Run {
        /// Configuration file (sample: packaging/ibemail-milter.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what a sender would use for DOMAIN: generation, algorithm, TTL,
    /// DNSSEC status and pin status.
    ///
    /// Exit status: 0 parameters found, 1 the domain does not take ibemail
    /// mail, 3 parameters refused by policy, 75 temporary failure.
    Lookup {
        /// The recipient domain.
        domain: String,
        #[command(flatten)]
        dns: DnsArgs,
        /// Pin file (the milter's is state_dir/pins): pinned generations and
        /// the domains' published policies, read and updated. With --config
        /// and no --pins, the milter's pin file is read but never changed.
        #[arg(long, value_name = "FILE")]
        pins: Option<PathBuf>,
        /// Pinning policy: off, report, policy (honour the domain's published
        /// policy, as the milter does by default) or enforce. Default: policy
        /// with --pins, else the configuration's.
        #[arg(long, value_name = "off|report|policy|enforce")]
        pin: Option<PinPolicy>,
    },
    /// Check a live installation, as opendkim-testkey and postconf -n help
    /// to: Postfix's milter settings, the milter and KGC sockets, each local
    /// domain's published record against the KGC, DNSSEC, the pin file.
    ///
    /// One line per finding: "ok", "WARNING" or "ERROR", then what was found
    /// and, for problems, the fix. Run as root, the checks run as the
    /// milter's user (--user), since what matters is what the milter can
    /// reach. Exit status: 0 when nothing is an ERROR, 1 otherwise.
    Doctor {
        /// The milter's configuration.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/ibemail/ibemail-milter.toml"
        )]
        config: PathBuf,
        /// Postfix's configuration directory (as postconf -c).
        #[arg(short = 'c', long = "postfix-config", value_name = "DIR")]
        postfix_config: Option<PathBuf>,
        /// The user the milter runs as.
        #[arg(long, value_name = "USER", default_value = "ibemail")]
        user: String,
    },
    /// Encrypt one message (stdin) for its recipients (stdout).
    ///
    /// Parameters come from --record (a record's text, for every recipient),
    /// --record-file (raw records, or zone-file lines as `ibemail-kgc record`
    /// prints them), or DNS (--resolver). Exit status: 0 encrypted, 1
    /// failed, 75 temporary DNS failure.
    Encrypt {
        /// Recipient address (repeatable).
        #[arg(long = "rcpt", required = true, value_name = "ADDR")]
        rcpts: Vec<String>,
        /// The text of an _ibemailkey record.
        #[arg(long, group = "source", value_name = "TXT")]
        record: Vec<String>,
        /// A file of records.
        #[arg(long, group = "source", value_name = "FILE")]
        record_file: Option<PathBuf>,
        #[command(flatten)]
        dns: DnsArgs,
        /// Sign as the message's From address (inside and outside, as the
        /// milter does), with the key service named by --kgc-socket or
        /// --kgc-dir.
        #[arg(long)]
        sign: bool,
        /// The KGC daemon's socket (to sign).
        #[arg(long, value_name = "PATH", conflicts_with = "kgc_dir")]
        kgc_socket: Option<PathBuf>,
        /// The KGC key store, opened in this process (to sign).
        #[arg(long, value_name = "DIR")]
        kgc_dir: Option<PathBuf>,
    },
    /// Check the IBE-Signature fields of one message (stdin) against the
    /// signer domain's S= parameter in DNS, and that the signer is the
    /// From address; print the result as in Authentication-Results.
    ///
    /// An encrypted message shows its outer signature; decrypt it first to
    /// check the inner one. Exit status: 0 pass, 1 fail, no signature or
    /// not checkable, 75 temporary DNS failure.
    Verify {
        #[command(flatten)]
        dns: DnsArgs,
    },
    /// Decrypt one message (stdin) for a local recipient (stdout).
    ///
    /// On any failure: non-zero exit (75 when the KGC is unreachable, so a
    /// filter retries), one line on stderr, nothing on stdout.
    Decrypt {
        /// The local recipient (repeatable).
        #[arg(long = "rcpt", required = true, value_name = "ADDR")]
        rcpts: Vec<String>,
        /// The KGC key store, opened in this process.
        #[arg(long, group = "kgc", required = true, value_name = "DIR")]
        kgc_dir: Option<PathBuf>,
        /// The KGC daemon's socket.
        #[arg(long, group = "kgc", required = true, value_name = "PATH")]
        kgc_socket: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match (cli.command, cli.config) {
        (Some(command), None) => command,
        (None, Some(config)) => Command::Run { config },
        (Some(Command::Run { config }), Some(_)) => Command::Run { config },
        (Some(_), Some(_)) => {
            eprintln!("ibemail-milter: --config belongs to the run command");
            return ExitCode::from(Exit::Usage as u8);
        }
        (None, None) => {
            eprintln!(
                "ibemail-milter: give --config FILE to run the milter, or a command (see --help)"
            );
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    let result = match &command {
        Command::Run { config } if cli.check_config => check_config(config),
        _ if cli.check_config => Err(Failure(
            Exit::Usage,
            "--check-config goes with --config FILE (or run --config FILE)".into(),
        )),
        Command::Run { config } => daemon::run(config, cli.log_format).map_err(|e| match e {
            // A configuration mistake stays until someone fixes it: the
            // units do not restart on this status.
            daemon::RunError::Config(e) => Failure(Exit::Config, e),
            daemon::RunError::Failed(e) => Failure(Exit::Failed, e),
        }),
        Command::Lookup {
            domain,
            dns,
            pins,
            pin,
        } => lookup(domain, dns, pins.clone(), *pin),
        Command::Encrypt {
            rcpts,
            record,
            record_file,
            dns,
            sign,
            kgc_socket,
            kgc_dir,
        } => {
            let signer = sign.then_some((kgc_dir.as_ref(), kgc_socket.as_ref()));
            encrypt(rcpts, record, record_file.as_ref(), dns, signer)
        }
        Command::Verify { dns } => verify(dns),
        Command::Decrypt {
            rcpts,
            kgc_dir,
            kgc_socket,
        } => decrypt(rcpts, kgc_dir.as_ref(), kgc_socket.as_ref()),
        Command::Doctor {
            config,
            postfix_config,
            user,
        } => doctor(config, postfix_config.as_deref(), user),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(exit, message)) => {
            if !message.is_empty() {
                // One line: filters (procmail, Sieve) log stderr verbatim.
                eprintln!("ibemail-milter: {}", message.replace('\n', " "));
            }
            ExitCode::from(exit as u8)
        }
    }
}
