//! Reading the live conntrack state: the global table, each watched namespace, the host.
//!
//! Observation only reads. A key absent on this kernel or a file ctune may not read is a
//! note in the result, not a failure; only what no decision can do without (the global
//! max, memory size) fails the observation.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::sense::ctstats;
use crate::sense::hostfacts;
use crate::sense::kfile::{self, Cause, FileError};
use crate::sense::netns;
use crate::sense::nsdir;
use crate::sense::roots::Roots;
use ctune_core::config::Namespaces;
use ctune_core::controller::TimeoutReads;
use ctune_core::model::ConntrackStat;
use ctune_core::model::slab;
use ctune_core::model::stat;
use ctune_core::model::{Access, Global, Host, ModuleState, NamespaceObs, Observation};
use ctune_core::model::{NetnsId, Note, NoteKind};
use ctune_core::model::{auxv, meminfo, psi};
use ctune_core::tunables;

/// Why no observation could be made.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// No `nf_conntrack_max`: the module is not loaded (or no conntrack in this kernel).
    #[error(
        "conntrack is not active: {0}\n  nf_conntrack is not loaded; it loads when a firewall rule uses connection tracking (e.g. `ct state`), or with `modprobe nf_conntrack`"
    )]
    NotLoaded(FileError),
    /// A file every decision needs could not be read.
    #[error("{0}")]
    Unreadable(FileError),
}

/// Which timeout keys to read in each namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeoutKeys {
    /// Every timeout key the kernel has (the dry run and `status` show them all).
    All,
    /// Only these (the agent's step: the keys it may change), read without listing the
    /// directory; a key this kernel lacks is skipped.
    Only(BTreeSet<String>),
}

/// Which timeouts to read: ctune's own namespace's always, the others' where asked
/// ([`ctune_core::controller::TimeoutReads`] says why not everywhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Which keys.
    pub keys: TimeoutKeys,
    /// In which other namespaces (by inode); None: in every one.
    pub only_in: Option<BTreeSet<u64>>,
    /// Namespaces (by inode) of which the count is enough, read without entering them
    /// where a kept count file allows it ([`nsdir::kept_count`]).
    pub count_only: BTreeSet<u64>,
    /// Keep each visited namespace's count file for later steps and the probe (the
    /// agent). A one-shot command does not: keeping it opens the namespace's sysctl
    /// directory, a walk whose cost grows with the namespaces ([`nsdir`]).
    pub keep_counts: bool,
    /// Namespaces (by inode) whose timeouts were read before: any other's are read too,
    /// once, so what the agent reports of it (its metrics) is known from the start.
    /// None: no such rule (the one-shot commands).
    pub seen: Option<BTreeSet<u64>>,
}

impl Reads {
    /// Every timeout key in every namespace (`status`, `verify`, `restore`: they show or
    /// check them all).
    pub fn everywhere() -> Reads {
        Reads {
            keys: TimeoutKeys::All,
            only_in: None,
            count_only: BTreeSet::new(),
            keep_counts: false,
            seen: None,
        }
    }

    /// What a step of the controller asks for ([`ctune_core::controller::Action::Observe`]).
    pub fn of(asked: &TimeoutReads, count_only: &BTreeSet<u64>, keep_counts: bool) -> Reads {
        Reads {
            keys: TimeoutKeys::of(asked.keys.as_ref()),
            only_in: Some(asked.namespaces.clone()),
            count_only: count_only.clone(),
            keep_counts,
            seen: None,
        }
    }

    /// Whether the step asked for this namespace's timeouts because ctune remembers
    /// something of it (lowered timeouts, a level above normal).
    fn remembered(&self, inode: u64) -> bool {
        self.only_in.as_ref().is_some_and(|s| s.contains(&inode))
    }

    fn keys_in(&self, inode: u64) -> Option<&TimeoutKeys> {
        let new = self.seen.as_ref().is_some_and(|s| !s.contains(&inode));
        match &self.only_in {
            Some(inodes) if !inodes.contains(&inode) && !new => None,
            _ => Some(&self.keys),
        }
    }
}

