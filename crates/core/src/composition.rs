//! What fills a conntrack table: counts by bucket (layer-4 protocol, TCP state, assured
//! and unreplied, destination port, source prefix, zone, mark, the timeout key that
//! governs each entry), accumulated one entry at a time while a dump streams, so the
//! entries themselves are never held. Every bucket keyed by data has a cap on distinct
//! keys; entries past it are counted as "other". Pure: the dump is read in the agent
//! (`sense::ctnetlink`), the rendering is `ctune top`'s.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::config::Timeouts;

/// Layer-3 family of an entry (nfgenmsg's `nfgen_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AF_INET.
    V4,
    /// AF_INET6.
    V6,
    /// Anything else (the kernel tracks only these two; kept for robustness).
    Other(u8),
}

impl Family {
    /// From the socket address family number.
    pub fn from_af(af: u8) -> Family {
        match af {
            2 => Family::V4,
            10 => Family::V6,
            n => Family::Other(n),
        }
    }
}

/// The parts of one entry that the buckets need, borrowed from nothing: the dump
/// parser fills one per message and hands it over by reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Layer-3 family.
    pub family: Family,
    /// Original-direction source address (4 bytes used for IPv4), if present.
    pub src: Option<[u8; 16]>,
    /// Original-direction destination address (4 bytes used for IPv4), if present.
    pub dst: Option<[u8; 16]>,
    /// Layer-4 protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub proto: u8,
    /// Original-direction destination port (TCP, UDP, SCTP, DCCP, UDP-Lite).
    pub dst_port: Option<u16>,
    /// TCP state (`enum tcp_conntrack`), for TCP.
    pub tcp_state: Option<u8>,
    /// `CTA_STATUS` bits.
    pub status: u32,
    /// Conntrack zone (0 when absent).
    pub zone: u16,
    /// Conntrack mark (0 when absent).
    pub mark: u32,
    /// Seconds the entry has left, as the kernel says (`CTA_TIMEOUT`).
    pub timeout: Option<u32>,
}

/// `IPS_SEEN_REPLY`: a packet went the other way.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;
/// `IPS_ASSURED`: kept until it expires (never early-dropped).
pub const IPS_ASSURED: u32 = 1 << 2;

/// `IPS_SRC_NAT`: the entry's source is translated (SNAT, masquerade).
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `IPS_DST_NAT`: the entry's destination is translated (DNAT, redirect).
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `IPS_SRC_NAT_DONE` | `IPS_DST_NAT_DONE`: a NAT hook has seen the entry (set even when
/// no rule translated it: the null binding), so a NAT chain is in its path.
pub const IPS_NAT_DONE: u32 = (1 << 7) | (1 << 8);

/// Names of `enum tcp_conntrack`, by value.
pub const TCP_STATES: [&str; 10] = [
    "none",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
    "syn_sent2",
];

/// The name of a layer-4 protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        33 => "dccp".into(),
        47 => "gre".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => format!("proto-{n}"),
    }
}

