//! Live kernel: kube-proxy and the `ctune run` agent on one host.
//!
//! kube-proxy is not run here (no binary in Debian's packages). Its conntrack writes at
//! start are reproduced by [`kube_proxy_start`] from its source,
//! `pkg/proxy/conntrack/sysctls.go` of Kubernetes 1.36 (`setSysctls`, `getConntrackMax`,
//! `realConntrackConfigurer`, with the 1,048,576 cap of kubernetes#137002 and before
//! kubernetes#142035 made the max write raise-only): the same files, in the same order,
//! with the same values and the same skips. One difference, for the test's sake: the
//! timeouts are written inside a test namespace (the one ctune watches and the test
//! fills) instead of the host's, where a hostNetwork kube-proxy writes them; the test
//! makes traffic only inside its own namespace.
//!
//! Needs root. Sets the global max and hash under a guard that restores them (also on
//! panic); never sets max below what the initial namespace holds; deletes its namespace.

use crate::common;

use common::*;
use ctune_core::plan::ADOPTED;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";
const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";
const EST: &str = "nf_conntrack_tcp_timeout_established";
const CLOSE_WAIT: &str = "nf_conntrack_tcp_timeout_close_wait";

/// kube-proxy's `KubeProxyConntrackConfiguration` (durations in seconds; 0 leaves the
/// key as it is, as `setSysctls` skips a duration that is not > 0).
#[derive(Debug, Clone, Copy)]
struct KubeProxyConntrack {
    max_per_core: u64,
    min: u64,
    tcp_established: u64,
    tcp_close_wait: u64,
    tcp_be_liberal: bool,
    udp: u64,
    udp_stream: u64,
}

impl KubeProxyConntrack {
    /// `SetDefaults_KubeProxyConfiguration` (pkg/proxy/apis/config/v1alpha1/defaults.go):
    /// maxPerCore 32768, min 131072, established 24 h, CLOSE_WAIT 1 h; the UDP timeouts
    /// and tcpBeLiberal have no default (left as they are).
    fn defaults() -> Self {
        KubeProxyConntrack {
            max_per_core: 32 * 1024,
            min: 128 * 1024,
            tcp_established: 24 * 3600,
            tcp_close_wait: 3600,
            tcp_be_liberal: false,
            udp: 0,
            udp_stream: 0,
        }
    }

    /// What docs/kubernetes.md recommends beside ctune: `--conntrack-max-per-core=0` and
    /// the timeouts at 0 (`conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s,
    /// tcpCloseWaitTimeout: 0s}`).
    fn leave_to_ctune() -> Self {
        KubeProxyConntrack {
            max_per_core: 0,
            tcp_established: 0,
            tcp_close_wait: 0,
            ..Self::defaults()
        }
    }
}

/// `getConntrackMax`: maxPerCore x CPUs, capped at 1,048,576, floored at min; 0 (write
/// nothing) when maxPerCore is 0.
fn kube_proxy_max(cfg: &KubeProxyConntrack, cpus: u64) -> u64 {
    const MAX_LIMIT: u64 = 1_048_576;
    if cfg.max_per_core == 0 {
        return 0;
    }
    let scaled = cfg.max_per_core * cpus;
    if scaled > MAX_LIMIT {
        MAX_LIMIT
    } else if scaled > cfg.min {
        scaled
    } else {
        cfg.min
    }
}

/// `detectNumCPU`: cadvisor's topology from /sys (the online logical CPUs), else Go's
/// `runtime.NumCPU()`.
fn kube_proxy_cpus() -> u64 {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let counted: u64 = online
        .trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum();
    if counted >= 1 {
        counted
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
    }
}

/// A write kube-proxy made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Written {
    file: String,
    old: u64,
    new: u64,
}

fn read_file(path: &Path) -> u64 {
    read_u64(path)
}

