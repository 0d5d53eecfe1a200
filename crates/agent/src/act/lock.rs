//! One writer at a time: `run`, `apply`, `boot` and `restore` hold an exclusive lock on
//! `/run/ctune/lock` (runtime state: gone at reboot, never left in /var/lib/ctune). Without it, a `restore` while the agent runs would be undone by
//! the agent's next step, and an `apply` would lose the operator's values it recorded
//! when the agent saves its own copy of the state.

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};

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
        "another ctune is running (pid {holder}, lock {path}): stop the agent first (systemctl stop ctune), or wait for it"
    )]
    Busy {
        /// The lock file.
        path: String,
        /// Who holds it, as written in the file.
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

/// Takes the lock without waiting.
pub fn acquire(roots: &Roots) -> Result<Lock, LockError> {
    let dir = roots.run.join("ctune");
    let path = dir.join("lock");
    let shown = path.display().to_string();
    let io = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
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
}
