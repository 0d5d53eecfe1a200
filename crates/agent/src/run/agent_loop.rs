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
use crate::sense::roots::Roots;
use ctune_core::config;
use ctune_core::plan::Target;
use ctune_core::pressure::Level;
use ctune_core::probe::{self, Reading};
use ctune_core::schedule::{self, Due, Schedule};
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
    notes: HashSet<String>,
    /// Whether the global keys were writable at the last step (None before the first).
    writable: Option<bool>,
}

impl Quiet {
    fn log(&mut self, r: &StepReport) {
        self.log_access(&r.observation.global.write_access);
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
        for n in &r.notes {
            if self.notes.len() >= 1000 {
                // Bounded memory on hosts with ever-changing namespaces: start afresh.
                self.notes.clear();
            }
            if self.notes.insert(n.clone()) {
                tracing::warn!("{n}");
            }
        }
        // An adoption (someone else wrote over a value ctune set) is an event, explained
        // once: logged with the changes. The rest explains what is held, every step.
        for e in &r.plan.explanations {
            if e.contains(ctune_core::plan::ADOPTED) {
                tracing::info!("{e}");
            } else {
                tracing::debug!("{e}");
            }
        }
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
/// costs one pread per namespace and no setns.
#[derive(Debug, Default)]
struct Probe {
    counts: Vec<(u64, File)>,
    last: HashMap<u64, Reading>,
    max: u64,
    /// Probing paused after the last step ([`probe::paused_after`]).
    blocked: bool,
    /// The fastest fill seen between two readings, entries a second.
    fastest: f64,
}

impl Probe {
    /// Re-opens the count files when the set of namespaces changed, and takes the max
    /// now in force from the step.
    fn refresh(&mut self, roots: &Roots, r: &StepReport, cfg: &config::Config, now: Duration) {
        let raised = r
            .outcomes
            .iter()
            .any(|o| o.change.key == tunables::MAX && o.result.is_ok());
        self.max = r
            .plan
            .global_change(tunables::MAX)
            .filter(|_| raised)
            .map_or(r.observation.global.max, |c| c.new);
        self.blocked = probe::paused_after(&r.plan, raised, self.max, cfg);
        let inodes: Vec<u64> = r
            .observation
            .namespaces
            .iter()
            .map(|n| n.id.inode)
            .collect();
        // The step read every count: the next probe measures its fill from these.
        self.last.retain(|ino, _| inodes.contains(ino));
        for n in &r.observation.namespaces {
            if let Some(count) = n.count {
                note(
                    &mut self.last,
                    &mut self.fastest,
                    n.id.inode,
                    Reading { at: now, count },
                );
            }
        }
        if inodes == self.counts.iter().map(|(i, _)| *i).collect::<Vec<_>>() {
            return;
        }
        self.counts.clear();
        let count_path = roots.sysctl(tunables::COUNT);
        let mut others = Vec::new();
        for n in &r.observation.namespaces {
            match &n.handle {
                None => {
                    if let Ok(f) = File::open(&count_path) {
                        self.counts.push((n.id.inode, f));
                    }
                }
                Some(path) => others.push(Handle {
                    id: n.id.clone(),
                    path: path.clone(),
                }),
            }
        }
        for (h, f) in others
            .iter()
            .zip(netns::read_each(&others, || File::open(&count_path)))
        {
            if let Ok(Ok(f)) = f {
                self.counts.push((h.id.inode, f));
            }
        }
    }

    /// Reads every count; true when a namespace calls for a step now.
    fn due(&mut self, now: Duration, next_step: Duration, cfg: &config::Config) -> bool {
        if self.blocked {
            return false;
        }
        let mut due = false;
        let mut buf = [0u8; 32];
        for (inode, f) in &self.counts {
            let Ok(n) = f.read_at(&mut buf, 0) else {
                continue;
            };
            let Some(count) = std::str::from_utf8(&buf[..n])
                .ok()
                .and_then(|t| t.trim().parse().ok())
            else {
                continue;
            };
            let reading = Reading { at: now, count };
            let prev = note(&mut self.last, &mut self.fastest, *inode, reading);
            due |= probe::step_now(prev, reading, self.max, next_step, cfg);
        }
        due
    }

    /// When to probe next ([`probe::next_probe_in`]): soon when a table is close to its
    /// watermark or the host has seen fast fills, rarely when every table is far from it.
    fn pace(&self, cfg: &config::Config) -> Duration {
        let counts = self.last.values().map(|r| r.count);
        probe::pace(self.blocked, counts, self.max, self.fastest, cfg)
    }
}

/// Keeps a reading, and the fill rate since the namespace's previous one when it is the
/// fastest seen; returns the previous reading.
fn note(
    last: &mut HashMap<u64, Reading>,
    fastest: &mut f64,
    inode: u64,
    reading: Reading,
) -> Option<Reading> {
    let prev = last.insert(inode, reading);
    if let Some(rate) = prev.and_then(|p| probe::fill_rate(p, reading)) {
        *fastest = fastest.max(rate);
    }
    prev
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

/// Runs the agent until SIGTERM or SIGINT. Steps and probes follow the core's
/// [`Schedule`], the same clock the simulator models.
pub async fn run(mut engine: Engine, source: ConfigSource) -> std::io::Result<()> {
    let notifier = Notifier::from_env();
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let agent_cfg = &engine.config.agent;
    let mut schedule = Schedule::new(agent_cfg.interval, agent_cfg.probe_interval, state::now());
    // Keep-alives at half the watchdog timeout, from the same task as the control step:
    // if a step hangs, the keep-alives stop and systemd restarts ctune.
    let wd_period = notifier
        .watchdog()
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut wd = tokio::time::interval(wd_period);
    let mut quiet = Quiet::default();
    let mut ready = false;
    let mut probe = Probe::default();
    let mut exporter = Exporter::default();
    exporter.next_step_in(agent_cfg.interval);
    if let Some(addr) = engine.config.metrics.listen
        && let Err(e) = metrics::serve(addr, Arc::clone(&exporter.served)).await
    {
        tracing::error!(
            "{e}; metrics are not served over HTTP (the textfile is still written when configured)"
        );
    }
    tracing::info!(
        interval = %humantime::format_duration(agent_cfg.interval),
        "ctune agent started"
    );
    loop {
        let wake = schedule.next_wake().saturating_sub(state::now());
        tokio::select! {
            _ = tokio::time::sleep(wake) => {
                let now = state::now();
                match schedule.due(now) {
                    Due::Step => {}
                    Due::Probe { until_step } => {
                        let due = probe.due(now, until_step, &engine.config);
                        schedule.probe_in(now, probe.pace(&engine.config));
                        if !due {
                            continue;
                        }
                        tracing::debug!("count probe: table filling, stepping early");
                        schedule.stepped_early(now);
                    }
                    Due::Nothing => continue,
                }
            }
            _ = wd.tick() => {
                notifier.keepalive();
                continue;
            }
            _ = hup.recv() => {
                notifier.reloading();
                reload(&mut engine, &source);
                let a = &engine.config.agent;
                schedule.set_periods(a.interval, a.probe_interval);
                // The new config takes effect at the next step, within its interval (an
                // idle wait under the old one may be much longer).
                schedule.step_in(state::now(), a.interval);
                exporter.next_step_in(a.interval);
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
        let (status, period) = step(&mut engine, &mut quiet, &mut probe, &mut exporter);
        let now = state::now();
        schedule.step_in(now, period);
        schedule.probe_in(now, probe.pace(&engine.config));
        exporter.next_step_in(period);
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

/// SIGHUP: the new config, or the old one kept when the new one is invalid.
fn reload(engine: &mut Engine, source: &ConfigSource) {
    match crate::sense::config_file::load(source.explicit.as_deref(), &source.default_path) {
        Ok((cfg, src)) => {
            tracing::info!("config reloaded from {}", src.path().display());
            engine.config = cfg;
        }
        Err(e) => tracing::error!("reload failed, keeping the previous config: {e}"),
    }
}

/// One control step; returns the line for `systemctl status` and the time to the next
/// regular step ([`schedule::step_period`]).
fn step(
    engine: &mut Engine,
    quiet: &mut Quiet,
    probe: &mut Probe,
    exporter: &mut Exporter,
) -> (String, Duration) {
    let now = state::now();
    match engine.step(now) {
        Ok(report) => {
            quiet.log(&report);
            probe.refresh(&engine.roots, &report, &engine.config, now);
            let held = &engine.state.policy.operator_held;
            exporter.after_step(&report, &engine.config, held, now);
            let period = schedule::step_period(&report.plan, &engine.config);
            (summary(&report), period)
        }
        Err(e) => {
            let msg = format!("cannot observe: {e}");
            quiet.failed(msg.clone());
            (msg, engine.config.agent.interval)
        }
    }
}
