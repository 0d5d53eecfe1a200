//! The real memory cost of one conntrack entry, from the `nf_conntrack` slab cache.
//!
//! SLUB exposes `slab_size` (object plus metadata and alignment) under
//! `/sys/kernel/slab/nf_conntrack`; `/proc/slabinfo` has `objsize`. Both are root-only on
//! most systems, so an unprivileged dry run falls back to a documented default and says so.

/// Used when neither source can be read: `struct nf_conn` is 248-320 bytes on 64-bit
/// kernels depending on options; 320 keeps the ceiling on the safe side.
pub const FALLBACK_ENTRY_BYTES: u64 = 320;

/// Finds the `nf_conntrack` line in `/proc/slabinfo` and returns its `objsize` column.
pub fn parse_slabinfo(text: &str) -> Result<u64, String> {
    // Header: "# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : ..."
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("nf_conntrack") {
            continue;
        }
        let objsize = fields
            .nth(2)
            .ok_or("nf_conntrack line has no objsize column")?;
        return objsize
            .parse::<u64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("nf_conntrack objsize {objsize:?} is not a positive number"));
    }
    Err("no nf_conntrack line (cache unused yet, or merged into another cache)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_objsize() {
        let text = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\nnf_conntrack_expect      0      0    208   19    1 : tunables    0    0    0 : slabdata      0      0      0\nnf_conntrack           0      0    256   16    1 : tunables    0    0    0 : slabdata      0      0      0\n";
        assert_eq!(parse_slabinfo(text), Ok(256));
    }

    #[test]
    fn reports_missing_or_garbage() {
        assert!(parse_slabinfo("kmalloc-256 1 1 256 16 1\n").is_err());
        assert!(parse_slabinfo("nf_conntrack 1 1 big 16 1\n").is_err());
        assert!(parse_slabinfo("nf_conntrack 1\n").is_err());
    }
}
