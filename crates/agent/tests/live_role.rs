//! `role: auto` on the live kernel: ctune's dry run, run inside a namespace the test
//! builds (`ip netns exec`, which also mounts that namespace's sysfs), reads the
//! namespace's forwarding, its nftables chains over netlink, its UDP sockets and its
//! interfaces, and takes the role they show.

use std::process::Command;

use crate::common::{TestNetns, require_root, text};

/// The dry run's Role section, run in `ns` with its own state and config.
fn role_in(ns: &TestNetns, dir: &std::path::Path) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_ctune"),
            "--dry-run",
        ])
        .arg("--config")
        .arg(dir.join("ctune.yaml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .expect("run ctune");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "dry run in {}:\n{all}", ns.name);
    let start = all
        .find("\nRole\n")
        .unwrap_or_else(|| panic!("no Role section:\n{all}"));
    let rest = &all[start + 1..];
    rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
}

fn ok(ns: &TestNetns, args: &[&str]) {
    let out = ns.exec(args);
    assert!(
        out.status.success(),
        "{args:?} in {}: {}",
        ns.name,
        text(&out)
    );
}

#[test]
fn the_role_comes_from_the_namespaces_forwarding_nat_dns_and_interfaces() {
    require_root("live_role");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ctune.yaml"),
        "namespaces:\n  mode: initial\n",
    )
    .unwrap();
    let ns = TestNetns::new("role");
    let r = role_in(&ns, dir.path());
    assert!(
        r.starts_with("Role\n  host (role: auto)"),
        "a fresh namespace: {r}"
    );

    ok(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let r = role_in(&ns, dir.path());
    assert!(
        r.contains("also seen: forwarding on, but no NAT in the ruleset"),
        "{r}"
    );
    ok(&ns, &["nft", "add", "table", "ip", "ctune_nat"]);
    ok(
        &ns,
        &[
            "nft",
            "add chain ip ctune_nat post { type nat hook postrouting priority 100; }",
        ],
    );
    // A nat chain with no rule that translates (firewalld makes such chains): no NAT.
    let r = role_in(&ns, dir.path());
    assert!(
        r.contains("also seen: forwarding on, but no NAT in the ruleset"),
        "{r}"
    );
    ok(
        &ns,
        &[
            "nft",
            "add rule ip ctune_nat post oifname \"lo\" masquerade",
        ],
    );
    let r = role_in(&ns, dir.path());
    assert!(
        r.starts_with("Role\n  router (role: auto): a NAT router"),
        "{r}"
    );
    assert!(
        r.contains("because forwarding on, with NAT (nftables: table ip ctune_nat, chain post)"),
        "{r}"
    );

    // Forwarding off: the NAT chain alone proves nothing; a DNS server does.
    ok(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let stub = ns.run_in(|| std::net::UdpSocket::bind("127.0.0.53:53").expect("bind stub"));
    let r = role_in(&ns, dir.path());
    assert!(r.starts_with("Role\n  host"), "{r}");
    assert!(
        r.contains("a DNS stub on UDP 127.0.0.53:53 serves only this host"),
        "{r}"
    );
    ok(&ns, &["ip", "link", "add", "d0", "type", "bridge"]);
    ok(&ns, &["ip", "addr", "add", "10.253.0.1/24", "dev", "d0"]);
    ok(&ns, &["ip", "link", "set", "d0", "up"]);
    let server = ns.run_in(|| std::net::UdpSocket::bind("10.253.0.1:53").expect("bind server"));
    let r = role_in(&ns, dir.path());
    assert!(
        r.starts_with("Role\n  router (role: auto): a DNS resolver"),
        "{r}"
    );
    assert!(r.contains("because serves DNS on UDP 10.253.0.1:53"), "{r}");

    // A CNI's bridge makes a node, over everything else.
    ok(&ns, &["ip", "link", "add", "cni0", "type", "bridge"]);
    let r = role_in(&ns, dir.path());
    assert!(r.starts_with("Role\n  node (role: auto)"), "{r}");
    assert!(r.contains("because a CNI's interface (cni0)"), "{r}");
    assert!(
        r.contains("also seen: serves DNS on UDP 10.253.0.1:53"),
        "{r}"
    );
    drop((stub, server));
}
