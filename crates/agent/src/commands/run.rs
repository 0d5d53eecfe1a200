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
    raise_open_files();
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

/// The agent keeps two descriptors per watched namespace (its count for the probe, its
/// `/proc/sys/net/netfilter` directory: `crate::sense::nsdir`); a node of a thousand pods
/// needs more than the 1024 that systemd gives a service by default. The soft limit is
/// raised towards the hard one (what systemd's own documentation asks of programs that
/// need more), at most to [`OPEN_FILES`].
fn raise_open_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let wanted = hard.min(OPEN_FILES);
    if soft < wanted {
        match setrlimit(Resource::RLIMIT_NOFILE, wanted, hard) {
            Ok(()) => tracing::debug!("open files: soft limit raised from {soft} to {wanted}"),
            Err(e) => tracing::debug!("open files: soft limit stays {soft}: {e}"),
        }
    }
}

/// Enough for [`crate::sense::nsdir::MAX_DIRS`] namespaces, twice, and the rest.
const OPEN_FILES: u64 = 16384;
