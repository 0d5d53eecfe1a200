//! `ctune-bench`: the live benchmark. Runs traffic scenarios through network namespaces
//! it creates, under ctune and the peers it is measured against (`ctune_lab::peers`) one
//! after another from the same start, and writes a markdown table and a timeline plot
//! per scenario. Root only.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

use ctune_lab::livebench::{self, Policy, Topology};
use ctune_lab::scenario_report::ScenarioReport;
use ctune_lab::traffic::Peer;

/// Live benchmark of conntrack policies (root; namespaces only; restores global values).
#[derive(Debug, Parser)]
#[command(name = "ctune-bench", version)]
struct Args {
    /// Scenarios to run: ramp, step, flood, sessions, or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The short form used by the test suite (seconds, not minutes).
    #[arg(long)]
    short: bool,
    /// Where traffic flows: nat (client -> NAT router -> server) or loopback.
    #[arg(long, default_value = "nat")]
    topology: String,
    /// Output directory for the tables (.md), plots (.svg) and raw results (.json).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The ctune binary the agent runs from [default: next to this one].
    #[arg(long)]
    ctune: Option<PathBuf>,
    /// Policies to run, comma-separated, or all: static, kube-proxy, manual-fix, cilium,
    /// calico, pf, srx, palo-alto, ctune.
    #[arg(long, default_value = "all")]
    policies: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("ctune-bench: needs root (network namespaces, global conntrack values)");
        return ExitCode::from(2);
    }
    let topology = match args.topology.as_str() {
        "nat" => Topology::NatRouter,
        "loopback" => Topology::Loopback,
        other => {
            eprintln!("ctune-bench: unknown topology {other:?}: nat or loopback");
            return ExitCode::from(2);
        }
    };
    let bin = ctune_lab::livebench::ctune_binary(args.ctune.clone());
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("ctune-bench: {}: {e}", args.out.display());
        return ExitCode::from(1);
    }
    let mut failed = false;
    for sc in livebench::scenarios(args.short, topology) {
        if args.scenario != "all" && args.scenario != sc.name {
            continue;
        }
        let mut report = ScenarioReport {
            scenario: sc.name.clone(),
            source: "live".into(),
            runs: Vec::new(),
        };
        let policies = match policies(&args.policies, &bin, args.short, &sc.name) {
            Ok(p) => p,
            Err(msg) => {
                eprintln!("ctune-bench: {msg}");
                return ExitCode::from(2);
            }
        };
        for policy in policies {
            eprintln!("ctune-bench: {} under {} ...", sc.name, policy.name());
            match livebench::run(&sc, &policy, &args.out) {
                Ok(run) => report.runs.push(run),
                Err(e) => {
                    eprintln!("ctune-bench: {} under {}: {e}", sc.name, policy.name());
                    failed = true;
                }
            }
        }
        print!("{}", report.markdown());
        let base = args.out.join(&sc.name);
        let _ = std::fs::write(base.with_extension("md"), report.markdown());
        let _ = std::fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
        if let Err(e) = report.plot_svg(&base.with_extension("svg")) {
            eprintln!("ctune-bench: plot: {e}");
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The policies `--policies` names (`all`: every one), ctune's with the scenario's
/// config; an unknown name is an error that lists the known ones.
fn policies(
    list: &str,
    bin: &std::path::Path,
    short: bool,
    scenario: &str,
) -> Result<Vec<Policy>, String> {
    let names: Vec<&str> = if list == "all" {
        Peer::ALL.iter().map(|p| p.name()).collect()
    } else {
        list.split(',').collect()
    };
    names
        .into_iter()
        .map(|name| match Peer::by_name(name) {
            Some(Peer::Ctune) => Ok(Policy::Ctune {
                bin: bin.to_path_buf(),
                config: livebench::ctune_config(short, scenario),
            }),
            Some(p) => Ok(Policy::Peer(p)),
            None => {
                let all: Vec<&str> = Peer::ALL.iter().map(|p| p.name()).collect();
                Err(format!(
                    "unknown policy {name:?}: one of {}",
                    all.join(", ")
                ))
            }
        })
        .collect()
}
