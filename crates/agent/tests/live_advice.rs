//! `ctune top`'s advice on a live table (root): one source (127.0.5.5) holding most of a
//! namespace's table yields the `source_limit` advice for its /24 in `--json` and in the
//! text, and its snippet passes `nft -c -f`.

use crate::common;

use common::{GlobalGuard, TestNetns, require_root};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// Flows from the heavy source, and from another one.
const HEAVY: usize = 12_000;
const REST: usize = 3_000;

#[test]
fn a_heavy_source_gets_a_meter_advice_that_nft_accepts() {
    require_root("a_heavy_source_gets_a_meter_advice_that_nft_accepts");
    let guard = GlobalGuard::save();
    if common::global("nf_conntrack_max") < ((HEAVY + REST) * 2) as u64 {
        guard.set_max(((HEAVY + REST) * 2) as u64);
    }
    let ns = TestNetns::new("advice");
    let (heavy, rest) = ns.run_in(|| {
        let send = |from: &str, n: usize, net: u8| {
            let s = UdpSocket::bind(from).expect("bind");
            (0..n)
                .filter(|i| {
                    let dst = SocketAddrV4::new(
                        Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250) as u8 + 1),
                        1_000 + (i % 2_000) as u16,
                    );
                    s.send_to(&[0], dst).is_ok()
                })
                .count()
        };
        (send("127.0.5.5:0", HEAVY, 2), send("127.0.4.1:0", REST, 3))
    });
    assert!(heavy + rest >= (HEAVY + REST) * 99 / 100, "{heavy} {rest}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["top", "--json", "--netns", &ns.name])
        .output()
        .expect("run ctune top");
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    let n = &v["namespaces"][0];
    let advice = n["advice"].as_array().expect("an advice array");
    let a = advice
        .iter()
        .find(|a| a["kind"] == "source_limit")
        .unwrap_or_else(|| panic!("no source_limit advice: {advice:#?}"));
    assert_eq!(a["subject"], "127.0.5.0/24", "{a:#}");
    assert_eq!(a["entries"].as_u64(), Some(heavy as u64), "{a:#}");
    let entries = n["entries"].as_u64().unwrap();
    let want_limit = (entries as f64 * 0.25).ceil() as u64;
    assert_eq!(
        a["limit"].as_u64(),
        Some(want_limit.div_ceil(100) * 100),
        "{a:#}"
    );
    // The flows were never answered: no port is a service served here.
    assert!(
        advice.iter().all(|a| a["kind"] != "notrack_port"),
        "{advice:#?}"
    );
    let snippet = a["snippet"].as_str().unwrap();
    assert!(snippet.contains("type ipv4_addr"), "{snippet}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source_limit.nft");
    std::fs::write(&file, snippet).unwrap();
    let check = std::process::Command::new("nft")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run nft");
    assert!(
        check.status.success(),
        "nft -c -f rejected it: {}\n{snippet}",
        common::text(&check)
    );

    // The text shows the same advice in its own section.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["top", "--netns", &ns.name])
        .output()
        .expect("run ctune top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Advice (ctune changes none of this)")
            && text.contains("- source_limit: source 127.0.5.0/24 holds")
            && text.contains("table inet ctune_advice_source_limit {"),
        "{text}"
    );
    eprintln!("{text}");
    drop(ns);
    drop(guard);
}
