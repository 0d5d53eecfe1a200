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

use crate::peers::{Aging, PeerRule, Setting, View};
use crate::scenario_report::{PolicyRun, Sample, crossed, reaction};
use crate::traffic::{Class, Peer, Profile, Sessions};
use ctune_core::model::stat::{Drops, split_drops};
use ctune_core::tunables;

const SYSCTL: &str = "/proc/sys/net/netfilter";

/// What went wrong setting up or running a benchmark.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

pub(crate) fn err(msg: impl Into<String>) -> BenchError {
    BenchError(msg.into())
}

pub(crate) fn run_cmd(cmd: &str, args: &[&str], input: Option<&str>) -> Result<(), BenchError> {
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

/// A global conntrack value (`nf_conntrack_max`, `nf_conntrack_buckets`).
pub(crate) fn read_global(key: &str) -> Result<u64, BenchError> {
    read_u64(&Path::new(SYSCTL).join(key))
}

fn read_u64(path: &Path) -> Result<u64, BenchError> {
    ctune::sense::kfile::read_u64(path).map_err(|e| err(e.to_string()))
}

fn write_u64(path: &Path, v: u64) -> Result<(), BenchError> {
    std::fs::write(path, v.to_string()).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// The ctune binary a bench runs: `explicit`, else the one beside the bench's own binary
/// (`cargo build --release` puts them together), else `ctune` on the PATH.
pub fn ctune_binary(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("ctune")))
            .unwrap_or_else(|| PathBuf::from("ctune"))
    })
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

