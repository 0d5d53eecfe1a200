//! The background agent (`ctune run`): a tokio loop that takes one control step per
//! interval, reloads its config on SIGHUP, and ends cleanly on SIGTERM/SIGINT.
//!
//! Stopping rolls nothing back: lowering max under load drops flows, and peers that
//! rolled back on exit caused outages. `ctune restore` is the explicit undo.
//! Logs one event per change; a failure or note is logged when it appears, not every
//! tick while it lasts.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::act::state;
use crate::run::engine::{Engine, StepReport};
use crate::run::metrics::{self, Exporter};
use crate::run::notify::Notifier;
use crate::sense::netns::{self, Handle};
use crate::sense::nsdir;
use crate::sense::roots::Roots;
use ctune_core::config;
use ctune_core::controller::Wake;
use ctune_core::model::{Note, NoteKind};
use ctune_core::plan::Target;
use ctune_core::pressure::Level;
use ctune_core::probe::{ProbeRead, TotalReading};
use ctune_core::tunables;
use ctune_core::units::{fmt_count, fmt_pct};

/// Where the config is reloaded from on SIGHUP.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// `--config`, if given (must exist).
    pub explicit: Option<PathBuf>,
    /// The default path (may be absent: embedded defaults).
    pub default_path: PathBuf,
}

/// Remembers what was logged so a lasting condition is logged once.
#[derive(Debug, Default)]
struct Quiet {
    /// Lasting failures, by what failed (not by the full message, whose planned value
    /// may change every tick), with the message last logged.
    errors: HashMap<String, String>,
    /// The identities of the last step's notes: a note is logged when it appears, not
    /// again while it stays (its text may change every step: a count, a short sample),
    /// and again if it goes away and comes back. Bounded by one step's notes.
    notes: HashSet<(NoteKind, String)>,
    /// Whether the global keys were writable at the last step (None before the first).
    writable: Option<bool>,
    /// The role logged (None before the first step): logged at the first step and when
    /// it changes, with its reasons.
    role: Option<ctune_core::config::Role>,
}

impl Quiet {
    fn log(&mut self, r: &StepReport) {
        self.log_access(&r.observation.global.write_access);
        if let Some(role) = &r.plan.role {
            self.log_role(role);
        }
        let mut errors = HashMap::new();
        for o in &r.outcomes {
            let ns = match &o.change.target {
                Target::Global => "global".to_string(),
                Target::Namespace { netns } => netns.name.clone(),
            };
            match &o.result {
                Ok(()) => tracing::info!(
                    key = %o.change.key,
                    netns = %ns,
                    old = o.change.old,
                    new = o.change.new,
                    "{} {} -> {}: {}",
                    o.change.key,
                    o.change.old,
                    o.change.new,
                    o.change.reason
                ),
                Err(e) => {
                    errors.insert(format!("{}@{ns}", o.change.key), e.to_string());
                }
            }
        }
        for f in &r.files {
            match &f.result {
                Ok(crate::act::atomic::WriteOutcome::Written) => {
                    let settings: Vec<&str> = f
                        .update
                        .new
                        .lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                        .collect();
                    tracing::info!(
                        path = %f.update.path.display(),
                        "persisted {}: {}",
                        f.update.path.display(),
                        settings.join("; ")
                    )
                }
                Ok(crate::act::atomic::WriteOutcome::Unchanged) => {}
                Err(e) => {
                    errors.insert(f.update.path.display().to_string(), e.to_string());
                }
            }
        }
        if let Some(e) = &r.state_error {
            errors.insert("state".into(), e.to_string());
        }
        for (what, msg) in &errors {
            if !self.errors.contains_key(what) {
                tracing::error!("{msg}");
            }
        }
        for (what, msg) in &self.errors {
            if !errors.contains_key(what) {
                tracing::info!("resolved: {msg}");
            }
        }
        self.errors = errors;
        self.log_notes(&r.notes);
        // An adoption (someone else wrote over a value ctune set) is an event, explained
        // once: logged with the changes. The rest explains what is held, every step.
        for e in &r.plan.explanations {
            if e.kind == ctune_core::plan::Why::Adopted {
                tracing::info!("{e}");
            } else {
                tracing::debug!("{e}");
            }
        }
    }

