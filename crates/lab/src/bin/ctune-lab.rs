//! `ctune-lab`: the simulator's front. Runs a traffic scenario against a model of the
//! conntrack table under ctune's own decision code and the peers' rules
//! (`ctune_lab::peers`), and prints what each harmed. Touches nothing on this host.

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ctune_lab::scenario_report::{Format, ScenarioReport};
use ctune_lab::simulate;

// ctune's exit codes (one table, in ctune::error): 2 for a scenario or config that
// cannot be used, 4 for output that could not be written.
use ctune::error::{EXIT_PARTIAL, EXIT_USAGE};

/// ctune's laboratory (not packaged): the simulator.
#[derive(Debug, Parser)]
#[command(
    name = "ctune-lab",
    version,
    after_help = "Examples:\n  ctune-lab simulate scenarios/ramp.yaml                 the table of what each policy lost\n  ctune-lab simulate scenarios/ramp.yaml --format md     the same as Markdown, for docs\n  ctune-lab simulate scenarios/flood.yaml --out target/sim   also a .md table and an .svg timeline\n  ctune-lab simulate scenarios/step.yaml --config ./ctune.yaml   try a config against a scenario\n\nExit codes (ctune's):\n  0  success\n  2  invalid command line, scenario or config (file, line and key named)\n  4  output or an --out file could not be written"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a traffic scenario (YAML, see scenarios/) against a model of the conntrack
    /// table under ctune's own decision code and every peer's rule (or the scenario's
    /// `policies:`), and print what each harmed: flows lost or evicted, sessions broken.
    /// `--config FILE` replaces the scenario's `ctune_config:`.
    Simulate {
        /// The scenario file.
        scenario: PathBuf,
        /// Also write DIR/<scenario>.md (the table) and DIR/<scenario>.svg (a timeline).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// A ctune config file that replaces the scenario's `ctune_config:`.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// How to print: an aligned table (text), Markdown (md) or JSON (json).
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
        /// The same as --format json.
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
    /// Run ctune alone on each scenario with composition sampling
    /// (`agent.composition_interval`, 1m unless the scenario sets another) and without it
    /// (`0s`), and print the flows each harmed (lost + evicted) as a Markdown table.
    CompareComposition {
        /// The scenario files.
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Run each scenario under every policy and compare each peer with ctune on both
    /// harms (flows harmed, sessions broken) at equal memory: where a peer's table took
    /// more than ctune's, ctune is run again with that much. A Markdown table per
    /// scenario. A `.json` report of `ctune-bench` is compared as it is (no reruns).
    ComparePeers {
        /// The scenario files (.yaml), or saved reports (.json).
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
        /// Also write DIR/peers-<scenario>.svg (live-peers-<scenario>.svg for a live
        /// report): both harms per policy.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// How `simulate` prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OutputFormat {
    /// Columns aligned with spaces.
    Text,
    /// A Markdown table.
    Md,
    /// The whole report, with the timelines.
    Json,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Simulate {
            scenario,
            out,
            config,
            format,
            json,
        } => {
            let format = if json { OutputFormat::Json } else { format };
            simulate_cmd(&scenario, out.as_deref(), config.as_deref(), format)
        }
        Command::CompareComposition { scenarios } => compare_cmd(&scenarios),
        Command::ComparePeers { scenarios, out } => compare_peers_cmd(&scenarios, out.as_deref()),
    };
    match result {
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
    format: OutputFormat,
) -> Result<(), (u8, String)> {
    let usage = |e: &dyn std::fmt::Display| (EXIT_USAGE, e.to_string());
    let failure = |e: &dyn std::fmt::Display| (EXIT_PARTIAL, e.to_string());
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
    let written = match format {
        OutputFormat::Json => serde_json::to_writer_pretty(&mut stdout, &sim.report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(stdout)),
        OutputFormat::Md => write!(stdout, "{}", sim.report.markdown()),
        OutputFormat::Text => write!(stdout, "{}", sim.report.table(Format::Text)),
    };
    match written {
        // A closed pipe (`| head`) ends output quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| failure(&format!("cannot write output: {e}"))),
    }
}

fn compare_cmd(scenarios: &[PathBuf]) -> Result<(), (u8, String)> {
    let mut rows = Vec::new();
    for path in scenarios {
        let sc = simulate::load(path).map_err(|e| (EXIT_USAGE, e.to_string()))?;
        rows.push(simulate::compare_composition(&sc));
    }
    let table = simulate::CompositionComparison::markdown(&rows);
    let mut stdout = std::io::stdout().lock();
    match write!(stdout, "{table}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| (EXIT_PARTIAL, format!("cannot write output: {e}"))),
    }
}

/// A scenario file simulated and compared, or a saved report (`ctune-bench`'s JSON)
/// compared as it is.
fn peers_of(path: &std::path::Path) -> Result<simulate::PeerComparison, (u8, String)> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| (EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?;
        let report: ScenarioReport = serde_json::from_str(&text).map_err(|e| {
            (
                EXIT_USAGE,
                format!("{}: not a scenario report: {e}", path.display()),
            )
        })?;
        return Ok(simulate::PeerComparison::of_report(&report));
    }
    let sc = simulate::load(path).map_err(|e| (EXIT_USAGE, e.to_string()))?;
    let sim = simulate::run(&sc);
    Ok(simulate::compare_peers(&sc, &sim))
}

fn compare_peers_cmd(
    scenarios: &[PathBuf],
    dir: Option<&std::path::Path>,
) -> Result<(), (u8, String)> {
    let mut out = String::new();
    for path in scenarios {
        let cmp = peers_of(path)?;
        out.push_str(&cmp.markdown());
        out.push('\n');
        if let Some(dir) = dir {
            let name: String = cmp.scenario.chars().take_while(|c| *c != ' ').collect();
            let prefix = if cmp.scenario.ends_with("(live)") {
                "live-peers"
            } else {
                "peers"
            };
            let svg = dir.join(format!("{prefix}-{name}.svg"));
            std::fs::create_dir_all(dir)
                .map_err(|e| e.to_string())
                .and_then(|()| cmp.plot_svg(&svg))
                .map_err(|e| (EXIT_PARTIAL, format!("cannot write {}: {e}", svg.display())))?;
            eprintln!("wrote {}", svg.display());
        }
    }
    let mut stdout = std::io::stdout().lock();
    match write!(stdout, "{out}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| (EXIT_PARTIAL, format!("cannot write output: {e}"))),
    }
}
