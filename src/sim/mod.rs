//! The embedded simulated AWS: SQS, Step Functions, Lambda and CloudWatch
//! in virtual time, driving the same controller code as production.

pub mod asl;
pub mod driver;
pub mod plot;
pub mod ports;
pub mod report;
pub mod scenario;
pub mod world;

pub use driver::{SimOptions, run, run_with_timeline, simulate};
pub use report::{Report, Timeline};
pub use scenario::Scenario;
