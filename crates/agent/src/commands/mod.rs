//! One module per command. Each takes its resolved settings ([`Invocation`]) and the
//! [`Context`] every command starts from, builds its report as data, renders it (text or
//! JSON) to stdout, and returns the exit code; `main` only resolves the command line,
//! chooses, prints one error chain and maps it to the exit code.

pub mod apply;
pub mod boot;
pub mod history;
pub mod plan;
pub mod restore;
pub mod run;
pub mod status;
pub mod top;
pub mod verify;

use ctune_core::model::{Note, NoteKind};
use std::path::Path;

use crate::cli::Invocation;
use crate::error::Error;
use crate::sense::roots::Roots;
use ctune_core::config::{Config, Source};

/// What every command but `history` starts from.
pub struct Context {
    /// Where everything lives.
    pub roots: Roots,
    /// The config in force.
    pub config: Config,
    /// Where it came from.
    pub source: Source,
    /// What could not be used (a broken installed config, for `status`), for the report.
    pub notes: Vec<Note>,
}

/// Runs `inv` below `roots`, with the config `--config` names (or the installed one).
pub fn run(inv: Invocation, roots: Roots, config: Option<&Path>) -> Result<u8, Error> {
    if let Invocation::History { json, since } = inv {
        // Reads only the state directory: works with a broken config too.
        return history::run(&roots, json, since);
    }
    let ctx = match crate::sense::config_file::load(config, &roots.config_file()) {
        Ok((config, source)) => Context {
            roots,
            config,
            source,
            notes: Vec::new(),
        },
        // The diagnostic an operator reaches for runs with a broken installed config too,
        // and says what is wrong with it (a --config given by hand is checked as usual).
        Err(e) if matches!(inv, Invocation::Status { .. }) && config.is_none() => Context {
            source: Source::Embedded,
            config: Config::default(),
            notes: vec![Note::new(
                NoteKind::Config,
                roots.config_file().display().to_string(),
                format!("{e}; status uses the built-in defaults until it is fixed"),
            )],
            roots,
        },
        Err(e) => return Err(e.into()),
    };
    match inv {
        Invocation::Plan { json, sample } => plan::run(&ctx, json, sample),
        Invocation::Status {
            json,
            sample,
            watch,
        } => status::run_command(ctx, json, sample, watch),
        Invocation::Apply { json } => apply::run(ctx, json),
        Invocation::Run => run::run(ctx, config),
        Invocation::Boot => boot::run(&ctx),
        Invocation::Restore { force } => restore::run(&ctx, force),
        Invocation::Verify { json } => verify::run(&ctx, json),
        Invocation::Top(opts) => top::run(
            &ctx.roots,
            &ctx.config,
            &opts,
            &mut std::io::stdout().lock(),
        ),
        Invocation::History { .. } => unreachable!("history runs without a config"),
    }
}
