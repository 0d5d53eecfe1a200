//! The pure policy, `ctune_core::policy::decide`, tested without a kernel: table-driven
//! scenarios, sequences of samples fed back through the plan the way the agent applies it,
//! and property tests over random observations and configurations.
//!
//! Tests marked `#[ignore = "bug: ..."]` pin down behaviour that contradicts the design;
//! they fail today and are kept out of the default run so the suite stays green.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use ctune_core::config::{self, Band, Config, FillingNamespaces, Fraction};
use ctune_core::model::NetnsId;
use ctune_core::model::meminfo::MemInfo;
use ctune_core::model::stat::ConntrackStat;
use ctune_core::model::{Access, Global, Host, ModuleState, NamespaceObs, Observation};
use ctune_core::plan::{Change, Plan, Target, Why};
use ctune_core::policy::{self, PolicyState, decide};
use ctune_core::pressure::{Level, LevelState};
use ctune_core::tunables::{self, BUCKETS, ESTABLISHED, MAX};

/// The x86 page size the observations here carry.
const PAGE: u64 = tunables::DEFAULT_PAGE_SIZE;

/// The kernel's bucket limit for that page size.
fn kernel_buckets_limit() -> u64 {
    tunables::buckets_limit(PAGE)
}
use ctune_core::units::fmt_secs;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const INT_MAX: u64 = i32::MAX as u64;

/// Every timeout key of a 6.18 kernel (frag6 excluded, as observation does), at the
/// kernel's defaults in seconds.
const KERNEL_TIMEOUTS: &[(&str, u64)] = ctune_core::tunables::KERNEL_DEFAULT_TIMEOUTS;

/// The default floors (config/ctune.yaml), full key names, in seconds.
const DEFAULT_FLOORS: &[(&str, u64)] = &[
    ("nf_conntrack_generic_timeout", 120),
    ("nf_conntrack_udp_timeout", 10),
    ("nf_conntrack_udp_timeout_stream", 60),
    ("nf_conntrack_icmp_timeout", 10),
    ("nf_conntrack_icmpv6_timeout", 10),
    ("nf_conntrack_tcp_timeout_syn_sent", 30),
    ("nf_conntrack_tcp_timeout_syn_recv", 30),
    ("nf_conntrack_tcp_timeout_fin_wait", 30),
    ("nf_conntrack_tcp_timeout_close_wait", 30),
    ("nf_conntrack_tcp_timeout_last_ack", 15),
    ("nf_conntrack_tcp_timeout_time_wait", 30),
    ("nf_conntrack_tcp_timeout_max_retrans", 180),
    ("nf_conntrack_tcp_timeout_unacknowledged", 180),
    ("nf_conntrack_tcp_timeout_established", 54000),
];

fn kernel_timeouts() -> BTreeMap<String, u64> {
    KERNEL_TIMEOUTS
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The embedded defaults, parsed once.
fn default_cfg() -> Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(Config::default).clone()
}

/// A config from YAML overrides on the defaults, validated like the operator's file.
fn cfg_yaml(text: &str) -> Config {
    config::parse(text, Path::new("policy_props.yaml")).expect("test config is valid")
}

