//! docs/json.md is the field list of every `--json` output: each command runs on fixture
//! kernel trees (a table near full on a large host, and on a 256 MiB host where timeouts
//! are lowered), and every field path it prints must be listed in the command's table
//! with its JSON type, and every path listed must be printed by some run. The simulator's
//! output is read from the lab's golden files, which its own test keeps equal to what
//! `ctune-lab simulate --json` prints, with each run's samples condensed to a hash and
//! every 100th sample (uncondensed here: the kept samples stand for the whole list).
//!
//! Paths: `a.b` (field b of object a), `a[].b` (of every element of array a), `a.<key>`
//! (every value of a map whose keys are data). An array's elements are not listed on
//! their own: `a` is `array of objects` and its elements' fields are `a[].x`.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One row of a command's table: the path's segments and the JSON types allowed.
struct Field {
    path: String,
    types: String,
}

/// The tables of docs/json.md, by the command in their heading (`ctune plan --json`).
fn documented() -> BTreeMap<String, Vec<Field>> {
    let text = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let mut out: BTreeMap<String, Vec<Field>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h
                .strip_prefix('`')
                .and_then(|h| h.strip_suffix('`'))
                .map(str::to_string);
            continue;
        }
        let (Some(cmd), Some(row)) = (&section, line.strip_prefix("| `")) else {
            continue;
        };
        let cells: Vec<&str> = row.split(" | ").collect();
        let path = cells[0].trim_end_matches('`').to_string();
        assert!(
            cells.len() >= 4,
            "docs/json.md: a row needs 4 cells: {line}"
        );
        let fields = out.entry(cmd.clone()).or_default();
        assert!(
            fields.iter().all(|f| f.path != path),
            "docs/json.md: {path} listed twice under {cmd}"
        );
        fields.push(Field {
            path,
            types: cells[1].to_string(),
        });
    }
    out
}

