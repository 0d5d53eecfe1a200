//! Many namespaces, as a Kubernetes node holds them: pods' network namespaces, each with
//! a `ct state` rule and a few hundred entries, created and deleted while the agent
//! watches. [`cost`] measures the agent by namespace count (docs/benchmarks-cost.md,
//! "Many namespaces"); [`churn`] is the soak of pods coming and going at a steady rate,
//! with the odd flood (docs/benchmarks-cost.md, "Churn").
//!
//! Every namespace is `ip netns add`ed under a prefix unique to the run and deleted on
//! drop, with its nftables table; global values are changed only under
//! [`GlobalGuard`], which puts them back.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::livebench::{BenchError, GlobalGuard, err, in_netns, run_cmd};
use ctune_core::tunables;

/// What makes a pod's namespace track: as a CNI's or a pod's own firewall does.
const POD_RULESET: &str = "table inet ctune_pod {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    ct state established,related accept\n  }\n}\n";

/// First port of a pod's flows (one entry per port).
const FIRST_PORT: u16 = 20000;

/// The pods of a run, deleted on drop.
#[derive(Debug)]
pub struct Pods {
    prefix: String,
    next: usize,
    /// Alive, oldest first, with when each was made.
    alive: VecDeque<(String, Instant)>,
}

impl Pods {
    /// No pods yet; their names start with `prefix` and this process's id.
    pub fn new(prefix: &str) -> Pods {
        Pods {
            prefix: format!("{prefix}{}-", std::process::id()),
            next: 0,
            alive: VecDeque::new(),
        }
    }

    /// How many are alive.
    pub fn len(&self) -> usize {
        self.alive.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.alive.is_empty()
    }

    /// Makes one pod's namespace: loopback up, the ruleset, UDP entries kept an hour (so
    /// they stay while measured), and `entries` flows. Returns its name.
    pub fn add(&mut self, entries: usize) -> Result<String, BenchError> {
        let name = format!("{}{}", self.prefix, self.next);
        self.next += 1;
        run_cmd("ip", &["netns", "add", &name], None)?;
        self.alive.push_back((name.clone(), Instant::now()));
        in_netns(&name, || -> Result<(), BenchError> {
            // Children start in the namespace of the thread that spawns them.
            run_cmd("ip", &["link", "set", "lo", "up"], None)?;
            run_cmd("nft", &["-f", "-"], Some(POD_RULESET))?;
            let udp = Path::new("/proc/sys/net/netfilter/nf_conntrack_udp_timeout");
            std::fs::write(udp, "3600").map_err(|e| err(format!("{}: {e}", udp.display())))?;
            flows(entries)
        })??;
        Ok(name)
    }

    /// Grows to `n` pods of `entries` each.
    pub fn grow_to(&mut self, n: usize, entries: usize) -> Result<(), BenchError> {
        while self.alive.len() < n {
            self.add(entries)?;
        }
        Ok(())
    }

    /// Adds `entries` flows to the pod `name` (a flood), from the port after its own.
    pub fn flood(&self, name: &str, entries: usize) -> Result<usize, BenchError> {
        in_netns(name, || flows_from(FIRST_PORT as usize + 1000, entries))?
    }

    /// Deletes the pods made more than `age` ago; returns how many.
    pub fn expire(&mut self, age: Duration) -> Result<usize, BenchError> {
        let mut n = 0;
        while let Some((name, at)) = self.alive.front() {
            if at.elapsed() < age {
                break;
            }
            run_cmd("ip", &["netns", "del", name], None)?;
            self.alive.pop_front();
            n += 1;
        }
        Ok(n)
    }

    /// Deletes the pod `name`.
    pub fn expire_named(&mut self, name: &str) -> Result<(), BenchError> {
        run_cmd("ip", &["netns", "del", name], None)?;
        self.alive.retain(|(n, _)| n != name);
        Ok(())
    }

    /// The newest pod's name.
    pub fn newest(&self) -> Option<&str> {
        self.alive.back().map(|(n, _)| n.as_str())
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        // One `ip` for all of them: a thousand deletions in one process.
        let batch: String = self
            .alive
            .iter()
            .map(|(n, _)| format!("netns del {n}\n"))
            .collect();
        if !batch.is_empty() && run_cmd("ip", &["-batch", "-"], Some(&batch)).is_err() {
            for (n, _) in &self.alive {
                let _ = run_cmd("ip", &["netns", "del", n], None);
            }
        }
    }
}

