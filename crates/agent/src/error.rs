//! Top-level errors and the exit codes they map to. [`EXIT_CODES`] is the one table:
//! `--help`, the README and the man page print it, and a test checks each code.

use crate::sense::observe::ObserveError;
use ctune_core::config::ConfigError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a required kernel file could not be read.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code: bad command line or config.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: conntrack not loaded.
pub const EXIT_NO_CONNTRACK: u8 = 3;
/// Exit code: some changes or files did not take effect.
pub const EXIT_PARTIAL: u8 = 4;
/// Exit code of `status`: a table is over a pressure level now, nothing dropped.
pub const EXIT_PRESSURE: u8 = 5;
/// Exit code of `status`: packets were lost to a full table during the sample.
pub const EXIT_DROPPING: u8 = 6;
/// Exit code of `verify`: a live value or persisted file differs from what ctune set.
pub const EXIT_DIFFERS: u8 = 7;

/// Every exit code and what it means, for `--help`, the docs and the tests.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (EXIT_OK, "success; for `status`: every table healthy"),
    (
        EXIT_FAILURE,
        "a file every decision needs could not be read (the message names it)",
    ),
    (
        EXIT_USAGE,
        "invalid command line or config (file, line and key named)",
    ),
    (
        EXIT_NO_CONNTRACK,
        "conntrack is not active: nf_conntrack is not loaded",
    ),
    (
        EXIT_PARTIAL,
        "partly done: a value or file could not be written (each failure is named)",
    ),
    (
        EXIT_PRESSURE,
        "`status`: a table is over a pressure level now (elevated or critical), nothing dropped",
    ),
    (
        EXIT_DROPPING,
        "`status`: packets were dropped or evicted for a full table during the sample",
    ),
    (
        EXIT_DIFFERS,
        "`verify`: the live values or persisted files differ from what ctune set (each difference named)",
    ),
];

/// The exit-code table as `--help` prints it.
pub fn exit_code_help() -> String {
    EXIT_CODES
        .iter()
        .map(|(code, what)| format!("  {code}  {what}\n"))
        .collect()
}

/// Any error that ends a ctune command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel could not be observed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Output could not be written (closed pipe, full disk).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] crate::act::state::StateError),
    /// ctune's history could not be read.
    #[error("cannot read ctune's history: {0}")]
    History(crate::sense::kfile::FileError),
    /// Another ctune holds the lock.
    #[error(transparent)]
    Lock(#[from] crate::act::lock::LockError),
    /// Some of the work did not take effect; the details were printed.
    #[error("{0}")]
    Partial(String),
}

impl From<crate::act::restore::RestoreError> for Error {
    fn from(e: crate::act::restore::RestoreError) -> Self {
        match e {
            crate::act::restore::RestoreError::State(s) => Error::State(s),
            crate::act::restore::RestoreError::Observe(o) => Error::Observe(o),
        }
    }
}

impl Error {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            Error::Observe(ObserveError::NotLoaded(_)) => EXIT_NO_CONNTRACK,
            Error::Observe(ObserveError::Unreadable(_))
            | Error::Output(_)
            | Error::State(_)
            | Error::History(_) => EXIT_FAILURE,
            Error::Partial(_) => EXIT_PARTIAL,
            Error::Lock(_) => EXIT_FAILURE,
        }
    }
}
