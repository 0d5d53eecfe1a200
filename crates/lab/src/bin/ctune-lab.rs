//! `ctune-lab`: the simulator's front. Runs a traffic scenario against a model of the
//! conntrack table under static limits, kube-proxy's formula and ctune's own decision
//! code, and prints what each lost. Touches nothing on this host.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ctune_lab::simulate;

/// Exit code: a scenario or config that cannot be used (file, line and key named).
const EXIT_USAGE: u8 = 2;
/// Exit code: output or an --out file could not be written.
const EXIT_FAILURE: u8 = 1;

/// ctune's laboratory (not packaged): the simulator.
#[derive(Debug, Parser)]
#[command(
    name = "ctune-lab",
    version,
    after_help = "Examples:\n  ctune-lab simulate scenarios/ramp.yaml                 the table of what each policy lost\n  ctune-lab simulate scenarios/flood.yaml --out target/sim   also a .md table and an .svg timeline\n  ctune-lab simulate scenarios/step.yaml --config ./ctune.yaml   try a config against a scenario\n\nExit codes:\n  0  success\n  1  output could not be written\n  2  invalid command line, scenario or config (file, line and key named)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a traffic scenario (YAML, see scenarios/) against a model of the conntrack
    /// table under static limits, kube-proxy's and ctune's own decision code, and print
    /// what each lost. `--config FILE` replaces the scenario's `ctune_config:`.
    Simulate {
        /// The scenario file.
        scenario: PathBuf,
        /// Also write DIR/<scenario>.md (the table) and DIR/<scenario>.svg (a timeline).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// A ctune config file that replaces the scenario's `ctune_config:`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON instead of the Markdown table, for scripts.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let Command::Simulate {
        scenario,
        out,
        config,
        json,
    } = Cli::parse().command;
    match simulate_cmd(&scenario, out.as_deref(), config.as_deref(), json) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("ctune-lab: error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn simulate_cmd(
    scenario: &std::path::Path,
    out: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
    json: bool,
) -> Result<(), (u8, String)> {
    let usage = |e: &dyn std::fmt::Display| (EXIT_USAGE, e.to_string());
    let failure = |e: &dyn std::fmt::Display| (EXIT_FAILURE, e.to_string());
    let mut sc = simulate::load(scenario).map_err(|e| usage(&e))?;
    if let Some(path) = config {
        sc.ctune = ctune::sense::config_file::load(Some(path), path)
            .map_err(|e| usage(&e))?
            .0;
    }
    let sim = simulate::run(&sc);
    if let Some(dir) = out {
        for path in simulate::write_outputs(&sim.report, dir).map_err(|e| failure(&e))? {
            eprintln!("wrote {}", path.display());
        }
    }
    let mut stdout = std::io::stdout().lock();
    let written = if json {
        serde_json::to_writer_pretty(&mut stdout, &sim.report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout))
    } else {
        write!(stdout, "{}", sim.report.markdown())
    };
    match written {
        // A closed pipe (`| head`) ends output quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| failure(&format!("cannot write output: {e}"))),
    }
}
