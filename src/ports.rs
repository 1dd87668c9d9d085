//! Ports: the narrow async interfaces the controller drives, in the project's
//! own types. The AWS SDK adapters, the embedded simulator and the scripted
//! fake of the controller tests (`tests/support`) implement them; nothing here names an SDK type.

use std::future::Future;
use std::time::Duration;

use crate::metrics::{Counter, Gauge, Progress};

/// How a backend call failed, as the controller needs to react to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The service asked us to slow down; retry later with backoff.
    #[error("throttled by {service} ({code})")]
    Throttled {
        /// The service that answered, by its short name (e.g. "sqs").
        service: &'static str,
        /// The service's error code.
        code: String,
    },
    /// A transient failure (5xx, timeout, connection reset); retry.
    #[error("transient error from {service} ({code}): {message}")]
    Transient {
        /// The service that answered, by its short name (e.g. "sqs").
        service: &'static str,
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
    },
    /// The request can never succeed as sent (bad input, missing permission).
    #[error("permanent error from {service} ({code}): {message}")]
    Permanent {
        /// The service that answered, by its short name (e.g. "sqs").
        service: &'static str,
        /// The service's error code.
        code: String,
        /// The service's message.
        message: String,
    },
}

/// Codes of `Transient` errors that carry no answer from the service: a
/// timeout, a connection that failed, a response that could not be read
/// (`aws::classify` writes them).
pub const NO_ANSWER_CODES: [&str; 3] = ["Timeout", "DispatchFailure", "ResponseError"];

impl PortError {
    /// Throttled and transient errors may succeed later; permanent ones not.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, PortError::Permanent { .. })
    }

    /// The service answered, if only to refuse or slow us down: the caller
    /// is making progress. A timeout or a failed connection is no answer.
    pub fn is_answer(&self) -> bool {
        match self {
            PortError::Transient { code, .. } => !NO_ANSWER_CODES.contains(&code.as_str()),
            _ => true,
        }
    }
}

/// One message received from a work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// SQS MessageId: stable across redeliveries.
    pub id: String,
    /// Receipt handle of this delivery; needed to delete or hide it.
    pub receipt: String,
    /// The message body as sent.
    pub body: String,
    /// ApproximateReceiveCount including this delivery.
    pub receive_count: u32,
}

/// Outcome of one entry of a batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    /// Index of the entry in the request.
    pub index: usize,
    /// Why that entry failed.
    pub error: PortError,
}

/// An SQS-like queue. Batch calls take at most 10 entries and fail per entry.
pub trait WorkQueue: Send + Sync {
    /// Receive up to `max` (1..=10) messages, hiding them for `visibility`.
    /// `wait` > 0 long-polls: return as soon as any message is available.
    fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Message>, PortError>> + Send;

    /// Delete by receipt handle. Returns the entries that failed.
    fn delete_batch(
        &self,
        receipts: &[String],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, PortError>> + Send;

    /// Set the remaining visibility of each message (0 hands it back).
    fn change_visibility_batch(
        &self,
        receipts: &[String],
        visibility: Duration,
    ) -> impl Future<Output = Result<Vec<EntryFailure>, PortError>> + Send;

    /// Send bodies, each with optional string attributes: one batch, as
    /// `send_batches` packs them. Returns failures.
    fn send_batch(
        &self,
        entries: &[OutgoingMessage],
    ) -> impl Future<Output = Result<Vec<EntryFailure>, PortError>> + Send;

    /// The queue's approximate message counts (SQS GetQueueAttributes).
    fn depth(&self) -> impl Future<Output = Result<QueueDepth, PortError>> + Send;
}

/// Approximate message counts of a queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Messages available to receive (ApproximateNumberOfMessages).
    pub visible: u64,
    /// Messages received and not yet deleted or visible again
    /// (ApproximateNumberOfMessagesNotVisible).
    pub in_flight: u64,
    /// Messages sent with a delay not yet over
    /// (ApproximateNumberOfMessagesDelayed).
    pub delayed: u64,
}