/// Whether a config passes ctune's own validation (serialised to JSON, which is YAML).
fn validate(cfg: &Config) -> Result<(), String> {
    let mut v = serde_json::to_value(cfg).map_err(|e| e.to_string())?;
    v["ceiling"]["filling_namespaces"] = match cfg.ceiling.filling_namespaces {
        FillingNamespaces::Auto => serde_json::json!("auto"),
        FillingNamespaces::Fixed(n) => serde_json::json!(n),
    };
    config::parse(&v.to_string(), Path::new("generated.yaml"))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The kernel's rounding of a hash size, written out independently of `tunables`.
fn round_up_512(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

/// ceil(n * f) saturating, as the policy computes count x (1 + headroom).
fn ceil_mul(n: u64, f: f64) -> u64 {
    let v = (n as f64 * f).ceil();
    if v >= u64::MAX as f64 {
        u64::MAX
    } else {
        v as u64
    }
}

/// The ceiling the policy derives for `obs` under `cfg` (one decision, fresh state).
fn ceiling_for(obs: &Observation, cfg: &Config) -> u64 {
    policy::ceiling_of(obs, cfg).value
}

// ---------------------------------------------------------------------------------------
// Observation builder
// ---------------------------------------------------------------------------------------

/// Builds an [`Observation`] as the kernel would show it: 24 GiB, 256 B slab objects,
/// kernel default timeouts in every namespace.
#[derive(Debug, Clone)]
struct ObsBuilder {
    max: u64,
    buckets: Option<u64>,
    mem_total: u64,
    entry_bytes: u64,
    namespaces: Vec<NamespaceObs>,
}

impl ObsBuilder {
    /// Global max, with the hash at max / 4 (so no resize is due).
    fn new(max: u64) -> Self {
        ObsBuilder {
            max,
            buckets: Some(tunables::round_buckets(max.div_ceil(4), PAGE)),
            mem_total: 24 * GIB,
            entry_bytes: 256,
            namespaces: Vec::new(),
        }
    }

    fn buckets(mut self, buckets: Option<u64>) -> Self {
        self.buckets = buckets;
        self
    }

    fn memory(mut self, bytes: u64) -> Self {
        self.mem_total = bytes;
        self
    }

    fn entry_bytes(mut self, bytes: u64) -> Self {
        self.entry_bytes = bytes;
        self
    }

    /// A namespace with zero loss counters and the kernel's default timeouts.
    fn ns(self, name: &str, inode: u64, count: u64) -> Self {
        self.ns_counters(name, inode, count, 0, 0)
    }

    /// A namespace with given cumulative `drop` and `early_drop` counters.
    fn ns_counters(mut self, name: &str, inode: u64, count: u64, drop: u64, early: u64) -> Self {
        let counters = [("drop", drop), ("early_drop", early), ("chainlength", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        self.namespaces.push(NamespaceObs {
            id: NetnsId {
                name: name.to_string(),
                inode,
            },
            count: Some(count),
            stat: Some(ConntrackStat {
                entries: count,
                counters,
                ..Default::default()
            }),
            timeouts: kernel_timeouts(),
            timeouts_unread: false,
            counters_unread: false,
            error: None,
            handle: None,
            composition: None,
        });
        self
    }

    fn build(self) -> Observation {
        Observation {
            module: ModuleState::BuiltIn,
            in_initial_netns: Some(true),
            global: Global {
                max: self.max,
                buckets: self.buckets,
                hashsize: self.buckets,
                expect_max: Some(4096),
                write_access: Access::WRITABLE,
                per_netns_max: false,
            },
            host: Host {
                cpus: 2,
                memory: MemInfo {
                    total_bytes: self.mem_total,
                    available_bytes: None,
                },
                entry_bytes: self.entry_bytes,
                entry_bytes_source: "sysfs".into(),
                page_size: PAGE,
                table_entries: None,
                memory_stall: None,
                facts: None,
            },
            namespaces: self.namespaces,
            notes: Vec::new(),
        }
    }
}

fn ns_mut(obs: &mut Observation, inode: u64) -> &mut NamespaceObs {
    obs.namespaces
        .iter_mut()
        .find(|n| n.id.inode == inode)
        .expect("namespace in observation")
}

fn set_count(obs: &mut Observation, inode: u64, count: u64) {
    let n = ns_mut(obs, inode);
    n.count = Some(count);
    if let Some(s) = n.stat.as_mut() {
        s.entries = count;
    }
}

/// Raises a cumulative counter, as the kernel does.
fn bump(obs: &mut Observation, inode: u64, counter: &str, by: u64) {
    if let Some(s) = ns_mut(obs, inode).stat.as_mut() {
        let c = s.counters.entry(counter.to_string()).or_default();
        *c = c.saturating_add(by);
    }
}

/// Applies a plan to the observation, as the agent does when every write succeeds.
fn apply(obs: &mut Observation, plan: &Plan) {
    for c in &plan.changes {
        match &c.target {
            Target::Global if c.key == MAX => obs.global.max = c.new,
            Target::Global if c.key == BUCKETS => obs.global.buckets = Some(c.new),
            Target::Global => panic!("unexpected global key {}", c.key),
            Target::Namespace { netns } => {
                let n = ns_mut(obs, netns.inode);
                assert!(n.timeouts.contains_key(&c.key), "{} not live", c.key);
                n.timeouts.insert(c.key.clone(), c.new);
            }
        }
    }
}

/// Observation, config, state and clock of an agent run against a simulated kernel.
struct Sim {
    obs: Observation,
    cfg: Config,
    state: PolicyState,
    now: Duration,
    /// The operator's timeouts per namespace, before ctune touched anything.
    baselines: BTreeMap<u64, BTreeMap<String, u64>>,
}

impl Sim {
    fn new(obs: Observation, cfg: Config) -> Self {
        let baselines = obs
            .namespaces
            .iter()
            .map(|n| (n.id.inode, n.timeouts.clone()))
            .collect();
        Sim {
            obs,
            cfg,
            state: PolicyState::default(),
            now: Duration::ZERO,
            baselines,
        }
    }

    /// Decides at `now`, checks the invariants every plan must hold, applies the plan and
    /// keeps the next state.
    fn tick_at(&mut self, now: Duration) -> Plan {
        self.now = now;
        let (plan, next) = decide(&self.obs, &self.cfg, &self.state, now);
        check_plan(&self.obs, &self.cfg, &self.state, &plan, &self.baselines).unwrap();
        apply(&mut self.obs, &plan);
        self.state = next;
        plan
    }

    fn tick(&mut self, dt: Duration) -> Plan {
        self.tick_at(self.now + dt)
    }

    fn level(&self, inode: u64) -> Option<Level> {
        self.state
            .namespaces
            .get(&inode)
            .and_then(|n| n.level)
            .map(|l| l.level)
    }
}

/// The invariants every plan holds, whatever the input: (a) bounds of max, (b) headroom,
/// (c) the hash, (d) timeouts within [floor, operator's value], (g) reasons, and order.
fn check_plan(
    obs: &Observation,
    cfg: &Config,
    prev: &PolicyState,
    plan: &Plan,
    baselines: &BTreeMap<u64, BTreeMap<String, u64>>,
) -> Result<(), TestCaseError> {
    let cur = obs.global.max;
    let ceiling = plan.ceiling.value;
    let peak = obs
        .namespaces
        .iter()
        .filter_map(|n| n.count)
        .max()
        .unwrap_or(0);
    let required = ceil_mul(peak, 1.0 + cfg.max.headroom.get());

    // (a), (b): max.
    let mut new_max = cur.max(1);
    let max_changes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.key == MAX && c.target == Target::Global)
        .collect();
    prop_assert!(
        max_changes.len() <= 1,
        "max planned twice: {:?}",
        max_changes
    );
    if let Some(c) = max_changes.first() {
        prop_assert_eq!(c.old, cur);
        prop_assert_ne!(c.new, c.old, "a change that changes nothing: {:?}", c);
        prop_assert!(
            c.new >= 1,
            "max 0 means unlimited and must never be written"
        );
        prop_assert!(
            c.new <= ceiling.max(cur),
            "max {} -> {} above the ceiling {}",
            c.old,
            c.new,
            ceiling
        );
        prop_assert!(c.new <= INT_MAX, "max {} above INT_MAX", c.new);
        if c.new > c.old {
            prop_assert!(
                c.new >= ceiling.min(required),
                "grew to {} < min(ceiling {}, peak {} x (1 + headroom) = {})",
                c.new,
                ceiling,
                peak,
                required
            );
            // Growth never lets the table's projected memory (the busiest namespace at
            // the new max, the others as they are, the hash for it) exceed the budget,
            // unless min_max itself is above what the budget allows.
            if plan.ceiling.limited_by != ctune_core::ceiling::Limit::MinMax {
                let buckets = tunables::buckets_for(c.new, cfg.hash.ratio, PAGE);
                prop_assert!(
                    plan.ceiling.memory_at(c.new, buckets) <= plan.ceiling.budget_bytes,
                    "growth to {} costs {} over the budget {}: {:?}",
                    c.new,
                    plan.ceiling.memory_at(c.new, buckets),
                    plan.ceiling.budget_bytes,
                    plan.ceiling
                );
            }
        } else if plan.ceiling.over_budget() {
            // Memory relief: toward the ceiling, never below what the table holds plus
            // headroom.
            prop_assert_eq!(c.new, ceiling.max(required), "relief to {:?}", c);
            prop_assert!(c.new >= required);
        } else {
            prop_assert!(
                cfg.max.shrink.enabled,
                "shrank with shrink disabled: {:?}",
                c
            );
            prop_assert!(c.new >= required, "shrank to {} below {}", c.new, required);
            prop_assert!(c.new >= cfg.ceiling.min_max);
            // Shrinking only undoes ctune's growth, and never below what growth aims for.
            prop_assert!(c.new >= prev.baseline_max.unwrap_or(cur));
            prop_assert!(c.new >= ceil_mul(peak, 1.0 / cfg.max.target_utilisation.get()));
        }
        new_max = c.new;
    }

    // A table over its memory budget never keeps a max that lets it grow further.
    if plan.ceiling.over_budget()
        && cur != 0
        && obs.global.write_access.root_could
        && cur > ceiling.max(required)
    {
        prop_assert_eq!(
            new_max,
            ceiling.max(required),
            "over budget, max kept at {}",
            cur
        );
    }

    // (c): the hash follows max / ratio, rounded as the kernel does, and only grows.
    let bucket_changes: Vec<_> = plan
        .changes
        .iter()
        .filter(|c| c.key == BUCKETS && c.target == Target::Global)
        .collect();
    prop_assert!(bucket_changes.len() <= 1);
    if let Some(b) = bucket_changes.first() {
        let cur_b = obs.global.buckets;
        prop_assert_eq!(Some(b.old), cur_b, "resize planned from an unknown size");
        prop_assert!(b.new > b.old, "hash lowered {} -> {}", b.old, b.new);
        let ratio = u64::from(cfg.hash.ratio);
        // An operator's max above the ceiling gets the ceiling's hash.
        let want = round_up_512(new_max.min(ceiling).div_ceil(ratio));
        prop_assert_eq!(b.new, want.min(kernel_buckets_limit()));
        if !max_changes.is_empty() {
            prop_assert!(
                want <= kernel_buckets_limit(),
                "a max ctune sets needs no clamp"
            );
        }
        prop_assert!(b.new <= INT_MAX / 8);
        prop_assert_eq!(b.new % 512, 0);
    }

    // (d), (g) and order.
    let mut seen_namespace_change = false;
    let mut index_of_max = None;
    for (i, c) in plan.changes.iter().enumerate() {
        prop_assert!(!c.reason.trim().is_empty(), "empty reason: {:?}", c);
        match &c.target {
            Target::Global => {
                prop_assert!(!seen_namespace_change, "global change after timeouts");
                prop_assert!(c.key == MAX || c.key == BUCKETS, "global key {}", c.key);
                let named = format!("{} -> {}", c.old, c.new);
                prop_assert!(
                    c.reason.contains(&named),
                    "{:?} does not name {}",
                    c.reason,
                    named
                );
                if c.key == MAX {
                    index_of_max = Some(i);
                } else {
                    // Max before a bigger hash.
                    prop_assert!(index_of_max.is_none_or(|m| m < i));
                }
            }
            Target::Namespace { netns } => {
                seen_namespace_change = true;
                let live = obs
                    .namespaces
                    .iter()
                    .find(|n| n.id == *netns)
                    .and_then(|n| n.timeouts.get(&c.key).copied());
                prop_assert_eq!(Some(c.old), live, "old is not the live value: {:?}", c);
                let base = baselines[&netns.inode][&c.key];
                let floor = cfg.timeouts.floor_of(&c.key);
                // A key without a floor is only ever put back (its floor was removed
                // from the config while it was lowered).
                prop_assert!(
                    floor.is_some() || c.new == base,
                    "unmanaged key changed to other than the operator's value: {:?}",
                    c
                );
                let floor = floor.unwrap_or(base);
                prop_assert!(
                    c.new >= floor && c.new <= base,
                    "{} {} -> {} outside [floor {}, operator's {}]",
                    c.key,
                    c.old,
                    c.new,
                    floor,
                    base
                );
                let named = format!("{} -> {}", fmt_secs(c.old), fmt_secs(c.new));
                prop_assert!(
                    c.reason.contains(&named),
                    "{:?} does not name {}",
                    c.reason,
                    named
                );
            }
        }
    }
    // Across all namespaces: the established tier after every transient key.
    let established = |c: &Change| {
        c.target != Target::Global
            && tunables::tier_of(&c.key) == tunables::TimeoutTier::Established
    };
    let first_established = plan.changes.iter().position(established);
    if let Some(first) = first_established {
        prop_assert!(
            plan.changes[first..].iter().all(established),
            "a transient timeout after an established one: {:?}",
            plan.changes
        );
    }
    Ok(())
}

fn max_change(plan: &Plan) -> Option<&Change> {
    plan.global_change(MAX)
}

fn bucket_change(plan: &Plan) -> Option<&Change> {
    plan.global_change(BUCKETS)
}

fn timeout_changes(plan: &Plan, inode: u64) -> Vec<&Change> {
    plan.changes
        .iter()
        .filter(|c| matches!(&c.target, Target::Namespace { netns } if netns.inode == inode))
        .collect()
}

/// Whether an explanation says `needle`: for the wording. What kind of explanation the
/// plan gives is [`explains_why`].
fn explains(plan: &Plan, needle: &str) -> bool {
    plan.explanations.iter().any(|e| e.text.contains(needle))
}

fn explains_why(plan: &Plan, why: Why) -> bool {
    plan.explanations.iter().any(|e| e.kind == why)
}

// ---------------------------------------------------------------------------------------
// Table-driven cases
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
enum Expect {
    Unchanged,
    GrowsTo(u64),
    /// Grows to the ceiling, saying so.
    Capped,
}

#[test]
fn max_decisions_on_one_sample() {
    // 24 GiB, 256 B slab: ceiling about 5% x 24 GiB x 4 / ((384 x 4 + 8) x namespaces).
    let one_ns = ceiling_for(&ObsBuilder::new(1).ns("init", 1, 1).build(), &default_cfg());
    assert!((3_300_000..3_400_000).contains(&one_ns), "{one_ns}");
    let cases: &[(&str, u64, &[u64], Expect)] = &[
        ("idle", 262_144, &[1000], Expect::Unchanged),
        ("empty", 262_144, &[0], Expect::Unchanged),
        (
            "just below the high watermark",
            262_144,
            &[196_607],
            Expect::Unchanged,
        ),
        (
            "at the high watermark",
            262_144,
            &[196_608],
            Expect::GrowsTo(524_288),
        ),
        (
            "80% grows by grow_factor",
            262_144,
            &[209_716],
            Expect::GrowsTo(524_288),
        ),
        // Count above max (expired entries not reaped yet): lands at target_utilisation.
        (
            "count at 2x max",
            262_144,
            &[524_288],
            Expect::GrowsTo(1_048_576),
        ),
        (
            "tiny max lifts to min_max",
            1000,
            &[800],
            Expect::GrowsTo(16_384),
        ),
        (
            "busiest namespace drives",
            262_144,
            &[1000, 5, 209_716],
            Expect::GrowsTo(524_288),
        ),
        ("near the ceiling", 3_000_000, &[2_400_000], Expect::Capped),
        (
            "operator above the ceiling, table within the budget",
            5_000_000,
            &[2_000_000],
            Expect::Unchanged,
        ),
        (
            "already at the ceiling",
            one_ns,
            &[one_ns],
            Expect::Unchanged,
        ),
    ];
    for (name, max, counts, expect) in cases {
        let mut b = ObsBuilder::new(*max);
        for (i, c) in counts.iter().enumerate() {
            b = b.ns(&format!("ns{i}"), 100 + i as u64, *c);
        }
        let obs = b.build();
        let cfg = default_cfg();
        let (plan, next) = decide(&obs, &cfg, &PolicyState::default(), secs(1000));
        let baselines = obs
            .namespaces
            .iter()
            .map(|n| (n.id.inode, n.timeouts.clone()))
            .collect();
        check_plan(&obs, &cfg, &PolicyState::default(), &plan, &baselines)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ceiling = plan.ceiling.value;
        let got = max_change(&plan);
        match expect {
            Expect::Unchanged => {
                assert!(got.is_none(), "{name}: {got:?}");
                assert_eq!(next.baseline_max, None, "{name}");
            }
            Expect::GrowsTo(v) => {
                let c =
                    got.unwrap_or_else(|| panic!("{name}: no growth: {:#?}", plan.explanations));
                assert_eq!(c.new, *v, "{name}");
                assert!(c.new as f64 >= *max as f64 * cfg.max.grow_factor, "{name}");
                assert!(c.new <= ceiling, "{name}");
                assert_eq!(
                    next.baseline_max,
                    Some(*max),
                    "{name}: operator's max remembered"
                );
            }
            Expect::Capped => {
                let c = got.unwrap_or_else(|| panic!("{name}: no growth"));
                assert_eq!(c.new, ceiling, "{name}");
                assert!(
                    c.reason.contains("capped at the ceiling"),
                    "{name}: {}",
                    c.reason
                );
            }
        }
        if matches!(expect, Expect::Unchanged) && counts.iter().any(|c| *c * 4 >= *max * 3) {
            assert!(
                explains(&plan, "ceiling"),
                "{name}: {:#?}",
                plan.explanations
            );
        }
    }
}

#[test]
fn no_pressure_plans_nothing() {
    let obs = ObsBuilder::new(262_144).ns("init", 1, 10_000).build();
    let (plan, next) = decide(&obs, &default_cfg(), &PolicyState::default(), secs(5));
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    assert_eq!(plan.namespaces[0].level, Level::Normal);
    assert!(explains(&plan, "held"), "{:#?}", plan.explanations);
    assert!(explains_why(&plan, Why::FirstSample));
    assert_eq!(next.namespaces[&1].lowered.len(), 0);
}

#[test]
fn empty_namespaces_do_not_share_the_ceiling() {
    // The ceiling is what the busiest namespace may reach while the others keep what
    // they hold: forty empty namespaces change nothing, one holding 100k entries takes
    // exactly those.
    let cfg = default_cfg();
    let alone = policy::ceiling_of(&ObsBuilder::new(262_144).ns("a", 1, 10_000).build(), &cfg);
    let mut crowd = ObsBuilder::new(262_144).ns("a", 1, 10_000);
    for i in 0..40 {
        crowd = crowd.ns(&format!("empty{i}"), 100 + i, 0);
    }
    let crowd = policy::ceiling_of(&crowd.build(), &cfg);
    assert_eq!(crowd.value, alone.value);
    let busy = ObsBuilder::new(262_144)
        .ns("a", 1, 10_000)
        .ns("b", 2, 100_000)
        .build();
    let busy = policy::ceiling_of(&busy, &cfg);
    assert_eq!(busy.other_entries, 10_000, "the busiest is b");
    assert_eq!(busy.value, alone.value - 10_000);
}

/// A table whose real memory passed its budget (namespaces that filled in turn, or
/// memory that got scarce) brings max back toward the ceiling, never below what the
/// busiest namespace holds, and every namespace goes critical.
#[test]
fn a_table_over_its_budget_brings_max_down_and_goes_critical() {
    let cfg = default_cfg();
    let ceiling = policy::ceiling_of(&ObsBuilder::new(1).ns("a", 1, 0).build(), &cfg).value;
    // Two namespaces at 90 % of the ceiling each: twice the budget, under a max twice
    // the ceiling (set when the other namespace was empty, or by the operator).
    let obs = ObsBuilder::new(ceiling * 2)
        .ns("a", 1, ceiling * 9 / 10)
        .ns("b", 2, ceiling * 9 / 10)
        .build();
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    assert!(plan.ceiling.over_budget(), "{:?}", plan.ceiling);
    let c = max_change(&plan).expect("max comes down");
    let holds = ceiling * 9 / 10;
    assert_eq!(
        c.new,
        (holds as f64 * 1.25).ceil() as u64,
        "what the busiest holds + headroom: {c:?}"
    );
    assert!(c.new < c.old);
    assert!(c.reason.contains("over its budget"), "{}", c.reason);
    assert!(
        plan.namespaces.iter().all(|v| v.level == Level::Critical),
        "{:#?}",
        plan.namespaces
    );
}

/// MemAvailable under the reserve: growth stops. The namespaces where the table's memory
/// is go critical when cutting there relieves the host; when the host is short by far
/// more than the whole table costs, none does (issue 24).
#[test]
fn a_host_short_of_memory_stops_growth() {
    let cfg = default_cfg();
    let mut obs = ObsBuilder::new(262_144).ns("a", 1, 230_000).build();
    obs.host.memory.available_bytes = Some(10 << 20);
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    assert!(plan.ceiling.memory_short);
    let reserve = plan.ceiling.reserve_bytes;
    // Nothing to spare: the table may grow no further than its headroom.
    let mut obs = ObsBuilder::new(400_000).ns("a", 1, 230_000).build();
    obs.host.memory.available_bytes = Some(10 << 20);
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    let c = max_change(&plan).expect("max capped at what the table holds + headroom");
    assert_eq!((c.old, c.new), (400_000, 287_500));
    assert!(c.reason.contains("short of memory"), "{}", c.reason);
    // Short by 1.2 GiB, and the table's 230k entries cost about 60 MB: not what is short.
    assert_eq!(plan.namespaces[0].level, Level::Normal);
    assert!(
        explains(&plan, "the table's memory is not in netns a"),
        "{:#?}",
        plan.explanations
    );
    // Short by 16 MiB: the table is where the memory is.
    let mut obs = ObsBuilder::new(400_000).ns("a", 1, 230_000).build();
    obs.host.memory.available_bytes = Some(reserve - (16 << 20));
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    assert_eq!(plan.namespaces[0].level, Level::Critical);
    // Memory stall alone: no growth, elevated.
    let mut obs = ObsBuilder::new(262_144).ns("a", 1, 200_000).build();
    obs.host.memory_stall = Some(25.0);
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    assert!(max_change(&plan).is_none(), "{:?}", plan.changes);
    assert!(explains(&plan, "memory stall"), "{:#?}", plan.explanations);
    assert_eq!(plan.namespaces[0].level, Level::Elevated);
}

#[test]
fn rising_drop_counter_grows_max() {
    for counter in ["drop", "early_drop"] {
        let obs = ObsBuilder::new(262_144)
            .ns_counters("init", 7, 50_000, 1_000, 1_000)
            .build();
        let mut sim = Sim::new(obs, sampled_every_30s());
        // First sample: counters are cumulative since boot, their level says nothing.
        let plan = sim.tick_at(secs(100));
        assert!(max_change(&plan).is_none(), "{counter}: {:?}", plan.changes);
        assert!(explains_why(&plan, Why::FirstSample));
        // Unchanged counters: still nothing.
        let plan = sim.tick(secs(30));
        assert!(max_change(&plan).is_none(), "{counter}");
        // The counter rises at 19% utilisation: grow anyway.
        bump(&mut sim.obs, 7, counter, 25);
        let plan = sim.tick(secs(30));
        let c = max_change(&plan).unwrap_or_else(|| panic!("{counter}: {plan:#?}"));
        assert_eq!((c.old, c.new), (262_144, 524_288), "{counter}");
        assert!(
            c.reason.contains(&format!("{counter} counter rose by 25"))
                || c.reason.contains(&format!("{counter} rose by 25")),
            "{}",
            c.reason
        );
        assert_eq!(
            plan.namespaces[0].drop_delta.unwrap() + plan.namespaces[0].early_drop_delta.unwrap(),
            25
        );
        // Loss that growth answers does not lower timeouts.
        assert_eq!(plan.namespaces[0].level, Level::Normal, "{counter}");
        assert!(timeout_changes(&plan, 7).is_empty());
    }
}

/// A namespace at 50% of a max that already equals the ceiling.
/// The defaults with a 30 s agent interval, for simulations that step every 30 s: a
/// counter's rise is only measured against a sample a few intervals old.
fn sampled_every_30s() -> Config {
    cfg_yaml("agent:\n  interval: 30s\n")
}

fn at_ceiling_sim() -> (Sim, u64) {
    let cfg = sampled_every_30s();
    let ceiling = ceiling_for(&ObsBuilder::new(1).ns("init", 1, 1).build(), &cfg);
    let obs = ObsBuilder::new(ceiling)
        .ns_counters("init", 1, ceiling / 2, 10, 0)
        .build();
    (Sim::new(obs, cfg), ceiling)
}

/// A drop rise measured against a sample older than a few intervals is no signal
/// (issue: an `apply` hours after an old drop grew max).
#[test]
fn a_stale_sample_is_a_first_sample() {
    let (mut sim, _) = at_ceiling_sim();
    sim.tick_at(secs(0));
    bump(&mut sim.obs, 1, "drop", 10);
    // 2 hours later (the agent was stopped): the rise could have happened any time.
    let plan = sim.tick_at(secs(7200));
    assert_eq!(sim.level(1), Some(Level::Normal), "{plan:#?}");
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    assert!(
        explains(&plan, "the previous sample is 2h old"),
        "{:#?}",
        plan.explanations
    );
    // From this sample on, rises count again.
    bump(&mut sim.obs, 1, "drop", 10);
    sim.tick(secs(30));
    assert_eq!(sim.level(1), Some(Level::Critical));
}

/// Drops that come with as many insert failures are clashes (`nf_ct_resolve_clash`),
/// not a full table: at 0.4 % of max and at the ceiling alike, nothing moves.
#[test]
fn clashes_are_not_a_full_table() {
    let (mut sim, _) = at_ceiling_sim();
    bump(&mut sim.obs, 1, "insert_failed", 0);
    sim.tick_at(secs(0));
    bump(&mut sim.obs, 1, "drop", 6);
    bump(&mut sim.obs, 1, "insert_failed", 6);
    let plan = sim.tick(secs(30));
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    assert_eq!(sim.level(1), Some(Level::Normal));
    assert_eq!(plan.namespaces[0].clash_delta, Some(6));
    assert_eq!(plan.namespaces[0].drop_delta, Some(0));
    assert!(explains_why(&plan, Why::Clash), "{:#?}", plan.explanations);
    // A full table on top of the clashes still counts.
    bump(&mut sim.obs, 1, "drop", 9);
    bump(&mut sim.obs, 1, "insert_failed", 4);
    let plan = sim.tick(secs(30));
    assert_eq!(plan.namespaces[0].drop_delta, Some(5));
    assert_eq!(sim.level(1), Some(Level::Critical));
}

#[test]
fn drops_at_the_ceiling_lower_timeouts_established_last() {
    let (mut sim, ceiling) = at_ceiling_sim();
    let plan = sim.tick_at(secs(0));
    assert!(plan.changes.is_empty(), "{:#?}", plan.changes);
    bump(&mut sim.obs, 1, "drop", 10);
    let plan = sim.tick(secs(30));
    assert!(max_change(&plan).is_none());
    assert_eq!(sim.obs.global.max, ceiling);
    assert!(explains(&plan, "cannot grow"), "{:#?}", plan.explanations);
    assert_eq!(plan.namespaces[0].level, Level::Critical);
    assert!(plan.namespaces[0].level_reason.contains("drop"));

    let changes = timeout_changes(&plan, 1);
    let got: Vec<(&str, u64, u64)> = changes
        .iter()
        .map(|c| (c.key.as_str(), c.old, c.new))
        .collect();
    // Every floored key whose default is above its floor, lowered to the floor.
    let mut want: Vec<(&str, u64, u64)> = DEFAULT_FLOORS
        .iter()
        .map(|(k, floor)| (*k, kernel_timeouts()[*k], *floor))
        .filter(|(_, old, floor)| old > floor)
        .collect();
    let established = |k: &str| tunables::tier_of(k) == tunables::TimeoutTier::Established;
    want.sort_by_key(|(k, _, _)| (established(k), *k));
    assert_eq!(got, want);
    // The established tier last: idle established TCP, and the stalled-session keys.
    let tail: Vec<&str> = got[got.len() - 3..].iter().map(|c| c.0).collect();
    assert_eq!(
        tail,
        [
            ESTABLISHED,
            "nf_conntrack_tcp_timeout_max_retrans",
            "nf_conntrack_tcp_timeout_unacknowledged"
        ]
    );
    assert!(changes.iter().all(|c| c.reason.contains("critical")));
    // Keys without a floor (gre, sctp, tcp close) stay untouched.
    assert!(
        changes
            .iter()
            .all(|c| !c.key.contains("gre") && !c.key.contains("sctp"))
    );
}

#[test]
fn timeouts_restored_after_pressure_ends_and_hold_passes() {
    let (mut sim, _) = at_ceiling_sim();
    sim.tick_at(secs(0));
    bump(&mut sim.obs, 1, "drop", 10);
    let t_critical = secs(30);
    sim.tick_at(t_critical);
    assert_eq!(sim.level(1), Some(Level::Critical));
    let lowered = sim.obs.namespaces[0].timeouts.clone();
    assert_eq!(lowered[ESTABLISHED], 54_000);

    // Drops stop; utilisation (50%) is below both exits. Nothing moves within the hold.
    let hold = sim.cfg.pressure.hold;
    let mut t = t_critical;
    while t + secs(30) < t_critical + hold {
        t += secs(30);
        let plan = sim.tick_at(t);
        assert!(plan.changes.is_empty(), "at {t:?}: {:#?}", plan.changes);
        assert_eq!(sim.level(1), Some(Level::Critical));
    }
    // Hold over: one step down; the established tier comes back first.
    let plan = sim.tick_at(t_critical + hold);
    assert_eq!(sim.level(1), Some(Level::Elevated));
    let restored: Vec<_> = timeout_changes(&plan, 1)
        .iter()
        .map(|c| (c.key.clone(), c.new))
        .collect();
    assert_eq!(
        restored,
        [
            (ESTABLISHED.to_string(), 432_000),
            ("nf_conntrack_tcp_timeout_max_retrans".to_string(), 300),
            ("nf_conntrack_tcp_timeout_unacknowledged".to_string(), 300),
        ]
    );
    assert!(plan.changes[0].reason.contains("restoring"));
    // Another hold at elevated: the transient keys come back, to the operator's values.
    let plan = sim.tick_at(t_critical + hold + hold - secs(1));
    assert!(plan.changes.is_empty());
    let plan = sim.tick_at(t_critical + hold + hold);
    assert_eq!(sim.level(1), Some(Level::Normal));
    assert_eq!(
        timeout_changes(&plan, 1).len(),
        11,
        "the transient tier: 14 floored keys less the three of the established tier"
    );
    assert_eq!(sim.obs.namespaces[0].timeouts, kernel_timeouts());
    assert!(sim.state.namespaces[&1].lowered.is_empty());
    // And it stays that way.
    for _ in 0..10 {
        assert!(sim.tick(secs(600)).changes.is_empty());
    }
}

#[test]
fn hash_resize_is_rate_limited() {
    let obs = ObsBuilder::new(262_144).ns("init", 1, 209_716).build();
    let mut sim = Sim::new(obs, default_cfg());
    let plan = sim.tick_at(secs(1000));
    assert_eq!(max_change(&plan).map(|c| c.new), Some(524_288));
    let b = bucket_change(&plan).expect("first growth resizes the hash");
    assert_eq!((b.old, b.new), (65_536, 131_072));

    // A second growth a minute later: max grows, the resize waits.
    set_count(&mut sim.obs, 1, 419_431);
    let plan = sim.tick_at(secs(1060));
    assert_eq!(max_change(&plan).map(|c| c.new), Some(1_048_576));
    assert!(bucket_change(&plan).is_none(), "{:#?}", plan.changes);
    assert!(explains(&plan, "deferred"), "{:#?}", plan.explanations);
    assert!(explains(&plan, "131072 -> 262144 deferred"));

    // Still within min_interval (10m) of the first resize.
    let plan = sim.tick_at(secs(1000 + 599));
    assert!(bucket_change(&plan).is_none());
    assert!(explains(&plan, "deferred"));
    // Interval over: the hash catches up with max in one step.
    let plan = sim.tick_at(secs(1000 + 600));
    let b = bucket_change(&plan).expect("resize after the interval");
    assert_eq!((b.old, b.new), (131_072, 262_144));
    assert!(max_change(&plan).is_none());
    assert_eq!(sim.state.last_resize, Some(secs(1600)));
}

#[test]
fn hash_only_grows() {
    let cfg = default_cfg();
    // A hash far above max / ratio is left alone, at any load.
    for count in [0, 100_000, 209_716, 600_000] {
        let obs = ObsBuilder::new(262_144)
            .buckets(Some(1_048_576))
            .ns("init", 1, count)
            .build();
        let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(0));
        assert!(
            bucket_change(&plan).is_none(),
            "count {count}: {:#?}",
            plan.changes
        );
    }
    // Slightly below max / ratio but within tolerance: held, and said so.
    let obs = ObsBuilder::new(262_144)
        .buckets(Some(55_000))
        .ns("init", 1, 0)
        .build();
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(0));
    assert!(bucket_change(&plan).is_none());
    assert!(
        explains(&plan, "hash 55000 held"),
        "{:#?}",
        plan.explanations
    );
    // Unknown size: never planned.
    let obs = ObsBuilder::new(262_144)
        .buckets(None)
        .ns("init", 1, 209_716)
        .build();
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(0));
    assert!(bucket_change(&plan).is_none());
    assert!(explains(&plan, "hash size unknown"));
    // A shrinking max never shrinks the hash.
    let mut cfg = cfg_yaml("max:\n  shrink:\n    enabled: true\n    after: 1h\n");
    cfg.ceiling.min_max = 1024;
    let obs = ObsBuilder::new(1_048_576).ns("init", 1, 10).build();
    let mut sim = Sim::new(obs, cfg);
    sim.state.baseline_max = Some(16_384);
    for h in 0..48 {
        let plan = sim.tick_at(secs(h * 3600));
        assert!(bucket_change(&plan).is_none(), "{:#?}", plan.changes);
    }
    assert!(sim.obs.global.max < 1_048_576, "it did shrink");
    assert_eq!(sim.obs.global.buckets, Some(262_144));
}

