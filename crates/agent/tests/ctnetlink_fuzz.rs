//! The ctnetlink dump parser takes any bytes: random, truncated at any point, or a real
//! datagram with bytes changed, inserted or cut. It returns entries or a named error,
//! never panics, and its work is bounded by the input (no more entries than 16-byte
//! headers fit in it). The statistics reply parser (module `stats`) likewise. Failures are
//! kept in ctnetlink_fuzz.proptest-regressions.

use ctune::sense::ctnetlink::encode::{attr as nla, message as msg};
use ctune::sense::ctnetlink::{ParseError, parse_datagram};
use proptest::prelude::*;

/// A datagram as the kernel sends it: `n` entries (IPv4 TCP and IPv6 UDP), then DONE.
fn datagram(n: usize) -> Vec<u8> {
    let mut d = Vec::new();
    for i in 0..n {
        let v6 = i % 2 == 1;
        let ip = if v6 {
            nla(
                0x8000 | 1,
                &nla(
                    3,
                    &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i as u8],
                ),
            )
        } else {
            nla(0x8000 | 1, &nla(1, &[10, 0, 0, i as u8]))
        };
        let mut proto = nla(1, &[if v6 { 17 } else { 6 }]);
        proto.extend(nla(2, &1234u16.to_be_bytes()));
        proto.extend(nla(3, &(80 + i as u16).to_be_bytes()));
        let mut tuple = ip;
        tuple.extend(nla(0x8000 | 2, &proto));
        let mut body = vec![if v6 { 10 } else { 2 }, 0, 0, 0];
        body.extend(nla(0x8000 | 1, &tuple));
        body.extend(nla(0x8000 | 2, &tuple));
        body.extend(nla(3, &6u32.to_be_bytes()));
        body.extend(nla(7, &120u32.to_be_bytes()));
        body.extend(nla(8, &1u32.to_be_bytes()));
        if !v6 {
            body.extend(nla(0x8000 | 4, &nla(0x8000 | 1, &nla(1, &[3]))));
        }
        d.extend(msg(0x100, 2, &body));
    }
    d.extend(msg(3, 2, &[0; 4]));
    d
}

/// Runs the parser; checks the bounds that hold for any input.
fn parse(b: &[u8]) -> Result<u64, ParseError> {
    let mut seen = 0u64;
    let r = parse_datagram(b, &mut |f| {
        seen += 1;
        // A port only for port protocols; a TCP state only read as one byte.
        assert!(f.dst_port.is_none() || matches!(f.proto, 6 | 17 | 33 | 132 | 136));
    });
    assert!(
        seen as usize <= b.len() / 16,
        "{seen} entries from {} bytes",
        b.len()
    );
    if let Ok(p) = &r {
        assert_eq!(p.entries, seen);
    }
    r.map(|p| p.entries)
}

#[test]
fn a_whole_datagram_parses_and_every_truncation_is_named() {
    let d = datagram(4);
    assert_eq!(parse(&d), Ok(4));
    for cut in 1..d.len() {
        // Every cut inside a message is an error with a name; a cut between two
        // messages is a shorter, valid datagram.
        match parse(&d[..cut]) {
            Ok(n) => assert!(n <= 4, "cut at {cut}: {n}"),
            Err(e) => assert!(
                matches!(
                    e,
                    ParseError::Truncated { .. } | ParseError::BadLength { .. }
                ),
                "cut at {cut}: {e}"
            ),
        }
    }
}

/// Edits bytes: (where, the byte, 0 replace / 1 insert / 2 cut there).
fn mutate(b: &mut Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) {
    for (at, byte, kind) in edits {
        let at = at.index(b.len() + 1);
        match kind {
            0 if at < b.len() => b[at] = byte,
            1 => b.insert(at, byte),
            _ => b.truncate(at),
        }
    }
}

proptest! {
    #![proptest_config(ctune_testkit::proptest_config(2048))]

    #[test]
    fn random_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&b);
    }

    #[test]
    fn mutated_datagrams(
        n in 0usize..6,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8),
    ) {
        let mut b = datagram(n);
        mutate(&mut b, edits);
        let _ = parse(&b);
    }
}

