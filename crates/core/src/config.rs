//! ctune's settings: the YAML file, its embedded defaults, and validation.
//!
//! A config is either entirely valid or rejected with the file, line and key named; no
//! part of ctune runs on a half-understood config. Durations use humantime ("90s", "2h",
//! "5d"), sizes binary units ("512MiB"). `config/ctune.yaml` is the commented default and
//! is embedded in the binary, so a missing file means exactly those values.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sysctl;
use crate::tunables;
use crate::units;

/// The commented default config, shipped as `config/ctune.yaml`.
pub const DEFAULT_YAML: &str = include_str!("../../../config/ctune.yaml");

/// TCP keepalive's common default (2 h): an established timeout below it drops idle
/// sessions that keepalive was meant to hold.
pub const KEEPALIVE_SECS: u64 = 7200;

/// Everything ctune can be told.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What the host is for: it sets the defaults of the memory budget (a preset from
    /// config/roles/, under the operator's own keys); `auto` (the default) decides it
    /// from the host's facts ([`crate::role`]).
    #[serde(default)]
    pub role: RoleSetting,
    /// Under `role: auto`, the `ceiling` section each role would give (its preset under
    /// the operator's keys), resolved and validated at parse; `ceiling` is host's until
    /// a step decides ([`Config::for_role`]).
    #[serde(skip)]
    pub role_ceilings: RoleCeilings,
    /// The keys of the budget that the roles' presets set and the operator's file sets
    /// too (`ceiling.memory_fraction`, ...): they hold under every role, which an
    /// operator who sets `role:` should be told (an old installed file sets all four).
    #[serde(skip)]
    pub budget_keys_set: Vec<String>,
    /// Which network namespaces to observe.
    #[serde(default, deserialize_with = "section")]
    pub namespaces: Namespaces,
    /// How the hardware ceiling for `nf_conntrack_max` is derived.
    #[serde(default, deserialize_with = "section")]
    pub ceiling: CeilingSettings,
    /// When and how `nf_conntrack_max` changes.
    #[serde(default, deserialize_with = "section")]
    pub max: MaxPolicy,
    /// How the hash table follows max.
    #[serde(default, deserialize_with = "section")]
    pub hash: HashPolicy,
    /// Pressure levels and their hysteresis.
    #[serde(default, deserialize_with = "section")]
    pub pressure: Pressure,
    /// Which timeouts may be lowered under pressure, and how far.
    #[serde(default, deserialize_with = "section")]
    pub timeouts: Timeouts,
    /// The background agent (`ctune run`).
    #[serde(default, deserialize_with = "section")]
    pub agent: Agent,
    /// What `ctune run` exports for Prometheus (docs/metrics.md).
    #[serde(default, deserialize_with = "section")]
    pub metrics: Metrics,
    /// Where the learned limits are written for the next boot.
    #[serde(default, deserialize_with = "section")]
    pub persist: Persist,
}

/// Where the learned limits are written for the next boot.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Persist {
    /// Which system's boot files: `systemd` or `openwrt`.
    pub layout: Layout,
}

/// The boot files of one kind of system (the paths are `act::persist`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// systemd and kmod: sysctl.d, modules-load.d and modprobe.d (the default).
    #[default]
    Systemd,
    /// OpenWrt: sysctl.d (applied by /etc/init.d/sysctl) and a file in /etc/modules.d
    /// (kmodloader's `module options` lines); OpenWrt reads neither modprobe.d nor
    /// modules-load.d.
    Openwrt,
}

impl Layout {
    /// Every layout, for documentation and tests.
    pub const ALL: [Layout; 2] = [Layout::Systemd, Layout::Openwrt];
}

/// The agent's Prometheus exports.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// node_exporter's textfile collector directory (ctune writes `ctune.prom` there):
    /// `auto` (Debian's /var/lib/prometheus/node-exporter when it exists), a path, or
    /// `off`.
    pub textfile_dir: TextfileDir,
    /// The file is rewritten after each step that changed something, and at least this
    /// often.
    #[serde(with = "duration")]
    pub textfile_interval: Duration,
    /// Serve `GET /metrics` on this address (e.g. 127.0.0.1:9815); null: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Namespaces exported at most, the fullest first (each is a dozen series; a host
    /// with thousands of short-lived pods must not flood Prometheus).
    pub max_namespaces: usize,
    /// `GET /healthz` answers 503 once a control step is this late: a hung step (a
    /// blocked read of /proc, a stuck setns) gets the agent restarted where no systemd
    /// watchdog watches it (a container's liveness probe).
    #[serde(with = "duration")]
    pub healthz_grace: Duration,
}

/// Where the textfile goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TextfileDir {
    /// Debian's node_exporter directory, when it exists.
    #[default]
    Auto,
    /// No textfile.
    Off,
    /// This directory.
    Dir(PathBuf),
}

impl TextfileDir {
    /// The directory node_exporter's Debian package reads.
    pub const DEBIAN: &'static str = "/var/lib/prometheus/node-exporter";
}

impl Serialize for TextfileDir {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TextfileDir::Auto => s.serialize_str("auto"),
            TextfileDir::Off => s.serialize_str("off"),
            TextfileDir::Dir(p) => p.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TextfileDir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "auto" => Ok(TextfileDir::Auto),
            // YAML reads a bare `off` as false.
            "off" | "false" => Ok(TextfileDir::Off),
            p if p.starts_with('/') => Ok(TextfileDir::Dir(PathBuf::from(p))),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: expected auto, off or an absolute directory"
            ))),
        }
    }
}

/// What the host is for, and so how much of its memory the table may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A server with applications to run: a small share of memory (`role: auto`'s
    /// choice when the host shows nothing else).
    #[default]
    Host,
    /// A Kubernetes or container node: pods' flows fill the table, pods need the memory.
    Node,
    /// A NAT router, firewall or resolver: forwarding is its job, so the table may take
    /// a large share of the memory.
    Router,
}

