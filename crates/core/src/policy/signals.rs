//! Phase 2 of a decision: the signals read from one observation against the previous
//! state: counter rises per namespace, the busiest table, the fastest-filling one and
//! where it will be by the step after next, and who is dropping or evicting.

use std::time::Duration;

use crate::model::NamespaceObs;
use crate::model::stat::split_drops;

use super::{Counters, Inputs, MAX_BASELINE_INTERVALS};

/// One namespace's counters now and their rise since the previous sample. `drop` is
/// split by cause ([`split_drops`]): only table-full drops are pressure.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rises {
    /// The counters now, kept for the next sample.
    pub counters: Counters,
    /// Table-full drops: the `drop` rise less the clashes (None on a first sample, after
    /// a stale one, or without the column).
    pub drop: Option<u64>,
    /// Drops from unresolved insert clashes: reported, never pressure.
    pub clash: Option<u64>,
    /// `early_drop` rise.
    pub early: Option<u64>,
    /// `chainlength` rise.
    pub chain: Option<u64>,
}

/// A namespace whose count, at its current growth rate, is heading for the watermark.
#[derive(Debug, Clone, Copy)]
pub(super) struct Projection<'a> {
    /// The count expected by the step after next.
    pub count: u64,
    /// Entries per second.
    pub rate: f64,
    /// Which namespace.
    pub name: &'a str,
}

/// Everything the later phases read from the observation.
pub(super) struct Signals<'a> {
    /// Per namespace, in the observation's order.
    pub rises: Vec<Rises>,
    /// `nf_conntrack_max` is 0: no limit, no early drop.
    pub unlimited: bool,
    /// The max in force (u64::MAX when unlimited).
    pub current_max: u64,
    /// The busiest namespace's count.
    pub peak: u64,
    /// The busiest namespace's name (`?` when no count could be read).
    pub busiest_name: &'a str,
    /// peak / current max.
    pub util: f64,
    /// Seconds until the step after next: growth must land before the table fills.
    pub horizon: f64,
    /// The namespace projected highest by then, if any is growing.
    pub projected: Option<Projection<'a>>,
    /// The first namespace whose `drop` rose, with the rise.
    pub dropping: Option<(&'a NamespaceObs, u64)>,
    /// The first namespace whose `early_drop` rose, with the rise.
    pub evicting: Option<(&'a NamespaceObs, u64)>,
    /// The age of the oldest previous sample that was too old to measure a rise from.
    pub stale_baseline: Option<Duration>,
}

fn delta(now: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(now?.saturating_sub(before?))
}

/// How old a previous sample may be to measure a rise from: a few of the agent's
/// periods, the longer of the two (while every table is quiet it steps every
/// `agent.idle_interval`; measured against `agent.interval` alone, no idle step would
/// ever see a rise).
pub(super) fn max_baseline_age(input: &Inputs) -> Duration {
    let agent = &input.cfg.agent;
    agent.interval.max(agent.idle_interval) * MAX_BASELINE_INTERVALS
}

/// The previous sample of a namespace, when recent enough to measure a rise from; and
/// the age of one that is not.
fn baseline(input: &Inputs, n: &NamespaceObs) -> (Option<Counters>, Option<Duration>) {
    let Some(before) = input
        .prev
        .namespaces
        .get(&n.id.inode)
        .and_then(|s| s.counters)
    else {
        return (None, None);
    };
    match before.at.and_then(|at| input.now.checked_sub(at)) {
        Some(age) if age <= max_baseline_age(input) => (Some(before), None),
        Some(age) => (None, Some(age)),
        // No time (a state from an older ctune) or a clock that went back.
        None => (None, Some(Duration::MAX)),
    }
}

/// The rise of each namespace's loss counters since the previous sample, and the age of
/// the oldest baseline that was too old.
fn rises(input: &Inputs) -> (Vec<Rises>, Option<Duration>) {
    let mut stale: Option<Duration> = None;
    let rises = input
        .obs
        .namespaces
        .iter()
        .map(|n| {
            let prev = input.prev.namespaces.get(&n.id.inode);
            if let (true, Some(counters)) = (n.counters_unread, prev.and_then(|p| p.counters)) {
                // Not read this step: the last reading stays the baseline of the next.
                return Rises {
                    counters,
                    ..Rises::default()
                };
            }
            let counters = Counters::of(n, input.now);
            let (before, too_old) = baseline(input, n);
            stale = stale.max(too_old);
            let rise = |now: Option<u64>, then: fn(&Counters) -> Option<u64>| {
                before.and_then(|b| delta(now, then(&b)))
            };
            let drop = rise(counters.drop, |c| c.drop);
            let chain = rise(counters.chainlength, |c| c.chainlength);
            let split = drop
                .map(|d| split_drops(d, rise(counters.insert_failed, |c| c.insert_failed), chain));
            Rises {
                counters,
                drop: split.map(|s| s.table_full),
                clash: split.map(|s| s.clash),
                early: rise(counters.early_drop, |c| c.early_drop),
                chain,
            }
        })
        .collect();
    (rises, stale)
}

/// Where each growing namespace's count will be by the step after next, at the rate
/// seen since the previous sample; the highest.
fn projection<'a>(input: &Inputs<'a>, horizon: f64) -> Option<Projection<'a>> {
    input
        .obs
        .namespaces
        .iter()
        .filter_map(|n| {
            let count = n.count?;
            let (before, at) = input.prev.namespaces.get(&n.id.inode)?.last_count?;
            let dt = input.now.checked_sub(at)?.as_secs_f64();
            (dt > 0.0 && count > before).then(|| {
                let rate = (count - before) as f64 / dt;
                Projection {
                    count: count.saturating_add((rate * horizon).ceil() as u64),
                    rate,
                    name: n.id.name.as_str(),
                }
            })
        })
        .max_by_key(|p| p.count)
}

