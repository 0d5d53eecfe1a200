//! Live kernel: ctune reads the count, counters and global max of a namespace the test
//! creates and fills. Needs root; changes the global max only under a guard.

use crate::common;

use common::*;
use serde_json::Value;

fn ns_entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("namespace {name} missing from {status:#}"))
}

#[test]
fn status_reports_a_namespace_count_and_the_global_max() {
    require_root("status_reports_a_namespace_count_and_the_global_max");
    let _lock = global_lock();
    let ns = TestNetns::new("status");
    const FLOWS: usize = 3000;
    assert_eq!(ns.udp_flows(FLOWS), 0, "no send may be refused below max");
    assert_eq!(ns.read_sysctl("nf_conntrack_count"), FLOWS as u64);

    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);
    let (code, out, err) = ctune(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let global_max = read_u64(std::path::Path::new(
        "/proc/sys/net/netfilter/nf_conntrack_max",
    ));
    assert_eq!(status["max"], global_max);
    let entry = ns_entry(&status, &ns.name);
    assert_eq!(entry["count"], FLOWS as u64, "{entry:#}");
    assert!(entry["error"].is_null(), "{entry:#}");
    // The init namespace is reported too, with its own (different) count.
    assert_eq!(status["namespaces"][0]["name"], "init");
    assert_eq!(
        status["namespaces"][0]["count"],
        read_u64(std::path::Path::new(
            "/proc/sys/net/netfilter/nf_conntrack_count"
        ))
    );
}

