//! `ctune simulate`: a deterministic model of one namespace's conntrack table, driven by
//! the same decision code as the agent (the core's [`Controller`]: the step, the probe and the clock), so a
//! change to the policy can be judged against traffic that no test machine can make (an
//! hour of traffic against a 10M-entry table runs in about a second in a release build).
//!
//! # The model, and why each simplification is faithful enough
//!
//! - **Time** advances in fixed ticks (`tick`, 10 ms by default). Flows created within a
//!   tick are created together; the rate of each class is evaluated at the middle of the
//!   tick and fractional flows are carried to the next tick, so the number of flows over
//!   any window is exact to within one flow. 10 ms is below the agent's probe interval
//!   (50 ms) and far below every timeout the classes use (10 s and up), so nothing the policy sees is
//!   finer than a tick.
//! - **Entries are cohorts**, not individuals: per traffic class, a `BTreeMap` from
//!   (expiry tick, last packet tick) to the number of entries and the timeout they were
//!   given. Expiring a whole cohort is one map operation, so 10M entries cost what 1k
//!   cost; the map holds at most one key per tick of a class's timeout, whatever the entry
//!   count. The last packet is kept so an aging peer (pf, SRX, Palo Alto) can re-age
//!   every entry from it, as those firewalls do.
//! - **Classes** stand for the states that fill real tables. Which timeout applies, and
//!   whether the entry is assured (early drop skips assured entries), follows the kernel:
//!   - `udp_unreplied` (scans, DNS to a dead server): `nf_conntrack_udp_timeout`, not
//!     assured;
//!   - `udp_request_response` (DNS, NTP): a reply within 2 s keeps `udp_timeout` and, on
//!     6.x kernels, does *not* set assured (only a flow still active after 2 s is a
//!     "stream" and is assured), so these are early-droppable too;
//!   - `tcp_short` (connect, request, close): the entry outlives the connection by
//!     `tcp_timeout_time_wait`; assured since the handshake completed;
//!   - `tcp_idle` (long-lived, idle): `tcp_timeout_established`, assured;
//!   - `dns_race` (lookups through a NAT'd service, A and AAAA racing): an entry like
//!     `udp_request_response`, and one packet per flow lost to an unresolved insert
//!     clash, counted in `drop` and `insert_failed` as `nf_ct_resolve_clash` does, at any
//!     utilisation. Reported as clash drops, apart from the table-full loss.
//!
//!   Each class's entries also carry the protocol, TCP state and status bits a dump
//!   shows of them ([`Class::flow`]), so the agent's composition sample is counted by
//!   the agent's own rule ([`Class::governing_key`], `composition::governing_key`):
//!   unreplied UDP under `udp_timeout`; `udp_request_response` and `dns_race` (replied
//!   within 2 s, never assured, so never a stream) under `udp_timeout` too, as in the
//!   kernel; `tcp_short` under `tcp_timeout_time_wait` (its modelled life is all
//!   TIME_WAIT); `tcp_idle` under `tcp_timeout_established`.
//!
//!   The handshake and data phase of `tcp_short` (milliseconds) are folded into its
//!   creation. The timeout is the one in force when the entry is created: a changed
//!   timeout applies to an entry only at its next packet, and these idle or finished
//!   entries get none, so lowering a sysctl helps only new entries (kernel fact), which
//!   is exactly why the policy grows max first. (An aging peer's rule reaches existing
//!   entries: its firewall re-ages its own table, and the model does that for it.)
//! - **Sessions** (`traffic.sessions`, [`Sessions`]): long-lived TCP or UDP sessions,
//!   each an entry of [`Class::TcpSession`] or [`Class::UdpSession`] refreshed at every
//!   packet, a gap apart, to the timeout then in force; a session whose entry is gone at
//!   its packet is broken, the second harm the report counts. Gap and timeout compare to
//!   within a tick (due times round down to a tick, lives up), exactly for whole seconds
//!   at the default 10 ms; a scenario's session packets are bounded (100M).
//! - **Namespaces**: the host's own and any `tenants:`, each with its own traffic,
//!   cohorts and count against the one global max, all in one memory (the ceiling
//!   subtracts the others' entries, as on a real host). `host.used` is what everything
//!   else uses over time (MiB); MemAvailable is what it and the table leave.
//! - **Table full**: at count >= max a new flow first early-drops one unassured entry if
//!   the table holds any (the `early_drop` counter; the new flow is admitted), else it is
//!   lost (`drop` and one failed attempt). `max = 0` is unlimited. The kernel evicts
//!   every unassured entry of the first of up to 8 hash chains near the new flow's hash
//!   that has one, and may find none when unassured entries are sparse; evicting exactly
//!   one, from whichever unassured cohort expires soonest, conserves the count the same
//!   way (one admission per eviction) and differs only in which entry goes, which the
//!   kernel chooses by hash, blind to age. Lost flows are not retried (a dropped SYN
//!   would be retransmitted a second later and count again in the kernel's `drop`), so
//!   losses are counted once per flow, for every policy alike.
//! - **Garbage collection** is immediate: an expired entry leaves the count in the tick
//!   it expires. The kernel reaps lazily (the GC worker, or a lookup that meets the dead
//!   entry; early drop also reaps expired entries of the chains it scans), so the real
//!   count can lag briefly; the lag is short against the timeouts. The GC worker's own
//!   early drop (after a failed insert, at 95 % of max it also evicts closing TCP states
//!   such as TIME_WAIT) is not modelled: it would soften losses of static limits a
//!   little, once the table is already dropping.
//! - **Hash**: the bucket count is tracked (it is part of memory, and of the average
//!   chain length in [`RunDetails::peak_chain`]) but chain-length refusals are not
//!   modelled (`chainlength` stays 0), nor is the insert stall of a resize (~0.5 s per
//!   million entries: senders are delayed, not refused).
//! - **The host**: memory, CPUs and the slab entry size come from the scenario. Timeouts
//!   start at the 6.x kernel defaults in every namespace.
//! - **Policies** act at tick boundaries and their changes take effect at once (a sysctl
//!   write takes microseconds). `ctune` is the core's [`Controller`] in [`Mode::Agent`],
//!   the step and the clock the agent runs, answered by the model instead of the kernel
//!   (this file decides nothing of the step): a full step every `agent.interval` from
//!   t = 0 (observe, decide, at the onset of pressure apply the global changes and sample
//!   within the step, apply the rest, start the background samples of the namespaces
//!   still pressed), and a probe at the paced interval that takes an immediate step when
//!   the counts call for it. A sample reads the table whole as the step left it; the
//!   background round's is taken in at the next step. Unlike the agent's dump (bounded at
//!   2 s, on a thread of its own), the model's never fails, is never
//!   partial and always ends before the next step. The peers (`kube-proxy`,
//!   `manual-fix`, `cilium`, `calico`, `pf`, `srx`, `palo-alto`) are their rules in
//!   [`crate::peers`], started at t = 0 and looking at their own interval; their settings
//!   take effect at once (a max and hash globally, a timeout in the host's namespace, an
//!   aging in every namespace, re-ageing each entry from its last packet). `static`
//!   changes nothing.
//!
//! Everything is integer or deterministic floating-point arithmetic in a fixed order, so
//! a scenario gives the same report byte for byte on every run.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::scenario_report::{self, PolicyRun, Sample, ScenarioReport};
use ctune_core::ceiling;
use ctune_core::config::{self, Config, ConfigError};
use ctune_core::controller::{Action, Controller, Event, Memory, Mode, SampleTarget, Taken, Wake};
use ctune_core::model::NetnsId;
use ctune_core::model::meminfo::MemInfo;
use ctune_core::model::stat::ConntrackStat;
use ctune_core::model::{Access, Global, Governed, Host, ModuleState, NamespaceObs, Observation};
use ctune_core::plan::{Change, Plan, Target};
use ctune_core::pressure::Level;
use ctune_core::probe::ProbeRead;
use ctune_core::tunables;
use ctune_core::units;

use crate::peers::{Aging, PeerRule, Setting, View};
use crate::traffic::{Class, Peer, Profile, Sessions};

/// Kernel 6.x default timeouts: the start of every run, and what "lowered" is
/// measured against.
pub use ctune_core::tunables::KERNEL_DEFAULT_TIMEOUTS;

/// The initial namespace's inode on Linux (`PROC_NET_INIT_INO`), so the simulated
/// namespace looks like the host's to the policy.
const INIT_NET_INODE: u64 = 0xF000_0000;

/// The most session packets a scenario may hold (sum of count x duration / gap): each
/// is a few map operations, so 100M is about ten seconds a policy in a release build.
const MAX_SESSION_PACKETS: f64 = 1e8;

/// Highest rate a profile may ask for: beyond what any host creates (one core makes
/// ~77k flows/s), and low enough that flows per tick stay exact in an f64.
const MAX_RATE: f64 = 1e8;

// ---------------------------------------------------------------------------------------
// Scenario: the file format and its validation.

/// The simulated host: what the ceiling and kube-proxy's formula are made from.
#[derive(Debug, Clone, PartialEq)]
pub struct SimHost {
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// Online CPUs.
    pub cpus: u64,
    /// Slab bytes per entry.
    pub entry_bytes: u64,
    /// Memory everything else uses over time, in MiB (the terms add up): MemAvailable
    /// is what it and the table leave.
    pub used: Vec<Profile>,
    /// What the host shows of its role, as the agent reads it (`role: auto` decides
    /// from them); None: not stated, and auto holds `host`.
    pub facts: Option<ctune_core::role::HostFacts>,
    /// The role an operator would pick by hand for this host: the baseline that
    /// `role: auto` must do no worse than (a test runs both).
    pub role: ctune_core::config::Role,
}

const MIB: f64 = 1024.0 * 1024.0;

impl SimHost {
    /// Bytes everything but the table uses at `t` seconds, at most MemTotal.
    pub fn used_at(&self, t: f64) -> u64 {
        let mib: f64 = self.used.iter().map(|p| p.rate_at(t)).sum();
        ((mib * MIB) as u64).min(self.memory_bytes)
    }

    /// MemAvailable at `t` with the table costing `table_bytes`.
    pub fn available_at(&self, t: f64, table_bytes: u64) -> u64 {
        self.memory_bytes
            .saturating_sub(self.used_at(t))
            .saturating_sub(table_bytes)
    }
}

/// A validated scenario, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name of the report and of the files `--out` writes.
    pub name: String,
    /// Free text from the file, for people.
    pub description: Option<String>,
    /// Simulated time.
    pub duration: Duration,
    /// Model resolution.
    pub tick: Duration,
    /// Time between timeline samples in the report.
    pub sample_interval: Duration,
    /// `nf_conntrack_max` at t = 0 for every policy.
    pub start_max: u64,
    /// `nf_conntrack_buckets` at t = 0 for every policy.
    pub start_buckets: u64,
    /// The host.
    pub host: SimHost,
    /// Policies to run, in report order.
    pub policies: Vec<Peer>,
    /// Rate terms per class (every class present, maybe with no terms), in the host's
    /// own (initial) namespace.
    pub traffic: BTreeMap<Class, Vec<Profile>>,
    /// Long-lived sessions in the host's own namespace.
    pub sessions: Vec<Sessions>,
    /// Other network namespaces (containers, tenants) with traffic of their own: each
    /// fills its own count against the one global max, in the one shared memory.
    pub tenants: Vec<Tenant>,
    /// The config the `ctune` policy decides with (`ctune_config:`, else the defaults).
    /// Probes happen at most once per tick whatever it says.
    pub ctune: Config,
}

