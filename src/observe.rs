//! Reading the live conntrack state: the global table, each watched namespace, the host.
//!
//! Observation only reads. A key absent on this kernel or a file ctune may not read is a
//! note in the result, not a failure; only what no decision can do without (the global
//! max, memory size) fails the observation.

use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::Namespaces;
use crate::kfile::{self, Cause, FileError};
use crate::meminfo::{self, MemInfo};
use crate::netns::{self, NetnsId};
use crate::roots::Roots;
use crate::slab;
use crate::stat::{self, ConntrackStat};
use crate::tunables;

/// Everything a decision is made from, as read at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observation {
    /// How conntrack is present in this kernel.
    pub module: ModuleState,
    /// Whether ctune runs in the host's network namespace (None: PID 1 not readable).
    pub in_initial_netns: Option<bool>,
    /// The machine-wide values.
    pub global: Global,
    /// Memory, CPUs, entry size.
    pub host: Host,
    /// ctune's own namespace first, then the others found.
    pub namespaces: Vec<NamespaceObs>,
    /// What could not be read, and why, for the operator.
    pub notes: Vec<String>,
}

/// Whether nf_conntrack is built in, a loaded module, or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleState {
    /// Part of the kernel image: /etc/modprobe.d does not apply; the hash size at boot
    /// comes from the kernel command line or a runtime write.
    BuiltIn,
    /// A loadable module, loaded now: `options nf_conntrack hashsize=` applies at load.
    Module,
}

/// The global table limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Global {
    /// `nf_conntrack_max`.
    pub max: u64,
    /// `nf_conntrack_buckets` (None: not readable here).
    pub buckets: Option<u64>,
    /// The `hashsize` module parameter (root-only).
    pub hashsize: Option<u64>,
    /// `nf_conntrack_expect_max`.
    pub expect_max: Option<u64>,
    /// Whether ctune could write the global keys, and if not, why.
    pub write_access: Access,
}

/// Writability of the global keys, checked with access(2) as the kernel decides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    /// True when a write would be permitted.
    pub writable: bool,
    /// Why not: the file and the cause (EACCES in a child namespace, EROFS in a
    /// container with a read-only /proc/sys).
    pub reason: Option<String>,
    /// Whether root here could write them: false in a child namespace (the kernel makes
    /// them 0444) or on a read-only /proc/sys. A dry run as non-root still plans what a
    /// run as root would do; nothing is planned for keys no one here can write.
    pub root_could: bool,
}

/// The host's resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: u64,
    /// Memory totals.
    pub memory: MemInfo,
    /// Bytes one entry costs in the slab, and where that figure came from.
    pub entry_bytes: u64,
    /// `sysfs`, `slabinfo` or `fallback`.
    pub entry_bytes_source: String,
}

/// One namespace's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceObs {
    /// Who it is.
    pub id: NetnsId,
    /// Entries now (None: could not be read).
    pub count: Option<u64>,
    /// Summed per-CPU counters.
    pub stat: Option<ConntrackStat>,
    /// Every timeout key this kernel has in this namespace, in seconds.
    pub timeouts: BTreeMap<String, u64>,
    /// Why the namespace could not be read, if it could not.
    pub error: Option<String>,
    /// The handle that enters it (/run/netns/NAME, /proc/PID/ns/net); None for ctune's own.
    pub handle: Option<std::path::PathBuf>,
}

impl Observation {
    /// The largest count among the namespaces that could be read: the pressure that
    /// drives max (each namespace can fill to the global max on its own).
    pub fn peak_count(&self) -> u64 {
        self.namespaces
            .iter()
            .filter_map(|n| n.count)
            .max()
            .unwrap_or(0)
    }
}

impl NamespaceObs {
    /// The counter used as a pressure signal, if present.
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.stat.as_ref().and_then(|s| s.get(name))
    }
}

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
    Only(std::collections::BTreeSet<String>),
}

/// Observes the kernel below `roots`, watching the namespaces `ns` asks for.
pub fn observe(roots: &Roots, ns: &Namespaces) -> Result<Observation, ObserveError> {
    observe_keys(roots, ns, &TimeoutKeys::All)
}

