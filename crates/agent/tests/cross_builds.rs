//! The builds for routers and small nodes (docs/packages.md, "Other machines"): the
//! static aarch64 musl binary, built with its real profile (`router`) by
//! packaging/build-cross.sh, runs under qemu-user against the fixture trees and prints
//! what this test's own (native) ctune prints, byte for byte, with the same exit codes
//! (tests/cross/run.sh); it stays within its size budget; its OpenWrt package has the
//! layout, control fields and tar headers opkg reads; its Alpine tarball holds the
//! binary. `CTUNE_CROSS_TARGETS` (space-separated) names other targets to prove the same
//! way (aarch64-unknown-linux-gnu, x86_64-unknown-linux-musl): each is a full fat-LTO
//! build, so CI builds only the router one (docs/packages.md says what each costs).
//!
//! Needs rustup (the script adds the target), gcc-aarch64-linux-gnu and qemu-user (and
//! libc6-dev-arm64-cross, lintian and dpkg-dev for the glibc target; `scripts/test
//! --install` installs them all); without them the test fails with the apt-get line
//! that installs them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The stripped router binary (aarch64 musl, `router` profile) may not grow past this:
/// 2,890,560 bytes when the profile was chosen (docs/packages.md, "Other machines"), so
/// about 10 % of room for ordinary growth. A change that needs more is worth a look at
/// what it costs on a router's 16 MiB of flash, and then a new budget here, with why.
const ROUTER_BUDGET_BYTES: u64 = 3_200_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a command in the repository; its stdout when it succeeds, else the test fails
/// with everything it printed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The last line a packaging script printed on stdout: the path it built, in the repo.
fn built_path(stdout: &str) -> PathBuf {
    repo().join(stdout.lines().last().expect("the script printed a path"))
}

fn targets() -> Vec<String> {
    let mut t = vec!["aarch64-unknown-linux-musl".to_string()];
    if let Ok(more) = std::env::var("CTUNE_CROSS_TARGETS") {
        for name in more.split_whitespace() {
            if !t.iter().any(|have| have == name) {
                t.push(name.to_string());
            }
        }
    }
    t
}

#[test]
fn cross_builds_match_the_native_one_under_qemu_and_pack() {
    let targets = targets();
    let mut args = vec!["packaging/build-cross.sh"];
    args.extend(targets.iter().map(String::as_str));
    let out = run("bash", &args);
    let bins: Vec<PathBuf> = out.lines().map(|l| repo().join(l)).collect();
    assert_eq!(bins.len(), targets.len(), "one binary per target:\n{out}");

    // Same output, same exit codes as this machine's build (the test's own binary).
    let mut args = vec!["tests/cross/run.sh", env!("CARGO_BIN_EXE_ctune")];
    args.extend(bins.iter().map(|b| b.to_str().expect("utf-8 path")));
    let report = run("bash", &args);
    assert!(report.contains(" passed, 0 failed"), "{report}");

    for (target, bin) in targets.iter().zip(&bins) {
        if target.ends_with("-musl") {
            check_router_size(target, bin);
            check_ipk(bin);
            check_tarball(target, bin);
        } else if target == "aarch64-unknown-linux-gnu" {
            check_arm64_deb();
        }
    }
}

/// The arm64 .deb (packaging/build-deb.sh --arch arm64): Architecture, a Depends with
/// the target's library packages (not the cross ones), lintian clean.
fn check_arm64_deb() {
    let deb = built_path(&run("bash", &["packaging/build-deb.sh", "--arch", "arm64"]));
    let deb_arg = deb.to_str().unwrap();
    let field = |f: &str| run("dpkg-deb", &["-f", deb_arg, f]).trim().to_string();
    assert_eq!(field("Architecture"), "arm64");
    let depends = field("Depends");
    assert!(
        depends.starts_with("libc6 (>= ")
            && depends.contains("libgcc-s1")
            && !depends.contains("cross"),
        "{depends}"
    );
    let lint = run(
        "lintian",
        &["--fail-on", "error,warning", "--display-info", deb_arg],
    );
    assert!(lint.trim().is_empty(), "lintian on {deb_arg}:\n{lint}");
}

