//! Scenario files: every knob of the simulated account. The annotated
//! example is `config/scenarios/exchange-227k.toml`, which is also the
//! built-in default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ParseError, ReadError, parse_toml, read_file};

/// Iterations an inline Map runs at once, at most (Step Functions quota;
/// a Distributed Map runs up to 10,000 child executions).
pub const INLINE_MAP_MAX_CONCURRENCY: u32 = 40;

/// The built-in scenario, embedded so `fanout simulate` needs no file.
pub const EXCHANGE_227K: &str = include_str!("../../config/scenarios/exchange-227k.toml");

/// A simulated account and its workload. `name`, `ceiling`, `workload` and
/// `workflow` are required, so only the other fields have defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the run in reports.
    pub name: String,
    // A struct with required fields cannot take its defaults from a
    // `Default`: these two (and `Task::sigma`) name a function each, the
    // only per-field defaults left.
    /// RNG seed for durations, errors and lags; `--seed N` overrides it.
    #[serde(default = "Scenario::default_seed")]
    pub seed: u64,
    /// The controller's ceiling, unless `--config` sets one.
    pub ceiling: u32,
    /// Stop (and count what is left as lost) after this much virtual time.
    #[serde(default = "Scenario::default_max_virtual_secs")]
    pub max_virtual_secs: u64,
    /// What is on the queues at t = 0 and what arrives during the run.
    pub workload: Workload,
    /// The two work queues: redrive, latency and duplicate delivery.
    #[serde(default)]
    pub sqs: SqsModel,
    /// Step Functions: API quotas, listing lag, latencies and the retry.
    #[serde(default)]
    pub sfn: SfnModel,
    /// The steps each execution runs, in order; at least one.
    pub workflow: Vec<Step>,
    /// Lambda: account limit, scaling, errors and warm environments.
    #[serde(default)]
    pub lambda: LambdaModel,
    /// Concurrency of the account's other functions.
    #[serde(default)]
    pub other_load: OtherLoad,
    /// How late the concurrency metric is published, and when it is missing.
    #[serde(default)]
    pub cloudwatch: CloudWatchModel,
    /// Faults injected during the run, any number.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// What is on the queues: at t = 0 and arriving during the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Messages on the bulk queue at t = 0 (a whole-platform refresh).
    pub bulk: u64,
    /// Messages on the priority queue at t = 0.
    pub priority: u64,
    /// Single-company updates arriving on the priority queue during the run.
    pub priority_arrivals: Option<Arrivals>,
    /// Bodies that are not JSON, placed among the bulk messages.
    pub not_json: u64,
    /// Bodies over Step Functions' 256 KiB input limit.
    pub oversize: u64,
    /// Bodies without `company_id` (only unstartable with a template
    /// that uses it).
    pub missing_field: u64,
    /// Bulk messages repeating an earlier bulk message's `company_id` with
    /// another body (a second update of one company), after the refresh:
    /// under a `{company_id}` template their names collide.
    pub same_company: u64,
    /// Bulk bodies of 200,000 bytes (under Step Functions' input limit,
    /// refused as `InvalidExecutionInput` under a lower `[sfn]
    /// max_input_bytes`), among the bulk messages.
    pub large: u64,
}

/// Single-company updates arriving on the priority queue, one message every
/// `every_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    /// Virtual time of the first arrival, in seconds.
    pub start_secs: f64,
    /// Seconds between arrivals.
    pub every_secs: f64,
    /// Number of arrivals in all.
    pub count: u64,
}

/// The two work queues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsModel {
    /// Redrive policy of both work queues.
    pub max_receive_count: u32,
    /// Latency of every SQS call, in milliseconds.
    pub latency_ms: u64,
    /// Probability that a received message is delivered again to the next
    /// receive (SQS standard queues deliver at least once).
    pub duplicate_delivery_probability: f64,
}

impl SqsModel {
    /// Every knob's default.
    pub const DEFAULT: Self = Self {
        max_receive_count: 10,
        latency_ms: 12,
        duplicate_delivery_probability: 0.0,
    };
}

impl Default for SqsModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A token bucket limiting the rate of one Step Functions API.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Tokens the bucket holds when full: calls allowed in a burst.
    pub burst: f64,
    /// Tokens refilled per second: the sustained calls per second.
    pub per_s: f64,
}

