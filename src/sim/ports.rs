//! The ports over the simulated world. Each call waits its latency on the
//! tokio clock, then advances the world to "now" and acts.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use futures::future::BoxFuture;

use crate::metrics::{Counter, Gauge, Progress};
use crate::ports::ClaimRecord as Record;
use crate::ports::{
    ClaimStore, ClosedPage, ConcurrencyMetrics, ConcurrencySample, EntryFailure, ExecutionDetail,
    ExecutionPage, ExecutionStatus, Executions, Message, MetricsSink, OutgoingMessage, PortError,
    QueueDepth, RedriveOutcome, StartOutcome, StoredClaims, WorkQueue,
};
use crate::sim::world::World;

/// The world shared by every port, with the instant virtual time 0 maps to.
#[derive(Clone)]
pub struct Shared {
    world: Arc<Mutex<World>>,
    epoch: Instant,
}

impl Shared {
    /// Share `world`; virtual time 0 is the tokio instant now.
    pub fn new(world: World) -> Shared {
        Shared {
            world: Arc::new(Mutex::new(world)),
            epoch: Instant::now(),
        }
    }

    /// Virtual seconds since the epoch.
    pub fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The world, advanced to now.
    pub fn at_now(&self) -> MutexGuard<'_, World> {
        let now = self.now_s();
        let mut w = self
            .world
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.advance(now);
        w
    }
}

/// The claim store of controllers sharing a ceiling: a record in memory
/// with DynamoDB's conditional write, each call waiting `latency`.
#[derive(Clone)]
pub struct SimClaims {
    record: Arc<Mutex<Option<StoredClaims>>>,
    latency: Duration,
}

impl SimClaims {
    /// An empty store whose calls take `latency`.
    pub fn new(latency: Duration) -> SimClaims {
        SimClaims {
            record: Arc::default(),
            latency,
        }
    }

    fn record(&self) -> MutexGuard<'_, Option<StoredClaims>> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClaimStore for SimClaims {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredClaims>, PortError>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            Ok(self.record().clone())
        })
    }

    fn save(
        &self,
        expected: Option<u64>,
        record: Record,
    ) -> BoxFuture<'_, Result<bool, PortError>> {
        Box::pin(async move {
            tokio::time::sleep(self.latency).await;
            let mut r = self.record();
            if r.as_ref().map(|s| s.version) != expected {
                return Ok(false);
            }
            *r = Some(StoredClaims {
                version: expected.map_or(1, |v| v + 1),
                record,
            });
            Ok(true)
        })
    }
}

/// The `WorkQueue` port over one of the world's queues.
pub struct SimQueue {
    /// The world.
    pub shared: Shared,
    /// The queue's index (`world::PRIORITY`, ...).
    pub queue: usize,
    /// Waited before each call.
    pub latency: Duration,
}

impl WorkQueue for SimQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, PortError> {
        tokio::time::sleep(self.latency).await;
        let deadline = Instant::now() + wait;
        loop {
            let got = self.shared.at_now().receive(
                self.queue,
                max.clamp(1, 10),
                visibility.as_secs_f64(),
            )?;
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            // Long poll: look again shortly, as SQS returns on arrival.
            let step = Duration::from_millis(200).min(deadline - Instant::now());
            tokio::time::sleep(step).await;
        }
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().delete_batch(self.queue, receipts)
    }

    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        visibility: Duration,
    ) -> Result<Vec<EntryFailure>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared
            .at_now()
            .change_visibility_batch(self.queue, receipts, visibility.as_secs_f64())
    }

    async fn send_batch(
        &self,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().send_batch(self.queue, entries)
    }

    async fn depth(&self) -> Result<QueueDepth, PortError> {
        tokio::time::sleep(self.latency).await;
        Ok(self.shared.at_now().queue_depth(self.queue))
    }
}

/// The controllers' metrics sink in the simulator: drops gauges and
/// counters, keeps each expected finish of the whole backlog (the last
/// queue's, at virtual time) for the report's `eta_error`.
#[derive(Clone)]
pub struct SimSink {
    /// The world.
    pub shared: Shared,
}

