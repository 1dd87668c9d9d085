//! The controller's configuration: one TOML file, shared by `fanout run`
//! and `fanout simulate --config`. Every option has a default, written once
//! in its section's `Default` (a `const DEFAULT` where the types allow), and
//! is documented in `config/fanout.toml`. Where the text comes from and how
//! it is parsed is in `source`; `validate` reports every problem at once.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

pub use crate::control::Policy;

/// The whole config file. Every section may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Admission: the ceiling, rates, pacing and periods.
    pub controller: ControllerConfig,
    /// Execution names.
    pub naming: NamingConfig,
    /// Learning the Lambdas per execution.
    pub estimator: EstimatorConfig,
    /// Backoff of StartExecution retries.
    pub retry: RetryConfig,
    /// The seed policy's parameters.
    pub seed: SeedPolicyConfig,
    /// The fixed policy's parameters.
    pub fixed: FixedPolicyConfig,
    /// Work queues in priority order: the first is always served first.
    pub queues: Vec<QueueConfig>,
    /// Optional queue of EventBridge execution status events.
    pub completion_queue: Option<CompletionQueueConfig>,
    /// AWS connection settings (ignored by the simulator).
    pub aws: AwsConfig,
    /// `fanout run`'s HTTP server (/healthz, /metrics).
    pub http: HttpConfig,
    /// Custom metrics published to CloudWatch by `fanout run`.
    pub metrics: MetricsConfig,
    /// How `fanout run` picks up config changes without a restart.
    pub reload: ReloadConfig,
    /// Sharing one ceiling between controllers through a claim record.
    pub coordination: CoordinationConfig,
}

mod source;
mod validate;

pub use source::{CONFIG_ENV, LoadError, ParseError, ReadError, Source, parse_toml, read_file};

/// `[controller]`: admission, its rates and the loops' periods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// The admission rule.
    pub policy: Policy,
    /// Lambda concurrency the pipeline may use, never to be exceeded.
    pub ceiling: u32,
    /// Account concurrency limit; when set, other load seen in the metric
    /// lowers the effective ceiling so the account is never oversubscribed.
    pub account_limit: Option<u32>,
    /// Fraction of the ceiling kept free for the metric's noise.
    pub headroom_fraction: f64,
    /// The most Lambdas one execution can run at once (the seed's ×3).
    pub max_lambdas_per_execution: f64,
    /// Fraction of the target kept free of lower-priority queues, so a
    /// priority message starts within a tick even at the ceiling.
    pub priority_reserve_fraction: f64,
    /// Admission loop period.
    pub tick_ms: u64,
    /// Visibility timeout set on every receive.
    pub visibility_timeout_secs: u64,
    /// Long-poll wait when the queues look empty.
    pub idle_wait_secs: u64,
    /// Concurrent ReceiveMessage calls when the budget is large.
    pub max_receives_in_flight: usize,
    /// Concurrent StartExecution calls.
    pub max_starts_in_flight: usize,
    /// StartExecution token bucket, below the account's refill rate.
    pub start_rate_per_s: u32,
    /// StartExecution token bucket size.
    pub start_burst: u32,
    /// Lambda scaling the ramp respects: concurrency may grow by this much
    /// per second (1,000 per 10 s per function), from `ramp_initial`.
    pub ramp_concurrency_per_s: f64,
    /// Concurrency that may be added at once above what is running.
    pub ramp_initial: f64,
    /// Period of the ListExecutions(RUNNING) reconcile.
    pub reconcile_interval_secs: u64,
    /// ListExecutions pages per second (the account refills 5 per second).
    pub list_pages_per_s: u32,
    /// An execution younger than this is kept even if the listing misses
    /// it (ListExecutions is eventually consistent).
    pub list_grace_secs: u64,
    /// Period of the CloudWatch poll.
    pub metrics_poll_secs: u64,
    /// Time allowed to hand back messages on shutdown (below ECS's 30 s).
    pub shutdown_deadline_secs: u64,
    /// Period of re-reading each pipeline function's concurrency limit
    /// (reserved concurrency); it is also read at start.
    pub function_limits_poll_secs: u64,
}

