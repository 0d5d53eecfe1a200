//! Advice, not action: what a table's composition ([`Summary`]) says an operator should
//! change and ctune must not change on its own, because it changes what the network does,
//! not how big the table is. Four rules, each with the numbers that triggered it and,
//! where a ruleset change is the remedy, a complete nftables file that `nft -c -f`
//! accepts on its own (its own `table inet ctune_advice_<kind>`):
//!
//! - `source_limit`: one source prefix holds most of a large table; a per-prefix
//!   `ct count` limit in a dynamic set (a meter).
//! - `notrack_port`: one TCP or UDP port served here holds most of a large table; a
//!   `notrack` rule for it at raw priority.
//! - `remove_tracking`: nothing in a large table shows a use for tracking (no NAT, no
//!   mark, no zone); the founding document's "remove nf_conntrack if not necessary".
//! - `close_wait`: TCP entries pile up in CLOSE_WAIT: an application not closing its
//!   sockets, not a table problem. No snippet.
//!
//! Pure: the summary in, the advice out. Every value put in a snippet is typed and
//! bounded (a protocol of two, a port 1..=65535, a count 1..=u32::MAX, a prefix from
//! its bytes); no text from the data (namespace names, keys) is ever put in a snippet.

use serde::Serialize;

use crate::composition::{Prefix, Summary};
use crate::units::fmt_pct;

/// `source_limit` fires when one source prefix (/24, /64) holds more than this share of
/// the entries: half the table from one network is not a crowd of clients, it is one
/// client, a scanner or a flood, and one it can be told apart from the rest by.
pub const SOURCE_SHARE: f64 = 0.5;
/// ... and the table holds at least this many entries: below it, a share is a handful
/// of connections and a limit would only get in the way.
pub const SOURCE_MIN_ENTRIES: u64 = 10_000;
/// The limit the snippet sets per prefix: this share of the entries read, rounded up to
/// a hundred. Below what the heavy prefix holds (over [`SOURCE_SHARE`]), far above what
/// any other one does (each of them holds less than half of the rest).
pub const SOURCE_LIMIT_SHARE: f64 = 0.25;

/// `notrack_port` fires when one TCP or UDP destination port holds more than this share
/// of the entries: then one service is what the table is for, and not tracking it frees
/// most of the table.
pub const PORT_SHARE: f64 = 0.5;
/// ... and the table holds at least this many entries.
pub const PORT_MIN_ENTRIES: u64 = 10_000;
/// ... and at least this share of the port's entries go to one of the namespace's own
/// addresses: the host serves it (forwarded traffic is a router's, whose rules ctune
/// cannot see).
pub const PORT_LOCAL_SHARE: f64 = 0.9;
/// ... and at least this share of them saw a reply: something answers on the port (a
/// port nobody answers is a flood, not a service).
pub const PORT_REPLIED_SHARE: f64 = 0.5;

/// `remove_tracking` fires on a table of at least this many entries (a small table
/// costs nothing worth a change of design) when none of its entries is translated, seen
/// by a NAT chain, marked or zoned, and the dump was complete (it is a claim about every
/// entry).
pub const UNUSED_MIN_ENTRIES: u64 = 10_000;

/// `close_wait` fires when more than this share of the TCP entries are in CLOSE_WAIT:
/// in a healthy table the state is passing (the application closes right after the peer
/// does).
pub const CLOSE_WAIT_SHARE: f64 = 0.2;
/// ... and there are more than this many of them (a few hundred are noise).
pub const CLOSE_WAIT_MIN: u64 = 1_000;

/// The thresholds the rules use ([`Thresholds::default`]: the constants above).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// [`SOURCE_SHARE`].
    pub source_share: f64,
    /// [`SOURCE_MIN_ENTRIES`].
    pub source_min_entries: u64,
    /// [`SOURCE_LIMIT_SHARE`].
    pub source_limit_share: f64,
    /// [`PORT_SHARE`].
    pub port_share: f64,
    /// [`PORT_MIN_ENTRIES`].
    pub port_min_entries: u64,
    /// [`PORT_LOCAL_SHARE`].
    pub port_local_share: f64,
    /// [`PORT_REPLIED_SHARE`].
    pub port_replied_share: f64,
    /// [`UNUSED_MIN_ENTRIES`].
    pub unused_min_entries: u64,
    /// [`CLOSE_WAIT_SHARE`].
    pub close_wait_share: f64,
    /// [`CLOSE_WAIT_MIN`].
    pub close_wait_min: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            source_share: SOURCE_SHARE,
            source_min_entries: SOURCE_MIN_ENTRIES,
            source_limit_share: SOURCE_LIMIT_SHARE,
            port_share: PORT_SHARE,
            port_min_entries: PORT_MIN_ENTRIES,
            port_local_share: PORT_LOCAL_SHARE,
            port_replied_share: PORT_REPLIED_SHARE,
            unused_min_entries: UNUSED_MIN_ENTRIES,
            close_wait_share: CLOSE_WAIT_SHARE,
            close_wait_min: CLOSE_WAIT_MIN,
        }
    }
}

