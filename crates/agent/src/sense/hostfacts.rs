//! What the host shows of its role (`role: auto`): each fact read below the roots (a
//! fixture tree can hold every one), in ctune's own namespace (the host's, for the
//! agent; a pod's, for a test that runs ctune in one), bounded, and kept only as
//! evidence. The core decides from them ([`ctune_core::role`]).

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use ctune_core::model::udp;
use ctune_core::role::HostFacts;

use super::kfile::{self, Cause, FileError};
use super::nftchains;
use super::roots::Roots;

/// Kubelets' kubeconfigs below the etc root: joined to a cluster (kubeadm, k3s).
const KUBELET: [&str; 2] = ["kubernetes/kubelet.conf", "rancher/k3s/k3s.yaml"];

/// Container runtimes' sockets below the run root.
const RUNTIMES: [&str; 5] = [
    "containerd/containerd.sock",
    "k3s/containerd/containerd.sock",
    "crio/crio.sock",
    "docker.sock",
    "podman/podman.sock",
];

/// CNIs' and runtimes' interfaces, by name.
const CNI_NAMES: [&str; 11] = [
    "cni0",
    "flannel.1",
    "cilium_host",
    "cilium_net",
    "vxlan.calico",
    "kube-ipvs0",
    "kube-bridge",
    "weave",
    "docker0",
    "podman0",
    "cni-podman0",
];

/// CNIs' per-pod interfaces, by prefix (Calico's `cali*`, Cilium's `lxc*`).
const CNI_PREFIXES: [&str; 2] = ["cali", "lxc"];

/// Directory entries looked at, at most, in /sys/class/net and /run/netns.
const MAX_ENTRIES: usize = 8192;

/// Bytes of /proc/net/udp read, at most (about 32k sockets): a host with more is cut
/// there, said in `unread`.
const MAX_UDP_BYTES: u64 = 4 << 20;

/// How old the facts may be: read once a minute (a few stats, two small files, a
/// netlink dump: ~0.3 ms, too much for every idle step), so a node that joins a
/// cluster is seen within a minute.
pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

type Last = Option<(Roots, std::time::Instant, HostFacts)>;

/// The last facts read, for [`cached`].
static LAST: std::sync::Mutex<Last> = std::sync::Mutex::new(None);

