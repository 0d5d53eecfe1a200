//! `ctune restore` as a plan: from what ctune recorded (the operator's global values,
//! the timeouts it lowered), the values live now and the files found at ctune's paths,
//! which values go back, which stay (someone else's now), which are refused and why, and
//! which files go once every global value is back. Plain data in and out: the agent reads
//! the state, the kernel and /etc, calls [`plan`], performs the writes and removals, and
//! hands what took effect to [`settle`].
//!
//! Restore still refuses to lower max below what the busiest namespace holds plus
//! headroom (new flows would be dropped) unless forced, and takes no recorded value that
//! fails [`bounds`] (a tampered or corrupt state must not set max to 1).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::bounds::{self, Bounds};
use crate::model::{NetnsId, Observation};
use crate::plan::{Change, Target};
use crate::policy::PolicyState;
use crate::tunables;

/// The reason every write of a restore carries.
pub const REASON: &str = "restoring the operator's value from before ctune";

/// The global keys restore puts back, in the order they are written (max before the
/// hash, as every resize).
pub const GLOBAL_KEYS: [&str; 2] = [tunables::MAX, tunables::BUCKETS];

/// Everything a restore is decided from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Input {
    /// The operator's global values from before ctune first changed them
    /// (`state.original`).
    pub original: BTreeMap<String, u64>,
    /// The policy's memory: what ctune last set (`applied`), the keys someone else holds
    /// (`operator_held`), and the timeouts it lowered per namespace.
    pub policy: PolicyState,
    /// The values in ctune's own persisted sysctl file (empty when there is none, or it
    /// lacks ctune's header): ctune's too, even when the state save that should have
    /// recorded them failed.
    pub persisted: BTreeMap<String, u64>,
    /// The values live now.
    pub live: Live,
    /// The files at ctune's paths: the layout in force first, then the others.
    pub files: Vec<FoundFile>,
    /// `ceiling.min_max`: a recorded max may be below it, down to
    /// [`bounds::RESTORE_MIN_MAX`].
    pub min_max: u64,
    /// `max.headroom`: max is not lowered below the busiest count times 1 + this.
    pub headroom: f64,
    /// `--force`: lower max even under that load.
    pub force: bool,
}

/// The live values a restore compares with what ctune recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    /// The global keys that could be read ([`GLOBAL_KEYS`]).
    pub globals: BTreeMap<String, u64>,
    /// The largest count of any namespace read.
    pub peak: u64,
    /// The kernel's page size (the hash's bounds).
    pub page_size: u64,
    /// Every watched namespace with its timeouts, ctune's own first.
    pub namespaces: Vec<LiveNamespace>,
}

/// One namespace's live timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveNamespace {
    /// Which namespace.
    pub id: NetnsId,
    /// Every timeout key it has, in seconds.
    pub timeouts: BTreeMap<String, u64>,
}

impl Live {
    /// The values of an observation that a restore needs.
    pub fn of(obs: &Observation) -> Live {
        Live {
            globals: GLOBAL_KEYS
                .iter()
                .filter_map(|k| obs.global.value(k).map(|v| (k.to_string(), v)))
                .collect(),
            peak: obs.peak_count(),
            page_size: obs.host.page_size,
            namespaces: obs
                .namespaces
                .iter()
                .map(|n| LiveNamespace {
                    id: n.id.clone(),
                    timeouts: n.timeouts.clone(),
                })
                .collect(),
        }
    }
}

/// A file at one of ctune's paths, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// Where.
    pub path: PathBuf,
    /// A file of the layout in force (`persist.layout`), not one ctune may have written
    /// under another.
    pub in_layout: bool,
    /// What is there.
    pub found: Found,
}

/// What is at one of ctune's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing.
    Missing,
    /// A file carrying ctune's header.
    Ours,
    /// A file without it: someone else wrote it.
    Foreign,
    /// Something that could not be read, with the error.
    Unreadable(String),
}

