//! End-to-end tests of the `ctune` binary against copies of the fixture kernel trees.
//!
//! Every test copies a fixture tree into a temporary directory, mutates the copy, and
//! runs the real binary with all six roots (`--proc-root`, `--sys-root`, `--etc-root`,
//! `--run-root`, `--state-dir`, `--netlink-root`) pointing into that directory
//! (`common::Tree`), so nothing on the host is read and the fixtures themselves are
//! never changed.

use crate::common::Tree;

use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ctune");
const INITIAL: &str = "namespaces:\n  mode: initial\n";

fn code(out: &Output) -> i32 {
    out.status.code().expect("ctune exited by a signal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned number, found {v}"))
}

/// What the kernel does with a bucket count: round up to whole 512-bucket blocks.
fn round_up_512(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

/// The planned global change of `key`, as (old, new).
fn global_change(plan: &Value, key: &str) -> Option<(u64, u64)> {
    plan["plan"]["changes"]
        .as_array()
        .expect("plan.changes is an array")
        .iter()
        .find(|c| c["key"] == key && c["target"]["scope"] == "global")
        .map(|c| (u(&c["old"]), u(&c["new"])))
}

/// The entry of `files` whose path is `<etc>/<rel>`.
fn file<'a>(plan: &'a Value, tree: &Tree, rel: &str) -> Option<&'a Value> {
    let want = tree.etc().join(rel);
    plan["files"]
        .as_array()
        .expect("files is an array")
        .iter()
        .find(|f| f["path"].as_str().map(Path::new) == Some(want.as_path()))
}

fn namespace<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["namespaces"]
        .as_array()
        .expect("namespaces is an array")
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no namespace {name:?} in {status:#}"))
}

/// Nothing below the etc and state roots after a dry run.
fn assert_nothing_written(tree: &Tree) {
    for dir in [tree.etc(), tree.state()] {
        if let Ok(mut entries) = fs::read_dir(&dir) {
            assert!(
                entries.next().is_none(),
                "a dry run wrote below {}",
                dir.display()
            );
        }
    }
}

// 1. The 6.18 layout: built-in conntrack, sysfs slab size, `chainlength` column.
#[test]
fn kernel_6_18_status() {
    let t = Tree::copy("kernel-6.18");
    let s = t.json(INITIAL, &["status", "--json"]);
    assert_eq!(u(&s["max"]), 262144);
    assert_eq!(u(&s["buckets"]), 262144);
    assert_eq!(s["module"], "built_in");
    assert_eq!(s["namespaces"].as_array().unwrap().len(), 1, "{s:#}");
    let init = namespace(&s, "init");
    assert_eq!(u(&init["count"]), 8000);
    assert_eq!(u(&init["drop"]), 0x10 + 0x22);
    assert_eq!(u(&init["early_drop"]), 7);
    assert_eq!(u(&init["insert_failed"]), 1);
    assert_eq!(u(&init["chainlength"]), 0);
    assert!(init["error"].is_null(), "{init:#}");
    let mem = u(&s["memory_now_bytes"]);
    assert!(mem > 0);
    let c = &s["ceiling"];
    assert_eq!(u(&c["slab_bytes"]), 256, "slab size from sysfs");
    // The slab's object count (8123 in this tree's sysfs) covers every namespace's
    // entries, also those ctune cannot read: 123 more than the 8000 it counts.
    assert_eq!(u(&c["table_entries"]), 8123);
    assert_eq!(
        mem,
        8123 * (u(&c["slab_bytes"]) + u(&c["extension_bytes"])) + 262144 * 8,
        "entries x (slab + extensions) + 8 B per bucket"
    );
    assert_eq!(s["notes"], Value::Array(vec![]), "{s:#}");
}

// 2. The 4.19 layout: modular conntrack, no `chainlength`, slab size from slabinfo.
#[test]
fn kernel_4_19_status_and_entry_size() {
    let t = Tree::copy("kernel-4.19");
    let s = t.json(INITIAL, &["status", "--json"]);
    assert_eq!(s["module"], "module");
    let init = namespace(&s, "init");
    assert!(init["chainlength"].is_null(), "absent, not 0: {init:#}");
    assert_eq!(u(&init["drop"]), 5);
    assert_eq!(u(&init["early_drop"]), 2);

    let p = t.json(INITIAL, &["plan", "--json"]);
    let host = &p["observation"]["host"];
    assert_eq!(u(&host["entry_bytes"]), 320);
    assert_eq!(host["entry_bytes_source"], "slabinfo");
    assert_eq!(u(&host["cpus"]), 4);
}

