//! Timeout plans for one namespace: lower under pressure, tier by tier, never below the
//! floors; restore the operator's values when the pressure is gone.
//!
//! The operator's value of a key (its baseline) is remembered the first time ctune lowers
//! it. If the live value later differs from what ctune set, someone else changed it: that
//! value becomes the new baseline instead of being overwritten back.
//!
//! With a composition sample of the namespace ([`Governed`]), a key the level would lower
//! is lowered only when it governs at least `timeouts.min_share` of the entries, and one
//! already lowered (by the tiers, before the first sample came) stays so only while it
//! governs at least half of that: a cut that frees nothing is undone, and a share near
//! the line does not flap. Keys are lowered in the order of the entries they govern,
//! most first.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::config::Timeouts;
use crate::model::Governed;
use crate::plan::{ADOPTED, Change, Explanation, Target, Why};
use crate::pressure::Level;
use crate::sysctl;
use crate::tunables::{self, TimeoutTier};
use crate::units::{fmt_pct, fmt_secs};

/// A key ctune has lowered: what the operator had, and what ctune set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lowered {
    /// The value before ctune touched it; restored when pressure ends.
    pub baseline: u64,
    /// The value ctune set; a different live value means someone else changed it.
    pub set: u64,
}

/// Whether a tier is lowered at a level.
fn lowered_at(tier: TimeoutTier, level: Level) -> bool {
    match tier {
        TimeoutTier::Transient => level >= Level::Elevated,
        TimeoutTier::Established => level >= Level::Critical,
    }
}

/// What a namespace's timeout plan is made from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Where the changes apply.
    pub target: &'a Target,
    /// The namespace's name, for reasons.
    pub ns_name: &'a str,
    /// Every timeout key present in the namespace, in seconds.
    pub live: &'a BTreeMap<String, u64>,
    /// The namespace's pressure level.
    pub level: Level,
    /// Why it is at that level.
    pub level_reason: &'a str,
    /// Whether a value someone else changed is left alone until pressure ends.
    pub respect_operator: bool,
    /// What holds the namespace's entries, when sampled.
    pub composition: Option<&'a Governed>,
}

/// A namespace's timeout plan and what to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutPlan {
    /// Changes, transient keys first, established last.
    pub changes: Vec<Change>,
    /// Keys lowered after the plan, with the operator's values.
    pub lowered: BTreeMap<String, Lowered>,
    /// Keys someone else changed while lowered: not lowered again until normal.
    pub held: BTreeSet<String>,
    /// For the operator.
    pub notes: Vec<Explanation>,
}

/// Plans the timeouts of one namespace. `lowered` is what ctune lowered earlier, `held`
/// what it must leave alone.
pub fn plan(
    inp: &Inputs<'_>,
    cfg: &Timeouts,
    lowered: &BTreeMap<String, Lowered>,
    held: &BTreeSet<String>,
) -> TimeoutPlan {
    // A hold lasts for one pressure episode.
    let mut held = if inp.level == Level::Normal {
        BTreeSet::new()
    } else {
        held.clone()
    };
    let mut changes = Vec::new();
    let mut record = BTreeMap::new();
    let mut notes = Vec::new();
    let mut spared = Vec::new();
    for key in ordered_keys(inp) {
        let current = inp.live[key];
        // A key lowered earlier whose floor was since removed from the config goes back
        // to the operator's value; a key never lowered and without a floor is not ours.
        let floor = match (cfg.floor_of(key), lowered.contains_key(key)) {
            (Some(f), _) => f,
            (None, true) => u64::MAX,
            (None, false) => continue,
        };
        let baseline = baseline(inp, key, lowered.get(key), &mut held, &mut notes);
        let wanted = cfg.manage
            && lowered_at(tunables::tier_of(key), inp.level)
            && baseline > floor
            && !held.contains(key);
        let already = current < baseline && lowered.get(key).is_some_and(|l| l.set == current);
        let cut = by_share(inp.composition.map(|g| g.share(key)), cfg, wanted, already);
        if cut == Cut::Spared {
            spared.push(key.as_str());
        }
        let desired = if cut == Cut::Lower { floor } else { baseline };
        if desired != baseline {
            record.insert(
                key.clone(),
                Lowered {
                    baseline,
                    set: desired,
                },
            );
        }
        if desired != current {
            changes.push(Change {
                key: key.clone(),
                target: inp.target.clone(),
                old: current,
                new: desired,
                reason: reason(inp, key, cut == Cut::Lower, current, desired),
            });
        }
    }
    if let (Some(g), false) = (inp.composition, spared.is_empty()) {
        notes.push(Explanation::new(
            Why::Timeouts,
            spared_note(inp, cfg, g, &spared),
        ));
    }
    carry_over(inp, cfg, lowered, &mut record, &mut notes);
    TimeoutPlan {
        changes,
        lowered: record,
        held,
        notes,
    }
}

