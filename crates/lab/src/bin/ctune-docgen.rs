//! `ctune-docgen OUTDIR`: the packaged documentation generated from the command line's
//! definition (`ctune::cli::Cli`), so it cannot drift from `--help`:
//!
//! - `OUTDIR/ctune.8`: the man page ctune(8), one page: the options, a COMMANDS section
//!   with each subcommand's synopsis, description and own options, the examples and the
//!   EXIT STATUS table (`ctune::error::EXIT_CODES`, the table `--help` prints), notes,
//!   FILES and SEE ALSO;
//! - `OUTDIR/completions/{ctune.bash,_ctune,ctune.fish}`: bash, zsh and fish completions.
//!
//! Reproducible: the page's date is `SOURCE_DATE_EPOCH` as YYYY-MM-DD (empty when it is
//! not set); nothing else depends on the time or the machine. Used by
//! `packaging/build-deb.sh`; this tool itself is never packaged.

use clap::{Arg, ArgAction, CommandFactory, Parser};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ctune::act::{history, persist};
use ctune::cli::Cli;
use ctune::error::EXIT_CODES;

/// Writes ctune's man page ctune(8) and its shell completions.
#[derive(Debug, Parser)]
#[command(name = "ctune-docgen", version)]
struct Args {
    /// Output directory: ctune.8 and completions/{ctune.bash,_ctune,ctune.fish}.
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match generate(&args.out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ctune-docgen: {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> io::Result<()> {
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => {
            let secs: i64 = s.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"),
                )
            })?;
            iso_date(secs)
        }
        Err(_) => String::new(),
    };
    std::fs::create_dir_all(out.join("completions"))?;
    std::fs::write(out.join("ctune.8"), man_page(&date)?)?;
    for (shell, file) in [
        (Shell::Bash, "ctune.bash"),
        (Shell::Zsh, "_ctune"),
        (Shell::Fish, "ctune.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command(), "ctune", &mut buf);
        std::fs::write(out.join("completions").join(file), buf)?;
    }
    Ok(())
}

/// The CLI as the binary sees it, without clap's `help` subcommand (the man page and
/// the completions document `--help`).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The man page: clap_mangen's title, name, synopsis, description and options sections,
/// then the sections clap_mangen would render as one-liners pointing at separate pages
/// (subcommands) or as one unstructured EXTRA block (the after-help), written here.
fn man_page(date: &str) -> io::Result<Vec<u8>> {
    let cmd = command();
    let version = cmd.get_version().unwrap_or_default().to_owned();
    let man = Man::new(cmd.clone())
        .title("CTUNE")
        .section("8")
        .date(date)
        .source(format!("ctune {version}"))
        .manual("System Administration");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;

    let mut roff = Roff::new();
    commands_section(&mut roff, &cmd);
    let after = cmd
        .get_after_long_help()
        .or_else(|| cmd.get_after_help())
        .map(|s| s.to_string())
        .unwrap_or_default();
    after_help_sections(&mut roff, &after);
    files_section(&mut roff, &cmd);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("sysctl"),
        roman("(8), "),
        bold("conntrack"),
        roman("(8), "),
        bold("systemctl"),
        roman("(1), "),
        bold("systemd.service"),
        roman("(5); /usr/share/doc/ctune/README.md and the rest of /usr/share/doc/ctune."),
    ]);
    roff.to_writer(&mut page)?;
    // Every render writes roff's preamble (the apostrophe string): keep the first only.
    let preamble = Roff::new().render();
    let body = String::from_utf8_lossy(&page).replace(&preamble, "");
    Ok(format!("{preamble}{body}").into_bytes())
}

/// COMMANDS: per subcommand a subsection with its synopsis (own options only; the global
/// ones are under OPTIONS), its long description and its own options.
fn commands_section(roff: &mut Roff, cmd: &clap::Command) {
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "ctune --dry-run, without a command, is the same as ctune plan.",
    )]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let own: Vec<&Arg> = sub.get_arguments().filter(|a| own_arg(a)).collect();
        roff.control("SS", [sub.get_name()]);
        let mut synopsis = vec![bold(format!("ctune {}", sub.get_name()))];
        for arg in &own {
            synopsis.push(roman(" ["));
            synopsis.extend(arg_header(arg));
            synopsis.push(roman("]"));
        }
        roff.text(synopsis);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.control("PP", []);
            paragraphs(roff, &about.to_string());
        }
        for arg in own {
            roff.control("TP", []);
            roff.text(arg_header(arg));
            if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
                roff.text([roman(help.to_string())]);
            }
        }
    }
}

