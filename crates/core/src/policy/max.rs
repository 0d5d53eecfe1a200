//! Phase 3 of a decision: `nf_conntrack_max`. It grows, by a factor, when the busiest
//! namespace crosses the high watermark (or will by the step after next), or when the
//! kernel reports drops or early drops; never above the ceiling. It shrinks only when
//! enabled, slowly, and never below count + headroom or the operator's own value.

use crate::ceiling::Ceiling;
use crate::plan::{Change, Target, Why};
use crate::tunables;
use crate::units::{fmt_bytes, fmt_pct};

use super::signals::Signals;
use super::{Draft, Inputs, ceil_div_f, ceil_mul};

/// Plans max; returns the max in force after the plan.
pub(super) fn decide(input: &Inputs, sig: &Signals, ceiling: &Ceiling, draft: &mut Draft) -> u64 {
    let cfg = input.cfg;
    let trigger = trigger(input, sig, draft);
    if let Some(lowered) = relieve_memory(input, sig, ceiling, draft) {
        return lowered;
    }
    if let (Some(why), Some(short)) = (&trigger, memory_hold(input, ceiling)) {
        draft.explain(
            Why::Max,
            format!(
                "{why}, but {short}: max does not grow, pressure levels lower timeouts instead"
            ),
        );
        return sig.current_max;
    }
    // Unsafe enough to override an operator's value: packets lost, or the critical level.
    let unsafe_now = sig.dropping.is_some() || sig.util >= cfg.pressure.critical.enter.get();
    let max_held = draft.next.operator_held.contains(tunables::MAX);
    match trigger {
        Some(why) if max_held && !unsafe_now => {
            draft.explain(Why::Max, format!(
                "{why}, but max {} was set by someone else: respected until packets drop or count reaches {} of max",
                sig.current_max,
                fmt_pct(cfg.pressure.critical.enter.get())
            ));
            sig.current_max
        }
        Some(why) => {
            let new_max = grow(input, sig, ceiling, &why, max_held, draft);
            draft.next.low_since = None;
            new_max
        }
        // Explained with the hash.
        None if sig.unlimited => sig.current_max,
        None if cfg.max.shrink.enabled
            && !max_held
            && sig.util < cfg.max.shrink.low_watermark.get() =>
        {
            shrink(input, sig, draft)
        }
        None => {
            explain_hold(input, sig, ceiling, draft);
            sig.current_max
        }
    }
}

/// Why the host cannot give the table more memory now, if it cannot: MemAvailable under
/// the reserve, or memory stall at the configured level.
pub(super) fn memory_hold(input: &Inputs, ceiling: &Ceiling) -> Option<String> {
    if ceiling.memory_short {
        return Some(format!(
            "the host is short of memory (MemAvailable {} below the {} reserve)",
            fmt_bytes(ceiling.available_bytes.unwrap_or(0)),
            fmt_bytes(ceiling.reserve_bytes)
        ));
    }
    let limit = input.cfg.pressure.memory_stall;
    input
        .obs
        .host
        .memory_stall
        .filter(|s| *s >= limit)
        .map(|s| format!("memory stall {s:.1}% (PSI some avg10) is at or above pressure.memory_stall {limit}%"))
}

/// When the table's real memory is over its budget (memory got scarce, or namespaces
/// filled in turn), brings max down toward the ceiling, never below what the busiest
/// namespace holds plus headroom (the table keeps room for the flows it serves while
/// the lowered timeouts drain it), also when the max is an operator's; returns the max
/// after it.
fn relieve_memory(
    input: &Inputs,
    sig: &Signals,
    ceiling: &Ceiling,
    draft: &mut Draft,
) -> Option<u64> {
    let access = &input.obs.global.write_access;
    if sig.unlimited || !access.root_could || !ceiling.over_budget() {
        return None;
    }
    let target = ceiling
        .value
        .max(ceil_mul(sig.peak, 1.0 + input.cfg.max.headroom.get()));
    if target >= sig.current_max {
        return None;
    }
    let current_max = sig.current_max;
    let short = memory_hold(input, ceiling).map_or(String::new(), |s| format!("{s}: "));
    draft.changes.push(Change {
        key: tunables::MAX.into(),
        target: Target::Global,
        old: current_max,
        new: target,
        reason: format!(
            "{short}the table's memory {} is over its budget {} ({}); lowering max {current_max} -> {target} (never below the {} entries netns {} holds plus headroom); pressure levels lower timeouts",
            fmt_bytes(ceiling.table_bytes),
            fmt_bytes(ceiling.budget_bytes),
            ceiling.explain(),
            sig.peak,
            sig.busiest_name
        ),
    });
    let next = &mut draft.next;
    next.baseline_max.get_or_insert(current_max);
    next.applied.insert(tunables::MAX.into(), target);
    next.operator_held.remove(tunables::MAX);
    next.low_since = None;
    Some(target)
}

