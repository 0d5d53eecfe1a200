//! Regression tests for reading the kernel right (one per finding of the review that
//! checked the decision against the kernel's source), on copies of the fixture trees.

use crate::common;

use serde_json::Value;

use common::Tree;

const NETFILTER: &str = "proc/sys/net/netfilter";

fn set(t: &Tree, key: &str, value: u64) {
    std::fs::write(t.path().join(NETFILTER).join(key), format!("{value}\n")).unwrap();
}

/// The dry run against the saved state's counters (`--sample 0`: one reading), as the
/// next `apply` would decide.
fn plan_json(t: &Tree) -> Value {
    let (code, out, err) = t.ctune(&["plan", "--json", "--sample", "0"]);
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

/// Adds `by` to a column of the fixture's /proc/net/stat/nf_conntrack (first CPU row).
fn bump_stat(t: &Tree, column: &str, by: u64) {
    let path = t.path().join("proc/net/stat/nf_conntrack");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let col = lines[0]
        .split_whitespace()
        .position(|h| h == column)
        .unwrap_or_else(|| panic!("no column {column}"));
    let mut fields: Vec<String> = lines[1].split_whitespace().map(str::to_string).collect();
    let v = u64::from_str_radix(&fields[col], 16).unwrap() + by;
    fields[col] = format!("{v:08x}");
    lines[1] = fields.join(" ");
    // Replaced whole, as procfs shows it: a reader never sees a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// Finding 1: the kernel counts in `drop` both a packet lost to a full table and one
/// lost to an unresolved insert clash (`nf_ct_resolve_clash`: drop and insert_failed
/// together). Clashes at 0.4 % of max are reported and change nothing.
#[test]
fn drop_with_insert_failed_at_low_utilisation_is_a_clash_not_a_full_table() {
    let t = Tree::copy("kernel-6.18");
    set(&t, "nf_conntrack_count", 1_000); // 0.4 % of 262144
    let (code, _, err) = t.ctune(&["apply"]);
    assert_eq!(code, 0, "{err}");
    bump_stat(&t, "drop", 10);
    bump_stat(&t, "insert_failed", 10);
    // The dry run decides from the state the apply saved, as the next apply would.
    let v = plan_json(&t);
    let text = v.to_string();
    assert!(
        v["plan"]["changes"]
            .as_array()
            .is_some_and(|c| c.is_empty()),
        "clashes changed something: {text}"
    );
    let ns = &v["plan"]["namespaces"][0];
    assert_eq!(
        (&ns["clash_delta"], &ns["drop_delta"]),
        (&Value::from(10), &Value::from(0)),
        "{text}"
    );
    assert_eq!(ns["level"], "normal");
    assert!(text.contains("insert clashes"), "{text}");
    // status names them too.
    let (code, out, _) = t.ctune(&["status", "--json"]);
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["namespaces"][0]["clash_drops"], 11, "{s:#}");
    let (_, out, _) = t.ctune(&["status"]);
    assert!(out.contains("CLASH"), "{out}");
}

/// Finding 1 (stale samples): an `apply` long after the previous one measures no rise
/// against it: an old drop does not grow max hours later.
#[test]
fn a_drop_against_an_old_sample_grows_nothing() {
    let t = Tree::copy("kernel-6.18");
    let (code, _, err) = t.ctune(&["apply"]);
    assert_eq!(code, 0, "{err}");
    // Age the saved sample: its time is moved two hours back.
    let state_path = t.path().join("state/state.json");
    let mut state: Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    for ns in state["policy"]["namespaces"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        let at = &mut ns["counters"]["at"];
        let secs = at["secs"].as_u64().unwrap();
        at["secs"] = Value::from(secs.saturating_sub(7200));
    }
    std::fs::write(&state_path, serde_json::to_string(&state).unwrap()).unwrap();
    bump_stat(&t, "drop", 10);
    let (code, out, err) = t.ctune(&["apply", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v["changes"].as_array().is_some_and(|c| c.is_empty()),
        "{v:#}"
    );
    assert!(v.to_string().contains("the previous sample is"), "{v:#}");
}

fn get(t: &Tree, key: &str) -> u64 {
    std::fs::read_to_string(t.path().join(NETFILTER).join(key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn persisted(t: &Tree, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(t.path().join("etc/sysctl.d/99-ctune.conf")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == format!("net.netfilter.{key}")).then(|| v.trim().parse().unwrap())
    })
}

fn state(t: &Tree) -> Value {
    serde_json::from_str(&std::fs::read_to_string(t.path().join("state/state.json")).unwrap())
        .unwrap()
}

/// Finding 2: while a resize waits out hash.min_interval, the persisted hash is the one
/// in force and in ctune's state; after a reboot and `ctune boot`, the next step
/// recognises it as ctune's own and adopts nothing as the operator's.
#[test]
fn a_deferred_resize_survives_a_reboot_as_ctunes_own_value() {
    let t = Tree::copy("kernel-6.18");
    std::fs::create_dir_all(t.path().join("proc/sys/kernel/random")).unwrap();
    let boot_id = t.path().join("proc/sys/kernel/random/boot_id");
    std::fs::write(&boot_id, "boot-1\n").unwrap();
    set(&t, "nf_conntrack_max", 65_536);
    set(&t, "nf_conntrack_buckets", 16_384);
    set(&t, "nf_conntrack_count", 60_000);
    let (code, _, err) = t.ctune(&["apply"]);
    assert_eq!(code, 0, "{err}");
    let (max1, buckets1) = (get(&t, "nf_conntrack_max"), get(&t, "nf_conntrack_buckets"));
    assert!(
        max1 > 65_536 && buckets1 > 16_384,
        "first growth resizes: {max1} {buckets1}"
    );
    // The table keeps filling: max grows again, the resize waits (10 min).
    set(&t, "nf_conntrack_count", max1 * 9 / 10);
    let (code, out, err) = t.ctune(&["apply", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deferred"), "{out}");
    let max2 = get(&t, "nf_conntrack_max");
    assert!(max2 > max1, "{out}");
    let live = get(&t, "nf_conntrack_buckets");
    assert_eq!(live, buckets1, "resize deferred");
    assert_eq!(
        persisted(&t, "nf_conntrack_buckets"),
        Some(live),
        "file = kernel"
    );
    assert_eq!(
        state(&t)["policy"]["applied"]["nf_conntrack_buckets"],
        live,
        "state = kernel"
    );
    assert_eq!(persisted(&t, "nf_conntrack_max"), Some(max2));

    // Reboot: a new boot id, the kernel's stock values, an empty table; then the boot step.
    std::fs::write(&boot_id, "boot-2\n").unwrap();
    set(&t, "nf_conntrack_max", 65_536);
    set(&t, "nf_conntrack_buckets", 16_384);
    set(&t, "nf_conntrack_count", 100);
    let (code, out, err) = t.ctune(&["boot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        (get(&t, "nf_conntrack_max"), get(&t, "nf_conntrack_buckets")),
        (max2, live)
    );
    let (code, out, err) = t.ctune(&["apply", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("someone else"),
        "ctune took its own value for the operator's:\n{out}"
    );
    let st = state(&t);
    assert_eq!(
        st["policy"]["operator_held"],
        serde_json::json!([]),
        "{st:#}"
    );
    // With the rate limit gone at boot, the hash now follows max.
    assert!(get(&t, "nf_conntrack_buckets") >= max2 / 4, "{out}");
}

/// Finding 6: the kernel allocates the hash in whole pages, PAGE_SIZE / 8 buckets: on
/// a 64 KiB-page kernel (arm64, ppc64le) every size is a multiple of 8192. ctune plans
/// sizes the kernel keeps as written, so a resize reads back as written and is never
/// taken for someone else's change.
#[test]
fn a_64k_page_kernel_resizes_to_whole_pages() {
    let t = Tree::copy("kernel-6.18");
    std::fs::write(
        t.path().join("proc/self/auxv"),
        ctune_core::model::auxv::encode(65_536),
    )
    .unwrap();
    set(&t, "nf_conntrack_max", 65_536);
    set(&t, "nf_conntrack_buckets", 8_192);
    set(&t, "nf_conntrack_count", 60_000);
    let (code, out, err) = t.ctune(&["apply"]);
    assert_eq!(code, 0, "{out}{err}");
    let buckets = get(&t, "nf_conntrack_buckets");
    assert!(buckets > 8_192, "{out}");
    assert_eq!(
        buckets % 8_192,
        0,
        "{buckets} is not whole 64 KiB pages: {out}"
    );
    // The kernel would keep that size as written; the next step adopts nothing.
    let (code, out, err) = t.ctune(&["apply", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("someone else"), "{out}");
    assert!(!out.contains("did not stick"), "{out}");
}

/// Per-namespace max (proposed upstream, not in a released kernel): ctune in a child
/// namespace whose nf_conntrack_max is writable manages that namespace's own max and
/// leaves the hash, which stays the host's, alone. On kernels without it (the key is
/// 0444 in a child namespace) nothing changes: see live_status.rs.
#[test]
fn a_writable_max_in_a_child_namespace_is_its_own_and_the_hash_is_left_alone() {
    let t = Tree::copy("kernel-6.18");
    // PID 1 in another namespace than ctune's: a child namespace.
    std::fs::create_dir_all(t.path().join("proc/1/ns")).unwrap();
    std::fs::write(t.path().join("proc/1/ns/net"), "host").unwrap();
    set(&t, "nf_conntrack_max", 65_536);
    set(&t, "nf_conntrack_buckets", 4_096);
    set(&t, "nf_conntrack_count", 60_000);
    let plan = plan_json(&t);
    assert_eq!(plan["observation"]["in_initial_netns"], false, "{plan:#}");
    assert_eq!(plan["observation"]["global"]["per_netns_max"], true);
    let keys = changed_keys(&plan);
    assert!(keys.contains(&"nf_conntrack_max".to_string()), "{keys:?}");
    assert!(
        !keys.contains(&"nf_conntrack_buckets".to_string()),
        "{keys:?}"
    );
    assert!(plan.to_string().contains("per-namespace max"), "{plan:#}");
    // A kernel without the feature makes the key 0444 in a child namespace, which a
    // fixture file cannot be for root: live_status.rs pins that case on this kernel.
}

/// Finding 3: the kernel applies `tcp_timeout_unacknowledged` and
/// `tcp_timeout_max_retrans` to ESTABLISHED flows (unacknowledged data, retransmissions,
/// zero window): they belong to the established tier, untouched at `elevated`.
#[test]
fn elevated_leaves_unacknowledged_and_max_retrans_alone() {
    let t = Tree::copy("kernel-6.18");
    // A 256 MiB host whose max is at its ceiling (the 64 MiB floor at 386 B/entry), the
    // table at 88 % of it: elevated (85 %), not critical, within the budget.
    const CEILING: u64 = 173_846;
    set(&t, "nf_conntrack_max", CEILING);
    set(&t, "nf_conntrack_count", CEILING * 88 / 100);
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
    set(&t, "nf_conntrack_count", CEILING * 96 / 100);
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
    let t = Tree::copy("kernel-6.18");
    for (key, floor) in [
        ("sctp_timeout_established", "1h"),
        ("tcp_timeout_unacknowledged", "30s"),
        ("tcp_timeout_max_retrans", "1m"),
    ] {
        let cfg = t.path().join("floors.yaml");
        std::fs::write(&cfg, format!("timeouts:\n  floors:\n    {key}: {floor}\n")).unwrap();
        let (code, _, err) = t.ctune(&["plan", "--config", cfg.to_str().unwrap()]);
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
        let (code, _, err) = t.ctune(&["plan", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 0, "{key} with consent: {err}");
    }
}

/// `status` while the counters rise during its sample (issue 13): table-full drops make
/// it exit 6 with drops per second; the same rise as insert clashes is not a full table
/// (exit 0, clashes per second shown).
#[test]
fn status_exits_6_for_drops_during_its_sample_and_0_for_clashes() {
    for (columns, want_code, want_health) in [
        (&["drop"][..], 6, "dropping"),
        (&["drop", "insert_failed"][..], 0, "healthy"),
    ] {
        let t = Tree::copy("kernel-6.18");
        let (code, out, err) = std::thread::scope(|s| {
            let status = s.spawn(|| t.ctune(&["status", "--json", "--sample", "1s"]));
            std::thread::sleep(std::time::Duration::from_millis(400));
            for c in columns {
                bump_stat(&t, c, 500);
            }
            status.join().unwrap()
        });
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        let ns = &v["namespaces"][0];
        assert_eq!(code, want_code, "{columns:?}: {ns:#}{err}");
        assert_eq!(v["health"], want_health, "{columns:?}");
        let (drops, clashes) = (ns["drop_per_sec"].as_f64(), ns["clash_per_sec"].as_f64());
        if want_code == 6 {
            assert!(
                drops.is_some_and(|d| d > 100.0) && clashes == Some(0.0),
                "{ns:#}"
            );
        } else {
            assert!(
                drops == Some(0.0) && clashes.is_some_and(|c| c > 100.0),
                "{ns:#}"
            );
        }
    }
}
