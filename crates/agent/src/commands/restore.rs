//! `ctune restore`: the explicit undo ([`crate::act::restore`]).

use std::io::Write;

use super::Context;
use crate::act::restore;
use crate::error::{EXIT_OK, Error};
use crate::report;

/// Takes the lock and puts back the operator's values; exit 4 when not everything was.
pub fn run(ctx: &Context, force: bool) -> Result<u8, Error> {
    let _lock = crate::act::lock::acquire(&ctx.roots)?;
    let r = restore::restore(&ctx.roots, &ctx.config, force)?;
    write!(std::io::stdout().lock(), "{}", report::restore_text(&r))?;
    if !r.complete() {
        return Err(Error::Partial(
            "not everything was restored; the state file is kept so `ctune restore` can finish later".into(),
        ));
    }
    Ok(EXIT_OK)
}