/// The timeout sysctl that sets how long an idle entry like this one lives, with the
/// kernel's semantics (`nf_conntrack_proto_*.c`): UDP takes `udp_timeout` until it is a
/// stream, then `udp_timeout_stream`; TCP its state's key; ICMP its own;
/// anything the kernel has no tracker for `generic_timeout`. None: the entry's timeout
/// is not a sysctl (TCP SYN_SENT2, whose two minutes are fixed) or depends on a
/// protocol state the dump does not carry here (SCTP, DCCP).
///
/// An established TCP entry with data unacknowledged or retransmitted too often lives
/// by `tcp_timeout_unacknowledged` / `tcp_timeout_max_retrans` instead (the smaller
/// wins); a dump cannot tell those apart, so they count as established.
///
/// A UDP stream is an assured entry: since Linux 5.x `nf_conntrack_udp_packet` gives a
/// replied entry the stream timeout (and `IPS_ASSURED`) only once it is still active two
/// seconds after it began; before that, a request answered at once (a DNS lookup) lives
/// by `udp_timeout`. Older kernels assure at the first reply, so assured is the stream
/// on both.
pub fn governing_key(f: &Flow) -> Option<&'static str> {
    let replied = f.status & IPS_SEEN_REPLY != 0;
    let assured = f.status & IPS_ASSURED != 0;
    Some(match f.proto {
        6 => match f.tcp_state? {
            // The kernel gives a NONE-state entry the SYN_SENT timeout.
            0 | 1 => "nf_conntrack_tcp_timeout_syn_sent",
            2 => "nf_conntrack_tcp_timeout_syn_recv",
            3 => "nf_conntrack_tcp_timeout_established",
            4 => "nf_conntrack_tcp_timeout_fin_wait",
            5 => "nf_conntrack_tcp_timeout_close_wait",
            6 => "nf_conntrack_tcp_timeout_last_ack",
            7 => "nf_conntrack_tcp_timeout_time_wait",
            8 => "nf_conntrack_tcp_timeout_close",
            _ => return None,
        },
        17 | 136 if replied && assured => "nf_conntrack_udp_timeout_stream",
        17 | 136 => "nf_conntrack_udp_timeout",
        1 => "nf_conntrack_icmp_timeout",
        58 => "nf_conntrack_icmpv6_timeout",
        47 if replied => "nf_conntrack_gre_timeout_stream",
        47 => "nf_conntrack_gre_timeout",
        33 | 132 => return None,
        _ => "nf_conntrack_generic_timeout",
    })
}

/// A source prefix: /24 for IPv4, /64 for IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prefix {
    /// The first three bytes of an IPv4 address.
    V4([u8; 3]),
    /// The first eight bytes of an IPv6 address.
    V6([u8; 8]),
}

