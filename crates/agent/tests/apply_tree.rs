//! End-to-end tests of the commands that write: `apply`, `boot` and `restore`, run as the
//! real binary against copies of the fixture kernel trees.
//!
//! In a fixture copy (`common::tree::Tree`) the "kernel" files are plain files, so `apply` writes them as it
//! would write sysctls and reads them back. Every run passes all five roots
//! (`--proc-root`, `--sys-root`, `--etc-root`, `--run-root`, `--state-dir`) into the
//! temporary directory and a config watching only the initial namespace, so nothing on
//! the host is read or written and the fixtures themselves never change.

use crate::common;

use common::tree::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Entry names in a directory.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The errno a write into a read-only place gets: root ignores modes, so the tests make
/// it read-only with a mount (EROFS); anyone else gets EACCES from the modes.
fn read_only_errno() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "EROFS"
    } else {
        "EACCES"
    }
}

/// Makes a directory or a file unwritable for the duration of a test: a read-only bind
/// mount as root (root ignores file modes), modes 0555/0444 otherwise. Undone on drop,
/// also when the test panics; declare it after the `Tree`, so it is undone first.
enum ReadOnly {
    Mount(PathBuf),
    Modes(PathBuf),
}

impl ReadOnly {
    /// None: root without the privilege to mount (a container); the caller skips.
    fn make(path: &Path) -> Option<ReadOnly> {
        if nix::unistd::geteuid().is_root() {
            let ok = Command::new("mount")
                .arg("--bind")
                .arg(path)
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
            // From here on the guard unmounts, whatever happens next.
            let guard = ReadOnly::Mount(path.to_path_buf());
            let status = Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(path)
                .status()
                .expect("run mount");
            if !status.success() {
                return None;
            }
            Some(guard)
        } else {
            let mode = if path.is_dir() { 0o555 } else { 0o444 };
            let guard = ReadOnly::Modes(path.to_path_buf());
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            Some(guard)
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        match self {
            ReadOnly::Mount(p) => {
                let ok = Command::new("umount")
                    .arg(&*p)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&*p).status();
                }
            }
            ReadOnly::Modes(p) => {
                let mode = if p.is_dir() { 0o755 } else { 0o644 };
                let _ = fs::set_permissions(&*p, fs::Permissions::from_mode(mode));
            }
        }
    }
}

// 1a. Pressure on the modular 4.19 table: max and hash applied, the three files written,
// the operator's values remembered.
#[test]
fn apply_under_pressure_module() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    let (old, new_max) = t.planned(MAX).expect("max grows");
    assert_eq!(old, K419_MAX);
    let (old_b, new_b) = t.planned(BUCKETS).expect("hash grows");
    assert_eq!(old_b, K419_BUCKETS);

    let out = t.expect(&["apply"], 0);
    assert_eq!(t.get(MAX), new_max, "{out}");
    assert_eq!(t.get(BUCKETS), new_b, "{out}");
    assert!(new_max > K419_MAX && new_b > K419_BUCKETS);

    let sysctl = t.etc_file(SYSCTL_FILE);
    assert!(sysctl.starts_with(HEADER), "{sysctl}");
    assert_eq!(
        sysctl_lines(&sysctl),
        [(MAX.to_string(), new_max), (BUCKETS.to_string(), new_b)],
        "max first, then buckets: {sysctl}"
    );
    let load = t.etc_file(MODULES_LOAD_FILE);
    assert!(load.starts_with(HEADER), "{load}");
    assert!(load.lines().any(|l| l == "nf_conntrack"), "{load}");
    let modprobe = t.etc_file(MODPROBE_FILE);
    assert!(modprobe.starts_with(HEADER), "{modprobe}");
    let options: Vec<&str> = modprobe.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(options, [format!("options nf_conntrack hashsize={new_b}")]);
    t.assert_written(&out, &[SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE]);

    let st = t.state_json();
    assert_eq!(u(&st["original"][MAX]), K419_MAX, "{st:#}");
    assert_eq!(u(&st["original"][BUCKETS]), K419_BUCKETS, "{st:#}");
    assert_eq!(u(&st["policy"]["applied"][MAX]), new_max, "{st:#}");
    assert_eq!(u(&st["policy"]["applied"][BUCKETS]), new_b, "{st:#}");
}

