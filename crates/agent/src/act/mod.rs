//! Acting: writing a plan to the kernel with read-back ([`apply`]), persisting it for the
//! next boot ([`persist`], through [`atomic`] files), remembering what ctune did
//! ([`state`], guarded by [`lock`]; every applied change in [`history`]), the two other
//! ways in ([`boot`] and [`restore`]), and checking that what ctune set is still in
//! force ([`verify`]).

pub mod apply;
pub mod atomic;
pub mod boot;
pub mod history;
pub mod lock;
pub mod persist;
pub mod restore;
pub mod state;
pub mod verify;
