//! The decision: observation + config + previous state in, plan + next state out.
//!
//! Pure: no I/O, no clock (the caller passes monotonic `now`), so every rule here is
//! tested with tables of cases and property tests. [`decide`] runs five phases, each in
//! a module of its own:
//! 1. [`operator`]: a global value someone else changed since ctune set it is adopted.
//! 2. [`signals`]: counter rises, the busiest and the fastest-filling namespace.
//! 3. [`max`]: max grows toward the target utilisation within the ceiling (memory
//!    budget / bytes per entry / filling namespaces), or shrinks when enabled.
//! 4. [`hash`]: the hash follows max / ratio, grows only, at most once per interval.
//! 5. [`namespaces`]: each namespace's pressure level and the timeouts that follow it.

mod hash;
mod max;
mod namespaces;
mod operator;
mod signals;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ceiling::{self, Ceiling};
use crate::config::Config;
use crate::model::Observation;
use crate::plan::{Change, Explanation, Plan, Target, Why};
use crate::pressure::LevelState;
use crate::timeouts::Lowered;
use crate::tunables;

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

/// The loss counters of a sample, and when it was taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `drop`.
    pub drop: Option<u64>,
    /// `early_drop`.
    pub early_drop: Option<u64>,
    /// `chainlength`.
    pub chainlength: Option<u64>,
    /// `insert_failed` (clashes and chain refusals).
    #[serde(default)]
    pub insert_failed: Option<u64>,
    /// When (monotonic, this boot). A sample without a time, or older than
    /// [`MAX_BASELINE_INTERVALS`] intervals, is no baseline for a rise.
    #[serde(default)]
    pub at: Option<Duration>,
}

impl Counters {
    /// The loss counters of one namespace's sample, taken at `at`.
    pub fn of(n: &crate::model::NamespaceObs, at: Duration) -> Counters {
        Counters {
            drop: n.counter("drop"),
            early_drop: n.counter("early_drop"),
            chainlength: n.counter("chainlength"),
            insert_failed: n.counter("insert_failed"),
            at: Some(at),
        }
    }
}

/// `prev` with `first`'s counters and counts as the previous sample, taken at `at`: a
/// one-shot command that samples twice (the dry run, `status`) sees the loss and the
/// fill rate of the sample, as the agent sees them between two steps. Everything else
/// (levels, what ctune lowered or set) stays as saved.
pub fn with_sample(prev: &PolicyState, first: &Observation, at: Duration) -> PolicyState {
    let mut next = prev.clone();
    for n in &first.namespaces {
        let ns = next.namespaces.entry(n.id.inode).or_default();
        if ns.name.is_empty() {
            ns.name = n.id.name.clone();
        }
        ns.counters = Some(Counters::of(n, at));
        ns.last_count = n.count.map(|c| (c, at));
    }
    next
}

/// A counter's rise is measured only against a sample at most this many agent periods
/// old (`agent.interval` or `agent.idle_interval`, the longer): a rise over hours (an
/// `apply` long after the last one) says nothing about now. Five, so a quiet namespace,
/// whose counters are read every fourth idle step ([`crate::controller::QUIET_REREAD`]),
/// keeps its baseline.
pub const MAX_BASELINE_INTERVALS: u32 = 5;

/// What every phase reads: the inputs of one decision.
struct Inputs<'a> {
    obs: &'a Observation,
    cfg: &'a Config,
    prev: &'a PolicyState,
    now: Duration,
}

/// The decision in the making: the next state, and the changes and explanations in the
/// order the phases add them.
struct Draft {
    next: PolicyState,
    changes: Vec<Change>,
    explanations: Vec<Explanation>,
}

impl Draft {
    /// Adds an explanation of `kind`.
    fn explain(&mut self, kind: Why, text: String) {
        self.explanations.push(Explanation::new(kind, text));
    }
}