/// `entries` UDP flows from this thread's namespace's loopback, one port each.
fn flows(entries: usize) -> Result<(), BenchError> {
    flows_from(FIRST_PORT as usize, entries).map(|_| ())
}

/// `entries` flows to ports from `first` (wrapping within the unprivileged range and
/// over the loopback addresses); returns how many were sent.
fn flows_from(first: usize, entries: usize) -> Result<usize, BenchError> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| err(format!("udp socket: {e}")))?;
    let mut sent = 0;
    for i in 0..entries {
        let port = 1024 + (first + i) % 60000;
        let host = 1 + ((first + i) / 60000) as u8;
        let to = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, host), port as u16);
        if sock.send_to(b"x", to).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// What the `ctune` process uses now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// On-CPU time of all its threads (schedstat), nanoseconds.
    pub cpu_ns: u64,
    /// Resident now (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident (VmHWM), KiB.
    pub hwm_kib: u64,
    /// Open descriptors.
    pub fds: usize,
}

/// Reads [`Usage`] of process `pid`.
pub fn usage(pid: u32) -> Result<Usage, BenchError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let status = std::fs::read_to_string(dir.join("status")).map_err(|e| err(e.to_string()))?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut cpu_ns = 0;
    for task in std::fs::read_dir(dir.join("task")).map_err(|e| err(e.to_string()))? {
        let path = task
            .map_err(|e| err(e.to_string()))?
            .path()
            .join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            cpu_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let fds = std::fs::read_dir(dir.join("fd"))
        .map_err(|e| err(e.to_string()))?
        .count();
    Ok(Usage {
        cpu_ns,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        fds,
    })
}