/// A namespace of its own with its own traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Its name in the observation and the report.
    pub name: String,
    /// Rate terms per class.
    pub traffic: BTreeMap<Class, Vec<Profile>>,
    /// Long-lived sessions.
    pub sessions: Vec<Sessions>,
}

/// A scenario that cannot be run, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// YAML that does not match the schema (the message carries line, column and key).
    #[error("invalid scenario {path}:\n{message}")]
    Parse {
        /// The scenario file.
        path: PathBuf,
        /// serde-saphyr's rendering, with the offending line.
        message: String,
    },
    /// Values that parse but cannot be simulated.
    #[error("invalid scenario {path}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// Line of the key, when found.
        line: Option<usize>,
        /// Dotted key path.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// `ctune_config:` is not a valid ctune config (its lines are the scenario's).
    #[error("in ctune_config: {0}")]
    Config(#[from] ConfigError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    duration: String,
    #[serde(default)]
    tick: Option<String>,
    #[serde(default)]
    sample_interval: Option<String>,
    #[serde(default)]
    start: Option<RawStart>,
    host: RawHost,
    #[serde(default)]
    policies: Option<Vec<Peer>>,
    traffic: RawTraffic,
    #[serde(default)]
    tenants: Vec<RawTenant>,
    #[serde(default)]
    ctune_config: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStart {
    #[serde(default)]
    max: Option<u64>,
    #[serde(default)]
    buckets: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    memory: RawSize,
    cpus: u64,
    #[serde(default)]
    entry_bytes: Option<u64>,
    /// MiB used by everything but the table, as rate profiles over time.
    #[serde(default)]
    used: Vec<RawProfile>,
    /// What the host shows of its role (`ctune_core::role::HostFacts`' fields).
    #[serde(default)]
    facts: Option<ctune_core::role::HostFacts>,
    /// The role an operator would pick by hand.
    #[serde(default)]
    role: ctune_core::config::Role,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    N(u64),
    S(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: String,
    traffic: RawTraffic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    #[serde(default)]
    udp_unreplied: Vec<RawProfile>,
    #[serde(default)]
    udp_request_response: Vec<RawProfile>,
    #[serde(default)]
    tcp_short: Vec<RawProfile>,
    #[serde(default)]
    tcp_idle: Vec<RawProfile>,
    #[serde(default)]
    dns_race: Vec<RawProfile>,
    #[serde(default)]
    sessions: Vec<RawSessions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    proto: RawProto,
    count: u64,
    gap: String,
    #[serde(default)]
    start: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawProto {
    Tcp,
    Udp,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawProfile {
    Constant(f64),
    Ramp(RawRamp),
    Step(RawStep),
    Flood(RawFlood),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRamp {
    from: f64,
    to: f64,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    before: f64,
    after: f64,
    at: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlood {
    rate: f64,
    start: String,
    end: String,
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates scenario text; `path` names the file in messages and gives the
/// default name (its stem).
pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| ScenarioError::Parse {
        path: path.to_path_buf(),
        message: e
            .to_string()
            .replace("<input>:", &format!("{}:", path.display())),
    })?;
    let v = Validator { text, path };
    let name = v.name(raw.name)?;
    let (duration, tick, sample_interval) = v.timing(
        &raw.duration,
        raw.tick.as_deref(),
        raw.sample_interval.as_deref(),
    )?;
    let dur_s = duration.as_secs_f64();
    let host = v.host(raw.host, dur_s)?;
    let (start_max, start_buckets) = v.start(raw.start, host.memory_bytes)?;
    let policies = v.policies(raw.policies)?;
    let (traffic, sessions, tenants) = v.namespaces(raw.traffic, raw.tenants, dur_s)?;
    let ctune = v.ctune(raw.ctune_config.as_ref(), &policies, tick)?;
    Ok(Scenario {
        name,
        description: raw.description,
        duration,
        tick,
        sample_interval,
        start_max,
        start_buckets,
        host,
        policies,
        traffic,
        sessions,
        tenants,
        ctune,
    })
}

/// The parts of a scenario, each checked with the key and line it came from.
impl Validator<'_> {
    /// The scenario's name, by default the file's stem.
    fn name(&self, name: Option<String>) -> Result<String, ScenarioError> {
        let (v, path) = (self, self.path);
        let name = match name {
            Some(n) => n,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into()),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(v.fail(
                "name",
                format!("{name:?} must be letters, digits, '-', '_' or '.' (it names the files --out writes)"),
            ));
        }
        Ok(name)
    }

    /// Duration, tick and sample interval, each within what a run can hold.
    fn timing(
        &self,
        duration: &str,
        tick: Option<&str>,
        sample_interval: Option<&str>,
    ) -> Result<(Duration, Duration, Duration), ScenarioError> {
        let v = self;
        let duration = v.duration("duration", duration)?;
        if duration.is_zero() || duration > Duration::from_secs(7 * 86400) {
            return Err(v.fail("duration", "must be more than 0s and at most 7d".into()));
        }
        let tick = match tick {
            Some(t) => v.duration("tick", t)?,
            None => Duration::from_millis(10),
        };
        if tick < Duration::from_millis(1) || tick > Duration::from_secs(1) {
            return Err(v.fail("tick", "must be between 1ms and 1s".into()));
        }
        let ticks = duration.as_nanos().div_ceil(tick.as_nanos());
        if ticks > 100_000_000 {
            return Err(v.fail(
                "tick",
                format!("{ticks} ticks over the duration: at most 100M (use a longer tick)"),
            ));
        }
        let sample_interval = match sample_interval {
            Some(s) => v.duration("sample_interval", s)?,
            None => Duration::from_millis(100),
        };
        if sample_interval < tick || sample_interval > duration {
            return Err(v.fail(
                "sample_interval",
                "must be between the tick and the duration".into(),
            ));
        }
        if duration.as_nanos() / sample_interval.as_nanos() > 1_000_000 {
            return Err(v.fail(
                "sample_interval",
                "more than 1M samples per run: use a longer interval".into(),
            ));
        }
        Ok((duration, tick, sample_interval))
    }

    /// The host: memory, CPUs, the slab entry, and what everything else uses.
    fn host(&self, raw: RawHost, dur_s: f64) -> Result<SimHost, ScenarioError> {
        let v = self;
        let memory_bytes = match raw.memory {
            RawSize::N(n) => n,
            RawSize::S(s) => units::parse_size(&s).map_err(|e| v.fail("host.memory", e))?,
        };
        if memory_bytes < 64 << 20 {
            return Err(v.fail("host.memory", "must be at least 64MiB".into()));
        }
        if !(1..=65536).contains(&raw.cpus) {
            return Err(v.fail("host.cpus", "must be between 1 and 65536".into()));
        }
        let entry_bytes = raw.entry_bytes.unwrap_or(256);
        if !(64..=65536).contains(&entry_bytes) {
            return Err(v.fail(
                "host.entry_bytes",
                format!("{entry_bytes} is not a plausible slab size (64 ..= 65536)"),
            ));
        }
        let mut used = Vec::new();
        for (i, item) in raw.used.into_iter().enumerate() {
            used.push(v.profile("host.used", i, item, dur_s)?);
        }
        Ok(SimHost {
            memory_bytes,
            cpus: raw.cpus,
            entry_bytes,
            used,
            facts: raw.facts,
            role: raw.role,
        })
    }

    /// max and buckets at t = 0: the kernel's defaults for the memory unless given.
    fn start(&self, raw: Option<RawStart>, memory_bytes: u64) -> Result<(u64, u64), ScenarioError> {
        let v = self;
        let default_buckets = kernel_default_buckets(memory_bytes);
        let (start_max, start_buckets) = match raw {
            None => (default_buckets, default_buckets),
            Some(s) => (
                s.max.unwrap_or(default_buckets),
                s.buckets.unwrap_or(default_buckets),
            ),
        };
        if start_max > tunables::KERNEL_MAX_LIMIT {
            return Err(v.fail(
                "start.max",
                format!("{start_max} exceeds the kernel's limit (INT_MAX)"),
            ));
        }
        if start_buckets == 0
            || start_buckets > tunables::buckets_limit(tunables::DEFAULT_PAGE_SIZE)
        {
            return Err(v.fail(
                "start.buckets",
                format!(
                    "must be between 1 and {} (INT_MAX/8)",
                    tunables::buckets_limit(tunables::DEFAULT_PAGE_SIZE)
                ),
            ));
        }
        // The kernel allocates whole 512-bucket blocks and reads back the rounded size.
        let start_buckets = tunables::round_buckets(start_buckets, tunables::DEFAULT_PAGE_SIZE);
        Ok((start_max, start_buckets))
    }

    /// The policies to run, each once (every one by default).
    fn policies(&self, raw: Option<Vec<Peer>>) -> Result<Vec<Peer>, ScenarioError> {
        let v = self;
        let policies = raw.unwrap_or_else(|| Peer::ALL.to_vec());
        if policies.is_empty() {
            return Err(v.fail("policies", "lists no policy to run".into()));
        }
        let mut seen = BTreeSet::new();
        for p in &policies {
            if !seen.insert(p.name()) {
                return Err(v.fail("policies", format!("{} is listed twice", p.name())));
            }
        }
        Ok(policies)
    }

    /// The host's traffic and sessions, and the tenants', with the bound on sessions'
    /// packets and at least one rate or session somewhere.
    fn namespaces(
        &self,
        raw: RawTraffic,
        raw_tenants: Vec<RawTenant>,
        dur_s: f64,
    ) -> Result<(Rates, Vec<Sessions>, Vec<Tenant>), ScenarioError> {
        let v = self;
        let (traffic, sessions) = v.traffic("traffic", raw, dur_s)?;
        let mut tenants = Vec::new();
        for (i, t) in raw_tenants.into_iter().enumerate() {
            if t.name.is_empty() || t.name == "init" {
                return Err(v.fail(
                    &format!("tenants[{i}].name"),
                    "a tenant needs a name of its own (not init)".into(),
                ));
            }
            let (traffic, sessions) =
                v.traffic(&format!("tenants[{i}].traffic"), t.traffic, dur_s)?;
            tenants.push(Tenant {
                traffic,
                sessions,
                name: t.name,
            });
        }
        let packets: f64 = sessions
            .iter()
            .chain(tenants.iter().flat_map(|t| t.sessions.iter()))
            .map(|s| s.count as f64 * dur_s / s.gap)
            .sum();
        if packets > MAX_SESSION_PACKETS {
            return Err(v.fail(
                "traffic.sessions",
                format!(
                    "{packets:.0} session packets over the run: at most {MAX_SESSION_PACKETS:.0} (fewer sessions, longer gaps or a shorter run)"
                ),
            ));
        }
        if traffic
            .values()
            .chain(tenants.iter().flat_map(|t| t.traffic.values()))
            .all(Vec::is_empty)
            && sessions.is_empty()
            && tenants.iter().all(|t| t.sessions.is_empty())
        {
            return Err(v.fail("traffic", "has no rate for any class".into()));
        }
        Ok((traffic, sessions, tenants))
    }

    /// ctune's config from `ctune_config:` (the defaults without one), which must let the
    /// model probe as often as it asks.
    fn ctune(
        &self,
        raw: Option<&serde_json::Value>,
        policies: &[Peer],
        tick: Duration,
    ) -> Result<Config, ScenarioError> {
        let (v, text, path) = (self, self.text, self.path);
        let ctune = match raw {
            None | Some(serde_json::Value::Null) => Config::default(),
            Some(value @ (serde_json::Value::Object(_) | serde_json::Value::String(_))) => {
                config::parse(&ctune_config_text(text, value), path)?
            }
            Some(_) => {
                return Err(v.fail(
                    "ctune_config",
                    "expected a mapping of ctune config keys (as in /etc/ctune/ctune.yaml)".into(),
                ));
            }
        };
        if policies.contains(&Peer::Ctune) && tick > ctune.agent.probe_interval {
            return Err(v.fail(
                "tick",
                format!(
                    "{} is longer than ctune's agent.probe_interval {}: the model could not probe that often",
                    humantime::format_duration(tick),
                    humantime::format_duration(ctune.agent.probe_interval)
                ),
            ));
        }
        Ok(ctune)
    }
}

/// The kernel's default hash size (and, since 5.15, max) for a host's memory:
/// RAM / 16384 / 8, 65536 above 1 GiB, 262144 above 4 GiB, at least 1024.
pub fn kernel_default_buckets(memory_bytes: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    let b = if memory_bytes > 4 * GIB {
        262_144
    } else if memory_bytes > GIB {
        65_536
    } else {
        (memory_bytes / 16384 / 8).max(1024)
    };
    tunables::round_buckets(b, tunables::DEFAULT_PAGE_SIZE)
}

/// Rate terms per class.
type Rates = BTreeMap<Class, Vec<Profile>>;

struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Validator<'_> {
    fn fail(&self, key: &str, message: String) -> ScenarioError {
        self.fail_at(key, config::locate(self.text, key), message)
    }

    fn fail_at(&self, key: &str, line: Option<usize>, message: String) -> ScenarioError {
        ScenarioError::Invalid {
            path: self.path.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        }
    }

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ScenarioError> {
        config::parse_duration(text).map_err(|e| self.fail(key, e))
    }

    /// Every class's rate terms and the sessions under `at` (`traffic`,
    /// `tenants[0].traffic`).
    fn traffic(
        &self,
        at: &str,
        raw: RawTraffic,
        dur_s: f64,
    ) -> Result<(Rates, Vec<Sessions>), ScenarioError> {
        let RawTraffic {
            udp_unreplied,
            udp_request_response,
            tcp_short,
            tcp_idle,
            dns_race,
            sessions,
        } = raw;
        let mut traffic = BTreeMap::new();
        for (class, items) in [
            (Class::UdpUnreplied, udp_unreplied),
            (Class::UdpRequestResponse, udp_request_response),
            (Class::TcpShort, tcp_short),
            (Class::TcpIdle, tcp_idle),
            (Class::DnsRace, dns_race),
        ] {
            let mut profiles = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                profiles.push(self.profile(&format!("{at}.{}", class.name()), i, item, dur_s)?);
            }
            traffic.insert(class, profiles);
        }
        let sessions = sessions
            .into_iter()
            .enumerate()
            .map(|(i, raw)| self.sessions(&format!("{at}.sessions"), i, raw, dur_s))
            .collect::<Result<_, _>>()?;
        Ok((traffic, sessions))
    }

    /// One group of sessions: 1 to 1M of them, a gap of 1 s to 1 d, opening in the run.
    fn sessions(
        &self,
        list: &str,
        index: usize,
        raw: RawSessions,
        dur_s: f64,
    ) -> Result<Sessions, ScenarioError> {
        let line = locate_item(self.text, list, index);
        let key = |f: &str| format!("{list}[{index}].{f}");
        if !(1..=1_000_000).contains(&raw.count) {
            return Err(self.fail_at(
                &key("count"),
                line,
                format!("{} sessions: must be 1 to 1000000", raw.count),
            ));
        }
        let gap =
            config::parse_duration(&raw.gap).map_err(|e| self.fail_at(&key("gap"), line, e))?;
        if gap < Duration::from_secs(1) || gap > Duration::from_secs(86_400) {
            return Err(self.fail_at(&key("gap"), line, "must be between 1s and 1d".into()));
        }
        let start = self.at(list, index, "start", raw.start.as_deref(), 0.0)?;
        if start >= dur_s {
            return Err(self.fail_at(
                &key("start"),
                line,
                format!("{start}s is not within the run"),
            ));
        }
        Ok(Sessions {
            class: match raw.proto {
                RawProto::Tcp => Class::TcpSession,
                RawProto::Udp => Class::UdpSession,
            },
            count: raw.count,
            gap: gap.as_secs_f64(),
            start,
        })
    }

    fn profile(
        &self,
        list: &str,
        index: usize,
        raw: RawProfile,
        duration: f64,
    ) -> Result<Profile, ScenarioError> {
        let list = list.to_string();
        let line = locate_item(self.text, &list, index);
        let (kind, p) = match raw {
            RawProfile::Constant(rate) => ("constant", Profile::Constant { rate }),
            RawProfile::Ramp(r) => {
                let start = self.at(&list, index, "ramp.start", r.start.as_deref(), 0.0)?;
                let end = self.at(&list, index, "ramp.end", r.end.as_deref(), duration)?;
                (
                    "ramp",
                    Profile::Ramp {
                        from: r.from,
                        to: r.to,
                        start,
                        end,
                    },
                )
            }
            RawProfile::Step(s) => {
                let at = self.at(&list, index, "step.at", Some(&s.at), 0.0)?;
                (
                    "step",
                    Profile::Step {
                        before: s.before,
                        after: s.after,
                        at,
                    },
                )
            }
            RawProfile::Flood(f) => {
                let start = self.at(&list, index, "flood.start", Some(&f.start), 0.0)?;
                let end = self.at(&list, index, "flood.end", Some(&f.end), duration)?;
                (
                    "flood",
                    Profile::Flood {
                        rate: f.rate,
                        start,
                        end,
                    },
                )
            }
        };
        let key = format!("{list}[{index}].{kind}");
        let rates: Vec<f64> = match p {
            Profile::Constant { rate } | Profile::Flood { rate, .. } => vec![rate],
            Profile::Ramp { from, to, .. } => vec![from, to],
            Profile::Step { before, after, .. } => vec![before, after],
        };
        if let Some(bad) = rates
            .iter()
            .find(|r| !(r.is_finite() && (0.0..=MAX_RATE).contains(*r)))
        {
            return Err(self.fail_at(
                &key,
                line,
                format!("rate {bad} is out of range 0 ..= {MAX_RATE} new flows per second"),
            ));
        }
        match p {
            Profile::Ramp { start, end, .. } | Profile::Flood { start, end, .. }
                if start >= end =>
            {
                Err(self.fail_at(
                    &key,
                    line,
                    format!("start {start}s is not before end {end}s"),
                ))
            }
            _ => Ok(p),
        }
    }

    /// A time within the run, in seconds.
    fn at(
        &self,
        list: &str,
        index: usize,
        field: &str,
        text: Option<&str>,
        default: f64,
    ) -> Result<f64, ScenarioError> {
        let key = format!("{list}[{index}].{field}");
        let Some(text) = text else {
            return Ok(default);
        };
        let line = locate_item(self.text, list, index);
        let d = config::parse_duration(text).map_err(|e| self.fail_at(&key, line, e))?;
        Ok(d.as_secs_f64())
    }
}

/// Line (1-based) of item `index` of the block list under a dotted key, else the key's.
fn locate_item(text: &str, dotted: &str, index: usize) -> Option<usize> {
    let key_line = config::locate(text, dotted)?;
    let lines: Vec<&str> = text.lines().collect();
    let indent_of = |l: &str| l.len() - l.trim_start().len();
    let key_indent = indent_of(lines[key_line - 1]);
    let mut item_indent = None;
    let mut n = 0;
    for (i, line) in lines.iter().enumerate().skip(key_line) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let indent = indent_of(line);
        if indent < key_indent || (indent == key_indent && !t.starts_with('-')) {
            break;
        }
        if t.starts_with('-') && *item_indent.get_or_insert(indent) == indent {
            if n == index {
                return Some(i + 1);
            }
            n += 1;
        }
    }
    Some(key_line)
}