/// The operator's value of `key`: the one recorded when ctune lowered it, unless the
/// live value is no longer what ctune set. Then someone else changed it: their value is
/// adopted (with a note), and with `respect_operator` the key is held, left alone until
/// the pressure ends.
fn baseline(
    inp: &Inputs<'_>,
    key: &str,
    lowered: Option<&Lowered>,
    held: &mut BTreeSet<String>,
    notes: &mut Vec<Explanation>,
) -> u64 {
    let current = inp.live[key];
    match lowered {
        Some(l) if l.set == current => l.baseline,
        Some(l) => {
            notes.push(Explanation::new(
                Why::Adopted,
                adopted(key, inp.ns_name, current, l.set),
            ));
            if inp.respect_operator && inp.level != Level::Normal {
                held.insert(key.to_string());
            }
            current
        }
        None => current,
    }
}

/// The namespace's keys in the order they are planned: transient tier first, then by
/// the entries they govern, most first (so the notes and changes lead with what frees
/// the most), then by name.
fn ordered_keys<'a>(inp: &Inputs<'a>) -> Vec<&'a String> {
    let governed = |k: &str| {
        inp.composition
            .map_or(0, |g| g.by_key.get(k).copied().unwrap_or(0))
    };
    let mut keys: Vec<&String> = inp.live.keys().collect();
    keys.sort_by_key(|k| {
        (
            tunables::tier_of(k),
            std::cmp::Reverse(governed(k)),
            k.as_str(),
        )
    });
    keys
}

/// What becomes of a key the tiers would have lowered (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Lowered to its floor.
    Lower,
    /// At the operator's value.
    Keep,
    /// At the operator's value although the level would lower it: it governs too little.
    Spared,
}

/// Whether a key the level would lower (`wanted`) is lowered, given its `share` of the
/// entries when sampled: from timeouts.min_share up, and one `already` lowered is kept
/// so down to half of it (no flapping around the line). Without a sample the tiers
/// alone decide.
fn by_share(share: Option<f64>, cfg: &Timeouts, wanted: bool, already: bool) -> Cut {
    let governs = share.is_none_or(|s| s >= cfg.min_share.get());
    let keeps = share.is_none_or(|s| s >= cfg.min_share.get() / 2.0);
    match (wanted, governs || (already && keeps)) {
        (true, true) => Cut::Lower,
        (true, false) => Cut::Spared,
        (false, _) => Cut::Keep,
    }
}

/// Why a key is lowered to its floor or restored to the operator's value.
fn reason(inp: &Inputs<'_>, key: &str, lower: bool, current: u64, desired: u64) -> String {
    let (ns_name, level) = (inp.ns_name, inp.level);
    let (verb, why, source) = if lower {
        ("lowering", format!(" ({})", inp.level_reason), "floor")
    } else {
        ("restoring", String::new(), "operator's value")
    };
    let share = match inp.composition {
        Some(g) if lower => format!(
            "; governs {} of the entries in netns {ns_name}{}",
            fmt_pct(g.share(key)),
            if g.partial {
                format!(", in a random sample of {}", g.entries)
            } else {
                String::new()
            }
        ),
        Some(g) if level > Level::Normal => format!(
            "; it governs only {} of the entries now: the cut frees next to nothing",
            fmt_pct(g.share(key))
        ),
        _ => String::new(),
    };
    format!(
        "{ns_name} at {level}{why}: {verb} {} {} -> {} ({source}{share})",
        sysctl::short(key),
        fmt_secs(current),
        fmt_secs(desired)
    )
}

