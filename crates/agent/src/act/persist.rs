//! The files that make ctune's learned limits survive a reboot, rendered from a plan.
//! Which files is `persist.layout` ([`Files::of`] names them); both layouts write
//!
//! - `/etc/sysctl.d/99-ctune.conf`: max and buckets, applied at boot by systemd-sysctl
//!   or by OpenWrt's `/etc/init.d/sysctl` (START=11: `sysctl -e -p` on each
//!   `/etc/sysctl.d/*.conf` in name order, then `/etc/sysctl.conf`). It sorts late, after
//!   most distribution defaults (the last file setting a key wins), but not after
//!   Debian's 99-sysctl.conf nor OpenWrt's /etc/sysctl.conf: [`later_files`] names any
//!   later file that sets a key.
//!
//! and for a modular conntrack, with `layout: systemd`:
//!
//! - `/etc/modules-load.d/ctune.conf`: loads nf_conntrack before systemd-sysctl runs, so
//!   the `net.netfilter.*` keys exist then (otherwise they are skipped with "Couldn't
//!   write ... No such file or directory" and the firewall loads the module later).
//! - `/etc/modprobe.d/ctune.conf`: `options nf_conntrack hashsize=N`, the only way the
//!   hash size is set at load time. No spaces around '=': a malformed line there breaks
//!   module loading at boot.
//!
//! with `layout: openwrt` (OpenWrt reads neither modprobe.d nor modules-load.d):
//!
//! - `/etc/modules.d/00-ctune`: `nf_conntrack hashsize=N` (or `nf_conntrack` alone). Its
//!   reader is ubox's kmodloader (run by `/etc/init.d/boot`, START=10, before the
//!   sysctls): every file of /etc/modules.d in name order, one `module [options]` per
//!   line, the options being everything after the first space, passed to init_module as
//!   they are. A line whose first word names no module (our `#` comments) is skipped. A
//!   file whose name starts with a digit has its modules loaded as soon as each line is
//!   read, and a module already loaded ignores later options: `00-` is read before any
//!   numbered package file that pulls nf_conntrack in as a dependency (OpenWrt's own
//!   `nf-conntrack` file, unnumbered, is read later and carries no options).
//!
//! Timeouts are not persisted: ctune lowers them only while pressure lasts, and a
//! lowered timeout that survived a reboot would outlive the pressure that justified it.
//! For built-in conntrack, no module file applies and none is written.

use serde::Serialize;
use std::path::{Path, PathBuf};

use crate::sense::kfile::{self, Cause};
use crate::sense::roots::Roots;
use ctune_core::bounds::{self, Bounds};
use ctune_core::config::Layout;
use ctune_core::model::{ModuleState, Observation};
use ctune_core::plan::Plan;
use ctune_core::sysctl::{self, Key};
use ctune_core::tunables;

/// sysctl.d file ctune owns (every layout).
pub const SYSCTL_FILE: &str = "sysctl.d/99-ctune.conf";
/// modules-load.d file ctune owns (`layout: systemd`).
pub const MODULES_LOAD_FILE: &str = "modules-load.d/ctune.conf";
/// modprobe.d file ctune owns (`layout: systemd`).
pub const MODPROBE_FILE: &str = "modprobe.d/ctune.conf";
/// kmodloader's file ctune owns (`layout: openwrt`).
pub const MODULES_D_FILE: &str = "modules.d/00-ctune";

/// The files ctune owns under one layout, below the etc root: the one place that says
/// which system reads what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    /// The layout these are the files of.
    pub layout: Layout,
    /// max and buckets as sysctl lines.
    pub sysctl: &'static str,
    /// A file that only loads nf_conntrack early (systemd: modules-load.d). OpenWrt's
    /// module file loads it and carries its options in one line.
    pub module_load: Option<&'static str>,
    /// The hash size at module load.
    pub module_options: &'static str,
}

impl Files {
    /// The files of `layout`.
    pub fn of(layout: Layout) -> Files {
        match layout {
            Layout::Systemd => Files {
                layout,
                sysctl: SYSCTL_FILE,
                module_load: Some(MODULES_LOAD_FILE),
                module_options: MODPROBE_FILE,
            },
            Layout::Openwrt => Files {
                layout,
                sysctl: SYSCTL_FILE,
                module_load: None,
                module_options: MODULES_D_FILE,
            },
        }
    }

