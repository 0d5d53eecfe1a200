//! The command line, parsed into settings without touching the system, so `--help` and
//! usage errors work anywhere.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

use crate::sense::roots::Roots;

const EXAMPLES: &str = "\
Examples:
  ctune --dry-run              what ctune would change on this host, and why
  ctune status                 per namespace: use, level, drops per second now
  ctune status --watch         the same, refreshed in place (q or Ctrl-C ends it)
  ctune status --json          the same for scripts
  ctune --dry-run --config ./ctune.yaml   try a config before installing it
  ctune apply                  do it once: apply, read back, persist
  ctune run                    the agent (normally started by ctune.service)
  ctune history --since 1d     what ctune changed in the last day, and why
  ctune verify                 are ctune's values and files still in force? (exit 7: no)
  ctune restore                undo everything ctune changed
  ctune top                    what fills each table: protocols, states, sources, ports
";

const AFTER_CODES: &str = "\
Nothing in `plan`/`--dry-run`, `status`, `history`, `verify` or `top` writes to the kernel or
to any file.
`plan` and `status` sample the kernel's counters twice, --sample apart (1s), to tell
loss now from loss since boot. Run as root to see every namespace and the slab's entry
size; without root ctune says what it could not read and uses safe assumptions.";

/// `--help`'s closing text: examples, the exit codes (one table, in error.rs), notes.
fn after_help() -> String {
    format!(
        "{EXAMPLES}\nExit codes:\n{}\n{AFTER_CODES}",
        crate::error::exit_code_help()
    )
}

/// ctune: keeps the conntrack table from filling by sizing it from the hardware and
/// reacting to pressure, and explains every decision.
#[derive(Debug, Parser)]
#[command(
    name = "ctune",
    version,
    about = "Automatic conntrack tuning: observe the table, decide safe limits, explain why",
    long_about = "Automatic conntrack tuning for Linux.\n\n\
ctune reads the connection-tracking table of the host and of every network namespace it\n\
watches (count, max, hash size, drop counters, timeouts), computes a safe nf_conntrack_max\n\
within a ceiling derived from memory, a hash size of max / ratio, and pressure levels that\n\
lower timeouts only while the table is under pressure.",
    after_help = after_help()
)]
pub struct Cli {
    /// Print what ctune would change and why, and the files it would write; change nothing.
    /// Same as the `plan` command.
    #[arg(long)]
    pub dry_run: bool,

    /// Config file [default: /etc/ctune/ctune.yaml; built-in defaults if that is absent].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print JSON instead of text, for scripts (the dry run's; each command that prints
    /// JSON takes --json too).
    #[arg(long)]
    pub json: bool,

    /// The dry run's sample: read the counters twice, this far apart, to see loss now
    /// (drops per second) rather than since boot; 0 reads once. At most 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_sample)]
    pub sample: Option<std::time::Duration>,

