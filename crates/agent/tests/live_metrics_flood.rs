//! Live: the agent's HTTP endpoint keeps answering through a flood of unfinished
//! requests (issue 25). One client, from 127.0.0.2, keeps 200 connections open, each
//! with a request head it never finishes, reopening what the agent closes; meanwhile
//! `/healthz` from 127.0.0.1 must answer 200 within 1 s every time, `/metrics` must keep
//! being served, and the control loop must keep stepping. Needs root (the agent's lock
//! lives in /run); changes no global value.

use crate::common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A connection from 127.0.0.2 to the agent's port, with an unfinished request head.
fn unfinished(port: u16) -> Option<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
    s.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .ok()?;
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .ok()?;
    let mut s: TcpStream = s.into();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ctune\r\nX-Never: ")
        .ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// What the flooding client saw: connections opened, and closed by the agent.
#[derive(Default)]
struct Flood {
    opened: AtomicU64,
    closed: AtomicU64,
    most_open: AtomicU64,
}

/// Keeps up to 200 unfinished connections open until `stop`, reopening the closed ones.
fn flood(port: u16, stop: &AtomicBool, seen: &Flood) {
    let mut open: Vec<TcpStream> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        open.retain_mut(|s| match s.read(&mut [0u8; 64]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            _ => {
                seen.closed.fetch_add(1, Ordering::Relaxed);
                false
            }
        });
        while open.len() < 200 {
            let Some(s) = unfinished(port) else { break };
            open.push(s);
            seen.opened.fetch_add(1, Ordering::Relaxed);
        }
        seen.most_open
            .fetch_max(open.len() as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctune_last_step_timestamp_seconds` from a scrape.
fn last_step(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ctune_last_step_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn healthz_and_metrics_answer_through_a_flood_of_unfinished_requests() {
    require_root("healthz_and_metrics_answer_through_a_flood_of_unfinished_requests");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = listening_config(dir.path(), port, "");
    let agent = Agent::start(&cfg, dir.path());
    let first = wait_for(Duration::from_secs(10), || {
        http_get(port, "/metrics")
            .and_then(|m| last_step(&m))
            .is_some()
    });
    assert!(
        first,
        "no metrics after the first step; log:\n{}",
        agent.log()
    );
    let before = http_get(port, "/metrics")
        .and_then(|m| last_step(&m))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Flood::default());
    let flooder = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || flood(port, &stop, &seen))
    };
    std::thread::sleep(Duration::from_millis(500));
    let (mut probes, mut slowest, mut scrapes) = (Vec::new(), Duration::ZERO, 0);
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        let t = Instant::now();
        let answer = http_request(port, "/healthz");
        let took = t.elapsed();
        slowest = slowest.max(took);
        probes.push((answer.as_ref().map(|a| a.0), took));
        if probes.len() % 4 == 0 && http_get(port, "/metrics").is_some() {
            scrapes += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = http_get(port, "/metrics").and_then(|m| last_step(&m));
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    let what = format!(
        "probes (status, time): {probes:?}\nslowest {slowest:?}, scrapes served {scrapes}, \
         flood: {} opened, {} closed by the agent, at most {} open\nlog:\n{}",
        seen.opened.load(Ordering::Relaxed),
        seen.closed.load(Ordering::Relaxed),
        seen.most_open.load(Ordering::Relaxed),
        agent.log()
    );
    assert!(
        seen.opened.load(Ordering::Relaxed) >= 200,
        "the flood never opened 200\n{what}"
    );
    assert!(
        probes
            .iter()
            .all(|(s, t)| *s == Some(200) && *t < Duration::from_secs(1)),
        "/healthz missed its second\n{what}"
    );
    assert!(scrapes >= 6, "/metrics was not kept served\n{what}");
    assert!(
        after.is_some_and(|a| a >= before + 5.0),
        "the loop did not keep stepping: last step {before} then {after:?}\n{what}"
    );
}