/// Why max should grow now, if it should.
fn trigger(input: &Inputs, sig: &Signals, draft: &mut Draft) -> Option<String> {
    let m = &input.cfg.max;
    let access = &input.obs.global.write_access;
    if sig.unlimited {
        None
    } else if !access.root_could {
        let instead = if access.read_only {
            "nothing under /proc/sys can be written, timeouts included: ctune watches and reports only"
        } else {
            "pressure levels lower this namespace's timeouts instead"
        };
        draft.explain(Why::Max, format!(
            "global keys cannot be written from here ({}): max and the hash are the host's to set; {instead}",
            access.reason.as_deref().unwrap_or("not writable")
        ));
        None
    } else if let Some((n, d)) = sig.dropping {
        Some(format!(
            "drop counter rose by {d} in netns {} (table full, packets lost)",
            n.id.name
        ))
    } else if let Some((n, d)) = sig.evicting {
        Some(format!(
            "early_drop rose by {d} in netns {} (table full, entries evicted)",
            n.id.name
        ))
    } else if sig.util >= m.high_watermark.get() {
        Some(format!(
            "count {} of max in netns {} (grows at {})",
            fmt_pct(sig.util),
            sig.busiest_name,
            fmt_pct(m.high_watermark.get())
        ))
    } else {
        let watermark = m.high_watermark.get() * sig.current_max as f64;
        sig.projected
            .filter(|p| p.count as f64 >= watermark)
            .map(|p| {
                format!(
                    "count in netns {} rising {:.0}/s: {} of max within {:.1} s at that rate (grows at {})",
                    p.name,
                    p.rate,
                    fmt_pct(p.count as f64 / sig.current_max as f64),
                    sig.horizon,
                    fmt_pct(m.high_watermark.get())
                )
            })
    }
}

/// Raises max toward the target utilisation, within the ceiling, in steps worth a
/// possible hash resize; returns the max after the plan.
fn grow(
    input: &Inputs,
    sig: &Signals,
    ceiling: &Ceiling,
    why: &str,
    max_held: bool,
    draft: &mut Draft,
) -> u64 {
    let (cfg, current_max) = (input.cfg, sig.current_max);
    let m = &cfg.max;
    let projected_peak = sig.projected.map_or(0, |p| p.count);
    let want = ceil_mul(current_max, m.grow_factor)
        .max(ceil_div_f(
            sig.peak.max(projected_peak),
            m.target_utilisation.get(),
        ))
        .max(ceil_mul(sig.peak, 1.0 + m.headroom.get()))
        .max(cfg.ceiling.min_max);
    let target = want.min(ceiling.value);
    // Never +1: a step smaller than 1/16 of max is not worth a possible resize. The
    // last step up to the ceiling is always taken, unless the ceiling follows what the
    // host can spare, which moves a little at every step: it would be chased in steps of
    // a few entries, each one persisted.
    let stable_ceiling = ceiling.bound != crate::ceiling::Bound::Spare;
    let worth_it = (target == ceiling.value && stable_ceiling)
        || target >= current_max.saturating_add((current_max / 16).max(1));
    if target <= current_max || !worth_it {
        let why_not = if target > current_max {
            "is within 1/16 of the"
        } else {
            "is already at or above the"
        };
        draft.explain(Why::Max, format!(
            "{why}, but max {current_max} {why_not} {}: max cannot {}grow, pressure levels lower timeouts instead",
            ceiling.explain(),
            if target > current_max { "usefully " } else { "" }
        ));
        return current_max;
    }
    let capped = if want > ceiling.value {
        " (capped at the ceiling)"
    } else {
        ""
    };
    let overridden = if max_held {
        " (the operator's value became unsafe)"
    } else {
        ""
    };
    draft.changes.push(Change {
        key: tunables::MAX.into(),
        target: Target::Global,
        old: current_max,
        new: target,
        reason: format!(
            "{why}{overridden}; raising max {current_max} -> {target}{capped}; {}",
            ceiling.explain()
        ),
    });
    let next = &mut draft.next;
    next.baseline_max.get_or_insert(current_max);
    next.applied.insert(tunables::MAX.into(), target);
    next.operator_held.remove(tunables::MAX);
    target
}

