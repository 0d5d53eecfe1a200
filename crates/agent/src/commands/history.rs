//! `ctune history`: the table (or JSON array) of the changes ctune applied; what was
//! skipped is said on stderr, so the JSON stays whole. Reads only the state directory.

use std::io::Write;
use std::time::Duration;

use crate::act::history;
use crate::error::{EXIT_OK, Error};
use crate::sense::roots::Roots;

/// Prints the changes recorded `since` ago (all when None).
pub fn run(roots: &Roots, json: bool, since: Option<Duration>) -> Result<u8, Error> {
    let h = history::read(roots).map_err(Error::History)?;
    let cutoff = since.map_or(0, |d| {
        std::time::SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_secs())
    });
    let records = h.since(cutoff);
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &records).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
    } else if records.is_empty() {
        writeln!(
            stdout,
            "no changes recorded{} in {}",
            since.map_or(String::new(), |d| format!(
                " in the last {}",
                humantime::format_duration(d)
            )),
            history::path(roots).display()
        )?;
    } else {
        write!(stdout, "{}", history::text(&records))?;
    }
    if let Some(note) = h.skipped_note() {
        eprintln!("ctune: note: {note}");
    }
    Ok(EXIT_OK)
}
