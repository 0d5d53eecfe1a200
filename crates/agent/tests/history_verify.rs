//! `ctune history` and `ctune verify`, run as the real binary on copies of the 6.18
//! fixture tree: what `apply` records, how a torn or oversized history is handled, that
//! a history other users control is refused, and that `verify` names each difference
//! between what ctune set and what is live or on disk (exit 7), and nothing else.

use crate::common;

use common::Tree;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const MAX: &str = "nf_conntrack_max";
const COUNT: &str = "nf_conntrack_count";
/// The fixture's max.
const K618_MAX: u64 = 262144;
const EXIT_DIFFERS: i32 = 7;

fn sysctl(t: &Tree, key: &str) -> PathBuf {
    t.path().join("proc/sys/net/netfilter").join(key)
}

fn set(t: &Tree, key: &str, value: u64) {
    fs::write(sysctl(t, key), format!("{value}\n")).unwrap();
}

fn get(t: &Tree, key: &str) -> u64 {
    fs::read_to_string(sysctl(t, key))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn history_file(t: &Tree) -> PathBuf {
    t.path().join("state/history.jsonl")
}

fn rotated_file(t: &Tree) -> PathBuf {
    t.path().join("state/history.jsonl.1")
}

fn persisted_file(t: &Tree) -> PathBuf {
    t.path().join("etc/sysctl.d/99-ctune.conf")
}

/// Runs ctune on the tree and requires exit `want`; returns (stdout, stderr).
fn expect(t: &Tree, args: &[&str], want: i32) -> (String, String) {
    let (code, out, err) = t.ctune(args);
    assert_eq!(code, want, "ctune {args:?}:\n{out}{err}");
    (out, err)
}

/// Puts the table at 92% of its max and applies: max grows. Returns the new max.
fn apply_under_pressure(t: &Tree) -> u64 {
    let max = get(t, MAX);
    set(t, COUNT, max * 92 / 100);
    expect(t, &["apply"], 0);
    let raised = get(t, MAX);
    assert!(raised > max, "apply raised max");
    raised
}

fn history_json(t: &Tree, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["history", "--json"];
    args.extend_from_slice(extra);
    let (out, _) = expect(t, &args, 0);
    serde_json::from_str::<Value>(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}"))
        .as_array()
        .expect("a JSON array")
        .clone()
}

/// A whole history line as ctune writes it, for `unix` seconds.
fn old_line(unix: u64) -> String {
    format!(
        r#"{{"time":"x","unix":{unix},"netns":null,"inode":null,"key":"nf_conntrack_max","old":1,"new":2,"reason":"an old change","utilisation":0.5}}"#
    ) + "\n"
}

fn append(path: &Path, text: &str) {
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Every regular file below the tree, with its bytes.
fn snapshot(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            snapshot(&p, files);
        } else {
            files.insert(p.clone(), fs::read(&p).unwrap());
        }
    }
}