impl QueueDepth {
    /// Every message still on the queue: visible, in flight and delayed.
    pub fn total(self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingMessage {
    /// The body to send.
    pub body: String,
    /// How long SQS keeps it invisible after sending.
    pub delay: Duration,
    /// String message attributes, as (name, value).
    pub attributes: Vec<(String, String)>,
}

/// The most entries one SendMessageBatch takes.
pub const SEND_BATCH_ENTRIES: usize = 10;

/// The most bytes one SendMessageBatch takes, bodies and attributes
/// summed: 1 MiB, as for one message (AWS-FACTS.md, "SQS": messages up to
/// 1 MiB, a batch limited in total too; the SendMessageBatch reference
/// gives both as 1,048,576 bytes, which moto enforces). Ten 256 KiB
/// bodies do not fit: SQS refuses such a request whole.
pub const SEND_BATCH_BYTES: usize = 1_048_576;

impl OutgoingMessage {
    /// What SQS counts of this message against the batch's size: the body
    /// and each attribute's name, data type ("String") and value, in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + "String".len() + v.len())
                .sum::<usize>()
    }
}

/// Messages of these sizes (`OutgoingMessage::size`) cut into consecutive
/// SendMessageBatch calls, in order: each as full as 10 entries and 1 MiB
/// allow. A message over 1 MiB goes alone, so that SQS refuses it and not
/// its neighbours.
pub fn send_batches(sizes: impl IntoIterator<Item = usize>) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0usize, 0);
    for size in sizes {
        let full = end - start == SEND_BATCH_ENTRIES || bytes + size > SEND_BATCH_BYTES;
        if end > start && full {
            batches.push(start..end);
            (start, bytes) = (end, 0);
        }
        bytes += size;
        end += 1;
    }
    if end > start {
        batches.push(start..end);
    }
    batches
}

/// Tries of one SendMessageBatch in `send_batch_retrying`.
pub const SEND_TRIES: u32 = 3;

/// Send `bodies` as one SendMessageBatch (as `send_batches` packs them),
/// retrying the entries SQS failed for a retryable reason (and a
/// retryable error of the whole call) `SEND_TRIES` times, 0.4 s and 0.8 s
/// apart; returns the index and the reason of each body that never went.
pub async fn send_batch_retrying<Q: WorkQueue>(q: &Q, bodies: &[&str]) -> Vec<(usize, String)> {
    let mut pending: Vec<usize> = (0..bodies.len()).collect();
    let mut failed = Vec::new();
    for attempt in 0..SEND_TRIES {
        if pending.is_empty() {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        let out: Vec<OutgoingMessage> = pending
            .iter()
            .map(|&i| OutgoingMessage {
                body: bodies[i].to_string(),
                ..OutgoingMessage::default()
            })
            .collect();
        let last = attempt + 1 == SEND_TRIES;
        match q.send_batch(&out).await {
            Ok(failures) => {
                let mut retry = Vec::new();
                for f in failures {
                    let i = pending[f.index];
                    if f.error.is_retryable() && !last {
                        retry.push(i);
                    } else {
                        failed.push((i, f.error.to_string()));
                    }
                }
                pending = retry;
            }
            Err(e) if e.is_retryable() && !last => {}
            Err(e) => {
                failed.extend(pending.drain(..).map(|i| (i, e.to_string())));
            }
        }
    }
    failed
}

/// What StartExecution did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Started now, or the same name and input was already running
    /// (Standard workflows return the original execution).
    Started,
    /// `ExecutionAlreadyExists`: this name was used before, by an
    /// execution that closed or one with other input; `input_matches`
    /// tells whether it was this message.
    AlreadyExists,
}

/// One page of running executions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecutionPage {
    /// Execution names on this page.
    pub names: Vec<String>,
    /// The token for the next page; None on the last.
    pub next_token: Option<String>,
}

/// What RedriveExecution did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// The execution runs again from the state that failed (same ARN).
    Redriven,
    /// `ExecutionNotRedrivable` (running, succeeded, too old, started
    /// before redrive existed), `ExecutionDoesNotExist` or an ARN the
    /// service refused: the service's code and message. Whether it runs
    /// again already is DescribeExecution's to tell
    /// (`control::redrive::after_refusal`).
    NotRedrivable(String),
}

