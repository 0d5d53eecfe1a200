//! The agent's parsers of files others can edit take any input without panicking: the
//! persisted sysctl.d file (`boot` reads it) and ctune's state (`restore` trusts it only
//! within the bounds). Failures are kept in parsers_fuzz.proptest-regressions.

use ctune::act::{persist, state};
use proptest::prelude::*;

const PERSISTED: &str = "# Written by ctune\nnet.netfilter.nf_conntrack_max = 524288\nnet.netfilter.nf_conntrack_buckets = 131072\n";
const STATE: &str = r#"{"version": 1, "boot_id": "b", "original": {"nf_conntrack_max": 262144}, "policy": {"namespaces": {}, "last_resize": null, "low_since": null, "baseline_max": 262144, "applied": {"nf_conntrack_max": 524288}, "operator_held": []}}"#;

fn mutated(seed: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec((0..seed.len(), any::<u8>(), 0u8..3), 0..12).prop_map(move |edits| {
        let mut b = seed.as_bytes().to_vec();
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn persisted_sysctl_file(t in prop_oneof![any::<String>(), mutated(PERSISTED)]) {
        for (key, _) in persist::parse_sysctl_values(&t) {
            prop_assert!(key.starts_with("nf_conntrack_"), "{key}");
        }
    }

    #[test]
    fn state_file(t in prop_oneof![any::<String>(), mutated(STATE)]) {
        let _ = serde_json::from_str::<state::State>(&t);
    }
}
