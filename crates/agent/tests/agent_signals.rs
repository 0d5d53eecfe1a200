//! The agent as systemd sees it: READY / STATUS / WATCHDOG / STOPPING over
//! $NOTIFY_SOCKET, SIGHUP reloads (an invalid config is reported and the old one kept),
//! SIGTERM and SIGINT end it within a second. Runs against a fixture tree: no root needed.

use crate::common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Run {
    child: Child,
    log: std::path::PathBuf,
    notify: UnixDatagram,
}

impl Run {
    fn start(tree: &Tree, config: &std::path::Path) -> Run {
        let sock_path = tree.path().join("notify.sock");
        let notify = UnixDatagram::bind(&sock_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let log = tree.path().join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ctune"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(tree.root_args())
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env("CTUNE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Run { child, log, notify }
    }

    /// Collects notifications until one contains `want` or `limit` passes.
    fn expect(&self, want: &str, limit: Duration) -> Vec<String> {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.contains(want);
                got.push(msg);
                if done {
                    return got;
                }
            }
        }
        panic!(
            "no {want:?} within {limit:?}; got {got:?}; log:\n{}",
            self.log()
        );
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn exit_within(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn notifies_systemd_reloads_on_sighup_and_stops_on_sigterm() {
    let tree = Tree::copy("kernel-6.18");
    let cfg = tree.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  interval: 100ms\n",
    )
    .unwrap();
    let mut run = Run::start(&tree, &cfg);
    let first = run.expect("READY=1", Duration::from_secs(5));
    assert!(
        first.last().unwrap().contains("STATUS=max 262144"),
        "{first:?}"
    );
    run.expect("WATCHDOG=1", Duration::from_secs(2));

    // A valid new config is taken.
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  interval: 150ms\n  idle_interval: 150ms\n",
    )
    .unwrap();
    run.signal(nix::sys::signal::Signal::SIGHUP);
    run.expect("RELOADING=1", Duration::from_secs(2));
    run.expect("READY=1", Duration::from_secs(2));
    assert!(run.log().contains("config reloaded from"), "{}", run.log());

    // An invalid one is reported, with file, line and key, and the old one kept.
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  intervall: 1s\n",
    )
    .unwrap();
    run.signal(nix::sys::signal::Signal::SIGHUP);
    run.expect("READY=1", Duration::from_secs(2));
    let log = run.log();
    assert!(
        log.contains("reload failed, keeping the previous config"),
        "{log}"
    );
    assert!(log.contains("intervall") && log.contains("line 4"), "{log}");
    // Still alive and ticking.
    run.expect("STATUS=", Duration::from_secs(2));
    run.expect("WATCHDOG=1", Duration::from_secs(2));

    run.signal(nix::sys::signal::Signal::SIGTERM);
    let started = Instant::now();
    run.expect("STOPPING=1", Duration::from_secs(1));
    assert_eq!(
        run.exit_within(Duration::from_secs(1)),
        Some(0),
        "{}",
        run.log()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn stops_on_sigint_within_a_second() {
    let tree = Tree::copy("kernel-6.18");
    let cfg = tree.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  interval: 1h\n",
    )
    .unwrap();
    let mut run = Run::start(&tree, &cfg);
    run.expect("READY=1", Duration::from_secs(5));
    run.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(
        run.exit_within(Duration::from_secs(1)),
        Some(0),
        "{}",
        run.log()
    );
}

#[test]
fn agent_waits_for_conntrack_instead_of_exiting() {
    // A modular conntrack may load after ctune starts: the agent reports and keeps going.
    let tree = Tree::copy("kernel-6.18");
    std::fs::remove_dir_all(tree.path().join("proc/sys/net/netfilter")).unwrap();
    let cfg = tree.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  interval: 100ms\n",
    )
    .unwrap();
    let mut run = Run::start(&tree, &cfg);
    let got = run.expect("READY=1", Duration::from_secs(5));
    assert!(
        got.last().unwrap().contains("conntrack is not active"),
        "{got:?}"
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(run.child.try_wait().unwrap(), None, "the agent exited");
    let log = run.log();
    assert_eq!(
        log.matches("conntrack is not active").count(),
        1,
        "logged once, not every tick:\n{log}"
    );
    run.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(run.exit_within(Duration::from_secs(1)), Some(0));
}

#[test]
fn apply_and_restore_refuse_while_the_agent_runs() {
    let tree = Tree::copy("kernel-6.18");
    let cfg = tree.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        "namespaces:\n  mode: initial\nagent:\n  interval: 1h\n",
    )
    .unwrap();
    let mut run = Run::start(&tree, &cfg);
    run.expect("READY=1", Duration::from_secs(5));
    for cmd in ["apply", "restore"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ctune"))
            .arg(cmd)
            .arg("--config")
            .arg(&cfg)
            .args(tree.root_args())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(
            err.contains("another ctune is running") && err.contains(&run.child.id().to_string()),
            "{err}"
        );
    }
    run.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(run.exit_within(Duration::from_secs(1)), Some(0));
}