/// Step Functions: API quotas, the listing's lag and the workflow's retry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfnModel {
    /// StartExecution's token bucket.
    pub start_execution: Bucket,
    /// ListExecutions' token bucket.
    pub list_executions: Bucket,
    /// The account's StateTransition token bucket (Standard workflows):
    /// every state entered and every retry takes a token; a transition
    /// that finds none waits for one (counted as `ExecutionThrottled`).
    pub state_transitions: Bucket,
    /// ListExecutions shows a change this long after it happened.
    pub list_lag_secs: f64,
    /// Latency of every Step Functions call, in milliseconds.
    pub latency_ms: u64,
    /// Overhead of each state transition.
    pub transition_ms: u64,
    /// The workflow's Retry on Lambda errors and throttles.
    pub retry: RetryModel,
    /// Deliver EventBridge status events to a completion queue.
    pub completion_events: bool,
    /// Seconds from an execution's status change to its event on the
    /// completion queue.
    pub completion_event_delay_secs: f64,
    /// The Lambdas-per-execution estimate a previous run left with the
    /// state machine (a tag): the next refresh, not the first one.
    pub remembered_lambdas_per_execution: Option<f64>,
    /// The execution input limit StartExecution enforces, in bytes
    /// (`InvalidExecutionInput` above it). Lower it to have bodies the
    /// controller's own 262,144-byte check lets through refused.
    pub max_input_bytes: usize,
    /// Once the workload is drained, list the failed executions and put a
    /// redrive request for each on the bulk queue, as `fanout redrive`
    /// does; the run ends when the controller has served them.
    pub redrive_after_drain: bool,
}

impl SfnModel {
    /// Every knob's default: us-east-1's token buckets.
    pub const DEFAULT: Self = Self {
        start_execution: Bucket {
            burst: 1300.0,
            per_s: 300.0,
        },
        list_executions: Bucket {
            burst: 200.0,
            per_s: 5.0,
        },
        state_transitions: Bucket {
            burst: 5000.0,
            per_s: 5000.0,
        },
        list_lag_secs: 2.0,
        latency_ms: 30,
        transition_ms: 60,
        retry: RetryModel::DEFAULT,
        completion_events: false,
        completion_event_delay_secs: 1.0,
        remembered_lambdas_per_execution: None,
        max_input_bytes: crate::control::naming::MAX_INPUT_BYTES,
        redrive_after_drain: false,
    };
}

impl Default for SfnModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The workflow's Retry of a failed or throttled Lambda task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryModel {
    /// Seconds to wait before the first retry.
    pub interval_secs: f64,
    /// Multiplier of the wait before each further retry.
    pub backoff_rate: f64,
    /// ASL's `MaxAttempts`: the most *retries* after the first attempt
    /// (6: up to 7 attempts; 0: never retried); then the execution fails.
    pub max_attempts: u32,
}

impl RetryModel {
    /// Every knob's default.
    pub const DEFAULT: Self = Self {
        interval_secs: 1.0,
        backoff_rate: 2.0,
        max_attempts: 6,
    };
}

impl Default for RetryModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One Lambda task: the function and its duration, lognormal. `task` and
/// `median_secs` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Lambda function name.
    pub task: String,
    /// Median duration, in seconds (lognormal).
    pub median_secs: f64,
    // The only per-field default here: the same spread as a step's.
    /// Lognormal sigma of the duration (σ of ln seconds).
    #[serde(default = "Task::default_sigma")]
    pub sigma: f64,
}

impl Task {
    fn default_sigma() -> f64 {
        Step::DEFAULT.sigma
    }
}

/// A workflow step: a Lambda task, or a Map running `iteration` once per
/// item with at most `max_concurrency` items at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Step {
    /// Lambda function name of a task step; unset for a Map.
    pub task: Option<String>,
    /// Median duration of a task step, in seconds (lognormal).
    pub median_secs: f64,
    /// Lognormal sigma of a task step's duration (σ of ln seconds).
    pub sigma: f64,
    /// Items of a Map; with `map_items_max`, uniform in [map_items, max].
    pub map_items: Option<u32>,
    /// Most items of a Map, drawn per execution; unset: exactly `map_items`.
    pub map_items_max: Option<u32>,
    /// Items of a Map running at once, at most: 1 to 40 (an inline Map
    /// runs at most 40 iterations at once).
    pub max_concurrency: u32,
    /// Tasks run in order for each item of a Map.
    pub iteration: Vec<Task>,
}

