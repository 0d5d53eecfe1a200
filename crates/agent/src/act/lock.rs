//! One writer at a time: `run`, `apply`, `boot` and `restore` hold an exclusive lock on
//! `/run/ctune/lock` (runtime state: gone at reboot, never left in /var/lib/ctune). Without it, a `restore` while the agent runs would be undone by
//! the agent's next step, and an `apply` would lose the operator's values it recorded
//! when the agent saves its own copy of the state.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::sense::roots::Roots;

/// Held until dropped.
#[derive(Debug)]
pub struct Lock {
    _flock: Flock<File>,
}

/// Another ctune holds the lock, or it could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another ctune is running ({}, lock {path}): stop the agent first (systemctl stop ctune), or wait for it",
        holder_text(holder)
    )]
    Busy {
        /// The lock file.
        path: String,
        /// Who holds it, as written in the file (empty: it has taken the lock and not yet
        /// written its pid).
        holder: String,
    },
    /// The lock file could not be opened.
    #[error("cannot take the lock {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The holder for the message: its pid, or that it is only starting.
fn holder_text(holder: &str) -> String {
    if holder.is_empty() {
        "just started: its pid is not written yet".into()
    } else {
        format!("pid {holder}")
    }
}

/// Makes `dir` a directory of ctune's own that no one else may enter (0700): an existing
/// one owned by someone else, or a symlink, is refused. Another ctune starting at the
/// same moment may create it first: then it is checked like any existing one.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    private_dir_tries(dir, 3)
}

fn private_dir_tries(dir: &Path, tries: u32) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries > 1 => {
                    private_dir_tries(dir, tries - 1)
                }
                other => other,
            }
        }
        Err(e) => Err(e),
        Ok(m) if !m.file_type().is_dir() || m.uid() != nix::unistd::geteuid().as_raw() => {
            Err(std::io::Error::other(format!(
                "{} is not a directory of this user's (a symlink or someone else's): remove it",
                dir.display()
            )))
        }
        Ok(m) if m.mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        }
        Ok(_) => Ok(()),
    }
}

/// Opens the lock file, never through a symlink. A file others could open (from before
/// its directory was private, or planted) is replaced by a fresh one: a lock another
/// user took on it must not stop ctune.
fn open_lock(path: &Path) -> std::io::Result<File> {
    let trusted = std::fs::symlink_metadata(path).map(|m| {
        m.file_type().is_file()
            && m.uid() == nix::unistd::geteuid().as_raw()
            && m.mode() & 0o077 == 0
    });
    if matches!(trusted, Ok(false)) {
        std::fs::remove_file(path)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

/// Takes the lock without waiting.
pub fn acquire(roots: &Roots) -> Result<Lock, LockError> {
    let dir = roots.run.join("ctune");
    let path = dir.join("lock");
    let shown = path.display().to_string();
    let io = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    std::fs::create_dir_all(&roots.run).map_err(io)?;
    private_dir(&dir).map_err(io)?;
    let file = open_lock(&path).map_err(io)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut flock) => {
            let _ = flock.set_len(0);
            let _ = writeln!(*flock, "{}", std::process::id());
            Ok(Lock { _flock: flock })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(LockError::Busy {
                path: shown,
                holder: holder.trim().to_string(),
            })
        }
        Err((_, errno)) => Err(io(std::io::Error::from_raw_os_error(errno as i32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_pid() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots {
            run: d.path().join("run"),
            ..Roots::default()
        };
        let first = acquire(&roots).unwrap();
        let e = acquire(&roots).unwrap_err().to_string();
        assert!(
            e.contains(&std::process::id().to_string()) && e.contains("systemctl stop ctune"),
            "{e}"
        );
        drop(first);
        acquire(&roots).unwrap();
    }

    #[test]
    fn a_lock_file_others_could_open_is_replaced_and_their_lock_does_not_stop_ctune() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots {
            run: d.path().join("run"),
            ..Roots::default()
        };
        let dir = roots.run.join("ctune");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("lock");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Someone opened the world-readable file and holds a lock on it.
        let theirs = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let ours = acquire(&roots).expect("their lock on an untrusted file must not stop ctune");
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        drop((ours, theirs));
    }

    #[test]
    fn a_symlink_planted_as_the_lock_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let roots = Roots {
            run: d.path().join("run"),
            ..Roots::default()
        };
        let dir = roots.run.join("ctune");
        std::fs::create_dir_all(&dir).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("lock")).unwrap();
        let _lock = acquire(&roots).unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "keep",
            "target not truncated"
        );
        assert!(
            !std::fs::symlink_metadata(dir.join("lock"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    /// Writers started together on a fresh tree (the first `ctune apply`s on a host):
    /// one takes the lock, every other is told another ctune holds it, and none fails
    /// for having raced the others to create the directory or the file.
    #[test]
    fn writers_racing_on_a_fresh_tree_are_busy_never_broken() {
        for round in 0..200 {
            let d = tempfile::tempdir().unwrap();
            let roots = Roots {
                run: d.path().join("run"),
                ..Roots::default()
            };
            let start = std::sync::Barrier::new(6);
            let results: Vec<Result<Lock, LockError>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..6)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            acquire(&roots)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let held = results.iter().filter(|r| r.is_ok()).count();
            for r in &results {
                if let Err(e) = r {
                    assert!(matches!(e, LockError::Busy { .. }), "round {round}: {e}");
                    assert!(!e.to_string().contains("pid ,"), "round {round}: {e}");
                }
            }
            assert_eq!(held, 1, "round {round}");
        }
    }
}
