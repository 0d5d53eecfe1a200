//! ctune's record of what it changed: `<state_dir>/history.jsonl`, one JSON line per
//! change that took effect (written and read back), read by `ctune history`.
//!
//! - Crash-safe: a step's lines go in one write on a file opened `O_APPEND`, each line
//!   complete with its '\n'. A crash or power loss can leave at most a torn last line;
//!   the reader skips (and counts) any line that does not parse, and the next append
//!   starts on a new line, so a torn line never swallows a whole one.
//! - Bounded: an append that would take the file past [`ROTATE_BYTES`] first renames it
//!   to `history.jsonl.1` (replacing the older one): the two hold at most about 2 MiB,
//!   well within what the reader reads ([`kfile::MAX_TEXT_BYTES`] per file).
//! - Mode 0644, as `state.json`: an unprivileged monitoring user may run `ctune
//!   history` as it runs `status`; nothing in it is more private than what `status` and
//!   /proc show. Never written through a symlink or a hard link, nor into a file another
//!   user could write; read back only if [`kfile::trusted`].
//! - Kept by `ctune restore`: it is the record of what happened, including what was
//!   undone. Purging the package removes /var/lib/ctune, and the history with it.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::act::apply::Outcome;
use crate::act::atomic::WriteError;
use crate::sense::kfile::{self, Cause, FileError};
use crate::sense::roots::Roots;
use ctune_core::plan::{Plan, Target};
use ctune_core::tunables;
use ctune_core::units::{fmt_secs, printable};

/// The history file's name in the state directory.
pub const FILE: &str = "history.jsonl";
/// The previous history file's name, after rotation.
pub const ROTATED: &str = "history.jsonl.1";
/// The size past which the file is rotated before an append.
pub const ROTATE_BYTES: u64 = 1 << 20;
/// The widest reason `ctune history` prints in its table (whole with `--json`).
pub const REASON_WIDTH: usize = 60;

/// One applied change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When it was applied, RFC 3339 in UTC, to the second.
    pub time: String,
    /// The same instant in seconds since the Unix epoch.
    pub unix: u64,
    /// The namespace of a timeout; null for a global key (max, buckets).
    pub netns: Option<String>,
    /// That namespace's inode (its identity while it lives); null for a global key.
    pub inode: Option<u64>,
    /// The sysctl.
    pub key: String,
    /// The value before.
    pub old: u64,
    /// The value ctune set (and read back).
    pub new: u64,
    /// Why, as `ctune apply` printed it.
    pub reason: String,
    /// count / max when the change was decided (before it took effect): for a global
    /// key the busiest namespace's, for a timeout its own namespace's; null when the
    /// count could not be read.
    pub utilisation: Option<f64>,
}

/// The history file below the state root.
pub fn path(roots: &Roots) -> PathBuf {
    roots.state.join(FILE)
}

/// The rotated history file below the state root.
pub fn rotated_path(roots: &Roots) -> PathBuf {
    roots.state.join(ROTATED)
}

/// The records of a step's changes that took effect, stamped `at`.
pub fn records(plan: &Plan, outcomes: &[Outcome], at: SystemTime) -> Vec<Record> {
    let unix = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let time =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
            .to_string();
    let busiest = plan
        .namespaces
        .iter()
        .filter_map(|v| v.utilisation)
        .reduce(f64::max);
    outcomes
        .iter()
        .filter(|o| o.result.is_ok())
        .map(|o| {
            let ch = &o.change;
            let (netns, utilisation) = match &ch.target {
                Target::Global => (None, busiest),
                Target::Namespace { netns } => (
                    Some(netns),
                    plan.namespaces
                        .iter()
                        .find(|v| v.netns.inode == netns.inode)
                        .and_then(|v| v.utilisation),
                ),
            };
            Record {
                time: time.clone(),
                unix,
                netns: netns.map(|n| n.name.clone()),
                inode: netns.map(|n| n.inode),
                key: ch.key.clone(),
                old: ch.old,
                new: ch.new,
                reason: ch.reason.clone(),
                utilisation,
            }
        })
        .collect()
}

/// Appends the changes of a step that took effect (nothing is touched when none did).
pub fn record_step(
    roots: &Roots,
    plan: &Plan,
    outcomes: &[Outcome],
    at: SystemTime,
) -> Result<(), WriteError> {
    append(roots, &records(plan, outcomes, at))
}

fn err<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        path: path.to_path_buf(),
        step,
        source,
    }
}

fn refused(path: &Path, step: &'static str, errno: nix::errno::Errno) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        step,
        source: io::Error::from_raw_os_error(errno as i32),
    }
}

