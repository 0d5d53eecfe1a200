//! The traffic vocabulary shared by the simulator and the live benchmark: the kinds of
//! flow ([`Class`]), their rates over time ([`Profile`]), the policies ctune is measured
//! against ([`Peer`]) and what kube-proxy does at its start ([`kube_proxy`]).

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
}

impl Class {
    /// How many classes there are.
    pub const COUNT: usize = 5;

    /// Every class, in the order the report and the model use.
    pub const ALL: [Class; Class::COUNT] = [
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
        }
    }

    /// The timeout sysctl in force when an entry of this class is created.
    pub fn timeout_key(self) -> &'static str {
        match self {
            Class::UdpUnreplied | Class::UdpRequestResponse | Class::DnsRace => {
                "nf_conntrack_udp_timeout"
            }
            Class::TcpShort => "nf_conntrack_tcp_timeout_time_wait",
            Class::TcpIdle => tunables::ESTABLISHED,
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
            Class::TcpIdle => (6, Some(TCP_ESTABLISHED), IPS_SEEN_REPLY | IPS_ASSURED),
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
        matches!(self, Class::TcpShort | Class::TcpIdle)
    }

    /// The class's slot in per-class arrays, in [`Class::ALL`]'s order.
    pub fn index(self) -> usize {
        self as usize
    }
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

/// Which peer policy a run uses: ctune and the two it is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Peer {
    /// Nothing changes: the kernel's (or the scenario's) start values.
    #[serde(rename = "static")]
    Static,
    /// What kube-proxy does at its start, and nothing after.
    #[serde(rename = "kube-proxy")]
    KubeProxy,
    /// ctune's agent loop (simulated) or `ctune run` (live).
    #[serde(rename = "ctune")]
    Ctune,
}

impl Peer {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Static => "static",
            Peer::KubeProxy => "kube-proxy",
            Peer::Ctune => "ctune",
        }
    }
}

/// kube-proxy's conntrack settings, applied once at its start (`--conntrack-max-per-core`
/// 32768, `--conntrack-min` 131072, raise-only since it broke LXC users by lowering max).
pub mod kube_proxy {
    use ctune_core::tunables;

    /// `nf_conntrack_max` kube-proxy sets on a host with `cpus` CPUs.
    pub fn max(cpus: u64) -> u64 {
        131_072u64.max(32_768u64.saturating_mul(cpus))
    }

    /// The hash size kube-proxy writes for that max (it only ever grows the hash).
    pub fn buckets(max: u64) -> u64 {
        max / 4
    }

    /// The timeouts kube-proxy sets, in seconds.
    pub const TIMEOUTS: [(&str, u64); 2] = [
        (tunables::ESTABLISHED, 86_400),
        ("nf_conntrack_tcp_timeout_close_wait", 3_600),
    ];
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