impl TimeoutKeys {
    /// These keys, or all (None).
    pub fn of(keys: Option<&BTreeSet<String>>) -> TimeoutKeys {
        keys.map_or(TimeoutKeys::All, |k| TimeoutKeys::Only(k.clone()))
    }
}

/// Observes the kernel below `roots`, watching the namespaces `ns` asks for, with every
/// timeout key of every namespace.
pub fn observe(roots: &Roots, ns: &Namespaces) -> Result<Observation, ObserveError> {
    observe_with(roots, ns, &Reads::everywhere())
}

/// Like [`observe`], reading the timeouts `reads` asks for.
pub fn observe_with(
    roots: &Roots,
    ns: &Namespaces,
    reads: &Reads,
) -> Result<Observation, ObserveError> {
    let mut notes = Vec::new();
    let mut global = read_global(roots, &mut notes)?;
    let module = if roots.module_initstate().exists() {
        ModuleState::Module
    } else {
        ModuleState::BuiltIn
    };
    let host = read_host(roots, &mut notes)?;
    let (own_is_initial, namespaces) = read_namespaces(roots, ns, reads, &mut notes);
    // Outside the initial namespace the kernel makes nf_conntrack_max 0444 unless it has
    // a per-namespace max: a writable key there is that feature.
    global.per_netns_max = own_is_initial == Some(false) && global.write_access.writable;
    Ok(Observation {
        module,
        in_initial_netns: own_is_initial,
        global,
        host,
        namespaces,
        notes,
    })
}

/// The global table's limits. Only max is needed (without it conntrack is not loaded);
/// the others are notes when unreadable. `per_netns_max` is left false: it depends on
/// the namespace ctune runs in, known later.
fn read_global(roots: &Roots, notes: &mut Vec<Note>) -> Result<Global, ObserveError> {
    let max = kfile::read_u64(&roots.sysctl(tunables::MAX)).map_err(|e| match e.cause {
        Cause::Missing => ObserveError::NotLoaded(e),
        _ => ObserveError::Unreadable(e),
    })?;
    let mut optional = |path: &Path| match kfile::read_u64(path) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(file_note(path, e.to_string()));
            None
        }
    };
    Ok(Global {
        max,
        buckets: optional(&roots.sysctl(tunables::BUCKETS)),
        hashsize: optional(&roots.hashsize_param()),
        expect_max: optional(&roots.sysctl(tunables::EXPECT_MAX)),
        write_access: write_access(roots),
        per_netns_max: false,
    })
}

/// Whether ctune could write the global keys, and if not why, in words that say what
/// would let it: root in the initial namespace, or a /proc/sys mounted read-write.
fn write_access(roots: &Roots) -> Access {
    let max = roots.sysctl(tunables::MAX);
    match kfile::writable(&max) {
        Ok(()) => Access::WRITABLE,
        Err(e) => Access {
            writable: false,
            read_only: e.cause == Cause::ReadOnly,
            root_could: e.cause == Cause::Denied
                && std::fs::metadata(&max).is_ok_and(|m| m.permissions().mode() & 0o200 != 0),
            reason: Some(match e.cause {
                Cause::Denied => format!(
                    "{e}: global keys are writable only by root in the initial network namespace"
                ),
                Cause::ReadOnly => {
                    format!("{e}: /proc/sys is mounted read-only (a container without privileges?)")
                }
                _ => e.to_string(),
            }),
        },
    }
}

/// Memory, CPUs and what one entry costs. Only the memory size is needed (the ceiling
/// is a share of it); the rest are notes when unreadable.
fn read_host(roots: &Roots, notes: &mut Vec<Note>) -> Result<Host, ObserveError> {
    let memory = kfile::read_text(&roots.meminfo())
        .and_then(|t| meminfo::parse(&t).map_err(|d| FileError::malformed(&roots.meminfo(), d)))
        .map_err(ObserveError::Unreadable)?;
    let (entry_bytes, entry_bytes_source, table_entries) = slab_view(roots, notes);
    Ok(Host {
        cpus: cpu_count(roots),
        memory,
        entry_bytes,
        entry_bytes_source,
        page_size: page_size(roots, notes),
        table_entries,
        memory_stall: memory_stall(roots, notes),
        facts: Some(hostfacts::cached(roots)),
    })
}

