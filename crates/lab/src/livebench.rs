//! The live benchmark: real traffic through real network namespaces, the same traffic
//! under several policies one after another, and what each lost.
//!
//! Everything runs in namespaces the harness creates and deletes; the global
//! `nf_conntrack_max` and hash size are set for each run and put back afterwards (also
//! when a run fails). Needs root. Used by the `ctune-bench` binary and, in a short form,
//! by the test suite.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::scenario_report::{PolicyRun, Sample, crossed, reaction};
use crate::traffic::{Class, Peer, Profile, kube_proxy};
use ctune_core::model::stat::{Drops, split_drops};
use ctune_core::tunables;

const SYSCTL: &str = "/proc/sys/net/netfilter";

/// What went wrong setting up or running a benchmark.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

fn err(msg: impl Into<String>) -> BenchError {
    BenchError(msg.into())
}

fn run_cmd(cmd: &str, args: &[&str], input: Option<&str>) -> Result<(), BenchError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {cmd}: {e}")))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(|e| err(format!("{cmd}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("{cmd}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn read_u64(path: &Path) -> Result<u64, BenchError> {
    ctune::sense::kfile::read_u64(path).map_err(|e| err(e.to_string()))
}

fn write_u64(path: &Path, v: u64) -> Result<(), BenchError> {
    std::fs::write(path, v.to_string()).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Runs `f` on a thread inside the named namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, BenchError> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let fd = File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| err(format!("setns {ns}: {e}")))?;
            Ok(f())
        })
        .join()
        .map_err(|_| err("thread in namespace panicked"))?
    })
}

/// Spawns a long-running thread inside the named namespace.
fn spawn_in(ns: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let path = PathBuf::from("/run/netns").join(ns);
    std::thread::spawn(move || {
        let fd = File::open(&path).expect("open netns");
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The global values a run changes, put back on drop.
pub struct GlobalGuard {
    max: u64,
    buckets: u64,
    /// Held until the values are restored (fields drop after `Drop::drop`).
    _machine: nix::fcntl::Flock<File>,
}

/// The lock file that serializes, across processes, every test and benchmark that
/// changes global conntrack values (the agent's live tests take it too).
pub const MACHINE_LOCK: &str = "/run/ctune-test-globals.lock";

impl GlobalGuard {
    /// Waits for the machine-wide lock, then saves max and buckets.
    pub fn save() -> Result<GlobalGuard, BenchError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(MACHINE_LOCK)
            .map_err(|e| err(format!("{MACHINE_LOCK}: {e}")))?;
        let machine = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| err(format!("flock {MACHINE_LOCK}: {e}")))?;
        Ok(GlobalGuard {
            _machine: machine,
            max: read_u64(&Path::new(SYSCTL).join(tunables::MAX))?,
            buckets: read_u64(&Path::new(SYSCTL).join(tunables::BUCKETS))?,
        })
    }

    /// Sets the starting point of a run; refuses a max below what the host holds.
    pub fn start_at(&self, max: u64, buckets: u64) -> Result<(), BenchError> {
        let host = read_u64(&Path::new(SYSCTL).join(tunables::COUNT))?;
        if max < host.saturating_mul(2) + 1024 {
            return Err(err(format!(
                "refusing max {max}: the host holds {host} entries"
            )));
        }
        write_u64(&Path::new(SYSCTL).join(tunables::MAX), max)?;
        write_u64(&Path::new(SYSCTL).join(tunables::BUCKETS), buckets)
    }
}

impl Drop for GlobalGuard {
    fn drop(&mut self) {
        let _ = write_u64(&Path::new(SYSCTL).join(tunables::MAX), self.max);
        let _ = write_u64(&Path::new(SYSCTL).join(tunables::BUCKETS), self.buckets);
    }
}

/// Where the traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One namespace, traffic on loopback, an nftables `ct state` rule on output.
    Loopback,
    /// client -> router (masquerade, `ct state` forward rules) -> server over veth pairs,
    /// addresses from 198.18.0.0/15; pressure is measured in the router.
    NatRouter,
}

