//! `ctune restore`: the explicit undo. Puts back the operator's global values from
//! before ctune first changed them and the timeouts ctune lowered, removes ctune's
//! persisted files (those of `persist.layout`, and its own of any other), then its state.
//!
//! Stopping the agent rolls nothing back on purpose (lowering max under load drops
//! flows); this command does, and still refuses to lower max below what the table holds
//! plus headroom unless forced.
//!
//! The decisions are [`ctune_core::restore`]'s, from plain data; this is the shell around
//! them: it reads the state, the kernel and ctune's files, performs the plan (each write
//! read back, [`apply`]; files removed, [`atomic`]), keeps or removes the state, and says
//! what it did in a [`RestoreReport`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::act::apply::{self, Outcome};
use crate::act::atomic;
use crate::act::persist;
use crate::act::state::{self, State, StateError};
use crate::sense::kfile::{self, Cause};
use crate::sense::observe::{self, ObserveError};
use crate::sense::roots::Roots;
use ctune_core::config::Config;
use ctune_core::plan::{Change, Target};
use ctune_core::restore::{self as undo, FilePlan, Found, FoundFile, Kept, Refusal, Settled};
use ctune_core::tunables;
use ctune_core::units::fmt_pct;

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
    pub files: Vec<(PathBuf, Result<bool, atomic::WriteError>)>,
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
    let mut st = state::load(roots)?;
    let mut report = RestoreReport {
        had_state: state::path(roots).exists(),
        ..RestoreReport::default()
    };
    let obs = observe::observe(roots, &cfg.namespaces)?;
    let (persisted, files) = read_files(roots, &persist::Files::of(cfg.persist.layout));
    let plan = undo::plan(&undo::Input {
        original: st.original.clone(),
        policy: st.policy.clone(),
        persisted,
        live: undo::Live::of(&obs),
        files,
        min_max: cfg.ceiling.min_max,
        headroom: cfg.max.headroom.get(),
        force,
    });
    let state_file = state::path(roots);
    report.refused = plan
        .refused
        .iter()
        .map(|r| refusal_text(r, &state_file))
        .collect();
    report.kept = plan.kept.iter().map(kept_text).collect();
    report.outcomes = apply::apply(roots, &obs, &plan.changes());
    let restored: Vec<&Change> = report
        .outcomes
        .iter()
        .filter(|o| o.result.is_ok())
        .map(|o| &o.change)
        .collect();
    match undo::settle(&mut st.original, &mut st.policy, &plan, &restored) {
        Settled::Unfinished { managed } => keep_files(roots, cfg, &st, &managed, &mut report),
        Settled::Finished => finish(roots, &st, &plan.files, &mut report),
    }
    Ok(report)
}

/// The files at ctune's paths (the layout in force, then ctune's of any other layout,
/// written before `persist.layout` changed), and the values in ctune's own sysctl file
/// when it carries ctune's header.
fn read_files(roots: &Roots, paths: &persist::Files) -> (BTreeMap<String, u64>, Vec<FoundFile>) {
    let mut persisted = BTreeMap::new();
    let layout = paths.all().into_iter().map(|rel| (rel, true));
    let others = paths.others().into_iter().map(|rel| (rel, false));
    let files = layout
        .chain(others)
        .map(|(rel, in_layout)| {
            let path = roots.etc.join(rel);
            let found = match kfile::read_text(&path) {
                Ok(text) if persist::is_ours(&text) => {
                    if in_layout && rel == paths.sysctl {
                        persisted = persist::parse_sysctl_values(&text).into_iter().collect();
                    }
                    Found::Ours
                }
                Ok(_) => Found::Foreign,
                Err(e) if e.cause == Cause::Missing => Found::Missing,
                Err(e) => Found::Unreadable(e.to_string()),
            };
            FoundFile {
                path,
                in_layout,
                found,
            }
        })
        .collect();
    (persisted, files)
}

