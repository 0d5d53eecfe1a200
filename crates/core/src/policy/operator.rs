//! Phase 1 of a decision: did someone else change a global value ctune set? An admin,
//! kube-proxy or tuned may write `nf_conntrack_max` or the hash; with
//! `agent.respect_operator` their value is adopted and left alone until it is unsafe.

use crate::plan::{ADOPTED, Why};
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
            draft.explain(Why::Adopted, format!(
                "{key} is {live} but ctune set {set}: {ADOPTED}; adopting {live} as the operator's value and leaving it alone until it becomes unsafe"
            ));
        } else {
            draft.explain(Why::Adopted, format!(
                "{key} is {live} but ctune set {set}: {ADOPTED}; agent.respect_operator is off, so ctune's plan applies"
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
        assert!(d.explanations[0].kind == Why::Adopted);
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
        assert!(
            d.explanations[0].kind == Why::Adopted
                && d.explanations[0].text.contains("respect_operator is off")
        );
    }

    /// kube-proxy at its start (`pkg/proxy/conntrack/sysctls.go`, Kubernetes 1.36 with
    /// its defaults on 2 CPUs): max, then the hash when it is under max / 4, then the
    /// established and CLOSE_WAIT timeouts of its namespace, all between two steps. ctune
    /// had raised max and the hash and, at the ceiling, lowered the established timeout.
    #[test]
    fn kube_proxy_rewriting_max_hash_and_a_lowered_timeout_is_adopted_once_and_held() {
        use crate::policy::decide;
        use std::time::Duration;
        const EST: &str = tunables::ESTABLISHED;
        const CLOSE_WAIT: &str = "nf_conntrack_tcp_timeout_close_wait";
        let mut cfg = Config::default();
        cfg.ceiling.max_cap = 32_768;
        let with_timeouts = |max: u64, buckets: u64, est: u64, close_wait: u64| {
            let mut o = obs(max, &[32_000]);
            o.global.buckets = Some(buckets);
            o.global.hashsize = Some(buckets);
            o.namespaces[0].timeouts = [(EST, est), (CLOSE_WAIT, close_wait)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            o
        };
        // ctune's step at the ceiling: the namespace is critical, established lowered.
        let mut prev = PolicyState::default();
        prev.applied.insert(tunables::MAX.into(), 32_768);
        prev.applied.insert(tunables::BUCKETS.into(), 8_192);
        let before = with_timeouts(32_768, 8_192, 432_000, 60);
        let (p1, s1) = decide(&before, &cfg, &prev, Duration::from_secs(1));
        assert!(
            p1.changes.iter().any(|c| c.key == EST && c.new == 54_000),
            "{p1:?}"
        );
        assert_eq!(p1.adoptions().count(), 0, "{:?}", p1.explanations);

        // kube-proxy: max 131072 (32768 x 2 CPUs, floored at min 131072), hashsize
        // 131072 / 4, established 24 h, CLOSE_WAIT 1 h.
        let after = with_timeouts(131_072, 32_768, 86_400, 3_600);
        let (p2, s2) = decide(&after, &cfg, &s1, Duration::from_secs(2));
        let touched: Vec<_> = p2
            .changes
            .iter()
            .filter(|c| {
                [tunables::MAX, tunables::BUCKETS, EST, CLOSE_WAIT].contains(&c.key.as_str())
            })
            .collect();
        assert!(touched.is_empty(), "written back: {touched:?}");
        assert!(s2.operator_held.contains(tunables::MAX));
        assert!(s2.operator_held.contains(tunables::BUCKETS));
        assert_eq!(s2.baseline_max, Some(131_072));
        let ns = &s2.namespaces[&1];
        assert!(ns.held.contains(EST), "{ns:?}");
        assert!(!ns.lowered.contains_key(EST), "{ns:?}");
        let adoptions: Vec<_> = p2.adoptions().collect();
        assert_eq!(adoptions.len(), 4, "{adoptions:?}");
        assert!(adoptions[0].starts_with("nf_conntrack_max is 131072 but ctune set 32768"));
        assert!(adoptions[1].starts_with("nf_conntrack_buckets is 32768 but ctune set 8192"));
        // CLOSE_WAIT too: ctune had lowered it to its 30 s floor in the same episode.
        assert!(adoptions[2].starts_with(&format!("{CLOSE_WAIT} in ns0 is 1h but ctune set 30s")));
        assert!(adoptions[3].starts_with(&format!("{EST} in ns0 is 1day but ctune set 15h")));
        assert!(ns.held.contains(CLOSE_WAIT), "{ns:?}");

        // The next step, still under pressure: nothing written back, nothing adopted
        // again.
        let (p3, s3) = decide(&after, &cfg, &s2, Duration::from_secs(3));
        assert!(p3.changes.is_empty(), "{:?}", p3.changes);
        assert_eq!(p3.adoptions().count(), 0, "{:?}", p3.explanations);
        assert!(s3.namespaces[&1].held.contains(EST));
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
