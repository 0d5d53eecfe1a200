//! Acting: writing a plan to the kernel with read-back ([`apply`]), persisting it for the
//! next boot ([`persist`], through [`atomic`] files), remembering what ctune did
//! ([`state`], guarded by [`lock`]), and the two other ways in: [`boot`] and [`restore`].

pub mod apply;
pub mod atomic;
pub mod boot;
pub mod lock;
pub mod persist;
pub mod restore;
pub mod state;