    #[command(flatten)]
    pub paths: PathArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `--json`, for the commands that print JSON.
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct JsonFlag {
    /// Print JSON instead of text, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `--sample`, for the commands that read the counters twice.
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct SampleFlag {
    /// Read the counters twice, this far apart, to see loss now (drops per second)
    /// rather than since boot; 0 reads once. At most 10s [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_sample)]
    pub sample: Option<std::time::Duration>,
}

/// What to do. Each command takes its own flags and no other: the parser refuses the
/// rest, and each command's --help lists only what it takes.
#[derive(Debug, Subcommand, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show what ctune would change and why, and the files a real run would write (the
    /// same as --dry-run). Changes nothing.
    Plan {
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        sample: SampleFlag,
    },
    /// Show per namespace the count against the live max, the pressure level now and the
    /// drops per second over --sample; the timeouts in force and which ctune lowered;
    /// what ctune changed and the operator's values; the ceiling. Changes nothing. Exit
    /// code 0 healthy, 5 over a level, 6 dropping now: usable as a health check.
    Status {
        /// Refresh in place every --sample (at least 1s), like top; q or Ctrl-C ends it.
        /// Not a terminal: one plain report per refresh.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        sample: SampleFlag,
    },
    /// Observe, decide, apply (each value read back) and persist once, then print what
    /// changed. Needs root in the initial network namespace.
    Apply {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Run the agent: one control step per `agent.interval`; SIGHUP reloads the config
    /// (and reads the host's facts for `role: auto` again), SIGTERM/SIGINT stop it. Stopping rolls nothing back (see `restore`).
    Run,
    /// Boot step, before traffic: apply the persisted max and hash size (from
    /// /etc/sysctl.d/99-ctune.conf) and check they stuck.
    Boot,
    /// Undo: put back the operator's values from before ctune first changed them, and
    /// remove ctune's persisted files and state. Stop the agent first. ctune's history
    /// (history.jsonl in the state directory) is kept: it is the record of what happened.
    Restore {
        /// Lower max even below what the table holds now plus headroom (drops flows).
        #[arg(long)]
        force: bool,
    },
    /// Print every change ctune applied (by `apply` or the agent) and why, oldest first;
    /// --since for the recent ones, --json for whole records. Changes nothing.
    ///
    /// A table: TIME (UTC), NETNS, KEY, OLD, NEW, REASON (cut to fit; whole with --json,
    /// which prints a JSON array of the records, with the utilisation behind each).
    /// Read from history.jsonl and history.jsonl.1 in the state directory (about 2 MiB at
    /// most; kept by `restore`). Lines that are not whole records (torn by a crash) are
    /// skipped and counted.
    ///
    /// Example: `ctune history --since 1h` (the last hour), `ctune history --json`.
    History {
        /// Only changes made this recently (e.g. 30m, 1h, 2d).
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        since: Option<std::time::Duration>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Check that the values and files ctune set are still in force: exit 0 when all
    /// match, 7 when any differs, each difference named. Changes nothing.
    ///
    /// Checks each global value ctune set, each timeout it lowered (in namespaces still
    /// there), and the persisted files against what it would write now. One line per
    /// check: `ok`, `DIFF` (expected and found), or `held` (changed by the operator and
    /// adopted: not a difference). For monitoring and configuration management; takes
    /// no lock.
    ///
    /// Example: `ctune verify || alert "conntrack tuning drifted"`; `ctune verify --json`.
    Verify {
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Show what fills each watched namespace's conntrack table: shares by protocol, TCP
    /// state, assured / unreplied, zone and mark, the top source prefixes and destination
    /// ports, and per timeout key the entries it governs. Changes nothing.
    ///
    /// Reads each table once over ctnetlink (like `conntrack -L`, but counted as it
    /// streams: memory stays flat at any table size). Needs root (CAP_NET_ADMIN).
    ///
    /// Columns. ENTRIES: entries counted in that row; SHARE: their part of the entries
    /// read. SOURCE: the original direction's source, by /24 (IPv4) or /64 (IPv6).
    /// DESTINATION PORT: protocol/port of the original direction. `other`: the rest
    /// (beyond --top, or beyond --max-keys distinct keys). TIMEOUT KEY: the sysctl that
    /// sets how long such an entry lives idle (unreplied UDP: udp_timeout; UDP that saw a
    /// reply: udp_timeout_stream; TCP: its state's key; ICMP: icmp_timeout; others:
    /// generic_timeout; `none`: not a sysctl, e.g. SCTP and DCCP, which go by states a
    /// dump does not show here). Established TCP with unacknowledged data lives by
    /// tcp_timeout_unacknowledged or max_retrans instead; a dump cannot tell, so it counts
    /// as established. TIMEOUT: that key's value in the namespace now (the idle life of
    /// such an entry); FLOOR: the lowest ctune would set it to (its idle life under
    /// pressure; `-`: ctune does not manage the key); LEFT and LEFT MAX: the mean and the
    /// longest time the entries have left now.
    ///
    /// Bounded, and fast on a large table: a dump stops after --max-entries entries
    /// (32768) or --max-time. The kernel sends a table's entries in the order of its hash
    /// table, whose hash is keyed by a random seed, so the first entries are a random
    /// sample of the table: a larger table is marked SAMPLE, its shares are estimates
    /// within the margin printed (0.6 % or less at 95 % for 32768 entries), and ENTRIES
    /// count the sample. --all reads every entry (about 2.5 s of kernel time per million
    /// entries). A dump the kernel flags as changed under it is marked PARTIAL.
    ///
    /// Example: `ctune top`, `ctune top --netns blue --top 20`, `ctune top --all --json`.
    Top {
        /// Only this namespace: a name under /run/netns, or `init` for ctune's own.
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
        /// Keys listed per bucket (sources, ports, zones, marks); the rest is `other`.
        #[arg(long, value_name = "N", default_value_t = crate::commands::top::DEFAULT_TOP)]
        top: usize,
        /// Read at most this many entries of each table; a larger table is sampled.
        #[arg(long, value_name = "N", default_value_t = crate::commands::top::DEFAULT_MAX_ENTRIES,
              value_parser = clap::value_parser!(u64).range(1..))]
        max_entries: u64,
        /// Read every entry of each table (within --max-time): exact counts.
        #[arg(long, conflicts_with = "max_entries")]
        all: bool,
        /// Stop each dump after this long (the entries read are then a sample).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_since)]
        max_time: std::time::Duration,
        /// Distinct keys kept per bucket; entries of further keys count as `other`.
        #[arg(long, value_name = "N", default_value_t = crate::commands::top::DEFAULT_MAX_KEYS)]
        max_keys: usize,
        #[command(flatten)]
        out: JsonFlag,
    },
}

/// Where the kernel and configuration files are, for containers (a host's /proc mounted
/// elsewhere) and tests.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Paths")]
pub struct PathArgs {
    /// procfs root.
    #[arg(long, global = true, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,
    /// sysfs root.
    #[arg(long, global = true, value_name = "DIR", default_value = "/sys")]
    pub sys_root: PathBuf,
    /// Configuration root (sysctl.d, modprobe.d, modules-load.d, ctune/).
    #[arg(long, global = true, value_name = "DIR", default_value = "/etc")]
    pub etc_root: PathBuf,
    /// Runtime root (named namespaces in netns/).
    #[arg(long, global = true, value_name = "DIR", default_value = "/run")]
    pub run_root: PathBuf,
    /// ctune's state directory.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = "/var/lib/ctune"
    )]
    pub state_dir: PathBuf,
    /// ctnetlink replies as a kernel sends them (a fixture tree's netlink/: captured from
    /// this host's kernel, or written from another kernel's sources), read instead of
    /// asking this one: for tests.
    #[arg(long, global = true, value_name = "DIR", hide = true)]
    pub netlink_root: Option<PathBuf>,
}

