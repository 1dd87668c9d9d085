//! The controller's configuration: one TOML file, shared by `fanout run`
//! and `fanout simulate --config`. Every option has a default (a `const fn`)
//! and is documented in `config/fanout.toml`; `validate` reports every
//! problem at once.

// Negated comparisons are deliberate: a NaN must fail validation.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

pub use crate::control::Policy;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub controller: ControllerConfig,
    #[serde(default)]
    pub naming: NamingConfig,
    #[serde(default)]
    pub estimator: EstimatorConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub seed: SeedPolicyConfig,
    #[serde(default)]
    pub fixed: FixedPolicyConfig,
    /// Work queues in priority order: the first is always served first.
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// Optional queue of EventBridge execution status events.
    #[serde(default)]
    pub completion_queue: Option<CompletionQueueConfig>,
    /// AWS connection settings (ignored by the simulator).
    #[serde(default)]
    pub aws: AwsConfig,
    /// `fanout run`'s HTTP server (/healthz, /metrics).
    #[serde(default)]
    pub http: HttpConfig,
    /// Custom metrics published to CloudWatch by `fanout run`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// How `fanout run` picks up config changes without a restart.
    #[serde(default)]
    pub reload: ReloadConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    #[serde(default)]
    pub policy: Policy,
    /// Lambda concurrency the pipeline may use, never to be exceeded.
    #[serde(default = "d_ceiling")]
    pub ceiling: u32,
    /// Account concurrency limit; when set, other load seen in the metric
    /// lowers the effective ceiling so the account is never oversubscribed.
    #[serde(default)]
    pub account_limit: Option<u32>,
    /// Fraction of the ceiling kept free for the metric's noise.
    #[serde(default = "d_headroom")]
    pub headroom_fraction: f64,
    /// The most Lambdas one execution can run at once (the seed's ×3).
    #[serde(default = "d_max_lambdas")]
    pub max_lambdas_per_execution: f64,
    /// Fraction of the target kept free of lower-priority queues, so a
    /// priority message starts within a tick even at the ceiling.
    #[serde(default = "d_priority_reserve")]
    pub priority_reserve_fraction: f64,
    /// Admission loop period.
    #[serde(default = "d_tick_ms")]
    pub tick_ms: u64,
    /// Visibility timeout set on every receive.
    #[serde(default = "d_visibility")]
    pub visibility_timeout_secs: u64,
    /// Long-poll wait when the queues look empty.
    #[serde(default = "d_idle_wait")]
    pub idle_wait_secs: u64,
    /// Concurrent ReceiveMessage calls when the budget is large.
    #[serde(default = "d_receives")]
    pub max_receives_in_flight: usize,
    /// Concurrent StartExecution calls.
    #[serde(default = "d_starts")]
    pub max_starts_in_flight: usize,
    /// StartExecution token bucket, below the account's refill rate.
    #[serde(default = "d_start_rate")]
    pub start_rate_per_s: u32,
    #[serde(default = "d_start_burst")]
    pub start_burst: u32,
    /// Lambda scaling the ramp respects: concurrency may grow by this much
    /// per second (1,000 per 10 s per function), from `ramp_initial`.
    #[serde(default = "d_ramp_rate")]
    pub ramp_concurrency_per_s: f64,
    #[serde(default = "d_ramp_initial")]
    pub ramp_initial: f64,
    /// Period of the ListExecutions(RUNNING) reconcile.
    #[serde(default = "d_reconcile")]
    pub reconcile_interval_secs: u64,
    /// ListExecutions pages per second (the account refills 5 per second).
    #[serde(default = "d_list_rate")]
    pub list_pages_per_s: u32,
    /// An execution younger than this is kept even if the listing misses
    /// it (ListExecutions is eventually consistent).
    #[serde(default = "d_list_grace")]
    pub list_grace_secs: u64,
    /// Period of the CloudWatch poll.
    #[serde(default = "d_metrics_poll")]
    pub metrics_poll_secs: u64,
    /// Time allowed to hand back messages on shutdown (below ECS's 30 s).
    #[serde(default = "d_shutdown")]
    pub shutdown_deadline_secs: u64,
}

