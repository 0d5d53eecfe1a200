//! The traffic vocabulary shared by the simulator and the live benchmark: the kinds of
//! flow ([`Class`]), their rates over time ([`Profile`]), the policies ctune is measured
//! against ([`Peer`], whose rules are in [`crate::peers`]).

use serde::Deserialize;

use ctune_core::composition::{Family, Flow, IPS_ASSURED, IPS_SEEN_REPLY, governing_key};
use ctune_core::tunables;

/// `enum tcp_conntrack`: ESTABLISHED.
const TCP_ESTABLISHED: u8 = 3;
/// `enum tcp_conntrack`: TIME_WAIT.
const TCP_TIME_WAIT: u8 = 7;

/// A kind of traffic, with the timeout and assured state its entries get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// UDP that gets no reply (scans, DNS to a dead server): unassured, `udp_timeout`.
    UdpUnreplied,
    /// UDP answered within 2 s (DNS, NTP): unassured on 6.x, `udp_timeout`.
    UdpRequestResponse,
    /// TCP connect/close: lives through TIME_WAIT, assured.
    TcpShort,
    /// Long-lived idle TCP: `tcp_timeout_established`, assured.
    TcpIdle,
    /// UDP lookups through a NAT'd service whose two first packets race (the DNS A/AAAA
    /// race on Kubernetes nodes): one entry like `UdpRequestResponse`, and the twin
    /// packet lost to an unresolved insert clash (`drop` and `insert_failed`), at any
    /// utilisation and under every policy.
    DnsRace,
    /// A long-lived TCP session idle between its packets (SSH, a pooled database
    /// connection, a websocket with pings): ESTABLISHED, assured, refreshed to
    /// `tcp_timeout_established` at each packet; broken when its entry expires in a gap.
    /// Not a rate: scenarios give these as [`Sessions`].
    TcpSession,
    /// A UDP stream with keepalives (a VPN tunnel, a call): replied and assured, so
    /// `udp_timeout_stream`; broken likewise.
    UdpSession,
}

impl Class {
    /// How many classes there are.
    pub const COUNT: usize = 7;

    /// Every class, in the order the report and the model use.
    pub const ALL: [Class; Class::COUNT] = [
        Class::UdpUnreplied,
        Class::UdpRequestResponse,
        Class::TcpShort,
        Class::TcpIdle,
        Class::DnsRace,
        Class::TcpSession,
        Class::UdpSession,
    ];

    /// The classes a rate of new flows drives (the others are sessions).
    pub const RATED: [Class; 5] = [
        Class::UdpUnreplied,
        Class::UdpRequestResponse,
        Class::TcpShort,
        Class::TcpIdle,
        Class::DnsRace,
    ];

