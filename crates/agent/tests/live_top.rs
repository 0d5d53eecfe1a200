//! `ctune top` on a live table (root): a namespace filled with a known mix (TCP
//! established, unreplied UDP from many ports, one heavy source) must be reported with
//! every share within 2 % of what the test made, at 100k entries, both from the default
//! sample (the first 32768 entries of the dump) and from `--all`; and three UDP classes
//! at a million entries (`CTUNE_TOP_SCALE_ENTRIES` sets another count: the kernel's
//! share of the work grows with it, about 2.5 s a million for `--all`).

use crate::common;

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

/// `ctune top --json --netns NS ARGS`: the namespace's object and the whole output.
fn top_json(ns: &TestNetns, args: &[&str]) -> (Value, String) {
    let mut full = vec!["top", "--json", "--netns", &ns.name];
    full.extend_from_slice(args);
    let (code, text, err) = common::ctune(&full);
    assert_eq!(code, 0, "ctune top {args:?} failed: {err}{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (v["namespaces"][0].clone(), text)
}

/// Checks every (list, key, share) of `expected` against `n` within 2 % (a list with an
/// empty key is a share object: `unreplied`, `assured`); prints what it saw, and panics
/// with it when one is off. Returns the report.
fn check_shares(
    what: &str,
    n: &Value,
    expected: &[(&str, &str, f64)],
    made: f64,
    text: &str,
) -> String {
    let mut report = format!(
        "{what}; read {} (kernel count {}) in {} ms, partial {}, sample {}\n",
        n["entries"], n["count"], n["elapsed_ms"], n["partial"], n["sample"]
    );
    let mut bad = Vec::new();
    for (list, key, want) in expected {
        let got = if key.is_empty() {
            n[*list]["share"].as_f64().unwrap_or(-1.0)
        } else {
            share(n, list, key)
        };
        let label = format!("{list} {key}");
        report.push_str(&format!("  {label:<50} made {want:.4} read {got:.4}\n"));
        if (got - want).abs() > 0.02 {
            bad.push(label);
        }
    }
    eprintln!("{report}");
    assert!(
        bad.is_empty(),
        "off by more than 2 % of {made}: {bad:?}\n{report}{text}"
    );
    report
}

/// The default reading of a table larger than its 32768 entries: a sample, saying of
/// what table and within what margin.
fn assert_sampled(n: &Value, made: f64, report: &str) {
    assert_eq!(n["entries"], 32_768, "{report}");
    let sample = &n["sample"];
    assert_eq!(sample["read"], 32_768, "{report}");
    let table = sample["table_entries"].as_f64().unwrap_or(0.0);
    assert!((table / made - 1.0).abs() <= 0.02, "{report}");
    let margin = sample["margin_95"].as_f64().unwrap_or(1.0);
    assert!(margin > 0.004 && margin < 0.006, "{report}");
    assert!(
        n["partial"]
            .as_str()
            .is_some_and(|p| p.contains("--max-entries")),
        "{report}"
    );
}

#[test]
fn top_reports_the_shares_the_test_made() {
    require_root("top_reports_the_shares_the_test_made");
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
        ("unreplied", "", (many + heavy) as f64 / made),
        ("assured", "", TCP as f64 / made),
    ];
    let what = format!(
        "made {made} entries ({TCP} tcp, {many} udp from many ports, {heavy} heavy) in {setup:?}"
    );
    for args in [&[][..], &["--all"][..]] {
        let (n, text) = top_json(&ns, args);
        let report = check_shares(&what, &n, &expected, made, &text);
        if args.is_empty() {
            assert_sampled(&n, made, &report);
        } else {
            assert!(n["partial"].is_null() && n["sample"].is_null(), "{report}");
            let entries = n["entries"].as_f64().unwrap_or(0.0);
            assert!(
                (entries / made - 1.0).abs() <= 0.02,
                "--all read {entries} of {made}\n{report}"
            );
        }
        let udp = n["timeouts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == "nf_conntrack_udp_timeout")
            .unwrap();
        assert_eq!(udp["timeout_secs"], 600, "the test set 600 s: {udp}");
    }
    drop(conns);
    drop(ns);
    drop(guard);
}

#[test]
fn top_stops_at_max_entries_and_says_so() {
    require_root("top_stops_at_max_entries_and_says_so");
    let ns = TestNetns::new("topcap");
    assert_eq!(ns.udp_flows(500), 0, "table refused flows");
    let (n, v) = top_json(&ns, &["--max-entries", "100"]);
    assert_eq!(n["entries"], 100, "{v}");
    assert_eq!(n["sample"]["read"], 100, "{v}");
    assert!(
        n["partial"]
            .as_str()
            .is_some_and(|p| p.contains("--max-entries")),
        "{v}"
    );
    // The text says it too.
    let (code, text, err) = common::ctune(&["top", "--netns", &ns.name, "--max-entries", "100"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("SAMPLE: read the first 100 entries the kernel sent (--max-entries), of"),
        "{text}"
    );
    // A table of exactly --max-entries entries is read whole: no sample.
    let count = ns.read_sysctl("nf_conntrack_count").to_string();
    let (n, text) = top_json(&ns, &["--max-entries", &count]);
    assert_eq!(n["entries"].to_string(), count, "{text}");
    assert!(n["partial"].is_null() && n["sample"].is_null(), "{text}");
}

/// One UDP class of the scale test: `n` flows from sources in 127.0.`net`.0/24 (a
/// socket per 50000 flows, each on its own address), to `port` on as many hosts, or
/// (None) to 50000 ports of one host.
struct Class {
    net: u8,
    share: f64,
    port: Option<u16>,
}

/// Sends the classes' flows in the namespace, `total` in all; returns each class's
/// accepted sends.
fn udp_classes(ns: &TestNetns, classes: &[Class], total: usize) -> Vec<usize> {
    ns.run_in(|| {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut made = Vec::new();
        for c in classes {
            let n = (total as f64 * c.share) as usize;
            let mut ok = 0;
            for k in 0..n.div_ceil(50_000) {
                let src = Ipv4Addr::new(127, 0, c.net, (k % 250) as u8 + 1);
                let sock = UdpSocket::bind(SocketAddrV4::new(src, 0)).expect("bind");
                for j in 0..50_000.min(n - k * 50_000) {
                    assert!(Instant::now() < deadline, "UDP setup took over 300 s");
                    let dst = match c.port {
                        Some(p) => SocketAddrV4::new(
                            Ipv4Addr::new(127, 100 + c.net, (j / 250) as u8, (j % 250) as u8 + 1),
                            p,
                        ),
                        None => SocketAddrV4::new(Ipv4Addr::new(127, 1, 0, 1), 10_000 + j as u16),
                    };
                    ok += usize::from(sock.send_to(&[0], dst).is_ok());
                }
            }
            made.push(ok);
        }
        made
    })
}

#[test]
fn top_reports_the_shares_at_a_million_entries() {
    require_root("top_reports_the_shares_at_a_million_entries");
    let total: usize = std::env::var("CTUNE_TOP_SCALE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let guard = GlobalGuard::save();
    let need = total as u64 + total as u64 / 4 + 65_536;
    if common::global("nf_conntrack_max") < need {
        guard.set_max(need);
    }
    let ns = TestNetns::new("topscale");
    let classes = [
        Class {
            net: 4,
            share: 0.5,
            port: None,
        },
        Class {
            net: 5,
            share: 0.3,
            port: Some(53),
        },
        Class {
            net: 6,
            share: 0.2,
            port: Some(123),
        },
    ];
    let started = Instant::now();
    let got = udp_classes(&ns, &classes, total);
    let setup = started.elapsed();
    let made = got.iter().sum::<usize>() as f64;
    let sh = |i: usize| got[i] as f64 / made;
    let expected = [
        ("sources", "127.0.4.0/24", sh(0)),
        ("sources", "127.0.5.0/24", sh(1)),
        ("sources", "127.0.6.0/24", sh(2)),
        ("ports", "udp/53", sh(1)),
        ("ports", "udp/123", sh(2)),
        ("protocols", "udp", 1.0),
        ("timeouts", "nf_conntrack_udp_timeout", 1.0),
        ("unreplied", "", 1.0),
    ];
    let what = format!("made {made} entries {got:?} in {setup:?}");
    let (n, text) = top_json(&ns, &[]);
    let report = check_shares(&what, &n, &expected, made, &text);
    assert_sampled(&n, made, &report);
    let (n, text) = top_json(&ns, &["--all"]);
    let report = check_shares(&what, &n, &expected, made, &text);
    let entries = n["entries"].as_f64().unwrap_or(0.0);
    assert!(
        (entries / made - 1.0).abs() <= 0.02 && n["sample"].is_null(),
        "--all read {entries} of {made}\n{report}"
    );
    drop(ns);
    drop(guard);
}
