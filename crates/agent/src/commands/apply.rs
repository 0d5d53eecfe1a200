//! `ctune apply`: one step for real (the controller in `Mode::Apply`: a due composition
//! sample first), every value read back, persisted; what changed, printed.

use std::io::Write;

use super::Context;
use crate::act::state;
use crate::error::{EXIT_OK, Error};
use crate::report;
use crate::run::engine::Engine;

/// Takes the lock and one step; exit 4 when something did not take effect.
pub fn run(ctx: Context, json: bool) -> Result<u8, Error> {
    let _lock = crate::act::lock::acquire(&ctx.roots)?;
    let mode = ctune_core::controller::Mode::Apply;
    let mut engine = Engine::with_mode(ctx.roots, ctx.config, mode)?;
    let report = engine.step(state::now())?;
    let mut stdout = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut stdout, &report::apply_json(&report))
            .map_err(std::io::Error::from)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", report::apply_text(&report))?;
    }
    match report.failure_summary() {
        Some(summary) => Err(Error::Partial(summary)),
        None => Ok(EXIT_OK),
    }
}
