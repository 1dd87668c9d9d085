//! Serving a redrive request (`control::redrive`): RedriveExecution in the
//! place of StartExecution, after the same admission and through the same
//! pacer and retries, so a redriven execution counts against the ceiling
//! like a new one. A request whose execution runs again already is done;
//! one whose execution cannot be redriven goes to the DLQ as
//! `not_redrivable`.

use tracing::{info, warn};

use super::Controller;
use super::settle::Fate;
use super::start::Attempt;
use crate::control::redrive::{AfterRefusal, RequestError, after_refusal, execution_name};
use crate::control::refusal::DeadReason;
use crate::metrics::Counter;
use crate::ports::{
    ConcurrencyMetrics, Executions, Message, MetricsSink, PortError, RedriveOutcome, WorkQueue,
};

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// One RedriveExecution of `arn` for the request `m`: its fate, or
    /// the retryable error (counted) to retry after.
    pub(super) async fn redrive_attempt(&self, arn: &str, m: &Message) -> Attempt {
        let result = self.b.executions.redrive(arn, &m.id).await;
        self.heartbeat_if_answered(result.as_ref().err());
        match result {
            Ok(RedriveOutcome::Redriven) => {
                let now = self.now();
                let mut st = self.state();
                // Running again under its name: counted as ours until a
                // reconcile or its event sees it closed.
                st.ledger.started(execution_name(arn), now);
                st.redriven.insert(execution_name(arn).to_string());
                st.estimator.record_starts(self.b.metrics.now_s(), 1);
                self.tally_in(&mut st, Counter::Redrives, 1);
                drop(st);
                info!(message_id = %m.id, execution_arn = %arn, "execution redriven");
                Attempt::Done(Fate::Delete)
            }
            Ok(RedriveOutcome::NotRedrivable(reason)) => self.refused(arn, m, reason).await,
            Err(e @ PortError::Permanent { .. }) => {
                Attempt::Done(self.refused_by_service("RedriveExecution", arn, m, &e))
            }
            Err(e) => Attempt::Retry(self.retryable(e)),
        }
    }

    /// RedriveExecution refused `arn`: done if it runs again already or
    /// succeeded since (DescribeExecution), else the DLQ.
    async fn refused(&self, arn: &str, m: &Message, reason: String) -> Attempt {
        let detail = self.b.executions.describe(arn).await;
        self.heartbeat_if_answered(detail.as_ref().err());
        let detail = match detail {
            Ok(d) => d,
            // The execution is gone: nothing to run again.
            Err(PortError::Permanent { code, .. }) if code == "ExecutionDoesNotExist" => {
                return Attempt::Done(self.not_redrivable(arn, m, reason));
            }
            Err(e) => {
                self.tally(Counter::DescribeErrors, 1);
                return Attempt::Retry(e);
            }
        };
        match after_refusal(detail.status) {
            AfterRefusal::AlreadyRunning | AfterRefusal::AlreadySucceeded => {
                info!(message_id = %m.id, execution_arn = %arn, status = ?detail.status,
                    "redrive request already served: the execution runs again or succeeded");
                self.tally(Counter::RedrivesAlreadyDone, 1);
                Attempt::Done(Fate::Delete)
            }
            AfterRefusal::NotRedrivable => {
                let reason = match detail.not_redrivable {
                    Some(why) => format!("{reason}; {why}"),
                    None => reason,
                };
                Attempt::Done(self.not_redrivable(arn, m, reason))
            }
        }
    }

    /// Dead-letter a redrive request whose execution cannot run again.
    fn not_redrivable(&self, arn: &str, m: &Message, reason: String) -> Fate {
        let why = DeadReason::NotRedrivable {
            execution_arn: arn.to_string(),
            reason,
        };
        warn!(message_id = %m.id, execution_arn = %arn, code = why.code(), reason = %why,
            "execution cannot be redriven; moving the redrive request to the dead-letter queue: use `fanout redrive --requeue` to send its original input as a new message");
        self.tally(Counter::RedrivesRefused, 1);
        Fate::DeadLetter(why)
    }

    /// A body marked as a redrive request that cannot be one.
    pub(super) fn unservable_request(&self, m: &Message, why: &RequestError) -> Fate {
        let arn = match why {
            RequestError::OtherStateMachine { arn, .. } => arn.clone(),
            RequestError::NoArn => String::new(),
        };
        self.not_redrivable(&arn, m, why.to_string())
    }
}
