//! Writing a plan to the kernel: in the plan's order, every value read back.
//!
//! Global keys are written from ctune's own (initial) namespace; a timeout is written
//! inside the namespace it belongs to, by a helper thread that enters it with setns.
//! Every change is tried, so one refused key does not leave the rest unapplied; each
//! failure names the key, the value, the file and the errno.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::sense::kfile;
use crate::sense::netns::{self, Handle};
use crate::sense::roots::Roots;
use ctune_core::model::Observation;
use ctune_core::plan::{Change, Target};
use ctune_core::tunables;

/// Why one change did not take effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The kernel refused the write.
    #[error("{key} = {value}: writing {} failed: {errno}{hint}", path.display())]
    Write {
        /// The sysctl or parameter.
        key: String,
        /// The value ctune tried to write.
        value: u64,
        /// The file.
        path: PathBuf,
        /// The errno's name (EACCES, EROFS, EINVAL, EOPNOTSUPP, ...).
        errno: String,
        /// What that errno means here.
        hint: String,
    },
    /// The write was accepted but the value reads back different.
    #[error("{key} = {value}: {} reads back {got} after the write", path.display())]
    DidNotStick {
        /// The sysctl.
        key: String,
        /// The value written.
        value: u64,
        /// What the kernel reports now.
        got: u64,
        /// The file.
        path: PathBuf,
    },
    /// Not attempted, with the reason.
    #[error("{key} = {value}: not applied: {reason}")]
    Skipped {
        /// The sysctl.
        key: String,
        /// The value that was planned.
        value: u64,
        /// Why not.
        reason: String,
    },
}

/// One change and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The planned change.
    pub change: Change,
    /// Ok when the value was written and read back.
    pub result: Result<(), ApplyError>,
}

fn hint(errno: nix::errno::Errno, key: &str) -> &'static str {
    use nix::errno::Errno;
    match errno {
        Errno::EACCES | Errno::EPERM if tunables::scope_of(key) == tunables::Scope::Global => {
            " (global keys are writable only by root in the initial network namespace)"
        }
        Errno::EACCES | Errno::EPERM => " (needs root or CAP_NET_ADMIN in that namespace)",
        Errno::EROFS => {
            " (/proc/sys is read-only here: a container, or systemd's ProtectKernelTunables)"
        }
        Errno::EINVAL => " (the kernel refused the value: out of range)",
        Errno::EOPNOTSUPP => " (only possible from the initial network namespace)",
        Errno::ENOENT => " (no such key on this kernel, or conntrack is not loaded)",
        Errno::ENOMEM => " (the kernel could not allocate the new table)",
        _ => "",
    }
}

