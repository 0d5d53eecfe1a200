//! ctune's pure core: what an observation of the conntrack table is, what ctune may be
//! told, and every rule that turns an observation into a plan.
//!
//! Nothing here touches the kernel, the filesystem (beyond the embedded default config),
//! a clock or a runtime: the agent (`ctune`) senses and acts around it, and the lab
//! (`ctune-lab`) drives the same rules with modelled traffic. The decision is
//! [`policy::decide`]: an [`model::Observation`], a [`config::Config`] and the previous
//! [`policy::PolicyState`] in, a [`plan::Plan`] and the next state out.

pub mod advice;
pub mod bounds;
pub mod ceiling;
pub mod composition;
pub mod config;
pub mod controller;
pub mod model;
pub mod plan;
pub mod policy;
pub mod pressure;
pub mod probe;
pub mod restore;
pub mod role;
pub mod schedule;
pub mod sysctl;
pub mod timeouts;
pub mod tunables;
pub mod units;
