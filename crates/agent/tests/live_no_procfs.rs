//! Live kernel, as on a kernel without `/proc/net/stat/nf_conntrack` (issue 22: Ubuntu's
//! and OpenWrt's kernels are built without CONFIG_NF_CONNTRACK_PROCFS): an LD_PRELOAD shim
//! (common/no_procfs_stat.c, built here with cc) fails every open of that file, so ctune
//! reads the counters over ctnetlink. A namespace driven past a lowered global max must
//! show the same drops either way, `status` must say it is dropping, and the agent must
//! grow max on the drop counter. Needs root and cc; lowers the global max under a guard
//! that restores it, and deletes its namespace.

use crate::common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The shim that hides the file.
fn shim() -> PathBuf {
    c_shim("no_procfs_stat")
}

/// `ctune status --json` with `env`, parsed, and its exit code.
fn status(env: &[(&str, &str)], cfg: &Path, sample: &str) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["status", "--json", "--sample", sample, "--config"])
        .arg(cfg)
        .envs(env.iter().copied())
        .output()
        .expect("run ctune");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("namespace {name} missing from {status:#}"))
}

const COUNTERS: [&str; 5] = [
    "drop",
    "clash_drops",
    "early_drop",
    "insert_failed",
    "chainlength",
];

#[test]
fn without_the_procfs_file_the_counters_come_over_ctnetlink_to_the_packet() {
    require_root("without_the_procfs_file_the_counters_come_over_ctnetlink_to_the_packet");
    let so = shim();
    let absent = [("LD_PRELOAD", so.to_str().unwrap())];
    let unreadable = [
        ("LD_PRELOAD", so.to_str().unwrap()),
        ("CTUNE_SHIM_ERRNO", "13"),
    ];
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("noprocfs");
    const SMALL_MAX: u64 = 4096;
    guard.set_max(SMALL_MAX);
    let refused = ns.udp_flows(SMALL_MAX as usize + 2000);
    assert!(
        refused >= 100,
        "only {refused} sends refused: no table-full path"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);

    // The namespace is quiet now: three readings, from the two sources, must agree.
    let (code, procfs) = status(&[], &cfg, "0");
    let (code_absent, netlink) = status(&absent, &cfg, "0");
    let (code_denied, denied) = status(&unreadable, &cfg, "0");
    let (p, n, d) = (
        entry(&procfs, &ns.name),
        entry(&netlink, &ns.name),
        entry(&denied, &ns.name),
    );
    assert_eq!(p["counters_source"], "procfs", "{p:#}");
    assert_eq!(n["counters_source"], "ctnetlink", "{n:#}");
    assert_eq!(d["counters_source"], "ctnetlink", "{d:#}");
    for key in COUNTERS {
        assert_eq!(p[key], n[key], "{key}: procfs {p:#}\nctnetlink {n:#}");
        assert_eq!(p[key], d[key], "{key}: procfs {p:#}\nctnetlink {d:#}");
    }
    assert!(
        n["drop"].as_u64().unwrap() >= refused as u64,
        "{refused} refused sends, ctnetlink counts {n:#}"
    );
    // A kernel without the file is normal: no error. One whose file cannot be read is
    // named, with the fallback that answered.
    assert!(n["error"].is_null(), "{n:#}");
    let note = d["error"].as_str().unwrap_or_default();
    assert!(
        note.contains("nf_conntrack: permission denied") && note.contains("over ctnetlink"),
        "{d:#}"
    );
    // Full and idle: over a level, not dropping, whichever source.
    assert_eq!((code, code_absent, code_denied), (5, 5, 5), "{n:#}");

    // New flows all through a sampled status (bounded: the sender stops with it): the
    // drops per second come from ctnetlink, and the health says dropping (6).
    let (code, v) = ns.with_new_flows(|| status(&absent, &cfg, "1s"));
    let n = entry(&v, &ns.name);
    assert_eq!(n["counters_source"], "ctnetlink", "{n:#}");
    assert_eq!(code, 6, "expected dropping: {n:#}");
    let rate =
        n["drop_per_sec"].as_f64().unwrap_or(0.0) + n["early_drop_per_sec"].as_f64().unwrap_or(0.0);
    assert!(rate > 0.0, "no loss per second: {n:#}");
    drop(ns);
    drop(guard);
}

#[test]
fn without_the_procfs_file_the_agent_grows_max_on_the_drop_counter() {
    require_root("without_the_procfs_file_the_agent_grows_max_on_the_drop_counter");
    let so = shim();
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("noprocagent");
    const START_MAX: u64 = 4096;
    guard.set_max(START_MAX);
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path(), &ns, 262_144, "1s", "0s");
    // Its metrics say where it read the counters (the textfile, rewritten every second).
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir(&prom_dir).unwrap();
    // A step every 2 s, idle or not: the flood below comes while the agent is stopped,
    // and the step after it measures the drops against the sample before (a rise is
    // measured against a sample at most three intervals old: 6 s for a flood of 1 s).
    let mut text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("interval: 200ms", "interval: 2s\n  idle_interval: 2s");
    text.push_str(&format!(
        "metrics:\n  textfile_dir: {}\n  textfile_interval: 1s\n",
        prom_dir.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let agent = Agent::start_env(&cfg, dir.path(), &[("LD_PRELOAD", so.to_str().unwrap())]);
    assert!(
        wait_for(Duration::from_secs(5), || dir
            .path()
            .join("state/state.json")
            .exists()),
        "agent did not take its first step: {}",
        agent.log()
    );
    // The flood comes while the agent is stopped (SIGSTOP), so no raise can get ahead of
    // it however fast the agent is: the table fills and drops; then it goes on.
    agent.signal(nix::sys::signal::Signal::SIGSTOP);
    let refused = ns.udp_flows(40_000);
    agent.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(refused > 0, "no send refused: the table never filled");
    // The reason names the drop counter: only the counters (here, ctnetlink's) say it.
    assert!(
        wait_for(Duration::from_secs(10), || agent
            .log()
            .contains("drop counter rose by")),
        "no raise for drops; log:\n{}",
        agent.log()
    );
    assert!(global("nf_conntrack_max") > START_MAX);
    // And the counters behind that came over ctnetlink, not from the file the shim hides.
    let source = format!(
        "ctune_nf_conntrack_stat_source{{netns=\"{}\",source=\"ctnetlink\"}} 1",
        ns.name
    );
    let prom = prom_dir.join("ctune.prom");
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&prom)
            .is_ok_and(|t| t.contains(&source))),
        "no {source} in {}:\n{}",
        prom.display(),
        std::fs::read_to_string(&prom).unwrap_or_default()
    );
    assert!(
        !agent.log().contains("net/stat/nf_conntrack"),
        "the agent complained about the procfs file, which a kernel without it lacks:\n{}",
        agent.log()
    );
    drop(agent);
    drop(ns);
    drop(guard);
}
