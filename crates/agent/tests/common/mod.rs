//! Helpers for tests that touch the live kernel: namespaces and nftables tables they
//! create and always delete, global values saved and restored (also on panic), a lock
//! that serializes tests changing global values, and a bounded UDP flow generator.
//! [`tree`]: the one fixture-tree helper, a copied kernel with all of ctune's roots.
#![allow(dead_code)]

pub mod tree;

pub use tree::Tree;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SYSCTL_DIR: &str = "/proc/sys/net/netfilter";

/// Live tests need root (namespaces, setns, nftables, global sysctls). Without it the
/// test fails saying so, rather than returning early and counting as passed: a run that
/// proves nothing must not look like one that proved something. CI runs as root.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test}: needs root (network namespaces, setns, nftables and global conntrack \
         values); run the suite as root, as CI does: scripts/test"
    );
}

/// A command's stdout then its stderr: the messages of a failure may be in either.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command and fails the test with its output if it fails.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace for one test, with loopback up and conntrack active (an nftables
/// rule that uses `ct state`). Deleted on drop, which also deletes its nftables table.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ctune-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh("ip", &["netns", "add", &name]);
        let ns = TestNetns { name };
        sh("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.exec_stdin(
            &["nft", "-f", "-"],
            "table inet ctune_test {\n  chain out {\n    type filter hook output priority 0;\n    ct state new counter accept\n  }\n}\n",
        );
        // Keep the generated UDP entries for the whole test (the default is 30 s).
        ns.write_sysctl("nf_conntrack_udp_timeout", 600);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace with `ip netns exec`.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .expect("ip netns exec")
    }

    fn exec_stdin(&self, args: &[&str], input: &str) {
        use std::io::Write;
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        let mut child = Command::new("ip")
            .args(&full)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "{args:?} failed in {}",
            self.name
        );
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let fd = File::open(&path).expect("open netns");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    pub fn write_sysctl(&self, key: &str, value: u64) {
        self.run_in(|| {
            std::fs::write(Path::new(SYSCTL_DIR).join(key), value.to_string())
                .unwrap_or_else(|e| panic!("write {key}: {e}"))
        });
    }

    pub fn read_sysctl(&self, key: &str) -> u64 {
        self.run_in(|| read_u64(&Path::new(SYSCTL_DIR).join(key)))
    }

    /// Sends one datagram to each of `n` distinct destinations on 127.0.0.0/8 from
    /// inside the namespace: `n` new conntrack entries while the table has room.
    /// Returns how many sends the kernel refused (EPERM: table full).
    pub fn udp_flows(&self, n: usize) -> usize {
        self.udp_flows_paced(0, n, None)
    }

    /// Like `udp_flows`, for flows numbered `first..first + n` (distinct numbers are
    /// distinct flows), at most `per_sec` a second when given.
    pub fn udp_flows_paced(&self, first: usize, n: usize, per_sec: Option<usize>) -> usize {
        self.run_in(|| {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let started = Instant::now();
            let deadline = started + Duration::from_secs(120);
            let mut refused = 0;
            for i in first..first + n {
                assert!(Instant::now() < deadline, "flow generation took over 120 s");
                if let Some(rate) = per_sec {
                    let due = started + Duration::from_secs_f64((i - first) as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let port = 10_000 + (i % 50_000) as u16;
                let host = (i / 50_000) as u8;
                let dst = SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, host.wrapping_add(1)), port);
                if sock.send_to(&[0], dst).is_err() {
                    refused += 1;
                }
            }
            refused
        })
    }

    /// Runs `f` while new flows keep coming into this namespace (20k a second, in
    /// batches; bounded: the sender stops with `f`, or after 1.9M flows).
    pub fn with_new_flows<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let sender = s.spawn(|| {
                let mut next = 100_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && next < 2_000_000 {
                    self.udp_flows_paced(next, 2000, Some(20_000));
                    next += 2000;
                }
            });
            let r = f();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            sender.join().unwrap();
            r
        })
    }

    /// The summed per-CPU counter `name` of this namespace's conntrack statistics.
    pub fn stat_counter(&self, name: &str) -> u64 {
        self.run_in(|| {
            let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").unwrap();
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
            let col = header.iter().position(|h| *h == name).expect("column");
            lines
                .map(|l| u64::from_str_radix(l.split_whitespace().nth(col).unwrap(), 16).unwrap())
                .sum()
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        // Flush first: a deleted namespace's entries are freed later, by the kernel's
        // asynchronous cleanup, and stay in the global hash meanwhile; the next test's
        // small hash (2048 buckets) then has chains past the kernel's limit (64) and
        // refuses inserts (seen: 360 of 30000 sends after a 150k-entry flood test).
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.name, "conntrack", "-F"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Held while a test changes (or relies on) global values.
pub struct GlobalLock {
    _process: MutexGuard<'static, ()>,
    _machine: nix::fcntl::Flock<std::fs::File>,
}

/// Serializes the tests that change global values: those of this process (a mutex) and
/// those of any other process on the machine ([`machine_lock`]).
pub fn global_lock() -> GlobalLock {
    static LOCK: Mutex<()> = Mutex::new(());
    let process = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    GlobalLock {
        _process: process,
        _machine: machine_lock(),
    }
}

/// The lock file that serializes, across processes, every test and benchmark that
/// changes global conntrack values (`crates/lab/src/livebench.rs` takes it too): two
/// `cargo test` runs on one machine must not fight over nf_conntrack_max.
pub const MACHINE_LOCK: &str = "/run/ctune-test-globals.lock";

/// Takes the machine-wide lock, waiting for another process that holds it.
pub fn machine_lock() -> nix::fcntl::Flock<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .unwrap_or_else(|e| panic!("open {MACHINE_LOCK}: {e}"));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {MACHINE_LOCK}: {e}"))
}

/// Saves `nf_conntrack_max` and `nf_conntrack_buckets` and restores them on drop, also
/// when the test panics. Holds the global lock for its lifetime (dropped after the
/// values are restored).
pub struct GlobalGuard {
    max: u64,
    buckets: u64,
    _lock: GlobalLock,
}

impl GlobalGuard {
    pub fn save() -> GlobalGuard {
        let lock = global_lock();
        GlobalGuard {
            max: read_u64(&Path::new(SYSCTL_DIR).join("nf_conntrack_max")),
            buckets: read_u64(&Path::new(SYSCTL_DIR).join("nf_conntrack_buckets")),
            _lock: lock,
        }
    }

    /// Sets the hash size (a resize: cheap while the table is nearly empty).
    pub fn set_buckets(&self, buckets: u64) {
        std::fs::write(
            Path::new(SYSCTL_DIR).join("nf_conntrack_buckets"),
            buckets.to_string(),
        )
        .unwrap();
    }

    /// Sets the global max, refusing 0 and anything below what the initial namespace
    /// holds now (plus room), so the host's own flows never hit the limit.
    pub fn set_max(&self, max: u64) {
        let init_count = read_u64(&Path::new(SYSCTL_DIR).join("nf_conntrack_count"));
        assert!(
            max > 0 && max >= init_count * 2 + 1024,
            "refusing to set max {max} (host holds {init_count})"
        );
        std::fs::write(
            Path::new(SYSCTL_DIR).join("nf_conntrack_max"),
            max.to_string(),
        )
        .unwrap();
    }

    pub fn original_max(&self) -> u64 {
        self.max
    }
}

impl Drop for GlobalGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(
            Path::new(SYSCTL_DIR).join("nf_conntrack_max"),
            self.max.to_string(),
        );
        let now = std::fs::read_to_string(Path::new(SYSCTL_DIR).join("nf_conntrack_buckets"))
            .unwrap_or_default();
        if now.trim() != self.buckets.to_string() {
            let _ = std::fs::write(
                Path::new(SYSCTL_DIR).join("nf_conntrack_buckets"),
                self.buckets.to_string(),
            );
        }
    }
}

