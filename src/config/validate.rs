//! Validation: one function per section, every problem reported at once
//! with its field path, sections in file order.

// Negated comparisons are deliberate: a NaN must fail validation.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use super::{
    AwsConfig, Config, ControllerConfig, CoordinationConfig, EstimatorConfig, FixedPolicyConfig,
    HttpConfig, MetricsConfig, NamingConfig, Problem, QueueConfig, ReloadConfig, RetryConfig,
    SeedPolicyConfig,
};

/// The problems found so far.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn bad(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// A count, period or rate of 0 that would stop a loop or divide by 0.
    fn at_least_one(&mut self, field: &str, value: u64) {
        if value == 0 {
            self.bad(field, "must be at least 1");
        }
    }
}

impl Config {
    /// Every problem with the values, not just the first.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        controller(&self.controller, &mut p);
        naming(&self.naming, &mut p);
        estimator(&self.estimator, &self.controller, &mut p);
        retry(&self.retry, &mut p);
        seed(&self.seed, &mut p);
        fixed(&self.fixed, &mut p);
        aws(&self.aws, &mut p);
        http(&self.http, &mut p);
        metrics(&self.metrics, &mut p);
        reload(&self.reload, &mut p);
        coordination(&self.coordination, &self.controller, &mut p);
        queue_names(&self.queues, &mut p);
        numbers(self, &mut p);
        p.0
    }

    /// `validate`, and the problems that only matter against real AWS.
    pub fn validate_for_aws(&self) -> Vec<Problem> {
        let mut p = Problems(self.validate());
        if self.queues.is_empty() {
            p.bad("queues", "at least one [[queues]] entry is needed");
        }
        for (i, q) in self.queues.iter().enumerate() {
            if q.url.is_empty() {
                p.bad(&format!("queues[{i}].url"), "is required");
            }
            if q.dlq_url.is_empty() {
                p.bad(
                    &format!("queues[{i}].dlq_url"),
                    "is required: input that can never start is moved there",
                );
            }
        }
        if self.aws.state_machine_arn.is_empty() {
            p.bad("aws.state_machine_arn", "is required");
        }
        p.0
    }
}

/// `[controller]`, in the order of its fields.
fn controller(c: &ControllerConfig, p: &mut Problems) {
    controller_limits(c, p);
    controller_loops(c, p);
    controller_rates(c, p);
    controller_periods(c, p);
}

/// The ceiling and what is kept below it.
fn controller_limits(c: &ControllerConfig, p: &mut Problems) {
    p.at_least_one("controller.ceiling", c.ceiling.into());
    if let Some(limit) = c.account_limit
        && limit < c.ceiling
    {
        p.bad(
            "controller.account_limit",
            format!("{limit} is below the ceiling {}", c.ceiling),
        );
    }
    if !(0.0..0.5).contains(&c.headroom_fraction) {
        p.bad(
            "controller.headroom_fraction",
            format!("{} must be in [0, 0.5)", c.headroom_fraction),
        );
    }
    if !(c.max_lambdas_per_execution >= 1.0 && c.max_lambdas_per_execution.is_finite()) {
        p.bad(
            "controller.max_lambdas_per_execution",
            format!("{} must be at least 1", c.max_lambdas_per_execution),
        );
    }
    if !(0.0..0.5).contains(&c.priority_reserve_fraction) {
        p.bad(
            "controller.priority_reserve_fraction",
            format!("{} must be in [0, 0.5)", c.priority_reserve_fraction),
        );
    }
}