#[test]
fn shrink_disabled_by_default_never_lowers_max() {
    let obs = ObsBuilder::new(1_048_576)
        .ns("init", 1, 0)
        .ns("b", 2, 0)
        .build();
    let mut sim = Sim::new(obs, default_cfg());
    assert!(!sim.cfg.max.shrink.enabled);
    sim.state.baseline_max = Some(16_384);
    for h in 0..(30 * 24) {
        let plan = sim.tick_at(secs(h * 3600));
        assert!(plan.changes.is_empty(), "hour {h}: {:#?}", plan.changes);
        assert_eq!(sim.state.low_since, None);
    }
    assert_eq!(sim.obs.global.max, 1_048_576);
}

fn shrink_cfg() -> Config {
    cfg_yaml("max:\n  shrink:\n    enabled: true\n")
}

/// (case, max, count, baseline max, expected new max: None = held)
type ShrinkCase = (&'static str, u64, u64, Option<u64>, Option<u64>);

#[test]
fn shrink_floors() {
    let after = shrink_cfg().max.shrink.after;
    assert_eq!(after, secs(6 * 3600));
    let cases: &[ShrinkCase] = &[
        (
            "by the factor",
            1_000_000,
            1000,
            Some(65_536),
            Some(750_000),
        ),
        (
            "not below the operator's baseline",
            80_000,
            1000,
            Some(65_536),
            Some(65_536),
        ),
        ("not below min_max", 20_000, 100, Some(2_000), Some(16_384)),
        ("at the baseline: held", 65_536, 100, Some(65_536), None),
        ("at min_max: held", 16_384, 0, Some(1024), None),
        (
            "above the low watermark: held",
            1_000_000,
            200_000,
            Some(65_536),
            None,
        ),
    ];
    for (name, max, count, baseline, want) in cases {
        let obs = ObsBuilder::new(*max).ns("init", 1, *count).build();
        let prev = PolicyState {
            baseline_max: *baseline,
            low_since: Some(secs(1000)),
            ..PolicyState::default()
        };
        let cfg = shrink_cfg();
        // Not yet: one second short of `after`.
        let (plan, next) = decide(&obs, &cfg, &prev, secs(1000) + after - secs(1));
        assert!(
            max_change(&plan).is_none(),
            "{name}: early {:?}",
            plan.changes
        );
        if *count * 5 < *max {
            assert_eq!(next.low_since, Some(secs(1000)), "{name}");
        }
        let (plan, next) = decide(&obs, &cfg, &prev, secs(1000) + after);
        let base = BTreeMap::from([(1, kernel_timeouts())]);
        check_plan(&obs, &cfg, &prev, &plan, &base).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            max_change(&plan).map(|c| c.new),
            *want,
            "{name}: {:#?}",
            plan.explanations
        );
        if want.is_some() {
            assert_eq!(
                next.low_since,
                Some(secs(1000) + after),
                "{name}: waits `after` again"
            );
            assert!(bucket_change(&plan).is_none());
        }
    }
}

