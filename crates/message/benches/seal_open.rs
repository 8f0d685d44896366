//! `cargo bench -p ibemail-message --bench seal_open`: sealing and opening
//! whole messages of 1 KiB to 25 MiB, beside `openssl cms` doing the same job
//! with AES-256-GCM to an RSA-2048 certificate (the targets in docs/benchmarks.md).
//!
//! A small harness of our own rather than criterion, like `crates/ibe/benches/kem.rs`.
//! Each size runs in fresh child processes (this binary re-executed with
//! `IBEMAIL_BENCH_CHILD` set), one for sealing and one for opening, so that
//! peak memory is that of one operation on one message:
//!
//! - the parent writes the message and its sealed form to a temporary
//!   directory;
//! - the child notes its resident set (`VmRSS`), resets the high-water mark
//!   (`echo 5 > /proc/self/clear_refs`), reads its input file, runs the
//!   operation once and reports `VmHWM` minus that baseline: the peak extra
//!   memory of the operation *including its input*;
//! - it then times the operation in batches for a fixed budget and reports
//!   the median wall-clock and CPU time per operation. CPU time is
//!   `CLOCK_PROCESS_CPUTIME_ID` (the `ru_utime + ru_stime` of `getrusage`,
//!   which rustix does not expose, at nanosecond resolution). For the owned
//!   operations each batch alternates with a batch of BLS12-381 pairings,
//!   so the 100 KiB target is set against a pairing timed over the same
//!   seconds (the development VM drifts by ±10% within minutes).
//!
//! To profile one operation, keep the inputs (`IBEMAIL_BENCH_DIR=/some/dir`)
//! and run a child by hand, e.g. `IBEMAIL_BENCH_CHILD=open:3000:/some/dir/sealed-10485760.eml
//! perf record target/release/deps/seal_open-…`.
//!
//! Sealing and opening are `seal_owned` and `open_owned` (the buffer is the
//! caller's to give, as in the milter and `encrypt`/`decrypt`; the copy
//! each call consumes is made outside the timing); `seal` and `open` of a
//! borrowed message, which copy it first, are reported beside them.
//! Opening uses the master key, as the KGC does; it includes capsule
//! decoding, decapsulation, key unwrap, base64 decoding and AES-GCM. MB and
//! GB are decimal (10^6, 10^9 bytes).

#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ibemail_ibe::{Identity, MasterKey, PublicParams, UserKey};
use ibemail_message::{
    CapsuleError, IbeRecipient, Limits, Opened, Recipient, open, open_owned, seal, seal_owned,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rustix::time::{ClockId, clock_gettime};

const CHILD_ENV: &str = "IBEMAIL_BENCH_CHILD";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The KGC of b.test and bob's key, the same in every process.
struct Kgc {
    master: MasterKey,
    params: PublicParams,
    bob: Identity,
    bob_key: UserKey,
}

impl Kgc {
    fn new() -> Self {
        let master = MasterKey::generate(&mut ChaCha20Rng::seed_from_u64(9));
        let bob = Identity::parse("bob@b.test").unwrap();
        Kgc {
            params: master.public_params(),
            bob_key: master.extract(&bob, 1),
            master,
            bob,
        }
    }

    fn recipient(&self) -> IbeRecipient {
        IbeRecipient {
            identity: self.bob.clone(),
            generation: 1,
            params: self.params.clone(),
        }
    }

    fn seal(&self, message: &[u8], rng: &mut ChaCha20Rng) -> ibemail_message::Sealed {
        let recipient = self.recipient();
        seal(
            message,
            &[&recipient as &dyn Recipient],
            rng,
            &Limits::default(),
        )
        .unwrap()
    }

    /// As the milter and `encrypt` seal: the message buffer is theirs.
    fn seal_owned(&self, message: Vec<u8>, rng: &mut ChaCha20Rng) -> ibemail_message::Sealed {
        let recipient = self.recipient();
        seal_owned(
            message,
            &[&recipient as &dyn Recipient],
            rng,
            &Limits::default(),
        )
        .unwrap()
    }

    /// As the KGC opens (in the milter or the daemon): with the master key,
    /// no user key derived.
    fn open_capsule(
        &self,
    ) -> impl FnMut(
        &Identity,
        ibemail_ibe::Generation,
        &ibemail_ibe::Capsule,
    ) -> Result<ibemail_ibe::SharedSecret, CapsuleError>
    + '_ {
        |identity, generation, capsule| {
            self.master
                .decapsulate(&self.params, identity, generation, capsule)
                .map_err(|_| CapsuleError::Rejected)
        }
    }

    fn open(&self, sealed: &[u8]) -> Opened {
        let locals = std::slice::from_ref(&self.bob);
        open(sealed, locals, &Limits::default(), self.open_capsule()).unwrap()
    }

    /// As the milter and `decrypt` open: the sealed buffer is theirs.
    fn open_owned(&self, sealed: Vec<u8>) -> Opened {
        let locals = std::slice::from_ref(&self.bob);
        open_owned(sealed, locals, &Limits::default(), self.open_capsule()).unwrap()
    }
}