/// Makes the plan and the state to keep for the next decision. The next state assumes
/// the plan is applied; the caller adjusts it for changes that fail.
pub fn decide(
    obs: &Observation,
    cfg: &Config,
    prev: &PolicyState,
    now: Duration,
) -> (Plan, PolicyState) {
    let input = Inputs {
        obs,
        cfg,
        prev,
        now,
    };
    let mut draft = Draft {
        next: PolicyState {
            last_resize: prev.last_resize,
            baseline_max: prev.baseline_max,
            ..PolicyState::default()
        },
        changes: Vec::new(),
        explanations: Vec::new(),
    };
    operator::adopt_changes(&input, &mut draft);
    let ceiling = ceiling_of(obs, cfg);
    let sig = signals::read(&input);
    let new_max = max::decide(&input, &sig, &ceiling, &mut draft);
    hash::decide(&input, &sig, &ceiling, new_max, &mut draft);
    let verdicts = namespaces::decide(&input, &sig, &ceiling, new_max, &mut draft);
    // Established last across all namespaces, not only within each.
    let first_timeout = draft
        .changes
        .iter()
        .position(|c| c.target != Target::Global)
        .unwrap_or(draft.changes.len());
    draft.changes[first_timeout..].sort_by_key(|c| tunables::tier_of(&c.key));
    if prev.namespaces.is_empty() {
        draft.explanations.push(Explanation::new(
            Why::FirstSample,
            "first sample: drop and early_drop are cumulative since boot, so their rise is only seen from the next sample on",
        ));
    } else if let Some(age) = sig.stale_baseline {
        let age = if age == Duration::MAX {
            "of unknown age".to_string()
        } else {
            format!(
                "{} old",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )
        };
        draft.explanations.push(Explanation::new(
            Why::StaleBaseline,
            format!(
                "the previous sample is {age} (more than {MAX_BASELINE_INTERVALS} x the agent's longest period): counter rises are measured from this sample on"
            ),
        ));
    }
    let plan = Plan {
        ceiling,
        changes: draft.changes,
        namespaces: verdicts,
        explanations: draft.explanations,
        role: None,
    };
    (plan, draft.next)
}

/// Gives each observed namespace its last composition sample from `samples` (by inode),
/// with its age at `now`, unless older than `max_age` (a sample that old says little of
/// the table now) or too small to say anything ([`crate::model::Governed::informative`]):
/// then the tiers alone decide.
pub fn attach_compositions(
    obs: &mut Observation,
    samples: &BTreeMap<u64, crate::model::Governed>,
    now: Duration,
    max_age: Duration,
) {
    for n in &mut obs.namespaces {
        n.composition = samples.get(&n.id.inode).and_then(|g| {
            // A sample taken within the step (the one-shot `apply`'s, an onset one) is
            // later than the step's `now`: age 0. One further ahead is not believed.
            let age = match now.checked_sub(g.taken_at) {
                Some(age) => age,
                None if g.taken_at - now <= SAMPLE_AHEAD_SLACK => Duration::ZERO,
                None => return None,
            };
            (age <= max_age && g.informative()).then(|| crate::model::Governed {
                age_secs: age.as_secs(),
                ..g.clone()
            })
        });
    }
}

/// How far after the step's clock a composition sample may have been taken and count
/// as new: a sample taken within the step ends at most a couple of seconds after it.
pub const SAMPLE_AHEAD_SLACK: Duration = Duration::from_secs(5);

/// A composition sample older than this many `agent.composition_interval`s is ignored.
pub const COMPOSITION_STALE_INTERVALS: u32 = 3;

/// [`attach_compositions`] with the agent's rule for the age: a sample older than
/// [`COMPOSITION_STALE_INTERVALS`] x `agent.composition_interval` is left out (so with
/// sampling off, `0s`, none is attached).
pub fn attach_recent_compositions(
    obs: &mut Observation,
    samples: &BTreeMap<u64, crate::model::Governed>,
    cfg: &Config,
    now: Duration,
) {
    let max_age = cfg
        .agent
        .composition_interval
        .saturating_mul(COMPOSITION_STALE_INTERVALS);
    attach_compositions(obs, samples, now, max_age);
}

/// After a step decided `plan`: forgets the composition samples of the namespaces it
/// left below the elevated level (back at normal, or gone), and every sample when
/// sampling is off (`agent.composition_interval: 0s`).
pub fn forget_compositions(
    samples: &mut BTreeMap<u64, crate::model::Governed>,
    plan: &Plan,
    cfg: &Config,
) {
    let every = cfg.agent.composition_interval;
    let pressed = pressed(plan);
    samples.retain(|ino, _| !every.is_zero() && pressed.contains(ino));
}

/// Namespaces sampled at most in one round. Each dump walks the whole (global) hash
/// table: a host where a local user keeps hundreds of namespaces elevated must not keep
/// ctune dumping without end. The fullest go first; the rest are due again next round.
pub const MAX_SAMPLED_PER_ROUND: usize = 8;