/// ctune's own namespace first, then the others `ns` watches, each read from inside; a
/// namespace that could not be entered or read is in the list with its error, and a
/// note; one gone since it was listed is left out. Also whether ctune's own namespace is
/// the initial one (None: unknown).
fn read_namespaces(
    roots: &Roots,
    ns: &Namespaces,
    reads: &Reads,
    notes: &mut Vec<Note>,
) -> (Option<bool>, Vec<NamespaceObs>) {
    let mut discovery = netns::discover(roots, ns);
    if discovery.own_is_initial.is_none() {
        // PID 1 is hidden (a sandbox, hidepid): the kernel itself tells, because outside
        // the initial namespace it makes nf_conntrack_max read-only (mode 0444).
        discovery.own_is_initial = std::fs::metadata(roots.sysctl(tunables::MAX))
            .ok()
            .map(|m| m.permissions().mode() & 0o200 != 0);
    }
    notes.extend(discovery.notes.iter().cloned());
    let own_name = match discovery.own_is_initial {
        Some(false) => "self",
        _ => "init",
    };
    let mut own = read_namespace(roots, &roots.stat_file(), Some(&reads.keys), Sysctls::Own);
    own.id = NetnsId {
        name: own_name.into(),
        inode: discovery.own_inode.unwrap_or(0),
    };
    // Every namespace has the kernel's one set of keys: listing them again in each
    // (a readdir that fills the dcache, a fifth of a dry run's time) would find the same.
    let mut others = reads.clone();
    if reads.keys == TimeoutKeys::All && !own.timeouts.is_empty() {
        others.keys = TimeoutKeys::Only(own.timeouts.keys().cloned().collect());
    }
    let mut namespaces = vec![own];
    namespaces.extend(read_others(roots, &discovery, &others));
    for n in &namespaces {
        if let Some(err) = &n.error {
            notes.push(Note::new(
                NoteKind::Namespace,
                n.id.name.clone(),
                format!("namespace {}: {err}", n.id.name),
            ));
        }
    }
    (discovery.own_is_initial, namespaces)
}

/// The namespaces other than ctune's own, each read from inside. One that vanished
/// since it was listed (a pod deleted) is left out and counted in a debug line; one that
/// exists and cannot be entered is kept, with its error.
fn read_others(roots: &Roots, discovery: &netns::Discovery, reads: &Reads) -> Vec<NamespaceObs> {
    let count_path = roots.sysctl(tunables::COUNT);
    // Quiet namespaces whose count file is kept: read from here, without entering.
    let counted: BTreeMap<u64, u64> = discovery
        .others
        .iter()
        .filter(|h| reads.count_only.contains(&h.id.inode) && reads.keys_in(h.id.inode).is_none())
        .filter_map(|h| Some((h.id.inode, nsdir::kept_count(h.id.inode, &count_path)?)))
        .collect();
    let visit: Vec<netns::Handle> = discovery
        .others
        .iter()
        .filter(|h| !counted.contains_key(&h.id.inode))
        .cloned()
        .collect();
    let mut readings: BTreeMap<u64, Result<NamespaceObs, netns::Unentered>> = visit
        .iter()
        .map(|h| h.id.inode)
        .zip(netns::read_each(&visit, |h| visit_one(roots, reads, h)))
        .collect();
    readings.extend(
        counted
            .into_iter()
            .map(|(inode, count)| (inode, Ok(counted_only(count)))),
    );
    nsdir::retain(&discovery.others.iter().map(|h| h.id.inode).collect());
    let mut vanished = discovery.vanished;
    let mut namespaces = Vec::with_capacity(discovery.others.len());
    for handle in &discovery.others {
        let Some(reading) = readings.remove(&handle.id.inode) else {
            continue;
        };
        let mut obs = match reading {
            Ok(obs) => obs,
            // Its process exited, but another may still hold the namespace, and ctune
            // remembers something of it (lowered timeouts, a level): kept this step,
            // unread, so the memory stays; gone for good when no listing finds it.
            Err(e) if e.vanished && reads.remembered(handle.id.inode) => {
                let mut obs = counted_only(0);
                obs.count = None;
                obs
            }
            Err(e) if e.vanished => {
                vanished += 1;
                continue;
            }
            Err(e) => NamespaceObs {
                id: handle.id.clone(),
                count: None,
                stat: None,
                timeouts: BTreeMap::new(),
                timeouts_unread: false,
                counters_unread: false,
                error: Some(format!("cannot enter: {e}")),
                handle: None,
                composition: None,
            },
        };
        obs.id = handle.id.clone();
        obs.handle = Some(handle.path.clone());
        namespaces.push(obs);
    }
    if vanished > 0 {
        tracing::debug!("{vanished} namespace(s) vanished between listing and reading");
    }
    namespaces
}

