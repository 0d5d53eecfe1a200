//! The control step, written once, for every driver: the agent (the kernel), the one-shot
//! commands (`apply`, the dry run, `status`) and the simulator (a modelled table).
//!
//! Sans-I/O, as quinn-proto's `Connection` is: the [`Controller`] holds everything a step
//! decides from (the policy's memory, the composition samples and their bookkeeping, the
//! step and probe clock) and never reads, writes or sleeps. A step is a conversation:
//! [`Controller::begin`] asks for an observation; each [`Event`] the driver hands to
//! [`Controller::handle`] (what it read, what took effect, what a sample found, each with
//! the time) is answered with the next [`Action`] (apply these changes, sample these
//! namespaces within these bounds, persist, save), until [`Action::Done`]. Between steps,
//! [`Controller::wake`] and [`Controller::probed`] say when to step and when to probe.
//!
//! So the order of a step lives here and nowhere else: the agent applies a step's global
//! changes before it samples a namespace at the onset of pressure (a dump never delays a
//! raise of max), saves the operator's values before it touches the kernel, persists only
//! what took effect; the simulator does the same because it runs the same code, and the
//! evidence in docs/benchmarks.md is evidence of the loop itself.

mod pacing;
mod samples;
mod step;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::{Governed, NetnsId, Observation};
use crate::plan::{Change, Plan};
use crate::policy::PolicyState;
use crate::pressure::Level;

pub use pacing::Wake;

/// What outlives a step, and what a driver saves between runs (the agent's state file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Global values before ctune first changed each key: what `restore` puts back.
    pub original: BTreeMap<String, u64>,
    /// The policy's memory.
    pub policy: PolicyState,
    /// The last composition sample of each namespace at the elevated level or above, by
    /// inode.
    pub compositions: BTreeMap<u64, Governed>,
    /// Under `role: auto`, the role held and a smaller one pending (absent from the
    /// state of a build before `role: auto`).
    #[serde(default)]
    pub role: Option<crate::role::Held>,
}

/// Which command the step serves: what it may change, and when it samples.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The agent: a step applies, persists and saves; at the onset of pressure it applies
    /// the global changes, samples the namespaces due within the step and decides their
    /// timeouts again; afterwards it starts the background samples that are due.
    Agent,
    /// The one-shot `apply`: as the agent, but a due composition sample is taken before
    /// deciding (waited for: nothing waits on a one-shot command) and decided with.
    Apply,
    /// The dry run and `status`: nothing is applied, persisted or saved. The decision is
    /// the one a step would take from the saved memory, with the previous reading of
    /// this command as the baseline of the counters, and the onset samples the agent
    /// would take (read-only).
    Preview,
}

/// The bounds of one composition sample: the driver's dump stops at whichever comes
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleBounds {
    /// Entries read at most.
    pub max_entries: u64,
    /// Time at most.
    pub max_time: Duration,
}

/// A background sample. A dump sends the entries in hash order, a random order, so its
/// first 65536 entries put every key's share within 0.4 % of the table's (95 %): ample
/// for `timeouts.min_share` (1 %), at about 0.16 s of the kernel's time where a million
/// entries cost it 2.5 s. Two seconds at most, for a namespace that is a small part of
/// the host's table (the dump walks the whole hash table to find its own entries).
pub const BACKGROUND: SampleBounds = SampleBounds {
    max_entries: 65_536,
    max_time: Duration::from_secs(2),
};

/// An onset sample ([`crate::policy::onset_samples_due`]): the step waits for it, after
/// its global changes are in force, so half a second at most; a sample cut shorter than
/// [`crate::model::MIN_PARTIAL_SAMPLE`] entries is left for the background one.
pub const ONSET: SampleBounds = SampleBounds {
    max_entries: BACKGROUND.max_entries,
    max_time: Duration::from_millis(500),
};

/// A namespace to sample, and the handle that enters it (None: the driver's own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleTarget {
    /// Who it is.
    pub id: NetnsId,
    /// /run/netns/NAME or /proc/PID/ns/net; None for the driver's own namespace.
    pub handle: Option<PathBuf>,
}

