//! Pressure levels per namespace, with hysteresis so a signal that hovers around a
//! threshold does not make timeouts flap.
//!
//! A level is entered at once when its `enter` threshold is met (or the kernel reports
//! loss), but left only one step at a time, after its `hold` time, and only once
//! utilisation is below its `exit` threshold with no loss signal.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::config::Pressure;
use crate::units::fmt_pct;

/// How hard the table is pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing lowered; operator values in force.
    Normal,
    /// Transient timeouts lowered.
    Elevated,
    /// Established lowered too.
    Critical,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::Critical => "critical",
        })
    }
}

/// A namespace's level and when it was entered (monotonic time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelState {
    /// The level.
    pub level: Level,
    /// When it was entered.
    pub since: Duration,
}

/// What the level is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Signal {
    /// count / max after any planned growth.
    pub utilisation: f64,
    /// `drop` rose since the previous sample: packets were lost.
    pub dropping: bool,
    /// `early_drop` rose: the table is full, entries are being evicted.
    pub evicting: bool,
    /// The host is short of memory, or the table is over its memory budget: critical in
    /// the namespaces where the table's memory is (the reason, for the operator).
    pub memory_short: Option<&'static str>,
    /// Memory stall at the configured level: at least elevated where the table's memory
    /// is.
    pub memory_stalled: bool,
}

/// The level a signal asks for by itself, without hysteresis: where the table is *now*
/// (against the live max and the loss just seen), which an operator must be told even
/// when a planned growth will answer it.
pub fn level_now(sig: Signal, cfg: &Pressure) -> (Level, String) {
    wanted(sig, cfg)
}

/// The level the signal asks for if entering were free.
fn wanted(sig: Signal, cfg: &Pressure) -> (Level, String) {
    let u = sig.utilisation;
    if let Some(why) = sig.memory_short {
        (Level::Critical, why.into())
    } else if sig.dropping {
        (
            Level::Critical,
            "drop counter rose: packets lost to a full table".into(),
        )
    } else if u >= cfg.critical.enter.get() {
        (
            Level::Critical,
            format!(
                "count {} of max (critical at {})",
                fmt_pct(u),
                fmt_pct(cfg.critical.enter.get())
            ),
        )
    } else if sig.evicting {
        (
            Level::Elevated,
            "early_drop rose: entries evicted from a full table".into(),
        )
    } else if sig.memory_stalled {
        (
            Level::Elevated,
            "memory stall (PSI) at pressure.memory_stall: the host is reclaiming".into(),
        )
    } else if u >= cfg.elevated.enter.get() {
        (
            Level::Elevated,
            format!(
                "count {} of max (elevated at {})",
                fmt_pct(u),
                fmt_pct(cfg.elevated.enter.get())
            ),
        )
    } else {
        (Level::Normal, format!("count {} of max", fmt_pct(u)))
    }
}

/// The next level and the reason for it.
pub fn next(
    prev: Option<LevelState>,
    sig: Signal,
    cfg: &Pressure,
    now: Duration,
) -> (LevelState, String) {
    let (want, why) = wanted(sig, cfg);
    let entered = LevelState {
        level: want,
        since: now,
    };
    let Some(prev) = prev.filter(|p| want <= p.level) else {
        // A first sample, or a higher level: entered at once.
        return (entered, why);
    };
    if want == prev.level {
        // The level's condition is still met: the hold counts from the last time it was.
        // Normal has no hold, so its time is left alone (and the state file with it).
        let since = if want == Level::Normal {
            prev.since
        } else {
            now
        };
        return (LevelState { level: want, since }, why);
    }
    let exit = match prev.level {
        Level::Critical => cfg.critical.exit.get(),
        _ => cfg.elevated.exit.get(),
    };
    let held = now.saturating_sub(prev.since);
    let memory = sig.memory_short.is_some();
    let loss = match prev.level {
        Level::Critical => sig.dropping || memory,
        _ => sig.dropping || sig.evicting || memory || sig.memory_stalled,
    };
    if sig.utilisation >= exit || loss {
        return (
            prev,
            format!(
                "holding {}: count {} of max, leaves below {}",
                prev.level,
                fmt_pct(sig.utilisation),
                fmt_pct(exit)
            ),
        );
    }
    if held < cfg.hold {
        return (
            prev,
            format!(
                "holding {} for {} more (pressure.hold)",
                prev.level,
                humantime::format_duration(Duration::from_secs((cfg.hold - held).as_secs().max(1)))
            ),
        );
    }
    let down = match prev.level {
        Level::Critical => Level::Elevated,
        _ => Level::Normal,
    };
    (
        LevelState {
            level: down,
            since: now,
        },
        format!(
            "count {} of max, below {}: stepping down from {}",
            fmt_pct(sig.utilisation),
            fmt_pct(exit),
            prev.level
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg() -> Pressure {
        Config::default().pressure
    }

    fn sig(u: f64) -> Signal {
        Signal {
            utilisation: u,
            ..Signal::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn enters_at_once() {
        let (s, _) = next(None, sig(0.5), &cfg(), secs(0));
        assert_eq!(s.level, Level::Normal);
        let (s, _) = next(Some(s), sig(0.86), &cfg(), secs(10));
        assert_eq!(s.level, Level::Elevated);
        let (s, why) = next(
            Some(s),
            Signal {
                dropping: true,
                ..sig(0.5)
            },
            &cfg(),
            secs(20),
        );
        assert_eq!(s.level, Level::Critical);
        assert!(why.contains("drop"));
    }

    #[test]
    fn leaves_one_step_after_hold_and_below_exit() {
        let crit = LevelState {
            level: Level::Critical,
            since: secs(0),
        };
        // Below critical exit but hold not over.
        let (s, why) = next(Some(crit), sig(0.5), &cfg(), secs(60));
        assert_eq!(s.level, Level::Critical);
        assert!(why.contains("more"), "{why}");
        // Hold over: one step down only.
        let (s, _) = next(Some(crit), sig(0.1), &cfg(), secs(121));
        assert_eq!(
            s,
            LevelState {
                level: Level::Elevated,
                since: secs(121)
            }
        );
        // Utilisation between exit and enter keeps the level however long.
        let (s, _) = next(Some(crit), sig(0.9), &cfg(), secs(100_000));
        assert_eq!(s.level, Level::Critical);
    }

    #[test]
    fn early_drop_holds_elevated() {
        let el = LevelState {
            level: Level::Elevated,
            since: secs(0),
        };
        let (s, _) = next(
            Some(el),
            Signal {
                evicting: true,
                ..sig(0.1)
            },
            &cfg(),
            secs(1000),
        );
        assert_eq!(s.level, Level::Elevated);
    }

    #[test]
    fn oscillation_around_enter_does_not_flap() {
        let mut state = None;
        let mut changes = 0;
        for t in 0..1000u64 {
            let u = if t % 2 == 0 { 0.84 } else { 0.86 };
            let (s, _) = next(state, sig(u), &cfg(), secs(t * 10));
            if state.is_some_and(|p: LevelState| p.level != s.level) {
                changes += 1;
            }
            state = Some(s);
        }
        assert_eq!(
            changes, 1,
            "enters elevated once and stays: 0.84 is above exit 0.70"
        );
    }
}