/// What an advice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One source prefix holds most of the table.
    SourceLimit,
    /// One port served here holds most of the table.
    NotrackPort,
    /// Nothing in the table shows a use for tracking.
    RemoveTracking,
    /// TCP entries pile up in CLOSE_WAIT.
    CloseWait,
}

impl Kind {
    /// The name, as in JSON and in the snippet's table name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::SourceLimit => "source_limit",
            Kind::NotrackPort => "notrack_port",
            Kind::RemoveTracking => "remove_tracking",
            Kind::CloseWait => "close_wait",
        }
    }

    /// The table its snippet creates (and `nft delete table inet ...` removes).
    pub fn table(self) -> String {
        format!("ctune_advice_{}", self.name())
    }
}

/// One piece of advice for one namespace's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// What it is about.
    pub kind: Kind,
    /// What triggered it: the source prefix (`10.1.2.0/24`), the port (`udp/53`), the
    /// state (`close_wait`); None for `remove_tracking` (the whole table).
    pub subject: Option<String>,
    /// The entries that triggered it: the prefix's, the port's, the CLOSE_WAIT ones; for
    /// `remove_tracking` the entries read (none of which shows a use).
    pub entries: u64,
    /// Out of: the entries read (TCP entries for `close_wait`).
    pub of: u64,
    /// entries / of.
    pub share: f64,
    /// The share it fires over (`remove_tracking`: 1, every entry).
    pub threshold_share: f64,
    /// The fewest entries (of `of`, or of the CLOSE_WAIT ones for `close_wait`) it fires at.
    pub min_entries: u64,
    /// `source_limit`: the connections per prefix the snippet allows.
    pub limit: Option<u64>,
    /// Why, with the numbers.
    pub text: String,
    /// What the change breaks or does not fix.
    pub warning: String,
    /// A complete nftables file (`nft -c -f FILE` checks it, `nft -f FILE` loads it):
    /// None when the remedy is not a ruleset change.
    pub snippet: Option<String>,
}

/// The fewest entries a sample must hold for advice: the shares of a smaller one (a
/// dump cut short by its time) are too loose to send an operator to change a ruleset.
pub const MIN_SAMPLE: u64 = crate::model::MIN_PARTIAL_SAMPLE;

/// The advice for one table. `complete`: the dump read every entry (a claim about
/// every entry, `remove_tracking`, needs it). None from a sample under [`MIN_SAMPLE`].
pub fn advise(s: &Summary, complete: bool, t: &Thresholds) -> Vec<Advice> {
    if s.sample.is_some_and(|x| x.read < MIN_SAMPLE) {
        return Vec::new();
    }
    let mut out = Vec::new();
    out.extend(source_limit(s, t));
    out.extend(notrack_port(s, t));
    if complete {
        out.extend(remove_tracking(s, t));
    }
    out.extend(close_wait(s, t));
    out
}

fn share(n: u64, of: u64) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

/// `n` entries counted in what was read, as entries of the whole table (the same when
/// every entry was read; scaled up from a sample).
fn in_table(s: &Summary, n: u64) -> u64 {
    match s.sample {
        Some(sample) if sample.read > 0 => {
            (n as f64 * sample.table_entries as f64 / sample.read as f64).round() as u64
        }
        _ => n,
    }
}

/// What an advice's text adds when its numbers come from a sample ("" otherwise).
fn sample_note(s: &Summary) -> String {
    s.sample.map_or(String::new(), |sample| {
        format!(
            "; counted in a random sample: {} of the {} entries in the table, shares within \
             {}",
            sample.read,
            sample.table_entries,
            fmt_pct(sample.margin_95)
        )
    })
}

