//! ctune: observe the kernel's connection-tracking table, decide safe sizes and timeouts,
//! and explain the decision.
//!
//! The crate is split along the functional-core / imperative-shell line: everything that
//! touches the kernel or the filesystem lives in [`kfile`], [`observe`], [`netns`] and
//! [`persist`], all rooted at a [`roots::Roots`] so tests can point them at a temporary
//! tree. [`policy`] is pure: an [`observe::Observation`], a [`config::Config`] and the
//! previous [`policy::PolicyState`] in, a [`plan::Plan`] out.

#![forbid(unsafe_code)]

pub mod agent;
pub mod apply;
pub mod atomic;
pub mod boot;
pub mod ceiling;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod kfile;
pub mod livebench;
pub mod lock;
pub mod meminfo;
pub mod netns;
pub mod notify;
pub mod observe;
pub mod persist;
pub mod plan;
pub mod policy;
pub mod pressure;
pub mod probe;
pub mod report;
pub mod restore;
pub mod roots;
pub mod scenario_report;
pub mod simulate;
pub mod slab;
pub mod stat;
pub mod state;
pub mod timeouts;
pub mod tunables;
pub mod units;
