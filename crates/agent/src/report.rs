//! What ctune prints: the dry-run plan and the status, as text for people and JSON for
//! scripts. Rendering is a pure function of the observation and the plan.

use ctune_core::model::Note;
use ctune_core::sysctl;
use serde::Serialize;
use std::fmt::Write as _;

use crate::act::persist::FileUpdate;
use ctune_core::ceiling::Ceiling;
use ctune_core::config::{self, Config};
use ctune_core::model::stat::split_drops;
use ctune_core::model::{ModuleState, NamespaceObs, Observation, StatSource};
use ctune_core::plan::{NamespaceVerdict, Plan, Target};
use ctune_core::pressure::Level;
use ctune_core::role::{InForce, Source};
use ctune_core::timeouts::Lowered;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::act::state::State;
use ctune_core::tunables;
use ctune_core::units::{fmt_bytes, fmt_count, fmt_pct, fmt_secs};

/// The version of the field lists of every `--json` output (`plan`, `status`, `apply`,
/// and `ctune-lab simulate`), printed first as `"schema"`. docs/json.md lists the fields;
/// a field renamed, removed or changed in meaning raises it, a field added does not.
pub const SCHEMA: u32 = 1;

/// Everything `ctune plan --json` prints, after `"schema"` (see [`SCHEMA`]; `main` builds
/// it, so the version is written by the serializer, not kept in a field).
#[derive(Debug)]
pub struct PlanReport<'a> {
    /// The config file used, or the embedded defaults.
    pub config: String,
    /// What was read.
    pub observation: &'a Observation,
    /// What would change and why.
    pub plan: &'a Plan,
    /// Files a real run would write.
    pub files: &'a [FileUpdate],
    /// What could not be read or will not apply.
    pub notes: &'a [Note],
}

impl Serialize for PlanReport<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'r> {
            schema: u32,
            config: &'r str,
            observation: &'r Observation,
            plan: &'r Plan,
            files: &'r [FileUpdate],
            notes: &'r [Note],
        }
        // Every field, so one added to PlanReport cannot be left out here.
        let PlanReport {
            config,
            observation,
            plan,
            files,
            notes,
        } = self;
        Json {
            schema: SCHEMA,
            config,
            observation,
            plan,
            files,
            notes,
        }
        .serialize(s)
    }
}

/// One namespace in `ctune status --json`.
#[derive(Debug, Serialize)]
pub struct NamespaceStatus {
    /// Name (`init`, a /run/netns name, `pid N (comm)`).
    pub name: String,
    /// nsfs inode.
    pub inode: u64,
    /// Entries now.
    pub count: Option<u64>,
    /// count / the live nf_conntrack_max.
    pub utilisation: Option<f64>,
    /// The pressure level now: against the live max and the loss during the sample,
    /// without ctune's hysteresis (None: count unreadable). Named as in the plan, whose
    /// `level` is the level after its changes.
    pub level_now: Option<Level>,
    /// Why the level now is what it is.
    pub level_now_reason: Option<String>,
    /// Packets dropped for a full table per second during the sample (`drop` less the
    /// clashes); None without a sample.
    pub drop_per_sec: Option<f64>,
    /// Packets dropped by insert clashes per second during the sample.
    pub clash_per_sec: Option<f64>,
    /// Entries evicted (`early_drop`) per second during the sample.
    pub early_drop_per_sec: Option<f64>,
    /// Cumulative `drop` since the namespace started: packets lost to a full table and
    /// to insert clashes.
    pub drop: Option<u64>,
    /// Of `drop`, those from unresolved insert clashes (`drop` matched by
    /// `insert_failed` that was not a chain refusal): NAT'd UDP races, not a full table.
    pub clash_drops: Option<u64>,
    /// Cumulative `early_drop`.
    pub early_drop: Option<u64>,
    /// Cumulative `insert_failed`.
    pub insert_failed: Option<u64>,
    /// Cumulative `chainlength` (inserts refused for chains over 64).
    pub chainlength: Option<u64>,
    /// Where the counters were read (None: they could not be).
    pub counters_source: Option<StatSource>,
    /// Every timeout in force in the namespace, seconds.
    pub timeouts: BTreeMap<String, u64>,
    /// The timeouts ctune lowered here (from its state): the operator's value and ctune's.
    pub lowered: BTreeMap<String, Lowered>,
    /// Why it could not be read, if so.
    pub error: Option<String>,
    /// What held its entries at the agent's last composition sample (taken while the
    /// namespace is elevated or critical); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composition: Option<ctune_core::model::Governed>,
}

