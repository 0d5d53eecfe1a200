//! Soak (issue 12): `ctune run` for a while under an oscillating load in a test namespace,
//! while an unprivileged user (uid 65534) creates and deletes network namespaces, keeps
//! a few of its own filling, and holds ctune's readable files open and locked beside it.
//! Sampled every 250 ms: every value ctune set stays within its bounds, the agent's RSS,
//! descriptors and threads do not grow, and nothing flaps (changes are bounded by the
//! number of load cycles, not by the number of steps).
//!
//! `CTUNE_SOAK_SECS` sets the length (default 64 s, four cycles of 16 s; 20..=3600). Needs
//! root; lowers the global max under a guard that restores it, also on panic; every
//! process it starts is bounded by `timeout` and killed on drop; the namespaces go with
//! their processes.

use crate::common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_MAX: u64 = 16_384;
const CAP: u64 = 32_768;
const MIN_MAX: u64 = 4096;
const UDP_FLOOR: u64 = 10;
const EST_FLOOR: u64 = 54_000;
const CYCLE: Duration = Duration::from_secs(16);
/// Flows per cycle: past the high watermark of the capped max, so every cycle raises
/// the pressure and lowers timeouts, and the flush ends it.
const FLOWS: usize = 28_000;

/// One sample of what ctune controls and what it costs.
#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    max: u64,
    buckets: u64,
    udp: u64,
    est: u64,
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn soak_secs() -> u64 {
    std::env::var("CTUNE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
        .clamp(20, 3600)
}

/// A field of /proc/PID/status, in its unit (kB for VmRSS).
fn status_field(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Processes of uid 65534, each under `timeout`, killed (with their namespaces) on drop.
struct Hostile {
    children: Vec<Child>,
}

impl Hostile {
    fn spawn(&mut self, secs: u64, script: &str) {
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args([
                "timeout",
                "-s",
                "KILL",
                &secs.to_string(),
                "bash",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("setpriv");
        self.children.push(child);
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        for c in &mut self.children {
            // The whole group: bash, unshare and their sleeps.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = c.wait();
        }
    }
}

use std::os::unix::process::CommandExt;

/// The hostile user's work: namespaces that come and go as fast as it can make them,
/// three of its own that hold 2000 entries each for the whole run, and ctune's readable
/// files held open with a shared flock (ctune replaces them by rename, so no reader or
/// lock holder can stop it).
fn start_hostile(secs: u64, etc: &std::path::Path) -> Hostile {
    let mut h = Hostile { children: vec![] };
    h.spawn(secs, "while :; do unshare -rn sleep 0.02; done");
    for n in 0..3 {
        h.spawn(
            secs,
            &format!(
                "exec unshare -rn bash -c 'ip link set lo up; \
                 nft add table inet h; \
                 nft add chain inet h c \"{{ type filter hook output priority 0; }}\"; \
                 nft add rule inet h c ct state new accept; \
                 for i in $(seq 1 2000); do echo > /dev/udp/127.0.{n}.$((i % 200 + 1))/$((2000 + i)); done; \
                 exec sleep {secs}'"
            ),
        );
    }
    let persisted = etc.join("sysctl.d/99-ctune.conf");
    h.spawn(
        secs,
        &format!(
            "while :; do [ -r {p} ] && flock -s {p} sleep 2; sleep 0.1; done",
            p = persisted.display()
        ),
    );
    h
}

/// Distinct network namespaces of uid 65534's processes (other than the host's) now.
fn hostile_namespaces() -> usize {
    let host = std::fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
    let mut seen = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let owned = std::fs::metadata(&dir).is_ok_and(|m| m.uid() == 65534);
        if let (true, Ok(ns)) = (owned, std::fs::metadata(dir.join("ns/net")))
            && Some(ns.ino()) != host
        {
            seen.insert(ns.ino());
        }
    }
    seen.len()
}

/// Cycles of: a flood past the watermark, a pause at that level, a flush, an idle rest.
fn oscillate(ns: &TestNetns, cycles: u64) -> u64 {
    for _ in 0..cycles {
        let start = Instant::now();
        ns.udp_flows_paced(0, FLOWS, Some(7_000));
        std::thread::sleep(Duration::from_secs(3));
        let out = ns.exec(&["conntrack", "-F"]);
        assert!(out.status.success(), "conntrack -F failed");
        if let Some(rest) = (start + CYCLE).checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
    cycles
}

fn sample(pid: u32, ns: &TestNetns, t0: Instant) -> Sample {
    Sample {
        at: t0.elapsed().as_secs_f64(),
        max: global("nf_conntrack_max"),
        buckets: global("nf_conntrack_buckets"),
        udp: ns.read_sysctl("nf_conntrack_udp_timeout"),
        est: ns.read_sysctl("nf_conntrack_tcp_timeout_established"),
        rss_kib: status_field(pid, "VmRSS:"),
        fds: fd_count(pid),
        threads: status_field(pid, "Threads:"),
    }
}

/// How many times a value changed along the samples.
fn changes(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> usize {
    samples.windows(2).filter(|w| f(&w[0]) != f(&w[1])).count()
}

fn table(samples: &[Sample]) -> String {
    let mut out = String::from("    t(s)      max  buckets  udp     est  rss(KiB)  fds thr\n");
    for s in samples.iter().step_by(4) {
        out += &format!(
            "{:8.1} {:8} {:8} {:4} {:7} {:9} {:4} {:3}\n",
            s.at, s.max, s.buckets, s.udp, s.est, s.rss_kib, s.fds, s.threads
        );
    }
    out
}

/// Every value ctune set, at every sample, within the bounds its config gives it.
fn out_of_bounds(s: &Sample, operator_udp: u64, operator_est: u64) -> Option<String> {
    let ok = (MIN_MAX..=CAP).contains(&s.max)
        && s.buckets <= s.max
        && (UDP_FLOOR..=operator_udp).contains(&s.udp)
        && (EST_FLOOR..=operator_est).contains(&s.est);
    (!ok).then(|| format!("out of bounds at {:.1} s: {s:?}", s.at))
}

#[test]
fn soak_under_oscillating_load_and_a_hostile_user() {
    require_root("soak_under_oscillating_load_and_a_hostile_user");
    let secs = soak_secs();
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("soak");
    guard.set_max(START_MAX);
    guard.set_buckets(START_MAX / 4);
    let operator_udp = ns.read_sysctl("nf_conntrack_udp_timeout");
    let operator_est = ns.read_sysctl("nf_conntrack_tcp_timeout_established");

    let dir = tempfile::tempdir().unwrap();
    // The hostile user may read what any user may read: the persisted files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: all\n\
             ceiling:\n  min_max: {MIN_MAX}\n  max_cap: {CAP}\n\
             hash:\n  min_interval: 2s\n\
             pressure:\n  hold: 1s\n\
             agent:\n  interval: 200ms\n"
        ),
    )
    .unwrap();
    let mut agent = Agent::start_stepped(&cfg, dir.path());
    let pid = agent.pid();
    let _hostile = start_hostile(secs + 5, &dir.path().join("etc"));

    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut hostile_seen = 0;
    let cycles = std::thread::scope(|s| {
        let load = s.spawn(|| oscillate(&ns, secs / CYCLE.as_secs()));
        while !load.is_finished() {
            hostile_seen = hostile_seen.max(hostile_namespaces());
            assert_eq!(
                agent.wait_exit(Duration::ZERO),
                None,
                "agent died: {}",
                agent.log()
            );
            samples.push(sample(pid, &ns, t0));
            std::thread::sleep(Duration::from_millis(250));
        }
        load.join().expect("load thread")
    });
    let report = || {
        format!(
            "{cycles} cycles; samples (every 4th):\n{}\nlog:\n{}",
            table(&samples),
            agent.log()
        )
    };
    eprintln!(
        "soak: {} s, {hostile_seen} hostile namespaces at once at most, {}",
        secs,
        report()
            .lines()
            .take(3 + samples.len() / 4)
            .collect::<Vec<_>>()
            .join("\n")
    );

    for s in &samples {
        if let Some(why) = out_of_bounds(s, operator_udp, operator_est) {
            panic!("{why}\n{}", report());
        }
    }
    assert!(cycles >= 1 && samples.len() >= 20, "{}", report());
    assert!(
        hostile_seen >= 3,
        "the hostile user's namespaces never ran ({hostile_seen} seen)"
    );
    // Each cycle may lower the timeouts in a few grades and restore them once; a flapping
    // agent changes them every step or two.
    let udp_changes = changes(&samples, |s| s.udp);
    assert!(
        udp_changes >= 2,
        "the load never moved the timeouts: {}",
        report()
    );
    assert!(
        udp_changes as u64 <= 4 * cycles + 2,
        "udp timeout changed {udp_changes} times: {}",
        report()
    );
    // max only grows (shrink is off), so it changes a few times in all; the hash follows.
    assert!(
        changes(&samples, |s| s.max) <= 4,
        "max flapped: {}",
        report()
    );
    assert!(
        samples.windows(2).all(|w| w[1].max >= w[0].max),
        "max went down: {}",
        report()
    );
    assert!(
        changes(&samples, |s| s.buckets) <= 4,
        "hash resized too often: {}",
        report()
    );
    assert_no_growth(&samples, &report);

    let end_table = table(&samples);
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(2));
    assert_eq!(code, Some(0), "{end_table}\nlog:\n{}", agent.log());
    drop(ns);
    drop(guard);
}

/// RSS (peaks), descriptors and threads (medians) after the first cycle (allocations warm, namespaces
/// seen) compared with the rest: a leak of one namespace descriptor or a kilobyte a step
/// shows up over hundreds of steps.
fn assert_no_growth(samples: &[Sample], report: &dyn Fn() -> String) {
    let warm = samples
        .iter()
        .position(|s| s.at >= CYCLE.as_secs_f64())
        .unwrap_or(0);
    let (first, second) = samples[warm..].split_at((samples.len() - warm) / 2);
    let peak = |part: &[Sample], f: fn(&Sample) -> u64| part.iter().map(f).max().unwrap_or(0);
    let rss = (peak(first, |s| s.rss_kib), peak(second, |s| s.rss_kib));
    assert!(
        rss.1 <= rss.0 + 1024,
        "RSS grew {} -> {} KiB: {}",
        rss.0,
        rss.1,
        report()
    );
    // A step's reader thread holds a namespace's descriptors while it runs, so a
    // sample may catch a transient spike: a leak raises the typical count (the median).
    let median = |part: &[Sample], f: fn(&Sample) -> u64| {
        let mut v: Vec<u64> = part.iter().map(f).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let fds = (
        median(first, |s| s.fds as u64),
        median(second, |s| s.fds as u64),
    );
    assert!(
        fds.1 <= fds.0 + 1,
        "descriptors grew {} -> {} (medians): {}",
        fds.0,
        fds.1,
        report()
    );
    let threads = (median(first, |s| s.threads), median(second, |s| s.threads));
    assert!(
        threads.1 <= threads.0 + 1,
        "threads grew {} -> {}: {}",
        threads.0,
        threads.1,
        report()
    );
}
