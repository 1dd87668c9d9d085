//! The seed policy (the old fanout function): receive first, check room
//! per message, put back with a delay when there is none (raising its
//! receive count). Kept to compare against.

use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::settle::Fate;
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
    /// One event source mapping per queue, each with `per_queue` pollers.
    pub(super) async fn seed_pollers(&self, per_queue: usize, shutdown: &watch::Receiver<bool>) {
        let pollers = (0..self.b.sources.len())
            .flat_map(|src| std::iter::repeat_n(src, per_queue))
            .map(|src| self.seed_poller(src, shutdown.clone()));
        futures::future::join_all(pollers).await;
    }

    async fn seed_poller(&self, src: usize, shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            let vis = cfg.controller.visibility();
            let delay = Duration::from_secs(cfg.seed.requeue_delay_secs);
            let wait = Duration::from_secs(cfg.controller.idle_wait_secs);
            let msgs = match self.b.sources[src].queue.receive(BATCH, vis, wait).await {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "receive failed");
                    sleep_unless(cfg.controller.tick(), &shutdown).await;
                    continue;
                }
            };
            if msgs.is_empty() {
                continue;
            }
            self.state().in_hand += msgs.len();
            let mut fates = Vec::with_capacity(msgs.len());
            for m in msgs {
                let fate = if *shutdown.borrow() {
                    Fate::Release
                } else if self.state().ready && !self.paused() && self.decide() > 0 {
                    self.start_one(src, &m, &shutdown).await
                } else {
                    Fate::Requeue(delay)
                };
                fates.push((src, m, fate));
            }
            self.settle(fates).await;
        }
    }
}
