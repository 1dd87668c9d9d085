//! fanout drains SQS work queues into AWS Step Functions executions and
//! holds the Lambda concurrency those executions use at a ceiling.
//!
//! # Layout
//! - [`config`]: the controller's TOML config, defaults and validation.
//! - [`ports`]: the async traits the controller drives (queues, executions,
//!   concurrency metrics, metrics sink), in the project's own types.
//! - [`control`]: decision logic without I/O: admission budget, ledger,
//!   estimator, naming, pacing, receive plan, delete linger.
//! - [`controller`]: the async loops wiring ports and decisions, one file
//!   per duty; shutdown.
//! - [`metrics`]: the controller's gauges and counters, each with its name
//!   and help text.
//! - [`sim`]: simulated SQS, Step Functions, Lambda and CloudWatch in
//!   virtual time (one model per service under `sim::world`), scenarios
//!   and the run report.
//! - [`aws`]: the ports over the AWS SDK (SQS, Step Functions, CloudWatch,
//!   Lambda) and the mapping of SDK errors.
//! - [`run`]: `fanout run`, the controller on real AWS as a long-lived
//!   service.
//! - [`reload`]: config hot reload: what changed, whether it may apply, and
//!   its triggers (SIGHUP, a changed file).
//! - [`enqueue`]: `fanout enqueue`, one company update or a whole refresh
//!   onto a queue, each body checked first.
//! - [`redrive`]: `fanout failed` and `fanout redrive`, the unsuccessful
//!   executions and a redrive request for each, served by the controller.
//! - [`status`]: `fanout status`, queue depths, running executions and the
//!   ceiling.
//! - [`check`]: `fanout check-config`, every problem of a config with its
//!   location.
//! - [`telemetry`]: JSON logs, /healthz and /metrics.
//! - [`healthcheck`]: the container health check's probe of /healthz.

pub mod aws;
pub mod check;
pub mod config;
pub mod control;
pub mod controller;
pub mod enqueue;
pub mod healthcheck;
pub mod metrics;
pub mod ports;
pub mod redrive;
pub mod reload;
pub mod run;
pub mod sim;
pub mod status;
pub mod telemetry;