impl MetricsSink for SimSink {
    fn gauge(&self, _: Gauge, _: f64) {}
    fn count(&self, _: Counter, _: u64) {}
    fn progress(&self, p: &Progress) {
        if let Some(last) = p.queues.last() {
            let now = self.shared.now_s();
            let mut w = self.shared.at_now();
            w.stats.eta.push((now, now + last.eta_s));
        }
    }
}

/// The `Executions` port over the world's state machine.
pub struct SimExecutions {
    /// The world.
    pub shared: Shared,
    /// Waited before each call (twice for the two-call tag operations).
    pub latency: Duration,
}

impl Executions for SimExecutions {
    async fn start(&self, name: &str, input: &str) -> Result<StartOutcome, PortError> {
        tokio::time::sleep(self.latency).await;
        let same = self.shared.at_now().start_execution(name, input)?;
        Ok(if same {
            StartOutcome::Started
        } else {
            StartOutcome::AlreadyExists
        })
    }

    async fn input_matches(&self, name: &str, input: &str) -> Result<bool, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().execution_input_matches(name, input)
    }

    async fn list_running(&self, next_token: Option<String>) -> Result<ExecutionPage, PortError> {
        tokio::time::sleep(self.latency).await;
        let (names, next_token) = self.shared.at_now().list_running(next_token)?;
        Ok(ExecutionPage { names, next_token })
    }

    async fn redrive(&self, execution_arn: &str, token: &str) -> Result<RedriveOutcome, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().redrive_execution(execution_arn, token)
    }

    async fn describe(&self, execution_arn: &str) -> Result<ExecutionDetail, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().describe_execution(execution_arn)
    }

    async fn list_closed(
        &self,
        status: ExecutionStatus,
        next_token: Option<String>,
    ) -> Result<ClosedPage, PortError> {
        tokio::time::sleep(self.latency).await;
        let (executions, next_token) = self.shared.at_now().list_closed(status, next_token)?;
        Ok(ClosedPage {
            executions,
            next_token,
        })
    }

    async fn definition(&self) -> Result<Option<String>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().definition().map(Some)
    }

    async fn remembered_k(&self) -> Result<Option<f64>, PortError> {
        tokio::time::sleep(self.latency * 2).await;
        self.shared.at_now().remembered_k()
    }

    async fn remember_k(&self, k: f64) -> Result<(), PortError> {
        tokio::time::sleep(self.latency * 2).await;
        self.shared.at_now().remember_k(k)
    }
}

/// The `ConcurrencyMetrics` port over the world's CloudWatch (and
/// Lambda's GetFunctionConcurrency for the functions' limits).
pub struct SimMetrics {
    /// The world.
    pub shared: Shared,
    /// Waited before each call.
    pub latency: Duration,
}

impl ConcurrencyMetrics for SimMetrics {
    fn now_s(&self) -> f64 {
        self.shared.now_s()
    }

    async fn samples_since(&self, since_s: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().concurrency_samples(since_s)
    }

    async fn function_limits(&self) -> Result<Vec<(String, Option<u32>)>, PortError> {
        tokio::time::sleep(self.latency).await;
        self.shared.at_now().function_limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::Scenario;

    #[test]
    fn function_limits_are_the_reservations_one_call_per_function() {
        let text = "name = 't'\nceiling = 100\n[workload]\n\
                    [[workflow]]\ntask = 'a'\nmedian_secs = 1.0\n\
                    [[workflow]]\ntask = 'b'\nmedian_secs = 1.0\n\
                    [lambda]\nreserved = { b = 40 }\n";
        let sc = Scenario::parse(text, "t").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Shared::new(World::new(&sc, 1));
            let metrics = SimMetrics {
                shared: shared.clone(),
                latency: Duration::from_millis(40),
            };
            let limits = metrics.function_limits().await.unwrap();
            assert_eq!(
                limits,
                [("a".to_string(), None), ("b".to_string(), Some(40))]
            );
            assert!(shared.now_s() >= 0.04, "after the call's latency");
            let w = shared.at_now();
            assert_eq!(
                w.stats.api_calls.get("lambda.GetFunctionConcurrency"),
                Some(&2)
            );
        });
    }
}
