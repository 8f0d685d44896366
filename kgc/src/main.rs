//! `ibemail-kgc`: the key generation center of a mail domain.
//!
//! Process concerns only (arguments, logging, signals, sockets); the work is
//! in the library.

#![forbid(unsafe_code)]
// A command-line tool prints its results.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser, Subcommand};
use ibemail_discovery::{Discovery, DiscoveryConfig, DnssecPolicy, TrustAnchor};
use ibemail_ibe::Identity;
use ibemail_kgc::check::{CheckStatus, check};
use ibemail_kgc::client::Endpoint;
use ibemail_kgc::duration::parse_duration;
use ibemail_kgc::export::{
    Protection, Unlock, export, import, parse_recipients, read_identities, read_passphrase,
    write_new_file,
};
use ibemail_kgc::logging::{self, LogFormat};
use ibemail_kgc::publish::{UpdateTarget, publish};
use ibemail_kgc::replica::{ReplicaSync, Replication};
use ibemail_kgc::server::{Grant, ServerConfig, serve, serve_tls};
use ibemail_kgc::service::{KeyService, SigningSwitch};
use ibemail_kgc::store::{Retention, Role, State, Store, Wait};
use ibemail_kgc::tls::{Fingerprints, Pin, TlsIdentity, generate_certificate};
use ibemail_kgc::tsig::TsigKey;
use ibemail_kgc::upkeep::{Publication, Upkeep};
use ibemail_params::{Policy, record_name};
use rand_core::OsRng;
use rustls_pki_types::pem::PemObject as _;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "ibemail-kgc",
    version,
    about = "Key generation center for ibemail identity-based e-mail encryption",
    long_about = "Key generation center (KGC) for ibemail.\n\n\
        A KGC holds a domain's master key. Senders find its public parameters in DNS at \
        _ibemailkey.<domain>; the KGC derives each user's private key from the master key \
        when the milter needs to open a message. First steps, as root with the packages \
        installed (commands that change a store run as its owner, ibemail-kgc):\n\n  \
        ibemail-kgc setup --domain example.org --dir /var/lib/ibemail/kgc/example.org\n  \
        (publish the printed TXT record in the example.org zone)\n  \
        ibemail-kgc check --dir /var/lib/ibemail/kgc/example.org\n  \
        systemctl enable --now ibemail-kgc   (serve --dir /var/lib/ibemail/kgc)\n\n\
        Instead of editing the zone by hand, `ibemail-kgc publish` sends the records to the \
        zone's primary server as a TSIG-signed dynamic update. See ibemail-kgc(8)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on standard error: text (coloured only on a terminal,
    /// never with NO_COLOR set) or json (one object per line).
    #[arg(
        long,
        global = true,
        env = "IBEMAIL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// Exit status for temporary failures (sysexits EX_TEMPFAIL), as the milter.
const EXIT_TEMPFAIL: u8 = 75;

/// Exit status when `serve` cannot start (sysexits EX_CONFIG): the units
/// do not restart it (RestartPreventExitStatus), since a store with the
/// wrong owner or an unreadable TSIG key stays so until someone fixes it.
const EXIT_CONFIG: u8 = 78;

