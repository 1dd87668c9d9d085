//! Starting one message: name it, StartExecution through the start pacer,
//! retry throttles and transient errors with jittered backoff while
//! keeping the message hidden, and decide its fate: a refusal about the
//! message (its input, its name) dead-letters it, one about the service
//! pauses admission.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::settle::Fate;
use super::{Controller, lock, sleep_unless};
use crate::control::naming::short_hash;
use crate::control::pacing::Backoff;
use crate::control::redrive::parse_request;
use crate::control::refusal::{DeadReason, refused_message};
use crate::metrics::Counter;
use crate::ports::{
    ConcurrencyMetrics, Executions, Message, MetricsSink, PortError, StartOutcome, WorkQueue,
};

/// What one message asks for.
enum Job {
    /// StartExecution under this name.
    Start(String),
    /// RedriveExecution of this execution ARN.
    Redrive(String),
}

/// One attempt's result: the message's fate, or an error to retry after.
pub(super) enum Attempt {
    /// Settled.
    Done(Fate),
    /// Throttled or transient: retry with backoff.
    Retry(PortError),
}

/// How long admission stops after a permanent StartExecution error.
pub(super) const PERMANENT_PAUSE: Duration = Duration::from_secs(60);

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// Name and start one message, retrying throttles and transient errors
    /// while keeping the message hidden.
    pub(super) async fn start_one(
        &self,
        src: usize,
        m: &Message,
        shutdown: &watch::Receiver<bool>,
    ) -> Fate {
        let cfg = self.cfg();
        let job = match parse_request(&m.body, &cfg.aws.state_machine_arn) {
            Some(Ok(arn)) => Job::Redrive(arn),
            Some(Err(why)) => return self.unservable_request(m, &why),
            None => match self.namer.name(&m.id, &m.body) {
                Ok(n) => Job::Start(n),
                Err(why) => return Fate::DeadLetter(why.into()),
            },
        };
        let r = &cfg.retry;
        let vis = cfg.controller.visibility();
        let received = Instant::now();
        let mut hidden_until = received + vis;
        let mut backoff = Backoff::new(
            Duration::from_millis(r.initial_ms),
            Duration::from_millis(r.max_ms),
            r.multiplier,
            self.seed ^ u64::from_str_radix(&short_hash(&m.id), 16).unwrap_or(0),
        );
        loop {
            let pacer = lock(&self.start_pacer).clone();
            pacer.acquire().await;
            let attempt = match &job {
                Job::Start(name) => self.start_attempt(name, m).await,
                Job::Redrive(arn) => self.redrive_attempt(arn, m).await,
            };
            let failed = match attempt {
                Attempt::Done(fate) => return fate,
                Attempt::Retry(e) => e,
            };
            debug!(message_id = %m.id, error = %failed, "start failed, retrying");
            if *shutdown.borrow() || received.elapsed() > Duration::from_secs(r.give_up_secs) {
                return Fate::Release;
            }
            let delay = backoff.next().unwrap_or(vis / 4);
            // Keep the message hidden past the retry.
            if Instant::now() + delay + Duration::from_secs(5) > hidden_until
                && let Some(until) = self.extend_visibility(src, m, vis).await
            {
                hidden_until = until;
            }
            sleep_unless(delay, shutdown).await;
        }
    }

    /// One StartExecution of `m` under `name`: its fate, or the retryable
    /// error (counted) to retry after.
    async fn start_attempt(&self, name: &str, m: &Message) -> Attempt {
        let result = self.b.executions.start(name, &m.body).await;
        self.heartbeat_if_answered(result.as_ref().err());
        match result {
            Ok(outcome) => match self.answered(outcome, name, m).await {
                Ok(fate) => Attempt::Done(fate),
                Err(e) => Attempt::Retry(e),
            },
            Err(e @ PortError::Permanent { .. }) => {
                if let Some(why) = refused_message(&e, name) {
                    // This message's own fault: it goes, the rest flow.
                    warn!(message_id = %m.id, execution = %name, error = %e, code = why.code(),
                        "StartExecution refused this message; moving it to the dead-letter queue: fix it and send it again");
                    self.tally(Counter::RefusedMessages, 1);
                    return Attempt::Done(Fate::DeadLetter(why));
                }
                Attempt::Done(self.refused_by_service("StartExecution", name, m, &e))
            }
            Err(e) => Attempt::Retry(self.retryable(e)),
        }
    }

    /// A permanent error about the service (permissions, a wrong ARN),
    /// which every message would meet: never dead-letter the queue for
    /// it. The message goes back and admission pauses: otherwise every
    /// message would be received and handed back until the redrive policy
    /// dead-letters the whole backlog.
    pub(super) fn refused_by_service(
        &self,
        api: &str,
        execution: &str,
        m: &Message,
        e: &PortError,
    ) -> Fate {
        warn!(message_id = %m.id, execution = %execution, api, error = %e,
            "Step Functions refused the call; message handed back, check aws.state_machine_arn and the task role");
        self.tally(Counter::StartErrorsPermanent, 1);
        self.state().paused_until = self.now() + PERMANENT_PAUSE.as_secs_f64();
        Fate::Requeue(PERMANENT_PAUSE)
    }

    /// Count a throttle or transient error of a start or a redrive.
    pub(super) fn retryable(&self, e: PortError) -> PortError {
        if matches!(e, PortError::Throttled { .. }) {
            self.tally(Counter::StartThrottles, 1);
        } else {
            self.tally(Counter::StartErrorsTransient, 1);
        }
        e
    }

    /// The fate of `m` once StartExecution answered. `Err`: whether the
    /// execution that holds the name is this message's cannot be told yet
    /// (DescribeExecution failed); the start is retried, nothing deleted.
    async fn answered(
        &self,
        outcome: StartOutcome,
        name: &str,
        m: &Message,
    ) -> Result<Fate, PortError> {
        if outcome == StartOutcome::Started {
            let now = self.now();
            let mut st = self.state();
            st.ledger.started(name, now);
            st.estimator.record_starts(self.b.metrics.now_s(), 1);
            self.tally_in(&mut st, Counter::Starts, 1);
            return Ok(Fate::Delete);
        }
        // AlreadyExists: the name's execution closed, or runs other input.
        // Only the same input means this message was started.
        let same = self.b.executions.input_matches(name, &m.body).await;
        self.heartbeat_if_answered(same.as_ref().err());
        match same {
            // Not running, so not in the ledger, where it would inflate
            // the running count until the next reconcile and make k̂ read
            // narrow.
            Ok(true) => {
                self.tally(Counter::AlreadyExisted, 1);
                Ok(Fate::Delete)
            }
            Ok(false) => {
                warn!(message_id = %m.id, execution = %name,
                    "execution name already used by another message's execution; moving this message to the dead-letter queue as name_collision: change naming.template so the two get different names, then send it again");
                self.tally(Counter::NameCollisions, 1);
                Ok(Fate::DeadLetter(DeadReason::NameCollision(
                    name.to_string(),
                )))
            }
            Err(e) => {
                self.tally(Counter::DescribeErrors, 1);
                Err(e)
            }
        }
    }

    /// A call answered (`error` None, or an error the service sent): the
    /// retry loop is making progress, so /healthz must not call the task
    /// stalled while one admission step retries throttled starts for up to
    /// `give_up_secs` (admission decides again only after the step).
    pub(super) fn heartbeat_if_answered(&self, error: Option<&PortError>) {
        if error.is_none_or(PortError::is_answer) {
            self.heartbeat();
        }
    }

    /// Hide `m` for another `vis`; returns until when, if that worked.
    async fn extend_visibility(&self, src: usize, m: &Message, vis: Duration) -> Option<Instant> {
        let q = &self.b.sources[src].queue;
        match q
            .change_visibility_batch(std::slice::from_ref(&m.receipt), vis)
            .await
        {
            Ok(f) if f.is_empty() => return Some(Instant::now() + vis),
            Ok(f) => {
                warn!(message_id = %m.id, error = %f[0].error, "could not extend visibility");
            }
            Err(e) => {
                warn!(message_id = %m.id, error = %e, "could not extend visibility");
            }
        }
        None
    }
}
