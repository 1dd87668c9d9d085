//! The reconcile loop: a full paged ListExecutions(RUNNING) every
//! `reconcile_interval_secs`, so the ledger learns of completions and of
//! executions it did not start.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Controller, lock, sleep_unless};
use crate::control::pacing::Backoff;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

/// A page that fails this many times abandons the pass.
const LIST_ATTEMPTS: u32 = 5;
/// Wait after a page's first failure; doubled after each next one.
const LIST_RETRY: Duration = Duration::from_secs(1);

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    pub(super) async fn reconcile_loop(&self, shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            let interval = Duration::from_secs(cfg.controller.reconcile_interval_secs);
            let grace = cfg.controller.list_grace_secs as f64;
            let listed_at = self.now();
            match self.list_all(&shutdown).await {
                Some(names) => {
                    let mut st = self.state();
                    let out = st.ledger.reconcile(&names, listed_at, grace);
                    self.tally_in(&mut st, Counter::Reconciles, 1);
                    if !st.ready {
                        info!(running = names.len(), "first reconcile done; ready");
                    }
                    st.ready = true;
                    debug!(
                        completed = out.completed,
                        foreign = out.foreign,
                        "reconciled"
                    );
                }
                None => self.tally(Counter::ReconcileFailures, 1),
            }
            sleep_unless(interval, &shutdown).await;
        }
    }

    /// Every RUNNING execution name, or None if a page kept failing.
    async fn list_all(&self, shutdown: &watch::Receiver<bool>) -> Option<HashSet<String>> {
        let mut names = HashSet::new();
        let mut token = None;
        let mut failures = 0;
        let mut backoff = Backoff::doubling(LIST_RETRY, LIST_RETRY * 8);
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let pacer = lock(&self.list_pacer).clone();
            pacer.acquire().await;
            match self.b.executions.list_running(token.clone()).await {
                Ok(page) => {
                    names.extend(page.names);
                    match page.next_token {
                        Some(t) => token = Some(t),
                        None => return Some(names),
                    }
                }
                Err(e) => {
                    failures += 1;
                    debug!(error = %e, "ListExecutions failed");
                    if failures >= LIST_ATTEMPTS || !e.is_retryable() {
                        warn!(error = %e, "reconcile abandoned; keeping the previous count");
                        return None;
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(LIST_RETRY)).await;
                }
            }
        }
    }
}