// 3. No nf_conntrack_max: conntrack is not loaded.
#[test]
fn conntrack_not_loaded_exits_3() {
    let t = Tree::copy("kernel-6.18");
    fs::remove_dir_all(t.netfilter()).unwrap();
    for cmd in ["status", "plan"] {
        let out = t.run_with(INITIAL, &[cmd]);
        assert_eq!(code(&out), 3, "{cmd}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("nf_conntrack_max"), "{err}");
        assert!(
            err.contains("not loaded") && err.contains("not active"),
            "{err}"
        );
        assert!(stdout(&out).is_empty());
    }
}

/// Makes a directory unwritable for the duration of a test: a read-only bind mount as
/// root (root ignores file modes), modes 0555/0444 otherwise. Undone on drop, also when
/// the test panics.
enum ReadOnly {
    Mount(PathBuf),
    Modes(PathBuf),
}

impl ReadOnly {
    /// None: root without the privilege to mount (a container); the caller skips.
    fn make(dir: &Path) -> Option<ReadOnly> {
        if nix::unistd::geteuid().is_root() {
            let ok = Command::new("mount")
                .arg("--bind")
                .arg(dir)
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
            // From here on the guard unmounts, whatever happens next.
            let guard = ReadOnly::Mount(dir.to_path_buf());
            let status = Command::new("mount")
                .args(["-o", "remount,ro,bind"])
                .arg(dir)
                .status()
                .expect("run mount");
            assert!(status.success(), "remount read-only failed");
            Some(guard)
        } else {
            let guard = ReadOnly::Modes(dir.to_path_buf());
            for entry in fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                fs::set_permissions(&p, fs::Permissions::from_mode(0o444)).unwrap();
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
            Some(guard)
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        match self {
            ReadOnly::Mount(dir) => {
                let ok = Command::new("umount")
                    .arg(&*dir)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    let _ = Command::new("umount").arg("-l").arg(&*dir).status();
                }
            }
            ReadOnly::Modes(dir) => {
                // The directory first, or its files cannot be reached for cleanup.
                let _ = fs::set_permissions(&*dir, fs::Permissions::from_mode(0o755));
            }
        }
    }
}

// 4. Global keys that cannot be written: said, not fatal.
#[test]
fn read_only_sysctls_are_reported_not_fatal() {
    let t = Tree::copy("kernel-6.18");
    let is_root = nix::unistd::geteuid().is_root();
    // Declared after `t`, so it is undone before the tree is removed.
    let Some(_ro) = ReadOnly::make(&t.netfilter()) else {
        eprintln!("skipped: running as root without the privilege to bind-mount read-only");
        return;
    };
    // The test's own view: the directory really is unwritable now.
    assert!(fs::write(t.netfilter().join("probe"), "x").is_err());

    let p = t.json(INITIAL, &["plan", "--json"]);
    let access = &p["observation"]["global"]["write_access"];
    assert_eq!(access["writable"], false, "{access:#}");
    let reason = access["reason"].as_str().expect("a reason");
    let expected = if is_root {
        "read-only"
    } else {
        "permission denied"
    };
    assert!(reason.contains(expected), "{reason}");
    assert!(reason.contains("nf_conntrack_max"), "{reason}");
    assert_eq!(u(&p["observation"]["global"]["max"]), 262144);

    let out = t.run_with(INITIAL, &["plan"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("NOT writable"), "{}", stdout(&out));

    let s = t.json(INITIAL, &["status", "--json"]);
    assert_eq!(s["global_writable"], false);
}

// 5a. A required value that is not a number: exit 1, the file and the value named.
#[test]
fn garbage_max_exits_1_naming_file_and_value() {
    let t = Tree::copy("kernel-6.18");
    t.set("nf_conntrack_max", "lots");
    let out = t.run_with(INITIAL, &["status"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    let path = t.netfilter().join("nf_conntrack_max");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("lots"), "{err}");
}

// 5b. An unparsable statistics file costs the counters of that namespace, not the run.
#[test]
fn garbage_stat_file_is_a_note() {
    let t = Tree::copy("kernel-6.18");
    // No recorded ctnetlink replies either: the fallback that would otherwise answer
    // (kernel_matrix.rs proves it does) has nothing to give.
    fs::remove_dir_all(t.root().join("netlink")).unwrap();
    let stat = t.proc().join("net/stat/nf_conntrack");
    fs::write(&stat, "garbage\n").unwrap();
    let p = t.json(INITIAL, &["plan", "--json"]);
    let ns = &p["observation"]["namespaces"][0];
    assert!(ns["stat"].is_null(), "{ns:#}");
    assert_eq!(u(&ns["count"]), 8000, "the count still reads");
    let stat_path = stat.to_str().unwrap();
    let error = ns["error"].as_str().expect("an error for the namespace");
    assert!(error.contains(stat_path), "{error}");
    let notes = p["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains(stat_path))),
        "{notes:?}"
    );

    let s = t.json(INITIAL, &["status", "--json"]);
    let init = namespace(&s, "init");
    assert!(init["drop"].is_null() && init["chainlength"].is_null());
    assert!(init["error"].as_str().unwrap().contains(stat_path));
}

// 5c. Memory is required for the ceiling: exit 1, naming /meminfo.
#[test]
fn garbage_meminfo_exits_1() {
    let t = Tree::copy("kernel-6.18");
    for garbage in ["hello\n", "MemTotal: lots kB\n", ""] {
        fs::write(t.proc().join("meminfo"), garbage).unwrap();
        let out = t.run_with(INITIAL, &["plan"]);
        assert_eq!(code(&out), 1, "{garbage:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("/meminfo"), "{}", stderr(&out));
    }
}

/// 90% of `max`, rounded up.
fn ninety_percent(max: u64) -> u64 {
    (max * 9).div_ceil(10)
}

// 6a. Pressure on the built-in 6.18 table: max and hash grow, only sysctl.d is written.
#[test]
fn pressure_grows_max_and_hash_built_in() {
    let t = Tree::copy("kernel-6.18");
    // A hash smaller than max / 4, as after `nf_conntrack_max` was raised by hand.
    t.set("nf_conntrack_buckets", 65536);
    t.set("nf_conntrack_count", ninety_percent(262144));
    let p = t.json(INITIAL, &["plan", "--json"]);

    let ceiling = u(&p["plan"]["ceiling"]["value"]);
    let (old, new_max) = global_change(&p, "nf_conntrack_max").expect("max grows");
    assert_eq!(old, 262144);
    assert!(
        new_max > 262144 && new_max <= ceiling,
        "{new_max} vs {ceiling}"
    );
    let (old_b, new_b) = global_change(&p, "nf_conntrack_buckets").expect("hash grows");
    assert_eq!(old_b, 65536);
    assert_eq!(new_b, round_up_512(new_max.div_ceil(4)));

    let sysctl = file(&p, &t, "sysctl.d/99-ctune.conf").expect("sysctl.d file");
    let body = sysctl["new"].as_str().unwrap();
    assert!(
        body.lines()
            .any(|l| l == format!("net.netfilter.nf_conntrack_max = {new_max}")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l == format!("net.netfilter.nf_conntrack_buckets = {new_b}")),
        "{body}"
    );
    assert!(sysctl["old"].is_null());
    assert!(!sysctl["diff"].as_str().unwrap().is_empty());
    assert!(file(&p, &t, "modprobe.d/ctune.conf").is_none(), "built in");
    assert!(
        file(&p, &t, "modules-load.d/ctune.conf").is_none(),
        "built in"
    );
    assert_eq!(p["files"].as_array().unwrap().len(), 1);

    let out = t.run_with(INITIAL, &["--dry-run"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("conntrack is built in"));
    assert_nothing_written(&t);
}

// 6b. With the fixture's own hash (buckets == max, the 6.x default), growing max needs no
// resize: only max is persisted.
#[test]
fn pressure_with_large_hash_persists_only_max() {
    let t = Tree::copy("kernel-6.18");
    t.set("nf_conntrack_count", ninety_percent(262144));
    let p = t.json(INITIAL, &["plan", "--json"]);
    let (_, new_max) = global_change(&p, "nf_conntrack_max").expect("max grows");
    assert!(global_change(&p, "nf_conntrack_buckets").is_none(), "{p:#}");
    let body = file(&p, &t, "sysctl.d/99-ctune.conf").unwrap()["new"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(body.contains(&format!("net.netfilter.nf_conntrack_max = {new_max}\n")));
    assert!(!body.contains("nf_conntrack_buckets"), "{body}");
    assert_nothing_written(&t);
}

// 6c. Pressure on the modular 4.19 table: modules-load.d and modprobe.d are rendered too.
#[test]
fn pressure_module_renders_modprobe_and_modules_load() {
    let t = Tree::copy("kernel-4.19");
    t.set("nf_conntrack_count", ninety_percent(65536));
    let p = t.json(INITIAL, &["plan", "--json"]);

    let ceiling = u(&p["plan"]["ceiling"]["value"]);
    let (_, new_max) = global_change(&p, "nf_conntrack_max").expect("max grows");
    assert!(new_max > 65536 && new_max <= ceiling);
    let (old_b, new_b) = global_change(&p, "nf_conntrack_buckets").expect("hash grows");
    assert_eq!(old_b, 16384);
    assert_eq!(new_b, round_up_512(new_max.div_ceil(4)));

    let sysctl = file(&p, &t, "sysctl.d/99-ctune.conf").expect("sysctl.d file");
    assert!(
        sysctl["new"]
            .as_str()
            .unwrap()
            .contains(&format!("net.netfilter.nf_conntrack_max = {new_max}\n"))
    );
    let load = file(&p, &t, "modules-load.d/ctune.conf").expect("modules-load.d file");
    assert!(
        load["new"]
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == "nf_conntrack"),
        "{load:#}"
    );
    let modprobe = file(&p, &t, "modprobe.d/ctune.conf").expect("modprobe.d file");
    let options: Vec<&str> = modprobe["new"]
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        options,
        [format!("options nf_conntrack hashsize={new_b}")],
        "{modprobe:#}"
    );
    assert_nothing_written(&t);
}

// 7. A persisted file that already holds the values is shown unchanged.
#[test]
fn existing_persisted_file_is_unchanged() {
    let t = Tree::copy("kernel-6.18");
    t.set("nf_conntrack_buckets", 65536);
    t.set("nf_conntrack_count", ninety_percent(262144));
    let first = t.json(INITIAL, &["plan", "--json"]);
    let (_, new_max) = global_change(&first, "nf_conntrack_max").unwrap();
    let (_, new_b) = global_change(&first, "nf_conntrack_buckets").unwrap();
    let content = file(&first, &t, "sysctl.d/99-ctune.conf").unwrap()["new"]
        .as_str()
        .unwrap()
        .to_string();

    // As after a real run: the file is written and the kernel holds the new values.
    let sysctl_d = t.etc().join("sysctl.d");
    fs::create_dir_all(&sysctl_d).unwrap();
    fs::write(sysctl_d.join("99-ctune.conf"), &content).unwrap();
    t.set("nf_conntrack_max", new_max);
    t.set("nf_conntrack_buckets", new_b);
    t.set("nf_conntrack_count", new_max / 10);

    let second = t.json(INITIAL, &["plan", "--json"]);
    assert!(
        global_change(&second, "nf_conntrack_max").is_none(),
        "{second:#}"
    );
    assert!(global_change(&second, "nf_conntrack_buckets").is_none());
    let f = file(&second, &t, "sysctl.d/99-ctune.conf").expect("still managed");
    assert_eq!(f["old"].as_str(), Some(content.as_str()));
    assert_eq!(f["old"], f["new"]);
    assert_eq!(f["diff"], "");

    let out = t.run_with(INITIAL, &["plan"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).contains("99-ctune.conf (unchanged)"),
        "{}",
        stdout(&out)
    );
    // The dry run left the file as it was.
    assert_eq!(
        fs::read_to_string(sysctl_d.join("99-ctune.conf")).unwrap(),
        content
    );
}

// 8. A config that cannot be used: exit 2 with file, line and key.
#[test]
fn invalid_config_exits_2() {
    let t = Tree::copy("kernel-6.18");
    let out = t.run_with(
        "namespaces:\n  mode: initial\nhash:\n  ratio: 4\n  ratoi: 2\n",
        &["plan"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    let cfg = t.root().join("test-config.yaml");
    assert!(err.contains(cfg.to_str().unwrap()), "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("ratoi"), "{err}");
    assert!(stdout(&out).is_empty());

    // A cross-field error goes through validation rather than the YAML schema.
    let out = t.run_with(
        "namespaces:\n  mode: initial\npressure:\n  elevated:\n    enter: 0.8\n    exit: 0.9\n",
        &["status"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:6: pressure.elevated.exit", cfg.display())),
        "{err}"
    );

    let missing = t.root().join("nonexistent.yaml");
    fs::remove_file(t.config_file()).unwrap();
    let out = t.run(&["--config", missing.to_str().unwrap(), "status"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
}

/// A broken installed config: `status` still runs (it is the diagnostic an operator
/// reaches for) and names the problem; `plan` refuses it.
#[test]
fn status_runs_with_a_broken_installed_config_and_says_what_is_wrong() {
    let t = Tree::copy("kernel-6.18");
    let dir = t.root().join("etc/ctune");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ctune.yaml"), "role: host\nhash:\n  ratoi: 2\n").unwrap();
    let out = t.run(&["status", "--sample", "0"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    assert!(
        text.contains("ctune.yaml") && text.contains("line 3") && text.contains("ratoi"),
        "{text}"
    );
    assert!(
        text.contains("built-in defaults until it is fixed"),
        "{text}"
    );
    let out = t.run(&["plan", "--sample", "0"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

// 9. Usage: nothing asked for, and --help.
#[test]
fn usage_and_help() {
    let out = Command::new(BIN).env_remove("CTUNE_LOG").output().unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--dry-run"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());

    // Roots alone are not a command either.
    let t = Tree::copy("kernel-6.18");
    let out = t.run(&[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("--dry-run"));

    let out = Command::new(BIN)
        .env_remove("CTUNE_LOG")
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let help = stdout(&out);
    assert!(help.contains("Exit codes"), "{help}");
    assert!(help.contains("--dry-run"), "{help}");

    let out = t.run(&["--no-such-flag"]);
    assert_eq!(code(&out), 2, "clap usage errors exit 2 too");
}

// 10. A named namespace that cannot be entered is reported, and takes nothing from the
// ceiling: only entries the table really holds do (the slab counts them, when readable).
#[test]
fn unreadable_named_namespace_is_reported_not_counted() {
    let t = Tree::copy("kernel-6.18");
    let netns = t.run_root().join("netns");
    fs::create_dir_all(&netns).unwrap();
    // A regular file, not an nsfs handle: setns(2) refuses it.
    fs::write(netns.join("fw"), "").unwrap();
    let yaml = "namespaces:\n  mode: named\n  names: [fw]\n";

    let s = t.json(yaml, &["status", "--json"]);
    let fw = namespace(&s, "fw");
    let error = fw["error"].as_str().expect("fw has an error");
    assert!(error.contains("cannot enter"), "{error}");
    assert!(
        error.contains(netns.join("fw").to_str().unwrap()),
        "{error}"
    );
    assert!(fw["count"].is_null());
    assert_eq!(u(&namespace(&s, "init")["count"]), 8000);

    let p = t.json(yaml, &["plan", "--json"]);
    let alone = t.json(INITIAL, &["plan", "--json"]);
    assert_eq!(
        u(&p["plan"]["ceiling"]["value"]),
        u(&alone["plan"]["ceiling"]["value"]),
        "a namespace that cannot be entered does not divide the ceiling"
    );
}

// The worst case at the ceiling should fit the budget the ceiling was derived from.
#[test]
fn memory_at_ceiling_fits_the_budget() {
    let t = Tree::copy("kernel-6.18");
    let s = t.json(INITIAL, &["status", "--json"]);
    assert!(
        u(&s["memory_at_ceiling_bytes"]) <= u(&s["ceiling"]["budget_bytes"]),
        "{} > {}",
        s["memory_at_ceiling_bytes"],
        s["ceiling"]["budget_bytes"]
    );
}