/// Reads a global conntrack sysctl of the initial namespace.
pub fn global(key: &str) -> u64 {
    read_u64(&Path::new(SYSCTL_DIR).join(key))
}

/// Polls `cond` every 50 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the ctune binary, returning (exit code, stdout, stderr).
pub fn ctune(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(args)
        .output()
        .expect("run ctune");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctune status --json --sample 0` with a config, parsed. Its exit code says how the
/// tables are (0, 5 over a level, 6 dropping: other work on the machine may fill one);
/// anything else fails the test.
pub fn status_json(cfg: &Path) -> serde_json::Value {
    status_json_in(cfg, None)
}

/// [`status_json`] on the state in `state_dir` (None: the default).
pub fn status_json_in(cfg: &Path, state_dir: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["status", "--json", "--sample", "0", "--config"];
    args.push(cfg.to_str().unwrap());
    if let Some(dir) = state_dir {
        args.extend(["--state-dir", dir.to_str().unwrap()]);
    }
    let (code, out, err) = ctune(&args);
    assert!([0, 5, 6].contains(&code), "status exited {code}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A config file watching exactly the given named namespaces.
pub fn named_config(dir: &Path, names: &[&str]) -> PathBuf {
    let path = dir.join("ctune.yaml");
    let list = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &path,
        format!("namespaces:\n  mode: named\n  names: [{list}]\n"),
    )
    .unwrap();
    path
}

/// A config for an agent watching the test namespace `ns`: ceiling `cap`, hash resizes
/// at most every second, pressure held for `hold`, a step every 200 ms, a composition
/// sample every `composition` (`0s`: none, the tiers alone choose the timeouts).
pub fn agent_config(
    dir: &Path,
    ns: &TestNetns,
    cap: u64,
    hold: &str,
    composition: &str,
) -> PathBuf {
    let cfg = dir.join("ctune.yaml");
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: named\n  names: [\"{}\"]\n\
             ceiling:\n  min_max: 1024\n  max_cap: {cap}\n\
             hash:\n  min_interval: 1s\n\
             pressure:\n  hold: {hold}\n\
             agent:\n  interval: 200ms\n  composition_interval: {composition}\n",
            ns.name
        ),
    )
    .unwrap();
    cfg
}

/// Copies a directory tree (files and directories; owner-writable so tests can edit it).
pub fn copy_tree(src: &Path, dst: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
            let mut perm = std::fs::metadata(&to).unwrap().permissions();
            perm.set_mode(perm.mode() | 0o200);
            std::fs::set_permissions(&to, perm).unwrap();
        }
    }
}

/// A running `ctune run`, killed on drop if the test did not stop it.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

/// A run root of the test's own, `DIR/run`, that sees the host's named namespaces
/// (`netns` links to /run/netns): agents of tests running at once in this process do not
/// meet at /run/ctune/lock, the one-writer lock (which agent_signals proves).
pub fn run_root(dir: &Path) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let netns = run.join("netns");
    if std::fs::symlink_metadata(&netns).is_err() {
        std::os::unix::fs::symlink("/run/netns", &netns).unwrap();
    }
    run
}

impl Agent {
    pub fn start(config: &Path, dir: &Path) -> Agent {
        Agent::start_env(config, dir, &[])
    }

    /// Like [`Agent::start`], with `env` set for the agent (an LD_PRELOAD shim).
    pub fn start_env(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Agent {
        let log = dir.join("agent.log");
        // At the priority ctune's unit gives it (its `Nice=`), as in production.
        let nice = include_str!("../../../../systemd/ctune.service")
            .lines()
            .find_map(|l| l.strip_prefix("Nice="))
            .unwrap_or("0");
        let child = Command::new("nice")
            .args(["-n", nice, env!("CARGO_BIN_EXE_ctune")])
            .args(["run", "--config"])
            .arg(config)
            .arg("--etc-root")
            .arg(dir.join("etc"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--run-root")
            .arg(run_root(dir))
            .env("CTUNE_LOG", "info")
            .envs(env.iter().copied())
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ctune run");
        Agent { child, log }
    }

    /// Starts the agent and waits (at most 5 s) for its first step: the state file.
    pub fn start_stepped(config: &Path, dir: &Path) -> Agent {
        let agent = Agent::start(config, dir);
        assert!(
            wait_for(Duration::from_secs(5), || dir
                .join("state/state.json")
                .exists()),
            "agent did not take its first step: {}",
            agent.log()
        );
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits up to `limit` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test shim (`tests/common/NAME.c`, an LD_PRELOAD library) built with cc, once per
/// test process; its path.
pub fn c_shim(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, so)) = built.iter().find(|(n, _)| n == name) {
        return so.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/common/{name}.c"));
    let so = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.so"));
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run cc (gcc): the shim needs a C compiler");
    assert!(
        cc.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    built.push((name.to_string(), so.clone()));
    so
}

/// A TCP port free on loopback now (for an agent's `metrics.listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// GET on loopback with a bounded wait: the status and the body.
pub fn http_request(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((status, body.to_string()))
}

/// A config for an agent that watches only its own namespace, steps every second and
/// serves HTTP on 127.0.0.1:`port`, with `metrics_extra` (indented lines) added under
/// `metrics:`; written into `dir`.
pub fn listening_config(dir: &Path, port: u16, metrics_extra: &str) -> PathBuf {
    let cfg = dir.join("ctune.yaml");
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: initial\nagent:\n  interval: 1s\n  idle_interval: 1s\n\
             metrics:\n  textfile_dir: off\n  listen: 127.0.0.1:{port}\n{metrics_extra}"
        ),
    )
    .unwrap();
    cfg
}

/// GET on loopback: the body, when the status is 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_request(port, path).and_then(|(status, body)| (status == 200).then_some(body))
}
