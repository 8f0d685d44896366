//! The offline commands of `ibemail-milter` (`lookup`, `encrypt`,
//! `verify`, `decrypt`, `doctor`, `--check-config`): what they do, with
//! their shared DNS options; `main.rs` only parses and dispatches.

#![allow(clippy::print_stdout)]

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use ibemail_discovery::{
    Discovery, DiscoveryConfig, DnssecPolicy, DomainPolicy, Outcome, PinPolicy, PinStore,
};
use ibemail_ibe::Identity;
use ibemail_kgc::accounts;
use ibemail_kgc::client::KgcClient;
use ibemail_kgc::clock::now;
use ibemail_kgc::service::KeyService;
use ibemail_message::signature::{Algorithm, MessageSignature};
use ibemail_message::{IbeRecipient, Limits, Recipient};
use rand_core::OsRng;

use crate::config::Config;
use crate::doctor::{Severity, describe};
use crate::offline::{Exit, RecordBook, lookup_exit, lookup_report};
use crate::ports::KeyAccess;
use crate::signing::{SigResult, verify_deferred};

/// DNS options of the commands that look up parameters: the shared
/// resolver options, and the milter's configuration to start from.
#[derive(Args, Clone)]
pub struct DnsArgs {
    /// Take the resolvers, trust anchor, timeouts and the domain's DNSSEC
    /// and pin policy from the milter's configuration file (the options
    /// below override them), so a lookup sees what the milter sees.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The resolver options (`--resolver`, `--trust-anchor`, `--dnssec`,
    /// `--timeout`), as `ibemail-kgc check` has them.
    #[command(flatten)]
    pub dns: ibemail_kgc::cli::ResolverArgs,
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
        let config = self
            .dns
            .apply(milter.map_or_else(DiscoveryConfig::default, Config::discovery_config));
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
        if let Some(dnssec) = self.dns.dnssec {
            policy.dnssec = dnssec;
        }
        policy
    }
}

/// A failure: what to print and how to exit.
pub struct Failure(pub Exit, pub String);

/// A runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
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

/// `lookup DOMAIN`: what a sender would use, and the exit status for it.
pub fn lookup(
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

/// The key service named by `--kgc-dir` or `--kgc-socket`.
fn key_access(
    kgc_dir: Option<&PathBuf>,
    kgc_socket: Option<&PathBuf>,
) -> Result<Arc<dyn KeyAccess>, Failure> {
    if let Some(dir) = kgc_dir {
        Ok(Arc::new(
            KeyService::load(std::slice::from_ref(dir), 16)
                .map_err(|e| Failure(Exit::Failed, format!("{}: {e}", dir.display())))?,
        ))
    } else if let Some(socket) = kgc_socket {
        Ok(Arc::new(KgcClient::new(socket, Duration::from_secs(10))))
    } else {
        Err(Failure(
            Exit::Usage,
            "--kgc-dir or --kgc-socket is needed".into(),
        ))
    }
}

/// A key service signing as one sender, for the message crate.
struct CliSigner<'a> {
    keys: Arc<dyn KeyAccess>,
    rt: &'a tokio::runtime::Runtime,
    identity: Identity,
    generation: ibemail_ibe::Generation,
    algorithm: Algorithm,
}

impl ibemail_message::MessageSigner for CliSigner<'_> {
    fn identity(&self) -> &Identity {
        &self.identity
    }
    fn generation(&self) -> ibemail_ibe::Generation {
        self.generation
    }
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    fn sign(&mut self, digest: &[u8; 32]) -> Result<MessageSignature, String> {
        self.rt
            .block_on(crate::signing::sign_digest(
                &*self.keys,
                self.algorithm,
                &self.identity,
                self.generation,
                digest,
            ))
            .map_err(|e| e.to_string())
    }
}

/// `encrypt`: seals stdin for the recipients, to stdout; with `sign`
/// (`--kgc-dir`, `--kgc-socket`), signed as its From address inside and
/// outside, as the milter does.
pub fn encrypt(
    rcpts: &[String],
    record: &[String],
    record_file: Option<&PathBuf>,
    dns: &DnsArgs,
    sign: Option<(Option<&PathBuf>, Option<&PathBuf>)>,
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
    let rt = runtime()?;
    let mut signer = match sign {
        None => None,
        Some((kgc_dir, kgc_socket)) => {
            let keys = key_access(kgc_dir, kgc_socket)?;
            let identity = ibemail_message::signature::from_address(&message)
                .map_err(|e| Failure(Exit::Failed, format!("cannot sign: {e}")))?;
            let generation = rt
                .block_on(keys.signing_generation(&identity))
                .map_err(|e| Failure(key_exit(&e), format!("cannot sign: {e}")))?;
            // As the milter signs: its configured algorithm, if a
            // configuration is given.
            let algorithm = dns
                .milter_config()?
                .map_or(Algorithm::Certified, |c| c.sign_algorithm);
            Some(CliSigner {
                keys,
                rt: &rt,
                identity,
                generation,
                algorithm,
            })
        }
    };
    let sealed = ibemail_message::seal_signed(
        message,
        &dyn_recipients,
        signer
            .as_mut()
            .map(|s| s as &mut dyn ibemail_message::MessageSigner),
        &mut OsRng,
        &Limits::default(),
    )
    .map_err(|e| Failure(Exit::Failed, e.to_string()))?;
    write_stdout(&sealed.to_bytes())
}

/// The exit status for a key service error: temporary trouble is 75.
fn key_exit(e: &crate::ports::KeyError) -> Exit {
    if e.is_temporary() {
        Exit::TempFail
    } else {
        Exit::Failed
    }
}

/// `verify`: checks the signatures of stdin.
pub fn verify(dns: &DnsArgs) -> Result<(), Failure> {
    let message = read_stdin()?;
    let milter = dns.milter_config()?;
    let discovery = dns
        .discovery(milter.as_ref(), None)
        .map_err(|e| Failure(Exit::Usage, e))?;
    let result = runtime()?.block_on(async {
        verify_deferred(
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
        )
        .await
        .settle()
        .await
    });
    let layer = if ibemail_message::is_cms_encrypted(&message) {
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

/// `decrypt`: opens stdin for local recipients, to stdout.
pub fn decrypt(
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
    let keys = key_access(kgc_dir, kgc_socket)?;
    let rt = runtime()?;
    let opened =
        ibemail_message::open_owned(message, &identities, &limits, |id, generation, capsule| {
            rt.block_on(keys.open(id, generation, capsule))
                .map_err(crate::engine::capsule_error)
        });
    match opened {
        Ok(opened) => write_stdout(&opened.message),
        Err(e) if e.is_temporary() => Err(Failure(Exit::TempFail, e.to_string())),
        Err(e) => Err(Failure(Exit::Failed, e.to_string())),
    }
}

/// `--check-config`: parse, explain, exit.
pub fn check_config(path: &std::path::Path) -> Result<(), Failure> {
    let config = Config::load(path).map_err(|e| Failure(Exit::Failed, e))?;
    print!("{}", describe(&config));
    println!("{}: configuration OK", path.display());
    Ok(())
}

/// `doctor`: the setup check, run as the milter's user.
pub fn doctor(
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
    let findings = runtime()?.block_on(crate::doctor::run(config, postfix));
    for finding in &findings {
        println!("{finding}");
    }
    if findings.iter().any(|f| f.severity == Severity::Error) {
        return Err(Failure(Exit::Failed, String::new()));
    }
    Ok(())
}
