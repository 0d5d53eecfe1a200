//! The hardware ceiling for `nf_conntrack_max`: a memory budget divided by what an entry
//! really costs, times the namespaces that can each fill the table.
//!
//! All arithmetic is done in u128 and clamped, so no configuration or kernel value can
//! overflow it (a peer shipped exactly that bug).

use serde::Serialize;

use crate::config;
use crate::tunables;
use crate::units::{fmt_bytes, fmt_count, fmt_pct};

/// What bound the ceiling in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The memory budget.
    Memory,
    /// `ceiling.max_cap`.
    MaxCap,
    /// The kernel's own bound (INT_MAX, or buckets at INT_MAX/8).
    Kernel,
    /// `ceiling.min_max` lifted a smaller budget.
    MinMax,
}

/// The ceiling with every input that produced it, for explanations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ceiling {
    /// The highest max ctune will set.
    pub value: u64,
    /// Bytes all entries together may cost.
    pub budget_bytes: u64,
    /// MemTotal the budget was taken from.
    pub mem_total_bytes: u64,
    /// The configured share of MemTotal.
    pub memory_fraction: f64,
    /// Whether `ceiling.memory_cap` was smaller than the fraction.
    pub capped_by_memory_cap: bool,
    /// Slab bytes per entry.
    pub slab_bytes: u64,
    /// Extension allowance per entry.
    pub extension_bytes: u64,
    /// Total bytes per entry including the hash bucket share (rounded up).
    pub bytes_per_entry: u64,
    /// Namespaces assumed to fill up to max each.
    pub filling_namespaces: u64,
    /// What bound the value.
    pub limited_by: Limit,
}

/// Computes the ceiling.
pub fn compute(
    cfg: &config::Config,
    mem_total: u64,
    slab_bytes: u64,
    filling_namespaces: u64,
    page_size: u64,
) -> Ceiling {
    let c = &cfg.ceiling;
    let ratio = u128::from(cfg.hash.ratio.max(1));
    let fraction = c.memory_fraction.get();
    let by_fraction = (mem_total as f64 * fraction).floor();
    let by_fraction = if by_fraction.is_finite() && by_fraction >= 0.0 {
        by_fraction.min(u64::MAX as f64) as u64
    } else {
        0
    };
    let (budget, capped) = match c.memory_cap {
        Some(cap) if cap < by_fraction => (cap, true),
        _ => (by_fraction, false),
    };
    let per_entry = u128::from(slab_bytes) + u128::from(c.extension_bytes);
    // Per entry: slab + extensions + 8 B per bucket / ratio entries per bucket.
    // max <= budget * ratio / ((per_entry * ratio + 8) * namespaces)
    let filling = u128::from(filling_namespaces.max(1));
    let denom = (per_entry * ratio + u128::from(tunables::BUCKET_BYTES)).saturating_mul(filling);
    // The kernel rounds the hash up to whole pages of buckets: keep that slack out of
    // the budget so the worst case at the ceiling still fits.
    let slack = u128::from((tunables::bucket_align(page_size) - 1) * tunables::BUCKET_BYTES);
    let usable = u128::from(budget).saturating_sub(slack);
    let by_memory = (usable * ratio / denom.max(1)).min(u128::from(u64::MAX)) as u64;
    let kernel = tunables::KERNEL_MAX_LIMIT
        .min(tunables::buckets_limit(page_size).saturating_mul(u64::from(cfg.hash.ratio)));
    let (mut value, mut limited_by) = (by_memory, Limit::Memory);
    if c.max_cap < value {
        (value, limited_by) = (c.max_cap, Limit::MaxCap);
    }
    if kernel < value {
        (value, limited_by) = (kernel, Limit::Kernel);
    }
    if value < c.min_max {
        (value, limited_by) = (c.min_max, Limit::MinMax);
    }
    let bytes_per_entry = ((per_entry * ratio + u128::from(tunables::BUCKET_BYTES)).div_ceil(ratio))
        .min(u128::from(u64::MAX)) as u64;
    Ceiling {
        value,
        budget_bytes: budget,
        mem_total_bytes: mem_total,
        memory_fraction: fraction,
        capped_by_memory_cap: capped,
        slab_bytes,
        extension_bytes: c.extension_bytes,
        bytes_per_entry,
        filling_namespaces: filling_namespaces.max(1),
        limited_by,
    }
}