/// Writes `value` to a sysctl or module parameter and reads it back.
pub fn write_value(path: &Path, key: &str, value: u64) -> Result<(), ApplyError> {
    let write_err = |e: std::io::Error| {
        let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
        ApplyError::Write {
            key: key.to_string(),
            value,
            path: path.to_path_buf(),
            errno: format!("{errno:?}"),
            hint: hint(errno, key).to_string(),
        }
    };
    // Opened without O_CREAT: a sysctl that does not exist must fail, not appear as a
    // regular file in a test tree. O_TRUNC is a no-op for procfs and sysfs, and keeps a
    // shorter value whole in a test tree.
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(write_err)?;
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(write_err)?;
    drop(f);
    let got = kfile::read_u64(path).map_err(|e| ApplyError::Skipped {
        key: key.to_string(),
        value,
        reason: format!(
            "written, but the read-back failed, so it is not known to be in force: {e}"
        ),
    })?;
    if got != value {
        return Err(ApplyError::DidNotStick {
            key: key.to_string(),
            value,
            got,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Applies `changes` in order. Global changes and changes of ctune's own namespace are
/// written directly; the others inside their namespace, grouped so each namespace is
/// entered once.
pub fn apply(roots: &Roots, obs: &Observation, changes: &[Change]) -> Vec<Outcome> {
    let own_inode = obs.namespaces.first().map(|n| n.id.inode);
    let mut results: Vec<Option<Result<(), ApplyError>>> = vec![None; changes.len()];
    // Globals first, then timeouts tier by tier across all namespaces (established
    // last everywhere), each namespace entered once per tier.
    let mut per_ns: BTreeMap<(tunables::TimeoutTier, usize, u64), Vec<usize>> = BTreeMap::new();
    let mut first_seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, ch) in changes.iter().enumerate() {
        match &ch.target {
            Target::Global => {
                results[i] = Some(apply_global(roots, obs, ch));
            }
            Target::Namespace { netns } => {
                let order = *first_seen.entry(netns.inode).or_insert(i);
                per_ns
                    .entry((tunables::tier_of(&ch.key), order, netns.inode))
                    .or_default()
                    .push(i);
            }
        }
    }
    for ((_, _, inode), idxs) in per_ns {
        if Some(inode) == own_inode {
            for i in idxs {
                let ch = &changes[i];
                results[i] = Some(write_value(&roots.sysctl(&ch.key), &ch.key, ch.new));
            }
            continue;
        }
        let ns = obs.namespaces.iter().find(|n| n.id.inode == inode);
        let handle = ns.and_then(|n| {
            n.handle.as_ref().map(|p| Handle {
                id: n.id.clone(),
                path: p.clone(),
            })
        });
        let Some(handle) = handle else {
            for i in idxs {
                results[i] = Some(Err(skipped(
                    &changes[i],
                    "namespace has no handle to enter",
                )));
            }
            continue;
        };
        let batch: Vec<&Change> = idxs.iter().map(|&i| &changes[i]).collect();
        let outcome = netns::read_each(std::slice::from_ref(&handle), |_| {
            batch
                .iter()
                .map(|ch| write_value(&roots.sysctl(&ch.key), &ch.key, ch.new))
                .collect::<Vec<_>>()
        })
        .pop()
        .expect("one result per handle");
        match outcome {
            Ok(rs) => {
                for (i, r) in idxs.into_iter().zip(rs) {
                    results[i] = Some(r);
                }
            }
            Err(e) => {
                for i in idxs {
                    results[i] = Some(Err(skipped(
                        &changes[i],
                        &format!("cannot enter namespace: {e}"),
                    )));
                }
            }
        }
    }
    changes
        .iter()
        .cloned()
        .zip(results)
        .map(|(change, result)| Outcome {
            change,
            result: result.expect("every change has a result"),
        })
        .collect()
}

fn skipped(ch: &Change, reason: &str) -> ApplyError {
    ApplyError::Skipped {
        key: ch.key.clone(),
        value: ch.new,
        reason: reason.to_string(),
    }
}

fn apply_global(roots: &Roots, obs: &Observation, ch: &Change) -> Result<(), ApplyError> {
    if ch.key == tunables::MAX && ch.new < ch.old {
        // Last look before lowering: the count may have grown since the observation.
        let count = kfile::read_u64(&roots.sysctl(tunables::COUNT)).unwrap_or(u64::MAX);
        let busiest = obs.peak_count();
        if ch.new <= count.max(busiest) {
            return Err(skipped(
                ch,
                &format!("the table holds {} entries now", count.max(busiest)),
            ));
        }
    }
    write_value(&roots.sysctl(&ch.key), &ch.key, ch.new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nf_conntrack_max");
        std::fs::write(&p, "65536\n").unwrap();
        write_value(&p, "nf_conntrack_max", 131072).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "131072\n");
    }

    #[test]
    fn missing_key_is_not_created() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nf_conntrack_max");
        let e = write_value(&p, "nf_conntrack_max", 1).unwrap_err();
        assert!(!p.exists());
        let msg = e.to_string();
        assert!(
            msg.contains("nf_conntrack_max = 1") && msg.contains("ENOENT"),
            "{msg}"
        );
    }
}