/// Whether packets are being lost now, for people and for `status`'s exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every table below the elevated level, nothing dropped during the sample.
    Healthy,
    /// A table is over a pressure level now; nothing dropped during the sample.
    Pressure,
    /// Packets were dropped or evicted for a full table during the sample.
    Dropping,
}

impl Health {
    /// `status`'s exit code for this health.
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => crate::error::EXIT_OK,
            Health::Pressure => crate::error::EXIT_PRESSURE,
            Health::Dropping => crate::error::EXIT_DROPPING,
        }
    }
}

/// A global value ctune changed: the operator's value before (from ctune's state) and
/// the live one.
#[derive(Debug, Serialize)]
pub struct ChangedValue {
    /// The sysctl.
    pub key: String,
    /// The operator's value before ctune first changed it.
    pub operator: u64,
    /// The live value.
    pub now: Option<u64>,
    /// Someone else (an admin, kube-proxy at a restart) wrote over ctune's value since:
    /// `now` is theirs, adopted, and left alone until it becomes unsafe.
    pub held_by_operator: bool,
}

/// Everything `ctune status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// The version of the field list ([`SCHEMA`]).
    pub schema: u32,
    /// Healthy, over a level, or dropping now.
    pub health: Health,
    /// The sample the rates are measured over, seconds (0: one reading, no rates).
    pub sample_secs: f64,
    /// Global nf_conntrack_max.
    pub max: u64,
    /// Global hash size.
    pub buckets: Option<u64>,
    /// Built in or module.
    pub module: ModuleState,
    /// Whether ctune could write the global keys.
    pub global_writable: bool,
    /// Per namespace.
    pub namespaces: Vec<NamespaceStatus>,
    /// Global values ctune changed, with the operator's values (from ctune's state).
    pub changed: Vec<ChangedValue>,
    /// What the entries and hash cost now.
    pub memory_now_bytes: u64,
    /// Worst case at the ceiling: every filling namespace full.
    pub memory_at_ceiling_bytes: u64,
    /// The ceiling and its derivation.
    pub ceiling: Ceiling,
    /// The role whose budget the ceiling is, where it comes from, and the facts behind
    /// it (docs/json.md).
    pub role: Option<ctune_core::role::InForce>,
    /// What could not be read (and a config that could not be used).
    pub notes: Vec<Note>,
}

/// What `status` is built from: the sampled observation and decision, and ctune's state.
pub struct StatusInputs<'a> {
    /// The second observation of the sample.
    pub obs: &'a Observation,
    /// The decision on it (levels now, counter rises over the sample).
    pub plan: &'a Plan,
    /// The config in force.
    pub cfg: &'a Config,
    /// ctune's saved state (what it lowered and changed).
    pub state: &'a State,
    /// How long the sample was.
    pub sample: Duration,
    /// Notes beyond the observation's (an unusable config or state).
    pub notes: Vec<Note>,
}

/// Builds the status.
pub fn status(i: StatusInputs) -> StatusReport {
    let ceiling = i.plan.ceiling.clone();
    let ceiling_buckets =
        tunables::buckets_for(ceiling.value, i.cfg.hash.ratio, i.obs.host.page_size);
    let namespaces: Vec<NamespaceStatus> = i
        .obs
        .namespaces
        .iter()
        .map(|n| namespace_status(n, &i))
        .collect();
    let changed = i
        .state
        .original
        .iter()
        .map(|(key, operator)| ChangedValue {
            key: key.clone(),
            operator: *operator,
            now: i.obs.global.value(key),
            held_by_operator: i.state.policy.operator_held.contains(key),
        })
        .collect();
    let mut notes = i.obs.notes.clone();
    notes.extend(i.notes.iter().cloned());
    StatusReport {
        schema: SCHEMA,
        health: health_of(i.plan),
        sample_secs: i.sample.as_secs_f64(),
        max: i.obs.global.max,
        buckets: i.obs.global.buckets,
        module: i.obs.module,
        global_writable: i.obs.global.write_access.writable,
        namespaces,
        changed,
        memory_now_bytes: ceiling.table_bytes,
        memory_at_ceiling_bytes: ceiling.memory_at(ceiling.value, ceiling_buckets),
        ceiling,
        role: i.plan.role.clone(),
        notes,
    }
}

