//! Where ctune finds the kernel's files and the host's configuration.
//!
//! Every read and write goes through these roots so the same code path serves production
//! (`/proc`, `/sys`, `/etc`, `/run`, `/var/lib/ctune`) and tests (a temporary tree).

use std::path::{Path, PathBuf};

/// The base directories of all I/O; `Roots::default()` is the real system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// procfs mount: sysctls under `sys/net/netfilter`, stats under `net/stat`.
    pub proc: PathBuf,
    /// sysfs mount: module parameters and slab caches.
    pub sys: PathBuf,
    /// configuration root: `sysctl.d`, `modprobe.d`, `modules-load.d`, `ctune/`.
    pub etc: PathBuf,
    /// runtime root: named network namespaces live in `netns/`.
    pub run: PathBuf,
    /// ctune's own state (baselines, last resize), kept across restarts.
    pub state: PathBuf,
    /// ctnetlink replies as a kernel sends them, read instead of asking one (a fixture
    /// tree's `netlink/`: captured from a kernel, or written from its sources); None: the
    /// kernel's, when `proc` is the real /proc.
    pub netlink: Option<PathBuf>,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            etc: PathBuf::from("/etc"),
            run: PathBuf::from("/run"),
            state: PathBuf::from("/var/lib/ctune"),
            netlink: None,
        }
    }
}

impl Roots {
    /// Every root under one directory (`proc`, `sys`, `etc`, `run`, `state`, and the
    /// recorded ctnetlink replies in `netlink`): a fixture tree.
    pub fn all_under(dir: &std::path::Path) -> Roots {
        Roots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            etc: dir.join("etc"),
            run: dir.join("run"),
            state: dir.join("state"),
            netlink: Some(dir.join("netlink")),
        }
    }

    /// Whether procfs is the real one. A ctnetlink dump reads the kernel of the calling
    /// thread's namespace whatever the roots say: only then do the two describe the same
    /// tables (a fixture tree has no netlink).
    pub fn proc_is_live(&self) -> bool {
        self.proc == std::path::Path::new("/proc")
    }

    /// Where ctnetlink's answers come from: recorded replies when given, else the
    /// kernel when procfs is the real one (both then describe the same tables), else
    /// none.
    pub fn netlink(&self) -> crate::sense::ctstats::Replies<'_> {
        use crate::sense::ctstats::Replies;
        match &self.netlink {
            Some(dir) => Replies::Recorded(dir),
            None if self.proc_is_live() => Replies::Kernel,
            None => Replies::Unavailable,
        }
    }

    /// Directory holding the `nf_conntrack_*` sysctls of the reading thread's namespace.
    pub fn netfilter_sysctl_dir(&self) -> PathBuf {
        self.proc.join("sys/net/netfilter")
    }

    /// One `nf_conntrack_*` sysctl file.
    pub fn sysctl(&self, key: &str) -> PathBuf {
        self.netfilter_sysctl_dir().join(key)
    }

    /// Per-CPU statistics of the namespace of the process's main thread.
    pub fn stat_file(&self) -> PathBuf {
        self.proc.join("net/stat/nf_conntrack")
    }

    /// Per-CPU statistics of the calling thread's namespace. `/proc/net` follows the
    /// thread-group leader, so a helper thread that entered another namespace with setns
    /// must read through `thread-self` to see its own namespace.
    pub fn thread_stat_file(&self) -> PathBuf {
        self.proc.join("thread-self/net/stat/nf_conntrack")
    }

    /// The `hashsize` module parameter (same resize as `nf_conntrack_buckets`).
    pub fn hashsize_param(&self) -> PathBuf {
        self.sys.join("module/nf_conntrack/parameters/hashsize")
    }

    /// Present only when nf_conntrack is a loadable module.
    pub fn module_initstate(&self) -> PathBuf {
        self.sys.join("module/nf_conntrack/initstate")
    }

    /// The sysfs directory of the module or built-in subsystem.
    pub fn module_dir(&self) -> PathBuf {
        self.sys.join("module/nf_conntrack")
    }

    /// SLUB's view of the conntrack slab cache (root-only on most systems).
    pub fn slab_size_file(&self) -> PathBuf {
        self.sys.join("kernel/slab/nf_conntrack/slab_size")
    }

    /// SLUB's count of `nf_conntrack` objects in use ("112 N0=112"), root only.
    pub fn slab_objects_file(&self) -> PathBuf {
        self.sys.join("kernel/slab/nf_conntrack/objects")
    }

    /// `/proc/slabinfo`, the fallback for the slab's object size.
    pub fn slabinfo(&self) -> PathBuf {
        self.proc.join("slabinfo")
    }

    /// Memory totals.
    pub fn meminfo(&self) -> PathBuf {
        self.proc.join("meminfo")
    }

    /// Named network namespaces created by `ip netns add`.
    pub fn named_netns_dir(&self) -> PathBuf {
        self.run.join("netns")
    }

    /// The network-namespace handle of a process.
    pub fn pid_netns(&self, pid: &str) -> PathBuf {
        self.proc.join(pid).join("ns/net")
    }

    /// Default config file location.
    pub fn config_file(&self) -> PathBuf {
        self.etc.join("ctune/ctune.yaml")
    }

    /// Joins an absolute system path (like `/etc/sysctl.d/x`) below a root.
    pub fn under(root: &Path, rel: &str) -> PathBuf {
        root.join(rel.trim_start_matches('/'))
    }
}