// 1b. Built-in 6.18: the hash (buckets == max) needs no resize; no module files.
#[test]
fn apply_under_pressure_built_in() {
    let t = Tree::new(K618, INITIAL);
    t.pressure(K618_MAX);
    let (_, new_max) = t.planned(MAX).expect("max grows");
    t.expect(&["apply"], 0);
    assert_eq!(t.get(MAX), new_max);
    assert_eq!(t.get(BUCKETS), K618_MAX, "hash already large enough");
    let sysctl = t.etc_file(SYSCTL_FILE);
    assert_eq!(
        sysctl_lines(&sysctl),
        [(MAX.to_string(), new_max)],
        "{sysctl}"
    );
    assert_eq!(
        names(&t.etc()),
        ["sysctl.d"],
        "built in: no modprobe.d / modules-load.d"
    );
    assert_eq!(u(&t.state_json()["original"][MAX]), K618_MAX);
}

// 2. A second apply right after changes nothing and rewrites none of ctune's files.
#[test]
fn second_apply_rewrites_no_file() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let before = t.identities();
    assert_eq!(
        before.len(),
        5,
        "three etc files, the state and the history: {before:#?}"
    );
    let state_before = t.state_json();
    let kernel = (t.get(MAX), t.get(BUCKETS));

    let out = t.expect(&["apply"], 0);
    assert!(out.starts_with("nothing to change\n"), "{out}");
    for rel in [SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE] {
        let line = format!("unchanged {}", t.etc().join(rel).display());
        assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
    }
    assert!(!out.contains("wrote "), "{out}");
    let after = t.identities();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "no file added or removed"
    );
    assert_unchanged(&before, &after, &t.etc());
    assert_eq!((t.get(MAX), t.get(BUCKETS)), kernel);
    // What the state means is unchanged (its bytes: see the ignored test below).
    let state_after = t.state_json();
    for key in ["original", "boot_id", "version"] {
        assert_eq!(state_before[key], state_after[key], "{key}");
    }
    for key in [
        "applied",
        "operator_held",
        "last_resize",
        "baseline_max",
        "low_since",
    ] {
        assert_eq!(
            state_before["policy"][key], state_after["policy"][key],
            "{key}"
        );
    }
}

/// Requires every file of `before` below `dir` to keep its bytes, inode and mtime.
fn assert_unchanged(
    before: &BTreeMap<PathBuf, (Vec<u8>, u64, i64, i64)>,
    after: &BTreeMap<PathBuf, (Vec<u8>, u64, i64, i64)>,
    dir: &Path,
) {
    for (path, (bytes, ino, mtime, nsec)) in before.iter().filter(|(p, _)| p.starts_with(dir)) {
        let (b2, i2, m2, n2) = &after[path];
        assert!(
            bytes == b2,
            "{} changed:\n--- before\n{}--- after\n{}",
            path.display(),
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(b2)
        );
        assert_eq!(
            (ino, mtime, nsec),
            (i2, m2, n2),
            "{} was rewritten (inode/mtime changed)",
            path.display()
        );
    }
}

// 2b. ... and does not rewrite the state file either.
#[test]

fn second_apply_does_not_rewrite_state() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let before = t.identities();
    t.expect(&["apply"], 0);
    assert_unchanged(&before, &t.identities(), &t.state());
}

