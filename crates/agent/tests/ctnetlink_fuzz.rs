//! The ctnetlink dump parser takes any bytes: random, truncated at any point, or a real
//! datagram with bytes changed, inserted or cut. It returns entries or a named error,
//! never panics, and its work is bounded by the input (no more entries than 16-byte
//! headers fit in it). Failures are kept in ctnetlink_fuzz.proptest-regressions.

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

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
        for (at, byte, kind) in edits {
            let at = at.index(b.len() + 1);
            match kind {
                0 if at < b.len() => b[at] = byte,
                1 => b.insert(at, byte),
                _ => b.truncate(at),
            }
        }
        let _ = parse(&b);
    }
}