/// kube-proxy's `setSysctls` at its start, step by step: nf_conntrack_max (written when
/// it differs, higher or lower), then the hashsize module parameter when it is under
/// max / 4 (written as max / 4), then established, CLOSE_WAIT, be_liberal, UDP and UDP
/// stream, each written when it differs. Max and the hash are global and written from
/// the initial namespace, as a hostNetwork kube-proxy does; the timeouts inside `ns`.
/// Refuses (panics, the guard restores) to set max below twice what the initial
/// namespace holds plus 1024, like `GlobalGuard::set_max`.
fn kube_proxy_start(cfg: &KubeProxyConntrack, ns: &TestNetns) -> Vec<Written> {
    let mut written = Vec::new();
    let max = kube_proxy_max(cfg, kube_proxy_cpus());
    if max > 0 {
        // SetMax -> setIntSysCtl("nf_conntrack_max", max)
        let path = Path::new(SYSCTL_DIR).join("nf_conntrack_max");
        let cur = read_file(&path);
        if cur != max {
            let init_count = global("nf_conntrack_count");
            assert!(
                max >= init_count * 2 + 1024,
                "refusing to reproduce kube-proxy's max {max}: the host holds {init_count}"
            );
            std::fs::write(&path, max.to_string()).unwrap();
            written.push(Written {
                file: path.display().to_string(),
                old: cur,
                new: max,
            });
        }
        // "Check if hashsize is large enough for the nf_conntrack_max value."
        let hashsize = read_file(Path::new(HASHSIZE));
        if hashsize < max / 4 {
            std::fs::write(HASHSIZE, (max / 4).to_string()).unwrap();
            written.push(Written {
                file: HASHSIZE.into(),
                old: hashsize,
                new: max / 4,
            });
        }
    }
    let per_ns = [
        (EST, cfg.tcp_established),
        (CLOSE_WAIT, cfg.tcp_close_wait),
        ("nf_conntrack_tcp_be_liberal", u64::from(cfg.tcp_be_liberal)),
        ("nf_conntrack_udp_timeout", cfg.udp),
        ("nf_conntrack_udp_timeout_stream", cfg.udp_stream),
    ];
    for (key, value) in per_ns {
        if value == 0 {
            continue;
        }
        let cur = ns.read_sysctl(key);
        if cur != value {
            ns.write_sysctl(key, value);
            written.push(Written {
                file: format!("{SYSCTL_DIR}/{key} [netns {}]", ns.name),
                old: cur,
                new: value,
            });
        }
    }
    eprintln!("kube-proxy ({cfg:?}) wrote: {written:#?}");
    written
}

/// `ctune verify` against the agent's config, /etc and state: (exit code, output).
fn verify(cfg: &Path, dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .arg("verify")
        .arg("--config")
        .arg(cfg)
        .arg("--etc-root")
        .arg(dir.join("etc"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("run ctune verify");
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn kube_proxy_with_max_per_core_zero_leaves_max_to_ctune() {
    require_root("kube_proxy_with_max_per_core_zero_leaves_max_to_ctune");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("kpzero");
    guard.set_max(8192);
    guard.set_buckets(2048);
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(dir.path(), &ns, 65_536, "1s", "0s");
    let mut agent = Agent::start_stepped(&cfg, dir.path());

    // The recommended setting writes nothing at all.
    let none = kube_proxy_start(&KubeProxyConntrack::leave_to_ctune(), &ns);
    assert_eq!(
        none,
        [],
        "kube-proxy with maxPerCore 0 and timeouts 0 wrote"
    );
    // maxPerCore 0 alone: no max, no hash; the timeouts at their defaults still are.
    let zero_max = KubeProxyConntrack {
        max_per_core: 0,
        ..KubeProxyConntrack::defaults()
    };
    let written = kube_proxy_start(&zero_max, &ns);
    assert!(
        written.iter().all(|w| w.file.contains("[netns ")),
        "kube-proxy with maxPerCore 0 wrote a global value: {written:?}"
    );
    assert_eq!(global("nf_conntrack_max"), 8192);

    // ctune keeps managing max: a ramp in the namespace raises it, as without kube-proxy.
    let refused = ns.udp_flows_paced(0, 20_000, Some(10_000));
    assert!(
        wait_for(Duration::from_secs(5), || global("nf_conntrack_max")
            >= 32_768),
        "max {} after 20000 flows ({refused} sends refused); log:\n{}",
        global("nf_conntrack_max"),
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("raising max"), "{log}");
    assert!(!log.contains(ADOPTED), "adopted something:\n{log}");
    let (code, out) = verify(&cfg, dir.path());
    assert_eq!(code, 0, "verify:\n{out}\nlog:\n{log}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok    nf_conntrack_max [global]")),
        "{out}"
    );
    assert!(!out.contains("held"), "{out}");
    eprintln!("verify:\n{out}");

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(2)), Some(0));
    drop(ns);
    drop(guard);
}

