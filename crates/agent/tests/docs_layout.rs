//! docs/design.md draws the workspace: every source module of every crate is named in
//! its module map, so a newcomer's map never leaves a module out.

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
