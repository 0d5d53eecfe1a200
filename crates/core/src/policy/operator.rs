//! Phase 1 of a decision: did someone else change a global value ctune set? An admin,
//! kube-proxy or tuned may write `nf_conntrack_max` or the hash; with
//! `agent.respect_operator` their value is adopted and left alone until it is unsafe.

use crate::tunables;

use super::{Draft, Inputs};

/// Compares the live global values with the ones ctune last set, and adopts the
/// operator's where they differ.
pub(super) fn adopt_changes(input: &Inputs, draft: &mut Draft) {
    let (obs, prev) = (input.obs, input.prev);
    draft.next.applied = prev.applied.clone();
    draft.next.operator_held = prev.operator_held.clone();
    for (key, live) in [
        (tunables::MAX, Some(obs.global.max)),
        (tunables::BUCKETS, obs.global.buckets),
    ] {
        let (Some(set), Some(live)) = (prev.applied.get(key).copied(), live) else {
            continue;
        };
        if set == live {
            continue;
        }
        draft.next.applied.remove(key);
        if key == tunables::MAX {
            draft.next.baseline_max = Some(live);
        }
        if input.cfg.agent.respect_operator {
            draft.next.operator_held.insert(key.to_string());
            draft.explanations.push(format!(
                "{key} is {live} but ctune set {set}: someone else changed it; adopting {live} as the operator's value and leaving it alone until it becomes unsafe"
            ));
        } else {
            draft.explanations.push(format!(
                "{key} is {live} but ctune set {set}: someone else changed it; agent.respect_operator is off, so ctune's plan applies"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{draft, inputs, obs};
    use super::*;
    use crate::config::Config;
    use crate::policy::PolicyState;

    #[test]
    fn a_value_someone_else_set_is_adopted_and_held() {
        let cfg = Config::default();
        let mut prev = PolicyState::default();
        prev.applied.insert(tunables::MAX.into(), 200_000);
        let o = obs(100_000, &[10]);
        let mut d = draft();
        adopt_changes(&inputs(&o, &cfg, &prev, 1), &mut d);
        assert!(d.next.operator_held.contains(tunables::MAX));
        assert!(!d.next.applied.contains_key(tunables::MAX));
        assert_eq!(d.next.baseline_max, Some(100_000));
        assert!(d.explanations[0].contains("someone else changed it"));
    }

    #[test]
    fn without_respect_ctune_plans_over_it() {
        let mut cfg = Config::default();
        cfg.agent.respect_operator = false;
        let mut prev = PolicyState::default();
        prev.applied.insert(tunables::MAX.into(), 200_000);
        let o = obs(100_000, &[10]);
        let mut d = draft();
        adopt_changes(&inputs(&o, &cfg, &prev, 1), &mut d);
        assert!(d.next.operator_held.is_empty());
        assert!(d.explanations[0].contains("respect_operator is off"));
    }

    #[test]
    fn its_own_value_changes_nothing() {
        let cfg = Config::default();
        let mut prev = PolicyState::default();
        prev.applied.insert(tunables::MAX.into(), 100_000);
        let o = obs(100_000, &[10]);
        let mut d = draft();
        adopt_changes(&inputs(&o, &cfg, &prev, 1), &mut d);
        assert!(d.explanations.is_empty() && d.next.operator_held.is_empty());
    }
}