/// The `ctune_config:` value as config text whose line numbers are the scenario's, so a
/// config error names the scenario's line: the block's lines dedented, every other line
/// blank.
fn ctune_config_text(text: &str, value: &serde_json::Value) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(at) = lines.iter().position(|l| {
        l.strip_prefix("ctune_config")
            .is_some_and(|r| r.trim_start().starts_with(':'))
    }) else {
        return fallback_text(value, 0);
    };
    let rest = lines[at]
        .split_once(':')
        .map_or("", |(_, r)| r)
        .split(" #")
        .next()
        .unwrap_or("")
        .trim();
    let mut out = "\n".repeat(at + 1);
    if (rest.starts_with('|') || rest.starts_with('>'))
        && let serde_json::Value::String(s) = value
    {
        out.push_str(s);
        return out;
    }
    if !rest.is_empty() {
        return fallback_text(value, at);
    }
    let block: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| {
            let t = l.trim_start();
            t.is_empty() || t.starts_with('#') || l.len() > t.len()
        })
        .copied()
        .collect();
    let indent = block
        .iter()
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for l in block {
        let t = l.trim_start();
        if !t.is_empty() && !t.starts_with('#') {
            out.push_str(&l[indent..]);
        }
        out.push('\n');
    }
    out
}

/// A flow-style or scalar value on the key's own line: JSON is YAML.
fn fallback_text(value: &serde_json::Value, at: usize) -> String {
    let body = match value {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    format!("{}{body}\n", "\n".repeat(at))
}

// ---------------------------------------------------------------------------------------
// The table.

/// Entries of one class that saw their last packet in the same tick.
#[derive(Debug, Clone, Copy)]
struct Cohort {
    /// How many.
    n: u64,
    /// The timeout sysctl's value at that packet, in seconds: what their life is made of
    /// (an aging peer scales it, counted from the packet).
    base_secs: u64,
}

/// A group of sessions in one table, and where each one is.
struct SessionGroup {
    spec: Sessions,
    /// Per session: the tick of its last packet; None before it opens, once broken, or
    /// when it could not open.
    last: Vec<Option<u64>>,
    /// The next session to open or send, and in which round of gaps (0: opening).
    next: usize,
    round: u64,
}

impl SessionGroup {
    fn new(spec: Sessions) -> SessionGroup {
        SessionGroup {
            last: vec![None; spec.count as usize],
            spec,
            next: 0,
            round: 0,
        }
    }

    /// The tick at which session `j` opens (round 0) or sends (round r, r gaps later).
    fn due(&self, j: usize, round: u64, tick_ns: u128) -> u64 {
        let gap_ns = (self.spec.gap * 1e9) as u128;
        let start_ns = (self.spec.start * 1e9) as u128;
        let n = u128::from(self.spec.count.max(1));
        let at = start_ns + j as u128 * gap_ns / n + u128::from(round) * gap_ns;
        (at / tick_ns).min(u128::from(u64::MAX)) as u64
    }

    /// The sessions due at or before tick `k`, in order, each with its round; moves the
    /// cursor past them.
    fn take_due(&mut self, k: u64, tick_ns: u128) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        while !self.last.is_empty() && self.due(self.next, self.round, tick_ns) <= k {
            out.push((self.next, self.round));
            self.next += 1;
            if self.next == self.last.len() {
                (self.next, self.round) = (0, self.round + 1);
            }
        }
        out
    }
}

