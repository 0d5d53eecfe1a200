//! `ctune verify`: do the live values and the persisted files still match what ctune
//! set, or would write now? Like `tuned-adm verify`, for monitoring scripts and
//! configuration management: every check is one line, each difference named with what
//! was expected and what was found. Reads only; takes no lock.
//!
//! Checked:
//! 1. each global key ctune set (`policy.applied`) against the live value; a key the
//!    operator changed since and ctune adopted (`policy.operator_held`) is reported as
//!    held, not as a difference;
//! 2. each timeout ctune lowered, in its namespace, while that namespace is watched and
//!    alive (a timeout the operator changed while lowered is held, likewise);
//! 3. each file a step would write for the values ctune manages (what `persist`
//!    renders for `persist.layout`) against the file on disk: missing, someone else's,
//!    or different.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

use crate::act::persist::{self, FileUpdate};
use crate::act::state::State;
use crate::sense::kfile;
use crate::sense::roots::Roots;
use ctune_core::config::Config;
use ctune_core::model::Observation;
use ctune_core::plan::{Change, Plan, Target};
use ctune_core::units::printable;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// As ctune set it.
    Ok,
    /// Not as ctune set it: a difference.
    Diff,
    /// Changed by the operator, and ctune knows and leaves it alone: not a difference.
    Held,
}

/// What was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A global key (max, buckets).
    Global,
    /// A timeout in one namespace.
    Timeout,
    /// A persisted file.
    File,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// ok, diff or held.
    pub result: Verdict,
    /// A key or a file.
    pub kind: Kind,
    /// The key, or the file's path.
    pub subject: String,
    /// The namespace of a timeout.
    pub netns: Option<String>,
    /// What ctune set or would write (a value, or a file's line).
    pub expected: Option<String>,
    /// What is there.
    pub found: Option<String>,
    /// More about a difference or a hold.
    pub detail: Option<String>,
}

/// Every check and what could not be checked.
#[derive(Debug, Default)]
pub struct Report {
    /// One per value or file.
    pub checks: Vec<Check>,
    /// What was not checked, and why (not a difference).
    pub notes: Vec<String>,
}

impl Report {
    /// The differences.
    pub fn differences(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.result == Verdict::Diff)
            .count()
    }
}

fn check(kind: Kind, subject: &str, result: Verdict) -> Check {
    Check {
        result,
        kind,
        subject: subject.to_string(),
        netns: None,
        expected: None,
        found: None,
        detail: None,
    }
}

/// Compares what ctune set (`st`) with the kernel (`obs`) and the files below the roots.
pub fn verify(roots: &Roots, cfg: &Config, st: &State, obs: &Observation) -> Report {
    let mut r = Report::default();
    global_checks(st, obs, &mut r);
    timeout_checks(st, obs, &mut r);
    file_checks(roots, cfg, st, obs, &mut r);
    r
}

fn global_checks(st: &State, obs: &Observation, r: &mut Report) {
    let p = &st.policy;
    let keys: std::collections::BTreeSet<&String> =
        p.applied.keys().chain(&p.operator_held).collect();
    for key in keys {
        let live = obs.global.value(key);
        let found = Some(live.map_or_else(|| "unreadable".into(), |v| v.to_string()));
        let c = if p.operator_held.contains(key) {
            Check {
                found,
                detail: Some("held by the operator: changed after ctune set it; ctune adopted it and leaves it alone until it becomes unsafe".into()),
                ..check(Kind::Global, key, Verdict::Held)
            }
        } else {
            let set = p.applied[key];
            let result = if live == Some(set) {
                Verdict::Ok
            } else {
                Verdict::Diff
            };
            Check {
                expected: Some(set.to_string()),
                found,
                ..check(Kind::Global, key, result)
            }
        };
        r.checks.push(c);
    }
}