/// An option of the subcommand itself: not a global one propagated from ctune, not the
/// generated --help/--version.
fn own_arg(arg: &Arg) -> bool {
    !arg.is_hide_set()
        && !arg.is_global_set()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// `--since <DURATION>`, as clap_mangen writes option headers.
fn arg_header(arg: &Arg) -> Vec<Inline> {
    let mut header = Vec::new();
    match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => header.push(bold(format!("-{s}, --{l}"))),
        (Some(s), None) => header.push(bold(format!("-{s}"))),
        (None, Some(l)) => header.push(bold(format!("--{l}"))),
        (None, None) => {}
    }
    if arg.get_num_args().is_some_and(|n| n.takes_values()) {
        let names = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>())
            .unwrap_or_else(|| vec![format!("<{}>", arg.get_id())]);
        header.push(roman(" "));
        header.push(italic(names.join(" ")));
    }
    header
}

/// Text with blank-line-separated paragraphs, each ended as a sentence (clap drops the
/// final period of a one-paragraph doc comment).
fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        let para = para.trim();
        if para.ends_with(['.', ':', '!', '?']) {
            roff.text([roman(para)]);
        } else if !para.is_empty() {
            roff.text([roman(format!("{para}."))]);
        }
    }
}

/// `--help`'s closing text as sections. A line at the margin ending in ':' heads a
/// section ("Examples:" becomes EXAMPLES), its indented lines are its items ("command
/// <two or more spaces> what it does"); text at the margin after them is NOTES. The
/// "Exit codes:" section becomes EXIT STATUS, rendered from `EXIT_CODES` itself (the
/// table the help's lines were printed from); it is written even if the help stops
/// listing the codes.
fn after_help_sections(roff: &mut Roff, text: &str) {
    let mut exit_status_done = false;
    let mut in_items = false;
    let mut notes_open = false;
    let mut skip_items = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let indented = line.starts_with(char::is_whitespace);
        if !indented && line.ends_with(':') && line.len() < 40 {
            let heading = line.trim_end_matches(':');
            in_items = true;
            notes_open = false;
            skip_items = heading.eq_ignore_ascii_case("exit codes");
            if skip_items {
                exit_status(roff);
                exit_status_done = true;
            } else {
                roff.control("SH", [heading.to_uppercase().as_str()]);
            }
        } else if indented && in_items {
            if skip_items {
                continue;
            }
            let item = line.trim();
            match item.split_once("  ") {
                Some((what, meaning)) => {
                    roff.control("TP", []);
                    roff.text([bold(what.trim())]);
                    roff.text([roman(meaning.trim())]);
                }
                None => {
                    roff.control("TP", []);
                    roff.text([bold(item)]);
                }
            }
        } else {
            in_items = false;
            if !notes_open {
                roff.control("SH", ["NOTES"]);
                notes_open = true;
            }
            roff.text([roman(line.trim())]);
        }
    }
    if !exit_status_done {
        exit_status(roff);
    }
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_CODES {
        roff.control("TP", []);
        roff.text([bold(code.to_string())]);
        roff.text([roman(*meaning)]);
    }
}

/// FILES: the paths below the CLI's default roots that ctune reads and owns.
fn files_section(roff: &mut Roff, cmd: &clap::Command) {
    let default = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_default_values().first())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let etc = default("etc_root");
    let state = default("state_dir");
    let entries = [
        (
            format!("{etc}/ctune/ctune.yaml"),
            "The configuration (--config); built-in defaults apply when it is absent.",
        ),
        (
            format!("{etc}/{}", persist::SYSCTL_FILE),
            "The learned max and hash size, applied at boot by systemd-sysctl and ctune boot.",
        ),
        (
            format!("{etc}/{}", persist::MODULES_LOAD_FILE),
            "Loads nf_conntrack at boot (modular conntrack only).",
        ),
        (
            format!("{etc}/{}", persist::MODPROBE_FILE),
            "The hash size as a module option (modular conntrack only).",
        ),
        (
            state.clone(),
            "ctune's state: the operator's values from before ctune, for restore.",
        ),
        (
            format!("{state}/{}", history::FILE),
            "Every change ctune applied and why (ctune history); kept by restore.",
        ),
        (
            "/lib/systemd/system/ctune.service".to_owned(),
            "The agent (ctune run).",
        ),
        (
            "/lib/systemd/system/ctune-boot.service".to_owned(),
            "The boot step (ctune boot), before the network is configured.",
        ),
    ];
    roff.control("SH", ["FILES"]);
    for (path, what) in entries {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
}

/// Seconds since the epoch as a UTC date, YYYY-MM-DD (civil-from-days, proleptic
/// Gregorian).
fn iso_date(secs: i64) -> String {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::iso_date;

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(951_782_400), "2000-02-29");
        assert_eq!(iso_date(1_796_197_259), "2026-12-02");
    }
}