impl ControllerConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        policy: Policy::Adaptive,
        ceiling: 1000,
        account_limit: None,
        headroom_fraction: 0.01,
        max_lambdas_per_execution: 3.0,
        priority_reserve_fraction: 0.005,
        tick_ms: 250,
        visibility_timeout_secs: 120,
        idle_wait_secs: 5,
        max_receives_in_flight: 16,
        max_starts_in_flight: 64,
        start_rate_per_s: 250,
        start_burst: 500,
        ramp_concurrency_per_s: 100.0,
        ramp_initial: 1000.0,
        reconcile_interval_secs: 5,
        list_pages_per_s: 3,
        list_grace_secs: 30,
        metrics_poll_secs: 20,
        shutdown_deadline_secs: 20,
        function_limits_poll_secs: 300,
    };

    /// The admission loop period.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }
    /// The visibility timeout set on every receive.
    pub fn visibility(&self) -> Duration {
        Duration::from_secs(self.visibility_timeout_secs)
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[naming]`: how an execution is named after its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamingConfig {
    /// Execution name template. `{message_id}`, `{hash}` (12 hex chars of
    /// the body) and `{field}` for a top-level JSON field of the body.
    pub template: String,
}

impl Default for NamingConfig {
    fn default() -> Self {
        NamingConfig {
            template: "{message_id}".to_string(),
        }
    }
}

/// `[estimator]`: learning the Lambdas per execution (k̂).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EstimatorConfig {
    /// Margin added to every measured Lambdas-per-execution ratio.
    pub margin_fraction: f64,
    /// Extra margin of noise_z / √(running executions): the minute-to-minute
    /// wander of a sum over N executions.
    pub noise_z: f64,
    /// A minute counts for learning only if the running count stayed
    /// within this fraction of its mean for an execution's lifetime.
    pub stability_fraction: f64,
    /// Completed executions needed before their lifetimes are trusted (a
    /// pipeline running fewer needs as many as it runs, at least 20).
    pub min_completions: u64,
    /// Lower bound of the estimate (the widest workflow step is 1 Lambda).
    pub min_lambdas_per_execution: f64,
    /// Where k̂ starts, instead of `controller.max_lambdas_per_execution`:
    /// the value a previous run learned. `None` (default): the maximum.
    pub initial_lambdas_per_execution: Option<f64>,
    /// Keep k̂ with the state machine (a tag) and start from it next time.
    pub remember: bool,
    /// Seconds after a minute ends before its CloudWatch maxima are used
    /// (late datapoints still arrive); the last minutes are read again on
    /// every poll and a higher value raises the estimate.
    pub settle_secs: u64,
}

impl EstimatorConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        margin_fraction: 0.005,
        noise_z: 1.0,
        stability_fraction: 0.06,
        min_completions: 200,
        min_lambdas_per_execution: 1.0,
        initial_lambdas_per_execution: None,
        remember: true,
        settle_secs: 60,
    };
}

impl Default for EstimatorConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[retry]`: backoff of retryable StartExecution failures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First backoff base.
    pub initial_ms: u64,
    /// Largest backoff base.
    pub max_ms: u64,
    /// Growth of the base per attempt.
    pub multiplier: f64,
    /// Give up on a retryable start after this long and hand the message
    /// back to the queue (it is redelivered; nothing is lost).
    pub give_up_secs: u64,
}

impl RetryConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        initial_ms: 100,
        max_ms: 10_000,
        multiplier: 2.0,
        give_up_secs: 600,
    };
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[seed]`: the old fanout function's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedPolicyConfig {
    /// Lambdas counted per running execution.
    pub multiplier: f64,
    /// Delay put on a message received when there is no room.
    pub requeue_delay_secs: u64,
    /// Concurrent pollers (the fanout Lambda's concurrency).
    pub pollers: usize,
}

impl SeedPolicyConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        multiplier: 3.0,
        requeue_delay_secs: 30,
        pollers: 5,
    };
}

impl Default for SeedPolicyConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[fixed]`: the fixed policy's cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixedPolicyConfig {
    /// Cap of running executions; default ceiling / max_lambdas_per_execution,
    /// the largest fixed cap that can never exceed the ceiling.
    pub max_running: Option<u32>,
}

impl FixedPolicyConfig {
    /// Unset: the cap follows the ceiling (`Config::fixed_cap`).
    pub const DEFAULT: Self = Self { max_running: None };
}

impl Default for FixedPolicyConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One `[[queues]]` entry. `name` is required, so only the URLs have
/// (empty) defaults.
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

/// `[completion_queue]`: EventBridge execution status events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CompletionQueueConfig {
    /// Queue URL.
    pub url: String,
}

/// `[aws]`: where the AWS resources are, and how long a call may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// AWS Region; unset: the SDK's chain.
    pub region: Option<String>,
    /// Endpoint override for every service (an emulator, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// The Standard state machine to start (required on AWS).
    pub state_machine_arn: String,
    /// Pipeline functions whose concurrency is summed; empty: account-wide.
    pub functions: Vec<String>,
    /// Endpoint override for CloudWatch alone (GetMetricData and
    /// PutMetricData), over `endpoint_url`.
    pub cloudwatch_endpoint_url: Option<String>,
    /// Longest one HTTP attempt of an AWS call may take (ReceiveMessage:
    /// this plus its long-poll wait).
    pub attempt_timeout_ms: u64,
    /// Longest an AWS call may take, its SDK retries included
    /// (ReceiveMessage: this plus its long-poll wait).
    pub operation_timeout_ms: u64,
}

