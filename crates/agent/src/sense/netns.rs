//! Finding network namespaces and reading conntrack state inside them.
//!
//! The count and the timeouts are per namespace and `/proc/sys` shows the reading
//! thread's namespace, so another namespace is read by a helper thread that enters it
//! with setns(2). The helper reads statistics through `/proc/thread-self/net`, because
//! `/proc/net` follows the thread-group leader, not the thread.

use nix::sched::{CloneFlags, setns};
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::sense::kfile::FileError;
use crate::sense::roots::Roots;
use ctune_core::config::{NamespaceMode, Namespaces};
use ctune_core::model::{NetnsId, Note, NoteKind};
use ctune_core::units::printable;

/// A namespace to read, and the file whose descriptor enters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    /// Who it is.
    pub id: NetnsId,
    /// /run/netns/NAME or /proc/PID/ns/net.
    pub path: PathBuf,
}

/// What discovery found: ctune's own namespace, the others, and what it could not see.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Inode of ctune's own namespace, when readable.
    pub own_inode: Option<u64>,
    /// Whether ctune's namespace is PID 1's (the host's), when both are readable.
    pub own_is_initial: Option<bool>,
    /// Other namespaces, in a stable order, each once.
    pub others: Vec<Handle>,
    /// Problems worth telling the operator (missing names, unreadable processes).
    pub notes: Vec<Note>,
    /// Namespaces listed that were gone before they could be looked at: counted, not
    /// reported (pods come and go).
    pub vanished: usize,
}

/// Adds a namespace found by name, once per inode. A name that was `listed` and is gone
/// now was deleted meanwhile: counted as vanished; a name the config asks for and that
/// is missing is the operator's to know.
fn push_named(
    d: &mut Discovery,
    seen: &mut BTreeSet<u64>,
    (name, path): (String, PathBuf),
    listed: bool,
) {
    match inode_of(&path) {
        Ok(inode) => {
            if seen.insert(inode) {
                d.others.push(Handle {
                    id: NetnsId { name, inode },
                    path,
                });
            }
        }
        Err(e) if listed && e.cause == crate::sense::kfile::Cause::Missing => d.vanished += 1,
        Err(e) => d.notes.push(Note::new(
            NoteKind::Namespace,
            name.clone(),
            format!("namespace {name}: {e}"),
        )),
    }
}

/// Every namespace under /run/netns, from the last listing while the directory is
/// unchanged ([`listed`]); else listed and looked at one by one.
fn named_all(roots: &Roots, d: &mut Discovery, seen: &mut BTreeSet<u64>) {
    let dir = roots.named_netns_dir();
    let push = |d: &mut Discovery, seen: &mut BTreeSet<u64>, handle: Handle| {
        if seen.insert(handle.id.inode) {
            d.others.push(handle);
        }
    };
    if let Some(handles) = listed::reuse(&dir) {
        for handle in handles {
            push(d, seen, handle);
        }
        return;
    }
    let before = listed::stamp(&dir);
    let nsfs = std::fs::metadata(roots.proc.join("self/ns/net")).map(|m| m.dev());
    let mut found = Vec::new();
    let mut whole = true;
    for raw in list_dir(&dir, &mut d.notes, true) {
        let path = dir.join(&raw);
        // A name under /run/netns is anyone's choice: never print it raw.
        let name = printable(&raw);
        match std::fs::metadata(&path) {
            Ok(m) => {
                // A plain file is an `ip netns add` caught before its mount.
                whole &= nsfs.as_ref().is_ok_and(|dev| *dev == m.dev());
                let id = NetnsId {
                    name,
                    inode: m.ino(),
                };
                found.push(Handle { id, path });
                push(d, seen, found[found.len() - 1].clone());
            }
            // Deleted since the listing, or unreadable: as any name is.
            Err(_) => {
                whole = false;
                push_named(d, seen, (name, path), true);
            }
        }
    }
    if whole && let Some(before) = before {
        listed::keep(&dir, before, found);
    }
}

fn inode_of(path: &std::path::Path) -> Result<u64, FileError> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| FileError::io(path, &e))
}