impl Role {
    /// The preset's YAML (config/roles/NAME.yaml), overlaid on the defaults.
    pub fn preset(self) -> &'static str {
        match self {
            Role::Host => include_str!("../../../config/roles/host.yaml"),
            Role::Node => include_str!("../../../config/roles/node.yaml"),
            Role::Router => include_str!("../../../config/roles/router.yaml"),
        }
    }

    /// Every role, for documentation and tests.
    pub const ALL: [Role; 3] = [Role::Host, Role::Node, Role::Router];

    /// Its rank by budget: a role that gives the table more memory ranks higher.
    pub fn budget_rank(self) -> u8 {
        match self {
            Role::Host => 0,
            Role::Node => 1,
            Role::Router => 2,
        }
    }

    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Node => "node",
            Role::Router => "router",
        }
    }

    fn index(self) -> usize {
        match self {
            Role::Host => 0,
            Role::Node => 1,
            Role::Router => 2,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `role:` as written: a role, or `auto` (the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoleSetting {
    /// Decided from the host's facts at every step ([`crate::role`]).
    #[default]
    Auto,
    /// This role, whatever the host shows.
    Fixed(Role),
}

impl Serialize for RoleSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RoleSetting::Auto => s.serialize_str("auto"),
            RoleSetting::Fixed(r) => r.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RoleSetting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "auto" => Ok(RoleSetting::Auto),
            "host" => Ok(RoleSetting::Fixed(Role::Host)),
            "node" => Ok(RoleSetting::Fixed(Role::Node)),
            "router" => Ok(RoleSetting::Fixed(Role::Router)),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: expected auto, host, node or router"
            ))),
        }
    }
}

/// The `ceiling` section of each role, under `role: auto` (empty otherwise).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoleCeilings(Option<Box<[CeilingSettings; 3]>>);

impl Config {
    /// This config with `role`'s ceiling section, as `role: auto` resolved it at parse;
    /// under a fixed role (or a config not from [`parse`]), unchanged.
    pub fn for_role(&self, role: Role) -> Config {
        let mut out = self.clone();
        if let Some(c) = &self.role_ceilings.0 {
            out.ceiling = c[role.index()].clone();
        }
        out
    }

    /// This config with `role` fixed, as `role: <role>` in its text would have made it.
    pub fn fixed_to(&self, role: Role) -> Config {
        let mut out = self.for_role(role);
        out.role = RoleSetting::Fixed(role);
        out.role_ceilings = RoleCeilings::default();
        out
    }

    /// Changes the ceiling section of every role (the one in force and, under `role:
    /// auto`, each role's): an edit of `ceiling` alone would be undone when a step
    /// takes the role's section ([`Config::for_role`]).
    pub fn edit_ceiling(&mut self, f: impl Fn(&mut CeilingSettings)) {
        f(&mut self.ceiling);
        if let Some(all) = &mut self.role_ceilings.0 {
            all.iter_mut().for_each(f);
        }
    }
}

/// The agent's loop and its manners.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Agent {
    /// Time between samples; reading the table costs microseconds, a decision less.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Time between count probes: between steps, the watched counts are read and a step
    /// is taken at once when a namespace reaches the high watermark or, at its current
    /// growth rate, would before the next step.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
    /// The fastest fill (new entries a second) the probe plans for until it sees a
    /// faster one: the time this fill would take to bring the fullest watched table to
    /// the high watermark is the time until the next probe (at least `probe_interval`,
    /// at most `interval`). An idle host is probed a few times a second, not twenty.
    pub flood_rate: u64,
    /// The time between steps while every watched table is quiet (no change planned,
    /// every namespace at the normal level and below half its high watermark): the
    /// count probe still catches growth between steps.
    #[serde(with = "duration")]
    pub idle_interval: Duration,
    /// When someone else changes a value ctune set, adopt theirs and leave it alone
    /// until it becomes unsafe (drops, or the critical level); false: ctune's plan wins.
    pub respect_operator: bool,
    /// How often at most the agent reads an elevated or critical namespace's composition
    /// (the first 65536 entries of a dump of its table, a random sample: about 0.16 s of
    /// kernel time when it holds most of the host's table); 0 never, and timeouts then
    /// follow the tiers alone.
    #[serde(with = "duration")]
    pub composition_interval: Duration,
}

/// Which namespaces count.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Namespaces {
    /// `initial`, `named` or `all`.
    pub mode: NamespaceMode,
    /// Names under /run/netns, for `mode: named`.
    #[serde(default)]
    pub names: Vec<String>,
}

/// How namespaces are found; the initial (own) namespace is always observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceMode {
    /// Only ctune's own namespace.
    #[default]
    Initial,
    /// Plus the namespaces listed in `names` (/run/netns/NAME).
    Named,
    /// Plus every namespace in /run/netns and /proc/*/ns/net, deduplicated by inode.
    All,
}

/// Inputs of the hardware ceiling.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CeilingSettings {
    /// Share of MemTotal that all conntrack entries together may cost...
    pub memory_fraction: Fraction,
    /// ...but at least this much (a small router's table needs more than a share of
    /// little), when the host can spare it.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub memory_floor: u64,
    /// Memory kept for everything else: the table may take what MemAvailable (plus
    /// what the table already holds) leaves above this share of MemTotal...
    pub reserve_fraction: Fraction,
    /// ...and at least this much.
    #[serde(deserialize_with = "de_size", serialize_with = "ser_size")]
    pub reserve_min: u64,
    /// Absolute memory cap in bytes on top of the fraction; null for none.
    #[serde(
        deserialize_with = "de_opt_size",
        serialize_with = "ser_opt_size",
        default
    )]
    pub memory_cap: Option<u64>,
    /// Bytes per entry for extensions (NAT, accounting, timestamps, labels), which are
    /// allocated beside the slab object.
    pub extension_bytes: u64,
    /// ctune never sets max below this.
    pub min_max: u64,
    /// ctune never sets max above this, whatever the memory allows.
    pub max_cap: u64,
    /// Namespaces assumed to fill the table each on its own: `auto` counts the observed
    /// namespaces that hold entries.
    pub filling_namespaces: FillingNamespaces,
}

