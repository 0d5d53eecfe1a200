//! What the host is for, decided from what it shows (`role: auto`, the default).
//!
//! The role sets the memory budget's defaults (config/roles/), and the default must be
//! right on the hosts ctune is for: a NAT router or DNS resolver whose table fills when
//! "table full" floods the log, a Kubernetes node, and still safe on an application
//! server. The agent reads the host's facts ([`HostFacts`], below the roots) and this
//! module decides from them, each fact trusted only as far as it proves:
//!
//! - **node**: a kubelet joined to a cluster, a container runtime's socket, a CNI's
//!   interface, or pod sandboxes' namespaces (`/run/netns/cni-*`). A node forwards and
//!   NATs for its pods, so node outranks router.
//! - **router**: an OpenWrt system, or forwarding on with NAT configured in the initial
//!   namespace's ruleset. Either alone is no proof: a host with forwarding on and no
//!   NAT is a plain router's half (a bridge host, a VPN), a NAT chain without forwarding
//!   only translates the host's own traffic.
//! - **resolver**, with the router's budget: a socket serving UDP 53 on an address other
//!   than loopback. A stub on 127.0.0.53 (systemd-resolved) serves only the host.
//! - otherwise **host**.
//!
//! A role with a larger budget is adopted at once (a node joins a cluster); one with a
//! smaller budget only once the facts have shown it for [`SETTLE`] (a resolver
//! restarting, a ruleset flushed and loaded again must not shrink the budget).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

use crate::config::{Role, RoleSetting};
use crate::units::printable;

/// How long the facts must show a role with a smaller budget before it is adopted.
pub const SETTLE: Duration = Duration::from_secs(600);

/// How many of each kind of evidence are kept (names are for people; a node with a
/// thousand pods' interfaces needs no thousand names).
pub const KEPT: usize = 4;

/// What the host shows about its role, as read by the agent (none of it trusted
/// further than it proves: see the module's doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostFacts {
    /// `net.ipv4.ip_forward` (None: not read).
    pub ipv4_forwarding: Option<bool>,
    /// `net.ipv6.conf.all.forwarding`.
    pub ipv6_forwarding: Option<bool>,
    /// Where NAT is configured in the initial namespace ("nftables: table ip nat, chain
    /// postrouting"; "iptables-legacy: table nat"), printable.
    pub nat: Vec<String>,
    /// `/etc/openwrt_release` exists.
    pub openwrt: bool,
    /// A kubelet's kubeconfig, the path found.
    pub kubelet: Vec<String>,
    /// Container runtimes' sockets found.
    pub runtimes: Vec<String>,
    /// CNI interfaces found (cni0, flannel.1, cali*, ...), printable, at most [`KEPT`].
    pub cni_interfaces: Vec<String>,
    /// Namespaces named `cni-*` under /run/netns: pod sandboxes.
    pub pod_sandboxes: u64,
    /// Sockets serving UDP 53 on an address other than loopback ("0.0.0.0:53").
    pub dns_public: Vec<String>,
    /// Sockets serving UDP 53 on loopback ("127.0.0.53:53"): a stub for this host.
    pub dns_loopback: Vec<String>,
    /// What could not be read, and why (a fact not read proves nothing either way).
    pub unread: Vec<String>,
}

impl HostFacts {
    /// Forwarding on in either family.
    pub fn forwarding(&self) -> bool {
        self.ipv4_forwarding == Some(true) || self.ipv6_forwarding == Some(true)
    }

    /// Keeps `item` (made printable) in `list` unless it is there (SO_REUSEPORT
    /// sockets repeat an address) or [`KEPT`] are there already.
    pub fn keep(list: &mut Vec<String>, item: &str) {
        let item = printable(item);
        if list.len() < KEPT && !list.contains(&item) {
            list.push(item);
        }
    }
}

