//! Reading kernel files with errors that keep the cause apart.
//!
//! Plain `std::fs` is used on purpose: the `sysctl` crate maps every open error to
//! NotFound, while an operator needs to know whether a key is absent on this kernel
//! (ENOENT), ctune lacks the privilege (EACCES/EPERM), or the mount is read-only (EROFS).

use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Why a kernel file could not be used, classified for messages and decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// ENOENT: the key does not exist on this kernel, or the module is not loaded.
    Missing,
    /// EACCES/EPERM: not allowed (non-root, or a global key read from a child namespace).
    Denied,
    /// EROFS: the file system is mounted read-only (typical in containers).
    ReadOnly,
    /// The file was read but its content is not what the kernel writes there.
    Malformed,
    /// Any other errno.
    Other,
}

impl Cause {
    fn of(err: &io::Error) -> Cause {
        match err.raw_os_error() {
            Some(e) if e == nix::errno::Errno::ENOENT as i32 => Cause::Missing,
            Some(e) if e == nix::errno::Errno::ENOTDIR as i32 => Cause::Missing,
            Some(e)
                if e == nix::errno::Errno::EACCES as i32
                    || e == nix::errno::Errno::EPERM as i32 =>
            {
                Cause::Denied
            }
            Some(e) if e == nix::errno::Errno::EROFS as i32 => Cause::ReadOnly,
            _ => match err.kind() {
                io::ErrorKind::NotFound => Cause::Missing,
                io::ErrorKind::PermissionDenied => Cause::Denied,
                _ => Cause::Other,
            },
        }
    }
}

/// A failed read of one kernel file, naming the file and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file that failed.
    pub path: PathBuf,
    /// The classified cause.
    pub cause: Cause,
    /// The OS message or the parse problem, for the human.
    pub detail: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.cause {
            Cause::Missing => "not found",
            Cause::Denied => "permission denied",
            Cause::ReadOnly => "read-only file system",
            Cause::Malformed => "unexpected content",
            Cause::Other => "cannot read",
        };
        write!(f, "{}: {what}", self.path.display())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for FileError {}

impl FileError {
    /// Wraps an I/O error for `path`.
    pub fn io(path: &Path, err: &io::Error) -> FileError {
        // The errno's name (EACCES, EROFS) is what an operator searches for; the OS
        // text would only repeat the cause.
        let detail = match err.raw_os_error() {
            Some(code) => format!("{:?}", nix::errno::Errno::from_raw(code)),
            None => err.to_string(),
        };
        FileError {
            path: path.to_path_buf(),
            cause: Cause::of(err),
            detail,
        }
    }

    /// Content that does not parse: says what was expected and what was found.
    pub fn malformed(path: &Path, detail: impl Into<String>) -> FileError {
        FileError {
            path: path.to_path_buf(),
            cause: Cause::Malformed,
            detail: detail.into(),
        }
    }
}

/// The most a file ctune reads may hold: /proc/slabinfo, the largest, is a few hundred
/// KiB; a bigger file is not one of the files ctune reads.
pub const MAX_TEXT_BYTES: u64 = 4 << 20;

/// Reads a whole regular file as text, at most [`MAX_TEXT_BYTES`]. Opened non-blocking
/// and checked to be a regular file first, so a FIFO, socket or device planted where a
/// config or state file should be cannot block ctune (a FIFO's open would wait for a
/// writer) or feed it without end; errors keep the OS error kind (NotFound stays
/// NotFound), others are InvalidData. A kernel file (procfs, sysfs) is read through a
/// descriptor kept open ([`with_file`]).
pub fn read_bounded(path: &Path) -> io::Result<String> {
    let bytes = with_file(path, true, |file| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match file.read_at(&mut chunk, buf.len() as u64) {
                Ok(0) => return Ok(buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if buf.len() as u64 > MAX_TEXT_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("larger than {MAX_TEXT_BYTES} bytes: refused"),
                ));
            }
        }
    })?;
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Descriptors kept open per thread, by path: a sysctl or a procfs/sysfs file read
/// every step costs a pread instead of a path walk (open + read + close: ~5 us against
/// <1 us). Per thread, and forgotten when the thread enters another network namespace
/// ([`crate::sense::netns::enter`] calls [`forget_kept`]), because a /proc/sys file
/// opened inside a namespace keeps reading that namespace; the agent's own thread never
/// enters one, and the reader threads die with their cache. Only
/// kernel file systems are kept (a regular file may be replaced by a rename, which a
/// kept descriptor would not see), and at most [`MAX_KEPT`] per thread.
mod kept {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::fs::File;
    use std::path::{Path, PathBuf};

