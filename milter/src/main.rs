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
use ibemail_kgc::accounts;
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::logging::LogFormat;
use ibemail_kgc::service::KeyService;
use ibemail_message::{IbeRecipient, Limits, Recipient};
use ibemail_milter::config::Config;
use ibemail_milter::doctor::{Severity, describe};
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

/// DNS options shared by the commands that look up parameters.
#[derive(Args, Clone)]
struct DnsArgs {
    /// Take the resolvers, trust anchor, timeouts and the domain's DNSSEC
    /// and pin policy from the milter's configuration file (the options
    /// below override them), so a lookup sees what the milter sees.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Name server to ask, ADDR:PORT (repeatable; default 127.0.0.1:53).
    #[arg(long = "resolver", value_name = "ADDR:PORT")]
    resolvers: Vec<SocketAddr>,
    /// DNSSEC trust anchor file (DNSKEY lines); default: the root KSKs.
    #[arg(long, value_name = "FILE")]
    trust_anchor: Option<PathBuf>,
    /// DNSSEC policy: off, prefer (use secure and insecure answers) or
    /// require (use only secure answers). Default: prefer.
    #[arg(long, value_name = "off|prefer|require")]
    dnssec: Option<DnssecPolicy>,
    /// Seconds to wait for one DNS answer. Default: 5.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
}

impl DnsArgs {
    /// The milter configuration named by `--config`, if any.
    fn milter_config(&self) -> Result<Option<Config>, Failure> {
        self.config
            .as_deref()
            .map(Config::load)
            .transpose()
            .map_err(|e| Failure(Exit::Usage, e))
    }

    fn discovery(
        &self,
        milter: Option<&Config>,
        pins: Option<Arc<PinStore>>,
    ) -> Result<Discovery, String> {
        let mut config = milter.map_or_else(DiscoveryConfig::default, Config::discovery_config);
        if !self.resolvers.is_empty() {
            config.servers = self.resolvers.clone();
        }
        if let Some(path) = &self.trust_anchor {
            config.trust_anchor = TrustAnchor::File(path.clone());
        }
        if let Some(seconds) = self.timeout {
            config.timeout = Duration::from_secs(seconds);
        }
        Discovery::new(config, pins).map_err(|e| e.to_string())
    }

    /// The lookup policy for `domain`: the configuration's, or no pinning
    /// and DNSSEC `prefer`; `--dnssec` overrides.
    fn policy(&self, milter: Option<&Config>, domain: &str) -> DomainPolicy {
        let mut policy = milter.map_or(
            DomainPolicy {
                dnssec: DnssecPolicy::Prefer,
                pin: PinPolicy::Off,
            },
            |c| c.policy_for(domain).lookup,
        );
        if let Some(dnssec) = self.dnssec {
            policy.dnssec = dnssec;
        }
        policy
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
    pin: Option<PinPolicy>,
) -> Result<(), Failure> {
    let milter = dns.milter_config()?;
    let mut policy = dns.policy(milter.as_ref(), domain);
    let pin_store = |path: &PathBuf, open: fn(&std::path::Path) -> std::io::Result<PinStore>| {
        open(path)
            .map(Arc::new)
            .map_err(|e| Failure(Exit::Failed, format!("pin file {}: {e}", path.display())))
    };
    let pins = match (&pins, milter.as_ref().and_then(|c| c.pins.as_ref())) {
        (Some(path), _) => {
            policy.pin = pin.unwrap_or(PinPolicy::Policy);
            Some(pin_store(path, PinStore::open)?)
        }
        (None, Some(path)) => {
            policy.pin = pin.unwrap_or(policy.pin);
            Some(pin_store(path, PinStore::snapshot)?)
        }
        (None, None) => {
            policy.pin = PinPolicy::Off;
            None
        }
    };
    if pins.is_none() || policy.pin == PinPolicy::Off {
        policy.pin = PinPolicy::Off;
    }
    let discovery = dns
        .discovery(milter.as_ref(), pins)
        .map_err(|e| Failure(Exit::Usage, e))?;
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
        let milter = dns.milter_config()?;
        let discovery = dns
            .discovery(milter.as_ref(), None)
            .map_err(|e| Failure(Exit::Usage, e))?;
        let rt = runtime()?;
        for identity in identities {
            let policy = DomainPolicy {
                pin: PinPolicy::Off,
                ..dns.policy(milter.as_ref(), identity.domain())
            };
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
    let milter = dns.milter_config()?;
    let discovery = dns
        .discovery(milter.as_ref(), None)
        .map_err(|e| Failure(Exit::Usage, e))?;
    let result = runtime()?.block_on(verify_signatures(
        &discovery,
        |domain| DomainPolicy {
            pin: PinPolicy::Off,
            ..dns.policy(milter.as_ref(), domain)
        },
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
        } => encrypt(rcpts, record, record_file.as_ref(), dns),
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

/// `--check-config`: parse, explain, exit.
fn check_config(path: &std::path::Path) -> Result<(), Failure> {
    let config = Config::load(path).map_err(|e| Failure(Exit::Failed, e))?;
    print!("{}", describe(&config));
    println!("{}: configuration OK", path.display());
    Ok(())
}

/// `doctor`: the setup check, run as the milter's user.
fn doctor(
    config: &std::path::Path,
    postfix: Option<&std::path::Path>,
    user: &str,
) -> Result<(), Failure> {
    if accounts::current_uid() == 0 {
        match accounts::by_name(user) {
            Some(account) => accounts::become_user(account.uid, account.gid)
                .map_err(|e| Failure(Exit::Failed, e))?,
            None => println!(
                "WARNING  doctor: no user {user:?}; checking as root, which may reach what the \
                 milter cannot; fix: --user USER (the milter's User= in its unit)"
            ),
        }
    }
    let findings = runtime()?.block_on(ibemail_milter::doctor::run(config, postfix));
    for finding in &findings {
        println!("{finding}");
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(Failure(Exit::Failed, String::new()));
    }
    Ok(())
}