impl From<&PathArgs> for Roots {
    fn from(p: &PathArgs) -> Self {
        Roots {
            proc: p.proc_root.clone(),
            sys: p.sys_root.clone(),
            etc: p.etc_root.clone(),
            run: p.run_root.clone(),
            state: p.state_dir.clone(),
            netlink: p.netlink_root.clone(),
        }
    }
}

impl Command {
    /// The subcommand as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Plan { .. } => "plan",
            Command::Status { .. } => "status",
            Command::Apply { .. } => "apply",
            Command::Run => "run",
            Command::Boot => "boot",
            Command::Restore { .. } => "restore",
            Command::History { .. } => "history",
            Command::Verify { .. } => "verify",
            Command::Top { .. } => "top",
        }
    }

    /// The command's own --json; None when it takes none.
    fn json(&self) -> Option<bool> {
        match self {
            Command::Plan { out, .. }
            | Command::Status { out, .. }
            | Command::Apply { out }
            | Command::History { out, .. }
            | Command::Verify { out }
            | Command::Top { out, .. } => Some(out.json),
            Command::Run | Command::Boot | Command::Restore { .. } => None,
        }
    }

    /// The command's own --sample (itself an option); None when it takes none.
    fn sample(&self) -> Option<Option<std::time::Duration>> {
        match self {
            Command::Plan { sample, .. } | Command::Status { sample, .. } => Some(sample.sample),
            _ => None,
        }
    }

    /// Whether the command only reads (the kernel, the files, ctune's state).
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            Command::Plan { .. }
                | Command::Status { .. }
                | Command::History { .. }
                | Command::Verify { .. }
                | Command::Top { .. }
        )
    }
}

/// The default of `--sample`.
pub const DEFAULT_SAMPLE: std::time::Duration = std::time::Duration::from_secs(1);