    /// Kept descriptors per thread, at most; past it the cache starts afresh.
    pub const MAX_KEPT: usize = 256;

    thread_local! {
        static KEPT: RefCell<HashMap<PathBuf, File>> = RefCell::new(HashMap::new());
    }

    /// Runs `f` on the kept descriptor of `path`, if there is one and it works; a
    /// descriptor that fails (a module unloaded, a namespace gone) is dropped.
    pub fn try_with<T>(path: &Path, f: &impl Fn(&File) -> std::io::Result<T>) -> Option<T> {
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            let result = k.get(path).map(f)?;
            result.map_err(|_| k.remove(path)).ok()
        })
    }

    /// Runs `f` on the kept descriptor of `path`, if there is one, and keeps it whatever
    /// `f` says (a refused access is no dead descriptor).
    pub fn peek<T>(path: &Path, f: impl FnOnce(&File) -> T) -> Option<T> {
        KEPT.with(|k| k.borrow().get(path).map(f))
    }

    /// Whether `file` is on procfs or sysfs (whose files are the kernel's, never replaced
    /// by a rename).
    pub fn on_kernel_fs(file: &File) -> bool {
        use nix::sys::statfs::{PROC_SUPER_MAGIC, SYSFS_MAGIC, fstatfs};
        fstatfs(file).is_ok_and(|s| {
            s.filesystem_type() == PROC_SUPER_MAGIC || s.filesystem_type() == SYSFS_MAGIC
        })
    }

    /// Keeps `file` (on a kernel file system) for `path`.
    pub fn keep(path: &Path, file: File) {
        KEPT.with(|k| {
            let mut k = k.borrow_mut();
            if k.len() >= MAX_KEPT {
                k.clear();
            }
            k.insert(path.to_path_buf(), file);
        });
    }

    /// Drops every descriptor this thread keeps.
    pub fn forget() {
        KEPT.with(|k| k.borrow_mut().clear());
    }

    /// How many descriptors this thread keeps.
    #[cfg(test)]
    pub fn len() -> usize {
        KEPT.with(|k| k.borrow().len())
    }
}

pub use kept::MAX_KEPT;

/// Forgets the descriptors this thread kept: called before the thread enters another
/// network namespace, where the same paths name other files.
pub fn forget_kept() {
    kept::forget();
}

/// Runs `f` (which reads from offset 0 with pread) on `path`: through the descriptor
/// kept for it, or on a fresh non-blocking open, kept afterwards when it is a kernel file.
/// With `regular_only`, anything but a regular file (or /dev/null) is refused (a kernel
/// file always is one); without it, the non-blocking open and `f`'s bounded read are
/// what keep a FIFO from blocking.
fn with_file<T>(
    path: &Path,
    regular_only: bool,
    f: impl Fn(&std::fs::File) -> io::Result<T>,
) -> io::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(v) = kept::try_with(path, &f) {
        return Ok(v);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    let kernel = kept::on_kernel_fs(&file);
    if regular_only && !kernel {
        let meta = file.metadata()?;
        // /dev/null is the empty file people pass as `--config /dev/null`.
        if !meta.file_type().is_file() && !is_null_device(&meta) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a regular file ({}): refused", kind_of(&meta)),
            ));
        }
    }
    let value = f(&file)?;
    if kernel {
        kept::keep(path, file);
    }
    Ok(value)
}