// 3. A changed file is replaced by rename: new inode, no temp file left.
#[test]
fn changed_file_is_replaced_atomically() {
    let t = Tree::new(K618, INITIAL);
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    let old = format!("{HEADER}net.netfilter.nf_conntrack_max = 200000\n");
    fs::write(dir.join("99-ctune.conf"), &old).unwrap();
    let old_ino = fs::metadata(dir.join("99-ctune.conf")).unwrap().ino();

    t.pressure(K618_MAX);
    let out = t.expect(&["apply"], 0);
    let new_max = t.get(MAX);
    assert!(new_max > K618_MAX, "{out}");
    let now = t.etc_file(SYSCTL_FILE);
    assert_ne!(now, old);
    assert!(now.starts_with(HEADER), "{now}");
    assert_eq!(sysctl_lines(&now), [(MAX.to_string(), new_max)], "{now}");
    let m = fs::symlink_metadata(dir.join("99-ctune.conf")).unwrap();
    assert!(m.is_file());
    assert_ne!(
        m.ino(),
        old_ino,
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(names(&dir), ["99-ctune.conf"], "no temp file left behind");
}

// 4. A symlink at ctune's file is refused: the victim is untouched, the rest applied.
#[test]
fn symlink_at_target_is_refused() {
    let t = Tree::new(K419, INITIAL);
    let victim = t.root().join("victim.conf");
    fs::write(&victim, "precious\n").unwrap();
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("99-ctune.conf");
    std::os::unix::fs::symlink(&victim, &link).unwrap();

    t.pressure(K419_MAX);
    let out = t.expect(&["apply"], 4);
    assert!(out.contains(link.to_str().unwrap()), "{out}");
    assert!(out.contains("symlink"), "{out}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(&link).unwrap(), victim);
    assert_eq!(names(&dir), ["99-ctune.conf"], "no temp file left behind");
    // The kernel values are applied all the same.
    assert!(t.get(MAX) > K419_MAX);
    assert!(t.get(BUCKETS) > K419_BUCKETS);
}

// 5. An unwritable sysctl.d: exit 4 naming file and errno, nothing left in it, and the
// kernel values stay applied (a persist failure does not undo the write to the kernel).
#[test]
fn unwritable_sysctl_dir_is_reported_and_kernel_values_stay() {
    let t = Tree::new(K419, INITIAL);
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    let Some(_ro) = ReadOnly::make(&dir) else {
        eprintln!("skipped: running as root without the privilege to bind-mount read-only");
        return;
    };
    assert!(
        fs::write(dir.join("probe"), "x").is_err(),
        "really read-only"
    );

    t.pressure(K419_MAX);
    let (_, new_max) = t.planned(MAX).expect("max grows");
    let (_, new_b) = t.planned(BUCKETS).expect("hash grows");
    let out = t.expect(&["apply"], 4);
    let file = dir.join("99-ctune.conf");
    let line = out
        .lines()
        .find(|l| l.contains(file.to_str().unwrap()))
        .unwrap_or_else(|| panic!("file not named:\n{out}"));
    assert!(line.contains(read_only_errno()), "{line}");
    assert!(line.starts_with("FAILED"), "{line}");
    assert!(
        names(&dir).is_empty(),
        "no new or partial file: {:?}",
        names(&dir)
    );
    assert_eq!(t.get(MAX), new_max, "kernel value applied");
    assert_eq!(t.get(BUCKETS), new_b, "kernel value applied");
    // The other files are still written, and the state remembers the originals.
    assert!(
        t.etc_file(MODPROBE_FILE)
            .contains(&format!("hashsize={new_b}\n"))
    );
    assert!(t.etc().join(MODULES_LOAD_FILE).is_file());
    assert_eq!(u(&t.state_json()["original"][MAX]), K419_MAX);
}

// 5b. Once the directory is writable again, the next apply persists what is in force.
#[test]

fn failed_persist_is_retried_by_next_apply() {
    let t = Tree::new(K618, INITIAL);
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    t.pressure(K618_MAX);
    {
        let Some(_ro) = ReadOnly::make(&dir) else {
            eprintln!("skipped: running as root without the privilege to bind-mount read-only");
            return;
        };
        t.expect(&["apply"], 4);
    }
    let new_max = t.get(MAX);
    assert!(new_max > K618_MAX);
    let out = t.expect(&["apply"], 0);
    let file = dir.join("99-ctune.conf");
    assert!(
        file.is_file(),
        "the raised max is still not persisted after a second apply:\n{out}"
    );
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE)),
        [(MAX.to_string(), new_max)]
    );
}

