//! The completion loop (when `[completion_queue]` is set): EventBridge
//! status-change events complete ledger entries sooner than the reconcile,
//! which keeps running since events can be late or lost. Only this state
//! machine's status changes count: anything else on the queue (another
//! rule's target, another state machine, a stray producer) would free
//! capacity that is still in use until the next reconcile.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Controller, sleep_unless};
use crate::control::receive::BATCH;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

/// The `source` of Step Functions' EventBridge events.
pub const EVENT_SOURCE: &str = "aws.states";
/// The `detail-type` of an execution's status change.
pub const EVENT_DETAIL_TYPE: &str = "Step Functions Execution Status Change";

/// Why a message on the completion queue is not a status change of this
/// controller's state machine. Such a message frees nothing; it is
/// logged, counted and deleted (it is not work).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrayEvent {
    /// The body is not a JSON object.
    #[error("not a JSON object")]
    NotJson,
    /// `source` is not `aws.states`.
    #[error("source is {0}, not \"aws.states\"")]
    Source(String),
    /// `detail-type` is not an execution status change.
    #[error("detail-type is {0}, not \"Step Functions Execution Status Change\"")]
    DetailType(String),
    /// `detail.stateMachineArn` is not the configured state machine.
    #[error("detail.stateMachineArn is {found}, not aws.state_machine_arn ({expected})")]
    StateMachine {
        /// The event's ARN (quoted), or `missing`.
        found: String,
        /// The controller's state machine.
        expected: String,
    },
    /// `detail.name` or `detail.status` is missing.
    #[error("detail.name or detail.status is missing")]
    Incomplete,
}

impl StrayEvent {
    /// The kind, for logging each kind once.
    fn kind(&self) -> &'static str {
        match self {
            StrayEvent::NotJson => "not_json",
            StrayEvent::Source(_) => "source",
            StrayEvent::DetailType(_) => "detail_type",
            StrayEvent::StateMachine { .. } => "state_machine",
            StrayEvent::Incomplete => "incomplete",
        }
    }
}

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    pub(super) async fn completion_loop(&self, shutdown: watch::Receiver<bool>) {
        let Some(q) = &self.b.completions else {
            return;
        };
        let vis = Duration::from_secs(60);
        let arn = self.cfg().aws.state_machine_arn.clone();
        let mut warned = HashSet::new();
        while !*shutdown.borrow() {
            let wait = Duration::from_secs(self.cfg().controller.idle_wait_secs);
            let msgs = match q.receive(BATCH, vis, wait).await {
                Ok(m) => m,
                Err(e) => {
                    debug!(error = %e, "completion receive failed");
                    sleep_unless(Duration::from_secs(1), &shutdown).await;
                    continue;
                }
            };
            if msgs.is_empty() {
                continue;
            }
            let now = self.now();
            let mut stray = 0;
            let mut freed = 0;
            {
                let mut st = self.state();
                for m in &msgs {
                    match parse_status_event(&m.body, &arn) {
                        Ok((name, status)) if status != "RUNNING" => {
                            freed += u64::from(st.ledger.completed(&name, now));
                        }
                        Ok(_) => {}
                        Err(why) => {
                            stray += 1;
                            // Once per kind: a misrouted rule sends thousands.
                            if warned.insert(why.kind()) {
                                warn!(message_id = %m.id, reason = %why,
                                    "message on the completion queue is not a status change of this state machine; deleted, nothing freed. Check the EventBridge rule that targets [completion_queue] (more of this kind are logged at debug)");
                            } else {
                                debug!(message_id = %m.id, reason = %why, "stray completion event deleted");
                            }
                        }
                    }
                }
            }
            self.tally(Counter::StrayEvents, stray);
            self.tally(Counter::EventCompletions, freed);
            let receipts: Vec<String> = msgs.into_iter().map(|m| m.receipt).collect();
            if let Err(e) = q.delete_batch(&receipts).await {
                debug!(error = %e, "completion delete failed");
            }
        }
    }
}

/// (execution name, status) of an EventBridge "Step Functions Execution
/// Status Change" event of the state machine `state_machine_arn`, or why
/// the body is not one.
pub fn parse_status_event(
    body: &str,
    state_machine_arn: &str,
) -> Result<(String, String), StrayEvent> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|_| StrayEvent::NotJson)?;
    if !v.is_object() {
        return Err(StrayEvent::NotJson);
    }
    let field = |v: &serde_json::Value, key: &str| match v.get(key) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let shown = |s: Option<String>| s.map_or_else(|| "missing".to_string(), |s| format!("{s:?}"));
    let source = field(&v, "source");
    if source.as_deref() != Some(EVENT_SOURCE) {
        return Err(StrayEvent::Source(shown(source)));
    }
    let detail_type = field(&v, "detail-type");
    if detail_type.as_deref() != Some(EVENT_DETAIL_TYPE) {
        return Err(StrayEvent::DetailType(shown(detail_type)));
    }
    let detail = v.get("detail").unwrap_or(&serde_json::Value::Null);
    let arn = field(detail, "stateMachineArn");
    if arn.as_deref() != Some(state_machine_arn) {
        return Err(StrayEvent::StateMachine {
            found: shown(arn),
            expected: state_machine_arn.to_string(),
        });
    }
    match (field(detail, "name"), field(detail, "status")) {
        (Some(name), Some(status)) => Ok((name, status)),
        _ => Err(StrayEvent::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:sm";

    fn event(source: &str, detail_type: &str, arn: &str) -> String {
        format!(
            r#"{{"source":"{source}","detail-type":"{detail_type}",
            "detail":{{"name":"m-1","status":"SUCCEEDED","executionArn":"x","stateMachineArn":"{arn}"}}}}"#
        )
    }

    #[test]
    fn only_this_state_machines_status_changes_are_accepted() {
        let ok = event(EVENT_SOURCE, EVENT_DETAIL_TYPE, ARN);
        assert_eq!(
            parse_status_event(&ok, ARN),
            Ok(("m-1".to_string(), "SUCCEEDED".to_string()))
        );
        let other = event(EVENT_SOURCE, EVENT_DETAIL_TYPE, "arn:other");
        let e = parse_status_event(&other, ARN).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("detail.stateMachineArn is \"arn:other\", not aws.state_machine_arn ({ARN})")
        );
        let e = parse_status_event(&event("my.app", EVENT_DETAIL_TYPE, ARN), ARN).unwrap_err();
        assert_eq!(e, StrayEvent::Source("\"my.app\"".into()));
        let e = parse_status_event(&event(EVENT_SOURCE, "Other", ARN), ARN).unwrap_err();
        assert_eq!(e.kind(), "detail_type");
        let no_arn = format!(
            r#"{{"source":"{EVENT_SOURCE}","detail-type":"{EVENT_DETAIL_TYPE}","detail":{{"name":"m","status":"FAILED"}}}}"#
        );
        let e = parse_status_event(&no_arn, ARN).unwrap_err();
        assert!(e.to_string().contains("is missing, not"), "{e}");
        let no_name = ok.replace(r#""name":"m-1","#, "");
        assert_eq!(
            parse_status_event(&no_name, ARN),
            Err(StrayEvent::Incomplete)
        );
        assert_eq!(parse_status_event("{}", ARN).unwrap_err().kind(), "source");
        assert_eq!(parse_status_event("nope", ARN), Err(StrayEvent::NotJson));
        assert_eq!(parse_status_event("[1]", ARN), Err(StrayEvent::NotJson));
    }
}
