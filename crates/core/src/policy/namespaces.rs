//! Phase 5 of a decision: each namespace gets a pressure level from its utilisation
//! under the new max and from loss that growth cannot answer, and its timeouts follow
//! the level.

use std::collections::{BTreeMap, BTreeSet};

use crate::ceiling::Ceiling;
use crate::model::NamespaceObs;
use crate::plan::{NamespaceVerdict, Target, Why};
use crate::pressure::{self, Level, LevelState, Signal};
use crate::timeouts::{self, TimeoutPlan};
use crate::tunables;

use super::signals::{Rises, Signals};
use super::{Draft, Inputs, NamespaceState};

/// Plans levels and timeouts for every namespace; returns the verdicts.
pub(super) fn decide(
    input: &Inputs,
    sig: &Signals,
    ceiling: &Ceiling,
    new_max: u64,
    draft: &mut Draft,
) -> Vec<NamespaceVerdict> {
    let growing = new_max > sig.current_max;
    let table_memory = memory_signal(input, ceiling);
    let holders = memory_holders(&input.obs.namespaces, ceiling);
    let mut spared = Vec::new();
    let mut verdicts = Vec::new();
    for (n, rise) in input.obs.namespaces.iter().zip(&sig.rises) {
        let prev_ns = input.prev.namespaces.get(&n.id.inode);
        let memory = memory_here(table_memory, &holders, n);
        if memory != table_memory {
            spared.push(n.id.name.clone());
        }
        let after = n.count.map(|c| c as f64 / new_max as f64);
        let (level, level_reason) = level_of(input, n, rise, after, growing, memory, prev_ns);
        let tp = timeouts_of(input, n, level.level, &level_reason, prev_ns);
        draft.changes.extend(tp.changes);
        // Floors for keys this kernel lacks are noted once, for the own namespace.
        let first = verdicts.is_empty();
        draft.explanations.extend(
            tp.notes
                .into_iter()
                .filter(|note| first || note.kind != Why::FloorKeyMissing),
        );
        if let Some(c) = rise.clash.filter(|c| *c > 0) {
            draft.explain(Why::Clash, format!(
                "netns {}: {c} packets dropped by insert clashes since the last sample (drop and insert_failed rose together: two packets of one new flow raced, as NAT'd DNS A/AAAA lookups do); not a full table, so max and timeouts stay",
                n.id.name
            ));
        }
        if let Some(c) = rise.chain.filter(|c| *c > 0) {
            draft.explain(Why::ChainTooLong, format!(
                "netns {}: {c} inserts refused for hash chains over {} since the last sample: the hash is too small for the load (lower hash.ratio) or under a hash attack",
                n.id.name,
                tunables::MAX_CHAIN_LENGTH
            ));
        }
        let now = level_now(input, n, rise, sig.current_max, memory);
        verdicts.push(NamespaceVerdict {
            level_now: now.as_ref().map(|(l, _)| *l),
            level_now_reason: now.map(|(_, why)| why),
            netns: n.id.clone(),
            count: n.count,
            utilisation: n.count.map(|c| c as f64 / sig.current_max as f64),
            utilisation_after: after,
            drop_delta: rise.drop,
            clash_delta: rise.clash,
            early_drop_delta: rise.early,
            chainlength_delta: rise.chain,
            level: level.level,
            level_reason,
        });
        draft.next.namespaces.insert(
            n.id.inode,
            NamespaceState {
                name: n.id.name.clone(),
                counters: Some(rise.counters),
                level: Some(level),
                lowered: tp.lowered,
                held: tp.held,
                last_count: n.count.map(|c| (c, input.now)),
            },
        );
    }
    explain_spared(table_memory, &spared, draft);
    verdicts
}