// 6a. apply under pressure, load gone, restore: the tree is back to what it was: etc
// files and state removed, proc values back to the original ones. Files below proc are
// compared by value here (by bytes in the ignored test below), the rest by bytes.
#[test]
fn restore_returns_tree_to_original() {
    for kernel in [K419, K618] {
        let t = Tree::new(kernel, INITIAL);
        let before = t.snapshot();
        let out = apply_then_restore(&t);
        let after = t.snapshot();
        // The history is kept: it is the record of what happened.
        let history = Path::new("state/history.jsonl");
        assert!(after.contains_key(history), "{kernel}: history kept");
        let changed: Vec<_> = before
            .keys()
            .chain(after.keys())
            .filter(|k| *k != history)
            .filter(|k| {
                let v = |x: &Vec<u8>| String::from_utf8_lossy(x).trim().to_string();
                match (before.get(*k), after.get(*k)) {
                    (Some(a), Some(b)) if k.starts_with("proc/sys") => v(a) != v(b),
                    (a, b) => a != b,
                }
            })
            .collect();
        assert!(
            changed.is_empty(),
            "{kernel}: differs after restore: {changed:?}\n{out}"
        );
        assert!(!t.state_file().exists());
        for rel in [SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE] {
            assert!(!t.etc().join(rel).exists(), "{kernel}: {rel} removed");
        }

        // A second restore has nothing to do.
        let out = t.expect(&["restore"], 0);
        assert!(out.contains("no state file"), "{kernel}: {out}");
    }
}

/// Applies under pressure, lets the load fall back to the fixture's count, restores.
fn apply_then_restore(t: &Tree) -> String {
    let max = t.get(MAX);
    let count_bytes = fs::read(t.sysctl(COUNT)).unwrap();
    t.pressure(max);
    t.expect(&["apply"], 0);
    assert!(t.get(MAX) > max, "applied");
    assert!(t.etc().join(SYSCTL_FILE).is_file() && t.state_file().is_file());
    fs::write(t.sysctl(COUNT), &count_bytes).unwrap();
    let out = t.expect(&["restore"], 0);
    assert!(out.contains(&format!("restored {MAX}")), "{out}");
    out
}

// 6a'. ... byte for byte, also below proc.
#[test]

fn restore_returns_proc_to_original_bytes() {
    let t = Tree::new(K419, INITIAL);
    let before = t.snapshot();
    apply_then_restore(&t);
    let after = t.snapshot();
    for (path, bytes) in before.iter().filter(|(p, _)| p.starts_with("proc")) {
        assert!(
            after.get(path) == Some(bytes),
            "{}: {:?} before, {:?} after",
            path.display(),
            String::from_utf8_lossy(bytes),
            after
                .get(path)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        );
    }
}

// 6b. restore does not lower max under load (count above original max / 1.25) unless
// forced; --force then finishes.
#[test]
fn restore_refuses_to_lower_max_under_load_unless_forced() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let raised = t.get(MAX);
    // 85% of the original max: above 80% (count + 25% headroom > original).
    t.set(COUNT, K419_MAX * 85 / 100);
    let out = t.expect(&["restore"], 4);
    assert!(out.contains("--force"), "{out}");
    assert!(
        out.contains(&format!("not lowering {raised} -> {K419_MAX}")),
        "{out}"
    );
    assert_eq!(t.get(MAX), raised, "max not lowered");
    assert!(t.state_file().is_file(), "state kept for a later restore");

    let out = t.expect(&["restore", "--force"], 0);
    assert_eq!(t.get(MAX), K419_MAX, "{out}");
    assert_eq!(t.get(BUCKETS), K419_BUCKETS, "{out}");
    assert!(!t.state_file().exists(), "{out}");
    for rel in [SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE] {
        assert!(!t.etc().join(rel).exists(), "{rel} removed");
    }
}

// 6c. After a refused restore the state is kept "so restore can finish later", but it
// still says ctune set the hash it has just put back, so the next apply blames an admin.
#[test]

fn partial_restore_is_not_mistaken_for_an_operator_change() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let out = t.expect(&["restore"], 4);
    // The hash is not shrunk while max stays up under load (it would lengthen chains).
    assert!(out.contains("not shrinking"), "{out}");
    assert_ne!(t.get(BUCKETS), K419_BUCKETS, "buckets kept with max");
    let out = t.expect(&["apply"], 0);
    assert!(
        !out.contains("someone else"),
        "ctune blames an admin for its own restore:\n{out}"
    );
    let st = t.state_json();
    assert_eq!(
        st["policy"]["operator_held"],
        Value::Array(vec![]),
        "{st:#}"
    );
}

