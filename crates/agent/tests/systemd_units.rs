//! The systemd units: `systemd-analyze verify` is clean, and the units grant exactly the
//! paths ctune writes.

use std::path::Path;
use std::process::Command;

fn verify(dir: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| dir.join(u)))
        .output()
        .expect("systemd-analyze not found: install systemd (.ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The units as installed, with ExecStart pointing at the binary under test.
fn staged() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["ctune.service", "ctune-boot.service"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../systemd")
                .join(unit),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(unit),
            text.replace("/usr/bin/ctune", env!("CARGO_BIN_EXE_ctune")),
        )
        .unwrap();
    }
    dir
}

#[test]
fn units_verify_cleanly() {
    let dir = staged();
    let (ok, text) = verify(dir.path(), &["ctune.service", "ctune-boot.service"]);
    // verify exits 0 on settings it ignores, but says so: any output is a finding.
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

#[test]
fn verify_catches_a_broken_unit() {
    // The check above can fail: a misspelt setting is reported.
    let dir = staged();
    let p = dir.path().join("ctune.service");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("Type=notify", "Type=notfy");
    std::fs::write(&p, text).unwrap();
    let (_, text) = verify(dir.path(), &["ctune.service"]);
    assert!(text.contains("notfy"), "{text}");
}

#[test]
fn agent_unit_may_write_exactly_what_ctune_persists() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd/ctune.service"),
    )
    .unwrap();
    let rw: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches('-'))
        .collect();
    let mut wanted: Vec<String> = [
        ctune::act::persist::SYSCTL_FILE,
        ctune::act::persist::MODULES_LOAD_FILE,
        ctune::act::persist::MODPROBE_FILE,
    ]
    .iter()
    .map(|f| format!("/etc/{}", Path::new(f).parent().unwrap().display()))
    .collect();
    // metrics.textfile_dir: auto
    wanted.push(ctune_core::config::TextfileDir::DEBIAN.to_string());
    wanted.sort();
    let mut got: Vec<String> = rw.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, wanted);
    assert!(
        unit.contains("StateDirectory=ctune"),
        "the state dir /var/lib/ctune"
    );
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(needed), "{needed} missing");
    }
    assert!(
        !unit.contains("\nProtectKernelTunables=yes"),
        "see docs/systemd.md: breaks writes in other namespaces"
    );
}

/// The metrics drop-in's settings are valid for the agent's unit (appended, as systemd
/// merges a drop-in), and add the address families `GET /metrics` needs.
#[test]
fn the_metrics_drop_in_verifies_and_adds_inet() {
    let dir = staged();
    let drop_in = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../systemd/ctune.service.d/metrics-http.conf"),
    )
    .unwrap();
    assert!(
        drop_in.contains("RestrictAddressFamilies=AF_INET AF_INET6"),
        "{drop_in}"
    );
    let unit = dir.path().join("ctune.service");
    let merged = std::fs::read_to_string(&unit).unwrap() + "\n" + &drop_in;
    std::fs::write(&unit, merged).unwrap();
    let (ok, text) = verify(dir.path(), &["ctune.service"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}