/// The lines every snippet starts with: what it is and how to check, load and undo it.
fn header(kind: Kind, what: &str) -> String {
    let table = kind.table();
    format!(
        "# ctune advice ({}): {what}\n\
         # Check: nft -c -f FILE   Load: nft -f FILE   Undo: nft delete table inet {table}\n\
         table inet {table} {{\n",
        kind.name()
    )
}

/// A base chain of `hook` at `priority` with `rules`, one per line.
fn chain(hook: &str, priority: &str, rules: &[String]) -> String {
    let mut c = format!(
        "\tchain {hook} {{\n\t\ttype filter hook {hook} priority {priority}; policy accept;\n"
    );
    for r in rules {
        c.push_str(&format!("\t\t{r}\n"));
    }
    c.push_str("\t}\n");
    c
}

fn source_limit(s: &Summary, t: &Thresholds) -> Option<Advice> {
    if s.table_entries() < t.source_min_entries {
        return None;
    }
    let (prefix, n) = *s.details.sources.first()?;
    let sh = share(n, s.entries);
    if sh <= t.source_share {
        return None;
    }
    // Of the whole table (a sample's count would set it far too low); rounded up to a
    // hundred, within what `ct count` takes (u32), at least 100.
    let raw = (s.table_entries() as f64 * t.source_limit_share).ceil() as u64;
    let limit = raw
        .div_ceil(100)
        .saturating_mul(100)
        .clamp(100, u64::from(u32::MAX));
    let (set_type, key, family) = match prefix {
        Prefix::V4(_) => ("ipv4_addr", "ip saddr and 255.255.255.0", "IPv4 /24"),
        Prefix::V6(_) => (
            "ipv6_addr",
            "ip6 saddr and ffff:ffff:ffff:ffff::",
            "IPv6 /64",
        ),
    };
    let rule =
        format!("ct state new add @per_source {{ {key} ct count over {limit} }} counter drop");
    let mut snippet = header(
        Kind::SourceLimit,
        &format!("at most {limit} tracked connections per {family} source prefix"),
    );
    snippet.push_str(&format!(
        "\tset per_source {{\n\t\ttype {set_type}\n\t\tsize 65535\n\t\tflags dynamic\n\t}}\n"
    ));
    snippet.push_str(&chain("prerouting", "filter", std::slice::from_ref(&rule)));
    snippet.push_str(&chain("output", "filter", &[rule]));
    snippet.push_str("}\n");
    Some(Advice {
        kind: Kind::SourceLimit,
        subject: Some(prefix.to_string()),
        entries: n,
        of: s.entries,
        share: sh,
        threshold_share: t.source_share,
        min_entries: t.source_min_entries,
        limit: Some(limit),
        text: format!(
            "source {prefix} holds {n} of {} entries ({}, over {}{}): one network fills the \
             table. The snippet caps every {family} source prefix at {limit} tracked \
             connections ({} of the entries now); new connections over it are dropped \
             (prerouting for traffic that arrives, output for traffic this host sends).",
            s.entries,
            fmt_pct(sh),
            fmt_pct(t.source_share),
            sample_note(s),
            fmt_pct(t.source_limit_share),
        ),
        warning: format!(
            "A NAT gateway, proxy or load balancer in {prefix} may hold that many \
             connections legitimately: check who it is before limiting it, and size the \
             limit to your traffic. Other families are not limited."
        ),
        snippet: Some(snippet),
    })
}

