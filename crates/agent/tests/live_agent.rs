//! Live kernel, end to end: `ctune run` watches a namespace the test floods. Needs root;
//! lowers the global max and hash size under a guard that restores them (also on
//! panic), and deletes its namespace.

use crate::common;

use common::*;
use std::time::{Duration, Instant};

fn round_buckets(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

#[test]
fn agent_grows_ahead_of_a_flood_lowers_timeouts_at_the_ceiling_and_restores_them() {
    require_root("agent_grows_ahead_of_a_flood_lowers_timeouts_at_the_ceiling_and_restores_them");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("agent");
    const START_MAX: u64 = 8192;
    const CAP: u64 = 65536;
    guard.set_max(START_MAX);
    guard.set_buckets(2048);
    let operator_udp = ns.read_sysctl("nf_conntrack_udp_timeout");
    let operator_est = ns.read_sysctl("nf_conntrack_tcp_timeout_established");

    let dir = tempfile::tempdir().unwrap();
    // Composition sampling off: the tiers alone decide, as on a host where the dump
    // fails (live_composition.rs covers what the samples change).
    let cfg = agent_config(dir.path(), &ns, CAP, "1s", "0s");
    let mut agent = Agent::start_stepped(&cfg, dir.path());

    // Phase 1: a ramp that fits under the ceiling, 5000 new flows a second. ctune must
    // raise max ahead of it: no send refused, the kernel's drop counter never moves.
    let refused = ns.udp_flows_paced(0, 30_000, Some(5_000));
    assert_eq!(
        refused,
        0,
        "sends refused during the ramp; log:\n{}",
        agent.log()
    );
    assert_eq!(ns.stat_counter("drop"), 0, "kernel dropped during the ramp");
    let max = global("nf_conntrack_max");
    assert!((32_768..=CAP).contains(&max), "max {max} after the ramp");
    // The hash follows max / 4 (a resize may wait out hash.min_interval).
    assert!(
        wait_for(Duration::from_secs(3), || global("nf_conntrack_buckets")
            == round_buckets(global("nf_conntrack_max") / 4)),
        "buckets {} for max {}",
        global("nf_conntrack_buckets"),
        global("nf_conntrack_max")
    );

    // Phase 2: a flood beyond what the ceiling allows. Max stays at the ceiling; the
    // namespace goes critical and its timeouts drop to their floors, established too.
    ns.udp_flows_paced(30_000, 45_000, None);
    assert!(
        wait_for(Duration::from_secs(5), || ns
            .read_sysctl("nf_conntrack_udp_timeout")
            == 10
            && ns.read_sysctl("nf_conntrack_tcp_timeout_established")
                == 54_000),
        "timeouts not lowered at the ceiling: udp {} established {}; log:\n{}",
        ns.read_sysctl("nf_conntrack_udp_timeout"),
        ns.read_sysctl("nf_conntrack_tcp_timeout_established"),
        agent.log()
    );
    assert_eq!(
        global("nf_conntrack_max"),
        CAP,
        "max never exceeds the ceiling"
    );

    // Phase 3: the flood is over and its entries gone: the operator's values return.
    let out = ns.exec(&["conntrack", "-F"]);
    assert!(
        out.status.success(),
        "conntrack -F: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(Duration::from_secs(10), || ns
            .read_sysctl("nf_conntrack_udp_timeout")
            == operator_udp
            && ns.read_sysctl("nf_conntrack_tcp_timeout_established")
                == operator_est),
        "timeouts not restored: udp {} established {}; log:\n{}",
        ns.read_sysctl("nf_conntrack_udp_timeout"),
        ns.read_sysctl("nf_conntrack_tcp_timeout_established"),
        agent.log()
    );

    // Persisted: the live values, in the files a reboot reads.
    let persisted = std::fs::read_to_string(dir.path().join("etc/sysctl.d/99-ctune.conf")).unwrap();
    let live_max = global("nf_conntrack_max");
    let live_buckets = global("nf_conntrack_buckets");
    assert!(
        persisted.contains(&format!("net.netfilter.nf_conntrack_max = {live_max}\n")),
        "{persisted}"
    );
    assert!(
        persisted.contains(&format!(
            "net.netfilter.nf_conntrack_buckets = {live_buckets}\n"
        )),
        "{persisted}"
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["original"]["nf_conntrack_max"], START_MAX);

    // SIGTERM ends it within a second, and rolls nothing back.
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        agent.wait_exit(Duration::from_secs(1)),
        Some(0),
        "log:\n{}",
        agent.log()
    );
    assert_eq!(
        global("nf_conntrack_max"),
        live_max,
        "stopping must not roll max back"
    );

    // One log event per change: no line repeats (timestamps aside).
    let log = agent.log();
    let mut seen = std::collections::HashSet::new();
    for line in log.lines() {
        let body = line.split_once(' ').map_or(line, |(_, rest)| rest).trim();
        assert!(seen.insert(body.to_string()), "logged twice: {body}\n{log}");
    }
    let raises = log.lines().filter(|l| l.contains("raising max")).count();
    assert!(raises >= 2, "expected the max raises in the log:\n{log}");
    drop(ns);
    drop(guard);
}

#[test]
fn agent_keeps_up_with_a_flood_from_idle() {
    require_root("agent_keeps_up_with_a_flood_from_idle");
    // A small router's stock table (max 16384, hash = max) and a generator sending new
    // flows as fast as one core can: the count probe must step in before the table fills.
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("flood");
    guard.set_max(16_384);
    guard.set_buckets(16_384);
    let dir = tempfile::tempdir().unwrap();
    let cfg = named_config(dir.path(), &[&ns.name]);
    let mut agent = Agent::start_stepped(&cfg, dir.path());
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    const FLOWS: usize = 150_000;
    let refused = ns.udp_flows(FLOWS);
    let rate = FLOWS as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {FLOWS} flows at {rate:.0}/s, {refused} refused, max now {}",
        global("nf_conntrack_max")
    );
    assert_eq!(
        refused,
        0,
        "sends refused at {rate:.0} flows/s; log:\n{}",
        agent.log()
    );
    assert_eq!(ns.stat_counter("drop"), 0);
    assert!(global("nf_conntrack_max") as usize > FLOWS);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(1)), Some(0));
    drop(ns);
    drop(guard);
}