fn parse_sample(text: &str) -> Result<std::time::Duration, String> {
    let d = if text == "0" {
        std::time::Duration::ZERO
    } else {
        humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 1s, 500ms, 0)"))?
    };
    if d > std::time::Duration::from_secs(10) {
        return Err("at most 10s: a longer sample says less about now".into());
    }
    Ok(d)
}

fn parse_since(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 30m, 1h, 2d)"))
}

impl Cli {
    /// The command to run; `--dry-run` means `plan`. None: nothing was asked for.
    pub fn resolved_command(&self) -> Option<Command> {
        match (self.command.clone(), self.dry_run) {
            (Some(c), _) => Some(c),
            (None, true) => Some(Command::Plan {
                out: JsonFlag::default(),
                sample: SampleFlag::default(),
            }),
            (None, false) => None,
        }
    }

    /// The command line resolved into what to run, with each command's own settings; a
    /// flag that does not go with the command is refused here, before anything is read.
    pub fn resolve(&self) -> Result<Invocation, String> {
        let command = self.resolved_command().ok_or(
            "nothing to do. Try `ctune --dry-run` to see what ctune would change, or `ctune --help`.",
        )?;
        if let Some(refusal) = self.refusal(&command) {
            return Err(refusal);
        }
        // The dry run's flags stand before any command (`ctune --dry-run --json`, or
        // `ctune --json status`); they join the command's own.
        let json = self.json || command.json().unwrap_or(false);
        let sample = (command.sample().flatten())
            .or(self.sample)
            .unwrap_or(DEFAULT_SAMPLE);
        Ok(match command {
            Command::Plan { .. } => Invocation::Plan { json, sample },
            Command::Status { watch, .. } => Invocation::Status {
                json,
                sample,
                watch,
            },
            Command::Apply { .. } => Invocation::Apply { json },
            Command::Run => Invocation::Run,
            Command::Boot => Invocation::Boot,
            Command::Restore { force } => Invocation::Restore { force },
            Command::History { since, .. } => Invocation::History { json, since },
            Command::Verify { .. } => Invocation::Verify { json },
            Command::Top {
                netns,
                top,
                max_entries,
                all,
                max_time,
                max_keys,
                ..
            } => Invocation::Top(crate::commands::top::Options {
                netns,
                json,
                top,
                limits: crate::sense::ctnetlink::Limits {
                    max_entries: if all { u64::MAX } else { max_entries },
                    max_time,
                },
                max_keys,
            }),
        })
    }

    /// Flags that do not go with the command.
    fn refusal(&self, command: &Command) -> Option<String> {
        // --dry-run with a command that writes would be a promise broken.
        if self.dry_run && !command.read_only() {
            return Some(format!(
                "--dry-run goes with `plan`, `status`, `history`, `verify` and `top` (or alone), which change nothing; `ctune {}` writes. Run `ctune --dry-run` to see what it would do.",
                command.name()
            ));
        }
        // Written before the command: the parser took them as the dry run's.
        if self.json && command.json().is_none() {
            return Some(format!(
                "--json is available for plan, status, apply, history, verify and top, not `ctune {}`",
                command.name()
            ));
        }
        if self.sample.is_some() && command.sample().is_none() {
            return Some(format!(
                "--sample is for plan and status, not `ctune {}`",
                command.name()
            ));
        }
        None
    }
}

/// What to run, with the settings that command takes and no other (the resolved form of
/// [`Cli`]: ripgrep's low-level arguments become its high-level settings the same way).
#[derive(Debug, Clone)]
pub enum Invocation {
    /// The dry run.
    Plan {
        /// JSON instead of text.
        json: bool,
        /// Between the two readings (zero: one).
        sample: std::time::Duration,
    },
    /// The health check.
    Status {
        /// JSON instead of text.
        json: bool,
        /// Between the two readings (zero: one).
        sample: std::time::Duration,
        /// Refresh until stopped.
        watch: bool,
    },
    /// One step for real.
    Apply {
        /// JSON instead of text.
        json: bool,
    },
    /// The agent.
    Run,
    /// The boot step.
    Boot,
    /// The undo.
    Restore {
        /// Lower max below what the table holds.
        force: bool,
    },
    /// The record of changes.
    History {
        /// JSON instead of text.
        json: bool,
        /// Only changes this recent.
        since: Option<std::time::Duration>,
    },
    /// Are ctune's values still in force?
    Verify {
        /// JSON instead of text.
        json: bool,
    },
    /// What fills each table.
    Top(crate::commands::top::Options),
}