/// The namespaces a memory signal acts on: the fewest biggest holders of the entries
/// counted that together hold [`tunables::MEMORY_HOLDERS_SHARE`] of them, and any other
/// that holds as many as the smallest of those (equal tenants are treated alike). None
/// when what the table is short by (its memory over the budget; when the host is short,
/// what MemAvailable lacks of the reserve) is more than ten times what those holders'
/// entries cost: the table is not what is short, and cutting its sessions' timeouts
/// would free next to nothing ([`tunables::MEMORY_RELIEF_SHARE`]).
fn memory_holders(namespaces: &[NamespaceObs], ceiling: &Ceiling) -> BTreeSet<u64> {
    let mut counted: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|n| n.count.map(|c| (c, n.id.inode)))
        .collect();
    counted.sort_by_key(|(c, _)| std::cmp::Reverse(*c));
    // u128: counts come from the kernel (or a hostile fixture) and may be anything.
    let total: u128 = counted.iter().map(|(c, _)| u128::from(*c)).sum();
    let want = (total as f64 * tunables::MEMORY_HOLDERS_SHARE).ceil() as u128;
    let (mut held, mut smallest) = (0u128, u64::MAX);
    let mut holders = BTreeSet::new();
    for (count, inode) in counted {
        if held >= want && count < smallest {
            break;
        }
        held += u128::from(count);
        smallest = smallest.min(count);
        holders.insert(inode);
    }
    let entries = u128::from(ceiling.table_entries.max(1));
    let holders_bytes = u128::from(ceiling.table_bytes) * held.min(entries) / entries;
    let over_budget = ceiling.table_bytes.saturating_sub(ceiling.budget_bytes);
    let host_short = match (ceiling.memory_short, ceiling.available_bytes) {
        (true, Some(available)) => ceiling.reserve_bytes.saturating_sub(available),
        _ => 0,
    };
    let short_by = over_budget.max(host_short);
    if (holders_bytes as f64) < short_by as f64 * tunables::MEMORY_RELIEF_SHARE {
        holders.clear();
    }
    holders
}

