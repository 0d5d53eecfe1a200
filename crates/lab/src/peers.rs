//! The designs ctune is measured against, each as the rule its source states, over what
//! it can see of the table ([`View`]) and in the settings a Linux table has
//! ([`Setting`]): one home for every peer, run by both instruments (the simulator
//! answers the settings with its model, the live benchmark with sysctl writes).
//!
//! Sources are in `../shared/PEERS.md` and beside each rule; where a source leaves a
//! detail open, the assumption is written beside the code that makes it.
//!
//! Three kinds of rule:
//! - **sized once** at their start (kube-proxy, the seed's manual fix, Cilium): a max,
//!   a hash and maybe timeouts, then nothing;
//! - **grown** when full (Calico's double-if-full): max doubles, nothing is ever cut;
//! - **aged** when full (pf's adaptive timeouts, Juniper SRX's aggressive aging, Palo
//!   Alto's accelerated aging): every session's idle timeout is scaled or capped while
//!   the table is full, and, as those firewalls do, the new timeout counts from each
//!   entry's last packet, so entries already idle longer go at once ([`Aging`]).

use crate::traffic::Peer;
use ctune_core::tunables;

/// What a peer sees when it looks: the host and the table as they are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    /// Entries in the fullest namespace (the count the global max limits).
    pub count: u64,
    /// `nf_conntrack_max`.
    pub max: u64,
    /// `nf_conntrack_buckets`.
    pub buckets: u64,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Online CPUs.
    pub cpus: u64,
}

impl View {
    /// The share of max in use; 0 for an unlimited table.
    fn fill(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.count as f64 / self.max as f64
        }
    }
}

/// How an aging peer scales every session's idle timeout while its table is full:
/// `min(timeout x factor, cap)`, counted from the entry's last packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aging {
    /// Multiplies every timeout (1: unchanged).
    pub factor: f64,
    /// The most any timeout may be, in seconds (SRX's early-ageout).
    pub cap_secs: Option<u64>,
}

impl Aging {
    /// Timeouts as configured.
    pub const NORMAL: Aging = Aging {
        factor: 1.0,
        cap_secs: None,
    };

    /// The timeout in force for one configured as `secs` (at least 1 s: no firewall
    /// here ages a session at once for being idle no time at all).
    pub fn apply(&self, secs: u64) -> u64 {
        let scaled = ((secs as f64) * self.factor).floor() as u64;
        scaled.min(self.cap_secs.unwrap_or(u64::MAX)).max(1)
    }

    /// Whether timeouts are as configured.
    pub fn is_normal(&self) -> bool {
        *self == Aging::NORMAL
    }
}

/// One change a peer makes to the table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// `nf_conntrack_max`.
    Max(u64),
    /// `nf_conntrack_buckets` (the kernel rounds it to whole pages).
    Buckets(u64),
    /// A timeout sysctl in the peer's own (the host's) namespace, for new packets.
    Timeout {
        /// The sysctl.
        key: &'static str,
        /// Seconds.
        secs: u64,
    },
    /// Every timeout of every namespace scaled, existing entries included.
    Aging(Aging),
}

/// kube-proxy (`pkg/proxy/conntrack/sysctls.go` and the KubeProxyConntrackConfiguration
/// defaults): `--conntrack-max-per-core` 32768, `--conntrack-min` 131072, the product
/// capped at 1048576 (kubernetes PR #137002), raise-only (PR #142035); the hash to
/// max / 4 only when smaller; `tcpEstablishedTimeout` 24h and `tcpCloseWaitTimeout` 1h.
/// Its `udpTimeout` and `udpStreamTimeout` fields default to 0, which leaves the
/// kernel's values alone, so recent versions with their defaults set these two only.
pub mod kube_proxy {
    use ctune_core::tunables;