fn notrack_port(s: &Summary, t: &Thresholds) -> Option<Advice> {
    if s.table_entries() < t.port_min_entries || !s.details.local_known {
        return None;
    }
    let p = *s.details.ports.first()?;
    let proto = match p.proto {
        6 => "tcp",
        17 => "udp",
        _ => return None,
    };
    let port = p.port;
    let sh = share(p.entries, s.entries);
    if port == 0
        || sh <= t.port_share
        || share(p.to_local, p.entries) < t.port_local_share
        || share(p.replied, p.entries) < t.port_replied_share
        || p.nat > 0
    {
        return None;
    }
    let mut snippet = header(
        Kind::NotrackPort,
        &format!("do not track {proto} port {port} served on this host"),
    );
    snippet.push_str(&chain(
        "prerouting",
        "raw",
        &[format!("{proto} dport {port} fib daddr type local notrack")],
    ));
    snippet.push_str(&chain(
        "output",
        "raw",
        &[
            format!("{proto} sport {port} notrack"),
            format!("{proto} dport {port} fib daddr type local notrack"),
        ],
    ));
    snippet.push_str("}\n");
    Some(Advice {
        kind: Kind::NotrackPort,
        subject: Some(format!("{proto}/{port}")),
        entries: p.entries,
        of: s.entries,
        share: sh,
        threshold_share: t.port_share,
        min_entries: t.port_min_entries,
        limit: None,
        text: format!(
            "{proto}/{port} holds {} of {} entries ({}, over {}{}), {} of them to this \
             namespace's own addresses and {} answered, none NAT'd: a service this host \
             serves fills the table. If it needs no state (DNS, NTP, syslog, a stateless \
             proxy), do not track it: the snippet marks its requests (prerouting and output, \
             to a local address) and its replies (output) notrack at raw priority (-300), \
             before conntrack sees them.",
            p.entries,
            s.entries,
            fmt_pct(sh),
            fmt_pct(t.port_share),
            sample_note(s),
            fmt_pct(share(p.to_local, p.entries)),
            fmt_pct(share(p.replied, p.entries)),
        ),
        warning: format!(
            "Untracked packets match no NAT rule and no stateful rule: `ct state \
             established,related accept` no longer accepts them (their state is \
             `untracked`), so a filtering host must accept {proto} dport {port} in input and \
             {proto} sport {port} in output explicitly, before any rule that drops what is \
             not established; `ct count`, connmark and conntrack accounting stop seeing \
             them too."
        ),
        snippet: Some(snippet),
    })
}

fn remove_tracking(s: &Summary, t: &Thresholds) -> Option<Advice> {
    let d = &s.details;
    if s.entries < t.unused_min_entries
        || d.nat > 0
        || d.nat_hooked > 0
        || d.marked > 0
        || d.zoned > 0
    {
        return None;
    }
    let mut snippet = header(
        Kind::RemoveTracking,
        "track nothing in this namespace (when no rule needs conntrack)",
    );
    snippet.push_str(&chain("prerouting", "raw", &["notrack".to_string()]));
    snippet.push_str(&chain("output", "raw", &["notrack".to_string()]));
    snippet.push_str("}\n");
    Some(Advice {
        kind: Kind::RemoveTracking,
        subject: None,
        entries: s.entries,
        of: s.entries,
        share: 1.0,
        threshold_share: 1.0,
        min_entries: t.unused_min_entries,
        limit: None,
        text: format!(
            "{} entries are tracked and none shows a use: none NAT'd, none seen by a NAT \
             chain, none marked, none in a zone. A namespace tracks only because a rule \
             asked for it (a `ct` match, NAT, an iptables state match); if no rule needs it, \
             remove that rule, or remove conntrack (rmmod nf_conntrack and the modules using \
             it, when it is a module). Where neither can be done, the snippet stops tracking \
             everything at raw priority (-300). ctune does not read the ruleset, so it cannot \
             see a rule that matches `ct state` (a stateful firewall): check `nft list \
             ruleset` and `iptables-save` for ct, state, conntrack and nat first.",
            s.entries
        ),
        warning: "With tracking off, every stateful rule stops matching: `ct state \
                  established` accepts nothing, NAT and masquerade stop, `ct count` and \
                  connmark see nothing. Only for a host whose rules are all stateless."
            .to_string(),
        snippet: Some(snippet),
    })
}