    /// Every file of the layout, in the order a step writes them.
    pub fn all(&self) -> Vec<&'static str> {
        std::iter::once(self.sysctl)
            .chain(self.module_load)
            .chain(std::iter::once(self.module_options))
            .collect()
    }

    /// The comment under the header of the sysctl file: who applies it at boot.
    fn sysctl_comment(&self) -> &'static str {
        match self.layout {
            Layout::Systemd => {
                "# Applied at boot by systemd-sysctl; ctune-boot.service applies the hash size too.\n"
            }
            Layout::Openwrt => {
                "# Applied at boot by /etc/init.d/sysctl; /etc/init.d/ctune applies the hash size too.\n"
            }
        }
    }

    /// Every file ctune may own under any layout but this one (a layout switched since,
    /// for `restore` and a note).
    pub fn others(&self) -> Vec<&'static str> {
        let ours = self.all();
        let mut v: Vec<&'static str> = Vec::new();
        for l in Layout::ALL {
            for f in Files::of(l).all() {
                if !ours.contains(&f) && !v.contains(&f) {
                    v.push(f);
                }
            }
        }
        v
    }
}

const HEADER: &str = "# Managed by ctune: conntrack limits learned on this host. Edits are overwritten.\n\
# Undo: `ctune restore` puts back the values from before ctune and removes this file.\n";

/// One file a real run would write, with its current and new content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileUpdate {
    /// Full path below the etc root.
    pub path: PathBuf,
    /// Current content (None: the file does not exist or could not be read).
    pub old: Option<String>,
    /// Content a real run would write.
    pub new: String,
    /// Unified diff old -> new (empty when unchanged).
    pub diff: String,
    /// Why this file exists.
    pub purpose: String,
}

impl FileUpdate {
    /// Whether a real run would change this file.
    pub fn changes(&self) -> bool {
        self.old.as_deref() != Some(self.new.as_str())
    }
}

/// Renders the files of `layout` for the values in force after `plan`. The keys written
/// are those the plan changes, those ctune set earlier (`managed`, from its state: so a
/// persist that failed is retried), and those already in ctune's sysctl.d file. Returns
/// the files and notes about files that could not be read or will be refused.
pub fn render(
    roots: &Roots,
    layout: Layout,
    obs: &Observation,
    plan: &Plan,
    managed: &[&str],
) -> (Vec<FileUpdate>, Vec<String>) {
    let files = Files::of(layout);
    let disk = read_current(roots, &files);
    let in_file = disk
        .text(files.sysctl)
        .map(parse_sysctl_keys)
        .unwrap_or_default();
    let managed: Vec<&str> = managed
        .iter()
        .copied()
        .chain(in_file.iter().map(String::as_str))
        .collect();
    let wanted = should_be(layout, obs, plan, &managed);
    // The sysctl file counts whatever is rendered (the keys in it are ctune's), so a note
    // on it always stands; a module file not rendered is neither compared nor written,
    // so why it could not be read is no concern.
    let mut notes: Vec<String> = disk
        .files
        .iter()
        .filter(|c| c.rel == files.sysctl || wanted.files.iter().any(|b| b.rel == c.rel))
        .filter_map(|c| c.note.clone())
        .collect();
    let updates = wanted
        .files
        .into_iter()
        .map(|body| update(&roots.etc, disk.text(body.rel).map(String::from), body))
        .collect();
    notes.extend(wanted.unwritten);
    notes.extend(overridden(&disk.later, &wanted.values));
    notes.extend(disk.stale);
    notes.extend(wanted.module_notes);
    (updates, notes)
}

/// What is on disk now, read at once so that what should be there is rendered without
/// I/O ([`should_be`]).
#[derive(Debug)]
struct OnDisk {
    /// Each file of the layout ([`Files::all`]), in the order a step writes them.
    files: Vec<Current>,
    /// Each sysctl file applied after ctune's at boot, in that order, with the
    /// `net.netfilter.*` values it sets.
    later: Vec<(PathBuf, Vec<(String, u64)>)>,
    /// Notes on ctune's files from another layout, which nothing reads under this one.
    stale: Vec<String>,
}

/// One of ctune's files as it is now.
#[derive(Debug)]
struct Current {
    /// Path below the etc root.
    rel: &'static str,
    /// Its text (None: missing, a symlink or unreadable; a diff is then shown against an
    /// empty file).
    text: Option<String>,
    /// Why it could not be read, for the notes.
    note: Option<String>,
}