/// What a file that is not a regular file is, for the message that refuses it.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Whether a file ctune takes orders from (its config, its state) is under the control of
/// no one but root and ctune's own user, as sshd demands of its keys: the file and every
/// directory above it owned by root or this user, and not writable by group or others
/// (a directory with the sticky bit, like /tmp, may be: others cannot replace what is
/// in it). The error says what to fix.
pub fn trusted(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    let real = std::fs::canonicalize(path)?;
    let refuse = |what: String| io::Error::new(io::ErrorKind::PermissionDenied, what);
    if is_null_device(&std::fs::metadata(&real)?) {
        // Anyone may write to /dev/null; it stays empty.
        return Ok(());
    }
    let check = |p: &Path, dir: bool| -> io::Result<()> {
        let m = std::fs::metadata(p)?;
        if m.uid() != 0 && m.uid() != euid {
            return Err(refuse(format!(
                "{} is owned by uid {}, not by root or uid {euid}: another user could rewrite it (chown root {})",
                p.display(),
                m.uid(),
                p.display()
            )));
        }
        let sticky = dir && m.mode() & 0o1000 != 0;
        if m.mode() & 0o022 != 0 && !sticky {
            return Err(refuse(format!(
                "{} is writable by its group or others (mode {:o}): another user could rewrite it (chmod go-w {})",
                p.display(),
                m.mode() & 0o7777,
                p.display()
            )));
        }
        Ok(())
    };
    check(&real, false)?;
    real.ancestors().skip(1).try_for_each(|d| check(d, true))
}

/// Whether `meta` is the null device (character device 1:3).
fn is_null_device(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    meta.file_type().is_char_device() && meta.rdev() == nix::sys::stat::makedev(1, 3)
}

/// Reads a whole file as text ([`read_bounded`]), the cause kept.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    read_bounded(path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => FileError::malformed(path, e.to_string()),
        _ => FileError::io(path, &e),
    })
}

/// Reads a file holding one unsigned integer (a sysctl or module parameter): the hot
/// path of every step, so a pread on a kept descriptor ([`with_file`]) into a small
/// buffer, no allocation; more than 64 bytes is not a number.
pub fn read_u64(path: &Path) -> Result<u64, FileError> {
    let (buf, len) = with_file(path, false, read_small).map_err(|e| FileError::io(path, &e))?;
    parse_small(&buf, len, path)
}

/// Reads the number in `file` (opened from `path`, which errors name): the same bounded
/// read and parse as [`read_u64`], on a descriptor the caller opened.
pub fn read_u64_from(file: &std::fs::File, path: &Path) -> Result<u64, FileError> {
    let (buf, len) = read_small(file).map_err(|e| FileError::io(path, &e))?;
    parse_small(&buf, len, path)
}

/// Reads at most 64 bytes from offset 0 (a full buffer means too long for a number).
/// A read that ends in a newline is the whole value: a sysctl or sysfs file gives its
/// one line at once, and asking again for the end of file would double the syscalls of
/// every count ctune reads (~2 µs each, cache-cold, on a node of many namespaces).
fn read_small(file: &std::fs::File) -> io::Result<([u8; 64], usize)> {
    let mut buf = [0u8; 64];
    let mut len = 0;
    loop {
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok((buf, len)),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if len == buf.len() || buf[len - 1] == b'\n' {
            return Ok((buf, len));
        }
    }
}

fn parse_small(buf: &[u8; 64], len: usize, path: &Path) -> Result<u64, FileError> {
    if len == buf.len() {
        return Err(FileError::malformed(
            path,
            "more than 64 bytes: not a number",
        ));
    }
    let text =
        std::str::from_utf8(&buf[..len]).map_err(|_| FileError::malformed(path, "not text"))?;
    parse_u64(text).map_err(|detail| FileError::malformed(path, detail))
}

/// Parses the single unsigned integer a sysctl file holds.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    t.parse::<u64>()
        .map_err(|_| format!("expected an unsigned integer, found {:?}", truncate(t, 40)))
}