/// How many namespaces the ceiling divides the budget between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum FillingNamespaces {
    /// Count the observed namespaces whose table holds entries (at least 1).
    #[default]
    Auto,
    /// A fixed number, for hosts whose namespaces ctune cannot see.
    Fixed(u32),
}

impl<'de> Deserialize<'de> for FillingNamespaces {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom("must be at least 1 (or auto)")),
            Raw::N(n) => Ok(FillingNamespaces::Fixed(n)),
            Raw::S(s) if s == "auto" => Ok(FillingNamespaces::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "expected `auto` or a number, found {s:?}"
            ))),
        }
    }
}

/// Growth (and optional shrinking) of `nf_conntrack_max`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MaxPolicy {
    /// Grow when the busiest namespace's count reaches this share of max.
    pub high_watermark: Fraction,
    /// After growing, the busiest namespace should sit at about this share of max.
    pub target_utilisation: Fraction,
    /// Grow by at least this factor (never by +1: each step may resize the hash).
    pub grow_factor: f64,
    /// Max never goes below count x (1 + headroom).
    pub headroom: Fraction,
    /// Shrinking, off by default.
    pub shrink: Shrink,
}

/// Slow, hysteretic shrinking of max toward demand.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Shrink {
    /// Whether max may ever go down.
    pub enabled: bool,
    /// Shrink only after utilisation stayed below this share...
    pub low_watermark: Fraction,
    /// ...for this long.
    #[serde(with = "duration")]
    pub after: Duration,
    /// Each shrink multiplies max by this factor (0.5 ..= 0.95).
    pub factor: f64,
}

/// Hash size as a function of max.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HashPolicy {
    /// buckets = max / ratio. Each entry is hashed twice, so the average chain of a full
    /// table is 2 x ratio.
    pub ratio: u32,
    /// Resize only when the current size is off by more than this share.
    pub tolerance: Fraction,
    /// At most one resize per this interval: a resize stalls every insert.
    #[serde(with = "duration")]
    pub min_interval: Duration,
}

/// Pressure levels with hysteresis.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Pressure {
    /// Thresholds of `elevated` (lowers transient timeouts).
    pub elevated: Band,
    /// Thresholds of `critical` (also lowers established).
    pub critical: Band,
    /// A level is held at least this long before stepping down.
    #[serde(with = "duration")]
    pub hold: Duration,
    /// Memory stall (PSI `some avg10` of /proc/pressure/memory, percent of the last 10 s
    /// in which some task waited for memory) at which max stops growing and every
    /// namespace is at least elevated.
    pub memory_stall: f64,
}

/// Enter at or above `enter`; leave only below `exit`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Band {
    /// Utilisation (count / max) at which the level is entered.
    pub enter: Fraction,
    /// Utilisation below which the level may be left.
    pub exit: Fraction,
}

/// Timeout management.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Whether ctune lowers timeouts at all.
    pub manage: bool,
    /// The lowest value per key, named without the `nf_conntrack_` prefix. Keys not
    /// listed are never touched.
    #[serde(deserialize_with = "de_floors", serialize_with = "ser_floors")]
    pub floors: BTreeMap<String, u64>,
    /// Permit an established floor below 2 h (TCP keepalive), and an unacknowledged or
    /// max_retrans floor below 2 min (TCP's largest retransmission interval).
    #[serde(default)]
    pub allow_established_below_keepalive: bool,
    /// Under pressure, a key is lowered only when the namespace's last composition
    /// sample found it governing at least this share of the entries: a timeout that
    /// governs almost nothing frees almost nothing, and cutting it only shortens flows.
    /// Without a sample the tiers alone decide.
    pub min_share: Fraction,
}

impl Timeouts {
    /// The floor of a full sysctl key name, if the key is managed.
    pub fn floor_of(&self, key: &str) -> Option<u64> {
        key.strip_prefix(sysctl::PREFIX)
            .and_then(|short| self.floors.get(short))
            .copied()
    }
}

/// A number in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Default)]
#[serde(transparent)]
pub struct Fraction(pub f64);

impl Fraction {
    /// The raw value.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Fraction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v > 0.0 && v <= 1.0 {
            Ok(Fraction(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is out of range: expected a fraction greater than 0 and at most 1 (e.g. 0.75)"
            )))
        }
    }
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// Parses a humantime duration ("90s", "2h", "5d"), naming the accepted forms on error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); examples: 90s, 10m, 2h, 5d"))
}

/// A section of the file: absent or empty (`agent:` with every key commented out)
/// means all of its keys take their defaults.
fn section<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_opt_size(d)?.ok_or_else(|| serde::de::Error::custom("a size is required (e.g. 64MiB)"))
}

fn ser_size<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*v)
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => units::parse_size(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn ser_opt_size<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_u64(*n),
        None => s.serialize_none(),
    }
}

