//! The agent's textfile on a fixture tree: written where configured, valid for
//! `promtool check metrics` (Debian's prometheus package), and naming exactly the series
//! docs/metrics.md lists.

use crate::common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The metric names in docs/metrics.md's table.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/metrics.md"),
    )
    .unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `ctune_"))
        .filter_map(|l| l.split('`').next())
        .map(|n| format!("ctune_{n}"))
        .collect()
}

#[test]
fn the_textfile_passes_promtool_and_matches_the_docs() {
    let tree = Tree::copy("kernel-6.18");
    let out = tree.path().join("prom");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = tree.path().join("ctune.yaml");
    std::fs::write(
        &cfg,
        format!(
            "namespaces:\n  mode: initial\nmetrics:\n  textfile_dir: {}\n",
            out.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(tree.root_args())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let file = out.join("ctune.prom");
    let written = wait_for(Duration::from_secs(10), || file.exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(written, "no {}", file.display());
    let text = std::fs::read_to_string(&file).unwrap();

    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect(
            "promtool not found: install Debian's prometheus package (scripts/test --install does)",
        );
    assert!(
        check.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert_eq!(exported, documented(), "exported series vs docs/metrics.md");
    assert!(
        text.contains("ctune_nf_conntrack_entries{netns=\"init\"} 8000\n"),
        "{text}"
    );
    assert!(text.contains("ctune_build_info{version=\""), "{text}");
}