/// One fact behind the role, typed for the code that inspects it; shown as a sentence.
/// In JSON: `{"signal", "detail", "text"}` (docs/json.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A kubelet's kubeconfig: the host joined a cluster.
    Kubelet(String),
    /// A container runtime's socket.
    Runtime(String),
    /// A CNI's interface.
    CniInterface(String),
    /// Pod sandboxes' namespaces.
    PodSandboxes(u64),
    /// An OpenWrt system.
    OpenWrt,
    /// Forwarding on, and NAT configured where it says.
    ForwardingWithNat(String),
    /// Forwarding on without NAT: not a router's proof.
    ForwardingAlone,
    /// NAT configured without forwarding: not a router's proof.
    NatAlone(String),
    /// A DNS server on an address other than loopback.
    DnsServer(String),
    /// A DNS stub on loopback: serves only this host.
    DnsStub(String),
    /// Nothing of a router's, a node's or a resolver's.
    NothingSpecial,
}

impl Reason {
    /// Its name in JSON.
    pub fn signal(&self) -> &'static str {
        match self {
            Reason::Kubelet(_) => "kubelet",
            Reason::Runtime(_) => "runtime",
            Reason::CniInterface(_) => "cni_interface",
            Reason::PodSandboxes(_) => "pod_sandboxes",
            Reason::OpenWrt => "openwrt",
            Reason::ForwardingWithNat(_) => "forwarding_with_nat",
            Reason::ForwardingAlone => "forwarding_alone",
            Reason::NatAlone(_) => "nat_alone",
            Reason::DnsServer(_) => "dns_server",
            Reason::DnsStub(_) => "dns_stub",
            Reason::NothingSpecial => "nothing_special",
        }
    }

    /// What it names (a path, an interface, an address, where NAT is), if anything.
    pub fn detail(&self) -> Option<String> {
        match self {
            Reason::Kubelet(s)
            | Reason::Runtime(s)
            | Reason::CniInterface(s)
            | Reason::ForwardingWithNat(s)
            | Reason::NatAlone(s)
            | Reason::DnsServer(s)
            | Reason::DnsStub(s) => Some(s.clone()),
            Reason::PodSandboxes(n) => Some(n.to_string()),
            Reason::OpenWrt | Reason::ForwardingAlone | Reason::NothingSpecial => None,
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Reason", 3)?;
        st.serialize_field("signal", self.signal())?;
        st.serialize_field("detail", &self.detail())?;
        st.serialize_field("text", &self.to_string())?;
        st.end()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Kubelet(p) => write!(f, "a kubelet joined to a cluster ({p})"),
            Reason::Runtime(p) => write!(f, "a container runtime's socket ({p})"),
            Reason::CniInterface(n) => write!(f, "a CNI's interface ({n})"),
            Reason::PodSandboxes(n) => write!(f, "{n} pod sandbox namespace(s) (/run/netns/cni-*)"),
            Reason::OpenWrt => write!(f, "an OpenWrt system (/etc/openwrt_release)"),
            Reason::ForwardingWithNat(w) => write!(f, "forwarding on, with NAT ({w})"),
            Reason::ForwardingAlone => write!(f, "forwarding on, but no NAT in the ruleset"),
            Reason::NatAlone(w) => write!(f, "NAT configured ({w}), but forwarding off"),
            Reason::DnsServer(a) => write!(f, "serves DNS on UDP {a}"),
            Reason::DnsStub(a) => write!(
                f,
                "a DNS stub on UDP {a} serves only this host: not a resolver's proof"
            ),
            Reason::NothingSpecial => write!(
                f,
                "no container runtime or CNI, no forwarding with NAT, no DNS service beyond loopback"
            ),
        }
    }
}

/// What the facts say: the role, the facts that decided it, and the others seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The role the facts show.
    pub role: Role,
    /// The facts that show it.
    pub because: Vec<Reason>,
    /// Facts of another role that this one outranks, or that prove nothing alone.
    pub besides: Vec<Reason>,
}