/// Reads one namespace the reader thread has entered. Its count file is kept first when
/// asked (the agent): that also tells whether a namespace was here under this inode
/// number before, then died, so what the agent learnt of it (its timeouts) is read anew.
fn visit_one(roots: &Roots, reads: &Reads, h: &netns::Handle) -> NamespaceObs {
    let inode = h.id.inode;
    let mut reborn = false;
    if reads.keep_counts {
        let dir = roots.netfilter_sysctl_dir();
        let _ = nsdir::count_file(&dir, inode, tunables::COUNT);
        reborn = nsdir::reborn(inode);
    }
    let keys = reads.keys_in(inode).or(reborn.then_some(&reads.keys));
    read_namespace(
        roots,
        &roots.thread_stat_file(),
        keys,
        Sysctls::Entered(inode),
    )
}

/// A quiet namespace of which only the count was read.
fn counted_only(count: u64) -> NamespaceObs {
    NamespaceObs {
        id: NetnsId {
            name: String::new(),
            inode: 0,
        },
        count: Some(count),
        stat: None,
        timeouts: BTreeMap::new(),
        timeouts_unread: true,
        counters_unread: true,
        error: None,
        handle: None,
        composition: None,
    }
}

/// Reads the timeouts (`keys`) of each namespace in `targets` into `obs`, from inside
/// each ([`ctune_core::controller::Action::ReadTimeouts`]). A namespace gone meanwhile
/// keeps no timeouts and says so in its error.
pub fn read_timeouts_into(
    roots: &Roots,
    obs: &mut Observation,
    targets: &[(NetnsId, std::path::PathBuf)],
    keys: &TimeoutKeys,
) {
    let handles: Vec<netns::Handle> = targets
        .iter()
        .map(|(id, path)| netns::Handle {
            id: id.clone(),
            path: path.clone(),
        })
        .collect();
    // A quiet namespace counted without entering it has its counters read too: they
    // say whether a table that filled since the last step dropped on the way.
    let readings = netns::read_each(&handles, |h| {
        let mut problems = Vec::new();
        let dir = roots.netfilter_sysctl_dir();
        let at = Sysctls::Entered(h.id.inode);
        let timeouts = read_timeouts(&dir, keys, at, &mut problems);
        let stat = read_counters(roots, &roots.thread_stat_file(), &mut problems);
        (timeouts, stat, problems)
    });
    for (h, reading) in handles.iter().zip(readings) {
        let Some(n) = obs.namespaces.iter_mut().find(|n| n.id.inode == h.id.inode) else {
            continue;
        };
        n.timeouts_unread = false;
        match reading {
            Ok((timeouts, stat, problems)) => {
                n.timeouts = timeouts;
                if n.counters_unread && stat.is_some() {
                    n.stat = stat;
                    n.counters_unread = false;
                }
                if !problems.is_empty() {
                    n.error = Some(problems.join("; "));
                }
            }
            Err(e) => n.error = Some(format!("cannot enter: {e}")),
        }
    }
}

/// Where a namespace's sysctls are read from.
#[derive(Debug, Clone, Copy)]
enum Sysctls {
    /// ctune's own namespace: by path, through the thread's kept descriptors.
    Own,
    /// The namespace (by inode) the reader thread entered: from its kept
    /// `/proc/sys/net/netfilter` directory ([`nsdir`] says why).
    Entered(u64),
}

