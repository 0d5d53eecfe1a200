//! The monitoring kit in deploy/: the Prometheus alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), every alert has a case that fires and
//! one that does not, and the rules and the Grafana dashboard use only the series
//! docs/metrics.md lists, while every listed series is used (or said here why not).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const RULES: &str = "deploy/prometheus/ctune-alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/ctune-alerts.test.yaml";
const DASHBOARD: &str = "deploy/grafana/ctune.json";
const METRICS_DOC: &str = "docs/metrics.md";

/// Series the docs list that neither the dashboard nor the rules need, and why. Keep it
/// short: a new series belongs on the dashboard unless it says nothing new.
const NOT_ON_DASHBOARD: &[(&str, &str)] = &[
    (
        "ctune_nf_conntrack_stat_drop_total",
        "the kernel's drop lumps full-table drops with insert clashes; the dashboard and \
         the alerts use ctune's split (ctune_table_full_drops_total, ctune_clash_drops_total)",
    ),
    (
        "ctune_role",
        "a setting, not a condition: the dry run and `status` show it with the facts behind \
         it, and the agent logs it when it changes",
    ),
    (
        "ctune_last_change_timestamp_seconds",
        "the changes are annotations (from ctune_changes_total), which also say what changed",
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// Runs promtool; success and its output (stdout then stderr). A missing promtool is a
/// failure, not a skip: the rules would go untested.
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Debian's prometheus package, which ships \
                 it (`apt-get install prometheus`; scripts/test --install does)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The alerts in a rules file, each with its rule.
fn alerts(rules: &Value) -> Vec<(String, &Value)> {
    let groups = rules["groups"].as_array().expect("rules: groups");
    assert!(!groups.is_empty(), "rules: no groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules: a group without rules"))
        .filter_map(|r| Some((r["alert"].as_str()?.to_owned(), r)))
        .collect()
}

/// Every `ctune_...` metric name in a string (a PromQL expression, a description).
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("ctune_").map(|i| from + i) {
        let word_start = at == 0 || {
            let c = bytes[at - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |i| at + i);
        if word_start {
            into.insert(text[at..end].to_owned());
        }
        from = end;
    }
}

/// The metric names in every string of a document (`keys`: only under those keys).
fn names_in(v: &Value, keys: Option<&[&str]>, into: &mut BTreeSet<String>) {
    match v {
        Value::String(s) if keys.is_none() => metric_names(s, into),
        Value::Array(items) => items.iter().for_each(|i| names_in(i, keys, into)),
        Value::Object(map) => {
            for (k, v) in map {
                match (keys, v) {
                    (Some(ks), Value::String(s)) if ks.contains(&k.as_str()) => {
                        metric_names(s, into)
                    }
                    _ => names_in(v, keys, into),
                }
            }
        }
        _ => {}
    }
}

/// The metrics docs/metrics.md's table lists: the rows `| `name` | type | ...` of its
/// Series section (the Alerts table after it names alerts, not series).
fn documented() -> BTreeSet<String> {
    let doc = read(METRICS_DOC);
    let series = &doc[doc.find("\n## Series").expect("a Series section")..];
    let series = &series[..series[1..].find("\n## ").map_or(series.len(), |i| i + 1)];
    let names: BTreeSet<String> = series
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_owned())
        .filter(|n| n.starts_with("ctune_"))
        .collect();
    assert!(
        names.len() >= 10,
        "{METRICS_DOC}: the series table is gone or changed shape: {names:?}"
    );
    names
}

#[test]
fn rules_pass_promtool_check() {
    let (ok, out) = promtool(
        &["check", "rules", "--lint=all", "--lint-fatal", RULES],
        &root(),
    );
    assert!(ok, "promtool check rules {RULES}:\n{out}");
}

#[test]
fn rule_unit_tests_pass() {
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS], &root());
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
}

#[test]
fn unit_tests_catch_a_wrong_rule() {
    // The check above can fail: a rule that fires too late breaks its test.
    let dir = tempfile::tempdir().unwrap();
    let rules = read(RULES);
    let broken = rules.replace("ctune_pressure_level > 0", "ctune_pressure_level > 1");
    assert_ne!(rules, broken, "the rule this test breaks has changed");
    std::fs::write(dir.path().join("ctune-alerts.yaml"), broken).unwrap();
    std::fs::write(dir.path().join("ctune-alerts.test.yaml"), read(RULE_TESTS)).unwrap();
    let (ok, out) = promtool(&["test", "rules", "ctune-alerts.test.yaml"], dir.path());
    assert!(
        !ok && out.contains("CtuneTimeoutsLowered"),
        "promtool accepted a broken rule:\n{out}"
    );
}

