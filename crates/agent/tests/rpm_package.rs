//! The RPM (packaging/rpm/ctune.spec, built by packaging/build-rpm.sh): the file list,
//! the config file flags, the units byte for byte, the scriptlets (preset on a first
//! install, restore on erase), the requirements (libc and the like only) and the version
//! from Cargo. Then, as root, packaging/rpm/scratch-install.sh installs, upgrades and
//! erases it in a scratch root with the scriptlets running.
//!
//! Needs rpmbuild; build-rpm.sh installs it with apt-get when run as root. The test is
//! skipped, saying why, only when the script reports rpmbuild unavailable (exit 3: not
//! root, or apt-get failed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds the rpm once for every test in this file (they run in parallel and share
/// target/rpm/); None when rpmbuild is unavailable.
fn rpm_file() -> Option<PathBuf> {
    static RPM: OnceLock<Option<PathBuf>> = OnceLock::new();
    RPM.get_or_init(|| {
        let out = Command::new("bash")
            .arg("packaging/build-rpm.sh")
            .current_dir(repo())
            .output()
            .expect("run bash");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) && stderr.contains("build-rpm: rpmbuild unavailable") {
            eprintln!("rpm_package: skipped: {}", stderr.trim());
            return None;
        }
        assert!(
            out.status.success(),
            "packaging/build-rpm.sh failed:\n{}",
            text(&out)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let path = repo().join(path);
        assert!(path.is_file(), "build-rpm.sh printed {path:?}, not a file");
        Some(path)
    })
    .clone()
}