/// Finds the namespaces the config asks for, deduplicated by inode; ctune's own is not
/// among `others`.
pub fn discover(roots: &Roots, cfg: &Namespaces) -> Discovery {
    let mut d = Discovery::default();
    match inode_of(&roots.proc.join("self/ns/net")) {
        Ok(ino) => d.own_inode = Some(ino),
        Err(e) => d.notes.push(Note::new(
            NoteKind::OwnNamespace,
            "",
            format!("cannot identify own namespace: {e}"),
        )),
    }
    d.own_is_initial = match (d.own_inode, inode_of(&roots.pid_netns("1"))) {
        (Some(own), Ok(init)) => Some(own == init),
        _ => None,
    };
    let mut seen: BTreeSet<u64> = d.own_inode.into_iter().collect();

    match cfg.mode {
        NamespaceMode::Initial => {}
        NamespaceMode::Named => {
            for name in &cfg.names {
                let path = roots.named_netns_dir().join(name);
                // A name under /run/netns is anyone's choice: never print it raw.
                push_named(&mut d, &mut seen, (printable(name), path), false);
            }
        }
        NamespaceMode::All => {
            named_all(roots, &mut d, &mut seen);
            let mut pids: Vec<u32> = list_dir(&roots.proc, &mut d.notes, false)
                .into_iter()
                .filter_map(|n| n.parse().ok())
                .collect();
            pids.sort_unstable();
            let mut denied: Vec<u32> = Vec::new();
            for pid in pids {
                let path = roots.pid_netns(&pid.to_string());
                match inode_of(&path) {
                    Ok(inode) if seen.insert(inode) => {
                        let name = process_name(roots, pid);
                        d.others.push(Handle {
                            id: NetnsId { name, inode },
                            path,
                        });
                    }
                    Ok(_) => {}
                    // Processes exit between listing and stat: not worth a note.
                    Err(e) if e.cause == crate::sense::kfile::Cause::Missing => d.vanished += 1,
                    Err(_) => denied.push(pid),
                }
            }
            note_denied(roots, &denied, &mut d.notes);
        }
    }
    d
}

/// The note on processes whose namespaces could not be looked at.
fn note_denied(roots: &Roots, denied: &[u32], notes: &mut Vec<Note>) {
    if denied.is_empty() {
        return;
    }
    let hint = if nix::unistd::geteuid().is_root() {
        "even as root: a sandbox or ptrace restriction hides them"
    } else {
        "run as root to see them"
    };
    let named = denied_names(roots, denied);
    notes.push(Note::new(
        NoteKind::HiddenNamespaces,
        "",
        format!(
            "the namespaces of {} process(es) could not be inspected: {named} \
                 (permission denied; {hint})",
            denied.len()
        ),
    ));
}

/// `pid N (comm)`: any user names its processes, so what a terminal would obey is escaped.
fn process_name(roots: &Roots, pid: u32) -> String {
    let comm = std::fs::read_to_string(roots.proc.join(pid.to_string()).join("comm"))
        .map(|c| printable(c.trim_end_matches('\n')))
        .unwrap_or_default();
    if comm.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} ({comm})")
    }
}

/// The first few of `pids` with their command names, for a note an operator can act on.
fn denied_names(roots: &Roots, pids: &[u32]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<String> = pids
        .iter()
        .take(SHOWN)
        .map(|pid| process_name(roots, *pid))
        .collect();
    if pids.len() > SHOWN {
        names.push(format!("and {} more", pids.len() - SHOWN));
    }
    names.join(", ")
}

fn list_dir(dir: &std::path::Path, notes: &mut Vec<Note>, missing_ok: bool) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            names
        }
        Err(e) => {
            if !(missing_ok && e.kind() == std::io::ErrorKind::NotFound) {
                notes.push(Note::new(
                    NoteKind::Listing,
                    dir.display().to_string(),
                    format!("cannot list {}: {e}", dir.display()),
                ));
            }
            Vec::new()
        }
    }
}

/// Runs `read` inside each namespace (given its handle), on one helper thread that moves
/// from namespace to namespace, so ctune's own threads never change namespace. A
/// namespace that cannot be entered yields its error instead of a reading.
pub fn read_each<T: Send>(
    handles: &[Handle],
    read: impl Fn(&Handle) -> T + Sync,
) -> Vec<Result<T, Unentered>> {
    if handles.is_empty() {
        return Vec::new();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            handles
                .iter()
                .map(|h| {
                    enter(h)?;
                    Ok(read(h))
                })
                .collect()
        })
        .join()
        .expect("namespace reader thread panicked")
    })
}