#[test]
fn kube_proxy_defaults_are_adopted_held_and_reported() {
    require_root("kube_proxy_defaults_are_adopted_held_and_reported");
    let started = Instant::now();
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("kpdef");
    const CAP: u64 = 32_768;
    guard.set_max(8192);
    guard.set_buckets(2048);
    let dir = tempfile::tempdir().unwrap();
    // A long hold keeps the namespace under pressure after kube-proxy raises max, so the
    // timeouts it rewrote stay held (and shown) for the rest of the test.
    // The tiers alone (no composition sample): the flood is UDP, and this test needs
    // the established and CLOSE_WAIT timeouts lowered for kube-proxy to write over.
    let cfg = agent_config(dir.path(), &ns, CAP, "60s", "0s");
    let mut agent = Agent::start_stepped(&cfg, dir.path());

    // ctune at work before kube-proxy starts: a flood past the ceiling. Max goes to the
    // ceiling, the hash to about max / 4 (within hash.tolerance), and at the ceiling the namespace is critical: its
    // established timeout is lowered to the 15 h floor, CLOSE_WAIT to 30 s.
    let refused = ns.udp_flows(CAP as usize + 2_000);
    let ready = wait_for(Duration::from_secs(10), || {
        global("nf_conntrack_max") == CAP
            && ns.read_sysctl(EST) == 54_000
            && ns.read_sysctl(CLOSE_WAIT) == 30
    });
    assert!(
        ready,
        "before kube-proxy: max {} buckets {} established {} close_wait {} ({refused} sends refused); log:\n{}",
        global("nf_conntrack_max"),
        global("nf_conntrack_buckets"),
        ns.read_sysctl(EST),
        ns.read_sysctl(CLOSE_WAIT),
        agent.log()
    );
    // No loss from here on: the adoption is not overridden as unsafe.
    std::thread::sleep(Duration::from_millis(500));
    let ctune_buckets = global("nf_conntrack_buckets");
    assert!(
        (CAP / 8..=CAP / 4).contains(&ctune_buckets),
        "buckets {ctune_buckets}"
    );

    // kube-proxy starts with its defaults.
    let kp = KubeProxyConntrack::defaults();
    let kp_max = kube_proxy_max(&kp, kube_proxy_cpus());
    let written = kube_proxy_start(&kp, &ns);
    let files: Vec<&str> = written.iter().map(|w| w.file.as_str()).collect();
    assert_eq!(files.len(), 4, "{written:?}");
    assert!(files[0].ends_with("/nf_conntrack_max"), "{written:?}");
    assert_eq!(files[1], HASHSIZE, "{written:?}");
    assert_eq!((written[0].old, written[0].new), (CAP, kp_max));
    assert_eq!(
        (written[1].old, written[1].new),
        (ctune_buckets, kp_max / 4)
    );
    assert_eq!((written[2].old, written[2].new), (54_000, 86_400));
    assert_eq!((written[3].old, written[3].new), (30, 3_600));

    // The agent adopts all four and says so, once each.
    let expected = [
        format!("nf_conntrack_max is {kp_max} but ctune set {CAP}: someone else changed it"),
        format!(
            "nf_conntrack_buckets is {} but ctune set {ctune_buckets}: someone else changed it",
            kp_max / 4
        ),
        format!(
            "{EST} in {} is 1day but ctune set 15h: someone else changed it",
            ns.name
        ),
        format!(
            "{CLOSE_WAIT} in {} is 1h but ctune set 30s: someone else changed it",
            ns.name
        ),
    ];
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = agent.log();
            expected.iter().all(|e| log.contains(e.as_str()))
        }),
        "adoptions not logged; expected {expected:#?}; log:\n{}",
        agent.log()
    );

    // Over the next steps (200 ms apart while the namespace is under pressure) nothing
    // is written back: ctune's own record (its log: one line per change it applies)
    // names none, and the live values stay kube-proxy's.
    let want = (kp_max, kp_max / 4, 86_400, 3_600);
    let mut moved = Vec::new();
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let seen = (
            global("nf_conntrack_max"),
            global("nf_conntrack_buckets"),
            ns.read_sysctl(EST),
            ns.read_sysctl(CLOSE_WAIT),
        );
        if seen != want && !moved.contains(&seen) {
            moved.push(seen);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    let after_adoption = &log[log.find(expected[0].as_str()).unwrap()..];
    for key in ["nf_conntrack_max", "nf_conntrack_buckets", EST, CLOSE_WAIT] {
        let ctune_changed: Vec<&str> = after_adoption
            .lines()
            .filter(|l| l.contains(&format!(" {key} ")) && l.contains(" -> "))
            .collect();
        assert!(
            ctune_changed.is_empty(),
            "ctune changed {key} after adopting kube-proxy's value: {ctune_changed:#?}\nlive (max, buckets, established, close_wait) seen other than {want:?}: {moved:?}\nlog:\n{log}"
        );
    }
    // Tests that change global values hold the machine lock: no one else writes them.
    assert!(
        moved.is_empty(),
        "(max, buckets, established, close_wait) moved to {moved:?} from {want:?}; log:\n{log}"
    );
    for e in &expected {
        assert_eq!(log.matches(e.as_str()).count(), 1, "{e}\n{log}");
    }

    // `ctune verify`: held, not a difference; its file follows the adopted values.
    let (code, out) = verify(&cfg, dir.path());
    eprintln!("verify:\n{out}");
    assert_eq!(code, 0, "verify:\n{out}\nlog:\n{log}");
    for line in [
        format!("held  nf_conntrack_max [global]: {kp_max}"),
        format!("held  nf_conntrack_buckets [global]: {}", kp_max / 4),
        format!("held  {EST} [netns {}]: 86400", ns.name),
        format!("held  {CLOSE_WAIT} [netns {}]: 3600", ns.name),
    ] {
        assert!(
            out.lines()
                .any(|l| l == line || l.starts_with(&format!("{line} ("))),
            "no `{line}` in:\n{out}"
        );
    }
    let persisted = std::fs::read_to_string(dir.path().join("etc/sysctl.d/99-ctune.conf")).unwrap();
    let live_max = global("nf_conntrack_max");
    assert!(
        persisted.contains(&format!("net.netfilter.nf_conntrack_max = {live_max}\n"))
            || persisted.contains(&format!("net.netfilter.nf_conntrack_max = {kp_max}\n")),
        "{persisted}"
    );

    // `ctune status` on the same state, for the record.
    let (code, status, err) = ctune(&[
        "status",
        "--sample",
        "0",
        "--config",
        cfg.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ]);
    eprintln!("status (exit {code}):\n{status}{err}");
    assert!([0, 5, 6].contains(&code), "status exited {code}: {err}");
    // It does not pass kube-proxy's max off as ctune's change.
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with("nf_conntrack_max ")
                && l.contains("set by someone else since ctune's change")),
        "status does not mark the adopted max:\n{status}"
    );

    // kube-proxy restarts (a DaemonSet rollout): every value is already its own, it
    // writes nothing, and ctune adopts nothing new.
    let again = kube_proxy_start(&kp, &ns);
    assert!(again.is_empty(), "second start wrote {again:?}");

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(2)), Some(0));
    assert_eq!(
        global("nf_conntrack_max"),
        kp_max,
        "stopping rolled max back"
    );
    drop(ns);
    drop(guard);
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
}
