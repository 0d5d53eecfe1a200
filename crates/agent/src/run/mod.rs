//! Running: one observe -> decide -> apply -> persist step ([`engine`]), the background
//! loop that schedules steps and probes ([`agent_loop`]), and systemd's notify protocol
//! ([`notify`]).

pub mod agent_loop;
pub mod engine;
pub mod metrics;
pub mod notify;