/// A realistic message of exactly `size` bytes: a header section and a
/// multipart body whose bulk is a base64 attachment in 76-character lines.
fn make_message(size: usize) -> Vec<u8> {
    let head = b"Return-Path: <alice@a.test>\r\n\
Received: from client.a.test (client.a.test [192.0.2.10])\r\n\tby mx.a.test (Postfix) with ESMTPS id 4ABC123\r\n\tfor <bob@b.test>; Mon, 1 Jun 2026 10:00:00 +0000 (UTC)\r\n\
From: Alice Example <alice@a.test>\r\nTo: Bob Example <bob@b.test>\r\n\
Subject: Quarterly figures (draft)\r\nDate: Mon, 1 Jun 2026 10:00:00 +0000\r\n\
Message-ID: <20260601100000.4ABC123@a.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"=_boundary_1\"\r\n\r\n\
--=_boundary_1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
Hi Bob,\r\n\r\nthe figures are attached.\r\n\r\nAlice\r\n\r\n\
--=_boundary_1\r\nContent-Type: application/octet-stream; name=\"figures.bin\"\r\n\
Content-Disposition: attachment; filename=\"figures.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n";
    let tail = b"\r\n--=_boundary_1--\r\n";
    use base64::Engine as _;
    let mut raw = vec![0u8; size / 4 * 3 + 57];
    ChaCha20Rng::seed_from_u64(size as u64).fill_bytes(&mut raw);
    let text = base64::engine::general_purpose::STANDARD.encode(&raw);
    let mut out = Vec::with_capacity(size + 80);
    out.extend_from_slice(head);
    for line in text.as_bytes().chunks(76) {
        if out.len() + tail.len() >= size {
            break;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.truncate(size.saturating_sub(tail.len()).max(head.len()));
    out.extend_from_slice(tail);
    out
}

fn cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A `Vm*` line of /proc/self/status, in bytes.
fn vm_status(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Median (wall, CPU) time per call of `f` over `budget`, and the sample count.
fn measure(budget: Duration, mut f: impl FnMut()) -> (Duration, Duration, usize) {
    let (wall, cpu, samples, _) = measure_beside(budget, || (), |()| f(), None);
    (wall, cpu, samples)
}

/// [`measure`] of `f(setup())`, with the `setup` calls outside the timing:
/// the inputs of a batch are made before its clock starts. With `beside`,
/// each batch of `f` is followed by a batch of `beside` about as long,
/// whose median CPU time per call is returned too. Both medians then cover
/// the same seconds, so their ratio does not move with the host's drift
/// (±10% within minutes on the development VM), as a figure measured a
/// minute apart would.
fn measure_beside<T>(
    budget: Duration,
    mut setup: impl FnMut() -> T,
    mut f: impl FnMut(T),
    mut beside: Option<&mut dyn FnMut()>,
) -> (Duration, Duration, usize, Option<Duration>) {
    // Warm up and size the batches to ~10 ms.
    let batch_for = |per_call: f64| ((0.01 / per_call).ceil() as u32).max(1);
    let start = Instant::now();
    let mut calls = 0u32;
    while calls < 2 || start.elapsed() < budget.min(Duration::from_millis(200)) {
        f(setup());
        calls += 1;
    }
    let batch = batch_for(start.elapsed().as_secs_f64() / f64::from(calls));
    let beside_batch = beside.as_mut().map(|g| {
        let start = Instant::now();
        for _ in 0..3 {
            g();
        }
        batch_for(start.elapsed().as_secs_f64() / 3.0)
    });

    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    let mut beside_cpu = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || wall.len() < 5 {
        let inputs: Vec<T> = (0..batch).map(|_| setup()).collect();
        let (w, c) = (Instant::now(), cpu_time());
        for input in inputs {
            f(input);
        }
        cpu.push((cpu_time() - c) / batch);
        wall.push(w.elapsed() / batch);
        if let (Some(g), Some(n)) = (beside.as_mut(), beside_batch) {
            let c = cpu_time();
            for _ in 0..n {
                g();
            }
            beside_cpu.push((cpu_time() - c) / n);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied()
    };
    let samples = wall.len();
    let wall = median(&mut wall).unwrap_or_default();
    let cpu = median(&mut cpu).unwrap_or_default();
    (wall, cpu, samples, median(&mut beside_cpu))
}

/// The child: one operation on one input file, memory first, then timing.
fn child(spec: &str) {
    let (op, rest) = spec.split_once(':').unwrap();
    let (budget_ms, path) = rest.split_once(':').unwrap();
    let budget = Duration::from_millis(budget_ms.parse().unwrap());
    let kgc = Kgc::new();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    // Warm the code paths on a tiny message so lazily built state is not counted.
    black_box(
        kgc.open(
            &kgc.seal(b"Subject: warm-up\r\n\r\nx\r\n", &mut rng)
                .to_bytes(),
        ),
    );

    let baseline = vm_status("VmRSS");
    // Reset the high-water mark to the current RSS (Linux >= 4.0).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let input = std::fs::read(path).unwrap();
    let peak = match op {
        "seal" => {
            // The read buffer itself is sealed, as the milter seals its own.
            let sealed = black_box(kgc.seal_owned(input, &mut rng));
            let peak = vm_status("VmHWM");
            drop(sealed);
            peak
        }
        "seal-copy" => {
            let sealed = black_box(kgc.seal(&input, &mut rng));
            let peak = vm_status("VmHWM");
            drop(sealed);
            peak
        }
        "open" => {
            let opened = black_box(kgc.open_owned(input));
            let peak = vm_status("VmHWM");
            drop(opened);
            peak
        }
        "open-copy" => {
            let opened = black_box(kgc.open(&input));
            let peak = vm_status("VmHWM");
            drop(opened);
            peak
        }
        _ => panic!("unknown child operation {op}"),
    };
    let input = std::fs::read(path).unwrap();
    // A pairing is timed beside the owned operations: the 100 KiB target is
    // judged against the pairing floor measured over the same seconds.
    let (wall, cpu, samples, pairing) = match op {
        "seal" => measure_beside(
            budget,
            || input.clone(),
            |message| {
                black_box(kgc.seal_owned(black_box(message), &mut rng));
            },
            Some(&mut one_pairing()),
        ),
        "open" => measure_beside(
            budget,
            || input.clone(),
            |sealed| {
                black_box(kgc.open_owned(black_box(sealed)));
            },
            Some(&mut one_pairing()),
        ),
        "seal-copy" => {
            let (wall, cpu, samples) = measure(budget, || {
                black_box(kgc.seal(black_box(&input), &mut rng));
            });
            (wall, cpu, samples, None)
        }
        _ => {
            let (wall, cpu, samples) = measure(budget, || {
                black_box(kgc.open(black_box(&input)));
            });
            (wall, cpu, samples, None)
        }
    };
    println!(
        "RESULT wall_ns={} cpu_ns={} samples={samples} peak_extra={} hwm_reset={reset} \
         pairing_ns={}",
        wall.as_nanos(),
        cpu.as_nanos(),
        peak.saturating_sub(baseline),
        pairing.unwrap_or_default().as_nanos(),
    );
}

/// One BLS12-381 pairing per call, on fixed points: the pairing floor that
/// the targets in docs/benchmarks.md are set beside.
fn one_pairing() -> impl FnMut() {
    use group::Group as _;
    let g1 = blstrs::G1Affine::from(blstrs::G1Projective::generator() * blstrs::Scalar::from(5u64));
    let g2 = blstrs::G2Affine::from(blstrs::G2Projective::generator() * blstrs::Scalar::from(7u64));
    move || {
        black_box(blstrs::pairing(black_box(&g1), black_box(&g2)));
    }
}

/// One child's report.
#[derive(Clone, Copy, Debug, Default)]
struct Measured {
    wall: Duration,
    cpu: Duration,
    samples: usize,
    peak_extra: usize,
    hwm_reset: bool,
    /// CPU time of a pairing, timed beside the operation (zero if not).
    pairing: Duration,
}

fn run_child(op: &str, budget: Duration, input: &Path) -> Measured {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(
            CHILD_ENV,
            format!("{op}:{}:{}", budget.as_millis(), input.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child {op} {} failed: {stdout}{}",
        input.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap();
    let mut m = Measured::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "wall_ns" => m.wall = Duration::from_nanos(v.parse().unwrap()),
            "cpu_ns" => m.cpu = Duration::from_nanos(v.parse().unwrap()),
            "samples" => m.samples = v.parse().unwrap(),
            "peak_extra" => m.peak_extra = v.parse().unwrap(),
            "hwm_reset" => m.hwm_reset = v == "true",
            "pairing_ns" => m.pairing = Duration::from_nanos(v.parse().unwrap()),
            _ => {}
        }
    }
    m
}

/// `openssl cms` with AES-256-GCM to an RSA-2048 certificate, as processes.
struct OpenSsl {
    dir: std::path::PathBuf,
    time_bin: bool,
}

impl OpenSsl {
    fn new(dir: &Path) -> Option<Self> {
        let ok = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .args(["-subj", "/CN=bob@b.test", "-days", "1"])
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        let time_bin = Path::new("/usr/bin/time").exists();
        ok.then(|| OpenSsl {
            dir: dir.to_path_buf(),
            time_bin,
        })
    }

    fn encrypt_args(input: &Path, output: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["cms", "-encrypt", "-binary", "-aes-256-gcm", "-in"]
            .map(String::from)
            .to_vec();
        args.push(input.display().to_string());
        args.push("-out".into());
        args.push(output.display().to_string());
        args.push("cert.pem".into());
        args
    }

    fn decrypt_args(input: &Path, output: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["cms", "-decrypt", "-binary", "-inkey", "key.pem"]
            .map(String::from)
            .to_vec();
        args.extend(["-recip".into(), "cert.pem".into(), "-in".into()]);
        args.push(input.display().to_string());
        args.push("-out".into());
        args.push(output.display().to_string());
        args
    }

    fn run(&self, args: &[String]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Median wall time of `args` over `budget` (at least 3 runs), and runs.
    fn time(&self, args: &[String], budget: Duration) -> (Duration, usize) {
        let mut samples = Vec::new();
        let start = Instant::now();
        while samples.len() < 3 || (start.elapsed() < budget && samples.len() < 200) {
            let t = Instant::now();
            self.run(args);
            samples.push(t.elapsed());
        }
        samples.sort();
        (samples[samples.len() / 2], samples.len())
    }

    /// Peak RSS of one run, from GNU time's `%M` (KiB), if available.
    fn peak(&self, args: &[String]) -> Option<usize> {
        if !self.time_bin {
            return None;
        }
        let report = self.dir.join("time.txt");
        let ok = Command::new("/usr/bin/time")
            .args(["-f", "%M", "-o"])
            .arg(&report)
            .arg("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .is_ok_and(|o| o.status.success());
        let text = std::fs::read_to_string(&report).ok()?;
        ok.then(|| text.trim().parse::<usize>().ok().map(|kib| kib * 1024))
            .flatten()
    }
}

/// One size's seal and open columns: wall, CPU, MB/s, then both peaks.
fn row(size: usize, seal: &Measured, open: &Measured) -> String {
    format!(
        "{:>8}  {:>10} {:>10} {:>8.0}  {:>10} {:>10} {:>8.0}  {:>8.2}x {:>8.2}x",
        human(size),
        us(seal.wall),
        us(seal.cpu),
        mb_s(size, seal.wall),
        us(open.wall),
        us(open.cpu),
        mb_s(size, open.wall),
        seal.peak_extra as f64 / size as f64,
        open.peak_extra as f64 / size as f64,
    )
}

fn human(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

fn us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

fn mb_s(size: usize, d: Duration) -> f64 {
    size as f64 / d.as_secs_f64() / 1e6
}

/// The building blocks: the KEM alone and bulk throughputs on `size` bytes,
/// for the analysis.
/// Prints the building blocks.
fn building_blocks(kgc: &Kgc, size: usize, budget: Duration) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (pairing, _, _) = measure(budget, one_pairing());
    let (encaps, _, _) = measure(budget, || {
        black_box(ibemail_ibe::encapsulate(&kgc.params, &kgc.bob, 1, &mut rng).unwrap());
    });
    let (capsule, _) = ibemail_ibe::encapsulate(&kgc.params, &kgc.bob, 1, &mut rng).unwrap();
    let bytes = capsule.to_bytes();
    let (decode, _, _) = measure(budget, || {
        black_box(ibemail_ibe::Capsule::from_bytes(black_box(&bytes)).unwrap());
    });
    let (decaps, _, _) = measure(budget, || {
        black_box(kgc.bob_key.decapsulate(&kgc.params, &capsule).unwrap());
    });
    let (decaps_master, _, _) = measure(budget, || {
        black_box(
            kgc.master
                .decapsulate(&kgc.params, &kgc.bob, 1, &capsule)
                .unwrap(),
        );
    });
    println!("building blocks (this process, median):");
    println!("  BLS12-381 pairing (blstrs)     {:>10}", us(pairing));
    println!("  BB2 encapsulate                {:>10}", us(encaps));
    println!("  capsule decode                 {:>10}", us(decode));
    println!("  BB2 decapsulate, user key      {:>10}", us(decaps));
    println!("  BB2 decapsulate, master key    {:>10}", us(decaps_master));

    let mut data = make_message(size);
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[7u8; 32]).unwrap(),
    );
    let (gcm, _, _) = measure(budget, || {
        let _tag = black_box(
            ring_key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key([0u8; 12]),
                    ring::aead::Aad::empty(),
                    &mut data[..],
                )
                .unwrap(),
        );
    });
    let (enc, _, _) = measure(budget, || {
        black_box(STANDARD.encode(black_box(&data)));
    });
    let text = STANDARD.encode(&data);
    let (dec, _, _) = measure(budget, || {
        black_box(STANDARD.decode(black_box(&text)).unwrap());
    });
    let (simd_enc, _, _) = measure(budget, || {
        black_box(base64_turbo::STANDARD.encode(black_box(&data)));
    });
    let (simd_dec, _, _) = measure(budget, || {
        black_box(base64_turbo::STANDARD.decode(black_box(&text)).unwrap());
    });
    let (copy, _, _) = measure(budget, || {
        black_box(black_box(&data).clone());
    });
    println!("  on {}:", human(size));
    println!(
        "  AES-256-GCM (ring) in place    {:>8.0} MB/s",
        mb_s(size, gcm)
    );
    println!(
        "  base64 encode (one string)     {:>8.0} MB/s",
        mb_s(size, enc)
    );
    println!(
        "  base64 decode (one string)     {:>8.0} MB/s",
        mb_s(size, dec)
    );
    println!(
        "  base64-turbo encode            {:>8.0} MB/s",
        mb_s(size, simd_enc)
    );
    println!(
        "  base64-turbo decode            {:>8.0} MB/s",
        mb_s(size, simd_dec)
    );
    println!(
        "  memcpy (Vec clone)             {:>8.0} MB/s",
        mb_s(size, copy)
    );
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    // `cargo test --benches` runs bench targets without `--bench`: keep that
    // quick (small sizes, one short batch each).
    let quick = !std::env::args().any(|a| a == "--bench");
    let (sizes, budget, ossl_budget): (&[usize], _, _) = if quick {
        (&[KIB, 100 * KIB], Duration::from_millis(1), Duration::ZERO)
    } else {
        (
            &[KIB, 100 * KIB, 10 * MIB, 25 * MIB],
            Duration::from_secs(3),
            Duration::from_millis(1500),
        )
    };

    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("ibemail-message seal/open benchmark ({cores} cores, {cpu_model})");
    println!("one recipient (bob@b.test); each size in fresh child processes; medians");
    println!();

    let tmp = tempfile::tempdir().unwrap();
    let dir =
        std::env::var_os("IBEMAIL_BENCH_DIR").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let kgc = Kgc::new();
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut files = Vec::new();
    for &size in sizes {
        let message = make_message(size);
        assert_eq!(message.len(), size);
        let sealed = kgc.seal(&message, &mut rng).to_bytes();
        assert_eq!(kgc.open(&sealed).message, message);
        let plain = dir.join(format!("msg-{size}.eml"));
        let enc = dir.join(format!("sealed-{size}.eml"));
        std::fs::write(&plain, &message).unwrap();
        std::fs::write(&enc, &sealed).unwrap();
        files.push((size, plain, enc, sealed.len()));
    }

    let mut ours = Vec::new();
    let mut copying = Vec::new();
    for (size, plain, enc, sealed_len) in &files {
        let s = run_child("seal", budget, plain);
        let o = run_child("open", budget, enc);
        ours.push((*size, *sealed_len, s, o));
        copying.push((
            *size,
            run_child("seal-copy", budget, plain),
            run_child("open-copy", budget, enc),
        ));
    }

    println!("ibemail (in process; CPU = process CPU time per operation)");
    println!(
        "{:>8}  {:>10} {:>10} {:>8}  {:>10} {:>10} {:>8}  {:>9} {:>9}  {:>10}",
        "size",
        "seal wall",
        "seal CPU",
        "MB/s",
        "open wall",
        "open CPU",
        "MB/s",
        "seal peak",
        "open peak",
        "sealed/size"
    );
    for (size, sealed_len, s, o) in &ours {
        println!(
            "{}  {:>10.3}",
            row(*size, s, o),
            *sealed_len as f64 / *size as f64
        );
    }
    println!(
        "(peak = VmHWM growth over the process before it read its input, as a multiple of the \
         message size, input included; samples: {})",
        ours.iter()
            .map(|(_, _, s, o)| format!("{}/{}", s.samples, o.samples))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if ours.iter().any(|(_, _, s, o)| !s.hwm_reset || !o.hwm_reset) {
        println!("(warning: could not reset VmHWM; peaks include process start-up)");
    }
    println!(
        "(seal, open: `seal_owned`, `open_owned`, working in the caller's buffer, as the milter \
         and `encrypt`/`decrypt` do; `seal` and `open` of a borrowed message copy it first:)"
    );
    for (size, s, o) in &copying {
        println!("{}", row(*size, s, o));
    }
    println!();

    let ossl_dir = tempfile::tempdir().unwrap();
    if quick {
        println!("(quick mode: openssl comparison skipped)");
    } else if let Some(ossl) = OpenSsl::new(ossl_dir.path()) {
        println!(
            "openssl cms -encrypt/-decrypt -binary -aes-256-gcm, RSA-2048 recipient \
             (wall clock per process: includes process start, key/cert loading and file I/O)"
        );
        let (start, _) = ossl.time(&["version".to_string()], ossl_budget);
        println!("(`openssl version` alone: {})", us(start));
        println!(
            "{:>8}  {:>10} {:>8} {:>9}  {:>10} {:>8} {:>9}   {:>12} {:>12}",
            "size",
            "encrypt",
            "MB/s",
            "peak RSS",
            "decrypt",
            "MB/s",
            "peak RSS",
            "ibemail seal",
            "ibemail open"
        );
        for ((size, plain, _, _), (_, _, s, o)) in files.iter().zip(&ours) {
            let enc = ossl_dir.path().join("enc.eml");
            let dec = ossl_dir.path().join("dec.eml");
            let e_args = OpenSsl::encrypt_args(plain, &enc);
            let d_args = OpenSsl::decrypt_args(&enc, &dec);
            let (e, _) = ossl.time(&e_args, ossl_budget);
            let (d, _) = ossl.time(&d_args, ossl_budget);
            assert_eq!(std::fs::read(&dec).unwrap(), std::fs::read(plain).unwrap());
            let peak = |p: Option<usize>| {
                p.map_or("-".to_string(), |b| {
                    format!("{:.1} MiB", b as f64 / MIB as f64)
                })
            };
            println!(
                "{:>8}  {:>10} {:>8.0} {:>9}  {:>10} {:>8.0} {:>9}   {:>11.1}x {:>11.1}x",
                human(*size),
                us(e),
                mb_s(*size, e),
                peak(ossl.peak(&e_args)),
                us(d),
                mb_s(*size, d),
                peak(ossl.peak(&d_args)),
                e.as_secs_f64() / s.wall.as_secs_f64(),
                d.as_secs_f64() / o.wall.as_secs_f64(),
            );
        }
        println!("(last two columns: openssl time / ibemail time; > 1 means ibemail is faster)");
    } else {
        println!("(openssl not found: comparison skipped)");
    }
    println!();

    let reference = if quick { 100 * KIB } else { 10 * MIB };
    building_blocks(&kgc, reference, budget.min(Duration::from_secs(1)));
    println!();

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let find = |size: usize| ours.iter().find(|(s, _, _, _)| *s == size);
    println!("targets (docs/benchmarks.md)");
    if let Some((_, _, s, o)) = find(100 * KIB) {
        let cpu = s.cpu + o.cpu;
        // The pairing timed beside sealing and beside opening, in the same
        // children; the building blocks' pairing is a minute away.
        let floor = (s.pairing + o.pairing) / 2;
        println!(
            "  seal + open 100 KiB CPU      {:>10}   target <= 2 ms     {}   ({:.2} pairings)",
            us(cpu),
            verdict(cpu <= Duration::from_millis(2)),
            cpu.as_secs_f64() / floor.as_secs_f64()
        );
        // Nearly all of it is pairing-group arithmetic, which scales with the
        // pairing; this says which hosts meet the target at this ratio.
        println!(
            "    (pairing timed beside them {}; at that ratio 2 ms holds where a pairing \
             takes <= {:.0} µs)",
            us(floor),
            2000.0 * floor.as_secs_f64() / cpu.as_secs_f64(),
        );
    }
    if let Some((_, _, s, o)) = find(10 * MIB) {
        let (ts, to) = (mb_s(10 * MIB, s.wall), mb_s(10 * MIB, o.wall));
        println!(
            "  seal 10 MiB throughput       {ts:>7.0} MB/s  target >= 1000 MB/s  {}",
            verdict(ts >= 1000.0)
        );
        println!(
            "  open 10 MiB throughput       {to:>7.0} MB/s  target >= 1000 MB/s  {}",
            verdict(to >= 1000.0)
        );
    }
    if let Some((size, _, s, o)) = find(25 * MIB) {
        let worst = s.peak_extra.max(o.peak_extra) as f64 / *size as f64;
        println!(
            "  peak memory 25 MiB           {worst:>9.2}x   target <= 4x       {}",
            verdict(worst <= 4.0)
        );
    }
    if quick {
        println!();
        println!(
            "(quick mode: run `cargo bench -p ibemail-message --bench seal_open` for real numbers)"
        );
    }
}
