//! `ctune verify`: are the values and files ctune set still in force? Exit 0 when all
//! match, 7 when not, each difference named ([`crate::act::verify`]).

use std::io::Write;

use super::Context;
use crate::act::{state, verify};
use crate::error::{EXIT_DIFFERS, EXIT_OK, Error};

/// Compares what ctune set with what is there.
pub fn run(ctx: &Context, json: bool) -> Result<u8, Error> {
    let st = state::load(&ctx.roots)?;
    let obs = crate::sense::observe::observe(&ctx.roots, &ctx.config.namespaces)?;
    let mut report = verify::verify(&ctx.roots, &ctx.config, &st, &obs);
    report
        .notes
        .splice(0..0, obs.notes.iter().map(|n| n.text.clone()));
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &report.checks).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
        for n in &report.notes {
            eprintln!("ctune: note: {}", ctune_core::units::printable(n));
        }
    } else {
        write!(
            stdout,
            "{}",
            verify::text(&report, &state::path(&ctx.roots))
        )?;
    }
    Ok(if report.differences() > 0 {
        EXIT_DIFFERS
    } else {
        EXIT_OK
    })
}