/// Decides the role the facts show (the module's doc has the rules).
pub fn detect(f: &HostFacts) -> Detection {
    let node = node_reasons(f);
    let router = router_reasons(f);
    let dns: Vec<Reason> = f
        .dns_public
        .iter()
        .cloned()
        .map(Reason::DnsServer)
        .collect();
    let mut besides: Vec<Reason> = Vec::new();
    let (role, because) = if !node.is_empty() {
        besides.extend(router);
        besides.extend(dns);
        (Role::Node, node)
    } else if !router.is_empty() {
        besides.extend(dns);
        (Role::Router, router)
    } else if !dns.is_empty() {
        (Role::Router, dns)
    } else {
        (Role::Host, vec![Reason::NothingSpecial])
    };
    besides.extend(unproven(f));
    Detection {
        role,
        because,
        besides,
    }
}

/// The facts that prove a node.
fn node_reasons(f: &HostFacts) -> Vec<Reason> {
    let mut out: Vec<Reason> = f.kubelet.iter().cloned().map(Reason::Kubelet).collect();
    out.extend(f.runtimes.iter().cloned().map(Reason::Runtime));
    out.extend(f.cni_interfaces.iter().cloned().map(Reason::CniInterface));
    if f.pod_sandboxes > 0 {
        out.push(Reason::PodSandboxes(f.pod_sandboxes));
    }
    out
}

/// The facts that prove a router.
fn router_reasons(f: &HostFacts) -> Vec<Reason> {
    let mut out = Vec::new();
    if f.openwrt {
        out.push(Reason::OpenWrt);
    }
    if f.forwarding() {
        out.extend(f.nat.iter().cloned().map(Reason::ForwardingWithNat));
    }
    out
}

/// Facts seen that prove nothing alone.
fn unproven(f: &HostFacts) -> Vec<Reason> {
    let mut out = Vec::new();
    if f.forwarding() && f.nat.is_empty() {
        out.push(Reason::ForwardingAlone);
    }
    if !f.forwarding() {
        out.extend(f.nat.iter().cloned().map(Reason::NatAlone));
    }
    out.extend(f.dns_loopback.iter().cloned().map(Reason::DnsStub));
    out
}

/// The role's budget in its own terms, for the dry run's ceiling.
pub fn budget_reason(role: Role, detection: Option<&Detection>) -> &'static str {
    let resolver = detection.is_some_and(|d| {
        d.role == Role::Router && d.because.iter().all(|r| matches!(r, Reason::DnsServer(_)))
    });
    match role {
        Role::Router if resolver => {
            "a DNS resolver spends its memory on the table: a dead upstream leaves an unreplied entry for every query"
        }
        Role::Router => "a NAT router spends its memory on the table: forwarding is its job",
        Role::Node => "a node's pods fill the table, and the pods need the memory too",
        Role::Host => "a server's memory is for its applications: the table takes a small share",
    }
}

/// Where the role in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `role:` in the config.
    Config,
    /// `role: auto`: the host's facts.
    Auto,
}

/// The role ctune holds under `role: auto`: what the agent remembers across steps and
/// restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The role in force.
    pub role: Role,
    /// A role with a smaller budget the facts show, and since when (monotonic).
    #[serde(default)]
    pub pending: Option<(Role, Duration)>,
}

/// A role adopted at run time: logged once, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// The role before.
    pub from: Role,
    /// The role now.
    pub to: Role,
}

/// A role with a smaller budget that the facts show, not adopted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// The role.
    pub role: Role,
    /// Seconds the facts must go on showing it before it is adopted.
    pub seconds_left: u64,
}

/// The role in force for one step, for the reports, the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InForce {
    /// The role whose budget the step decides with.
    pub role: Role,
    /// Where it comes from.
    pub source: Source,
    /// What the facts show now (None: not read, e.g. a fixed role's one-shot with no
    /// facts).
    pub detection: Option<Detection>,
    /// A smaller budget's role the facts show, held off.
    pub pending: Option<Pending>,
    /// Adopted in this step, from another role.
    pub changed: Option<Changed>,
    /// What could not be read of the facts.
    pub unread: Vec<String>,
    /// Budget keys the config sets, which hold under every role (the preset's value
    /// for them does not apply).
    pub config_keys: Vec<String>,
}

impl InForce {
    /// The role's budget in its own terms.
    pub fn budget_reason(&self) -> &'static str {
        budget_reason(self.role, self.detection.as_ref())
    }
}

