//! Live: the agent's HTTP endpoint never waits for a step (issue 23). An LD_PRELOAD shim
//! (common/stall_read.c) hangs the step's read of `nf_conntrack_max`, as a read of /proc
//! that never returns would; meanwhile `/metrics` answers at once, and `/healthz` turns
//! 503 once the step is `metrics.healthz_grace` late, then 200 again when the step
//! ends. Needs root (the agent's lock lives in /run); changes no global value.

use crate::common;

use common::*;
use std::time::{Duration, Instant};

#[test]
fn metrics_answer_while_a_step_hangs_and_healthz_says_so() {
    require_root("metrics_answer_while_a_step_hangs_and_healthz_says_so");
    let so = c_shim("stall_read");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = listening_config(dir.path(), port, "  healthz_grace: 2s\n");
    let flag = dir.path().join("stall");
    let agent = Agent::start_env(
        &cfg,
        dir.path(),
        &[
            ("LD_PRELOAD", so.to_str().unwrap()),
            ("CTUNE_STALL_FLAG", flag.to_str().unwrap()),
            ("CTUNE_STALL_SUFFIX", "/nf_conntrack_max"),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(10), || http_get(port, "/metrics")
            .is_some_and(|m| m.contains("ctune_last_step_timestamp_seconds"))),
        "no metrics after the first step; log:\n{}",
        agent.log()
    );
    assert_eq!(http_request(port, "/healthz").map(|r| r.0), Some(200));

    // The next step hangs on its read of the max.
    std::fs::write(&flag, "").unwrap();
    let hung = wait_for(Duration::from_secs(10), || {
        http_request(port, "/healthz").is_some_and(|(code, _)| code == 503)
    });
    let healthz = http_request(port, "/healthz");
    // While it hangs, every scrape is answered at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let m = http_get(port, "/metrics");
        slowest = slowest.max(t.elapsed());
        assert!(m.is_some(), "no /metrics while the step hangs");
    }
    std::fs::remove_file(&flag).unwrap();
    assert!(
        hung,
        "/healthz never said stale: {healthz:?}; log:\n{}",
        agent.log()
    );
    let (_, why) = healthz.unwrap();
    assert!(why.starts_with("stale:"), "{why}");
    assert!(
        slowest < Duration::from_millis(100),
        "a scrape took {slowest:?} while the step hung"
    );
    // The step ends; the loop turns again.
    assert!(
        wait_for(Duration::from_secs(10), || http_request(port, "/healthz")
            .is_some_and(|(code, _)| code == 200)),
        "/healthz did not recover; log:\n{}",
        agent.log()
    );
    drop(agent);
}