/// After a step decided `plan`: the observed namespaces due for a composition sample at
/// `now`, the fullest first, at most [`MAX_SAMPLED_PER_ROUND`]: at the elevated level or
/// above, with no sample (in `samples`) and no failed attempt (in `failed`, when it
/// failed) within the last `agent.composition_interval`. None when sampling is off.
pub fn compositions_due<'a>(
    obs: &'a Observation,
    plan: &Plan,
    samples: &BTreeMap<u64, crate::model::Governed>,
    failed: &BTreeMap<u64, Duration>,
    cfg: &Config,
    now: Duration,
) -> Vec<&'a crate::model::NamespaceObs> {
    let every = cfg.agent.composition_interval;
    if every.is_zero() {
        return Vec::new();
    }
    let stale = |at: Duration| now.saturating_sub(at) >= every;
    let pressed = pressed(plan);
    let mut due: Vec<&crate::model::NamespaceObs> = obs
        .namespaces
        .iter()
        .filter(|n| {
            let ino = n.id.inode;
            pressed.contains(&ino)
                && samples.get(&ino).is_none_or(|g| stale(g.taken_at))
                && failed.get(&ino).is_none_or(|at| stale(*at))
        })
        .collect();
    due.sort_by_key(|n| std::cmp::Reverse(n.count.unwrap_or(0)));
    due.truncate(MAX_SAMPLED_PER_ROUND);
    due
}

/// Namespaces given an onset sample in one step (the fullest): each is a dump the step
/// waits for, so a handful, not [`MAX_SAMPLED_PER_ROUND`].
pub const MAX_ONSET_SAMPLES: usize = 2;

/// Of the namespaces [`compositions_due`] gives after a step decided `plan` on `obs`:
/// those the decision had no composition for and whose timeouts `plan` lowers, at most
/// [`MAX_ONSET_SAMPLES`] (the fullest; the others get the tiers' cut this step and a
/// background sample). At the onset of pressure the tiers alone would cut keys the
/// table may not hold (a UDP flood's established timeout) and the background sample
/// would give them back a step later; so the agent samples these within the step, after
/// the plan's global changes are in force (a dump never delays a raise of max), and
/// decides the timeouts again with the sample ([`with_globals_of`]).
pub fn onset_samples_due<'a>(
    obs: &'a Observation,
    plan: &Plan,
    samples: &BTreeMap<u64, crate::model::Governed>,
    failed: &BTreeMap<u64, Duration>,
    cfg: &Config,
    now: Duration,
) -> Vec<&'a crate::model::NamespaceObs> {
    let lowers = |inode: u64| {
        plan.changes.iter().any(|c| {
            c.new < c.old
                && matches!(&c.target, crate::plan::Target::Namespace { netns } if netns.inode == inode)
        })
    };
    let mut due = compositions_due(obs, plan, samples, failed, cfg, now);
    due.retain(|n| n.composition.is_none() && lowers(n.id.inode));
    due.truncate(MAX_ONSET_SAMPLES);
    due
}

/// `redecided`, the decision taken again with the onset samples, with the global changes
/// of `first`, the decision they were applied from. A composition weighs only timeouts,
/// so the two agree on every global key; should they ever not, what is in force (the
/// first's) is what the plan reports and persists.
pub fn with_globals_of(mut redecided: Plan, first: &Plan) -> Plan {
    let is_global = |c: &&crate::plan::Change| c.target == crate::plan::Target::Global;
    let globals = |p: &Plan| -> Vec<crate::plan::Change> {
        p.changes.iter().filter(is_global).cloned().collect()
    };
    let applied = globals(first);
    if globals(&redecided) != applied {
        redecided
            .changes
            .retain(|c| c.target != crate::plan::Target::Global);
        redecided.changes.splice(0..0, applied);
    }
    redecided
}