impl Ceiling {
    /// One line: "ceiling 3.1M from 5% of 23.6 GiB at 386 B/entry".
    pub fn explain(&self) -> String {
        let source = if self.capped_by_memory_cap {
            format!("memory cap {}", fmt_bytes(self.budget_bytes))
        } else {
            format!(
                "{} of {}",
                fmt_pct(self.memory_fraction),
                fmt_bytes(self.mem_total_bytes)
            )
        };
        let ns = if self.filling_namespaces > 1 {
            format!(" shared by {} filling namespaces", self.filling_namespaces)
        } else {
            String::new()
        };
        let base = format!(
            "ceiling {} from {source} at {} B/entry{ns}",
            fmt_count(self.value),
            self.bytes_per_entry
        );
        match self.limited_by {
            Limit::Memory => base,
            Limit::MaxCap => format!("{base}, capped by ceiling.max_cap"),
            Limit::Kernel => format!("{base}, capped by the kernel's limit"),
            Limit::MinMax => format!("{base}, raised to ceiling.min_max (the budget allows less)"),
        }
    }

    /// Worst-case memory at a given max: every filling namespace full, plus the hash.
    pub fn memory_at(&self, max: u64, buckets: u64) -> u64 {
        let entries = u128::from(max) * u128::from(self.filling_namespaces);
        cost(entries, self.slab_bytes, self.extension_bytes, buckets)
    }
}

/// Entries x (slab + extensions) + buckets x 8, saturating at u64::MAX.
fn cost(entries: u128, slab_bytes: u64, extension_bytes: u64, buckets: u64) -> u64 {
    let per = u128::from(slab_bytes) + u128::from(extension_bytes);
    entries
        .saturating_mul(per)
        .saturating_add(u128::from(buckets) * u128::from(tunables::BUCKET_BYTES))
        .min(u128::from(u64::MAX)) as u64
}

/// Memory the table holds now: the entries of every observed namespace plus the hash.
pub fn memory_now(entries: u64, buckets: u64, slab_bytes: u64, extension_bytes: u64) -> u64 {
    cost(u128::from(entries), slab_bytes, extension_bytes, buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const GIB: u64 = 1 << 30;

    #[test]
    fn derives_from_memory_and_entry_size() {
        let cfg = Config::default();
        let c = compute(&cfg, 24 * GIB, 256, 1, 4096);
        // 5% of 24 GiB = 1288490188 B; per entry 256 + 128 + 8/4 = 386 B.
        assert_eq!(c.bytes_per_entry, 386);
        assert_eq!(c.value, (1288490188 - 511 * 8) * 4 / (384 * 4 + 8));
        let buckets = tunables::round_buckets(c.value.div_ceil(4), 4096);
        assert!(c.memory_at(c.value, buckets) <= c.budget_bytes);
        assert_eq!(c.limited_by, Limit::Memory);
        assert!(
            c.explain()
                .starts_with("ceiling 3.3M from 5% of 24.0 GiB at 386 B/entry"),
            "{}",
            c.explain()
        );
    }

    #[test]
    fn namespaces_share_the_budget() {
        let cfg = Config::default();
        let one = compute(&cfg, 24 * GIB, 256, 1, 4096).value;
        let four = compute(&cfg, 24 * GIB, 256, 4, 4096).value;
        assert!(four <= one / 4 + 1 && four >= one / 4 - 1);
        assert!(
            compute(&cfg, 24 * GIB, 256, 4, 4096)
                .explain()
                .contains("4 filling namespaces")
        );
    }

    #[test]
    fn caps_and_floor() {
        let mut cfg = Config::default();
        cfg.ceiling.memory_cap = Some(64 << 20);
        let c = compute(&cfg, 24 * GIB, 256, 1, 4096);
        assert!(c.capped_by_memory_cap);
        assert_eq!(c.value, ((64u64 << 20) - 511 * 8) * 4 / (384 * 4 + 8));
        assert!(c.explain().contains("memory cap 64.0 MiB"));

        let c = compute(&Config::default(), 64 << 20, 256, 1, 4096);
        assert_eq!(c.limited_by, Limit::MinMax);
        assert_eq!(c.value, 16384);

        let c = compute(&Config::default(), u64::MAX, u64::MAX, u64::MAX, 4096);
        assert_eq!(
            c.value, 16384,
            "absurd entry size and namespace count cannot overflow"
        );

        let c = compute(&Config::default(), u64::MAX, 1, 1, 4096);
        assert_eq!(c.limited_by, Limit::MaxCap);
        let mut cfg = Config::default();
        cfg.ceiling.max_cap = tunables::KERNEL_MAX_LIMIT;
        cfg.hash.ratio = 1;
        let c = compute(&cfg, u64::MAX, 1, 1, 4096);
        assert_eq!(c.limited_by, Limit::Kernel);
        assert_eq!(c.value, tunables::buckets_limit(4096));
    }

    #[test]
    fn memory_figures() {
        let c = compute(&Config::default(), 24 * GIB, 256, 2, 4096);
        assert_eq!(c.memory_at(1000, 512), 2 * 1000 * 384 + 512 * 8);
        assert_eq!(memory_now(10, 512, 256, 128), 3840 + 4096);
    }
}