/// The namespaces of one run; deleted on drop (their nftables tables with them).
pub struct Lab {
    /// Where traffic is generated.
    pub client: String,
    /// Where conntrack pressure is measured.
    pub measured: String,
    /// Where the responders run.
    pub server: String,
    /// The address the client sends to.
    pub server_addr: Ipv4Addr,
    names: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

const ROUTER_RULES: &str = "table inet ctune_bench {
  chain forward {
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ct state invalid drop
    iifname \"r0\" oifname \"r1\" ct state new accept
  }
}
table ip ctune_bench_nat {
  chain postrouting {
    type nat hook postrouting priority 100;
    oifname \"r1\" masquerade
  }
}
";

const LOOPBACK_RULES: &str = "table inet ctune_bench {
  chain out {
    type filter hook output priority 0;
    ct state new counter accept
  }
}
";

impl Lab {
    /// Builds the topology with namespaces named `<prefix>-...`.
    pub fn build(topology: Topology, prefix: &str) -> Result<Lab, BenchError> {
        let ip = |args: &[&str]| run_cmd("ip", args, None);
        match topology {
            Topology::Loopback => {
                let ns = format!("{prefix}-lo");
                ip(&["netns", "add", &ns])?;
                let lab = Lab {
                    client: ns.clone(),
                    measured: ns.clone(),
                    server: ns.clone(),
                    server_addr: Ipv4Addr::LOCALHOST,
                    names: vec![ns.clone()],
                };
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                run_cmd(
                    "ip",
                    &["netns", "exec", &ns, "nft", "-f", "-"],
                    Some(LOOPBACK_RULES),
                )?;
                Ok(lab)
            }
            Topology::NatRouter => {
                let (c, r, s) = (
                    format!("{prefix}-c"),
                    format!("{prefix}-r"),
                    format!("{prefix}-s"),
                );
                let mut lab = Lab {
                    client: c.clone(),
                    measured: r.clone(),
                    server: s.clone(),
                    server_addr: Ipv4Addr::new(198, 19, 0, 2),
                    names: Vec::new(),
                };
                for n in [&c, &r, &s] {
                    ip(&["netns", "add", n])?;
                    lab.names.push(n.clone());
                    ip(&["-n", n, "link", "set", "lo", "up"])?;
                }
                ip(&[
                    "link", "add", "c0", "netns", &c, "type", "veth", "peer", "name", "r0",
                    "netns", &r,
                ])?;
                ip(&[
                    "link", "add", "r1", "netns", &r, "type", "veth", "peer", "name", "s0",
                    "netns", &s,
                ])?;
                for (n, dev, addr) in [
                    (&c, "c0", "198.18.0.2/24"),
                    (&r, "r0", "198.18.0.1/24"),
                    (&r, "r1", "198.19.0.1/24"),
                    (&s, "s0", "198.19.0.2/24"),
                ] {
                    ip(&["-n", n, "addr", "add", addr, "dev", dev])?;
                    ip(&["-n", n, "link", "set", dev, "up"])?;
                }
                ip(&["-n", &c, "route", "add", "default", "via", "198.18.0.1"])?;
                in_netns(&r, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
                    .map_err(|e| err(format!("ip_forward: {e}")))?;
                run_cmd(
                    "ip",
                    &["netns", "exec", &r, "nft", "-f", "-"],
                    Some(ROUTER_RULES),
                )?;
                Ok(lab)
            }
        }
    }
}

/// One traffic class and its rate profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// What kind of flow.
    pub class: Class,
    /// How many per second over time.
    pub profile: Profile,
}

