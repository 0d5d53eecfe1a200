//! What ctune prints: the dry-run plan and the status, as text for people and JSON for
//! scripts. Rendering is a pure function of the observation and the plan.

use serde::Serialize;
use std::fmt::Write as _;

use crate::act::persist::FileUpdate;
use ctune_core::ceiling::Ceiling;
use ctune_core::config::{self, Config};
use ctune_core::model::stat::split_drops;
use ctune_core::model::{ModuleState, Observation};
use ctune_core::plan::{Plan, Target};
use ctune_core::policy;
use ctune_core::tunables;
use ctune_core::units::{fmt_bytes, fmt_count, fmt_pct, fmt_secs};

/// Everything `ctune plan --json` prints.
#[derive(Debug, Serialize)]
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
    pub notes: &'a [String],
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
    /// count / nf_conntrack_max.
    pub utilisation: Option<f64>,
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
    /// Why it could not be read, if so.
    pub error: Option<String>,
}

/// Everything `ctune status --json` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
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
    /// What the entries and hash cost now.
    pub memory_now_bytes: u64,
    /// Worst case at the ceiling: every filling namespace full.
    pub memory_at_ceiling_bytes: u64,
    /// The ceiling and its derivation.
    pub ceiling: Ceiling,
    /// What could not be read.
    pub notes: Vec<String>,
}

/// Builds the status from an observation.
pub fn status(obs: &Observation, cfg: &Config) -> StatusReport {
    let ceiling = policy::ceiling_of(obs, cfg);
    let ceiling_buckets = tunables::buckets_for(ceiling.value, cfg.hash.ratio, obs.host.page_size);
    StatusReport {
        max: obs.global.max,
        buckets: obs.global.buckets,
        module: obs.module,
        global_writable: obs.global.write_access.writable,
        namespaces: obs
            .namespaces
            .iter()
            .map(|n| NamespaceStatus {
                name: n.id.name.clone(),
                inode: n.id.inode,
                count: n.count,
                utilisation: n.count.map(|c| c as f64 / obs.global.max.max(1) as f64),
                drop: n.counter("drop"),
                clash_drops: n.counter("drop").map(|d| {
                    split_drops(d, n.counter("insert_failed"), n.counter("chainlength")).clash
                }),
                early_drop: n.counter("early_drop"),
                insert_failed: n.counter("insert_failed"),
                chainlength: n.counter("chainlength"),
                error: n.error.clone(),
            })
            .collect(),
        memory_now_bytes: ceiling.table_bytes,
        memory_at_ceiling_bytes: ceiling.memory_at(ceiling.value, ceiling_buckets),
        ceiling,
        notes: obs.notes.clone(),
    }
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
    notes: &[String],
    source: &config::Source,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ctune dry run: nothing is written. Config: {}\n",
        source.path().display()
    );
    kernel_section(&mut out, obs);
    let c = &plan.ceiling;
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

    let _ = writeln!(out, "\nNamespaces");
    let _ = writeln!(
        out,
        "  {:<24} {:>10} {:>6} {:>6} {:>8} {:>8} {:>8}  LEVEL",
        "NAME", "COUNT", "USE", "AFTER", "+DROP", "+CLASH", "+EARLY"
    );
    for v in &plan.namespaces {
        let _ = writeln!(
            out,
            "  {:<24} {:>10} {:>6} {:>6} {:>8} {:>8} {:>8}  {} ({})",
            truncate(&v.netns.name, 24),
            opt(v.count),
            v.utilisation.map_or("-".into(), fmt_pct),
            v.utilisation_after.map_or("-".into(), fmt_pct),
            opt(v.drop_delta),
            opt(v.clash_delta),
            opt(v.early_drop_delta),
            v.level,
            v.level_reason
        );
    }

    let _ = writeln!(out, "\nChanges");
    if plan.changes.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ch in &plan.changes {
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
        let _ = writeln!(out, "    because {}", ch.reason);
    }
    if !plan.explanations.is_empty() {
        let _ = writeln!(out, "\nWhy nothing else changes");
        for e in &plan.explanations {
            let _ = writeln!(out, "  - {e}");
        }
    }

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
    if !notes.is_empty() {
        let _ = writeln!(out, "\nCould not read / will not apply");
        for n in notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}

/// The status text.
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
    let _ = writeln!(
        out,
        "\n{:<24} {:>10} {:>6} {:>10} {:>10} {:>10} {:>13} {:>11}",
        "NAMESPACE", "COUNT", "USE", "DROP", "CLASH", "EARLY_DROP", "INSERT_FAILED", "CHAINLENGTH"
    );
    for n in &s.namespaces {
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>6} {:>10} {:>10} {:>10} {:>13} {:>11}",
            truncate(&n.name, 24),
            opt(n.count),
            n.utilisation.map_or("-".into(), fmt_pct),
            opt(n.drop),
            opt(n.clash_drops),
            opt(n.early_drop),
            opt(n.insert_failed),
            opt(n.chainlength)
        );
    }
    let _ = writeln!(
        out,
        "(counters are cumulative since each namespace started; CLASH: the drops that came\n with an insert clash, two packets of one new flow racing (NAT'd DNS), not a full table)"
    );
    let _ = writeln!(
        out,
        "\nmemory now {} (entries + hash); at the ceiling {} ({})",
        fmt_bytes(s.memory_now_bytes),
        fmt_bytes(s.memory_at_ceiling_bytes),
        s.ceiling.explain()
    );
    if !s.notes.is_empty() {
        let _ = writeln!(out, "\nCould not read:");
        for n in &s.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
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
    /// Each change and its outcome, in the order applied.
    pub changes: Vec<AppliedJson<'a>>,
    /// Persisted files.
    pub files: Vec<FileJson>,
    /// Why other things did not change.
    pub explanations: &'a [String],
    /// What could not be read.
    pub notes: &'a [String],
    /// The state file could not be saved.
    pub state_error: Option<String>,
}

/// The JSON view of a step.
pub fn apply_json(r: &crate::run::engine::StepReport) -> ApplyJson<'_> {
    ApplyJson {
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