impl OnDisk {
    /// The text of the layout's file `rel`, when there is one to read.
    fn text(&self, rel: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|c| c.rel == rel)
            .and_then(|c| c.text.as_deref())
    }
}

/// Reads what a persist compares with and warns about: every file of the layout, the
/// sysctl files that override ctune's at boot, ctune's files from another layout.
fn read_current(roots: &Roots, files: &Files) -> OnDisk {
    OnDisk {
        files: files
            .all()
            .into_iter()
            .map(|rel| read_file(roots, rel))
            .collect(),
        later: later_values(roots, files.layout),
        stale: stale_files(roots, files),
    }
}

/// One file of the layout. A symlink is not followed: a real run refuses to replace it,
/// so its target is not what the diff is against. A missing file is no note.
fn read_file(roots: &Roots, rel: &'static str) -> Current {
    let path = roots.etc.join(rel);
    let (text, note) = if is_symlink(&path) {
        let note = format!(
            "{} is a symlink: a real run refuses to replace it (diff shown against an empty file)",
            path.display()
        );
        (None, Some(note))
    } else {
        match kfile::read_text(&path) {
            Ok(t) => (Some(t), None),
            Err(e) if e.cause == Cause::Missing => (None, None),
            Err(e) => (None, Some(format!("{e}; diff shown against an empty file"))),
        }
    };
    Current { rel, text, note }
}

/// Whether `path` itself is a symlink (not followed): ctune never writes through one.
fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// What ctune's files should hold after a plan: rendered from values alone, no I/O.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    /// The values the sysctl file sets, in apply order.
    values: Vec<(&'static str, u64)>,
    /// The files, in the order a step writes them; none when no value is persisted.
    files: Vec<Body>,
    /// Why a value in force is not persisted.
    unwritten: Vec<String>,
    /// Why the persisted hash size is not given to the module at boot.
    module_notes: Vec<String>,
}

/// One file as it should be.
#[derive(Debug, PartialEq, Eq)]
struct Body {
    /// Path below the etc root.
    rel: &'static str,
    /// The whole content.
    text: String,
    /// Why the file exists.
    purpose: &'static str,
}

/// Renders what the files of `layout` should hold for the values in force after `plan`:
/// the global keys the plan changes and those in `managed` (ctune's, from its state and
/// its sysctl file). The module files only for a modular conntrack: a built-in one reads
/// none of them.
fn should_be(layout: Layout, obs: &Observation, plan: &Plan, managed: &[&str]) -> Wanted {
    let files = Files::of(layout);
    let (values, unwritten) = persisted_values(obs, plan, managed);
    let mut wanted = Wanted {
        values,
        files: Vec::new(),
        unwritten,
        module_notes: Vec::new(),
    };
    if wanted.values.is_empty() {
        return wanted;
    }
    wanted.files.push(Body {
        rel: files.sysctl,
        text: sysctl_body(&files, &wanted.values),
        purpose: "sysctl values applied at boot",
    });
    if obs.module == ModuleState::Module {
        let hashsize = module_hashsize(obs, &wanted.values).unwrap_or_else(|note| {
            wanted.module_notes.push(note);
            None
        });
        wanted.files.extend(module_files(&files, hashsize));
    }
    wanted
}