    /// The role at the first step, and once at each change, with the facts behind it.
    fn log_role(&mut self, r: &ctune_core::role::InForce) {
        if self.role == Some(r.role) {
            return;
        }
        let because: Vec<String> = r
            .detection
            .iter()
            .flat_map(|d| d.because.iter().map(|b| b.to_string()))
            .collect();
        let source = match r.source {
            ctune_core::role::Source::Auto => "role: auto",
            ctune_core::role::Source::Config => "set in the config",
        };
        match self.role.replace(r.role) {
            None => {
                tracing::info!(role = %r.role, "role {} ({source}): {}; {}", r.role, r.budget_reason(), because.join("; "))
            }
            Some(from) => {
                tracing::info!(role = %r.role, "role {from} -> {} ({source}): {}; {}", r.role, r.budget_reason(), because.join("; "))
            }
        }
    }

    fn log_notes(&mut self, notes: &[Note]) {
        for n in self.fresh_notes(notes) {
            tracing::warn!("{n}");
        }
    }

    /// The notes to log this step: those whose identity the last step did not have.
    fn fresh_notes<'n>(&mut self, notes: &'n [Note]) -> Vec<&'n Note> {
        let last = std::mem::take(&mut self.notes);
        let mut fresh = Vec::new();
        for n in notes {
            let id = (n.kind, n.about.clone());
            if !last.contains(&id) && !self.notes.contains(&id) {
                fresh.push(n);
            }
            self.notes.insert(id);
        }
        fresh
    }

    /// Says once, and again when it changes, that ctune cannot write here: the errors it
    /// would otherwise log every step are not planned in the first place.
    fn log_access(&mut self, access: &ctune_core::model::Access) {
        if self.writable == Some(access.writable) {
            return;
        }
        let was_known = self.writable.is_some();
        self.writable = Some(access.writable);
        let reason = access.reason.as_deref().unwrap_or("not writable");
        if access.writable {
            if was_known {
                tracing::info!("the global keys are writable again: ctune manages them");
            }
        } else if access.read_only {
            tracing::warn!(
                "{reason}: ctune watches and reports (status, metrics) but writes nothing, neither max nor timeouts, until /proc/sys is writable"
            );
        } else {
            tracing::warn!(
                "{reason}: max and the hash are left to the host; this namespace's timeouts are still managed"
            );
        }
    }

    fn failed(&mut self, msg: String) {
        if self.errors.len() != 1 || self.errors.get("observe") != Some(&msg) {
            tracing::error!("{msg}");
            self.errors = HashMap::from([("observe".to_string(), msg)]);
        }
    }
}

/// Open `nf_conntrack_count` files of the watched namespaces. A sysctl file opened
/// inside a namespace keeps reading that namespace's value from any thread, so a probe
/// costs one pread per namespace and no setns. What the counts mean (a step now or not,
/// the pace of the next probe) is the controller's ([`ctune_core::controller`]).
/// The table's total (the slab's objects) is read first when the controller trusts it
/// ([`ctune_core::probe::Total`]): one read instead of one per namespace.
#[derive(Debug, Default)]
struct Counts {
    files: Vec<(u64, Arc<File>)>,
    /// The conntrack slab's `objects`, kept open, and the entries it cannot see
    /// ([`slab_unseen`]); None: not there (yet: the module may load later).
    total: Option<(File, u64)>,
}