/// Appends `records`, one JSON line each, in one write; rotates first when the file
/// would pass [`ROTATE_BYTES`].
pub fn append(roots: &Roots, records: &[Record]) -> Result<(), WriteError> {
    if records.is_empty() {
        return Ok(());
    }
    let path = path(roots);
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r).expect("a record serializes"));
        lines.push('\n');
    }
    if !roots.state.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&roots.state)
            .map_err(err(&path, "create directory"))?;
    }
    let rotated = rotate_if_full(roots, &path, lines.len() as u64)?;
    let existed = path.exists();
    let file = open_for_append(&path)?;
    // A torn line left by a crash has no '\n': end it, so the first new line is whole.
    let len = file.metadata().map_err(err(&path, "inspect"))?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.read_exact_at(&mut last, len - 1)
            .map_err(err(&path, "read the last byte"))?;
    }
    if last[0] != b'\n' {
        lines.insert(0, '\n');
    }
    (&file)
        .write_all(lines.as_bytes())
        .map_err(err(&path, "append"))?;
    file.sync_data().map_err(err(&path, "fsync"))?;
    if rotated || !existed {
        File::open(&roots.state)
            .and_then(|d| d.sync_all())
            .map_err(err(&path, "fsync directory"))?;
    }
    Ok(())
}

/// Renames a file that would pass the bound with `adding` more bytes to
/// [`ROTATED`]; returns whether it did.
fn rotate_if_full(roots: &Roots, path: &Path, adding: u64) -> Result<bool, WriteError> {
    let len = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(path, "inspect")(e)),
        Ok(m) if !m.is_file() => {
            return Err(refused(
                path,
                "not a regular file (a symlink?), refusing to append",
                nix::errno::Errno::ELOOP,
            ));
        }
        Ok(m) => m.len(),
    };
    if len == 0 || len + adding <= ROTATE_BYTES {
        return Ok(false);
    }
    fs::rename(path, rotated_path(roots)).map_err(err(path, "rotate"))?;
    Ok(true)
}

/// Opens the history for appending: never through a symlink, never a FIFO or device,
/// never a file with other links or one another user could write.
fn open_for_append(path: &Path) -> Result<File, WriteError> {
    use nix::fcntl::OFlag;
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(err(path, "open for append"))?;
    let m = file.metadata().map_err(err(path, "inspect"))?;
    let euid = nix::unistd::geteuid().as_raw();
    let step = if !m.is_file() {
        Some("not a regular file, refusing to append")
    } else if m.nlink() != 1 {
        Some("has other hard links, refusing to append")
    } else if m.uid() != 0 && m.uid() != euid {
        Some("owned by another user, refusing to append")
    } else if m.mode() & 0o022 != 0 {
        Some("writable by its group or others, refusing to append (chmod go-w)")
    } else {
        None
    };
    match step {
        Some(step) => Err(refused(path, step, nix::errno::Errno::EPERM)),
        None => Ok(file),
    }
}

/// The history as read: the records in the order they were written, oldest first.
#[derive(Debug, Default)]
pub struct History {
    /// Every record that parsed.
    pub records: Vec<Record>,
    /// Per file, the lines that did not parse (a line torn by a crash, or not ctune's).
    pub skipped: Vec<(PathBuf, usize)>,
}

impl History {
    /// The records at or after `unix` seconds.
    pub fn since(&self, unix: u64) -> Vec<&Record> {
        self.records.iter().filter(|r| r.unix >= unix).collect()
    }

    /// What was skipped, for the operator (None when nothing was).
    pub fn skipped_note(&self) -> Option<String> {
        let parts: Vec<String> = self
            .skipped
            .iter()
            .map(|(p, n)| format!("{n} line(s) of {}", p.display()))
            .collect();
        (!parts.is_empty()).then(|| {
            format!(
                "skipped {}: not a whole record (a line torn by a crash or power loss, or not written by ctune)",
                parts.join(" and ")
            )
        })
    }
}

/// Reads both history files, the rotated one first. Missing files are an empty
/// history; a file another user could write is refused, like the state.
pub fn read(roots: &Roots) -> Result<History, FileError> {
    let mut h = History::default();
    for p in [rotated_path(roots), path(roots)] {
        let text = match kfile::trusted(&p)
            .map_err(|e| FileError::io(&p, &e))
            .and_then(|()| kfile::read_text(&p))
        {
            Ok(t) => t,
            Err(e) if e.cause == Cause::Missing => continue,
            Err(e) => return Err(e),
        };
        let skipped = parse_into(&text, &mut h.records);
        if skipped > 0 {
            h.skipped.push((p, skipped));
        }
    }
    Ok(h)
}