    /// The scenario key.
    pub fn name(self) -> &'static str {
        match self {
            Class::UdpUnreplied => "udp_unreplied",
            Class::UdpRequestResponse => "udp_request_response",
            Class::TcpShort => "tcp_short",
            Class::TcpIdle => "tcp_idle",
            Class::DnsRace => "dns_race",
            Class::TcpSession => "tcp",
            Class::UdpSession => "udp",
        }
    }

    /// The timeout sysctl in force when an entry of this class is created.
    pub fn timeout_key(self) -> &'static str {
        match self {
            Class::UdpUnreplied | Class::UdpRequestResponse | Class::DnsRace => {
                "nf_conntrack_udp_timeout"
            }
            Class::TcpShort => "nf_conntrack_tcp_timeout_time_wait",
            Class::TcpIdle | Class::TcpSession => tunables::ESTABLISHED,
            Class::UdpSession => "nf_conntrack_udp_timeout_stream",
        }
    }

    /// An entry of this class as a dump of the table shows it while it waits to expire
    /// (the protocol, TCP state and status bits the model gives it): what the agent's
    /// composition sample reads.
    ///
    /// - `udp_unreplied`: UDP, no reply;
    /// - `udp_request_response`, `dns_race`: UDP that has seen its reply, not assured
    ///   (answered within 2 s);
    /// - `tcp_short`: TCP in TIME_WAIT, replied and assured (the model folds the
    ///   handshake and data phase into the creation, so its entries spend their whole
    ///   modelled life in TIME_WAIT);
    /// - `tcp_idle`: TCP ESTABLISHED, replied and assured.
    pub fn flow(self) -> Flow {
        let (proto, tcp_state, status) = match self {
            Class::UdpUnreplied => (17, None, 0),
            Class::UdpRequestResponse | Class::DnsRace => (17, None, IPS_SEEN_REPLY),
            Class::TcpShort => (6, Some(TCP_TIME_WAIT), IPS_SEEN_REPLY | IPS_ASSURED),
            Class::TcpIdle | Class::TcpSession => {
                (6, Some(TCP_ESTABLISHED), IPS_SEEN_REPLY | IPS_ASSURED)
            }
            Class::UdpSession => (17, None, IPS_SEEN_REPLY | IPS_ASSURED),
        };
        Flow {
            family: Family::V4,
            src: None,
            dst: None,
            proto,
            dst_port: None,
            tcp_state,
            status,
            zone: 0,
            mark: 0,
            timeout: None,
        }
    }

    /// The timeout key a composition sample counts this class's entries under: the
    /// agent's own rule ([`governing_key`]) applied to [`Class::flow`], which agrees with
    /// [`Class::timeout_key`] for every class (checked by a test).
    pub fn governing_key(self) -> Option<&'static str> {
        governing_key(&self.flow())
    }

    /// Whether early drop may evict entries of this class.
    pub fn assured(self) -> bool {
        matches!(
            self,
            Class::TcpShort | Class::TcpIdle | Class::TcpSession | Class::UdpSession
        )
    }

    /// Whether entries of this class are sessions that can break.
    pub fn is_session(self) -> bool {
        matches!(self, Class::TcpSession | Class::UdpSession)
    }

    /// The class's slot in per-class arrays, in [`Class::ALL`]'s order.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A group of long-lived sessions, opening over their first gap and then each sending
/// one packet every `gap` seconds: session j of n opens j / n of a gap after `start`
/// (a new flow, admitted or lost as any other) and sends a gap after its opening and
/// every gap after that. A session whose entry has expired when its packet comes is
/// broken: behind NAT its mapping is gone, and under `ct state invalid drop` its packet
/// is dropped. A broken session stays broken (its application's reconnect is a new
/// flow, not modelled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sessions {
    /// [`Class::TcpSession`] or [`Class::UdpSession`].
    pub class: Class,
    /// How many.
    pub count: u64,
    /// Seconds between one session's packets.
    pub gap: f64,
    /// Seconds since the start of the run when they open.
    pub start: f64,
}

/// One term of a class's rate, in new flows per second; a class's rate is the sum of its
/// terms, so a flood on top of a ramp is two lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Profile {
    /// The same rate for the whole run.
    Constant {
        /// Flows per second.
        rate: f64,
    },
    /// `from` until `start`, linear to `to` at `end`, `to` after.
    Ramp {
        /// Rate up to `start`.
        from: f64,
        /// Rate from `end` on.
        to: f64,
        /// Seconds since the start of the run.
        start: f64,
        /// Seconds since the start of the run.
        end: f64,
    },
    /// `before` until `at`, `after` from then on.
    Step {
        /// Rate before `at`.
        before: f64,
        /// Rate from `at` on.
        after: f64,
        /// Seconds since the start of the run.
        at: f64,
    },
    /// `rate` in [start, end), nothing outside.
    Flood {
        /// Flows per second during the window.
        rate: f64,
        /// Seconds since the start of the run.
        start: f64,
        /// Seconds since the start of the run.
        end: f64,
    },
}