const fn d_ceiling() -> u32 {
    1000
}
const fn d_headroom() -> f64 {
    0.01
}
const fn d_max_lambdas() -> f64 {
    3.0
}
const fn d_priority_reserve() -> f64 {
    0.005
}
const fn d_tick_ms() -> u64 {
    250
}
const fn d_visibility() -> u64 {
    120
}
const fn d_idle_wait() -> u64 {
    5
}
const fn d_receives() -> usize {
    16
}
const fn d_starts() -> usize {
    64
}
const fn d_start_rate() -> u32 {
    250
}
const fn d_start_burst() -> u32 {
    500
}
const fn d_ramp_rate() -> f64 {
    100.0
}
const fn d_ramp_initial() -> f64 {
    1000.0
}
const fn d_reconcile() -> u64 {
    5
}
const fn d_list_rate() -> u32 {
    3
}
const fn d_list_grace() -> u64 {
    30
}
const fn d_metrics_poll() -> u64 {
    20
}
const fn d_shutdown() -> u64 {
    20
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            policy: Policy::default(),
            ceiling: d_ceiling(),
            account_limit: None,
            headroom_fraction: d_headroom(),
            max_lambdas_per_execution: d_max_lambdas(),
            priority_reserve_fraction: d_priority_reserve(),
            tick_ms: d_tick_ms(),
            visibility_timeout_secs: d_visibility(),
            idle_wait_secs: d_idle_wait(),
            max_receives_in_flight: d_receives(),
            max_starts_in_flight: d_starts(),
            start_rate_per_s: d_start_rate(),
            start_burst: d_start_burst(),
            ramp_concurrency_per_s: d_ramp_rate(),
            ramp_initial: d_ramp_initial(),
            reconcile_interval_secs: d_reconcile(),
            list_pages_per_s: d_list_rate(),
            list_grace_secs: d_list_grace(),
            metrics_poll_secs: d_metrics_poll(),
            shutdown_deadline_secs: d_shutdown(),
        }
    }
}

