//! `ctune run`: the agent, until SIGTERM or SIGINT ([`crate::run::agent_loop`]).

use std::path::Path;

use super::Context;
use crate::error::{EXIT_OK, Error};
use crate::run::agent_loop::{self, ConfigSource};
use crate::run::engine::Engine;

/// Takes the lock and runs the agent on a current-thread runtime (the metrics server has
/// a thread of its own). `config`: `--config`, what a SIGHUP reloads.
pub fn run(ctx: Context, config: Option<&Path>) -> Result<u8, Error> {
    let _lock = crate::act::lock::acquire(&ctx.roots)?;
    let source = ConfigSource {
        explicit: config.map(Path::to_path_buf),
        default_path: ctx.roots.config_file(),
    };
    let engine = Engine::new(ctx.roots, ctx.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(agent_loop::run(engine, source))?;
    Ok(EXIT_OK)
}
