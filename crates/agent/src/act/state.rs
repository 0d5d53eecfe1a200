//! What ctune keeps across runs in `/var/lib/ctune/state.json`: the operator's global
//! values from before ctune first changed them (for `ctune restore`), and the policy's
//! memory (levels, lowered timeouts, last resize, what ctune last set).
//!
//! Written atomically. Times in the policy state are CLOCK_BOOTTIME, which survives a
//! restart of ctune but not a reboot: after a reboot (another boot id) they are dropped,
//! together with per-namespace records (namespaces do not survive a reboot either).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::act::atomic;
use crate::sense::kfile::{self, Cause};
use crate::sense::roots::Roots;
use ctune_core::controller::Memory;
use ctune_core::policy::PolicyState;

/// The state file's format version.
pub const VERSION: u32 = 1;

/// Everything ctune remembers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The kernel's boot id when this was written.
    pub boot_id: String,
    /// Global values before ctune first changed each key: what `restore` puts back.
    pub original: BTreeMap<String, u64>,
    /// The policy's memory.
    pub policy: PolicyState,
    /// The last composition sample of each namespace at the elevated level or above, by
    /// inode: the agent takes them (`agent.composition_interval` apart), and `plan` and
    /// `status` weigh timeouts by them as the agent does.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compositions: BTreeMap<u64, ctune_core::model::Governed>,
    /// Under `role: auto`, the role held (absent from a state written before it).
    #[serde(default)]
    pub role: Option<ctune_core::role::Held>,
}

/// A state file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unreadable file.
    #[error("cannot read state {0}")]
    Read(kfile::FileError),
    /// Not JSON of the expected shape.
    #[error(
        "state file {path} is not valid: {message}; move it away to start afresh (the operator's original values are in it: max and buckets under \"original\")"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// Could not be written.
    #[error("cannot write state: {0}")]
    Write(#[from] atomic::WriteError),
}

/// The state file below the state root.
pub fn path(roots: &Roots) -> PathBuf {
    roots.state.join("state.json")
}

/// The kernel's boot id ("" when unreadable, which makes every state look stale).
pub fn boot_id(roots: &Roots) -> String {
    kfile::read_text(&roots.proc.join("sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Monotonic time since boot, including suspend: survives ctune restarts.
pub fn now() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default()
}

/// Loads the state; a missing file is an empty state. A state from an earlier boot
/// keeps only what outlives a reboot.
pub fn load(roots: &Roots) -> Result<State, StateError> {
    let p = path(roots);
    // The state says which values to put back: another user must not be able to write it.
    let text = match kfile::trusted(&p)
        .map_err(|e| kfile::FileError::io(&p, &e))
        .and_then(|()| kfile::read_text(&p))
    {
        Ok(t) => t,
        Err(e) if e.cause == Cause::Missing => {
            return Ok(State {
                version: VERSION,
                boot_id: boot_id(roots),
                ..State::default()
            });
        }
        Err(e) => return Err(StateError::Read(e)),
    };
    // The version first: a newer ctune's state may mean something else by the same
    // fields, and using it (then saving it back as this version) could restore the
    // wrong values.
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }
    let invalid = |message: String| StateError::Invalid {
        path: p.clone(),
        message,
    };
    let v: Versioned = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if v.version != VERSION {
        return Err(invalid(format!(
            "format version {} is not the {VERSION} this ctune reads (written by another version of ctune)",
            v.version
        )));
    }
    let mut st: State = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let current = boot_id(roots);
    if st.boot_id != current {
        // Boot-time clocks restarted and every namespace is new; what ctune set globally
        // came back through sysctl.d, so `applied` and the baseline stay meaningful.
        st.policy = PolicyState {
            applied: st.policy.applied,
            baseline_max: st.policy.baseline_max,
            operator_held: st.policy.operator_held,
            ..PolicyState::default()
        };
        st.compositions.clear();
        // The role stays (the host is the same host); its pending time was the old
        // boot's clock.
        if let Some(held) = &mut st.role {
            held.pending = None;
        }
        st.boot_id = current;
    }
    Ok(st)
}

impl State {
    /// What the controller remembers ([`Memory`]), from this state.
    pub fn memory(&self) -> Memory {
        Memory {
            original: self.original.clone(),
            policy: self.policy.clone(),
            compositions: self.compositions.clone(),
            role: self.role.clone(),
        }
    }

    /// The state to save: the controller's memory, with this boot's id.
    pub fn of(boot_id: String, memory: &Memory) -> State {
        State {
            version: VERSION,
            boot_id,
            original: memory.original.clone(),
            policy: memory.policy.clone(),
            compositions: memory.compositions.clone(),
            role: memory.role.clone(),
        }
    }
}

/// The state without the times of its samples (the counters' times, and the last
/// count, which is never saved): two states equal in this form differ only in when
/// their samples were taken.
pub fn untimed(mut s: State) -> State {
    for ns in s.policy.namespaces.values_mut() {
        ns.last_count = None;
        if let Some(c) = ns.counters.as_mut() {
            c.at = None;
        }
    }
    s
}

/// Saves the state atomically (unchanged content is not rewritten).
pub fn save(roots: &Roots, st: &State) -> Result<(), StateError> {
    let mut text = serde_json::to_string_pretty(st).expect("state serializes");
    text.push('\n');
    atomic::write(&path(roots), text.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = roots(dir.path());
        std::fs::create_dir_all(&r.state).unwrap();
        std::fs::write(path(&r), r#"{"version": 7, "boot_id": "", "original": {}}"#).unwrap();
        let err = load(&r).unwrap_err().to_string();
        assert!(
            err.contains("format version 7") && err.contains("state.json"),
            "{err}"
        );
    }
    use ctune_core::pressure::{Level, LevelState};

    fn roots(dir: &std::path::Path) -> Roots {
        Roots::all_under(dir)
    }

    #[test]
    fn round_trip_and_reboot_drops_clock_bound_parts() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        std::fs::create_dir_all(r.proc.join("sys/kernel/random")).unwrap();
        std::fs::write(r.proc.join("sys/kernel/random/boot_id"), "aaa\n").unwrap();
        let mut st = load(&r).unwrap();
        assert_eq!(st.boot_id, "aaa");
        st.original.insert("nf_conntrack_max".into(), 65536);
        st.policy.last_resize = Some(Duration::from_secs(5));
        st.policy.applied.insert("nf_conntrack_max".into(), 131072);
        st.policy.namespaces.insert(
            7,
            ctune_core::policy::NamespaceState {
                level: Some(LevelState {
                    level: Level::Critical,
                    since: Duration::from_secs(1),
                }),
                ..Default::default()
            },
        );
        save(&r, &st).unwrap();
        assert_eq!(load(&r).unwrap(), st);

        std::fs::write(r.proc.join("sys/kernel/random/boot_id"), "bbb\n").unwrap();
        let after = load(&r).unwrap();
        assert_eq!(after.original, st.original);
        assert_eq!(after.policy.applied, st.policy.applied);
        assert_eq!(after.policy.last_resize, None);
        assert!(after.policy.namespaces.is_empty());
    }

    #[test]
    fn invalid_state_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        std::fs::create_dir_all(&r.state).unwrap();
        std::fs::write(path(&r), "{nope").unwrap();
        let e = load(&r).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("not valid"), "{e}");
    }
}
