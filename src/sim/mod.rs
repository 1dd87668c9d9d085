//! The embedded simulated AWS: SQS, Step Functions, Lambda and CloudWatch
//! in virtual time, driving the same controller code as production.

pub mod driver;
pub mod ports;
pub mod report;
pub mod scenario;
pub mod world;

pub use driver::{SimOptions, run, simulate};
pub use report::Report;
pub use scenario::Scenario;
