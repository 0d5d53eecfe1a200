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

    /// New periods (a reloaded config), keeping the next deadlines.
    pub fn set_periods(&mut self, interval: Duration, probe_every: Duration) {
        self.interval = interval.max(Duration::from_nanos(1));
        self.probe_every = probe_every.max(Duration::from_nanos(1));
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
}
