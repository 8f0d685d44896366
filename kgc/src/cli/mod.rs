//! The `ibemail-kgc` command line: its arguments ([`Cli`]) and what each
//! command does ([`run`]); `main.rs` only parses and reports.

#![allow(clippy::print_stdout)]

mod commands;
mod daemon;
mod dns;
mod network;

pub use commands::{StartupFailure, run};
pub use dns::ResolverArgs;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::duration::parse_duration;
use crate::logging::LogFormat;
use crate::store::{Retention, Role};
use clap::{Args, Parser, Subcommand};
use ibemail_params::Policy;

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
/// The command line.
pub struct Cli {
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
    pub log_format: LogFormat,
}

/// Exit status for temporary failures (sysexits EX_TEMPFAIL), as the milter.
pub(crate) const EXIT_TEMPFAIL: u8 = 75;

/// Exit status when `serve` cannot start (sysexits EX_CONFIG): the units
/// do not restart it (RestartPreventExitStatus), since a store with the
/// wrong owner or an unreadable TSIG key stays so until someone fixes it.
pub const EXIT_CONFIG: u8 = 78;

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
    /// =replica (a replica daemon, which copies the master keys of every
    /// served domain; a primary's rotations wait until every replica
    /// serves the new generation), or =replica:DOMAIN[,DOMAIN...] (a
    /// replica of those domains only; others' rotations do not wait for
    /// it).
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
        #[command(flatten)]
        dns: ResolverArgs,
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
        /// The fingerprint `ibemail-kgc export` printed where the export was
        /// made (sha256:HEX), read from there over a channel you trust.
        /// Required with --identity: an age recipient is public, so anyone
        /// could have made an export to it.
        #[arg(long, value_name = "sha256:HEX")]
        expect: Option<String>,
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