/// Floors by short name. The `nf_conntrack_` prefix is accepted as an alias; a name no
/// kernel ctune knows is an error naming the nearest valid one; `off` stops managing a
/// key the defaults list.
fn de_floors<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u64>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    let mut out = BTreeMap::new();
    // Short names first: an operator's prefixed name overrides the default's short one.
    let (prefixed, short): (Vec<_>, Vec<_>) = raw
        .into_iter()
        .partition(|(k, _)| k.starts_with(sysctl::PREFIX));
    for (written, value) in short.into_iter().chain(prefixed) {
        let key = sysctl::short(&written);
        let full = sysctl::full(key);
        if !tunables::known_timeout_keys().any(|k| k == full) {
            let hint = match tunables::nearest_timeout_key(key) {
                Some(near) => format!("did you mean {near}?"),
                None => "names are written without the nf_conntrack_ prefix, e.g. generic_timeout"
                    .into(),
            };
            return Err(serde::de::Error::custom(format!(
                "timeouts.floors: {written:?} is not a conntrack timeout of any kernel ctune knows; {hint}"
            )));
        }
        // YAML reads a bare `off` as false.
        if matches!(value.trim(), "off" | "false") {
            out.remove(key);
            continue;
        }
        let secs = parse_duration(&value)
            .map_err(|e| serde::de::Error::custom(format!("timeouts.floors.{key}: {e}")))?
            .as_secs();
        if secs == 0 {
            return Err(serde::de::Error::custom(format!(
                "timeouts.floors.{key}: a floor of 0 s would expire entries at once"
            )));
        }
        out.insert(key.to_string(), secs);
    }
    Ok(out)
}

fn ser_floors<S: serde::Serializer>(v: &BTreeMap<String, u64>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(v.len()))?;
    for (k, secs) in v {
        m.serialize_entry(k, &units::fmt_secs(*secs))?;
    }
    m.end()
}

/// A config that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// YAML that does not match the schema (the message carries line, column and snippet).
    #[error("invalid config {path}:\n{message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// serde-saphyr's rendering, with the offending line.
        message: String,
    },
    /// Values that parse but contradict each other or the kernel.
    #[error("invalid config {path}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Line of the key, when found.
        line: Option<usize>,
        /// Dotted key path.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

/// Where a config came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file on disk.
    File(PathBuf),
    /// The defaults compiled into the binary (no file at the default location).
    Embedded,
}

impl Source {
    /// The file, or a label for the embedded defaults.
    pub fn path(&self) -> PathBuf {
        match self {
            Source::File(p) => p.clone(),
            Source::Embedded => PathBuf::from("<embedded config/ctune.yaml>"),
        }
    }
}

static DEFAULT: std::sync::LazyLock<Config> = std::sync::LazyLock::new(|| {
    parse(DEFAULT_YAML, Path::new("config/ctune.yaml")).expect("embedded default config is valid")
});

impl Default for Config {
    fn default() -> Self {
        DEFAULT.clone()
    }
}

/// Parses and validates YAML text; `path` is only used in messages. Keys missing from
/// the text take their default, so a file may hold only what it changes. Under `role:
/// auto` (the default) the config is resolved under every role's preset, each
/// validated, so the role a step takes never meets an invalid config.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let setting = role_setting(text);
    let roles: &[Role] = match setting {
        RoleSetting::Fixed(ref r) => std::slice::from_ref(r),
        RoleSetting::Auto => &Role::ALL,
    };
    let mut ceilings = Vec::new();
    let mut first: Option<Config> = None;
    for &role in roles {
        let cfg = parse_as(text, path, role)?;
        ceilings.push(cfg.ceiling.clone());
        first.get_or_insert(cfg);
    }
    let mut cfg = first.expect("at least one role");
    cfg.budget_keys_set = budget_keys_set(text);
    if setting == RoleSetting::Auto {
        let all: [CeilingSettings; 3] = ceilings.try_into().expect("three roles");
        cfg.role_ceilings = RoleCeilings(Some(Box::new(all)));
    }
    Ok(cfg)
}

/// The keys the roles' presets set that `text` sets too.
fn budget_keys_set(text: &str) -> Vec<String> {
    let v: Option<serde_json::Value> = serde_saphyr::from_str(text).ok();
    let Some(ceiling) = v.as_ref().and_then(|v| v.get("ceiling")) else {
        return Vec::new();
    };
    [
        "memory_fraction",
        "memory_floor",
        "reserve_fraction",
        "reserve_min",
    ]
    .into_iter()
    .filter(|k| ceiling.get(k).is_some_and(|v| !v.is_null()))
    .map(|k| format!("ceiling.{k}"))
    .collect()
}

/// The `role:` the text sets (auto when it sets none). Text that does not parse, or a
/// role that is not one, is auto here: [`parse_as`]'s schema check reports it with its
/// line.
fn role_setting(text: &str) -> RoleSetting {
    #[derive(Deserialize)]
    struct JustRole {
        #[serde(default)]
        role: RoleSetting,
    }
    let v: Option<serde_json::Value> = serde_saphyr::from_str(text).ok();
    v.and_then(|v| v.get("role").cloned())
        .and_then(|r| serde_json::from_value::<JustRole>(serde_json::json!({ "role": r })).ok())
        .map_or(RoleSetting::Auto, |j| j.role)
}

/// The config as `role`'s preset and the operator's keys make it, validated.
fn parse_as(text: &str, path: &Path, role: Role) -> Result<Config, ConfigError> {
    let merged = merged_with_defaults(text, path, role)?;
    let cfg: Config = serde_saphyr::from_str(&merged).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    validate(&cfg, text, path)?;
    Ok(cfg)
}