impl Step {
    /// Every knob's default; `validate` requires a task or a Map.
    pub const DEFAULT: Self = Self {
        task: None,
        median_secs: 0.0,
        sigma: 0.3,
        map_items: None,
        map_items_max: None,
        max_concurrency: 3,
        iteration: Vec::new(),
    };
}

impl Default for Step {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How Lambda adds new execution environments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// 1,000 new environments per 10 s per function (since late 2023).
    #[default]
    PerFunction,
    /// Account-wide burst, then a fixed rate per minute.
    Legacy,
}

/// Lambda: the account's limit, scaling, errors and warm environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LambdaModel {
    /// Account concurrency limit, in concurrent executions.
    pub account_limit: u32,
    /// How new execution environments are added: per function or account-wide.
    pub scaling: Scaling,
    /// Environments a function may add per `scale_period_secs` (per-function).
    pub scale_step: f64,
    /// Seconds in which a function may add `scale_step` environments
    /// (per-function).
    pub scale_period_secs: f64,
    /// Environments available at once account-wide (legacy scaling).
    pub legacy_burst: f64,
    /// Environments added account-wide each minute after the burst (legacy).
    pub legacy_per_minute: f64,
    /// Probability that an invocation fails (retried by the workflow).
    pub error_rate: f64,
    /// `error_rate` applies to invocations before this virtual time only
    /// (a dependency's outage that ends); None: all run long.
    pub errors_until_secs: Option<f64>,
    /// Added to an invocation that needs a new environment.
    pub cold_start_ms: u64,
    /// Fraction of idle warm environments reclaimed per minute; a function
    /// returns to a level it was warm at without the scaling limit.
    pub warm_decay_per_minute: f64,
    /// Reserved concurrency by function name.
    pub reserved: BTreeMap<String, u32>,
}

impl LambdaModel {
    /// Every knob's default.
    pub const DEFAULT: Self = Self {
        account_limit: 1000,
        scaling: Scaling::PerFunction,
        scale_step: 1000.0,
        scale_period_secs: 10.0,
        legacy_burst: 3000.0,
        legacy_per_minute: 500.0,
        error_rate: 0.0,
        errors_until_secs: None,
        cold_start_ms: 400,
        warm_decay_per_minute: 0.2,
        reserved: BTreeMap::new(),
    };
}

impl Default for LambdaModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Other functions in the account: base + amplitude × sin(2πt/period),
/// plus steps. Unless `reserved` is set they use the unreserved pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct OtherLoad {
    /// Mean concurrent executions of the other functions.
    pub base: f64,
    /// Amplitude of the sine around `base`, in concurrent executions.
    pub amplitude: f64,
    /// Period of the sine, in seconds; 0 turns it off.
    pub period_secs: f64,
    /// Concurrency reserved for the other functions (a guarantee and a cap).
    pub reserved: u32,
    /// Extra concurrency during windows of time.
    pub steps: Vec<LoadStep>,
}

/// A step in the other functions' load: `add` more during a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStep {
    /// Virtual time the step begins, in seconds.
    pub start_secs: f64,
    /// How long the step lasts, in seconds.
    pub duration_secs: f64,
    /// Concurrent executions added while the step lasts.
    pub add: f64,
}

/// CloudWatch: how late the metric is, and when it is missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudWatchModel {
    /// Seconds after its minute ends before a minute can be read, at least.
    pub lag_min_secs: f64,
    /// Seconds after its minute ends by which a minute is published, at most
    /// (the lag is uniform in between).
    pub lag_max_secs: f64,
    /// Probability that a minute is never published.
    pub missing_probability: f64,
    /// Windows in which nothing is published.
    pub outages: Vec<Window>,
    /// Probability that a minute is first readable while it still fills
    /// in: its value then covers only its first 1–59 seconds (uniform),
    /// lower than the final one, until `fill_secs` later.
    pub partial_probability: f64,
    /// Seconds a partly filled minute takes to show its final value.
    pub fill_secs: f64,
}