/// Why a namespace was not entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unentered {
    /// It is gone: its process exited or its name was deleted (or now names another
    /// namespace) since discovery. On a node whose pods come and go this is routine,
    /// not a problem to report.
    pub vanished: bool,
    /// What happened, naming the path.
    pub message: String,
}

impl std::fmt::Display for Unentered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Unentered> for String {
    fn from(u: Unentered) -> String {
        u.message
    }
}

/// Moves the calling thread into the namespace of `h`, after checking that the handle
/// still names the namespace it named at discovery (a PID can exit and be reused, a
/// /run/netns name can be deleted and created again).
pub fn enter(h: &Handle) -> Result<(), Unentered> {
    let io_err = |e: std::io::Error| Unentered {
        vanished: e.kind() == std::io::ErrorKind::NotFound,
        message: FileError::io(&h.path, &e).to_string(),
    };
    let file = File::open(&h.path).map_err(io_err)?;
    let inode = file.metadata().map(|m| m.ino()).map_err(io_err)?;
    if inode != h.id.inode {
        return Err(Unentered {
            vanished: true,
            message: format!(
                "{}: now names another namespace (inode {inode}, was {}): it was deleted or its process exited",
                h.path.display(),
                h.id.inode
            ),
        });
    }
    // Descriptors and sockets this thread kept read the namespace it was in: not this
    // one's.
    crate::sense::kfile::forget_kept();
    crate::sense::ctstats::forget_kept();
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
        if errno == nix::errno::Errno::EINVAL && became_another(h) {
            return Unentered {
                vanished: true,
                message: format!("{}: was being created or deleted", h.path.display()),
            };
        }
        let why = match errno {
            nix::errno::Errno::EINVAL => " (not a network namespace)",
            nix::errno::Errno::EPERM => " (needs CAP_SYS_ADMIN)",
            _ => "",
        };
        Unentered {
            vanished: false,
            message: format!("{}: setns failed: {errno:?}{why}", h.path.display()),
        }
    })
}

