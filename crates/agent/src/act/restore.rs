//! `ctune restore`: the explicit undo. Puts back the operator's global values from
//! before ctune first changed them and the timeouts ctune lowered, removes ctune's
//! persisted files (those of `persist.layout`, and its own of any other), then its state.
//!
//! Stopping the agent rolls nothing back on purpose (lowering max under load drops
//! flows); this command does, and still refuses to lower max below what the table holds
//! plus headroom unless forced.

use crate::act::apply::{self, Outcome};
use crate::act::atomic;
use crate::act::persist;
use crate::act::state::{self, StateError};
use crate::sense::kfile::{self, Cause};
use crate::sense::observe::{self, ObserveError};
use crate::sense::roots::Roots;
use ctune_core::bounds::{self, Bounds};
use ctune_core::config::Config;
use ctune_core::plan::{Change, Target};
use ctune_core::tunables;

/// What restore did.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Kernel values put back (or not).
    pub outcomes: Vec<Outcome>,
    /// Values not put back, and why (restore is not complete).
    pub refused: Vec<String>,
    /// Values deliberately left as they are (someone else owns them now).
    pub kept: Vec<String>,
    /// Files removed, or why not.
    pub files: Vec<(std::path::PathBuf, Result<bool, atomic::WriteError>)>,
    /// Whether a state file existed.
    pub had_state: bool,
    /// The state file could not be removed.
    pub state_error: Option<String>,
}

impl RestoreReport {
    /// Whether everything was put back and removed.
    pub fn complete(&self) -> bool {
        self.refused.is_empty()
            && self.outcomes.iter().all(|o| o.result.is_ok())
            && self.files.iter().all(|(_, r)| r.is_ok())
            && self.state_error.is_none()
    }
}

/// Why restore could not start.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The kernel could not be observed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
}