#[test]
fn apply_records_the_change_and_history_shows_it() {
    let t = Tree::copy("kernel-6.18");
    let (out, _) = expect(&t, &["history"], 0);
    assert!(out.starts_with("no changes recorded in "), "{out}");
    let raised = apply_under_pressure(&t);

    let (out, err) = expect(&t, &["history"], 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "NETNS", "KEY", "OLD", "NEW", "REASON"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(row[0].ends_with('Z') && row[0].contains('T'), "{out}");
    assert_eq!(
        row[1..5],
        ["[global]", MAX, &K618_MAX.to_string(), &raised.to_string()]
    );
    assert!(lines[1].contains("count 92% of max"), "{out}");
    assert!(err.is_empty(), "{err}");

    let records = history_json(&t, &[]);
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["key"], MAX);
    assert_eq!(r["old"], K618_MAX);
    assert_eq!(r["new"], raised);
    assert!(r["netns"].is_null() && r["inode"].is_null(), "{r}");
    let util = r["utilisation"].as_f64().unwrap();
    assert!((0.91..0.93).contains(&util), "{r}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now - r["unix"].as_u64().unwrap() < 600, "{r}");
    assert!(
        r["reason"].as_str().unwrap().len() > 60,
        "whole in JSON: {r}"
    );

    // --since: a change from 1970 is shown without it, not within the last hour.
    append(&history_file(&t), &old_line(1000));
    assert_eq!(history_json(&t, &[]).len(), 2);
    let recent = history_json(&t, &["--since", "1h"]);
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["new"], raised);
    let (out, _) = expect(&t, &["history", "--since", "1h"], 0);
    assert!(!out.contains("an old change"), "{out}");
    let (out, _) = expect(&t, &["history"], 0);
    assert!(out.contains("an old change"), "{out}");
    let (code, _, err) = t.ctune(&["history", "--since", "soon"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn a_torn_last_line_is_skipped_and_reported() {
    let t = Tree::copy("kernel-6.18");
    apply_under_pressure(&t);
    // A crash halfway through a line: no '\n' at the end.
    append(
        &history_file(&t),
        r#"{"time":"2030-01-01T00:00:00Z","unix":1893456000,"netns":nu"#,
    );
    let (out, err) = expect(&t, &["history"], 0);
    assert_eq!(
        out.lines().count(),
        2,
        "the whole record still shown: {out}"
    );
    assert!(
        err.contains("skipped 1 line(s)") && err.contains("history.jsonl"),
        "{err}"
    );
    let (out, err) = expect(&t, &["history", "--json"], 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(err.contains("skipped 1 line(s)"), "{err}");

    // The next change starts on a line of its own: the torn line does not swallow it.
    apply_under_pressure(&t);
    assert_eq!(history_json(&t, &[]).len(), 2);
    let (_, err) = expect(&t, &["history"], 0);
    assert!(err.contains("skipped 1 line(s)"), "{err}");
}

#[test]
fn history_is_rotated_at_its_bound() {
    let t = Tree::copy("kernel-6.18");
    apply_under_pressure(&t);
    let line = old_line(1000);
    let big = line.repeat((1 << 20) / line.len() + 1);
    fs::write(history_file(&t), &big).unwrap();
    apply_under_pressure(&t);
    assert_eq!(
        fs::read(rotated_file(&t)).unwrap(),
        big.as_bytes(),
        "the full file became history.jsonl.1"
    );
    let current = fs::metadata(history_file(&t)).unwrap().len();
    assert!(current < 4096, "a fresh file: {current} bytes");
    let records = history_json(&t, &[]);
    assert_eq!(
        records.len(),
        big.lines().count() + 1,
        "both files, in order"
    );
    assert_eq!(records.last().unwrap()["new"], get(&t, MAX));

    // Again: the older one is replaced, never a third file; at most ~2 MiB in all.
    fs::write(history_file(&t), &big).unwrap();
    apply_under_pressure(&t);
    let total: u64 = fs::read_dir(t.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("history"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= (2 << 20) + 4096, "{total} bytes");
    assert!(!t.path().join("state/history.jsonl.2").exists());
}

#[test]
fn a_history_others_control_is_refused() {
    let t = Tree::copy("kernel-6.18");
    apply_under_pressure(&t);
    let h = history_file(&t);
    fs::set_permissions(&h, fs::Permissions::from_mode(0o646)).unwrap();
    let (code, _, err) = t.ctune(&["history"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("history.jsonl") && err.contains("chmod go-w"),
        "{err}"
    );
    // Nor is it appended to; the step itself succeeds and says so.
    set(&t, COUNT, get(&t, MAX) * 92 / 100);
    let (out, _) = expect(&t, &["apply"], 0);
    assert!(
        out.contains("note: this step's changes are not in ctune's history")
            && out.contains("chmod go-w"),
        "{out}"
    );

    fs::set_permissions(&h, fs::Permissions::from_mode(0o644)).unwrap();
    nix::unistd::chown(&h, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let (code, _, err) = t.ctune(&["history"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");

    // The rotated file is held to the same rule.
    nix::unistd::chown(&h, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    fs::write(rotated_file(&t), old_line(1)).unwrap();
    fs::set_permissions(rotated_file(&t), fs::Permissions::from_mode(0o666)).unwrap();
    let (code, _, err) = t.ctune(&["history"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("history.jsonl.1"), "{err}");
}

#[test]
fn restore_keeps_the_history() {
    let t = Tree::copy("kernel-6.18");
    let count = get(&t, COUNT);
    apply_under_pressure(&t);
    set(&t, COUNT, count);
    expect(&t, &["restore"], 0);
    assert!(!t.path().join("state/state.json").exists());
    assert_eq!(history_json(&t, &[]).len(), 1);
}

#[test]
fn verify_after_apply_matches_and_a_changed_max_is_named() {
    let t = Tree::copy("kernel-6.18");
    let (out, _) = expect(&t, &["verify"], 0);
    assert!(out.starts_with("nothing to verify"), "{out}");
    let raised = apply_under_pressure(&t);

    let mut before = BTreeMap::new();
    snapshot(t.path(), &mut before);
    let (out, _) = expect(&t, &["verify"], 0);
    let file = persisted_file(&t).display().to_string();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("ok    {MAX} [global]: {raised}"),
            format!("ok    {file}"),
            "all 2 checks match what ctune set".to_string(),
        ],
    );
    let mut after = BTreeMap::new();
    snapshot(t.path(), &mut after);
    assert!(before == after, "verify wrote something");

    set(&t, MAX, 100000);
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.lines()
            .any(|l| l == format!("DIFF  {MAX} [global]: expected {raised}, found 100000")),
        "{out}"
    );
    assert!(out.contains(&format!("ok    {file}")), "{out}");
    assert!(
        out.ends_with("1 of 2 checks differ from what ctune set\n"),
        "{out}"
    );

    let (out, _) = expect(&t, &["verify", "--json"], EXIT_DIFFERS);
    let checks: Value = serde_json::from_str(&out).unwrap();
    let checks = checks.as_array().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["result"], "diff");
    assert_eq!(checks[0]["kind"], "global");
    assert_eq!(checks[0]["subject"], MAX);
    assert_eq!(checks[0]["expected"], raised.to_string());
    assert_eq!(checks[0]["found"], "100000");
    assert_eq!(checks[1]["result"], "ok");
    assert_eq!(checks[1]["kind"], "file");

    // Read-only: --dry-run goes with it, --sample does not.
    expect(&t, &["--dry-run", "verify"], EXIT_DIFFERS);
    expect(&t, &["verify", "--sample", "1s"], 2);
}

#[test]
fn verify_names_an_edited_or_missing_persisted_file() {
    let t = Tree::copy("kernel-6.18");
    let raised = apply_under_pressure(&t);
    let path = persisted_file(&t);
    let file = path.display().to_string();
    let text = fs::read_to_string(&path).unwrap();
    let line = format!("net.netfilter.{MAX} = {raised}");
    assert!(text.contains(&line), "{text}");

    fs::write(
        &path,
        text.replace(&line, &format!("net.netfilter.{MAX} = 70000")),
    )
    .unwrap();
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "DIFF  {file}: expected {line}, found net.netfilter.{MAX} = 70000"
        ))),
        "{out}"
    );
    assert!(
        out.contains(&format!("ok    {MAX} [global]: {raised}")),
        "{out}"
    );

    fs::write(&path, format!("{line}\n")).unwrap();
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.contains(&format!(
            "DIFF  {file}: expected ctune's file, found a file without ctune's header"
        )),
        "{out}"
    );

    fs::remove_file(&path).unwrap();
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.contains(&format!(
            "DIFF  {file}: expected ctune's file, found missing"
        )),
        "{out}"
    );

    // apply puts it back; verify agrees.
    expect(&t, &["apply"], 0);
    expect(&t, &["verify"], 0);
}

#[test]
fn an_operator_held_key_is_not_a_difference() {
    let t = Tree::copy("kernel-6.18");
    let raised = apply_under_pressure(&t);
    // The admin's value: the count is 80% of it, above the 75% watermark but not
    // critical, so ctune adopts it.
    let admin = get(&t, COUNT) * 100 / 80;
    set(&t, MAX, admin);
    // Until a step has seen it, it differs from what ctune set.
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.contains(&format!("expected {raised}, found {admin}")),
        "{out}"
    );
    let (out, _) = expect(&t, &["apply"], 0);
    assert!(out.contains("someone else changed it"), "{out}");
    assert_eq!(get(&t, MAX), admin);
    let (out, _) = expect(&t, &["verify"], 0);
    assert!(
        out.lines().any(|l| l.starts_with(&format!(
            "held  {MAX} [global]: {admin} (held by the operator"
        ))),
        "{out}"
    );
    assert!(
        out.ends_with("all 2 checks match what ctune set\n"),
        "{out}"
    );
    let (out, _) = expect(&t, &["verify", "--json"], 0);
    let checks: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(checks[0]["result"], "held");
}