/// Like [`observe`], reading only the timeout keys `keys` names.
pub fn observe_keys(
    roots: &Roots,
    ns: &Namespaces,
    keys: &TimeoutKeys,
) -> Result<Observation, ObserveError> {
    let mut notes = Vec::new();
    let max = kfile::read_u64(&roots.sysctl(tunables::MAX)).map_err(|e| match e.cause {
        Cause::Missing => ObserveError::NotLoaded(e),
        _ => ObserveError::Unreadable(e),
    })?;
    let module = if roots.module_initstate().exists() {
        ModuleState::Module
    } else {
        ModuleState::BuiltIn
    };
    let mut optional = |path: &Path| match kfile::read_u64(path) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(e.to_string());
            None
        }
    };
    let buckets = optional(&roots.sysctl(tunables::BUCKETS));
    let hashsize = optional(&roots.hashsize_param());
    let expect_max = optional(&roots.sysctl(tunables::EXPECT_MAX));
    let write_access = match kfile::writable(&roots.sysctl(tunables::MAX)) {
        Ok(()) => Access {
            writable: true,
            reason: None,
            root_could: true,
        },
        Err(e) => Access {
            writable: false,
            root_could: e.cause == Cause::Denied
                && std::fs::metadata(roots.sysctl(tunables::MAX))
                    .is_ok_and(|m| m.permissions().mode() & 0o200 != 0),
            reason: Some(match e.cause {
                Cause::Denied => format!(
                    "{e}: global keys are writable only by root in the initial network namespace"
                ),
                Cause::ReadOnly => format!("{e}: /proc/sys is mounted read-only (a container?)"),
                _ => e.to_string(),
            }),
        },
    };
    let memory = kfile::read_text(&roots.meminfo())
        .and_then(|t| meminfo::parse(&t).map_err(|d| FileError::malformed(&roots.meminfo(), d)))
        .map_err(ObserveError::Unreadable)?;
    let (entry_bytes, entry_bytes_source) = entry_size(roots, &mut notes);
    let host = Host {
        cpus: cpu_count(roots),
        memory,
        entry_bytes,
        entry_bytes_source,
    };

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
    let mut own = read_namespace(roots, &roots.stat_file(), keys);
    own.id = NetnsId {
        name: own_name.into(),
        inode: discovery.own_inode.unwrap_or(0),
    };
    let mut namespaces = vec![own];
    let readings = netns::read_each(&discovery.others, || {
        read_namespace(roots, &roots.thread_stat_file(), keys)
    });
    for (handle, reading) in discovery.others.iter().zip(readings) {
        let mut obs = reading.unwrap_or_else(|e| NamespaceObs {
            id: handle.id.clone(),
            count: None,
            stat: None,
            timeouts: BTreeMap::new(),
            error: Some(format!("cannot enter: {e}")),
            handle: None,
        });
        obs.id = handle.id.clone();
        obs.handle = Some(handle.path.clone());
        namespaces.push(obs);
    }
    for n in &namespaces {
        if let Some(err) = &n.error {
            notes.push(format!("namespace {}: {err}", n.id.name));
        }
    }
    Ok(Observation {
        module,
        in_initial_netns: discovery.own_is_initial,
        global: Global {
            max,
            buckets,
            hashsize,
            expect_max,
            write_access,
        },
        host,
        namespaces,
        notes,
    })
}

/// Reads the calling thread's namespace: count, statistics and every timeout key.
fn read_namespace(roots: &Roots, stat_path: &Path, keys: &TimeoutKeys) -> NamespaceObs {
    let mut problems = Vec::new();
    let count = kfile::read_u64(&roots.sysctl(tunables::COUNT))
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let stat = kfile::read_text(stat_path)
        .and_then(|t| stat::parse(&t).map_err(|d| FileError::malformed(stat_path, d)))
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let timeouts = read_timeouts(&roots.netfilter_sysctl_dir(), keys, &mut problems);
    NamespaceObs {
        id: NetnsId {
            name: String::new(),
            inode: 0,
        },
        count,
        stat,
        timeouts,
        error: (!problems.is_empty()).then(|| problems.join("; ")),
        handle: None,
    }
}

/// The timeout keys of the reading thread's namespace, in seconds.
fn read_timeouts(
    dir: &Path,
    keys: &TimeoutKeys,
    problems: &mut Vec<String>,
) -> BTreeMap<String, u64> {
    let names: Vec<String> = match keys {
        TimeoutKeys::Only(wanted) => wanted.iter().cloned().collect(),
        TimeoutKeys::All => match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| tunables::is_timeout_key(n))
                .collect(),
            Err(e) => {
                problems.push(FileError::io(dir, &e).to_string());
                Vec::new()
            }
        },
    };
    let mut timeouts = BTreeMap::new();
    for name in names {
        match kfile::read_u64(&dir.join(&name)) {
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

fn entry_size(roots: &Roots, notes: &mut Vec<String>) -> (u64, String) {
    match kfile::read_u64(&roots.slab_size_file()) {
        Ok(v) if v > 0 => return (v, "sysfs".into()),
        Ok(_) => {}
        Err(e) if e.cause == Cause::Missing => {}
        Err(e) => notes.push(e.to_string()),
    }
    match kfile::read_text(&roots.slabinfo()).and_then(|t| {
        slab::parse_slabinfo(&t).map_err(|d| FileError::malformed(&roots.slabinfo(), d))
    }) {
        Ok(v) => (v, "slabinfo".into()),
        Err(e) => {
            notes.push(format!(
                "{e}; assuming {} B per entry",
                slab::FALLBACK_ENTRY_BYTES
            ));
            (slab::FALLBACK_ENTRY_BYTES, "fallback".into())
        }
    }
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