/// Restores. `force` allows lowering max below the live count plus headroom.
pub fn restore(roots: &Roots, cfg: &Config, force: bool) -> Result<RestoreReport, RestoreError> {
    let st = state::load(roots)?;
    let mut report = RestoreReport {
        had_state: state::path(roots).exists(),
        ..RestoreReport::default()
    };
    let obs = observe::observe(roots, &cfg.namespaces)?;
    let peak = obs.peak_count();
    let paths = persist::Files::of(cfg.persist.layout);
    let persisted: std::collections::BTreeMap<String, u64> =
        kfile::read_text(&roots.etc.join(paths.sysctl))
            .ok()
            .filter(|t| persist::is_ours(t))
            .map(|t| persist::parse_sysctl_values(&t).into_iter().collect())
            .unwrap_or_default();
    // What a recorded value must be to be put back: the operator's value may be above
    // the ceiling, but never outside the kernel's bounds, nor below the smallest max a
    // kernel picks by itself.
    let limits = Bounds {
        min_max: cfg.ceiling.min_max.min(bounds::RESTORE_MIN_MAX),
        ceiling: None,
        table_needs: None,
        page_size: obs.host.page_size,
    };
    let mut changes = Vec::new();
    let mut st = st;
    let mut max_refused = false;
    for key in [tunables::MAX, tunables::BUCKETS] {
        let Some(&original) = st.original.get(key) else {
            continue;
        };
        let Some(live) = obs.global.value(key).filter(|l| *l != original) else {
            continue;
        };
        // A value someone else set after ctune is theirs now: not ctune's to undo. The
        // value in ctune's own persisted file is ctune's too, even when the state save
        // that should have recorded it failed.
        let set_by_ctune =
            st.policy.applied.get(key) == Some(&live) || persisted.get(key) == Some(&live);
        if !set_by_ctune || st.policy.operator_held.contains(key) {
            report.kept.push(format!(
                "{key}: left at {live}: someone else changed it after ctune set it, so it is theirs (ctune's record of {original} is dropped)"
            ));
            st.original.remove(key);
            st.policy.applied.remove(key);
            continue;
        }
        let safe = (peak as f64 * (1.0 + cfg.max.headroom.get())).ceil() as u64;
        if key == tunables::MAX && original < safe && !force {
            report.refused.push(format!(
                "{key}: not lowering {live} -> {original}: the busiest namespace holds {peak} entries, and {original} would leave less than {} headroom (new flows would be dropped); wait for the load to fall, or use --force",
                ctune_core::units::fmt_pct(cfg.max.headroom.get())
            ));
            max_refused = true;
            continue;
        }
        // The record itself must be a value ctune could write (a tampered or corrupt
        // state must not set max to 1): see `limits`.
        if let Err(why) = bounds::check(key, original, &limits) {
            report.refused.push(format!(
                "{why} (recorded in {})",
                state::path(roots).display()
            ));
            max_refused |= key == tunables::MAX;
            continue;
        }
        if key == tunables::BUCKETS && max_refused {
            // Shrinking the hash under the load that keeps max up would lengthen every
            // chain and stall inserts during the resize.
            report.refused.push(format!(
                "{key}: not shrinking {live} -> {original} while max stays up"
            ));
            continue;
        }
        changes.push(Change {
            key: key.to_string(),
            target: Target::Global,
            old: live,
            new: original,
            reason: "restoring the operator's value from before ctune".into(),
        });
    }
    for n in &obs.namespaces {
        let Some(ns_state) = st.policy.namespaces.get(&n.id.inode) else {
            continue;
        };
        for (key, lowered) in &ns_state.lowered {
            if let Err(why) = bounds::check(key, lowered.baseline, &limits) {
                report
                    .refused
                    .push(format!("{why} in {} (recorded in the state)", n.id.name));
                continue;
            }
            match n.timeouts.get(key) {
                Some(&live) if live == lowered.set => changes.push(Change {
                    key: key.clone(),
                    target: Target::Namespace {
                        netns: n.id.clone(),
                    },
                    old: live,
                    new: lowered.baseline,
                    reason: "restoring the operator's value from before ctune".into(),
                }),
                Some(&live) => report.kept.push(format!(
                    "{key} in {}: left at {live}: someone else changed it after ctune set {}",
                    n.id.name, lowered.set
                )),
                None => {}
            }
        }
    }
    report.outcomes = apply::apply(roots, &obs, &changes);
    for o in report.outcomes.iter().filter(|o| o.result.is_ok()) {
        match &o.change.target {
            Target::Global => {
                st.original.remove(&o.change.key);
                st.policy.applied.remove(&o.change.key);
                st.policy.operator_held.remove(&o.change.key);
            }
            Target::Namespace { netns } => {
                if let Some(ns) = st.policy.namespaces.get_mut(&netns.inode) {
                    ns.lowered.remove(&o.change.key);
                }
            }
        }
    }
    if !st.original.is_empty() {
        // Some global value is still ctune's: it must stay persisted, as it is now
        // (keys already put back are persisted at their restored values).
        let managed: Vec<&str> = st.policy.applied.keys().map(String::as_str).collect();
        match observe::observe(roots, &cfg.namespaces) {
            Ok(now) => {
                let empty = ctune_core::plan::Plan {
                    ceiling: ctune_core::policy::ceiling_of(&now, cfg),
                    changes: Vec::new(),
                    namespaces: Vec::new(),
                    explanations: Vec::new(),
                };
                for f in persist::render(roots, cfg.persist.layout, &now, &empty, &managed).0 {
                    if let Err(e) = atomic::write(&f.path, f.new.as_bytes(), 0o644) {
                        report.refused.push(format!("cannot rewrite {e}"));
                    }
                }
            }
            Err(e) => report.refused.push(format!(
                "cannot re-read the kernel to rewrite the persisted files: {e}"
            )),
        }
        if let Err(e) = state::save(roots, &st) {
            report.state_error = Some(e.to_string());
        }
        return Ok(report);
    }
    // The files of the layout in force, then ctune's own files of any other layout
    // (written before `persist.layout` changed): those only when they carry ctune's
    // header, and someone else's file at such a path is no business of this layout's.
    for (rel, mine) in paths
        .all()
        .into_iter()
        .map(|r| (r, true))
        .chain(paths.others().into_iter().map(|r| (r, false)))
    {
        let path = roots.etc.join(rel);
        match kfile::read_text(&path) {
            Ok(text) if persist::is_ours(&text) => {
                let r = atomic::remove(&path);
                report.files.push((path, r));
            }
            Ok(_) if mine => report.refused.push(format!(
                "{}: not removed: it does not carry ctune's header, so someone else wrote it",
                path.display()
            )),
            Ok(_) => {}
            Err(e) if e.cause == Cause::Missing || !mine => {}
            Err(e) => report.refused.push(format!("{e}: not removed")),
        }
    }
    let outcome = if report.complete() {
        atomic::remove(&state::path(roots))
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        // Keep what is left to restore, without what already was.
        state::save(roots, &st).map_err(|e| e.to_string())
    };
    if report.had_state || !report.complete() {
        report.state_error = outcome.err();
    }
    Ok(report)
}
