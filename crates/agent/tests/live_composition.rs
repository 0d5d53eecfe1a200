//! Timeouts chosen by what holds the entries, on the live kernel: the agent samples a
//! pressed namespace's table over ctnetlink (`agent.composition_interval`) and keeps
//! lowered only the timeouts that govern a real share of it.
//!
//! - A table full of unreplied UDP: udp_timeout is lowered, and the established timeout
//!   never is, not even at the onset (the agent samples a newly pressed namespace within
//!   the step, once max is raised, before it lowers a timeout).
//! - A table full of established TCP: the established timeout is lowered, and the
//!   transient ones (UDP, SYN, FIN, generic: nothing there) never are.

use crate::common;

use common::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const UDP: &str = "nf_conntrack_udp_timeout";
const EST: &str = "nf_conntrack_tcp_timeout_established";
const SYN_SENT: &str = "nf_conntrack_tcp_timeout_syn_sent";
const GENERIC: &str = "nf_conntrack_generic_timeout";

/// The agent watching `ns` only, max capped at `cap` (so the flood reaches critical),
/// levels held 30 s (no stepping down while the test looks), a composition sample every
/// second.
fn config(dir: &Path, ns: &TestNetns, cap: u64) -> PathBuf {
    agent_config(dir, ns, cap, "30s", "1s")
}

/// `ctune status --json` on the agent's config and state.
fn status(cfg: &Path, dir: &Path) -> serde_json::Value {
    status_json_in(cfg, Some(&dir.join("state")))
}

/// The share the agent's last sample gives `key` in the namespace named `ns`.
fn sampled_share(st: &serde_json::Value, ns: &str, key: &str) -> Option<f64> {
    let n = st["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == ns)?;
    let c = &n["composition"];
    let entries = c["entries"].as_f64()?;
    Some(c["by_key"][key].as_f64().unwrap_or(0.0) / entries)
}

#[test]
fn a_table_of_unreplied_udp_gets_udp_cut_and_keeps_its_established_timeout() {
    require_root("a_table_of_unreplied_udp_gets_udp_cut_and_keeps_its_established_timeout");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("compudp");
    guard.set_max(8192);
    guard.set_buckets(2048);
    let est = ns.read_sysctl(EST);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &ns, 16_384);
    let agent = Agent::start_stepped(&cfg, dir.path());
    // Past the cap: the table fills, the namespace goes critical.
    let refused = ns.udp_flows_paced(0, 17_000, Some(20_000));
    let settled = wait_for(Duration::from_secs(20), || {
        ns.read_sysctl(UDP) < 600
            && ns.read_sysctl(EST) == est
            && agent.log().contains("lowering udp_timeout")
    });
    let st = status(&cfg, dir.path());
    assert!(
        settled,
        "udp_timeout {} (operator 600), established {} (operator {est}), {refused} sends refused; status:\n{st:#}\nlog:\n{}",
        ns.read_sysctl(UDP),
        ns.read_sysctl(EST),
        agent.log()
    );
    // Never cut, not even at the onset (the agent samples the newly pressed namespace
    // within the step, before it lowers anything).
    assert!(
        !agent.log().contains("lowering tcp_timeout_established"),
        "the established timeout was cut:\n{}",
        agent.log()
    );
    // The sample the decision used, as status shows it.
    let share = sampled_share(&st, &ns.name, UDP);
    assert!(
        share.is_some_and(|s| s > 0.95),
        "udp share {share:?}: {st:#}"
    );
    drop(agent);
    drop(ns);
    drop(guard);
}