/// Reads the signals of one observation.
pub(super) fn read<'a>(input: &Inputs<'a>) -> Signals<'a> {
    let obs = input.obs;
    let (rises, stale_baseline) = rises(input);
    // 0 means unlimited (and no early drop): ctune does not put a limit on such a table.
    let unlimited = obs.global.max == 0;
    let current_max = if unlimited { u64::MAX } else { obs.global.max };
    let busiest = obs
        .namespaces
        .iter()
        .filter_map(|n| n.count.map(|c| (c, n.id.name.as_str())))
        .max_by_key(|(c, _)| *c);
    let peak = busiest.map_or(0, |(c, _)| c);
    let horizon = (input.cfg.agent.interval + input.cfg.agent.probe_interval).as_secs_f64();
    let first_rise = |rise: fn(&Rises) -> Option<u64>| {
        obs.namespaces
            .iter()
            .zip(&rises)
            .find_map(|(n, r)| rise(r).filter(|d| *d > 0).map(|d| (n, d)))
    };
    Signals {
        dropping: first_rise(|r| r.drop),
        evicting: first_rise(|r| r.early),
        projected: projection(input, horizon),
        rises,
        stale_baseline,
        unlimited,
        current_max,
        peak,
        busiest_name: busiest.map_or("?", |(_, n)| n),
        util: peak as f64 / current_max as f64,
        horizon,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{bump, inputs, obs};
    use super::*;
    use crate::config::Config;
    use crate::policy::{NamespaceState, PolicyState};

    /// A previous state whose sample of namespace 1 is `o`'s counters at `at` seconds.
    fn sampled(o: &crate::model::Observation, at: u64) -> PolicyState {
        let n = &o.namespaces[0];
        let mut prev = PolicyState::default();
        prev.namespaces.insert(
            n.id.inode,
            NamespaceState {
                counters: Some(Counters::of(n, Duration::from_secs(at))),
                ..NamespaceState::default()
            },
        );
        prev
    }

    #[test]
    fn drops_are_split_into_table_full_and_clashes() {
        let cfg = Config::default();
        let mut o = obs(262_144, &[1000]);
        let prev = sampled(&o, 10);
        bump(&mut o, 0, "drop", 7);
        bump(&mut o, 0, "insert_failed", 5);
        let sig = read(&inputs(&o, &cfg, &prev, 11));
        assert_eq!((sig.rises[0].drop, sig.rises[0].clash), (Some(2), Some(5)));
        assert_eq!(sig.dropping.map(|(_, d)| d), Some(2));
    }

    #[test]
    fn a_stale_baseline_measures_no_rise() {
        let cfg = Config::default();
        let mut o = obs(262_144, &[1000]);
        let prev = sampled(&o, 10);
        bump(&mut o, 0, "drop", 7);
        let sig = read(&inputs(&o, &cfg, &prev, 10 + 3600));
        assert_eq!(sig.rises[0].drop, None);
        assert!(sig.dropping.is_none());
        assert_eq!(sig.stale_baseline, Some(Duration::from_secs(3600)));
    }

    /// While every table is quiet the agent steps every `agent.idle_interval` (5 s), and
    /// reads a quiet namespace's counters at every fourth idle step: a loss between
    /// two of those reads is a rise like any other (measured against `agent.interval`
    /// alone, three seconds, it never was).
    #[test]
    fn an_idle_step_measures_the_rise_since_the_last_one() {
        let cfg = Config::default();
        let mut o = obs(262_144, &[1000]);
        let prev = sampled(&o, 10);
        bump(&mut o, 0, "drop", 7);
        let every = u64::from(crate::controller::QUIET_REREAD.div_ceil(2));
        let later = 10 + every * cfg.agent.idle_interval.as_secs();
        let sig = read(&inputs(&o, &cfg, &prev, later));
        assert_eq!(sig.rises[0].drop, Some(7));
        assert_eq!(sig.stale_baseline, None);
    }

    #[test]
    fn the_busiest_namespace_and_utilisation() {
        let cfg = Config::default();
        let o = obs(100_000, &[10, 80_000, 5]);
        let prev = PolicyState::default();
        let input = inputs(&o, &cfg, &prev, 1);
        let sig = read(&input);
        assert_eq!((sig.peak, sig.busiest_name), (80_000, "ns1"));
        assert!((sig.util - 0.8).abs() < 1e-9);
    }
}