/// One namespace's sample as a driver took it.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// Whose.
    pub id: NetnsId,
    /// The sample, or why there is none.
    pub result: Result<Governed, String>,
    /// When it was taken, on the driver's clock.
    pub at: Duration,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read every watched namespace: its count and counters, and its timeouts as
    /// `timeouts` says, then [`Event::Observed`] with the time the step is taken at. Of a
    /// namespace in `count_only`, the count is enough, where the driver can read it
    /// without entering the namespace (it marks the namespace
    /// [`NamespaceObs::counters_unread`]); it may read more.
    ///
    /// [`NamespaceObs::counters_unread`]: crate::model::NamespaceObs::counters_unread
    Observe {
        /// Which timeouts to read, and where.
        timeouts: TimeoutReads,
        /// Quiet namespaces (by inode) whose counters were read recently ([`quiet`]).
        count_only: BTreeSet<u64>,
    },
    /// Read the timeouts of these namespaces (`keys`: only these; None: all) into the
    /// observation, clearing their [`NamespaceObs::timeouts_unread`], and their counters
    /// where left unread (a quiet namespace counted without entering it), then
    /// [`Event::TimeoutsRead`]. Asked when a namespace left unread rose above normal in
    /// this step's decision, which is then taken again with what was read: a table that
    /// filled between two steps is judged on its drops too.
    ///
    /// [`NamespaceObs::timeouts_unread`]: crate::model::NamespaceObs::timeouts_unread
    ReadTimeouts {
        /// Whose.
        targets: Vec<SampleTarget>,
        /// The keys.
        keys: Option<BTreeSet<String>>,
    },
    /// Hand over the samples the background sampler has finished, waiting up to `wait`
    /// for one still running (zero: not at all), then [`Event::Collected`].
    Collect {
        /// How long to wait for a running sampler.
        wait: Duration,
    },
    /// Save the memory ([`Controller::memory`]), then [`Event::Saved`]. Before the kernel
    /// is touched, this keeps the operator's values (`restore` needs them): if it fails,
    /// the step changes nothing.
    Save,
    /// Apply these changes in this order (global keys first, timeouts established last),
    /// then [`Event::Applied`] with whether each took effect.
    Apply(Vec<Change>),
    /// Sample these namespaces now, one after the other, each within `bounds`, then
    /// [`Event::Sampled`].
    Sample {
        /// Whom.
        targets: Vec<SampleTarget>,
        /// Each dump's bounds.
        bounds: SampleBounds,
    },
    /// Start sampling these namespaces in the background (their samples come with a
    /// later [`Action::Collect`]), then [`Event::Started`].
    StartSampling {
        /// Whom.
        targets: Vec<SampleTarget>,
        /// Each dump's bounds.
        bounds: SampleBounds,
    },
    /// Write the files for the values in force after `plan` (its changes, which all took
    /// effect, and every key in `managed`), then [`Event::Persisted`]. In
    /// [`Mode::Preview`]: only render them, for the diff.
    Persist {
        /// What is in force now.
        plan: Plan,
        /// Every global key ctune manages after the step.
        managed: Vec<String>,
    },
    /// The step is over: the plan in force (or previewed) and the notes on samples. The
    /// driver's observation holds the samples the decision weighed.
    Done {
        /// What was decided.
        plan: Plan,
        /// What went wrong with the samples, for the operator.
        notes: Vec<crate::model::Note>,
    },
}

/// What the driver did, answering the last [`Action`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The observation was read (the driver keeps it and passes it to every call).
    Observed,
    /// The finished background samples, and whether the sampler is still running.
    Collected {
        /// Its samples, when it finished.
        samples: Vec<Taken>,
        /// Still running (the samples are for a later collection).
        running: bool,
    },
    /// The memory was saved, or not.
    Saved(bool),
    /// Whether each change of the last [`Action::Apply`] took effect.
    Applied(Vec<bool>),
    /// The samples taken.
    Sampled(Vec<Taken>),
    /// Whether the background sampler could be started.
    Started(bool),
    /// The files were written (or rendered).
    Persisted,
    /// The timeouts asked for by [`Action::ReadTimeouts`] are in the observation.
    TimeoutsRead,
}

