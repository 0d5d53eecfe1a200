//! Phase 4 of a decision: the hash follows max / ratio. It only grows, in one step to
//! the target, when it is more than `hash.tolerance` too small, and at most once per
//! `hash.min_interval` (a resize stalls every insert), unless a full table would average
//! chains long enough to refuse inserts.

use std::time::Duration;

use crate::ceiling::Ceiling;
use crate::plan::{Change, Explanation, Target, Why};
use crate::tunables;
use crate::units::{fmt_count, fmt_pct};

use super::signals::Signals;
use super::{Draft, Inputs};

/// Plans the hash size for the max in force after the plan.
pub(super) fn decide(
    input: &Inputs,
    sig: &Signals,
    ceiling: &Ceiling,
    new_max: u64,
    draft: &mut Draft,
) {
    let cfg = input.cfg;
    let ratio = u64::from(cfg.hash.ratio.max(1));
    // An operator's max above the ceiling gets the ceiling's hash, not a bigger one.
    let desired = tunables::buckets_for(
        new_max.min(ceiling.value),
        cfg.hash.ratio,
        input.obs.host.page_size,
    );
    let chains_refused = sig.rises.iter().any(|r| r.chain.is_some_and(|c| c > 0));
    let buckets_held = draft.next.operator_held.contains(tunables::BUCKETS);
    let note = match input.obs.global.buckets {
        _ if !input.obs.global.write_access.root_could => None,
        _ if input.obs.global.per_netns_max => Some(
            "this namespace has its own nf_conntrack_max (a per-namespace max), but the hash is the host's: not planned here".into(),
        ),
        _ if sig.unlimited => Some(
            "nf_conntrack_max is 0 (unlimited, no early drop): ctune sets no limit and no hash size for an unlimited table".into(),
        ),
        Some(cur) if buckets_held && !chains_refused => (cur < desired).then(|| format!(
            "hash {cur} was set by someone else: respected until inserts are refused for long chains (max / {ratio} would be {desired})"
        )),
        None => Some("hash size unknown (nf_conntrack_buckets not readable): not planned".into()),
        Some(cur) if (cur as f64) < desired as f64 * (1.0 - cfg.hash.tolerance.get()) => {
            resize(input, cur, desired, new_max, draft)
        }
        Some(cur) if cur < desired => Some(format!(
            "hash {cur} held: within {} of max / {ratio} = {desired}",
            fmt_pct(cfg.hash.tolerance.get())
        )),
        Some(cur) => Some(format!(
            "hash {cur} held: at or above max / {ratio} = {desired} (the hash only grows)"
        )),
    };
    draft
        .explanations
        .extend(note.map(|text| Explanation::new(Why::Hash, text)));
}

/// Resizes to `desired` unless the rate limit defers it; returns the explanation of a
/// deferral.
fn resize(
    input: &Inputs,
    cur: u64,
    desired: u64,
    new_max: u64,
    draft: &mut Draft,
) -> Option<String> {
    let (cfg, now) = (input.cfg, input.now);
    let ratio = u64::from(cfg.hash.ratio.max(1));
    let since = input.prev.last_resize.map(|t| now.saturating_sub(t));
    // The rate limit gives way when a full table would average more than twice the
    // chain the ratio aims at: long chains refuse inserts (the kernel's limit is a
    // random 50-80 entries).
    let chains_at_max = new_max.saturating_mul(2) / cur.max(1);
    let urgent = chains_at_max > 4 * ratio;
    let early = since.is_some_and(|s| s < cfg.hash.min_interval);
    if early && !urgent {
        return Some(format!(
            "hash resize {cur} -> {desired} deferred: last resize {} ago, at most one per {} (each stalls every insert)",
            humantime::format_duration(Duration::from_secs(since.unwrap_or_default().as_secs())),
            humantime::format_duration(cfg.hash.min_interval)
        ));
    }
    let before_interval = if early {
        format!(
            "; before hash.min_interval because a full table would average {chains_at_max} per chain now"
        )
    } else {
        String::new()
    };
    draft.changes.push(Change {
        key: tunables::BUCKETS.into(),
        target: Target::Global,
        old: cur,
        new: desired,
        reason: format!(
            "hash size follows max {} / {ratio} = {desired} buckets (a full table averages {} entries per chain){before_interval}; {cur} -> {desired}",
            fmt_count(new_max),
            2 * ratio,
        ),
    });
    draft.next.last_resize = Some(now);
    draft.next.applied.insert(tunables::BUCKETS.into(), desired);
    draft.next.operator_held.remove(tunables::BUCKETS);
    None
}

#[cfg(test)]
mod tests {
    use super::super::signals;
    use super::super::testkit::{draft, inputs, obs};
    use super::*;
    use crate::config::Config;
    use crate::policy::{PolicyState, ceiling_of};

    fn plan_hash(o: &crate::model::Observation, prev: &PolicyState, new_max: u64) -> Draft {
        let cfg = Config::default();
        let input = inputs(o, &cfg, prev, 1000);
        let sig = signals::read(&input);
        let mut d = draft();
        decide(&input, &sig, &ceiling_of(o, &cfg), new_max, &mut d);
        d
    }

    #[test]
    fn follows_max_over_ratio() {
        let mut o = obs(100_000, &[80_000]);
        o.global.buckets = Some(16_384);
        let d = plan_hash(&o, &PolicyState::default(), 200_000);
        assert_eq!((d.changes[0].old, d.changes[0].new), (16_384, 50_176));
        assert_eq!(d.next.last_resize, Some(Duration::from_secs(1000)));
    }

    #[test]
    fn a_resize_waits_out_the_interval_unless_chains_would_refuse_inserts() {
        let mut o = obs(100_000, &[80_000]);
        o.global.buckets = Some(16_384);
        let prev = PolicyState {
            last_resize: Some(Duration::from_secs(900)),
            ..PolicyState::default()
        };
        let d = plan_hash(&o, &prev, 120_000);
        assert!(d.changes.is_empty());
        assert!(
            d.explanations[0].text.contains("deferred"),
            "{:?}",
            d.explanations
        );
        // 2 x 400k / 16384 = 48 per chain at max: more than twice the ratio's 8.
        let d = plan_hash(&o, &prev, 400_000);
        assert_eq!(d.changes.len(), 1, "{:?}", d.explanations);
        assert!(d.changes[0].reason.contains("before hash.min_interval"));
    }

    #[test]
    fn a_per_namespace_max_leaves_the_hosts_hash_alone() {
        let mut o = obs(100_000, &[80_000]);
        o.global.buckets = Some(16_384);
        o.global.per_netns_max = true;
        let d = plan_hash(&o, &PolicyState::default(), 200_000);
        assert!(d.changes.is_empty());
        assert!(d.explanations[0].text.contains("per-namespace max"));
    }
}