// 7. A value an admin wrote over ctune's is adopted, not overwritten, until it becomes
// unsafe (critical level).
#[test]
fn operator_change_is_adopted_until_critical() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    t.expect(&["apply"], 0);
    let ctune_max = t.get(MAX);
    let count = t.get(COUNT);
    // The admin's value: the same count is 82% of it, above the 75% watermark (ctune
    // would grow) but below the 95% critical level.
    let admin = 72000;
    assert!(count * 100 / admin >= 75 && count * 100 / admin < 95);
    t.set(MAX, admin);

    let out = t.expect(&["apply"], 0);
    assert_eq!(
        t.get(MAX),
        admin,
        "the admin's value is not overwritten:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "{MAX} is {admin} but ctune set {ctune_max}: someone else changed it"
        )),
        "{out}"
    );
    assert!(out.contains("set by someone else"), "{out}");
    let st = t.state_json();
    assert!(
        st["policy"]["operator_held"]
            .as_array()
            .unwrap()
            .contains(&Value::from(MAX)),
        "{st:#}"
    );
    // ctune's own file follows the live value, so a reboot does not undo the admin.
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE))[0],
        (MAX.to_string(), admin)
    );
    // Still the same on the next run, without the "someone else changed it" news.
    let out = t.expect(&["apply"], 0);
    assert_eq!(t.get(MAX), admin, "{out}");

    // Critical: 99% of the admin's value.
    t.set(COUNT, admin * 99 / 100);
    let out = t.expect(&["apply"], 0);
    let raised = t.get(MAX);
    assert!(raised > admin, "raised again at critical:\n{out}");
    assert!(out.contains("became unsafe"), "{out}");
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE))[0],
        (MAX.to_string(), raised)
    );
}

// 8a. boot puts the persisted values in force, max before buckets whatever the file's
// order, and says so; a second boot has nothing to do.
#[test]
fn boot_applies_persisted_values() {
    for kernel in [K419, K618] {
        let t = Tree::new(kernel, INITIAL);
        let (max, buckets) = (t.get(MAX), t.get(BUCKETS));
        let (p_max, p_buckets) = (max * 3, buckets * 2);
        let dir = t.etc().join("sysctl.d");
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("99-ctune.conf"),
            format!(
                "{HEADER}net.netfilter.{BUCKETS} = {p_buckets}\nnet.netfilter.{MAX} = {p_max}\n"
            ),
        )
        .unwrap();
        let out = t.expect(&["boot"], 0);
        assert_eq!(t.get(MAX), p_max, "{kernel}: {out}");
        assert_eq!(t.get(BUCKETS), p_buckets, "{kernel}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                format!("{MAX}: {max} -> {p_max} (persisted value applied)"),
                format!("{BUCKETS}: {buckets} -> {p_buckets} (persisted value applied)"),
            ],
            "{kernel}: max first"
        );
        let out = t.expect(&["boot"], 0);
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                format!("{MAX} already {p_max}"),
                format!("{BUCKETS} already {p_buckets}")
            ],
        );
        assert!(!t.state().exists(), "boot keeps no state");
    }
}

// 8b. Nothing persisted: nothing to do, exit 0, nothing written.
#[test]
fn boot_without_persisted_file() {
    let t = Tree::new(K419, INITIAL);
    let before = t.snapshot();
    let out = t.expect(&["boot"], 0);
    assert!(out.contains("nothing persisted"), "{out}");
    assert_eq!(t.snapshot(), before);
}

// 8c. A persisted file but no conntrack: exit 3.
#[test]
fn boot_without_conntrack_exits_3() {
    let t = Tree::new(K419, INITIAL);
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("99-ctune.conf"),
        format!("{HEADER}net.netfilter.{MAX} = 131072\n"),
    )
    .unwrap();
    fs::remove_dir_all(t.netfilter()).unwrap();
    let out = t.expect(&["boot"], 3);
    assert!(out.contains(MAX) && out.contains("not loaded"), "{out}");
    assert!(!t.netfilter().exists(), "nothing created");
}

