//! The decision: observation + config + previous state in, plan + next state out.
//!
//! Pure: no I/O, no clock (the caller passes monotonic `now`), so every rule here is
//! tested with tables of cases and property tests. The rules, in order:
//! 1. The ceiling bounds max (memory budget / bytes per entry / filling namespaces).
//! 2. Max grows, by a factor, when the busiest namespace crosses the high watermark or
//!    the kernel reports drops or early drops; never above the ceiling. It shrinks only
//!    when enabled, slowly, and never below count + headroom or the operator's own value.
//! 3. The hash follows max / ratio, grows only, in one step, at most once per interval.
//! 4. Each namespace gets a pressure level from its utilisation under the new max, and
//!    from loss that growth cannot answer; timeouts follow the level.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ceiling::{self, Ceiling};
use crate::config::{Config, FillingNamespaces};
use crate::observe::Observation;
use crate::plan::{Change, NamespaceVerdict, Plan, Target};
use crate::pressure::{self, LevelState, Signal};
use crate::timeouts::{self, Lowered};
use crate::tunables;
use crate::units::{fmt_count, fmt_pct};

/// What ctune remembers between decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    /// Per namespace, by inode.
    pub namespaces: BTreeMap<u64, NamespaceState>,
    /// When the hash was last resized (monotonic).
    pub last_resize: Option<Duration>,
    /// Since when utilisation has been below the shrink watermark.
    pub low_since: Option<Duration>,
    /// The operator's max before ctune first changed it: never shrunk below.
    pub baseline_max: Option<u64>,
    /// Global values as ctune last set them: a live value that differs was changed by
    /// someone else (an admin, kube-proxy, tuned).
    #[serde(default)]
    pub applied: BTreeMap<String, u64>,
    /// Global keys someone else changed after ctune set them, left alone until unsafe.
    #[serde(default)]
    pub operator_held: BTreeSet<String>,
}

impl PolicyState {
    /// Undoes what `decide` recorded for a change that did not take effect, so the next
    /// decision sees the truth (and tries again).
    pub fn forget_failed(&mut self, prev: &PolicyState, ch: &Change) {
        match &ch.target {
            Target::Global => {
                match prev.applied.get(&ch.key) {
                    Some(v) => self.applied.insert(ch.key.clone(), *v),
                    None => self.applied.remove(&ch.key),
                };
                if ch.key == tunables::BUCKETS {
                    self.last_resize = prev.last_resize;
                }
                if ch.key == tunables::MAX {
                    self.baseline_max = prev.baseline_max;
                    self.low_since = prev.low_since;
                }
                if prev.operator_held.contains(&ch.key) {
                    self.operator_held.insert(ch.key.clone());
                }
            }
            Target::Namespace { netns } => {
                if let Some(ns) = self.namespaces.get_mut(&netns.inode) {
                    match prev
                        .namespaces
                        .get(&netns.inode)
                        .and_then(|p| p.lowered.get(&ch.key))
                    {
                        Some(l) => ns.lowered.insert(ch.key.clone(), *l),
                        None => ns.lowered.remove(&ch.key),
                    };
                }
            }
        }
    }
}

/// What ctune remembers of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NamespaceState {
    /// Name at the last sample, for people reading the state file.
    pub name: String,
    /// Counters at the last sample, to see them rise.
    pub counters: Option<Counters>,
    /// The pressure level.
    pub level: Option<LevelState>,
    /// Timeouts ctune lowered, with the operator's values.
    pub lowered: BTreeMap<String, Lowered>,
    /// Timeouts someone else changed while lowered: not lowered again until this
    /// namespace is back to normal.
    #[serde(default)]
    pub held: BTreeSet<String>,
    /// The count and when it was read, to see how fast the table fills. Not saved: it
    /// changes every step, and a rate across a restart would be stale anyway.
    #[serde(skip)]
    pub last_count: Option<(u64, Duration)>,
}

/// The loss counters of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `drop`.
    pub drop: Option<u64>,
    /// `early_drop`.
    pub early_drop: Option<u64>,
    /// `chainlength`.
    pub chainlength: Option<u64>,
}

fn delta(now: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(now?.saturating_sub(before?))
}

