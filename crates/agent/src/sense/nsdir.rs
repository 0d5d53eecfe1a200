//! The `/proc/sys/net/netfilter` directory of each watched namespace, opened once.
//!
//! Why: every network namespace has its own dentry named `netfilter` under
//! `/proc/sys/net`, and they all hang in one hash chain, which the kernel walks, calling
//! `proc_sys_compare` on each, at every path lookup through it. Opening
//! `/proc/sys/net/netfilter/KEY` costs ~80 ns more for every namespace on the host: 22 µs
//! with 250 namespaces, against 2 µs for an `openat` of KEY from a kept descriptor of
//! the directory. Reading ~27 keys in each of 1000 namespaces by path made the dry run
//! take 2 s (docs/benchmarks-cost.md, "Many namespaces").
//!
//! So the reader thread, once inside a namespace, opens that directory once per process
//! and every key from it. A kept sysctl descriptor does not keep its namespace alive (a
//! namespace file or a `/proc/net` file would): when the namespace is gone, `openat`
//! under the directory fails with ENOENT (`live_many_namespaces` tests it), and the
//! directory is opened afresh, in case the inode number was given to a new namespace.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::sense::kfile::{self, FileError};

/// Directories kept at most (one descriptor each); past it, a namespace's directory is
/// opened for the one read and closed, as without the cache.
pub const MAX_DIRS: usize = 4096;

/// What is kept of one namespace: its directory, and its count once read (a sysctl
/// descriptor reads its own namespace's value from any thread, so the count of a quiet
/// namespace and the probe's need no setns).
#[derive(Debug, Clone)]
struct Kept {
    dir: Arc<File>,
    count: Option<Arc<File>>,
}

/// The kept directories, by the inode of their namespace.
static DIRS: Mutex<Option<HashMap<u64, Kept>>> = Mutex::new(None);

fn dirs<T>(f: impl FnOnce(&mut HashMap<u64, Kept>) -> T) -> T {
    let mut guard = DIRS.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// The kept directory of namespace `inode`, which the calling thread has entered,
/// opened from `path` when there is none (or `fresh` asks for a new one).
fn dir(path: &Path, inode: u64, fresh: bool) -> io::Result<Arc<File>> {
    if !fresh && let Some(k) = dirs(|m| m.get(&inode).cloned()) {
        return Ok(k.dir);
    }
    let file = Arc::new(File::open(path)?);
    dirs(|m| {
        if m.len() < MAX_DIRS || m.contains_key(&inode) {
            let kept = Kept {
                dir: file.clone(),
                count: None,
            };
            m.insert(inode, kept);
        }
    });
    Ok(file)
}

/// The count file of namespace `inode` (the calling thread's), kept: opened from the
/// kept directory the first time.
pub fn count_file(dir_path: &Path, inode: u64, key: &str) -> Result<Arc<File>, FileError> {
    if let Some(c) = dirs(|m| m.get(&inode).and_then(|k| k.count.clone())) {
        return Ok(c);
    }
    let file = Arc::new(open(dir_path, inode, key)?);
    dirs(|m| {
        if let Some(k) = m.get_mut(&inode) {
            k.count = Some(file.clone());
        }
    });
    Ok(file)
}

/// The kept count file of namespace `inode`, if any (from any thread).
pub fn kept_count_file(inode: u64) -> Option<Arc<File>> {
    dirs(|m| m.get(&inode).and_then(|k| k.count.clone()))
}

/// The count of namespace `inode` from its kept count file, from any thread; None when
/// none is kept or it no longer reads (the namespace is gone: the file is dropped).
pub fn kept_count(inode: u64, path: &Path) -> Option<u64> {
    let file = kept_count_file(inode)?;
    match kfile::read_u64_from(&file, path) {
        Ok(v) => Some(v),
        Err(_) => {
            dirs(|m| m.remove(&inode));
            None
        }
    }
}

/// Opens `key` under `dir_path` in namespace `inode` (the calling thread's), from the
/// kept directory; an ENOENT from a kept one is tried once more from a fresh open, since
/// the directory may be a dead namespace's whose inode number was reused.
pub fn open(dir_path: &Path, inode: u64, key: &str) -> Result<File, FileError> {
    let at = |d: &File| -> io::Result<File> {
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        openat(d.as_fd(), key, flags, Mode::empty())
            .map(File::from)
            .map_err(io::Error::from)
    };
    let err = |e: io::Error| FileError::io(&dir_path.join(key), &e);
    let d = dir(dir_path, inode, false).map_err(err)?;
    match at(&d) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            at(&*dir(dir_path, inode, true).map_err(err)?).map_err(err)
        }
        other => other.map_err(err),
    }
}

/// Reads the number in `key` of namespace `inode` ([`open`]).
pub fn read_u64(dir_path: &Path, inode: u64, key: &str) -> Result<u64, FileError> {
    let file = open(dir_path, inode, key)?;
    kfile::read_u64_from(&file, &dir_path.join(key))
}

/// The names in the directory of namespace `inode`.
pub fn list(dir_path: &Path, inode: u64) -> Result<Vec<String>, FileError> {
    let d = dir(dir_path, inode, false).map_err(|e| FileError::io(dir_path, &e))?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let listing = nix::dir::Dir::openat(d.as_fd(), ".", flags, Mode::empty())
        .map_err(|e| FileError::io(dir_path, &io::Error::from(e)))?;
    Ok(listing
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect())
}

/// Forgets what is kept of namespaces that are gone: any not in `inodes` (this
/// observation's) whose directory no longer opens its count. One not watched now but
/// alive stays (another observer in the same process may watch it; the cache is bounded
/// by [`MAX_DIRS`]).
pub fn retain(inodes: &BTreeSet<u64>) {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let alive =
        |k: &Kept| openat(k.dir.as_fd(), "nf_conntrack_count", flags, Mode::empty()).is_ok();
    dirs(|m| m.retain(|inode, k| inodes.contains(inode) || alive(k)));
}