impl Counts {
    /// Opens the count files of namespaces new since the last refresh, and forgets those
    /// of namespaces no longer watched: on a node whose pods come and go, a refresh
    /// enters only the new ones.
    fn refresh(&mut self, roots: &Roots, obs: &ctune_core::model::Observation) {
        if self.total.is_none() {
            let file = File::open(roots.slab_objects_file()).ok();
            self.total = file.zip(slab_unseen(roots));
        }
        let inodes: Vec<u64> = obs.namespaces.iter().map(|n| n.id.inode).collect();
        if inodes == self.files.iter().map(|(i, _)| *i).collect::<Vec<_>>() {
            return;
        }
        let mut kept: HashMap<u64, Arc<File>> =
            std::mem::take(&mut self.files).into_iter().collect();
        let count_path = roots.sysctl(tunables::COUNT);
        let mut others = Vec::new();
        for n in &obs.namespaces {
            let inode = n.id.inode;
            if let Some(f) = kept
                .remove(&inode)
                .or_else(|| nsdir::kept_count_file(inode))
            {
                self.files.push((inode, f));
                continue;
            }
            match &n.handle {
                None => {
                    if let Ok(f) = File::open(&count_path) {
                        self.files.push((n.id.inode, Arc::new(f)));
                    }
                }
                Some(path) => others.push(Handle {
                    id: n.id.clone(),
                    path: path.clone(),
                }),
            }
        }
        // The step keeps each namespace's count file ([`nsdir::count_file`]): the probe
        // shares it, entering only a namespace the step has not read.
        for (h, f) in others.iter().zip(netns::read_each(&others, |h| {
            nsdir::count_file(&roots.netfilter_sysctl_dir(), h.id.inode, tunables::COUNT)
        })) {
            if let Ok(Ok(f)) = f {
                self.files.push((h.id.inode, f));
            }
        }
    }

    /// The table's total: the first number of the slab's `objects` ("5024 N0=5024").
    fn total(&self) -> Option<TotalReading> {
        let (file, unseen) = self.total.as_ref()?;
        let mut buf = [0u8; 64];
        let n = file.read_at(&mut buf, 0).ok()?;
        let objects = std::str::from_utf8(&buf[..n])
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(TotalReading {
            objects,
            unseen: *unseen,
        })
    }

    /// Every count that reads, by inode. A file that no longer reads is dropped (its
    /// namespace is gone): the next step's refresh then opens the count of whatever
    /// namespace now has that inode number, instead of probing a dead one.
    fn read(&mut self) -> Vec<(u64, u64)> {
        let mut buf = [0u8; 32];
        let mut counts = Vec::with_capacity(self.files.len());
        self.files.retain(|(inode, f)| {
            let Ok(n) = f.read_at(&mut buf, 0) else {
                return false;
            };
            if let Some(count) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                counts.push((*inode, count));
            }
            true
        });
        counts
    }
}

/// The conntrack entries SLUB can hand out or take back without moving the slab's
/// `objects`, which counts as in use every free object it keeps per CPU: each possible
/// CPU's slab, its partial slabs (`cpu_partial` objects, kept as up to twice that many
/// objects' worth of slabs) and its sheaves (a main and a spare, doubled for the node's
/// barn). None when the slab's geometry cannot be read: the probe then reads every count.
fn slab_unseen(roots: &Roots) -> Option<u64> {
    let dir = roots.slab_objects_file().parent()?.to_path_buf();
    // Read once: no descriptor kept (kfile's readers keep kernel files open).
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let per_slab = read("objs_per_slab")?.max(1);
    let partial = read("cpu_partial").unwrap_or(0);
    let sheaf = read("sheaf_capacity").unwrap_or(0);
    let possible = roots.sys.join("devices/system/cpu/possible");
    let cpus = crate::sense::kfile::read_text(&possible)
        .ok()
        .and_then(|t| crate::sense::observe::parse_cpu_list(&t))?;
    let per_cpu = per_slab * (1 + (2 * partial).div_ceil(per_slab)) + 4 * sheaf;
    Some(cpus.saturating_mul(per_cpu))
}

