//! The per-CPU statistics of a namespace's table: the kernel's `struct ip_conntrack_stat`,
//! summed over CPUs. Two files show them: `/proc/net/stat/nf_conntrack` (parsed here) and
//! ctnetlink's `IPCTNL_MSG_CT_GET_STATS_CPU` (parsed by the agent's sensing, which names
//! each counter by the column this file gives it, so both fill one [`ConntrackStat`]).
//!
//! In the file, one header line names the columns, then one row per possible CPU in hex. Columns
//! differ between kernel versions (4.x had `searched`, `delete_list`, ...; 5.x added
//! `clashres`, `chaintoolong` as `chainlength`), so columns are found by header name,
//! never by position. `entries` repeats the namespace's count on every row; every other
//! column is a per-CPU counter and is summed.

use serde::Serialize;
use std::collections::BTreeMap;

/// Summed counters of one namespace, with the columns this kernel has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackStat {
    /// The namespace's entry count as this file reports it (same on every row).
    pub entries: u64,
    /// Every other column, summed over CPUs, by header name.
    pub counters: BTreeMap<String, u64>,
    /// Where they were read.
    pub source: StatSource,
}

/// Where a namespace's counters were read. Both carry the same per-CPU counters; the
/// procfs file exists only with `CONFIG_NF_CONNTRACK_PROCFS` (off in Ubuntu's and
/// OpenWrt's kernels), ctnetlink needs CAP_NET_ADMIN. docs/design.md says which is
/// tried first and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatSource {
    /// `/proc/net/stat/nf_conntrack` (of the namespace's reader).
    #[default]
    Procfs,
    /// ctnetlink's IPCTNL_MSG_CT_GET_STATS_CPU and IPCTNL_MSG_CT_GET_STATS, over a
    /// socket opened in the namespace.
    Ctnetlink,
}

impl StatSource {
    /// Its name in JSON and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            StatSource::Procfs => "procfs",
            StatSource::Ctnetlink => "ctnetlink",
        }
    }

    /// How `status` and the dry run name it.
    pub fn describe(self) -> &'static str {
        match self {
            StatSource::Procfs => "/proc/net/stat/nf_conntrack",
            StatSource::Ctnetlink => "ctnetlink",
        }
    }
}

impl ConntrackStat {
    /// A counter by name; absent columns read as `None` so callers can say so.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.counters.get(name).copied()
    }

    /// Packets dropped because no entry could be made (table full).
    pub fn drop(&self) -> Option<u64> {
        self.get("drop")
    }

    /// Unassured entries evicted to make room: the table is full, no loss yet.
    pub fn early_drop(&self) -> Option<u64> {
        self.get("early_drop")
    }

    /// Inserts that failed (clashes or chains too long).
    pub fn insert_failed(&self) -> Option<u64> {
        self.get("insert_failed")
    }

    /// Inserts refused because a hash chain was longer than the kernel allows.
    pub fn chainlength(&self) -> Option<u64> {
        self.get("chainlength")
    }
}

/// The kernel's `drop` counter, split by cause. `drop` counts two different events:
/// a packet for which no entry could be made because the table is full
/// (`nf_conntrack_in` after `__nf_conntrack_alloc` found count > max and nothing to
/// early-drop), and a packet dropped because its entry clashed at confirm time with an
/// entry of the same tuple that could not be merged (`nf_ct_resolve_clash`, which counts
/// `drop` and `insert_failed` together; the NAT'd DNS A/AAAA race). `insert_failed` also
/// counts inserts refused for long chains (`chaintoolong`, with `chainlength`, without
/// `drop`), so the clashes are the drops matched by insert failures that are not chain
/// refusals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Drops {
    /// Packets lost to a full table.
    pub table_full: u64,
    /// Packets lost to unresolved insert clashes, at any utilisation.
    pub clash: u64,
}

/// Splits a `drop` count (cumulative or a rise) by cause, with the `insert_failed` and
/// `chainlength` counts of the same span (absent columns count as 0).
pub fn split_drops(drop: u64, insert_failed: Option<u64>, chainlength: Option<u64>) -> Drops {
    let clash_inserts = insert_failed
        .unwrap_or(0)
        .saturating_sub(chainlength.unwrap_or(0));
    let clash = drop.min(clash_inserts);
    Drops {
        table_full: drop - clash,
        clash,
    }
}