impl AwsConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        region: None,
        endpoint_url: None,
        state_machine_arn: String::new(),
        functions: Vec::new(),
        cloudwatch_endpoint_url: None,
        attempt_timeout_ms: 5_000,
        operation_timeout_ms: 15_000,
    };

    /// The per-attempt timeout of an AWS call.
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }
    /// The whole-call timeout of an AWS call, retries included.
    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.operation_timeout_ms)
    }
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[http]`: `fanout run`'s HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the /healthz and /metrics server.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".to_string(),
        }
    }
}

/// `[metrics]`: fanout's own metrics in CloudWatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Publish fanout's gauges and counters with PutMetricData.
    pub cloudwatch: bool,
    /// CloudWatch namespace; not starting with `AWS/`.
    pub namespace: String,
    /// One PutMetricData batch per this many seconds.
    pub interval_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            cloudwatch: false,
            namespace: "fanout".to_string(),
            interval_secs: 60,
        }
    }
}

/// `[reload]`: how `fanout run` takes a changed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll the config file and apply a changed content (SIGHUP always
    /// reloads). Off when the config comes from `$FANOUT_CONFIG_TOML`.
    pub watch_file: bool,
    /// How often the file is read and compared with the last content seen.
    pub poll_secs: u64,
}

impl ReloadConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        watch_file: true,
        poll_secs: 5,
    };
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `[coordination]`: controllers that may run at once (replicas, a rolling
/// deploy) share the ceiling through a record in a DynamoDB table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinationConfig {
    /// DynamoDB table of claim records (partition key `pk`, a string).
    /// Unset: this controller assumes it is alone until a reconcile sees
    /// another one's executions.
    pub table: Option<String>,
    /// The record's key; default the state machine's ARN (one ceiling per
    /// state machine).
    pub key: Option<String>,
    /// How often each controller renews its claim.
    pub renew_secs: u64,
    /// How long a claim lasts without renewal: a crashed controller's part
    /// returns after it. At least `controller.list_grace_secs`, so that the
    /// others list its last executions before its part is free.
    pub ttl_secs: u64,
}

impl CoordinationConfig {
    /// Every option's default, as documented in `config/fanout.toml`.
    pub const DEFAULT: Self = Self {
        table: None,
        key: None,
        renew_secs: 2,
        ttl_secs: 45,
    };
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field path, e.g. `controller.ceiling` or `queues[1].name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
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
    /// Read, parse and validate a config file (not `$FANOUT_CONFIG_TOML`:
    /// `Source` is `fanout run`'s choice between the two).
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        let text = source::read_file(path, "config file")?;
        Config::from_text(&text, &path.display().to_string())
    }

    /// The fixed policy's cap.
    pub fn fixed_cap(&self) -> u32 {
        self.fixed.max_running.unwrap_or_else(|| {
            (f64::from(self.controller.ceiling) / self.controller.max_lambdas_per_execution).floor()
                as u32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_text("", "t").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn an_empty_section_is_its_defaults() {
        let text = "[controller]\n[naming]\n[estimator]\n[retry]\n[seed]\n[fixed]\n\
                    [aws]\n[http]\n[metrics]\n[reload]\n";
        let c = Config::from_text(text, "t").unwrap();
        assert_eq!(c, Config::default());
        let c = Config::from_text("[completion_queue]\n", "t").unwrap();
        assert_eq!(c.completion_queue, Some(CompletionQueueConfig::default()));
    }

    #[test]
    fn a_queue_still_needs_its_name() {
        let err = Config::from_text("[[queues]]\nurl = \"u\"\n", "q.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing field `name`"), "{text}");
        let c = Config::from_text("[[queues]]\nname = \"bulk\"\n", "q.toml").unwrap();
        assert_eq!(
            (c.queues[0].url.as_str(), c.queues[0].dlq_url.as_str()),
            ("", "")
        );
    }

    /// config/fanout.toml shows every option at its default, apart from
    /// the example account's values, whose comments give the default.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fanout.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let mut c = Config::from_text(&text, path).unwrap();
        let documented = |key: &str, default: &str| {
            let at = text.find(&format!("\n{key} = ")).unwrap();
            let comment = &text[..at][text[..at].rfind("\n\n").unwrap()..];
            assert!(
                comment.contains(default),
                "fanout.toml's comment on {key} does not say \"{default}\""
            );
        };
        documented("ceiling", "Default 1000.");
        c.controller.ceiling = ControllerConfig::DEFAULT.ceiling;
        documented("account_limit", "Default:\n# unset");
        c.controller.account_limit = None;
        documented("region", "Default: unset");
        documented("functions", "Default: empty");
        c.aws.region = None;
        c.aws.state_machine_arn.clear();
        c.aws.functions.clear();
        documented("table", "Default: unset");
        c.coordination.table = None;
        // The queues have no default: the example's are examples.
        c.queues.clear();
        assert_eq!(c, Config::default());
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