#[test]
fn shrink_stops_where_growth_would_aim() {
    // low_watermark close to target_utilisation and factor 0.5: the candidate (500k) is
    // below count x 1.25 (550k) and below count / target_utilisation (880k); shrinking
    // further would put the count above the high watermark and grow again.
    let cfg = cfg_yaml(
        "max:\n  target_utilisation: 0.5\n  shrink:\n    enabled: true\n    low_watermark: 0.45\n    factor: 0.5\n    after: 1h\n",
    );
    let obs = ObsBuilder::new(1_000_000).ns("init", 1, 440_000).build();
    let prev = PolicyState {
        baseline_max: Some(16_384),
        low_since: Some(secs(0)),
        ..PolicyState::default()
    };
    let (plan, _) = decide(&obs, &cfg, &prev, secs(3600));
    assert_eq!(max_change(&plan).map(|c| c.new), Some(880_000));
}

#[test]
fn shrink_enabled_follows_demand_down_slowly_to_the_baseline() {
    let obs = ObsBuilder::new(65_536).ns("init", 1, 60_000).build();
    let mut sim = Sim::new(obs, shrink_cfg());
    // Load climbs: ctune grows max three times, an hour apart.
    for count in [60_000, 120_000, 240_000] {
        set_count(&mut sim.obs, 1, count);
        let plan = sim.tick(secs(3600));
        assert!(max_change(&plan).is_some_and(|c| c.new > c.old));
    }
    assert_eq!(sim.obs.global.max, 524_288);
    assert_eq!(sim.state.baseline_max, Some(65_536));
    // Load goes away: shrink once per `after` (6h), by 0.75, down to the baseline.
    set_count(&mut sim.obs, 1, 1000);
    let mut maxes = Vec::new();
    let mut last_shrink = None;
    for _ in 0..(10 * 24 * 6) {
        let plan = sim.tick(secs(600));
        if let Some(c) = max_change(&plan) {
            assert!(c.new < c.old);
            if let Some(t) = last_shrink {
                assert!(sim.now - t >= sim.cfg.max.shrink.after, "shrinks too often");
            }
            last_shrink = Some(sim.now);
            maxes.push(c.new);
        }
    }
    assert_eq!(
        maxes,
        [
            393_216, 294_912, 221_184, 165_888, 124_416, 93_312, 69_984, 65_536
        ]
    );
    // A returning load grows it again at once.
    set_count(&mut sim.obs, 1, 60_000);
    let plan = sim.tick(secs(30));
    assert_eq!(max_change(&plan).map(|c| c.new), Some(131_072));
    assert_eq!(sim.state.low_since, None);
}

