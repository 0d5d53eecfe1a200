//! The `ctune` binary: chooses what to run, prints one error chain, maps it to an exit code.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

use ctune::act::persist;
use ctune::act::{boot, history, restore, state, verify};
use ctune::cli::{Cli, Command};
use ctune::error::{EXIT_USAGE, Error};
use ctune::report;
use ctune::run::agent_loop as agent;
use ctune::run::engine::{self, Engine};
use ctune::sense::roots::Roots;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.resolved_command() else {
        eprintln!(
            "ctune: nothing to do. Try `ctune --dry-run` to see what ctune would change, or `ctune --help`."
        );
        return ExitCode::from(EXIT_USAGE);
    };
    if let Some(refusal) = refusal(&cli, &command) {
        eprintln!("ctune: {refusal}");
        return ExitCode::from(EXIT_USAGE);
    }
    init_logging(command.clone());
    match run(&cli, command) {
        Ok(code) => ExitCode::from(code),
        // A reader that stopped reading (`| head`): the output ends quietly.
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Flags that do not go with the command: said before anything is read.
fn refusal(cli: &Cli, command: &Command) -> Option<String> {
    // --dry-run with a command that writes would be a promise broken.
    if cli.dry_run && !command.read_only() {
        return Some(format!(
            "--dry-run goes with `plan`, `status`, `history`, `verify` and `top` (or alone), which change nothing; `ctune {}` writes. Run `ctune --dry-run` to see what it would do.",
            command.name()
        ));
    }
    if cli.json
        && matches!(
            command,
            Command::Run | Command::Boot | Command::Restore { .. }
        )
    {
        return Some(format!(
            "--json is available for plan, status, apply, history, verify and top, not `ctune {}`",
            command.name()
        ));
    }
    let sampled = matches!(command, Command::Plan | Command::Status { .. });
    if cli.sample.is_some() && !sampled {
        return Some(format!(
            "--sample is for plan and status, not `ctune {}`",
            command.name()
        ));
    }
    None
}

fn status(
    cli: &Cli,
    roots: &Roots,
    cfg: &ctune_core::config::Config,
    notes: Vec<String>,
    watch: bool,
) -> Result<u8, Error> {
    let opts = ctune::status::Options {
        sample: cli.sample.unwrap_or(ctune::cli::DEFAULT_SAMPLE),
        json: cli.json,
        watch,
    };
    ctune::status::run(roots, cfg, notes, &opts, &mut std::io::stdout().lock())
}

/// `ctune history`: the table (or JSON array) of the changes ctune applied; what was
/// skipped is said on stderr, so the JSON stays whole.
fn history(cli: &Cli, roots: &Roots, since: Option<std::time::Duration>) -> Result<u8, Error> {
    let h = history::read(roots).map_err(Error::History)?;
    let cutoff = since.map_or(0, |d| {
        std::time::SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_secs())
    });
    let records = h.since(cutoff);
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut stdout, &records).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
    } else if records.is_empty() {
        writeln!(
            stdout,
            "no changes recorded{} in {}",
            since.map_or(String::new(), |d| format!(
                " in the last {}",
                humantime::format_duration(d)
            )),
            history::path(roots).display()
        )?;
    } else {
        write!(stdout, "{}", history::text(&records))?;
    }
    if let Some(note) = h.skipped_note() {
        eprintln!("ctune: note: {note}");
    }
    Ok(ctune::error::EXIT_OK)
}

/// `ctune verify`: exit 0 when everything ctune set is in force, 7 when not.
fn verify(cli: &Cli, roots: &Roots, cfg: &ctune_core::config::Config) -> Result<u8, Error> {
    let st = state::load(roots)?;
    let obs = ctune::sense::observe::observe(roots, &cfg.namespaces)?;
    let mut report = verify::verify(roots, cfg, &st, &obs);
    report.notes.splice(0..0, obs.notes.iter().cloned());
    let mut stdout = std::io::stdout().lock();
    if cli.json {
        serde_json::to_writer_pretty(&mut stdout, &report.checks).map_err(std::io::Error::from)?;
        writeln!(stdout)?;
        for n in &report.notes {
            eprintln!("ctune: note: {}", ctune_core::units::printable(n));
        }
    } else {
        write!(stdout, "{}", verify::text(&report, &state::path(roots)))?;
    }
    Ok(if report.differences() > 0 {
        ctune::error::EXIT_DIFFERS
    } else {
        ctune::error::EXIT_OK
    })
}

fn init_logging(command: Command) {
    use tracing_subscriber::prelude::*;
    let default = if command == Command::Run {
        "info"
    } else {
        "warn"
    };
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

fn run(cli: &Cli, command: Command) -> Result<u8, Error> {
    let roots = Roots::from(&cli.paths);
    if let Command::History { since } = command {
        // Reads only the state directory: works with a broken config too.
        return history(cli, &roots, since);
    }
    let sample = cli.sample.unwrap_or(ctune::cli::DEFAULT_SAMPLE);
    let loaded = ctune::sense::config_file::load(cli.config.as_deref(), &roots.config_file());
    let (cfg, source) = match loaded {
        Ok(loaded) => loaded,
        // The diagnostic an operator reaches for runs with a broken installed config too,
        // and says what is wrong with it (a --config given by hand is checked as usual).
        Err(e) if matches!(command, Command::Status { .. }) && cli.config.is_none() => {
            let note = format!("{e}; status uses the built-in defaults until it is fixed");
            let cfg = ctune_core::config::Config::default();
            return status(
                cli,
                &roots,
                &cfg,
                vec![note],
                command == (Command::Status { watch: true }),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let mut stdout = std::io::stdout().lock();
    match command {
        Command::Plan => {
            // What `ctune apply` would do now: decided from ctune's saved state, if any,
            // with the counters' rise over the sample.
            let mut notes = Vec::new();
            let prev = match state::load(&roots) {
                Ok(st) => st,
                Err(e) => {
                    notes.push(format!("{e}; planning as if ctune had never run"));
                    state::State::default()
                }
            };
            let mut sampler = engine::Sampler::start(&roots, &cfg, &prev, !sample.is_zero())?;
            std::thread::sleep(sample);
            let engine::Sample {
                observation: obs,
                preview,
                ..
            } = sampler.read()?;
            notes.splice(0..0, obs.notes.iter().cloned());
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
            let mut engine = Engine::with_mode(roots, cfg, ctune_core::controller::Mode::Apply)?;
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
        Command::Status { watch } => return status(cli, &roots, &cfg, Vec::new(), watch),
        Command::Verify => return verify(cli, &roots, &cfg),
        Command::History { since } => return history(cli, &roots, since),
        Command::Top {
            netns,
            top,
            max_entries,
            all,
            max_time,
            max_keys,
        } => {
            let opts = ctune::top::Options {
                netns,
                json: cli.json,
                top,
                limits: ctune::sense::ctnetlink::Limits {
                    max_entries: if all { u64::MAX } else { max_entries },
                    max_time,
                },
                max_keys,
            };
            return ctune::top::run(&roots, &cfg, &opts, &mut stdout);
        }
    }
    Ok(ctune::error::EXIT_OK)
}
