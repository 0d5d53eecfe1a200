//! The `ctune` binary: chooses what to run, prints one error chain, maps it to an exit code.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use ctune::act::persist;
use ctune::act::{boot, restore, state};
use ctune::cli::{Cli, Command};
use ctune::error::{EXIT_USAGE, Error};
use ctune::report;
use ctune::run::agent_loop as agent;
use ctune::run::engine::{self, Engine};
use ctune::sense::observe;
use ctune::sense::roots::Roots;
use ctune_core::policy::PolicyState;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.resolved_command() else {
        eprintln!(
            "ctune: nothing to do. Try `ctune --dry-run` to see what ctune would change, or `ctune --help`."
        );
        return ExitCode::from(EXIT_USAGE);
    };
    // --dry-run with a command that writes would be a promise broken: refuse it.
    if cli.dry_run && !matches!(command, Command::Plan) {
        eprintln!(
            "ctune: --dry-run only goes with `plan` (or alone); `ctune {}` writes. Run `ctune --dry-run` to see what it would do.",
            command.name()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    if cli.json && !matches!(command, Command::Plan | Command::Status | Command::Apply) {
        eprintln!(
            "ctune: --json is available for plan, status and apply, not `ctune {}`",
            command.name()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    init_logging(command.clone());
    match run(&cli, command) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`): the output ends quietly.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(command: Command) {
    use tracing_subscriber::prelude::*;
    let default = if command == Command::Run {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CTUNE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn run(cli: &Cli, command: Command) -> Result<(), Error> {
    let roots = Roots::from(&cli.paths);
    let (cfg, source) =
        ctune::sense::config_file::load(cli.config.as_deref(), &roots.config_file())?;
    let observe = || -> Result<ctune_core::model::Observation, Error> {
        let started = Instant::now();
        let obs = observe::observe(&roots, &cfg.namespaces)?;
        tracing::debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "observed"
        );
        Ok(obs)
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Plan => {
            let obs = observe()?;
            // What `ctune apply` would do now: decided from ctune's saved state, if any.
            let mut notes = obs.notes.clone();
            let prev = match state::load(&roots) {
                Ok(st) => st.policy,
                Err(e) => {
                    notes.push(format!("{e}; planning as if ctune had never run"));
                    PolicyState::default()
                }
            };
            let preview = engine::preview(&roots, &cfg, &obs, &prev, state::now());
            let (plan, files) = (&preview.plan, &preview.files);
            notes.extend(preview.notes.iter().cloned());
            if cli.json {
                let r = report::PlanReport {
                    config: source.path().display().to_string(),
                    observation: &obs,
                    plan,
                    files,
                    notes: &notes,
                };
                serde_json::to_writer_pretty(&mut stdout, &r).map_err(std::io::Error::from)?;
                writeln!(stdout)?;
            } else {
                write!(
                    stdout,
                    "{}",
                    report::plan_text(&obs, plan, files, &notes, &source)
                )?;
            }
        }
        Command::Apply => {
            let _lock = ctune::act::lock::acquire(&roots)?;
            let mut engine = Engine::new(roots, cfg)?;
            let report = engine.step(state::now())?;
            if cli.json {
                serde_json::to_writer_pretty(&mut stdout, &report::apply_json(&report))
                    .map_err(std::io::Error::from)?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", report::apply_text(&report))?;
            }
            if let Some(summary) = report.failure_summary() {
                return Err(Error::Partial(summary));
            }
        }
        Command::Run => {
            let _lock = ctune::act::lock::acquire(&roots)?;
            let engine = Engine::new(roots.clone(), cfg)?;
            let source = agent::ConfigSource {
                explicit: cli.config.clone(),
                default_path: roots.config_file(),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::run(engine, source))?;
        }
        Command::Boot => {
            let _lock = ctune::act::lock::acquire(&roots)?;
            let items = boot::boot(&roots, &cfg)?;
            let file = roots.etc.join(persist::SYSCTL_FILE);
            write!(stdout, "{}", report::boot_text(items.as_deref(), &file))?;
            if items
                .iter()
                .flatten()
                .any(|i| matches!(i.result, Some(Err(_))))
            {
                return Err(Error::Partial(
                    "persisted values not applied (see above)".into(),
                ));
            }
        }
        Command::Restore { force } => {
            let _lock = ctune::act::lock::acquire(&roots)?;
            let r = restore::restore(&roots, &cfg, force)?;
            write!(stdout, "{}", report::restore_text(&r))?;
            if !r.complete() {
                return Err(Error::Partial(
                    "not everything was restored; the state file is kept so `ctune restore` can finish later".into(),
                ));
            }
        }
        Command::Status => {
            let obs = observe()?;
            let s = report::status(&obs, &cfg);
            if cli.json {
                serde_json::to_writer_pretty(&mut stdout, &s).map_err(std::io::Error::from)?;
                writeln!(stdout)?;
            } else {
                write!(stdout, "{}", report::status_text(&s))?;
            }
        }
    }
    Ok(())
}
