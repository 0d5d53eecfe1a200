//! Between full steps, the agent probes the watched namespaces' counts (a read of one
//! sysctl each, microseconds) and takes a step at once when the table is filling: a
//! flood of tens of thousands of new flows a second fills a small table well within the
//! step interval, and growth must come before the kernel drops.
//!
//! Pure: the agent and the simulator decide the same way.

use std::time::Duration;

use crate::config::Config;
use crate::plan::Plan;

/// One namespace's count at a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// When (monotonic).
    pub at: Duration,
    /// Entries.
    pub count: u64,
}

/// Whether a full step should be taken now rather than at its scheduled time.
/// `prev` is the same namespace's previous reading, `max` the max in force, `next_step`
/// how long until the scheduled step.
pub fn step_now(
    prev: Option<Reading>,
    now: Reading,
    max: u64,
    next_step: Duration,
    cfg: &Config,
) -> bool {
    if max == 0 {
        return false; // unlimited
    }
    let watermark = cfg.max.high_watermark.get() * max as f64;
    if now.count as f64 >= watermark {
        return true;
    }
    let Some(prev) = prev else {
        return false;
    };
    let dt = now.at.saturating_sub(prev.at).as_secs_f64();
    if dt <= 0.0 || now.count <= prev.count {
        return false;
    }
    let rate = (now.count - prev.count) as f64 / dt;
    // Where the count would be by the scheduled step, plus one probe of reaction time.
    let horizon = next_step.as_secs_f64() + cfg.agent.probe_interval.as_secs_f64();
    now.count as f64 + rate * horizon >= watermark
}

/// Whether probing should pause after a step: a watched table is past the watermark
/// and an early step could change nothing, because max is at the ceiling or the step's
/// own raise of max did not take effect (a failed write, retried on schedule rather than
/// at the probe's rate). While max is below the ceiling (an operator's value that is
/// respected only until it is unsafe), the probe keeps running: the step that overrides
/// it at the critical level or on drops must not wait for the schedule.
/// `max_raised`: a max change of this step took effect; `max_in_force`: the max now.
pub fn paused_after(plan: &Plan, max_raised: bool, max_in_force: u64, cfg: &Config) -> bool {
    let watermark = cfg.max.high_watermark.get();
    let pressed = plan
        .namespaces
        .iter()
        .any(|v| v.utilisation.is_some_and(|u| u >= watermark));
    let raise_failed = plan.global_change(crate::tunables::MAX).is_some() && !max_raised;
    let at_ceiling = max_in_force >= plan.ceiling.value;
    pressed && !max_raised && (at_ceiling || raise_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ms: u64, count: u64) -> Reading {
        Reading {
            at: Duration::from_millis(ms),
            count,
        }
    }

    #[test]
    fn at_or_above_the_watermark() {
        let cfg = Config::default();
        assert!(step_now(
            None,
            r(0, 750),
            1000,
            Duration::from_secs(1),
            &cfg
        ));
        assert!(!step_now(
            None,
            r(0, 700),
            1000,
            Duration::from_secs(1),
            &cfg
        ));
        assert!(
            !step_now(None, r(0, 1_000_000), 0, Duration::from_secs(1), &cfg),
            "unlimited"
        );
    }

    #[test]
    fn predicted_crossing_before_the_next_step() {
        let cfg = Config::default();
        // 100 entries per 100 ms = 1000/s; 500 + 1000 x (0.9 + probe) crosses 750.
        assert!(step_now(
            Some(r(0, 400)),
            r(100, 500),
            1000,
            Duration::from_millis(900),
            &cfg
        ));
        // Slow growth: 10/s does not.
        assert!(!step_now(
            Some(r(0, 499)),
            r(100, 500),
            1000,
            Duration::from_millis(900),
            &cfg
        ));
        // Shrinking or flat never triggers.
        assert!(!step_now(
            Some(r(0, 600)),
            r(100, 500),
            1000,
            Duration::from_millis(900),
            &cfg
        ));
    }
}
