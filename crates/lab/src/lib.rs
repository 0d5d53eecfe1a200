//! ctune's laboratory: the same decision code as the agent, driven by modelled traffic
//! ([`simulate`]) and by real traffic between network namespaces ([`livebench`]), with
//! one vocabulary for both ([`traffic`]) and one report format ([`scenario_report`]).
//! Never packaged: the `ctune` binary carries none of it.

pub mod livebench;
pub mod peers;
pub mod pods;
pub mod scenario_report;
pub mod simulate;
pub mod traffic;