/// The memory signal for one namespace: the table's, where its memory is; none for a
/// namespace that holds little of it (the caller explains the spared ones).
fn memory_here(
    table: (Option<&'static str>, bool),
    holders: &BTreeSet<u64>,
    n: &NamespaceObs,
) -> (Option<&'static str>, bool) {
    if holders.contains(&n.id.inode) {
        table
    } else {
        (None, false)
    }
}

/// One explanation for the namespaces a memory signal spared, naming a few.
fn explain_spared(table: (Option<&'static str>, bool), spared: &[String], draft: &mut Draft) {
    const NAMED: usize = 5;
    if spared.is_empty() || (table.0.is_none() && !table.1) {
        return;
    }
    let what = table
        .0
        .unwrap_or("memory stall (PSI) at pressure.memory_stall");
    // Namespace names are anyone's (a tenant names its own): escaped, as everywhere.
    let mut names = spared
        .iter()
        .take(NAMED)
        .map(|n| crate::units::printable(n))
        .collect::<Vec<_>>()
        .join(", ");
    if spared.len() > NAMED {
        names.push_str(&format!(" and {} more", spared.len() - NAMED));
    }
    draft.explain(
        Why::Timeouts,
        format!(
            "{what}, but the table's memory is not in netns {names}: their timeouts follow their own count and loss (a memory signal lowers timeouts only in the namespaces holding {} of the entries, and only where that frees at least {} of what is short)",
            crate::units::fmt_pct(tunables::MEMORY_HOLDERS_SHARE),
            crate::units::fmt_pct(tunables::MEMORY_RELIEF_SHARE)
        ),
    );
}

/// What memory asks of the levels: (short of memory or the table over its
/// budget, memory stalled).
fn memory_signal(input: &Inputs, ceiling: &Ceiling) -> (Option<&'static str>, bool) {
    let short = if ceiling.memory_short {
        Some("the host is short of memory: MemAvailable below the reserve")
    } else if ceiling.over_budget() {
        Some("the table's memory is over its budget")
    } else {
        None
    };
    let limit = input.cfg.pressure.memory_stall;
    let stalled = input.obs.host.memory_stall.is_some_and(|s| s >= limit);
    (short, stalled)
}

/// The level the live table is at, before any change: count against the live max,
/// every loss counted (growth has not happened yet).
fn level_now(
    input: &Inputs,
    n: &NamespaceObs,
    rise: &Rises,
    current_max: u64,
    memory: (Option<&'static str>, bool),
) -> Option<(Level, String)> {
    let count = n.count?;
    let signal = Signal {
        utilisation: count as f64 / current_max.max(1) as f64,
        dropping: rise.drop.is_some_and(|d| d > 0),
        evicting: rise.early.is_some_and(|d| d > 0),
        memory_short: memory.0,
        memory_stalled: memory.1,
    };
    Some(pressure::level_now(signal, &input.cfg.pressure))
}

/// The namespace's level and why. Loss that growth answers is not pressure on the
/// timeouts; an unreadable count is not idle, so the level is kept.
fn level_of(
    input: &Inputs,
    n: &NamespaceObs,
    rise: &Rises,
    after: Option<f64>,
    growing: bool,
    memory: (Option<&'static str>, bool),
    prev_ns: Option<&NamespaceState>,
) -> (LevelState, String) {
    let before = prev_ns.and_then(|p| p.level);
    if n.count.is_none() {
        let kept = before.unwrap_or(LevelState {
            level: Level::Normal,
            since: input.now,
        });
        let why = format!("count not readable; level kept at {}", kept.level);
        return (kept, why);
    }
    let signal = Signal {
        utilisation: after.unwrap_or(0.0),
        dropping: !growing && rise.drop.is_some_and(|d| d > 0),
        evicting: !growing && rise.early.is_some_and(|d| d > 0),
        memory_short: memory.0,
        memory_stalled: memory.1,
    };
    pressure::next(before, signal, &input.cfg.pressure, input.now)
}

/// The timeout changes for the namespace's level. A namespace that could not be read
/// keeps what ctune had lowered there.
fn timeouts_of(
    input: &Inputs,
    n: &NamespaceObs,
    level: Level,
    level_reason: &str,
    prev_ns: Option<&NamespaceState>,
) -> TimeoutPlan {
    let empty = BTreeMap::new();
    let empty_held = BTreeSet::new();
    let lowered_before = prev_ns.map_or(&empty, |p| &p.lowered);
    let held_before = prev_ns.map_or(&empty_held, |p| &p.held);
    // Nothing can be written on a read-only /proc/sys: planning writes that fail every
    // step would only fill the log (what was lowered before stays remembered).
    let read_only = input.obs.global.write_access.read_only;
    // Unread timeouts: a namespace at normal with nothing lowered (the controller reads
    // any other), so there is nothing to plan or forget.
    if read_only || n.timeouts_unread || (n.error.is_some() && n.timeouts.is_empty()) {
        return TimeoutPlan {
            changes: Vec::new(),
            lowered: lowered_before.clone(),
            held: held_before.clone(),
            notes: Vec::new(),
        };
    }
    timeouts::plan(
        &timeouts::Inputs {
            target: &Target::Namespace {
                netns: n.id.clone(),
            },
            ns_name: &n.id.name,
            live: &n.timeouts,
            level,
            level_reason,
            respect_operator: input.cfg.agent.respect_operator,
            composition: n.composition.as_ref(),
        },
        &input.cfg.timeouts,
        lowered_before,
        held_before,
    )
}

#[cfg(test)]
mod tests {
    use super::super::signals;
    use super::super::testkit::{bump, draft, inputs, obs};
    use super::*;
    use crate::config::Config;
    use crate::policy::{PolicyState, ceiling_of};
    use std::time::Duration;

    fn verdicts(
        o: &crate::model::Observation,
        prev: &PolicyState,
    ) -> (Vec<NamespaceVerdict>, Draft) {
        let cfg = Config::default();
        let input = inputs(o, &cfg, prev, 20);
        let sig = signals::read(&input);
        let mut d = draft();
        let v = decide(&input, &sig, &ceiling_of(o, &cfg), o.global.max, &mut d);
        (v, d)
    }

    #[test]
    fn levels_follow_utilisation_per_namespace() {
        let (v, d) = verdicts(
            &obs(100_000, &[10, 90_000, 97_000]),
            &PolicyState::default(),
        );
        let levels: Vec<Level> = v.iter().map(|v| v.level).collect();
        assert_eq!(levels, [Level::Normal, Level::Elevated, Level::Critical]);
        assert!(d.next.namespaces.len() == 3);
    }

    #[test]
    fn a_read_only_proc_sys_plans_no_write_but_reports_the_level() {
        let mut o = obs(100_000, &[97_000]);
        o.namespaces[0].timeouts = [("nf_conntrack_udp_timeout".to_string(), 30)].into();
        let (v, d) = verdicts(&o, &PolicyState::default());
        assert_eq!(v[0].level, Level::Critical);
        assert_eq!(d.changes.len(), 1, "writable: the UDP timeout is lowered");
        o.global.write_access = crate::model::Access {
            writable: false,
            reason: Some("EROFS".into()),
            root_could: false,
            read_only: true,
        };
        let (v, d) = verdicts(&o, &PolicyState::default());
        assert_eq!(v[0].level, Level::Critical, "the level is still reported");
        assert!(d.changes.is_empty(), "{:?}", d.changes);
    }

    /// MemAvailable `bytes` below the reserve: the host is short by that much.
    fn short_by(o: &mut crate::model::Observation, bytes: u64) {
        let reserve = ceiling_of(o, &Config::default()).reserve_bytes;
        o.host.memory.available_bytes = Some(reserve - bytes);
    }

    #[test]
    fn a_host_short_of_memory_makes_every_namespace_critical() {
        let mut o = obs(100_000, &[10, 20]);
        short_by(&mut o, 64 << 10);
        let (v, _) = verdicts(&o, &PolicyState::default());
        assert!(v.iter().all(|v| v.level == Level::Critical), "{v:?}");
        assert!(v[0].level_reason.contains("short of memory"));
    }

    #[test]
    fn short_of_memory_the_table_cuts_where_its_memory_is_not_in_the_quiet_namespaces() {
        // One tenant floods; a router and a quiet tenant hold 3 % between them.
        let mut o = obs(100_000, &[1_500, 97_000, 1_500]);
        short_by(&mut o, 1 << 20);
        for n in &mut o.namespaces {
            n.timeouts = [(tunables::ESTABLISHED.to_string(), 432_000)].into();
        }
        let (v, d) = verdicts(&o, &PolicyState::default());
        let levels: Vec<Level> = v.iter().map(|v| v.level).collect();
        assert_eq!(
            levels,
            [Level::Normal, Level::Critical, Level::Normal],
            "{v:?}"
        );
        assert!(v[1].level_reason.contains("short of memory"), "{v:?}");
        let cut: Vec<&str> = d
            .changes
            .iter()
            .filter_map(|c| match &c.target {
                Target::Namespace { netns } => Some(netns.name.as_str()),
                Target::Global => None,
            })
            .collect();
        assert!(
            cut.iter().all(|n| *n == v[1].netns.name),
            "only the flooder: {cut:?}"
        );
        let spared: Vec<&str> = d
            .explanations
            .iter()
            .filter(|e| e.text.contains("the table's memory is not in"))
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(spared.len(), 1, "one explanation: {:#?}", d.explanations);
        assert!(spared[0].contains("netns ns0, ns2:"), "{}", spared[0]);
    }

    #[test]
    fn the_spared_are_named_escaped_and_a_few_at_most() {
        let mut d = draft();
        let mut spared: Vec<String> = (0..7).map(|i| format!("pod{i}")).collect();
        spared[0] = "evil\u{1b}[2J".into();
        explain_spared(
            (Some("the table's memory is over its budget"), false),
            &spared,
            &mut d,
        );
        let text = &d.explanations[0].text;
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("pod4 and 2 more:"), "{text}");
        let mut d = draft();
        explain_spared((None, false), &spared, &mut d);
        assert!(
            d.explanations.is_empty(),
            "no memory signal, nothing spared"
        );
    }

    #[test]
    fn a_table_far_smaller_than_what_is_short_is_cut_nowhere() {
        // The host is short by far more than the few thousand entries cost: something
        // else eats the memory, and cutting sessions' timeouts would free nothing.
        let mut o = obs(100_000, &[3_000, 1_000]);
        short_by(&mut o, 512 << 20);
        let (v, d) = verdicts(&o, &PolicyState::default());
        assert!(v.iter().all(|v| v.level == Level::Normal), "{v:?}");
        assert!(
            d.explanations
                .iter()
                .any(|e| e.text.contains("short of memory") && e.text.contains("ns0, ns1:")),
            "{:#?}",
            d.explanations
        );
    }

    #[test]
    fn equal_tenants_are_all_where_the_memory_is() {
        let counts = [5_000; 20];
        let mut o = obs(200_000, &counts);
        short_by(&mut o, 1 << 20);
        let (v, _) = verdicts(&o, &PolicyState::default());
        assert!(v.iter().all(|v| v.level == Level::Critical), "{v:?}");
        let c = ceiling_of(&o, &Config::default());
        assert_eq!(memory_holders(&o.namespaces, &c).len(), 20);
        // Unreadable counts are not holders.
        let mut o = obs(200_000, &[0, 7]);
        o.namespaces[0].count = None;
        let c = ceiling_of(&o, &Config::default());
        assert_eq!(memory_holders(&o.namespaces, &c).len(), 1);
    }

    #[test]
    fn clashes_are_explained_not_pressure() {
        let o0 = obs(100_000, &[1000]);
        let (_, d0) = verdicts(&o0, &PolicyState::default());
        let mut o = o0.clone();
        bump(&mut o, 0, "drop", 4);
        bump(&mut o, 0, "insert_failed", 4);
        let (v, d) = verdicts(&o, &d0.next);
        assert_eq!((v[0].clash_delta, v[0].level), (Some(4), Level::Normal));
        assert!(
            d.explanations
                .iter()
                .any(|e| e.kind == Why::Clash && e.text.contains("insert clashes"))
        );
    }

    #[test]
    fn a_namespace_dropping_now_is_critical_now_even_when_growth_answers_it() {
        let cfg = Config::default();
        let (_, d0) = verdicts(&obs(100_000, &[10]), &PolicyState::default());
        let mut o = obs(100_000, &[100_000]);
        bump(&mut o, 0, "drop", 50);
        let input = inputs(&o, &cfg, &d0.next, 21);
        let sig = signals::read(&input);
        let mut d = draft();
        let v = decide(&input, &sig, &ceiling_of(&o, &cfg), 400_000, &mut d);
        assert_eq!(v[0].level_now, Some(Level::Critical), "{v:?}");
        let why = v[0].level_now_reason.as_deref().unwrap_or("");
        assert!(why.contains("drop counter rose"), "{why}");
        assert_eq!(v[0].level, Level::Normal, "after growth to 4x: {v:?}");
    }

    #[test]
    fn the_level_now_is_against_the_live_max() {
        let (v, _) = verdicts(&obs(100_000, &[92_000]), &PolicyState::default());
        assert_eq!(v[0].level_now, Some(Level::Elevated));
        assert!(
            v[0].level_now_reason
                .as_deref()
                .unwrap_or("")
                .contains("92%")
        );
    }

    #[test]
    fn a_one_shot_sample_shows_the_rise_of_its_own_seconds() {
        let o0 = obs(100_000, &[1000]);
        let mut o1 = o0.clone();
        bump(&mut o1, 0, "drop", 7);
        let prev =
            crate::policy::with_sample(&PolicyState::default(), &o0, Duration::from_secs(10));
        let (plan, _) =
            crate::policy::decide(&o1, &Config::default(), &prev, Duration::from_secs(11));
        assert_eq!(plan.namespaces[0].drop_delta, Some(7));
        assert_eq!(plan.namespaces[0].level_now, Some(Level::Critical));
    }
}
