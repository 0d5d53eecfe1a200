//! When the agent takes a full step and when it only probes the counts.
//!
//! A full step (observe every namespace, decide, apply) runs every `agent.interval`.
//! Between steps a probe reads the watched counts every `agent.probe_interval`
//! ([`crate::probe`] decides whether they call for a step now). A probe that falls on a
//! step is skipped, since the step has just read the counts; an early step restarts the
//! regular schedule from itself. The agent and the simulator both follow this clock, so
//! what the simulator shows is what the agent does.

use std::time::Duration;

/// What is due at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The regular step.
    Step,
    /// A probe, with the time left until the regular step.
    Probe {
        /// Until the next regular step.
        until_step: Duration,
    },
    /// Nothing yet.
    Nothing,
}

/// The step and probe clock, on a monotonic time line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    interval: Duration,
    probe_every: Duration,
    next_step: Duration,
    next_probe: Duration,
}

impl Schedule {
    /// A schedule whose first step and first probe are due at `start`. Zero periods are
    /// taken as 1 ns, so the clock always advances.
    pub fn new(interval: Duration, probe_every: Duration, start: Duration) -> Schedule {
        Schedule {
            interval: interval.max(Duration::from_nanos(1)),
            probe_every: probe_every.max(Duration::from_nanos(1)),
            next_step: start,
            next_probe: start,
        }
    }

    /// What is due at `now`, advancing the clock past it: the regular step when it is
    /// due (a probe falling on it is skipped), else a probe when one is due. Periods
    /// missed while busy are skipped, not caught up.
    pub fn due(&mut self, now: Duration) -> Due {
        let probe_due = now >= self.next_probe;
        while self.next_probe <= now {
            self.next_probe += self.probe_every;
        }
        if now >= self.next_step {
            while self.next_step <= now {
                self.next_step += self.interval;
            }
            Due::Step
        } else if probe_due {
            Due::Probe {
                until_step: self.next_step - now,
            }
        } else {
            Due::Nothing
        }
    }

    /// A probe took a step at `now`: the regular schedule restarts from it.
    pub fn stepped_early(&mut self, now: Duration) {
        self.next_step = now + self.interval;
    }

    /// When something is next due: the time to sleep until.
    pub fn next_wake(&self) -> Duration {
        self.next_step.min(self.next_probe)
    }

    /// The next regular step in `after` from `now` ([`step_period`]).
    pub fn step_in(&mut self, now: Duration, after: Duration) {
        self.next_step = now + after.max(Duration::from_nanos(1));
    }

    /// The next probe in `after` from `now` (the adaptive pace of
    /// [`crate::probe::next_probe_in`]), replacing the fixed period's deadline.
    pub fn probe_in(&mut self, now: Duration, after: Duration) {
        self.next_probe = now + after.max(Duration::from_nanos(1));
    }

    /// New periods (a reloaded config), keeping the next deadlines.
    pub fn set_periods(&mut self, interval: Duration, probe_every: Duration) {
        self.interval = interval.max(Duration::from_nanos(1));
        self.probe_every = probe_every.max(Duration::from_nanos(1));
    }
}

/// The time to the next regular step after a step that planned `plan`:
/// `agent.interval` while anything is happening (a change planned, a namespace above the
/// normal level, a table past half its high watermark), `agent.idle_interval` while every
/// table is quiet. The count probe keeps watching for growth between steps; what only a
/// step sees can wait that long while quiet (a drop at low utilisation is an insert clash,
/// which changes nothing; memory and operators move slowly).
pub fn step_period(plan: &crate::plan::Plan, cfg: &crate::config::Config) -> Duration {
    let half = cfg.max.high_watermark.get() / 2.0;
    let busy = !plan.changes.is_empty()
        || plan.namespaces.iter().any(|v| {
            v.level > crate::pressure::Level::Normal
                || v.utilisation.is_some_and(|u| u >= half)
                || v.utilisation_after.is_some_and(|u| u >= half)
        });
    if busy {
        cfg.agent.interval
    } else {
        cfg.agent.idle_interval.max(cfg.agent.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steps_every_interval_and_probes_between() {
        let mut s = Schedule::new(ms(1000), ms(250), ms(0));
        assert_eq!(s.due(ms(0)), Due::Step, "the first step is at the start");
        assert_eq!(s.due(ms(100)), Due::Nothing);
        assert_eq!(
            s.due(ms(250)),
            Due::Probe {
                until_step: ms(750)
            }
        );
        assert_eq!(s.next_wake(), ms(500));
        assert_eq!(s.due(ms(1000)), Due::Step, "a probe on a step is skipped");
        assert_eq!(s.next_wake(), ms(1250));
    }

    #[test]
    fn an_early_step_restarts_the_schedule() {
        let mut s = Schedule::new(ms(1000), ms(250), ms(0));
        s.due(ms(0));
        assert!(matches!(s.due(ms(250)), Due::Probe { .. }));
        s.stepped_early(ms(250));
        assert_eq!(
            s.due(ms(1000)),
            Due::Probe {
                until_step: ms(250)
            }
        );
        assert_eq!(s.due(ms(1250)), Due::Step);
    }

    #[test]
    fn missed_periods_are_skipped_not_caught_up() {
        let mut s = Schedule::new(ms(1000), ms(250), ms(0));
        s.due(ms(0));
        assert_eq!(s.due(ms(5300)), Due::Step);
        assert_eq!(s.due(ms(5400)), Due::Nothing);
        assert_eq!(s.next_wake(), ms(5500));
    }

    #[test]
    fn a_quiet_table_is_stepped_at_the_idle_interval_a_busy_one_at_the_interval() {
        use crate::config::Config;
        use crate::policy::{PolicyState, decide, testkit::obs};
        let cfg = Config::default(); // interval 1s, idle 5s, watermark 0.75
        let period = |counts: &[u64]| {
            let o = obs(262_144, counts);
            let (plan, next) = decide(&o, &cfg, &PolicyState::default(), ms(0));
            // The second decision, as the agent's steps go on: nothing new planned.
            let (plan, _) = if plan.changes.is_empty() {
                (plan, next)
            } else {
                decide(&o, &cfg, &next, ms(1000))
            };
            step_period(&plan, &cfg)
        };
        assert_eq!(period(&[1000]), cfg.agent.idle_interval, "idle");
        assert_eq!(
            period(&[1000, 110_000]),
            cfg.agent.interval,
            "one table past 37.5%"
        );
        let o = obs(262_144, &[230_000]);
        let (plan, _) = decide(&o, &cfg, &PolicyState::default(), ms(0));
        assert!(!plan.changes.is_empty());
        assert_eq!(
            step_period(&plan, &cfg),
            cfg.agent.interval,
            "a change planned"
        );
    }
}
