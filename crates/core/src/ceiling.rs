//! The ceiling for `nf_conntrack_max`: the memory the host can give the table now,
//! divided by what an entry really costs, less what the other namespaces already hold.
//!
//! The budget is the smallest of a share of MemTotal (at least a floor), what the host
//! can spare now (MemAvailable plus the table's own memory, less a reserve for
//! everything else) and an optional cap. The kernel compares each namespace's count with
//! the one global max, so the table's memory is that of every namespace's entries: the
//! ceiling is what the busiest namespace may reach while all the others keep what they
//! hold. Empty namespaces cost nothing and change nothing; a flood in one namespace is
//! bounded by the budget whatever the others do, because a table over its budget brings
//! max back down (the decision's max phase).
//!
//! All arithmetic is done in u128 and clamped, so no configuration or kernel value can
//! overflow it (a peer shipped exactly that bug).

use serde::Serialize;

use crate::config::{self, FillingNamespaces};
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

/// Which term of the budget was the smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// MemTotal x `memory_fraction`.
    Share,
    /// `memory_floor` (above the share).
    Floor,
    /// What the host can spare now.
    Spare,
    /// `memory_cap`.
    Cap,
}

/// What the ceiling is computed from: the host, and what the table holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// MemTotal.
    pub mem_total: u64,
    /// MemAvailable (None on kernels before 3.14: the share alone then).
    pub mem_available: Option<u64>,
    /// Slab bytes per entry.
    pub slab_bytes: u64,
    /// The kernel's page size (hash rounding).
    pub page_size: u64,
    /// Entries of every namespace together.
    pub entries: u64,
    /// Entries of the busiest namespace.
    pub busiest: u64,
    /// Hash buckets now.
    pub buckets: u64,
}

/// The ceiling with every input that produced it, for explanations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ceiling {
    /// The highest max ctune will set.
    pub value: u64,
    /// What bound the value.
    pub limited_by: Limit,
    /// Bytes the whole table (entries of every namespace, and the hash) may cost.
    pub budget_bytes: u64,
    /// Which term of the budget was the smallest.
    pub bound: Bound,
    /// MemTotal.
    pub mem_total_bytes: u64,
    /// The configured share of MemTotal.
    pub memory_fraction: f64,
    /// MemTotal x share, but at least `memory_floor`.
    pub share_bytes: u64,
    /// MemAvailable, when the kernel reports it.
    pub available_bytes: Option<u64>,
    /// Memory kept for everything else.
    pub reserve_bytes: u64,
    /// What the host can spare now: MemAvailable + the table's memory - the reserve.
    pub spare_bytes: Option<u64>,
    /// MemAvailable is below the reserve: the host is short of memory.
    pub memory_short: bool,
    /// What the table costs now (every namespace's entries and the hash).
    pub table_bytes: u64,
    /// Entries of every namespace now.
    pub table_entries: u64,
    /// Of those, the entries outside the busiest namespace.
    pub other_entries: u64,
    /// Slab bytes per entry.
    pub slab_bytes: u64,
    /// Extension allowance per entry.
    pub extension_bytes: u64,
    /// Total bytes per entry including the hash bucket share (rounded up).
    pub bytes_per_entry: u64,
    /// Namespaces assumed to fill up to max each: 1 unless `filling_namespaces` fixes a
    /// number (the old worst case).
    pub filling_namespaces: u64,
    /// Whether that fixed number replaces the accounting of the other namespaces'
    /// entries (`filling_namespaces: N`).
    pub assumes_full_namespaces: bool,
}

