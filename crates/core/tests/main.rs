//! Integration tests of the core through its public API: one test crate whose modules
//! are the former test binaries (run one with
//! `cargo test -p ctune-core --test integration policy_props::`).

mod parsers_fuzz;
mod policy_props;
