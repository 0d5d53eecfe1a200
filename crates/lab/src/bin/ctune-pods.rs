//! `ctune-pods`: ctune on a host of many network namespaces (root). `cost` measures the
//! dry run, `status`, a step and the idle agent at each namespace count; `churn` soaks the
//! agent in pods created and deleted at a steady rate. Both print markdown and write JSON
//! (docs/benchmarks-cost.md has the method and a recorded run).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ctune_lab::livebench::GlobalGuard;
use ctune_lab::pods::{self, ChurnOptions, CostRow, Pods};

/// ctune on a host of many network namespaces (root; restores global values).
#[derive(Debug, Parser)]
#[command(name = "ctune-pods", version)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench", global = true)]
    out: PathBuf,
    /// The ctune binary [default: next to this one].
    #[arg(long, global = true)]
    ctune: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum What {
    /// The agent's cost by namespace count: dry run, status, idle step, a step that
    /// raises max under pressure, the idle agent's CPU, memory and descriptors.
    Cost {
        /// Namespace counts, ascending, comma-separated.
        #[arg(long, default_value = "0,250,1000", value_delimiter = ',')]
        namespaces: Vec<usize>,
        /// Entries in each namespace.
        #[arg(long, default_value_t = 200)]
        entries: usize,
        /// Runs of each timed command (the pressure step and status: a quarter as many).
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Pods created and deleted at a steady rate, with the odd flood, under the agent.
    Churn {
        /// How long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Pods per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// How long each pod lives.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        lifetime: Duration,
        /// Entries each pod makes.
        #[arg(long, default_value_t = 50)]
        entries: usize,
        /// A flood (the newest pod to 90 % of the starting max) this often.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        flood_every: Duration,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("ctune-pods: needs root (network namespaces, global conntrack values)");
        return ExitCode::from(2);
    }
    let bin = ctune_lab::livebench::ctune_binary(args.ctune.clone());
    let result = match args.what {
        What::Cost {
            namespaces,
            entries,
            runs,
        } => cost(&bin, &args.out, &namespaces, entries, runs),
        What::Churn {
            duration,
            rate,
            lifetime,
            entries,
            flood_every,
        } => {
            let opts = ChurnOptions {
                duration,
                rate,
                lifetime,
                entries,
                flood_every,
            };
            churn(&bin, &args.out, &opts)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune-pods: {e}");
            ExitCode::from(1)
        }
    }
}

fn cost(
    bin: &std::path::Path,
    out: &std::path::Path,
    counts: &[usize],
    entries: usize,
    runs: usize,
) -> Result<(), String> {
    let guard = GlobalGuard::save().map_err(|e| e.to_string())?;
    let work = tempdir(out, "pods-cost")?;
    let mut pods = Pods::new("ctpods");
    let mut rows: Vec<CostRow> = Vec::new();
    for &n in counts {
        eprintln!("ctune-pods: {n} namespaces of {entries} entries");
        pods.grow_to(n, entries).map_err(|e| e.to_string())?;
        pods::forget_dead_dentries().map_err(|e| e.to_string())?;
        let dir = work.join(n.to_string());
        let row = pods::cost_row(bin, &mut pods, &guard, &dir, runs).map_err(|e| e.to_string())?;
        eprintln!("{row:?}");
        rows.push(row);
    }
    drop(pods);
    drop(guard);
    println!(
        "| namespaces | dry run, median (slowest) | status | idle step, median (p90) | step raising max under pressure: watching, median (slowest) | the same from a fresh start | idle agent CPU | agent peak RSS | agent descriptors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} ms ({:.1}) | {:.1} ms | {:.2} ms ({:.2}) | {:.1} ms ({:.1}) | {:.1} ms ({:.1}) | {:.2} ms/s | {:.1} MiB | {} |",
            r.namespaces,
            r.dry_run_ms.0,
            r.dry_run_ms.1,
            r.status_ms,
            r.idle_step_ms.0,
            r.idle_step_ms.1,
            r.warm_pressure_step_ms.0,
            r.warm_pressure_step_ms.1,
            r.pressure_step_ms.0,
            r.pressure_step_ms.1,
            r.agent_cpu_ms_per_s,
            r.agent_hwm_kib as f64 / 1024.0,
            r.agent_fds
        );
    }
    write_json(&out.join("pods-cost.json"), &rows)
}

fn churn(bin: &std::path::Path, out: &std::path::Path, opts: &ChurnOptions) -> Result<(), String> {
    let dir = tempdir(out, "pods-churn")?;
    let report = pods::churn(bin, &dir, opts).map_err(|e| e.to_string())?;
    println!(
        "{} pods in {:?} ({} floods); {} changes, {} not logged once; at most {} changes of one key in one namespace; status run {} times, {} namespace problem(s); {} log line(s) about unreadable namespaces",
        report.pods,
        opts.duration,
        report.floods,
        report.changes,
        report.unlogged.len(),
        report.most_changes_of_one_key,
        report.status_runs,
        report.status_problems.len(),
        report.log_problems.len()
    );
    println!("| s | agent CPU (total ms) | RSS | descriptors | state file |");
    println!("|---:|---:|---:|---:|---:|");
    for (at, u, state) in &report.samples {
        println!(
            "| {at:.0} | {:.0} | {:.1} MiB | {} | {state} B |",
            u.cpu_ns as f64 / 1e6,
            u.rss_kib as f64 / 1024.0,
            u.fds
        );
    }
    write_json(&out.join("pods-churn.json"), &report)
}

fn tempdir(out: &std::path::Path, name: &str) -> Result<PathBuf, String> {
    let dir = out.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
