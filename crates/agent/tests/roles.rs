//! `role: auto` on fixture trees: each tree holds the facts of one kind of host (as
//! the agent reads them below its roots, the nftables chains as recorded replies), and
//! the dry run says the role and the facts behind it, and takes that role's budget.

use std::fs;
use std::path::Path;

use crate::common::tree::{INITIAL, K618, Tree};
use ctune::sense::nftchains::encode::{chain, done, rule};

/// The dry run's Role section, from its heading to the next blank line.
fn role_section(t: &Tree) -> String {
    let text = t.expect(&["--dry-run"], 0);
    let start = text
        .find("\nRole\n")
        .unwrap_or_else(|| panic!("no Role section:\n{text}"));
    let rest = &text[start + 1..];
    rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// The 6.18 tree with forwarding as given and a stub resolver on loopback.
fn host(forwarding: bool) -> Tree {
    let t = Tree::new(K618, INITIAL);
    write(
        &t.proc().join("sys/net/ipv4/ip_forward"),
        if forwarding { "1\n" } else { "0\n" },
    );
    write(&t.proc().join("sys/net/ipv6/conf/all/forwarding"), "0\n");
    write(&t.proc().join("net/udp"), &udp(&["3500007F:0035"]));
    t
}

/// /proc/net/udp with one unconnected socket per local address.
fn udp(locals: &[&str]) -> String {
    let mut s = String::from(
        "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
    );
    for (i, l) in locals.iter().enumerate() {
        s += &format!(
            "  {i}: {l} 00000000:0000 07 00000000:00000000 00:00000000 00000000   991        0 1804{i} 2 0000000000000000 0\n"
        );
    }
    s
}

/// Recorded replies to the chain and rule dumps: a nat chain `ip nat postrouting` with
/// a masquerade rule, and a filter chain.
fn nat_chains(t: &Tree) {
    let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let chains = [
        hex(chain(2, "nat", "postrouting", Some("nat"))),
        hex(chain(1, "filter", "input", Some("filter"))),
        hex(done()),
    ]
    .join("\n");
    let rules = [
        hex(rule(2, "nat", "postrouting", &["meta", "cmp", "masq"])),
        hex(rule(1, "filter", "input", &["ct", "cmp", "immediate"])),
        hex(done()),
    ]
    .join("\n");
    write(
        &t.root().join("netlink/nft_chains"),
        &format!("# NFT_MSG_GETCHAIN\n{chains}\n"),
    );
    write(
        &t.root().join("netlink/nft_rules"),
        &format!("# NFT_MSG_GETRULE\n{rules}\n"),
    );
}

#[test]
fn a_plain_server_with_a_stub_resolver_is_a_host() {
    let r = role_section(&host(false));
    assert!(
        r.contains("host (role: auto): a server's memory is for its applications"),
        "{r}"
    );
    assert!(
        r.contains("because no container runtime or CNI, no forwarding with NAT"),
        "{r}"
    );
    assert!(
        r.contains("also seen: a DNS stub on UDP 127.0.0.53:53 serves only this host"),
        "{r}"
    );
    assert!(r.contains("budget: 5% of memory"), "{r}");
}

#[test]
fn forwarding_with_nat_in_nftables_or_iptables_legacy_is_a_router() {
    let t = host(true);
    let r = role_section(&t);
    assert!(
        r.starts_with("Role\n  host (role: auto)"),
        "forwarding alone: {r}"
    );
    assert!(
        r.contains("also seen: forwarding on, but no NAT in the ruleset"),
        "{r}"
    );
    nat_chains(&t);
    let r = role_section(&t);
    assert!(
        r.contains("router (role: auto): a NAT router spends its memory on the table"),
        "{r}"
    );
    assert!(
        r.contains("because forwarding on, with NAT (nftables: table ip nat, chain postrouting)"),
        "{r}"
    );
    assert!(r.contains("budget: 50% of memory"), "{r}");
    let legacy = host(true);
    write(&legacy.proc().join("net/ip_tables_names"), "filter\nnat\n");
    let r = role_section(&legacy);
    assert!(
        r.contains("because forwarding on, with NAT (iptables-legacy: table nat)"),
        "{r}"
    );
    let no_forwarding = host(false);
    nat_chains(&no_forwarding);
    let r = role_section(&no_forwarding);
    assert!(r.starts_with("Role\n  host"), "{r}");
    assert!(r.contains("also seen: NAT configured (nftables: table ip nat, chain postrouting), but forwarding off"), "{r}");
}

#[test]
fn openwrt_and_a_public_dns_server_take_the_routers_budget() {
    let t = host(false);
    write(&t.etc().join("openwrt_release"), "DISTRIB_ID='OpenWrt'\n");
    let r = role_section(&t);
    assert!(
        r.contains("because an OpenWrt system (/etc/openwrt_release)"),
        "{r}"
    );
    let t = host(false);
    write(
        &t.proc().join("net/udp"),
        &udp(&["3500007F:0035", "00000000:0035"]),
    );
    let r = role_section(&t);
    assert!(
        r.contains("router (role: auto): a DNS resolver spends its memory on the table"),
        "{r}"
    );
    assert!(r.contains("because serves DNS on UDP 0.0.0.0:53"), "{r}");
}

#[test]
fn a_kubelet_a_runtime_a_cni_interface_or_pod_sandboxes_make_a_node() {
    let kubelet = host(false);
    write(
        &kubelet.etc().join("kubernetes/kubelet.conf"),
        "apiVersion: v1\n",
    );
    let runtime = host(false);
    fs::create_dir_all(runtime.root().join("run/containerd")).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(
        runtime.root().join("run/containerd/containerd.sock"),
    )
    .unwrap();
    let cni = host(false);
    fs::create_dir_all(cni.sys().join("class/net/cali0a1b2c3d4e5")).unwrap();
    let pods = host(false);
    for i in 0..3 {
        write(
            &pods.root().join(format!("run/netns/cni-{i}e0d6c3a-1111")),
            "",
        );
    }
    for (t, why) in [
        (&kubelet, "a kubelet joined to a cluster ("),
        (&runtime, "a container runtime's socket ("),
        (&cni, "a CNI's interface (cali0a1b2c3d4e5)"),
        (&pods, "3 pod sandbox namespace(s)"),
    ] {
        let r = role_section(t);
        assert!(
            r.contains("node (role: auto): a node's pods fill the table"),
            "{why}: {r}"
        );
        assert!(r.contains(&format!("because {why}")), "{why}: {r}");
        assert!(r.contains("budget: 10% of memory"), "{r}");
    }
    // A socket's name with no socket behind it proves nothing.
    let stale = host(false);
    write(&stale.root().join("run/containerd/containerd.sock"), "");
    assert!(role_section(&stale).starts_with("Role\n  host"));
}

#[test]
fn a_node_that_forwards_with_nat_is_a_node_and_says_what_it_outranks() {
    let t = host(true);
    nat_chains(&t);
    fs::create_dir_all(t.sys().join("class/net/cni0")).unwrap();
    let r = role_section(&t);
    assert!(r.starts_with("Role\n  node (role: auto)"), "{r}");
    assert!(r.contains("because a CNI's interface (cni0)"), "{r}");
    assert!(
        r.contains(
            "also seen: forwarding on, with NAT (nftables: table ip nat, chain postrouting)"
        ),
        "{r}"
    );
}

#[test]
fn a_role_in_the_config_wins_and_the_dry_run_shows_what_auto_would_choose() {
    let t = host(true);
    nat_chains(&t);
    t.config("namespaces:\n  mode: initial\nrole: host\n");
    let r = role_section(&t);
    assert!(r.starts_with("Role\n  host (set in the config)"), "{r}");
    assert!(
        r.contains("the host shows (router) forwarding on, with NAT"),
        "{r}"
    );
    assert!(r.contains("budget: 5% of memory"), "{r}");
    assert!(!r.contains("fixes it"), "{r}");
    // An old installed file sets the preset's keys: the dry run says they hold.
    t.config("namespaces:\n  mode: initial\nrole: router\nceiling:\n  memory_fraction: 0.05\n");
    let r = role_section(&t);
    assert!(r.starts_with("Role\n  router (set in the config)"), "{r}");
    assert!(r.contains("budget: 5% of memory"), "{r}");
    assert!(
        r.contains(
            "ceiling.memory_fraction set in the config: the role's preset does not change it"
        ),
        "{r}"
    );
}

#[test]
fn status_json_and_the_budget_follow_the_role() {
    let t = host(true);
    nat_chains(&t);
    let out = t.run(&["status", "--json", "--sample", "0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", crate::common::text(&out)));
    assert_eq!(v["role"]["role"], "router", "{v}");
    assert_eq!(v["role"]["source"], "auto", "{v}");
    assert_eq!(
        v["role"]["detection"]["because"][0]["signal"], "forwarding_with_nat",
        "{v}"
    );
    assert_eq!(v["ceiling"]["memory_fraction"], 0.5, "{v}");
}

/// The agent on a tree whose host joins a cluster while it runs: SIGHUP (or a minute)
/// reads the facts again, and the change is logged once, with its reason.
#[test]
fn the_agent_logs_the_role_once_and_a_node_joining_once() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let t = host(false);
    let log = t.root().join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ctune"))
        .arg("run")
        .arg("--config")
        .arg(t.config_file())
        .args(t.root_args())
        .env("CTUNE_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || fs::read_to_string(&log).unwrap_or_default();
    let wait = |want: &str| {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end && !read().contains(want) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(read().contains(want), "no {want:?} in the log:\n{}", read());
    };
    wait("role host (role: auto): a server's memory is for its applications");
    write(&t.etc().join("kubernetes/kubelet.conf"), "apiVersion: v1\n");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait("role host -> node (role: auto)");
    // More steps pass: the change is not said again.
    std::thread::sleep(Duration::from_millis(2500));
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    assert_eq!(text.matches("role host -> node").count(), 1, "{text}");
    assert!(text.contains("a kubelet joined to a cluster"), "{text}");
    assert_eq!(text.matches("role host (role: auto)").count(), 1, "{text}");
}

/// The boot step bounds the persisted max by the role the agent held (in its state):
/// a router's max, above a server's ceiling, is put back even while the facts that
/// made it a router are not there yet (early in a boot), and refused without that role.
#[test]
fn boot_puts_back_a_max_within_the_role_the_agent_held() {
    let t = host(true);
    let sysctl = t.etc().join("sysctl.d/99-ctune.conf");
    write(&sysctl, "net.netfilter.nf_conntrack_max = 6000000\n");
    let out = t.run(&["boot"]);
    let text = crate::common::text(&out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "above a server's ceiling: {text}"
    );
    assert!(text.contains("refused"), "{text}");
    // The agent's step, as a router, keeps the role in its state.
    nat_chains(&t);
    t.expect(&["apply"], 0);
    assert_eq!(
        t.state_json()["role"]["role"],
        "router",
        "{}",
        t.state_json()
    );
    fs::remove_file(t.root().join("netlink/nft_rules")).unwrap();
    // apply persisted what it found in force; the agent had grown max since.
    write(&sysctl, "net.netfilter.nf_conntrack_max = 6000000\n");
    let text = t.expect(&["boot"], 0);
    assert!(
        text.contains("-> 6000000 (persisted value applied)"),
        "{text}"
    );
}