#[test]
fn level_does_not_flap_for_utilisation_around_a_threshold() {
    let cfg = default_cfg();
    for (band, enter) in [
        ("elevated", cfg.pressure.elevated.enter.get()),
        ("critical", cfg.pressure.critical.enter.get()),
    ] {
        let (changes, levels) = oscillate(&cfg, enter, 0.01, 200, 37);
        assert!(changes <= 2, "{band}: {changes} level changes: {levels:?}");
        let top = if band == "critical" {
            Level::Critical
        } else {
            Level::Elevated
        };
        assert_eq!(*levels.last().unwrap(), top, "{band}");
    }
}

/// Runs `ticks` decisions with one namespace's utilisation alternating `enter - d` and
/// `enter + d`, with max pinned at the ceiling (min_max = max_cap) so it cannot grow.
/// Returns the number of level changes (from normal) and the levels.
fn oscillate(cfg: &Config, enter: f64, d: f64, ticks: u64, step_secs: u64) -> (usize, Vec<Level>) {
    let mut cfg = cfg.clone();
    let m = 1_000_000;
    cfg.ceiling.min_max = m;
    cfg.ceiling.max_cap = m;
    cfg.max.shrink.enabled = false;
    // The property is about the utilisation bands: memory must not bind. (A table whose
    // memory oscillates across its budget is critical above it and, with ticks longer
    // than the hold, steps down below it each time: the memory signal has no band of its
    // own. Found by this test with 42 KB of extensions per entry; a design question,
    // not a utilisation flap.)
    cfg.ceiling.extension_bytes = 128;
    cfg.ceiling.memory_fraction = ctune_core::config::Fraction(0.5);
    cfg.ceiling.memory_cap = None;
    let obs = ObsBuilder::new(m).ns("init", 1, 0).build();
    let mut sim = Sim::new(obs, cfg);
    let mut levels = Vec::new();
    let mut last = Level::Normal;
    let mut changes = 0;
    for t in 0..ticks {
        let u = if t % 2 == 0 { enter - d } else { enter + d };
        set_count(&mut sim.obs, 1, (u * m as f64).round() as u64);
        let plan = sim.tick_at(secs(t * step_secs));
        assert!(max_change(&plan).is_none());
        let level = plan.namespaces[0].level;
        if level != last {
            changes += 1;
        }
        last = level;
        levels.push(level);
    }
    (changes, levels)
}