/// A value error on a `key: value` line whose next line is indented further: YAML
/// reads that next line as the rest of the value (`0.8 target_utilisation: 0.5`), so the
/// parser blames the value. Say what really happened.
fn indent_hint(text: &str, message: &str) -> Option<String> {
    let line: usize = message
        .split("line ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (key, value) = here.trim().split_once(':')?;
    let next = lines.get(line)?;
    if value.trim().is_empty() || next.trim().is_empty() || indent(next) <= indent(here) {
        return None;
    }
    Some(format!(
        "hint: line {} is indented further than line {line} ({key}), so YAML reads it as part of {key}'s value; indent it by {} spaces, like {key}",
        line + 1,
        indent(here)
    ))
}

/// Overlays the operator's file on the defaults at the YAML-value level, after checking
/// the file alone against the schema so that errors point into the operator's own lines.
fn merged_with_defaults(text: &str, path: &Path, role: Role) -> Result<String, ConfigError> {
    let parse_err = |e: serde_saphyr::Error| {
        // The snippet names its source `<input>`; name the file instead.
        let mut message = e
            .to_string()
            .replace("<input>:", &format!("{}:", path.display()));
        if let Some(hint) = indent_hint(text, &message) {
            message = format!("{message}\n{hint}");
        }
        ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        }
    };
    // Schema check of the operator's own text, so errors point into its lines: every
    // section and field may be absent (`#[serde(default)]`; the placeholder values of a
    // missing field are discarded, the embedded defaults fill it below).
    let _: Config = serde_saphyr::from_str(text).map_err(parse_err)?;
    let user: serde_json::Value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_saphyr::from_str(text).map_err(parse_err)?
    };
    let mut base: serde_json::Value =
        serde_saphyr::from_str(DEFAULT_YAML).expect("embedded default config is YAML");
    // The role's preset sits between the defaults and the operator's own keys.
    let preset: serde_json::Value =
        serde_saphyr::from_str(role.preset()).expect("embedded role preset is YAML");
    overlay(&mut base, preset);
    overlay(&mut base, user);
    Ok(serde_json::to_string(&base).expect("JSON value serializes"))
}