/// The conntrack table of one namespace, as cohorts of entries per class (the limit it
/// fills against is the host's, in [`Tables`]).
struct Table {
    timeouts: BTreeMap<String, u64>,
    /// Per class: (expiry tick, last packet tick) -> entries.
    cohorts: [BTreeMap<(u64, u64), Cohort>; Class::COUNT],
    /// Per session class: last packet tick -> expiry tick, to find a session's entry.
    expiry_of: [BTreeMap<u64, u64>; Class::COUNT],
    /// How an aging peer scales every entry's timeout (normal for the others).
    aging: Aging,
    sessions: Vec<SessionGroup>,
    count: u64,
    unassured: u64,
    /// Packets lost to a full table.
    drop: u64,
    /// Packets lost to insert clashes (`dns_race`): in `drop` and `insert_failed` too.
    clash: u64,
    early_drop: u64,
    attempts: u64,
    /// Sessions opened, and broken.
    held: u64,
    broken: u64,
}

/// Ticks of `secs` seconds, at least one.
fn ticks(secs: u64, tick_ns: u128) -> u64 {
    (u128::from(secs) * 1_000_000_000)
        .div_ceil(tick_ns)
        .max(1)
        .min(u128::from(u64::MAX / 4)) as u64
}

impl Table {
    fn new(sessions: &[Sessions]) -> Table {
        Table {
            timeouts: KERNEL_DEFAULT_TIMEOUTS
                .iter()
                .map(|(k, v)| ((*k).to_string(), *v))
                .collect(),
            cohorts: Default::default(),
            expiry_of: Default::default(),
            aging: Aging::NORMAL,
            sessions: sessions.iter().map(|s| SessionGroup::new(*s)).collect(),
            count: 0,
            unassured: 0,
            drop: 0,
            clash: 0,
            early_drop: 0,
            attempts: 0,
            held: 0,
            broken: 0,
        }
    }

    /// Takes `n` entries out of the count (expired, evicted or aged out).
    fn forget(&mut self, class: Class, n: u64) {
        self.count -= n;
        if !class.assured() {
            self.unassured -= n;
        }
    }

    /// Removes every cohort whose expiry tick is `k` or earlier.
    fn expire(&mut self, k: u64) {
        for class in Class::ALL {
            while let Some(entry) = self.cohorts[class.index()].first_entry() {
                let (e, a) = *entry.key();
                if e > k {
                    break;
                }
                let n = entry.remove().n;
                self.expiry_of[class.index()].remove(&a);
                self.forget(class, n);
            }
        }
    }

    fn insert(&mut self, class: Class, n: u64, k: u64, tick_ns: u128) {
        if n == 0 {
            return;
        }
        let base_secs = self.timeouts.get(class.timeout_key()).copied().unwrap_or(0);
        let e = k + ticks(self.aging.apply(base_secs), tick_ns);
        self.cohorts[class.index()]
            .entry((e, k))
            .or_insert(Cohort { n: 0, base_secs })
            .n += n;
        if class.is_session() {
            self.expiry_of[class.index()].insert(k, e);
        }
        self.count += n;
        if !class.assured() {
            self.unassured += n;
        }
    }

    /// Applies a new aging to every entry, as an aging firewall does: each one's timeout
    /// scaled and counted from its last packet, so entries idle longer go at once.
    fn reage(&mut self, aging: Aging, k: u64, tick_ns: u128) {
        self.aging = aging;
        for class in Class::ALL {
            let old = std::mem::take(&mut self.cohorts[class.index()]);
            for ((_, a), c) in old {
                let e = a + ticks(aging.apply(c.base_secs), tick_ns);
                if e <= k {
                    self.expiry_of[class.index()].remove(&a);
                    self.forget(class, c.n);
                    continue;
                }
                if class.is_session() {
                    self.expiry_of[class.index()].insert(a, e);
                }
                self.cohorts[class.index()].insert((e, a), c);
            }
        }
    }

    /// Evicts `n` unassured entries, soonest to expire first.
    fn evict(&mut self, mut n: u64) {
        while n > 0 {
            let pick = Class::ALL
                .iter()
                .filter(|c| !c.assured())
                .filter_map(|c| {
                    self.cohorts[c.index()]
                        .first_key_value()
                        .map(|(k, _)| (k.0, *c))
                })
                .min();
            let Some((_, class)) = pick else {
                break;
            };
            let mut entry = self.cohorts[class.index()]
                .first_entry()
                .expect("picked cohort exists");
            let take = n.min(entry.get().n);
            entry.get_mut().n -= take;
            if entry.get().n == 0 {
                entry.remove();
            }
            self.forget(class, take);
            n -= take;
        }
    }

    /// Admits one tick's new flows: free slots first, then one early drop per flow while
    /// unassured entries remain, the rest lost. Shares go to classes in proportion to
    /// their arrivals, so no class is favoured by the order of evaluation. Returns the
    /// flows admitted per class.
    fn admit(
        &mut self,
        arrivals: [u64; Class::COUNT],
        max: u64,
        k: u64,
        tick_ns: u128,
    ) -> [u64; Class::COUNT] {
        let total: u64 = arrivals.iter().sum();
        self.attempts += total;
        // The racing twin of each lookup is lost at confirm time whatever the table holds.
        self.clash += arrivals[Class::DnsRace.index()];
        if total == 0 || max == 0 {
            for class in Class::ALL {
                self.insert(class, arrivals[class.index()], k, tick_ns);
            }
            return arrivals;
        }
        let free = max.saturating_sub(self.count).min(total);
        let got = share(&arrivals, free);
        let mut rest = [0u64; Class::COUNT];
        for class in Class::ALL {
            let i = class.index();
            self.insert(class, got[i], k, tick_ns);
            rest[i] = arrivals[i] - got[i];
        }
        let waiting: u64 = rest.iter().sum();
        let evicted = waiting.min(self.unassured);
        self.evict(evicted);
        self.early_drop += evicted;
        self.drop += waiting - evicted;
        let more = share(&rest, evicted);
        for class in Class::ALL {
            self.insert(class, more[class.index()], k, tick_ns);
        }
        std::array::from_fn(|i| got[i] + more[i])
    }

    /// One tick's flows: the sessions due to send do (the entry refreshed to the timeout
    /// in force or, when it is gone, the session broken; a packet needs no slot), then
    /// the new flows and the sessions due to open are admitted together against `max`,
    /// shared in proportion as any arrivals are.
    fn tick_flows(&mut self, mut arrivals: [u64; Class::COUNT], max: u64, k: u64, tick_ns: u128) {
        let mut opening = Vec::with_capacity(self.sessions.len());
        for g in 0..self.sessions.len() {
            let class = self.sessions[g].spec.class;
            let mut opens = Vec::new();
            for (j, round) in self.sessions[g].take_due(k, tick_ns) {
                if round == 0 {
                    opens.push(j);
                } else if let Some(a) = self.sessions[g].last[j] {
                    self.sessions[g].last[j] = self.refresh(class, a, k, tick_ns);
                }
            }
            arrivals[class.index()] += opens.len() as u64;
            opening.push(opens);
        }
        // Session classes have no rated arrivals: what was admitted of them is openings,
        // handed to the groups in order.
        let mut admitted = self.admit(arrivals, max, k, tick_ns);
        for (g, opens) in opening.into_iter().enumerate() {
            let class = self.sessions[g].spec.class;
            let take = (admitted[class.index()] as usize).min(opens.len());
            admitted[class.index()] -= take as u64;
            for &j in &opens[..take] {
                self.sessions[g].last[j] = Some(k);
            }
            self.held += take as u64;
        }
    }

    /// One session's packet at `k`, its entry last refreshed at `a`: the new last packet,
    /// or None when the entry was gone (the session is broken).
    fn refresh(&mut self, class: Class, a: u64, k: u64, tick_ns: u128) -> Option<u64> {
        let Some(&e) = self.expiry_of[class.index()].get(&a) else {
            self.broken += 1;
            return None;
        };
        let map = &mut self.cohorts[class.index()];
        let c = map.get_mut(&(e, a)).expect("a session's cohort");
        c.n -= 1;
        if c.n == 0 {
            map.remove(&(e, a));
            self.expiry_of[class.index()].remove(&a);
        }
        self.forget(class, 1);
        self.insert(class, 1, k, tick_ns);
        Some(k)
    }
}

/// The host's conntrack: the one global max and hash, and a table per namespace (the
/// host's own first, then the tenants').
struct Tables {
    max: u64,
    buckets: u64,
    spaces: Vec<Table>,
}

impl Tables {
    /// Entries of every namespace together.
    /// The table's total as the probe reads the slab: the model has no per-CPU caches.
    fn slab(&self) -> ctune_core::probe::TotalReading {
        ctune_core::probe::TotalReading {
            objects: self.total(),
            unseen: 0,
        }
    }

    fn total(&self) -> u64 {
        self.spaces.iter().map(|t| t.count).sum()
    }

    /// The busiest namespace's entries.
    fn busiest(&self) -> u64 {
        self.spaces.iter().map(|t| t.count).max().unwrap_or(0)
    }

    /// The table of the namespace with this inode.
    fn by_inode(&mut self, inode: u64) -> Option<&mut Table> {
        let i = inode.checked_sub(INIT_NET_INODE)?;
        self.spaces.get_mut(usize::try_from(i).ok()?)
    }

    /// [`Tables::by_inode`], to read.
    fn by_inode_ref(&self, inode: u64) -> Option<&Table> {
        let i = inode.checked_sub(INIT_NET_INODE)?;
        self.spaces.get(usize::try_from(i).ok()?)
    }

