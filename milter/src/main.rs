//! `ibemail-milter`: the Postfix milter of ibemail and its offline tools.
//!
//! Process concerns only (arguments, runtime, exit status); the work is in
//! the library crates.

#![forbid(unsafe_code)]
// A command-line tool prints its results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use ibemail_discovery::{
    Discovery, DiscoveryConfig, DnssecPolicy, DomainPolicy, Outcome, PinPolicy, PinStore,
    TrustAnchor,
};
use ibemail_ibe::Identity;
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::service::KeyService;
use ibemail_message::{IbeRecipient, Limits, Recipient};
use ibemail_milter::offline::{Exit, RecordBook, lookup_exit, lookup_report};
use ibemail_milter::signing::{SigResult, verify_signatures};
use rand_core::OsRng;

mod daemon;

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
}

/// DNS options shared by the commands that look up parameters.
#[derive(Args, Clone)]
struct DnsArgs {
    /// Name server to ask, ADDR:PORT (repeatable; default 127.0.0.1:53).
    #[arg(long = "resolver", value_name = "ADDR:PORT")]
    resolvers: Vec<SocketAddr>,
    /// DNSSEC trust anchor file (DNSKEY lines); default: the root KSKs.
    #[arg(long, value_name = "FILE")]
    trust_anchor: Option<PathBuf>,
    /// DNSSEC policy: off, prefer (use secure and insecure answers) or
    /// require (use only secure answers).
    #[arg(long, default_value = "prefer")]
    dnssec: DnssecPolicy,
    /// Seconds to wait for one DNS answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

impl DnsArgs {
    fn discovery(&self, pins: Option<Arc<PinStore>>) -> Result<Discovery, String> {
        let mut config = DiscoveryConfig::default();
        if !self.resolvers.is_empty() {
            config.servers = self.resolvers.clone();
        }
        if let Some(path) = &self.trust_anchor {
            config.trust_anchor = TrustAnchor::File(path.clone());
        }
        config.timeout = Duration::from_secs(self.timeout);
        Discovery::new(config, pins).map_err(|e| e.to_string())
    }
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
        /// the domains' published policies. Read and updated.
        #[arg(long, value_name = "FILE")]
        pins: Option<PathBuf>,
        /// Pinning policy: off, report, policy (honour the domain's published
        /// policy, as the milter does by default) or enforce.
        #[arg(long, default_value = "policy")]
        pin: PinPolicy,
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

/// A failure: what to print and how to exit.
struct Failure(Exit, String);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(Exit::TempFail, format!("tokio runtime: {e}")))
}

fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| Failure(Exit::TempFail, format!("reading stdin: {e}")))?;
    Ok(input)
}

fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure(Exit::TempFail, format!("writing stdout: {e}")))
}

fn parse_identity(address: &str) -> Result<Identity, Failure> {
    Identity::parse(address).map_err(|e| Failure(Exit::Usage, format!("{address}: {e}")))
}

fn lookup(
    domain: &str,
    dns: &DnsArgs,
    pins: Option<PathBuf>,
    pin: PinPolicy,
) -> Result<(), Failure> {
    let pins = match (&pins, pin) {
        (Some(path), PinPolicy::Report | PinPolicy::Policy | PinPolicy::Enforce) => {
            Some(Arc::new(PinStore::open(path).map_err(|e| {
                Failure(Exit::Failed, format!("pin file {}: {e}", path.display()))
            })?))
        }
        _ => None,
    };
    let pin = if pins.is_some() { pin } else { PinPolicy::Off };
    let discovery = dns.discovery(pins).map_err(|e| Failure(Exit::Usage, e))?;
    let policy = DomainPolicy {
        dnssec: dns.dnssec,
        pin,
    };
    let result = runtime()?.block_on(discovery.lookup(domain, policy, now()));
    print!("{}", lookup_report(&result));
    match lookup_exit(&result) {
        Exit::Ok => Ok(()),
        exit => Err(Failure(exit, String::new())),
    }
}

