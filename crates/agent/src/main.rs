//! The `ctune` binary: resolves the command line, chooses what to run
//! ([`ctune::commands`]), prints one error chain, maps it to an exit code.

use clap::Parser;
use std::process::ExitCode;

use ctune::cli::Cli;
use ctune::error::{EXIT_USAGE, Error};
use ctune::sense::roots::Roots;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let invocation = match cli.resolve() {
        Ok(i) => i,
        Err(refusal) => {
            eprintln!("ctune: {refusal}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(invocation.is_agent());
    let roots = Roots::from(&cli.paths);
    match ctune::commands::run(invocation, roots, cli.config.as_deref()) {
        Ok(code) => ExitCode::from(code),
        // A reader that stopped reading (`| head`): the output ends quietly.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to journald under systemd, else to stderr; the agent at info, the one-shot
/// commands at warn, unless `CTUNE_LOG` says otherwise.
fn init_logging(agent: bool) {
    use tracing_subscriber::prelude::*;
    let default = if agent { "info" } else { "warn" };
    // CTUNE_LOG: a level (`debug`) or `target=level` pairs (`ctune=debug,hyper=warn`),
    // over the command's default for every other target, so a typo (`verbose`, a span
    // directive) never silences ctune's warnings and errors; a value that does not parse
    // is the default alone. `Targets` rather than `EnvFilter`: the latter's span and field
    // directives need the regex crates, 262 KB of the router binary (docs/packages.md,
    // "Other machines").
    let fallback: tracing_subscriber::filter::Targets =
        default.parse().expect("a level is a valid filter");
    let filter = match std::env::var("CTUNE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
    {
        Some(t) if t.default_level().is_none() => t.with_default(
            fallback
                .default_level()
                .expect("the fallback is a default level"),
        ),
        Some(t) => t,
        None => fallback,
    };
    // Under systemd, stderr is connected to the journal (JOURNAL_STREAM): log there
    // natively, with fields; anywhere else, to stderr.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journald.with_syslog_identifier("ctune".into()))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .try_init();
}