/// The values to persist, in apply order (systemd-sysctl applies lines top to bottom,
/// and the limit should be raised before the table that serves it grows), each as in
/// force after `plan`; and a note for each left out.
///
/// The hash persisted is the one in force, the one ctune's state records: while a
/// resize waits out hash.min_interval the file keeps the live size (a `sysctl
/// --system` meanwhile must not resize a full table outside the rate limit), and after
/// a reboot ctune recognises the value as its own. The first step after a reboot may
/// resize at once: the rate limit does not outlive the boot, and the table is small.
fn persisted_values(
    obs: &Observation,
    plan: &Plan,
    managed: &[&str],
) -> (Vec<(&'static str, u64)>, Vec<String>) {
    let mut values = Vec::new();
    let mut unwritten = Vec::new();
    for (key, live) in [
        (tunables::MAX, Some(obs.global.max)),
        (tunables::BUCKETS, obs.global.buckets),
    ] {
        let change = plan.global_change(key);
        if change.is_none() && !managed.contains(&key) {
            continue;
        }
        let Some(v) = change.map(|c| c.new).or(live) else {
            continue;
        };
        if v == 0 {
            // 0 is "unlimited" (and for buckets invalid): an operator's choice that
            // ctune never writes, at boot or otherwise.
            unwritten.push(format!(
                "{key} is 0 now: not persisted (ctune never writes 0)"
            ));
            continue;
        }
        values.push((key, v));
    }
    (values, unwritten)
}

/// The sysctl file: the header, who applies it, one line per value.
fn sysctl_body(files: &Files, values: &[(&str, u64)]) -> String {
    let mut body = String::from(HEADER);
    body.push_str(files.sysctl_comment());
    for (key, v) in values {
        body.push_str(&format!("{}{key} = {v}\n", sysctl::DIR));
    }
    body
}

/// The hash size given to the module at load: the persisted buckets, if any, when the
/// kernel takes them there; a value it refuses fails the whole load (init_module's
/// EINVAL), so one outside its bounds is left out, with the note why (Err).
fn module_hashsize(obs: &Observation, values: &[(&str, u64)]) -> Result<Option<u64>, String> {
    let Some(&(_, v)) = values.iter().find(|(k, _)| *k == tunables::BUCKETS) else {
        return Ok(None);
    };
    let limits = Bounds {
        min_max: 0,
        ceiling: None,
        table_needs: None,
        page_size: obs.host.page_size,
    };
    match bounds::check(tunables::BUCKETS, v, &limits) {
        Ok(()) => Ok(Some(v)),
        Err(why) => Err(format!("{why}: not given to the module at boot")),
    }
}

/// The module's files: systemd's file that loads it before the sysctls, then its options
/// (modprobe.d's only with a hash size to set; OpenWrt's modules.d line also loads the
/// module, so it is written either way).
fn module_files(files: &Files, hashsize: Option<u64>) -> Vec<Body> {
    let mut bodies = Vec::new();
    if let Some(rel) = files.module_load {
        bodies.push(Body {
            rel,
            text: format!(
                "{HEADER}# Loads nf_conntrack before systemd-sysctl, so 99-ctune.conf's keys exist when it runs.\nnf_conntrack\n"
            ),
            purpose: "load conntrack before sysctls are applied",
        });
    }
    let options = match files.layout {
        Layout::Systemd => hashsize.map(|buckets| {
            (
                format!(
                    "{HEADER}# The hash size at module load (the sysctl would resize a filled table later).\n{}\n",
                    modprobe_line(buckets)
                ),
                "hash size at module load",
            )
        }),
        Layout::Openwrt => Some((
            format!(
                "{HEADER}# Read by kmodloader at boot (/etc/init.d/boot, START=10): loads nf_conntrack, with the hash\n# size when ctune persists one, before /etc/init.d/sysctl applies 99-ctune.conf.\n{}\n",
                kmodloader_line(hashsize)
            ),
            "load conntrack early, with the hash size at module load",
        )),
    };
    bodies.extend(options.map(|(text, purpose)| Body {
        rel: files.module_options,
        text,
        purpose,
    }));
    bodies
}

/// modprobe.d's line: no spaces around '=' (a malformed line breaks module loading).
fn modprobe_line(buckets: u64) -> String {
    format!("options nf_conntrack hashsize={buckets}")
}

/// kmodloader's line: the module, then (after one space) the options exactly as
/// init_module takes them; nothing after them, not even a space.
fn kmodloader_line(hashsize: Option<u64>) -> String {
    match hashsize {
        Some(b) => format!("nf_conntrack hashsize={b}"),
        None => "nf_conntrack".into(),
    }
}

/// Files ctune wrote under another layout, which nothing reads under this one.
fn stale_files(roots: &Roots, paths: &Files) -> Vec<String> {
    paths
        .others()
        .into_iter()
        .map(|rel| roots.etc.join(rel))
        .filter(|p| !is_symlink(p))
        .filter(|p| kfile::read_text(p).is_ok_and(|t| is_ours(&t)))
        .map(|p| {
            format!(
                "{} is ctune's file from another persist.layout; with layout {} nothing reads it: delete it (`ctune restore` removes it too)",
                p.display(),
                layout_name(paths.layout)
            )
        })
        .collect()
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Systemd => "systemd",
        Layout::Openwrt => "openwrt",
    }
}