/// The quiet namespaces whose counters the agent's step at `now` need not read: at
/// normal, nothing lowered, their last count under half the high watermark of `max`,
/// and their counters read less than [`QUIET_REREAD`] idle periods ago. Reading a
/// namespace's counters means entering it (setns) and opening its statistics, ~25 µs
/// the kernel forces on every visit; on a node of a thousand pods, visiting each at
/// every idle step would cost more than everything else the agent does. Their counts,
/// which the probe reads anyway, still decide; a loss in them is measured at the next
/// read, from the one before ([`crate::policy::MAX_BASELINE_INTERVALS`] allows for it).
pub fn quiet(
    p: &crate::policy::PolicyState,
    cfg: &Config,
    max: u64,
    now: Duration,
) -> BTreeSet<u64> {
    let half = cfg.max.high_watermark.get() / 2.0 * max as f64;
    let reread = cfg.agent.idle_interval.max(cfg.agent.interval) * QUIET_REREAD / 2;
    p.namespaces
        .iter()
        .filter(|(_, ns)| ns.lowered.is_empty())
        .filter(|(_, ns)| ns.level.as_ref().is_none_or(|l| l.level == Level::Normal))
        .filter(|(_, ns)| ns.last_count.is_some_and(|(c, _)| (c as f64) < half))
        .filter(|(_, ns)| {
            let at = ns.counters.and_then(|c| c.at);
            at.is_some_and(|at| now.saturating_sub(at) < reread)
        })
        .map(|(inode, _)| *inode)
        .collect()
}

/// A quiet namespace's counters are read again after this many halves of the agent's
/// idle period (3.5: every fourth idle step). Entering a thousand namespaces for their
/// counters costs ~25 ms. Every twelfth step was tried: the live test of a raise on the
/// drop counter (`live_no_procfs`) then saw max raised for the count alone, without the
/// drops, and the cause was not found in the time there was; so every fourth it stays.
pub const QUIET_REREAD: u32 = 7;

/// Which timeouts a step reads. ctune's own namespace is always read in full; another
/// namespace is read only where a decision can use its timeouts: where ctune lowered
/// some, or its level was above normal. On a host with many namespaces, reading a
/// namespace's timeouts costs a path walk through a chain the kernel keeps with one
/// entry per namespace (docs/design.md, "Many namespaces"); most of them, at normal,
/// need no timeouts. One that rises this step is read then ([`Action::ReadTimeouts`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimeoutReads {
    /// The keys to read; None: every timeout key the kernel has.
    pub keys: Option<BTreeSet<String>>,
    /// The other namespaces (by inode) whose timeouts are read.
    pub namespaces: BTreeSet<u64>,
}

/// The whole loop's state: one per driver.
#[derive(Debug)]
pub struct Controller {
    /// The config as loaded (every role's ceiling under `role: auto`).
    base: Config,
    /// The config in force: `base` with the role's ceiling.
    cfg: Config,
    /// The role whose ceiling `cfg` holds.
    role: crate::config::Role,
    mode: Mode,
    memory: Memory,
    /// The driver can take composition samples (a real kernel, a model); a fixture tree
    /// cannot.
    can_sample: bool,
    samples: samples::Bookkeeping,
    pacing: pacing::Pacing,
    /// [`Mode::Preview`]: the command's previous reading and when it was taken, the
    /// baseline of the counters' rise.
    baseline: Option<(Observation, Duration)>,
    step: Option<step::Step>,
    /// The timeout keys the step in progress reads ([`TimeoutReads::keys`]).
    keys: Option<BTreeSet<String>>,
}

impl Controller {
    /// A controller for `mode`, remembering `memory`, whose clock starts at `now`.
    pub fn new(cfg: Config, mode: Mode, memory: Memory, can_sample: bool, now: Duration) -> Self {
        let role = match (cfg.role, &memory.role) {
            (crate::config::RoleSetting::Fixed(r), _) => r,
            (crate::config::RoleSetting::Auto, held) => {
                held.as_ref().map(|h| h.role).unwrap_or_default()
            }
        };
        Controller {
            pacing: pacing::Pacing::new(&cfg, now),
            cfg: cfg.for_role(role),
            base: cfg,
            role,
            mode,
            memory,
            can_sample,
            samples: samples::Bookkeeping::default(),
            baseline: None,
            step: None,
            keys: None,
        }
    }

