//! `ibemail-milter doctor` on a live installation (the harness's a.test:
//! Postfix's configuration in its own directory, read with `postconf -c`;
//! the milter and KGC processes; Knot): sound, then broken one piece at a
//! time, each break named with its fix and failing the exit status.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use ibemail_e2e::{Options, World, bin_dir};
use ibemail_kgc::accounts::by_uid;

/// Runs the doctor on a.test as root would (it checks as the milter's
/// user); returns (success, report).
fn doctor(world: &World) -> (bool, String) {
    let (milter_uid, _) = world.daemon_uids();
    let user = by_uid(milter_uid).map_or("root".to_string(), |a| a.name);
    let out = Command::new(bin_dir().join("ibemail-milter"))
        .arg("doctor")
        .arg("--config")
        .arg(&world.a.milter_config)
        .arg("-c")
        .arg(world.a.postfix.conf_dir())
        .args(["--user", &user])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?}:\n{report}"))
}

#[test]
fn the_doctor_passes_a_sound_setup_and_names_each_break_with_its_fix() {
    let mut world = World::start(Options::default());
    let (ok, report) = doctor(&world);
    assert!(ok, "{report}");
    assert!(!report.contains("ERROR"), "{report}");
    for expected in [
        "ok       postfix: smtpd_milters names inet:",
        "ok       postfix: milter_default_action = tempfail",
        "ok       milter: inet:",
        "ok       kgc: ",
        "ok       a.test: _ibemailkey.a.test is DNSSEC-signed (secure)",
        "ok       a.test: generation 1 as published opens with the KGC's key",
        "ok       reinject: master.cf service ",
    ] {
        line(&report, expected);
    }
    assert!(
        line(&report, "ok       reinject: master.cf")
            .contains("runs this milter as ibemail-reinject"),
        "{report}"
    );

    // Postfix would pass mail through unprocessed while the milter is down.
    world.a.postfix.postconf("milter_default_action = accept");
    let (ok, report) = doctor(&world);
    assert!(!ok, "{report}");
    let finding = line(&report, "ERROR    postfix: milter_default_action = accept");
    assert!(
        finding.contains("fix: postconf -c ")
            && finding.contains("milter_default_action = tempfail"),
        "{finding}"
    );
    world.a.postfix.postconf("milter_default_action = tempfail");

    // The published record no longer matches the KGC's key.
    let store = ibemail_kgc::store::Store::open(&world.a.store_dir).unwrap();
    let stranger = tempfile::tempdir().unwrap();
    let other = ibemail_kgc::store::Store::setup(
        &stranger.path().join("kgc"),
        "a.test",
        ibemail_e2e::now(),
        None,
        &mut rand_core::OsRng,
    )
    .unwrap();
    // (Each doctor run is a new process: no cache to wait out.)
    world.publish_records("a.test", &other.records());
    let (ok, report) = doctor(&world);
    assert!(!ok, "{report}");
    line(
        &report,
        "ERROR    a.test: generation 1 as published does NOT match",
    );
    world.publish_records("a.test", &store.records());

    // The KGC is down; so is the milter.
    world.stop_kgc("a.test");
    world.kill_milter("a.test");
    let (ok, report) = doctor(&world);
    assert!(!ok, "{report}");
    assert!(
        line(&report, "ERROR    kgc: ").contains("start the KGC daemon"),
        "{report}"
    );
    line(&report, "ERROR    milter: inet:");
    world.start_kgc("a.test");
    world.start_milter("a.test");
    let (ok, report) = doctor(&world);
    assert!(ok, "all repaired:\n{report}");
}
