//! fanout drains SQS work queues into AWS Step Functions executions and
//! holds the Lambda concurrency those executions use at a ceiling.
//!
//! # Layout
//! - [`config`]: the controller's TOML config, defaults and validation.
//! - [`ports`]: the async traits the controller drives (queues, executions,
//!   concurrency metrics, metrics sink), in the project's own types.
//! - [`control`]: decision logic without I/O: admission budget, ledger,
//!   estimator, naming, pacing.
//! - [`controller`]: the async loop wiring ports and decisions; shutdown.
//! - [`sim`]: simulated SQS, Step Functions, Lambda and CloudWatch in
//!   virtual time, scenarios and the run report.
//! - [`aws`]: the ports over the AWS SDK (SQS, Step Functions, CloudWatch,
//!   Lambda) and the mapping of SDK errors.
//! - [`run`], [`enqueue`], [`status`], [`check`]: the commands of the same
//!   names; [`telemetry`]: JSON logs, /healthz and /metrics;
//!   [`healthcheck`]: the container health check's probe of /healthz.

pub mod aws;
pub mod check;
pub mod config;
pub mod control;
pub mod controller;
pub mod enqueue;
pub mod healthcheck;
pub mod metrics;
pub mod ports;
pub mod reload;
pub mod run;
pub mod sim;
pub mod status;
pub mod telemetry;