/// The namespaces `plan` leaves at the elevated level or above: a set, since the
/// callers ask it of every namespace on a node of a thousand.
fn pressed(plan: &Plan) -> BTreeSet<u64> {
    plan.above(crate::pressure::Level::Normal)
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

/// The ceiling for this observation: what the busiest namespace may reach within the
/// memory budget while the others keep what they hold. The table's entries are the
/// slab's (every namespace, also those ctune cannot enter) when readable, else the
/// counts ctune read.
pub fn ceiling_of(obs: &Observation, cfg: &Config) -> Ceiling {
    let counted = obs
        .namespaces
        .iter()
        .filter_map(|n| n.count)
        .fold(0u64, u64::saturating_add);
    ceiling::compute(
        cfg,
        &ceiling::Usage {
            mem_total: obs.host.memory.total_bytes,
            mem_available: obs.host.memory.available_bytes,
            slab_bytes: obs.host.entry_bytes,
            page_size: obs.host.page_size,
            entries: obs.host.table_entries.unwrap_or(0).max(counted),
            busiest: obs.peak_count(),
            buckets: obs.global.buckets.unwrap_or(0),
        },
    )
}

/// Small observations for the phases' own tests.
#[cfg(test)]
pub(super) mod testkit {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::{Draft, Inputs, PolicyState};
    use crate::config::Config;
    use crate::model::{
        Access, ConntrackStat, Global, Host, MemInfo, ModuleState, NamespaceObs, NetnsId,
        Observation,
    };

    /// A 24 GiB host whose namespaces hold `counts` under `max`, with stat counters.
    pub fn obs(max: u64, counts: &[u64]) -> Observation {
        Observation {
            module: ModuleState::BuiltIn,
            in_initial_netns: Some(true),
            global: Global {
                max,
                buckets: Some(max / 4),
                hashsize: Some(max / 4),
                expect_max: Some(4096),
                write_access: Access::WRITABLE,
                per_netns_max: false,
            },
            host: Host {
                cpus: 2,
                memory: MemInfo {
                    total_bytes: 24 << 30,
                    available_bytes: Some(20 << 30),
                },
                entry_bytes: 256,
                entry_bytes_source: "sysfs".into(),
                page_size: 4096,
                table_entries: None,
                memory_stall: None,
                facts: None,
            },
            namespaces: counts
                .iter()
                .enumerate()
                .map(|(i, c)| NamespaceObs {
                    id: NetnsId {
                        name: format!("ns{i}"),
                        inode: i as u64 + 1,
                    },
                    count: Some(*c),
                    stat: Some(ConntrackStat {
                        entries: *c,
                        counters: ["drop", "early_drop", "insert_failed", "chainlength"]
                            .iter()
                            .map(|k| (k.to_string(), 0))
                            .collect::<BTreeMap<_, _>>(),
                        ..Default::default()
                    }),
                    timeouts: BTreeMap::new(),
                    timeouts_unread: false,
                    counters_unread: false,
                    error: None,
                    handle: None,
                    composition: None,
                })
                .collect(),
            notes: Vec::new(),
        }
    }

    /// Adds to a namespace's counter.
    pub fn bump(obs: &mut Observation, ns: usize, counter: &str, by: u64) {
        if let Some(s) = obs.namespaces[ns].stat.as_mut() {
            *s.counters.entry(counter.to_string()).or_default() += by;
        }
    }

    /// The inputs of a decision at `now` seconds.
    pub(in crate::policy) fn inputs<'a>(
        obs: &'a Observation,
        cfg: &'a Config,
        prev: &'a PolicyState,
        now: u64,
    ) -> Inputs<'a> {
        Inputs {
            obs,
            cfg,
            prev,
            now: Duration::from_secs(now),
        }
    }

    /// An empty draft.
    pub(in crate::policy) fn draft() -> Draft {
        Draft {
            next: PolicyState::default(),
            changes: Vec::new(),
            explanations: Vec::new(),
        }
    }
}

#[cfg(test)]
mod composition_tests {
    use super::testkit::obs;
    use super::*;

    #[test]
    fn a_round_samples_at_most_the_eight_fullest_pressed_namespaces() {
        // Twelve namespaces at 96 % of a max that cannot grow (the cap), one idle.
        let counts: Vec<u64> = (0..12).map(|i| 96_000 + i).chain([10]).collect();
        let o = obs(100_000, &counts);
        let mut cfg = Config::default();
        cfg.ceiling.max_cap = 100_000;
        let (plan, _) = decide(&o, &cfg, &PolicyState::default(), Duration::from_secs(10));
        let none = BTreeMap::new();
        let due = compositions_due(
            &o,
            &plan,
            &none,
            &BTreeMap::new(),
            &cfg,
            Duration::from_secs(10),
        );
        let got: Vec<u64> = due.iter().filter_map(|n| n.count).collect();
        let want: Vec<u64> = (4..12).rev().map(|i| 96_000 + i).collect();
        assert_eq!(got, want);
        cfg.agent.composition_interval = Duration::ZERO;
        assert!(
            compositions_due(
                &o,
                &plan,
                &none,
                &BTreeMap::new(),
                &cfg,
                Duration::from_secs(10)
            )
            .is_empty()
        );
    }