#[test]
fn all_mode_finds_the_test_namespace_once() {
    require_root("all_mode_finds_the_test_namespace_once");
    let _lock = global_lock();
    let ns = TestNetns::new("all");
    assert_eq!(ns.udp_flows(100), 0);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ctune.yaml");
    std::fs::write(&cfg, "namespaces:\n  mode: all\n").unwrap();
    let (code, out, err) = ctune(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let found: Vec<&Value> = status["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["name"] == ns.name.as_str())
        .collect();
    assert_eq!(found.len(), 1, "{status:#}");
    assert_eq!(found[0]["count"], 100);
}

#[test]
fn inside_a_child_namespace_global_keys_are_reported_read_only() {
    require_root("inside_a_child_namespace_global_keys_are_reported_read_only");
    let _lock = global_lock();
    let ns = TestNetns::new("child");
    let out = ns.exec(&[
        env!("CARGO_BIN_EXE_ctune"),
        "plan",
        "--json",
        "--config",
        "/dev/null",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let access = &plan["observation"]["global"]["write_access"];
    assert_eq!(access["writable"], false, "{access:#}");
    assert!(
        access["reason"]
            .as_str()
            .unwrap()
            .contains("initial network namespace"),
        "{access:#}"
    );
    assert_eq!(plan["observation"]["in_initial_netns"], false);
    // The child sees the global max, not a per-namespace copy.
    let global_max = read_u64(std::path::Path::new(
        "/proc/sys/net/netfilter/nf_conntrack_max",
    ));
    assert_eq!(plan["observation"]["global"]["max"], global_max);
}

#[test]
fn overflowing_namespace_shows_drops_and_a_plan_to_grow() {
    require_root("overflowing_namespace_shows_drops_and_a_plan_to_grow");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("full");
    const SMALL_MAX: u64 = 4096;
    guard.set_max(SMALL_MAX);
    // Fill past max: the kernel refuses sends it cannot track and counts them as drops
    // (early drop evicts some unreplied entries first, so not every excess send fails).
    let refused = ns.udp_flows(SMALL_MAX as usize + 2000);
    assert!(
        refused >= 100,
        "expected the table-full path, only {refused} sends refused"
    );
    let count = ns.read_sysctl("nf_conntrack_count");
    assert!(
        (SMALL_MAX - 16..=SMALL_MAX).contains(&count),
        "count {count}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);
    let (code, out, err) = ctune(&["status", "--json", "--config", cfg.to_str().unwrap()]);
    let status: Value = serde_json::from_str(&out).unwrap();
    // Full and idle during the sample: over a level (5), not dropping.
    assert_eq!(code, 5, "{err}\n{out}");
    assert_eq!(status["health"], "pressure");
    assert_eq!(status["max"], SMALL_MAX, "{out}");
    // The level follows the count status read: critical at 95 % of max, elevated
    // under it. Twice, in full-suite runs, status saw this namespace elevated (its
    // output was not kept then): the count may fall from the fill, never under 85 %.
    let seen = ns_entry(&status, &ns.name);
    let u = seen["count"].as_u64().unwrap() as f64 / SMALL_MAX as f64;
    let expected = if u >= 0.95 { "critical" } else { "elevated" };
    assert!(u >= 0.85, "{out}");
    assert_eq!(seen["level_now"], expected, "{out}");
    let entry = ns_entry(&status, &ns.name);
    assert!(
        entry["drop"].as_u64().unwrap() >= refused as u64,
        "{entry:#}"
    );
    assert!(entry["utilisation"].as_f64().unwrap() > 0.99, "{entry:#}");

    let (code, out, err) = ctune(&[
        "plan",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--etc-root",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let change = plan["plan"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "nf_conntrack_max")
        .unwrap_or_else(|| panic!("no max change planned: {:#}", plan["plan"]));
    let new = change["new"].as_u64().unwrap();
    assert_eq!(change["old"], SMALL_MAX);
    assert!(new >= 2 * SMALL_MAX && new <= plan["plan"]["ceiling"]["value"].as_u64().unwrap());
    assert!(
        change["reason"].as_str().unwrap().contains(&ns.name),
        "{change:#}"
    );
    // The dry run wrote nothing: not the kernel, not the files.
    assert_eq!(
        read_u64(std::path::Path::new(
            "/proc/sys/net/netfilter/nf_conntrack_max"
        )),
        SMALL_MAX
    );
    assert!(!dir.path().join("sysctl.d").exists());
    drop(ns);
    drop(guard);
}

#[test]
fn unprivileged_dry_run_says_what_it_could_not_read() {
    require_root("unprivileged_dry_run_says_what_it_could_not_read");
    // Drop to nobody for the run: the slab size and other processes' namespaces are
    // root-only, and the global keys are not writable.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_ctune"))
        .args(["--dry-run", "--json", "--config", "/dev/null"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let obs = &plan["observation"];
    assert_eq!(obs["global"]["write_access"]["writable"], false);
    assert!(
        obs["global"]["write_access"]["reason"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{obs:#}"
    );
    assert_eq!(obs["host"]["entry_bytes_source"], "fallback");
    let notes = plan["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("assuming 320 B per entry")),
        "{notes:#?}"
    );
    // The global max is still read: it is world-readable.
    let global_max = read_u64(std::path::Path::new(
        "/proc/sys/net/netfilter/nf_conntrack_max",
    ));
    assert_eq!(obs["global"]["max"], global_max);
}

/// Issue 13: a namespace filled to max while new flows keep coming is "dropping" (exit 6)
/// with a non-zero drops/s over the sample; after the flood it is healthy again (exit 0).
#[test]
fn status_says_dropping_now_while_a_full_table_refuses_flows_and_healthy_after() {
    require_root("status_says_dropping_now_while_a_full_table_refuses_flows_and_healthy_after");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("dropnow");
    const SMALL_MAX: u64 = 4096;
    guard.set_max(SMALL_MAX);
    ns.udp_flows(SMALL_MAX as usize + 500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);
    let status = |sample: &str| {
        let (code, out, err) = ctune(&[
            "status",
            "--json",
            "--sample",
            sample,
            "--config",
            cfg.to_str().unwrap(),
        ]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (code, v)
    };
    // New flows all through the sample (bounded: the sender stops with the status).
    let (code, v) = ns.with_new_flows(|| status("1s"));
    let entry = ns_entry(&v, &ns.name);
    assert_eq!(code, 6, "expected dropping: {entry:#}");
    assert_eq!(v["health"], "dropping", "{entry:#}");
    let rate = entry["drop_per_sec"].as_f64().unwrap_or(0.0)
        + entry["early_drop_per_sec"].as_f64().unwrap_or(0.0);
    assert!(rate > 0.0, "no loss per second: {entry:#}");

    let out = ns.exec(&["conntrack", "-F"]);
    assert!(out.status.success(), "conntrack -F");
    let (code, v) = status("500ms");
    assert_eq!(code, 0, "after the flood: {:#}", ns_entry(&v, &ns.name));
    assert_eq!(v["health"], "healthy");
    drop(ns);
    drop(guard);
}

/// One reader thread enters each namespace in turn; the descriptors it keeps for one
/// namespace's sysctls must not answer for the next (kfile's kept descriptors are
/// forgotten at every setns). Two namespaces with different counts, read in one pass.
#[test]
fn each_namespace_reads_its_own_count_in_one_pass() {
    require_root("each_namespace_reads_its_own_count_in_one_pass");
    let (a, b) = (TestNetns::new("counta"), TestNetns::new("countb"));
    a.udp_flows(100);
    b.udp_flows(300);
    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&a.name, &b.name]);
    for _ in 0..2 {
        let v = status_json(&cfg);
        assert_eq!(ns_entry(&v, &a.name)["count"], 100, "{v:#}");
        assert_eq!(ns_entry(&v, &b.name)["count"], 300, "{v:#}");
    }
}
