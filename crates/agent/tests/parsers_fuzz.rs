//! The agent's parsers of files others can edit take any input without panicking: the
//! persisted sysctl.d file (`boot` reads it) and ctune's state (`restore` trusts it only
//! within the bounds). Failures are kept in parsers_fuzz.proptest-regressions.

use ctune::act::{persist, state};
use proptest::prelude::*;

const PERSISTED: &str = "# Written by ctune\nnet.netfilter.nf_conntrack_max = 524288\nnet.netfilter.nf_conntrack_buckets = 131072\n";
const STATE: &str = r#"{"version": 1, "boot_id": "b", "original": {"nf_conntrack_max": 262144}, "policy": {"namespaces": {}, "last_resize": null, "low_since": null, "baseline_max": 262144, "applied": {"nf_conntrack_max": 524288}, "operator_held": []}}"#;

fn mutated(seed: &str) -> impl Strategy<Value = String> + use<> {
    ctune_testkit::mutated(seed.to_string())
}

proptest! {
    #![proptest_config(ctune_testkit::proptest_config(512))]

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