/// Why a live global value is ctune's to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ours {
    /// It is what ctune recorded setting (`applied`).
    Applied,
    /// It is the value in ctune's persisted file (the state save after it failed).
    Persisted,
}

/// A global key going back to the operator's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalWrite {
    /// `nf_conntrack_max` or `nf_conntrack_buckets`.
    pub key: String,
    /// The value live now, ctune's.
    pub old: u64,
    /// The operator's value from before ctune.
    pub new: u64,
    /// Why the live value is ctune's to undo.
    pub ours: Ours,
}

/// A timeout ctune lowered going back to the operator's value, in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeoutWrite {
    /// The namespace.
    pub netns: NetnsId,
    /// The timeout key.
    pub key: String,
    /// The value live now: the one ctune set.
    pub old: u64,
    /// The operator's value (the baseline).
    pub new: u64,
}

/// A value left as it is: someone else changed it after ctune set it, so it is theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// A global key (changed since, or held by the operator); ctune's record of the
    /// original is dropped.
    Global {
        /// The key.
        key: String,
        /// Its live value.
        live: u64,
        /// The operator's value ctune had recorded.
        original: u64,
    },
    /// A timeout ctune lowered that someone else has changed since.
    Timeout {
        /// The namespace.
        netns: NetnsId,
        /// The key.
        key: String,
        /// Its live value.
        live: u64,
        /// What ctune had set.
        set: u64,
    },
}

/// A value not put back, or a file not removed: the restore is not complete.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Lowering max to the operator's value would leave less than the headroom over
    /// what the busiest namespace holds (`--force` overrides).
    UnderLoad {
        /// max now.
        live: u64,
        /// The operator's max.
        original: u64,
        /// The busiest namespace's count.
        peak: u64,
        /// The headroom it would need.
        headroom: f64,
    },
    /// A recorded value fails the bounds: a tampered or corrupt state.
    OutOfBounds {
        /// Global, or the namespace of a timeout.
        target: Target,
        /// The key.
        key: String,
        /// The recorded value.
        value: u64,
        /// The bound it fails, in words ([`bounds::check`]).
        why: String,
    },
    /// The hash is not shrunk while max stays up: under the load that keeps max up, every
    /// chain would lengthen and inserts would stall during the resize.
    HashWhileMaxUp {
        /// The hash now.
        live: u64,
        /// The operator's hash.
        original: u64,
    },
    /// A file of the layout in force lacks ctune's header: someone else wrote it.
    NotOurs {
        /// The file.
        path: PathBuf,
    },
    /// A file of the layout in force could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why, naming the file.
        error: String,
    },
}

/// What to do with ctune's files once every global value is back (see [`Settled`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilePlan {
    /// ctune's files to remove, in the order found.
    pub remove: Vec<PathBuf>,
    /// Files of the layout in force that are not removed.
    pub refused: Vec<Refusal>,
}

/// What a restore does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestorePlan {
    /// Global keys to put back, max first.
    pub globals: Vec<GlobalWrite>,
    /// Timeouts to put back, namespace by namespace.
    pub timeouts: Vec<TimeoutWrite>,
    /// Values left as they are: globals first, then timeouts.
    pub kept: Vec<Kept>,
    /// Values not put back: globals first, then timeouts.
    pub refused: Vec<Refusal>,
    /// The files, for when every global value is back.
    pub files: FilePlan,
}

impl RestorePlan {
    /// The writes, in order: the globals, then the timeouts.
    pub fn changes(&self) -> Vec<Change> {
        let globals = self.globals.iter().map(|w| Change {
            key: w.key.clone(),
            target: Target::Global,
            old: w.old,
            new: w.new,
            reason: REASON.into(),
        });
        let timeouts = self.timeouts.iter().map(|w| Change {
            key: w.key.clone(),
            target: Target::Namespace {
                netns: w.netns.clone(),
            },
            old: w.old,
            new: w.new,
            reason: REASON.into(),
        });
        globals.chain(timeouts).collect()
    }
}

