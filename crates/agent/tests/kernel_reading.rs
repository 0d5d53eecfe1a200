//! Regression tests for reading the kernel right (one per finding of the review that
//! checked the decision against the kernel's source), on copies of the fixture trees.

mod common;

use serde_json::Value;
use std::process::Command;

use common::FixtureTree;

const NETFILTER: &str = "proc/sys/net/netfilter";

fn set(t: &FixtureTree, key: &str, value: u64) {
    std::fs::write(t.path().join(NETFILTER).join(key), format!("{value}\n")).unwrap();
}

/// Runs ctune on the tree and returns (exit code, stdout, stderr).
fn ctune(t: &FixtureTree, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .env_remove("CTUNE_LOG")
        .args(t.root_args())
        .args(args)
        .output()
        .expect("run ctune");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn plan_json(t: &FixtureTree) -> Value {
    let (code, out, err) = ctune(t, &["plan", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn changed_keys(plan: &Value) -> Vec<String> {
    plan["plan"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap().to_string())
        .collect()
}

/// Finding 3: the kernel applies `tcp_timeout_unacknowledged` and
/// `tcp_timeout_max_retrans` to ESTABLISHED flows (unacknowledged data, retransmissions,
/// zero window): they belong to the established tier, untouched at `elevated`.
#[test]
fn elevated_leaves_unacknowledged_and_max_retrans_alone() {
    let t = FixtureTree::new("kernel-6.18");
    // 88 % of max on a 256 MiB host: at the ceiling, elevated (85 %), not critical.
    set(&t, "nf_conntrack_count", 230_000);
    let meminfo = t.path().join("proc/meminfo");
    let text = std::fs::read_to_string(&meminfo).unwrap();
    let small: String = text
        .lines()
        .map(|l| {
            if l.starts_with("MemTotal:") {
                "MemTotal:         262144 kB\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&meminfo, small).unwrap();
    let plan = plan_json(&t);
    assert_eq!(
        plan["plan"]["namespaces"][0]["level"], "elevated",
        "{plan:#}"
    );
    let keys = changed_keys(&plan);
    assert!(
        keys.contains(&"nf_conntrack_udp_timeout".to_string()),
        "{keys:?}"
    );
    for stalled in [
        "nf_conntrack_tcp_timeout_unacknowledged",
        "nf_conntrack_tcp_timeout_max_retrans",
        "nf_conntrack_tcp_timeout_established",
    ] {
        assert!(
            !keys.contains(&stalled.to_string()),
            "{stalled} lowered at elevated: {keys:?}"
        );
    }
    // At critical they are lowered, last, and not below TCP's largest retransmission
    // interval.
    set(&t, "nf_conntrack_count", 250_000);
    let plan = plan_json(&t);
    assert_eq!(plan["plan"]["namespaces"][0]["level"], "critical");
    let changes = plan["plan"]["changes"].as_array().unwrap();
    let tail: Vec<(&str, u64)> = changes[changes.len() - 3..]
        .iter()
        .map(|c| (c["key"].as_str().unwrap(), c["new"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        tail,
        [
            ("nf_conntrack_tcp_timeout_established", 54_000),
            ("nf_conntrack_tcp_timeout_max_retrans", 180),
            ("nf_conntrack_tcp_timeout_unacknowledged", 180),
        ]
    );
}

/// Finding 7: every established-state floor is checked against TCP keepalive, not only
/// TCP's; the stalled-session keys against TCP's largest retransmission interval.
#[test]
fn every_established_floor_is_checked() {
    let t = FixtureTree::new("kernel-6.18");
    for (key, floor) in [
        ("sctp_timeout_established", "1h"),
        ("tcp_timeout_unacknowledged", "30s"),
        ("tcp_timeout_max_retrans", "1m"),
    ] {
        let cfg = t.path().join("floors.yaml");
        std::fs::write(&cfg, format!("timeouts:\n  floors:\n    {key}: {floor}\n")).unwrap();
        let (code, _, err) = ctune(&t, &["plan", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{key}: {err}");
        assert!(
            err.contains(&format!("timeouts.floors.{key}"))
                && err.contains("allow_established_below_keepalive"),
            "{err}"
        );
        std::fs::write(
            &cfg,
            format!(
                "timeouts:\n  floors:\n    {key}: {floor}\n  allow_established_below_keepalive: true\n"
            ),
        )
        .unwrap();
        let (code, _, err) = ctune(&t, &["plan", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{key} with consent: {err}");
    }
}
