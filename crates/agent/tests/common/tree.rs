//! A copy of a fixture kernel tree with the other roots and a config beside it: the one
//! fixture-tree helper of the tests that run the real binary on a copied kernel.
//!
//! In a fixture copy the "kernel" files are plain files, so `apply` writes them as it
//! would write sysctls and reads them back. Every run passes all five roots
//! (`--proc-root`, `--sys-root`, `--etc-root`, `--run-root`, `--state-dir`) and the
//! recorded ctnetlink replies (`--netlink-root`) into the temporary directory and the
//! tree's config, so nothing on the host is read or written (not even over netlink) and
//! the fixtures themselves never change.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ctune");

/// A config watching only the initial namespace.
pub const INITIAL: &str = "namespaces:\n  mode: initial\n";

pub const MAX: &str = "nf_conntrack_max";
pub const BUCKETS: &str = "nf_conntrack_buckets";
pub const COUNT: &str = "nf_conntrack_count";

pub const SYSCTL_FILE: &str = "sysctl.d/99-ctune.conf";
pub const MODULES_LOAD_FILE: &str = "modules-load.d/ctune.conf";
pub const MODPROBE_FILE: &str = "modprobe.d/ctune.conf";

/// The header ctune's files start with (what `restore`, `boot` and `verify` recognise).
pub const HEADER: &str = "# Managed by ctune: conntrack limits learned on this host. Edits are overwritten.\n\
# Undo: `ctune restore` puts back the values from before ctune and removes this file.\n";

/// The 4.19 fixture: modular conntrack, max 65536, 16384 buckets.
pub const K419: &str = "kernel-4.19";
pub const K419_MAX: u64 = 65536;
pub const K419_BUCKETS: u64 = 16384;
/// The 6.18 fixture: built-in conntrack, max 262144, as many buckets.
pub const K618: &str = "kernel-6.18";
pub const K618_MAX: u64 = 262144;