/// The admission loop: its period, the SQS waits and the calls in flight.
fn controller_loops(c: &ControllerConfig, p: &mut Problems) {
    if c.tick_ms == 0 || c.tick_ms > 60_000 {
        p.bad(
            "controller.tick_ms",
            format!("{} must be in 1..=60000", c.tick_ms),
        );
    }
    if !(1..=43_200).contains(&c.visibility_timeout_secs) {
        p.bad(
            "controller.visibility_timeout_secs",
            format!(
                "{} must be in 1..=43200 (SQS limit)",
                c.visibility_timeout_secs
            ),
        );
    }
    if c.idle_wait_secs > 20 {
        p.bad(
            "controller.idle_wait_secs",
            format!("{} exceeds SQS's 20 s long poll", c.idle_wait_secs),
        );
    }
    p.at_least_one(
        "controller.max_receives_in_flight",
        c.max_receives_in_flight as u64,
    );
    p.at_least_one(
        "controller.max_starts_in_flight",
        c.max_starts_in_flight as u64,
    );
}

/// The start pacer and the ramp.
fn controller_rates(c: &ControllerConfig, p: &mut Problems) {
    p.at_least_one("controller.start_rate_per_s", c.start_rate_per_s.into());
    p.at_least_one("controller.start_burst", c.start_burst.into());
    if !(c.ramp_concurrency_per_s > 0.0) {
        p.bad("controller.ramp_concurrency_per_s", "must be positive");
    }
    if !(c.ramp_initial >= c.max_lambdas_per_execution) {
        p.bad(
            "controller.ramp_initial",
            format!(
                "{} must be at least controller.max_lambdas_per_execution ({}), or nothing can ever start",
                c.ramp_initial, c.max_lambdas_per_execution
            ),
        );
    }
}

/// The background loops' periods and the shutdown deadline.
fn controller_periods(c: &ControllerConfig, p: &mut Problems) {
    p.at_least_one(
        "controller.reconcile_interval_secs",
        c.reconcile_interval_secs,
    );
    p.at_least_one("controller.list_pages_per_s", c.list_pages_per_s.into());
    p.at_least_one("controller.metrics_poll_secs", c.metrics_poll_secs);
    if c.shutdown_deadline_secs == 0 || c.shutdown_deadline_secs >= 120 {
        p.bad(
            "controller.shutdown_deadline_secs",
            format!(
                "{} must be in 1..120 (Fargate's longest stopTimeout); keep it below the task's stopTimeout",
                c.shutdown_deadline_secs
            ),
        );
    }
    if !(1..=86_400).contains(&c.function_limits_poll_secs) {
        p.bad(
            "controller.function_limits_poll_secs",
            format!("{} must be in 1..=86400", c.function_limits_poll_secs),
        );
    }
}

fn naming(n: &NamingConfig, p: &mut Problems) {
    if let Err(e) = crate::control::naming::Namer::new(&n.template) {
        p.bad("naming.template", e.to_string());
    }
}