/// The role held after facts showing `detected` at `now`: a larger budget at once, a
/// smaller one after [`SETTLE`] of showing it; and whether it changed.
pub fn settle(held: Option<&Held>, detected: Role, now: Duration) -> (Held, Option<Changed>) {
    let Some(held) = held else {
        return (
            Held {
                role: detected,
                pending: None,
            },
            None,
        );
    };
    let adopt = |from: Role| {
        let changed = (from != detected).then_some(Changed { from, to: detected });
        (
            Held {
                role: detected,
                pending: None,
            },
            changed,
        )
    };
    if detected == held.role || detected.budget_rank() > held.role.budget_rank() {
        return adopt(held.role);
    }
    let since = match held.pending {
        // A time after now is another boot's or host's clock: start again.
        Some((role, since)) if role == detected && since <= now => since,
        _ => now,
    };
    if now.saturating_sub(since) >= SETTLE {
        return adopt(held.role);
    }
    (
        Held {
            role: held.role,
            pending: Some((detected, since)),
        },
        None,
    )
}

/// The role a step decides with: the config's, or under `role: auto` the one
/// [`settle`]d from `facts` (the held one when the facts were not read); and the role to
/// hold after the step.
pub fn in_force(
    setting: RoleSetting,
    held: Option<&Held>,
    facts: Option<&HostFacts>,
    now: Duration,
) -> (Option<Held>, InForce) {
    let detection = facts.map(detect);
    let unread = facts.map(|f| f.unread.clone()).unwrap_or_default();
    let report = |role, source, pending, changed, detection| InForce {
        role,
        source,
        detection,
        pending,
        changed,
        unread: unread.clone(),
        config_keys: Vec::new(),
    };
    let role = match (setting, &detection) {
        // Auto, if set again, resumes from the role really in force.
        (RoleSetting::Fixed(role), _) => {
            let next = Held {
                role,
                pending: None,
            };
            let out = report(role, Source::Config, None, None, detection);
            return (Some(next), out);
        }
        (RoleSetting::Auto, None) => {
            let role = held.map(|h| h.role).unwrap_or_default();
            return (held.cloned(), report(role, Source::Auto, None, None, None));
        }
        // A fact not read proves nothing: facts short of one never shrink the budget
        // (a failed dump, a file cut at its bound would read as "no NAT", "no DNS").
        (RoleSetting::Auto, Some(d))
            if !unread.is_empty()
                && held.is_some_and(|h| d.role.budget_rank() < h.role.budget_rank()) =>
        {
            let role = held.map(|h| h.role).unwrap_or_default();
            return (
                held.cloned(),
                report(role, Source::Auto, None, None, detection),
            );
        }
        (RoleSetting::Auto, Some(d)) => d.role,
    };
    let (next, changed) = settle(held, role, now);
    let pending = next.pending.map(|(role, since)| Pending {
        role,
        seconds_left: SETTLE.saturating_sub(now.saturating_sub(since)).as_secs(),
    });
    let out = report(next.role, Source::Auto, pending, changed, detection);
    (Some(next), out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            ipv4_forwarding: Some(false),
            ipv6_forwarding: Some(false),
            ..HostFacts::default()
        }
    }

    #[test]
    fn a_plain_server_is_a_host() {
        let d = detect(&facts());
        assert_eq!(d.role, Role::Host);
        assert_eq!(d.because, vec![Reason::NothingSpecial]);
    }

    #[test]
    fn forwarding_with_nat_or_openwrt_is_a_router_and_either_half_alone_is_not() {
        let mut f = facts();
        f.ipv4_forwarding = Some(true);
        assert_eq!(detect(&f).role, Role::Host);
        assert_eq!(detect(&f).besides, vec![Reason::ForwardingAlone]);
        f.nat
            .push("nftables: table ip nat, chain postrouting".into());
        let d = detect(&f);
        assert_eq!(d.role, Role::Router);
        assert!(matches!(d.because[0], Reason::ForwardingWithNat(_)));
        f.ipv4_forwarding = Some(false);
        assert_eq!(detect(&f).role, Role::Host);
        assert!(matches!(detect(&f).besides[0], Reason::NatAlone(_)));
        let ow = HostFacts {
            openwrt: true,
            ..facts()
        };
        assert_eq!(detect(&ow).because, vec![Reason::OpenWrt]);
    }

    #[test]
    fn a_public_dns_server_has_the_routers_budget_and_a_loopback_stub_has_not() {
        let mut f = facts();
        f.dns_loopback.push("127.0.0.53:53".into());
        let d = detect(&f);
        assert_eq!(d.role, Role::Host);
        assert!(matches!(d.besides[0], Reason::DnsStub(_)));
        f.dns_public.push("0.0.0.0:53".into());
        let d = detect(&f);
        assert_eq!(d.role, Role::Router);
        assert!(budget_reason(d.role, Some(&d)).starts_with("a DNS resolver"));
    }

    #[test]
    fn a_node_that_forwards_is_a_node_and_says_so() {
        let mut f = facts();
        f.ipv4_forwarding = Some(true);
        f.nat
            .push("nftables: table ip nat, chain POSTROUTING".into());
        f.cni_interfaces.push("cni0".into());
        f.pod_sandboxes = 12;
        let d = detect(&f);
        assert_eq!(d.role, Role::Node);
        assert_eq!(d.because.len(), 2);
        assert!(matches!(d.besides[0], Reason::ForwardingWithNat(_)));
    }

    #[test]
    fn facts_short_of_one_never_shrink_the_budget_and_a_fixed_role_is_held() {
        let t = Duration::from_secs(1);
        let router = Held {
            role: Role::Router,
            pending: None,
        };
        let mut f = facts();
        f.unread.push("nftables chains: EPERM".into());
        let (h, r) = in_force(RoleSetting::Auto, Some(&router), Some(&f), t);
        assert_eq!(
            (h.unwrap(), r.role, r.pending),
            (router.clone(), Role::Router, None)
        );
        // Unread, yet a larger budget shown is taken.
        f.cni_interfaces.push("cni0".into());
        let host = Held {
            role: Role::Host,
            pending: None,
        };
        assert_eq!(
            in_force(RoleSetting::Auto, Some(&host), Some(&f), t).1.role,
            Role::Node
        );
        // A fixed role is what auto resumes from.
        let (h, r) = in_force(RoleSetting::Fixed(Role::Host), Some(&router), Some(&f), t);
        assert_eq!((h.unwrap(), r.source), (host, Source::Config));
        // A pending time from another clock starts again.
        let odd = Held {
            role: Role::Router,
            pending: Some((Role::Host, SETTLE * 3)),
        };
        assert_eq!(
            settle(Some(&odd), Role::Host, SETTLE).0.pending,
            Some((Role::Host, SETTLE))
        );
    }

    #[test]
    fn a_larger_budget_is_adopted_at_once_a_smaller_after_settling() {
        let t = |s| Duration::from_secs(s);
        let (h, c) = settle(None, Role::Host, t(0));
        assert_eq!((h.role, c), (Role::Host, None));
        let (h, c) = settle(Some(&h), Role::Node, t(10));
        assert_eq!(h.role, Role::Node);
        assert_eq!(c.unwrap().from, Role::Host);
        // The node's runtime restarts: host is shown, held off.
        let (h, c) = settle(Some(&h), Role::Host, t(20));
        assert_eq!(
            (h.role, c, h.pending),
            (Role::Node, None, Some((Role::Host, t(20))))
        );
        // Back before settling: the pending role is forgotten.
        let (h, _) = settle(Some(&h), Role::Node, t(30));
        assert_eq!(h.pending, None);
        let (h, _) = settle(Some(&h), Role::Host, t(40));
        let (h, c) = settle(Some(&h), Role::Host, t(40) + SETTLE - t(1));
        assert_eq!((h.role, c), (Role::Node, None));
        let (h, c) = settle(Some(&h), Role::Host, t(40) + SETTLE);
        assert_eq!(h.role, Role::Host);
        assert_eq!(c.unwrap().to, Role::Host);
    }
}