/// A named traffic scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name for the report.
    pub name: String,
    /// Where the traffic flows.
    pub topology: Topology,
    /// Seconds of traffic.
    pub duration: f64,
    /// Seconds after the traffic, before the end of the run (pressure ends, timeouts
    /// should come back).
    pub calm: f64,
    /// Flush the measured namespace's table when the traffic ends, as if the flows had
    /// expired (keeps short runs short; entries otherwise keep their timeouts).
    pub flush_after: bool,
    /// The traffic.
    pub loads: Vec<Load>,
}

/// What a run starts from and which policy acts.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// Nothing changes.
    Static,
    /// kube-proxy's settings applied once at the start ([`kube_proxy`]).
    KubeProxy,
    /// `ctune run` with a config file (None: the defaults).
    Ctune {
        /// The binary.
        bin: PathBuf,
        /// Config overrides, as YAML text.
        config: Option<String>,
    },
}

impl Policy {
    /// Which peer this is.
    pub fn peer(&self) -> Peer {
        match self {
            Policy::Static => Peer::Static,
            Policy::KubeProxy => Peer::KubeProxy,
            Policy::Ctune { .. } => Peer::Ctune,
        }
    }

    /// The name in reports.
    pub fn name(&self) -> &'static str {
        self.peer().name()
    }
}

/// The starting point every policy gets: a small router's static table.
pub const START_MAX: u64 = 16384;

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    failed: AtomicU64,
}