/// `[estimator]`; its bounds are relative to the controller's maximum.
fn estimator(e: &EstimatorConfig, c: &ControllerConfig, p: &mut Problems) {
    if !(0.0..1.0).contains(&e.margin_fraction) {
        p.bad(
            "estimator.margin_fraction",
            format!("{} must be in [0, 1)", e.margin_fraction),
        );
    }
    if !(0.0..=5.0).contains(&e.noise_z) {
        p.bad(
            "estimator.noise_z",
            format!("{} must be in [0, 5]", e.noise_z),
        );
    }
    if !(e.stability_fraction > 0.0 && e.stability_fraction < 1.0) {
        p.bad(
            "estimator.stability_fraction",
            format!("{} must be in (0, 1)", e.stability_fraction),
        );
    }
    if !(e.min_lambdas_per_execution > 0.0
        && e.min_lambdas_per_execution <= c.max_lambdas_per_execution)
    {
        p.bad(
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
        p.bad(
            "estimator.initial_lambdas_per_execution",
            format!(
                "{k0} must be between estimator.min_lambdas_per_execution and controller.max_lambdas_per_execution"
            ),
        );
    }
    if e.settle_secs > 600 {
        p.bad(
            "estimator.settle_secs",
            format!(
                "{} must be in 0..=600: a minute used later than that reacts too late",
                e.settle_secs
            ),
        );
    }
}

fn retry(r: &RetryConfig, p: &mut Problems) {
    if r.initial_ms == 0 || r.max_ms < r.initial_ms {
        p.bad(
            "retry",
            format!(
                "need 0 < initial_ms ({}) <= max_ms ({})",
                r.initial_ms, r.max_ms
            ),
        );
    }
    if !(r.multiplier >= 1.0) {
        p.bad(
            "retry.multiplier",
            format!("{} must be at least 1", r.multiplier),
        );
    }
}

fn coordination(c: &CoordinationConfig, ctl: &ControllerConfig, p: &mut Problems) {
    if c.table.as_deref() == Some("") {
        p.bad(
            "coordination.table",
            "is empty: name the DynamoDB table, or leave the option out",
        );
    }
    p.at_least_one("coordination.renew_secs", c.renew_secs);
    if c.ttl_secs < 3 * c.renew_secs {
        p.bad(
            "coordination.ttl_secs",
            format!(
                "{} is less than three renewals ({} s): one slow write would void a live claim",
                c.ttl_secs,
                3 * c.renew_secs
            ),
        );
    }
    if c.ttl_secs < ctl.list_grace_secs {
        p.bad(
            "coordination.ttl_secs",
            format!(
                "{} is less than controller.list_grace_secs ({}): a crashed controller's part would be free before the others can list its last executions",
                c.ttl_secs, ctl.list_grace_secs
            ),
        );
    }
}

/// The largest magnitude any number in the config may have: far above
/// every sensible value, far below where durations and counts overflow.
const MAX_NUMBER: f64 = 1e12;

/// Every number finite and within `MAX_NUMBER`, whatever its field: TOML
/// reads `inf` and `nan`, and `inf` as a multiplier would panic the first
/// retry (and again on every restart).
fn numbers(cfg: &Config, p: &mut Problems) {
    fn walk(v: &toml::Value, path: &str, p: &mut Problems) {
        match v {
            toml::Value::Float(f) if !f.is_finite() => {
                p.bad(path, format!("{f} is not a finite number"));
            }
            toml::Value::Float(f) if f.abs() > MAX_NUMBER => {
                p.bad(
                    path,
                    format!("{f} is out of range (at most {MAX_NUMBER:e})"),
                );
            }
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, &sub, p);
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{path}[{i}]"), p);
                }
            }
            _ => {}
        }
    }
    match toml::Value::try_from(cfg) {
        Ok(v) => walk(&v, "", p),
        Err(e) => p.bad("config", format!("cannot be read back: {e}")),
    }
}

fn seed(s: &SeedPolicyConfig, p: &mut Problems) {
    if !(s.multiplier > 0.0) {
        p.bad("seed.multiplier", "must be positive");
    }
    p.at_least_one("seed.pollers", s.pollers as u64);
}

fn fixed(f: &FixedPolicyConfig, p: &mut Problems) {
    if f.max_running == Some(0) {
        p.bad("fixed.max_running", "must be at least 1");
    }
}

/// The endpoint overrides: an http(s) URL with a host, or the SDK fails
/// every call (late, and with a less helpful message).
fn aws(a: &AwsConfig, p: &mut Problems) {
    for (field, url) in [
        ("aws.endpoint_url", &a.endpoint_url),
        ("aws.cloudwatch_endpoint_url", &a.cloudwatch_endpoint_url),
    ] {
        if let Some(url) = url
            && !is_http_url(url)
        {
            p.bad(
                field,
                format!("\"{url}\" is not an http:// or https:// URL with a host"),
            );
        }
    }
    p.at_least_one("aws.attempt_timeout_ms", a.attempt_timeout_ms);
    p.at_least_one("aws.operation_timeout_ms", a.operation_timeout_ms);
    if a.operation_timeout_ms < a.attempt_timeout_ms {
        p.bad(
            "aws.operation_timeout_ms",
            format!(
                "{} is below aws.attempt_timeout_ms ({}): a call could never finish its first attempt; raise it or lower the attempt timeout",
                a.operation_timeout_ms, a.attempt_timeout_ms
            ),
        );
    }
}

fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !host.starts_with(':') && !url.chars().any(char::is_whitespace)
}

fn http(h: &HttpConfig, p: &mut Problems) {
    if h.listen.parse::<std::net::SocketAddr>().is_err() {
        p.bad(
            "http.listen",
            format!(
                "\"{}\" is not an address and port such as 0.0.0.0:8080",
                h.listen
            ),
        );
    }
}

fn metrics(m: &MetricsConfig, p: &mut Problems) {
    if m.namespace.is_empty() || m.namespace.starts_with("AWS/") {
        p.bad(
            "metrics.namespace",
            format!(
                "\"{}\" must be non-empty and not start with AWS/",
                m.namespace
            ),
        );
    }
    p.at_least_one("metrics.interval_secs", m.interval_secs);
}

fn reload(r: &ReloadConfig, p: &mut Problems) {
    if !(1..=3600).contains(&r.poll_secs) {
        p.bad(
            "reload.poll_secs",
            format!("{} must be in 1..=3600", r.poll_secs),
        );
    }
}

/// Names are what logs and metrics show: present and unique.
fn queue_names(queues: &[QueueConfig], p: &mut Problems) {
    let mut names = std::collections::BTreeSet::new();
    for (i, q) in queues.iter().enumerate() {
        if q.name.is_empty() {
            p.bad(&format!("queues[{i}].name"), "must not be empty");
        } else if !names.insert(q.name.clone()) {
            p.bad(
                &format!("queues[{i}].name"),
                format!("\"{}\" is used twice", q.name),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadError;

    #[test]
    fn numbers_that_are_not_finite_or_absurd_are_refused_by_field() {
        let text = "[controller]\nramp_initial = nan\nramp_concurrency_per_s = 1e300\n\n[retry]\nmultiplier = inf\n\n[seed]\nmultiplier = inf\n";
        let cfg: Config = toml::from_str(text).unwrap();
        let problems = cfg.validate();
        for field in [
            "controller.ramp_initial",
            "controller.ramp_concurrency_per_s",
            "retry.multiplier",
            "seed.multiplier",
        ] {
            assert!(
                problems.iter().any(|p| p.field == field),
                "{field} not reported: {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[controller]\nceiling = 0\ntick_ms = 0\n[naming]\ntemplate = \"{\"\n";
        let err = Config::from_text(text, "bad.toml").unwrap_err();
        match err {
            LoadError::Invalid { problems, .. } => {
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
        let err = Config::from_text(text, "bad.toml").unwrap_err().to_string();
        assert!(
            err.contains("estimator.initial_lambdas_per_execution"),
            "{err}"
        );
        let ok = "[estimator]\ninitial_lambdas_per_execution = 1.9\n";
        assert!(Config::from_text(ok, "ok.toml").is_ok());
    }

    /// One broken value per section: each section is checked, all are
    /// reported, in file order, with the messages users see.
    #[test]
    fn every_section_is_checked_in_file_order() {
        let text = r#"
[controller]
start_burst = 0
[naming]
template = "{"
[estimator]
noise_z = 6.0
[retry]
multiplier = 0.5
[seed]
pollers = 0
[fixed]
max_running = 0
[aws]
cloudwatch_endpoint_url = "127.0.0.1:4566"
[http]
listen = "nowhere"
[metrics]
interval_secs = 0
[reload]
poll_secs = 0
[[queues]]
name = "bulk"
[[queues]]
name = "bulk"
"#;
        let cfg: Config = toml::from_str(text).unwrap();
        let shown: Vec<String> = cfg.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "controller.start_burst: must be at least 1",
                "naming.template: unclosed '{' at byte 0; write fields as {name}",
                "estimator.noise_z: 6 must be in [0, 5]",
                "retry.multiplier: 0.5 must be at least 1",
                "seed.pollers: must be at least 1",
                "fixed.max_running: must be at least 1",
                "aws.cloudwatch_endpoint_url: \"127.0.0.1:4566\" is not an http:// or https:// URL with a host",
                "http.listen: \"nowhere\" is not an address and port such as 0.0.0.0:8080",
                "metrics.interval_secs: must be at least 1",
                "reload.poll_secs: 0 must be in 1..=3600",
                "queues[1].name: \"bulk\" is used twice",
            ]
        );
    }

    #[test]
    fn endpoint_overrides_must_be_http_urls() {
        let check = |url: &str| {
            let text = format!("[aws]\ncloudwatch_endpoint_url = \"{url}\"\n");
            let cfg: Config = toml::from_str(&text).unwrap();
            cfg.validate()
        };
        for ok in [
            "http://127.0.0.1:4566",
            "https://monitoring.us-east-1.amazonaws.com",
            "http://localhost:1/path",
        ] {
            assert_eq!(check(ok), [], "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:4566",
            "ftp://host",
            "http://",
            "http://:80",
            "http://a b",
        ] {
            let problems = check(bad);
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert_eq!(problems[0].field, "aws.cloudwatch_endpoint_url");
        }
        let cfg: Config = toml::from_str("[aws]\nendpoint_url = \"moto\"\n").unwrap();
        assert_eq!(cfg.validate()[0].field, "aws.endpoint_url");
    }

    #[test]
    fn aws_timeouts_must_be_positive_and_the_call_at_least_one_attempt() {
        let check = |attempt: u64, operation: u64| {
            let text = format!(
                "[aws]\nattempt_timeout_ms = {attempt}\noperation_timeout_ms = {operation}\n"
            );
            let cfg: Config = toml::from_str(&text).unwrap();
            cfg.validate()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(check(300, 300), Vec::<String>::new());
        assert_eq!(check(0, 1), ["aws.attempt_timeout_ms: must be at least 1"]);
        let shown = check(2000, 500);
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "aws.operation_timeout_ms: 500 is below aws.attempt_timeout_ms (2000)"
            ),
            "{shown:?}"
        );
    }

    /// Every check of `[controller]` still fires, in field order.
    #[test]
    fn every_controller_check_fires() {
        let text = r"
[controller]
ceiling = 10
account_limit = 5
headroom_fraction = 0.5
max_lambdas_per_execution = 0.5
priority_reserve_fraction = -0.1
tick_ms = 0
visibility_timeout_secs = 0
idle_wait_secs = 21
max_receives_in_flight = 0
max_starts_in_flight = 0
start_rate_per_s = 0
start_burst = 0
ramp_concurrency_per_s = 0.0
ramp_initial = 0.1
reconcile_interval_secs = 0
list_pages_per_s = 0
metrics_poll_secs = 0
shutdown_deadline_secs = 120
function_limits_poll_secs = 0
[estimator]
min_lambdas_per_execution = 0.0
settle_secs = 601
";
        let cfg: Config = toml::from_str(text).unwrap();
        let fields: Vec<String> = cfg.validate().into_iter().map(|p| p.field).collect();
        let expected: Vec<String> = [
            "account_limit",
            "headroom_fraction",
            "max_lambdas_per_execution",
            "priority_reserve_fraction",
            "tick_ms",
            "visibility_timeout_secs",
            "idle_wait_secs",
            "max_receives_in_flight",
            "max_starts_in_flight",
            "start_rate_per_s",
            "start_burst",
            "ramp_concurrency_per_s",
            "ramp_initial",
            "reconcile_interval_secs",
            "list_pages_per_s",
            "metrics_poll_secs",
            "shutdown_deadline_secs",
            "function_limits_poll_secs",
        ]
        .iter()
        .map(|f| format!("controller.{f}"))
        .chain(["estimator.min_lambdas_per_execution".to_string()])
        .chain(["estimator.settle_secs".to_string()])
        .collect();
        assert_eq!(fields, expected);
    }
}