#[test]
fn a_table_of_established_tcp_keeps_its_transient_timeouts() {
    require_root("a_table_of_established_tcp_keeps_its_transient_timeouts");
    // Both ends of every connection are descriptors of this process.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let conns = 3_950usize;
    if hard < 2 * conns as u64 + 1024 {
        eprintln!(
            "a_table_of_established_tcp_keeps_its_transient_timeouts: skipped, RLIMIT_NOFILE hard {hard}"
        );
        return;
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("setrlimit");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("comptcp");
    // 3950 established entries of 4096: critical (95 %), and max cannot grow (the cap).
    guard.set_max(4096);
    guard.set_buckets(1024);
    let before: Vec<(&str, u64)> = [EST, UDP, SYN_SENT, GENERIC]
        .iter()
        .map(|k| (*k, ns.read_sysctl(k)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &ns, 4096);
    let agent = Agent::start_stepped(&cfg, dir.path());
    let _kept = ns.run_in(|| {
        let listener = TcpListener::bind("127.0.0.1:8080").expect("listen");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut kept = Vec::with_capacity(2 * conns);
        for _ in 0..conns {
            assert!(Instant::now() < deadline, "TCP setup took over 60 s");
            kept.push(TcpStream::connect("127.0.0.1:8080").expect("connect"));
            kept.push(listener.accept().expect("accept").0);
        }
        kept
    });
    let operator = |k: &str| before.iter().find(|(b, _)| *b == k).unwrap().1;
    let settled = wait_for(Duration::from_secs(20), || {
        ns.read_sysctl(EST) < operator(EST)
            && [UDP, SYN_SENT, GENERIC]
                .iter()
                .all(|k| ns.read_sysctl(k) == operator(k))
    });
    let st = status(&cfg, dir.path());
    let now: Vec<(&str, u64)> = before
        .iter()
        .map(|(k, _)| (*k, ns.read_sysctl(k)))
        .collect();
    assert!(
        settled,
        "timeouts {now:?} (operator's {before:?}); status:\n{st:#}\nlog:\n{}",
        agent.log()
    );
    for key in ["udp_timeout", "tcp_timeout_syn_sent", "generic_timeout"] {
        assert!(
            !agent.log().contains(&format!("lowering {key} ")),
            "{key} was cut:\n{}",
            agent.log()
        );
    }
    let share = sampled_share(&st, &ns.name, EST);
    assert!(
        share.is_some_and(|s| s > 0.95),
        "established share {share:?}: {st:#}"
    );
    drop(agent);
    drop(ns);
    drop(guard);
}

#[test]
fn a_dry_run_and_a_one_shot_apply_sample_before_they_lower() {
    require_root("a_dry_run_and_a_one_shot_apply_sample_before_they_lower");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("compapply");
    guard.set_max(8192);
    let est = ns.read_sysctl(EST);
    // 8000 unreplied UDP entries of 8192, and max at its cap: critical.
    assert_eq!(ns.udp_flows(8_000), 0, "table refused flows");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &ns, 8192);
    let etc = dir.path().join("etc");
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--config", cfg.to_str().unwrap()]);
        full.extend(["--etc-root", etc.to_str().unwrap()]);
        full.extend(["--state-dir", state.to_str().unwrap()]);
        ctune(&full)
    };
    // The dry run says what apply will do: it samples as the agent would.
    let (code, out, err) = run(&["--dry-run", "--sample", "0"]);
    let seen = format!("exit {code}\n{out}\n{err}");
    assert!(
        out.contains("governs 100% of the entries")
            && !out.contains("lowering tcp_timeout_established"),
        "{seen}"
    );
    let (code, out, err) = run(&["apply"]);
    let seen = format!("exit {code}\n{out}\n{err}");
    assert!(matches!(code, 0 | 5), "{seen}");
    assert_eq!(
        ns.read_sysctl(UDP),
        10,
        "udp_timeout not at its floor: {seen}"
    );
    assert!(out.contains("governs 100% of the entries"), "{seen}");
    assert_eq!(ns.read_sysctl(EST), est, "established cut: {seen}");
    assert_eq!(ns.read_sysctl(GENERIC), 600, "generic cut: {seen}");
    drop(ns);
    drop(guard);
}