impl ControllerConfig {
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingConfig {
    /// Execution name template. `{message_id}`, `{hash}` (12 hex chars of
    /// the body) and `{field}` for a top-level JSON field of the body.
    #[serde(default = "d_template")]
    pub template: String,
}

fn d_template() -> String {
    "{message_id}".to_string()
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig {
            template: d_template(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimatorConfig {
    /// Margin added to every measured Lambdas-per-execution ratio.
    #[serde(default = "d_margin")]
    pub margin_fraction: f64,
    /// Extra margin of noise_z / √(running executions): the minute-to-minute
    /// wander of a sum over N executions.
    #[serde(default = "d_noise_z")]
    pub noise_z: f64,
    /// A minute counts for learning only if the running count stayed
    /// within this fraction of its mean for an execution's lifetime.
    #[serde(default = "d_stability")]
    pub stability_fraction: f64,
    /// Completed executions needed before their mean duration is trusted.
    #[serde(default = "d_min_completions")]
    pub min_completions: u64,
    /// Lower bound of the estimate (the widest workflow step is 1 Lambda).
    #[serde(default = "d_min_lambdas")]
    pub min_lambdas_per_execution: f64,
    /// Where k̂ starts, instead of `controller.max_lambdas_per_execution`:
    /// the value a previous run learned. `None` (default): the maximum.
    #[serde(default)]
    pub initial_lambdas_per_execution: Option<f64>,
    /// Keep k̂ with the state machine (a tag) and start from it next time.
    #[serde(default = "d_remember")]
    pub remember: bool,
}

const fn d_remember() -> bool {
    true
}

const fn d_margin() -> f64 {
    0.005
}
const fn d_noise_z() -> f64 {
    1.0
}
const fn d_stability() -> f64 {
    0.06
}
const fn d_min_completions() -> u64 {
    200
}
const fn d_min_lambdas() -> f64 {
    1.0
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        EstimatorConfig {
            margin_fraction: d_margin(),
            noise_z: d_noise_z(),
            stability_fraction: d_stability(),
            min_completions: d_min_completions(),
            min_lambdas_per_execution: d_min_lambdas(),
            initial_lambdas_per_execution: None,
            remember: d_remember(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "d_retry_initial")]
    pub initial_ms: u64,
    #[serde(default = "d_retry_max")]
    pub max_ms: u64,
    #[serde(default = "d_retry_mult")]
    pub multiplier: f64,
    /// Give up on a retryable start after this long and hand the message
    /// back to the queue (it is redelivered; nothing is lost).
    #[serde(default = "d_retry_give_up")]
    pub give_up_secs: u64,
}

const fn d_retry_initial() -> u64 {
    100
}
const fn d_retry_max() -> u64 {
    10_000
}
const fn d_retry_mult() -> f64 {
    2.0
}
const fn d_retry_give_up() -> u64 {
    600
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: d_retry_initial(),
            max_ms: d_retry_max(),
            multiplier: d_retry_mult(),
            give_up_secs: d_retry_give_up(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPolicyConfig {
    #[serde(default = "d_seed_mult")]
    pub multiplier: f64,
    #[serde(default = "d_seed_delay")]
    pub requeue_delay_secs: u64,
    /// Concurrent pollers (the fanout Lambda's concurrency).
    #[serde(default = "d_seed_pollers")]
    pub pollers: usize,
}

const fn d_seed_mult() -> f64 {
    3.0
}
const fn d_seed_delay() -> u64 {
    30
}
const fn d_seed_pollers() -> usize {
    5
}

impl Default for SeedPolicyConfig {
    fn default() -> Self {
        SeedPolicyConfig {
            multiplier: d_seed_mult(),
            requeue_delay_secs: d_seed_delay(),
            pollers: d_seed_pollers(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FixedPolicyConfig {
    /// Cap of running executions; default ceiling / max_lambdas_per_execution,
    /// the largest fixed cap that can never exceed the ceiling.
    #[serde(default)]
    pub max_running: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// A short name for logs and metrics ("priority", "bulk").
    pub name: String,
    /// Queue URL (AWS only).
    #[serde(default)]
    pub url: String,
    /// Where input that can never start is moved, with its reason.
    #[serde(default)]
    pub dlq_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionQueueConfig {
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub state_machine_arn: String,
    /// Pipeline functions whose concurrency is summed; empty: account-wide.
    #[serde(default)]
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the /healthz and /metrics server.
    #[serde(default = "d_listen")]
    pub listen: String,
}

fn d_listen() -> String {
    "0.0.0.0:8080".to_string()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: d_listen() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Publish fanout's gauges and counters with PutMetricData.
    #[serde(default)]
    pub cloudwatch: bool,
    #[serde(default = "d_namespace")]
    pub namespace: String,
    /// One PutMetricData batch per this many seconds.
    #[serde(default = "d_publish_interval")]
    pub interval_secs: u64,
}

fn d_namespace() -> String {
    "fanout".to_string()
}
const fn d_publish_interval() -> u64 {
    60
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            cloudwatch: false,
            namespace: d_namespace(),
            interval_secs: d_publish_interval(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll the config file and apply a changed content (SIGHUP always
    /// reloads). Off when the config comes from `$FANOUT_CONFIG_TOML`.
    #[serde(default = "d_watch_file")]
    pub watch_file: bool,
    /// How often the file is read and compared with the last content seen.
    #[serde(default = "d_reload_poll")]
    pub poll_secs: u64,
}

const fn d_watch_file() -> bool {
    true
}
const fn d_reload_poll() -> u64 {
    5
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch_file: d_watch_file(),
            poll_secs: d_reload_poll(),
        }
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), render(problems))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// Every problem on its own indented line, for messages a user reads.
pub fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Config::parse(&text, &shown)
    }

    /// Parse and validate TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// Every problem with the values, not just the first.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(Problem {
                field: field.to_string(),
                message,
            })
        };
        let c = &self.controller;
        if c.ceiling == 0 {
            bad("controller.ceiling", "must be at least 1".into());
        }
        if let Some(limit) = c.account_limit
            && limit < c.ceiling
        {
            bad(
                "controller.account_limit",
                format!("{limit} is below the ceiling {}", c.ceiling),
            );
        }
        if !(0.0..0.5).contains(&c.headroom_fraction) {
            bad(
                "controller.headroom_fraction",
                format!("{} must be in [0, 0.5)", c.headroom_fraction),
            );
        }
        if !(c.max_lambdas_per_execution >= 1.0 && c.max_lambdas_per_execution.is_finite()) {
            bad(
                "controller.max_lambdas_per_execution",
                format!("{} must be at least 1", c.max_lambdas_per_execution),
            );
        }
        if !(0.0..0.5).contains(&c.priority_reserve_fraction) {
            bad(
                "controller.priority_reserve_fraction",
                format!("{} must be in [0, 0.5)", c.priority_reserve_fraction),
            );
        }
        if c.tick_ms == 0 || c.tick_ms > 60_000 {
            bad(
                "controller.tick_ms",
                format!("{} must be in 1..=60000", c.tick_ms),
            );
        }
        if !(1..=43_200).contains(&c.visibility_timeout_secs) {
            bad(
                "controller.visibility_timeout_secs",
                format!(
                    "{} must be in 1..=43200 (SQS limit)",
                    c.visibility_timeout_secs
                ),
            );
        }
        if c.idle_wait_secs > 20 {
            bad(
                "controller.idle_wait_secs",
                format!("{} exceeds SQS's 20 s long poll", c.idle_wait_secs),
            );
        }
        if c.max_receives_in_flight == 0 {
            bad(
                "controller.max_receives_in_flight",
                "must be at least 1".into(),
            );
        }
        if c.max_starts_in_flight == 0 {
            bad(
                "controller.max_starts_in_flight",
                "must be at least 1".into(),
            );
        }
        if c.start_rate_per_s == 0 {
            bad("controller.start_rate_per_s", "must be at least 1".into());
        }
        if c.start_burst == 0 {
            bad("controller.start_burst", "must be at least 1".into());
        }
        if !(c.ramp_concurrency_per_s > 0.0) {
            bad(
                "controller.ramp_concurrency_per_s",
                "must be positive".into(),
            );
        }
        if !(c.ramp_initial >= c.max_lambdas_per_execution) {
            bad(
                "controller.ramp_initial",
                format!(
                    "{} must be at least controller.max_lambdas_per_execution ({}), or nothing can ever start",
                    c.ramp_initial, c.max_lambdas_per_execution
                ),
            );
        }
        if c.reconcile_interval_secs == 0 {
            bad(
                "controller.reconcile_interval_secs",
                "must be at least 1".into(),
            );
        }
        if c.list_pages_per_s == 0 {
            bad("controller.list_pages_per_s", "must be at least 1".into());
        }
        if c.metrics_poll_secs == 0 {
            bad("controller.metrics_poll_secs", "must be at least 1".into());
        }
        if c.shutdown_deadline_secs == 0 || c.shutdown_deadline_secs >= 120 {
            bad(
                "controller.shutdown_deadline_secs",
                format!(
                    "{} must be in 1..120 (Fargate's longest stopTimeout); keep it below the task's stopTimeout",
                    c.shutdown_deadline_secs
                ),
            );
        }
        if let Err(e) = crate::control::naming::Namer::new(&self.naming.template) {
            bad("naming.template", e.to_string());
        }
        let e = &self.estimator;
        if !(0.0..1.0).contains(&e.margin_fraction) {
            bad(
                "estimator.margin_fraction",
                format!("{} must be in [0, 1)", e.margin_fraction),
            );
        }
        if !(0.0..=5.0).contains(&e.noise_z) {
            bad(
                "estimator.noise_z",
                format!("{} must be in [0, 5]", e.noise_z),
            );
        }
        if !(e.stability_fraction > 0.0 && e.stability_fraction < 1.0) {
            bad(
                "estimator.stability_fraction",
                format!("{} must be in (0, 1)", e.stability_fraction),
            );
        }
        if !(e.min_lambdas_per_execution > 0.0
            && e.min_lambdas_per_execution <= c.max_lambdas_per_execution)
        {
            bad(
                "estimator.min_lambdas_per_execution",
                format!(
                    "{} must be positive and at most controller.max_lambdas_per_execution",
                    e.min_lambdas_per_execution
                ),
            );
        }
        if let Some(k0) = e.initial_lambdas_per_execution
            && !(k0 >= e.min_lambdas_per_execution && k0 <= c.max_lambdas_per_execution)
        {
            bad(
                "estimator.initial_lambdas_per_execution",
                format!(
                    "{k0} must be between estimator.min_lambdas_per_execution and controller.max_lambdas_per_execution"
                ),
            );
        }
        let r = &self.retry;
        if r.initial_ms == 0 || r.max_ms < r.initial_ms {
            bad(
                "retry",
                format!(
                    "need 0 < initial_ms ({}) <= max_ms ({})",
                    r.initial_ms, r.max_ms
                ),
            );
        }
        if !(r.multiplier >= 1.0) {
            bad(
                "retry.multiplier",
                format!("{} must be at least 1", r.multiplier),
            );
        }
        if !(self.seed.multiplier > 0.0) {
            bad("seed.multiplier", "must be positive".into());
        }
        if self.seed.pollers == 0 {
            bad("seed.pollers", "must be at least 1".into());
        }
        if self.fixed.max_running == Some(0) {
            bad("fixed.max_running", "must be at least 1".into());
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "http.listen",
                format!(
                    "\"{}\" is not an address and port such as 0.0.0.0:8080",
                    self.http.listen
                ),
            );
        }
        if self.metrics.namespace.is_empty() || self.metrics.namespace.starts_with("AWS/") {
            bad(
                "metrics.namespace",
                format!(
                    "\"{}\" must be non-empty and not start with AWS/",
                    self.metrics.namespace
                ),
            );
        }
        if self.metrics.interval_secs == 0 {
            bad("metrics.interval_secs", "must be at least 1".into());
        }
        if !(1..=3600).contains(&self.reload.poll_secs) {
            bad(
                "reload.poll_secs",
                format!("{} must be in 1..=3600", self.reload.poll_secs),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.name.is_empty() {
                bad(&format!("queues[{i}].name"), "must not be empty".into());
            } else if !names.insert(q.name.clone()) {
                bad(
                    &format!("queues[{i}].name"),
                    format!("\"{}\" is used twice", q.name),
                );
            }
        }
        out
    }

    /// Problems that only matter against real AWS.
    pub fn validate_for_aws(&self) -> Vec<Problem> {
        let mut out = self.validate();
        if self.queues.is_empty() {
            out.push(Problem {
                field: "queues".into(),
                message: "at least one [[queues]] entry is needed".into(),
            });
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.url.is_empty() {
                out.push(Problem {
                    field: format!("queues[{i}].url"),
                    message: "is required".into(),
                });
            }
            if q.dlq_url.is_empty() {
                out.push(Problem {
                    field: format!("queues[{i}].dlq_url"),
                    message: "is required: input that can never start is moved there".into(),
                });
            }
        }
        if self.aws.state_machine_arn.is_empty() {
            out.push(Problem {
                field: "aws.state_machine_arn".into(),
                message: "is required".into(),
            });
        }
        out
    }

    /// The fixed policy's cap.
    pub fn fixed_cap(&self) -> u32 {
        self.fixed.max_running.unwrap_or_else(|| {
            ((self.controller.ceiling as f64) / self.controller.max_lambdas_per_execution).floor()
                as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let err = Config::parse("[controller]\nceilling = 5\n", "x.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x.toml"), "{text}");
        assert!(text.contains("ceilling"), "{text}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[controller]\nceiling = 0\ntick_ms = 0\n[naming]\ntemplate = \"{\"\n";
        let err = Config::parse(text, "bad.toml").unwrap_err();
        match err {
            ConfigError::Invalid { problems, .. } => {
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    [
                        "controller.ceiling",
                        "controller.tick_ms",
                        "naming.template"
                    ]
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn a_starting_width_above_the_maximum_is_refused() {
        let text = "[estimator]\ninitial_lambdas_per_execution = 4.0\n";
        let err = Config::parse(text, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("estimator.initial_lambdas_per_execution"),
            "{err}"
        );
        let ok = "[estimator]\ninitial_lambdas_per_execution = 1.9\n";
        assert!(Config::parse(ok, "ok.toml").is_ok());
    }

    #[test]
    fn fixed_cap_defaults_to_the_safe_static_cap() {
        let mut c = Config::default();
        c.controller.ceiling = 19_000;
        assert_eq!(c.fixed_cap(), 6333);
        c.fixed.max_running = Some(100);
        assert_eq!(c.fixed_cap(), 100);
    }
}
