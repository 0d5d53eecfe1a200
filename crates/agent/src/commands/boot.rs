//! `ctune boot`: before traffic, the persisted max and hash size put in force and read
//! back ([`crate::act::boot`]).

use std::io::Write;

use super::Context;
use crate::act::{boot, persist};
use crate::error::{EXIT_OK, Error};
use crate::report;

/// Takes the lock and applies what `/etc/sysctl.d/99-ctune.conf` holds.
pub fn run(ctx: &Context) -> Result<u8, Error> {
    let _lock = crate::act::lock::acquire(&ctx.roots)?;
    let items = boot::boot(&ctx.roots, &ctx.config)?;
    let file = ctx.roots.etc.join(persist::SYSCTL_FILE);
    write!(
        std::io::stdout().lock(),
        "{}",
        report::boot_text(items.as_deref(), &file)
    )?;
    let failed = items
        .iter()
        .flatten()
        .any(|i| matches!(i.result, Some(Err(_))));
    if failed {
        return Err(Error::Partial(
            "persisted values not applied (see above)".into(),
        ));
    }
    Ok(EXIT_OK)
}
