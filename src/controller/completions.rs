//! The completion loop (when `[completion_queue]` is set): EventBridge
//! status-change events complete ledger entries sooner than the reconcile,
//! which keeps running since events can be late or lost.

use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

use super::{Controller, sleep_unless};
use crate::control::receive::BATCH;
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

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
            {
                let mut st = self.state();
                for m in &msgs {
                    match parse_status_event(&m.body) {
                        Some((name, status)) if status != "RUNNING" => {
                            st.ledger.completed(&name, now);
                        }
                        Some(_) => {}
                        None => {
                            debug!(message_id = %m.id, "not a Step Functions status event; dropped");
                        }
                    }
                }
            }
            let receipts: Vec<String> = msgs.into_iter().map(|m| m.receipt).collect();
            if let Err(e) = q.delete_batch(&receipts).await {
                debug!(error = %e, "completion delete failed");
            }
        }
    }
}

/// (execution name, status) of an EventBridge "Step Functions Execution
/// Status Change" event.
pub fn parse_status_event(body: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let d = v.get("detail")?;
    let name = d.get("name")?.as_str()?.to_string();
    let status = d.get("status")?.as_str()?.to_string();
    Some((name, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_events_are_parsed() {
        let body = r#"{"source":"aws.states","detail-type":"Step Functions Execution Status Change",
            "detail":{"name":"m-1","status":"SUCCEEDED","executionArn":"arn"}}"#;
        assert_eq!(
            parse_status_event(body),
            Some(("m-1".to_string(), "SUCCEEDED".to_string()))
        );
        assert_eq!(parse_status_event("{}"), None);
        assert_eq!(parse_status_event("nope"), None);
    }
}