impl Prefix {
    /// The prefix of `f`'s source, if it has one.
    pub fn of(f: &Flow) -> Option<Prefix> {
        let a = f.src?;
        match f.family {
            Family::V4 => Some(Prefix::V4([a[0], a[1], a[2]])),
            Family::V6 => {
                let mut p = [0; 8];
                p.copy_from_slice(&a[..8]);
                Some(Prefix::V6(p))
            }
            Family::Other(_) => None,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefix::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Prefix::V6(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// Counts by key, at most `cap` distinct keys; entries of keys past the cap go to
/// `other`. The first keys seen are kept, so a key that first appears after the cap is
/// reached is only in `other`. A dump sends entries in a random order (the kernel's
/// keyed hash), so a key holding a share p of the table is among the first `cap`
/// entries, and kept, with probability at least 1 - (1 - p)^cap: at the default 65536, any key
/// over 0.01 % of the table (all but surely); a smaller one may be missed, and a full
/// bucket's `other` is then an upper bound on what the missed keys hold. With fewer
/// entries read than `cap` (`ctune top`'s default sample) nothing is ever missed.
#[derive(Debug, Clone)]
pub struct Capped<K> {
    counts: HashMap<K, u64>,
    other: u64,
    cap: usize,
}

impl<K: Eq + Hash + Copy + Ord> Capped<K> {
    /// An empty bucket keeping at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Capped {
            counts: HashMap::new(),
            other: 0,
            cap,
        }
    }

    /// Counts one entry of key `k`.
    pub fn add(&mut self, k: K) {
        if let Some(n) = self.counts.get_mut(&k) {
            *n += 1;
        } else if self.counts.len() < self.cap {
            self.counts.insert(k, 1);
        } else {
            self.other += 1;
        }
    }

    /// Entries whose key did not fit under the cap.
    pub fn other(&self) -> u64 {
        self.other
    }

    /// Distinct keys kept.
    pub fn keys(&self) -> usize {
        self.counts.len()
    }

    /// The `n` largest keys, largest first (ties by key, so the order is stable).
    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut v: Vec<(K, u64)> = self.counts.iter().map(|(k, c)| (*k, *c)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Entries counted under the top `n` keys, and under the rest of the kept keys.
    fn rest_after(&self, n: usize) -> u64 {
        let top: u64 = self.top(n).iter().map(|(_, c)| c).sum();
        self.counts.values().sum::<u64>() - top
    }

    /// The `n` largest keys as printed (`label`), with their shares of `entries`, then
    /// one "other" for every entry under the rest: the keys past the top and past the
    /// cap.
    fn listed(&self, n: usize, entries: u64, label: impl Fn(&K) -> String) -> Vec<Named> {
        let mut v: Vec<Named> = self
            .top(n)
            .into_iter()
            .map(|(k, c)| Named::new(label(&k), c, entries))
            .collect();
        let rest = self.rest_after(n) + self.other();
        if rest > 0 {
            v.push(Named::new("other".into(), rest, entries));
        }
        v
    }
}

/// Entries under one timeout key, and the time they have left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Entries.
    pub entries: u64,
    /// Sum of the seconds they have left (for the mean).
    pub left_sum: u64,
    /// The most seconds any has left.
    pub left_max: u64,
}

/// The composition of one table, accumulated entry by entry.
#[derive(Debug, Clone)]
pub struct Composition {
    /// Entries counted.
    pub entries: u64,
    by_proto: [u64; 256],
    by_tcp_state: [u64; 16],
    assured: u64,
    unreplied: u64,
    /// Destination ports, by (protocol, port).
    pub ports: Capped<(u8, u16)>,
    /// Source prefixes.
    pub sources: Capped<Prefix>,
    /// Zones.
    pub zones: Capped<u16>,
    /// Marks.
    pub marks: Capped<u32>,
    by_key: BTreeMap<Option<&'static str>, Lifetimes>,
    nat: u64,
    nat_hooked: u64,
    zoned: u64,
    marked: u64,
    /// Per destination port kept in `ports`: entries to a local address, replied, NAT'd.
    port_detail: HashMap<(u8, u16), PortCounts>,
    local: Option<LocalNets>,
}

/// Per destination port: how many of its entries go to this namespace's own addresses,
/// saw a reply, or are NAT'd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PortCounts {
    to_local: u64,
    replied: u64,
    nat: u64,
}

impl Composition {
    /// An empty composition whose data-keyed buckets keep at most `max_keys` keys each.
    pub fn new(max_keys: usize) -> Self {
        Composition {
            entries: 0,
            by_proto: [0; 256],
            by_tcp_state: [0; 16],
            assured: 0,
            unreplied: 0,
            ports: Capped::new(max_keys),
            sources: Capped::new(max_keys),
            zones: Capped::new(max_keys),
            marks: Capped::new(max_keys),
            by_key: BTreeMap::new(),
            nat: 0,
            nat_hooked: 0,
            zoned: 0,
            marked: 0,
            port_detail: HashMap::new(),
            local: None,
        }
    }

    /// The namespace's local addresses ([`LocalNets`]), so that entries whose destination
    /// is one of them are counted per port (what `notrack` advice needs). Without them,
    /// whether a port is served here is unknown and no such advice is given.
    pub fn with_local(mut self, local: Option<LocalNets>) -> Self {
        self.local = local;
        self
    }