fn close_wait(s: &Summary, t: &Thresholds) -> Option<Advice> {
    let n = s
        .tcp_states
        .iter()
        .find(|x| x.key == "close_wait")
        .map_or(0, |x| x.entries);
    let tcp = s.details.tcp;
    let sh = share(n, tcp);
    if in_table(s, n) <= t.close_wait_min || sh <= t.close_wait_share {
        return None;
    }
    Some(Advice {
        kind: Kind::CloseWait,
        subject: Some("close_wait".into()),
        entries: n,
        of: tcp,
        share: sh,
        threshold_share: t.close_wait_share,
        min_entries: t.close_wait_min,
        limit: None,
        text: format!(
            "{n} of {tcp} TCP entries ({}, over {}{}) are in CLOSE_WAIT: the peer has closed \
             and the application on this side (this host, or the one behind it for \
             forwarded traffic) has not closed its socket. That is an application bug or \
             overload, not a table problem: find it with `ss -tanp state close-wait`.",
            fmt_pct(sh),
            fmt_pct(t.close_wait_share),
            sample_note(s),
        ),
        warning: "A shorter nf_conntrack_tcp_timeout_close_wait would only hide it: the \
                  sockets stay open and keep their memory and descriptors."
            .to_string(),
        snippet: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::composition::{
        Composition, Family, Flow, IPS_ASSURED, IPS_NAT_DONE, IPS_SEEN_REPLY, IPS_SRC_NAT,
        LocalNets,
    };
    use std::collections::BTreeMap;

    fn v4(a: [u8; 4]) -> Option<[u8; 16]> {
        let mut x = [0u8; 16];
        x[..4].copy_from_slice(&a);
        Some(x)
    }

    fn udp(src: [u8; 4], dst: [u8; 4], port: u16, status: u32) -> Flow {
        Flow {
            family: Family::V4,
            src: v4(src),
            dst: v4(dst),
            proto: 17,
            dst_port: Some(port),
            tcp_state: None,
            status,
            zone: 0,
            mark: 0,
            timeout: Some(30),
        }
    }

    fn local() -> LocalNets {
        LocalNets::parse(
            "Local:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.2\n        /32 host LOCAL\n",
            "",
        )
    }

    fn summary(c: &Composition) -> Summary {
        c.summarize(10, &BTreeMap::new(), &crate::config::Timeouts::default())
    }

    fn kinds(v: &[Advice]) -> Vec<Kind> {
        v.iter().map(|a| a.kind).collect()
    }

    /// `heavy` entries from 10.9.9.9 and `rest` from 300 other /24s, to many ports.
    fn sources(heavy: u64, rest: u64) -> Summary {
        let mut c = Composition::new(1000);
        for i in 0..heavy {
            c.add(&udp(
                [10, 9, 9, 9],
                [198, 51, 100, 1],
                1000 + (i % 1000) as u16,
                IPS_NAT_DONE,
            ));
        }
        for i in 0..rest {
            let net = (i % 300) as u16;
            c.add(&udp(
                [10, (net >> 8) as u8 + 1, net as u8, 1],
                [198, 51, 100, 1],
                1000 + (i % 1000) as u16,
                IPS_NAT_DONE,
            ));
        }
        summary(&c)
    }

    #[test]
    fn source_limit_fires_over_half_of_a_large_table() {
        let t = Thresholds::default();
        // 5001 of 10000: over half.
        let a = advise(&sources(5_001, 4_999), true, &t);
        assert_eq!(kinds(&a), [Kind::SourceLimit]);
        let a = &a[0];
        assert_eq!(a.subject.as_deref(), Some("10.9.9.0/24"));
        assert_eq!((a.entries, a.of, a.limit), (5_001, 10_000, Some(2_500)));
        let s = a.snippet.as_deref().unwrap();
        assert!(s.contains("type ipv4_addr"), "{s}");
        assert!(
            s.contains("add @per_source { ip saddr and 255.255.255.0 ct count over 2500 }"),
            "{s}"
        );
        assert!(s.contains("table inet ctune_advice_source_limit {"), "{s}");
        // Exactly half does not fire, nor does a small table.
        assert!(advise(&sources(5_000, 5_000), true, &t).is_empty());
        assert!(advise(&sources(9_000, 999), true, &t).is_empty());
    }

    #[test]
    fn source_limit_keys_ipv6_by_64() {
        let mut c = Composition::new(100);
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        for i in 0..12_000u32 {
            a[15] = i as u8;
            c.add(&Flow {
                family: Family::V6,
                src: Some(a),
                dst: None,
                ..udp([0; 4], [0; 4], 1 + (i % 2000) as u16, IPS_NAT_DONE)
            });
        }
        let adv = advise(&summary(&c), true, &Thresholds::default());
        assert_eq!(kinds(&adv), [Kind::SourceLimit]);
        assert_eq!(adv[0].subject.as_deref(), Some("2001:db8::/64"));
        let s = adv[0].snippet.as_deref().unwrap();
        assert!(s.contains("type ipv6_addr") && s.contains("ip6 saddr and ffff:ffff:ffff:ffff::"));
        assert!(!s.contains("ip saddr"), "{s}");
    }

    /// `n` flows to `port` on 192.0.2.2 (local) or 198.51.100.1, from many sources, and
    /// `rest` to other ports.
    fn ports(n: u64, rest: u64, proto: u8, to_local: bool, status: u32) -> Summary {
        let mut c = Composition::new(100_000).with_local(Some(local()));
        let dst = if to_local {
            [192, 0, 2, 2]
        } else {
            [198, 51, 100, 1]
        };
        for i in 0..n {
            c.add(&Flow {
                proto,
                tcp_state: (proto == 6).then_some(3),
                ..udp(
                    [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                    dst,
                    53,
                    status,
                )
            });
        }
        for i in 0..rest {
            c.add(&udp(
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                dst,
                2000 + (i % 5000) as u16,
                status,
            ));
        }
        summary(&c)
    }

    #[test]
    fn notrack_fires_for_a_dominant_port_served_here() {
        let t = Thresholds::default();
        let replied = IPS_SEEN_REPLY | IPS_ASSURED | IPS_NAT_DONE;
        let a = advise(&ports(6_000, 4_000, 17, true, replied), true, &t);
        assert_eq!(kinds(&a), [Kind::NotrackPort]);
        assert_eq!(a[0].subject.as_deref(), Some("udp/53"));
        let s = a[0].snippet.as_deref().unwrap();
        assert!(s.contains("priority raw;"), "{s}");
        assert!(
            s.contains("udp dport 53 fib daddr type local notrack"),
            "{s}"
        );
        assert!(s.contains("udp sport 53 notrack"), "{s}");
        assert!(a[0].warning.contains("NAT"), "{}", a[0].warning);
        let a = advise(&ports(6_000, 4_000, 6, true, replied), true, &t);
        assert_eq!(a[0].subject.as_deref(), Some("tcp/53"));
        // Half exactly, forwarded, unanswered, NAT'd, or local addresses unknown: no.
        assert!(advise(&ports(5_000, 5_000, 17, true, replied), true, &t).is_empty());
        assert!(advise(&ports(6_000, 4_000, 17, false, replied), true, &t).is_empty());
        assert!(advise(&ports(6_000, 4_000, 17, true, IPS_NAT_DONE), true, &t).is_empty());
        assert!(
            advise(
                &ports(6_000, 4_000, 17, true, replied | IPS_SRC_NAT),
                true,
                &t
            )
            .is_empty()
        );
        let mut unknown = ports(6_000, 4_000, 17, true, replied);
        unknown.details.local_known = false;
        assert!(advise(&unknown, true, &t).is_empty());
        // A small table: no.
        assert!(advise(&ports(600, 400, 17, true, replied), true, &t).is_empty());
    }

    #[test]
    fn remove_tracking_needs_a_complete_table_with_no_use_shown() {
        let t = Thresholds::default();
        let s = ports(3_000, 7_000, 17, false, IPS_SEEN_REPLY);
        let a = advise(&s, true, &t);
        assert_eq!(kinds(&a), [Kind::RemoveTracking]);
        let snip = a[0].snippet.as_deref().unwrap();
        assert!(
            snip.contains("priority raw;") && snip.contains("\t\tnotrack\n"),
            "{snip}"
        );
        assert!(a[0].text.contains("does not read the ruleset"));
        // A partial dump, a smaller table, any NAT hook, mark or zone: no.
        assert!(advise(&s, false, &t).is_empty());
        assert!(advise(&ports(3_000, 6_999, 17, false, IPS_SEEN_REPLY), true, &t).is_empty());
        let tweaks: [fn(&mut crate::composition::Details); 4] = [
            |d| d.nat_hooked = 1,
            |d| d.nat = 1,
            |d| d.marked = 1,
            |d| d.zoned = 1,
        ];
        for tweak in tweaks {
            let mut x = s.clone();
            tweak(&mut x.details);
            assert!(advise(&x, true, &t).is_empty());
        }
    }

    fn tcp_states(close_wait: u64, established: u64) -> Summary {
        let mut c = Composition::new(10);
        for (state, n) in [(5u8, close_wait), (3, established)] {
            for i in 0..n {
                c.add(&Flow {
                    proto: 6,
                    tcp_state: Some(state),
                    ..udp(
                        [10, (i >> 8) as u8, i as u8, 1],
                        [10, 0, 0, 2],
                        443,
                        IPS_ASSURED | IPS_NAT_DONE,
                    )
                });
            }
        }
        summary(&c)
    }

    #[test]
    fn close_wait_fires_over_a_fifth_and_a_thousand() {
        let t = Thresholds::default();
        let a = advise(&tcp_states(1_001, 3_000), true, &t);
        assert_eq!(kinds(&a), [Kind::CloseWait]);
        assert_eq!(
            (a[0].entries, a[0].of, a[0].snippet.clone()),
            (1_001, 4_001, None)
        );
        assert!(a[0].text.contains("ss -tanp state close-wait"));
        // 1000 exactly, or exactly 20 %: no.
        assert!(advise(&tcp_states(1_000, 1_000), true, &t).is_empty());
        assert!(advise(&tcp_states(2_000, 8_000), true, &t).is_empty());
        assert_eq!(
            kinds(&advise(&tcp_states(2_001, 8_000), true, &t)),
            [Kind::CloseWait]
        );
    }

    #[test]
    fn a_sample_is_judged_by_the_table_it_comes_from() {
        let t = Thresholds::default();
        // 6000 of 9000 read: under the 10000 a table needs, unless the table is larger.
        let read = sources(6_000, 3_000);
        assert!(advise(&read, false, &t).is_empty());
        let sampled = read.sampled_from(Some(1_000_000));
        let a = advise(&sampled, false, &t);
        assert_eq!(kinds(&a), [Kind::SourceLimit]);
        // The limit is a quarter of the table, not of the sample.
        assert_eq!(a[0].limit, Some(250_000), "{}", a[0].text);
        assert!(
            a[0].text
                .contains("random sample: 9000 of the 1000000 entries in the table"),
            "{}",
            a[0].text
        );
        // 900 CLOSE_WAIT in a sample of 4200 stand for 214286 in the table.
        let cw = tcp_states(900, 3_300);
        assert!(advise(&cw, true, &t).is_empty());
        let cw = cw.sampled_from(Some(1_000_000));
        assert_eq!(kinds(&advise(&cw, false, &t)), [Kind::CloseWait]);
        // remove_tracking is a claim about every entry: never from a sample.
        let unused = ports(3_000, 7_000, 17, false, IPS_SEEN_REPLY).sampled_from(Some(50_000));
        assert!(advise(&unused, false, &t).is_empty());
        // 11 of 20 read is no ground for a ruleset change, however large the table.
        assert!(advise(&sources(11, 9).sampled_from(Some(1_000_000)), false, &t).is_empty());
    }

    #[test]
    fn a_sample_margin_shrinks_with_its_size_and_vanishes_at_the_table() {
        use crate::composition::Sample;
        let m = |read, table| Sample::new(read, Some(table)).margin_95;
        assert!((m(32_768, 10_000_000) - 0.005_413).abs() < 1e-5);
        assert!((m(32_768, 1_000_000) - 0.005_324).abs() < 1e-5);
        assert!((m(65_536, 10_000_000) - 0.003_816).abs() < 1e-5);
        // A table no larger than the sample, or of unknown size: a cut-short dump is a
        // sample all the same, with the margin of an unbounded table.
        let unbounded = 1.96 * (0.25f64 / 1_000.0).sqrt();
        assert!((m(1_000, 1_000) - unbounded).abs() < 1e-12);
        assert!((Sample::new(1_000, None).margin_95 - unbounded).abs() < 1e-12);
        // A count below the entries read (the table shrank) is raised to them.
        assert_eq!(Sample::new(500, Some(10)).table_entries, 500);
        assert!(Sample::new(0, None).margin_95.is_finite());
    }

    #[test]
    fn local_nets_from_fib_trie_and_if_inet6() {
        let l = LocalNets::parse(
            "Main:\n  +-- 0.0.0.0/0 3 0 5\n     +-- 127.0.0.0/8 2 0 2\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.255.255.255\n              /32 link BROADCAST\n           |-- 192.0.2.2\n              /32 host LOCAL\n           |-- 192.0.2.0\n              /24 link UNICAST\n",
            "00000000000000000000000000000001 01 80 10 80       lo\nzz\n",
        );
        let has = |f, a: &[u8]| {
            let mut x = [0u8; 16];
            x[..a.len()].copy_from_slice(a);
            l.contains(f, &x)
        };
        assert!(has(Family::V4, &[127, 2, 3, 4]));
        assert!(has(Family::V4, &[192, 0, 2, 2]));
        assert!(!has(Family::V4, &[192, 0, 2, 3]));
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(l.contains(Family::V6, &one));
        assert!(!has(Family::V6, &[0x20, 1]));
        assert_eq!(l.len(), 3);
    }
}
