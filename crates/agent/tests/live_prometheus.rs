//! End to end with a real Prometheus (Debian's `prometheus` package; `scripts/test
//! --install` installs it): `ctune run` serves /metrics on loopback, Prometheus scrapes
//! it every second while a flood runs in a test namespace, and the test asks Prometheus's
//! HTTP API for the namespace's entries rising and a change counted. Needs root; lowers
//! the global max under a guard that restores it; deletes its namespace; stops both
//! processes.

use crate::common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The first value of an instant query's result, if any.
fn query(port: u16, q: &str) -> Option<f64> {
    let body = http_get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ctune\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("prometheus not found: install Debian's prometheus package (scripts/test --install does)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_a_rising_namespace_and_a_counted_change() {
    require_root("prometheus_scrapes_a_rising_namespace_and_a_counted_change");
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("prom");
    guard.set_max(16_384);
    guard.set_buckets(4096);
    let metrics_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: named\n  names: [\"{}\"]\n\
             ceiling:\n  min_max: 4096\n  max_cap: 65536\n\
             agent:\n  interval: 200ms\n\
             metrics:\n  textfile_dir: off\n  listen: 127.0.0.1:{metrics_port}\n",
            ns.name
        ),
    )
    .unwrap();
    let agent = Agent::start_stepped(&cfg, dir.path());
    let prom = Prometheus::start(metrics_port);
    let up = "up{job=\"ctune\"}";
    assert!(
        wait_for(Duration::from_secs(30), || query(prom.port, up)
            == Some(1.0)),
        "Prometheus never scraped ctune (up != 1); prometheus log:\n{}\nagent log:\n{}",
        prom.log(),
        agent.log()
    );

    // The liveness endpoint a DaemonSet probes (deploy/kubernetes) answers 200 while the
    // loop steps on time.
    let health = http_get(metrics_port, "/healthz");
    assert!(
        health.as_deref().is_some_and(|b| b.starts_with("ok:")),
        "/healthz: {health:?}; agent log:\n{}",
        agent.log()
    );

    let refused = ns.udp_flows_paced(0, 30_000, Some(10_000));
    let entries = format!(
        "max_over_time(ctune_nf_conntrack_entries{{netns=\"{}\"}}[2m])",
        ns.name
    );
    let raised = "sum(ctune_changes_total{key=\"max\",direction=\"up\"})";
    let seen = wait_for(Duration::from_secs(20), || {
        query(prom.port, &entries).is_some_and(|v| v >= 25_000.0)
            && query(prom.port, raised).is_some_and(|v| v >= 1.0)
    });
    assert!(
        seen,
        "Prometheus saw entries {:?} and max raises {:?} (refused sends {refused}); agent's /metrics:\n{}\nagent log:\n{}",
        query(prom.port, &entries),
        query(prom.port, raised),
        http_get(metrics_port, "/metrics").unwrap_or_default(),
        agent.log()
    );
    // What node_exporter's users chart: entries and the limit line up for the host.
    let limit = query(
        prom.port,
        "ctune_nf_conntrack_entries_limit{netns=\"init\"}",
    );
    assert_eq!(limit, Some(global("nf_conntrack_max") as f64));
    drop(prom);
    drop(agent);
    drop(ns);
    drop(guard);
}