    /// Counts one entry.
    pub fn add(&mut self, f: &Flow) {
        self.entries += 1;
        self.by_proto[f.proto as usize] += 1;
        if f.proto == 6 {
            let s = f.tcp_state.map_or(15, |s| (s as usize).min(14));
            self.by_tcp_state[s] += 1;
        }
        if f.status & IPS_ASSURED != 0 {
            self.assured += 1;
        }
        if f.status & IPS_SEEN_REPLY == 0 {
            self.unreplied += 1;
        }
        let nat = f.status & (IPS_SRC_NAT | IPS_DST_NAT) != 0;
        self.nat += u64::from(nat);
        self.nat_hooked += u64::from(f.status & IPS_NAT_DONE != 0);
        self.zoned += u64::from(f.zone != 0);
        self.marked += u64::from(f.mark != 0);
        if let Some(p) = f.dst_port {
            let k = (f.proto, p);
            self.ports.add(k);
            // Only ports kept in `ports` get details, so this map is capped the same.
            if self.ports.counts.contains_key(&k) {
                let local = match (&self.local, f.dst) {
                    (Some(l), Some(d)) => l.contains(f.family, &d),
                    _ => false,
                };
                let d = self.port_detail.entry(k).or_default();
                d.to_local += u64::from(local);
                d.replied += u64::from(f.status & IPS_SEEN_REPLY != 0);
                d.nat += u64::from(nat);
            }
        }
        if let Some(p) = Prefix::of(f) {
            self.sources.add(p);
        }
        self.zones.add(f.zone);
        self.marks.add(f.mark);
        let l = self.by_key.entry(governing_key(f)).or_default();
        l.entries += 1;
        let left = u64::from(f.timeout.unwrap_or(0));
        l.left_sum += left;
        l.left_max = l.left_max.max(left);
    }

    /// The timeout keys governing the entries counted (None: not a sysctl).
    pub fn keys(&self) -> impl Iterator<Item = (Option<&'static str>, &Lifetimes)> {
        self.by_key.iter().map(|(k, l)| (*k, l))
    }

    /// The summary `ctune top` prints: shares of every bucket, the `top` largest keys
    /// of the data-keyed ones, and per timeout key the timeout in force (`timeouts`,
    /// this namespace's values) and ctune's floor for it (`floors`).
    pub fn summarize(
        &self,
        top: usize,
        timeouts: &BTreeMap<String, u64>,
        floors: &Timeouts,
    ) -> Summary {
        let n = self.entries;
        Summary {
            entries: n,
            sample: None,
            protocols: self.protocols(),
            tcp_states: self.tcp_states(),
            assured: Share::new(self.assured, n),
            unreplied: Share::new(self.unreplied, n),
            sources: self.sources.listed(top, n, |k| k.to_string()),
            ports: self
                .ports
                .listed(top, n, |&(p, port)| format!("{}/{port}", proto_name(p))),
            zones: self.zones.listed(top, n, |k| k.to_string()),
            marks: self.marks.listed(top, n, |k| format!("{k:#x}")),
            timeouts: self.timeout_keys(timeouts, floors),
            keys_capped: self.keys_capped(),
            details: self.details(top),
        }
    }

