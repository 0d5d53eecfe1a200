//! The observation model: what a decision is made from, as plain data.
//!
//! The agent fills it from the kernel (`ctune::sense::observe`), the simulator from its
//! model of the table; the decision reads only this. The parsers of the kernel's text
//! formats live beside the types they produce ([`stat`], [`meminfo`], [`slab`]), as
//! functions of text.

pub mod auxv;
pub mod meminfo;
pub mod psi;
pub mod slab;
pub mod stat;
pub mod udp;

use serde::Serialize;
use std::collections::BTreeMap;

pub use meminfo::MemInfo;
pub use stat::{ConntrackStat, StatSource};

/// A namespace's identity: the inode of its nsfs handle, and a name for people.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct NetnsId {
    /// `init` (the host's), `self` (ctune's own when that is not the host's), the name
    /// under /run/netns, or `pid N (comm)`.
    pub name: String,
    /// Inode of the namespace; the same namespace seen twice has the same inode.
    pub inode: u64,
}

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
    pub notes: Vec<Note>,
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
    /// ctune runs in a child namespace whose `nf_conntrack_max` is writable: a kernel
    /// with a per-namespace max (the smaller of the namespace's and the host's limits
    /// applies; proposed upstream, not in a released kernel as of 6.18). max is then this
    /// namespace's own; the hash stays the host's.
    pub per_netns_max: bool,
}

impl Global {
    /// The live value of a global key ctune sets (`nf_conntrack_max`,
    /// `nf_conntrack_buckets`), when readable.
    pub fn value(&self, key: &str) -> Option<u64> {
        match key {
            crate::tunables::MAX => Some(self.max),
            crate::tunables::BUCKETS => self.buckets,
            _ => None,
        }
    }
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
    /// /proc/sys is mounted read-only (EROFS: a container without privileges, systemd's
    /// ProtectKernelTunables): nothing below it can be written, a namespace's timeouts
    /// included, so nothing at all is planned; levels are still reported.
    pub read_only: bool,
}

impl Access {
    /// Root in the initial namespace, /proc/sys writable.
    pub const WRITABLE: Access = Access {
        writable: true,
        reason: None,
        root_could: true,
        read_only: false,
    };
}

/// The host's resources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    /// Online CPUs.
    pub cpus: u64,
    /// Memory totals.
    pub memory: MemInfo,
    /// Bytes one entry costs in the slab, and where that figure came from.
    pub entry_bytes: u64,
    /// `sysfs`, `slabinfo` or `fallback`.
    pub entry_bytes_source: String,
    /// The kernel's page size in bytes: the hash table is allocated in whole pages, so
    /// bucket counts round to page size / 8 ([`crate::tunables::round_buckets`]).
    pub page_size: u64,
    /// Conntrack entries of every namespace together (the slab's objects in use), when
    /// readable (root): the table's real size, also counting namespaces ctune cannot
    /// enter.
    pub table_entries: Option<u64>,
    /// Memory stall, percent (PSI `some avg10`), where the kernel reports it.
    pub memory_stall: Option<f64>,
    /// What the host shows of its role (`role: auto`); None: not read.
    pub facts: Option<crate::role::HostFacts>,
}

/// One namespace's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespaceObs {
    /// Who it is; in JSON its `name` and `inode` are this object's own fields, as in
    /// every namespace object ctune prints.
    #[serde(flatten)]
    pub id: NetnsId,
    /// Entries now (None: could not be read).
    pub count: Option<u64>,
    /// Summed per-CPU counters.
    pub stat: Option<ConntrackStat>,
    /// Every timeout key this kernel has in this namespace, in seconds (or the keys the
    /// step asked for); empty when `timeouts_unread`.
    pub timeouts: BTreeMap<String, u64>,
    /// The timeouts were not read here: nothing in this namespace needed them (its level
    /// is normal and ctune lowered none), and reading them costs a path walk that grows
    /// with the number of namespaces on the host ([`crate::controller::TimeoutReads`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timeouts_unread: bool,
    /// The counters were not read here (`stat` is None): the namespace is quiet and they
    /// were read recently ([`crate::controller::quiet`]); its count was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counters_unread: bool,
    /// Why the namespace could not be read, if it could not.
    pub error: Option<String>,
    /// The handle that enters it (/run/netns/NAME, /proc/PID/ns/net); None for ctune's own.
    pub handle: Option<std::path::PathBuf>,
    /// What holds its entries, from the last composition sample (the agent takes one
    /// while the namespace is elevated or critical, `agent.composition_interval` apart);
    /// None: no sample, and the tiers alone decide which timeouts are lowered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composition: Option<Governed>,
}