/// The JSON type of a value as the docs name it.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field path in `v` with the types seen there.
fn paths(v: &Value, prefix: &str, out: &mut BTreeMap<String, BTreeSet<&'static str>>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.entry(p.clone()).or_default().insert(kind(x));
                paths(x, &p, out);
            }
        }
        Value::Array(items) => {
            for x in items {
                paths(x, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Whether a documented path (with `<key>` segments) names a printed one.
fn matches(doc: &str, path: &str) -> bool {
    let (d, p): (Vec<&str>, Vec<&str>) = (doc.split('.').collect(), path.split('.').collect());
    d.len() == p.len()
        && d.iter()
            .zip(&p)
            .all(|(d, p)| d == p || (d.starts_with('<') && d.ends_with('>') && !p.ends_with("[]")))
}

/// Checks the outputs of one command against its table.
fn check(command: &str, outputs: &[Value]) {
    let docs = documented();
    let fields = docs
        .get(command)
        .unwrap_or_else(|| panic!("docs/json.md has no section `{command}`"));
    let mut printed = BTreeMap::new();
    for v in outputs {
        assert_eq!(
            v.get("schema").and_then(Value::as_u64),
            Some(u64::from(ctune::report::SCHEMA)),
            "{command}: no schema {}",
            ctune::report::SCHEMA
        );
        paths(v, "", &mut printed);
    }
    let mut problems = Vec::new();
    for (path, kinds) in &printed {
        match fields.iter().find(|f| matches(&f.path, path)) {
            None => problems.push(format!("printed, not documented: {path}")),
            Some(f) => {
                for k in kinds {
                    if !f.types.contains(k) {
                        problems.push(format!("{path} is {k}, documented as \"{}\"", f.types));
                    }
                }
            }
        }
    }
    for f in fields {
        if !printed.keys().any(|p| matches(&f.path, p)) {
            problems.push(format!("documented, never printed: {}", f.path));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/json.md `{command}` and the output disagree:\n  {}",
        problems.join("\n  ")
    );
}

/// Parses a command's stdout: one JSON object whose first field is `schema`.
fn json(t: &common::Tree, args: &[&str], codes: &[i32]) -> Value {
    let (code, out, err) = t.ctune(args);
    assert!(codes.contains(&code), "ctune {args:?} exited {code}: {err}");
    assert!(
        out.starts_with("{\n  \"schema\": "),
        "ctune {args:?}: schema is not the first field:\n{}",
        &out[..200.min(out.len())]
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctune {args:?}: {e}\n{out}"))
}

/// The 6.18 fixture with its table at 250000 of 262144: max grows (a global change, a
/// file to write). `small` makes it a 256 MiB host, where the table is over its budget
/// and timeouts are lowered in the namespace instead.
fn tree(small: bool) -> common::Tree {
    let t = common::Tree::copy("kernel-6.18");
    let netfilter = t.path().join("proc/sys/net/netfilter");
    std::fs::write(netfilter.join("nf_conntrack_count"), "250000\n").unwrap();
    if small {
        let meminfo = t.path().join("proc/meminfo");
        let text: String = std::fs::read_to_string(&meminfo)
            .unwrap()
            .lines()
            .map(|l| match l.split(':').next() {
                Some("MemTotal") => "MemTotal:         262144 kB\n".to_string(),
                Some("MemAvailable") => "MemAvailable:     131072 kB\n".to_string(),
                _ => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&meminfo, text).unwrap();
    }
    seed_sample(&t);
    t
}

/// A composition sample of the fixture's own namespace in ctune's state, taken now: what
/// the agent leaves while a namespace is under pressure, and what `plan` and `status`
/// show and weigh timeouts by.
fn seed_sample(t: &common::Tree) {
    use ctune::act::state;
    let roots = ctune::sense::roots::Roots::all_under(t.path());
    let own = ctune_core::config::Namespaces {
        mode: ctune_core::config::NamespaceMode::Initial,
        names: Vec::new(),
    };
    let inode = ctune::sense::netns::discover(&roots, &own)
        .own_inode
        .expect("the fixture's own namespace");
    let mut st = state::load(&roots).unwrap();
    let by_key = [
        ("nf_conntrack_udp_timeout", 200_000),
        ("nf_conntrack_tcp_timeout_established", 40_000),
        ("nf_conntrack_generic_timeout", 10_000),
    ];
    st.compositions.insert(
        inode,
        ctune_core::model::Governed {
            entries: 250_000,
            by_key: by_key.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            partial: false,
            taken_at: state::now(),
            age_secs: 0,
        },
    );
    state::save(&roots, &st).unwrap();
}

#[test]
fn plan_json_is_docs_json_md() {
    let mut outputs: Vec<Value> = [false, true]
        .into_iter()
        .map(|small| json(&tree(small), &["plan", "--json"], &[0]))
        .collect();
    outputs.push(live_plan_with_another_namespace());
    check("ctune plan --json", &outputs);
}

/// The dry run on the live kernel watching a namespace of the test's: its timeouts are
/// left unread (a fixture tree has no namespace ctune can enter).
fn live_plan_with_another_namespace() -> Value {
    common::require_root("plan_json_is_docs_json_md");
    let ns = common::TestNetns::new("jsondoc");
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::named_config(dir.path(), &[&ns.name]);
    let state = dir.path().join("state");
    let args = ["--dry-run", "--json", "--sample", "0", "--config"];
    let (code, out, err) = common::ctune(
        &[
            &args[..],
            &[
                cfg.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let unread = v["observation"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["name"] == ns.name.as_str() && n["timeouts_unread"] == true);
    assert!(unread, "{out}");
    v
}

#[test]
fn apply_and_status_json_are_docs_json_md() {
    let (mut applied, mut status) = (Vec::new(), Vec::new());
    for small in [false, true] {
        let t = tree(small);
        applied.push(json(&t, &["apply", "--json"], &[0]));
        // After the apply: the global value it changed, the timeouts it lowered, and
        // rates over a short sample. Over a level: exit 5.
        status.push(json(
            &t,
            &["status", "--json", "--sample", "100ms"],
            &[0, 5, 6],
        ));
    }
    check("ctune apply --json", &applied);
    check("ctune status --json", &status);
}

#[test]
fn simulate_json_is_docs_json_md() {
    let dir = repo().join("crates/lab/tests/golden");
    let mut outputs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            // (Condensing sorts the keys: the lab's golden test checks that `schema`
            // comes first in what the simulator prints.)
            let text = std::fs::read_to_string(&path).unwrap();
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            for run in v["runs"].as_array_mut().into_iter().flatten() {
                let kept = run["samples"]["every_100th_and_last"].take();
                run["samples"] = kept;
            }
            outputs.push(v);
        }
    }
    assert!(!outputs.is_empty(), "no golden JSON in {}", dir.display());
    check("ctune-lab simulate --json", &outputs);
}

#[test]
fn the_docs_state_this_schema_version() {
    let text = std::fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let schema = ctune::report::SCHEMA;
    assert!(
        text.contains(&format!("`\"schema\": {schema}`")),
        "docs/json.md does not say \"schema\": {schema}"
    );
    for (command, fields) in documented() {
        let row = fields.iter().find(|f| f.path == "schema");
        assert!(row.is_some(), "{command}: no schema row");
    }
}

/// `ctune top --json` on a live namespace (root): UDP flows and one TCP connection, so
/// every list has rows; 10 000 flows from one source, so the table is large enough for
/// advice (`source_limit`, `remove_tracking`) and its fields are printed.
#[test]
fn top_json_is_docs_json_md() {
    common::require_root("top_json_is_docs_json_md");
    let ns = common::TestNetns::new("topdoc");
    assert_eq!(ns.udp_flows(10_000), 0);
    let _conn = ns.run_in(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:8080").unwrap();
        let c = std::net::TcpStream::connect("127.0.0.1:8080").unwrap();
        (c, l.accept().unwrap().0)
    });
    // Read whole, and as a sample (the first 5000 entries), which adds `sample`.
    let read = |extra: &[&str]| {
        let mut args = vec!["top", "--json", "--top", "3", "--netns", &ns.name];
        args.extend_from_slice(extra);
        let (code, text, err) = common::ctune(&args);
        assert_eq!(code, 0, "{err}");
        assert!(text.starts_with("{\n  \"schema\": "), "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    check(
        "ctune top --json",
        &[read(&[]), read(&["--max-entries", "5000"])],
    );
}