    /// A UDP-holding namespace at 96 % of a max at its cap, with the operator's timeouts.
    fn pressed_udp_table() -> (Observation, Config) {
        let mut o = obs(100_000, &[96_000, 96_001]);
        for n in &mut o.namespaces[..1] {
            n.timeouts = [
                ("nf_conntrack_udp_timeout", 30),
                ("nf_conntrack_tcp_timeout_established", 432_000),
                ("nf_conntrack_generic_timeout", 600),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        }
        let mut cfg = Config::default();
        cfg.ceiling.max_cap = 100_000;
        (o, cfg)
    }

    fn udp_sample(entries: u64, partial: bool) -> crate::model::Governed {
        crate::model::Governed {
            entries,
            by_key: [("nf_conntrack_udp_timeout".to_string(), entries)].into(),
            partial,
            taken_at: Duration::from_secs(10),
            age_secs: 0,
        }
    }

    #[test]
    fn an_onset_sample_is_due_where_the_tiers_would_cut_without_one() {
        let (mut o, cfg) = pressed_udp_table();
        let now = Duration::from_secs(10);
        let none = BTreeMap::new();
        let (first, _) = decide(&o, &cfg, &PolicyState::default(), now);
        let due = onset_samples_due(&o, &first, &none, &BTreeMap::new(), &cfg, now);
        // ns1 is pressed too but has no timeouts to lower: its sample can wait.
        let names: Vec<&str> = due.iter().map(|n| n.id.name.as_str()).collect();
        assert_eq!(names, ["ns0"]);
        // With the sample, the decision lowers only what the table holds, and its
        // global changes are the first decision's (a composition weighs only timeouts).
        let samples: BTreeMap<u64, _> = [(1, udp_sample(96_000, false))].into();
        attach_compositions(&mut o, &samples, now, Duration::from_secs(180));
        let (again, _) = decide(&o, &cfg, &PolicyState::default(), now);
        let keys = |p: &Plan| -> Vec<String> { p.changes.iter().map(|c| c.key.clone()).collect() };
        assert!(keys(&first).contains(&"nf_conntrack_generic_timeout".to_string()));
        assert!(!keys(&again).contains(&"nf_conntrack_generic_timeout".to_string()));
        assert!(keys(&again).contains(&"nf_conntrack_udp_timeout".to_string()));
        assert_eq!(with_globals_of(again.clone(), &first), again);
        // Once it has one, no onset sample.
        assert!(onset_samples_due(&o, &again, &samples, &BTreeMap::new(), &cfg, now).is_empty());
    }

    #[test]
    fn a_plan_keeps_the_globals_that_were_applied() {
        let (o, cfg) = pressed_udp_table();
        let now = Duration::from_secs(10);
        let (first, _) = decide(&o, &cfg, &PolicyState::default(), now);
        let mut other = first.clone();
        other
            .changes
            .retain(|c| c.target != crate::plan::Target::Global);
        let mut forged = first.changes[0].clone();
        forged.target = crate::plan::Target::Global;
        forged.key = "nf_conntrack_max".into();
        other.changes.push(forged);
        let kept = with_globals_of(other, &first);
        let globals = |p: &Plan| -> Vec<crate::plan::Change> {
            p.changes
                .iter()
                .filter(|c| c.target == crate::plan::Target::Global)
                .cloned()
                .collect()
        };
        assert_eq!(globals(&kept), globals(&first));
    }

    #[test]
    fn a_sample_too_small_to_say_anything_is_not_attached() {
        let (mut o, _) = pressed_udp_table();
        let now = Duration::from_secs(10);
        let max_age = Duration::from_secs(180);
        for (g, attached) in [
            (udp_sample(0, false), false),
            (udp_sample(4095, true), false),
            (udp_sample(4096, true), true),
            (udp_sample(50, false), true),
            // Taken within the step, after its clock: new; far ahead of it: not believed.
            (
                crate::model::Governed {
                    taken_at: now + SAMPLE_AHEAD_SLACK,
                    ..udp_sample(5000, false)
                },
                true,
            ),
            (
                crate::model::Governed {
                    taken_at: now + SAMPLE_AHEAD_SLACK + Duration::from_millis(1),
                    ..udp_sample(5000, false)
                },
                false,
            ),
        ] {
            let samples: BTreeMap<u64, _> = [(1, g.clone())].into();
            attach_compositions(&mut o, &samples, now, max_age);
            assert_eq!(o.namespaces[0].composition.is_some(), attached, "{g:?}");
        }
    }
}