#[test]
fn verify_checks_the_timeouts_ctune_lowered() {
    let t = Tree::copy("kernel-6.18");
    // At the configured cap and 98% full: max cannot grow, so the timeouts are lowered.
    let cap = 300000;
    fs::create_dir_all(t.path().join("etc/ctune")).unwrap();
    fs::write(
        t.path().join("etc/ctune/ctune.yaml"),
        format!("ceiling:\n  max_cap: {cap}\n"),
    )
    .unwrap();
    set(&t, MAX, cap);
    set(&t, COUNT, cap * 98 / 100);
    let (out, _) = expect(&t, &["apply"], 0);
    let udp = "nf_conntrack_udp_timeout";
    assert!(
        out.contains(&format!("changed {udp} [netns init]")),
        "{out}"
    );
    let lowered = get(&t, udp);
    let (out, _) = expect(&t, &["verify"], 0);
    assert!(
        out.lines()
            .any(|l| l == format!("ok    {udp} [netns init]: {lowered}")),
        "{out}"
    );
    assert!(
        history_json(&t, &[])
            .iter()
            .any(|r| r["key"] == udp && r["netns"] == "init" && r["inode"].is_u64()),
        "timeouts are recorded with their namespace"
    );

    set(&t, udp, 77);
    let (out, _) = expect(&t, &["verify"], EXIT_DIFFERS);
    assert!(
        out.lines()
            .any(|l| l == format!("DIFF  {udp} [netns init]: expected {lowered}, found 77")),
        "{out}"
    );
    // A step adopts the operator's value for this episode: held, not a difference.
    expect(&t, &["apply"], 0);
    let (out, _) = expect(&t, &["verify"], 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("held  {udp} [netns init]: 77"))),
        "{out}"
    );
}