/// The entries each timeout key governs in one namespace, from a dump of its table
/// ([`crate::composition::governing_key`]): what the decision weighs timeouts by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Governed {
    /// Entries read.
    pub entries: u64,
    /// Entries per governing sysctl (full name); entries no sysctl governs are left out.
    pub by_key: BTreeMap<String, u64>,
    /// The dump stopped at a bound: the entries read are the first the kernel sent, a
    /// random sample of the table (it dumps in hash order), and the shares estimates.
    pub partial: bool,
    /// When it was taken, on ctune's clock (time since boot).
    pub taken_at: std::time::Duration,
    /// Seconds since it was taken, when the decision ran.
    #[serde(default)]
    pub age_secs: u64,
}

/// The fewest entries a sample cut short by a bound ([`Governed::partial`]) must hold to
/// weigh timeouts: in 4096, a key that governs `timeouts.min_share` (1 %) shows 41 entries,
/// within 0.3 % (95 %), and one that governs none shows none; a dump of a namespace that is a
/// sliver of a huge host table may read fewer before its time is up, and would otherwise
/// say that no key governs anything (and every cut is given back).
pub const MIN_PARTIAL_SAMPLE: u64 = 4096;

impl Governed {
    /// Whether the sample says enough to weigh timeouts by: some entries, and a whole
    /// table or at least [`MIN_PARTIAL_SAMPLE`] of it.
    pub fn informative(&self) -> bool {
        self.entries > 0 && (!self.partial || self.entries >= MIN_PARTIAL_SAMPLE)
    }

    /// The share of the entries read that `key` governs (0 when it governs none; at
    /// most 1, whatever a hand-edited state file claims).
    pub fn share(&self, key: &str) -> f64 {
        if self.entries == 0 {
            return 0.0;
        }
        let n = self.by_key.get(key).copied().unwrap_or(0).min(self.entries);
        n as f64 / self.entries as f64
    }
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

/// Something ctune could not read or do, for the operator. Typed so that code acts on
/// what it is about, never on its wording: the agent's log says a note once for as long
/// as its [`Note::identity`] stays, though the text (a count, an errno) changes each
/// step. In JSON, the sentence alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// What kind of trouble.
    pub kind: NoteKind,
    /// What it is about: the file, directory or namespace name ("" when the kind says it).
    pub about: String,
    /// What it says.
    pub text: String,
}

/// What a [`Note`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NoteKind {
    /// A kernel file ctune can do without could not be read (`about`: its path).
    KernelFile,
    /// A directory could not be listed (`about`: its path).
    Listing,
    /// ctune's own namespace could not be identified.
    OwnNamespace,
    /// A namespace could not be entered or read (`about`: its name).
    Namespace,
    /// Other processes' namespaces could not be inspected (permission).
    HiddenNamespaces,
    /// A namespace's local addresses could not be read, so `top` gives no notrack advice
    /// for it (`about`: its name).
    LocalAddresses,
    /// A namespace's composition sample failed or came back short (`about`: its name).
    Sample,
    /// The installed config could not be used (`about`: its path).
    Config,
    /// ctune's own state or history could not be read or kept (`about`: which).
    State,
    /// A persisted file could not be read, or will be refused or overridden (`about`:
    /// the note itself, as files are many and their notes rare).
    Persisted,
}

impl Note {
    /// A note of `kind` about `about`, saying `text`.
    pub fn new(kind: NoteKind, about: impl Into<String>, text: impl Into<String>) -> Note {
        Note {
            kind,
            about: about.into(),
            text: text.into(),
        }
    }

    /// A note on a persisted file: identified by its text.
    pub fn persisted(text: &str) -> Note {
        Note::new(NoteKind::Persisted, text, text)
    }

    /// What makes two notes the same note, whatever their texts.
    pub fn identity(&self) -> (NoteKind, &str) {
        (self.kind, &self.about)
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Note {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}
