//! ctune, the agent: senses the kernel's connection-tracking table, hands the observation
//! to the pure decision in `ctune_core`, and acts on the plan.
//!
//! The three parts follow the loop: [`sense`] (kernel and /etc I/O, all rooted at a
//! [`sense::roots::Roots`] so tests point it at a temporary tree), [`act`] (apply with
//! read-back, atomic persistence, state, boot, restore), [`run`] (one step, the agent
//! loop, systemd notify); [`cli`] (the command line, resolved into an
//! [`cli::Invocation`]), [`commands`] (one module per command), [`report`] and [`error`]
//! are the front.

#![forbid(unsafe_code)]

pub mod act;
pub mod cli;
pub mod commands;
pub mod error;
pub mod report;
pub mod run;
pub mod sense;
