//! Golden outputs of the simulator: `ctune-lab simulate` on every scenario in
//! scenarios/, as JSON and as the Markdown table. The JSON's timelines (tens of
//! thousands of samples per policy) are kept as their length, a 64-bit FNV-1a hash of
//! their compact JSON and every 100th sample: any change to any sample still shows (the
//! hash), the kept samples show where, and the files stay small enough for the
//! repository. The
//! simulator runs the core's decision, so any change to a rule shows up here as a diff
//! to review; when it is intended, rerun with `CTUNE_BLESS=1` and commit tests/golden/.

use std::path::Path;
use std::process::Command;

fn simulate(scenario: &Path, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctune-lab"));
    cmd.arg("simulate").arg(scenario);
    cmd.args(if json {
        ["--format", "json"]
    } else {
        ["--format", "md"]
    });
    let out = cmd.output().expect("run ctune-lab");
    assert!(
        out.status.success(),
        "{}: {}",
        scenario.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Compares with tests/golden/NAME, or writes it under `CTUNE_BLESS=1`. Only the first
/// 80 lines of a diff are shown: the JSON files are large.
fn assert_golden(name: &str, actual: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    ctune_testkit::assert_golden(&dir, name, actual, 80);
}

/// 64-bit FNV-1a: enough to tell two timelines apart, no dependency.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The report with each run's samples condensed (see the module's comment).
fn condensed(json: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).expect("simulate --json");
    for run in v["runs"].as_array_mut().expect("runs") {
        let samples = run["samples"].take();
        let list = samples.as_array().cloned().unwrap_or_default();
        let compact = serde_json::to_string(&samples).unwrap();
        let mut kept: Vec<serde_json::Value> = list.iter().step_by(100).cloned().collect();
        if list.len() % 100 != 1 {
            kept.extend(list.last().cloned());
        }
        run["samples"] = serde_json::json!({
            "count": list.len(),
            "fnv64": format!("{:016x}", fnv64(compact.as_bytes())),
            "every_100th_and_last": kept,
        });
    }
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

#[test]
fn every_scenario_matches_its_golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut scenarios: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    scenarios.sort();
    assert!(!scenarios.is_empty(), "no scenarios in {}", dir.display());
    for sc in &scenarios {
        let stem = sc.file_stem().unwrap().to_string_lossy();
        let json = simulate(sc, true);
        assert!(
            json.starts_with("{\n  \"schema\": "),
            "{stem}: schema is not first"
        );
        assert_golden(&format!("simulate-{stem}.json"), &condensed(&json));
        assert_golden(&format!("simulate-{stem}.md"), &simulate(sc, false));
    }
}