/// sysctl files applied after 99-ctune.conf at boot, with the values each sets: the
/// last file to set a key wins. systemd-sysctl: later names in /etc and /run/sysctl.d
/// (Debian's 99-sysctl.conf, the link to /etc/sysctl.conf where the manual fix usually
/// lives, is one). OpenWrt's /etc/init.d/sysctl: later names in /etc/sysctl.d, then
/// /etc/sysctl.conf itself.
fn later_values(roots: &Roots, layout: Layout) -> Vec<(PathBuf, Vec<(String, u64)>)> {
    let ours = sysctl_name();
    let dirs = match layout {
        Layout::Systemd => vec![roots.etc.join("sysctl.d"), roots.run.join("sysctl.d")],
        Layout::Openwrt => vec![roots.etc.join("sysctl.d")],
    };
    let mut later = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".conf") && n.as_str() > ours)
            .collect();
        names.sort();
        later.extend(names.into_iter().map(|n| dir.join(n)));
    }
    if layout == Layout::Openwrt {
        later.push(roots.etc.join("sysctl.conf"));
    }
    later
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path).ok()?;
            Some((path, parse_sysctl_values(&text)))
        })
        .collect()
}

/// A note for each value of a `later` file that wins over one of ctune's `values` at
/// boot.
fn overridden(later: &[(PathBuf, Vec<(String, u64)>)], values: &[(&str, u64)]) -> Vec<String> {
    let ours = sysctl_name();
    let mut notes = Vec::new();
    for (path, set) in later {
        for (key, v) in set {
            if let Some((_, ours_v)) = values.iter().find(|(k, _)| *k == key) {
                notes.push(format!(
                    "{} sets {key} = {v} and is applied after {ours} at boot, so it wins over ctune's {ours_v}: remove that line, or let ctune manage the key",
                    path.display()
                ));
            }
        }
    }
    notes
}

/// The name of ctune's sysctl file: which files are applied after it goes by name.
fn sysctl_name() -> &'static str {
    Path::new(SYSCTL_FILE)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// One file's update: its path, what it holds and should hold, and the diff between.
fn update(etc: &Path, old: Option<String>, body: Body) -> FileUpdate {
    let path = etc.join(body.rel);
    let shown = path.display().to_string();
    let diff = if old.as_deref() == Some(body.text.as_str()) {
        String::new()
    } else {
        similar::udiff::unified_diff(
            similar::Algorithm::Myers,
            old.as_deref().unwrap_or(""),
            &body.text,
            3,
            Some((if old.is_some() { &shown } else { "/dev/null" }, &shown)),
        )
    };
    FileUpdate {
        path,
        old,
        new: body.text,
        diff,
        purpose: body.purpose.into(),
    }
}

/// The `net.netfilter.*` keys a sysctl.d file sets (comments and blanks skipped).
pub fn parse_sysctl_keys(text: &str) -> Vec<String> {
    sysctl_lines(text).map(|(k, _)| k).collect()
}

/// The `net.netfilter.*` keys with numeric values, in file order.
pub fn parse_sysctl_values(text: &str) -> Vec<(String, u64)> {
    sysctl_lines(text)
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect()
}

fn sysctl_lines(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        // Only a conntrack key's name: a hand-edited line with anything else in it is
        // not a key ctune reads.
        .filter_map(|(k, v)| {
            Key::from_sysctl(k).map(|k| (k.name().to_string(), v.trim().to_string()))
        })
}

