//! The `ctune` binary: chooses what to run, prints one error chain, maps it to an exit code.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use ctune::cli::{Cli, Command};
use ctune::config;
use ctune::error::{EXIT_USAGE, Error};
use ctune::observe;
use ctune::persist;
use ctune::policy::{self, PolicyState};
use ctune::report;
use ctune::roots::Roots;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.resolved_command() else {
        eprintln!(
            "ctune: nothing to do. Try `ctune --dry-run` to see what ctune would change, or `ctune --help`."
        );
        return ExitCode::from(EXIT_USAGE);
    };
    init_logging();
    match run(&cli, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CTUNE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: &Cli, command: Command) -> Result<(), Error> {
    let roots = Roots::from(&cli.paths);
    let (cfg, source) = config::load(cli.config.as_deref(), &roots.config_file())?;
    let started = Instant::now();
    let obs = observe::observe(&roots, &cfg.namespaces)?;
    tracing::debug!(
        elapsed_us = started.elapsed().as_micros() as u64,
        "observed"
    );
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Plan => {
            let (plan, _) = policy::decide(
                &obs,
                &cfg,
                &PolicyState::default(),
                std::time::Duration::ZERO,
            );
            let (files, file_notes) = persist::render(&roots, &obs, &plan);
            let mut notes = obs.notes.clone();
            notes.extend(file_notes);
            if cli.json {
                let r = report::PlanReport {
                    config: source.path().display().to_string(),
                    observation: &obs,
                    plan: &plan,
                    files: &files,
                    notes: &notes,
                };
                serde_json::to_writer_pretty(&mut stdout, &r).map_err(std::io::Error::from)?;
                writeln!(stdout)?;
            } else {
                write!(
                    stdout,
                    "{}",
                    report::plan_text(&obs, &plan, &files, &notes, &source)
                )?;
            }
        }
        Command::Status => {
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