// 9a. One key whose write fails (buckets read-only) does not stop the others: max is
// applied and persisted, the failure names key, file and errno, exit 4, and the state
// does not claim the failed change.
//
// A missing or unreadable buckets file would not do: the observation then has no hash
// size and the policy plans no resize at all (9b), so the file is kept readable and
// made unwritable (read-only bind mount as root, mode 0444 otherwise).
#[test]
fn failed_write_of_one_key_does_not_stop_the_rest() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    let (_, new_max) = t.planned(MAX).expect("max grows");
    assert!(t.planned(BUCKETS).is_some(), "hash grows");
    let Some(_ro) = ReadOnly::make(&t.sysctl(BUCKETS)) else {
        eprintln!("skipped: running as root without the privilege to bind-mount read-only");
        return;
    };
    let out = t.expect(&["apply"], 4);
    assert_eq!(t.get(MAX), new_max, "max applied:\n{out}");
    assert_eq!(t.get(BUCKETS), K419_BUCKETS, "{out}");
    let failed = out
        .lines()
        .skip_while(|l| !l.starts_with(&format!("FAILED {BUCKETS}")))
        .nth(1)
        .unwrap_or_else(|| panic!("no FAILED line for {BUCKETS}:\n{out}"));
    assert!(
        failed.contains(t.sysctl(BUCKETS).to_str().unwrap()),
        "{failed}"
    );
    assert!(failed.contains(read_only_errno()), "{failed}");
    assert!(out.contains(&format!("changed {MAX}")), "{out}");

    // What is in force is persisted: max only, so no hashsize for modprobe.d.
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE)),
        [(MAX.to_string(), new_max)]
    );
    assert!(!t.etc().join(MODPROBE_FILE).exists());
    let st = t.state_json();
    assert_eq!(u(&st["original"][MAX]), K419_MAX, "{st:#}");
    // The operator's value is saved before any write, so it is there even though the
    // write failed; restore finds live == original and leaves it.
    assert_eq!(u(&st["original"][BUCKETS]), K419_BUCKETS, "{st:#}");
    assert!(st["policy"]["applied"][BUCKETS].is_null(), "{st:#}");
    assert!(st["policy"]["last_resize"].is_null(), "{st:#}");
}

// 9b. No buckets file at all: the hash is unknown and not planned; max still applies,
// nothing is created in its place.
#[test]
fn missing_buckets_file_skips_the_hash_only() {
    let t = Tree::new(K419, INITIAL);
    t.pressure(K419_MAX);
    fs::remove_file(t.sysctl(BUCKETS)).unwrap();
    let out = t.expect(&["apply"], 0);
    assert!(t.get(MAX) > K419_MAX, "{out}");
    assert!(!t.sysctl(BUCKETS).exists(), "not created");
    assert!(
        out.lines()
            .any(|l| l.starts_with("note:") && l.contains(BUCKETS) && l.contains("ENOENT")),
        "{out}"
    );
    assert_eq!(
        sysctl_lines(&t.etc_file(SYSCTL_FILE)),
        [(MAX.to_string(), t.get(MAX))]
    );
}

// Found by the VM test: a module loaded with `hashsize=N` (modprobe.d) gets max = 8 x N
// from the kernel, above what ctune persisted. Boot is raise-only, but that value is the
// kernel's default, nobody's choice: boot puts the persisted max in force.
#[test]
fn boot_lowers_the_kernels_own_8x_hashsize_default() {
    let t = Tree::new(K419, INITIAL);
    let buckets = t.get(BUCKETS);
    t.set(MAX, buckets * 8);
    let persisted = buckets * 4;
    let dir = t.etc().join("sysctl.d");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("99-ctune.conf"),
        format!("{HEADER}net.netfilter.{MAX} = {persisted}\nnet.netfilter.{BUCKETS} = {buckets}\n"),
    )
    .unwrap();
    let out = t.expect(&["boot"], 0);
    assert_eq!(t.get(MAX), persisted, "{out}");
    // Any other higher value is someone's: left alone.
    t.set(MAX, buckets * 8 + 1);
    let out = t.expect(&["boot"], 0);
    assert_eq!(t.get(MAX), buckets * 8 + 1, "{out}");
    assert!(out.contains("only raises"), "{out}");
}