/// Makes the plan and the state to keep for the next decision. The next state assumes
/// the plan is applied; the caller adjusts it for changes that fail.
pub fn decide(
    obs: &Observation,
    cfg: &Config,
    prev: &PolicyState,
    now: Duration,
) -> (Plan, PolicyState) {
    let mut next = PolicyState {
        last_resize: prev.last_resize,
        baseline_max: prev.baseline_max,
        ..PolicyState::default()
    };
    let mut changes = Vec::new();
    let mut explanations = Vec::new();
    // 0 means unlimited (and no early drop): ctune does not put a limit on such a table.
    let unlimited = obs.global.max == 0;
    let current_max = if unlimited { u64::MAX } else { obs.global.max };

    // 0. Did someone else change a global value ctune set?
    next.applied = prev.applied.clone();
    next.operator_held = prev.operator_held.clone();
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
        next.applied.remove(key);
        if key == tunables::MAX {
            next.baseline_max = Some(live);
        }
        if cfg.agent.respect_operator {
            next.operator_held.insert(key.to_string());
            explanations.push(format!(
                "{key} is {live} but ctune set {set}: someone else changed it; adopting {live} as the operator's value and leaving it alone until it becomes unsafe"
            ));
        } else {
            explanations.push(format!(
                "{key} is {live} but ctune set {set}: someone else changed it; agent.respect_operator is off, so ctune's plan applies"
            ));
        }
    }

    // 1. Ceiling.
    let ceiling = ceiling_of(obs, cfg);

    // Signals per namespace.
    struct Sig {
        counters: Counters,
        drop: Option<u64>,
        early: Option<u64>,
        chain: Option<u64>,
    }
    let sigs: Vec<Sig> = obs
        .namespaces
        .iter()
        .map(|n| {
            let counters = Counters {
                drop: n.counter("drop"),
                early_drop: n.counter("early_drop"),
                chainlength: n.counter("chainlength"),
            };
            let before = prev.namespaces.get(&n.id.inode).and_then(|s| s.counters);
            Sig {
                counters,
                drop: before.and_then(|b| delta(counters.drop, b.drop)),
                early: before.and_then(|b| delta(counters.early_drop, b.early_drop)),
                chain: before.and_then(|b| delta(counters.chainlength, b.chainlength)),
            }
        })
        .collect();
    let busiest = obs
        .namespaces
        .iter()
        .filter_map(|n| n.count.map(|c| (c, n.id.name.as_str())))
        .max_by_key(|(c, _)| *c);
    let peak = busiest.map_or(0, |(c, _)| c);
    let busiest_name = busiest.map_or("?", |(_, n)| n);
    let util = peak as f64 / current_max as f64;
    // Where each namespace's count will be by the step after next at its current growth
    // rate: growth must land before the table fills, not after.
    let horizon = (cfg.agent.interval + cfg.agent.probe_interval).as_secs_f64();
    let projected = obs
        .namespaces
        .iter()
        .filter_map(|n| {
            let count = n.count?;
            let (before, at) = prev.namespaces.get(&n.id.inode)?.last_count?;
            let dt = now.checked_sub(at)?.as_secs_f64();
            (dt > 0.0 && count > before).then(|| {
                let rate = (count - before) as f64 / dt;
                (
                    count.saturating_add((rate * horizon).ceil() as u64),
                    rate,
                    n.id.name.as_str(),
                )
            })
        })
        .max_by_key(|(p, _, _)| *p);
    let dropping_ns = obs
        .namespaces
        .iter()
        .zip(&sigs)
        .find(|(_, s)| s.drop.is_some_and(|d| d > 0));
    let evicting_ns = obs
        .namespaces
        .iter()
        .zip(&sigs)
        .find(|(_, s)| s.early.is_some_and(|d| d > 0));

    // 2. Max.
    let m = &cfg.max;
    let required = ceil_mul(peak, 1.0 + m.headroom.get());
    let trigger = if unlimited {
        None
    } else if !obs.global.write_access.root_could {
        explanations.push(format!(
            "global keys cannot be written from here ({}): max and the hash are the host's to set; pressure levels lower this namespace's timeouts instead",
            obs.global.write_access.reason.as_deref().unwrap_or("not writable")
        ));
        None
    } else if let Some((n, s)) = dropping_ns {
        Some(format!(
            "drop counter rose by {} in netns {} (table full, packets lost)",
            s.drop.unwrap_or(0),
            n.id.name
        ))
    } else if let Some((n, s)) = evicting_ns {
        Some(format!(
            "early_drop rose by {} in netns {} (table full, entries evicted)",
            s.early.unwrap_or(0),
            n.id.name
        ))
    } else if util >= m.high_watermark.get() {
        Some(format!(
            "count {} of max in netns {busiest_name} (grows at {})",
            fmt_pct(util),
            fmt_pct(m.high_watermark.get())
        ))
    } else if let Some((p, rate, name)) =
        projected.filter(|(p, _, _)| *p as f64 >= m.high_watermark.get() * current_max as f64)
    {
        Some(format!(
            "count in netns {name} rising {:.0}/s: {} of max within {:.1} s at that rate (grows at {})",
            rate,
            fmt_pct(p as f64 / current_max as f64),
            horizon,
            fmt_pct(m.high_watermark.get())
        ))
    } else {
        None
    };
    let projected_peak = projected.map_or(0, |(p, _, _)| p);
    // Unsafe enough to override an operator's value: packets lost, or the critical level.
    let unsafe_now = dropping_ns.is_some() || util >= cfg.pressure.critical.enter.get();
    let max_held = next.operator_held.contains(tunables::MAX);
    let mut new_max = current_max;
    if let (Some(why), true) = (&trigger, max_held && !unsafe_now) {
        explanations.push(format!(
            "{why}, but max {current_max} was set by someone else: respected until packets drop or count reaches {} of max",
            fmt_pct(cfg.pressure.critical.enter.get())
        ));
    } else if let Some(why) = &trigger {
        let want = ceil_mul(current_max, m.grow_factor)
            .max(ceil_div_f(
                peak.max(projected_peak),
                m.target_utilisation.get(),
            ))
            .max(required)
            .max(cfg.ceiling.min_max);
        let target = want.min(ceiling.value);
        // Never +1: a step smaller than 1/16 of max is not worth a possible resize.
        // The last step up to the ceiling is always taken.
        let worth_it = target == ceiling.value
            || target >= current_max.saturating_add((current_max / 16).max(1));
        if target > current_max && !worth_it {
            explanations.push(format!(
                "{why}, but max {current_max} is within 1/16 of the {}: max cannot usefully grow, pressure levels lower timeouts instead",
                ceiling.explain()
            ));
        } else if target > current_max {
            new_max = target;
            let capped = if want > ceiling.value {
                " (capped at the ceiling)"
            } else {
                ""
            };
            changes.push(Change {
                key: tunables::MAX.into(),
                target: Target::Global,
                old: current_max,
                new: new_max,
                reason: format!(
                    "{why}{}; raising max {current_max} -> {new_max}{capped}; {}",
                    if max_held {
                        " (the operator's value became unsafe)"
                    } else {
                        ""
                    },
                    ceiling.explain()
                ),
            });
            next.baseline_max.get_or_insert(current_max);
            next.applied.insert(tunables::MAX.into(), new_max);
            next.operator_held.remove(tunables::MAX);
        } else {
            explanations.push(format!(
                "{why}, but max {current_max} is already at or above the {}: max cannot grow, pressure levels lower timeouts instead",
                ceiling.explain()
            ));
        }
        next.low_since = None;
    } else if unlimited {
        // Explained with the hash below.
    } else if m.shrink.enabled && !max_held && util < m.shrink.low_watermark.get() {
        let since = prev.low_since.unwrap_or(now);
        let held = now.saturating_sub(since);
        // Never below what growth would aim for (or grow and shrink would alternate), nor
        // below the operator's own value: shrinking only undoes ctune's growth.
        let floor = required
            .max(ceil_div_f(peak, m.target_utilisation.get()))
            .max(cfg.ceiling.min_max)
            .max(prev.baseline_max.unwrap_or(current_max));
        let candidate = ((current_max as f64) * m.shrink.factor).floor() as u64;
        let target = candidate.max(floor);
        if held >= m.shrink.after && target < current_max {
            new_max = target;
            changes.push(Change {
                key: tunables::MAX.into(),
                target: Target::Global,
                old: current_max,
                new: new_max,
                reason: format!(
                    "count at most {} of max for {} (shrinks below {}); lowering max {current_max} -> {new_max} (never below count + {} headroom, min_max or the operator's {})",
                    fmt_pct(util),
                    humantime::format_duration(held),
                    fmt_pct(m.shrink.low_watermark.get()),
                    fmt_pct(m.headroom.get()),
                    prev.baseline_max.map_or("value".to_string(), |b| b.to_string()),
                ),
            });
            next.low_since = Some(now);
            next.applied.insert(tunables::MAX.into(), new_max);
        } else {
            next.low_since = Some(since);
            explanations.push(format!(
                "max {current_max} held: count {} of max in netns {busiest_name}; may shrink after {} below {}",
                fmt_pct(util),
                humantime::format_duration(m.shrink.after),
                fmt_pct(m.shrink.low_watermark.get())
            ));
        }
    } else {
        explanations.push(format!(
            "max {current_max} held: busiest netns {busiest_name} at {} of max (grows at {}){}",
            fmt_pct(util),
            fmt_pct(m.high_watermark.get()),
            if current_max > ceiling.value {
                format!(
                    "; the operator's max is above the {}, and ctune never lowers it",
                    ceiling.explain()
                )
            } else {
                String::new()
            }
        ));
    }

    // 3. Hash.
    let ratio = u64::from(cfg.hash.ratio.max(1));
    // An operator's max above the ceiling gets the ceiling's hash, not a bigger one.
    let desired = tunables::round_buckets(new_max.min(ceiling.value).div_ceil(ratio));
    let chains_refused = sigs.iter().any(|s| s.chain.is_some_and(|c| c > 0));
    let buckets_held = next.operator_held.contains(tunables::BUCKETS);
    match obs.global.buckets {
        _ if !obs.global.write_access.root_could => {}
        _ if unlimited => explanations.push(
            "nf_conntrack_max is 0 (unlimited, no early drop): ctune sets no limit and no hash size for an unlimited table".into(),
        ),
        Some(cur) if buckets_held && !chains_refused => {
            if cur < desired {
                explanations.push(format!(
                    "hash {cur} was set by someone else: respected until inserts are refused for long chains (max / {ratio} would be {desired})"
                ));
            }
        }
        None => explanations
            .push("hash size unknown (nf_conntrack_buckets not readable): not planned".into()),
        Some(cur) if (cur as f64) < desired as f64 * (1.0 - cfg.hash.tolerance.get()) => {
            let since = prev.last_resize.map(|t| now.saturating_sub(t));
            // The rate limit gives way when a full table would average more than twice
            // the chain the ratio aims at: long chains refuse inserts (the kernel's limit
            // is a random 50-80 entries).
            let chains_at_max = new_max.saturating_mul(2) / cur.max(1);
            let urgent = chains_at_max > 4 * ratio;
            match since {
                Some(s) if s < cfg.hash.min_interval && !urgent => explanations.push(format!(
                    "hash resize {cur} -> {desired} deferred: last resize {} ago, at most one per {} (each stalls every insert)",
                    humantime::format_duration(Duration::from_secs(s.as_secs())),
                    humantime::format_duration(cfg.hash.min_interval)
                )),
                _ => {
                    changes.push(Change {
                        key: tunables::BUCKETS.into(),
                        target: Target::Global,
                        old: cur,
                        new: desired,
                        reason: format!(
                            "hash size follows max {} / {ratio} = {desired} buckets (a full table averages {} entries per chain){}; {cur} -> {desired}",
                            fmt_count(new_max),
                            2 * ratio,
                            if urgent && since.is_some_and(|s| s < cfg.hash.min_interval) {
                                format!(
                                    "; before hash.min_interval because a full table would average {chains_at_max} per chain now"
                                )
                            } else {
                                String::new()
                            }
                        ),
                    });
                    next.last_resize = Some(now);
                    next.applied.insert(tunables::BUCKETS.into(), desired);
                    next.operator_held.remove(tunables::BUCKETS);
                }
            }
        }
        Some(cur) if cur < desired => explanations.push(format!(
            "hash {cur} held: within {} of max / {ratio} = {desired}",
            fmt_pct(cfg.hash.tolerance.get())
        )),
        Some(cur) => explanations.push(format!(
            "hash {cur} held: at or above max / {ratio} = {desired} (the hash only grows)"
        )),
    }

    // 4. Levels and timeouts per namespace.
    let growing = new_max > current_max;
    let mut verdicts = Vec::new();
    for (n, s) in obs.namespaces.iter().zip(&sigs) {
        let prev_ns = prev.namespaces.get(&n.id.inode);
        let after = n.count.map(|c| c as f64 / new_max as f64);
        let sig = Signal {
            utilisation: after.unwrap_or(0.0),
            // Loss that growth answers is not pressure on the timeouts.
            dropping: !growing && s.drop.is_some_and(|d| d > 0),
            evicting: !growing && s.early.is_some_and(|d| d > 0),
        };
        let (level, level_reason) = match n.count {
            Some(_) => pressure::next(prev_ns.and_then(|p| p.level), sig, &cfg.pressure, now),
            // Unknown is not idle: keep whatever level the namespace had.
            None => {
                let kept = prev_ns.and_then(|p| p.level).unwrap_or(LevelState {
                    level: pressure::Level::Normal,
                    since: now,
                });
                (
                    kept,
                    format!("count not readable; level kept at {}", kept.level),
                )
            }
        };
        let empty = BTreeMap::new();
        let lowered_before = prev_ns.map_or(&empty, |p| &p.lowered);
        let empty_held = BTreeSet::new();
        let tp = if n.error.is_some() && n.timeouts.is_empty() {
            timeouts::TimeoutPlan {
                changes: Vec::new(),
                lowered: lowered_before.clone(),
                held: prev_ns.map_or(empty_held, |p| p.held.clone()),
                notes: Vec::new(),
            }
        } else {
            timeouts::plan(
                &timeouts::Inputs {
                    target: &Target::Namespace {
                        netns: n.id.clone(),
                    },
                    ns_name: &n.id.name,
                    live: &n.timeouts,
                    level: level.level,
                    level_reason: &level_reason,
                    respect_operator: cfg.agent.respect_operator,
                },
                &cfg.timeouts,
                lowered_before,
                prev_ns.map_or(&empty_held, |p| &p.held),
            )
        };
        let timeouts::TimeoutPlan {
            changes: mut tchanges,
            lowered,
            held,
            notes,
        } = tp;
        changes.append(&mut tchanges);
        // Floors for keys this kernel lacks are noted once, for the own namespace.
        if verdicts.is_empty() {
            explanations.extend(notes);
        } else {
            explanations.extend(
                notes
                    .into_iter()
                    .filter(|n| !n.starts_with("timeouts.floors.")),
            );
        }
        if let Some(c) = s.chain.filter(|c| *c > 0) {
            explanations.push(format!(
                "netns {}: {c} inserts refused for hash chains over {} since the last sample: the hash is too small for the load (lower hash.ratio) or under a hash attack",
                n.id.name,
                tunables::MAX_CHAIN_LENGTH
            ));
        }
        verdicts.push(NamespaceVerdict {
            netns: n.id.clone(),
            count: n.count,
            utilisation: n.count.map(|c| c as f64 / current_max as f64),
            utilisation_after: after,
            drop_delta: s.drop,
            early_drop_delta: s.early,
            chainlength_delta: s.chain,
            level: level.level,
            level_reason,
        });
        next.namespaces.insert(
            n.id.inode,
            NamespaceState {
                name: n.id.name.clone(),
                counters: Some(s.counters),
                level: Some(level),
                lowered,
                held,
                last_count: n.count.map(|c| (c, now)),
            },
        );
    }
    // Established last across all namespaces, not only within each.
    let first_timeout = changes
        .iter()
        .position(|c| c.target != Target::Global)
        .unwrap_or(changes.len());
    changes[first_timeout..].sort_by_key(|c| tunables::tier_of(&c.key));
    if prev.namespaces.is_empty() {
        explanations.push(
            "first sample: drop and early_drop are cumulative since boot, so their rise is only seen from the next sample on".into(),
        );
    }
    (
        Plan {
            ceiling,
            changes,
            namespaces: verdicts,
            explanations,
        },
        next,
    )
}

