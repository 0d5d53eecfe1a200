//! The bounds every value ctune writes must pass, whatever its source: its own decision,
//! its state (the operator's originals, for `restore`), its persisted file (for `boot`)
//! or a hand-edited copy of either. A value outside is refused and named, never clamped:
//! a state or file that says something impossible is a state or file not to trust.

use crate::tunables;

/// What a value is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The smallest max that may be written: `ceiling.min_max` for values ctune
    /// decides, [`RESTORE_MIN_MAX`] at most for the operator's values it puts back.
    pub min_max: u64,
    /// The ceiling for max now, when known.
    pub ceiling: Option<u64>,
    /// What the busiest namespace holds plus headroom, when known: max never below it.
    pub table_needs: Option<u64>,
    /// The kernel's page size (bucket rounding and limit).
    pub page_size: u64,
}

/// The smallest max a kernel picks by itself (its default hash, and so max, is at least
/// 1024 buckets): an operator's original below `ceiling.min_max` but not below this
/// (a small VM's stock 8192) is put back by `restore`; 1 is not.
pub const RESTORE_MIN_MAX: u64 = 1024;

/// The largest timeout the kernel takes: the sysctls hold jiffies in an int
/// (`proc_dointvec_jiffies`), INT_MAX / HZ seconds, about 24 days at HZ=1000.
pub const MAX_TIMEOUT_SECS: u64 = i32::MAX as u64 / 1000;

/// Whether `value` may be written to `key`; the error says which bound it fails.
pub fn check(key: &str, value: u64, b: &Bounds) -> Result<(), String> {
    let fail = |why: String| Err(format!("{key} = {value} refused: {why}"));
    match key {
        tunables::MAX => {
            if value == 0 {
                return fail("0 means unlimited, which ctune never writes".into());
            }
            if value > tunables::KERNEL_MAX_LIMIT {
                return fail(format!(
                    "above the kernel's limit {}",
                    tunables::KERNEL_MAX_LIMIT
                ));
            }
            if value < b.min_max {
                return fail(format!(
                    "below {}, the smallest max ctune writes",
                    b.min_max
                ));
            }
            if let Some(need) = b.table_needs.filter(|n| value < *n) {
                return fail(format!(
                    "below the {need} entries the busiest namespace holds plus headroom"
                ));
            }
            if let Some(c) = b.ceiling.filter(|c| value > *c) {
                return fail(format!("above the ceiling {c}"));
            }
            Ok(())
        }
        tunables::BUCKETS => {
            let (low, high) = (
                tunables::bucket_align(b.page_size),
                tunables::buckets_limit(b.page_size),
            );
            if !(low..=high).contains(&value) {
                return fail(format!("outside the kernel's {low} ..= {high}"));
            }
            Ok(())
        }
        k if tunables::is_timeout_key(k) => {
            if !(1..=MAX_TIMEOUT_SECS).contains(&value) {
                return fail(format!("outside 1 ..= {MAX_TIMEOUT_SECS} seconds"));
            }
            Ok(())
        }
        _ => fail("not a key ctune writes".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Bounds {
        Bounds {
            min_max: 16384,
            ceiling: Some(1_000_000),
            table_needs: Some(20_000),
            page_size: 4096,
        }
    }

    #[test]
    fn a_timeout_name_that_leaves_the_conntrack_keys_is_not_written() {
        for key in [
            "nf_conntrack_udp_timeout/../../../kernel/core_pattern",
            "nf_conntrack_timeout.x",
            "nf_conntrack_UDP_timeout",
        ] {
            let e = check(key, 30, &b()).unwrap_err();
            assert!(e.contains("not a key ctune writes"), "{key}: {e}");
        }
        assert!(check("nf_conntrack_udp_timeout", 30, &b()).is_ok());
    }

    #[test]
    fn max_within_every_bound() {
        assert!(check(tunables::MAX, 262_144, &b()).is_ok());
        for (v, why) in [
            (0, "unlimited"),
            (1, "smallest max"),
            (16_384, "holds"),
            (2_000_000, "ceiling"),
            (u64::MAX, "kernel"),
        ] {
            let err = check(tunables::MAX, v, &b()).unwrap_err();
            assert!(
                err.contains(why) && err.contains(&v.to_string()),
                "{v}: {err}"
            );
        }
    }

    #[test]
    fn buckets_and_timeouts() {
        assert!(check(tunables::BUCKETS, 65_536, &b()).is_ok());
        assert!(check(tunables::BUCKETS, 0, &b()).is_err());
        assert!(check(tunables::BUCKETS, u64::MAX, &b()).is_err());
        assert!(check(tunables::ESTABLISHED, 432_000, &b()).is_ok());
        assert!(check(tunables::ESTABLISHED, 0, &b()).is_err());
        assert!(check(tunables::ESTABLISHED, 1 << 40, &b()).is_err());
        assert!(check("nf_conntrack_acct", 1, &b()).is_err());
    }
}