/// Some global value is still ctune's: it must stay persisted, as it is now (keys
/// already put back are persisted at their restored values), and the state keeps what
/// is left to restore.
fn keep_files(
    roots: &Roots,
    cfg: &Config,
    st: &State,
    managed: &[String],
    report: &mut RestoreReport,
) {
    let managed: Vec<&str> = managed.iter().map(String::as_str).collect();
    match observe::observe(roots, &cfg.namespaces) {
        Ok(now) => {
            let empty = ctune_core::plan::Plan {
                ceiling: ctune_core::policy::ceiling_of(&now, cfg),
                changes: Vec::new(),
                namespaces: Vec::new(),
                explanations: Vec::new(),
                role: None,
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
    if let Err(e) = state::save(roots, st) {
        report.state_error = Some(e.to_string());
    }
}

/// Every global value is back: ctune's files go, then the state when everything is
/// done (otherwise it keeps what is left to restore, without what already was).
fn finish(roots: &Roots, st: &State, files: &FilePlan, report: &mut RestoreReport) {
    for path in &files.remove {
        report.files.push((path.clone(), atomic::remove(path)));
    }
    let state_file = state::path(roots);
    report
        .refused
        .extend(files.refused.iter().map(|r| refusal_text(r, &state_file)));
    let outcome = if report.complete() {
        atomic::remove(&state_file)
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        state::save(roots, st).map_err(|e| e.to_string())
    };
    if report.had_state || !report.complete() {
        report.state_error = outcome.err();
    }
}

/// A refusal in words; a recorded global value names the state file it came from.
fn refusal_text(r: &Refusal, state_file: &Path) -> String {
    match r {
        Refusal::UnderLoad {
            live,
            original,
            peak,
            headroom,
        } => format!(
            "{}: not lowering {live} -> {original}: the busiest namespace holds {peak} entries, and {original} would leave less than {} headroom (new flows would be dropped); wait for the load to fall, or use --force",
            tunables::MAX,
            fmt_pct(*headroom)
        ),
        Refusal::OutOfBounds {
            target: Target::Global,
            why,
            ..
        } => format!("{why} (recorded in {})", state_file.display()),
        Refusal::OutOfBounds {
            target: Target::Namespace { netns },
            why,
            ..
        } => format!("{why} in {} (recorded in the state)", netns.name),
        // Shrinking the hash under the load that keeps max up would lengthen every
        // chain and stall inserts during the resize.
        Refusal::HashWhileMaxUp { live, original } => format!(
            "{}: not shrinking {live} -> {original} while max stays up",
            tunables::BUCKETS
        ),
        Refusal::NotOurs { path } => format!(
            "{}: not removed: it does not carry ctune's header, so someone else wrote it",
            path.display()
        ),
        Refusal::Unreadable { error, .. } => format!("{error}: not removed"),
    }
}

/// A value left as it is, in words.
fn kept_text(k: &Kept) -> String {
    match k {
        Kept::Global {
            key,
            live,
            original,
        } => format!(
            "{key}: left at {live}: someone else changed it after ctune set it, so it is theirs (ctune's record of {original} is dropped)"
        ),
        Kept::Timeout {
            netns,
            key,
            live,
            set,
        } => format!(
            "{key} in {}: left at {live}: someone else changed it after ctune set {set}",
            netns.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctune_core::model::NetnsId;

    fn init() -> NetnsId {
        NetnsId {
            name: "init".into(),
            inode: 1,
        }
    }

    /// The words `restore` has always printed, each kind once.
    #[test]
    fn refusals_in_words() {
        let state_file = Path::new("/var/lib/ctune/state.json");
        let cases = [
            (
                Refusal::UnderLoad {
                    live: 131_072,
                    original: 65_536,
                    peak: 55_705,
                    headroom: 0.25,
                },
                "nf_conntrack_max: not lowering 131072 -> 65536: the busiest namespace holds 55705 entries, and 65536 would leave less than 25% headroom (new flows would be dropped); wait for the load to fall, or use --force",
            ),
            (
                Refusal::OutOfBounds {
                    target: Target::Global,
                    key: tunables::MAX.into(),
                    value: 1,
                    why: "nf_conntrack_max = 1 refused: below 1024".into(),
                },
                "nf_conntrack_max = 1 refused: below 1024 (recorded in /var/lib/ctune/state.json)",
            ),
            (
                Refusal::OutOfBounds {
                    target: Target::Namespace { netns: init() },
                    key: "nf_conntrack_udp_timeout".into(),
                    value: 0,
                    why: "nf_conntrack_udp_timeout = 0 refused: outside".into(),
                },
                "nf_conntrack_udp_timeout = 0 refused: outside in init (recorded in the state)",
            ),
            (
                Refusal::HashWhileMaxUp {
                    live: 32_768,
                    original: 16_384,
                },
                "nf_conntrack_buckets: not shrinking 32768 -> 16384 while max stays up",
            ),
            (
                Refusal::NotOurs {
                    path: "/etc/modprobe.d/ctune.conf".into(),
                },
                "/etc/modprobe.d/ctune.conf: not removed: it does not carry ctune's header, so someone else wrote it",
            ),
            (
                Refusal::Unreadable {
                    path: "/etc/x".into(),
                    error: "/etc/x: permission denied (EACCES)".into(),
                },
                "/etc/x: permission denied (EACCES): not removed",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(refusal_text(&r, state_file), want);
        }
    }

    #[test]
    fn kept_values_in_words() {
        let kept = [
            (
                Kept::Global {
                    key: tunables::MAX.into(),
                    live: 200_000,
                    original: 65_536,
                },
                "nf_conntrack_max: left at 200000: someone else changed it after ctune set it, so it is theirs (ctune's record of 65536 is dropped)",
            ),
            (
                Kept::Timeout {
                    netns: init(),
                    key: "nf_conntrack_udp_timeout".into(),
                    live: 45,
                    set: 10,
                },
                "nf_conntrack_udp_timeout in init: left at 45: someone else changed it after ctune set 10",
            ),
        ];
        for (k, want) in kept {
            assert_eq!(kept_text(&k), want);
        }
    }

    /// ctune's files are told apart by their header, the layout's from the others'; the
    /// values persisted come from ctune's own sysctl file only.
    #[test]
    fn files_found_at_ctunes_paths() {
        use ctune_core::config::Layout;
        let d = tempfile::tempdir().unwrap();
        let roots = Roots::all_under(d.path());
        let write = |rel: &str, text: &str| {
            let p = roots.etc.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        let ours =
            "# Managed by ctune: conntrack limits learned on this host. Edits are overwritten.\n";
        assert!(persist::is_ours(ours), "the header changed: {ours}");
        write(
            persist::SYSCTL_FILE,
            &format!("{ours}net.netfilter.nf_conntrack_max = 131072\n"),
        );
        write(
            persist::MODPROBE_FILE,
            "options nf_conntrack hashsize=4096\n",
        );
        write(persist::MODULES_D_FILE, &format!("{ours}nf_conntrack\n"));
        let (persisted, files) = read_files(&roots, &persist::Files::of(Layout::Systemd));
        assert_eq!(
            persisted,
            BTreeMap::from([(tunables::MAX.to_string(), 131_072)])
        );
        let found: Vec<(&str, bool, &Found)> = files
            .iter()
            .map(|f| {
                let rel = f.path.strip_prefix(&roots.etc).unwrap();
                (rel.to_str().unwrap(), f.in_layout, &f.found)
            })
            .collect();
        assert_eq!(
            found,
            [
                (persist::SYSCTL_FILE, true, &Found::Ours),
                (persist::MODULES_LOAD_FILE, true, &Found::Missing),
                (persist::MODPROBE_FILE, true, &Found::Foreign),
                (persist::MODULES_D_FILE, false, &Found::Ours),
            ]
        );
        // Someone else's sysctl file holds no value of ctune's.
        write(
            persist::SYSCTL_FILE,
            "net.netfilter.nf_conntrack_max = 131072\n",
        );
        let (persisted, _) = read_files(&roots, &persist::Files::of(Layout::Systemd));
        assert!(persisted.is_empty());
    }
}