/// Parses the lines of one file into `into`; returns how many did not parse.
fn parse_into(text: &str, into: &mut Vec<Record>) -> usize {
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => into.push(r),
            Err(_) => skipped += 1,
        }
    }
    skipped
}

/// `ctune history`'s table: TIME, NETNS, KEY, OLD, NEW, REASON; names and reasons with
/// control characters escaped, reasons cut to [`REASON_WIDTH`].
pub fn text(records: &[&Record]) -> String {
    let rows: Vec<[String; 6]> = records.iter().map(|r| row(r)).collect();
    let header = ["TIME", "NETNS", "KEY", "OLD", "NEW", "REASON"].map(String::from);
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn row(r: &Record) -> [String; 6] {
    let value = |v: u64| {
        if tunables::is_timeout_key(&r.key) {
            fmt_secs(v)
        } else {
            v.to_string()
        }
    };
    let netns = r
        .netns
        .as_deref()
        .map_or_else(|| "[global]".to_string(), |n| cut(&printable(n), 24));
    [
        printable(&r.time),
        netns,
        printable(&r.key),
        value(r.old),
        value(r.new),
        cut(&printable(&r.reason), REASON_WIDTH),
    ]
}

/// `s` cut to `n` characters, an ellipsis marking the cut.
fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_string();
    }
    let mut c: String = s.chars().take(n.saturating_sub(3)).collect();
    c.push_str("...");
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn roots(dir: &Path) -> Roots {
        Roots::all_under(dir)
    }

    fn record(unix: u64, reason: &str) -> Record {
        Record {
            time: humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(unix),
            )
            .to_string(),
            unix,
            netns: None,
            inode: None,
            key: tunables::MAX.into(),
            old: 1,
            new: 2,
            reason: reason.into(),
            utilisation: Some(0.9),
        }
    }

    #[test]
    fn appends_and_reads_back_with_a_utc_time() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        append(&r, &[record(86_400 * 365, "a")]).unwrap();
        append(&r, &[record(86_400 * 366, "b")]).unwrap();
        let h = read(&r).unwrap();
        assert_eq!(h.records.len(), 2);
        assert_eq!(h.records[0].time, "1971-01-01T00:00:00Z");
        assert_eq!(h.since(86_400 * 366).len(), 1);
        let mode = fs::metadata(path(&r)).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0);
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_next_append_starts_a_new_line() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        append(&r, &[record(1, "a")]).unwrap();
        let mut f = OpenOptions::new().append(true).open(path(&r)).unwrap();
        f.write_all(br#"{"time":"1970-01-01T00:00:02Z","unix":2,"ke"#)
            .unwrap();
        append(&r, &[record(3, "c")]).unwrap();
        let h = read(&r).unwrap();
        assert_eq!(h.records.iter().map(|r| r.unix).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(h.skipped, [(path(&r), 1)]);
        assert!(h.skipped_note().unwrap().contains("1 line(s)"));
    }

    #[test]
    fn rotates_past_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        fs::create_dir_all(&r.state).unwrap();
        fs::write(path(&r), "x".repeat(ROTATE_BYTES as usize) + "\n").unwrap();
        append(&r, &[record(5, "new")]).unwrap();
        assert_eq!(
            fs::metadata(rotated_path(&r)).unwrap().len(),
            ROTATE_BYTES + 1
        );
        let h = read(&r).unwrap();
        assert_eq!(h.records.len(), 1);
        assert_eq!(h.skipped, [(rotated_path(&r), 1)]);
    }

    #[test]
    fn refuses_a_symlink_and_a_file_others_may_write() {
        let d = tempfile::tempdir().unwrap();
        let r = roots(d.path());
        fs::create_dir_all(&r.state).unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, path(&r)).unwrap();
        assert!(append(&r, &[record(1, "a")]).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        fs::remove_file(path(&r)).unwrap();
        append(&r, &[record(1, "a")]).unwrap();
        fs::set_permissions(path(&r), fs::Permissions::from_mode(0o666)).unwrap();
        let e = append(&r, &[record(2, "b")]).unwrap_err().to_string();
        assert!(e.contains("chmod go-w"), "{e}");
        let e = read(&r).unwrap_err().to_string();
        assert!(e.contains("chmod go-w"), "{e}");
    }

    #[test]
    fn the_table_escapes_and_cuts() {
        let mut rec = record(0, &"x".repeat(100));
        rec.netns = Some("evil\x1b[2J".into());
        let t = text(&[&rec]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIME "), "{t}");
        assert!(lines[1].contains("evil\\u{1b}[2J") && lines[1].ends_with("..."));
        assert!(!t.contains('\x1b'));
    }
}
