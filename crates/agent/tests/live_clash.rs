//! Conntrack insert clashes on the live kernel, produced on purpose in a test namespace.
//!
//! What still drops on a current kernel (checked on 6.18): two UDP packets from the
//! same socket, sent at the same moment by two threads, to two service addresses that
//! DNAT to the same backend address and port. Both get the same reply tuple (backend:
//! port -> client:port). Sent one after the other, the second would be remapped to a new
//! source port by NAT (the `found` counter); sent together, neither is in the table when
//! the other picks its mapping, the second to confirm collides in the reply direction,
//! `nf_ct_resolve_clash` cannot resolve it, and the packet is dropped: `drop` and
//! `insert_failed` rise together, `clashres` does not, and the sender gets EPERM.
//!
//! The Kubernetes DNS A/AAAA case proper (the same 5-tuple twice, DNAT to one or to a
//! random backend) no longer drops: it is resolved and counted in `clashres` alone
//! (the second test pins that).
//!
//! The race window is between NAT choosing a mapping (nat postrouting, priority 100) and
//! the confirm (last in postrouting). A filter chain of non-matching rules in between
//! widens it, much as a long kube-proxy ruleset does; without it few rounds collide.

use crate::common;

use common::{TestNetns, global, global_lock, require_root};
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// The storm stops after this long, however many rounds were asked for.
const TIME_LIMIT: Duration = Duration::from_secs(5);
/// Non-matching rules between NAT and confirm: the race window.
const SLOW_RULES: usize = 1000;
const TABLE: &str = "ctune_clash";
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SERVICE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
const SERVICE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Round `r` uses destination port `FIRST_PORT + r % PORTS`: a fresh flow each round.
const FIRST_PORT: u16 = 10_000;
const PORTS: usize = 50_000;

/// What one storm did to the namespace's conntrack statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClashResult {
    /// Rounds run (each: one packet from each of two threads at the same moment).
    pub rounds: usize,
    /// Sends the kernel refused (EPERM: the packet was dropped on the way out).
    pub send_errors: u64,
    pub elapsed: Duration,
    /// Deltas of the summed per-CPU counters.
    pub drop: u64,
    pub insert_failed: u64,
    pub clashres: u64,
    pub found: u64,
    pub chainlength: u64,
    /// The namespace's `nf_conntrack_count` before and after.
    pub count_before: u64,
    pub count_after: u64,
}

impl fmt::Display for ClashResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rounds in {:.2?}: drop +{}, insert_failed +{}, clashres +{}, found +{}, \
             chainlength +{}, send errors {}, count {} -> {}",
            self.rounds,
            self.elapsed,
            self.drop,
            self.insert_failed,
            self.clashres,
            self.found,
            self.chainlength,
            self.send_errors,
            self.count_before,
            self.count_after
        )
    }
}

/// Which destinations the two threads send to in a round.
#[derive(Clone, Copy)]
enum Race {
    /// Thread 0 to service A, thread 1 to service B, same port: two flows, one reply
    /// tuple. Unresolvable: drop + insert_failed.
    TwoServicesOneBackend,
    /// Both threads to service A, same port: one 5-tuple twice (the DNS A/AAAA race).
    /// Resolved: clashres.
    SameTuple,
}

/// Runs the unresolvable race `rounds` times (at most ~5 s) in the existing namespace
/// `ns`: brings `lo` up, installs the nftables table `ctune_clash` (replacing an earlier
/// one), and returns what the counters did.
pub fn clash_storm(ns: &str, rounds: usize) -> ClashResult {
    storm(ns, rounds, Race::TwoServicesOneBackend)
}

/// Same setup, but both packets of a round carry the same 5-tuple.
pub fn same_tuple_storm(ns: &str, rounds: usize) -> ClashResult {
    storm(ns, rounds, Race::SameTuple)
}

/// Storms compete for the CPUs they race on: one at a time in this process.
static STORM: Mutex<()> = Mutex::new(());

fn storm(ns: &str, rounds: usize, race: Race) -> ClashResult {
    let _one_at_a_time = STORM.lock().unwrap_or_else(|p| p.into_inner());
    let rounds = rounds.min(PORTS);
    let lo = Command::new("ip")
        .args(["-n", ns, "link", "set", "lo", "up"])
        .output()
        .expect("run ip");
    assert!(
        lo.status.success(),
        "lo up in {ns}: {}",
        String::from_utf8_lossy(&lo.stderr)
    );
    install_rules(ns);

    let (before, count_before) = in_netns(ns, read_stats);
    let started = Instant::now();
    let (rounds_run, send_errors) = in_netns(ns, || race_rounds(rounds, race, started));
    let elapsed = started.elapsed();
    let (after, count_after) = in_netns(ns, read_stats);

    let delta = |name: &str| {
        let col = |s: &[(String, u64)]| {
            s.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no column {name} in nf_conntrack stats"))
        };
        col(&after).wrapping_sub(col(&before))
    };
    ClashResult {
        rounds: rounds_run,
        send_errors,
        elapsed,
        drop: delta("drop"),
        insert_failed: delta("insert_failed"),
        clashres: delta("clashres"),
        found: delta("found"),
        chainlength: delta("chainlength"),
        count_before,
        count_after,
    }
}