fn timeout_checks(st: &State, obs: &Observation, r: &mut Report) {
    for (inode, ns) in &st.policy.namespaces {
        if ns.lowered.is_empty() && ns.held.is_empty() {
            continue;
        }
        let Some(n) = obs.namespaces.iter().find(|n| n.id.inode == *inode) else {
            r.notes.push(format!(
                "namespace {} (inode {inode}) is gone or not watched: its timeouts were not checked",
                printable(&ns.name)
            ));
            continue;
        };
        let found = |key: &str| {
            Some(n.timeouts.get(key).map_or_else(
                || match &n.error {
                    Some(e) => format!("unreadable ({e})"),
                    None => "unreadable".into(),
                },
                |v| v.to_string(),
            ))
        };
        let netns = Some(n.id.name.clone());
        for (key, lowered) in &ns.lowered {
            let live = n.timeouts.get(key);
            let result = if live == Some(&lowered.set) {
                Verdict::Ok
            } else {
                Verdict::Diff
            };
            r.checks.push(Check {
                netns: netns.clone(),
                expected: Some(lowered.set.to_string()),
                found: found(key),
                ..check(Kind::Timeout, key, result)
            });
        }
        for key in &ns.held {
            r.checks.push(Check {
                netns: netns.clone(),
                found: found(key),
                detail: Some("held by the operator: changed while ctune had lowered it; left alone until the pressure ends".into()),
                ..check(Kind::Timeout, key, Verdict::Held)
            });
        }
    }
}

/// The files a step would write for the values ctune manages: its own values, or the
/// live one of a key the operator holds (ctune's file follows an adopted value).
fn file_checks(roots: &Roots, cfg: &Config, st: &State, obs: &Observation, r: &mut Report) {
    let p = &st.policy;
    let managed: Vec<&str> = p
        .applied
        .keys()
        .chain(&p.operator_held)
        .map(String::as_str)
        .collect();
    let changes = p
        .applied
        .iter()
        .filter(|(k, _)| !p.operator_held.contains(*k))
        .map(|(k, v)| Change {
            key: k.clone(),
            target: Target::Global,
            old: obs.global.value(k).unwrap_or(*v),
            new: *v,
            reason: String::new(),
        })
        .collect();
    let plan = Plan {
        ceiling: ctune_core::policy::ceiling_of(obs, cfg),
        changes,
        namespaces: Vec::new(),
        explanations: Vec::new(),
        role: None,
    };
    let (files, notes) = persist::render(roots, cfg.persist.layout, obs, &plan, &managed);
    // Symlinks and unreadable files are checks of their own below, not notes about a
    // diff (the wording is persist's).
    r.notes.extend(
        notes
            .into_iter()
            .filter(|n| !n.contains("diff shown against")),
    );
    r.checks.extend(files.iter().map(file_check));
}

fn file_check(f: &FileUpdate) -> Check {
    let subject = f.path.display().to_string();
    let diff = |found: String, detail: &str| Check {
        expected: Some("ctune's file".into()),
        found: Some(found),
        detail: Some(detail.to_string()),
        ..check(Kind::File, &subject, Verdict::Diff)
    };
    if std::fs::symlink_metadata(&f.path).is_ok_and(|m| m.file_type().is_symlink()) {
        return diff(
            "a symlink".into(),
            "ctune never writes through a symlink: someone else's file is at this path",
        );
    }
    let text = match kfile::read_text(&f.path) {
        Ok(t) => t,
        Err(e) if e.cause == kfile::Cause::Missing => {
            return diff("missing".into(), &format!("for: {}", f.purpose));
        }
        Err(e) => return diff(e.to_string(), "cannot be read"),
    };
    if !persist::is_ours(&text) {
        return diff(
            "a file without ctune's header".into(),
            "someone else's file is at this path",
        );
    }
    if let Err(e) = kfile::trusted(&f.path) {
        return diff(e.to_string(), "another user could rewrite it");
    }
    if text == f.new {
        return check(Kind::File, &subject, Verdict::Ok);
    }
    let (line, expected, found) = first_difference(&f.new, &text);
    Check {
        expected: Some(expected),
        found: Some(found),
        detail: Some(format!("line {line} differs from what ctune would write")),
        ..check(Kind::File, &subject, Verdict::Diff)
    }
}