fn encrypt(
    rcpts: &[String],
    record: &[String],
    record_file: Option<&PathBuf>,
    dns: &DnsArgs,
) -> Result<(), Failure> {
    let identities = rcpts
        .iter()
        .map(|r| parse_identity(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut book = RecordBook::default();
    for text in record {
        book.add_text(text);
    }
    if let Some(path) = record_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure(Exit::Failed, format!("{}: {e}", path.display())))?;
        book.add_file(&text)
            .map_err(|e| Failure(Exit::Failed, format!("{}: {e}", path.display())))?;
    }
    let message = read_stdin()?;
    let now = now();
    let mut recipients = Vec::with_capacity(identities.len());
    if book.is_empty() {
        let discovery = dns.discovery(None).map_err(|e| Failure(Exit::Usage, e))?;
        let rt = runtime()?;
        let policy = DomainPolicy {
            dnssec: dns.dnssec,
            pin: PinPolicy::Off,
        };
        for identity in identities {
            let found = rt.block_on(discovery.lookup(identity.domain(), policy, now));
            match found.outcome {
                Outcome::Parameters { record, .. } => recipients.push(IbeRecipient {
                    identity,
                    generation: record.generation,
                    params: record.params,
                }),
                Outcome::Temporary(_) => return Err(Failure(Exit::TempFail, found.summary())),
                Outcome::Refused(_) => return Err(Failure(Exit::Refused, found.summary())),
                Outcome::NotIbe(_) => return Err(Failure(Exit::Failed, found.summary())),
            }
        }
    } else {
        for identity in identities {
            let set = book.records_for(identity.domain());
            let Some(record) = set.select(now) else {
                let mut why = format!("no usable record for {}", identity.domain());
                for rejected in &set.rejected {
                    why.push_str(&format!("; {rejected}"));
                }
                return Err(Failure(Exit::Failed, why));
            };
            recipients.push(IbeRecipient {
                identity,
                generation: record.generation,
                params: record.params.clone(),
            });
        }
    }
    let dyn_recipients: Vec<&dyn Recipient> =
        recipients.iter().map(|r| r as &dyn Recipient).collect();
    let sealed =
        ibemail_message::seal_owned(message, &dyn_recipients, &mut OsRng, &Limits::default())
            .map_err(|e| Failure(Exit::Failed, e.to_string()))?;
    write_stdout(&sealed.to_bytes())
}

fn verify(dns: &DnsArgs) -> Result<(), Failure> {
    let message = read_stdin()?;
    let discovery = dns.discovery(None).map_err(|e| Failure(Exit::Usage, e))?;
    let policy = DomainPolicy {
        dnssec: dns.dnssec,
        pin: PinPolicy::Off,
    };
    let result = runtime()?.block_on(verify_signatures(
        &discovery,
        |_| policy,
        |_| {},
        &message,
        // A decrypted message (from `decrypt`) has its inner signature.
        true,
        now(),
    ));
    let layer = if ibemail_message::is_encrypted(&message) {
        "outside the encryption"
    } else {
        "this message"
    };
    write_stdout(format!("{}\n", result.resinfo(layer)).as_bytes())?;
    match result {
        SigResult::Pass { .. } => Ok(()),
        SigResult::TempError(_) => Err(Failure(Exit::TempFail, String::new())),
        _ => Err(Failure(Exit::Failed, String::new())),
    }
}

fn decrypt(
    rcpts: &[String],
    kgc_dir: Option<&PathBuf>,
    kgc_socket: Option<&PathBuf>,
) -> Result<(), Failure> {
    let identities = rcpts
        .iter()
        .map(|r| parse_identity(r))
        .collect::<Result<Vec<_>, _>>()?;
    let message = read_stdin()?;
    let limits = Limits::default();
    let opened = if let Some(dir) = kgc_dir {
        let service = KeyService::load(std::slice::from_ref(dir), 16)
            .map_err(|e| Failure(Exit::Failed, format!("{}: {e}", dir.display())))?;
        ibemail_message::open_owned(message, &identities, &limits, |id, generation, capsule| {
            service.open_capsule(id, generation, capsule)
        })
    } else if let Some(socket) = kgc_socket {
        let client = KgcClient::new(socket, Duration::from_secs(10));
        let rt = runtime()?;
        ibemail_message::open_owned(message, &identities, &limits, |id, generation, capsule| {
            rt.block_on(client.open(id, generation, capsule))
        })
    } else {
        return Err(Failure(
            Exit::Usage,
            "--kgc-dir or --kgc-socket is needed".into(),
        ));
    };
    match opened {
        Ok(opened) => write_stdout(&opened.message),
        Err(e) if e.is_temporary() => Err(Failure(Exit::TempFail, e.to_string())),
        Err(e) => Err(Failure(Exit::Failed, e.to_string())),
    }
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
        Command::Run { config } => daemon::run(config).map_err(|e| Failure(Exit::Failed, e)),
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
        } => encrypt(rcpts, record, record_file.as_ref(), dns),
        Command::Verify { dns } => verify(dns),
        Command::Decrypt {
            rcpts,
            kgc_dir,
            kgc_socket,
        } => decrypt(rcpts, kgc_dir.as_ref(), kgc_socket.as_ref()),
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