// ---------------------------------------------------------------------------------------
// Findings: behaviour that contradicts the design (ignored so the suite stays green)
// ---------------------------------------------------------------------------------------

#[test]

fn shrink_never_goes_below_the_operators_own_max() {
    let obs = ObsBuilder::new(262_144).ns("init", 1, 0).build();
    let mut sim = Sim::new(obs, shrink_cfg());
    for h in 0..=48 {
        sim.tick_at(secs(h * 3600));
    }
    // Actual: 262144 -> 196608 at 6h, then 147456, ... 26244 at 48h, on to min_max.
    assert_eq!(
        sim.obs.global.max, 262_144,
        "the operator's max, never touched by growth"
    );
}

#[test]

fn unlimited_max_is_not_turned_into_a_limit() {
    let obs = ObsBuilder::new(0).ns("init", 1, 5_000_000).build();
    let (plan, _) = decide(&obs, &default_cfg(), &PolicyState::default(), secs(0));
    // Actual: Change { old: 1, new: 3338046, reason: "count 500000000% of max ...;
    // raising max 1 -> 3338046 (capped at the ceiling)" }: the live value 0 is reported
    // as 1, and the unlimited table gets a limit below its 5M entries (instant drops);
    // the namespace is then judged at 150% of that max: critical, established lowered.
    assert!(max_change(&plan).is_none(), "{:#?}", plan.changes);
}

#[test]

fn lowered_record_survives_a_key_missing_from_one_sample() {
    let (mut sim, _) = at_ceiling_sim();
    sim.tick_at(secs(0));
    bump(&mut sim.obs, 1, "drop", 10);
    sim.tick_at(secs(30));
    assert_eq!(
        sim.obs.namespaces[0].timeouts["nf_conntrack_generic_timeout"],
        120
    );
    // One sample where generic_timeout could not be read (EIO, a race with a module
    // reload...): observation leaves the key out and notes an error.
    let saved = sim.obs.clone();
    let n = ns_mut(&mut sim.obs, 1);
    n.timeouts.remove("nf_conntrack_generic_timeout");
    n.error = Some("nf_conntrack_generic_timeout: Input/output error".into());
    sim.tick_at(secs(60));
    let mut obs = saved;
    obs.global = sim.obs.global.clone();
    sim.obs = obs;
    // Pressure ends; wait well past two holds.
    for t in 1..=20 {
        sim.tick_at(secs(60 + t * 60));
    }
    assert_eq!(sim.level(1), Some(Level::Normal));
    // Actual: 120 (ctune's floor) forever; every other key is back at its default.
    assert_eq!(sim.obs.namespaces[0].timeouts, kernel_timeouts());
}

#[test]

fn unmanaging_a_lowered_key_restores_it() {
    let (mut sim, _) = at_ceiling_sim();
    sim.tick_at(secs(0));
    bump(&mut sim.obs, 1, "drop", 10);
    sim.tick_at(secs(30));
    assert_eq!(
        sim.obs.namespaces[0].timeouts["nf_conntrack_udp_timeout"],
        10
    );
    // The operator reloads with a floors list that no longer names udp_timeout.
    sim.cfg.timeouts.floors.remove("udp_timeout");
    for t in 1..=20 {
        sim.tick_at(secs(30 + t * 60));
    }
    assert_eq!(sim.level(1), Some(Level::Normal));
    // Actual: 10 s (the old floor) forever: "keys not listed are never touched", yet
    // ctune's own change to it is never undone.
    assert_eq!(
        sim.obs.namespaces[0].timeouts["nf_conntrack_udp_timeout"],
        30
    );
}

#[test]

fn intermittent_drops_do_not_flap_the_level() {
    let (mut sim, _) = at_ceiling_sim();
    sim.tick_at(secs(0));
    let mut changes = 0;
    let mut established_writes = 0;
    let mut last = sim.level(1);
    for t in 1..=200u64 {
        if t % 2 == 1 {
            bump(&mut sim.obs, 1, "drop", 5);
        }
        let plan = sim.tick_at(secs(t * 30));
        established_writes += plan.changes.iter().filter(|c| c.key == ESTABLISHED).count();
        if sim.level(1) != last {
            changes += 1;
        }
        last = sim.level(1);
    }
    // Actual: 67 level changes and 67 writes of the established timeout (54000 <->
    // 432000) in 100 minutes, while packets are being lost every minute.
    assert!(
        changes <= 2,
        "{changes} level changes, {established_writes} established writes"
    );
}

#[test]

fn shrink_does_not_invite_the_next_growth() {
    // Valid config: low 0.45 < target 0.5 < high 0.75, factor 0.5.
    let cfg = cfg_yaml(
        "max:\n  target_utilisation: 0.5\n  shrink:\n    enabled: true\n    low_watermark: 0.45\n    factor: 0.5\n    after: 1h\n",
    );
    // The operator's 500k; ctune grows it to 1M at 88%; the load then stays at 440k.
    let obs = ObsBuilder::new(500_000).ns("init", 1, 440_000).build();
    let mut sim = Sim::new(obs, cfg);
    let mut moves = Vec::new();
    for _ in 0..(24 * 6) {
        let plan = sim.tick(secs(600));
        if let Some(c) = max_change(&plan) {
            moves.push((c.old, c.new));
        }
    }
    // Actual: [(500000, 1000000), (1000000, 550000), (550000, 1100000), (1100000, 550000),
    // (550000, 1100000), ...]: the shrink lands at 80% >= high_watermark 75%.
    assert!(moves.len() <= 2, "{moves:?}");
}

#[test]

