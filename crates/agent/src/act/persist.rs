//! The files that make ctune's learned limits survive a reboot, rendered from a plan.
//!
//! - `/etc/sysctl.d/99-ctune.conf`: max and buckets, applied by systemd-sysctl. It sorts
//!   late, after most distribution defaults (the last file setting a key wins), but not
//!   after Debian's 99-sysctl.conf: [`later_files`] names any later file that sets a key.
//! - `/etc/modules-load.d/ctune.conf`: loads nf_conntrack before systemd-sysctl runs, so
//!   the `net.netfilter.*` keys exist then (otherwise they are skipped with "Couldn't
//!   write ... No such file or directory" and the firewall loads the module later).
//! - `/etc/modprobe.d/ctune.conf`: `options nf_conntrack hashsize=N` for a modular
//!   conntrack, the only way the hash size is set at load time. No spaces around '=': a
//!   malformed line there breaks module loading at boot.
//!
//! Timeouts are not persisted: ctune lowers them only while pressure lasts, and a
//! lowered timeout that survived a reboot would outlive the pressure that justified it.
//! For built-in conntrack, modprobe.d and modules-load.d do not apply and are not written.

use serde::Serialize;
use std::path::PathBuf;

use crate::sense::kfile::{self, Cause};
use crate::sense::roots::Roots;
use ctune_core::model::{ModuleState, Observation};
use ctune_core::plan::{Plan, Target};
use ctune_core::tunables;

/// sysctl.d file ctune owns.
pub const SYSCTL_FILE: &str = "sysctl.d/99-ctune.conf";
/// modules-load.d file ctune owns.
pub const MODULES_LOAD_FILE: &str = "modules-load.d/ctune.conf";
/// modprobe.d file ctune owns.
pub const MODPROBE_FILE: &str = "modprobe.d/ctune.conf";

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

/// Renders the files for the values in force after `plan`. The keys written are those
/// the plan changes, those ctune set earlier (`managed`, from its state: so a persist
/// that failed is retried), and those already in ctune's sysctl.d file. Returns the
/// files and notes about files that could not be read or will be refused.
pub fn render(
    roots: &Roots,
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
    let sysctl_old = read(SYSCTL_FILE);
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
    zero_notes.extend(later_files(roots, &values));
    let mut files = Vec::new();
    if values.is_empty() {
        return (files, notes.into_iter().chain(zero_notes).collect());
    }
    let mut body = String::from(HEADER);
    body.push_str(
        "# Applied at boot by systemd-sysctl; ctune-boot.service applies the hash size too.\n",
    );
    for (key, v) in &values {
        body.push_str(&format!("net.netfilter.{key} = {v}\n"));
    }
    files.push(update(
        roots,
        SYSCTL_FILE,
        sysctl_old,
        body,
        "sysctl values applied at boot",
    ));

    if obs.module == ModuleState::Module {
        let old = read(MODULES_LOAD_FILE);
        let body = format!(
            "{HEADER}# Loads nf_conntrack before systemd-sysctl, so 99-ctune.conf's keys exist when it runs.\nnf_conntrack\n"
        );
        files.push(update(
            roots,
            MODULES_LOAD_FILE,
            old,
            body,
            "load conntrack before sysctls are applied",
        ));
        if let Some((_, buckets)) = values.iter().find(|(k, _)| *k == tunables::BUCKETS) {
            let old = read(MODPROBE_FILE);
            let body = format!(
                "{HEADER}# The hash size at module load (the sysctl would resize a filled table later).\noptions nf_conntrack hashsize={buckets}\n"
            );
            files.push(update(
                roots,
                MODPROBE_FILE,
                old,
                body,
                "hash size at module load",
            ));
        }
    }
    (files, notes.into_iter().chain(zero_notes).collect())
}

/// sysctl.d files that systemd-sysctl applies after 99-ctune.conf and that set one of
/// the same keys: the last file to set a key wins at boot. (Debian's 99-sysctl.conf,
/// the link to /etc/sysctl.conf where the manual fix usually lives, is one.)
fn later_files(roots: &Roots, values: &[(&str, u64)]) -> Vec<String> {
    let ours = std::path::Path::new(SYSCTL_FILE)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut notes = Vec::new();
    for dir in [roots.etc.join("sysctl.d"), roots.run.join("sysctl.d")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".conf") && n.as_str() > ours)
            .collect();
        names.sort();
        for name in names {
            let Ok(text) = std::fs::read_to_string(dir.join(&name)) else {
                continue;
            };
            for (key, v) in parse_sysctl_values(&text) {
                if let Some((_, ours_v)) = values.iter().find(|(k, _)| *k == key) {
                    notes.push(format!(
                        "{} sets {key} = {v} and is applied after {ours} at boot, so it wins over ctune's {ours_v}: remove that line, or let ctune manage the key",
                        dir.join(&name).display()
                    ));
                }
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
    fn sysctl_keys() {
        let t = "# c\n; c\nnet.netfilter.nf_conntrack_max = 5\n-net/netfilter/nf_conntrack_buckets=7\nkernel.x = 1\n";
        assert_eq!(
            parse_sysctl_keys(t),
            ["nf_conntrack_max", "nf_conntrack_buckets"]
        );
    }
}