impl Sysctls {
    fn read_u64(self, dir: &Path, key: &str) -> Result<u64, FileError> {
        match self {
            Sysctls::Own => kfile::read_u64(&dir.join(key)),
            Sysctls::Entered(inode) => nsdir::read_u64(dir, inode, key),
        }
    }

    fn list(self, dir: &Path) -> Result<Vec<String>, FileError> {
        match self {
            Sysctls::Own => std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect()
                })
                .map_err(|e| FileError::io(dir, &e)),
            Sysctls::Entered(inode) => nsdir::list(dir, inode),
        }
    }
}

/// Reads the calling thread's namespace: count, statistics and the timeout keys `keys`
/// (None: none; the namespace's `timeouts_unread` says so). In a namespace the reader
/// entered the count comes with the statistics (their `entries`): no sysctl is opened
/// there unless its timeouts are read.
fn read_namespace(
    roots: &Roots,
    stat_path: &Path,
    keys: Option<&TimeoutKeys>,
    at: Sysctls,
) -> NamespaceObs {
    let mut problems = Vec::new();
    let dir = roots.netfilter_sysctl_dir();
    let stat = read_counters(roots, stat_path, &mut problems);
    let count = match (at, &stat) {
        (Sysctls::Entered(_), Some(stat)) => Some(stat.entries),
        _ => at
            .read_u64(&dir, tunables::COUNT)
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
    };
    let timeouts = keys.map_or_else(BTreeMap::new, |keys| {
        read_timeouts(&dir, keys, at, &mut problems)
    });
    NamespaceObs {
        id: NetnsId {
            name: String::new(),
            inode: 0,
        },
        count,
        stat,
        timeouts,
        timeouts_unread: keys.is_none(),
        counters_unread: false,
        error: (!problems.is_empty()).then(|| problems.join("; ")),
        handle: None,
        composition: None,
    }
}

/// The reading thread's namespace's counters: from the procfs file, else over ctnetlink
/// (docs/design.md, "Where the counters come from", says why in that order). A kernel
/// without the file (no CONFIG_NF_CONNTRACK_PROCFS) is not a problem when ctnetlink
/// answers: the source says where they came from. Any other failure is named, with
/// the fallback's outcome.
fn read_counters(
    roots: &Roots,
    stat_path: &Path,
    problems: &mut Vec<String>,
) -> Option<ConntrackStat> {
    let procfs = match kfile::read_text(stat_path)
        .and_then(|t| stat::parse(&t).map_err(|d| FileError::malformed(stat_path, d)))
    {
        Ok(stat) => return Some(stat),
        Err(e) => e,
    };
    match ctstats::read(roots.netlink()) {
        Ok(stat) => {
            if procfs.cause != Cause::Missing {
                problems.push(format!("{procfs}; counters read over ctnetlink instead"));
            }
            Some(stat)
        }
        Err(nl) => {
            problems.push(format!("{procfs}; {nl}"));
            None
        }
    }
}