/// ceil(n * f), saturating.
fn ceil_mul(n: u64, f: f64) -> u64 {
    let v = (n as f64 * f).ceil();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

/// ceil(n / f) for f in (0, 1], saturating.
fn ceil_div_f(n: u64, f: f64) -> u64 {
    ceil_mul(n, 1.0 / f)
}

/// The ceiling's view of memory, for `status`.
pub fn memory_now(obs: &Observation, cfg: &Config) -> u64 {
    let entries = obs
        .namespaces
        .iter()
        .filter_map(|n| n.count)
        .fold(0u64, u64::saturating_add);
    ceiling::memory_now(
        entries,
        obs.global.buckets.unwrap_or(0),
        obs.host.entry_bytes,
        cfg.ceiling.extension_bytes,
    )
}

/// Re-exported for callers that only need the ceiling.
/// The ceiling for this observation: the memory budget shared by the namespaces that
/// fill the table.
pub fn ceiling_of(obs: &Observation, cfg: &Config) -> Ceiling {
    let filling = match cfg.ceiling.filling_namespaces {
        FillingNamespaces::Fixed(n) => u64::from(n),
        // A namespace counts when it holds at least 1% of max, or cannot be read (unknown
        // must not raise the ceiling): on a Kubernetes node every pod namespace holds a
        // few entries, and dividing the budget by hundreds of idle namespaces would pin
        // max at min_max.
        FillingNamespaces::Auto => obs
            .namespaces
            .iter()
            .filter(|n| n.count.is_none_or(|c| c > 0 && c >= obs.global.max / 100))
            .count() as u64,
    }
    .max(1);
    ceiling::compute(
        cfg,
        obs.host.memory.total_bytes,
        obs.host.entry_bytes,
        filling,
    )
}