/// Where dynamic updates go (`publish`, and `serve --publish-server`).
#[derive(Args, Clone, Debug)]
struct UpdateArgs {
    /// The zone's primary name server, ADDR:PORT (e.g. 192.0.2.53:53). It
    /// must accept dynamic updates (RFC 2136) signed with the TSIG key.
    #[arg(long, value_name = "ADDR:PORT")]
    server: SocketAddr,
    /// The zone to update (default: the store's domain). _ibemailkey.<domain>
    /// must be inside it.
    #[arg(long, value_name = "ZONE")]
    zone: Option<String>,
    /// TSIG key file: BIND `tsig-keygen` output (key "name" { algorithm
    /// hmac-sha256; secret "..."; };), Knot `keymgr -t` output, or one
    /// `algorithm:name:secret` line. Must not be readable by group or others.
    #[arg(long, value_name = "FILE")]
    tsig_key: PathBuf,
    /// TTL of the published records, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u32,
    /// Seconds to wait for the server.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Automatic publication by the daemon.
#[derive(Args, Clone, Debug)]
struct ServePublishArgs {
    /// Publish each store's records to this primary name server (ADDR:PORT)
    /// at start and as soon as they change (rotation, withdrawal, SIGHUP);
    /// failures are logged and retried at the next maintenance tick.
    #[arg(long, value_name = "ADDR:PORT", requires = "publish_tsig_key")]
    publish_server: Option<SocketAddr>,
    /// The zone to update (default: each store's domain).
    #[arg(long, value_name = "ZONE", requires = "publish_server")]
    publish_zone: Option<String>,
    /// TSIG key file for the updates (formats as for `publish`).
    #[arg(long, value_name = "FILE", requires = "publish_server")]
    publish_tsig_key: Option<PathBuf>,
    /// TTL of the published records, in seconds.
    #[arg(long, default_value_t = 3600)]
    publish_ttl: u32,
}

/// The policy a new generation's record publishes.
#[derive(Args, Clone, Debug)]
struct PolicyArgs {
    /// How long senders that saw the record keep encrypting to the domain
    /// (deferring, never sending in clear, if the record disappears): the
    /// `p=require; ma=` policy, like MTA-STS `mode: enforce`. At most a year.
    #[arg(long, default_value = "7d", value_parser = parse_duration, value_name = "DURATION")]
    policy_max_age: u64,
    /// Publish no policy (senders then treat a missing record as "not an
    /// ibemail domain").
    #[arg(long)]
    no_policy: bool,
}

impl PolicyArgs {
    fn policy(&self) -> Option<Policy> {
        (!self.no_policy).then(|| Policy::require(self.policy_max_age))
    }
}

/// The daemon over the network: mutual TLS, and replication.
#[derive(Args, Clone, Debug)]
struct NetworkArgs {
    /// Also serve over mutual TLS on this ADDR:PORT (repeatable), for
    /// milters and replicas on other hosts. Needs --tls-cert, --tls-key and
    /// at least one --allow-cert.
    #[arg(long = "tls-listen", value_name = "ADDR:PORT", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Vec<SocketAddr>,
    /// This daemon's certificate (PEM), as `ibemail-kgc tls-cert` makes it;
    /// also what a replica presents to its primary.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM; must not be readable by group or others).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A TLS client allowed in (repeatable): the SHA-256 fingerprint of its
    /// certificate (sha256:HEX) or public key (spki-sha256:HEX), then what
    /// it may do: =open+sign (a milter; the default), =open, =sign, or
    /// =replica (a replica daemon, which copies the master keys; a
    /// primary's rotations wait until every replica serves the new
    /// generation).
    #[arg(long = "allow-cert", value_name = "PIN[=GRANT]")]
    allow_cert: Vec<String>,
    /// Make this daemon a replica of the primary at tls:HOST:PORT: its
    /// stores (imported with --role replica) follow the primary's, asked
    /// every --sync-interval. Needs --tls-cert/--tls-key (the primary
    /// allows them with --allow-cert PIN=replica) and --primary-cert.
    #[arg(long, value_name = "tls:HOST:PORT", requires_all = ["primary_cert", "tls_cert"])]
    replica_of: Option<String>,
    /// The primary's certificate fingerprint (repeatable; as for
    /// --allow-cert, without a grant).
    #[arg(long = "primary-cert", value_name = "PIN")]
    primary_cert: Vec<String>,
    /// How often a replica asks its primary for changes.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    sync_interval: u64,
}

/// How long a withdrawn generation's key must outlive its record.
#[derive(Args, Clone, Debug)]
struct RetentionArgs {
    /// The longest time senders keep mail queued (Postfix's
    /// maximal_queue_lifetime, 5 days by default).
    #[arg(long, default_value = "5d", value_parser = parse_duration, value_name = "DURATION")]
    queue_lifetime: u64,
}

impl RetentionArgs {
    fn retention(&self, ttl: u32) -> Retention {
        Retention {
            ttl: u64::from(ttl),
            queue_lifetime: self.queue_lifetime,
        }
    }
}

// Parsed once per run: boxing `serve`'s options would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create a key store with a new master key (generation 1) and print the
    /// DNS record to publish.
    Setup {
        /// The mail domain this KGC serves.
        #[arg(long)]
        domain: String,
        /// Directory for the key store (created 0700; must not exist or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// TTL of the printed zone-file line, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
        /// The first generation. A domain that lost its store starts above
        /// every generation it ever published: senders that pinned a
        /// higher one would take a lower one for a rollback.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        first_generation: u32,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Print the zone-file lines of every published generation.
    Record {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// TTL of the zone-file lines, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// Show the generations of the store and their states.
    Status {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a user's private key (base64), as the paper's `kgc -g`.
    ///
    /// Normally keys never leave the KGC: the milter asks `serve` to open
    /// messages. This is for inspection and offline recovery.
    Extract {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// The user's address.
        address: String,
        /// Generation (default: the active one).
        #[arg(long)]
        generation: Option<u32>,
    },
    /// Start a new generation, its record signed by the current one (so
    /// senders that pinned the domain accept it without DNSSEC). The
    /// previous one stays published during the overlap, then is withdrawn;
    /// its key is destroyed only once DNS is seen without it for the TTL
    /// plus the queue lifetime plus the policy max-age (see `retire`).
    Rotate {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// How long the previous generation stays published (e.g. 30d).
        /// Raised to the TTL + queue lifetime + policy max-age if shorter.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        overlap: u64,
        /// TTL of the records (and of the printed zone-file lines), in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Destroy the keys of withdrawn generations that DNS no longer
    /// publishes, once the retention floor has passed; say why the others
    /// wait.
    ///
    /// With --resolver, DNS is asked first what it publishes (the zone's
    /// primary is best); without it only what an earlier check saw counts,
    /// so a key is never destroyed on an assumption. `serve` with
    /// --watch-server (or --publish-server) does this by itself.
    Retire {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// Name server to ask what is published, ADDR:PORT.
        #[arg(long = "resolver", value_name = "ADDR:PORT")]
        resolver: Option<SocketAddr>,
        /// TTL of the published records, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Destroy this withdrawn or retiring generation's key now,
        /// whatever DNS says. Mail still sealed to it can then never be
        /// opened.
        #[arg(long, value_name = "GENERATION")]
        force: Option<u32>,
    },
    /// Check that DNS publishes exactly this store's records.
    ///
    /// Looks up _ibemailkey.<domain> as a sender would (validating DNSSEC
    /// unless --dnssec off) and reports, one line each: every generation the
    /// store publishes ("published, matches", "missing", or "MISMATCH" when
    /// the published X/Y or e= differ from the local key), generations
    /// published in DNS that the store does not have, and the DNSSEC status
    /// (secure, insecure, BOGUS). The last line is "record OK" or "record
    /// NOT OK: <reasons>".
    ///
    /// Exit status: 0 record OK; 1 something missing or different (or not
    /// secure under --dnssec require, or another error); 75 temporary DNS
    /// failure (timeout, SERVFAIL): try again.
    ///
    /// To ask the zone's primary directly, before secondaries and caches
    /// catch up, pass it with --resolver, e.g.
    /// `ibemail-kgc check --dir /var/lib/ibemail/kgc/example.org --resolver 192.0.2.53:53`.
    Check {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// Name server to ask, ADDR:PORT (repeatable; default 127.0.0.1:53,
        /// a local validating resolver). An authoritative server works too.
        #[arg(long = "resolver", value_name = "ADDR:PORT")]
        resolvers: Vec<SocketAddr>,
        /// DNSSEC trust anchor file (DNSKEY lines); default: the root
        /// KSKs.
        #[arg(long, value_name = "FILE")]
        trust_anchor: Option<PathBuf>,
        /// off: do not validate; prefer: validate and report; require: also
        /// fail unless the answer is secure.
        #[arg(long, default_value = "prefer", value_name = "off|prefer|require")]
        dnssec: DnssecPolicy,
        /// Seconds to wait for one DNS answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Publish this store's records in DNS by a TSIG-signed dynamic update.
    ///
    /// Sends one DNS UPDATE (RFC 2136) over TCP to the zone's primary server
    /// that replaces the whole TXT RRset at _ibemailkey.<domain> with one
    /// record per published generation (as `record` prints them), so the
    /// change is atomic. Other TXT records at that name are removed. The
    /// server must allow the key to update the zone, e.g. Knot:
    /// `acl: [{id: ibemail, key: ibemail-update, action: update}]`, BIND:
    /// `update-policy { grant ibemail-update name _ibemailkey.example.org. TXT; };`.
    /// A signed zone is re-signed by the server.
    ///
    /// Create the key with `tsig-keygen ibemail-update > FILE` (BIND) or
    /// `keymgr -t ibemail-update > FILE` (Knot), give it to the user that
    /// publishes (`chown ibemail-kgc: FILE; chmod 600 FILE`: the packaged
    /// daemon publishes as ibemail-kgc, and root may read it too), and add
    /// the same key to the name server's configuration.
    ///
    /// Exit status: 0 published; 1 refused (bad key, not allowed, wrong zone)
    /// or another error; 75 temporary failure (no connection, timeout,
    /// SERVFAIL). Run `ibemail-kgc check` afterwards.
    ///
    /// Example: `ibemail-kgc publish --dir /var/lib/ibemail/kgc/example.org --server
    /// 192.0.2.53:53 --tsig-key /etc/ibemail/update.key`
    Publish {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        update: UpdateArgs,
    },
    /// Run the key daemon: open capsules for the milter over a Unix socket.
    Serve {
        /// Key store(s), one per domain served; or a directory of key stores
        /// (every subdirectory that is one, as /var/lib/ibemail/kgc in the
        /// packages). A store added there is served after a restart.
        #[arg(long, required = true)]
        dir: Vec<PathBuf>,
        /// Unix socket to listen on (a stale one is replaced). Needed
        /// unless the daemon serves over TLS only (--tls-listen).
        #[arg(long, required_unless_present = "tls_listen")]
        socket: Option<PathBuf>,
        /// User id allowed to open capsules and to sign (repeatable): the
        /// milter's. Without any --allow-* option, this process's own uid.
        #[arg(long = "allow-uid", value_name = "UID")]
        allow_uid: Vec<u32>,
        /// User id allowed to open capsules only (repeatable), e.g. a
        /// delivery-time `ibemail-milter decrypt` filter, which must not be
        /// able to sign as the domain's users. UID:ADDRESS limits it to that
        /// address's mail (repeat for several): give each user's own filter
        /// only its own mail.
        #[arg(long = "allow-open", value_name = "UID[:ADDRESS]")]
        allow_open: Vec<String>,
        /// User id allowed to sign only (repeatable).
        #[arg(long = "allow-sign", value_name = "UID")]
        allow_sign: Vec<u32>,
        /// Permissions of the socket file (octal).
        #[arg(long, default_value = "660")]
        socket_mode: String,
        /// Derived signing keys kept in memory (opening needs none).
        #[arg(long, default_value_t = 10_000)]
        cache_size: usize,
        /// Rotate automatically when the active generation is this old (e.g. 90d).
        #[arg(long, value_parser = parse_duration)]
        rotate_every: Option<u64>,
        /// Overlap used by automatic rotations.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        overlap: u64,
        /// How often to check for rotation, watch DNS and retire.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        maintenance_interval: u64,
        /// Serve Prometheus metrics (key uses by outcome) over HTTP on this
        /// loopback ADDR:PORT.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<SocketAddr>,
        #[command(flatten)]
        publish: ServePublishArgs,
        /// Name server to watch for what is published, ADDR:PORT (default:
        /// --publish-server). Without one, withdrawn keys are never
        /// destroyed automatically and a new generation starts signing a day
        /// after its creation.
        #[arg(long, value_name = "ADDR:PORT")]
        watch_server: Option<SocketAddr>,
        #[command(flatten)]
        retention: RetentionArgs,
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Make a self-signed TLS certificate and key for `serve --tls-listen`,
    /// a replica or a milter, and print its fingerprints (what the other
    /// side pins with --allow-cert, --primary-cert or the milter's
    /// kgc.tls_server_fingerprints).
    TlsCert {
        /// Where to write the certificate (PEM; must not exist).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write the private key (PEM, created 0600; must not exist).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Name in the certificate (informative: peers pin the certificate,
        /// they do not check names).
        #[arg(long, default_value = "ibemail-kgc")]
        name: String,
        /// Validity in days (not checked by ibemail peers, which pin).
        #[arg(long, default_value_t = 36_500)]
        days: u32,
    },
    /// Print the fingerprints of a PEM certificate, as pins.
    TlsFingerprint {
        /// The certificate.
        cert: PathBuf,
    },
    /// Write a key store, encrypted with age, for another host or a backup.
    ///
    /// The output is an age file (to --recipient or to a passphrase) of a
    /// tar archive of the store's files with their modes; `ibemail-kgc
    /// import` (or `age -d`) reads it. It holds the master keys: anyone who
    /// can decrypt it can read the domain's mail.
    Export {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write (created 0600, never overwritten); default:
        /// standard output, unless it is a terminal.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Encrypt to this age recipient (age1..., from age-keygen;
        /// repeatable).
        #[arg(long = "recipient", short = 'r', value_name = "AGE1...")]
        recipients: Vec<String>,
        /// Encrypt to the recipients listed in this file, one per line.
        #[arg(long, short = 'R', value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Encrypt to the passphrase in this file (its first line; the
        /// file must be private to its owner).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["recipients", "recipients_file"])]
        passphrase_file: Option<PathBuf>,
    },
    /// Create a key store from an export; never overwrites anything.
    Import {
        /// Where the store goes (must not exist, or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// The export (default: standard input).
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// age identity file (AGE-SECRET-KEY-1..., private to its owner).
        #[arg(long, short, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The passphrase file (its first line), for a passphrase export.
        #[arg(long, value_name = "FILE", conflicts_with = "identity")]
        passphrase_file: Option<PathBuf>,
        /// What this copy is: `replica` (of a primary elsewhere: it never
        /// rotates), `primary` (the copy that rotates, with replicas), or
        /// `standalone` (no replicas: a restored backup, a moved KGC).
        #[arg(long, value_name = "ROLE")]
        role: Role,
    },
    /// Show or set the role of a key store in replication: standalone,
    /// primary or replica. Promote a replica when the primary is lost for
    /// good; make a standalone store primary before giving it replicas.
    Role {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// The new role.
        role: Option<Role>,
    },
    /// Release a primary's staged generation now, without waiting for the
    /// replicas (a replica that is gone for good): replicas that do not
    /// have it cannot open mail sealed to it.
    Release {
        /// The key store.
        #[arg(long)]
        dir: PathBuf,
        /// How long the previous generation stays published (e.g. 30d),
        /// raised to the TTL + queue lifetime + policy max-age.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        overlap: u64,
        /// TTL of the records, in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
        #[command(flatten)]
        retention: RetentionArgs,
    },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn print_records(store: &Store, ttl: u32) {
    for record in store.records_at(now()) {
        println!("{}", record.zone_line(store.domain(), ttl));
    }
}

fn describe(state: State, now: u64) -> String {
    match state {
        State::Pending { since } => format!(
            "staged {} ago, not published until every replica serves it",
            humanize(now.saturating_sub(since))
        ),
        State::Active => "active".into(),
        State::Retiring { until } if until == u64::MAX => "retiring (no retirement time)".into(),
        State::Retiring { until } if until > now => format!(
            "retiring, withdrawn from DNS in {}",
            humanize(until.saturating_sub(now))
        ),
        State::Retiring { until } => format!(
            "withdrawn {} ago, still opens mail",
            humanize(now.saturating_sub(until))
        ),
        State::Retired { at } => format!(
            "retired {} ago, key destroyed",
            humanize(now.saturating_sub(at))
        ),
    }
}

/// A resolver that asks `server` directly (authoritative, no recursion,
/// no validation) what it publishes.
fn watcher(server: SocketAddr) -> Result<Discovery> {
    Ok(Discovery::new(
        DiscoveryConfig {
            servers: vec![server],
            timeout: Duration::from_secs(2),
            attempts: 1,
            recursion_desired: false,
            ..DiscoveryConfig::default()
        },
        None,
    )?)
}

fn print_waits(domain: &str, outcome: &[(u32, Option<Wait>)]) {
    for (generation, wait) in outcome {
        match wait {
            None => eprintln!("{domain}: retired generation {generation}; its key was destroyed."),
            Some(wait) => eprintln!("{domain}: generation {generation}: {wait}"),
        }
    }
    if outcome.is_empty() {
        eprintln!("{domain}: nothing to retire.");
    }
}

/// Prints the pins of a certificate, one per line.
fn print_pins(fingerprints: &Fingerprints) {
    println!("{}", fingerprints.certificate_pin());
    if let Some(pin) = fingerprints.public_key_pin() {
        println!("{pin}");
    }
}

/// Writes a new file with `mode` (never replacing one).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn humanize(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}m {}s", s / 60, s % 60),
    }
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Setup {
            domain,
            dir,
            ttl,
            first_generation,
            policy,
        } => {
            as_store_owner(&dir)?;
            let store = Store::setup_at(
                &dir,
                &domain,
                first_generation,
                now(),
                policy.policy(),
                &mut OsRng,
            )?;
            eprintln!(
                "Created the key store of {} in {} (generation {first_generation}).\nPublish this record in the {} zone:",
                store.domain(),
                dir.display(),
                store.domain()
            );
            print_records(&store, ttl);
        }
        Command::Record { dir, ttl } => print_records(&Store::open(&dir)?, ttl),
        Command::Status { dir } => {
            let store = Store::open(&dir)?;
            println!("domain {}", store.domain());
            if store.role() != Role::Standalone {
                println!("role {}", store.role());
            }
            let now = now();
            for entry in store.generations() {
                let mut state = store
                    .state(entry.generation())
                    .map_or("unknown".into(), |s| describe(s, now));
                if let Some(since) = entry.absent_since() {
                    state.push_str(&format!(
                        "; absent from DNS for {}",
                        humanize(now.saturating_sub(since))
                    ));
                }
                if let Some(policy) = entry.policy() {
                    state.push_str(&format!(
                        "; policy require, max-age {}",
                        humanize(policy.max_age)
                    ));
                }
                println!("generation {:>4}  {state}", entry.generation());
            }
        }
        Command::Extract {
            dir,
            address,
            generation,
        } => {
            let store = Store::open(&dir)?;
            let identity =
                Identity::parse(&address).with_context(|| format!("address {address:?}"))?;
            let generation = match generation {
                Some(n) => n,
                None => store
                    .active_generation()
                    .context("the store has no active generation")?,
            };
            let key = store.extract(&identity, generation)?;
            println!("{}", STANDARD.encode(key.to_bytes().as_ref()));
        }
        Command::Rotate {
            dir,
            overlap,
            ttl,
            policy,
            retention,
        } => {
            as_store_owner(&dir)?;
            let mut store = Store::open(&dir)?;
            let policy = policy.policy();
            let floor = retention
                .retention(ttl)
                .floor(store_policy(&store).as_ref());
            if overlap < floor {
                eprintln!(
                    "The overlap is raised to {} (TTL + queue lifetime + policy max-age): \
                     senders may hold mail sealed to the old generation that long.",
                    humanize(floor)
                );
            }
            let generation = store.rotate(overlap.max(floor), now(), policy, &mut OsRng)?;
            if store.role() == Role::Primary {
                eprintln!(
                    "Generation {generation} is staged: the primary daemon (serve) publishes it \
                     once every replica serves it (see its log, and `ibemail-kgc status`). \
                     Until then generation {} stays active.",
                    generation - 1
                );
                return Ok(0);
            }
            eprintln!(
                "Generation {generation} is active, signed by generation {}. Publish these \
                 records (or run `ibemail-kgc publish`; a running `serve --publish-server` \
                 publishes them within seconds):",
                generation - 1
            );
            print_records(&store, ttl);
        }
        Command::Release {
            dir,
            overlap,
            ttl,
            retention,
        } => {
            as_store_owner(&dir)?;
            let mut store = Store::open(&dir)?;
            let Some(pending) = store.pending().first().map(|e| e.generation()) else {
                eprintln!(
                    "{}: no generation is staged; nothing to release.",
                    store.domain()
                );
                return Ok(1);
            };
            let floor = retention
                .retention(ttl)
                .floor(store_policy(&store).as_ref());
            let overlap = store.release(pending, overlap.max(floor), now())?;
            eprintln!(
                "Released generation {pending} without waiting for the replicas; the previous \
                 one retires in {}. A running primary daemon publishes it within seconds; \
                 replicas that do not have it yet cannot open mail sealed to it until they \
                 sync. Records:",
                humanize(overlap)
            );
            print_records(&store, ttl);
        }
        Command::Role { dir, role } => match role {
            None => println!("{}", Store::open(&dir)?.role()),
            Some(role) => {
                as_store_owner(&dir)?;
                let mut store = Store::open(&dir)?;
                let before = store.role();
                store.set_role(role)?;
                eprintln!(
                    "{}: {} was {before}, is {role} now. Restart the daemon that serves it.",
                    store.domain(),
                    dir.display()
                );
            }
        },
        Command::TlsCert {
            cert,
            key,
            name,
            days,
        } => {
            for path in [&cert, &key] {
                if path.exists() {
                    bail!("{} exists; not overwriting it", path.display());
                }
            }
            let made = generate_certificate(&name, days).map_err(anyhow::Error::msg)?;
            write_new(&key, made.key_pem.as_bytes(), 0o600)?;
            write_new(&cert, made.certificate_pem.as_bytes(), 0o644)?;
            eprintln!(
                "Wrote {} and its private key {} (0600; give it to the user that runs the \
                 daemon or milter, e.g. chown ibemail-kgc: {}). Its fingerprints (pin \
                 either):",
                cert.display(),
                key.display(),
                key.display()
            );
            print_pins(&made.fingerprints);
        }
        Command::TlsFingerprint { cert } => {
            let pem = std::fs::read(&cert).with_context(|| format!("{}", cert.display()))?;
            let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .next()
                .with_context(|| format!("{}: no PEM certificate in it", cert.display()))?
                .with_context(|| format!("{}", cert.display()))?;
            print_pins(&Fingerprints::of(&der));
        }
        Command::Export {
            dir,
            output,
            recipients,
            recipients_file,
            passphrase_file,
        } => {
            use std::io::{IsTerminal as _, Write as _};
            if output.is_none() && std::io::stdout().is_terminal() {
                bail!(
                    "the export is binary and holds the master keys: give --output FILE, or \
                     redirect standard output"
                );
            }
            let protection = match passphrase_file {
                Some(path) => {
                    Protection::Passphrase(read_passphrase(&path).map_err(anyhow::Error::msg)?)
                }
                None => {
                    let mut list = String::new();
                    for r in &recipients {
                        list.push_str(r);
                        list.push('\n');
                    }
                    if let Some(path) = &recipients_file {
                        list.push_str(
                            &std::fs::read_to_string(path)
                                .with_context(|| format!("{}", path.display()))?,
                        );
                    }
                    let parsed = parse_recipients(&list).map_err(anyhow::Error::msg)?;
                    if parsed.is_empty() {
                        bail!(
                            "say whom to encrypt to: --recipient age1... (age-keygen makes \
                             one), --recipients-file FILE or --passphrase-file FILE"
                        );
                    }
                    Protection::Recipients(parsed)
                }
            };
            let store = Store::open(&dir)?;
            let bytes = export(&dir, protection)?;
            match &output {
                Some(path) => write_new_file(path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)?;
                    out.flush()?;
                }
            }
            eprintln!(
                "Exported {}'s key store ({} generation(s) with keys, role {}){}.",
                store.domain(),
                store.with_keys().len(),
                store.role(),
                output
                    .as_ref()
                    .map(|p| format!(" to {}", p.display()))
                    .unwrap_or_default()
            );
        }
        Command::Import {
            dir,
            input,
            identity,
            passphrase_file,
            role,
        } => {
            use std::io::Read as _;
            as_store_owner(&dir)?;
            let unlock = match (identity, passphrase_file) {
                (Some(path), None) => read_identities(&path).map_err(anyhow::Error::msg)?,
                (None, Some(path)) => {
                    Unlock::Passphrase(read_passphrase(&path).map_err(anyhow::Error::msg)?)
                }
                _ => bail!("give --identity FILE (age) or --passphrase-file FILE"),
            };
            let mut bytes = Vec::new();
            match &input {
                Some(path) => {
                    bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
                }
                None => {
                    std::io::stdin().lock().read_to_end(&mut bytes)?;
                }
            }
            let store = import(&dir, &bytes, &unlock, role)?;
            eprintln!(
                "Imported {}'s key store into {} as {}: generation(s) {:?} with keys{}.",
                store.domain(),
                dir.display(),
                store.role(),
                store.with_keys(),
                match role {
                    Role::Replica => {
                        "; serve it with --replica-of the primary (it never rotates by itself)"
                    }
                    Role::Primary =>
                        "; it rotates for its replicas (serve --allow-cert PIN=replica)",
                    Role::Standalone => "",
                }
            );
        }
        Command::Retire {
            dir,
            resolver,
            ttl,
            retention,
            force,
        } => {
            as_store_owner(&dir)?;
            let mut store = Store::open(&dir)?;
            let now = now();
            if let Some(generation) = force {
                store.force_retire(generation, now)?;
                eprintln!("Retired generation {generation} on request; its key was destroyed.");
                return Ok(0);
            }
            if let Some(server) = resolver {
                let runtime = tokio::runtime::Runtime::new()?;
                let published = runtime.block_on(async {
                    watcher(server)?
                        .published(store.domain())
                        .await
                        .map_err(anyhow::Error::msg)
                });
                match published {
                    Ok(set) => {
                        let generations: Vec<u32> = set
                            .map(|s| s.records.iter().map(|r| r.generation).collect())
                            .unwrap_or_default();
                        store.note_published(&generations, now)?;
                    }
                    Err(e) => {
                        eprintln!("ibemail-kgc: cannot see what {server} publishes: {e}");
                        return Ok(EXIT_TEMPFAIL);
                    }
                }
            }
            let outcome = store.retire_due(now, &retention.retention(ttl))?;
            print_waits(store.domain(), &outcome);
        }
        Command::Check {
            dir,
            resolvers,
            trust_anchor,
            dnssec,
            timeout,
        } => {
            let store = Store::open(&dir)?;
            let mut config = DiscoveryConfig::default();
            if !resolvers.is_empty() {
                config.servers = resolvers;
            }
            if let Some(path) = trust_anchor {
                config.trust_anchor = TrustAnchor::File(path);
            }
            config.timeout = Duration::from_secs(timeout.max(1));
            let servers = config
                .servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "{}: asking {servers} (DNSSEC {})",
                record_name(store.domain()),
                match dnssec {
                    DnssecPolicy::Off => "off",
                    DnssecPolicy::Prefer => "prefer",
                    DnssecPolicy::Require => "require",
                }
            );
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(async {
                let discovery = Discovery::new(config, None)?;
                anyhow::Ok(check(&store, &discovery, dnssec, now()).await)
            })?;
            for line in &report.lines {
                println!("{line}");
            }
            return Ok(match report.status {
                CheckStatus::Ok => 0,
                CheckStatus::Problem => 1,
                CheckStatus::Temporary => EXIT_TEMPFAIL,
            });
        }
        Command::Publish { dir, update } => {
            let store = Store::open(&dir)?;
            let key = TsigKey::load(&update.tsig_key)?;
            let target = UpdateTarget {
                server: update.server,
                zone: update
                    .zone
                    .clone()
                    .unwrap_or_else(|| store.domain().to_string()),
                ttl: update.ttl,
                timeout: Duration::from_secs(update.timeout.max(1)),
            };
            let records = store.records();
            let runtime = tokio::runtime::Runtime::new()?;
            if let Err(e) = runtime.block_on(publish(&target, &key, store.domain(), &records)) {
                eprintln!("ibemail-kgc: publishing failed: {e}");
                return Ok(if e.is_temporary() { EXIT_TEMPFAIL } else { 1 });
            }
            eprintln!(
                "Published {} record(s) at {} in zone {} on {} (TSIG key {}):",
                records.len(),
                record_name(store.domain()),
                target.zone,
                target.server,
                key.name()
            );
            print_records(&store, update.ttl);
        }
        Command::Serve {
            dir,
            socket,
            allow_uid,
            allow_open,
            allow_sign,
            socket_mode,
            cache_size,
            rotate_every,
            overlap,
            maintenance_interval,
            metrics,
            publish,
            watch_server,
            retention,
            network,
        } => {
            let mode =
                u32::from_str_radix(&socket_mode, 8).context("--socket-mode must be octal")?;
            let dir = match dir
                .iter()
                .map(|d| Store::find(d))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(found) => found.concat(),
                Err(e) => return startup_failure(e.into()),
            };
            let mut config = ServerConfig::default();
            if !(allow_uid.is_empty() && allow_open.is_empty() && allow_sign.is_empty()) {
                config.grants.clear();
                for uid in allow_uid {
                    config.grants.insert(uid, Grant::all());
                }
                for grant in allow_open {
                    let (uid, address) = match grant.split_once(':') {
                        Some((uid, address)) => (uid, Some(address)),
                        None => (grant.as_str(), None),
                    };
                    let uid: u32 = uid
                        .parse()
                        .with_context(|| format!("--allow-open {grant}: not UID[:ADDRESS]"))?;
                    let entry = config.grants.entry(uid).or_default();
                    entry.open = true;
                    if let Some(address) = address {
                        let identity = Identity::parse(address)
                            .with_context(|| format!("--allow-open {grant}"))?;
                        entry.open_as.insert(identity.as_str().to_string());
                    }
                }
                for uid in allow_sign {
                    config.grants.entry(uid).or_default().sign = true;
                }
            }
            let network = match Network::configure(&network, &dir, &mut config) {
                Ok(network) => network,
                Err(e) => return startup_failure(e),
            };
            let stores = match dir
                .iter()
                .map(|d| Store::open(d))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(stores) => stores,
                Err(e) => return startup_failure(e.into()),
            };
            if let Some(replica) = stores.iter().find(|s| s.role() == Role::Replica) {
                let refuse = |what: &str| {
                    startup_failure(anyhow::anyhow!(
                        "{}: {} is a replica; only the primary {what} (serve the primary with \
                         it, or make this copy the primary: ibemail-kgc role --dir {} primary)",
                        replica.domain(),
                        replica.dir().display(),
                        replica.dir().display()
                    ))
                };
                if rotate_every.is_some() {
                    return refuse("rotates (--rotate-every)");
                }
                if publish.publish_server.is_some() {
                    return refuse("publishes (--publish-server)");
                }
            }
            let publication = match (publish.publish_server, publish.publish_tsig_key) {
                (Some(server), Some(key)) => Some(Publication {
                    server,
                    zone: publish.publish_zone,
                    ttl: publish.publish_ttl,
                    key: match TsigKey::load(&key) {
                        Ok(key) => key,
                        Err(e) => return startup_failure(e.into()),
                    },
                }),
                _ => None,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let watch = watch_server.or(publish.publish_server);
            let mut upkeep = Upkeep::new(retention.retention(publish.publish_ttl));
            upkeep.rotate_every = rotate_every;
            upkeep.overlap = overlap;
            upkeep.publication = publication;
            upkeep.replication = config.replication.clone();
            let service = KeyService::load(&dir, cache_size)
                .map_err(StartupFailure::from)?
                .with_signing_switch(SigningSwitch {
                    ttl: u64::from(publish.publish_ttl),
                    ..SigningSwitch::default()
                });
            runtime.block_on(async {
                upkeep.watch = watch.map(watcher).transpose()?;
                daemon(
                    service,
                    socket.as_deref(),
                    mode,
                    config,
                    network,
                    metrics,
                    upkeep,
                    Duration::from_secs(maintenance_interval.max(1)),
                )
                .await
            })?;
        }
    }
    Ok(0)
}

/// The daemon's network side, as configured: TLS listeners and the link
/// to a primary.
struct Network {
    tls: Option<(Vec<SocketAddr>, Arc<rustls::ServerConfig>)>,
    replica: Option<(ReplicaSync, Duration)>,
}

impl Network {
    /// Checks the network options against the stores (their roles) and
    /// sets the certificate grants and the replication tracker in
    /// `config`.
    fn configure(
        args: &NetworkArgs,
        dirs: &[PathBuf],
        config: &mut ServerConfig,
    ) -> Result<Network> {
        for text in &args.allow_cert {
            let (pin, grant) = match text.split_once('=') {
                Some((pin, grant)) => (pin, Grant::parse(grant).map_err(anyhow::Error::msg)),
                None => (text.as_str(), Ok(Grant::all())),
            };
            let grant = grant.with_context(|| format!("--allow-cert {text}"))?;
            let pin: Pin = pin
                .parse()
                .with_context(|| format!("--allow-cert {text}"))?;
            config.certificates.push((pin, grant));
        }
        let replicas: Vec<Pin> = config
            .certificates
            .iter()
            .filter(|(_, g)| g.replicate)
            .map(|(pin, _)| *pin)
            .collect();
        let identity = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity::load(cert, key)?),
            _ => None,
        };
        if !args.tls_listen.is_empty() && config.certificates.is_empty() {
            bail!("--tls-listen without --allow-cert would let no client in");
        }
        if args.tls_listen.is_empty() && !config.certificates.is_empty() {
            bail!("--allow-cert is given, but no --tls-listen for those clients to reach");
        }
        let stores = dirs
            .iter()
            .map(|d| Store::open(d))
            .collect::<Result<Vec<_>, _>>()?;
        if !replicas.is_empty() {
            if let Some(standalone) = stores.iter().find(|s| s.role() != Role::Primary) {
                bail!(
                    "replicas are allowed (--allow-cert ...=replica), but {}'s store {} is {}, \
                     not the primary, so its rotations would not wait for them: ibemail-kgc \
                     role --dir {} primary",
                    standalone.domain(),
                    standalone.dir().display(),
                    standalone.role(),
                    standalone.dir().display()
                );
            }
            config.replication = Some(Arc::new(Replication::new(replicas)));
        }
        let replica = match &args.replica_of {
            None => {
                for store in stores.iter().filter(|s| s.role() == Role::Replica) {
                    tracing::warn!(
                        "{}: {} is a replica and no --replica-of keeps it in step: new \
                         generations reach it only by import",
                        store.domain(),
                        store.dir().display()
                    );
                }
                None
            }
            Some(text) => {
                let Ok(Endpoint::Tls { host, port }) = text.parse::<Endpoint>() else {
                    bail!("--replica-of {text}: expected tls:HOST:PORT");
                };
                if let Some(other) = stores.iter().find(|s| s.role() != Role::Replica) {
                    bail!(
                        "--replica-of: {}'s store {} is {}, not a replica (import it with \
                         --role replica, or ibemail-kgc role --dir {} replica)",
                        other.domain(),
                        other.dir().display(),
                        other.role(),
                        other.dir().display()
                    );
                }
                let primary = args
                    .primary_cert
                    .iter()
                    .map(|p| {
                        p.parse::<Pin>()
                            .with_context(|| format!("--primary-cert {p}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let Some(identity) = &identity else {
                    bail!("--replica-of needs --tls-cert and --tls-key");
                };
                let link = ReplicaSync::new(&host, port, identity, &primary)?;
                Some((link, Duration::from_secs(args.sync_interval.max(1))))
            }
        };
        let tls = match (&identity, args.tls_listen.is_empty()) {
            (Some(identity), false) => Some((
                args.tls_listen.clone(),
                ibemail_kgc::tls::server_config(
                    identity,
                    &config
                        .certificates
                        .iter()
                        .map(|(p, _)| *p)
                        .collect::<Vec<_>>(),
                )?,
            )),
            _ => None,
        };
        Ok(Network { tls, replica })
    }
}

/// Binds the socket, replacing a stale one but never a live daemon's.
async fn bind(socket: &Path, mode: u32) -> Result<tokio::net::UnixListener> {
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            bail!("{} is in use by a running daemon", socket.display());
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing stale socket {}", socket.display()))?;
    }
    let listener = ibemail_kgc::socket::bind_with_mode(socket, mode)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .with_context(|| format!("binding {}", socket.display()))?;
    Ok(listener)
}

/// The store directories' modification times: a rotation or retirement
/// by another process changes them.
fn stamps(dirs: &[PathBuf]) -> Vec<Option<SystemTime>> {
    dirs.iter()
        .map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
        .collect()
}

// One call site; the arguments are the daemon's parts.
#[allow(clippy::too_many_arguments)]
async fn daemon(
    service: KeyService,
    socket: Option<&Path>,
    mode: u32,
    config: ServerConfig,
    network: Network,
    metrics: Option<SocketAddr>,
    mut upkeep: Upkeep,
    interval: Duration,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let service = Arc::new(service);
    let listener = match socket {
        Some(socket) => Some(bind(socket, mode).await?),
        None => None,
    };
    let mut tls_listeners = Vec::new();
    if let Some((addrs, _)) = &network.tls {
        for addr in addrs {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--tls-listen {addr}"))?;
            tls_listeners.push((*addr, listener));
        }
    }
    if let Some(addr) = metrics {
        let listener = ibemail_kgc::metrics::bind(addr)
            .await
            .with_context(|| format!("metrics {addr}"))?;
        let service = service.clone();
        tokio::spawn(ibemail_kgc::metrics::serve(listener, move || {
            service.metrics().render()
        }));
        info!(%addr, "metrics endpoint listening");
    }
    for (domain, generation) in service.hello() {
        info!("serving {domain} (signing with generation {generation})");
    }
    let grants: Vec<String> = config
        .grants
        .iter()
        .map(|(uid, g)| {
            let what = g.describe();
            if g.open_as.is_empty() {
                format!("{uid}:{what}")
            } else {
                let who: Vec<&str> = g.open_as.iter().map(String::as_str).collect();
                format!("{uid}:{what}({})", who.join(","))
            }
        })
        .collect();
    if let Some(socket) = socket {
        info!(
            "listening on {} for uids {}",
            socket.display(),
            grants.join(" ")
        );
    }
    let certificates: Vec<String> = config
        .certificates
        .iter()
        .map(|(pin, g)| format!("{pin}={}", g.describe()))
        .collect();
    for (addr, _) in &tls_listeners {
        info!(
            "listening on tls:{addr} for certificates {}",
            certificates.join(" ")
        );
    }

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    let replication = config.replication.clone();
    if let Some(listener) = listener {
        servers.spawn(serve(
            listener,
            service.clone(),
            config.clone(),
            stopped(stop_rx.clone()),
        ));
    }
    if let Some((_, tls)) = &network.tls {
        for (_, listener) in tls_listeners {
            servers.spawn(serve_tls(
                listener,
                tls.clone(),
                service.clone(),
                config.clone(),
                stopped(stop_rx.clone()),
            ));
        }
    }
    if let Some((link, every)) = network.replica {
        info!(
            "replica of {}: syncing every {} s",
            link.primary(),
            every.as_secs()
        );
        let (service, stop) = (service.clone(), stop_rx.clone());
        servers.spawn(async move {
            ibemail_kgc::replica::run(link, service, every, stop).await;
            Ok(())
        });
    }

    let mut tick = tokio::time::interval(interval);
    // A store changed by another process (`ibemail-kgc rotate`) is noticed
    // within seconds and published at once, not at the next tick.
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    let mut seen = stamps(service.dirs());
    loop {
        let reported = async {
            match &replication {
                Some(r) => r.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup.recv() => {
                match service.reload() {
                    Ok(()) => info!("reloaded key stores"),
                    Err(e) => error!("reload failed, keeping the previous keys: {e}"),
                }
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = tick.tick() => {
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            // A replica reported something new: a staged generation may
            // be released now.
            () = reported => {
                upkeep.run(&service, now()).await;
                seen = stamps(service.dirs());
            }
            _ = poll.tick() => {
                let now_seen = stamps(service.dirs());
                if now_seen != seen {
                    upkeep.run(&service, now()).await;
                    seen = stamps(service.dirs());
                }
            }
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    while servers.join_next().await.is_some() {}
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// The policy of the store's active generation.
fn store_policy(store: &Store) -> Option<Policy> {
    let active = store.active_generation()?;
    store
        .generations()
        .find(|e| e.generation() == active)
        .and_then(|e| e.policy().copied())
}

/// As root, re-runs this command as the owner of the key store `dir` (or
/// of the directory it will be created in), so the files it writes stay
/// readable by the daemon. Read-only commands need no switch: root may
/// read any store.
fn as_store_owner(dir: &Path) -> Result<()> {
    if let Some((uid, gid)) = ibemail_kgc::accounts::owner_of_store(dir) {
        ibemail_kgc::accounts::become_user(uid, gid).map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// A reason `serve` cannot start that a restart will not cure.
#[derive(Debug)]
struct StartupFailure(anyhow::Error);

impl std::fmt::Display for StartupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StartupFailure {}

impl From<ibemail_kgc::store::StoreError> for StartupFailure {
    fn from(e: ibemail_kgc::store::StoreError) -> Self {
        StartupFailure(e.into())
    }
}

/// Reports a start-up failure of `serve` and exits with EX_CONFIG.
fn startup_failure(e: anyhow::Error) -> Result<u8> {
    Err(StartupFailure(e).into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // hickory's DNSSEC validator logs every failed proof at error level,
    // with whole messages; `check` reports the outcome itself.
    // IBEMAIL_LOG=debug shows everything.
    logging::init(
        cli.log_format,
        "info,hickory_net=off,hickory_resolver=off,hickory_proto=off",
    );
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.is::<StartupFailure>() => {
            eprintln!("ibemail-kgc: cannot start: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("ibemail-kgc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
