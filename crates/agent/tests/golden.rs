//! Golden outputs: `ctune --dry-run` and `ctune status`, text and JSON, on copies of the
//! fixture kernel trees in four states (two kernels, a table near full, a 256 MiB host
//! with the table near full). Any change to the decision or its rendering shows up here
//! as a diff to review; when it is intended, rerun with `CTUNE_BLESS=1` and commit the
//! new files in tests/golden/ with the change.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A fixture tree in one of the recorded states.
fn tree(variant: &str) -> common::Tree {
    let kernel = if variant == "k419" {
        "kernel-4.19"
    } else {
        "kernel-6.18"
    };
    let t = common::Tree::copy(kernel);
    let netfilter = t.path().join("proc/sys/net/netfilter");
    if variant.starts_with("k618-") {
        std::fs::write(netfilter.join("nf_conntrack_count"), "250000\n").unwrap();
    }
    if variant == "k618-small" {
        let meminfo = t.path().join("proc/meminfo");
        let text = std::fs::read_to_string(&meminfo).unwrap();
        let text: String = text
            .lines()
            .map(|l| match l.split(':').next() {
                Some("MemTotal") => "MemTotal:         262144 kB".to_string(),
                Some("MemAvailable") => "MemAvailable:     131072 kB".to_string(),
                _ => l.to_string(),
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(&meminfo, text).unwrap();
    }
    t
}

/// Runs ctune on the tree; the temporary root and the fixture's namespace inode (a
/// temporary file's) become placeholders so the output is the same on every machine.
fn output(t: &common::Tree, args: &[&str]) -> String {
    let (_, stdout, stderr) = t.ctune(args);
    let text = stdout + &stderr;
    let inode = std::fs::metadata(t.path().join("proc/self/ns/net"))
        .unwrap()
        .ino()
        .to_string();
    let text = text
        .replace(&t.path().display().to_string(), "<root>")
        .replace(&inode, "<inode>");
    // The sample's measured length varies by milliseconds with the machine's load.
    let text = mask_after(&text, "\"sample_secs\": ", ',');
    let text = mask_after(&text, "nothing dropped in the last ", ' ');
    mask_after(&text, "per second over a ", ' ')
}

/// Replaces what follows each `marker` up to `end` with `<sample>`.
fn mask_after(text: &str, marker: &str, end: char) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        let after = &rest[i + marker.len()..];
        let len = after.find(end).unwrap_or(after.len());
        out.push_str(&rest[..i + marker.len()]);
        out.push_str("<sample>");
        rest = &after[len..];
    }
    out + rest
}

/// Compares with tests/golden/NAME, or writes it under `CTUNE_BLESS=1`: the whole diff
/// (these files are small).
fn assert_golden(name: &str, actual: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    ctune_testkit::assert_golden(&dir, name, actual, usize::MAX);
}

#[test]
fn plan_and_status_match_the_golden_files() {
    for variant in ["k618", "k419", "k618-full", "k618-small"] {
        let t = tree(variant);
        for (args, suffix) in [
            (&["plan"][..], "plan.txt"),
            (&["plan", "--json"][..], "plan.json"),
            (&["status"][..], "status.txt"),
            (&["status", "--json"][..], "status.json"),
        ] {
            assert_golden(&format!("{variant}-{suffix}"), &output(&t, args));
        }
    }
}