/// Forgets the facts read: the next step reads them again (the agent's SIGHUP, so an
/// operator who just joined a node to a cluster need not wait a minute).
pub fn forget() {
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// The host's facts, read again when those read last for these roots are older than
/// [`MAX_AGE`].
pub fn cached(roots: &Roots) -> HostFacts {
    use std::time::Instant;
    let lock = || LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((r, at, facts)) = lock().as_ref()
        && r == roots
        && at.elapsed() < MAX_AGE
    {
        return facts.clone();
    }
    // Read without the lock held: the dump may take up to a second.
    let facts = read(roots);
    *lock() = Some((roots.clone(), Instant::now(), facts.clone()));
    facts
}

/// The host's facts now.
pub fn read(roots: &Roots) -> HostFacts {
    let mut f = HostFacts {
        openwrt: roots.etc.join("openwrt_release").exists(),
        ..HostFacts::default()
    };
    forwarding(roots, &mut f);
    nat(roots, &mut f);
    for k in KUBELET {
        let p = roots.etc.join(k);
        if p.is_file() {
            HostFacts::keep(&mut f.kubelet, &p.display().to_string());
        }
    }
    for r in RUNTIMES {
        let p = roots.run.join(r);
        if std::fs::metadata(&p).is_ok_and(|m| m.file_type().is_socket()) {
            HostFacts::keep(&mut f.runtimes, &p.display().to_string());
        }
    }
    interfaces(roots, &mut f);
    sandboxes(roots, &mut f);
    dns(roots, &mut f);
    f
}

fn note(f: &mut HostFacts, e: &FileError) {
    HostFacts::keep(&mut f.unread, &e.to_string());
}

/// A 0/1 sysctl; None when absent (IPv6 off), noted when unreadable otherwise.
fn flag(path: &Path, f: &mut HostFacts) -> Option<bool> {
    match kfile::read_u64(path) {
        Ok(v) => Some(v != 0),
        Err(e) if e.cause == Cause::Missing => None,
        Err(e) => {
            note(f, &e);
            None
        }
    }
}

fn forwarding(roots: &Roots, f: &mut HostFacts) {
    f.ipv4_forwarding = flag(&roots.proc.join("sys/net/ipv4/ip_forward"), f);
    f.ipv6_forwarding = flag(&roots.proc.join("sys/net/ipv6/conf/all/forwarding"), f);
}

/// NAT in nftables (every family's `nat` base chains) and in iptables-legacy.
fn nat(roots: &Roots, f: &mut HostFacts) {
    match nftchains::read(roots.netlink()) {
        Ok(chains) => {
            for c in &chains.nat {
                let w = format!(
                    "nftables: table {} {}, chain {}",
                    c.family, c.table, c.chain
                );
                HostFacts::keep(&mut f.nat, &w);
            }
            if chains.cut {
                let what = "nftables: the ruleset was read in part (cut at its bound)";
                HostFacts::keep(&mut f.unread, what);
            }
        }
        Err(e) => HostFacts::keep(&mut f.unread, &nft_error(&e)),
    }
    for (file, tool) in [
        ("ip_tables_names", "iptables"),
        ("ip6_tables_names", "ip6tables"),
    ] {
        let path = roots.proc.join("net").join(file);
        match read_capped(&path) {
            Ok((t, _)) if t.lines().any(|l| l.trim() == "nat") => {
                HostFacts::keep(&mut f.nat, &format!("{tool}-legacy: table nat"));
            }
            Ok(_) => {}
            Err(e) if e.cause == Cause::Missing => {}
            Err(e) => note(f, &e),
        }
    }
}

/// A failed nftables reading, in nftables' words (the socket's errors speak of
/// ctnetlink, whose socket it shares).
fn nft_error(e: &super::ctnetlink::DumpError) -> String {
    match e {
        super::ctnetlink::DumpError::Socket { what, errno, hint } => format!(
            "nftables: {what}: {errno}{}",
            hint.replace("ctnetlink", "nftables")
        ),
        e => format!("nftables: {e}"),
    }
}

/// CNI interfaces in /sys/class/net (the namespace's own, as sysfs was mounted).
fn interfaces(roots: &Roots, f: &mut HostFacts) {
    let dir = roots.sys.join("class/net");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        // A fixture tree of a kernel's conntrack files may have none.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return note(f, &FileError::io(&dir, &e)),
    };
    for e in entries.take(MAX_ENTRIES).flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if CNI_NAMES.contains(&name.as_ref()) || CNI_PREFIXES.iter().any(|p| name.starts_with(p)) {
            HostFacts::keep(&mut f.cni_interfaces, &name);
        }
    }
    f.cni_interfaces.sort();
}

/// Pod sandboxes: containerd and CRI-O name their namespaces `cni-<uuid>`.
fn sandboxes(roots: &Roots, f: &mut HostFacts) {
    if let Ok(entries) = std::fs::read_dir(roots.run.join("netns")) {
        f.pod_sandboxes = entries
            .take(MAX_ENTRIES)
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("cni-"))
            .count() as u64;
    }
}

/// Sockets serving UDP 53.
fn dns(roots: &Roots, f: &mut HostFacts) {
    for file in ["udp", "udp6"] {
        let path = roots.proc.join("net").join(file);
        let text = match read_capped(&path) {
            Ok((t, cut)) => {
                if cut {
                    let what = format!("{}: cut at {MAX_UDP_BYTES} bytes", path.display());
                    HostFacts::keep(&mut f.unread, &what);
                }
                t
            }
            Err(e) if e.cause == Cause::Missing => continue,
            Err(e) => {
                note(f, &e);
                continue;
            }
        };
        for s in udp::serving(&text, 53) {
            let list = if s.loopback {
                &mut f.dns_loopback
            } else {
                &mut f.dns_public
            };
            HostFacts::keep(list, &s.addr.to_string());
        }
    }
}

/// A file's text up to [`MAX_UDP_BYTES`], and whether it was cut. Opened and closed
/// here: a kept /proc/net descriptor would keep its namespace alive.
fn read_capped(path: &Path) -> Result<(String, bool), FileError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| FileError::io(path, &e))?;
    let mut bytes = Vec::new();
    file.take(MAX_UDP_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::io(path, &e))?;
    let cut = bytes.len() as u64 > MAX_UDP_BYTES;
    bytes.truncate(MAX_UDP_BYTES as usize);
    Ok((String::from_utf8_lossy(&bytes).into_owned(), cut))
}