/// `rpm ARGS... RPM` (queries only; a package file, nothing installed), stdout.
fn query(rpm: &Path, args: &[&str]) -> String {
    let out = Command::new("rpm")
        .args(args)
        .arg(rpm)
        .output()
        .expect("run rpm");
    assert!(out.status.success(), "rpm {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn files_in(dir: &Path, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    names.sort();
    names
}

/// What the package must hold: the .deb's files at the RPM distributions' paths, the
/// preset, the licenses, the state directory; the docs as the repository has them now.
fn expected_files() -> BTreeSet<String> {
    let root = repo();
    let mut want: BTreeSet<String> = [
        "/usr/bin/ctune",
        "/usr/lib/systemd/system/ctune.service",
        "/usr/lib/systemd/system/ctune-boot.service",
        "/usr/lib/systemd/system-preset/50-ctune.preset",
        "/etc/ctune",
        "/etc/ctune/ctune.yaml",
        "/var/lib/ctune",
        "/usr/share/man/man8/ctune.8.gz",
        "/usr/share/bash-completion/completions/ctune",
        "/usr/share/zsh/site-functions/_ctune",
        "/usr/share/fish/vendor_completions.d/ctune.fish",
        "/usr/share/licenses/ctune",
        "/usr/share/licenses/ctune/LICENSE-MIT",
        "/usr/share/licenses/ctune/LICENSE-APACHE",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let doc = "/usr/share/doc/ctune";
    for d in [
        "",
        "/docs",
        "/docs/bench",
        "/config",
        "/config/roles",
        "/systemd",
        "/systemd/ctune.service.d",
    ] {
        want.insert(format!("{doc}{d}"));
    }
    want.insert(format!("{doc}/README.md"));
    want.insert(format!("{doc}/config/ctune.yaml"));
    want.insert(format!("{doc}/systemd/ctune.service.d/metrics-http.conf"));
    for f in files_in(&root.join("docs"), ".md") {
        want.insert(format!("{doc}/docs/{f}"));
    }
    for f in files_in(&root.join("docs/bench"), ".svg") {
        want.insert(format!("{doc}/docs/bench/{f}"));
    }
    for f in files_in(&root.join("config/roles"), ".yaml") {
        want.insert(format!("{doc}/config/roles/{f}"));
    }
    want
}

#[test]
fn rpm_holds_the_files_scriptlets_and_version() {
    let Some(rpm) = rpm_file() else { return };

    // Name, version (Cargo's), architecture, license.
    let head = query(
        &rpm,
        &["-qp", "--qf", "%{NAME} %{VERSION} %{ARCH} %{LICENSE}"],
    );
    assert_eq!(
        head,
        format!(
            "ctune {} x86_64 MIT OR Apache-2.0",
            env!("CARGO_PKG_VERSION")
        )
    );

    // The file list, exactly.
    let listed: BTreeSet<String> = query(&rpm, &["-qlp"]).lines().map(String::from).collect();
    let want = expected_files();
    let missing: Vec<_> = want.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "rpm -qlp: missing {missing:?}, unexpected {extra:?}"
    );

    // The config is the only %config file, and noreplace (an edited one is kept on
    // upgrade); docs are %doc, licenses %license.
    assert_eq!(query(&rpm, &["-qcp"]), "/etc/ctune/ctune.yaml\n");
    let flags = query(
        &rpm,
        &["-qp", "--qf", "[%{FILEFLAGS:fflags} %{FILENAMES}\n]"],
    );
    let flag_of = |path: &str| -> String {
        flags
            .lines()
            .find_map(|l| {
                let (f, p) = l.split_once(' ')?;
                (p == path).then(|| f.to_string())
            })
            .unwrap_or_else(|| panic!("{path} not in:\n{flags}"))
    };
    let conf = flag_of("/etc/ctune/ctune.yaml");
    assert!(
        conf.contains('c') && conf.contains('n'),
        "ctune.yaml flags {conf:?}: want %config(noreplace)"
    );
    assert!(flag_of("/usr/share/doc/ctune/README.md").contains('d'));
    assert!(flag_of("/usr/share/licenses/ctune/LICENSE-MIT").contains('l'));
    assert!(flag_of("/usr/share/licenses/ctune/LICENSE-APACHE").contains('l'));
    assert!(!flag_of("/usr/bin/ctune").contains('c'));

    // Modes and owners.
    let modes = query(
        &rpm,
        &[
            "-qp",
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]",
        ],
    );
    for line in modes.lines() {
        let mut it = line.splitn(3, ' ');
        let (perms, owner, path) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        assert_eq!(owner, "root:root", "{line}");
        let want = if perms.starts_with('d') {
            "drwxr-xr-x"
        } else if path == "/usr/bin/ctune" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(perms, want, "{line}");
    }

    // Requirements: what the binary links (libc, libgcc_s for unwinding, the loader),
    // /bin/sh for the scriptlets, rpm's own features and the config's version.
    let allowed = [
        "libc.so.6(",
        "libgcc_s.so.1(",
        "ld-linux-x86-64.so.2(",
        "rtld(GNU_HASH)",
        "/bin/sh",
        "rpmlib(",
        "config(ctune) = ",
    ];
    let requires = query(&rpm, &["-qpR"]);
    for req in requires.lines() {
        assert!(
            allowed.iter().any(|a| req.starts_with(a)),
            "unexpected requirement {req:?} in:\n{requires}"
        );
    }
    assert!(requires.lines().any(|r| r.starts_with("libc.so.6(")));

    // The scriptlets.
    let scripts = query(&rpm, &["-qp", "--scripts"]);
    let section = |name: &str| -> String {
        let start = scripts
            .find(&format!("{name} scriptlet (using /bin/sh):\n"))
            .unwrap_or_else(|| panic!("no {name} scriptlet in:\n{scripts}"));
        let body = &scripts[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        let end = body
            .find(" scriptlet (using ")
            .map_or(body.len(), |i| body[..i].rfind('\n').map_or(0, |n| n + 1));
        body[..end].to_string()
    };
    let post = section("postinstall");
    let preun = section("preuninstall");
    let postun = section("postuninstall");
    assert!(
        !post.contains("restore") && !preun.contains("Managed by ctune"),
        "the scriptlets were not split apart:\n{scripts}"
    );
    for (name, body) in [("post", &post), ("preun", &preun), ("postun", &postun)] {
        let out = Command::new("sh")
            .args(["-n", "-c", body])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "%{name} is not valid sh: {}",
            text(&out)
        );
        for line in body.lines().filter(|l| l.contains("systemctl ")) {
            let l = line.trim();
            if l.starts_with("systemctl") {
                assert!(l.ends_with("|| :"), "%{name}: unguarded {l:?}");
            }
        }
    }
    // %post: the presets, on a first install only ($1 == 1); without the systemd
    // macros (Debian's rpm) written out, with them systemd-update-helper's equivalent.
    let preset = post.contains("if [ \"$1\" -eq 1 ] && command -v systemctl")
        && post.contains("systemctl --no-reload preset ctune-boot.service ctune.service");
    let helper = post.contains("[ $1 -eq 1 ]")
        && post.contains("install-system-units ctune-boot.service ctune.service");
    assert!(
        preset || helper,
        "%post does not apply the presets:\n{post}"
    );
    // %preun on erase: the units stopped and disabled, then the restore while the binary
    // is still there, its failure reported and not fatal.
    let stop = preun
        .find("disable --now ctune.service ctune-boot.service")
        .or_else(|| preun.find("remove-system-units ctune.service ctune-boot.service"))
        .unwrap_or_else(|| panic!("%preun does not stop the units:\n{preun}"));
    let restore = preun
        .find("/usr/bin/ctune restore --force || echo \"ctune: restore failed (exit $?)")
        .unwrap_or_else(|| panic!("%preun does not restore:\n{preun}"));
    assert!(stop < restore, "%preun restores before stopping the agent");
    assert!(
        preun.contains("if [ \"$1\" -eq 0 ] && [ -x /usr/bin/ctune ]; then"),
        "%preun restores on erase only:\n{preun}"
    );
    assert!(
        preun.trim_end().ends_with(':'),
        "%preun must end in success"
    );
    // %postun on erase: ctune's own files (by their header) and its state; on upgrade a
    // try-restart (an agent that was stopped stays stopped).
    for needle in [
        "if [ \"$1\" -eq 0 ]; then",
        "/etc/sysctl.d/99-ctune.conf /etc/modules-load.d/ctune.conf /etc/modprobe.d/ctune.conf",
        "grep -q '^# Managed by ctune'",
        "rm -rf /var/lib/ctune /run/ctune",
    ] {
        assert!(
            postun.contains(needle),
            "%postun lacks {needle:?}:\n{postun}"
        );
    }
    assert!(
        postun.contains("systemctl try-restart ctune.service")
            || postun.contains("mark-restart-system-units ctune.service"),
        "%postun does not restart the agent on upgrade:\n{postun}"
    );

    // The payload: units, preset, config and licenses byte for byte as in the
    // repository; the binary runs and reports Cargo's version.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .args(["-c", "rpm2archive - < \"$1\" | tar -xzf - -C \"$2\"", "x"])
        .arg(&rpm)
        .arg(dir.path())
        .output()
        .expect("bash");
    assert!(out.status.success(), "rpm2archive | tar: {}", text(&out));
    let root = repo();
    for (packaged, source) in [
        (
            "usr/lib/systemd/system/ctune.service",
            "systemd/ctune.service",
        ),
        (
            "usr/lib/systemd/system/ctune-boot.service",
            "systemd/ctune-boot.service",
        ),
        (
            "usr/lib/systemd/system-preset/50-ctune.preset",
            "packaging/rpm/50-ctune.preset",
        ),
        ("etc/ctune/ctune.yaml", "config/ctune.yaml"),
        ("usr/share/licenses/ctune/LICENSE-MIT", "LICENSE-MIT"),
        ("usr/share/licenses/ctune/LICENSE-APACHE", "LICENSE-APACHE"),
        ("usr/share/doc/ctune/README.md", "README.md"),
    ] {
        let got = std::fs::read(dir.path().join(packaged)).unwrap();
        let want = std::fs::read(root.join(source)).unwrap();
        assert!(got == want, "/{packaged} differs from {source}");
    }
    let preset = std::fs::read_to_string(root.join("packaging/rpm/50-ctune.preset")).unwrap();
    let rules: Vec<&str> = preset
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(
        rules,
        ["enable ctune-boot.service", "enable ctune.service"],
        "50-ctune.preset"
    );
    let out = Command::new(dir.path().join("usr/bin/ctune"))
        .arg("--version")
        .output()
        .expect("run the packaged binary");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ctune {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Install, upgrade with the agent disabled, erase (restore puts the values back),
/// erase with conntrack gone (restore fails, the erase does not): in a scratch root on
/// a fixture kernel, nothing of this machine touched. Root only.
#[test]
fn rpm_installs_upgrades_and_erases_in_a_scratch_root() {
    let Some(rpm) = rpm_file() else { return };
    let out = Command::new("bash")
        .arg("packaging/rpm/scratch-install.sh")
        .arg(&rpm)
        .current_dir(repo())
        .output()
        .expect("run bash");
    if out.status.code() == Some(77) {
        eprintln!(
            "rpm_installs_upgrades_and_erases_in_a_scratch_root: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "scratch-install.sh failed:\n{}",
        text(&out)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    eprint!("{report}");
    assert!(
        report.contains("scratch-install: all checks passed"),
        "{}",
        text(&out)
    );
}
