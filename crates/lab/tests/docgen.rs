//! `ctune-docgen` (the man page and completions the Debian package installs): run into a
//! temporary directory, it writes ctune(8) documenting every subcommand and exit code,
//! and bash, zsh and fish completions; twice with the same SOURCE_DATE_EPOCH, the same
//! bytes.

use clap::CommandFactory;
use std::path::Path;
use std::process::Command;

fn docgen(out: &Path, epoch: &str) {
    let status = Command::new(env!("CARGO_BIN_EXE_ctune-docgen"))
        .arg(out)
        .env("SOURCE_DATE_EPOCH", epoch)
        .status()
        .expect("run ctune-docgen");
    assert!(status.success(), "ctune-docgen failed: {status}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn man_page_documents_every_command_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    docgen(dir.path(), "1700000000");
    let page = read(&dir.path().join("ctune.8"));

    // The title line (after roff's apostrophe preamble): name, section 8, the date from
    // SOURCE_DATE_EPOCH (2023-11-14 22:13:20 UTC).
    let title = page
        .lines()
        .find(|l| l.starts_with(".TH"))
        .expect("a .TH line");
    assert!(
        title.starts_with(".TH CTUNE 8 2023-11-14 "),
        "title line: {title}"
    );
    assert!(
        !page[..page.find(".TH").unwrap()]
            .lines()
            .any(|l| !l.starts_with(".ie") && !l.starts_with(".el")),
        "only the preamble before .TH"
    );

    let subcommands: Vec<String> = ctune::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_owned())
        .collect();
    assert!(subcommands.len() >= 8, "subcommands: {subcommands:?}");
    for sub in &subcommands {
        assert!(
            page.lines().any(|l| l == format!(".SS {sub}")),
            "no section for `ctune {sub}` in ctune.8"
        );
        assert!(
            page.contains(&format!("\\fBctune {sub}\\fR")),
            "no synopsis for `ctune {sub}` in ctune.8"
        );
    }

    let exit = page
        .split(".SH \"EXIT STATUS\"\n")
        .nth(1)
        .expect("an EXIT STATUS section");
    let exit = exit.split("\n.SH ").next().unwrap();
    for (code, meaning) in ctune::error::EXIT_CODES {
        let entry = format!(".TP\n\\fB{code}\\fR\n");
        assert!(exit.contains(&entry), "exit code {code} missing:\n{exit}");
        // roff escapes '-' and "'"; compare the first words, which have neither.
        let words: String = meaning
            .split_whitespace()
            .take_while(|w| !w.contains(['-', '\'', '\\']))
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            exit.contains(&words),
            "exit code {code}'s meaning ({words}) missing"
        );
    }
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "FILES",
    ] {
        assert!(
            page.lines().any(|l| l == format!(".SH {section}")),
            "no {section} section"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    docgen(dir.path(), "0");
    let completions = dir.path().join("completions");
    for file in ["ctune.bash", "_ctune", "ctune.fish"] {
        let text = read(&completions.join(file));
        for word in ["status", "verify", "state-dir"] {
            assert!(text.contains(word), "{file} does not complete {word}");
        }
    }
    assert!(read(&completions.join("_ctune")).starts_with("#compdef ctune"));
    let bash = Command::new("bash")
        .arg("-n")
        .arg(completions.join("ctune.bash"))
        .output()
        .expect("run bash -n");
    assert!(
        bash.status.success(),
        "bash -n ctune.bash: {}",
        String::from_utf8_lossy(&bash.stderr)
    );
}

#[test]
fn reproducible() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    docgen(a.path(), "1700000000");
    docgen(b.path(), "1700000000");
    for file in [
        "ctune.8",
        "completions/ctune.bash",
        "completions/_ctune",
        "completions/ctune.fish",
    ] {
        assert_eq!(
            read(&a.path().join(file)),
            read(&b.path().join(file)),
            "{file} differs between two runs"
        );
    }
}