/// Wall times of `runs` runs of `bin args`, sorted; a failed run is an error.
pub fn time_command(bin: &Path, args: &[&str], runs: usize) -> Result<Vec<Duration>, BenchError> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new(bin)
            .args(args)
            .output()
            .map_err(|e| err(format!("{}: {e}", bin.display())))?;
        times.push(start.elapsed());
        if !out.status.success() {
            return Err(err(format!(
                "{} {}: exit {:?}: {}",
                bin.display(),
                args.join(" "),
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    times.sort();
    Ok(times)
}

/// The median of sorted `times`.
pub fn median(times: &[Duration]) -> Duration {
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The agent's cost with `pods` namespaces of a given size, as one row of the table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CostRow {
    /// Pods' namespaces alive.
    pub namespaces: usize,
    /// `ctune --dry-run --sample 0`: median and slowest wall time, ms.
    pub dry_run_ms: (f64, f64),
    /// `ctune status --sample 0` (every timeout of every namespace): median, ms.
    pub status_ms: f64,
    /// One idle step of the agent's engine (in process): median and p90, ms.
    pub idle_step_ms: (f64, f64),
    /// A step that raises max under pressure (in process), from a fresh state (ctune
    /// started at that moment): median and slowest, ms.
    pub pressure_step_ms: (f64, f64),
    /// The same step of an agent that has been watching the namespaces (its engine took
    /// two idle steps before the flood): median and slowest, ms.
    pub warm_pressure_step_ms: (f64, f64),
    /// `ctune run`, idle: on-CPU ms per second, peak RSS (KiB), open descriptors.
    pub agent_cpu_ms_per_s: f64,
    /// Peak resident of the running agent, KiB.
    pub agent_hwm_kib: u64,
    /// Open descriptors of the running agent.
    pub agent_fds: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times `runs` idle steps of an engine on the live kernel, its state in `dir`.
fn idle_steps(dir: &Path, runs: usize) -> Result<Vec<Duration>, BenchError> {
    let roots = ctune::sense::roots::Roots {
        state: dir.join("state"),
        etc: dir.join("etc"),
        ..Default::default()
    };
    let mut engine = ctune::run::engine::Engine::new(roots, ctune_core::config::Config::default())
        .map_err(|e| err(e.to_string()))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs + 1 {
        let start = Instant::now();
        let report = engine
            .step(ctune::act::state::now())
            .map_err(|e| err(e.to_string()))?;
        times.push(start.elapsed());
        if !report.plan.changes.is_empty() {
            return Err(err(format!(
                "an idle step planned changes: {:?}",
                report.plan.changes
            )));
        }
    }
    // The first step opens the kept descriptors: the agent pays it once.
    times.remove(0);
    times.sort();
    Ok(times)
}

/// The max a pressure run starts from: low enough that a flood of one pod presses it,
/// never below what the host holds ([`GlobalGuard::start_at`] refuses that).
pub const PRESSURE_MAX: u64 = 16384;

/// An engine of the default config whose state lives under `dir`.
fn engine_in(dir: &Path) -> Result<ctune::run::engine::Engine, BenchError> {
    let roots = ctune::sense::roots::Roots {
        state: dir.join("state"),
        etc: dir.join("etc"),
        ..Default::default()
    };
    ctune::run::engine::Engine::new(roots, ctune_core::config::Config::default())
        .map_err(|e| err(e.to_string()))
}

/// `reps` engines that have each taken two idle steps: agents that were watching the
/// namespaces when a flood came.
fn warm_engines(dir: &Path, reps: usize) -> Result<Vec<ctune::run::engine::Engine>, BenchError> {
    (0..reps)
        .map(|rep| {
            let mut engine = engine_in(&dir.join(format!("warm-{rep}")))?;
            for _ in 0..2 {
                let now = ctune::act::state::now();
                engine.step(now).map_err(|e| err(e.to_string()))?;
            }
            Ok(engine)
        })
        .collect()
}

/// Times `reps` steps, each of the engine `engine(rep)` gives, that find the pod
/// flooded to 90 % of [`PRESSURE_MAX`] and raise max; the guard sets max back before
/// each.
fn pressure_steps(
    guard: &GlobalGuard,
    reps: usize,
    mut engine: impl FnMut(usize) -> Result<ctune::run::engine::Engine, BenchError>,
) -> Result<Vec<Duration>, BenchError> {
    let buckets = crate::livebench::read_global(tunables::BUCKETS)?;
    let mut times = Vec::with_capacity(reps);
    for rep in 0..reps {
        guard.start_at(PRESSURE_MAX, buckets)?;
        let mut engine = engine(rep)?;
        let start = Instant::now();
        let report = engine
            .step(ctune::act::state::now())
            .map_err(|e| err(e.to_string()))?;
        times.push(start.elapsed());
        let raised = report
            .plan
            .global_change(tunables::MAX)
            .is_some_and(|c| c.new > PRESSURE_MAX);
        if !raised || !report.complete() {
            return Err(err(format!(
                "the pressure step did not raise max: {:?}",
                report.plan.changes
            )));
        }
    }
    times.sort();
    Ok(times)
}

/// Drops the kernel's unused dentries (`vm.drop_caches = 2`) before a row is measured.
/// Every namespace that ever looked up /proc/sys/net/netfilter leaves a dentry of that
/// name in one hash chain, and deleted namespaces' stay there, unused, until memory
/// pressure reclaims them: after a few thousand pods had come and gone, opening
/// /proc/sys/net/netfilter/KEY took 119 µs on a host with no namespace left, 3.4 µs after
/// this. A row measures the namespaces alive, not the leftovers of earlier runs.
pub fn forget_dead_dentries() -> Result<(), BenchError> {
    let path = "/proc/sys/vm/drop_caches";
    std::fs::write(path, "2\n").map_err(|e| err(format!("cannot write {path}: {e}")))
}

/// One row of the cost table with the pods alive now (`bin`: the ctune binary).
pub fn cost_row(
    bin: &Path,
    pods: &mut Pods,
    guard: &GlobalGuard,
    dir: &Path,
    runs: usize,
) -> Result<CostRow, BenchError> {
    let state = dir.join("state").display().to_string();
    let etc = dir.join("etc").display().to_string();
    let roots = ["--state-dir", &state, "--etc-root", &etc];
    let dry: Vec<&str> = ["--dry-run", "--sample", "0"]
        .iter()
        .chain(&roots)
        .copied()
        .collect();
    let dry_run = time_command(bin, &dry, runs)?;
    let status: Vec<&str> = ["status", "--sample", "0"]
        .iter()
        .chain(&roots)
        .copied()
        .collect();
    let status = time_command(bin, &status, runs.div_ceil(4))?;
    let idle = idle_steps(&dir.join("idle"), runs)?;
    let (cpu, hwm, fds) = agent_idle(bin, &dir.join("agent"), Duration::from_secs(20))?;
    let reps = runs.div_ceil(4);
    let mut warm = warm_engines(dir, reps)?.into_iter();
    let flooded = pods.add(0)?;
    pods.flood(&flooded, (PRESSURE_MAX as usize) * 9 / 10)?;
    let fresh = |rep: usize| engine_in(&dir.join(format!("pressure-{rep}")));
    let pressure = pressure_steps(guard, reps, fresh).and_then(|cold| {
        let next = |_| warm.next().ok_or_else(|| err("no warm engine left"));
        Ok((cold, pressure_steps(guard, reps, next)?))
    });
    // The next row starts from the host's max, not from where the last step raised it.
    guard.put_back()?;
    pods.expire_named(&flooded)?;
    let (pressure, warm) = pressure?;
    let last = |t: &[Duration]| ms(t.last().copied().unwrap_or_default());
    Ok(CostRow {
        namespaces: pods.len(),
        dry_run_ms: (ms(median(&dry_run)), last(&dry_run)),
        status_ms: ms(median(&status)),
        idle_step_ms: (ms(median(&idle)), ms(idle[idle.len() * 9 / 10])),
        pressure_step_ms: (ms(median(&pressure)), last(&pressure)),
        warm_pressure_step_ms: (ms(median(&warm)), last(&warm)),
        agent_cpu_ms_per_s: cpu,
        agent_hwm_kib: hwm,
        agent_fds: fds,
    })
}

/// `ctune run` idle for `window` after a 5 s start: on-CPU ms per second, peak RSS
/// (KiB), open descriptors.
fn agent_idle(bin: &Path, dir: &Path, window: Duration) -> Result<(f64, u64, usize), BenchError> {
    let child = crate::livebench::start_ctune(bin, None, dir)?;
    let pid = child.id();
    let measured = (|| {
        std::thread::sleep(Duration::from_secs(5));
        let before = usage(pid)?;
        std::thread::sleep(window);
        let after = usage(pid)?;
        let cpu = (after.cpu_ns - before.cpu_ns) as f64 / 1e6 / window.as_secs_f64();
        Ok((cpu, after.hwm_kib, after.fds))
    })();
    crate::livebench::stop_agent(Some(child));
    measured
}

/// How the churn soak runs.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// How long pods come and go.
    pub duration: Duration,
    /// Pods created (and, after `lifetime`, deleted) per second.
    pub rate: f64,
    /// How long a pod lives.
    pub lifetime: Duration,
    /// Entries each pod makes.
    pub entries: usize,
    /// Every this often the newest pod is flooded to 90 % of [`PRESSURE_MAX`].
    pub flood_every: Duration,
}

/// What the agent did through the churn.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChurnReport {
    /// Pods created and deleted.
    pub pods: usize,
    /// Floods sent.
    pub floods: usize,
    /// (seconds in, usage, state file bytes), every 5 s and once after the churn.
    pub samples: Vec<(f64, Usage, u64)>,
    /// `ctune status` runs during the churn, and the namespace problems they reported
    /// (a namespace that vanished mid-read must not be one).
    pub status_runs: usize,
    /// Problems `status` reported about namespaces, as printed.
    pub status_problems: Vec<String>,
    /// The agent's log lines that report a namespace it could not read.
    pub log_problems: Vec<String>,
    /// Changes in ctune's history, and those the agent's log does not show exactly once.
    pub changes: usize,
    /// Changes logged other than once.
    pub unlogged: Vec<String>,
    /// The most changes of one key in one namespace (a flapping level changes it often).
    pub most_changes_of_one_key: usize,
}

/// Runs the churn soak against `bin` in `dir` (max starts at [`PRESSURE_MAX`], put back
/// after).
pub fn churn(bin: &Path, dir: &Path, opts: &ChurnOptions) -> Result<ChurnReport, BenchError> {
    let guard = GlobalGuard::save()?;
    guard.start_at(
        PRESSURE_MAX,
        crate::livebench::read_global(tunables::BUCKETS)?,
    )?;
    let mut pods = Pods::new("ctchurn");
    let child = crate::livebench::start_ctune(bin, None, dir)?;
    let pid = child.id();
    let result = churn_with(bin, dir, pid, &mut pods, opts);
    drop(pods);
    // The kernel frees the namespaces in a work queue, and the agent lets go of what it
    // kept of them at its next step (every idle period, 5 s): two periods and a margin.
    std::thread::sleep(Duration::from_secs(12));
    let last = usage(pid);
    crate::livebench::stop_agent(Some(child));
    drop(guard);
    let mut report = result?;
    report.samples.push((
        opts.duration.as_secs_f64() + 12.0,
        last?,
        file_size(&dir.join("state/state.json")),
    ));
    check_log(dir, &mut report)?;
    Ok(report)
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The churn itself: a pod every 1/rate s, each deleted after its lifetime, a flood
/// every `flood_every`, the agent's usage every 5 s and `status` every 10 s.
fn churn_with(
    bin: &Path,
    dir: &Path,
    pid: u32,
    pods: &mut Pods,
    opts: &ChurnOptions,
) -> Result<ChurnReport, BenchError> {
    let mut report = ChurnReport::default();
    let start = Instant::now();
    let tick = Duration::from_secs_f64(1.0 / opts.rate.max(0.1));
    let (mut next_sample, mut next_status, mut next_flood) =
        (start, start, start + opts.flood_every);
    while start.elapsed() < opts.duration {
        let due = start + tick * report.pods as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        pods.add(opts.entries)?;
        report.pods += 1;
        pods.expire(opts.lifetime)?;
        let now = Instant::now();
        if now >= next_flood {
            let name = pods.newest().unwrap_or_default().to_string();
            pods.flood(&name, (PRESSURE_MAX as usize) * 9 / 10)?;
            report.floods += 1;
            next_flood = now + opts.flood_every;
        }
        if now >= next_sample {
            let at = start.elapsed().as_secs_f64();
            report
                .samples
                .push((at, usage(pid)?, file_size(&dir.join("state/state.json"))));
            next_sample = now + Duration::from_secs(5);
        }
        if now >= next_status {
            report.status_problems.extend(status_problems(bin, dir)?);
            report.status_runs += 1;
            next_status = now + Duration::from_secs(10);
        }
    }
    Ok(report)
}

/// What `ctune status --json` says it could not read about namespaces.
fn status_problems(bin: &Path, dir: &Path) -> Result<Vec<String>, BenchError> {
    let state = dir.join("state");
    let out = Command::new(bin)
        .args(["status", "--json", "--sample", "0", "--state-dir"])
        .arg(&state)
        .output()
        .map_err(|e| err(format!("{}: {e}", bin.display())))?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        err(format!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    let problems = json["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["error"].as_str())
        .map(str::to_owned)
        .collect();
    Ok(problems)
}

/// Reads the agent's log and history after the churn: every change in the history is
/// logged once, no namespace is reported unreadable, no key flaps.
fn check_log(dir: &Path, report: &mut ChurnReport) -> Result<(), BenchError> {
    let log = std::fs::read_to_string(dir.join("agent.log")).map_err(|e| err(e.to_string()))?;
    report.log_problems = log
        .lines()
        .filter(|l| {
            l.contains("cannot enter") || l.contains("namespace ") && l.contains("not found")
        })
        .map(str::to_owned)
        .collect();
    let history = std::fs::read_to_string(dir.join("state/history.jsonl")).unwrap_or_default();
    let mut per_key: std::collections::BTreeMap<(Option<u64>, String), usize> = Default::default();
    for line in history.lines() {
        let r: serde_json::Value = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        let key = r["key"].as_str().unwrap_or_default().to_string();
        let (old, new) = (
            r["old"].as_u64().unwrap_or(0),
            r["new"].as_u64().unwrap_or(0),
        );
        report.changes += 1;
        *per_key
            .entry((r["inode"].as_u64(), key.clone()))
            .or_default() += 1;
        let needle = format!("{key} {old} -> {new}:");
        let netns = r["netns"]
            .as_str()
            .map_or("global".to_string(), str::to_owned);
        let logged = log
            .lines()
            .filter(|l| l.contains(&needle) && l.contains(&format!("netns={netns}")))
            .count();
        let same = history.lines().filter(|l| *l == line).count();
        if logged != same {
            report
                .unlogged
                .push(format!("{netns} {needle} logged {logged} time(s)"));
        }
    }
    report.most_changes_of_one_key = per_key.values().copied().max().unwrap_or(0);
    Ok(())
}