/// The statistics reply parser (`ctune::sense::ctstats`), fuzzed the same way: replies
/// built as the kernel builds them, with CPUs that may repeat or lack a counter, sum to
/// exactly what was sent or name what is wrong; random and mutated bytes never panic.
mod stats {
    use super::{msg, nla};
    use ctune::sense::ctstats::{CpuStats, StatsError};
    use proptest::prelude::*;

    const GET_STATS_CPU: u16 = 0x104;
    const GET_STATS: u16 = 0x105;

    /// One CPU's message: counter types 2, 9, 10, 11, 15 (found, insert_failed, drop,
    /// early_drop, chaintoolong) with `values`, less `drop` when `lacks_drop`.
    fn cpu(n: u16, values: [u32; 5], lacks_drop: bool) -> Vec<u8> {
        let mut body = vec![0, 0];
        body.extend(n.to_be_bytes());
        for (ty, v) in [2u16, 9, 10, 11, 15].into_iter().zip(values) {
            if !(lacks_drop && ty == 10) {
                body.extend(nla(ty, &v.to_be_bytes()));
            }
        }
        msg(GET_STATS_CPU, 2, &body)
    }

    fn reply(cpus: &[(u16, [u32; 5], bool)]) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        body.extend(nla(1, &7u32.to_be_bytes()));
        body.extend(nla(2, &65536u32.to_be_bytes()));
        let mut d = msg(GET_STATS, 0, &body);
        for (n, values, lacks) in cpus {
            d.extend(cpu(*n, *values, *lacks));
        }
        d.extend(msg(3, 2, &[0; 4]));
        d
    }

    fn parse(b: &[u8]) -> Result<ctune_core::model::ConntrackStat, StatsError> {
        let mut s = CpuStats::default();
        s.take(b)?;
        s.finish()
    }

    proptest! {
        #![proptest_config(ctune_testkit::proptest_config(2048))]

        #[test]
        fn sums_exactly_or_names_the_fault(
            cpus in prop::collection::vec((0u16..6, any::<[u32; 5]>(), prop::bool::weighted(0.1)), 1..8),
        ) {
            let r = parse(&reply(&cpus));
            let mut seen = std::collections::BTreeSet::new();
            let repeated = cpus.iter().find(|(n, _, _)| !seen.insert(*n)).map(|c| c.0);
            // The first fault in message order wins: a repeat or a differing layout.
            let first_fault = cpus.iter().enumerate().find_map(|(i, (n, _, lacks))| {
                if cpus[..i].iter().any(|c| c.0 == *n) {
                    Some("repeat")
                } else if *lacks != cpus[0].2 {
                    Some("layout")
                } else {
                    None
                }
            });
            match (first_fault, r) {
                (None, Ok(stat)) => {
                    prop_assert!(repeated.is_none());
                    for (i, name) in ["found", "insert_failed", "drop", "early_drop", "chainlength"].iter().enumerate() {
                        let sum: u64 = cpus.iter().map(|c| u64::from(c.1[i])).sum();
                        let want = (!(cpus[0].2 && *name == "drop")).then_some(sum);
                        prop_assert_eq!(stat.get(name), want, "{}", name);
                    }
                    prop_assert_eq!(stat.entries, 7);
                }
                (Some("repeat"), Err(StatsError::RepeatedCpu(_))) => {}
                (Some("layout"), Err(StatsError::Inconsistent { name: "drop", .. })) => {}
                (fault, r) => prop_assert!(false, "{:?}: {:?}", fault, r.map(|s| s.counters)),
            }
        }

        #[test]
        fn random_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&b);
        }

        #[test]
        fn mutated_replies_never_panic(
            n in 1usize..5,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..8),
        ) {
            let cpus: Vec<(u16, [u32; 5], bool)> = (0..n).map(|i| (i as u16, [i as u32; 5], false)).collect();
            let mut b = reply(&cpus);
            super::mutate(&mut b, edits);
            let _ = parse(&b);
        }
    }
}
