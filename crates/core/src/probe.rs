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

/// What a probe reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeRead {
    /// Every watched count.
    Each,
    /// The table's total (every namespace's entries together: the conntrack slab's
    /// objects), and every count only when the total says one may be near the watermark.
    Total,
}

/// How far the table's total is trusted as a bound on every namespace's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trust {
    /// Not yet read at a step beside the counts.
    #[default]
    Unproven,
    /// Above zero at a step, and never short of the namespaces' counts together (by
    /// more than the counts read after it could have grown): the probe reads the total
    /// first. A kernel without SLUB's debug statistics has no `objects` file, or (before
    /// 6.4) one that reads 0: never trusted.
    Trusted,
    /// Once short of the counts, or unreadable: the probe reads every count, for good.
    Refused,
}

/// The table's total as a probe reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TotalReading {
    /// The conntrack slab's `objects`.
    pub objects: u64,
    /// Entries that can be made or freed without moving `objects`: SLUB counts the free
    /// objects it keeps on each CPU (its slab, its partial slabs, its sheaves) as in use,
    /// so a namespace can fill from them unseen.
    pub unseen: u64,
}

/// The table's total as a gate on the probe. Every entry of every namespace is an
/// object of the one conntrack slab cache, so a namespace can have gained at most what
/// the total gained: one read (~25 µs) stands for a read of every count (~2 µs each on
/// a node of a thousand namespaces, cache-cold, so the reads cost more than the
/// decisions). Every rise counts the entries SLUB can hand out unseen
/// ([`TotalReading::unseen`]). The trade: entries freed elsewhere (beyond those) at the
/// same time as one namespace fills hide that fill from the total until the next step,
/// which reads every count. The rise is measured from the lowest total since every count
/// was last read, so a fall (a pod deleted) hides only what fills at the same moment.
#[derive(Debug, Clone, Default)]
pub struct Total {
    trust: Trust,
    /// The lowest total since every count was read.
    low: Option<u64>,
    /// The last total read, as its rise from `low`.
    last: Option<Reading>,
    /// A total read by a probe that goes on to read every count.
    pending: Option<u64>,
    /// The last reading's [`TotalReading::unseen`].
    unseen: u64,
}

impl Total {
    /// What the probe reads first.
    pub fn read(&self) -> ProbeRead {
        match (self.trust, self.low) {
            (Trust::Trusted, Some(_)) => ProbeRead::Total,
            _ => ProbeRead::Each,
        }
    }

    /// How far the total is trusted.
    pub fn trust(&self) -> Trust {
        self.trust
    }

    /// A step read every count (adding up to `counted`) and the total (`total`; None:
    /// not readable there) at `at`: the total is checked against the counts and becomes
    /// the low the next rise is measured from.
    pub fn stepped(&mut self, total: Option<u64>, counted: u64, at: Duration) {
        self.pending = None;
        self.last = Some(Reading { at, count: 0 });
        let Some(total) = total else {
            self.low = None;
            return;
        };
        // Counts read after the total may have grown meanwhile (a step reads for
        // milliseconds): an eighth, and a few slabs' worth, are allowed.
        if total.saturating_add(counted / 8 + 256) < counted {
            self.trust = Trust::Refused;
        } else if self.trust == Trust::Unproven && total > 0 {
            self.trust = Trust::Trusted;
        }
        self.low = Some(total);
    }

    /// Every count was read by a probe after the total: that total is the new low.
    pub fn counted(&mut self) {
        if let Some(total) = self.pending.take() {
            self.low = Some(total);
            self.last = self.last.map(|r| Reading { count: 0, ..r });
        }
    }

    /// How many entries any namespace may have gained since every count was read.
    pub fn rise(&self) -> u64 {
        self.last.map_or(0, |r| r.count).saturating_add(self.unseen)
    }