/// A copy of one fixture kernel tree with the other roots and a config beside it.
pub struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    /// A copy of the fixture `kernel` (its proc, sys and recorded ctnetlink replies) with
    /// `config` as the config.
    pub fn new(kernel: &str, config: &str) -> Tree {
        let t = Tree::copy(kernel);
        t.config(config);
        t
    }

    /// A copy of the fixture `kernel` and no config: ctune reads the one in the etc
    /// root, or its built-in defaults, until [`Tree::config`] gives it one.
    pub fn copy(kernel: &str) -> Tree {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(kernel);
        super::copy_tree(&src.join("proc"), &dir.path().join("proc"));
        super::copy_tree(&src.join("sys"), &dir.path().join("sys"));
        // The ctnetlink replies as that kernel sends them (what it answers when its
        // procfs file is missing), where the fixture has them.
        if src.join("netlink").is_dir() {
            super::copy_tree(&src.join("netlink"), &dir.path().join("netlink"));
        }
        Tree { dir }
    }

    /// Replaces the config. It lies outside every root, so snapshots of the roots do not
    /// see it.
    pub fn config(&self, text: &str) {
        fs::write(self.config_file(), text).expect("write config");
    }

    /// Where [`Tree::config`] writes the config.
    pub fn config_file(&self) -> PathBuf {
        self.root().join("test-config.yaml")
    }

    /// The flags that point ctune at the tree: all six roots, no config.
    pub fn root_args(&self) -> Vec<String> {
        let p = self.root();
        [
            ("--proc-root", "proc"),
            ("--sys-root", "sys"),
            ("--etc-root", "etc"),
            ("--run-root", "run"),
            ("--state-dir", "state"),
            ("--netlink-root", "netlink"),
        ]
        .iter()
        .flat_map(|(flag, sub)| [flag.to_string(), p.join(sub).display().to_string()])
        .collect()
    }

    /// The tree's directory.
    pub fn path(&self) -> &Path {
        self.root()
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn proc(&self) -> PathBuf {
        self.root().join("proc")
    }

    pub fn sys(&self) -> PathBuf {
        self.root().join("sys")
    }

    pub fn etc(&self) -> PathBuf {
        self.root().join("etc")
    }

    pub fn run_root(&self) -> PathBuf {
        self.root().join("run")
    }

    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state().join("state.json")
    }

    pub fn netfilter(&self) -> PathBuf {
        self.proc().join("sys/net/netfilter")
    }

    pub fn sysctl(&self, key: &str) -> PathBuf {
        self.netfilter().join(key)
    }

    /// Writes one `nf_conntrack_*` file in the copy, as the kernel (or an admin) would
    /// (a value that is not a number, too, as a broken kernel file).
    pub fn set(&self, key: &str, value: impl std::fmt::Display) {
        fs::write(self.sysctl(key), format!("{value}\n")).expect("write sysctl");
    }

    /// Reads one `nf_conntrack_*` file of the copy.
    pub fn get(&self, key: &str) -> u64 {
        let text = fs::read_to_string(self.sysctl(key)).expect("read sysctl");
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key} holds {text:?}"))
    }

    /// The count at 90% of `max`: above the 75% watermark, below critical.
    pub fn pressure(&self, max: u64) {
        self.set(COUNT, (max * 9).div_ceil(10));
    }

    /// Runs ctune with the tree's roots, its config (when it has one), then `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.env_remove("CTUNE_LOG")
            .env_remove("JOURNAL_STREAM")
            .args(self.root_args());
        if self.config_file().exists() {
            cmd.arg("--config").arg(self.config_file());
        }
        cmd.args(args).output().expect("run ctune")
    }

    /// Runs with `yaml` as the config.
    pub fn run_with(&self, yaml: &str, args: &[&str]) -> Output {
        self.config(yaml);
        self.run(args)
    }

    /// Runs with `yaml` as the config and parses stdout as JSON, requiring exit 0.
    pub fn json(&self, yaml: &str, args: &[&str]) -> Value {
        let out = self.run_with(yaml, args);
        assert_eq!(
            code(&out),
            0,
            "ctune {args:?} failed: {}",
            super::text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ctune {args:?} printed no JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs ctune like [`Tree::run`]: (exit code, stdout, stderr).
    pub fn ctune(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.run(args);
        (
            code(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `args` and requires `want` as the exit code; returns stdout + stderr.
    pub fn expect(&self, args: &[&str], want: i32) -> String {
        let out = self.run(args);
        let text = super::text(&out);
        assert_eq!(code(&out), want, "ctune {args:?}:\n{text}");
        text
    }

    /// The planned global change of `key` as (old, new), from `plan --json`.
    pub fn planned(&self, key: &str) -> Option<(u64, u64)> {
        let out = self.run(&["plan", "--json"]);
        assert_eq!(code(&out), 0, "plan: {}", super::text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
        plan["plan"]["changes"]
            .as_array()
            .expect("plan.changes")
            .iter()
            .find(|c| c["key"] == key && c["target"]["scope"] == "global")
            .map(|c| (u(&c["old"]), u(&c["new"])))
    }

    pub fn state_json(&self) -> Value {
        let bytes = fs::read(self.state_file()).expect("state file");
        serde_json::from_slice(&bytes).expect("state JSON")
    }

    /// The content of a file below the etc root.
    pub fn etc_file(&self, rel: &str) -> String {
        fs::read_to_string(self.etc().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Requires each of `rels` (below the etc root) to have mode 0644 and `out` (a run's
    /// output) to say it wrote it.
    pub fn assert_written(&self, out: &str, rels: &[&str]) {
        for rel in rels {
            let mode = fs::metadata(self.etc().join(rel))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644, "{rel}");
            assert!(
                out.contains(&format!("wrote {}", self.etc().join(rel).display())),
                "{out}"
            );
        }
    }

    /// Every file below the etc root, relative to it, sorted.
    pub fn etc_files(&self) -> Vec<String> {
        let etc = self.etc();
        let mut files = Vec::new();
        walk(&etc, &mut |p, _| {
            files.push(p.strip_prefix(&etc).unwrap().display().to_string());
        });
        files.sort();
        files
    }

    /// Every regular file below the four roots ctune may change, with its bytes.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for dir in [self.proc(), self.sys(), self.etc(), self.state()] {
            walk(&dir, &mut |p, m| {
                assert!(m.is_file(), "unexpected non-file {}", p.display());
                files.insert(
                    p.strip_prefix(self.root()).unwrap().to_path_buf(),
                    fs::read(p).unwrap(),
                );
            });
        }
        files
    }

    /// Identity of every file below etc and state: bytes, inode and mtime.
    pub fn identities(&self) -> BTreeMap<PathBuf, (Vec<u8>, u64, i64, i64)> {
        let mut files = BTreeMap::new();
        for dir in [self.etc(), self.state()] {
            walk(&dir, &mut |p, m| {
                files.insert(
                    p.to_path_buf(),
                    (fs::read(p).unwrap(), m.ino(), m.mtime(), m.mtime_nsec()),
                );
            });
        }
        files
    }
}

/// Calls `f` for every non-directory below `dir` (nothing when `dir` does not exist).
pub fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let p = entry.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            walk(&p, f);
        } else {
            f(&p, &m);
        }
    }
}

/// The exit code of a ctune run (a test failure if a signal ended it).
pub fn code(out: &Output) -> i32 {
    out.status.code().expect("ctune exited by a signal")
}

pub fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected an unsigned number, found {v}"))
}

/// The `net.netfilter.*` lines of a sysctl.d file as (key, value).
pub fn sysctl_lines(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap_or_else(|| panic!("line {l:?}"));
            let k = k.strip_prefix("net.netfilter.").expect("net.netfilter key");
            (k.to_string(), v.parse().expect("numeric value"))
        })
        .collect()
}