/// One line for `systemctl status`.
fn summary(r: &StepReport) -> String {
    let max = r
        .plan
        .global_change(ctune_core::tunables::MAX)
        .map_or(r.observation.global.max, |c| c.new);
    let busiest = r
        .plan
        .namespaces
        .iter()
        .filter_map(|v| v.utilisation_after.map(|u| (u, v.netns.name.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let pressed = r
        .plan
        .namespaces
        .iter()
        .filter(|v| v.level > Level::Normal)
        .count();
    format!(
        "max {} (ceiling {}), busiest {}, {} namespace(s) watched, {} under pressure",
        fmt_count(max),
        fmt_count(r.plan.ceiling.value),
        busiest.map_or("-".into(), |(u, n)| format!("{n} at {}", fmt_pct(u))),
        r.plan.namespaces.len(),
        pressed
    )
}

/// Runs the agent until SIGTERM or SIGINT. Steps and probes come when the controller
/// says (its [`ctune_core::schedule::Schedule`], the same clock the simulator runs).
pub async fn run(mut engine: Engine, source: ConfigSource) -> std::io::Result<()> {
    let notifier = Notifier::from_env();
    // Reports are filled for the metrics only when they render ([`step`]).
    engine.fill_reports = false;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Keep-alives at half the watchdog timeout, from the same task as the control step:
    // if a step hangs, the keep-alives stop and systemd restarts ctune.
    let wd_period = notifier
        .watchdog()
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut wd = tokio::time::interval(wd_period);
    let mut quiet = Quiet::default();
    let mut ready = false;
    let mut counts = Counts::default();
    let mut exporter = Exporter::default();
    let interval = engine.config().agent.interval;
    exporter.next_step_in(interval);
    serve_metrics(engine.config(), &mut exporter);
    tracing::info!(
        interval = %humantime::format_duration(interval),
        "ctune agent started"
    );
    loop {
        let wake = engine.controller().next_wake().saturating_sub(state::now());
        tokio::select! {
            _ = tokio::time::sleep(wake) => {
                let now = state::now();
                match engine.controller().wake(now) {
                    Wake::Step => {}
                    Wake::Probe { until_step, read } => {
                        if !probe(&mut engine, &mut counts, (now, until_step), read) {
                            continue;
                        }
                        tracing::debug!("count probe: table filling, stepping early");
                    }
                    Wake::Nothing => continue,
                }
            }
            _ = wd.tick() => {
                notifier.keepalive();
                continue;
            }
            _ = hup.recv() => {
                notifier.reloading();
                // The new config takes effect at the next step, within its interval (an
                // idle wait under the old one may be much longer).
                let cfg = reload(&source).unwrap_or_else(|| engine.config().clone());
                crate::sense::hostfacts::forget();
                exporter.next_step_in(cfg.agent.interval);
                engine.controller().set_config(cfg, state::now());
                notifier.send("READY=1");
                continue;
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping; nothing is rolled back (`ctune restore` undoes ctune's changes)");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping; nothing is rolled back");
                break;
            }
        }
        let status = step(&mut engine, &mut quiet, &mut counts, &mut exporter);
        exporter.next_step_in(engine.controller().period());
        if ready {
            notifier.status(&status);
        } else {
            notifier.ready(&status);
            ready = true;
        }
    }
    notifier.stopping();
    Ok(())
}

/// Configures the exporter and starts the HTTP endpoint when one is configured, on its
/// own thread (a step never waits for it). A port that cannot be bound is logged: the
/// agent tunes without it.
fn serve_metrics(cfg: &config::Config, exporter: &mut Exporter) {
    exporter.configure(&cfg.metrics);
    let Some(addr) = cfg.metrics.listen else {
        return;
    };
    match metrics::serve(addr, Arc::clone(&exporter.served)) {
        Ok(()) => exporter.serving = true,
        Err(e) => tracing::error!(
            "{e}; metrics are not served over HTTP (the textfile is still written when configured)"
        ),
    }
}

/// SIGHUP: the new config; None when it is invalid (the old one is kept).
fn reload(source: &ConfigSource) -> Option<config::Config> {
    match crate::sense::config_file::load(source.explicit.as_deref(), &source.default_path) {
        Ok((cfg, src)) => {
            tracing::info!("config reloaded from {}", src.path().display());
            Some(cfg)
        }
        Err(e) => {
            tracing::error!("reload failed, keeping the previous config: {e}");
            None
        }
    }
}

/// A probe at `now`, `until_step` before the regular step: the table's total first when
/// the controller trusts it, then every count when it asks; true when a step should be
/// taken now.
fn probe(
    engine: &mut Engine,
    counts: &mut Counts,
    (now, until_step): (Duration, Duration),
    read: ProbeRead,
) -> bool {
    let ctl = engine.controller();
    if read == ProbeRead::Total && !ctl.probed_total(now, until_step, counts.total()) {
        return false;
    }
    ctl.probed(now, until_step, &counts.read())
}

/// One control step; returns the line for `systemctl status`.
fn step(
    engine: &mut Engine,
    quiet: &mut Quiet,
    counts: &mut Counts,
    exporter: &mut Exporter,
) -> String {
    let now = state::now();
    match engine.step(now) {
        Ok(mut report) => {
            quiet.log(&report);
            counts.refresh(&engine.roots, &report.observation);
            let takers = exporter.takers(&report, engine.config());
            if takers.is_some() {
                engine.fill_unread(&mut report.observation);
            }
            let held = &engine.memory().policy.operator_held;
            exporter.after_step(&report, (engine.config(), held), now, takers);
            summary(&report)
        }
        Err(e) => {
            let msg = format!("cannot observe: {e}");
            quiet.failed(msg.clone());
            msg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_note(name: &str, entries: u64) -> Note {
        Note::new(
            NoteKind::Sample,
            name,
            format!("netns {name}: the composition sample read only {entries} entries"),
        )
    }

    fn texts(notes: Vec<&Note>) -> Vec<String> {
        notes.into_iter().map(|n| n.text.clone()).collect()
    }

    #[test]
    fn a_note_is_said_when_it_appears_not_while_its_text_changes_and_again_when_it_returns() {
        let mut q = Quiet::default();
        let first = [sample_note("a", 10), sample_note("b", 5)];
        assert_eq!(texts(q.fresh_notes(&first)).len(), 2);
        // The same troubles, other counts: nothing new to say.
        let same = [sample_note("a", 11), sample_note("b", 7)];
        assert_eq!(texts(q.fresh_notes(&same)), Vec::<String>::new());
        // b went away; a stays; a file note is new.
        let file = Note::new(NoteKind::KernelFile, "/proc/pressure/memory", "unreadable");
        let next = [sample_note("a", 12), file.clone()];
        assert_eq!(texts(q.fresh_notes(&next)), vec![file.text.clone()]);
        // b is back: said again.
        let back = [sample_note("a", 13), sample_note("b", 9), file];
        assert_eq!(texts(q.fresh_notes(&back)), vec![sample_note("b", 9).text]);
    }

    #[test]
    fn two_notes_of_one_identity_in_one_step_are_said_once() {
        let mut q = Quiet::default();
        let twice = [sample_note("a", 1), sample_note("a", 2)];
        assert_eq!(texts(q.fresh_notes(&twice)), vec![sample_note("a", 1).text]);
    }

    /// What SLUB keeps per CPU, from the slab's geometry: here two CPUs, each with a
    /// slab of 16 and partial slabs for 2 x 52 objects (7 slabs), and no sheaves.
    #[test]
    fn the_entries_the_slab_hides_follow_its_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::all_under(dir.path());
        let slab = roots.slab_objects_file().parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&slab).unwrap();
        assert_eq!(slab_unseen(&roots), None, "no geometry: no total");
        for (name, value) in [("objs_per_slab", "16\n"), ("cpu_partial", "52\n")] {
            std::fs::write(slab.join(name), value).unwrap();
        }
        let cpu = roots.sys.join("devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("possible"), "0-1\n").unwrap();
        assert_eq!(slab_unseen(&roots), Some(2 * 16 * 8));
        std::fs::write(slab.join("sheaf_capacity"), "32\n").unwrap();
        assert_eq!(slab_unseen(&roots), Some(2 * (16 * 8 + 4 * 32)));
    }
}
