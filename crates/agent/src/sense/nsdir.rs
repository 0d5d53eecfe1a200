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
//! namespace file or a `/proc/net` file would): when the namespace is gone, even `fstat`
//! of the directory fails (`live_many_namespaces` tests it), and what was kept is
//! dropped: the kernel gives inode numbers of dead namespaces to new ones.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;

use crate::sense::kfile::{self, FileError};

/// Directories kept at most (one descriptor each, and one for the count); past it, a
/// namespace's directory is opened for the one read and closed, as without the cache.
/// Also at most a quarter of the open-files limit, so the rest of ctune never runs out.
pub const MAX_DIRS: usize = 4096;

/// What is kept of one namespace: its directory, and its count once read (a sysctl
/// descriptor reads its own namespace's value from any thread, so the count of a quiet
/// namespace and the probe's need no setns).
#[derive(Debug, Clone)]
struct Kept {
    dir: Arc<File>,
    count: Option<Arc<File>>,
}

/// The kept directories, by the inode of their namespace; and the inodes found dead since
/// their kept files were last asked about ([`reborn`]).
#[derive(Debug, Default)]
struct Cache {
    kept: HashMap<u64, Kept>,
    dead: BTreeSet<u64>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Cache::default))
}

/// Whether a kept directory is still its namespace's: the kernel refuses even `fstat`
/// on a sysctl directory whose namespace is gone (ENOENT).
fn alive(dir: &File) -> bool {
    nix::sys::stat::fstat(dir.as_fd()).is_ok()
}

fn max_dirs() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    MAX_DIRS.min(usize::try_from(soft / 4).unwrap_or(MAX_DIRS))
}

/// Forgets what is kept of `inode`, whose namespace is gone: a new namespace may be
/// given the same inode number, and must not be read through the dead one's files.
fn bury(c: &mut Cache, inode: u64) {
    if c.kept.remove(&inode).is_some() {
        c.dead.insert(inode);
        // Bounded: a number not given out again soon is forgotten (the kernel hands out
        // the lowest free ones, so those come back first).
        while c.dead.len() > MAX_DIRS {
            c.dead.pop_last();
        }
    }
}

/// The kept directory of namespace `inode`, which the calling thread has entered,
/// opened from `path` when there is none or the kept one is a dead namespace's.
fn dir(path: &Path, inode: u64) -> io::Result<Arc<File>> {
    let kept = cache(|c| c.kept.get(&inode).map(|k| k.dir.clone()));
    match kept {
        Some(d) if alive(&d) => return Ok(d),
        Some(_) => cache(|c| bury(c, inode)),
        None => {}
    }
    let file = Arc::new(File::open(path)?);
    let max = max_dirs();
    cache(|c| {
        if c.kept.len() < max {
            let kept = Kept {
                dir: file.clone(),
                count: None,
            };
            c.kept.insert(inode, kept);
        }
    });
    Ok(file)
}

/// Whether what was kept of `inode` was found dead since this was last asked: the
/// namespace now under that inode number is another, and what was learnt of the old
/// one (its timeouts, its counters) is not its.
pub fn reborn(inode: u64) -> bool {
    cache(|c| c.dead.remove(&inode))
}

/// The count file of namespace `inode` (the calling thread's), kept: opened from the
/// kept directory the first time.
pub fn count_file(dir_path: &Path, inode: u64, key: &str) -> Result<Arc<File>, FileError> {
    let d = dir(dir_path, inode).map_err(|e| FileError::io(dir_path, &e))?;
    if let Some(c) = cache(|c| c.kept.get(&inode).and_then(|k| k.count.clone())) {
        return Ok(c);
    }
    let file = Arc::new(openat_key(&d, dir_path, key)?);
    cache(|c| {
        if let Some(k) = c.kept.get_mut(&inode) {
            k.count = Some(file.clone());
        }
    });
    Ok(file)
}

/// The kept count file of namespace `inode`, if any (from any thread).
pub fn kept_count_file(inode: u64) -> Option<Arc<File>> {
    cache(|c| c.kept.get(&inode).and_then(|k| k.count.clone()))
}

/// The count of namespace `inode` from its kept count file, from any thread; None when
/// none is kept or it no longer reads (the namespace is gone: what was kept is dropped).
pub fn kept_count(inode: u64, path: &Path) -> Option<u64> {
    let file = kept_count_file(inode)?;
    match kfile::read_u64_from(&file, path) {
        Ok(v) => Some(v),
        Err(_) => {
            cache(|c| bury(c, inode));
            None
        }
    }
}

fn openat_key(d: &File, dir_path: &Path, key: &str) -> Result<File, FileError> {
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    openat(d.as_fd(), key, flags, Mode::empty())
        .map(File::from)
        .map_err(|e| FileError::io(&dir_path.join(key), &io::Error::from(e)))
}

/// Opens `key` under `dir_path` in namespace `inode` (the calling thread's), from the
/// kept directory (ENOENT: this kernel has no such key).
pub fn open(dir_path: &Path, inode: u64, key: &str) -> Result<File, FileError> {
    let d = dir(dir_path, inode).map_err(|e| FileError::io(dir_path, &e))?;
    openat_key(&d, dir_path, key)
}

/// Reads the number in `key` of namespace `inode` ([`open`]).
pub fn read_u64(dir_path: &Path, inode: u64, key: &str) -> Result<u64, FileError> {
    let file = open(dir_path, inode, key)?;
    kfile::read_u64_from(&file, &dir_path.join(key))
}

/// The names in the directory of namespace `inode`.
pub fn list(dir_path: &Path, inode: u64) -> Result<Vec<String>, FileError> {
    let d = dir(dir_path, inode).map_err(|e| FileError::io(dir_path, &e))?;
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
/// observation's) whose directory is dead. One not watched now but alive stays (another
/// observer in the same process may watch it; the cache is bounded by [`MAX_DIRS`]).
pub fn retain(inodes: &BTreeSet<u64>) {
    cache(|c| {
        let gone: Vec<u64> = c
            .kept
            .iter()
            .filter(|(inode, k)| !inodes.contains(inode) && !alive(&k.dir))
            .map(|(inode, _)| *inode)
            .collect();
        for inode in gone {
            bury(c, inode);
        }
    });
}