/// Why keys the level would lower are left: they govern too little of the table.
fn spared_note(inp: &Inputs<'_>, cfg: &Timeouts, g: &Governed, spared: &[&str]) -> String {
    let list: Vec<String> = spared
        .iter()
        .map(|k| format!("{} ({})", sysctl::short(k), fmt_pct(g.share(k))))
        .collect();
    format!(
        "netns {} at {}: left alone, each governing under timeouts.min_share {} of the {} entries sampled {}s ago: {}",
        inp.ns_name,
        inp.level,
        fmt_pct(cfg.min_share.get()),
        g.entries,
        g.age_secs,
        list.join(", ")
    )
}

/// The note for a key someone else changed while ctune had it lowered.
fn adopted(key: &str, ns_name: &str, current: u64, set: u64) -> String {
    format!(
        "{key} in {ns_name} is {} but ctune set {}: {ADOPTED}; adopting {} as the operator's value",
        fmt_secs(current),
        fmt_secs(set),
        fmt_secs(current)
    )
}

/// A key missing from this sample (a read error) keeps its record: the operator's value
/// must still come back once it can be read again. A floor for a key this kernel lacks
/// is noted.
fn carry_over(
    inp: &Inputs<'_>,
    cfg: &Timeouts,
    lowered: &BTreeMap<String, Lowered>,
    record: &mut BTreeMap<String, Lowered>,
    notes: &mut Vec<Explanation>,
) {
    for (key, l) in lowered {
        if !inp.live.contains_key(key) {
            record.insert(key.clone(), *l);
        }
    }
    for key in cfg.floors.keys() {
        if !inp.live.contains_key(&sysctl::full(key)) {
            notes.push(Explanation::new(
                Why::FloorKeyMissing,
                format!(
                    "timeouts.floors.{key}: no such key in {} on this kernel; ignored",
                    inp.ns_name
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn live() -> BTreeMap<String, u64> {
        [
            ("nf_conntrack_generic_timeout", 600),
            ("nf_conntrack_udp_timeout", 30),
            ("nf_conntrack_tcp_timeout_established", 432000),
            ("nf_conntrack_gre_timeout", 30),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn inputs(level: Level, live: &BTreeMap<String, u64>) -> Inputs<'_> {
        Inputs {
            target: &Target::Global,
            ns_name: "init",
            live,
            level,
            level_reason: "test",
            respect_operator: true,
            composition: None,
        }
    }

    fn run(
        level: Level,
        live: &BTreeMap<String, u64>,
        lowered: &BTreeMap<String, Lowered>,
    ) -> (Vec<Change>, BTreeMap<String, Lowered>, Vec<String>) {
        let p = plan(
            &inputs(level, live),
            &Config::default().timeouts,
            lowered,
            &BTreeSet::new(),
        );
        (
            p.changes,
            p.lowered,
            p.notes.into_iter().map(|n| n.text).collect(),
        )
    }

    #[test]
    fn normal_changes_nothing() {
        let (c, r, _) = run(Level::Normal, &live(), &BTreeMap::new());
        assert!(c.is_empty() && r.is_empty());
    }

    #[test]
    fn elevated_lowers_transient_only() {
        let (c, r, _) = run(Level::Elevated, &live(), &BTreeMap::new());
        let keys: Vec<_> = c.iter().map(|c| (c.key.as_str(), c.new)).collect();
        assert_eq!(
            keys,
            [
                ("nf_conntrack_generic_timeout", 120),
                ("nf_conntrack_udp_timeout", 10)
            ]
        );
        assert_eq!(
            r["nf_conntrack_generic_timeout"],
            Lowered {
                baseline: 600,
                set: 120
            }
        );
        assert!(c[0].reason.contains("10m -> 2m"), "{}", c[0].reason);
    }

    #[test]
    fn critical_lowers_established_last() {
        let (c, _, _) = run(Level::Critical, &live(), &BTreeMap::new());
        assert_eq!(c.last().unwrap().key, tunables::ESTABLISHED);
        assert_eq!(c.last().unwrap().new, 54000);
        assert!(
            !c.iter().any(|c| c.key.contains("gre")),
            "keys without a floor are not touched"
        );
    }

    #[test]
    fn restores_operator_values_when_pressure_ends() {
        let (_, rec, _) = run(Level::Critical, &live(), &BTreeMap::new());
        let mut now = live();
        for (k, l) in &rec {
            now.insert(k.clone(), l.set);
        }
        let (c, r, _) = run(Level::Normal, &now, &rec);
        assert!(r.is_empty());
        assert_eq!(c.len(), 3);
        assert!(
            c.iter()
                .all(|c| live()[&c.key] == c.new && c.reason.contains("restoring"))
        );
    }

    #[test]
    fn operator_change_is_adopted_not_overwritten() {
        let rec: BTreeMap<_, _> = [(
            "nf_conntrack_generic_timeout".to_string(),
            Lowered {
                baseline: 600,
                set: 120,
            },
        )]
        .into();
        let mut now = live();
        now.insert("nf_conntrack_generic_timeout".into(), 300);
        let (c, r, notes) = run(Level::Normal, &now, &rec);
        assert!(
            c.iter().all(|c| c.key != "nf_conntrack_generic_timeout"),
            "{c:?}"
        );
        assert!(r.is_empty());
        assert!(notes.iter().any(|n| n.contains("someone else")));
    }

    #[test]
    fn baseline_below_floor_is_left_alone() {
        let mut now = live();
        now.insert("nf_conntrack_generic_timeout".into(), 60);
        let (c, _, _) = run(Level::Critical, &now, &BTreeMap::new());
        assert!(c.iter().all(|c| c.key != "nf_conntrack_generic_timeout"));
    }

    #[test]
    fn unmanaged_restores_but_never_lowers() {
        let mut cfg = Config::default().timeouts;
        cfg.manage = false;
        let l = live();
        let c = plan(
            &inputs(Level::Critical, &l),
            &cfg,
            &BTreeMap::new(),
            &BTreeSet::new(),
        )
        .changes;
        assert!(c.is_empty());
    }

    #[test]
    fn operator_change_under_pressure_is_held_until_normal() {
        let rec: BTreeMap<_, _> = [(
            "nf_conntrack_generic_timeout".to_string(),
            Lowered {
                baseline: 600,
                set: 120,
            },
        )]
        .into();
        let mut now = live();
        now.insert("nf_conntrack_generic_timeout".into(), 300);
        let cfg = Config::default().timeouts;
        let p = plan(&inputs(Level::Elevated, &now), &cfg, &rec, &BTreeSet::new());
        assert!(
            p.changes
                .iter()
                .all(|c| c.key != "nf_conntrack_generic_timeout")
        );
        assert!(p.held.contains("nf_conntrack_generic_timeout"));
        // Still elevated next tick: left alone.
        let again = plan(&inputs(Level::Elevated, &now), &cfg, &p.lowered, &p.held);
        assert!(
            again
                .changes
                .iter()
                .all(|c| c.key != "nf_conntrack_generic_timeout")
        );
        // Back to normal: the hold ends; the next episode may lower it again.
        let normal = plan(
            &inputs(Level::Normal, &now),
            &cfg,
            &again.lowered,
            &again.held,
        );
        assert!(normal.held.is_empty());
        let next = plan(
            &inputs(Level::Elevated, &now),
            &cfg,
            &normal.lowered,
            &normal.held,
        );
        assert!(
            next.changes
                .iter()
                .any(|c| c.key == "nf_conntrack_generic_timeout" && c.old == 300 && c.new == 120)
        );
    }

    #[test]
    fn floors_for_absent_keys_are_noted() {
        let (_, _, notes) = run(Level::Normal, &live(), &BTreeMap::new());
        assert!(notes.iter().any(|n| n.contains("tcp_timeout_syn_sent")));
    }

    /// A composition sample: `entries` in all, `by_key` (short names) governed.
    fn sample(entries: u64, by_key: &[(&str, u64)]) -> Governed {
        Governed {
            entries,
            by_key: by_key.iter().map(|(k, n)| (sysctl::full(k), *n)).collect(),
            partial: false,
            taken_at: std::time::Duration::from_secs(100),
            age_secs: 3,
        }
    }

    fn run_with(level: Level, g: &Governed, lowered: &BTreeMap<String, Lowered>) -> TimeoutPlan {
        let live = live();
        let mut inp = inputs(level, &live);
        inp.composition = Some(g);
        plan(&inp, &Config::default().timeouts, lowered, &BTreeSet::new())
    }

    fn keys(c: &[Change]) -> Vec<&str> {
        c.iter().map(|c| crate::sysctl::short(&c.key)).collect()
    }

    #[test]
    fn unreplied_udp_gets_its_timeout_cut_and_the_rest_is_spared() {
        let g = sample(
            10_000,
            &[
                ("udp_timeout", 9950),
                ("generic_timeout", 20),
                ("tcp_timeout_established", 30),
            ],
        );
        let p = run_with(Level::Critical, &g, &BTreeMap::new());
        assert_eq!(keys(&p.changes), ["udp_timeout"], "{:?}", p.changes);
        assert!(
            p.changes[0]
                .reason
                .contains("governs 100% of the entries in netns init"),
            "{}",
            p.changes[0].reason
        );
        let note = p
            .notes
            .iter()
            .find(|n| n.kind == Why::Timeouts && n.text.contains("left alone"))
            .expect("a note");
        for spared in ["generic_timeout (0.2%)", "tcp_timeout_established (0.3%)"] {
            assert!(note.text.contains(spared), "{spared} in {note}");
        }
    }

    #[test]
    fn established_tcp_at_elevated_cuts_nothing_and_at_critical_only_established() {
        let g = sample(
            10_000,
            &[
                ("tcp_timeout_established", 9900),
                ("udp_timeout", 40),
                ("generic_timeout", 10),
            ],
        );
        let p = run_with(Level::Elevated, &g, &BTreeMap::new());
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        let p = run_with(Level::Critical, &g, &BTreeMap::new());
        assert_eq!(keys(&p.changes), ["tcp_timeout_established"]);
    }

    #[test]
    fn keys_are_lowered_most_governing_first() {
        let g = sample(100, &[("generic_timeout", 30), ("udp_timeout", 60)]);
        let p = run_with(Level::Elevated, &g, &BTreeMap::new());
        assert_eq!(keys(&p.changes), ["udp_timeout", "generic_timeout"]);
    }

    #[test]
    fn by_share_lowers_from_min_share_and_keeps_down_to_half() {
        // The default min_share is 1 %.
        let cfg = Config::default().timeouts;
        for (share, wanted, already, cut) in [
            (None, true, false, Cut::Lower),
            (None, false, true, Cut::Keep),
            (Some(0.01), true, false, Cut::Lower),
            (Some(0.007), true, false, Cut::Spared),
            (Some(0.007), true, true, Cut::Lower),
            (Some(0.004), true, true, Cut::Spared),
            (Some(0.5), false, false, Cut::Keep),
        ] {
            assert_eq!(
                by_share(share, &cfg, wanted, already),
                cut,
                "{share:?} {wanted} {already}"
            );
        }
    }

    #[test]
    fn a_lowered_key_stays_down_to_half_the_min_share_and_is_undone_below() {
        // udp_timeout at its floor (10 s), which ctune set (the tiers, before a sample),
        // over the operator's 30 s.
        let mut live = live();
        live.insert("nf_conntrack_udp_timeout".into(), 10);
        let before = BTreeMap::from([(
            "nf_conntrack_udp_timeout".to_string(),
            Lowered {
                baseline: 30,
                set: 10,
            },
        )]);
        let run = |g: &Governed| {
            let mut inp = inputs(Level::Elevated, &live);
            inp.composition = Some(g);
            plan(&inp, &Config::default().timeouts, &before, &BTreeSet::new())
        };
        // 0.7 % of the entries: under min_share (1 %), over half of it: kept.
        let p = run(&sample(
            1000,
            &[("udp_timeout", 7), ("tcp_timeout_established", 993)],
        ));
        assert!(
            p.lowered.contains_key("nf_conntrack_udp_timeout"),
            "{:?}",
            p.lowered
        );
        assert!(
            !p.changes.iter().any(|c| c.key.ends_with("udp_timeout")),
            "{:?}",
            p.changes
        );
        // 0.2 %: the cut frees next to nothing and is undone, though the level lasts.
        let p = run(&sample(
            1000,
            &[("udp_timeout", 2), ("tcp_timeout_established", 998)],
        ));
        assert!(
            !p.lowered.contains_key("nf_conntrack_udp_timeout"),
            "{:?}",
            p.lowered
        );
        let undo = p.changes.iter().find(|c| c.key.ends_with("udp_timeout"));
        assert_eq!(
            undo.map(|c| (c.old, c.new)),
            Some((10, 30)),
            "{:?}",
            p.changes
        );
    }
}