    /// What the agent would read from the kernel now.
    fn observation(&self, host: &SimHost, names: &[String], t: f64, ext: u64) -> Observation {
        let table_bytes = ceiling::memory_now(self.total(), self.buckets, host.entry_bytes, ext);
        Observation {
            module: ModuleState::BuiltIn,
            in_initial_netns: Some(true),
            global: Global {
                max: self.max,
                buckets: Some(self.buckets),
                hashsize: Some(self.buckets),
                expect_max: Some((self.buckets / 256).max(1)),
                write_access: Access::WRITABLE,
                per_netns_max: false,
            },
            host: Host {
                cpus: host.cpus,
                memory: MemInfo {
                    total_bytes: host.memory_bytes,
                    available_bytes: Some(host.available_at(t, table_bytes)),
                },
                entry_bytes: host.entry_bytes,
                entry_bytes_source: "scenario".into(),
                // The model is of an x86 host.
                page_size: tunables::DEFAULT_PAGE_SIZE,
                table_entries: Some(self.total()),
                // Reclaim is not modelled; MemAvailable under the reserve stands for it.
                memory_stall: None,
                facts: host.facts.clone(),
            },
            namespaces: self
                .spaces
                .iter()
                .zip(names)
                .enumerate()
                .map(|(i, (t, name))| t.namespace(name, INIT_NET_INODE + i as u64))
                .collect(),
            notes: Vec::new(),
        }
    }
}

impl Table {
    /// This namespace as the agent reads it.
    fn namespace(&self, name: &str, inode: u64) -> NamespaceObs {
        let counters: BTreeMap<String, u64> = [
            ("drop", self.drop + self.clash),
            ("early_drop", self.early_drop),
            ("chainlength", 0),
            ("insert_failed", self.clash),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        NamespaceObs {
            id: NetnsId {
                name: name.into(),
                inode,
            },
            count: Some(self.count),
            stat: Some(ConntrackStat {
                entries: self.count,
                counters,
                // The model stands for the kernel's counters, whichever file shows them.
                ..Default::default()
            }),
            timeouts: self.timeouts.clone(),
            timeouts_unread: false,
            counters_unread: false,
            error: None,
            handle: None,
            composition: None,
        }
    }
}

impl Table {
    /// What the agent's composition sample of this table reads at `taken_at`: every
    /// entry, counted under the key [`Class::governing_key`] names (a dump that never
    /// stops at a bound: the model's tables are read whole).
    fn composition(&self, taken_at: Duration) -> Governed {
        let mut by_key = BTreeMap::new();
        for class in Class::ALL {
            let n: u64 = self.cohorts[class.index()].values().map(|c| c.n).sum();
            if let (Some(key), true) = (class.governing_key(), n > 0) {
                *by_key.entry(key.to_string()).or_insert(0) += n;
            }
        }
        Governed {
            entries: self.count,
            by_key,
            partial: false,
            taken_at,
            age_secs: 0,
        }
    }
}

/// Splits `amount` (at most the sum of `weights`) in proportion to `weights`, remainders
/// to the largest fractions (ties: class order): exact and deterministic.
fn share(weights: &[u64; Class::COUNT], amount: u64) -> [u64; Class::COUNT] {
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let mut out = [0u64; Class::COUNT];
    if total == 0 || amount == 0 {
        return out;
    }
    let amount = u128::from(amount).min(total);
    let mut rems = [(0u128, 0usize); Class::COUNT];
    let mut given = 0u128;
    for (i, w) in weights.iter().enumerate() {
        let exact = amount * u128::from(*w);
        out[i] = (exact / total) as u64;
        given += exact / total;
        rems[i] = (exact % total, i);
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rems.iter().take((amount - given) as usize) {
        out[*i] += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Policies and runs.

/// A timeout a policy changed, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutChange {
    /// Milliseconds since the start of the run.
    pub at_ms: u64,
    /// The namespace ("init", or a tenant's name).
    pub netns: String,
    /// The sysctl.
    pub key: String,
    /// Before.
    pub old: u64,
    /// After.
    pub new: u64,
}

/// What the report does not show of a run, for tests and for judging the policy: how
/// often it stepped, whether an invariant ever broke, and when timeouts moved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunDetails {
    /// The policy.
    pub policy: String,
    /// Full steps on the regular grid (`ctune` only).
    pub regular_steps: u64,
    /// Extra steps the probe asked for (`ctune` only).
    pub early_steps: u64,
    /// Probes (`ctune` only): each is a wakeup of the agent.
    pub probes: u64,
    /// Probes that read every count, not only the table's total (`ctune` only).
    pub count_probes: u64,
    /// The highest ceiling any of ctune's plans computed.
    pub ceiling: Option<u64>,
    /// Max changes that set max above the ceiling of their own plan (must stay 0).
    pub max_above_ceiling: u64,
    /// Ticks that ended with more entries than max (must stay 0).
    pub ticks_over_max: u64,
    /// Every max change: (milliseconds, old, new).
    pub max_changes: Vec<(u64, u64, u64)>,
    /// Hash resizes.
    pub resizes: u64,
    /// The highest average chain length seen (2 x count / buckets: both tuples hashed);
    /// the kernel refuses inserts into chains longer than 50 to 80.
    pub peak_chain: f64,
    /// Every timeout change, in order.
    pub timeout_changes: Vec<TimeoutChange>,
    /// Every composition sample ctune took (`ctune` only): (milliseconds, namespace,
    /// the sample), in order.
    pub compositions: Vec<(u64, String, Governed)>,
    /// The first step that decided with a composition sample, in milliseconds.
    pub first_decided_with_composition: Option<u64>,
    /// The most the table cost above what the host could spare at that moment
    /// (MemTotal - other use - ctune's reserve), in bytes; 0 when it always fit.
    pub peak_over_spare: u64,
    /// Every aging an aging peer set: (milliseconds, the aging).
    pub agings: Vec<(u64, Aging)>,
}

impl RunDetails {
    /// The value of `key` in namespace `netns` at `at_ms` (after the changes made then):
    /// the kernel default unless a change says otherwise.
    pub fn timeout_at(&self, netns: &str, key: &str, at_ms: u64) -> Option<u64> {
        let start = KERNEL_DEFAULT_TIMEOUTS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v);
        self.timeout_changes
            .iter()
            .rev()
            .find(|c| c.at_ms <= at_ms && c.netns == netns && c.key == key)
            .map(|c| c.new)
            .or(start)
    }

    /// The keys (short names) below their kernel default in some namespace at some
    /// moment from `from_ms` on.
    pub fn lowered_from(&self, from_ms: u64) -> BTreeSet<String> {
        let below = |key: &str, v: u64| {
            KERNEL_DEFAULT_TIMEOUTS
                .iter()
                .any(|(k, d)| *k == key && v < *d)
        };
        let mut out = BTreeSet::new();
        let mut ns_keys: BTreeSet<(&str, &str)> = BTreeSet::new();
        for c in &self.timeout_changes {
            ns_keys.insert((&c.netns, &c.key));
            if c.at_ms >= from_ms && below(&c.key, c.new) {
                out.insert(c.key.clone());
            }
        }
        // In force when `from_ms` came.
        for (netns, key) in ns_keys {
            if self
                .timeout_at(netns, key, from_ms)
                .is_some_and(|v| below(key, v))
            {
                out.insert(key.to_string());
            }
        }
        out.into_iter()
            .map(|k| k.trim_start_matches("nf_conntrack_").to_string())
            .collect()
    }
}

/// A scenario's report, with the details of each run in the same order.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// What `ctune simulate` prints.
    pub report: ScenarioReport,
    /// One per run.
    pub details: Vec<RunDetails>,
}

/// ctune's agent over the model: the core's [`Controller`] in [`Mode::Agent`], the same
/// step and clock the agent runs, driven with the model for a kernel. Nothing of the
/// step is decided here: this answers the controller's actions (observe the tables,
/// apply a change to them, sample a table) and keeps the timeline.
struct Agent {
    ctl: Controller,
    /// The namespaces' names, host first.
    names: Vec<String>,
    /// The latest step's ceiling, for the timeline.
    ceiling: Option<u64>,
    /// The latest step's level in its most pressed namespace, for the timeline.
    level: Option<Level>,
    /// The background round's samples: a dump of the model takes no time, so they are
    /// ready at the next step's collection, as a real round is a step or two later.
    sampling: Vec<Taken>,
}

impl Agent {
    fn new(cfg: Config, names: Vec<String>) -> Agent {
        Agent {
            ctl: Controller::new(cfg, Mode::Agent, Memory::default(), true, Duration::ZERO),
            names,
            ceiling: None,
            level: None,
            sampling: Vec::new(),
        }
    }

    /// The agent at `now`: a regular step or a probe when one is due; a probe may take
    /// an early step.
    fn act(&mut self, now_ns: u128, tables: &mut Tables, host: &SimHost, d: &mut RunDetails) {
        let now = duration_of(now_ns);
        match self.ctl.wake(now) {
            Wake::Step => {
                d.regular_steps += 1;
                self.step(now, tables, host, d);
            }
            Wake::Probe { until_step, read } => {
                d.probes += 1;
                // The model's total is exact: the kernel's slab count, without its slack.
                if read == ProbeRead::Total
                    && !self.ctl.probed_total(now, until_step, Some(tables.slab()))
                {
                    return;
                }
                d.count_probes += 1;
                let counts: Vec<(u64, u64)> = tables
                    .spaces
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (INIT_NET_INODE + i as u64, t.count))
                    .collect();
                if self.ctl.probed(now, until_step, &counts) {
                    d.early_steps += 1;
                    self.step(now, tables, host, d);
                }
            }
            Wake::Nothing => {}
        }
    }

    /// One step of the controller, answered by the model at `now` (no time passes in
    /// the model during a step).
    fn step(&mut self, now: Duration, tables: &mut Tables, host: &SimHost, d: &mut RunDetails) {
        let ext = self.ctl.config().ceiling.extension_bytes;
        let mut obs = tables.observation(host, &self.names, now.as_secs_f64(), ext);
        // The model's observation holds every key: the keys the action names are a subset.
        let Action::Observe { .. } = self.ctl.begin(now) else {
            unreachable!("a step begins with an observation")
        };
        let mut action = self.ctl.handle(&mut obs, Event::Observed, now);
        loop {
            let event = match action {
                Action::Done { plan, .. } => return self.done(now, &obs, &plan, d),
                Action::Observe { .. } => unreachable!("one observation a step"),
                // The model reads every namespace's timeouts: none is left unread.
                Action::ReadTimeouts { .. } => unreachable!("the model reads every timeout"),
                Action::Collect { .. } => Event::Collected {
                    samples: std::mem::take(&mut self.sampling),
                    running: false,
                },
                // The model keeps no files and no state file.
                Action::Save => Event::Saved(true),
                Action::Persist { .. } => Event::Persisted,
                Action::Apply(changes) => {
                    let at_ms = now.as_millis() as u64;
                    for ch in &changes {
                        apply(ch, tables, at_ms, d);
                    }
                    Event::Applied(vec![true; changes.len()])
                }
                Action::Sample { targets, .. } => Event::Sampled(sample(&targets, tables, now, d)),
                Action::StartSampling { targets, .. } => {
                    self.sampling = sample(&targets, tables, now, d);
                    Event::Started(true)
                }
            };
            action = self.ctl.handle(&mut obs, event, now);
        }
    }

    /// The timeline's record of a step that decided `plan` on `obs`.
    fn done(&mut self, now: Duration, obs: &Observation, plan: &Plan, d: &mut RunDetails) {
        if obs.namespaces.iter().any(|n| n.composition.is_some()) {
            d.first_decided_with_composition
                .get_or_insert(now.as_millis() as u64);
        }
        d.ceiling = Some(
            d.ceiling
                .map_or(plan.ceiling.value, |c| c.max(plan.ceiling.value)),
        );
        if plan
            .global_change(tunables::MAX)
            .is_some_and(|ch| ch.new > plan.ceiling.value)
        {
            d.max_above_ceiling += 1;
        }
        // For the timeline only: nothing above reads them.
        self.ceiling = Some(plan.ceiling.value);
        self.level = plan.namespaces.iter().map(|v| v.level).max();
    }
}