fn share_of(total: u64, fraction: f64) -> u64 {
    let v = (total as f64 * fraction).floor();
    if v.is_finite() && v >= 0.0 {
        v.min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// Memory kept for everything but the table: the larger of the reserve's share of
/// MemTotal and its minimum.
pub fn reserve_bytes(cfg: &config::Config, mem_total: u64) -> u64 {
    let c = &cfg.ceiling;
    share_of(mem_total, c.reserve_fraction.get()).max(c.reserve_min)
}

/// The budget and its terms: (budget, bound, share, reserve, spare).
fn budget(
    cfg: &config::Config,
    u: &Usage,
    table_bytes: u64,
) -> (u64, Bound, u64, u64, Option<u64>) {
    let c = &cfg.ceiling;
    let by_fraction = share_of(u.mem_total, c.memory_fraction.get());
    let (share, mut bound) = if c.memory_floor > by_fraction {
        (c.memory_floor, Bound::Floor)
    } else {
        (by_fraction, Bound::Share)
    };
    let reserve = reserve_bytes(cfg, u.mem_total);
    let spare = u
        .mem_available
        .map(|a| a.saturating_add(table_bytes).saturating_sub(reserve));
    let mut budget = share;
    if let Some(s) = spare.filter(|s| *s < budget) {
        (budget, bound) = (s, Bound::Spare);
    }
    if let Some(cap) = c.memory_cap.filter(|cap| *cap < budget) {
        (budget, bound) = (cap, Bound::Cap);
    }
    (budget, bound, share, reserve, spare)
}

/// Computes the ceiling.
pub fn compute(cfg: &config::Config, u: &Usage) -> Ceiling {
    let c = &cfg.ceiling;
    let ratio = u128::from(cfg.hash.ratio.max(1));
    let table_bytes = memory_now(u.entries, u.buckets, u.slab_bytes, c.extension_bytes);
    let (budget, bound, share, reserve, spare) = budget(cfg, u, table_bytes);
    let per_entry = u128::from(u.slab_bytes) + u128::from(c.extension_bytes);
    // Per entry: slab + extensions + 8 B per bucket / ratio entries per bucket.
    let denom = per_entry * ratio + u128::from(tunables::BUCKET_BYTES);
    // The kernel rounds the hash up to whole pages of buckets: keep that slack out of
    // the budget so the worst case at the ceiling still fits.
    let slack = u128::from((tunables::bucket_align(u.page_size) - 1) * tunables::BUCKET_BYTES);
    let usable = u128::from(budget).saturating_sub(slack);
    let allowed = (usable * ratio / denom.max(1)).min(u128::from(u64::MAX)) as u64;
    let others = u.entries.saturating_sub(u.busiest);
    let (by_memory, filling, fixed) = match c.filling_namespaces {
        FillingNamespaces::Fixed(n) => (allowed / u64::from(n.max(1)), u64::from(n.max(1)), true),
        FillingNamespaces::Auto => (allowed.saturating_sub(others), 1, false),
    };
    let (value, limited_by) = clamp(cfg, by_memory, u.page_size);
    Ceiling {
        value,
        limited_by,
        budget_bytes: budget,
        bound,
        mem_total_bytes: u.mem_total,
        memory_fraction: c.memory_fraction.get(),
        share_bytes: share,
        available_bytes: u.mem_available,
        reserve_bytes: reserve,
        spare_bytes: spare,
        memory_short: u.mem_available.is_some_and(|a| a < reserve),
        table_bytes,
        table_entries: u.entries,
        other_entries: others,
        slab_bytes: u.slab_bytes,
        extension_bytes: c.extension_bytes,
        bytes_per_entry: (denom.div_ceil(ratio)).min(u128::from(u64::MAX)) as u64,
        filling_namespaces: filling,
        assumes_full_namespaces: fixed,
    }
}

/// The configured and kernel bounds around what memory allows.
fn clamp(cfg: &config::Config, by_memory: u64, page_size: u64) -> (u64, Limit) {
    let c = &cfg.ceiling;
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
    (value, limited_by)
}

impl Ceiling {
    /// One line: "ceiling 3.3M from 5% of 23.6 GiB at 386 B/entry".
    pub fn explain(&self) -> String {
        let source = match self.bound {
            Bound::Share => format!(
                "{} of {}",
                fmt_pct(self.memory_fraction),
                fmt_bytes(self.mem_total_bytes)
            ),
            Bound::Floor => format!("the {} memory floor", fmt_bytes(self.share_bytes)),
            Bound::Spare => format!(
                "the {} the host can spare (MemAvailable + table - {} reserve)",
                fmt_bytes(self.budget_bytes),
                fmt_bytes(self.reserve_bytes)
            ),
            Bound::Cap => format!("memory cap {}", fmt_bytes(self.budget_bytes)),
        };
        let others = match (self.assumes_full_namespaces, self.other_entries) {
            (true, _) => format!(" shared by {} filling namespaces", self.filling_namespaces),
            (false, 0) => String::new(),
            (false, e) => format!(", less {} entries in other namespaces", fmt_count(e)),
        };
        let base = format!(
            "ceiling {} from {source} at {} B/entry{others}",
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

    /// Memory at a given max: the busiest namespace at max (every namespace when a fixed
    /// number fill), the others as they are, plus the hash.
    pub fn memory_at(&self, max: u64, buckets: u64) -> u64 {
        let entries = if self.assumes_full_namespaces {
            u128::from(max) * u128::from(self.filling_namespaces)
        } else {
            u128::from(max) + u128::from(self.other_entries)
        };
        cost(entries, self.slab_bytes, self.extension_bytes, buckets)
    }

    /// Whether the table's real memory is above the budget now.
    pub fn over_budget(&self) -> bool {
        self.table_bytes > self.budget_bytes
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

/// Memory the table holds now: the entries of every namespace plus the hash.
pub fn memory_now(entries: u64, buckets: u64, slab_bytes: u64, extension_bytes: u64) -> u64 {
    cost(u128::from(entries), slab_bytes, extension_bytes, buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn usage(total: u64, available: Option<u64>, entries: u64, busiest: u64) -> Usage {
        Usage {
            mem_total: total,
            mem_available: available,
            slab_bytes: 256,
            page_size: 4096,
            entries,
            busiest,
            buckets: 0,
        }
    }

    #[test]
    fn derives_from_memory_and_entry_size() {
        let cfg = Config::default();
        let c = compute(&cfg, &usage(24 * GIB, Some(23 * GIB), 0, 0));
        // 5% of 24 GiB = 1288490188 B; per entry 256 + 128 + 8/4 = 386 B.
        assert_eq!(c.bytes_per_entry, 386);
        assert_eq!(c.bound, Bound::Share);
        assert_eq!(c.value, (1288490188 - 511 * 8) * 4 / (384 * 4 + 8));
        let buckets = tunables::round_buckets(c.value.div_ceil(4), 4096);
        assert!(c.memory_at(c.value, buckets) <= c.budget_bytes);
        assert_eq!(c.limited_by, Limit::Memory);
        assert!(
            c.explain().starts_with(&format!(
                "ceiling {} from 5% of 24.0 GiB at 386 B/entry",
                c.value
            )),
            "{}",
            c.explain()
        );
    }

    #[test]
    fn other_namespaces_take_what_they_hold_and_empty_ones_nothing() {
        let cfg = Config::default();
        let alone = compute(&cfg, &usage(24 * GIB, Some(23 * GIB), 1000, 1000)).value;
        let shared = compute(&cfg, &usage(24 * GIB, Some(23 * GIB), 101_000, 1000));
        assert_eq!(shared.value, alone - 100_000);
        assert!(
            shared
                .explain()
                .contains("less 100000 entries in other namespaces"),
            "{}",
            shared.explain()
        );
        // The old worst case, when asked for.
        let mut fixed = Config::default();
        fixed.ceiling.filling_namespaces = FillingNamespaces::Fixed(4);
        let four = compute(&fixed, &usage(24 * GIB, Some(23 * GIB), 0, 0)).value;
        assert!(four.abs_diff(alone / 4) <= 1);
    }

    #[test]
    fn a_small_router_gets_the_floor_and_the_spare_bounds_it() {
        let cfg = Config::default();
        // 256 MiB, 150 MiB available: 5% would be 12.8 MiB; the 64 MiB floor holds
        // more than kube-proxy's 131072 (48 MiB).
        let c = compute(&cfg, &usage(256 * MIB, Some(150 * MIB), 0, 0));
        assert_eq!(c.bound, Bound::Floor);
        assert!(c.value > 131_072, "{}", c.explain());
        // Memory taken by something else: the spare bounds the budget (the reserve is
        // the larger of 5 % and 32 MiB).
        let c = compute(&cfg, &usage(256 * MIB, Some(80 * MIB), 0, 0));
        assert_eq!(c.bound, Bound::Spare);
        assert_eq!(c.budget_bytes, 80 * MIB - 32 * MIB);
        assert!(
            c.explain().contains("the host can spare"),
            "{}",
            c.explain()
        );
        // The table's own memory is part of what it may use.
        let c = compute(&cfg, &usage(256 * MIB, Some(60 * MIB), 50_000, 50_000));
        assert!(!c.memory_short || c.available_bytes < Some(c.reserve_bytes));
        assert_eq!(c.table_bytes, 50_000 * 384);
        assert_eq!(c.spare_bytes, Some((60 * MIB + 50_000 * 384) - 32 * MIB));
    }

    #[test]
    fn short_of_memory() {
        let c = compute(&Config::default(), &usage(256 * MIB, Some(10 * MIB), 0, 0));
        assert!(c.memory_short);
        assert_eq!(c.budget_bytes, 0);
        assert_eq!(c.limited_by, Limit::MinMax);
    }

    #[test]
    fn caps_and_floor() {
        let mut cfg = Config::default();
        cfg.ceiling.memory_cap = Some(64 << 20);
        let c = compute(&cfg, &usage(24 * GIB, None, 0, 0));
        assert_eq!(c.bound, Bound::Cap);
        assert_eq!(c.value, ((64u64 << 20) - 511 * 8) * 4 / (384 * 4 + 8));
        assert!(c.explain().contains("memory cap 64.0 MiB"));

        let c = compute(&Config::default(), &usage(16 << 20, None, 0, 0));
        assert_eq!(c.limited_by, Limit::Memory, "the floor: {}", c.explain());

        let mut absurd = usage(u64::MAX, Some(u64::MAX), u64::MAX, 0);
        absurd.slab_bytes = u64::MAX;
        absurd.buckets = u64::MAX;
        let c = compute(&Config::default(), &absurd);
        assert_eq!(c.value, 16384, "absurd sizes cannot overflow");

        let mut one_byte = usage(u64::MAX, None, 0, 0);
        one_byte.slab_bytes = 1;
        let c = compute(&Config::default(), &one_byte);
        assert_eq!(c.limited_by, Limit::MaxCap);
        let mut cfg = Config::default();
        cfg.ceiling.max_cap = tunables::KERNEL_MAX_LIMIT;
        cfg.hash.ratio = 1;
        let c = compute(&cfg, &one_byte);
        assert_eq!(c.limited_by, Limit::Kernel);
        assert_eq!(c.value, tunables::buckets_limit(4096));
    }

    #[test]
    fn memory_figures() {
        let c = compute(&Config::default(), &usage(24 * GIB, None, 3000, 1000));
        assert_eq!(c.memory_at(1000, 512), (1000 + 2000) * 384 + 512 * 8);
        assert_eq!(memory_now(10, 512, 256, 128), 3840 + 4096);
        assert_eq!(c.table_bytes, 3000 * 384);
    }
}
