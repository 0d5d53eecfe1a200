//! Sensing: where the files are ([`roots`]), reading them with their cause kept
//! ([`kfile`]), the counters over ctnetlink where procfs lacks them ([`ctstats`]),
//! finding and entering network namespaces ([`netns`]), and one
//! [`observe::observe`] that turns all of it into the core's `Observation`.

pub mod config_file;
pub mod ctnetlink;
pub mod ctstats;
pub mod hostfacts;
pub mod kfile;
pub mod netns;
pub mod nftchains;
pub mod nsdir;
pub mod observe;
pub mod roots;
