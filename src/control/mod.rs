//! The decision logic: plain code with no I/O, no AWS types and no clock of
//! its own. The controller feeds it times and counts; tests drive it
//! directly.

pub mod budget;
pub mod estimator;
pub mod ledger;
pub mod naming;
pub mod pacing;