    /// The total read at `now` (None: unreadable, and then never trusted again); the
    /// fullest count last read `fullest`. True when every count must be read: the
    /// fullest namespace, had it gained all the total gained and every unseen entry,
    /// would call for a step ([`step_now`]). Returns the fill rate of that bound too,
    /// entries a second.
    pub fn probed(
        &mut self,
        now: Duration,
        total: Option<TotalReading>,
        fullest: u64,
        (max, next_step): (u64, Duration),
        cfg: &Config,
    ) -> (bool, Option<f64>) {
        let (Some(reading), Some(low)) = (total, self.low) else {
            self.trust = Trust::Refused;
            return (true, None);
        };
        let total = reading.objects;
        let low = low.min(total);
        self.low = Some(low);
        self.unseen = reading.unseen;
        let bound = Reading {
            at: now,
            count: total - low,
        };
        let prev = self.last.replace(bound);
        let rate = prev.and_then(|p| fill_rate(p, bound));
        let lift = |r: Reading| Reading {
            count: fullest
                .saturating_add(r.count)
                .saturating_add(reading.unseen),
            ..r
        };
        let each = step_now(prev.map(lift), lift(bound), max, next_step, cfg);
        if each {
            self.pending = Some(total);
        }
        (each, rate)
    }
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_total_is_trusted_while_it_holds_the_counts_at_every_step() {
        let mut t = Total::default();
        assert_eq!((t.trust(), t.read()), (Trust::Unproven, ProbeRead::Each));
        // A total of zero proves nothing: kernels before 6.4 without SLUB's debug
        // statistics always read 0.
        t.stepped(Some(0), 0, ms(0));
        assert_eq!((t.trust(), t.read()), (Trust::Unproven, ProbeRead::Each));
        t.stepped(Some(80), 0, ms(500));
        assert_eq!((t.trust(), t.read()), (Trust::Trusted, ProbeRead::Total));
        t.stepped(Some(10_000), 9_000, ms(1000));
        assert_eq!((t.trust(), t.read()), (Trust::Trusted, ProbeRead::Total));
        // Counts read just after the total may have grown a little.
        t.stepped(Some(10_000), 11_000, ms(2000));
        assert_eq!(t.trust(), Trust::Trusted);
        // Not this much: the slab does not hold every namespace's entries.
        t.stepped(Some(10_000), 20_000, ms(3000));
        assert_eq!((t.trust(), t.read()), (Trust::Refused, ProbeRead::Each));
        t.stepped(Some(30_000), 20_000, ms(4000));
        assert_eq!(t.trust(), Trust::Refused, "for good");
        // A step that could not read the total leaves nothing to measure a rise from.
        let mut t = Total::default();
        t.stepped(Some(10_000), 9_000, ms(0));
        t.stepped(None, 9_000, ms(1000));
        assert_eq!(t.read(), ProbeRead::Each);
    }

    #[test]
    fn a_rise_is_measured_from_the_lowest_total_since_the_counts() {
        let cfg = Config::default(); // watermark 0.75: 768 of 1024
        let mut t = Total::default();
        t.stepped(Some(1000), 1000, ms(0));
        let probe = |t: &mut Total, at, objects| {
            let reading = TotalReading { objects, unseen: 0 };
            t.probed(ms(at), Some(reading), 100, (1024, ms(5000)), &cfg)
                .0
        };
        assert!(!probe(&mut t, 1000, 1000), "flat");
        // A pod deleted: 600 entries gone; the low follows.
        assert!(!probe(&mut t, 2000, 400));
        assert_eq!(t.rise(), 0);
        // 300 entries since: the fullest (100) may hold 400, short of 768, and at the
        // pace the total rose (300 in 8 s) it would not pass 768 before the step.
        assert!(!probe(&mut t, 10_000, 700));
        assert_eq!(t.rise(), 300);
        // 700 since the low: 800 is past the watermark: read every count.
        assert!(probe(&mut t, 11_000, 1100));
        t.counted();
        assert_eq!(t.rise(), 0, "the counts read after it are the new start");
        assert!(!probe(&mut t, 12_000, 1100));
    }

    /// Entries SLUB hands out from the free objects it keeps per CPU do not move the
    /// total: a table whose room is no larger than those is read count by count.
    #[test]
    fn the_entries_the_total_cannot_see_count_as_risen() {
        let cfg = Config::default(); // watermark 768 of 1024
        let mut t = Total::default();
        t.stepped(Some(1000), 1000, ms(0));
        let flat = |unseen| TotalReading {
            objects: 1000,
            unseen,
        };
        let limits = (1024, ms(5000));
        assert!(!t.probed(ms(1000), Some(flat(256)), 100, limits, &cfg).0);
        assert_eq!(t.rise(), 256);
        assert!(t.probed(ms(2000), Some(flat(700)), 100, limits, &cfg).0);
    }

    #[test]
    fn an_unreadable_total_is_never_read_again() {
        let cfg = Config::default();
        let mut t = Total::default();
        t.stepped(Some(1000), 1000, ms(0));
        assert!(t.probed(ms(500), None, 100, (1024, ms(5000)), &cfg).0);
        assert_eq!((t.trust(), t.read()), (Trust::Refused, ProbeRead::Each));
    }
}