    /// Every protocol seen, most entries first (ties by name, so the order is stable).
    fn protocols(&self) -> Vec<Named> {
        let mut protocols: Vec<Named> = (0..=255u8)
            .filter(|p| self.by_proto[*p as usize] > 0)
            .map(|p| Named::new(proto_name(p), self.by_proto[p as usize], self.entries))
            .collect();
        protocols.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.key.cmp(&b.key)));
        protocols
    }

    /// Every TCP state seen, in the kernel's order of states.
    fn tcp_states(&self) -> Vec<Named> {
        (0..16)
            .filter(|s| self.by_tcp_state[*s] > 0)
            .map(|s| {
                let name = match s {
                    0..=9 => TCP_STATES[s].to_string(),
                    15 => "unknown".into(),
                    _ => format!("state-{s}"),
                };
                Named::new(name, self.by_tcp_state[s], self.entries)
            })
            .collect()
    }

    /// Per timeout key: the entries it governs, the timeout in force and ctune's floor,
    /// most entries first (ties by key).
    fn timeout_keys(&self, timeouts: &BTreeMap<String, u64>, floors: &Timeouts) -> Vec<KeyShare> {
        let mut keys: Vec<KeyShare> = self
            .by_key
            .iter()
            .map(|(k, l)| KeyShare {
                key: k.unwrap_or("none").to_string(),
                entries: l.entries,
                share: Share::new(l.entries, self.entries).share,
                timeout_secs: k.and_then(|k| timeouts.get(k).copied()),
                floor_secs: k.and_then(|k| floors.floor_of(k)),
                left_mean_secs: l.left_sum.checked_div(l.entries).unwrap_or(0),
                left_max_secs: l.left_max,
            })
            .collect();
        keys.sort_by(|a, b| b.entries.cmp(&a.entries).then(a.key.cmp(&b.key)));
        keys
    }

    /// The data-keyed buckets that hit their cap: their shares miss the keys past it.
    fn keys_capped(&self) -> Vec<String> {
        [
            ("sources", self.sources.other()),
            ("ports", self.ports.other()),
            ("zones", self.zones.other()),
            ("marks", self.marks.other()),
        ]
        .into_iter()
        .filter(|(_, o)| *o > 0)
        .map(|(b, _)| b.to_string())
        .collect()
    }

    /// The typed counts advice reads, with the `top` sources and ports.
    fn details(&self, top: usize) -> Details {
        Details {
            tcp: self.by_proto[6],
            nat: self.nat,
            nat_hooked: self.nat_hooked,
            zoned: self.zoned,
            marked: self.marked,
            local_known: self.local.is_some(),
            sources: self.sources.top(top),
            ports: self
                .ports
                .top(top)
                .into_iter()
                .map(|((proto, port), entries)| {
                    let d = self
                        .port_detail
                        .get(&(proto, port))
                        .copied()
                        .unwrap_or_default();
                    PortDetail {
                        proto,
                        port,
                        entries,
                        to_local: d.to_local,
                        replied: d.replied,
                        nat: d.nat,
                    }
                })
                .collect(),
        }
    }
}

/// What advice ([`crate::advice`]) needs beyond the shares printed, typed (never parsed
/// back from the printed keys). Not serialized: each advice carries its own numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Details {
    /// TCP entries.
    pub tcp: u64,
    /// Entries with source or destination NAT (`IPS_SRC_NAT` / `IPS_DST_NAT`).
    pub nat: u64,
    /// Entries a NAT hook has seen ([`IPS_NAT_DONE`]), translated or not.
    pub nat_hooked: u64,
    /// Entries in a zone other than 0.
    pub zoned: u64,
    /// Entries with a mark other than 0.
    pub marked: u64,
    /// Whether the namespace's local addresses were known (see [`LocalNets`]).
    pub local_known: bool,
    /// The top source prefixes, largest first.
    pub sources: Vec<(Prefix, u64)>,
    /// The top destination ports, largest first.
    pub ports: Vec<PortDetail>,
}

/// One destination port and what its entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortDetail {
    /// Layer-4 protocol number.
    pub proto: u8,
    /// The port.
    pub port: u16,
    /// Entries to it.
    pub entries: u64,
    /// Of those, to one of the namespace's own addresses (0 when they are not known).
    pub to_local: u64,
    /// Of those, entries that saw a reply.
    pub replied: u64,
    /// Of those, entries with NAT.
    pub nat: u64,
}

/// The addresses a namespace delivers locally: IPv4 `LOCAL` routes (from
/// `/proc/net/fib_trie`: 127.0.0.0/8 and every address configured) and IPv6 addresses
/// (`/proc/net/if_inet6`). Looked up by prefix length, one hash probe per distinct
/// length, so the lookup per entry stays cheap with many addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNets {
    v4: BTreeMap<u8, std::collections::HashSet<u32>>,
    v6: BTreeMap<u8, std::collections::HashSet<u128>>,
}

/// At most this many local prefixes are kept (a namespace with more is not a host).
pub const MAX_LOCAL_PREFIXES: usize = 65_536;

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(len.min(32))))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(len.min(128))))
    }
}

