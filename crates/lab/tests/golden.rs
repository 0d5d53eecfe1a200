//! Golden outputs of the simulator: `ctune-lab simulate` on every scenario in
//! scenarios/, as JSON (every sample of every policy) and as the Markdown table. The
//! simulator runs the core's decision, so any change to a rule shows up here as a diff
//! to review; when it is intended, rerun with `CTUNE_BLESS=1` and commit tests/golden/.

use std::path::Path;
use std::process::Command;

fn simulate(scenario: &Path, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ctune-lab"));
    cmd.arg("simulate").arg(scenario);
    if json {
        cmd.arg("--json");
    }
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
/// differing lines are shown: the JSON files are large.
fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("CTUNE_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (record it with CTUNE_BLESS=1)", path.display()));
    if expected != actual {
        let diff = similar::TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .context_radius(2)
            .to_string();
        let head: String = diff.lines().take(80).map(|l| format!("{l}\n")).collect();
        panic!(
            "{} differs from this build's output (review, then CTUNE_BLESS=1 to accept):\n{head}",
            path.display()
        );
    }
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
        assert_golden(&format!("simulate-{stem}.json"), &simulate(sc, true));
        assert_golden(&format!("simulate-{stem}.md"), &simulate(sc, false));
    }
}