#[test]
fn every_alert_is_labelled_and_tested_both_ways() {
    let rules = yaml(RULES);
    let tests = yaml(RULE_TESTS);
    let files = tests["rule_files"].as_array().expect("tests: rule_files");
    assert_eq!(
        files,
        &[Value::from("ctune-alerts.yaml")],
        "tests: rule_files"
    );

    // For each alert tested: does some case expect it firing, and some case not?
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"].as_array().expect("tests: tests").iter() {
        for t in case["alert_rule_test"].as_array().into_iter().flatten() {
            let name = t["alertname"].as_str().expect("alert_rule_test: alertname");
            match t["exp_alerts"].as_array() {
                Some(exp) if !exp.is_empty() => fires.insert(name.to_owned()),
                _ => quiet.insert(name.to_owned()),
            };
        }
    }

    let alerts = alerts(&rules);
    assert!(alerts.len() >= 7, "rules: {} alerts", alerts.len());
    let names: BTreeSet<String> = alerts.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), alerts.len(), "rules: an alert name twice");
    for (name, rule) in &alerts {
        assert!(fires.contains(name), "{name}: no test case where it fires");
        assert!(
            quiet.contains(name),
            "{name}: no test case where it stays quiet"
        );
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name}: no {key}");
        }
    }
    // And no test case for an alert that does not exist (a renamed rule).
    let stale: Vec<_> = fires
        .union(&quiet)
        .filter(|n| !names.contains(*n))
        .collect();
    assert!(
        stale.is_empty(),
        "tests for alerts not in {RULES}: {stale:?}"
    );
}

#[test]
fn dashboard_is_grafana_json_with_its_variables() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let netns = var("netns");
    assert_eq!(netns["type"], "query");
    assert!(
        netns["definition"]
            .as_str()
            .is_some_and(|q| q.starts_with("label_values(ctune_nf_conntrack_entries")),
        "$netns: {netns}"
    );

    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "panel id twice"
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        // Every query goes through the chosen data source.
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()), "{title}");
        }
    }
    let annotations = d["annotations"]["list"].as_array().expect("annotations");
    assert!(
        annotations.iter().any(|a| a["expr"]
            .as_str()
            .is_some_and(|e| e.contains("ctune_changes_total"))),
        "no annotation of ctune's changes"
    );
}

#[test]
fn dashboard_and_rules_use_only_documented_metrics() {
    let documented = documented();
    // Every string counts: a description naming a series that does not exist misleads.
    for (what, doc) in [(DASHBOARD, dashboard()), (RULES, yaml(RULES))] {
        let mut used = BTreeSet::new();
        names_in(&doc, None, &mut used);
        assert!(!used.is_empty(), "{what}: no ctune series");
        let unknown: Vec<_> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses series {METRICS_DOC} does not list: {unknown:?}"
        );
    }
}

#[test]
fn every_documented_metric_is_used_or_excused() {
    let documented = documented();
    let mut used = BTreeSet::new();
    // Only queries count here, not prose.
    names_in(
        &dashboard(),
        Some(&["expr", "query", "definition"]),
        &mut used,
    );
    names_in(&yaml(RULES), Some(&["expr"]), &mut used);
    let excused: BTreeSet<String> = NOT_ON_DASHBOARD
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    let missing: Vec<_> = documented
        .iter()
        .filter(|m| !used.contains(*m) && !excused.contains(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "series in {METRICS_DOC} on no panel and in no rule: {missing:?} (add a panel, or \
         say in NOT_ON_DASHBOARD why none is needed)"
    );
    for name in &excused {
        assert!(
            documented.contains(name),
            "NOT_ON_DASHBOARD: {name} is not a series"
        );
        assert!(!used.contains(name), "NOT_ON_DASHBOARD: {name} is used now");
    }
}

#[test]
fn metric_names_are_found_whole() {
    let mut got = BTreeSet::new();
    metric_names(
        "rate(ctune_table_full_drops_total{netns=~\"$netns\"}[5m]) / node_ctune_x + \
         max by (instance) (ctune_ceiling_bytes)",
        &mut got,
    );
    let want: BTreeSet<String> = ["ctune_table_full_drops_total", "ctune_ceiling_bytes"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}
