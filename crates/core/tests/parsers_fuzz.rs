//! Every parser of text ctune does not write (kernel files, the config) takes any input
//! without panicking: arbitrary bytes, and mutations of the real files the fixtures
//! carry (proptest's generators; failures are kept in parsers_fuzz.proptest-regressions,
//! the corpus). Errors are fine; panics, hangs and huge allocations are not.

use std::path::Path;

use ctune_core::config;
use ctune_core::model::{auxv, meminfo, psi, slab, stat};
use proptest::prelude::*;

fn fixture(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/kernel-6.18")
        .join(rel);
    std::fs::read_to_string(p).unwrap_or_default()
}

use ctune_testkit::text;

const SLABINFO: &str = "slabinfo - version: 2.1\n# name <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\nnf_conntrack       120000 120016    256   16    1 : tunables 0 0 0 : slabdata 7501 7501 0\n";
const PSI: &str = "some avg10=12.50 avg60=3.00 avg300=0.40 total=123456\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1\n";

proptest! {
    #![proptest_config(ctune_testkit::proptest_config(512))]

    #[test]
    fn stat_parser(t in text(&fixture("proc/net/stat/nf_conntrack"))) {
        let _ = stat::parse(&t);
    }

    #[test]
    fn meminfo_parser(t in text(&fixture("proc/meminfo"))) {
        let _ = meminfo::parse(&t);
    }

    #[test]
    fn slabinfo_parser(t in text(SLABINFO)) {
        let _ = slab::parse_slabinfo(&t);
    }

    #[test]
    fn psi_parser(t in text(PSI)) {
        if let Ok(v) = psi::some_avg10(&t) {
            prop_assert!((0.0..=100.0).contains(&v));
        }
    }

    #[test]
    fn auxv_parser(bytes in prop::collection::vec(any::<u8>(), 0..256), word in prop_oneof![Just(4usize), Just(8usize)]) {
        if let Some(p) = auxv::page_size(&bytes, word) {
            prop_assert!(p.is_power_of_two() && p >= 4096);
        }
    }

    #[test]
    fn config_parser(t in text(config::DEFAULT_YAML)) {
        // Any text: a valid config or a named error, never a panic.
        let _ = config::parse(&t, Path::new("fuzz.yaml"));
    }
}