fn memory_now_does_not_overflow() {
    let obs = ObsBuilder::new(INT_MAX)
        .entry_bytes(u64::MAX)
        .ns("a", 1, u64::MAX)
        .ns("b", 2, u64::MAX)
        .build();
    let _ = policy::ceiling_of(&obs, &default_cfg()).table_bytes;
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// A valid configuration with every knob drawn from its accepted range.
fn arb_config() -> impl Strategy<Value = Config> {
    let ceiling = (
        0.001f64..=1.0,
        prop::option::of(MIB..=8 * TIB),
        0u64..=65_536,
        1024u64..=(1 << 22),
        0.0f64..=1.0,
        prop_oneof![Just(None), (1u32..=64).prop_map(Some)],
    );
    let max = (
        0.3f64..=1.0,
        0.2f64..0.95,
        0.05f64..0.95,
        1.1f64..=16.0,
        0.01f64..=1.0,
        any::<bool>(),
        60u64..=86_400,
        0.5f64..=0.95,
    );
    let hash = (1u32..=64, 0.01f64..=1.0, 0u64..=3600);
    let pressure = (
        0.3f64..0.99,
        0.5f64..0.99,
        0.05f64..=1.0,
        0.5f64..0.99,
        0u64..=3600,
    );
    let timeouts = (
        prop::bool::weighted(0.9),
        prop::collection::vec(1u64..=1000, DEFAULT_FLOORS.len()),
        7200u64..=600_000,
    );
    (ceiling, max, hash, pressure, timeouts).prop_map(|(c, m, h, p, t)| {
        let mut cfg = default_cfg();
        cfg.ceiling.memory_fraction = Fraction(c.0);
        cfg.ceiling.memory_cap = c.1;
        cfg.ceiling.extension_bytes = c.2;
        cfg.ceiling.min_max = c.3;
        cfg.ceiling.max_cap = c.3 + ((INT_MAX - c.3) as f64 * c.4) as u64;
        cfg.ceiling.filling_namespaces =
            c.5.map_or(FillingNamespaces::Auto, FillingNamespaces::Fixed);
        let high = m.0;
        let target = high * m.1;
        cfg.max.high_watermark = Fraction(high);
        cfg.max.target_utilisation = Fraction(target);
        cfg.max.shrink.low_watermark = Fraction(target * m.2);
        cfg.max.grow_factor = m.3;
        cfg.max.headroom = Fraction(m.4);
        cfg.max.shrink.enabled = m.5;
        cfg.max.shrink.after = secs(m.6);
        cfg.max.shrink.factor = m.7;
        cfg.hash.ratio = h.0;
        cfg.hash.tolerance = Fraction(h.1);
        cfg.hash.min_interval = secs(h.2);
        let e_enter = p.0;
        let c_enter = (e_enter + (1.0 - e_enter) * p.2).min(1.0);
        cfg.pressure.elevated = Band {
            enter: Fraction(e_enter),
            exit: Fraction(e_enter * p.1),
        };
        cfg.pressure.critical = Band {
            enter: Fraction(c_enter),
            exit: Fraction(c_enter * p.3),
        };
        cfg.pressure.hold = secs(p.4);
        cfg.timeouts.manage = t.0;
        cfg.timeouts.floors = DEFAULT_FLOORS
            .iter()
            .zip(&t.1)
            .map(|((k, _), v)| {
                let short = k.strip_prefix("nf_conntrack_").unwrap().to_string();
                // The established tier's floors stay where validation accepts them.
                let floor = if *k == ESTABLISHED {
                    t.2
                } else if tunables::STALLED_ESTABLISHED.contains(k) {
                    v + tunables::TCP_RTO_MAX_SECS
                } else {
                    *v
                };
                (short, floor)
            })
            .collect();
        cfg
    })
}

/// A max from the whole range, but often where ceilings and counts are interesting.
fn arb_max() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..=INT_MAX, 1u64..=4_000_000, 10_000u64..=100_000_000]
}

/// Timeouts: kernel defaults, some replaced by operator values (0 ..= 10 days).
fn arb_timeouts() -> impl Strategy<Value = BTreeMap<String, u64>> {
    prop::collection::vec(
        prop::option::weighted(0.2, 0u64..=864_000),
        KERNEL_TIMEOUTS.len(),
    )
    .prop_map(|over| {
        KERNEL_TIMEOUTS
            .iter()
            .zip(over)
            .map(|((k, v), o)| (k.to_string(), o.unwrap_or(*v)))
            .collect()
    })
}

#[derive(Debug, Clone)]
struct World {
    /// MemAvailable as a share of MemTotal (None: a kernel without it).
    available: Option<f64>,
    max: u64,
    /// Buckets as a multiple of max (None: unreadable).
    buckets: Option<f64>,
    mem: u64,
    entry_bytes: u64,
    /// Per namespace: load (count / max) and timeouts.
    namespaces: Vec<(f64, BTreeMap<String, u64>)>,
    start: u64,
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        arb_max(),
        prop::option::weighted(0.9, 0.0f64..=2.0),
        64 * MIB..=4 * TIB,
        prop_oneof![1u64..=100_000, Just(256u64)],
        prop::collection::vec((0.0f64..=2.0, arb_timeouts()), 1..=5),
        0u64..=10_000_000,
        prop::option::weighted(0.7, 0.0f64..=1.0),
    )
        .prop_map(
            |(max, buckets, mem, entry_bytes, namespaces, start, available)| World {
                available,
                max,
                buckets,
                mem,
                entry_bytes,
                namespaces,
                start,
            },
        )
}

fn count_for(load: f64, max: u64) -> u64 {
    ((load * max as f64) as u64).min(max.saturating_mul(2))
}

fn world_obs(w: &World) -> Observation {
    let mut b = ObsBuilder::new(w.max)
        .memory(w.mem)
        .entry_bytes(w.entry_bytes)
        .buckets(w.buckets.map(|f| ((w.max as f64 * f) as u64).max(1)));
    for (i, (load, _)) in w.namespaces.iter().enumerate() {
        b = b.ns(
            &format!("ns{i}"),
            4_026_531_840 + i as u64,
            count_for(*load, w.max),
        );
    }
    let mut obs = b.build();
    for (n, (_, t)) in obs.namespaces.iter_mut().zip(&w.namespaces) {
        n.timeouts = t.clone();
    }
    obs.host.memory.available_bytes = w.available.map(|a| (w.mem as f64 * a) as u64);
    obs
}

#[derive(Debug, Clone)]
struct Step {
    dt: u64,
    /// Scales every load of the step: quiet spells, so that shrinking gets exercised.
    scale: f64,
    /// Per namespace (cycled): count / current max, drop and early_drop increments.
    loads: Vec<(f64, u64, u64)>,
}

/// Steps; `quiet` of every 4 have their load scaled down to at most 10%.
fn arb_steps(quiet: u32) -> impl Strategy<Value = Vec<Step>> {
    let increment = || prop_oneof![4 => Just(0u64), 1 => 1u64..=1000];
    let step = (
        prop_oneof![0u64..=60, 1u64..=3600, 1u64..=172_800],
        prop_oneof![4 - quiet => Just(1.0f64), quiet => 0.0f64..=0.1],
        prop::collection::vec((0.0f64..=2.0, increment(), increment()), 1..=5),
    )
        .prop_map(|(dt, scale, loads)| Step { dt, scale, loads });
    prop::collection::vec(step, 1..=16)
}

/// Runs a sequence, feeding each plan back as the agent would, checking every plan.
fn run_sequence(cfg: &Config, w: &World, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut sim = Sim::new(world_obs(w), cfg.clone());
    sim.now = secs(w.start);
    for step in steps {
        let max = sim.obs.global.max;
        let inodes: Vec<u64> = sim.obs.namespaces.iter().map(|n| n.id.inode).collect();
        for (i, inode) in inodes.iter().enumerate() {
            let (load, drop, early) = step.loads[i % step.loads.len()];
            set_count(&mut sim.obs, *inode, count_for(load * step.scale, max));
            bump(&mut sim.obs, *inode, "drop", drop);
            bump(&mut sim.obs, *inode, "early_drop", early);
        }
        let now = sim.now + secs(step.dt);
        let (plan, next) = decide(&sim.obs, &sim.cfg, &sim.state, now);
        check_plan(&sim.obs, &sim.cfg, &sim.state, &plan, &sim.baselines)?;
        // Pure: the same inputs give the same outputs.
        let again = decide(&sim.obs, &sim.cfg, &sim.state, now);
        prop_assert_eq!(&again.0, &plan);
        prop_assert_eq!(&again.1, &next);
        apply(&mut sim.obs, &plan);
        sim.state = next;
        sim.now = now;
    }
    Ok(())
}

proptest! {
    // Parsing YAML is slow in debug builds; 64 cases check the generator well enough.
    #![proptest_config(ctune_testkit::proptest_config(64))]

    #[test]
    fn generated_configs_are_valid(cfg in arb_config()) {
        prop_assert!(validate(&cfg).is_ok(), "{:?}", validate(&cfg));
    }
}