impl Invocation {
    /// Whether this is the agent (its logs are info by default, the others' warn).
    pub fn is_agent(&self) -> bool {
        matches!(self, Invocation::Run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn resolve(args: &[&str]) -> Result<Invocation, String> {
        Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .resolve()
    }

    #[test]
    fn dry_run_means_plan() {
        let c = Cli::try_parse_from(["ctune", "--dry-run"]).unwrap();
        assert_eq!(c.resolved_command().map(|c| c.name()), Some("plan"));
        let c = Cli::try_parse_from(["ctune", "status", "--json", "--proc-root", "/x"]).unwrap();
        assert!(matches!(
            c.resolve(),
            Ok(Invocation::Status {
                json: true,
                watch: false,
                ..
            })
        ));
        assert_eq!(Roots::from(&c.paths).proc, PathBuf::from("/x"));
        assert_eq!(
            Cli::try_parse_from(["ctune"]).unwrap().resolved_command(),
            None
        );
    }

    #[test]
    fn the_parser_refuses_a_flag_the_command_does_not_take() {
        for args in [
            &["ctune", "run", "--json"][..],
            &["ctune", "boot", "--json"],
            &["ctune", "restore", "--json"],
            &["ctune", "apply", "--sample", "1s"],
            &["ctune", "top", "--sample", "1s"],
            &["ctune", "verify", "--watch"],
            &["ctune", "status", "--force"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{args:?}: {e}"
            );
        }
        // And each command's help lists only its own flags.
        let mut cli = Cli::command();
        let run = cli.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        assert!(
            !help.contains("--json") && !help.contains("--sample"),
            "{help}"
        );
        let status = cli.find_subcommand_mut("status").unwrap();
        let help = status.render_long_help().to_string();
        assert!(
            help.contains("--json") && help.contains("--sample"),
            "{help}"
        );
    }

    #[test]
    fn the_dry_runs_flags_before_a_command_join_it_or_are_refused_naming_it() {
        assert!(matches!(
            resolve(&["ctune", "--json", "--sample", "0", "status"]),
            Ok(Invocation::Status { json: true, sample, .. }) if sample.is_zero()
        ));
        assert!(matches!(
            resolve(&["ctune", "--dry-run", "--json"]),
            Ok(Invocation::Plan { json: true, .. })
        ));
        // The command's own --sample is the later word, and wins.
        assert!(matches!(
            resolve(&["ctune", "--sample", "2s", "plan", "--sample", "0"]),
            Ok(Invocation::Plan { sample, .. }) if sample.is_zero()
        ));
        let e = resolve(&["ctune", "--json", "run"]).unwrap_err();
        assert!(e.contains("--json") && e.contains("`ctune run`"), "{e}");
        let e = resolve(&["ctune", "--sample", "1s", "verify"]).unwrap_err();
        assert!(
            e.contains("--sample") && e.contains("`ctune verify`"),
            "{e}"
        );
        let e = resolve(&["ctune", "--dry-run", "apply"]).unwrap_err();
        assert!(
            e.contains("--dry-run") && e.contains("`ctune apply` writes"),
            "{e}"
        );
    }

    #[test]
    fn history_takes_a_duration() {
        let c = Cli::try_parse_from(["ctune", "history", "--since", "1h"]).unwrap();
        assert_eq!(
            c.resolved_command(),
            Some(Command::History {
                since: Some(std::time::Duration::from_secs(3600)),
                out: JsonFlag::default(),
            })
        );
        assert!(Cli::try_parse_from(["ctune", "history", "--since", "soon"]).is_err());
        let verify = Command::Verify {
            out: JsonFlag::default(),
        };
        let apply = Command::Apply {
            out: JsonFlag::default(),
        };
        assert!(verify.read_only() && !apply.read_only());
    }
}
