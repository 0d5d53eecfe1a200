//! Replacing a file so that a reader (or a reboot) sees the old content or the new, never
//! a mix: temp file in the same directory, fsync, rename, fsync the directory.
//!
//! A symlink at the target is refused rather than replaced or followed: under /etc a
//! planted link could redirect a root-owned write anywhere.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A file that could not be written or removed, with the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {step}: {}", path.display(), errno_text(source))]
pub struct WriteError {
    /// The target file.
    pub path: PathBuf,
    /// What was being done ("create temp file", "rename", ...).
    pub step: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!(
            "{:?} ({})",
            nix::errno::Errno::from_raw(code),
            nix::errno::Errno::from_raw(code).desc()
        ),
        None => e.to_string(),
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The file already had this content; nothing was touched.
    Unchanged,
    /// The file was created or replaced.
    Written,
}

fn err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        path: path.to_path_buf(),
        step,
        source,
    }
}

/// Writes `content` to `path` atomically with `mode`, creating the parent directory
/// (0755) if needed. Unchanged content is not rewritten.
pub fn write(path: &Path, content: &[u8], mode: u32) -> Result<WriteOutcome, WriteError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(WriteError {
                path: path.to_path_buf(),
                step: "refusing to replace a symlink",
                source: io::Error::from_raw_os_error(nix::errno::Errno::ELOOP as i32),
            });
        }
        Ok(m) if m.is_file() => {
            if fs::read(path).map_err(err(path, "read current content"))? == content {
                return Ok(WriteOutcome::Unchanged);
            }
        }
        Ok(_) => {
            return Err(WriteError {
                path: path.to_path_buf(),
                step: "not a regular file",
                source: io::Error::from_raw_os_error(nix::errno::Errno::EISDIR as i32),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(path, "inspect target")(e)),
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err(path, "create directory"))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    // Unique per process and call: a temp file left by a crash (a watchdog kill) must
    // not block the next write, even by a process that got the same PID after a reboot.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!(".{name}.ctune-{}-{stamp}.tmp", std::process::id()));
    remove_stale_temps(dir, &name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
            .map_err(err(path, "create temp file"))?;
        f.write_all(content).map_err(err(path, "write temp file"))?;
        // The umask may have narrowed the mode; the target's mode is part of the content.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err(path, "set mode"))?;
        f.sync_all().map_err(err(path, "fsync temp file"))?;
        fs::rename(&tmp, path).map_err(err(path, "rename into place"))?;
        sync_dir(dir).map_err(err(path, "fsync directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| WriteOutcome::Written)
}

/// Removes `path` if it exists and is a regular file; the removal is made durable.
/// Returns whether a file was removed.
pub fn remove(path: &Path) -> Result<bool, WriteError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(path, "inspect target")(e)),
        Ok(m) if !m.is_file() => {
            return Err(WriteError {
                path: path.to_path_buf(),
                step: "not a regular file, not removing",
                source: io::Error::from_raw_os_error(nix::errno::Errno::EINVAL as i32),
            });
        }
        Ok(_) => {}
    }
    fs::remove_file(path).map_err(err(path, "remove"))?;
    sync_dir(path.parent().unwrap_or(Path::new("/"))).map_err(err(path, "fsync directory"))?;
    Ok(true)
}

/// Removes temp files of `name` left behind by a crashed writer (older than a minute, so
/// a concurrent writer's is never touched).
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.ctune-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let n = e.file_name();
        let n = n.to_string_lossy();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(60));
        if n.starts_with(&prefix) && n.ends_with(".tmp") && old {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_replaces_and_skips_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/dir/f.conf");
        assert_eq!(write(&p, b"a\n", 0o644).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&p).unwrap(), b"a\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let before = fs::metadata(&p).unwrap().ino_and_mtime();
        assert_eq!(write(&p, b"a\n", 0o644).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(
            fs::metadata(&p).unwrap().ino_and_mtime(),
            before,
            "unchanged file not rewritten"
        );
        assert_eq!(write(&p, b"b\n", 0o600).unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&p).unwrap(), b"b\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn refuses_symlink_at_target() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let p = d.path().join("f.conf");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        let e = write(&p, b"evil", 0o644).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert!(remove(&p).is_err(), "a symlink is not removed either");
    }

    trait InoMtime {
        fn ino_and_mtime(&self) -> (u64, i64, i64);
    }
    impl InoMtime for fs::Metadata {
        fn ino_and_mtime(&self) -> (u64, i64, i64) {
            use std::os::unix::fs::MetadataExt;
            (self.ino(), self.mtime(), self.mtime_nsec())
        }
    }

    #[test]
    fn remove_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "x").unwrap();
        assert!(remove(&p).unwrap());
        assert!(!remove(&p).unwrap());
    }
}