impl LocalNets {
    /// From the text of `/proc/net/fib_trie` (every `/N host LOCAL` leaf: the address on
    /// the `|--` line above it, with that length) and of `/proc/net/if_inet6` (32 hex
    /// digits per address, /128). Lines that do not parse are skipped.
    pub fn parse(fib_trie: &str, if_inet6: &str) -> LocalNets {
        let mut n = LocalNets::default();
        let mut last: Option<u32> = None;
        for line in fib_trie.lines() {
            let t = line.trim();
            if let Some(a) = t.strip_prefix("|-- ") {
                last = a.trim().parse::<std::net::Ipv4Addr>().ok().map(u32::from);
            } else if let Some(rest) = t.strip_prefix('/') {
                let mut w = rest.split_whitespace();
                let len = w.next().and_then(|l| l.parse::<u8>().ok());
                let local = w.nth(1) == Some("LOCAL");
                if let (Some(a), Some(len), true) = (last, len, local)
                    && len <= 32
                    && n.len() < MAX_LOCAL_PREFIXES
                {
                    n.v4.entry(len).or_default().insert(mask4(a, len));
                }
            }
        }
        for line in if_inet6.lines() {
            if let Some(hex) = line.split_whitespace().next()
                && hex.len() == 32
                && let Ok(a) = u128::from_str_radix(hex, 16)
                && n.len() < MAX_LOCAL_PREFIXES
            {
                n.v6.entry(128).or_default().insert(a);
            }
        }
        n
    }

