//! The controller's own metrics, typed: every gauge and counter it reports
//! has one variant here with its exported name and help text. The
//! controller reports them through `ports::MetricsSink`; `/metrics` and
//! PutMetricData render from these lists, so a metric is named once.

/// A value the controller sets after each admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Gauge {
    /// Executions running, ours and others'.
    RunningExecutions,
    /// Messages received and not yet settled.
    InHand,
    /// Messages admission may receive now.
    Budget,
    /// Running executions the ceiling allows.
    TargetRunning,
    /// The learned Lambda concurrency per execution (k̂).
    LambdasPerExecution,
    /// The Lambda concurrency per running execution measured in the last
    /// usable CloudWatch minute, without margin (0 until one is seen).
    MeasuredLambdasPerExecution,
    /// Running executions the tightest function limit allows (0: no
    /// function limit known).
    FunctionLimitRunning,
    /// Lambda concurrency this controller's claim holds in the shared
    /// record (0 without coordination).
    ClaimedLambdas,
    /// Live controllers in the shared claim record (0 without).
    LiveControllers,
    /// Executions completed per second, as the backlog's ETA assumes.
    CompletionsPerSecond,
}

impl Gauge {
    /// Every gauge, in the order they are rendered.
    pub const ALL: [Gauge; 10] = [
        Gauge::RunningExecutions,
        Gauge::InHand,
        Gauge::Budget,
        Gauge::TargetRunning,
        Gauge::LambdasPerExecution,
        Gauge::MeasuredLambdasPerExecution,
        Gauge::FunctionLimitRunning,
        Gauge::ClaimedLambdas,
        Gauge::LiveControllers,
        Gauge::CompletionsPerSecond,
    ];

    /// The exported name, without the `fanout_` prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Gauge::RunningExecutions => "running_executions",
            Gauge::InHand => "in_hand",
            Gauge::Budget => "budget",
            Gauge::TargetRunning => "target_running",
            Gauge::LambdasPerExecution => "lambdas_per_execution",
            Gauge::MeasuredLambdasPerExecution => "measured_lambdas_per_execution",
            Gauge::FunctionLimitRunning => "function_limit_running",
            Gauge::ClaimedLambdas => "claimed_lambdas",
            Gauge::LiveControllers => "live_controllers",
            Gauge::CompletionsPerSecond => "completions_per_second",
        }
    }

    /// The Prometheus help text.
    pub const fn help(self) -> &'static str {
        match self {
            Gauge::RunningExecutions => {
                "Executions running (ours and others), as of the last decision."
            }
            Gauge::InHand => "Messages received and not yet settled.",
            Gauge::Budget => "Messages admission may receive now.",
            Gauge::TargetRunning => "Running executions the ceiling allows.",
            Gauge::LambdasPerExecution => "Learned Lambda concurrency per execution (k).",
            Gauge::MeasuredLambdasPerExecution => {
                "Lambda concurrency per running execution measured in the last CloudWatch minute (above controller.max_lambdas_per_execution: raise it)."
            }
            Gauge::FunctionLimitRunning => {
                "Running executions the tightest pipeline function's concurrency limit allows (0: none known)."
            }
            Gauge::ClaimedLambdas => {
                "Lambda concurrency this controller's claim holds in the shared record (0: no [coordination] table)."
            }
            Gauge::LiveControllers => {
                "Controllers with a live claim in the shared record, this one included (0: no [coordination] table)."
            }
            Gauge::CompletionsPerSecond => {
                "Executions completed per second as the backlog ETA assumes: running executions the ceiling allows / mean lifetime, or the measured rate before a lifetime is known (0: none known)."
            }
        }
    }

    /// Position in `ALL`, for array-backed storage.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Something the controller counts, once, where it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// Executions started.
    Starts,
    /// Starts answered ExecutionAlreadyExists.
    AlreadyExisted,
    /// Messages deleted after their start was confirmed.
    Deletes,
    /// Messages moved to a DLQ with a reason.
    DeadLettered,
    /// Messages handed back to their queue at once.
    Released,
    /// Messages handed back with a delay.
    Requeued,
    /// StartExecution calls throttled.
    StartThrottles,
    /// StartExecution calls that failed and will be retried.
    StartErrorsTransient,
    /// StartExecution calls refused for a reason about the service
    /// (admission pauses).
    StartErrorsPermanent,
    /// ReceiveMessage calls that failed.
    ReceiveErrors,
    /// Messages whose delete failed after retries.
    DeleteFailures,
    /// Full ListExecutions passes completed.
    Reconciles,
    /// ListExecutions passes abandoned.
    ReconcileFailures,
    /// CloudWatch reads that failed.
    MetricErrors,
    /// CloudWatch minutes in which Lambda throttled the pipeline.
    LambdaThrottledMinutes,
    /// Failed reads or writes of the k̂ remembered with the state machine.
    RememberErrors,
    /// Status-change events that completed an execution still in the
    /// ledger (freed its capacity before a reconcile did).
    EventCompletions,
    /// Messages on the completion queue that were not a status change of
    /// this state machine (deleted, nothing freed).
    StrayEvents,
    /// Messages whose execution name was taken by an execution with other
    /// input (moved to the DLQ as `name_collision`).
    NameCollisions,
    /// DescribeExecution calls after ExecutionAlreadyExists that failed
    /// (the start is retried).
    DescribeErrors,
    /// Messages StartExecution refused for themselves
    /// (InvalidExecutionInput, InvalidName), moved to the DLQ.
    RefusedMessages,
    /// Executions redriven (RedriveExecution) for a redrive request.
    Redrives,
    /// Redrive requests whose execution runs again already or succeeded
    /// since (deleted as done).
    RedrivesAlreadyDone,
    /// Redrive requests whose execution cannot be redriven (moved to the
    /// DLQ as `not_redrivable`).
    RedrivesRefused,
}

