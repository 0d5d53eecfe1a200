//! The Debian package (packaging/build-deb.sh): it builds, and `lintian` reports no error
//! and no warning (each override in packaging/lintian-overrides says why). Needs lintian
//! and dpkg-dev (`scripts/test --install` installs them); the VM test installs the same
//! package and boots it.

use std::path::Path;
use std::process::Command;

#[test]
fn the_deb_builds_and_lintian_finds_no_error_or_warning() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg("packaging/build-deb.sh")
        .current_dir(&repo)
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build-deb.sh failed:\n{stderr}");
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let deb = repo.join(deb.lines().last().unwrap_or_default());
    assert!(deb.exists(), "no .deb at {}:\n{stderr}", deb.display());
    let lint = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian not found: install it (scripts/test --install does)");
    let report = String::from_utf8_lossy(&lint.stdout);
    assert!(
        lint.status.success() && report.trim().is_empty(),
        "lintian on {}:\n{report}{}",
        deb.display(),
        String::from_utf8_lossy(&lint.stderr)
    );
    let contents = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&contents.stdout);
    for f in [
        "./usr/bin/ctune",
        "./usr/share/man/man8/ctune.8.gz",
        "./usr/share/bash-completion/completions/ctune",
        "./usr/share/doc/ctune/copyright",
        "./usr/share/doc/ctune/docs/metrics.md",
    ] {
        assert!(list.contains(f), "{f} not in the package:\n{list}");
    }
}