/// One change into the model, recorded for the timeline: every change takes effect.
fn apply(ch: &Change, tables: &mut Tables, at_ms: u64, d: &mut RunDetails) {
    match (ch.key.as_str(), &ch.target) {
        (tunables::MAX, _) => {
            d.max_changes.push((at_ms, tables.max, ch.new));
            tables.max = ch.new;
        }
        (tunables::BUCKETS, _) => {
            d.resizes += 1;
            tables.buckets = ch.new;
        }
        (key, Target::Namespace { netns }) => {
            if let Some(t) = tables.by_inode(netns.inode) {
                set_timeout(t, &netns.name, key, ch.new, at_ms, d);
            }
        }
        (_, Target::Global) => {}
    }
}

/// The model's composition samples of `targets` at `now`: a dump that never fails and
/// reads the table whole, as the step left it.
fn sample(
    targets: &[SampleTarget],
    tables: &Tables,
    now: Duration,
    d: &mut RunDetails,
) -> Vec<Taken> {
    targets
        .iter()
        .filter_map(|t| {
            let g = tables.by_inode_ref(t.id.inode)?.composition(now);
            d.compositions
                .push((now.as_millis() as u64, t.id.name.clone(), g.clone()));
            Some(Taken {
                id: t.id.clone(),
                result: Ok(g),
                at: now,
            })
        })
        .collect()
}

fn set_timeout(
    table: &mut Table,
    netns: &str,
    key: &str,
    new: u64,
    at_ms: u64,
    d: &mut RunDetails,
) {
    let old = table.timeouts.insert(key.to_string(), new).unwrap_or(0);
    if old != new {
        d.timeout_changes.push(TimeoutChange {
            at_ms,
            netns: netns.to_string(),
            key: key.to_string(),
            old,
            new,
        });
    }
}

/// A peer's rule over the model: started at t = 0, then looking every
/// [`PeerRule::interval`] (`static` and `ctune` have none here).
struct PeerRun {
    rule: PeerRule,
    next_ns: u128,
}

impl PeerRun {
    fn new(kind: Peer) -> Option<PeerRun> {
        (!matches!(kind, Peer::Static | Peer::Ctune)).then(|| PeerRun {
            rule: PeerRule::new(kind),
            next_ns: 0,
        })
    }

    /// The rule at tick `k`, when it is due: what it sets, into the model.
    fn act(
        &mut self,
        k: u64,
        tick_ns: u128,
        tables: &mut Tables,
        host: &SimHost,
        d: &mut RunDetails,
    ) {
        let now_ns = u128::from(k) * tick_ns;
        if now_ns < self.next_ns {
            return;
        }
        let view = View {
            count: tables.busiest(),
            max: tables.max,
            buckets: tables.buckets,
            memory_bytes: host.memory_bytes,
            cpus: host.cpus,
        };
        let settings = if k == 0 {
            self.rule.start(&view)
        } else {
            self.rule.look(&view)
        };
        self.next_ns = match self.rule.interval() {
            Some(secs) => now_ns + (secs * 1e9) as u128,
            None => u128::MAX,
        };
        let at_ms = (now_ns / 1_000_000) as u64;
        for s in settings {
            apply_setting(s, tables, (at_ms, k, tick_ns), d);
        }
    }
}

/// One peer setting into the model, recorded as the agent's changes are: the max and
/// hash globally, a timeout in the host's namespace, an aging in every namespace.
fn apply_setting(
    s: Setting,
    tables: &mut Tables,
    (at_ms, k, tick_ns): (u64, u64, u128),
    d: &mut RunDetails,
) {
    match s {
        Setting::Max(v) if v != tables.max => {
            d.max_changes.push((at_ms, tables.max, v));
            tables.max = v;
        }
        Setting::Buckets(v) => {
            let v = tunables::round_buckets(v, tunables::DEFAULT_PAGE_SIZE);
            if v != tables.buckets {
                d.resizes += 1;
                tables.buckets = v;
            }
        }
        Setting::Timeout { key, secs } => {
            set_timeout(&mut tables.spaces[0], "init", key, secs, at_ms, d);
        }
        Setting::Aging(aging) => {
            d.agings.push((at_ms, aging));
            for t in &mut tables.spaces {
                t.reage(aging, k, tick_ns);
            }
        }
        Setting::Max(_) => {}
    }
}

fn duration_of(ns: u128) -> Duration {
    Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
}

/// Runs every policy of the scenario from the same start.
pub fn run(sc: &Scenario) -> Simulation {
    let mut runs = Vec::new();
    let mut details = Vec::new();
    for kind in &sc.policies {
        let (r, d) = run_policy(sc, *kind);
        runs.push(r);
        details.push(d);
    }
    Simulation {
        report: ScenarioReport {
            scenario: sc.name.clone(),
            source: "simulated".into(),
            runs,
        },
        details,
    }
}

/// ctune alone on `sc` with a memory budget of `bytes` for the whole table (its floor
/// and its cap both that much, so neither its share of MemTotal nor the scenario's own
/// cap decides): ctune at the memory a peer took, to compare the two on equal terms.
/// What the host can spare still bounds it, as it bounds every run.
pub fn ctune_with_memory(sc: &Scenario, bytes: u64) -> (PolicyRun, RunDetails) {
    let mut cfg = sc.ctune.clone();
    cfg.edit_ceiling(|c| {
        c.memory_floor = bytes.max(1 << 20);
        c.memory_cap = Some(bytes.max(1 << 20));
    });
    let sc = Scenario {
        ctune: cfg,
        policies: vec![Peer::Ctune],
        ..sc.clone()
    };
    run_policy(&sc, Peer::Ctune)
}

/// How a peer's run compares with ctune's in the same scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The row is ctune's own.
    Ctune,
    /// The peer's table took more than the host could spare (the reserve for everything
    /// else): it won nothing the host could afford, and is out of the comparison.
    OverSpare,
    /// Not better than ctune on both harms.
    NotBetter,
    /// Fewer flows harmed and no more sessions broken than ctune at the same memory: a
    /// finding about ctune's policy.
    Better,
}

/// Whether `peer` is better than `ctune` on both harms: fewer flows harmed and no more
/// sessions broken. Fewer by more than one flow in 100,000 attempts: below that is the
/// model's resolution, not a policy (at equal memory, ctune's max and hash round to
/// whole pages of buckets, a few entries apart from a peer's exact numbers).
pub fn better_on_both(peer: &PolicyRun, ctune: &PolicyRun) -> bool {
    harmed(peer) + ctune.attempts / 100_000 < harmed(ctune)
        && peer.sessions_broken <= ctune.sessions_broken
}

/// One policy's row of a peer comparison.
#[derive(Debug, Clone)]
pub struct PeerRow {
    /// The policy's run.
    pub run: PolicyRun,
    /// ctune given the memory this peer's table took, when that was more than ctune's
    /// own run took ([`ctune_with_memory`]).
    pub ctune_at_equal: Option<PolicyRun>,
    /// The comparison.
    pub verdict: Verdict,
}

/// Every policy of a scenario against ctune, at equal memory.
#[derive(Debug, Clone)]
pub struct PeerComparison {
    /// The scenario.
    pub scenario: String,
    /// One row per policy, in the report's order.
    pub rows: Vec<PeerRow>,
}

/// Compares every peer of `sim` (a run of `sc`) with ctune on both harms: with ctune's
/// own run when the peer's table took no more memory, else with ctune given the memory
/// the peer took, so a design that buys flows with memory is judged at the price it
/// paid. A peer over what the host could spare is out ([`Verdict::OverSpare`]).
pub fn compare_peers(sc: &Scenario, sim: &Simulation) -> PeerComparison {
    let ctune = sim
        .report
        .runs
        .iter()
        .find(|r| r.policy == Peer::Ctune.name());
    let rows = sim
        .report
        .runs
        .iter()
        .map(|run| {
            let Some(ctune) = ctune.filter(|_| run.policy != Peer::Ctune.name()) else {
                return PeerRow {
                    run: run.clone(),
                    ctune_at_equal: None,
                    verdict: Verdict::Ctune,
                };
            };
            let ctune_at_equal = (run.memory_bytes > ctune.memory_bytes)
                .then(|| ctune_with_memory(sc, run.memory_bytes).0);
            let verdict = if run.over_spare_bytes.unwrap_or(0) > 0 {
                Verdict::OverSpare
            } else if better_on_both(run, ctune_at_equal.as_ref().unwrap_or(ctune)) {
                Verdict::Better
            } else {
                Verdict::NotBetter
            };
            PeerRow {
                run: run.clone(),
                ctune_at_equal,
                verdict,
            }
        })
        .collect();
    PeerComparison {
        scenario: sc.name.clone(),
        rows,
    }
}

impl PeerComparison {
    /// A report's runs compared as they are, without reruns: a live report's (its
    /// machine could not rerun ctune at another memory, and no live table is measured
    /// against what the host spares).
    pub fn of_report(report: &ScenarioReport) -> PeerComparison {
        let ctune = report.runs.iter().find(|r| r.policy == Peer::Ctune.name());
        let rows = report
            .runs
            .iter()
            .map(|run| {
                let verdict = match ctune.filter(|_| run.policy != Peer::Ctune.name()) {
                    None => Verdict::Ctune,
                    Some(_) if run.over_spare_bytes.unwrap_or(0) > 0 => Verdict::OverSpare,
                    Some(c) if better_on_both(run, c) => Verdict::Better,
                    Some(_) => Verdict::NotBetter,
                };
                PeerRow {
                    run: run.clone(),
                    ctune_at_equal: None,
                    verdict,
                }
            })
            .collect();
        PeerComparison {
            scenario: format!("{} ({})", report.scenario, report.source),
            rows,
        }
    }

    /// The Markdown table: per policy, flows harmed (lost + evicted), sessions broken,
    /// the table's memory at its peak and over what the host could spare, and ctune at
    /// that memory when the peer took more than ctune did.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "#### {}\n\n| policy | flows harmed (lost + evicted) | sessions broken | memory at peak | over spare | ctune at that memory: harmed, broken | better than ctune on both? |\n|---|---:|---:|---:|---:|---:|---|\n",
            self.scenario
        );
        for row in &self.rows {
            let r = &row.run;
            let equal = row.ctune_at_equal.as_ref().map_or("-".to_string(), |c| {
                format!("{}, {}", harmed(c), c.sessions_broken)
            });
            let verdict = match row.verdict {
                Verdict::Ctune => "-",
                Verdict::OverSpare => "out: over what the host spares",
                Verdict::NotBetter => "no",
                Verdict::Better => "**yes**",
            };
            out.push_str(&format!(
                "| {} | {} ({} + {}) | {} of {} | {} | {} | {equal} | {verdict} |\n",
                r.policy,
                harmed(r),
                r.kernel_drops,
                r.early_drops,
                r.sessions_broken,
                r.sessions,
                units::fmt_bytes(r.memory_bytes),
                r.over_spare_bytes.map_or("-".into(), units::fmt_bytes),
            ));
        }
        out
    }
}

