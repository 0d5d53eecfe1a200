//! Integration tests of the lab (the simulator, the live bench, the generated docs):
//! one test crate whose modules are the former test binaries (run one with
//! `cargo test -p ctune-lab --test integration simulate::`).

mod docgen;
mod golden;
mod live_bench;
mod live_churn;
mod simulate;