/// Whether the calling thread may open `path` for writing, as the kernel would decide it.
/// For sysctls `access(2)` runs the sysctl's own permission check, so a global key seen
/// from a child namespace (mode 0444) reports EACCES even for root, and a read-only
/// mount reports EROFS.
///
/// Asked of a kept descriptor ([`with_file`]) through its /proc/self/fd link when there
/// is one: the kernel then checks the same inode and mount without walking the path,
/// and a walk of /proc/sys/net/netfilter costs ~80 ns for every namespace on the host
/// (docs/design.md, "Many namespaces"), a millisecond a step on a node of a thousand.
pub fn writable(path: &Path) -> Result<(), FileError> {
    use std::os::fd::AsRawFd;
    let w = nix::unistd::AccessFlags::W_OK;
    let kept = kept::peek(path, |f| {
        nix::unistd::access(format!("/proc/self/fd/{}", f.as_raw_fd()).as_str(), w)
    });
    // No /proc/self (an odd chroot): the path itself.
    let result = match kept {
        Some(r) if r != Err(nix::errno::Errno::ENOENT) => r,
        _ => nix::unistd::access(path, w),
    };
    result.map_err(|errno| FileError::io(path, &io::Error::from_raw_os_error(errno as i32)))
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {

    /// Asked through a kept descriptor, writability is what access(2) on the path says,
    /// and asking keeps the descriptor.
    #[test]
    fn writable_through_a_kept_descriptor_agrees_with_the_path() {
        for key in ["/proc/sys/kernel/pid_max", "/proc/sys/kernel/ngroups_max"] {
            let path = Path::new(key);
            read_u64(path).unwrap();
            let by_path = nix::unistd::access(path, nix::unistd::AccessFlags::W_OK);
            let kept = writable(path).map_err(|e| e.cause);
            assert_eq!(
                kept.is_ok(),
                by_path.is_ok(),
                "{key}: {kept:?} vs {by_path:?}"
            );
            assert!(kept::peek(path, |_| ()).is_some(), "{key} still kept");
        }
    }

    #[test]
    fn kernel_files_are_read_through_a_kept_descriptor_and_regular_files_are_not() {
        let before = kept::len();
        let pid_max = Path::new("/proc/sys/kernel/pid_max");
        let a = read_u64(pid_max).unwrap();
        assert_eq!(kept::len(), before + 1, "a procfs file is kept");
        assert_eq!(read_u64(pid_max).unwrap(), a);
        assert_eq!(kept::len(), before + 1, "and read again through it");
        // A regular file replaced by a rename is read anew (a fixture tree's way).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n");
        std::fs::write(&p, "1\n").unwrap();
        assert_eq!(read_u64(&p).unwrap(), 1);
        std::fs::write(dir.path().join("m"), "2\n").unwrap();
        std::fs::rename(dir.path().join("m"), &p).unwrap();
        assert_eq!(read_u64(&p).unwrap(), 2);
        assert_eq!(kept::len(), before + 1, "regular files are not kept");
    }

    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = read_text(&p).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(err.cause, Cause::Malformed);
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert_eq!(
            read_text(Path::new("/dev/null")).unwrap(),
            "",
            "the empty file"
        );
    }

    #[test]
    fn a_file_others_may_write_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ctune.yaml");
        std::fs::write(&p, "").unwrap();
        trusted(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = trusted(&p).unwrap_err().to_string();
        assert!(
            err.contains("mode 666") && err.contains("chmod go-w"),
            "{err}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            trusted(&p)
                .unwrap_err()
                .to_string()
                .contains("writable by its group")
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        trusted(&p).expect("a sticky directory like /tmp is fine");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&p, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let err = trusted(&p).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'1'; (MAX_TEXT_BYTES + 10) as usize]).unwrap();
        assert!(
            read_text(&p)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
    }

    #[test]
    fn parses_sysctl_numbers() {
        assert_eq!(parse_u64("262144\n"), Ok(262144));
        assert!(parse_u64("").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("12 34").is_err());
    }

    #[test]
    fn classifies_missing_file() {
        let err = read_u64(Path::new("/nonexistent/ctune/key")).unwrap_err();
        assert_eq!(err.cause, Cause::Missing);
        assert_eq!(
            err.to_string(),
            "/nonexistent/ctune/key: not found (ENOENT)"
        );
    }

    #[test]
    fn malformed_content_names_the_file_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nf_conntrack_max");
        std::fs::write(&p, "lots\n").unwrap();
        let err = read_u64(&p).unwrap_err();
        assert_eq!(err.cause, Cause::Malformed);
        let msg = err.to_string();
        assert!(
            msg.contains("nf_conntrack_max") && msg.contains("\"lots\""),
            "{msg}"
        );
    }
}