/// The peer comparison's plot: per policy, a bar of flows harmed and a bar of sessions
/// broken (of those it held), ctune's in its own colour, a mark on a peer's flow bar
/// where ctune at that peer's memory lands, and the peers over what the host spares
/// greyed out.
mod peer_plot {
    use plotters::prelude::*;
    use std::path::Path;

    use super::{PeerComparison, PeerRow, Verdict, harmed};
    use crate::scenario_report::plot_si as si;

    const WIDTH: u32 = 1050;
    const ROW: u32 = 26;
    const HEAD: u32 = 64;
    const LABEL: i32 = 200;
    const PANEL: i32 = 400;
    const GAP: i32 = 30;

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    pub fn draw(cmp: &PeerComparison, path: &Path) -> Result<(), String> {
        let height = HEAD + ROW * cmp.rows.len() as u32 + 30;
        let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let font = ("sans-serif", 14).into_font();
        let title = format!(
            "{}: what each policy harmed, and its table's memory at the peak",
            cmp.scenario
        );
        root.draw(&Text::new(title, (10, 8), ("sans-serif", 20).into_font()))
            .map_err(err)?;
        let left = LABEL;
        let right = LABEL + PANEL + GAP;
        for (x, t) in [
            (
                left,
                "flows harmed (lost + evicted); | ctune at that memory",
            ),
            (right, "sessions broken, of those held"),
        ] {
            root.draw(&Text::new(t, (x, 38), font.clone()))
                .map_err(err)?;
        }
        let top = |f: fn(&PeerRow) -> u64| cmp.rows.iter().map(f).max().unwrap_or(0).max(1) as f64;
        let tops = (top(|r| harmed(&r.run)), top(|r| r.run.sessions));
        for (i, row) in cmp.rows.iter().enumerate() {
            let y = HEAD as i32 + i as i32 * ROW as i32;
            draw_row(&root, row, y, tops)?;
        }
        root.present().map_err(err)
    }

    /// One policy's row: its name and memory, its two bars, ctune's mark at its memory.
    fn draw_row(
        root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
        row: &PeerRow,
        y: i32,
        (top_flows, top_sessions): (f64, f64),
    ) -> Result<(), String> {
        let font = ("sans-serif", 14).into_font();
        let (left, right) = (LABEL, LABEL + PANEL + GAP);
        let colour = match row.verdict {
            Verdict::Ctune => RGBColor(0, 114, 178),
            Verdict::OverSpare => RGBColor(190, 190, 190),
            _ => RGBColor(213, 94, 0),
        };
        let memory = ctune_core::units::fmt_bytes(row.run.memory_bytes);
        let name = match row.verdict {
            Verdict::OverSpare => format!("{}, {memory}: over spare", row.run.policy),
            _ => format!("{}, {memory}", row.run.policy),
        };
        root.draw(&Text::new(name, (6, y + 4), font.clone()))
            .map_err(err)?;
        let flows = harmed(&row.run) as f64;
        let broken = row.run.sessions_broken as f64;
        for (x0, value, top, text) in [
            (left, flows, top_flows, si(flows)),
            (
                right,
                broken,
                top_sessions,
                format!("{} of {}", si(broken), si(row.run.sessions as f64)),
            ),
        ] {
            let w = ((value / top) * f64::from(PANEL - 80)).round() as i32;
            root.draw(&Rectangle::new(
                [(x0, y + 3), (x0 + w.max(1), y + ROW as i32 - 5)],
                colour.filled(),
            ))
            .map_err(err)?;
            root.draw(&Text::new(text, (x0 + w + 6, y + 4), font.clone()))
                .map_err(err)?;
        }
        if let Some(c) = &row.ctune_at_equal {
            let x = left + ((harmed(c) as f64 / top_flows) * f64::from(PANEL - 80)).round() as i32;
            root.draw(&PathElement::new(
                vec![(x, y), (x, y + ROW as i32 - 2)],
                BLACK.stroke_width(3),
            ))
            .map_err(err)?;
        }
        Ok(())
    }
}

impl PeerComparison {
    /// Writes the comparison's plot ([`peer_plot`]) to `path`.
    pub fn plot_svg(&self, path: &Path) -> Result<(), String> {
        peer_plot::draw(self, path)
    }
}

/// ctune on one scenario with composition sampling and without it.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositionComparison {
    /// The scenario.
    pub scenario: String,
    /// ctune with `agent.composition_interval` as the scenario's config has it (the
    /// default, 1m, when it says nothing; the default too when it turns sampling off).
    pub with: (PolicyRun, RunDetails),
    /// ctune with `agent.composition_interval: 0s`: the tiers alone decide.
    pub without: (PolicyRun, RunDetails),
}

/// Flows a run harmed: lost to a full table (`drop`) plus evicted (`early_drop`). The
/// clash drops of `dns_race` are left out: every policy has the same.
pub fn harmed(r: &PolicyRun) -> u64 {
    r.kernel_drops + r.early_drops
}

/// Runs ctune alone on `sc` twice: with composition sampling, and with it off.
pub fn compare_composition(sc: &Scenario) -> CompositionComparison {
    let mut on = sc.ctune.clone();
    if on.agent.composition_interval.is_zero() {
        on.agent.composition_interval = Config::default().agent.composition_interval;
    }
    let mut off = sc.ctune.clone();
    off.agent.composition_interval = Duration::ZERO;
    let ctune_with = |cfg: Config| {
        let sc = Scenario {
            ctune: cfg,
            policies: vec![Peer::Ctune],
            ..sc.clone()
        };
        run_policy(&sc, Peer::Ctune)
    };
    CompositionComparison {
        scenario: sc.name.clone(),
        with: ctune_with(on),
        without: ctune_with(off),
    }
}

impl CompositionComparison {
    /// The keys (short names, `nf_conntrack_` left out) a run had below their default
    /// from `from_ms` on.
    fn lowered(d: &RunDetails, from_ms: u64) -> String {
        let keys = d.lowered_from(from_ms);
        if keys.is_empty() {
            "none".into()
        } else {
            keys.into_iter().collect::<Vec<_>>().join(", ")
        }
    }

    /// The Markdown table of comparisons, one row each.
    pub fn markdown(rows: &[CompositionComparison]) -> String {
        let mut out = String::from(
            "| scenario | harmed without (lost + evicted) | harmed with | with - without | samples | keys lowered without | keys lowered with |\n\
             |---|---:|---:|---:|---:|---|---|\n",
        );
        for c in rows {
            let (w, wo) = (harmed(&c.with.0), harmed(&c.without.0));
            let diff = i128::from(w) - i128::from(wo);
            out.push_str(&format!(
                "| {} | {} ({} + {}) | {} ({} + {}) | {} | {} | {} | {} |\n",
                c.scenario,
                wo,
                c.without.0.kernel_drops,
                c.without.0.early_drops,
                w,
                c.with.0.kernel_drops,
                c.with.0.early_drops,
                if diff > 0 {
                    format!("+{diff}")
                } else {
                    diff.to_string()
                },
                c.with.1.compositions.len(),
                Self::lowered(&c.without.1, 0),
                Self::lowered(&c.with.1, 0),
            ));
        }
        out
    }
}

/// One namespace's traffic and the fractions of flows carried from tick to tick.
struct Source<'a> {
    rates: Vec<(Class, &'a [Profile])>,
    carry: [f64; Class::COUNT],
}

impl Source<'_> {
    /// New flows per class in the tick centred on `mid` seconds.
    fn arrivals(&mut self, mid: f64, dt: f64) -> [u64; Class::COUNT] {
        let mut arrivals = [0u64; Class::COUNT];
        for (class, profiles) in &self.rates {
            let i = class.index();
            let rate: f64 = profiles.iter().map(|p| p.rate_at(mid)).sum();
            let x = rate * dt + self.carry[i];
            let n = x.floor();
            self.carry[i] = x - n;
            arrivals[i] = n as u64;
        }
        arrivals
    }
}

/// The namespaces of a scenario: the host's own, then the tenants', with their traffic.
fn namespaces(sc: &Scenario) -> (Vec<String>, Vec<Source<'_>>) {
    let traffic = std::iter::once(("init".to_string(), &sc.traffic))
        .chain(sc.tenants.iter().map(|t| (t.name.clone(), &t.traffic)));
    traffic
        .map(|(name, t)| {
            let rates = t.iter().map(|(c, p)| (*c, p.as_slice())).collect();
            let carry = [0f64; Class::COUNT];
            (name, Source { rates, carry })
        })
        .unzip()
}

fn run_policy(sc: &Scenario, kind: Peer) -> (PolicyRun, RunDetails) {
    let tick_ns = sc.tick.as_nanos();
    let dt = sc.tick.as_secs_f64();
    let n_ticks = sc.duration.as_nanos().div_ceil(tick_ns) as u64;
    let (names, mut sources) = namespaces(sc);
    let mut tables = Tables {
        max: sc.start_max,
        buckets: sc.start_buckets,
        spaces: sessions_of(sc).into_iter().map(Table::new).collect(),
    };
    let mut d = RunDetails {
        policy: kind.name().into(),
        ..RunDetails::default()
    };
    let mut agent = (kind == Peer::Ctune).then(|| Agent::new(sc.ctune.clone(), names.clone()));
    let mut peer = PeerRun::new(kind);
    let mut timeline = Timeline::new(tables.spaces[0].timeouts.clone(), sc.sample_interval);
    let (mut peak, mut peak_memory) = (0u64, 0u64);

    for k in 0..=n_ticks {
        let now_ns = u128::from(k) * tick_ns;
        tables.spaces.iter_mut().for_each(|t| t.expire(k));
        if let Some(a) = agent.as_mut() {
            a.act(now_ns, &mut tables, &sc.host, &mut d);
        }
        if let Some(p) = peer.as_mut() {
            p.act(k, tick_ns, &mut tables, &sc.host, &mut d);
        }
        timeline.record(now_ns, k == n_ticks, &tables, agent.as_ref(), &d);
        if k == n_ticks {
            break;
        }
        let mid = (now_ns as f64 / 1e9) + dt / 2.0;
        let max = tables.max;
        for (t, src) in tables.spaces.iter_mut().zip(sources.iter_mut()) {
            t.tick_flows(src.arrivals(mid, dt), max, k, tick_ns);
            if max != 0 && t.count > max {
                d.ticks_over_max += 1;
            }
        }
        peak = peak.max(tables.busiest());
        let t_end = (now_ns as f64 / 1e9) + dt;
        peak_memory = peak_memory.max(account(sc, &tables, t_end, &mut d));
    }
    let run = summary(sc, kind, &tables, &d, (peak, peak_memory), timeline);
    (run, d)
}

