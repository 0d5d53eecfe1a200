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
    let Some(rate) = fill_rate(prev, now) else {
        return false;
    };
    // Where the count would be by the scheduled step, plus one probe of reaction time.
    let horizon = next_step.as_secs_f64() + cfg.agent.probe_interval.as_secs_f64();
    now.count as f64 + rate * horizon >= watermark
}

/// How long until the next probe: the time a fill at `rate` (entries a second: the
/// configured flood rate, or the fastest fill seen when faster) would take to bring the
/// fullest watched table from its count to the high watermark, within
/// [`agent.probe_interval`, `agent.interval`]. Probing at that pace is safe because the
/// watermark sits below max: a probe at the watermark takes a step while the table still
/// has `(1 - high_watermark) x max` entries of room, which a step fills in microseconds.
pub fn next_probe_in(
    counts: impl IntoIterator<Item = u64>,
    max: u64,
    rate: f64,
    cfg: &Config,
) -> Duration {
    let (least, most) = (
        cfg.agent.probe_interval,
        cfg.agent.interval.max(cfg.agent.probe_interval),
    );
    if max == 0 || rate <= 0.0 {
        return most; // unlimited: nothing to catch
    }
    let watermark = cfg.max.high_watermark.get() * max as f64;
    let fullest = counts.into_iter().max().unwrap_or(0) as f64;
    let room = (watermark - fullest).max(0.0);
    Duration::try_from_secs_f64(room / rate)
        .unwrap_or(most)
        .clamp(least, most)
}

/// When to probe next, as the agent and the simulator both do: at a step's pace while
/// probing is paused ([`paused_after`]), else [`next_probe_in`] at the configured flood
/// rate or the fastest fill seen (`fastest`, entries a second), whichever is faster.
pub fn pace(
    paused: bool,
    counts: impl IntoIterator<Item = u64>,
    max: u64,
    fastest: f64,
    cfg: &Config,
) -> Duration {
    if paused {
        return cfg.agent.interval;
    }
    let rate = fastest.max(cfg.agent.flood_rate as f64);
    next_probe_in(counts, max, rate, cfg)
}

/// The fill rate between two readings, entries a second (None when not rising).
pub fn fill_rate(prev: Reading, now: Reading) -> Option<f64> {
    let dt = now.at.checked_sub(prev.at)?.as_secs_f64();
    (dt > 0.0 && now.count > prev.count).then(|| (now.count - prev.count) as f64 / dt)
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

    #[test]
    fn an_idle_table_is_probed_rarely_and_a_filling_one_often() {
        let cfg = Config::default(); // interval 1s, probe_interval 50ms, watermark 0.75
        let host = 262_144;
        // Empty: 196608 entries to the watermark at 250k/s: 0.79 s.
        let idle = next_probe_in([0], host, 250_000.0, &cfg);
        assert!((780..=790).contains(&idle.as_millis()), "{idle:?}");
        // Half full: 65536 to go, 0.26 s: four probes a second.
        let half = next_probe_in([131_072], host, 250_000.0, &cfg);
        assert!((260..=265).contains(&half.as_millis()), "{half:?}");
        // A router's small table, or one at the watermark: the fastest pace.
        assert_eq!(
            next_probe_in([0], 16_384, 250_000.0, &cfg),
            cfg.agent.probe_interval
        );
        assert_eq!(
            next_probe_in([200_000], host, 250_000.0, &cfg),
            cfg.agent.probe_interval
        );
        // A huge table far from its watermark: never later than a step.
        assert_eq!(
            next_probe_in([0], 16_777_216, 250_000.0, &cfg),
            cfg.agent.interval
        );
        // The fullest namespace sets the pace; unlimited tables need no probe.
        assert_eq!(
            next_probe_in([0, 190_000], host, 250_000.0, &cfg),
            cfg.agent.probe_interval
        );
        assert_eq!(next_probe_in([0], 0, 250_000.0, &cfg), cfg.agent.interval);
    }
}