    /// The max kube-proxy wants on a host with `cpus` CPUs.
    pub fn max(cpus: u64) -> u64 {
        32_768u64.saturating_mul(cpus).clamp(131_072, 1_048_576)
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

/// The manual fix the seed's readers apply by hand (`../shared/PEERS.md`), once and for
/// good: max 131072, hash max / 4, generic 600 -> 120 s, established 5 d -> 54000 s.
/// Written with `sysctl -w` on the host, so in the host's namespace only.
pub mod manual_fix {
    use ctune_core::tunables;

    /// `nf_conntrack_max`.
    pub const MAX: u64 = 131_072;
    /// The hash: max / 4.
    pub const BUCKETS: u64 = MAX / 4;
    /// The timeouts, in seconds.
    pub const TIMEOUTS: [(&str, u64); 2] = [
        ("nf_conntrack_generic_timeout", 120),
        (tunables::ESTABLISHED, 54_000),
    ];
}

/// Cilium's dynamic map sizing (`pkg/maps/mapsize`, `calculateDynamicBPFMapSizes`),
/// once at its start: each CT map gets `default x (MemTotal x ratio) / footprint`
/// entries, clamped; the table is the TCP map and the "any" map together.
pub mod cilium {
    /// `bpf-map-dynamic-size-ratio`'s default.
    pub const RATIO: f64 = 0.0025;
    /// `ctMapEntriesGlobalTCPDefault` (512Ki) and `ctMapEntriesGlobalAnyDefault` (256Ki).
    pub const DEFAULTS: [u64; 2] = [1 << 19, 1 << 18];
    /// The auto-sizing minimums (`limitTableAutoGlobalTCPMin`, `...AnyMin`).
    pub const MINIMUMS: [u64; 2] = [1 << 17, 1 << 16];
    /// `LimitTableMax`: 16Mi entries per map.
    pub const LIMIT: u64 = 1 << 24;
    /// Bytes of every map at its default size together (`totalMapMemoryDefault`). The
    /// source computes it from its element sizes; this is the value its own calculation
    /// examples imply (512 MB: 33140 TCP entries; 4 GB: 265121; 16 GB: 1060485), which
    /// this formula reproduces to the entry (checked by a test).
    pub const FOOTPRINT: u64 = 21_233_664;

    /// Entries of one CT map with default size `default` between `min` and LIMIT.
    pub fn map_entries(memory_bytes: u64, default: u64, min: u64) -> u64 {
        let for_maps = (memory_bytes as f64 * RATIO) as u128;
        let entries = (u128::from(default) * for_maps / u128::from(FOOTPRINT)) as u64;
        entries.clamp(min, LIMIT)
    }

    /// The conntrack entries Cilium sizes for a host: both maps.
    pub fn max(memory_bytes: u64) -> u64 {
        (0..2)
            .map(|i| map_entries(memory_bytes, DEFAULTS[i], MINIMUMS[i]))
            .sum()
    }
}

/// Calico eBPF's `BPFMapSizeConntrackScaling: DoubleIfFull` (PR #9732, #10617): the table
/// doubles when a cleaner pass finds it at least 90 % full, or at least 85 % full on 3
/// passes in a row. No bound from memory; timeouts are the kernel's, never lowered.
pub mod calico {
    /// Doubles at once at or above this fill.
    pub const FULL: f64 = 0.90;
    /// Doubles after [`PASSES`] passes in a row at or above this fill.
    pub const NEARLY_FULL: f64 = 0.85;
    /// Passes in a row.
    pub const PASSES: u32 = 3;
    /// Seconds between cleaner passes. Assumption: Felix's conntrack scanner runs every
    /// 10 s by default; the scaling decision is taken once per pass.
    pub const PASS_SECS: f64 = 10.0;
}

/// pf's adaptive timeouts (pf.conf(5), `pf_state_expires()`): with S states, every
/// timeout is multiplied by (end - S) / (end - start) when start < S < end. FreeBSD's
/// defaults: start 60 % and end 120 % of the state limit, which is here the host's max
/// at the peer's start (pf's `set limit states` is fixed, as a Linux static max is).
pub mod pf {
    /// `adaptive.start` as a share of the limit.
    pub const START: f64 = 0.6;
    /// `adaptive.end` as a share of the limit.
    pub const END: f64 = 1.2;
    /// Assumption: pf computes a state's expiry whenever its purge thread checks it
    /// (the whole table every `interval`, 10 s, in slices every second); the model
    /// applies the factor to the whole table once a second, in steps of 1/32 so a
    /// factor that moves by a state does not re-age the table each time.
    pub const LOOK_SECS: f64 = 1.0;
    /// The factor's resolution.
    pub const STEPS: f64 = 32.0;

    /// The factor at `count` states of a `limit`.
    pub fn factor(count: u64, limit: u64) -> f64 {
        let (s, e, n) = (START * limit as f64, END * limit as f64, count as f64);
        if limit == 0 || n <= s {
            1.0
        } else if n >= e {
            0.0
        } else {
            (((e - n) / (e - s)) * STEPS).round() / STEPS
        }
    }
}

/// Juniper SRX aggressive session aging (`security flow aging`): above `high-watermark`
/// % of the session table every session's idle timeout becomes `early-ageout` (default
/// 20 s) until the table falls below `low-watermark` %. The defaults (100 / 100) act only
/// on a full table; these are Juniper's own configuration example (90 / 50).
pub mod srx {
    /// `high-watermark`.
    pub const HIGH: f64 = 0.90;
    /// `low-watermark`.
    pub const LOW: f64 = 0.50;
    /// `early-ageout`, seconds.
    pub const EARLY_AGEOUT: u64 = 20;
    /// Assumption: the watermarks are checked once a second.
    pub const LOOK_SECS: f64 = 1.0;
}

/// Palo Alto accelerated aging (Device > Setup > Session): at or above the threshold %
/// full, every session's configured idle time is divided by the scaling factor
/// (defaults 80 % and 2), for all sessions. Assumption: no hysteresis (the source names
/// none), checked once a second.
pub mod palo_alto {
    /// `Accelerated Aging Threshold`.
    pub const THRESHOLD: f64 = 0.80;
    /// `Accelerated Aging Scaling Factor`.
    pub const SCALING: f64 = 2.0;
    /// Seconds between checks.
    pub const LOOK_SECS: f64 = 1.0;
}

/// One peer's rule and what it remembers between looks.
#[derive(Debug, Clone)]
pub struct PeerRule {
    peer: Peer,
    /// pf's state limit: the max at the start.
    limit: u64,
    /// Calico: passes in a row at or above [`calico::NEARLY_FULL`].
    streak: u32,
    /// The aging in force.
    aging: Aging,
}

impl PeerRule {
    /// The rule of `peer`; `ctune` has none here (it is the core's controller).
    pub fn new(peer: Peer) -> PeerRule {
        PeerRule {
            peer,
            limit: 0,
            streak: 0,
            aging: Aging::NORMAL,
        }
    }

    /// Seconds between looks after the start; None for a rule that acts only at its
    /// start.
    pub fn interval(&self) -> Option<f64> {
        match self.peer {
            Peer::Calico => Some(calico::PASS_SECS),
            Peer::Pf => Some(pf::LOOK_SECS),
            Peer::Srx => Some(srx::LOOK_SECS),
            Peer::PaloAlto => Some(palo_alto::LOOK_SECS),
            Peer::Static | Peer::KubeProxy | Peer::ManualFix | Peer::Cilium | Peer::Ctune => None,
        }
    }

    /// What the peer does when it starts, on the table as it finds it.
    pub fn start(&mut self, v: &View) -> Vec<Setting> {
        self.limit = v.max;
        let mut out = Vec::new();
        match self.peer {
            Peer::KubeProxy => {
                let max = kube_proxy::max(v.cpus);
                if v.max != 0 && v.max < max {
                    out.push(Setting::Max(max));
                }
                if v.buckets < kube_proxy::buckets(max) {
                    out.push(Setting::Buckets(kube_proxy::buckets(max)));
                }
                out.extend(kube_proxy::TIMEOUTS.map(|(key, secs)| Setting::Timeout { key, secs }));
            }
            Peer::ManualFix => {
                out.push(Setting::Max(manual_fix::MAX));
                out.push(Setting::Buckets(manual_fix::BUCKETS));
                out.extend(manual_fix::TIMEOUTS.map(|(key, secs)| Setting::Timeout { key, secs }));
            }
            Peer::Cilium => {
                // Assumption: the hash at max / 4, the seed's rule (Cilium's own maps
                // are BPF hashes with no separate bucket count).
                let max = cilium::max(v.memory_bytes);
                out.push(Setting::Max(max));
                out.push(Setting::Buckets(max / 4));
            }
            _ => {}
        }
        out
    }

    /// What the peer does when it looks again, [`PeerRule::interval`] after the last.
    pub fn look(&mut self, v: &View) -> Vec<Setting> {
        let fill = v.fill();
        match self.peer {
            Peer::Calico => {
                self.streak = if fill >= calico::NEARLY_FULL {
                    self.streak + 1
                } else {
                    0
                };
                if fill >= calico::FULL || self.streak >= calico::PASSES {
                    self.streak = 0;
                    let max = v.max.saturating_mul(2).min(tunables::KERNEL_MAX_LIMIT);
                    let buckets = v
                        .buckets
                        .saturating_mul(2)
                        .min(tunables::buckets_limit(tunables::DEFAULT_PAGE_SIZE));
                    return vec![Setting::Max(max), Setting::Buckets(buckets)];
                }
                Vec::new()
            }
            Peer::Pf => self.age(Aging {
                factor: pf::factor(v.count, self.limit),
                cap_secs: None,
            }),
            Peer::Srx => {
                let on = if self.aging.is_normal() {
                    fill >= srx::HIGH
                } else {
                    fill >= srx::LOW
                };
                self.age(if on {
                    Aging {
                        factor: 1.0,
                        cap_secs: Some(srx::EARLY_AGEOUT),
                    }
                } else {
                    Aging::NORMAL
                })
            }
            Peer::PaloAlto => self.age(if fill >= palo_alto::THRESHOLD {
                Aging {
                    factor: 1.0 / palo_alto::SCALING,
                    cap_secs: None,
                }
            } else {
                Aging::NORMAL
            }),
            _ => Vec::new(),
        }
    }

    /// A change of aging, when it is one.
    fn age(&mut self, aging: Aging) -> Vec<Setting> {
        if aging == self.aging {
            return Vec::new();
        }
        self.aging = aging;
        vec![Setting::Aging(aging)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(count: u64, max: u64) -> View {
        View {
            count,
            max,
            buckets: max,
            memory_bytes: 4 << 30,
            cpus: 2,
        }
    }

    /// The source's own calculation examples, to the entry.
    #[test]
    fn cilium_sizes_as_its_examples_say() {
        const MB: u64 = 1 << 20;
        for (mem, tcp, any) in [
            (512 * MB, 131_072, 65_536), // both below the auto-sizing minimums
            (4096 * MB, 265_121, 132_560),
            (16384 * MB, 1_060_485, 530_242),
        ] {
            assert_eq!(
                cilium::map_entries(mem, cilium::DEFAULTS[0], cilium::MINIMUMS[0]),
                tcp
            );
            assert_eq!(
                cilium::map_entries(mem, cilium::DEFAULTS[1], cilium::MINIMUMS[1]),
                any
            );
        }
        // Unclamped, the 512 MB example: 33140 TCP entries.
        assert_eq!(cilium::map_entries(512 * MB, 1 << 19, 0), 33_140);
    }

    #[test]
    fn kube_proxy_is_raise_only_and_capped() {
        assert_eq!(kube_proxy::max(2), 131_072);
        assert_eq!(kube_proxy::max(8), 262_144);
        assert_eq!(kube_proxy::max(64), 1_048_576);
        let mut k = PeerRule::new(Peer::KubeProxy);
        let s = k.start(&view(0, 2_000_000));
        assert!(!s.iter().any(|s| matches!(s, Setting::Max(_))), "{s:?}");
        // The hash only when smaller than max / 4.
        let big_hash = View {
            buckets: 65_536,
            ..view(0, 65_536)
        };
        let s = PeerRule::new(Peer::KubeProxy).start(&big_hash);
        assert!(s.contains(&Setting::Max(131_072)), "{s:?}");
        assert!(!s.iter().any(|s| matches!(s, Setting::Buckets(_))), "{s:?}");
        let s = PeerRule::new(Peer::KubeProxy).start(&View {
            buckets: 16_384,
            ..view(0, 65_536)
        });
        assert!(s.contains(&Setting::Buckets(32_768)), "{s:?}");
    }

    #[test]
    fn calico_doubles_at_90_once_or_85_three_times() {
        let mut c = PeerRule::new(Peer::Calico);
        assert_eq!(c.look(&view(900, 1000)).first(), Some(&Setting::Max(2000)));
        assert!(c.look(&view(850, 1000)).is_empty());
        assert!(c.look(&view(860, 1000)).is_empty());
        assert_eq!(c.look(&view(870, 1000)).first(), Some(&Setting::Max(2000)));
        assert!(c.look(&view(840, 1000)).is_empty(), "the streak restarts");
    }

    #[test]
    fn pf_scales_between_start_and_end() {
        assert_eq!(pf::factor(600, 1000), 1.0);
        assert_eq!(pf::factor(900, 1000), 0.5);
        assert_eq!(pf::factor(1000, 1000), 11.0 / 32.0, "1/3, in 32nds");
        let mut p = PeerRule::new(Peer::Pf);
        p.start(&view(0, 1000));
        assert_eq!(
            p.look(&view(900, 1000)),
            vec![Setting::Aging(Aging {
                factor: 0.5,
                cap_secs: None
            })]
        );
        assert!(p.look(&view(901, 1000)).is_empty(), "same step: no re-age");
        assert_eq!(p.look(&view(10, 1000)), vec![Setting::Aging(Aging::NORMAL)]);
    }

    #[test]
    fn srx_ages_between_its_watermarks() {
        let mut s = PeerRule::new(Peer::Srx);
        assert!(s.look(&view(899, 1000)).is_empty());
        let on = s.look(&view(900, 1000));
        assert_eq!(
            on,
            vec![Setting::Aging(Aging {
                factor: 1.0,
                cap_secs: Some(20)
            })]
        );
        assert!(
            s.look(&view(600, 1000)).is_empty(),
            "above the low watermark"
        );
        assert_eq!(
            s.look(&view(499, 1000)),
            vec![Setting::Aging(Aging::NORMAL)]
        );
        let Setting::Aging(a) = on[0] else { panic!() };
        assert_eq!((a.apply(432_000), a.apply(10)), (20, 10));
    }

    #[test]
    fn palo_alto_halves_above_its_threshold() {
        let mut p = PeerRule::new(Peer::PaloAlto);
        let Setting::Aging(a) = p.look(&view(800, 1000))[0] else {
            panic!()
        };
        assert_eq!(a.apply(3600), 1800);
        assert_eq!(
            p.look(&view(799, 1000)),
            vec![Setting::Aging(Aging::NORMAL)]
        );
    }

    #[test]
    fn the_seed_fix_is_what_the_seed_writes() {
        let s = PeerRule::new(Peer::ManualFix).start(&view(0, 65_536));
        assert!(s.contains(&Setting::Max(131_072)) && s.contains(&Setting::Buckets(32_768)));
        assert!(s.contains(&Setting::Timeout {
            key: "nf_conntrack_generic_timeout",
            secs: 120
        }));
    }
}