/// The first line (1-based) where `found` departs from `expected`, and the two lines.
fn first_difference(expected: &str, found: &str) -> (usize, String, String) {
    let (mut e, mut f) = (expected.lines(), found.lines());
    let mut n = 1;
    loop {
        match (e.next(), f.next()) {
            (Some(a), Some(b)) if a == b => n += 1,
            (a, b) => {
                let show = |l: Option<&str>| l.map_or("(end of file)".into(), str::to_string);
                return (n, show(a), show(b));
            }
        }
    }
}

/// `ctune verify`'s text: one line per check, notes, and a summary.
pub fn text(r: &Report, state_file: &Path) -> String {
    let mut out = String::new();
    if r.checks.is_empty() {
        let _ = writeln!(
            out,
            "nothing to verify: ctune has set no value it knows of ({} records none)",
            state_file.display()
        );
    }
    for c in &r.checks {
        let _ = writeln!(out, "{}", line(c));
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {}", printable(n));
    }
    let diffs = r.differences();
    if diffs > 0 {
        let _ = writeln!(
            out,
            "{diffs} of {} checks differ from what ctune set",
            r.checks.len()
        );
    } else if !r.checks.is_empty() {
        let _ = writeln!(out, "all {} checks match what ctune set", r.checks.len());
    }
    out
}

fn line(c: &Check) -> String {
    let mut s = match c.result {
        Verdict::Ok => "ok    ",
        Verdict::Diff => "DIFF  ",
        Verdict::Held => "held  ",
    }
    .to_string();
    s.push_str(&printable(&c.subject));
    match (c.kind, &c.netns) {
        (Kind::Global, _) => s.push_str(" [global]"),
        (Kind::Timeout, Some(n)) => {
            let _ = write!(s, " [netns {}]", printable(n));
        }
        _ => {}
    }
    let shown = |v: &Option<String>| v.as_deref().map(printable);
    match (c.result, shown(&c.expected), shown(&c.found)) {
        (Verdict::Ok, Some(e), _) => {
            let _ = write!(s, ": {e}");
        }
        (Verdict::Diff, Some(e), Some(f)) => {
            let _ = write!(s, ": expected {e}, found {f}");
        }
        (_, _, Some(f)) => {
            let _ = write!(s, ": {f}");
        }
        _ => {}
    }
    if let Some(d) = &c.detail {
        let _ = write!(s, " ({})", printable(d));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_difference_is_named() {
        assert_eq!(
            first_difference("a\nb\nc\n", "a\nx\nc\n"),
            (2, "b".into(), "x".into())
        );
        assert_eq!(
            first_difference("a\n", "a\nextra\n"),
            (2, "(end of file)".into(), "extra".into())
        );
    }

    #[test]
    fn lines_name_expected_and_found() {
        let c = Check {
            expected: Some("40000".into()),
            found: Some("1".into()),
            ..check(Kind::Global, "nf_conntrack_max", Verdict::Diff)
        };
        assert_eq!(
            line(&c),
            "DIFF  nf_conntrack_max [global]: expected 40000, found 1"
        );
        let ok = Check {
            expected: Some("30".into()),
            found: Some("30".into()),
            netns: Some("a\nb".into()),
            ..check(Kind::Timeout, "nf_conntrack_udp_timeout", Verdict::Ok)
        };
        assert_eq!(
            line(&ok),
            "ok    nf_conntrack_udp_timeout [netns a\\nb]: 30"
        );
        let r = Report {
            checks: vec![c, ok],
            notes: Vec::new(),
        };
        assert_eq!(r.differences(), 1);
        assert!(text(&r, Path::new("/s")).ends_with("1 of 2 checks differ from what ctune set\n"));
    }
}
