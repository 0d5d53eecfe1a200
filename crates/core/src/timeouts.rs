//! Timeout plans for one namespace: lower under pressure, tier by tier, never below the
//! floors; restore the operator's values when the pressure is gone.
//!
//! The operator's value of a key (its baseline) is remembered the first time ctune lowers
//! it. If the live value later differs from what ctune set, someone else changed it: that
//! value becomes the new baseline instead of being overwritten back.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::config::Timeouts;
use crate::plan::{ADOPTED, Change, Target};
use crate::pressure::Level;
use crate::tunables::{self, TimeoutTier};
use crate::units::fmt_secs;

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
    pub notes: Vec<String>,
}

/// Plans the timeouts of one namespace. `lowered` is what ctune lowered earlier, `held`
/// what it must leave alone.
pub fn plan(
    inp: &Inputs<'_>,
    cfg: &Timeouts,
    lowered: &BTreeMap<String, Lowered>,
    held: &BTreeSet<String>,
) -> TimeoutPlan {
    let Inputs {
        target,
        ns_name,
        live,
        level,
        level_reason: _,
        respect_operator,
    } = *inp;
    // A hold lasts for one pressure episode.
    let mut held = if level == Level::Normal {
        BTreeSet::new()
    } else {
        held.clone()
    };
    let mut changes = Vec::new();
    let mut record = BTreeMap::new();
    let mut notes = Vec::new();
    let mut keys: Vec<&String> = live.keys().collect();
    keys.sort_by_key(|k| (tunables::tier_of(k), k.as_str()));
    for key in keys {
        let current = live[key];
        // A key lowered earlier whose floor was since removed from the config goes back
        // to the operator's value; a key never lowered and without a floor is not ours.
        let floor = match (cfg.floor_of(key), lowered.contains_key(key)) {
            (Some(f), _) => f,
            (None, true) => u64::MAX,
            (None, false) => continue,
        };
        let baseline = match lowered.get(key) {
            Some(l) if l.set == current => l.baseline,
            Some(l) => {
                notes.push(adopted(key, ns_name, current, l.set));
                if respect_operator && level != Level::Normal {
                    held.insert(key.clone());
                }
                current
            }
            None => current,
        };
        let lower = cfg.manage
            && lowered_at(tunables::tier_of(key), level)
            && baseline > floor
            && !held.contains(key);
        let desired = if lower { floor } else { baseline };
        if desired != baseline {
            record.insert(
                key.clone(),
                Lowered {
                    baseline,
                    set: desired,
                },
            );
        }
        if desired == current {
            continue;
        }
        changes.push(Change {
            key: key.clone(),
            target: target.clone(),
            old: current,
            new: desired,
            reason: reason(inp, key, lower, current, desired),
        });
    }
    carry_over(inp, cfg, lowered, &mut record, &mut notes);
    TimeoutPlan {
        changes,
        lowered: record,
        held,
        notes,
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
    format!(
        "{ns_name} at {level}{why}: {verb} {} {} -> {} ({source})",
        short(key),
        fmt_secs(current),
        fmt_secs(desired)
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
    notes: &mut Vec<String>,
) {
    for (key, l) in lowered {
        if !inp.live.contains_key(key) {
            record.insert(key.clone(), *l);
        }
    }
    for key in cfg.floors.keys() {
        if !inp.live.contains_key(&format!("nf_conntrack_{key}")) {
            notes.push(format!(
                "timeouts.floors.{key}: no such key in {} on this kernel; ignored",
                inp.ns_name
            ));
        }
    }
}

fn short(key: &str) -> &str {
    key.strip_prefix("nf_conntrack_").unwrap_or(key)
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
        (p.changes, p.lowered, p.notes)
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
}