/// Dropping when any namespace lost packets for a full table during the sample (clashes
/// are not a full table); over a level when any is elevated or critical now.
fn health_of(plan: &Plan) -> Health {
    let lost = |v: &NamespaceVerdict| {
        v.drop_delta.is_some_and(|d| d > 0) || v.early_drop_delta.is_some_and(|d| d > 0)
    };
    if plan.namespaces.iter().any(lost) {
        Health::Dropping
    } else if plan
        .namespaces
        .iter()
        .any(|v| v.level_now.is_some_and(|l| l > Level::Normal))
    {
        Health::Pressure
    } else {
        Health::Healthy
    }
}

fn namespace_status(n: &NamespaceObs, i: &StatusInputs) -> NamespaceStatus {
    let verdict = i
        .plan
        .namespaces
        .iter()
        .find(|v| v.netns.inode == n.id.inode);
    let secs = i.sample.as_secs_f64();
    let rate = |d: Option<u64>| d.filter(|_| secs > 0.0).map(|d| d as f64 / secs);
    let drop = n.counter("drop");
    NamespaceStatus {
        name: n.id.name.clone(),
        inode: n.id.inode,
        count: n.count,
        utilisation: n.count.map(|c| c as f64 / i.obs.global.max.max(1) as f64),
        level_now: verdict.and_then(|v| v.level_now),
        level_now_reason: verdict.and_then(|v| v.level_now_reason.clone()),
        drop_per_sec: rate(verdict.and_then(|v| v.drop_delta)),
        clash_per_sec: rate(verdict.and_then(|v| v.clash_delta)),
        early_drop_per_sec: rate(verdict.and_then(|v| v.early_drop_delta)),
        drop,
        clash_drops: drop
            .map(|d| split_drops(d, n.counter("insert_failed"), n.counter("chainlength")).clash),
        early_drop: n.counter("early_drop"),
        insert_failed: n.counter("insert_failed"),
        chainlength: n.counter("chainlength"),
        counters_source: n.stat.as_ref().map(|s| s.source),
        timeouts: n.timeouts.clone(),
        lowered: i
            .state
            .policy
            .namespaces
            .get(&n.id.inode)
            .map(|s| s.lowered.clone())
            .unwrap_or_default(),
        error: n.error.clone(),
        composition: n.composition.clone(),
    }
}