/// Whether the path of `h`, a plain file where a namespace was expected, named a
/// namespace a moment later (or nothing): `ip netns add` creates the file and mounts the
/// namespace on it a moment later, `ip netns del` unmounts it, then removes the file. A
/// file that stays what it was is not a namespace, and is reported.
fn became_another(h: &Handle) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(20));
    match std::fs::metadata(&h.path) {
        Ok(m) => m.ino() != h.id.inode,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// /run/netns as last listed, reused while its directory is unchanged: on a node of a
/// thousand pods a `stat` of every name (each a mount point) was the largest part of an
/// idle step. `ip netns add` and `del` create and unlink the name, which changes the
/// directory's mtime and ctime; a listing is kept only when the directory had been still
/// for [`SETTLE`] (two changes within one tick of the file system's clock share a
/// time), every name was a mounted namespace, and it is listed again at least every
/// [`RELIST`] (a namespace unmounted and mounted again under the same name, without
/// unlinking it, changes no time of the directory).
mod listed {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, Instant, SystemTime};

    /// How long the directory must have been unchanged for a listing to be kept.
    pub const SETTLE: Duration = Duration::from_secs(2);
    /// The longest a listing is reused.
    pub const RELIST: Duration = Duration::from_secs(60);

    /// The directory's identity and change times (ns).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Stamp {
        dev: u64,
        ino: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    }

    struct Kept {
        stamp: Stamp,
        at: Instant,
        handles: Vec<super::Handle>,
    }

    /// By directory (tests list trees of their own; the agent, one).
    static KEPT: Mutex<Option<HashMap<PathBuf, Kept>>> = Mutex::new(None);

    /// Directories whose listing is kept at most.
    const MAX_DIRS: usize = 8;

    pub fn stamp(dir: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(dir).ok()?;
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// The namespaces of the last listing of `dir`, when it is still good.
    pub fn reuse(dir: &Path) -> Option<Vec<super::Handle>> {
        let now = stamp(dir)?;
        let kept = KEPT.lock().ok()?;
        let k = kept.as_ref()?.get(dir)?;
        (k.stamp == now && k.at.elapsed() < RELIST).then(|| k.handles.clone())
    }

    /// Keeps a listing of `dir` whose directory was `before` when listing began: only
    /// when it is unchanged since and had been still for [`SETTLE`].
    pub fn keep(dir: &Path, before: Stamp, handles: Vec<super::Handle>) {
        let still = SystemTime::UNIX_EPOCH
            + Duration::new(
                before.ctime.0.max(0) as u64,
                before.ctime.1.clamp(0, 999_999_999) as u32,
            );
        let settled = SystemTime::now()
            .duration_since(still)
            .is_ok_and(|d| d >= SETTLE);
        let Ok(mut kept) = KEPT.lock() else {
            return;
        };
        let map = kept.get_or_insert_with(HashMap::new);
        if !settled || stamp(dir) != Some(before) {
            map.remove(dir);
            return;
        }
        if map.len() >= MAX_DIRS {
            map.clear();
        }
        let k = Kept {
            stamp: before,
            at: Instant::now(),
            handles,
        };
        map.insert(dir.to_path_buf(), k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree() -> (tempfile::TempDir, Roots) {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::all_under(dir.path());
        (dir, roots)
    }

    fn ns_file(path: &std::path::Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }

    #[test]
    fn all_mode_dedups_by_inode_and_skips_own() {
        let (_d, roots) = tree();
        ns_file(&roots.proc.join("self/ns/net"));
        ns_file(&roots.pid_netns("1"));
        ns_file(&roots.named_netns_dir().join("fw"));
        // pid 7 is in namespace fw (same inode: a hard link), pid 9 in its own.
        fs::create_dir_all(roots.proc.join("7/ns")).unwrap();
        fs::hard_link(roots.named_netns_dir().join("fw"), roots.pid_netns("7")).unwrap();
        ns_file(&roots.pid_netns("9"));
        // A process name with a terminal escape and a newline: escaped, never raw.
        fs::write(roots.proc.join("9/comm"), "dns\x1b[2Jmasq\n").unwrap();
        // pid 5 shares ctune's namespace.
        fs::create_dir_all(roots.proc.join("5/ns")).unwrap();
        fs::hard_link(roots.proc.join("self/ns/net"), roots.pid_netns("5")).unwrap();

        let d = discover(
            &roots,
            &Namespaces {
                mode: NamespaceMode::All,
                names: vec![],
            },
        );
        let names: Vec<_> = d.others.iter().map(|h| h.id.name.as_str()).collect();
        assert_eq!(names, ["fw", "pid 1", "pid 9 (dns\\u{1b}[2Jmasq)"]);
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("pid 7") || n.starts_with("pid 5")),
            "{names:?}"
        );
        assert_eq!(
            d.own_is_initial,
            Some(false),
            "pid 1 has its own inode in this tree"
        );
    }

    /// A listing of /run/netns is reused while the directory is unchanged (a name's
    /// namespace is not looked at again), and listed anew once a name comes or goes.
    #[test]
    fn a_still_listing_is_reused_until_a_name_comes_or_goes() {
        let (_d, roots) = tree();
        ns_file(&roots.proc.join("self/ns/net"));
        ns_file(&roots.pid_netns("1"));
        // "a" leads elsewhere: what it is can change without the directory changing.
        let elsewhere = roots.proc.join("elsewhere");
        ns_file(&elsewhere);
        fs::create_dir_all(roots.named_netns_dir()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, roots.named_netns_dir().join("a")).unwrap();
        let all = Namespaces {
            mode: NamespaceMode::All,
            names: vec![],
        };
        let inode_of_a = |d: &Discovery| {
            let a = d.others.iter().find(|h| h.id.name == "a");
            a.map(|h| h.id.inode)
        };
        // Listed while the directory has just changed: not kept.
        // Another file where "a" leads (made before the old one goes: a new inode).
        let replace = || {
            let next = roots.proc.join("next");
            ns_file(&next);
            fs::rename(&next, &elsewhere).unwrap();
        };
        // Listed just after the directory changed (a name made and removed): not kept.
        let touch = || {
            ns_file(&roots.named_netns_dir().join("tmp"));
            fs::remove_file(roots.named_netns_dir().join("tmp")).unwrap();
        };
        touch();
        let first = inode_of_a(&discover(&roots, &all)).unwrap();
        replace();
        touch();
        let second = inode_of_a(&discover(&roots, &all)).unwrap();
        assert_ne!(first, second, "a fresh directory is listed every time");
        std::thread::sleep(listed::SETTLE + std::time::Duration::from_millis(100));
        assert_eq!(inode_of_a(&discover(&roots, &all)), Some(second));
        replace();
        assert_eq!(
            inode_of_a(&discover(&roots, &all)),
            Some(second),
            "a still directory: the listing is reused"
        );
        ns_file(&roots.named_netns_dir().join("b"));
        let d = discover(&roots, &all);
        assert_ne!(inode_of_a(&d), Some(second), "a new name: listed anew");
        assert!(d.others.iter().any(|h| h.id.name == "b"));
    }

    /// A name with a terminal escape is shown escaped and entered by its real path.
    #[test]
    fn a_listed_name_is_shown_escaped_and_entered_by_its_real_path() {
        let (_d, roots) = tree();
        ns_file(&roots.proc.join("self/ns/net"));
        ns_file(&roots.pid_netns("1"));
        let raw = "pod\x1b[2Jx";
        ns_file(&roots.named_netns_dir().join(raw));
        let all = Namespaces {
            mode: NamespaceMode::All,
            names: vec![],
        };
        let d = discover(&roots, &all);
        let h = d.others.iter().find(|h| h.path.ends_with(raw)).unwrap();
        assert_eq!(h.id.name, "pod\\u{1b}[2Jx");
    }

    #[test]
    fn named_mode_reports_missing_names() {
        let (_d, roots) = tree();
        ns_file(&roots.proc.join("self/ns/net"));
        ns_file(&roots.named_netns_dir().join("a"));
        let d = discover(
            &roots,
            &Namespaces {
                mode: NamespaceMode::Named,
                names: vec!["a".into(), "gone".into()],
            },
        );
        assert_eq!(d.others.len(), 1);
        assert_eq!(d.others[0].id.name, "a");
        assert!(
            d.notes
                .iter()
                .any(|n| n.identity() == (NoteKind::Namespace, "gone")
                    && n.text.contains("not found")),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn initial_mode_sees_nothing_else() {
        let (_d, roots) = tree();
        ns_file(&roots.proc.join("self/ns/net"));
        ns_file(&roots.named_netns_dir().join("a"));
        let d = discover(
            &roots,
            &Namespaces {
                mode: NamespaceMode::Initial,
                names: vec![],
            },
        );
        assert!(d.others.is_empty());
    }

    #[test]
    fn entering_a_regular_file_fails_with_its_path() {
        let (_d, roots) = tree();
        let p = roots.named_netns_dir().join("fake");
        ns_file(&p);
        let inode = std::fs::metadata(&p).unwrap().ino();
        let handle = Handle {
            id: NetnsId {
                name: "fake".into(),
                inode,
            },
            path: p.clone(),
        };
        let err = read_each(std::slice::from_ref(&handle), |_| 42)
            .remove(0)
            .unwrap_err();
        assert!(
            err.message.contains(p.to_str().unwrap())
                && err
                    .message
                    .contains("setns failed: EINVAL (not a network namespace)"),
            "{err}"
        );
        assert!(!err.vanished, "it exists: reported, not dropped");
        let stale = Handle {
            id: NetnsId {
                name: "fake".into(),
                inode: inode + 1,
            },
            ..handle
        };
        let err = read_each(&[stale], |_| 42).remove(0).unwrap_err();
        assert!(
            err.message.contains("another namespace") && err.vanished,
            "{err}"
        );
        let gone = Handle {
            id: NetnsId {
                name: "gone".into(),
                inode,
            },
            path: roots.named_netns_dir().join("gone"),
        };
        let err = read_each(&[gone], |_| 42).remove(0).unwrap_err();
        assert!(err.message.contains("not found") && err.vanished, "{err}");
    }
}