/// The timeout keys of the reading thread's namespace, in seconds.
fn read_timeouts(
    dir: &Path,
    keys: &TimeoutKeys,
    at: Sysctls,
    problems: &mut Vec<String>,
) -> BTreeMap<String, u64> {
    let names: Vec<String> = match keys {
        TimeoutKeys::Only(wanted) => wanted.iter().cloned().collect(),
        TimeoutKeys::All => match at.list(dir) {
            Ok(names) => names
                .into_iter()
                .filter(|n| tunables::is_timeout_key(n))
                .collect(),
            Err(e) => {
                problems.push(e.to_string());
                Vec::new()
            }
        },
    };
    let mut timeouts = BTreeMap::new();
    for name in names {
        match at.read_u64(dir, &name) {
            Ok(v) => {
                timeouts.insert(name, v);
            }
            // Asked for by name, absent on this kernel: not a problem of this namespace.
            Err(e) if e.cause == Cause::Missing && matches!(keys, TimeoutKeys::Only(_)) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    timeouts
}

/// What the slab says: the bytes of one entry (and where that figure came from), and
/// the entries of every namespace together (root only). SLUB's sysfs files are read
/// first: /proc/slabinfo walks every cache (~0.5 ms here), too dear for every step.
fn slab_view(roots: &Roots, notes: &mut Vec<Note>) -> (u64, String, Option<u64>) {
    let from_sysfs = kfile::read_text(&roots.slab_objects_file())
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
    let size = match kfile::read_u64(&roots.slab_size_file()) {
        Ok(v) if v > 0 => Some(v),
        Ok(_) => None,
        Err(e) if e.cause == Cause::Missing => None,
        Err(e) => {
            notes.push(file_note(&roots.slab_size_file(), e.to_string()));
            None
        }
    };
    if let (Some(size), Some(entries)) = (size, from_sysfs) {
        return (size, "sysfs".into(), Some(entries));
    }
    let slabinfo = kfile::read_text(&roots.slabinfo()).and_then(|t| {
        slab::parse_slabinfo(&t).map_err(|d| FileError::malformed(&roots.slabinfo(), d))
    });
    let entries = from_sysfs.or(slabinfo.as_ref().ok().map(|l| l.active_objs));
    match (size, slabinfo) {
        (Some(size), _) => (size, "sysfs".into(), entries),
        (None, Ok(l)) => (l.objsize, "slabinfo".into(), entries),
        (None, Err(e)) => {
            let text = format!("{e}; assuming {} B per entry", slab::FALLBACK_ENTRY_BYTES);
            notes.push(file_note(&roots.slabinfo(), text));
            (slab::FALLBACK_ENTRY_BYTES, "fallback".into(), entries)
        }
    }
}

/// Memory stall (PSI `some avg10`), where the kernel has /proc/pressure/memory.
fn memory_stall(roots: &Roots, notes: &mut Vec<Note>) -> Option<f64> {
    let path = roots.proc.join("pressure/memory");
    match kfile::read_text(&path)
        .and_then(|t| psi::some_avg10(&t).map_err(|d| FileError::malformed(&path, d)))
    {
        Ok(v) => Some(v),
        // No PSI in this kernel (CONFIG_PSI off, or psi=0): the other signals remain.
        Err(e) if e.cause == Cause::Missing => None,
        Err(e) => {
            notes.push(file_note(&path, format!("{e}; memory stall not watched")));
            None
        }
    }
}

/// The kernel's page size, from ctune's own auxiliary vector (`AT_PAGESZ`). It does not
/// change while the process runs: read once per proc root, not at every step (a read
/// that failed is tried again, and noted, each time).
fn page_size(roots: &Roots, notes: &mut Vec<Note>) -> u64 {
    static READ: std::sync::Mutex<Option<(std::path::PathBuf, u64)>> = std::sync::Mutex::new(None);
    let path = roots.proc.join("self/auxv");
    let mut cached = READ.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, size)) = cached.as_ref().filter(|(p, _)| *p == path) {
        return *size;
    }
    match read_page_size(&path) {
        Ok(size) => {
            *cached = Some((path, size));
            size
        }
        Err(why) => {
            let text = format!("{why}; assuming {} B pages", tunables::DEFAULT_PAGE_SIZE);
            notes.push(file_note(&path, text));
            tunables::DEFAULT_PAGE_SIZE
        }
    }
}

fn read_page_size(path: &Path) -> Result<u64, String> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, &e).to_string())?;
    auxv::page_size(&bytes, std::mem::size_of::<usize>())
        .ok_or_else(|| format!("{}: no plausible AT_PAGESZ", path.display()))
}

/// Online CPUs from sysfs ("0-3,8"), else what the process may use.
fn cpu_count(roots: &Roots) -> u64 {
    let from_sysfs = kfile::read_text(&roots.sys.join("devices/system/cpu/online"))
        .ok()
        .and_then(|t| parse_cpu_list(&t));
    from_sysfs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1)
    })
}

/// Counts the CPUs in a kernel CPU list such as "0-3,8,10-11".
pub fn parse_cpu_list(text: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?),
            None => {
                let v = part.parse::<u64>().ok()?;
                (v, v)
            }
        };
        n += b.checked_sub(a)? + 1;
    }
    (n > 0).then_some(n)
}

/// A note that a kernel file ctune can do without could not be read.
fn file_note(path: &Path, text: String) -> Note {
    Note::new(NoteKind::KernelFile, path.display().to_string(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }
}
