//! The memory budget on the live kernel: namespaces that hold nothing change nothing, a
//! process that takes memory makes the ceiling fall, and a flood then ends with growth
//! stopped and timeouts lowered. Needs root; global values are restored by the guard,
//! namespaces deleted, and the memory taken is bounded (512 MiB) and freed at the end.

use crate::common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
}

/// `ctune status --json` with a config; the ceiling object.
fn ceiling(cfg: &std::path::Path) -> Value {
    let v = status_json(cfg);
    v["ceiling"].clone()
}

#[test]
fn forty_empty_namespaces_change_the_ceiling_by_less_than_one_percent() {
    require_root("forty_empty_namespaces_change_the_ceiling_by_less_than_one_percent");
    let _lock = global_lock();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ctune.yaml");
    std::fs::write(&cfg, "namespaces:\n  mode: all\n").unwrap();
    // Entries of namespaces deleted a moment ago (an earlier test) are freed in the
    // background: wait until the table's size holds still (bounded: 30 s).
    let mut last = ceiling(&cfg)["table_entries"].as_u64().unwrap();
    wait_for(Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(500));
        let now = ceiling(&cfg)["table_entries"].as_u64().unwrap();
        let still = now.abs_diff(last) < 1000;
        last = now;
        still
    });
    let before = ceiling(&cfg)["value"].as_u64().unwrap();
    let crowd: Vec<TestNetns> = (0..40).map(|_| TestNetns::new("empty")).collect();
    let after = ceiling(&cfg);
    let value = after["value"].as_u64().unwrap();
    let change = before.abs_diff(value) as f64 / before as f64;
    assert!(
        change < 0.01,
        "40 empty namespaces moved the ceiling {before} -> {value} ({:.2} %): {after:#}",
        change * 100.0
    );
    drop(crowd);
}

#[test]
fn a_process_taking_memory_lowers_the_ceiling_and_a_flood_ends_with_timeouts_lowered() {
    let test = "a_process_taking_memory_lowers_the_ceiling_and_a_flood_ends_with_timeouts_lowered";
    require_root(test);
    const GIB: u64 = 1 << 30;
    let guard = GlobalGuard::save();
    let ns = TestNetns::new("memhog");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ctune.yaml");
    // The test takes 512 MiB, not the whole machine: the reserve keeps all but 512 MiB
    // of what is available now for everything else, so the memory taken leaves the
    // table almost nothing to grow into.
    let available = meminfo("MemAvailable");
    assert!(
        available > 3 * GIB,
        "needs 3 GiB available, has {available}"
    );
    let reserve = available - GIB / 2;
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: named\n  names: [\"{}\"]\n\
             ceiling:\n  min_max: 1024\n  reserve_fraction: 0.01\n  reserve_min: {reserve}\n\
             pressure:\n  hold: 1s\n\
             agent:\n  interval: 200ms\n",
            ns.name
        ),
    )
    .unwrap();
    let c0 = ceiling(&cfg);
    let hog: Vec<u8> = vec![1u8; (GIB / 2 - (32 << 20)) as usize];
    let c1 = ceiling(&cfg);
    let (v0, v1) = (c0["value"].as_u64().unwrap(), c1["value"].as_u64().unwrap());
    assert!(
        v1 < v0 * 3 / 4 && c1["bound"] == "spare",
        "512 MiB taken should lower the ceiling, bound by what the host can spare: {v0} -> {v1}\n{c1:#}"
    );

    guard.set_max(16_384);
    guard.set_buckets(4096);
    let agent = Agent::start_stepped(&cfg, dir.path());
    // A flood of flows that keep their entries (udp_timeout 600 s in the test
    // namespace): three times what the memory left allows (bounded: 300k to 1.5M
    // flows, at 60k/s), so that other processes freeing memory meanwhile cannot make
    // it fit.
    let spare = c1["spare_bytes"].as_u64().unwrap_or(0);
    let per_entry = c1["bytes_per_entry"].as_u64().unwrap().max(1);
    let flows = (3 * spare / per_entry).clamp(300_000, 1_500_000);
    let refused = ns.udp_flows_paced(0, flows as usize, Some(60_000));
    std::thread::sleep(Duration::from_secs(2));
    let max = global("nf_conntrack_max");
    let udp = ns.read_sysctl("nf_conntrack_udp_timeout");
    let end = ceiling(&cfg)["value"].as_u64().unwrap();
    let log = agent.log();
    drop(agent);
    drop(hog);
    eprintln!("flood of {flows} flows: {refused} refused; max {max}; ceiling before {v0}");
    // Growth never passed the ceiling of the step that made it (the ceiling follows
    // what the host can spare, which other work on the machine moves).
    let mut raised = 0;
    for line in log.lines().filter(|l| l.contains("raising max")) {
        let new = number_after(line, "raising max ").and_then(|_| number_after(line, " -> "));
        let ceiling = number_after(line, "; ceiling ");
        if let (Some(new), Some(ceiling)) = (new, ceiling) {
            raised += 1;
            assert!(new <= ceiling, "grew past its ceiling: {line}");
        }
    }
    eprintln!("{raised} growth steps, each within its ceiling; ceiling at the end {end}");
    // A flood limited at the ceiling (sends refused or entries evicted once max could
    // not grow) has the namespace's transient timeouts lowered.
    let evicted = ns.stat_counter("early_drop");
    let at_ceiling = log.contains("capped at the ceiling")
        || log.contains("max cannot grow")
        || log.contains("over its budget");
    if at_ceiling && (refused > 0 || evicted > 0) {
        assert!(
            log.contains("lowering udp_timeout"),
            "udp_timeout {udp}: never lowered though the flood was limited at the ceiling ({refused} refused, {evicted} evicted, max {max}, ceiling {end})\n{log}"
        );
    } else {
        eprintln!(
            "the flood was not limited at the ceiling (other work moved the memory the host could spare): timeouts not judged"
        );
    }
}

/// The first number after `marker` in `line` (a compact count such as 1.3M is not one).
fn number_after(line: &str, marker: &str) -> Option<u64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = rest[digits.len()..].chars().next();
    if after.is_some_and(|c| c == '.' || c.is_ascii_alphabetic()) {
        return None;
    }
    digits.parse().ok()
}