fn check_router_size(target: &str, bin: &Path) {
    let size = std::fs::metadata(bin).expect("the binary").len();
    eprintln!("{target}: {size} bytes");
    if target.starts_with("aarch64") {
        assert!(
            size <= ROUTER_BUDGET_BYTES,
            "{}: {size} bytes, over the router budget of {ROUTER_BUDGET_BYTES} \
             (docs/packages.md, \"Other machines\", says what each dependency costs)",
            bin.display()
        );
    }
}

/// One member of a tar archive, as opkg's unarchive.c reads its header.
#[derive(Debug)]
struct Member {
    mode: u32,
    uid: u32,
    gid: u32,
    typeflag: u8,
    data: Vec<u8>,
}

/// The members of an uncompressed tar, checked as opkg-lede's get_header_tar checks
/// each header: magic "ustar", a valid checksum, a type it knows (no pax headers).
fn tar_members(tar: &[u8], what: &str) -> Vec<(String, Member)> {
    let octal = |field: &[u8]| -> u64 {
        let text = String::from_utf8_lossy(field);
        let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
        u64::from_str_radix(text, 8).unwrap_or_else(|e| panic!("{what}: octal {text:?}: {e}"))
    };
    let mut out = Vec::new();
    let mut at = 0;
    let mut long_name: Option<String> = None;
    while at + 512 <= tar.len() && tar[at..at + 512].iter().any(|&b| b != 0) {
        let h = &tar[at..at + 512];
        assert_eq!(
            &h[257..262],
            b"ustar",
            "{what}: header at {at} is not ustar/GNU"
        );
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        assert_eq!(sum, octal(&h[148..156]), "{what}: bad checksum at {at}");
        let typeflag = h[156];
        assert!(
            b"\x0001256LK".contains(&typeflag),
            "{what}: typeflag {:?} at {at}: opkg does not read it",
            typeflag as char
        );
        let size = octal(&h[124..136]) as usize;
        let data = tar[at + 512..at + 512 + size].to_vec();
        at += 512 + size.div_ceil(512) * 512;
        if typeflag == b'L' {
            long_name = Some(String::from_utf8_lossy(&data).trim_end_matches('\0').into());
            continue;
        }
        let short = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let member = Member {
            mode: octal(&h[100..108]) as u32,
            uid: octal(&h[108..116]) as u32,
            gid: octal(&h[116..124]) as u32,
            typeflag,
            data,
        };
        out.push((long_name.take().unwrap_or(short), member));
    }
    out
}

/// The reader above refuses what opkg's refuses: a pax header (GNU tar's `--format=pax`
/// writes one per file) and a header whose checksum is wrong.
#[test]
fn the_tar_reader_refuses_what_opkg_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), "x").unwrap();
    let tar = |format: &str| -> Vec<u8> {
        let out = Command::new("tar")
            .args(["--format", format, "-C"])
            .arg(dir.path())
            .args(["-cf", "-", "./f"])
            .output()
            .expect("tar");
        assert!(out.status.success());
        out.stdout
    };
    let gnu = tar("gnu");
    assert_eq!(tar_members(&gnu, "gnu").len(), 1);
    let pax = tar("pax");
    let read = std::panic::catch_unwind(|| tar_members(&pax, "pax"));
    assert!(read.is_err(), "a pax archive was read as opkg cannot");
    let mut bad = gnu.clone();
    bad[0] ^= 1; // the name changes, the stored checksum does not
    let read = std::panic::catch_unwind(|| tar_members(&bad, "corrupt"));
    assert!(read.is_err(), "a header with a wrong checksum was read");
}