    /// What to save between runs.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// A new config (a reload): it takes effect at the next step, which comes within the
    /// new `agent.interval`.
    pub fn set_config(&mut self, cfg: Config, now: Duration) {
        self.pacing.reconfigure(&cfg, now);
        if let crate::config::RoleSetting::Fixed(r) = cfg.role {
            self.role = r;
        }
        self.cfg = cfg.for_role(self.role);
        self.base = cfg;
    }

    /// The role whose budget the config in force holds.
    pub fn role(&self) -> crate::config::Role {
        self.role
    }

    /// [`Mode::Preview`]: a first reading at `at`, the baseline the next step measures
    /// the counters' rise against.
    pub fn set_baseline(&mut self, obs: Observation, at: Duration) {
        self.baseline = Some((obs, at));
    }

    /// The time the driver should next wake at ([`Controller::wake`]).
    pub fn next_wake(&self) -> Duration {
        self.pacing.next_wake()
    }

    /// What is due at `now`: a step, a probe of the counts, or nothing.
    pub fn wake(&mut self, now: Duration) -> Wake {
        self.pacing.wake(now, &self.cfg)
    }

    /// The counts a probe read at `now` (by inode), `until_step` before the regular
    /// step: true when a step should be taken now (the schedule restarts from it).
    pub fn probed(&mut self, now: Duration, until_step: Duration, counts: &[(u64, u64)]) -> bool {
        self.pacing.probed(now, until_step, counts, &self.cfg)
    }

    /// The table's total a probe read at `now` ([`crate::probe::ProbeRead::Total`];
    /// None: unreadable, and never trusted again): true when every count must be read
    /// too, then [`Controller::probed`]; else the next probe is scheduled.
    pub fn probed_total(
        &mut self,
        now: Duration,
        until_step: Duration,
        total: Option<crate::probe::TotalReading>,
    ) -> bool {
        self.pacing.probed_total(now, until_step, total, &self.cfg)
    }

    /// How far the table's total is trusted as a bound on every namespace's count.
    pub fn total_trust(&self) -> crate::probe::Trust {
        self.pacing.total_trust()
    }

    /// A step could not observe at `now`: the next comes after `agent.interval`.
    pub fn step_failed(&mut self, now: Duration) {
        self.step = None;
        self.pacing.step_failed(now, &self.cfg);
    }

    /// The time to the next regular step after the last one.
    pub fn period(&self) -> Duration {
        self.pacing.period()
    }

    /// The max in force after the last step, as the probe measures against it.
    pub fn max_in_force(&self) -> u64 {
        self.pacing.max()
    }

    /// Starts a step at `now`: the first [`Action`] is always [`Action::Observe`].
    pub fn begin(&mut self, now: Duration) -> Action {
        self.step = None;
        let keys = match self.mode {
            // The agent's step and `apply` read only the timeouts ctune may change (or has
            // changed): a dozen files, not every key the kernel has.
            Mode::Agent | Mode::Apply => {
                let mut keys: BTreeSet<String> = self
                    .cfg
                    .timeouts
                    .floors
                    .keys()
                    .map(|k| crate::sysctl::full(k))
                    .collect();
                for ns in self.memory.policy.namespaces.values() {
                    keys.extend(ns.lowered.keys().cloned());
                }
                Some(keys)
            }
            Mode::Preview => None,
        };
        let p = &self.memory.policy;
        let namespaces = p
            .namespaces
            .iter()
            .filter(|(_, ns)| {
                !ns.lowered.is_empty() || ns.level.as_ref().is_some_and(|l| l.level > Level::Normal)
            })
            .map(|(inode, _)| *inode)
            .collect();
        self.keys = keys.clone();
        let count_only = match self.mode {
            Mode::Agent => quiet(&self.memory.policy, &self.cfg, self.pacing.max(), now),
            Mode::Apply | Mode::Preview => BTreeSet::new(),
        };
        Action::Observe {
            timeouts: TimeoutReads { keys, namespaces },
            count_only,
        }
    }

    /// Takes the driver's answer to the last [`Action`]; returns the next. `obs` is the
    /// step's observation (the driver's, read at [`Action::Observe`]); `clock` the time
    /// of this answer ([`Event::Observed`]: the time the step is taken at).
    pub fn handle(&mut self, obs: &mut Observation, event: Event, clock: Duration) -> Action {
        step::handle(self, obs, event, clock)
    }
}

#[cfg(test)]
mod tests;