    /// Prefixes kept.
    pub fn len(&self) -> usize {
        self.v4.values().map(|s| s.len()).sum::<usize>()
            + self.v6.values().map(|s| s.len()).sum::<usize>()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` (of `family`; 4 bytes used for IPv4) is delivered locally.
    pub fn contains(&self, family: Family, addr: &[u8; 16]) -> bool {
        match family {
            Family::V4 => {
                let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
                self.v4.iter().any(|(len, s)| s.contains(&mask4(a, *len)))
            }
            Family::V6 => {
                let a = u128::from_be_bytes(*addr);
                self.v6.iter().any(|(len, s)| s.contains(&mask6(a, *len)))
            }
            Family::Other(_) => false,
        }
    }
}

/// A count and its share of the entries read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Share {
    /// Entries.
    pub entries: u64,
    /// Fraction of the entries read, 0..1.
    pub share: f64,
}

impl Share {
    fn new(c: u64, n: u64) -> Share {
        Share {
            entries: c,
            share: if n == 0 { 0.0 } else { c as f64 / n as f64 },
        }
    }
}

/// One key of a bucket, its count and share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named {
    /// The key as printed ("tcp", "established", "10.0.0.0/24", "udp/53", "other").
    pub key: String,
    /// Entries.
    pub entries: u64,
    /// Fraction of the entries read, 0..1.
    pub share: f64,
}

impl Named {
    fn new(key: String, c: u64, n: u64) -> Named {
        Named {
            key,
            entries: c,
            share: Share::new(c, n).share,
        }
    }
}

/// The entries one timeout key governs and how long they live.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyShare {
    /// The sysctl ("none": not a sysctl, see [`governing_key`]).
    pub key: String,
    /// Entries it governs.
    pub entries: u64,
    /// Their fraction of the entries read.
    pub share: f64,
    /// The timeout in force in this namespace: how long such an entry lives idle.
    pub timeout_secs: Option<u64>,
    /// ctune's floor for the key: how long it would live idle at the lowest ctune sets.
    pub floor_secs: Option<u64>,
    /// The mean of the seconds these entries have left now.
    pub left_mean_secs: u64,
    /// The most seconds any of them has left.
    pub left_max_secs: u64,
}

/// What `ctune top` shows for one table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Entries read.
    pub entries: u64,
    /// When the entries read are a sample of a larger table: how large, and how close
    /// the shares are (None: every entry was read). Set by [`Summary::sampled_from`].
    pub sample: Option<Sample>,
    /// By layer-4 protocol, largest first.
    pub protocols: Vec<Named>,
    /// TCP entries by state (shares of all entries).
    pub tcp_states: Vec<Named>,
    /// Entries marked assured.
    pub assured: Share,
    /// Entries that never saw a reply.
    pub unreplied: Share,
    /// Top source prefixes, then "other".
    pub sources: Vec<Named>,
    /// Top destination ports, then "other".
    pub ports: Vec<Named>,
    /// Top zones, then "other".
    pub zones: Vec<Named>,
    /// Top marks, then "other".
    pub marks: Vec<Named>,
    /// Per governing timeout key.
    pub timeouts: Vec<KeyShare>,
    /// Buckets that reached the cap on distinct keys.
    pub keys_capped: Vec<String>,
    /// Typed inputs of the advice (not printed).
    #[serde(skip)]
    pub details: Details,
}

/// What a sample of a table is worth. A conntrack dump sends the entries in the order
/// of the kernel's hash table, whose hash is keyed by a seed drawn at boot, so the
/// first entries a dump sends are a random sample of the table: not the oldest, the
/// newest or one source's. A share counted in a sample of `read` entries is then within
/// [`Sample::margin_95`] of the table's share 95 times in 100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Entries in the table: the kernel's count (at least the entries read).
    pub table_entries: u64,
    /// Entries read.
    pub read: u64,
    /// Half the width of a 95 % confidence interval on a share, at its widest (a share
    /// of one half): 1.96 * sqrt(p(1-p)/n), with the finite-population correction when
    /// the table is known to be larger than the sample.
    pub margin_95: f64,
}

impl Sample {
    /// A sample of `read` entries (at least one) from a table the kernel counts `table`
    /// entries in (None: unknown, then the entries read stand for the table's size, and
    /// the margin is the one of an unbounded table: a dump cut short was a sample, even
    /// when the count, read after it, is no larger).
    pub fn new(read: u64, table: Option<u64>) -> Sample {
        let table_entries = table.unwrap_or(read).max(read);
        let n = read.max(1) as f64;
        let fpc = if table_entries > read {
            let big_n = table_entries as f64;
            ((big_n - n) / (big_n - 1.0)).max(0.0).sqrt()
        } else {
            1.0
        };
        let margin_95 = 1.96 * (0.25 / n).sqrt() * fpc;
        Sample {
            table_entries,
            read,
            margin_95,
        }
    }
}

impl Summary {
    /// Marks the summary as a sample of a table the kernel counts `table` entries in.
    pub fn sampled_from(mut self, table: Option<u64>) -> Summary {
        self.sample = Some(Sample::new(self.entries, table));
        self
    }

    /// The entries in the table: the kernel's count for a sample, the entries read
    /// otherwise. What thresholds on a table's size compare with.
    pub fn table_entries(&self) -> u64 {
        self.sample.map_or(self.entries, |s| s.table_entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: u8, state: Option<u8>, status: u32, src: [u8; 4], port: u16) -> Flow {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&src);
        Flow {
            family: Family::V4,
            src: Some(a),
            dst: None,
            proto,
            dst_port: Some(port),
            tcp_state: state,
            status,
            zone: 0,
            mark: 0,
            timeout: Some(100),
        }
    }

    #[test]
    fn governing_keys_follow_the_kernel() {
        let udp = flow(17, None, 0, [10, 0, 0, 1], 53);
        assert_eq!(governing_key(&udp), Some("nf_conntrack_udp_timeout"));
        let replied = Flow {
            status: IPS_SEEN_REPLY | IPS_ASSURED,
            ..udp
        };
        assert_eq!(
            governing_key(&replied),
            Some("nf_conntrack_udp_timeout_stream")
        );
        // Answered at once (a DNS lookup): not yet a stream, still `udp_timeout`.
        let answered = Flow {
            status: IPS_SEEN_REPLY,
            ..udp
        };
        assert_eq!(governing_key(&answered), Some("nf_conntrack_udp_timeout"));
        let est = flow(6, Some(3), IPS_ASSURED, [10, 0, 0, 1], 443);
        assert_eq!(
            governing_key(&est),
            Some("nf_conntrack_tcp_timeout_established")
        );
        assert_eq!(
            governing_key(&Flow {
                tcp_state: Some(7),
                ..est
            }),
            Some("nf_conntrack_tcp_timeout_time_wait")
        );
        assert_eq!(
            governing_key(&Flow {
                tcp_state: Some(9),
                ..est
            }),
            None
        );
        assert_eq!(
            governing_key(&flow(1, None, 0, [1, 2, 3, 4], 0)),
            Some("nf_conntrack_icmp_timeout")
        );
        assert_eq!(
            governing_key(&flow(50, None, 0, [1, 2, 3, 4], 0)),
            Some("nf_conntrack_generic_timeout")
        );
        // Every key named is a key some kernel has.
        for p in 0..=255u8 {
            for s in 0..12u8 {
                for st in [0, IPS_SEEN_REPLY] {
                    if let Some(k) = governing_key(&flow(p, Some(s), st, [0; 4], 0)) {
                        assert!(crate::tunables::known_timeout_keys().any(|x| x == k), "{k}");
                    }
                }
            }
        }
    }

    #[test]
    fn shares_tops_and_caps() {
        let mut c = Composition::new(3);
        for i in 0..60u16 {
            c.add(&flow(17, None, 0, [10, 0, (i % 5) as u8, 1], 1000 + i));
        }
        for _ in 0..40 {
            c.add(&flow(
                6,
                Some(3),
                IPS_ASSURED | IPS_SEEN_REPLY,
                [192, 168, 1, 9],
                443,
            ));
        }
        let mut t = BTreeMap::new();
        t.insert("nf_conntrack_udp_timeout".to_string(), 30);
        let s = c.summarize(2, &t, &crate::config::Config::default().timeouts);
        assert_eq!(s.entries, 100);
        assert_eq!(s.protocols[0].key, "udp");
        assert!((s.protocols[0].share - 0.6).abs() < 1e-9);
        assert_eq!(s.tcp_states[0].key, "established");
        assert!((s.unreplied.share - 0.6).abs() < 1e-9);
        assert!((s.assured.share - 0.4).abs() < 1e-9);
        // Ports: the first three keys are kept (1000..1002, one each), 443 came after.
        assert_eq!(s.keys_capped, ["sources", "ports"]);
        let other = s.ports.last().unwrap();
        assert_eq!((other.key.as_str(), other.entries), ("other", 98));
        // Sources: 10.0.0/24, 10.0.1/24 and 10.0.2/24 kept (12 each); the rest is other.
        assert_eq!(s.sources[0].key, "10.0.0.0/24");
        assert_eq!(s.sources.iter().map(|n| n.entries).sum::<u64>(), 100);
        let udp = s
            .timeouts
            .iter()
            .find(|k| k.key == "nf_conntrack_udp_timeout")
            .unwrap();
        assert_eq!(udp.entries, 60);
        assert_eq!(udp.timeout_secs, Some(30));
        assert_eq!(udp.left_mean_secs, 100);
        assert!(udp.floor_secs.is_some());
    }

    #[test]
    fn ipv6_prefix_prints_as_64() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[15] = 7;
        let f = Flow {
            family: Family::V6,
            src: Some(a),
            ..flow(17, None, 0, [0; 4], 1)
        };
        assert_eq!(Prefix::of(&f).unwrap().to_string(), "2001:db8::/64");
    }

    #[test]
    fn an_empty_table_has_no_shares() {
        let s = Composition::new(10).summarize(5, &BTreeMap::new(), &Timeouts::default());
        assert_eq!(s.entries, 0);
        assert_eq!(s.assured.share, 0.0);
        assert!(s.protocols.is_empty() && s.timeouts.is_empty());
    }
}