/// Services A and B DNAT to the backend address (ports kept), and a filter chain of
/// never-matching rules sits between NAT (postrouting 100) and the confirm.
fn install_rules(ns: &str) {
    let mut rules = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 chain services {{\n\
         \x20   type nat hook output priority -100; policy accept;\n\
         \x20   ip daddr {{ {SERVICE_A}, {SERVICE_B} }} udp dport {FIRST_PORT}-{last} dnat to {BACKEND}\n\
         \x20 }}\n\
         \x20 chain window {{\n\
         \x20   type filter hook postrouting priority 200; policy accept;\n",
        last = FIRST_PORT as usize + PORTS - 1
    );
    for _ in 0..SLOW_RULES {
        rules.push_str("    udp dport 1 counter\n");
    }
    rules.push_str("  }\n}\n");

    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip netns exec nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())
        .expect("write rules to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two threads share one UDP socket and, round after round, send one datagram each at
/// the same moment (released together by a barrier). Returns (rounds, refused sends).
fn race_rounds(rounds: usize, race: Race, started: Instant) -> (usize, u64) {
    let deadline = started + TIME_LIMIT;
    let sock = UdpSocket::bind(SocketAddrV4::new(CLIENT, 0)).expect("bind client socket");
    let targets = match race {
        Race::TwoServicesOneBackend => [SERVICE_A, SERVICE_B],
        Race::SameTuple => [SERVICE_A, SERVICE_A],
    };
    let barrier = Barrier::new(2);
    let stop = AtomicBool::new(false);
    let errors = AtomicU64::new(0);
    let cpus = allowed_cpus();
    let run = |id: usize| {
        // On two different CPUs, or the two sends never overlap.
        if cpus.len() >= 2 {
            let mut set = CpuSet::new();
            set.set(cpus[id]).expect("cpu index");
            sched_setaffinity(Pid::from_raw(0), &set).expect("pin sender thread");
        }
        let mut done = 0;
        for r in 0..rounds {
            barrier.wait();
            // Thread 0 sets `stop` before the barrier, both read it after: same verdict.
            if stop.load(Ordering::Acquire) {
                break;
            }
            let port = FIRST_PORT + (r % PORTS) as u16;
            if sock
                .send_to(&[id as u8], SocketAddrV4::new(targets[id], port))
                .is_err()
            {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            done += 1;
            if id == 0 && Instant::now() >= deadline {
                stop.store(true, Ordering::Release);
            }
        }
        done
    };
    let done = std::thread::scope(|s| {
        let other = s.spawn(|| run(1));
        let done = run(0);
        other.join().expect("sender thread panicked");
        done
    });
    (done, errors.load(Ordering::Relaxed))
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    let set = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Runs `f` on a thread that has entered the network namespace `/run/netns/<ns>`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let fd = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    })
}

/// The calling thread's namespace: per-CPU conntrack statistics summed per column
/// (columns found by header name, values hex), and `nf_conntrack_count`.
fn read_stats() -> (Vec<(String, u64)>, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")
        .expect("read nf_conntrack stats");
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .expect("stats header")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut sums = vec![0u64; header.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        for (sum, field) in sums.iter_mut().zip(line.split_whitespace()) {
            *sum += u64::from_str_radix(field, 16).expect("hex counter");
        }
    }
    let count = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .expect("read nf_conntrack_count")
        .trim()
        .parse()
        .expect("count");
    (header.into_iter().zip(sums).collect(), count)
}

/// The race needs the two senders on two CPUs at once.
fn two_cpus(test: &str) -> bool {
    let n = allowed_cpus().len();
    if n < 2 {
        eprintln!("{test}: skipped, needs two CPUs to race on ({n} allowed)");
    }
    n >= 2
}

/// Rounds for a test: enough for a few clashes even on a busy machine, few enough that
/// the namespace holds a small fraction of the global maximum (about 2 entries a round).
fn test_rounds(max: u64) -> usize {
    (max / 100).clamp(200, 3000) as usize
}

#[test]
fn clash_storm_raises_drop_and_insert_failed_together() {
    require_root("clash_storm_raises_drop_and_insert_failed_together");
    if !two_cpus("clash_storm_raises_drop_and_insert_failed_together") {
        return;
    }
    // Nothing global changes here, but the assertions rely on nf_conntrack_max staying
    // put (and a lowered max would make the storm's own entries fail).
    let _lock = global_lock();
    // Deleted on drop, also when an assertion below panics.
    let ns = TestNetns::new("clash");
    let max = global("nf_conntrack_max");
    let r = clash_storm(&ns.name, test_rounds(max));
    eprintln!("clash storm in {}: {r}", ns.name);

    assert!(
        r.drop >= 3 && r.insert_failed >= 3,
        "expected unresolved clashes (drop and insert_failed up by 3 or more): {r}"
    );
    assert_eq!(
        r.drop, r.insert_failed,
        "each unresolved clash counts once in both: {r}"
    );
    assert_eq!(
        r.clashres, 0,
        "different original tuples: nothing to resolve: {r}"
    );
    assert_eq!(
        r.send_errors, r.drop,
        "each dropped packet is a refused send: {r}"
    );
    let max_now = global("nf_conntrack_max");
    assert!(
        r.count_after.saturating_mul(20) < max_now,
        "clashes at low utilisation: count {} against nf_conntrack_max {max_now}: {r}",
        r.count_after
    );
}

#[test]
fn same_tuple_race_is_resolved_clashres_without_drop() {
    require_root("same_tuple_race_is_resolved_clashres_without_drop");
    if !two_cpus("same_tuple_race_is_resolved_clashres_without_drop") {
        return;
    }
    let _lock = global_lock();
    let ns = TestNetns::new("clashres");
    let max = global("nf_conntrack_max");
    let r = same_tuple_storm(&ns.name, test_rounds(max));
    eprintln!("same-tuple storm in {}: {r}", ns.name);

    assert!(r.clashres >= 3, "expected resolved clashes: {r}");
    assert_eq!(
        (r.drop, r.insert_failed, r.send_errors),
        (0, 0, 0),
        "resolved clashes drop nothing: {r}"
    );
}

/// The clash storm as ctune sees it: `ctune apply` before and after the storm reports
/// the clashes and changes nothing (no growth of max, no timeout lowered), while a real
/// fill of another namespace still grows max. Global values are restored by the guard.
#[test]
fn ctune_reports_clashes_and_changes_nothing_while_a_real_fill_still_grows_max() {
    let test = "ctune_reports_clashes_and_changes_nothing_while_a_real_fill_still_grows_max";
    require_root(test);
    if !two_cpus(test) {
        return;
    }
    let guard = common::GlobalGuard::save();
    let clash_ns = TestNetns::new("clashct");
    let fill_ns = TestNetns::new("fill");
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::named_config(dir.path(), &[&clash_ns.name, &fill_ns.name]);
    // Steps a few seconds apart must still measure rises: a 10 s interval keeps the
    // previous sample usable for 30 s, longer than the storm can take.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("agent:\n  interval: 10s\n");
    std::fs::write(&cfg, text).unwrap();
    let etc = dir.path().join("etc");
    let state = dir.path().join("state");
    let apply = || {
        let args = [
            "apply",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "--etc-root",
            etc.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        let (code, out, err) = common::ctune(&args);
        assert_eq!(code, 0, "ctune apply: {err}\n{out}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let max_before = global("nf_conntrack_max");
    apply();
    let r = clash_storm(&clash_ns.name, 1_000);
    assert!(r.drop >= 3, "the storm made no clash: {r}");
    let v = apply();
    let seen = v.to_string();
    assert_eq!(
        v["changes"],
        serde_json::json!([]),
        "clashes changed something ({r}): {seen}"
    );
    assert!(
        seen.contains("insert clashes"),
        "clashes not reported ({r}): {seen}"
    );
    assert_eq!(global("nf_conntrack_max"), max_before, "{seen}");

    // A real fill: a small max, the other namespace at 80 % of it.
    let init = global("nf_conntrack_count");
    let small = (init * 2 + 1024).max(16_384);
    guard.set_max(small);
    let refused = fill_ns.udp_flows((small * 8 / 10) as usize);
    assert_eq!(refused, 0, "the fill stays below max");
    let v = apply();
    let grew = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "nf_conntrack_max");
    assert!(
        grew.is_some_and(|c| c["ok"] == true && c["new"].as_u64().unwrap() > small),
        "a fill to 80 % did not grow max {small}: {v:#}"
    );
}
