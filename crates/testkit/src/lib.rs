//! What the tests of ctune's crates share, so that a golden file is compared, blessed and
//! shown the same way everywhere, and every parser is fuzzed with the same mutations.
//! A dev-dependency of the three wings; it depends on none of them.

use proptest::prelude::*;
use std::path::Path;

/// The environment variable that rewrites golden files instead of comparing them.
pub const BLESS: &str = "CTUNE_BLESS";

/// Compares `actual` with the golden file `dir/name`, or writes it under `CTUNE_BLESS=1`.
/// A difference fails with a unified diff of its first `max_lines` lines (the large JSON
/// files would otherwise flood the log), naming the file and how to accept it.
pub fn assert_golden(dir: &Path, name: &str, actual: &str, max_lines: usize) {
    let path = dir.join(name);
    if std::env::var_os(BLESS).is_some() {
        std::fs::write(&path, actual)
            .unwrap_or_else(|e| panic!("{}: {e} (blessing it)", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (record it with {BLESS}=1)", path.display()));
    if let Some(diff) = difference(&expected, actual, max_lines) {
        panic!(
            "{} differs from this build's output (review, then {BLESS}=1 to accept):\n{diff}",
            path.display()
        );
    }
}

/// The unified diff from `expected` to `actual`, cut to `max_lines` lines; None when equal.
pub fn difference(expected: &str, actual: &str, max_lines: usize) -> Option<String> {
    if expected == actual {
        return None;
    }
    let diff = similar::TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .to_string();
    let total = diff.lines().count();
    let mut shown: String = diff
        .lines()
        .take(max_lines)
        .map(|l| format!("{l}\n"))
        .collect();
    if total > max_lines {
        shown.push_str(&format!("... {} more lines of diff\n", total - max_lines));
    }
    Some(shown)
}

/// A proptest config of `cases` cases whose failures are kept beside the test's source,
/// in `<file>.proptest-regressions`, and replayed first on every run. proptest's default
/// would put them under `proptest-regressions/` beside the test crate's `main.rs`, away
/// from the corpora the repository keeps, which it would then no longer read.
pub fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Text a parser of untrusted input must survive: anything, or the real `seed` with a few
/// bytes replaced, inserted or cut (which reaches far deeper than random text does).
pub fn text(seed: &str) -> impl Strategy<Value = String> + use<> {
    prop_oneof![any::<String>(), mutated(seed.to_string())]
}

/// `seed` with up to twelve bytes replaced, inserted or cut (at a place, after it).
pub fn mutated(seed: String) -> impl Strategy<Value = String> {
    let len = seed.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 0..12).prop_map(move |edits| {
        let mut b = seed.clone().into_bytes();
        for (at, byte, kind) in edits {
            let at = at.min(b.len());
            match kind {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                _ => b.truncate(at),
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn equal_texts_have_no_difference_and_a_long_one_is_cut() {
        assert_eq!(difference("a\n", "a\n", 10), None);
        let expected: String = (0..100).map(|i| format!("{i}\n")).collect();
        let actual: String = (0..100).map(|i| format!("{}\n", i * 2)).collect();
        let d = difference(&expected, &actual, 20).unwrap();
        assert_eq!(d.lines().count(), 21, "{d}");
        assert!(d.ends_with("more lines of diff\n"), "{d}");
    }

    #[test]
    fn failures_are_kept_beside_the_source() {
        let cfg = proptest_config(7);
        assert_eq!(cfg.cases, 7);
        let kept = format!("{:?}", cfg.failure_persistence);
        assert!(
            kept.contains("WithSource(\"proptest-regressions\")"),
            "{kept}"
        );
    }

    #[test]
    fn mutations_stay_near_their_seed() {
        let seed = "net.netfilter.nf_conntrack_max = 524288\n".to_string();
        let mut runner = TestRunner::deterministic();
        let strategy = mutated(seed.clone());
        let mut changed = 0;
        for _ in 0..200 {
            let t = strategy.new_tree(&mut runner).unwrap().current();
            // At most twelve edits, each adding at most one byte (two once lossily
            // replaced): never far longer than the seed.
            assert!(t.len() <= seed.len() + 12 * 3, "{t:?}");
            changed += usize::from(t != seed);
        }
        assert!(
            changed > 100,
            "only {changed} of 200 mutations changed the seed"
        );
    }
}