/// Where the namespaces' counters came from, in one phrase: the source when every
/// namespace has the same, else each source with its namespaces; and the namespaces
/// whose counters could not be read (their notes say why).
fn counters_source<'a>(namespaces: impl Iterator<Item = (&'a str, Option<StatSource>)>) -> String {
    let mut by_source: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, source) in namespaces {
        let source = source.map_or("none", StatSource::describe);
        by_source.entry(source).or_default().push(name);
    }
    if by_source.len() == 1 {
        let source = by_source.keys().next().copied().unwrap_or_default();
        return if source == "none" {
            "none could be read".into()
        } else {
            source.into()
        };
    }
    by_source
        .iter()
        .map(|(source, names)| format!("{source} in {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn kernel_section(out: &mut String, obs: &Observation) {
    let g = &obs.global;
    let _ = writeln!(out, "Kernel");
    let module = match obs.module {
        ModuleState::BuiltIn => {
            "built in (hash size at boot: kernel command line or ctune-boot.service)"
        }
        ModuleState::Module => "loadable module (hash size at load: /etc/modprobe.d)",
    };
    let _ = writeln!(out, "  conntrack    {module}");
    let ns = match obs.in_initial_netns {
        Some(true) => "initial network namespace",
        Some(false) => "a child network namespace (global keys belong to the host)",
        None => "unknown namespace (PID 1 not readable)",
    };
    let access = if g.write_access.writable {
        "global keys writable".to_string()
    } else {
        format!(
            "global keys NOT writable: {}",
            g.write_access.reason.as_deref().unwrap_or("?")
        )
    };
    let _ = writeln!(out, "  running in   {ns}; {access}");
    let _ = writeln!(
        out,
        "  table        max {}  buckets {}  hashsize {}  expect_max {}",
        g.max,
        opt(g.buckets),
        opt(g.hashsize),
        opt(g.expect_max)
    );
    let _ = writeln!(
        out,
        "  counters     {}",
        counters_source(
            obs.namespaces
                .iter()
                .map(|n| (n.id.name.as_str(), n.stat.as_ref().map(|s| s.source)))
        )
    );
    let h = &obs.host;
    let _ = writeln!(
        out,
        "  host         {} CPUs, {} memory ({} available), {} B per entry ({})",
        h.cpus,
        fmt_bytes(h.memory.total_bytes),
        h.memory.available_bytes.map_or("?".into(), fmt_bytes),
        h.entry_bytes,
        h.entry_bytes_source
    );
}

/// The dry-run text.
pub fn plan_text(
    obs: &Observation,
    plan: &Plan,
    files: &[FileUpdate],
    notes: &[Note],
    source: &config::Source,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ctune dry run: nothing is written. Config: {}\n",
        source.path().display()
    );
    kernel_section(&mut out, obs);
    if let Some(role) = &plan.role {
        let _ = writeln!(out, "\nRole");
        out.push_str(&role_lines(role, &plan.ceiling, "  "));
    }
    ceiling_section(&mut out, &plan.ceiling);
    namespaces_section(&mut out, plan);
    composition_section(
        &mut out,
        obs.namespaces
            .iter()
            .filter_map(|n| Some((n.id.name.as_str(), n.composition.as_ref()?))),
    );
    changes_section(&mut out, plan);
    files_section(&mut out, obs, files);
    if !notes.is_empty() {
        let _ = writeln!(out, "\nCould not read / will not apply");
        for n in notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

/// The role in force, why, and what its budget is, each line indented by `indent`.
pub fn role_lines(r: &InForce, c: &Ceiling, indent: &str) -> String {
    let mut out = String::new();
    let source = match r.source {
        Source::Auto => "role: auto",
        Source::Config => "set in the config",
    };
    let _ = writeln!(out, "{indent}{} ({source}): {}", r.role, r.budget_reason());
    let _ = writeln!(
        out,
        "{indent}  budget: {} of memory (at least the floor), {} kept free for the rest",
        fmt_pct(c.memory_fraction),
        fmt_bytes(c.reserve_bytes)
    );
    if let Some(d) = &r.detection {
        let verb = if r.source == Source::Auto && d.role == r.role {
            "because"
        } else {
            "the host shows"
        };
        let shown = if d.role == r.role {
            String::new()
        } else {
            format!(" ({})", d.role)
        };
        for (i, reason) in d.because.iter().enumerate() {
            let lead = if i == 0 {
                format!("{verb}{shown}")
            } else {
                "and".into()
            };
            let _ = writeln!(out, "{indent}  {lead} {reason}");
        }
        for reason in &d.besides {
            let _ = writeln!(out, "{indent}  also seen: {reason}");
        }
    }
    if let Some(p) = r.pending {
        let _ = writeln!(
            out,
            "{indent}  {} once the host has shown it {} longer (a smaller budget waits {})",
            p.role,
            fmt_secs(p.seconds_left),
            fmt_secs(ctune_core::role::SETTLE.as_secs())
        );
    }
    if let Some(ch) = &r.changed {
        let _ = writeln!(out, "{indent}  changed from {} in this step", ch.from);
    }
    for u in &r.unread {
        let _ = writeln!(out, "{indent}  not read: {u}");
    }
    if !r.config_keys.is_empty() {
        let _ = writeln!(
            out,
            "{indent}  {} set in the config: the role's preset does not change it",
            r.config_keys.join(", ")
        );
    }
    if r.source == Source::Auto {
        let _ = writeln!(
            out,
            "{indent}  (`role: host`, `node` or `router` in the config fixes it)"
        );
    }
    out
}

/// The dry run's ceiling: what bounds it, what one entry costs, the budget's terms.
fn ceiling_section(out: &mut String, c: &Ceiling) {
    let _ = writeln!(out, "\nCeiling");
    let _ = writeln!(out, "  {}", c.explain());
    let _ = writeln!(
        out,
        "  per entry: {} B slab + {} B extensions + {} B hash share; budget {}",
        c.slab_bytes,
        c.extension_bytes,
        c.bytes_per_entry
            .saturating_sub(c.slab_bytes + c.extension_bytes),
        fmt_bytes(c.budget_bytes)
    );
    out.push_str(&budget_lines(c));
}

/// The dry run's changes, each with its reason, then why nothing else changes.
fn changes_section(out: &mut String, plan: &Plan) {
    let _ = writeln!(out, "\nChanges");
    if plan.changes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (i, ch) in plan.changes.iter().enumerate() {
        let (old, new) = if tunables::is_timeout_key(&ch.key) {
            (fmt_secs(ch.old), fmt_secs(ch.new))
        } else {
            (fmt_count(ch.old), fmt_count(ch.new))
        };
        let place = match &ch.target {
            Target::Global => "global".to_string(),
            Target::Namespace { netns } => format!("netns {}", netns.name),
        };
        let _ = writeln!(out, "  {} [{place}]: {old} -> {new}", ch.key);
        // Changes with one reason in one place (the timeouts of a level) share its line.
        let next = plan.changes.get(i + 1);
        if next.is_none_or(|n| n.reason != ch.reason || n.target != ch.target) {
            let _ = writeln!(out, "    because {}", ch.reason);
        }
    }
    if !plan.explanations.is_empty() {
        let _ = writeln!(out, "\nWhy nothing else changes");
        for e in &plan.explanations {
            let _ = writeln!(out, "  - {e}");
        }
    }
}

/// The files a real run would write, each with its diff (or unchanged); on a built-in
/// conntrack, why there is no module file.
fn files_section(out: &mut String, obs: &Observation, files: &[FileUpdate]) {
    let _ = writeln!(out, "\nFiles a real run would write");
    if files.is_empty() {
        let _ = writeln!(
            out,
            "  none: no global value changes, so nothing is persisted"
        );
    }
    for f in files {
        if f.changes() {
            let state = if f.old.is_some() { "update" } else { "create" };
            let _ = writeln!(out, "  {} ({state}: {})", f.path.display(), f.purpose);
            for line in f.diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
        } else {
            let _ = writeln!(out, "  {} (unchanged)", f.path.display());
        }
    }
    if obs.module == ModuleState::BuiltIn && !files.is_empty() {
        let _ = writeln!(
            out,
            "  (conntrack is built in: modprobe.d and modules-load.d would have no effect and are not written)"
        );
    }
}

/// The dry run's namespaces: the level now (the live table) beside the level after the
/// plan, each labelled; the reasons of levels that are not normal, each once.
fn namespaces_section(out: &mut String, plan: &Plan) {
    let _ = writeln!(
        out,
        "\nNamespaces (USE, LEVEL: now, against the live max and the loss since the previous\n sample, as `status` shows them; AFTER, LEVEL: under the planned max, with the hold\n that keeps levels from flapping)"
    );
    let header = format!(
        "  {:<24} {:>10} {:>8} {:>8} {:>8}  {:>6} {:<9}  {:>6} {:<9}",
        "NAME", "COUNT", "+DROP", "+CLASH", "+EARLY", "USE", "LEVEL", "AFTER", "LEVEL"
    );
    let _ = writeln!(out, "{}", header.trim_end());
    let mut reasons = Vec::new();
    for v in &plan.namespaces {
        let now = v.level_now.map_or("-".into(), |l| l.to_string());
        let row = format!(
            "  {:<24} {:>10} {:>8} {:>8} {:>8}  {:>6} {:<9}  {:>6} {:<9}",
            truncate(&v.netns.name, 24),
            opt(v.count),
            opt(v.drop_delta),
            opt(v.clash_delta),
            opt(v.early_drop_delta),
            v.utilisation.map_or("-".into(), fmt_pct),
            now,
            v.utilisation_after.map_or("-".into(), fmt_pct),
            v.level
        );
        let _ = writeln!(out, "{}", row.trim_end());
        if v.level_now.is_some_and(|l| l > Level::Normal) || v.level > Level::Normal {
            reasons.push(format!(
                "{}: now {}: {}; after {}: {}",
                v.netns.name,
                now,
                v.level_now_reason
                    .as_deref()
                    .unwrap_or("count not readable"),
                v.level,
                v.level_reason
            ));
        }
    }
    for r in reasons {
        let _ = writeln!(out, "  - {r}");
    }
}

/// The status's table: a row per namespace, its count, level and counters.
fn namespace_table(out: &mut String, s: &StatusReport) {
    let _ = writeln!(
        out,
        "\n{:<24} {:>10} {:>6} {:<9} {:>8} {:>8} {:>8} | {:>10} {:>8} {:>10} {:>8} {:>8}",
        "NAMESPACE",
        "COUNT",
        "USE",
        "LEVEL",
        "DROP/s",
        "CLASH/s",
        "EARLY/s",
        "DROP",
        "CLASH",
        "EARLY",
        "INS_FAIL",
        "CHAIN"
    );
    for n in &s.namespaces {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>6} {:<9} {:>8} {:>8} {:>8} | {:>10} {:>8} {:>10} {:>8} {:>8}",
            truncate(&n.name, 24),
            opt(n.count),
            n.utilisation.map_or("-".into(), fmt_pct),
            n.level_now.map_or("-".into(), |l| l.to_string()),
            rate(n.drop_per_sec),
            rate(n.clash_per_sec),
            rate(n.early_drop_per_sec),
            opt(n.drop),
            opt(n.clash_drops),
            opt(n.early_drop),
            opt(n.insert_failed),
            opt(n.chainlength)
        );
    }
}

