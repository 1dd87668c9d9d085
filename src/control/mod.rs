//! The decision logic: plain code with no I/O, no AWS types and no clock of
//! its own. The controller feeds it times and counts; tests drive it
//! directly. Nothing here reads the config file: each rule takes its own
//! parameters.

pub mod asl;
pub mod budget;
pub mod claims;
pub mod estimator;
pub mod eta;
pub mod ledger;
pub mod lifetimes;
pub mod linger;
pub mod naming;
pub mod pacing;
pub mod policy;
pub mod receive;
pub mod redrive;
pub mod refusal;

pub use policy::Policy;
