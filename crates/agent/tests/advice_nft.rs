//! Every advice snippet is an nftables file the real `nft` accepts on its own (root):
//! each kind of advice is built from synthetic tables (IPv4 and IPv6 sources, UDP and
//! TCP ports at both ends of the range) and its snippet run through `nft -c -f FILE`,
//! which checks it against the kernel and creates nothing.

use crate::common;

use std::collections::BTreeMap;

use ctune_core::advice::{self, Advice, Kind, Thresholds};
use ctune_core::composition::{
    Composition, Family, Flow, IPS_ASSURED, IPS_NAT_DONE, IPS_SEEN_REPLY, LocalNets, Summary,
};
use ctune_core::config::Config;

fn addr(family: Family, net: u32, host: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    match family {
        Family::V6 => {
            a[..2].copy_from_slice(&[0x20, 0x01]);
            a[2..6].copy_from_slice(&net.to_be_bytes());
            a[15] = host;
        }
        _ => {
            a[0] = 10;
            a[1..4].copy_from_slice(&net.to_be_bytes()[1..]);
            a[3] = host;
        }
    }
    a
}

fn flow(family: Family, src: [u8; 16], dst: [u8; 16], proto: u8, port: u16, status: u32) -> Flow {
    Flow {
        family,
        src: Some(src),
        dst: Some(dst),
        proto,
        dst_port: Some(port),
        tcp_state: (proto == 6).then_some(3),
        status,
        zone: 0,
        mark: 0,
        timeout: Some(60),
    }
}

fn summarize(c: &Composition) -> Summary {
    c.summarize(10, &BTreeMap::new(), &Config::default().timeouts)
}

/// 12 000 entries, 8 000 of them from one /24 (/64), to many ports.
fn heavy_source(family: Family) -> Summary {
    let mut c = Composition::new(10_000);
    for i in 0..12_000u32 {
        let net = if i < 8_000 { 7 } else { 1_000 + i % 400 };
        let src = addr(family, net << 8, (i % 250) as u8);
        c.add(&flow(
            family,
            src,
            addr(family, 99 << 8, 1),
            17,
            1_000 + (i % 3_000) as u16,
            IPS_NAT_DONE,
        ));
    }
    summarize(&c)
}

/// 12 000 entries, 9 000 of them to `proto`/`port` on a local address, answered.
fn served_port(proto: u8, port: u16) -> Summary {
    let local = LocalNets::parse("Local:\n     |-- 192.0.2.2\n        /32 host LOCAL\n", "");
    let mut c = Composition::new(10_000).with_local(Some(local));
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[192, 0, 2, 2]);
    for i in 0..12_000u32 {
        let src = addr(Family::V4, i, 1);
        let p = if i < 9_000 {
            port
        } else {
            20_000 + (i % 3_000) as u16
        };
        c.add(&flow(
            Family::V4,
            src,
            dst,
            proto,
            p,
            IPS_SEEN_REPLY | IPS_ASSURED | IPS_NAT_DONE,
        ));
    }
    summarize(&c)
}

/// 12 000 entries, none NAT'd, marked or zoned.
fn unused() -> Summary {
    let mut c = Composition::new(10_000);
    for i in 0..12_000u32 {
        c.add(&flow(
            Family::V4,
            addr(Family::V4, i, 1),
            addr(Family::V4, 99 << 8, 1),
            6,
            443,
            IPS_SEEN_REPLY,
        ));
    }
    summarize(&c)
}

fn only(s: &Summary, kind: Kind) -> Advice {
    let all = advice::advise(s, true, &Thresholds::default());
    let found: Vec<&Advice> = all.iter().filter(|a| a.kind == kind).collect();
    assert_eq!(found.len(), 1, "{kind:?} in {all:#?}");
    found[0].clone()
}

/// Runs `nft -c -f` on `snippet`; the failure message carries nft's and the snippet.
fn nft_check(dir: &std::path::Path, name: &str, snippet: &str) {
    let file = dir.join(format!("{name}.nft"));
    std::fs::write(&file, snippet).unwrap();
    let out = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nft ({e}): apt-get install nftables"));
    assert!(
        out.status.success(),
        "nft -c -f rejected {name}: {}\n{snippet}",
        common::text(&out)
    );
    eprintln!("nft -c -f accepts {name}");
}

#[test]
fn every_advice_snippet_passes_nft_check() {
    common::require_root("every_advice_snippet_passes_nft_check");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (name, family, key) in [
        ("source_v4", Family::V4, "ip saddr and 255.255.255.0"),
        (
            "source_v6",
            Family::V6,
            "ip6 saddr and ffff:ffff:ffff:ffff::",
        ),
    ] {
        let a = only(&heavy_source(family), Kind::SourceLimit);
        let s = a.snippet.as_deref().unwrap();
        assert!(s.contains(key), "{s}");
        assert_eq!(a.limit, Some(3_000), "{a:#?}");
        nft_check(dir.path(), name, s);
        checked += 1;
    }
    for (proto, port) in [(17, 53), (17, 1), (6, 443), (6, 65_535)] {
        let a = only(&served_port(proto, port), Kind::NotrackPort);
        let s = a.snippet.as_deref().unwrap();
        let name = if proto == 6 { "tcp" } else { "udp" };
        assert_eq!(
            a.subject.as_deref(),
            Some(format!("{name}/{port}").as_str())
        );
        assert!(s.contains(&format!("{name} dport {port} ")), "{s}");
        nft_check(dir.path(), &format!("notrack_{name}_{port}"), s);
        checked += 1;
    }
    let a = only(&unused(), Kind::RemoveTracking);
    nft_check(dir.path(), "remove_tracking", a.snippet.as_deref().unwrap());
    checked += 1;
    assert_eq!(checked, 7);
    // `nft -c` created nothing.
    let tables = common::text(&common::sh("nft", &["list", "tables"]));
    assert!(!tables.contains("ctune_advice"), "{tables}");
}