/// Starts the responders in the server namespace; they stop when `stop` is set.
fn start_servers(lab: &Lab, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
    let addr = lab.server_addr;
    let mut threads = Vec::new();
    let s = stop.clone();
    threads.push(spawn_in(&lab.server, move || {
        let sock = UdpSocket::bind(SocketAddrV4::new(addr, 9000)).expect("udp echo bind");
        sock.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let mut buf = [0u8; 64];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    }));
    for port in [9001u16, 9002] {
        let s = stop.clone();
        threads.push(spawn_in(&lab.server, move || {
            let l = TcpListener::bind(SocketAddrV4::new(addr, port)).expect("tcp bind");
            l.set_nonblocking(true).ok();
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) if port == 9002 => held.push(c),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
    }
    threads
}

/// Runs one class's flows at its profile's pace for `duration` seconds.
fn generate(load: Load, addr: Ipv4Addr, duration: f64, counters: &Counters, stop: &AtomicBool) {
    let started = Instant::now();
    let mut sent = 0u64;
    let socks: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("0.0.0.0:0").expect("bind"))
        .collect();
    let mut idle = Vec::new();
    loop {
        let t = started.elapsed().as_secs_f64();
        if t >= duration || stop.load(Ordering::Relaxed) {
            break;
        }
        let due = load.profile.flows_by(t) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // Catch up in small batches so the pace holds at high rates.
        for _ in 0..(due - sent).min(256) {
            let ok = match load.class {
                Class::UdpUnreplied => {
                    let sock = &socks[(sent / 40_000) as usize % socks.len()];
                    let port = 20_000 + (sent % 40_000) as u16;
                    sock.send_to(&[0], SocketAddrV4::new(addr, port)).is_ok()
                }
                // The live benchmark makes the lookup, not the race between its two
                // packets (crates/agent/tests/live_clash.rs makes that).
                Class::UdpRequestResponse | Class::DnsRace => UdpSocket::bind("0.0.0.0:0")
                    .and_then(|s| {
                        s.set_read_timeout(Some(Duration::from_millis(200)))?;
                        s.send_to(&[1], SocketAddrV4::new(addr, 9000))?;
                        let mut b = [0u8; 8];
                        s.recv(&mut b).map(|_| ())
                    })
                    .is_ok(),
                Class::TcpShort => TcpStream::connect_timeout(
                    &SocketAddrV4::new(addr, 9001).into(),
                    Duration::from_millis(500),
                )
                .map(|mut c| {
                    let _ = c.write_all(b"x");
                    let _ = c.read(&mut [0u8; 1]);
                })
                .is_ok(),
                Class::TcpIdle => {
                    match TcpStream::connect_timeout(
                        &SocketAddrV4::new(addr, 9002).into(),
                        Duration::from_millis(500),
                    ) {
                        Ok(c) => {
                            idle.push(c);
                            true
                        }
                        Err(_) => false,
                    }
                }
            };
            sent += 1;
            counters.attempts.fetch_add(1, Ordering::Relaxed);
            if !ok {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(idle);
}

/// Reads one sysctl of a namespace through a descriptor opened inside it.
struct NsValue(File);

impl NsValue {
    fn open(ns: &str, key: &str) -> Result<NsValue, BenchError> {
        let key = key.to_string();
        in_netns(ns, move || File::open(Path::new(SYSCTL).join(&key)))?
            .map(NsValue)
            .map_err(|e| err(format!("{ns}: {e}")))
    }

    fn get(&self) -> u64 {
        let mut buf = [0u8; 32];
        let n = self.0.read_at(&mut buf, 0).unwrap_or(0);
        std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn stat(ns: &str) -> Result<ctune_core::model::ConntrackStat, BenchError> {
    let text = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")
    })?
    .map_err(|e| err(e.to_string()))?;
    ctune_core::model::stat::parse(&text).map_err(err)
}

/// The measured namespace's losses since `before`: its drops split into table-full and
/// clash ones, and its evictions (`early_drop`): what the run's `kernel_drops`,
/// `clash_drops` and `early_drops` count.
fn losses_since(
    ns: &str,
    before: &ctune_core::model::ConntrackStat,
) -> Result<(Drops, u64), BenchError> {
    let now = stat(ns)?;
    let rise = |name: &str| {
        now.get(name)
            .unwrap_or(0)
            .saturating_sub(before.get(name).unwrap_or(0))
    };
    let drops = split_drops(
        rise("drop"),
        Some(rise("insert_failed")),
        Some(rise("chainlength")),
    );
    Ok((drops, rise("early_drop")))
}

const WATCHED_TIMEOUTS: [&str; 3] = [
    "nf_conntrack_udp_timeout",
    "nf_conntrack_generic_timeout",
    tunables::ESTABLISHED,
];

/// Runs `scenario` under `policy` from the standard start and reports what happened.
pub fn run(
    scenario: &Scenario,
    policy: &Policy,
    work: &Path,
    cpus: u64,
) -> Result<PolicyRun, BenchError> {
    let guard = GlobalGuard::save()?;
    guard.start_at(START_MAX, START_MAX)?;
    let prefix = format!("ctb{}", std::process::id());
    let lab = Lab::build(scenario.topology, &prefix)?;
    let count = NsValue::open(&lab.measured, tunables::COUNT)?;
    let timeouts: Vec<NsValue> = WATCHED_TIMEOUTS
        .iter()
        .map(|k| NsValue::open(&lab.measured, k))
        .collect::<Result<_, _>>()?;
    let start_timeouts: Vec<u64> = timeouts.iter().map(NsValue::get).collect();
    let max_file = Path::new(SYSCTL).join(tunables::MAX);
    let buckets_file = Path::new(SYSCTL).join(tunables::BUCKETS);

    let mut agent: Option<Child> = None;
    match policy {
        Policy::Static => {}
        Policy::KubeProxy => {
            let max = kube_proxy::max(cpus);
            write_u64(&max_file, max)?;
            write_u64(&buckets_file, kube_proxy::buckets(max))?;
            let ns = lab.measured.clone();
            in_netns(&ns, || -> std::io::Result<()> {
                for (key, secs) in kube_proxy::TIMEOUTS {
                    std::fs::write(Path::new(SYSCTL).join(key), secs.to_string())?;
                }
                Ok(())
            })?
            .map_err(|e| err(format!("kube-proxy timeouts: {e}")))?;
        }
        Policy::Ctune { bin, config } => {
            let dir = work.join(format!("{}-{}", scenario.name, policy.name()));
            // A state left by an earlier run would make ctune see today's start values
            // as an operator's change of what it set then.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| err(e.to_string()))?;
            let cfg = dir.join("ctune.yaml");
            std::fs::write(&cfg, config.as_deref().unwrap_or(""))
                .map_err(|e| err(e.to_string()))?;
            let log = File::create(dir.join("agent.log")).map_err(|e| err(e.to_string()))?;
            // At the priority ctune's unit gives it: a machine busy with other work must
            // not starve the agent more than it would in production.
            let child = Command::new("nice")
                .arg("-n")
                .arg(unit_nice().to_string())
                .arg(bin)
                .arg("run")
                .arg("--config")
                .arg(&cfg)
                .arg("--etc-root")
                .arg(dir.join("etc"))
                .arg("--state-dir")
                .arg(dir.join("state"))
                .env("CTUNE_LOG", "info")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("JOURNAL_STREAM")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| err(format!("cannot start nice {}: {e}", bin.display())))?;
            agent = Some(child);
            let state = dir.join("state/state.json");
            let end = Instant::now() + Duration::from_secs(10);
            while !state.exists() {
                if Instant::now() > end {
                    return Err(err("ctune run did not take its first step within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    let before = stat(&lab.measured)?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = start_servers(&lab, &stop);
    std::thread::sleep(Duration::from_millis(100));
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut gens: Option<Vec<JoinHandle<()>>> = Some(
        scenario
            .loads
            .iter()
            .map(|&load| {
                let (c, s, addr, d) = (
                    counters.clone(),
                    stop.clone(),
                    lab.server_addr,
                    scenario.duration,
                );
                spawn_in(&lab.client, move || generate(load, addr, d, &c, &s))
            })
            .collect(),
    );

    let mut samples = Vec::new();
    let mut lowered = false;
    let total = scenario.duration + scenario.calm;
    let mut flushed = false;
    loop {
        let t = started.elapsed().as_secs_f64();
        let max = read_u64(&max_file)?;
        let entries = count.get();
        let (drops, early_drops) = losses_since(&lab.measured, &before)?;
        let lowered_now = timeouts
            .iter()
            .zip(&start_timeouts)
            .any(|(v, s)| v.get() < *s);
        // ctune's ceiling and level are in its plan, which the benchmark does not read.
        samples.push(Sample {
            kernel_drops: Some(drops.table_full),
            early_drops: Some(early_drops),
            timeouts_lowered: Some(lowered_now),
            ..Sample::new(t, entries, max)
        });
        lowered |= lowered_now;
        if t >= scenario.duration && !flushed {
            // The generators end on their own at the duration.
            for g in gens.take().into_iter().flatten() {
                let _ = g.join();
            }
            if scenario.flush_after {
                run_cmd(
                    "ip",
                    &["netns", "exec", &lab.measured, "conntrack", "-F"],
                    None,
                )?;
            }
            flushed = true;
        }
        if t >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for g in gens.into_iter().flatten().chain(servers) {
        let _ = g.join();
    }
    if let Some(mut child) = agent {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    let final_max = read_u64(&max_file)?;
    let final_buckets = read_u64(&buckets_file)?;
    let peak = samples.iter().map(|s| s.count).max().unwrap_or(0);
    let start_max = samples.first().map_or(START_MAX, |s| s.max);
    let grew = samples.iter().any(|s| s.max > start_max);
    let restored = timeouts
        .iter()
        .zip(&start_timeouts)
        .all(|(v, s)| v.get() >= *s);
    let (drops, early_drops) = losses_since(&lab.measured, &before)?;
    let (reaction_ms, reaction_note) = reaction(&samples, 0.75, grew);
    let run = PolicyRun {
        policy: policy.name().into(),
        kernel_drops: drops.table_full,
        clash_drops: drops.clash,
        failed_attempts: counters.failed.load(Ordering::Relaxed),
        attempts: counters.attempts.load(Ordering::Relaxed),
        early_drops,
        peak_count: peak,
        final_max,
        final_buckets,
        memory_bytes: ctune_core::ceiling::memory_now(peak, final_buckets, entry_bytes(), 128),
        grew,
        crossed: crossed(&samples, 0.75),
        reaction_ms,
        reaction_note,
        timeouts_lowered: lowered,
        timeouts_restored: lowered && restored,
        samples,
    };
    drop(lab);
    drop(guard);
    Ok(run)
}

fn entry_bytes() -> u64 {
    ctune::sense::kfile::read_u64(Path::new("/sys/kernel/slab/nf_conntrack/slab_size"))
        .unwrap_or(ctune_core::model::slab::FALLBACK_ENTRY_BYTES)
}

/// The benchmark's scenarios: the full form (minutes) or the short one the test suite
/// runs (seconds).
pub fn scenarios(short: bool, topology: Topology) -> Vec<Scenario> {
    let udp = |profile| Load {
        class: Class::UdpUnreplied,
        profile,
    };
    let (d, calm) = if short { (3.0, 1.5) } else { (30.0, 10.0) };
    vec![
        Scenario {
            name: "ramp".into(),
            topology,
            duration: d,
            calm,
            flush_after: true,
            loads: vec![
                udp(Profile::Ramp {
                    from: 0.0,
                    to: if short { 40_000.0 } else { 20_000.0 },
                    start: 0.0,
                    end: d,
                }),
                Load {
                    class: Class::UdpRequestResponse,
                    profile: Profile::Constant { rate: 200.0 },
                },
                Load {
                    class: Class::TcpShort,
                    profile: Profile::Constant { rate: 200.0 },
                },
            ],
        },
        Scenario {
            name: "step".into(),
            topology,
            duration: d,
            calm,
            flush_after: true,
            loads: vec![udp(Profile::Step {
                before: 500.0,
                at: d / 6.0,
                after: if short { 25_000.0 } else { 15_000.0 },
            })],
        },
        Scenario {
            name: "flood".into(),
            topology,
            duration: d,
            calm: if short { 5.0 } else { 90.0 },
            flush_after: short,
            loads: vec![udp(Profile::Constant {
                rate: if short { 80_000.0 } else { 200_000.0 },
            })],
        },
    ]
}

/// The short form keeps ctune's ceiling small (a 64 MiB budget: about 174k entries, above
/// kube-proxy's 131072) so that its flood exceeds the ceiling within seconds, and holds
/// pressure levels 1 s so the restore fits the calm period; the rest is the default.
pub const SHORT_CTUNE_CONFIG: &str = "ceiling:\n  memory_cap: 64MiB\npressure:\n  hold: 1s\n";

/// The full flood holds pressure levels 20 s instead of 2 min so the restore fits the
/// 90 s calm period; the rest is the default config.
pub const FULL_FLOOD_CONFIG: &str = "pressure:\n  hold: 20s\n";

/// The ctune config overrides for a scenario (None: the defaults).
pub fn ctune_config(short: bool, scenario: &str) -> Option<String> {
    if short {
        Some(SHORT_CTUNE_CONFIG.to_string())
    } else if scenario == "flood" {
        Some(FULL_FLOOD_CONFIG.to_string())
    } else {
        None
    }
}

/// The `Nice=` of ctune's systemd unit (0 when it sets none): one home for the agent's
/// priority, shared by production and the benchmark.
pub fn unit_nice() -> i32 {
    include_str!("../../../systemd/ctune.service")
        .lines()
        .find_map(|l| l.strip_prefix("Nice="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod unit_tests {
    #[test]
    fn the_unit_gives_the_agent_a_raised_priority() {
        assert_eq!(super::unit_nice(), -10);
    }
}
