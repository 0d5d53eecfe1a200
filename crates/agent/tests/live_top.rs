//! `ctune top` on a live table (root): a namespace filled with a known mix (TCP
//! established, unreplied UDP from many ports, one heavy source) must be reported with
//! every share within 2 % of what the test made, at 100k entries.

mod common;

use common::{GlobalGuard, TestNetns, require_root};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// TCP connections (127.0.0.1 -> 127.0.0.1:8080, established, assured).
const TCP: usize = 4_000;
/// UDP sockets on 127.0.4.1 (as many source ports), each to `UDP_DSTS` ports.
const UDP_SOCKETS: usize = 200;
const UDP_DSTS: usize = 380;
/// The heavy source, 127.0.5.5: one socket to this many hosts, all on port 53.
const HEAVY: usize = 20_000;
const TOTAL: usize = TCP + UDP_SOCKETS * UDP_DSTS + HEAVY;

/// Opens `n` TCP connections inside the namespace; returns both ends (kept open).
fn tcp_established(ns: &TestNetns, n: usize) -> Vec<TcpStream> {
    ns.run_in(|| {
        let listener = TcpListener::bind("127.0.0.1:8080").expect("listen");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut kept = Vec::with_capacity(2 * n);
        for _ in 0..n {
            assert!(Instant::now() < deadline, "TCP setup took over 60 s");
            kept.push(TcpStream::connect("127.0.0.1:8080").expect("connect"));
            kept.push(listener.accept().expect("accept").0);
        }
        kept
    })
}

/// Sends one datagram per flow; returns the flows the kernel accepted.
fn udp_flows(ns: &TestNetns) -> (usize, usize) {
    ns.run_in(|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut many = 0;
        for _ in 0..UDP_SOCKETS {
            let s = UdpSocket::bind("127.0.4.1:0").expect("bind 127.0.4.1");
            for j in 0..UDP_DSTS {
                assert!(Instant::now() < deadline, "UDP setup took over 120 s");
                let dst = SocketAddrV4::new(Ipv4Addr::new(127, 0, 1, 1), 10_000 + j as u16);
                many += usize::from(s.send_to(&[0], dst).is_ok());
            }
        }
        let heavy_sock = UdpSocket::bind("127.0.5.5:0").expect("bind 127.0.5.5");
        let mut heavy = 0;
        for i in 0..HEAVY {
            assert!(Instant::now() < deadline, "UDP setup took over 120 s");
            let dst = SocketAddrV4::new(
                Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250) as u8 + 1),
                53,
            );
            heavy += usize::from(heavy_sock.send_to(&[0], dst).is_ok());
        }
        (many, heavy)
    })
}

/// The share of `key` in the list `list` of namespace `ns` (0 when absent).
fn share(ns: &Value, list: &str, key: &str) -> f64 {
    ns[list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["key"] == key)
        .and_then(|x| x["share"].as_f64())
        .unwrap_or(0.0)
}

#[test]
fn top_reports_the_shares_the_test_made() {
    if !require_root("top_reports_the_shares_the_test_made") {
        return;
    }
    // The table must hold the mix: raise the global max if needed (restored on drop).
    let guard = GlobalGuard::save();
    if common::global("nf_conntrack_max") < (TOTAL as u64) * 2 {
        guard.set_max(TOTAL as u64 * 2);
    }
    // Both ends of every connection are descriptors.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    if hard < (2 * TCP + 256) as u64 {
        eprintln!("top_reports_the_shares_the_test_made: skipped, RLIMIT_NOFILE hard {hard}");
        return;
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        .expect("setrlimit");

    let ns = TestNetns::new("top");
    let started = Instant::now();
    let conns = tcp_established(&ns, TCP);
    let (many, heavy) = udp_flows(&ns);
    let made = (TCP + many + heavy) as f64;
    let setup = started.elapsed();

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["top", "--json", "--netns", &ns.name])
        .output()
        .expect("run ctune top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctune top failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let n = &v["namespaces"][0];
    let expected = [
        ("protocols", "udp", (many + heavy) as f64 / made),
        ("protocols", "tcp", TCP as f64 / made),
        ("tcp_states", "established", TCP as f64 / made),
        ("sources", "127.0.4.0/24", many as f64 / made),
        ("sources", "127.0.5.0/24", heavy as f64 / made),
        ("sources", "127.0.0.0/24", TCP as f64 / made),
        ("ports", "udp/53", heavy as f64 / made),
        ("ports", "tcp/8080", TCP as f64 / made),
        (
            "timeouts",
            "nf_conntrack_udp_timeout",
            (many + heavy) as f64 / made,
        ),
        (
            "timeouts",
            "nf_conntrack_tcp_timeout_established",
            TCP as f64 / made,
        ),
        ("zones", "0", 1.0),
        ("marks", "0x0", 1.0),
    ];
    let mut report = format!(
        "made {made} entries ({TCP} tcp, {many} udp from many ports, {heavy} heavy) in {setup:?}; \
         read {} (kernel count {}) in {} ms, partial {}\n",
        n["entries"], n["count"], n["elapsed_ms"], n["partial"]
    );
    let mut bad = Vec::new();
    let mut check = |what: String, got: f64, want: f64| {
        report.push_str(&format!("  {what:<50} made {want:.4} read {got:.4}\n"));
        if (got - want).abs() > 0.02 {
            bad.push(what);
        }
    };
    for (list, key, want) in expected {
        check(format!("{list} {key}"), share(n, list, key), want);
    }
    check(
        "unreplied".into(),
        n["unreplied"]["share"].as_f64().unwrap_or(-1.0),
        (many + heavy) as f64 / made,
    );
    check(
        "assured".into(),
        n["assured"]["share"].as_f64().unwrap_or(-1.0),
        TCP as f64 / made,
    );
    let entries = n["entries"].as_f64().unwrap_or(0.0);
    check("entries / made".into(), entries / made, 1.0);
    eprintln!("{report}");
    assert!(
        bad.is_empty(),
        "off by more than 2 %: {bad:?}\n{report}{text}"
    );
    assert!(n["partial"].is_null(), "{report}");
    let udp = n["timeouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "nf_conntrack_udp_timeout")
        .unwrap();
    assert_eq!(udp["timeout_secs"], 600, "the test set 600 s: {udp}");
    drop(conns);
    drop(ns);
    drop(guard);
}

#[test]
fn top_stops_at_max_entries_and_says_so() {
    if !require_root("top_stops_at_max_entries_and_says_so") {
        return;
    }
    let ns = TestNetns::new("topcap");
    assert_eq!(ns.udp_flows(500), 0, "table refused flows");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["top", "--json", "--netns", &ns.name, "--max-entries", "100"])
        .output()
        .expect("run ctune top");
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let n = &v["namespaces"][0];
    assert_eq!(n["entries"], 100, "{v}");
    assert!(
        n["partial"]
            .as_str()
            .is_some_and(|p| p.contains("--max-entries")),
        "{v}"
    );
    // The text says it too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctune"))
        .args(["top", "--netns", &ns.name, "--max-entries", "100"])
        .output()
        .expect("run ctune top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PARTIAL: stopped after 100 entries"),
        "{text}"
    );
}