/// Lowers max after utilisation stayed low long enough, if shrinking is enabled;
/// returns the max after the plan.
fn shrink(input: &Inputs, sig: &Signals, draft: &mut Draft) -> u64 {
    let (cfg, prev, now, current_max) = (input.cfg, input.prev, input.now, sig.current_max);
    let m = &cfg.max;
    let since = prev.low_since.unwrap_or(now);
    let held = now.saturating_sub(since);
    // Never below what growth would aim for (or grow and shrink would alternate), nor
    // below the operator's own value: shrinking only undoes ctune's growth.
    let floor = ceil_mul(sig.peak, 1.0 + m.headroom.get())
        .max(ceil_div_f(sig.peak, m.target_utilisation.get()))
        .max(cfg.ceiling.min_max)
        .max(prev.baseline_max.unwrap_or(current_max));
    let candidate = ((current_max as f64) * m.shrink.factor).floor() as u64;
    let target = candidate.max(floor);
    if held < m.shrink.after || target >= current_max {
        draft.next.low_since = Some(since);
        draft.explain(
            Why::Max,
            format!(
                "max {current_max} held: count {} of max in netns {}; may shrink after {} below {}",
                fmt_pct(sig.util),
                sig.busiest_name,
                humantime::format_duration(m.shrink.after),
                fmt_pct(m.shrink.low_watermark.get())
            ),
        );
        return current_max;
    }
    draft.changes.push(Change {
        key: tunables::MAX.into(),
        target: Target::Global,
        old: current_max,
        new: target,
        reason: format!(
            "count at most {} of max for {} (shrinks below {}); lowering max {current_max} -> {target} (never below count + {} headroom, min_max or the operator's {})",
            fmt_pct(sig.util),
            humantime::format_duration(held),
            fmt_pct(m.shrink.low_watermark.get()),
            fmt_pct(m.headroom.get()),
            prev.baseline_max.map_or("value".to_string(), |b| b.to_string()),
        ),
    });
    draft.next.low_since = Some(now);
    draft.next.applied.insert(tunables::MAX.into(), target);
    target
}

/// Says why max stays as it is when nothing asks it to move.
fn explain_hold(input: &Inputs, sig: &Signals, ceiling: &Ceiling, draft: &mut Draft) {
    let above = if sig.current_max > ceiling.value {
        format!(
            "; the operator's max is above the {}, and ctune never lowers it",
            ceiling.explain()
        )
    } else {
        String::new()
    };
    draft.explain(
        Why::Max,
        format!(
            "max {} held: busiest netns {} at {} of max (grows at {}){above}",
            sig.current_max,
            sig.busiest_name,
            fmt_pct(sig.util),
            fmt_pct(input.cfg.max.high_watermark.get()),
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::super::signals;
    use super::super::testkit::{draft, inputs, obs};
    use super::*;
    use crate::config::Config;
    use crate::policy::{PolicyState, ceiling_of};

    fn plan_max(o: &crate::model::Observation, cfg: &Config) -> (u64, Draft) {
        let prev = PolicyState::default();
        let input = inputs(o, cfg, &prev, 1);
        let sig = signals::read(&input);
        let ceiling = ceiling_of(o, cfg);
        let mut d = draft();
        let new = decide(&input, &sig, &ceiling, &mut d);
        (new, d)
    }

    #[test]
    fn grows_at_the_watermark_toward_the_target_utilisation() {
        let cfg = Config::default();
        let (new, d) = plan_max(&obs(100_000, &[80_000]), &cfg);
        assert_eq!(new, 200_000, "x2 (and 80k / 50 % = 160k)");
        assert!(d.changes[0].reason.contains("count 80% of max"));
        let (new, d) = plan_max(&obs(100_000, &[70_000]), &cfg);
        assert_eq!(new, 100_000);
        assert!(
            d.explanations[0].text.contains("held"),
            "{:?}",
            d.explanations
        );
    }

    #[test]
    fn memory_short_stops_growth() {
        let cfg = Config::default();
        let mut o = obs(100_000, &[80_000]);
        o.host.memory.available_bytes = Some(1 << 20);
        let (new, d) = plan_max(&o, &cfg);
        assert_eq!(new, 100_000, "{:?}", d.changes);
        assert!(
            d.explanations
                .iter()
                .any(|e| e.text.contains("short of memory"))
        );
    }

    #[test]
    fn a_table_over_its_budget_comes_down_to_count_plus_headroom() {
        let mut cfg = Config::default();
        cfg.ceiling.memory_cap = Some(8 << 20); // ~21k entries
        let (new, d) = plan_max(&obs(100_000, &[40_000]), &cfg);
        assert_eq!(new, 50_000, "40k + 25 %: {:?}", d.changes);
        assert!(d.changes[0].reason.contains("over its budget"));
    }

    #[test]
    fn the_operators_value_is_held_until_unsafe() {
        let cfg = Config::default();
        let o = obs(100_000, &[80_000]);
        let prev = PolicyState::default();
        let input = inputs(&o, &cfg, &prev, 1);
        let sig = signals::read(&input);
        let mut d = draft();
        d.next.operator_held.insert(tunables::MAX.into());
        let new = decide(&input, &sig, &ceiling_of(&o, &cfg), &mut d);
        assert_eq!(new, 100_000);
        assert!(d.explanations[0].text.contains("set by someone else"));
    }
}