/// Decides a restore.
pub fn plan(input: &Input) -> RestorePlan {
    // What a recorded value must be to be put back: the operator's value may be above
    // the ceiling, but never outside the kernel's bounds, nor below the smallest max a
    // kernel picks by itself.
    let limits = Bounds {
        min_max: input.min_max.min(bounds::RESTORE_MIN_MAX),
        ceiling: None,
        table_needs: None,
        page_size: input.live.page_size,
    };
    let mut plan = RestorePlan::default();
    let mut max_refused = false;
    for key in GLOBAL_KEYS {
        match global(input, key, max_refused, &limits) {
            None => {}
            Some(Step::Write(w)) => plan.globals.push(w),
            Some(Step::Keep(k)) => plan.kept.push(k),
            Some(Step::Refuse(r)) => {
                max_refused |= key == tunables::MAX;
                plan.refused.push(r);
            }
        }
    }
    timeouts(input, &limits, &mut plan);
    plan.files = files(&input.files);
    plan
}

/// What becomes of one global key.
enum Step {
    Write(GlobalWrite),
    Keep(Kept),
    Refuse(Refusal),
}

/// One global key: nothing when ctune recorded no original or the live value is unknown
/// or already the original.
fn global(input: &Input, key: &str, max_refused: bool, limits: &Bounds) -> Option<Step> {
    let original = *input.original.get(key)?;
    let live = input
        .live
        .globals
        .get(key)
        .copied()
        .filter(|l| *l != original)?;
    // A value someone else set after ctune is theirs now: not ctune's to undo. The value
    // in ctune's own persisted file is ctune's too, even when the state save that should
    // have recorded it failed.
    let ours = if input.policy.applied.get(key) == Some(&live) {
        Some(Ours::Applied)
    } else if input.persisted.get(key) == Some(&live) {
        Some(Ours::Persisted)
    } else {
        None
    };
    let Some(ours) = ours.filter(|_| !input.policy.operator_held.contains(key)) else {
        let key = key.to_string();
        return Some(Step::Keep(Kept::Global {
            key,
            live,
            original,
        }));
    };
    let safe = (input.live.peak as f64 * (1.0 + input.headroom)).ceil() as u64;
    if key == tunables::MAX && original < safe && !input.force {
        return Some(Step::Refuse(Refusal::UnderLoad {
            live,
            original,
            peak: input.live.peak,
            headroom: input.headroom,
        }));
    }
    if let Err(why) = bounds::check(key, original, limits) {
        return Some(Step::Refuse(Refusal::OutOfBounds {
            target: Target::Global,
            key: key.to_string(),
            value: original,
            why,
        }));
    }
    if key == tunables::BUCKETS && max_refused {
        return Some(Step::Refuse(Refusal::HashWhileMaxUp { live, original }));
    }
    let key = key.to_string();
    Some(Step::Write(GlobalWrite {
        key,
        old: live,
        new: original,
        ours,
    }))
}

/// The timeouts ctune lowered in each watched namespace: back to the baseline where the
/// live value is still the one ctune set; a namespace or key no longer there is skipped.
fn timeouts(input: &Input, limits: &Bounds, plan: &mut RestorePlan) {
    for n in &input.live.namespaces {
        let Some(ns_state) = input.policy.namespaces.get(&n.id.inode) else {
            continue;
        };
        for (key, lowered) in &ns_state.lowered {
            if let Err(why) = bounds::check(key, lowered.baseline, limits) {
                plan.refused.push(Refusal::OutOfBounds {
                    target: Target::Namespace {
                        netns: n.id.clone(),
                    },
                    key: key.clone(),
                    value: lowered.baseline,
                    why,
                });
                continue;
            }
            match n.timeouts.get(key) {
                Some(&live) if live == lowered.set => plan.timeouts.push(TimeoutWrite {
                    netns: n.id.clone(),
                    key: key.clone(),
                    old: live,
                    new: lowered.baseline,
                }),
                Some(&live) => plan.kept.push(Kept::Timeout {
                    netns: n.id.clone(),
                    key: key.clone(),
                    live,
                    set: lowered.set,
                }),
                None => {}
            }
        }
    }
}