/// An execution's status, as Step Functions reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Running (a redriven execution too).
    Running,
    /// Succeeded.
    Succeeded,
    /// Failed: a state failed past its retries.
    Failed,
    /// Timed out (TimeoutSeconds of the state machine or a state).
    TimedOut,
    /// Stopped (StopExecution).
    Aborted,
    /// Redriven, not yet running again.
    PendingRedrive,
}

impl ExecutionStatus {
    /// The statuses `fanout failed` lists and RedriveExecution takes.
    pub const UNSUCCESSFUL: [ExecutionStatus; 3] = [
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Aborted,
    ];

    /// The status as the API spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::Succeeded => "SUCCEEDED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::TimedOut => "TIMED_OUT",
            ExecutionStatus::Aborted => "ABORTED",
            ExecutionStatus::PendingRedrive => "PENDING_REDRIVE",
        }
    }
}

/// One closed execution of a ListExecutions page.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedExecution {
    /// Its ARN (what RedriveExecution takes).
    pub arn: String,
    /// Its name.
    pub name: String,
    /// FAILED, TIMED_OUT or ABORTED.
    pub status: ExecutionStatus,
    /// When it started, on the backend's clock (Unix seconds on AWS,
    /// virtual seconds in the simulator).
    pub started_s: f64,
    /// When it closed, on the same clock, when the listing says.
    pub stopped_s: Option<f64>,
    /// How many times it was redriven.
    pub redrive_count: u32,
}

/// One page of closed executions, newest start first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClosedPage {
    /// The executions on this page.
    pub executions: Vec<ClosedExecution>,
    /// The token for the next page; None on the last.
    pub next_token: Option<String>,
}

/// What DescribeExecution says of one execution.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutionDetail {
    /// Its status now; None when the backend's word is not one of ours.
    pub status: Option<ExecutionStatus>,
    /// Its input, when the backend keeps it (the simulator keeps hashes).
    pub input: Option<String>,
    /// The error it failed with.
    pub error: Option<String>,
    /// The cause it failed with.
    pub cause: Option<String>,
    /// How many times it was redriven.
    pub redrive_count: u32,
    /// `redriveStatusReason` when `redriveStatus` is NOT_REDRIVABLE; None
    /// when redrivable or not told.
    pub not_redrivable: Option<String>,
}

/// Step Functions, for one state machine.
pub trait Executions: Send + Sync {
    /// StartExecution with this name and input.
    fn start(
        &self,
        name: &str,
        input: &str,
    ) -> impl Future<Output = Result<StartOutcome, PortError>> + Send;

    /// DescribeExecution of the execution named `name`: whether it was
    /// started with `input` (`ExecutionAlreadyExists` says only that the
    /// name is taken, by this message or by another one).
    fn input_matches(
        &self,
        name: &str,
        input: &str,
    ) -> impl Future<Output = Result<bool, PortError>> + Send;

    /// One page (up to 1,000) of RUNNING executions.
    fn list_running(
        &self,
        next_token: Option<String>,
    ) -> impl Future<Output = Result<ExecutionPage, PortError>> + Send;

    /// RedriveExecution of the execution `execution_arn`: it resumes from
    /// the state that failed, under the same ARN. `token` (the request's
    /// message id, the same on every delivery of it) is the call's client
    /// token: a request delivered again within 15 minutes is answered as
    /// the first was, and a run that failed again meanwhile is not run a
    /// second time.
    /// A backend without closed executions (a bench's or an example's)
    /// refuses every redrive.
    fn redrive(
        &self,
        execution_arn: &str,
        _token: &str,
    ) -> impl Future<Output = Result<RedriveOutcome, PortError>> + Send {
        let why = format!("ExecutionDoesNotExist: {execution_arn}");
        async move { Ok(RedriveOutcome::NotRedrivable(why)) }
    }

    /// DescribeExecution of the execution `execution_arn`. A backend
    /// without closed executions knows none.
    fn describe(
        &self,
        execution_arn: &str,
    ) -> impl Future<Output = Result<ExecutionDetail, PortError>> + Send {
        let message = execution_arn.to_string();
        async move {
            Err(PortError::Permanent {
                service: "states",
                code: "ExecutionDoesNotExist".into(),
                message,
            })
        }
    }

