//! Hostile hosts: files others can plant where ctune reads, and readers that stop
//! reading. Each case runs the real binary on a copy of a fixture tree.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Tree;

fn run(t: &Tree, args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .env_remove("CTUNE_LOG")
        .args(t.root_args())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a hang would be the bug; kill it after 10 s.
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("ctune {args:?} hung for 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

fn fifo(path: &std::path::Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
}

#[test]
fn a_fifo_as_the_config_is_refused_not_waited_on() {
    let t = Tree::copy("kernel-6.18");
    let cfg = t.path().join("ctune.yaml");
    fifo(&cfg);
    let (code, _, err, _) = run(&t, &["--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a regular file") && err.contains("ctune.yaml"),
        "{err}"
    );
}

#[test]
fn a_fifo_as_the_state_does_not_hang_the_dry_run() {
    let t = Tree::copy("kernel-6.18");
    fifo(&t.path().join("state/state.json"));
    let (code, out, err, _) = run(&t, &["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("not a regular file (a FIFO): refused"),
        "{out}"
    );
}

#[test]
fn a_directory_as_the_state_is_named_a_directory() {
    let t = Tree::copy("kernel-6.18");
    std::fs::create_dir_all(t.path().join("state/state.json")).unwrap();
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("state.json") && err.contains("not a regular file (a directory): refused"),
        "{err}"
    );
    assert!(!err.contains("FIFO"), "{err}");
}

#[test]
fn a_state_from_another_version_is_refused_and_named() {
    let t = Tree::copy("kernel-6.18");
    std::fs::create_dir_all(t.path().join("state")).unwrap();
    std::fs::write(
        t.path().join("state/state.json"),
        r#"{"version": 2, "boot_id": "", "original": {"nf_conntrack_max": 1}}"#,
    )
    .unwrap();
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("format version 2"), "{err}");
}

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let t = Tree::copy("kernel-6.18");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .env_remove("CTUNE_LOG")
        .args(t.root_args())
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end at once, like `| head -c 0`.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn netfilter_get(t: &Tree, key: &str) -> u64 {
    std::fs::read_to_string(t.path().join("proc/sys/net/netfilter").join(key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A state whose recorded original max is 1 (tampered, or corrupt) is not written back.
#[test]
fn restore_refuses_a_recorded_value_outside_the_bounds() {
    let t = Tree::copy("kernel-6.18");
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "250000\n",
    )
    .unwrap();
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_eq!(code, 0, "{err}");
    let grown = netfilter_get(&t, "nf_conntrack_max");
    assert!(grown > 262_144);
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "10\n",
    )
    .unwrap();
    let state = t.path().join("state/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["original"]["nf_conntrack_max"] = serde_json::json!(1);
    std::fs::write(&state, v.to_string()).unwrap();
    let (code, out, err, _) = run(&t, &["restore", "--force"]);
    assert_eq!(code, 4, "not finished: {out}{err}");
    assert!(
        out.contains("nf_conntrack_max = 1 refused: below 1024"),
        "{out}"
    );
    assert_eq!(
        netfilter_get(&t, "nf_conntrack_max"),
        grown,
        "max left as it was"
    );
}

/// A hand-edited 99-ctune.conf cannot make the boot step write max 1 (or beyond the
/// kernel's limit).
#[test]
fn boot_refuses_a_persisted_value_outside_the_bounds() {
    let t = Tree::copy("kernel-6.18");
    // The kernel's own 8 x hashsize default is the one case where boot lowers max.
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_buckets"),
        "1024\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_max"),
        "8192\n",
    )
    .unwrap();
    let dir = t.path().join("etc/sysctl.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("99-ctune.conf"),
        "net.netfilter.nf_conntrack_max = 1\nnet.netfilter.nf_conntrack_buckets = 99999999999\n",
    )
    .unwrap();
    let (code, out, err, _) = run(&t, &["boot"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("nf_conntrack_max = 1 refused"), "{out}");
    assert!(
        out.contains("nf_conntrack_buckets = 99999999999 refused"),
        "{out}"
    );
    assert_eq!(netfilter_get(&t, "nf_conntrack_max"), 8192);
    assert_eq!(netfilter_get(&t, "nf_conntrack_buckets"), 1024);
}

/// A small VM's stock max (8192, below ctune's own min_max) is the operator's value:
/// `restore` puts it back (the bounds refuse only what no kernel or operator would set).
#[test]
fn restore_puts_back_a_small_stock_max() {
    let t = Tree::copy("kernel-6.18");
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_max"),
        "8192\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_buckets"),
        "8192\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "7000\n",
    )
    .unwrap();
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_eq!(code, 0, "{err}");
    assert!(netfilter_get(&t, "nf_conntrack_max") > 8192);
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "10\n",
    )
    .unwrap();
    let (code, out, err, _) = run(&t, &["restore"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(netfilter_get(&t, "nf_conntrack_max"), 8192, "{out}");
}

/// A config another user could rewrite (`memory_fraction: 1` by uid 65534) is refused
/// with what to fix, like sshd's StrictModes; a state file likewise.
#[test]
fn a_config_or_state_others_control_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let t = Tree::copy("kernel-6.18");
    let cfg = t.path().join("ctune.yaml");
    std::fs::write(&cfg, "ceiling:\n  memory_fraction: 1\n").unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err, _) = run(&t, &["--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("chmod go-w") && err.contains("ctune.yaml"),
        "{err}"
    );
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    nix::unistd::chown(&cfg, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let (code, _, err, _) = run(&t, &["--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    let state = t.path().join("state/state.json");
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_eq!(code, 0, "{err}");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o646)).unwrap();
    let (code, _, err, _) = run(&t, &["restore"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("state.json") && err.contains("chmod go-w"),
        "{err}"
    );
}

/// The state save after a change failed (a read-only state directory), so the state
/// still records the value before it: the value in ctune's own persisted file tells
/// restore that the live value is ctune's, and the operator's comes back.
#[test]
fn restore_recognises_its_own_value_when_the_last_state_save_failed() {
    let t = Tree::copy("kernel-6.18");
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "250000\n",
    )
    .unwrap();
    let (code, _, err, _) = run(&t, &["apply"]);
    assert_eq!(code, 0, "{err}");
    let grown = netfilter_get(&t, "nf_conntrack_max");
    // As if a later step had raised max again and failed to save the state.
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_max"),
        format!("{}\n", grown * 2),
    )
    .unwrap();
    let conf = t.path().join("etc/sysctl.d/99-ctune.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        text.replace(&grown.to_string(), &(grown * 2).to_string()),
    )
    .unwrap();
    std::fs::write(
        t.path().join("proc/sys/net/netfilter/nf_conntrack_count"),
        "10\n",
    )
    .unwrap();
    let (code, out, err, _) = run(&t, &["restore"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(netfilter_get(&t, "nf_conntrack_max"), 262_144, "{out}");
}