proptest! {
    // proptest's default number of cases; failures kept beside this file.
    #![proptest_config(ctune_testkit::proptest_config(256))]

    /// (a) - (d), (g) over random observations and sequences of samples.
    #[test]
    fn plans_hold_their_invariants(cfg in arb_config(), w in arb_world(), steps in arb_steps(2)) {
        run_sequence(&cfg, &w, &steps)?;
    }

    /// The same with the defaults, where most of the interesting thresholds lie.
    #[test]
    fn plans_hold_their_invariants_with_defaults(w in arb_world(), steps in arb_steps(2)) {
        run_sequence(&default_cfg(), &w, &steps)?;
    }

    /// The same with shrinking on and mostly quiet samples, so that it shrinks often.
    #[test]
    fn plans_hold_their_invariants_while_shrinking(
        cfg in arb_config().prop_map(|mut c| {
            c.max.shrink.enabled = true;
            c
        }),
        w in arb_world(),
        steps in arb_steps(3),
    ) {
        run_sequence(&cfg, &w, &steps)?;
    }

    /// (f) A utilisation alternating enter - d / enter + d changes the level at most
    /// twice in 200 ticks, for any valid bands whose hysteresis is wider than d.
    #[test]
    fn levels_do_not_flap(
        cfg in arb_config(),
        critical in any::<bool>(),
        d in 0.001f64..=0.01,
        step_secs in 1u64..=600,
    ) {
        let p = &cfg.pressure;
        let (e, c) = (p.elevated, p.critical);
        let band = if critical { c } else { e };
        let enter = band.enter.get();
        // The signal stays inside this band's hysteresis and away from the other band.
        prop_assume!(enter - d > band.exit.get() + 1e-5);
        // Around elevated: the upper value stays below critical, or the lower one stays
        // above critical's exit (then it is critical for good, also at most 2 changes).
        prop_assume!(critical || enter + d < c.enter.get() - 1e-5 || enter - d > c.exit.get() + 1e-5);
        let (changes, levels) = oscillate(&cfg, enter, d, 200, step_secs);
        prop_assert!(changes <= 2, "{} level changes: {:?}", changes, &levels[..20]);
    }

    /// (e) No arithmetic panic for any input, u64 extremes included.
    #[test]
    fn no_overflow_at_extremes(
        cfg in arb_extreme_config(),
        first in arb_extreme_obs(),
        second in arb_extreme_obs(),
        times in (arb_extreme_secs(), arb_extreme_secs()),
        prev in arb_extreme_state(),
    ) {
        let t0 = Duration::from_secs(times.0);
        let (_, next) = decide(&first, &cfg, &prev, t0);
        let _ = decide(&second, &cfg, &next, Duration::from_secs(times.1));
        let _ = decide(&second, &cfg, &next, Duration::MAX);
        let _ = decide(&first, &cfg, &PolicyState::default(), Duration::ZERO);
    }
}

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        Just(INT_MAX),
        Just(INT_MAX + 1),
        Just(u64::MAX / 2),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

fn arb_extreme_secs() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>(), 0u64..=1_000_000]
}

fn arb_extreme_obs() -> impl Strategy<Value = Observation> {
    (
        extreme_u64(),
        prop::option::of(extreme_u64()),
        extreme_u64(),
        extreme_u64(),
        prop::collection::vec(
            (
                prop::option::of(extreme_u64()),
                extreme_u64(),
                extreme_u64(),
                extreme_u64(),
                extreme_u64(),
                any::<bool>(),
            ),
            0..=5,
        ),
    )
        .prop_map(|(max, buckets, mem, entry, nss)| {
            let mut b = ObsBuilder::new(max)
                .buckets(buckets)
                .memory(mem)
                .entry_bytes(entry);
            for (i, (count, drop, early, chain, timeout, no_stat)) in nss.iter().enumerate() {
                b = b.ns_counters(
                    &format!("ns{i}"),
                    i as u64,
                    count.unwrap_or(0),
                    *drop,
                    *early,
                );
                let n = b.namespaces.last_mut().unwrap();
                n.count = *count;
                if let Some(s) = n.stat.as_mut() {
                    s.counters.insert("chainlength".into(), *chain);
                }
                if *no_stat {
                    n.stat = None;
                    n.error = Some("unreadable".into());
                }
                for v in n.timeouts.values_mut().step_by(3) {
                    *v = *timeout;
                }
            }
            b.build()
        })
}

fn arb_extreme_config() -> impl Strategy<Value = Config> {
    (
        arb_config(),
        any::<bool>(),
        prop_oneof![Just(1u32), Just(64u32)],
        prop_oneof![
            Just(FillingNamespaces::Auto),
            Just(FillingNamespaces::Fixed(u32::MAX))
        ],
        any::<bool>(),
    )
        .prop_map(|(mut cfg, top, ratio, filling, long)| {
            if top {
                cfg.ceiling.min_max = INT_MAX;
                cfg.ceiling.max_cap = INT_MAX;
                cfg.ceiling.memory_fraction = Fraction(1.0);
                cfg.ceiling.extension_bytes = 65_536;
                cfg.max.grow_factor = 16.0;
                cfg.max.headroom = Fraction(1.0);
            }
            cfg.hash.ratio = ratio;
            cfg.ceiling.filling_namespaces = filling;
            if long {
                let century = secs(100 * 365 * 86_400);
                cfg.pressure.hold = century;
                cfg.hash.min_interval = century;
                cfg.max.shrink.after = century;
            }
            cfg
        })
}

fn arb_extreme_state() -> impl Strategy<Value = PolicyState> {
    (
        prop::option::of(arb_extreme_secs()),
        prop::option::of(arb_extreme_secs()),
        prop::option::of(extreme_u64()),
        prop::collection::vec(
            (
                0u64..=5,
                extreme_u64(),
                arb_extreme_secs(),
                prop_oneof![
                    Just(Level::Normal),
                    Just(Level::Elevated),
                    Just(Level::Critical)
                ],
                extreme_u64(),
                extreme_u64(),
            ),
            0..=5,
        ),
    )
        .prop_map(|(resize, low, baseline, nss)| {
            let mut s = PolicyState {
                last_resize: resize.map(Duration::from_secs),
                low_since: low.map(Duration::from_secs),
                baseline_max: baseline,
                ..PolicyState::default()
            };
            for (inode, counter, since, level, base, set) in nss {
                let ns = s.namespaces.entry(inode).or_default();
                ns.counters = Some(policy::Counters {
                    drop: Some(counter),
                    early_drop: Some(counter),
                    chainlength: None,
                    insert_failed: None,
                    at: Some(Duration::from_secs(since)),
                });
                ns.level = Some(LevelState {
                    level,
                    since: Duration::from_secs(since),
                });
                ns.lowered.insert(
                    "nf_conntrack_generic_timeout".into(),
                    ctune_core::timeouts::Lowered {
                        baseline: base,
                        set,
                    },
                );
            }
            s
        })
}

#[test]
fn hash_rate_limit_gives_way_to_chains_that_would_refuse_inserts() {
    // The hash was resized a minute ago; max has since grown so far that a full table
    // would average 64 entries per chain (the kernel refuses inserts from 50-80).
    let cfg = default_cfg();
    let prev = PolicyState {
        last_resize: Some(secs(1000)),
        ..PolicyState::default()
    };
    let obs = ObsBuilder::new(262_144)
        .buckets(Some(8192))
        .ns("init", 1, 230_000)
        .build();
    let (plan, _) = decide(&obs, &cfg, &prev, secs(1060));
    let b = bucket_change(&plan).expect("resize despite hash.min_interval");
    assert!(
        b.reason.contains("before hash.min_interval"),
        "{}",
        b.reason
    );
    // A moderate lag still waits.
    let obs = ObsBuilder::new(262_144)
        .buckets(Some(65_536))
        .ns("init", 1, 230_000)
        .build();
    let (plan, _) = decide(&obs, &cfg, &prev, secs(1060));
    assert!(bucket_change(&plan).is_none());
    assert!(explains(&plan, "deferred"));
}

/// Finding 5 of the kernel review: while an operator's max is respected below the
/// ceiling, the count probe keeps running (the step that overrides it at the critical
/// level must not wait for the schedule); at the ceiling it pauses.
#[test]
fn the_probe_runs_while_an_operators_max_is_held() {
    let cfg = default_cfg();
    let mut prev = PolicyState::default();
    prev.applied.insert(MAX.into(), 200_000);
    // The operator lowered max to 100000; the table is at 80 % (past the 75 % watermark,
    // below critical): respected.
    let obs = ObsBuilder::new(100_000).ns("init", 1, 80_000).build();
    let (plan, next) = decide(&obs, &cfg, &prev, secs(10));
    assert!(next.operator_held.contains(MAX), "{:#?}", plan.explanations);
    assert!(max_change(&plan).is_none());
    assert!(!ctune_core::probe::paused_after(
        &plan, false, 100_000, &cfg
    ));
    // At the ceiling, an early step changes nothing: the probe pauses.
    let ceiling = plan.ceiling.value;
    let obs = ObsBuilder::new(ceiling)
        .ns("init", 1, ceiling * 8 / 10)
        .build();
    let (plan, _) = decide(&obs, &cfg, &PolicyState::default(), secs(10));
    assert!(ctune_core::probe::paused_after(&plan, false, ceiling, &cfg));
}
