//! docs/design.md draws the workspace: every source module of every crate is named in
//! its module map, so a newcomer's map never leaves a module out. And the code keeps the
//! shape the design asks of it: no function in the core or the agent over 80 lines.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_is_in_the_design_module_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let design = std::fs::read_to_string(root.join("docs/design.md")).unwrap();
    let map = &design[design.find("## Module map").expect("a module map section")..];
    let mut missing = Vec::new();
    for krate in ["core", "agent", "lab"] {
        let mut files = Vec::new();
        sources(&root.join("crates").join(krate).join("src"), &mut files);
        for f in files {
            let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
            if ["lib", "mod"].contains(&stem.as_str()) {
                continue;
            }
            if !map.contains(&format!("`{stem}`"))
                && !map.contains(&format!("::{stem}`"))
                && !map.contains(&format!("/{stem}`"))
                && !map.contains(&format!(" {stem}`"))
                && !map.contains(&format!("`{stem},"))
                && !map.contains(&format!(" {stem},"))
            {
                missing.push(f.display().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in docs/design.md's module map: {missing:?}"
    );
}

/// The functions of a rustfmt-formatted file longer than `limit` lines, signature to
/// closing brace: (line, name, length). rustfmt puts a function's closing brace at the
/// indentation of its `fn`, which is what ends one here.
fn long_functions(text: &str, limit: usize) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let after_fn = [
            "pub fn ",
            "pub(crate) fn ",
            "pub(super) fn ",
            "fn ",
            "async fn ",
            "pub async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p));
        let Some(rest) = after_fn else { continue };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body opens on the line that ends with `{`; a declaration ends with `;`.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j] == close) {
            let len = end - i + 1;
            if len > limit {
                long.push((i + 1, name, len));
            }
        }
    }
    long
}

#[test]
fn no_function_in_the_core_the_agent_or_the_lab_is_over_80_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut over = Vec::new();
    for krate in ["core", "agent", "lab"] {
        let mut files = Vec::new();
        sources(&root.join("crates").join(krate).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (line, name, len) in long_functions(&text, 80) {
                over.push(format!("{}:{line} {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "functions over 80 lines (split them): {over:#?}"
    );
}

#[test]
fn a_long_function_is_found_and_a_short_one_is_not() {
    let body = "    let x = 1;\n".repeat(79);
    let long = format!("fn long() {{\n{body}    x;\n}}\n\nfn short() {{\n}}\n");
    assert_eq!(long_functions(&long, 80), vec![(1, "long".to_string(), 82)]);
    let nested =
        format!("impl A {{\n    pub fn f(\n        a: u8,\n    ) -> u8 {{\n{body}    }}\n}}\n");
    assert_eq!(long_functions(&nested, 80), vec![(2, "f".to_string(), 83)]);
    assert!(long_functions(&long, 100).is_empty());
}