impl CloudWatchModel {
    /// Every knob's default.
    pub const DEFAULT: Self = Self {
        lag_min_secs: 60.0,
        lag_max_secs: 120.0,
        missing_probability: 0.0,
        outages: Vec::new(),
        partial_probability: 0.0,
        fill_secs: 0.0,
    };
}

impl Default for CloudWatchModel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A span of virtual time: from `start_secs`, for `duration_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Virtual time the window opens, in seconds.
    pub start_secs: f64,
    /// Length of the window, in seconds.
    pub duration_secs: f64,
}

impl Window {
    /// Whether virtual time `t` (seconds) is in the window, its end excluded.
    pub fn contains(&self, t: f64) -> bool {
        t >= self.start_secs && t < self.start_secs + self.duration_secs
    }
}

/// A fault injected into the run, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Calls to `service` ("sqs", "sfn", "cloudwatch", "lambda") fail
    /// transiently.
    ApiErrors {
        /// Service whose calls fail: "sqs", "sfn", "cloudwatch" or "lambda".
        service: String,
        /// Virtual time the errors begin, in seconds.
        start_secs: f64,
        /// How long the errors last, in seconds.
        duration_secs: f64,
        /// Probability that each call fails.
        probability: f64,
    },
    /// Step Functions API `api` ("start_execution", "list_executions")
    /// throttles with this probability, whatever its bucket holds.
    ThrottleStorm {
        /// Throttled API: "start_execution" or "list_executions".
        api: String,
        /// Virtual time the storm begins, in seconds.
        start_secs: f64,
        /// How long the storm lasts, in seconds.
        duration_secs: f64,
        /// Probability that each call is throttled.
        probability: f64,
    },
    /// The controller dies at `at_secs` (memory lost, AWS state kept)
    /// and a new one starts `restart_after_secs` later.
    Crash {
        /// Virtual time the controller dies, in seconds.
        at_secs: f64,
        /// Seconds from the crash until the new controller starts.
        restart_after_secs: f64,
    },
    /// A second controller (a new replica during a rolling deploy) starts
    /// at `at_secs` and runs beside the first until the end.
    Replica {
        /// Virtual time the second controller starts, in seconds.
        at_secs: f64,
    },
}

/// The services an `api-errors` fault can target.
const FAULT_SERVICES: [&str; 4] = ["sqs", "sfn", "cloudwatch", "lambda"];

/// The APIs a `throttle-storm` fault can target.
const STORM_APIS: [&str; 2] = ["start_execution", "list_executions"];

/// Why a scenario could not be loaded: one variant per step.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The text is not a scenario (syntax, a type, an unknown field).
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The values are not usable: every problem.
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        /// Where the text came from.
        path: String,
        /// Every problem found.
        problems: Vec<String>,
    },
}

impl Scenario {
    const fn default_seed() -> u64 {
        1
    }

    const fn default_max_virtual_secs() -> u64 {
        6 * 3600
    }

    /// A scenario shipped inside the binary, by name.
    pub fn builtin(name: &str) -> Option<Scenario> {
        match name {
            "exchange-227k" => {
                Some(Scenario::parse(EXCHANGE_227K, name).expect("built-in scenario parses"))
            }
            _ => None,
        }
    }

    /// Read, parse and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = read_file(path, "scenario")?;
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parse and validate scenario text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = parse_toml(text, origin)?;
        let problems = s.validate();
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ScenarioError::Invalid {
                path: origin.to_string(),
                problems,
            })
        }
    }

    /// Pipeline function names, in workflow order.
    pub fn functions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |n: &str| {
            if !out.iter().any(|x| x == n) {
                out.push(n.to_string());
            }
        };
        for s in &self.workflow {
            if let Some(t) = &s.task {
                add(t);
            }
            for t in &s.iteration {
                add(&t.task);
            }
        }
        out
    }

    /// When a second controller starts, if ever.
    pub fn replica_at(&self) -> Option<f64> {
        self.faults.iter().find_map(|f| match f {
            Fault::Replica { at_secs } => Some(*at_secs),
            _ => None,
        })
    }

    /// Crash faults as (at_secs, restart_after_secs), earliest first.
    pub fn crash_faults(&self) -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = self
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Crash {
                    at_secs,
                    restart_after_secs,
                } => Some((*at_secs, *restart_after_secs)),
                _ => None,
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

mod validate;

// The tests compare values parsed from text.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests;