fn gunzip(bytes: &[u8], what: &str) -> Vec<u8> {
    use std::io::Write;
    assert_eq!(&bytes[..2], b"\x1f\x8b", "{what} is not gzip");
    let mut child = Command::new("gzip")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip -dc");
    writer.join().unwrap().expect("feed gzip");
    assert!(out.status.success(), "{what}: gzip -dc failed");
    out.stdout
}

/// The files of a gzip'd tar by name (the "./" kept), every member owned by root.
fn archive(bytes: &[u8], what: &str) -> BTreeMap<String, Member> {
    let members = tar_members(&gunzip(bytes, what), what);
    for (name, m) in &members {
        assert_eq!((m.uid, m.gid), (0, 0), "{what}: {name} is not root's");
        assert!(name.starts_with("./"), "{what}: {name} lacks the ./ prefix");
    }
    members.into_iter().collect()
}

fn check_ipk(bin: &Path) {
    let ipk = built_path(&run(
        "bash",
        &["packaging/build-ipk.sh", bin.to_str().unwrap()],
    ));
    let bytes = std::fs::read(&ipk).expect("the ipk");
    let name = ipk.file_name().unwrap().to_string_lossy().into_owned();
    let arch = name
        .strip_prefix("ctune_")
        .and_then(|n| n.strip_suffix(".ipk"))
        .and_then(|n| n.split_once('_'))
        .map(|(_, arch)| arch.to_string())
        .unwrap_or_else(|| panic!("{name}: not ctune_<version>_<arch>.ipk"));

    // The outer archive: exactly these three members, in ipkg-build's order.
    let outer = tar_members(&gunzip(&bytes, &name), &name);
    let order: Vec<&str> = outer.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        order,
        ["./debian-binary", "./data.tar.gz", "./control.tar.gz"],
        "{name}"
    );
    let outer: BTreeMap<_, _> = outer.into_iter().collect();
    assert_eq!(
        outer["./debian-binary"].data, b"2.0\n",
        "{name}: debian-binary"
    );

    let control = archive(&outer["./control.tar.gz"].data, "control.tar.gz");
    let data = archive(&outer["./data.tar.gz"].data, "data.tar.gz");
    check_control(&control, &outer["./data.tar.gz"].data, &arch);
    check_data(&data, bin);

    // Reproducible: a second build gives the same bytes.
    let again = built_path(&run(
        "bash",
        &["packaging/build-ipk.sh", bin.to_str().unwrap()],
    ));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        bytes,
        "{name}: two builds differ"
    );
    eprintln!("{name}: {} bytes", bytes.len());
}