/// ctune's files go when they carry its header. At a path of the layout in force, a file
/// without it (someone else's) or one that cannot be read is refused; at another
/// layout's path it is no business of this layout's.
fn files(found: &[FoundFile]) -> FilePlan {
    let mut plan = FilePlan::default();
    for f in found {
        match (&f.found, f.in_layout) {
            (Found::Ours, _) => plan.remove.push(f.path.clone()),
            (Found::Foreign, true) => plan.refused.push(Refusal::NotOurs {
                path: f.path.clone(),
            }),
            (Found::Unreadable(error), true) => plan.refused.push(Refusal::Unreadable {
                path: f.path.clone(),
                error: error.clone(),
            }),
            (Found::Missing, _) | (Found::Foreign | Found::Unreadable(_), false) => {}
        }
    }
    plan
}

/// Where a restore stands once its writes are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// No global value is ctune's any more: its files go ([`RestorePlan::files`]).
    Finished,
    /// Some global value is still ctune's: its files stay, rewritten for the keys ctune
    /// still set (`managed`, from `applied`), and the state stays.
    Unfinished {
        /// The keys ctune still set.
        managed: Vec<String>,
    },
}

/// Drops from ctune's records what the restore settled: the globals kept (someone
/// else's now) and every value put back (`restored`: the plan's changes that took
/// effect). What is left is what a later restore still has to put back.
pub fn settle(
    original: &mut BTreeMap<String, u64>,
    policy: &mut PolicyState,
    plan: &RestorePlan,
    restored: &[&Change],
) -> Settled {
    for k in &plan.kept {
        if let Kept::Global { key, .. } = k {
            original.remove(key);
            policy.applied.remove(key);
        }
    }
    for ch in restored {
        match &ch.target {
            Target::Global => {
                original.remove(&ch.key);
                policy.applied.remove(&ch.key);
                policy.operator_held.remove(&ch.key);
            }
            Target::Namespace { netns } => {
                if let Some(ns) = policy.namespaces.get_mut(&netns.inode) {
                    ns.lowered.remove(&ch.key);
                }
            }
        }
    }
    if original.is_empty() {
        Settled::Finished
    } else {
        Settled::Unfinished {
            managed: policy.applied.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NamespaceState;
    use crate::timeouts::Lowered;
    use tunables::{BUCKETS, MAX};

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// ctune raised max 65536 -> 131072 and the hash 16384 -> 32768; the table is quiet.
    fn raised() -> Input {
        Input {
            original: map(&[(MAX, 65_536), (BUCKETS, 16_384)]),
            policy: PolicyState {
                applied: map(&[(MAX, 131_072), (BUCKETS, 32_768)]),
                ..PolicyState::default()
            },
            live: Live {
                globals: map(&[(MAX, 131_072), (BUCKETS, 32_768)]),
                peak: 100,
                page_size: 4096,
                namespaces: Vec::new(),
            },
            min_max: 16_384,
            headroom: 0.25,
            ..Input::default()
        }
    }

    fn write(key: &str, old: u64, new: u64, ours: Ours) -> GlobalWrite {
        GlobalWrite {
            key: key.into(),
            old,
            new,
            ours,
        }
    }

    fn out_of_bounds(key: &str, value: u64, why: &str) -> Refusal {
        Refusal::OutOfBounds {
            target: Target::Global,
            key: key.into(),
            value,
            why: why.into(),
        }
    }

    const HASH_WAITS: Refusal = Refusal::HashWhileMaxUp {
        live: 32_768,
        original: 16_384,
    };

    #[test]
    fn global_keys() {
        use Ours::{Applied, Persisted};
        let max_back = write(MAX, 131_072, 65_536, Applied);
        let hash_back = write(BUCKETS, 32_768, 16_384, Applied);
        let under_load = |peak| Refusal::UnderLoad {
            live: 131_072,
            original: 65_536,
            peak,
            headroom: 0.25,
        };
        // (case, edit of `raised`, writes, kept, refused)
        type Row = (
            &'static str,
            fn(&mut Input),
            Vec<GlobalWrite>,
            Vec<Kept>,
            Vec<Refusal>,
        );
        #[rustfmt::skip]
        let cases: Vec<Row> = vec![
            ("both ctune's, table quiet", |_| {}, vec![max_back.clone(), hash_back.clone()], vec![], vec![]),
            ("nothing recorded", |i| i.original.clear(), vec![], vec![], vec![]),
            ("already the operator's", |i| i.live.globals = i.original.clone(), vec![], vec![], vec![]),
            ("hash unreadable", |i| { i.live.globals.remove(BUCKETS); }, vec![max_back.clone()], vec![], vec![]),
            // The state save after ctune's last change failed; its file has the value.
            ("ctune's by its persisted file", |i| {
                i.policy.applied.insert(MAX.into(), 100_000);
                i.persisted = map(&[(MAX, 131_072)]);
            }, vec![write(MAX, 131_072, 65_536, Persisted), hash_back.clone()], vec![], vec![]),
            ("changed by someone else since", |i| { i.live.globals.insert(MAX.into(), 200_000); },
                vec![hash_back.clone()],
                vec![Kept::Global { key: MAX.into(), live: 200_000, original: 65_536 }], vec![]),
            ("held by the operator", |i| { i.policy.operator_held.insert(MAX.into()); },
                vec![hash_back.clone()],
                vec![Kept::Global { key: MAX.into(), live: 131_072, original: 65_536 }], vec![]),
            // 85% of the operator's max: less than 25% headroom left.
            ("under load", |i| i.live.peak = 55_705, vec![], vec![], vec![under_load(55_705), HASH_WAITS]),
            ("under load, forced", |i| { i.live.peak = 55_705; i.force = true; },
                vec![max_back.clone(), hash_back.clone()], vec![], vec![]),
            // 52428 x 1.25 = 65535 fits under 65536; 52429 x 1.25 = 65536.25 does not.
            ("just enough headroom", |i| i.live.peak = 52_428, vec![max_back.clone(), hash_back.clone()], vec![], vec![]),
            ("just too little headroom", |i| i.live.peak = 52_429, vec![], vec![], vec![under_load(52_429), HASH_WAITS]),
            // Someone else's max does not hold the hash up.
            ("under load, max someone else's", |i| {
                i.live.peak = 55_705;
                i.live.globals.insert(MAX.into(), 200_000);
            }, vec![hash_back.clone()], vec![Kept::Global { key: MAX.into(), live: 200_000, original: 65_536 }], vec![]),
            ("a tampered max, forced", |i| { i.original.insert(MAX.into(), 1); i.force = true; }, vec![], vec![],
                vec![out_of_bounds(MAX, 1, "nf_conntrack_max = 1 refused: below 1024, the smallest max ctune writes"), HASH_WAITS]),
            ("a max below any kernel's own", |i| { i.original.insert(MAX.into(), 1000); }, vec![], vec![],
                vec![out_of_bounds(MAX, 1000, "nf_conntrack_max = 1000 refused: below 1024, the smallest max ctune writes"), HASH_WAITS]),
            ("a small VM's stock max, below min_max", |i| { i.original.insert(MAX.into(), 8192); },
                vec![write(MAX, 131_072, 8192, Applied), hash_back.clone()], vec![], vec![]),
            ("min_max below the kernel's own smallest", |i| { i.original.insert(MAX.into(), 600); i.min_max = 512; },
                vec![write(MAX, 131_072, 600, Applied), hash_back.clone()], vec![], vec![]),
            ("a tampered hash", |i| { i.original.insert(BUCKETS.into(), 0); }, vec![max_back.clone()], vec![],
                vec![out_of_bounds(BUCKETS, 0, "nf_conntrack_buckets = 0 refused: outside the kernel's 512 ..= 268434944")]),
        ];
        for (name, edit, globals, kept, refused) in cases {
            let mut input = raised();
            edit(&mut input);
            let p = plan(&input);
            assert_eq!(
                (p.globals, p.kept, p.refused),
                (globals, kept, refused),
                "{name}"
            );
            assert!(p.timeouts.is_empty(), "{name}");
        }
    }

    fn ns(name: &str, inode: u64) -> NetnsId {
        NetnsId {
            name: name.into(),
            inode,
        }
    }

    const UDP: &str = "nf_conntrack_udp_timeout";
    const CLOSE: &str = "nf_conntrack_tcp_timeout_close";

    /// ctune lowered the UDP timeout 30 -> 10 and close 10 -> 5 in `a` (inode 1) and
    /// the UDP timeout in `b` (inode 2); both are watched, as ctune left them.
    fn lowered() -> Input {
        let low = |pairs: &[(&str, u64, u64)]| NamespaceState {
            lowered: pairs
                .iter()
                .map(|(k, baseline, set)| {
                    let l = Lowered {
                        baseline: *baseline,
                        set: *set,
                    };
                    (k.to_string(), l)
                })
                .collect(),
            ..NamespaceState::default()
        };
        let mut input = raised();
        input.original.clear();
        input.policy.applied.clear();
        input.policy.namespaces = [
            (1, low(&[(UDP, 30, 10), (CLOSE, 10, 5)])),
            (2, low(&[(UDP, 30, 10)])),
        ]
        .into();
        input.live.namespaces = vec![
            LiveNamespace {
                id: ns("a", 1),
                timeouts: map(&[(UDP, 10), (CLOSE, 5)]),
            },
            LiveNamespace {
                id: ns("b", 2),
                timeouts: map(&[(UDP, 10)]),
            },
        ];
        input
    }

    #[test]
    fn timeouts_per_namespace() {
        let back = |n: &str, inode, key: &str, old, new| TimeoutWrite {
            netns: ns(n, inode),
            key: key.into(),
            old,
            new,
        };
        let all = vec![
            back("a", 1, CLOSE, 5, 10),
            back("a", 1, UDP, 10, 30),
            back("b", 2, UDP, 10, 30),
        ];
        // (case, edit of `lowered`, writes, kept, refused)
        type Row = (
            &'static str,
            fn(&mut Input),
            Vec<TimeoutWrite>,
            Vec<Kept>,
            Vec<Refusal>,
        );
        #[rustfmt::skip]
        let cases: Vec<Row> = vec![
            ("all as ctune set them", |_| {}, all.clone(), vec![], vec![]),
            ("changed by someone else since", |i| { i.live.namespaces[0].timeouts.insert(UDP.into(), 45); },
                vec![back("a", 1, CLOSE, 5, 10), back("b", 2, UDP, 10, 30)],
                vec![Kept::Timeout { netns: ns("a", 1), key: UDP.into(), live: 45, set: 10 }], vec![]),
            ("key gone from the kernel", |i| { i.live.namespaces[1].timeouts.clear(); }, all[..2].to_vec(), vec![], vec![]),
            ("namespace gone", |i| { i.live.namespaces.remove(0); }, all[2..].to_vec(), vec![], vec![]),
            ("namespace not recorded", |i| { i.policy.namespaces.remove(&2); }, all[..2].to_vec(), vec![], vec![]),
            ("a tampered baseline", |i| {
                i.policy.namespaces.get_mut(&2).unwrap().lowered.insert(UDP.into(), Lowered { baseline: 0, set: 10 });
            }, all[..2].to_vec(), vec![], vec![Refusal::OutOfBounds {
                target: Target::Namespace { netns: ns("b", 2) },
                key: UDP.into(),
                value: 0,
                why: "nf_conntrack_udp_timeout = 0 refused: outside 1 ..= 2147483 seconds".into(),
            }]),
        ];
        for (name, edit, timeouts, kept, refused) in cases {
            let mut input = lowered();
            edit(&mut input);
            let p = plan(&input);
            assert_eq!(
                (p.timeouts, p.kept, p.refused),
                (timeouts, kept, refused),
                "{name}"
            );
            assert!(p.globals.is_empty(), "{name}");
        }
    }

    #[test]
    fn files_by_header_and_layout() {
        let at = |path: &str| PathBuf::from(path);
        let unreadable = Found::Unreadable("/etc/x: permission denied (EACCES)".into());
        #[rustfmt::skip]
        let cases: Vec<(Found, bool, Option<PathBuf>, Option<Refusal>)> = vec![
            (Found::Ours, true, Some(at("/etc/x")), None),
            (Found::Ours, false, Some(at("/etc/x")), None),
            (Found::Missing, true, None, None),
            (Found::Missing, false, None, None),
            (Found::Foreign, true, None, Some(Refusal::NotOurs { path: at("/etc/x") })),
            (Found::Foreign, false, None, None),
            (unreadable.clone(), true, None, Some(Refusal::Unreadable {
                path: at("/etc/x"),
                error: "/etc/x: permission denied (EACCES)".into(),
            })),
            (unreadable, false, None, None),
        ];
        for (found, in_layout, removed, refused) in cases {
            let name = format!("{found:?} in layout: {in_layout}");
            let input = Input {
                files: vec![FoundFile {
                    path: at("/etc/x"),
                    in_layout,
                    found,
                }],
                ..raised()
            };
            let files = plan(&input).files;
            assert_eq!(
                (files.remove, files.refused),
                (Vec::from_iter(removed), Vec::from_iter(refused)),
                "{name}"
            );
        }
        // In the order found.
        let input = Input {
            files: ["/etc/a", "/etc/b", "/etc/c"]
                .iter()
                .map(|p| FoundFile {
                    path: at(p),
                    in_layout: true,
                    found: Found::Ours,
                })
                .collect(),
            ..raised()
        };
        assert_eq!(
            plan(&input).files.remove,
            [at("/etc/a"), at("/etc/b"), at("/etc/c")]
        );
    }

    #[test]
    fn writes_in_order_with_the_reason() {
        let mut input = lowered();
        input.original = raised().original;
        input.policy.applied = raised().policy.applied;
        let changes = plan(&input).changes();
        let order: Vec<(&str, &Target)> = changes
            .iter()
            .map(|c| (c.key.as_str(), &c.target))
            .collect();
        let a = Target::Namespace { netns: ns("a", 1) };
        let b = Target::Namespace { netns: ns("b", 2) };
        assert_eq!(
            order,
            [
                (MAX, &Target::Global),
                (BUCKETS, &Target::Global),
                (CLOSE, &a),
                (UDP, &a),
                (UDP, &b),
            ]
        );
        assert!(changes.iter().all(|c| c.reason == REASON));
        assert_eq!((changes[0].old, changes[0].new), (131_072, 65_536));
    }

    /// Settles `input`'s plan with the changes for which `took` holds as put back.
    fn settled(input: &Input, took: fn(&Change) -> bool) -> (Settled, Input) {
        let p = plan(input);
        let changes = p.changes();
        let restored: Vec<&Change> = changes.iter().filter(|c| took(c)).collect();
        let mut after = input.clone();
        let s = settle(&mut after.original, &mut after.policy, &p, &restored);
        (s, after)
    }

    #[test]
    fn settling_the_records() {
        let unfinished = |keys: &[&str]| Settled::Unfinished {
            managed: keys.iter().map(|k| k.to_string()).collect(),
        };
        // (case, edit of `raised`, which writes take effect, settled, originals left,
        // keys the operator holds after)
        type Row = (
            &'static str,
            fn(&mut Input),
            fn(&Change) -> bool,
            Settled,
            &'static [&'static str],
            &'static [&'static str],
        );
        #[rustfmt::skip]
        let cases: Vec<Row> = vec![
            ("everything put back", |_| {}, |_| true, Settled::Finished, &[], &[]),
            ("every write failed", |_| {}, |_| false, unfinished(&[BUCKETS, MAX]), &[BUCKETS, MAX], &[]),
            ("the hash failed", |_| {}, |c| c.key == MAX, unfinished(&[BUCKETS]), &[BUCKETS], &[]),
            ("refused under load", |i| i.live.peak = 55_705, |_| true, unfinished(&[BUCKETS, MAX]), &[BUCKETS, MAX], &[]),
            // A kept value is someone else's: its record goes, and with it the last
            // reason to keep ctune's files.
            ("max someone else's", |i| { i.live.globals.insert(MAX.into(), 200_000); }, |_| true, Settled::Finished, &[], &[]),
            // Held: kept and its record dropped, still held (the state goes anyway once
            // the restore is complete).
            ("hash held by the operator", |i| { i.policy.operator_held.insert(BUCKETS.into()); },
                |_| true, Settled::Finished, &[], &[BUCKETS]),
            // Today's behaviour, reported on issue 23: a key whose live value already is
            // the original (a write of it failed, or an admin put it back) is neither
            // planned nor dropped, so the restore never finishes: its files and state stay.
            ("hash already the original", |i| { i.live.globals.insert(BUCKETS.into(), 16_384); i.policy.applied.remove(BUCKETS); },
                |_| true, unfinished(&[]), &[BUCKETS], &[]),
        ];
        for (name, edit, took, want, left, held) in cases {
            let mut input = raised();
            edit(&mut input);
            let (s, after) = settled(&input, took);
            assert_eq!(s, want, "{name}");
            assert_eq!(
                after.original.keys().collect::<Vec<_>>(),
                left.iter().collect::<Vec<_>>(),
                "{name}"
            );
            assert_eq!(
                after.policy.operator_held.iter().collect::<Vec<_>>(),
                held.iter().collect::<Vec<_>>(),
                "{name}"
            );
        }
    }

    /// A value put back is no longer the operator's to hold (a held key is never
    /// planned, so this is the state's bookkeeping alone).
    #[test]
    fn settling_a_global_put_back_drops_every_record_of_it() {
        let mut input = raised();
        input.policy.operator_held.insert(MAX.into());
        let p = RestorePlan::default();
        let max = Change {
            key: MAX.into(),
            target: Target::Global,
            old: 131_072,
            new: 65_536,
            reason: REASON.into(),
        };
        let s = settle(&mut input.original, &mut input.policy, &p, &[&max]);
        assert_eq!(
            s,
            Settled::Unfinished {
                managed: vec![BUCKETS.into()]
            }
        );
        assert_eq!(input.original, map(&[(BUCKETS, 16_384)]));
        assert!(input.policy.operator_held.is_empty());
    }

    #[test]
    fn settling_timeouts_drops_only_those_put_back() {
        let mut input = lowered();
        input.live.namespaces[0].timeouts.insert(UDP.into(), 45);
        let (s, after) = settled(&input, |c| c.key == CLOSE);
        assert_eq!(s, Settled::Finished);
        let left = |inode| -> Vec<&str> {
            let ns = &after.policy.namespaces[&inode];
            ns.lowered.keys().map(String::as_str).collect()
        };
        // a's UDP was kept (someone else's) and stays recorded, b's failed.
        assert_eq!((left(1), left(2)), (vec![UDP], vec![UDP]));
    }

    #[test]
    fn live_values_of_an_observation() {
        let mut obs = crate::policy::testkit::obs(131_072, &[10, 900, 5]);
        obs.global.buckets = None;
        obs.namespaces[1].timeouts = map(&[(UDP, 10)]);
        let live = Live::of(&obs);
        assert_eq!(live.globals, map(&[(MAX, 131_072)]));
        assert_eq!((live.peak, live.page_size), (900, 4096));
        let ids: Vec<&NetnsId> = live.namespaces.iter().map(|n| &n.id).collect();
        assert_eq!(ids, [&ns("ns0", 1), &ns("ns1", 2), &ns("ns2", 3)]);
        assert_eq!(live.namespaces[1].timeouts, map(&[(UDP, 10)]));
    }
}