/// The sessions of each namespace, the host's first.
fn sessions_of(sc: &Scenario) -> Vec<&[Sessions]> {
    std::iter::once(sc.sessions.as_slice())
        .chain(sc.tenants.iter().map(|t| t.sessions.as_slice()))
        .collect()
}

/// The run's timeline, and which timeouts were ever lowered in it.
struct Timeline {
    start_timeouts: BTreeMap<String, u64>,
    interval_ns: u128,
    next_ns: u128,
    samples: Vec<Sample>,
    /// Keys ever set below their start value.
    lowered: BTreeSet<String>,
    changes_seen: usize,
}

impl Timeline {
    fn new(start_timeouts: BTreeMap<String, u64>, interval: Duration) -> Timeline {
        Timeline {
            start_timeouts,
            interval_ns: interval.as_nanos(),
            next_ns: 0,
            samples: Vec::new(),
            lowered: BTreeSet::new(),
            changes_seen: 0,
        }
    }

    /// Whether some timeout is below its start value in `t`, by a sysctl or an aging.
    fn lowered_in(&self, t: &Table) -> bool {
        !t.aging.is_normal()
            || t.timeouts
                .iter()
                .any(|(k, v)| self.start_timeouts.get(k).is_some_and(|s| v < s))
    }

    /// Takes in the tick's timeout changes, and a sample when one is due (and at the end).
    fn record(
        &mut self,
        now_ns: u128,
        last: bool,
        tables: &Tables,
        agent: Option<&Agent>,
        d: &RunDetails,
    ) {
        for ch in &d.timeout_changes[self.changes_seen..] {
            if self
                .start_timeouts
                .get(&ch.key)
                .is_some_and(|s| ch.new < *s)
            {
                self.lowered.insert(ch.key.clone());
            }
        }
        self.changes_seen = d.timeout_changes.len();
        if now_ns < self.next_ns && !last {
            return;
        }
        let sum = |f: fn(&Table) -> u64| tables.spaces.iter().map(f).sum::<u64>();
        self.samples.push(Sample {
            t: now_ns as f64 / 1e9,
            count: tables.busiest(),
            max: tables.max,
            ceiling: agent.and_then(|a| a.ceiling),
            kernel_drops: Some(sum(|t| t.drop)),
            early_drops: Some(sum(|t| t.early_drop)),
            level: agent.and_then(|a| a.level),
            timeouts_lowered: Some(tables.spaces.iter().any(|t| self.lowered_in(t))),
        });
        while self.next_ns <= now_ns {
            self.next_ns += self.interval_ns;
        }
    }
}

/// Accounts one tick's table against the hash and what the host could spare; returns
/// the table's memory.
fn account(sc: &Scenario, tables: &Tables, t_end: f64, d: &mut RunDetails) -> u64 {
    let total = tables.total();
    d.peak_chain = d
        .peak_chain
        .max(2.0 * total as f64 / tables.buckets.max(1) as f64);
    let table_bytes = ceiling::memory_now(
        total,
        tables.buckets,
        sc.host.entry_bytes,
        sc.ctune.ceiling.extension_bytes,
    );
    let spare = sc
        .host
        .memory_bytes
        .saturating_sub(sc.host.used_at(t_end))
        .saturating_sub(ceiling::reserve_bytes(&sc.ctune, sc.host.memory_bytes));
    d.peak_over_spare = d.peak_over_spare.max(table_bytes.saturating_sub(spare));
    table_bytes
}

/// The run's line of the report.
fn summary(
    sc: &Scenario,
    kind: Peer,
    tables: &Tables,
    d: &RunDetails,
    (peak, peak_memory): (u64, u64),
    timeline: Timeline,
) -> PolicyRun {
    let cfg = &sc.ctune;
    let start = &timeline.start_timeouts;
    let restored = tables.spaces.iter().all(|t| {
        t.aging.is_normal()
            && timeline
                .lowered
                .iter()
                .all(|k| t.timeouts.get(k) == start.get(k))
    });
    let sum = |f: fn(&Table) -> u64| tables.spaces.iter().map(f).sum::<u64>();
    // Growth during the run: a peer's setting at the start is where it starts.
    let grew = d
        .max_changes
        .iter()
        .any(|(at, old, new)| *at > 0 && new > old);
    let samples = timeline.samples;
    let (reaction_ms, reaction_note) =
        scenario_report::reaction(&samples, cfg.max.high_watermark.get(), grew);
    PolicyRun {
        policy: kind.name().into(),
        kernel_drops: sum(|t| t.drop),
        clash_drops: sum(|t| t.clash),
        failed_attempts: sum(|t| t.drop),
        attempts: sum(|t| t.attempts),
        early_drops: sum(|t| t.early_drop),
        sessions: sum(|t| t.held),
        sessions_broken: sum(|t| t.broken),
        over_spare_bytes: Some(d.peak_over_spare),
        peak_count: peak,
        final_max: tables.max,
        final_buckets: tables.buckets,
        memory_bytes: peak_memory,
        grew,
        crossed: scenario_report::crossed(&samples, cfg.max.high_watermark.get()),
        reaction_ms,
        reaction_note,
        timeouts_lowered: !timeline.lowered.is_empty() || !d.agings.is_empty(),
        timeouts_restored: restored,
        samples,
    }
}

/// Writes `DIR/<scenario>.md` (the table) and `DIR/<scenario>.svg` (the timeline),
/// creating DIR; returns the paths written.
pub fn write_outputs(report: &ScenarioReport, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let with_path = |p: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("cannot write {}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| with_path(dir, &e))?;
    let md = dir.join(format!("{}.md", report.scenario));
    std::fs::write(&md, report.markdown()).map_err(|e| with_path(&md, &e))?;
    let svg = dir.join(format!("{}.svg", report.scenario));
    report.plot_svg(&svg).map_err(|e| with_path(&svg, &e))?;
    Ok(vec![md, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_exact_and_proportional() {
        assert_eq!(share(&[1, 1, 1, 1, 0, 0, 0], 4), [1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(share(&[3, 1, 0, 0, 0, 0, 0], 2), [2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(share(&[1, 1, 0, 0, 0, 0, 0], 1), [1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(share(&[0, 0, 0, 0, 0, 0, 0], 5), [0, 0, 0, 0, 0, 0, 0]);
        let s = share(&[7, 11, 13, 0, 5, 0, 0], 17);
        assert_eq!(s.iter().sum::<u64>(), 17);
    }

    #[test]
    fn profiles() {
        let r = Profile::Ramp {
            from: 0.0,
            to: 100.0,
            start: 10.0,
            end: 20.0,
        };
        assert_eq!(r.rate_at(0.0), 0.0);
        assert_eq!(r.rate_at(15.0), 50.0);
        assert_eq!(r.rate_at(30.0), 100.0);
        let f = Profile::Flood {
            rate: 5.0,
            start: 1.0,
            end: 2.0,
        };
        assert_eq!(
            (f.rate_at(0.5), f.rate_at(1.0), f.rate_at(2.0)),
            (0.0, 5.0, 0.0)
        );
    }

    #[test]
    fn full_table_early_drops_unassured_then_drops() {
        let mut t = Table::new(&[]);
        let tick = 10_000_000u128;
        t.admit([6, 0, 4, 0, 0, 0, 0], 10, 0, tick);
        assert_eq!((t.count, t.unassured), (10, 6));
        // Full: 8 TCP flows evict 6 UDP entries, then 2 are lost.
        t.admit([0, 0, 8, 0, 0, 0, 0], 10, 1, tick);
        assert_eq!((t.count, t.unassured, t.early_drop, t.drop), (10, 0, 6, 2));
        // UDP expires after 30 s, TIME_WAIT after 120 s (created at tick 1).
        t.expire(3_001);
        assert_eq!(t.count, 10, "UDP is gone, TIME_WAIT is not");
        t.expire(12_001);
        assert_eq!(t.count, 0);
    }

    /// An aging peer's timeout counts from each entry's last packet: entries idle longer
    /// than the new timeout go at once, the others expire that long after their packet.
    #[test]
    fn reage_counts_from_the_last_packet() {
        let tick = 1_000_000_000u128;
        let mut t = Table::new(&[]);
        t.admit([10, 0, 0, 0, 0, 0, 0], 0, 0, tick);
        t.admit([5, 0, 0, 0, 0, 0, 0], 0, 20, tick);
        let cap = Aging {
            factor: 1.0,
            cap_secs: Some(15),
        };
        t.reage(cap, 25, tick);
        assert_eq!(
            (t.count, t.unassured),
            (5, 5),
            "idle 25 s > 15 s: gone at once"
        );
        t.expire(34);
        assert_eq!(t.count, 5);
        t.expire(35);
        assert_eq!(t.count, 0, "idle from tick 20, 15 s: gone at 35");
    }

    /// A session survives a timeout longer than its gap and breaks under one that is not
    /// (an entry expires at its timeout exactly, as `nf_ct_is_expired` has it).
    #[test]
    fn a_session_breaks_when_its_timeout_is_not_longer_than_its_gap() {
        let tick = 1_000_000_000u128;
        for (established, broken) in [(11, 0), (10, 2), (9, 2)] {
            let mut t = Table::new(&[Sessions {
                class: Class::TcpSession,
                count: 2,
                gap: 10.0,
                start: 0.0,
            }]);
            for k in 0..=30 {
                t.expire(k);
                if k == 1 {
                    t.timeouts.insert(tunables::ESTABLISHED.into(), established);
                }
                t.tick_flows([0; Class::COUNT], 0, k, tick);
            }
            assert_eq!(
                (t.held, t.broken),
                (2, broken),
                "established {established} s"
            );
            let left = if broken == 0 { 2 } else { 0 };
            assert_eq!(t.count, left, "established {established} s");
        }
    }

    #[test]
    fn kernel_default_hash() {
        assert_eq!(kernel_default_buckets(24 << 30), 262_144);
        assert_eq!(kernel_default_buckets(2 << 30), 65_536);
        assert_eq!(kernel_default_buckets(512 << 20), 4096);
        assert_eq!(kernel_default_buckets(64 << 20), 1024);
    }

    #[test]
    fn item_lines() {
        let text = "traffic:\n  tcp_short:\n    # c\n    - constant: 1\n    - ramp:\n        from: 1\n        to: 2\n  tcp_idle: []\n";
        assert_eq!(locate_item(text, "traffic.tcp_short", 0), Some(4));
        assert_eq!(locate_item(text, "traffic.tcp_short", 1), Some(5));
        assert_eq!(locate_item(text, "traffic.tcp_short", 5), Some(2));
    }

    #[test]
    fn config_block_keeps_scenario_lines() {
        let text = "a: 1\nctune_config:\n  agent:\n    interval: 2s\nb: 2\n";
        let v: serde_json::Value = serde_json::json!({"agent": {"interval": "2s"}});
        let t = ctune_config_text(text, &v);
        assert_eq!(t, "\n\nagent:\n  interval: 2s\n");
        assert_eq!(config::locate(&t, "agent.interval"), Some(4));
    }
}
