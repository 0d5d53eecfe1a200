//! The packaged binary carries only what runs in production: the lab's simulator,
//! benchmark and plotter live in `ctune-lab`, so no trace of the plotting crate may be
//! linked into `ctune` (its debug build names every crate it links).

#[test]
fn the_agent_binary_links_no_plotter() {
    let bin = std::fs::read(env!("CARGO_BIN_EXE_ctune")).expect("read the ctune binary");
    for needle in [&b"plotters"[..], b"ctune_lab", b"livebench"] {
        let found = bin.windows(needle.len()).any(|w| w == needle);
        assert!(
            !found,
            "the ctune binary contains {:?}: a lab crate leaked into the agent",
            String::from_utf8_lossy(needle)
        );
    }
}
