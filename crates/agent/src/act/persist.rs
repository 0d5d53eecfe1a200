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
use std::path::PathBuf;

use crate::sense::kfile::{self, Cause};
use crate::sense::roots::Roots;
use ctune_core::bounds::{self, Bounds};
use ctune_core::config::Layout;
use ctune_core::model::{ModuleState, Observation};
use ctune_core::plan::{Plan, Target};
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
    let mut notes = Vec::new();
    let mut read = |rel: &str| -> Option<String> {
        let path = roots.etc.join(rel);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            notes.push(format!(
                "{} is a symlink: a real run refuses to replace it (diff shown against an empty file)",
                path.display()
            ));
            return None;
        }
        match kfile::read_text(&path) {
            Ok(t) => Some(t),
            Err(e) if e.cause == Cause::Missing => None,
            Err(e) => {
                notes.push(format!("{e}; diff shown against an empty file"));
                None
            }
        }
    };
    let paths = Files::of(layout);
    let sysctl_old = read(paths.sysctl);
    // In apply order: systemd-sysctl applies lines top to bottom, and the limit should be
    // raised before the table that serves it grows.
    let mut values: Vec<(&str, u64)> = Vec::new();
    let after = |key: &str, live: Option<u64>| -> Option<u64> {
        plan.changes
            .iter()
            .find(|c| c.key == key && c.target == Target::Global)
            .map(|c| c.new)
            .or(live)
    };
    let mut zero_notes = Vec::new();
    let mut in_file = sysctl_old
        .as_deref()
        .map(parse_sysctl_keys)
        .unwrap_or_default();
    in_file.extend(managed.iter().map(|k| k.to_string()));
    for (key, live) in [
        (tunables::MAX, Some(obs.global.max)),
        (tunables::BUCKETS, obs.global.buckets),
    ] {
        let in_plan = plan.global_change(key).is_some();
        if (in_plan || in_file.iter().any(|k| k == key))
            && let Some(v) = after(key, live)
        {
            if v == 0 {
                // 0 is "unlimited" (and for buckets invalid): an operator's choice that
                // ctune never writes, at boot or otherwise.
                zero_notes.push(format!(
                    "{key} is 0 now: not persisted (ctune never writes 0)"
                ));
                continue;
            }
            values.push((key, v));
        }
    }
    // The hash persisted is the one in force, the one ctune's state records: while a
    // resize waits out hash.min_interval the file keeps the live size (a `sysctl
    // --system` meanwhile must not resize a full table outside the rate limit), and after
    // a reboot ctune recognises the value as its own. The first step after a reboot may
    // resize at once: the rate limit does not outlive the boot, and the table is small.
    zero_notes.extend(later_files(roots, layout, &values));
    zero_notes.extend(stale_files(roots, &paths));
    let mut files = Vec::new();
    if values.is_empty() {
        return (files, notes.into_iter().chain(zero_notes).collect());
    }
    let mut body = String::from(HEADER);
    body.push_str(paths.sysctl_comment());
    for (key, v) in &values {
        body.push_str(&format!("net.netfilter.{key} = {v}\n"));
    }
    files.push(update(
        roots,
        paths.sysctl,
        sysctl_old,
        body,
        "sysctl values applied at boot",
    ));

    if obs.module == ModuleState::Module {
        // The hash size given to the module at load: a value the kernel refuses there
        // fails the whole load (init_module's EINVAL), so only one in its bounds.
        let hashsize = values
            .iter()
            .find(|(k, _)| *k == tunables::BUCKETS)
            .map(|&(_, v)| v)
            .filter(|&v| {
                let limits = Bounds {
                    min_max: 0,
                    ceiling: None,
                    table_needs: None,
                    page_size: obs.host.page_size,
                };
                match bounds::check(tunables::BUCKETS, v, &limits) {
                    Ok(()) => true,
                    Err(why) => {
                        zero_notes.push(format!("{why}: not given to the module at boot"));
                        false
                    }
                }
            });
        if let Some(rel) = paths.module_load {
            let old = read(rel);
            let body = format!(
                "{HEADER}# Loads nf_conntrack before systemd-sysctl, so 99-ctune.conf's keys exist when it runs.\nnf_conntrack\n"
            );
            files.push(update(
                roots,
                rel,
                old,
                body,
                "load conntrack before sysctls are applied",
            ));
        }
        // The module's options: modprobe.d's only with a hash size to set; OpenWrt's
        // modules.d line also loads the module, so it is written either way.
        let options = match layout {
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
        if let Some((body, purpose)) = options {
            let old = read(paths.module_options);
            files.push(update(roots, paths.module_options, old, body, purpose));
        }
    }
    (files, notes.into_iter().chain(zero_notes).collect())
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
        .filter(|p| !std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
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

/// sysctl files applied after 99-ctune.conf at boot that set one of the same keys: the
/// last file to set a key wins. systemd-sysctl: later names in /etc and /run/sysctl.d
/// (Debian's 99-sysctl.conf, the link to /etc/sysctl.conf where the manual fix usually
/// lives, is one). OpenWrt's /etc/init.d/sysctl: later names in /etc/sysctl.d, then
/// /etc/sysctl.conf itself.
fn later_files(roots: &Roots, layout: Layout, values: &[(&str, u64)]) -> Vec<String> {
    let ours = std::path::Path::new(SYSCTL_FILE)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
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
    let mut notes = Vec::new();
    for path in later {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (key, v) in parse_sysctl_values(&text) {
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

fn update(roots: &Roots, rel: &str, old: Option<String>, new: String, purpose: &str) -> FileUpdate {
    let path = roots.etc.join(rel);
    let shown = path.display().to_string();
    let diff = if old.as_deref() == Some(new.as_str()) {
        String::new()
    } else {
        similar::udiff::unified_diff(
            similar::Algorithm::Myers,
            old.as_deref().unwrap_or(""),
            &new,
            3,
            Some((if old.is_some() { &shown } else { "/dev/null" }, &shown)),
        )
    };
    FileUpdate {
        path,
        old,
        new,
        diff,
        purpose: purpose.into(),
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
        .filter_map(|(k, v)| {
            let k = k.trim().trim_start_matches('-').replace('/', ".");
            // Only a conntrack key's name: a hand-edited line with anything else in it
            // is not a key ctune reads.
            k.strip_prefix("net.netfilter.")
                .filter(|k| {
                    k.starts_with("nf_conntrack_")
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .map(|k| (k.to_string(), v.trim().to_string()))
        })
}

/// Whether a file was written by ctune (and so may be removed by `restore`).
pub fn is_ours(text: &str) -> bool {
    text.starts_with("# Managed by ctune")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