    /// One page (up to 1,000) of ListExecutions with `status`
    /// (FAILED, TIMED_OUT or ABORTED), newest start first. A backend
    /// without closed executions lists none.
    fn list_closed(
        &self,
        status: ExecutionStatus,
        next_token: Option<String>,
    ) -> impl Future<Output = Result<ClosedPage, PortError>> + Send {
        let _ = (status, next_token);
        async { Ok(ClosedPage::default()) }
    }

    /// The state the execution failed in, when its history tells it
    /// cheaply (GetExecutionHistory, newest events first); `None` when
    /// it does not or the backend cannot read histories.
    fn failed_state(
        &self,
        execution_arn: &str,
    ) -> impl Future<Output = Result<Option<String>, PortError>> + Send {
        let _ = execution_arn;
        async { Ok(None) }
    }

    /// The Lambdas-per-execution estimate last remembered for this state
    /// machine's current definition, if any: a restart, a new replica or
    /// the next refresh starts from it instead of the maximum.
    fn remembered_k(&self) -> impl Future<Output = Result<Option<f64>, PortError>> + Send {
        async { Ok(None) }
    }

    /// The state machine's definition (Amazon States Language), when the
    /// backend can read it (DescribeStateMachine): the widest an execution
    /// can be follows from it.
    fn definition(&self) -> impl Future<Output = Result<Option<String>, PortError>> + Send {
        async { Ok(None) }
    }

    /// Remember `k` with the state machine (for its current definition).
    fn remember_k(&self, k: f64) -> impl Future<Output = Result<(), PortError>> + Send {
        let _ = k;
        async { Ok(()) }
    }
}

/// One pipeline function's published minute.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSample {
    /// The function's name, as listed in the config.
    pub name: String,
    /// Its maximum concurrency in the minute.
    pub max: f64,
    /// Its mean concurrency in the minute (ConcurrentExecutions, Average),
    /// when known: with the maximum it separates the function's mean width,
    /// which grows with the running count, from its bursts, which grow
    /// about as the count's square root.
    pub mean: Option<f64>,
    /// Its throttled invocations in the minute (Throttles, Sum), when known.
    pub throttles: Option<f64>,
}

/// One published minute of Lambda concurrency.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencySample {
    /// Start of the minute, seconds since the backend's epoch (the same
    /// clock as `tokio::time::Instant` offsets handed to `samples_since`).
    pub minute_start_s: u64,
    /// Maximum concurrency of the pipeline's functions in that minute.
    pub pipeline_max: f64,
    /// Maximum account-wide concurrency in that minute, when known.
    pub account_max: Option<f64>,
    /// Throttled invocations of the pipeline's functions in that minute
    /// (AWS/Lambda Throttles, Sum), when known.
    pub throttles: Option<f64>,
    /// Each pipeline function's own series, when the backend reads them
    /// (empty when it reads only the account-wide series).
    pub functions: Vec<FunctionSample>,
}

/// CloudWatch `ConcurrentExecutions`, 1-minute maxima, late and sometimes
/// missing: a minute may never appear.
pub trait ConcurrencyMetrics: Send + Sync {
    /// The backend's current time on the scale of `minute_start_s` (Unix
    /// seconds on AWS, virtual seconds in the simulator).
    fn now_s(&self) -> f64;

    /// Published samples whose minute starts at or after `since_s`.
    fn samples_since(
        &self,
        since_s: u64,
    ) -> impl Future<Output = Result<Vec<ConcurrencySample>, PortError>> + Send;

    /// Each pipeline function's concurrency limit where one is set
    /// (reserved concurrency, GetFunctionConcurrency): (name, limit), with
    /// `None` for a function without one. Empty when the backend cannot tell.
    fn function_limits(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Option<u32>)>, PortError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Where the controller reports its own gauges and counters.
pub trait MetricsSink: Send + Sync {
    /// Set a gauge.
    fn gauge(&self, gauge: Gauge, value: f64);
    /// Add to a counter.
    fn count(&self, counter: Counter, n: u64);
    /// The backlog's progress and expected finish, per queue.
    fn progress(&self, progress: &Progress) {
        let _ = progress;
    }
}

/// A sink that drops everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn gauge(&self, _: Gauge, _: f64) {}
    fn count(&self, _: Counter, _: u64) {}
}