/// The status text: the health first, then the table per namespace, what ctune lowered
/// and changed, and the memory.
pub fn status_text(s: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "nf_conntrack_max {}  buckets {}  ({}{})",
        s.max,
        opt(s.buckets),
        match s.module {
            ModuleState::BuiltIn => "built in",
            ModuleState::Module => "module",
        },
        if s.global_writable {
            ""
        } else {
            ", global keys not writable here"
        }
    );
    let _ = writeln!(out, "{}", health_line(s));
    let _ = writeln!(
        out,
        "counters: {}",
        counters_source(
            s.namespaces
                .iter()
                .map(|n| (n.name.as_str(), n.counters_source))
        )
    );
    namespace_table(&mut out, s);
    let sample = if s.sample_secs > 0.0 {
        format!("per second over a {} sample", fmt_sample(s.sample_secs))
    } else {
        "not measured (--sample 0)".to_string()
    };
    let _ = writeln!(
        out,
        "(LEVEL: against the live max, now. /s: {sample}.\n After |: cumulative since each namespace started. CLASH: drops from insert clashes,\n two packets of one new flow racing (NAT'd DNS), not a full table.)"
    );
    composition_section(
        &mut out,
        s.namespaces
            .iter()
            .filter_map(|n| Some((n.name.as_str(), n.composition.as_ref()?))),
    );
    lowered_section(&mut out, s);
    changed_section(&mut out, s);
    let _ = writeln!(
        out,
        "\nmemory now {} (entries + hash); at the ceiling {} ({})",
        fmt_bytes(s.memory_now_bytes),
        fmt_bytes(s.memory_at_ceiling_bytes),
        s.ceiling.explain()
    );
    if let Some(role) = &s.role {
        let _ = write!(out, "role {}", role_lines(role, &s.ceiling, ""));
    }
    if !s.notes.is_empty() {
        let _ = writeln!(out, "\nCould not read:");
        for n in &s.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

fn fmt_sample(secs: f64) -> String {
    format!("{secs:.1}s")
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r > 0.0 && r < 10.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.0}"),
    }
}