impl Counter {
    /// Every counter, in the order they are rendered.
    pub const ALL: [Counter; 24] = [
        Counter::Starts,
        Counter::AlreadyExisted,
        Counter::Deletes,
        Counter::DeadLettered,
        Counter::Released,
        Counter::Requeued,
        Counter::StartThrottles,
        Counter::StartErrorsTransient,
        Counter::StartErrorsPermanent,
        Counter::ReceiveErrors,
        Counter::DeleteFailures,
        Counter::Reconciles,
        Counter::ReconcileFailures,
        Counter::MetricErrors,
        Counter::LambdaThrottledMinutes,
        Counter::RememberErrors,
        Counter::EventCompletions,
        Counter::StrayEvents,
        Counter::NameCollisions,
        Counter::DescribeErrors,
        Counter::RefusedMessages,
        Counter::Redrives,
        Counter::RedrivesAlreadyDone,
        Counter::RedrivesRefused,
    ];

    /// The exported name, without the `fanout_` prefix and `_total` suffix.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Starts => "starts",
            Counter::AlreadyExisted => "already_existed",
            Counter::Deletes => "deletes",
            Counter::DeadLettered => "dead_lettered",
            Counter::Released => "released",
            Counter::Requeued => "requeued",
            Counter::StartThrottles => "start_throttles",
            Counter::StartErrorsTransient => "start_errors_transient",
            Counter::StartErrorsPermanent => "start_errors_permanent",
            Counter::ReceiveErrors => "receive_errors",
            Counter::DeleteFailures => "delete_failures",
            Counter::Reconciles => "reconciles",
            Counter::ReconcileFailures => "reconcile_failures",
            Counter::MetricErrors => "metric_errors",
            Counter::LambdaThrottledMinutes => "lambda_throttled_minutes",
            Counter::RememberErrors => "remember_errors",
            Counter::EventCompletions => "event_completions",
            Counter::StrayEvents => "stray_completion_events",
            Counter::NameCollisions => "name_collisions",
            Counter::DescribeErrors => "describe_errors",
            Counter::RefusedMessages => "refused_messages",
            Counter::Redrives => "redrives",
            Counter::RedrivesAlreadyDone => "redrives_already_done",
            Counter::RedrivesRefused => "redrives_refused",
        }
    }

    /// The Prometheus help text.
    pub const fn help(self) -> &'static str {
        match self {
            Counter::Starts => "Executions started.",
            Counter::AlreadyExisted => "Starts answered ExecutionAlreadyExists.",
            Counter::Deletes => "Messages deleted after their start was confirmed.",
            Counter::DeadLettered => "Messages moved to a DLQ with a reason.",
            Counter::Released => "Messages handed back to their queue.",
            Counter::Requeued => "Messages handed back with a delay.",
            Counter::StartThrottles => "StartExecution calls throttled.",
            Counter::StartErrorsTransient => "StartExecution calls failed and retried.",
            Counter::StartErrorsPermanent => {
                "StartExecution calls refused for a reason about the service (admission pauses)."
            }
            Counter::ReceiveErrors => "ReceiveMessage calls that failed.",
            Counter::DeleteFailures => "Messages whose delete failed after retries.",
            Counter::Reconciles => "Full ListExecutions passes completed.",
            Counter::ReconcileFailures => "ListExecutions passes abandoned.",
            Counter::MetricErrors => "CloudWatch reads that failed.",
            Counter::LambdaThrottledMinutes => {
                "CloudWatch minutes in which Lambda throttled the pipeline."
            }
            Counter::RememberErrors => {
                "Failed reads or writes of the width remembered with the state machine."
            }
            Counter::EventCompletions => {
                "Status-change events that completed an execution still counted as running (capacity freed before a reconcile)."
            }
            Counter::StrayEvents => {
                "Completion-queue messages that were not this state machine's status changes (deleted, nothing freed)."
            }
            Counter::NameCollisions => {
                "Messages whose execution name was taken by an execution with other input (moved to the DLQ as name_collision)."
            }
            Counter::DescribeErrors => {
                "DescribeExecution calls after ExecutionAlreadyExists that failed (the start is retried)."
            }
            Counter::RefusedMessages => {
                "Messages StartExecution refused for themselves (InvalidExecutionInput, InvalidName), moved to the DLQ without pausing admission."
            }
            Counter::Redrives => {
                "Failed executions redriven (RedriveExecution) for a redrive request."
            }
            Counter::RedrivesAlreadyDone => {
                "Redrive requests whose execution was running again or had succeeded (deleted as done)."
            }
            Counter::RedrivesRefused => {
                "Redrive requests whose execution cannot be redriven (moved to the DLQ as not_redrivable)."
            }
        }
    }

    /// Position in `ALL`, for array-backed storage.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The backlog's progress, published by the controller every 30 s.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Executions per second the estimate assumes.
    pub rate_per_s: f64,
    /// Where the rate comes from (`control::eta::RateSource::name`).
    pub rate_source: &'static str,
    /// Per queue, in priority order.
    pub queues: Vec<QueueProgress>,
}

/// One queue's backlog and expected finish.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueProgress {
    /// The queue's name in the config.
    pub queue: String,
    /// Messages left on it (visible, in flight, delayed).
    pub left: u64,
    /// Seconds until its last execution is expected to end (0: nothing
    /// left to start).
    pub eta_s: f64,
}

/// A label value as the Prometheus text format wants it: backslash, double
/// quote and line feed escaped. Queue names come from the config and may
/// hold any of them; unescaped, one breaks the whole exposition.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn label_values_escape_backslash_quote_and_line_feed() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny\r"), "x\\ny\r");
        assert_eq!(escape_label_value("bulk-é"), "bulk-é");
    }

    #[test]
    fn every_variant_is_listed_once_at_its_index_with_a_unique_name() {
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(g.index(), i, "{g:?}");
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
        }
        let names: BTreeSet<&str> = Gauge::ALL
            .iter()
            .map(|g| g.name())
            .chain(Counter::ALL.iter().map(|c| c.name()))
            .collect();
        assert_eq!(names.len(), Gauge::ALL.len() + Counter::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