/// Parses the file's text. Errors say which line and column went wrong.
pub fn parse(text: &str) -> Result<ConntrackStat, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| "empty file: expected a header line".to_string())?
        .split_whitespace()
        .collect();
    // Every kernel since 2.6 starts the header with `entries`; its absence means this is
    // not the conntrack stat file (or it is truncated).
    if !header.contains(&"entries") {
        return Err(format!(
            "header has no `entries` column: {:?}",
            header.iter().take(4).collect::<Vec<_>>()
        ));
    }
    let mut stat = ConntrackStat::default();
    for name in &header {
        if *name != "entries" {
            stat.counters.insert((*name).to_string(), 0);
        }
    }
    let mut rows = 0usize;
    for (i, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != header.len() {
            return Err(format!(
                "row {} has {} fields, the header names {}",
                i + 1,
                fields.len(),
                header.len()
            ));
        }
        for (name, field) in header.iter().zip(&fields) {
            let v = u64::from_str_radix(field, 16)
                .map_err(|_| format!("row {} column {name}: {field:?} is not hex", i + 1))?;
            if *name == "entries" {
                stat.entries = v;
            } else {
                let slot = stat.counters.entry((*name).to_string()).or_default();
                *slot = slot.saturating_add(v);
            }
        }
        rows += 1;
    }
    if rows == 0 {
        return Err("no per-CPU rows after the header".into());
    }
    Ok(stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_split_by_cause() {
        // Clashes: drop and insert_failed rise together.
        assert_eq!(
            split_drops(10, Some(10), Some(0)),
            Drops {
                table_full: 0,
                clash: 10
            }
        );
        // A full table: drop alone.
        assert_eq!(
            split_drops(10, Some(0), Some(0)),
            Drops {
                table_full: 10,
                clash: 0
            }
        );
        // Chain refusals count in insert_failed without drop: not clashes.
        assert_eq!(
            split_drops(10, Some(7), Some(5)),
            Drops {
                table_full: 8,
                clash: 2
            }
        );
        // More insert failures than drops (dying entries): at most every drop a clash.
        assert_eq!(
            split_drops(3, Some(9), None),
            Drops {
                table_full: 0,
                clash: 3
            }
        );
        assert_eq!(
            split_drops(4, None, None),
            Drops {
                table_full: 4,
                clash: 0
            }
        );
    }

    const KERNEL_6_18: &str =
        include_str!("../../../../fixtures/kernel-6.18/proc/net/stat/nf_conntrack");
    const KERNEL_4_19: &str =
        include_str!("../../../../fixtures/kernel-4.19/proc/net/stat/nf_conntrack");

    #[test]
    fn sums_counters_over_cpus_and_keeps_entries() {
        let s = parse(KERNEL_6_18).unwrap();
        assert_eq!(s.entries, 0x1f40);
        assert_eq!(s.drop(), Some(0x10 + 0x22));
        assert_eq!(s.early_drop(), Some(0x3 + 0x4));
        assert_eq!(s.chainlength(), Some(0));
        assert_eq!(s.insert_failed(), Some(0x1));
    }

    #[test]
    fn older_kernel_columns_found_by_name() {
        let s = parse(KERNEL_4_19).unwrap();
        assert_eq!(s.entries, 0x64);
        assert_eq!(s.drop(), Some(5));
        assert_eq!(s.early_drop(), Some(2));
        // 4.19 has no chainlength column: absent, not zero.
        assert_eq!(s.chainlength(), None);
        assert!(s.get("searched").is_some());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("").is_err());
        assert!(parse("entries drop\n").is_err());
        assert!(
            parse("entries drop\n0001 zz\n")
                .unwrap_err()
                .contains("drop")
        );
        assert!(
            parse("entries drop\n0001\n")
                .unwrap_err()
                .contains("fields")
        );
        assert!(parse("0001 0002\n0001 0002\n").is_err());
    }

    #[test]
    fn counters_saturate_instead_of_overflowing() {
        let text = "entries drop\n00 ffffffffffffffff\n00 ffffffffffffffff\n";
        assert_eq!(parse(text).unwrap().drop(), Some(u64::MAX));
    }
}