fn check_control(control: &BTreeMap<String, Member>, data_gz: &[u8], arch: &str) {
    let text = String::from_utf8_lossy(&control["./control"].data).into_owned();
    let field = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("control has no {key}:\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "ctune");
    // ipkg-build's rule for a package name.
    assert!(
        field("Package")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
    );
    assert_eq!(field("Architecture"), arch);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(field("Version"), format!("{version}-r1"));
    let depends: Vec<String> = field("Depends").split(", ").map(str::to_string).collect();
    assert_eq!(
        depends,
        ["kmod-nf-conntrack", "kmod-nf-conntrack-netlink"],
        "{text}"
    );
    // ipkg-build's Installed-Size: the bytes of the uncompressed data tar.
    let unpacked = gunzip(data_gz, "data.tar.gz").len();
    assert_eq!(field("Installed-Size"), unpacked.to_string(), "{text}");
    assert_eq!(control["./conffiles"].data, b"/etc/ctune/ctune.yaml\n");
    for script in ["./postinst", "./prerm"] {
        let m = &control[script];
        assert_eq!(m.mode & 0o777, 0o755, "{script} mode");
        let body = String::from_utf8_lossy(&m.data);
        assert!(body.starts_with("#!/bin/sh\n"), "{script}:\n{body}");
        assert!(
            body.contains(". ${IPKG_INSTROOT}/lib/functions.sh"),
            "{script}:\n{body}"
        );
    }
}

fn check_data(data: &BTreeMap<String, Member>, bin: &Path) {
    let file = |name: &str, mode: u32| -> &Member {
        let m = data
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in data.tar.gz: {:?}", data.keys()));
        assert!(
            m.typeflag == b'0' || m.typeflag == 0,
            "{name} is not a file"
        );
        assert_eq!(m.mode & 0o7777, mode, "{name} mode {:o}", m.mode);
        m
    };
    let repo = repo();
    let same = |name: &str, mode: u32, src: &str| {
        let want = std::fs::read(repo.join(src)).unwrap();
        assert!(file(name, mode).data == want, "{name} differs from {src}");
    };
    same("./etc/init.d/ctune", 0o755, "packaging/openwrt/ctune.init");
    same(
        "./etc/ctune/ctune.yaml",
        0o644,
        "packaging/openwrt/ctune.yaml",
    );
    let keep =
        String::from_utf8_lossy(&file("./lib/upgrade/keep.d/ctune", 0o644).data).into_owned();
    for path in [
        "/etc/ctune/state/",
        "/etc/sysctl.d/99-ctune.conf",
        "/etc/modules.d/00-ctune",
    ] {
        assert!(
            keep.lines().any(|l| l == path),
            "keep.d lacks {path}:\n{keep}"
        );
    }
    // The init script runs this path.
    let init = String::from_utf8_lossy(&data["./etc/init.d/ctune"].data).into_owned();
    assert!(
        init.contains("\nPROG=/usr/sbin/ctune\n"),
        "the init script does not run /usr/sbin/ctune"
    );
    let packed = &file("./usr/sbin/ctune", 0o755).data;
    let built = std::fs::metadata(bin).unwrap().len() as usize;
    // Only .comment (and .note) may have been stripped: a few hundred bytes.
    assert!(
        packed.len() <= built && built - packed.len() < 4096,
        "packed {} of {built}",
        packed.len()
    );
    let files: Vec<&String> = data.keys().filter(|n| !n.ends_with('/')).collect();
    assert_eq!(files.len(), 4, "unexpected files in data.tar.gz: {files:?}");
    check_packed_binary_runs(packed, bin);
}

/// The packed binary (stripped again) still runs and says the same as the one built.
fn check_packed_binary_runs(packed: &[u8], bin: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctune");
    std::fs::write(&path, packed).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let version = |p: &Path| {
        run(
            "bash",
            &["-c", &format!("{} {} --version", qemu_for(p), p.display())],
        )
    };
    assert_eq!(version(&path), version(bin));
}

/// The qemu command that runs an aarch64 static binary here (empty for this machine's).
fn qemu_for(bin: &Path) -> String {
    let header = run("readelf", &["-h", bin.to_str().unwrap()]);
    if !header.contains("AArch64") {
        return String::new();
    }
    run(
        "bash",
        &[
            "-c",
            "command -v qemu-aarch64 || command -v qemu-aarch64-static",
        ],
    )
    .trim()
    .to_string()
}

fn check_tarball(target: &str, bin: &Path) {
    let tgz = built_path(&run(
        "bash",
        &["packaging/build-tarball.sh", bin.to_str().unwrap()],
    ));
    let version = env!("CARGO_PKG_VERSION");
    let top = format!("ctune-{version}-{target}");
    let files = tar_members(&gunzip(&std::fs::read(&tgz).unwrap(), "tarball"), "tarball");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for f in [
        "ctune",
        "ctune.yaml",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ] {
        let want = format!("{top}/{f}");
        assert!(
            names.contains(&want.as_str()),
            "{want} not in {}: {names:?}",
            tgz.display()
        );
    }
    let (_, ctune) = files
        .iter()
        .find(|(n, _)| *n == format!("{top}/ctune"))
        .unwrap();
    assert_eq!(ctune.mode & 0o777, 0o755);
    assert_eq!(
        ctune.data,
        std::fs::read(bin).unwrap(),
        "the tarball's binary is the one built"
    );
}
