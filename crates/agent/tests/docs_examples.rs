//! The docs are true (issue 13): every `console` block in README.md and docs/*.md that
//! follows an `<!-- example: ... -->` line is run, and the output it shows must be what
//! ctune prints; the README's exit-code table must be the one `--help` prints.
//!
//! The marker says where a command runs:
//! - `tree=NAME KEY=VALUE...`: on a copy of fixtures/NAME, with each conntrack sysctl KEY
//!   set to VALUE first (read-only commands and writing ones alike);
//! - `live`: on this machine (read-only commands only);
//! - `config=FILE` (with `tree=`): FILE (from the repository) as the tree's
//!   etc/ctune/ctune.yaml;
//! - `exit=N` (either): the exit code the example implies (0 otherwise).
//!
//! In a block, `$ ctune ARGS` lines are commands and the lines after each are its output.
//! A `...` line stands for any lines; without one at the start (end), the shown output
//! must start (end) where the real one does.

use crate::common;

use common::Tree;
use std::path::{Path, PathBuf};

/// One example: where it is, how to run it, and the commands with their shown output.
#[derive(Debug)]
struct Example {
    place: String,
    marker: Vec<String>,
    commands: Vec<(Vec<String>, Vec<String>)>,
}

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The examples of one Markdown file.
fn examples(path: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(marker) = line
            .strip_prefix("<!-- example:")
            .and_then(|m| m.strip_suffix("-->"))
        else {
            continue;
        };
        let place = format!("{}:{}", path.display(), i + 1);
        assert_eq!(
            lines.get(i + 1).copied(),
            Some("```console"),
            "{place}: an example marker must be followed by a ```console block"
        );
        let body: Vec<&str> = lines[i + 2..]
            .iter()
            .take_while(|l| **l != "```")
            .copied()
            .collect();
        out.push(Example {
            place,
            marker: marker.split_whitespace().map(str::to_string).collect(),
            commands: commands(&body),
        });
    }
    out
}

fn commands(body: &[&str]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for line in body {
        if let Some(cmd) = line.strip_prefix("$ ctune") {
            out.push((
                cmd.split_whitespace().map(str::to_string).collect(),
                Vec::new(),
            ));
        } else if let Some((_, shown)) = out.last_mut() {
            shown.push(line.trim_end().to_string());
        } else {
            panic!("output before any `$ ctune` line: {line}");
        }
    }
    out
}

/// Whether `shown` (with `...` gaps) matches `actual`, line by line.
fn matches(shown: &[String], actual: &[&str]) -> Result<(), String> {
    let chunks: Vec<&[String]> = shown.split(|l| l == "...").collect();
    let open_start = shown.first().is_some_and(|l| l == "...");
    let open_end = shown.last().is_some_and(|l| l == "...");
    let mut at = 0;
    for (n, chunk) in chunks.iter().enumerate() {
        if chunk.is_empty() {
            continue;
        }
        let found = (at..=actual.len().saturating_sub(chunk.len())).find(|&i| {
            chunk
                .iter()
                .zip(&actual[i..])
                .all(|(a, b)| a == b.trim_end())
        });
        match found {
            Some(i) if n == 0 && !open_start && i != 0 => {
                return Err(format!("the output does not start with {:?}", chunk[0]));
            }
            Some(i) => at = i + chunk.len(),
            None => return Err(format!("not found in order: {:#?}", chunk)),
        }
    }
    if !open_end && at != actual.len() {
        return Err(format!(
            "the real output goes on after the shown end: {:?}",
            &actual[at..]
        ));
    }
    Ok(())
}

fn run(ex: &Example, args: &[String]) -> (i32, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut tree = None;
    for m in &ex.marker {
        match m.split_once('=') {
            Some(("tree", name)) => tree = Some(Tree::copy(name)),
            Some(("exit", _)) => {}
            Some(("config", file)) => {
                let t = tree.as_ref().expect("tree= comes before config=");
                let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(file);
                std::fs::create_dir_all(t.path().join("etc/ctune")).unwrap();
                std::fs::copy(&src, t.path().join("etc/ctune/ctune.yaml"))
                    .unwrap_or_else(|e| panic!("{}: {file}: {e}", ex.place));
            }
            Some((key, value)) => {
                let t = tree
                    .as_ref()
                    .expect("tree= comes before the values it sets");
                let path = t.path().join("proc/sys/net/netfilter").join(key);
                assert!(path.exists(), "{}: no sysctl {key} in the tree", ex.place);
                std::fs::write(path, format!("{value}\n")).unwrap();
            }
            None if m == "live" => {}
            None => panic!("{}: unknown marker word {m}", ex.place),
        }
    }
    let (code, stdout, stderr) = match &tree {
        Some(t) => t.ctune(&args),
        None => common::ctune(&args),
    };
    let root = tree.as_ref().map(|t| t.path().display().to_string());
    let text = stdout + &stderr;
    (code, root.map_or(text.clone(), |r| text.replace(&r, "")))
}

#[test]
fn every_marked_example_in_the_docs_prints_what_it_shows() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in doc_files() {
        for ex in examples(&file) {
            let want_exit: i32 = ex
                .marker
                .iter()
                .find_map(|m| m.strip_prefix("exit="))
                .map_or(0, |c| c.parse().unwrap());
            if ex.marker.iter().any(|m| m == "live") {
                common::require_root(&ex.place);
            }
            for (args, shown) in &ex.commands {
                let (code, text) = run(&ex, args);
                let actual: Vec<&str> = text.lines().collect();
                if code != want_exit {
                    failures.push(format!(
                        "{}: ctune {args:?} exited {code}, not {want_exit}:\n{text}",
                        ex.place
                    ));
                } else if let Err(why) = matches(shown, &actual) {
                    failures.push(format!(
                        "{}: ctune {args:?}: {why}\nreal output:\n{text}",
                        ex.place
                    ));
                }
                checked += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked >= 2, "only {checked} examples found");
}

#[test]
fn the_readme_exit_code_table_is_the_one_help_prints() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    for (code, meaning) in ctune::error::EXIT_CODES {
        let row = format!("| `{code}` | {meaning} |");
        assert!(readme.contains(&row), "README lacks the row {row}");
    }
    let rows = readme
        .lines()
        .filter(|l| l.starts_with("| `") && l.len() > 6 && l.as_bytes()[3].is_ascii_digit())
        .count();
    assert_eq!(
        rows,
        ctune::error::EXIT_CODES.len(),
        "README has exit-code rows ctune does not"
    );
    let (_, help, _) = common::ctune(&["--help"]);
    for (code, meaning) in ctune::error::EXIT_CODES {
        let line = format!("  {code}  {meaning}");
        assert!(
            help.lines().any(|l| l.trim_end() == line),
            "--help lacks {line:?}"
        );
    }
}

#[test]
fn the_matcher_finds_gaps_and_refuses_what_is_not_there() {
    let actual = ["a", "b", "c", "d"];
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(matches(&s(&["a", "...", "d"]), &actual).is_ok());
    assert!(matches(&s(&["...", "b", "c", "..."]), &actual).is_ok());
    assert!(matches(&s(&["b", "..."]), &actual).is_err());
    assert!(matches(&s(&["...", "c"]), &actual).is_err());
    assert!(matches(&s(&["...", "c", "b", "..."]), &actual).is_err());
}