fn overlay(base: &mut serde_json::Value, user: serde_json::Value) {
    match (base, user) {
        (serde_json::Value::Object(b), serde_json::Value::Object(u)) => {
            for (k, v) in u {
                match b.get_mut(&k) {
                    Some(slot) => overlay(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (_, serde_json::Value::Null) => {}
        (slot, v) => *slot = v,
    }
}

/// A key that failed validation and why.
type Invalid = (String, String);

fn bad(key: &str, message: String) -> Result<(), Invalid> {
    Err((key.to_string(), message))
}

/// Checks what the schema cannot: ranges and relations between keys.
fn validate(cfg: &Config, text: &str, path: &Path) -> Result<(), ConfigError> {
    check_ceiling(cfg)
        .and_then(|()| check_budget(cfg))
        .and_then(|()| check_max(cfg))
        .and_then(|()| check_hash_and_pressure(cfg))
        .and_then(|()| check_agent_and_timeouts(cfg))
        .and_then(|()| check_metrics(&cfg.metrics))
        .map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: locate(text, &key),
            key,
            message,
        })
}

/// Validates the exports: a textfile rewritten at most once a second, a bounded number
/// of namespaces.
fn check_metrics(m: &Metrics) -> Result<(), Invalid> {
    if m.textfile_interval < Duration::from_secs(1) {
        return bad(
            "metrics.textfile_interval",
            "below 1s: the file would be rewritten on every step for no reader".into(),
        );
    }
    if m.healthz_grace < Duration::from_secs(1) || m.healthz_grace > Duration::from_secs(3600) {
        return bad(
            "metrics.healthz_grace",
            format!(
                "{} is out of range 1s ..= 1h",
                humantime::format_duration(m.healthz_grace)
            ),
        );
    }
    if !(1..=10_000).contains(&m.max_namespaces) {
        return bad(
            "metrics.max_namespaces",
            format!("{} is outside 1..=10000", m.max_namespaces),
        );
    }
    Ok(())
}

/// Validates the memory budget and the bounds of max.
fn check_ceiling(cfg: &Config) -> Result<(), Invalid> {
    let c = &cfg.ceiling;
    if c.min_max < 1024 {
        return bad(
            "ceiling.min_max",
            format!("{} is below 1024; a smaller table fills at once", c.min_max),
        );
    }
    if c.max_cap > tunables::KERNEL_MAX_LIMIT {
        return bad(
            "ceiling.max_cap",
            format!(
                "{} exceeds the kernel's limit {} (INT_MAX)",
                c.max_cap,
                tunables::KERNEL_MAX_LIMIT
            ),
        );
    }
    if c.max_cap < c.min_max {
        return bad(
            "ceiling.max_cap",
            format!("{} is below ceiling.min_max {}", c.max_cap, c.min_max),
        );
    }
    if c.extension_bytes > 65536 {
        return bad(
            "ceiling.extension_bytes",
            format!(
                "{} bytes per entry is not plausible (at most 65536)",
                c.extension_bytes
            ),
        );
    }
    if let Some(cap) = c.memory_cap
        && cap < 1 << 20
    {
        return bad("ceiling.memory_cap", format!("{cap} bytes is below 1MiB"));
    }
    Ok(())
}

/// Validates the memory budget's own keys.
fn check_budget(cfg: &Config) -> Result<(), Invalid> {
    let c = &cfg.ceiling;
    if c.memory_floor < 1 << 20 {
        return bad(
            "ceiling.memory_floor",
            format!("{} bytes is below 1MiB", c.memory_floor),
        );
    }
    if c.reserve_fraction.get() >= 0.9 {
        return bad(
            "ceiling.reserve_fraction",
            format!(
                "{} would leave the table almost nothing (at most 0.9)",
                c.reserve_fraction.get()
            ),
        );
    }
    let stall = cfg.pressure.memory_stall;
    if !(stall.is_finite() && stall > 0.0 && stall <= 100.0) {
        return bad(
            "pressure.memory_stall",
            format!("{stall} is out of range: a percentage greater than 0 and at most 100"),
        );
    }
    Ok(())
}

/// Validates growth and shrinking.
fn check_max(cfg: &Config) -> Result<(), Invalid> {
    let m = &cfg.max;
    if !(m.grow_factor.is_finite() && (1.1..=16.0).contains(&m.grow_factor)) {
        return bad(
            "max.grow_factor",
            format!("{} is out of range 1.1 ..= 16", m.grow_factor),
        );
    }
    if m.target_utilisation.get() >= m.high_watermark.get() {
        return bad(
            "max.target_utilisation",
            format!(
                "{} must be below max.high_watermark {}, or growth would not relieve the pressure",
                m.target_utilisation.get(),
                m.high_watermark.get()
            ),
        );
    }
    let s = &m.shrink;
    if !(s.factor.is_finite() && (0.5..=0.95).contains(&s.factor)) {
        return bad(
            "max.shrink.factor",
            format!("{} is out of range 0.5 ..= 0.95", s.factor),
        );
    }
    if s.low_watermark.get() >= m.target_utilisation.get() {
        return bad(
            "max.shrink.low_watermark",
            format!(
                "{} must be below max.target_utilisation {} so grow and shrink cannot alternate",
                s.low_watermark.get(),
                m.target_utilisation.get()
            ),
        );
    }
    if s.after < Duration::from_secs(60) {
        return bad(
            "max.shrink.after",
            "must be at least 1m so a short lull does not shrink the table".into(),
        );
    }
    Ok(())
}

/// Validates the hash ratio and the pressure bands.
fn check_hash_and_pressure(cfg: &Config) -> Result<(), Invalid> {
    let h = &cfg.hash;
    if !(1..=64).contains(&h.ratio) {
        return bad(
            "hash.ratio",
            format!(
                "{} is out of range 1 ..= 64 (chains over 64 refuse inserts)",
                h.ratio
            ),
        );
    }
    let p = &cfg.pressure;
    for (name, band) in [("elevated", p.elevated), ("critical", p.critical)] {
        if band.exit.get() >= band.enter.get() {
            return bad(
                &format!("pressure.{name}.exit"),
                format!(
                    "{} must be below pressure.{name}.enter {} (hysteresis)",
                    band.exit.get(),
                    band.enter.get()
                ),
            );
        }
    }
    if p.critical.enter.get() <= p.elevated.enter.get() {
        return bad(
            "pressure.critical.enter",
            format!(
                "{} must be above pressure.elevated.enter {}",
                p.critical.enter.get(),
                p.elevated.enter.get()
            ),
        );
    }
    Ok(())
}

/// Validates the agent's clock and the established floor.
fn check_agent_and_timeouts(cfg: &Config) -> Result<(), Invalid> {
    let interval = cfg.agent.interval;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
        return bad(
            "agent.interval",
            format!(
                "{} is out of range 100ms ..= 1h",
                humantime::format_duration(interval)
            ),
        );
    }
    let probe = cfg.agent.probe_interval;
    if probe < Duration::from_millis(10) || probe > interval {
        return bad(
            "agent.probe_interval",
            format!(
                "{} is out of range 10ms ..= agent.interval ({})",
                humantime::format_duration(probe),
                humantime::format_duration(interval)
            ),
        );
    }
    // Below agent.interval it is agent.interval (schedule::step_period).
    let idle = cfg.agent.idle_interval;
    if idle < Duration::from_millis(100) || idle > Duration::from_secs(3600) {
        return bad(
            "agent.idle_interval",
            format!(
                "{} is out of range 100ms ..= 1h",
                humantime::format_duration(idle)
            ),
        );
    }
    let every = cfg.agent.composition_interval;
    if !every.is_zero() && (every < Duration::from_secs(1) || every > Duration::from_secs(86_400)) {
        return bad(
            "agent.composition_interval",
            format!(
                "{} is out of range 1s ..= 1d (or 0: never)",
                humantime::format_duration(every)
            ),
        );
    }
    if !(1_000..=100_000_000).contains(&cfg.agent.flood_rate) {
        return bad(
            "agent.flood_rate",
            format!(
                "{} is out of range 1000 ..= 100000000 entries a second",
                cfg.agent.flood_rate
            ),
        );
    }
    let t = &cfg.timeouts;
    for (key, &floor) in &t.floors {
        let full = sysctl::full(key);
        let (least, what) = if full.ends_with("_established") {
            (
                KEEPALIVE_SECS,
                "TCP keepalive's 2h and would drop idle SSH and database sessions",
            )
        } else if tunables::STALLED_ESTABLISHED.contains(&full.as_str()) {
            (
                tunables::TCP_RTO_MAX_SECS,
                "TCP's largest retransmission interval (2m) and would drop stalled sessions",
            )
        } else {
            continue;
        };
        if floor < least && !t.allow_established_below_keepalive {
            return bad(
                &format!("timeouts.floors.{key}"),
                format!(
                    "{} is below {what}; set timeouts.allow_established_below_keepalive: true to allow it",
                    units::fmt_secs(floor)
                ),
            );
        }
    }
    Ok(())
}

/// Finds the line (1-based) of a dotted key in YAML text by indentation, for messages.
pub fn locate(text: &str, dotted: &str) -> Option<usize> {
    let mut parts = dotted.split('.').peekable();
    let mut want = parts.next()?;
    let mut min_indent: isize = -1;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        let indent = (line.len() - trimmed.len()) as isize;
        if indent <= min_indent {
            continue;
        }
        if trimmed
            .strip_prefix(want)
            .is_some_and(|r| r.trim_start().starts_with(':'))
        {
            match parts.next() {
                Some(next) => {
                    want = next;
                    min_indent = indent;
                }
                None => return Some(i + 1),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("/etc/ctune/ctune.yaml"))
    }

    #[test]
    fn embedded_default_is_valid_and_documented_values_hold() {
        let c = Config::default();
        assert_eq!(c.hash.ratio, 4);
        assert_eq!(c.namespaces.mode, NamespaceMode::All);
        assert!(!c.max.shrink.enabled);
        assert_eq!(c.timeouts.floors["generic_timeout"], 120);
        assert_eq!(c.timeouts.floors["tcp_timeout_established"], 54000);
        assert_eq!(
            c.timeouts.floor_of("nf_conntrack_generic_timeout"),
            Some(120)
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(p("").unwrap(), Config::default());
        assert_eq!(p("# nothing\n").unwrap(), Config::default());
    }

    #[test]
    fn role_auto_holds_every_roles_ceiling_and_a_role_fixes_one() {
        let auto = p("").unwrap();
        assert_eq!(auto.role, RoleSetting::Auto);
        assert_eq!(
            auto.ceiling.memory_fraction.get(),
            0.05,
            "host's until a step decides"
        );
        assert_eq!(
            auto.for_role(Role::Router).ceiling.memory_fraction.get(),
            0.5
        );
        assert_eq!(auto.for_role(Role::Node).ceiling.reserve_min, 256 << 20);
        // The operator's key wins over every role's preset.
        let capped = p("ceiling:\n  memory_fraction: 0.2\n").unwrap();
        for role in Role::ALL {
            assert_eq!(capped.for_role(role).ceiling.memory_fraction.get(), 0.2);
        }
        let router = p("role: router\n").unwrap();
        assert_eq!(router.role, RoleSetting::Fixed(Role::Router));
        assert_eq!(
            router.for_role(Role::Host),
            router,
            "a fixed role is not swapped"
        );
        assert_eq!(auto.fixed_to(Role::Router), router);
        let e = p("role: gateway\n").unwrap_err().to_string();
        assert!(e.contains("expected auto, host, node or router"), "{e}");
    }

    /// The packages install config/ctune.yaml as /etc/ctune/ctune.yaml: a copy of it
    /// with a role set must give that role's budget, not the file's.
    #[test]
    fn a_copy_of_the_shipped_file_leaves_the_budget_to_the_role() {
        for role in Role::ALL {
            let text = DEFAULT_YAML.replace("\nrole: auto\n", &format!("\nrole: {role}\n"));
            assert_ne!(text, DEFAULT_YAML);
            let c = p(&text).unwrap();
            assert_eq!(c.ceiling, p("").unwrap().for_role(role).ceiling, "{role}");
        }
        assert_eq!(p(DEFAULT_YAML).unwrap(), p("").unwrap());
    }

    #[test]
    fn an_edit_of_the_ceiling_holds_under_every_role() {
        let mut c = p("").unwrap();
        c.edit_ceiling(|c| c.memory_cap = Some(64 << 20));
        for role in Role::ALL {
            assert_eq!(c.for_role(role).ceiling.memory_cap, Some(64 << 20));
        }
    }

    #[test]
    fn partial_file_overrides_only_what_it_names() {
        let c = p("hash:\n  ratio: 2\n").unwrap();
        assert_eq!(c.hash.ratio, 2);
        assert_eq!(c.hash.min_interval, Config::default().hash.min_interval);
        assert_eq!(c.max, Config::default().max);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = p("hash:\n  ratio: 4\n  ratoi: 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/ctune/ctune.yaml"), "{err}");
        assert!(err.contains("ratoi"), "{err}");
        assert!(err.contains('3'), "line number missing: {err}");
    }

    #[test]
    fn wrong_type_is_rejected_with_key() {
        let err = p("hash:\n  ratio: four\n").unwrap_err().to_string();
        assert!(err.contains("four") || err.contains("ratio"), "{err}");
    }

    #[test]
    fn out_of_range_fraction_is_rejected() {
        let err = p("max:\n  high_watermark: 1.5\n").unwrap_err().to_string();
        assert!(err.contains("1.5") && err.contains("out of range"), "{err}");
    }

    #[test]
    fn bad_duration_is_rejected() {
        let err = p("hash:\n  min_interval: soon\n").unwrap_err().to_string();
        assert!(err.contains("soon") && err.contains("duration"), "{err}");
    }

    #[test]
    fn cross_field_errors_name_line_and_key() {
        let text = "pressure:\n  elevated:\n    enter: 0.8\n    exit: 0.9\n";
        let err = p(text).unwrap_err().to_string();
        assert!(
            err.contains("/etc/ctune/ctune.yaml:4: pressure.elevated.exit"),
            "{err}"
        );
    }

    #[test]
    fn established_floor_below_keepalive_needs_consent() {
        let text = "timeouts:\n  floors:\n    tcp_timeout_established: 1h\n";
        let err = p(text).unwrap_err().to_string();
        assert!(
            err.contains(":3: timeouts.floors.tcp_timeout_established"),
            "{err}"
        );
        let ok = p("timeouts:\n  allow_established_below_keepalive: true\n  floors:\n    tcp_timeout_established: 1h\n").unwrap();
        let defaults = Config::default().timeouts.floors;
        assert_eq!(
            ok.timeouts.floors.len(),
            defaults.len(),
            "a partial map overrides"
        );
        assert_eq!(ok.timeouts.floors["tcp_timeout_established"], 3600);
    }

    #[test]
    fn a_partial_floors_map_overrides_only_its_keys_and_off_unmanages_one() {
        let c =
            p("timeouts:\n  floors:\n    udp_timeout: 20s\n    generic_timeout: off\n").unwrap();
        let defaults = Config::default().timeouts.floors;
        assert_eq!(c.timeouts.floors["udp_timeout"], 20);
        assert!(!c.timeouts.floors.contains_key("generic_timeout"));
        assert_eq!(c.timeouts.floors.len(), defaults.len() - 1);
        assert_eq!(c.timeouts.floors["icmp_timeout"], defaults["icmp_timeout"]);
    }

    #[test]
    fn a_prefixed_floor_name_is_an_alias_and_wins_over_the_default() {
        let c = p("timeouts:\n  floors:\n    nf_conntrack_udp_timeout: 20s\n").unwrap();
        assert_eq!(c.timeouts.floors["udp_timeout"], 20);
        assert!(!c.timeouts.floors.contains_key("nf_conntrack_udp_timeout"));
    }

    #[test]
    fn a_misspelt_floor_names_line_key_and_the_nearest_name() {
        let err = p("timeouts:\n  floors:\n    tcp_timeout_establishd: 15h\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcp_timeout_establishd"), "{err}");
        assert!(
            err.contains("did you mean tcp_timeout_established?"),
            "{err}"
        );
        assert!(err.contains("line 3") || err.contains(":3"), "{err}");
    }

    #[test]
    fn floor_key_must_be_a_timeout() {
        let err = p("timeouts:\n  floors:\n    tcp_loose: 1h\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcp_loose"), "{err}");
    }

    #[test]
    fn max_cap_beyond_kernel_limit() {
        let err = p("ceiling:\n  max_cap: 4294967296\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("INT_MAX"), "{err}");
    }

    #[test]
    fn sizes_and_filling_namespaces() {
        let c = p("ceiling:\n  memory_cap: 2GiB\n  filling_namespaces: 3\n").unwrap();
        assert_eq!(c.ceiling.memory_cap, Some(2 << 30));
        assert_eq!(c.ceiling.filling_namespaces, FillingNamespaces::Fixed(3));
        assert!(p("ceiling:\n  filling_namespaces: 0\n").is_err());
        assert!(p("ceiling:\n  memory_cap: 2GB\n").is_err());
    }

    /// The schema check lets any field be absent, with a placeholder value; the merged
    /// config must therefore never need one: the embedded file, under each role's
    /// preset, names every field (the preset's keys are commented in the file, so that
    /// a copy of it leaves the budget to the role).
    #[test]
    fn embedded_default_names_every_field() {
        fn keys(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    let path = format!("{at}.{k}");
                    out.push(path.clone());
                    if k != "floors" {
                        keys(v, &path, out);
                    }
                }
            }
        }
        let (mut schema, mut file) = (Vec::new(), Vec::new());
        keys(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut schema,
        );
        schema.sort();
        for role in Role::ALL {
            let mut text: serde_json::Value = serde_saphyr::from_str(DEFAULT_YAML).unwrap();
            overlay(&mut text, serde_saphyr::from_str(role.preset()).unwrap());
            file.clear();
            keys(&text, "", &mut file);
            file.sort();
            assert_eq!(
                schema, file,
                "config/ctune.yaml under {role}'s preset must set every key of the schema"
            );
        }
    }

    #[test]
    fn an_empty_section_means_its_defaults() {
        let c = p("agent:\nhash:\n  ratio: 2\n").unwrap();
        assert_eq!(c.agent, Config::default().agent);
        assert_eq!(c.hash.ratio, 2);
        assert_eq!(c.hash.min_interval, Config::default().hash.min_interval);
    }

    #[test]
    fn locate_follows_nesting() {
        let text = "a:\n  b: 1\nc:\n  # b: no\n  b: 2\n";
        assert_eq!(locate(text, "a.b"), Some(2));
        assert_eq!(locate(text, "c.b"), Some(5));
        assert_eq!(locate(text, "c.x"), None);
    }

    #[test]
    fn a_line_indented_too_far_is_named_not_blamed_on_the_value_above() {
        let err = p("max:\n  high_watermark: 0.8\n   target_utilisation: 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hint: line 3 is indented further than line 2 (high_watermark)"),
            "{err}"
        );
        // A value that is wrong by itself gets no such hint.
        let err = p("max:\n  high_watermark: lots\n").unwrap_err().to_string();
        assert!(!err.contains("hint:"), "{err}");
    }

    #[test]
    fn persist_layout_is_systemd_by_default_or_openwrt() {
        assert_eq!(Config::default().persist.layout, Layout::Systemd);
        assert_eq!(
            p("persist:\n  layout: openwrt\n").unwrap().persist.layout,
            Layout::Openwrt
        );
        assert_eq!(
            p("persist:\n  layout: systemd\n").unwrap().persist.layout,
            Layout::Systemd
        );
        // An empty section keeps the default; the rest of the file is untouched.
        let c = p("persist:\nhash:\n  ratio: 2\n").unwrap();
        assert_eq!(c.persist, Config::default().persist);
        assert_eq!(c.hash.ratio, 2);
    }

    #[test]
    fn a_misspelt_layout_names_line_and_the_accepted_values() {
        let err = p("persist:\n  layout: openwrtt\n").unwrap_err().to_string();
        assert!(err.contains("/etc/ctune/ctune.yaml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("openwrtt"), "{err}");
        assert!(err.contains("systemd") && err.contains("openwrt"), "{err}");
        // Names are lowercase, as everywhere in the file.
        assert!(p("persist:\n  layout: OpenWrt\n").is_err());
        let err = p("persist:\n  layout: openwrt\n  layuot: systemd\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3")
                && err.contains("layuot")
                && err.contains("expected one of layout"),
            "{err}"
        );
    }

    #[test]
    fn metrics_textfile_is_auto_off_or_an_absolute_dir() {
        assert_eq!(Config::default().metrics.textfile_dir, TextfileDir::Auto);
        let c = p("metrics:\n  textfile_dir: off\n").unwrap();
        assert_eq!(c.metrics.textfile_dir, TextfileDir::Off);
        let c = p("metrics:\n  textfile_dir: /srv/prom\n  listen: 127.0.0.1:9815\n").unwrap();
        assert_eq!(c.metrics.textfile_dir, TextfileDir::Dir("/srv/prom".into()));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9815".parse().unwrap()));
        let err = p("metrics:\n  textfile_dir: prom\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("absolute"), "{err}");
        let err = p("metrics:\n  listen: localhost\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics") || err.contains("listen"), "{err}");
    }
}