/// One controller's claim.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimEntry {
    /// Lambda concurrency it may hold.
    pub lambdas: f64,
    /// Fraction of Lambda's scaling rate it may ramp at.
    pub ramp: f64,
    /// Lambda concurrency it would use if it could (its backlog's demand).
    pub wants: f64,
    /// Backend time (seconds) after which the claim is void.
    pub expires_s: f64,
}

/// The shared record of claims on one ceiling, by controller id; the rule
/// that writes it is `control::claims`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClaimRecord {
    /// Claims by controller id (ordered, so every reader sees one order).
    pub entries: std::collections::BTreeMap<String, ClaimEntry>,
}

/// A claim record as stored, with the version a conditional write must
/// match.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredClaims {
    /// Bumped by every write.
    pub version: u64,
    /// The claims.
    pub record: ClaimRecord,
}

/// The shared store of claims on one ceiling (DynamoDB, memory in the
/// simulator). Object-safe: the controller holds it as a trait object, so
/// a backend without one needs no extra type.
pub trait ClaimStore: Send + Sync {
    /// The record, if one was ever written.
    fn load(&self) -> futures::future::BoxFuture<'_, Result<Option<StoredClaims>, PortError>>;

    /// Write `record` as version `expected + 1` (or 1 when `expected` is
    /// None, only if no record exists). `Ok(false)`: someone else wrote
    /// first; load again.
    fn save(
        &self,
        expected: Option<u64>,
        record: ClaimRecord,
    ) -> futures::future::BoxFuture<'_, Result<bool, PortError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every message in exactly one batch, in order; no batch over 10
        /// entries or 1 MiB, unless it is one message over 1 MiB alone
        /// (SQS refuses that one, not its neighbours).
        #[test]
        fn batches_fit_sendmessagebatch(
            sizes in prop::collection::vec(
                prop_oneof![
                    8 => 0usize..=300_000,
                    3 => 200_000usize..=SEND_BATCH_BYTES,
                    1 => SEND_BATCH_BYTES..=SEND_BATCH_BYTES + 10,
                ],
                0..60,
            )
        ) {
            let batches = send_batches(sizes.iter().copied());
            let mut next = 0;
            for b in &batches {
                prop_assert_eq!(b.start, next, "a gap or an overlap: {:?}", batches);
                prop_assert!(!b.is_empty() && b.len() <= SEND_BATCH_ENTRIES, "{:?}", b);
                let bytes: usize = sizes[b.clone()].iter().sum();
                prop_assert!(
                    bytes <= SEND_BATCH_BYTES || b.len() == 1,
                    "batch {:?} holds {} bytes", b, bytes
                );
                next = b.end;
            }
            prop_assert_eq!(next, sizes.len());
        }
    }

    #[test]
    fn ten_bodies_of_256_kib_take_three_batches() {
        let sizes = [256 * 1024; 10];
        assert_eq!(send_batches(sizes), [0..4, 4..8, 8..10]);
        let small = OutgoingMessage {
            body: "{}".into(),
            attributes: vec![("ab".into(), "cde".into())],
            ..OutgoingMessage::default()
        };
        assert_eq!(small.size(), 2 + 2 + 6 + 3);
    }

    #[test]
    fn a_throttle_or_a_service_error_is_an_answer_a_timeout_is_not() {
        let transient = |code: &str| PortError::Transient {
            service: "states",
            code: code.into(),
            message: String::new(),
        };
        let throttled = PortError::Throttled {
            service: "states",
            code: "ThrottlingException".into(),
        };
        assert!(throttled.is_answer());
        assert!(transient("ServiceUnavailable").is_answer());
        for code in NO_ANSWER_CODES {
            assert!(!transient(code).is_answer(), "{code}");
        }
    }
}
