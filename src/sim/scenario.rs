//! Scenario files: every knob of the simulated account. The annotated
//! example is `config/scenarios/exchange-227k.toml`, which is also the
//! built-in default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in scenario, embedded so `fanout simulate` needs no file.
pub const EXCHANGE_227K: &str = include_str!("../../config/scenarios/exchange-227k.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// The controller's ceiling, unless `--config` sets one.
    pub ceiling: u32,
    /// Stop (and count what is left as lost) after this much virtual time.
    #[serde(default = "d_max_virtual")]
    pub max_virtual_secs: u64,
    pub workload: Workload,
    #[serde(default)]
    pub sqs: SqsModel,
    #[serde(default)]
    pub sfn: SfnModel,
    pub workflow: Vec<Step>,
    #[serde(default)]
    pub lambda: LambdaModel,
    #[serde(default)]
    pub other_load: OtherLoad,
    #[serde(default)]
    pub cloudwatch: CloudWatchModel,
    #[serde(default)]
    pub faults: Vec<Fault>,
}

const fn d_seed() -> u64 {
    1
}
const fn d_max_virtual() -> u64 {
    6 * 3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Messages on the bulk queue at t = 0 (a whole-platform refresh).
    #[serde(default)]
    pub bulk: u64,
    /// Messages on the priority queue at t = 0.
    #[serde(default)]
    pub priority: u64,
    /// Single-company updates arriving on the priority queue during the run.
    #[serde(default)]
    pub priority_arrivals: Option<Arrivals>,
    /// Bodies that are not JSON, placed among the bulk messages.
    #[serde(default)]
    pub not_json: u64,
    /// Bodies over Step Functions' 256 KiB input limit.
    #[serde(default)]
    pub oversize: u64,
    /// Bodies without `company_id` (only unstartable with a template
    /// that uses it).
    #[serde(default)]
    pub missing_field: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrivals {
    pub start_secs: f64,
    pub every_secs: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsModel {
    /// Redrive policy of both work queues.
    #[serde(default = "d_max_receive")]
    pub max_receive_count: u32,
    #[serde(default = "d_sqs_latency")]
    pub latency_ms: u64,
    /// Probability that a received message is delivered again to the next
    /// receive (SQS standard queues deliver at least once).
    #[serde(default)]
    pub duplicate_delivery_probability: f64,
}

const fn d_max_receive() -> u32 {
    10
}
const fn d_sqs_latency() -> u64 {
    12
}

impl Default for SqsModel {
    fn default() -> Self {
        SqsModel {
            max_receive_count: d_max_receive(),
            latency_ms: d_sqs_latency(),
            duplicate_delivery_probability: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    pub burst: f64,
    pub per_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfnModel {
    #[serde(default = "d_start_bucket")]
    pub start_execution: Bucket,
    #[serde(default = "d_list_bucket")]
    pub list_executions: Bucket,
    /// ListExecutions shows a change this long after it happened.
    #[serde(default = "d_list_lag")]
    pub list_lag_secs: f64,
    #[serde(default = "d_sfn_latency")]
    pub latency_ms: u64,
    /// Overhead of each state transition.
    #[serde(default = "d_transition")]
    pub transition_ms: u64,
    /// The workflow's Retry on Lambda errors and throttles.
    #[serde(default)]
    pub retry: RetryModel,
    /// Deliver EventBridge status events to a completion queue.
    #[serde(default)]
    pub completion_events: bool,
    #[serde(default = "d_event_delay")]
    pub completion_event_delay_secs: f64,
    /// The Lambdas-per-execution estimate a previous run left with the
    /// state machine (a tag): the next refresh, not the first one.
    #[serde(default)]
    pub remembered_lambdas_per_execution: Option<f64>,
}

const fn d_start_bucket() -> Bucket {
    Bucket {
        burst: 1300.0,
        per_s: 300.0,
    }
}
const fn d_list_bucket() -> Bucket {
    Bucket {
        burst: 200.0,
        per_s: 5.0,
    }
}
const fn d_list_lag() -> f64 {
    2.0
}
const fn d_sfn_latency() -> u64 {
    30
}
const fn d_transition() -> u64 {
    60
}
const fn d_event_delay() -> f64 {
    1.0
}

impl Default for SfnModel {
    fn default() -> Self {
        SfnModel {
            start_execution: d_start_bucket(),
            list_executions: d_list_bucket(),
            list_lag_secs: d_list_lag(),
            latency_ms: d_sfn_latency(),
            transition_ms: d_transition(),
            retry: RetryModel::default(),
            completion_events: false,
            completion_event_delay_secs: d_event_delay(),
            remembered_lambdas_per_execution: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryModel {
    #[serde(default = "d_interval")]
    pub interval_secs: f64,
    #[serde(default = "d_backoff")]
    pub backoff_rate: f64,
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
}

const fn d_interval() -> f64 {
    1.0
}
const fn d_backoff() -> f64 {
    2.0
}
const fn d_attempts() -> u32 {
    6
}

impl Default for RetryModel {
    fn default() -> Self {
        RetryModel {
            interval_secs: d_interval(),
            backoff_rate: d_backoff(),
            max_attempts: d_attempts(),
        }
    }
}

/// One Lambda task: the function and its duration, lognormal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub task: String,
    pub median_secs: f64,
    #[serde(default = "d_sigma")]
    pub sigma: f64,
}

const fn d_sigma() -> f64 {
    0.3
}

/// A workflow step: a Lambda task, or a Map running `iteration` once per
/// item with at most `max_concurrency` items at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub median_secs: f64,
    #[serde(default = "d_sigma")]
    pub sigma: f64,
    /// Items of a Map; with `map_items_max`, uniform in [map_items, max].
    #[serde(default)]
    pub map_items: Option<u32>,
    #[serde(default)]
    pub map_items_max: Option<u32>,
    #[serde(default = "d_max_conc")]
    pub max_concurrency: u32,
    #[serde(default)]
    pub iteration: Vec<Task>,
}

const fn d_max_conc() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// 1,000 new environments per 10 s per function (since late 2023).
    #[default]
    PerFunction,
    /// Account-wide burst, then a fixed rate per minute.
    Legacy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaModel {
    #[serde(default = "d_account_limit")]
    pub account_limit: u32,
    #[serde(default)]
    pub scaling: Scaling,
    #[serde(default = "d_scale_step")]
    pub scale_step: f64,
    #[serde(default = "d_scale_period")]
    pub scale_period_secs: f64,
    #[serde(default = "d_legacy_burst")]
    pub legacy_burst: f64,
    #[serde(default = "d_legacy_rate")]
    pub legacy_per_minute: f64,
    /// Probability that an invocation fails (retried by the workflow).
    #[serde(default)]
    pub error_rate: f64,
    /// Added to an invocation that needs a new environment.
    #[serde(default = "d_cold")]
    pub cold_start_ms: u64,
    /// Fraction of idle warm environments reclaimed per minute; a function
    /// returns to a level it was warm at without the scaling limit.
    #[serde(default = "d_warm_decay")]
    pub warm_decay_per_minute: f64,
    /// Reserved concurrency by function name.
    #[serde(default)]
    pub reserved: BTreeMap<String, u32>,
}

const fn d_account_limit() -> u32 {
    1000
}
const fn d_scale_step() -> f64 {
    1000.0
}
const fn d_scale_period() -> f64 {
    10.0
}
const fn d_legacy_burst() -> f64 {
    3000.0
}
const fn d_legacy_rate() -> f64 {
    500.0
}
const fn d_warm_decay() -> f64 {
    0.2
}
const fn d_cold() -> u64 {
    400
}

impl Default for LambdaModel {
    fn default() -> Self {
        LambdaModel {
            account_limit: d_account_limit(),
            scaling: Scaling::default(),
            scale_step: d_scale_step(),
            scale_period_secs: d_scale_period(),
            legacy_burst: d_legacy_burst(),
            legacy_per_minute: d_legacy_rate(),
            error_rate: 0.0,
            cold_start_ms: d_cold(),
            warm_decay_per_minute: d_warm_decay(),
            reserved: BTreeMap::new(),
        }
    }
}

/// Other functions in the account: base + amplitude × sin(2πt/period),
/// plus steps. Unless `reserved` is set they use the unreserved pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OtherLoad {
    #[serde(default)]
    pub base: f64,
    #[serde(default)]
    pub amplitude: f64,
    #[serde(default)]
    pub period_secs: f64,
    /// Concurrency reserved for the other functions (a guarantee and a cap).
    #[serde(default)]
    pub reserved: u32,
    #[serde(default)]
    pub steps: Vec<LoadStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStep {
    pub start_secs: f64,
    pub duration_secs: f64,
    pub add: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchModel {
    #[serde(default = "d_lag_min")]
    pub lag_min_secs: f64,
    #[serde(default = "d_lag_max")]
    pub lag_max_secs: f64,
    /// Probability that a minute is never published.
    #[serde(default)]
    pub missing_probability: f64,
    /// Windows in which nothing is published.
    #[serde(default)]
    pub outages: Vec<Window>,
}

const fn d_lag_min() -> f64 {
    60.0
}
const fn d_lag_max() -> f64 {
    120.0
}

impl Default for CloudWatchModel {
    fn default() -> Self {
        CloudWatchModel {
            lag_min_secs: d_lag_min(),
            lag_max_secs: d_lag_max(),
            missing_probability: 0.0,
            outages: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start_secs: f64,
    pub duration_secs: f64,
}

impl Window {
    pub fn contains(&self, t: f64) -> bool {
        t >= self.start_secs && t < self.start_secs + self.duration_secs
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// Calls to `service` ("sqs", "sfn", "cloudwatch") fail transiently.
    ApiErrors {
        service: String,
        start_secs: f64,
        duration_secs: f64,
        probability: f64,
    },
    /// Step Functions API `api` ("start_execution", "list_executions")
    /// throttles with this probability, whatever its bucket holds.
    ThrottleStorm {
        api: String,
        start_secs: f64,
        duration_secs: f64,
        probability: f64,
    },
    /// The controller dies at `at_secs` (memory lost, AWS state kept)
    /// and a new one starts `restart_after_secs` later.
    Crash {
        at_secs: f64,
        restart_after_secs: f64,
    },
    /// A second controller (a new replica during a rolling deploy) starts
    /// at `at_secs` and runs beside the first until the end.
    Replica { at_secs: f64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {}", problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

impl Scenario {
    pub fn builtin(name: &str) -> Option<Scenario> {
        match name {
            "exchange-227k" => {
                Some(Scenario::parse(EXCHANGE_227K, name).expect("built-in scenario parses"))
            }
            _ => None,
        }
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: shown.clone(),
            source,
        })?;
        Scenario::parse(&text, &shown)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
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

    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.workflow.is_empty() {
            p.push("workflow: at least one step is needed".to_string());
        }
        if let Some(k) = self.sfn.remembered_lambdas_per_execution
            && (k.is_nan() || k <= 0.0)
        {
            p.push(format!(
                "sfn.remembered_lambdas_per_execution: {k} must be positive"
            ));
        }
        for (i, s) in self.workflow.iter().enumerate() {
            match (&s.task, s.map_items) {
                (Some(_), None) if s.median_secs > 0.0 => {}
                (Some(_), None) => p.push(format!("workflow[{i}].median_secs must be positive")),
                (None, Some(n)) => {
                    if s.iteration.is_empty() {
                        p.push(format!(
                            "workflow[{i}].iteration: a Map needs at least one task"
                        ));
                    }
                    if s.max_concurrency == 0 {
                        p.push(format!("workflow[{i}].max_concurrency must be at least 1"));
                    }
                    if s.map_items_max.is_some_and(|m| m < n) {
                        p.push(format!("workflow[{i}].map_items_max is below map_items"));
                    }
                    for (j, t) in s.iteration.iter().enumerate() {
                        if t.median_secs <= 0.0 {
                            p.push(format!(
                                "workflow[{i}].iteration[{j}].median_secs must be positive"
                            ));
                        }
                    }
                }
                _ => p.push(format!(
                    "workflow[{i}]: set either `task` (a Lambda step) or `map_items` (a Map)"
                )),
            }
        }
        if self.lambda.account_limit == 0 {
            p.push("lambda.account_limit must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.lambda.warm_decay_per_minute) {
            p.push("lambda.warm_decay_per_minute must be in [0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.lambda.error_rate) {
            p.push("lambda.error_rate must be in [0, 1)".into());
        }
        if self.cloudwatch.lag_max_secs < self.cloudwatch.lag_min_secs {
            p.push("cloudwatch.lag_max_secs is below lag_min_secs".into());
        }
        if !(0.0..1.0).contains(&self.sqs.duplicate_delivery_probability) {
            p.push("sqs.duplicate_delivery_probability must be in [0, 1)".into());
        }
        if self.sqs.max_receive_count == 0 {
            p.push("sqs.max_receive_count must be at least 1".into());
        }
        if self.sfn.retry.max_attempts == 0 {
            p.push("sfn.retry.max_attempts must be at least 1".into());
        }
        p
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parses_and_matches_the_published_run() {
        let s = Scenario::builtin("exchange-227k").unwrap();
        assert_eq!(s.workload.bulk, 227_000);
        assert_eq!(s.ceiling, 19_000);
        assert_eq!(s.lambda.account_limit, 20_000);
        // Mean Lambda-seconds per execution × messages / 10,000 ≈ 56 min.
        let mean = |m: f64, sg: f64| m * (sg * sg / 2.0).exp();
        let mut per_exec = 0.0;
        for st in &s.workflow {
            if st.task.is_some() {
                per_exec += mean(st.median_secs, st.sigma);
            } else {
                let items = f64::from(st.map_items.unwrap());
                per_exec += items
                    * st.iteration
                        .iter()
                        .map(|t| mean(t.median_secs, t.sigma))
                        .sum::<f64>();
            }
        }
        let minutes = per_exec * 227_000.0 / 10_000.0 / 60.0;
        assert!((54.0..58.0).contains(&minutes), "{minutes} min at 10,000");
    }

    #[test]
    fn a_step_must_be_a_task_or_a_map() {
        let text = "name='x'\nceiling=10\n[workload]\nbulk=1\n[[workflow]]\nmedian_secs=1.0\n";
        let err = Scenario::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("workflow[0]"), "{err}");
    }
}