/// One line: healthy, over a level (which namespace, why), or dropping (where, how fast).
fn health_line(s: &StatusReport) -> String {
    let worst = |f: &dyn Fn(&NamespaceStatus) -> bool| {
        s.namespaces
            .iter()
            .filter(|n| f(n))
            .map(|n| {
                let why = n.level_now_reason.as_deref().unwrap_or("?");
                match (n.drop_per_sec, n.early_drop_per_sec) {
                    (Some(d), Some(e)) if d + e > 0.0 => format!(
                        "{}: {} drops/s, {} evictions/s: {why}",
                        n.name,
                        rate(Some(d)),
                        rate(Some(e))
                    ),
                    _ => format!(
                        "{}: {}: {why}",
                        n.name,
                        n.level_now.unwrap_or(Level::Normal)
                    ),
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let code = s.health.exit_code();
    match s.health {
        Health::Healthy => format!(
            "health: healthy: no table over a level{} [exit {code}]",
            if s.sample_secs > 0.0 {
                format!(
                    ", nothing dropped in the last {}",
                    fmt_sample(s.sample_secs)
                )
            } else {
                String::new()
            }
        ),
        Health::Pressure => format!(
            "health: PRESSURE: {} [exit {code}]",
            worst(&|n| n.level_now.is_some_and(|l| l > Level::Normal))
        ),
        Health::Dropping => format!(
            "health: DROPPING now: {} [exit {code}]",
            worst(&|n| n.level_now.is_some_and(|l| l > Level::Normal))
        ),
    }
}

/// The timeouts ctune lowered, per namespace, with the operator's values.
fn lowered_section(out: &mut String, s: &StatusReport) {
    let _ = writeln!(
        out,
        "\nTimeouts lowered by ctune (in force, the operator's value in brackets)"
    );
    let mut any = false;
    for n in s.namespaces.iter().filter(|n| !n.lowered.is_empty()) {
        any = true;
        let list: Vec<String> = n
            .lowered
            .iter()
            .map(|(key, l)| {
                let live = n.timeouts.get(key).map_or("?".into(), |v| fmt_secs(*v));
                format!("{} {live} [{}]", sysctl::short(key), fmt_secs(l.baseline))
            })
            .collect();
        let _ = writeln!(out, "  {}: {}", n.name, list.join(", "));
    }
    if !any {
        let _ = writeln!(
            out,
            "  none: the operator's timeouts are in force everywhere"
        );
    }
}

/// The agent's last composition samples: what holds each pressed namespace's entries,
/// by the timeout key that governs them, largest first (`ctune top` shows the rest).
fn composition_section<'a>(
    out: &mut String,
    samples: impl Iterator<Item = (&'a str, &'a ctune_core::model::Governed)>,
) {
    for (i, (name, g)) in samples.enumerate() {
        if i == 0 {
            let _ = writeln!(
                out,
                "\nWhat holds the entries (the last composition sample, the agent's or this command's\n at the onset of pressure, by the timeout that governs them; the keys under\n timeouts.min_share are not lowered; ctune top shows all of it)"
            );
        }
        let mut keys: Vec<(&String, &u64)> = g.by_key.iter().collect();
        keys.sort_by_key(|(k, n)| (std::cmp::Reverse(**n), k.as_str()));
        let list: Vec<String> = keys
            .iter()
            .take(4)
            .map(|(k, _)| format!("{} {}", sysctl::short(k), fmt_pct(g.share(k))))
            .collect();
        let _ = writeln!(
            out,
            "  {}: {} (of {} entries{}, {}s ago)",
            truncate(name, 24),
            list.join(", "),
            g.entries,
            if g.partial { " read: partial" } else { "" },
            g.age_secs
        );
    }
}

/// The global values ctune changed, with the operator's.
fn changed_section(out: &mut String, s: &StatusReport) {
    let _ = writeln!(
        out,
        "\nChanged by ctune (the operator's value before ctune -> now)"
    );
    if s.changed.is_empty() {
        let _ = writeln!(out, "  nothing: ctune has not changed a global value here");
    }
    for c in &s.changed {
        let held = if c.held_by_operator {
            " (set by someone else since ctune's change: adopted, left alone until unsafe)"
        } else {
            ""
        };
        let _ = writeln!(out, "  {} {} -> {}{held}", c.key, c.operator, opt(c.now));
    }
}

/// The budget's terms, each with the numbers it came from.
fn budget_lines(c: &Ceiling) -> String {
    let spare = match (c.available_bytes, c.spare_bytes) {
        (Some(a), Some(s)) => format!(
            "spare {} (MemAvailable {} + table {} - reserve {}){}",
            fmt_bytes(s),
            fmt_bytes(a),
            fmt_bytes(c.table_bytes),
            fmt_bytes(c.reserve_bytes),
            if c.memory_short {
                "; the host is short of memory"
            } else {
                ""
            }
        ),
        _ => "spare unknown (no MemAvailable)".into(),
    };
    format!(
        "  budget = smallest of: share {} ({} of {}, at least the floor), {spare}{}\n  table now {} ({} entries in every namespace, {} outside the busiest){}\n",
        fmt_bytes(c.share_bytes),
        fmt_pct(c.memory_fraction),
        fmt_bytes(c.mem_total_bytes),
        if c.bound == ctune_core::ceiling::Bound::Cap {
            format!(", memory cap {}", fmt_bytes(c.budget_bytes))
        } else {
            String::new()
        },
        fmt_bytes(c.table_bytes),
        c.table_entries,
        c.other_entries,
        if c.over_budget() {
            ": over the budget"
        } else {
            ""
        }
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// One change in `ctune apply --json`.
#[derive(Debug, Serialize)]
pub struct AppliedJson<'a> {
    /// The change.
    #[serde(flatten)]
    pub change: &'a ctune_core::plan::Change,
    /// Whether it took effect (written and read back).
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
}

/// One file in `ctune apply --json`.
#[derive(Debug, Serialize)]
pub struct FileJson {
    /// The file.
    pub path: String,
    /// `written`, `unchanged` or `failed`.
    pub result: &'static str,
    /// Why it failed.
    pub error: Option<String>,
}

/// Everything `ctune apply --json` prints.
#[derive(Debug, Serialize)]
pub struct ApplyJson<'a> {
    /// The version of the field list ([`SCHEMA`]).
    pub schema: u32,
    /// Each change and its outcome, in the order applied.
    pub changes: Vec<AppliedJson<'a>>,
    /// Persisted files.
    pub files: Vec<FileJson>,
    /// Why other things did not change.
    pub explanations: &'a [ctune_core::plan::Explanation],
    /// What could not be read.
    pub notes: &'a [Note],
    /// The state file could not be saved.
    pub state_error: Option<String>,
}

/// The JSON view of a step.
pub fn apply_json(r: &crate::run::engine::StepReport) -> ApplyJson<'_> {
    ApplyJson {
        schema: SCHEMA,
        changes: r
            .outcomes
            .iter()
            .map(|o| AppliedJson {
                change: &o.change,
                ok: o.result.is_ok(),
                error: o.result.as_ref().err().map(|e| e.to_string()),
            })
            .collect(),
        files: r
            .files
            .iter()
            .map(|f| FileJson {
                path: f.update.path.display().to_string(),
                result: match &f.result {
                    Ok(crate::act::atomic::WriteOutcome::Written) => "written",
                    Ok(crate::act::atomic::WriteOutcome::Unchanged) => "unchanged",
                    Err(_) => "failed",
                },
                error: f.result.as_ref().err().map(|e| e.to_string()),
            })
            .collect(),
        explanations: &r.plan.explanations,
        notes: &r.notes,
        state_error: r.state_error.as_ref().map(|e| e.to_string()),
    }
}

fn change_line(out: &mut String, ch: &ctune_core::plan::Change) {
    let (old, new) = if tunables::is_timeout_key(&ch.key) {
        (fmt_secs(ch.old), fmt_secs(ch.new))
    } else {
        (ch.old.to_string(), ch.new.to_string())
    };
    let place = match &ch.target {
        Target::Global => "global".to_string(),
        Target::Namespace { netns } => format!("netns {}", netns.name),
    };
    let _ = write!(out, "{} [{place}]: {old} -> {new}", ch.key);
}

/// The text of `ctune apply`.
pub fn apply_text(r: &crate::run::engine::StepReport) -> String {
    let mut out = String::new();
    if r.outcomes.is_empty() {
        let _ = writeln!(out, "nothing to change");
        for e in &r.plan.explanations {
            let _ = writeln!(out, "  - {e}");
        }
    }
    for o in &r.outcomes {
        let _ = write!(
            out,
            "{} ",
            if o.result.is_ok() {
                "changed"
            } else {
                "FAILED"
            }
        );
        change_line(&mut out, &o.change);
        let _ = writeln!(out);
        match &o.result {
            Ok(()) => {
                let _ = writeln!(out, "    because {}", o.change.reason);
            }
            Err(e) => {
                let _ = writeln!(out, "    {e}");
            }
        }
    }
    for f in &r.files {
        let _ = match &f.result {
            Ok(crate::act::atomic::WriteOutcome::Written) => {
                writeln!(out, "wrote {}", f.update.path.display())
            }
            Ok(crate::act::atomic::WriteOutcome::Unchanged) => {
                writeln!(out, "unchanged {}", f.update.path.display())
            }
            Err(e) => writeln!(out, "FAILED to write {e}"),
        };
    }
    if let Some(e) = &r.state_error {
        let _ = writeln!(out, "FAILED to save state: {e}");
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// The text of `ctune boot`.
pub fn boot_text(items: Option<&[crate::act::boot::BootItem]>, file: &std::path::Path) -> String {
    let Some(items) = items else {
        return format!(
            "nothing persisted (no {}): nothing to apply\n",
            file.display()
        );
    };
    let mut out = String::new();
    for i in items {
        let _ = match &i.result {
            None if i.live == i.persisted => writeln!(out, "{} already {}", i.key, i.persisted),
            None => writeln!(
                out,
                "{} left at {} (persisted {}: the boot step only raises)",
                i.key, i.live, i.persisted
            ),
            Some(Ok(())) => writeln!(
                out,
                "{}: {} -> {} (persisted value applied)",
                i.key, i.live, i.persisted
            ),
            Some(Err(e)) => writeln!(out, "FAILED {e}"),
        };
    }
    out
}

/// The text of `ctune restore`.
pub fn restore_text(r: &crate::act::restore::RestoreReport) -> String {
    let mut out = String::new();
    if !r.had_state {
        let _ = writeln!(
            out,
            "no state file: ctune has not changed any kernel value it knows of"
        );
    }
    for o in &r.outcomes {
        match &o.result {
            Ok(()) => {
                let _ = write!(out, "restored ");
                change_line(&mut out, &o.change);
                let _ = writeln!(out);
            }
            Err(e) => {
                let _ = writeln!(out, "FAILED {e}");
            }
        }
    }
    for x in &r.refused {
        let _ = writeln!(out, "not restored: {x}");
    }
    for x in &r.kept {
        let _ = writeln!(out, "kept: {x}");
    }
    for (p, res) in &r.files {
        let _ = match res {
            Ok(true) => writeln!(out, "removed {}", p.display()),
            Ok(false) => Ok(()),
            Err(e) => writeln!(out, "FAILED to remove {e}"),
        };
    }
    if let Some(e) = &r.state_error {
        let _ = writeln!(out, "FAILED to remove the state file: {e}");
    }
    out
}
