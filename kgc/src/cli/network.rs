//! The daemon over the network (mutual TLS listeners, the link of a
//! replica to its primary) and the commands that move key stores between
//! hosts: `tls-cert`, `tls-fingerprint`, `export`, `import`, `role`,
//! `release`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rustls_pki_types::pem::PemObject as _;

use crate::client::Endpoint;
use crate::clock::now;
use crate::export::{
    Protection, Unlock, export, import, parse_recipients, read_identities, read_passphrase,
    write_new_file,
};
use crate::replica::{ReplicaSync, Replication};
use crate::server::{Grant, ServerConfig};
use crate::store::{Role, Store};
use crate::tls::{Fingerprints, Pin, TlsIdentity, generate_certificate};

use super::commands::{as_store_owner, humanize, print_records, store_policy};
use super::{NetworkArgs, RetentionArgs};

/// The daemon's network side, as configured: TLS listeners and the link
/// to a primary.
pub(super) struct Network {
    pub(super) tls: Option<(Vec<SocketAddr>, Arc<rustls::ServerConfig>)>,
    pub(super) replica: Option<(ReplicaSync, Duration)>,
}

impl Network {
    /// Checks the network options against the stores (their roles) and
    /// sets the certificate grants and the replication tracker in
    /// `config`.
    pub(super) fn configure(
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
            // One grant per certificate: with two, the first would apply
            // while the replication tracker might go by the other.
            if config.certificates.iter().any(|(p, _)| *p == pin) {
                bail!(
                    "--allow-cert {text}: this certificate is allowed twice; give it one \
                     grant (e.g. open+sign, or replica:DOMAIN,DOMAIN)"
                );
            }
            config.certificates.push((pin, grant));
        }
        let replicas: Vec<(Pin, &Grant)> = config
            .certificates
            .iter()
            .filter(|(_, g)| g.replicate)
            .map(|(pin, g)| (*pin, g))
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
            // A replica:DOMAIN names a domain served here.
            for (_, grant) in &replicas {
                if let Some(unknown) = grant
                    .replicate_only
                    .iter()
                    .find(|d| !stores.iter().any(|s| s.domain() == d.as_str()))
                {
                    bail!(
                        "--allow-cert ...=replica:{unknown}: this daemon serves no store of \
                         {unknown} (--dir)"
                    );
                }
            }
            // Every store some replica copies must be the primary.
            let copied = |store: &Store| {
                replicas
                    .iter()
                    .any(|(_, g)| g.may_replicate(store.domain()))
            };
            if let Some(standalone) = stores
                .iter()
                .find(|s| copied(s) && s.role() != Role::Primary)
            {
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
            let scoped = replicas
                .iter()
                .map(|(pin, g)| (*pin, g.replicate_only.clone()))
                .collect::<Vec<_>>();
            config.replication = Some(Arc::new(Replication::scoped(scoped)));
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
                crate::tls::server_config(
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

/// `ibemail-kgc release`: publish a primary's staged generation now.
pub(super) fn release(
    dir: PathBuf,
    overlap: u64,
    ttl: u32,
    retention: RetentionArgs,
) -> Result<u8> {
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
    Ok(0)
}

/// `ibemail-kgc role`: show or set a store's role in replication.
pub(super) fn role(dir: PathBuf, role: Option<Role>) -> Result<u8> {
    match role {
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
    }
    Ok(0)
}

/// `ibemail-kgc tls-cert`: a self-signed certificate and its key.
pub(super) fn tls_cert(cert: PathBuf, key: PathBuf, name: String, days: u32) -> Result<u8> {
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
    Ok(0)
}

/// `ibemail-kgc tls-fingerprint`: the pins of a certificate.
pub(super) fn tls_fingerprint(cert: PathBuf) -> Result<u8> {
    let pem = std::fs::read(&cert).with_context(|| format!("{}", cert.display()))?;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("{}: no PEM certificate in it", cert.display()))?
        .with_context(|| format!("{}", cert.display()))?;
    print_pins(&Fingerprints::of(&der));
    Ok(0)
}

/// `ibemail-kgc export`: the store as an age-encrypted archive.
pub(super) fn export_store(
    dir: PathBuf,
    output: Option<PathBuf>,
    recipients: Vec<String>,
    recipients_file: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
) -> Result<u8> {
    use std::io::{IsTerminal as _, Write as _};
    if output.is_none() && std::io::stdout().is_terminal() {
        bail!(
            "the export is binary and holds the master keys: give --output FILE, or \
             redirect standard output"
        );
    }
    let protection = match passphrase_file {
        Some(path) => Protection::Passphrase(read_passphrase(&path).map_err(anyhow::Error::msg)?),
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
    let exported = export(&dir, protection)?;
    match &output {
        Some(path) => write_new_file(path, &exported.bytes)
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&exported.bytes)?;
            out.flush()?;
        }
    }
    eprintln!(
        "Exported {}'s key store ({} generation(s) with keys, role {}){}. Its fingerprint \
         (import checks it: ibemail-kgc import --expect ...; carry it over a channel you \
         trust, not beside the file):",
        store.domain(),
        store.with_keys().len(),
        store.role(),
        output
            .as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    );
    eprintln!("{}", exported.fingerprint);
    Ok(0)
}

/// `ibemail-kgc import`: a store from an export.
pub(super) fn import_store(
    dir: PathBuf,
    input: Option<PathBuf>,
    identity: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    expect: Option<String>,
    role: Role,
) -> Result<u8> {
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
    let store = import(&dir, &bytes, &unlock, role, expect.as_deref())?;
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
            Role::Primary => "; it rotates for its replicas (serve --allow-cert PIN=replica)",
            Role::Standalone => "",
        }
    );
    Ok(0)
}
