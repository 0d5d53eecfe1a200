//! When the controller steps and when it probes: the [`Schedule`] and what the probe
//! remembers of the counts (each namespace's last reading, the fastest fill seen,
//! whether probing is paused, the max in force).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::model::Observation;
use crate::plan::Plan;
use crate::probe::{self, ProbeRead, Reading};
use crate::schedule::{self, Due, Schedule};

/// What is due when the driver wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A step: [`super::Controller::begin`].
    Step,
    /// A probe: the table's total first when `read` says so
    /// ([`super::Controller::probed_total`]), then, when asked, every watched count
    /// ([`super::Controller::probed`]).
    Probe {
        /// Until the regular step.
        until_step: Duration,
        /// What to read first: the table's total ([`super::Controller::probed_total`])
        /// or every count.
        read: ProbeRead,
    },
    /// Nothing yet: sleep until [`super::Controller::next_wake`].
    Nothing,
}

/// The clock and the probe's memory.
#[derive(Debug)]
pub(super) struct Pacing {
    schedule: Schedule,
    /// Each namespace's last reading, by a probe or a step.
    last: BTreeMap<u64, Reading>,
    /// The fastest fill seen between two readings, entries a second.
    fastest: f64,
    /// Probing paused after the last step ([`probe::paused_after`]).
    paused: bool,
    /// The max in force after the last step.
    max: u64,
    /// The time to the next regular step after the last one.
    period: Duration,
    /// The table's total as a gate on reading every count.
    total: probe::Total,
}

impl Pacing {
    pub fn new(cfg: &Config, now: Duration) -> Pacing {
        Pacing {
            schedule: Schedule::new(cfg.agent.interval, cfg.agent.probe_interval, now),
            last: BTreeMap::new(),
            fastest: 0.0,
            paused: false,
            max: 0,
            period: cfg.agent.interval,
            total: probe::Total::default(),
        }
    }

    pub fn next_wake(&self) -> Duration {
        self.schedule.next_wake()
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// What is due at `now`. A probe while probing is paused is no probe: the next one
    /// comes at the paced time.
    pub fn wake(&mut self, now: Duration, cfg: &Config) -> Wake {
        match self.schedule.due(now) {
            Due::Step => Wake::Step,
            Due::Probe { until_step } if !self.paused => Wake::Probe {
                until_step,
                read: self.total.read(),
            },
            Due::Probe { .. } => {
                self.schedule.probe_in(now, self.pace(cfg));
                Wake::Nothing
            }
            Due::Nothing => Wake::Nothing,
        }
    }

    /// The table's total read at `now` (None: unreadable); true when every count must
    /// be read too ([`probe::Total::probed`]), else the next probe is scheduled.
    pub fn probed_total(
        &mut self,
        now: Duration,
        until_step: Duration,
        total: Option<crate::probe::TotalReading>,
        cfg: &Config,
    ) -> bool {
        let fullest = self.last.values().map(|r| r.count).max().unwrap_or(0);
        let (each, rate) = self
            .total
            .probed(now, total, fullest, (self.max, until_step), cfg);
        if let Some(rate) = rate {
            self.fastest = self.fastest.max(rate);
        }
        if !each {
            self.schedule.probe_in(now, self.pace(cfg));
        }
        each
    }

    /// How far the table's total is trusted as a bound on the counts.
    pub fn total_trust(&self) -> probe::Trust {
        self.total.trust()
    }

    /// Keeps each count read at `now`; true when one calls for a step now
    /// ([`probe::step_now`]), which restarts the regular schedule.
    pub fn probed(
        &mut self,
        now: Duration,
        until_step: Duration,
        counts: &[(u64, u64)],
        cfg: &Config,
    ) -> bool {
        let mut due = false;
        for &(inode, count) in counts {
            let reading = Reading { at: now, count };
            let prev = self.note(inode, reading);
            due |= probe::step_now(prev, reading, self.max, until_step, cfg);
        }
        self.total.counted();
        self.schedule.probe_in(now, self.pace(cfg));
        if due {
            self.schedule.stepped_early(now);
        }
        due
    }

    /// After a step taken at `at` that decided `plan` (its raise of max in force when
    /// `raised`), ending at `end`: the counts it read are the probe's last readings,
    /// probing pauses when an early step could change nothing, and the next step and
    /// probe are scheduled from `end`.
    pub fn after_step(
        &mut self,
        obs: &Observation,
        plan: &Plan,
        raised: bool,
        (at, end): (Duration, Duration),
        cfg: &Config,
    ) {
        self.max = plan
            .global_change(crate::tunables::MAX)
            .filter(|_| raised)
            .map_or(obs.global.max, |c| c.new);
        self.paused = probe::paused_after(plan, raised, self.max, cfg);
        let watched: std::collections::BTreeSet<u64> =
            obs.namespaces.iter().map(|n| n.id.inode).collect();
        self.last.retain(|inode, _| watched.contains(inode));
        let mut counted = 0u64;
        for n in &obs.namespaces {
            if let Some(count) = n.count {
                self.note(n.id.inode, Reading { at, count });
                counted = counted.saturating_add(count);
            }
        }
        // A namespace kept unread (its process gone, ctune remembering it) may have grown
        // since its last reading, unmeasured: no total to measure from until a step
        // reads every count. One that cannot be entered has no count for anyone.
        let uncounted = obs
            .namespaces
            .iter()
            .any(|n| n.count.is_none() && n.error.is_none());
        let total = obs.host.table_entries.filter(|_| !uncounted);
        self.total.stepped(total, counted, at);
        self.period = schedule::step_period(plan, cfg);
        self.schedule.step_in(end, self.period);
        self.schedule.probe_in(end, self.pace(cfg));
    }

    /// A step that could not observe, at `now`: the next after `agent.interval`.
    pub fn step_failed(&mut self, now: Duration, cfg: &Config) {
        self.period = cfg.agent.interval;
        self.schedule.step_in(now, self.period);
        self.schedule.probe_in(now, self.pace(cfg));
    }

    /// A new config at `now`: its periods, and a step within its interval (an idle wait
    /// under the old one may be much longer).
    pub fn reconfigure(&mut self, cfg: &Config, now: Duration) {
        self.schedule
            .set_periods(cfg.agent.interval, cfg.agent.probe_interval);
        self.schedule.step_in(now, cfg.agent.interval);
        self.period = cfg.agent.interval;
    }

    /// Keeps a reading, and the fill rate since the namespace's previous one when it is
    /// the fastest seen; returns the previous reading.
    fn note(&mut self, inode: u64, reading: Reading) -> Option<Reading> {
        let prev = self.last.insert(inode, reading);
        if let Some(rate) = prev.and_then(|p| probe::fill_rate(p, reading)) {
            self.fastest = self.fastest.max(rate);
        }
        prev
    }

    /// When to probe next ([`probe::pace`]), each namespace taken to have gained what
    /// the table's total gained since every count was read.
    fn pace(&self, cfg: &Config) -> Duration {
        let rise = self.total.rise();
        let counts = self.last.values().map(|r| r.count.saturating_add(rise));
        probe::pace(self.paused, counts, self.max, self.fastest, cfg)
    }
}