/// Whether a file was written by ctune (and so may be removed by `restore`).
pub fn is_ours(text: &str) -> bool {
    text.starts_with("# Managed by ctune")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctune_core::plan::Target;

    #[test]
    fn each_layout_names_its_files_and_the_others() {
        let systemd = Files::of(Layout::Systemd);
        assert_eq!(
            systemd.all(),
            [SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE]
        );
        assert_eq!(systemd.others(), [MODULES_D_FILE]);
        let openwrt = Files::of(Layout::Openwrt);
        assert_eq!(openwrt.all(), [SYSCTL_FILE, MODULES_D_FILE]);
        assert_eq!(openwrt.others(), [MODULES_LOAD_FILE, MODPROBE_FILE]);
        // Both systems read the same sysctl.d file, so boot and restore read one path.
        assert_eq!(systemd.sysctl, openwrt.sysctl);
    }

    #[test]
    fn module_lines_have_no_space_around_or_after_the_options() {
        assert_eq!(modprobe_line(16384), "options nf_conntrack hashsize=16384");
        assert_eq!(kmodloader_line(Some(16384)), "nf_conntrack hashsize=16384");
        assert_eq!(kmodloader_line(None), "nf_conntrack");
        for layout in Layout::ALL {
            let c = Files::of(layout).sysctl_comment();
            assert!(c.starts_with("# ") && c.ends_with('\n'), "{c:?}");
        }
    }

    #[test]
    fn sysctl_keys() {
        let t = "# c\n; c\nnet.netfilter.nf_conntrack_max = 5\n-net/netfilter/nf_conntrack_buckets=7\nkernel.x = 1\n";
        assert_eq!(
            parse_sysctl_keys(t),
            ["nf_conntrack_max", "nf_conntrack_buckets"]
        );
    }

    /// A host with `max` and `buckets` in force, conntrack built in or a module.
    fn obs(module: ModuleState, max: u64, buckets: Option<u64>) -> Observation {
        use ctune_core::model::{Access, Global, Host, MemInfo};
        Observation {
            module,
            in_initial_netns: Some(true),
            global: Global {
                max,
                buckets,
                hashsize: buckets,
                expect_max: None,
                write_access: Access::WRITABLE,
                per_netns_max: false,
            },
            host: Host {
                cpus: 2,
                memory: MemInfo {
                    total_bytes: 8 << 30,
                    available_bytes: Some(6 << 30),
                },
                entry_bytes: 320,
                entry_bytes_source: "sysfs".into(),
                page_size: 4096,
                table_entries: None,
                memory_stall: None,
                facts: None,
            },
            namespaces: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A plan with `changes` to global keys (key, old, new).
    fn plan(o: &Observation, changes: &[(&str, u64, u64)]) -> Plan {
        use ctune_core::plan::Change;
        Plan {
            ceiling: ctune_core::policy::ceiling_of(o, &ctune_core::config::Config::default()),
            changes: changes
                .iter()
                .map(|&(key, old, new)| Change {
                    key: key.into(),
                    target: Target::Global,
                    old,
                    new,
                    reason: "test".into(),
                })
                .collect(),
            namespaces: Vec::new(),
            explanations: Vec::new(),
            role: None,
        }
    }

    fn rels(w: &Wanted) -> Vec<&str> {
        w.files.iter().map(|b| b.rel).collect()
    }

    #[test]
    fn built_in_writes_only_the_changed_max() {
        let o = obs(ModuleState::BuiltIn, 65536, Some(16384));
        let w = should_be(
            Layout::Systemd,
            &o,
            &plan(&o, &[(tunables::MAX, 65536, 98304)]),
            &[],
        );
        assert_eq!(w.values, [(tunables::MAX, 98304)]);
        assert_eq!(rels(&w), [SYSCTL_FILE]);
        assert_eq!(
            w.files[0].text,
            "# Managed by ctune: conntrack limits learned on this host. Edits are overwritten.\n\
             # Undo: `ctune restore` puts back the values from before ctune and removes this file.\n\
             # Applied at boot by systemd-sysctl; ctune-boot.service applies the hash size too.\n\
             net.netfilter.nf_conntrack_max = 98304\n"
        );
        assert!(w.unwritten.is_empty() && w.module_notes.is_empty());
    }

    #[test]
    fn managed_keys_are_written_at_their_value_in_force() {
        // Nothing in the plan: the managed keys keep the files as they are in force, max
        // before buckets whatever order they are named in.
        let o = obs(ModuleState::BuiltIn, 65536, Some(16384));
        let managed = [tunables::BUCKETS, tunables::MAX];
        let w = should_be(Layout::Openwrt, &o, &plan(&o, &[]), &managed);
        assert_eq!(
            w.values,
            [(tunables::MAX, 65536), (tunables::BUCKETS, 16384)]
        );
        assert!(w.files[0].text.ends_with(
            "# Applied at boot by /etc/init.d/sysctl; /etc/init.d/ctune applies the hash size too.\n\
             net.netfilter.nf_conntrack_max = 65536\n\
             net.netfilter.nf_conntrack_buckets = 16384\n"
        ));
        // Built in: no module file on either layout.
        assert_eq!(rels(&w), [SYSCTL_FILE]);
        // Neither changed nor managed: nothing to write.
        let none = should_be(Layout::Systemd, &o, &plan(&o, &[]), &[]);
        assert_eq!(none.values, []);
        assert!(none.files.is_empty());
    }

    #[test]
    fn zero_in_force_is_never_persisted() {
        let o = obs(ModuleState::Module, 0, Some(0));
        let managed = [tunables::MAX, tunables::BUCKETS];
        let w = should_be(Layout::Systemd, &o, &plan(&o, &[]), &managed);
        assert!(w.files.is_empty(), "{:?}", w.files);
        assert_eq!(
            w.unwritten,
            [
                "nf_conntrack_max is 0 now: not persisted (ctune never writes 0)",
                "nf_conntrack_buckets is 0 now: not persisted (ctune never writes 0)",
            ]
        );
    }

    #[test]
    fn a_module_gets_its_hash_size_at_load() {
        let o = obs(ModuleState::Module, 65536, Some(16384));
        let p = plan(&o, &[(tunables::BUCKETS, 16384, 32768)]);
        let w = should_be(Layout::Systemd, &o, &p, &[tunables::MAX]);
        assert_eq!(rels(&w), [SYSCTL_FILE, MODULES_LOAD_FILE, MODPROBE_FILE]);
        assert!(w.files[1].text.ends_with("\nnf_conntrack\n"));
        assert!(
            w.files[2]
                .text
                .ends_with("\noptions nf_conntrack hashsize=32768\n")
        );
        let w = should_be(Layout::Openwrt, &o, &p, &[tunables::MAX]);
        assert_eq!(rels(&w), [SYSCTL_FILE, MODULES_D_FILE]);
        assert!(w.files[1].text.ends_with("\nnf_conntrack hashsize=32768\n"));
        assert!(w.module_notes.is_empty());
    }

    #[test]
    fn a_module_without_a_hash_size_to_give() {
        // Only max persisted: systemd still loads the module early, with no options file;
        // OpenWrt's one line loads it either way.
        let o = obs(ModuleState::Module, 65536, Some(16384));
        let p = plan(&o, &[(tunables::MAX, 65536, 98304)]);
        let w = should_be(Layout::Systemd, &o, &p, &[]);
        assert_eq!(rels(&w), [SYSCTL_FILE, MODULES_LOAD_FILE]);
        let w = should_be(Layout::Openwrt, &o, &p, &[]);
        assert_eq!(rels(&w), [SYSCTL_FILE, MODULES_D_FILE]);
        assert!(w.files[1].text.ends_with("\nnf_conntrack\n"));
        // Buckets the kernel refuses at load (under a page of heads): in the sysctl file
        // as in force, but not given to the module, and said why.
        let o = obs(ModuleState::Module, 65536, Some(100));
        let w = should_be(Layout::Openwrt, &o, &plan(&o, &[]), &[tunables::BUCKETS]);
        assert_eq!(w.values, [(tunables::BUCKETS, 100)]);
        assert!(w.files[1].text.ends_with("\nnf_conntrack\n"));
        assert_eq!(
            w.module_notes,
            [format!(
                "nf_conntrack_buckets = 100 refused: outside the kernel's 512 ..= {}: not given to the module at boot",
                tunables::buckets_limit(4096)
            )]
        );
    }

    #[test]
    fn later_files_setting_our_keys_are_named() {
        let later = [
            (
                PathBuf::from("/etc/sysctl.d/99-sysctl.conf"),
                vec![
                    ("nf_conntrack_max".to_string(), 262144),
                    ("nf_conntrack_tcp_timeout_established".to_string(), 600),
                ],
            ),
            (
                PathBuf::from("/etc/sysctl.conf"),
                vec![("nf_conntrack_buckets".to_string(), 4096)],
            ),
        ];
        assert_eq!(
            overridden(&later, &[(tunables::MAX, 98304)]),
            [
                "/etc/sysctl.d/99-sysctl.conf sets nf_conntrack_max = 262144 and is applied after 99-ctune.conf at boot, so it wins over ctune's 98304: remove that line, or let ctune manage the key"
            ]
        );
        assert_eq!(overridden(&later, &[]), Vec::<String>::new());
    }
}