impl Profile {
    /// The rate at `t` seconds into the run.
    pub fn rate_at(&self, t: f64) -> f64 {
        match *self {
            Profile::Constant { rate } => rate,
            Profile::Ramp {
                from,
                to,
                start,
                end,
            } => {
                if t <= start {
                    from
                } else if t >= end {
                    to
                } else {
                    from + (to - from) * (t - start) / (end - start)
                }
            }
            Profile::Step { before, after, at } => {
                if t < at {
                    before
                } else {
                    after
                }
            }
            Profile::Flood { rate, start, end } => {
                if t >= start && t < end {
                    rate
                } else {
                    0.0
                }
            }
        }
    }

    /// Flows that should have started by `t` seconds into the run: the integral of
    /// [`Profile::rate_at`] from 0 to `t`, so a generator paces itself against it.
    pub fn flows_by(&self, t: f64) -> f64 {
        // The integral of a linear piece from a to b (rates ra, rb at its ends).
        let piece = |a: f64, b: f64, ra: f64, rb: f64| (b - a).max(0.0) * (ra + rb) / 2.0;
        match *self {
            Profile::Constant { rate } => rate * t,
            Profile::Ramp {
                from,
                to,
                start,
                end,
            } => {
                let before = piece(0.0, t.min(start), from, from);
                let within_end = t.clamp(start, end);
                let within = piece(start, within_end, from, self.rate_at(within_end));
                before + within + piece(end, t.max(end), to, to)
            }
            Profile::Step { before, after, at } => before * t.min(at) + after * (t - at).max(0.0),
            Profile::Flood { rate, start, end } => rate * (t.min(end) - start).max(0.0),
        }
    }
}

/// Which policy a run uses: ctune, and the designs it is measured against
/// ([`crate::peers`] has each one's rule and sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Peer {
    /// Nothing changes: the kernel's (or the scenario's) start values.
    #[serde(rename = "static")]
    Static,
    /// What kube-proxy does at its start, and nothing after.
    #[serde(rename = "kube-proxy")]
    KubeProxy,
    /// The seed's manual fix, once: max 131072, hash max / 4, generic 120 s,
    /// established 54000 s.
    #[serde(rename = "manual-fix")]
    ManualFix,
    /// Cilium's memory-ratio sizing, once at its start.
    #[serde(rename = "cilium")]
    Cilium,
    /// Calico's double-if-full.
    #[serde(rename = "calico")]
    Calico,
    /// pf's adaptive timeouts (FreeBSD's defaults).
    #[serde(rename = "pf")]
    Pf,
    /// Juniper SRX aggressive session aging.
    #[serde(rename = "srx")]
    Srx,
    /// Palo Alto accelerated aging.
    #[serde(rename = "palo-alto")]
    PaloAlto,
    /// ctune's agent loop (simulated) or `ctune run` (live).
    #[serde(rename = "ctune")]
    Ctune,
}

impl Peer {
    /// Every policy, in report order.
    pub const ALL: [Peer; 9] = [
        Peer::Static,
        Peer::KubeProxy,
        Peer::ManualFix,
        Peer::Cilium,
        Peer::Calico,
        Peer::Pf,
        Peer::Srx,
        Peer::PaloAlto,
        Peer::Ctune,
    ];

    /// The name in reports and scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Static => "static",
            Peer::KubeProxy => "kube-proxy",
            Peer::ManualFix => "manual-fix",
            Peer::Cilium => "cilium",
            Peer::Calico => "calico",
            Peer::Pf => "pf",
            Peer::Srx => "srx",
            Peer::PaloAlto => "palo-alto",
            Peer::Ctune => "ctune",
        }
    }

    /// The policy named `name` in a report.
    pub fn by_name(name: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Class;

    /// The key the agent's sample counts a class under is the one its entries live by
    /// in the model: the simulated agent weighs timeouts as the real one would.
    #[test]
    fn each_class_is_counted_under_the_timeout_it_lives_by() {
        for c in Class::ALL {
            assert_eq!(c.governing_key(), Some(c.timeout_key()), "{c:?}");
        }
    }
}