impl GlobalGuard {
    /// Puts the saved values back now (the lock stays held).
    pub fn put_back(&self) -> Result<(), BenchError> {
        write_u64(&Path::new(SYSCTL).join(tunables::MAX), self.max)?;
        write_u64(&Path::new(SYSCTL).join(tunables::BUCKETS), self.buckets)
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
                // A hardened router does not pick up connections mid-stream: a packet of
                // a session whose entry expired is invalid, and dropped by the rules.
                // (With the default, 1, a client's packet would re-create the entry.)
                in_netns(&r, || {
                    std::fs::write(Path::new(SYSCTL).join("nf_conntrack_tcp_loose"), "0")
                })?
                .map_err(|e| err(format!("nf_conntrack_tcp_loose: {e}")))?;
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
    /// Long-lived TCP sessions from the client through the router, held for the run.
    pub sessions: Vec<Sessions>,
}

/// What a run starts from and which policy acts.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// A peer's rule ([`crate::peers`]), driven by the benchmark; not `ctune`.
    Peer(Peer),
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
            Policy::Peer(p) => *p,
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
    let s = stop.clone();
    threads.push(spawn_in(&lab.server, move || echo_sessions(addr, &s)));
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

/// The sessions' server (port 9003): accepts and echoes every byte on every connection,
/// all on one thread with non-blocking sockets.
fn echo_sessions(addr: Ipv4Addr, stop: &AtomicBool) {
    let l = TcpListener::bind(SocketAddrV4::new(addr, SESSION_PORT)).expect("session bind");
    l.set_nonblocking(true).ok();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        while let Ok((c, _)) = l.accept() {
            if c.set_nonblocking(true).is_ok() {
                conns.push(c);
            }
        }
        conns.retain_mut(|c| match c.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => c.write_all(&buf[..n]).is_ok(),
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The port the sessions' echo server listens on.
const SESSION_PORT: u16 = 9003;

/// How long a session waits for the echo of its packet before it counts as broken:
/// through two veth pairs an answer takes well under a millisecond, and a dropped
/// packet's first retransmission comes after 200 ms to 1 s.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// What a group of sessions came to.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionOutcome {
    /// Sessions opened.
    pub held: u64,
    /// Sessions whose packet after a gap got no echo, or a reset.
    pub broken: u64,
}

/// One held session: its socket, when it sends next, when its echo is due, whether it is
/// broken.
struct Held {
    sock: TcpStream,
    next_send: Instant,
    waiting: Option<Instant>,
    broken: bool,
}

impl Held {
    /// Opens a session; its first packet is due a gap later. A connect the table refuses
    /// is retried by TCP within the half second it is given.
    fn open(addr: Ipv4Addr, gap: Duration) -> Option<Held> {
        let sock = TcpStream::connect_timeout(
            &SocketAddrV4::new(addr, SESSION_PORT).into(),
            Duration::from_millis(500),
        )
        .ok()?;
        sock.set_nonblocking(true).ok()?;
        Some(Held {
            sock,
            next_send: Instant::now() + gap,
            waiting: None,
            broken: false,
        })
    }

    /// Sends the session's packet when its gap is over.
    fn send_when_due(&mut self, gap: Duration) {
        if self.broken || self.waiting.is_some() || Instant::now() < self.next_send {
            return;
        }
        self.broken = self.sock.write_all(&[1]).is_err();
        self.waiting = Some(Instant::now() + REPLY_WAIT);
        self.next_send += gap;
    }

    /// Takes in the echo, or gives up on it.
    fn poll(&mut self) {
        let Some(deadline) = self.waiting.filter(|_| !self.broken) else {
            return;
        };
        match self.sock.read(&mut [0u8; 8]) {
            Ok(n) if n > 0 => self.waiting = None,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.broken = Instant::now() > deadline;
            }
            _ => self.broken = true,
        }
    }
}

/// Holds `spec`'s sessions to `addr` for `duration` seconds, as the simulator's
/// sessions are ([`Sessions`]): session j of n opens j / n of a gap after the start and
/// sends one byte a gap after it opened and every gap after; it is broken when a byte
/// gets no echo within [`REPLY_WAIT`] or the connection fails. A session that cannot
/// open is not held (its connect is a lost flow in the kernel's counters). Every loop
/// ends at the duration (the last packets' echoes get their wait).
fn hold_sessions(
    spec: Sessions,
    addr: Ipv4Addr,
    duration: f64,
    stop: &AtomicBool,
) -> SessionOutcome {
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(duration);
    let gap = Duration::from_secs_f64(spec.gap);
    let n = spec.count.max(1) as usize;
    let mut sessions: Vec<Held> = Vec::with_capacity(n);
    let mut tried = 0usize;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        while tried < n
            && Instant::now() < end
            && started.elapsed().as_secs_f64() >= spec.start + tried as f64 / n as f64 * spec.gap
        {
            sessions.extend(Held::open(addr, gap));
            tried += 1;
        }
        for h in &mut sessions {
            h.send_when_due(gap);
            h.poll();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The packets sent last still get their answer, or their wait runs out.
    let settle = Instant::now() + REPLY_WAIT + Duration::from_millis(100);
    while Instant::now() < settle && sessions.iter().any(|h| h.waiting.is_some() && !h.broken) {
        sessions.iter_mut().for_each(Held::poll);
        std::thread::sleep(Duration::from_millis(5));
    }
    SessionOutcome {
        held: sessions.len() as u64,
        broken: sessions.iter().filter(|h| h.broken).count() as u64,
    }
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
                // Sessions are held by `hold_sessions`; as a rate they are idle TCP.
                Class::TcpIdle | Class::TcpSession | Class::UdpSession => {
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

/// The most the benchmark lets a peer set: max 16M and 4M buckets (32 MiB of hash), far
/// above anything its traffic fills, so a rule that doubles without bound (Calico's)
/// cannot take the machine's memory with it.
const BENCH_MAX_LIMIT: u64 = 1 << 24;
const BENCH_BUCKETS_LIMIT: u64 = 1 << 22;

/// A peer's rule on the live kernel: its settings as sysctl writes, each bounded.
struct LivePeer {
    rule: PeerRule,
    next: Instant,
    ns: String,
    /// The measured namespace's timeout keys and their values at the start: what an
    /// aging scales.
    timeouts: Vec<(String, u64)>,
    /// MemTotal and the online CPUs, read once: they do not change during a run.
    host: (u64, u64),
}

impl LivePeer {
    fn start(peer: Peer, ns: &str) -> Result<LivePeer, BenchError> {
        let timeouts = in_netns(ns, || -> std::io::Result<Vec<(String, u64)>> {
            let mut out = Vec::new();
            for e in std::fs::read_dir(SYSCTL)? {
                let name = e?.file_name().to_string_lossy().into_owned();
                if name.contains("timeout") {
                    let v = std::fs::read_to_string(Path::new(SYSCTL).join(&name))?;
                    if let Ok(v) = v.trim().parse() {
                        out.push((name, v));
                    }
                }
            }
            Ok(out)
        })?
        .map_err(|e| err(format!("{ns}: timeouts: {e}")))?;
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| err(format!("/proc/meminfo: {e}")))
            .and_then(|t| {
                ctune_core::model::meminfo::parse(&t)
                    .map_err(|e| err(format!("/proc/meminfo: {e}")))
            })?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let mut p = LivePeer {
            rule: PeerRule::new(peer),
            next: Instant::now(),
            ns: ns.to_string(),
            timeouts,
            host: (meminfo.total_bytes, cpus),
        };
        let settings = p.rule.start(&p.view()?);
        p.apply(&settings)?;
        p.schedule();
        Ok(p)
    }

    fn schedule(&mut self) {
        self.next = match self.rule.interval() {
            Some(secs) => Instant::now() + Duration::from_secs_f64(secs),
            None => Instant::now() + Duration::from_secs(86_400 * 365),
        };
    }

    fn view(&self) -> Result<View, BenchError> {
        let count = in_netns(&self.ns, || {
            read_u64(&Path::new(SYSCTL).join(tunables::COUNT))
        })??;
        Ok(View {
            count,
            max: read_u64(&Path::new(SYSCTL).join(tunables::MAX))?,
            buckets: read_u64(&Path::new(SYSCTL).join(tunables::BUCKETS))?,
            memory_bytes: self.host.0,
            cpus: self.host.1,
        })
    }

    /// Looks again when the rule is due.
    fn tick(&mut self) -> Result<(), BenchError> {
        if Instant::now() < self.next {
            return Ok(());
        }
        let settings = self.rule.look(&self.view()?);
        self.apply(&settings)?;
        self.schedule();
        Ok(())
    }

    /// Writes the settings. Linux applies a timeout at each entry's next packet, so an
    /// aging here reaches an entry when it next sees traffic, not at once as on the
    /// firewalls whose rule it is (the simulator models theirs).
    fn apply(&self, settings: &[Setting]) -> Result<(), BenchError> {
        let global = |key: &str, v: u64| write_u64(&Path::new(SYSCTL).join(key), v);
        for s in settings {
            match *s {
                Setting::Max(v) => {
                    let host = read_u64(&Path::new(SYSCTL).join(tunables::COUNT))?;
                    // Never below what the host holds, whatever the bound says.
                    let floor = host.saturating_mul(2).saturating_add(1024);
                    global(tunables::MAX, v.min(BENCH_MAX_LIMIT).max(floor))?;
                }
                Setting::Buckets(v) => {
                    global(tunables::BUCKETS, v.clamp(1024, BENCH_BUCKETS_LIMIT))?
                }
                Setting::Timeout { key, secs } => {
                    self.write_timeouts(&[(key.to_string(), secs)])?
                }
                Setting::Aging(a) => self.write_timeouts(&self.aged(a))?,
            }
        }
        Ok(())
    }

    /// Every timeout key at `aging` of its start value.
    fn aged(&self, aging: Aging) -> Vec<(String, u64)> {
        self.timeouts
            .iter()
            .map(|(k, v)| (k.clone(), aging.apply(*v)))
            .collect()
    }

    fn write_timeouts(&self, values: &[(String, u64)]) -> Result<(), BenchError> {
        let values = values.to_vec();
        in_netns(&self.ns, move || -> std::io::Result<()> {
            for (key, secs) in values {
                std::fs::write(
                    Path::new(SYSCTL).join(&key),
                    secs.clamp(1, 86_400 * 30).to_string(),
                )?;
            }
            Ok(())
        })?
        .map_err(|e| err(format!("{}: timeouts: {e}", self.ns)))
    }
}

/// Starts `ctune run` for a scenario and waits for its first step.
pub(crate) fn start_ctune(
    bin: &Path,
    config: Option<&str>,
    dir: &Path,
) -> Result<Child, BenchError> {
    // A state left by an earlier run would make ctune see today's start values as an
    // operator's change of what it set then.
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let cfg = dir.join("ctune.yaml");
    std::fs::write(&cfg, config.unwrap_or("")).map_err(|e| err(e.to_string()))?;
    let log = File::create(dir.join("agent.log")).map_err(|e| err(e.to_string()))?;
    // At the priority ctune's unit gives it: a machine busy with other work must not
    // starve the agent more than it would in production.
    let mut child = Command::new("nice")
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
    let state = dir.join("state/state.json");
    let end = Instant::now() + Duration::from_secs(10);
    while !state.exists() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err("ctune run did not take its first step within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Stops an agent the way systemd does.
pub(crate) fn stop_agent(child: Option<Child>) {
    if let Some(mut child) = child {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
}

/// The traffic of a run: the generators and the sessions, in the client namespace.
struct Traffic {
    gens: Vec<JoinHandle<()>>,
    sessions: Vec<JoinHandle<SessionOutcome>>,
}

impl Traffic {
    fn start(
        scenario: &Scenario,
        lab: &Lab,
        counters: &Arc<Counters>,
        stop: &Arc<AtomicBool>,
    ) -> Traffic {
        let (addr, d) = (lab.server_addr, scenario.duration);
        let sessions = scenario
            .sessions
            .iter()
            .map(|&spec| {
                let s = stop.clone();
                let path = PathBuf::from("/run/netns").join(&lab.client);
                std::thread::spawn(move || {
                    let fd = File::open(&path).expect("open netns");
                    setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
                    hold_sessions(spec, addr, d, &s)
                })
            })
            .collect();
        let gens = scenario
            .loads
            .iter()
            .map(|&load| {
                let (c, s) = (counters.clone(), stop.clone());
                spawn_in(&lab.client, move || generate(load, addr, d, &c, &s))
            })
            .collect();
        Traffic { gens, sessions }
    }

    /// Waits for the generators (they end on their own at the duration).
    fn join_generators(&mut self) -> Result<(), BenchError> {
        // Every generator is joined, whichever failed.
        let joined: Vec<bool> = self.gens.drain(..).map(|g| g.join().is_ok()).collect();
        let all = joined.iter().all(|ok| *ok);
        all.then_some(())
            .ok_or_else(|| err("a traffic generator thread panicked (its namespace, or a socket)"))
    }

    /// Waits for everything; what the sessions came to. A thread that panicked is an
    /// error, not a run that held nothing and broke nothing.
    fn finish(mut self) -> Result<SessionOutcome, BenchError> {
        let generators = self.join_generators();
        let mut total = SessionOutcome::default();
        for h in self.sessions {
            let o = h.join().map_err(|_| {
                err("a session holder thread panicked (its namespace, or a socket)")
            })?;
            total.held += o.held;
            total.broken += o.broken;
        }
        generators.map(|()| total)
    }
}

/// Runs `scenario` under `policy` from the standard start and reports what happened.
pub fn run(scenario: &Scenario, policy: &Policy, work: &Path) -> Result<PolicyRun, BenchError> {
    let guard = GlobalGuard::save()?;
    guard.start_at(START_MAX, START_MAX)?;
    let prefix = format!("ctb{}", std::process::id());
    let lab = Lab::build(scenario.topology, &prefix)?;
    let watch = Watch::open(&lab.measured)?;
    let mut peer = None;
    let mut agent = None;
    match policy {
        Policy::Peer(p) => peer = Some(LivePeer::start(*p, &lab.measured)?),
        Policy::Ctune { bin, config } => {
            let dir = work.join(format!("{}-{}", scenario.name, policy.name()));
            agent = Some(start_ctune(bin, config.as_deref(), &dir)?);
        }
    }
    let result = drive(scenario, &lab, &watch, peer.as_mut());
    stop_agent(agent);
    let (samples, sessions) = result?;
    let run = watch.summary(policy, samples, sessions)?;
    drop(lab);
    drop(guard);
    Ok(run)
}

/// The traffic, the peer's looks and the timeline of one run.
fn drive(
    scenario: &Scenario,
    lab: &Lab,
    watch: &Watch,
    mut peer: Option<&mut LivePeer>,
) -> Result<(Vec<Sample>, SessionOutcome), BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    let servers = start_servers(lab, &stop);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut traffic = Traffic::start(scenario, lab, &watch.counters, &stop);
    let mut samples = Vec::new();
    let total = scenario.duration + scenario.calm;
    let mut flushed = false;
    let outcome = loop {
        let t = started.elapsed().as_secs_f64();
        // Any failure stops the traffic and joins every thread below before it returns.
        let step = (|| -> Result<(), BenchError> {
            if let Some(p) = peer.as_deref_mut() {
                p.tick()?;
            }
            samples.push(watch.sample(t)?);
            if t >= scenario.duration && !flushed {
                traffic.join_generators()?;
                flushed = true;
                if scenario.flush_after {
                    let ns = lab.measured.as_str();
                    run_cmd("ip", &["netns", "exec", ns, "conntrack", "-F"], None)?;
                }
            }
            Ok(())
        })();
        if step.is_err() || t >= total {
            break step;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    let sessions = traffic.finish();
    let servers_ok = servers.into_iter().all(|g| g.join().is_ok());
    let (sessions, ()) = (sessions?, outcome?);
    if !servers_ok {
        return Err(err("a responder thread in the server namespace panicked"));
    }
    Ok((samples, sessions))
}

/// What the benchmark reads of the measured namespace while a run goes on.
struct Watch {
    ns: String,
    count: NsValue,
    timeouts: Vec<NsValue>,
    start_timeouts: Vec<u64>,
    before: ctune_core::model::ConntrackStat,
    /// The generators' flow attempts and failures.
    counters: Arc<Counters>,
}

impl Watch {
    fn open(ns: &str) -> Result<Watch, BenchError> {
        let timeouts: Vec<NsValue> = WATCHED_TIMEOUTS
            .iter()
            .map(|k| NsValue::open(ns, k))
            .collect::<Result<_, _>>()?;
        Ok(Watch {
            ns: ns.to_string(),
            count: NsValue::open(ns, tunables::COUNT)?,
            start_timeouts: timeouts.iter().map(NsValue::get).collect(),
            timeouts,
            before: stat(ns)?,
            counters: Arc::default(),
        })
    }

    fn lowered_now(&self) -> bool {
        self.timeouts
            .iter()
            .zip(&self.start_timeouts)
            .any(|(v, s)| v.get() < *s)
    }

    /// One point of the timeline. ctune's ceiling and level are in its plan, which the
    /// benchmark does not read.
    fn sample(&self, t: f64) -> Result<Sample, BenchError> {
        let (drops, early_drops) = losses_since(&self.ns, &self.before)?;
        Ok(Sample {
            kernel_drops: Some(drops.table_full),
            early_drops: Some(early_drops),
            timeouts_lowered: Some(self.lowered_now()),
            ..Sample::new(
                t,
                self.count.get(),
                read_u64(&Path::new(SYSCTL).join(tunables::MAX))?,
            )
        })
    }

    /// The run's line of the report.
    fn summary(
        &self,
        policy: &Policy,
        samples: Vec<Sample>,
        sessions: SessionOutcome,
    ) -> Result<PolicyRun, BenchError> {
        let final_max = read_u64(&Path::new(SYSCTL).join(tunables::MAX))?;
        let final_buckets = read_u64(&Path::new(SYSCTL).join(tunables::BUCKETS))?;
        let peak = samples.iter().map(|s| s.count).max().unwrap_or(0);
        let start_max = samples.first().map_or(START_MAX, |s| s.max);
        let grew = samples.iter().any(|s| s.max > start_max);
        let lowered = samples.iter().any(|s| s.timeouts_lowered == Some(true));
        let (drops, early_drops) = losses_since(&self.ns, &self.before)?;
        let (reaction_ms, reaction_note) = reaction(&samples, 0.75, grew);
        Ok(PolicyRun {
            policy: policy.name().into(),
            kernel_drops: drops.table_full,
            clash_drops: drops.clash,
            failed_attempts: self.counters.failed.load(Ordering::Relaxed),
            attempts: self.counters.attempts.load(Ordering::Relaxed),
            early_drops,
            sessions: sessions.held,
            sessions_broken: sessions.broken,
            over_spare_bytes: None,
            peak_count: peak,
            final_max,
            final_buckets,
            memory_bytes: ctune_core::ceiling::memory_now(peak, final_buckets, entry_bytes(), 128),
            grew,
            crossed: crossed(&samples, 0.75),
            reaction_ms,
            reaction_note,
            timeouts_lowered: lowered,
            timeouts_restored: lowered && !self.lowered_now(),
            samples,
        })
    }
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
            sessions: Vec::new(),
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
            sessions: Vec::new(),
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
            sessions: Vec::new(),
        },
        sessions_under_flood(short, topology),
    ]
}

/// The session-breaking scenario: a router holding idle TCP sessions (a packet every
/// 21 s, just over SRX's 20 s early-ageout) while unreplied UDP floods its table. The
/// short form's 26 s see the sessions that opened within its first 5 s send once; the
/// full form's 90 s see every session send three or four times.
pub fn sessions_under_flood(short: bool, topology: Topology) -> Scenario {
    let d = if short { 26.0 } else { 90.0 };
    Scenario {
        name: "sessions".into(),
        topology,
        duration: d,
        calm: 2.0,
        flush_after: true,
        loads: vec![Load {
            class: Class::UdpUnreplied,
            profile: Profile::Flood {
                rate: if short { 20_000.0 } else { 40_000.0 },
                start: 1.0,
                end: d,
            },
        }],
        sessions: vec![Sessions {
            class: Class::TcpSession,
            count: if short { 200 } else { 1000 },
            gap: 21.0,
            start: 0.0,
        }],
    }
}

/// The short form keeps ctune's ceiling small (a 64 MiB budget: about 174k entries, above
/// kube-proxy's 131072) so that its flood exceeds the ceiling within seconds, and holds
/// pressure levels 1 s so the restore fits the calm period; the rest is the default.
pub const SHORT_CTUNE_CONFIG: &str = "ceiling:\n  memory_cap: 64MiB\npressure:\n  hold: 1s\n";

/// The full flood holds pressure levels 20 s instead of 2 min so the restore fits the
/// 90 s calm period; the rest is the default config.
pub const FULL_FLOOD_CONFIG: &str = "pressure:\n  hold: 20s\n";

/// The ctune config overrides for a scenario (None: the defaults). The sessions
/// scenario runs ctune as installed: its peers have no memory cap either.
pub fn ctune_config(short: bool, scenario: &str) -> Option<String> {
    if scenario == "sessions" {
        None
    } else if short {
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
