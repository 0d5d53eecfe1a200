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
