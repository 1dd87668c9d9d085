//! The progress loop: every 30 s, the work queues' depths (GetQueueAttributes)
//! and the ledger's lifetimes into `control::eta`; the expected finish per
//! queue goes to the metrics sink (`fanout_backlog_eta_seconds{queue}`,
//! `fanout_completions_per_second`) and, once a minute while a backlog
//! drains, to a JSON log line.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Controller, sleep_unless};
use crate::control::eta::{self, Inputs};
use crate::control::ledger::{Moments, Secs};
use crate::metrics::{Gauge, Progress, QueueProgress};
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

/// How often the depths are read and the ETA published.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How often a draining backlog is logged.
const LOG_EVERY: Secs = 60.0;

/// The completion rate is measured over this many progress steps (5 min).
const RATE_WINDOW: usize = 10;

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    pub(super) async fn progress_loop(&self, shutdown: watch::Receiver<bool>) {
        let mut completions: VecDeque<(Secs, u64)> = VecDeque::new();
        let mut logged_at = f64::NEG_INFINITY;
        loop {
            sleep_unless(PROGRESS_EVERY, &shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            let now = self.now();
            completions.push_back((now, self.state().ledger.completions()));
            if completions.len() > RATE_WINDOW + 1 {
                completions.pop_front();
            }
            let Some(backlogs) = self.backlogs().await else {
                continue;
            };
            let Some(p) = self.progress(&backlogs, measured_rate(&completions)) else {
                continue;
            };
            self.b.sink.gauge(Gauge::CompletionsPerSecond, p.rate_per_s);
            self.b.sink.progress(&p);
            if backlogs.iter().sum::<u64>() > 0 && now - logged_at >= LOG_EVERY {
                logged_at = now;
                log_progress(&p, self.b.metrics.now_s());
            }
        }
    }

    /// Messages left on each work queue, in priority order; `None` when a
    /// depth could not be read (logged).
    async fn backlogs(&self) -> Option<Vec<u64>> {
        let mut out = Vec::with_capacity(self.b.sources.len());
        for s in &self.b.sources {
            match s.queue.depth().await {
                Ok(d) => out.push(d.total()),
                Err(e) => {
                    warn!(queue = %s.name, error = %e, "queue depth unavailable: no ETA this time");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// The ETA of `backlogs` as of the last admission decision.
    fn progress(&self, backlogs: &[u64], measured: f64) -> Option<Progress> {
        let snap = *self.snapshot.borrow();
        let min_completions = self.cfg().estimator.min_completions;
        // The running count less the completions expected since the last
        // reconcile: the ledger's own count still holds those, and over a
        // pass it saw-tooths ~7 % above the truth (exchange-227k).
        let (lifetimes, histogram, running) = {
            let st = self.state();
            let running = st.ledger.in_flight_at(self.now(), min_completions);
            if st.ledger.lifetimes_known(min_completions) {
                let l = &st.ledger;
                (l.lifetime_moments(), l.lifetime_histogram().tail(), running)
            } else {
                (Moments::default(), None, running)
            }
        };
        let e = eta::estimate(
            eta::Params::default(),
            &Inputs {
                backlogs,
                target: snap.target,
                running,
                lifetimes,
                histogram: histogram.as_ref(),
                measured_rate: measured,
            },
        )?;
        let queues = self
            .b
            .sources
            .iter()
            .zip(backlogs)
            .zip(&e.finish_in_s)
            .map(|((s, &left), &eta_s)| QueueProgress {
                queue: s.name.clone(),
                left,
                eta_s,
            })
            .collect();
        Some(Progress {
            rate_per_s: e.rate_per_s,
            rate_source: e.source.name(),
            queues,
        })
    }
}

/// Completions per second over the window kept (0 before two points).
fn measured_rate(points: &VecDeque<(Secs, u64)>) -> f64 {
    match (points.front(), points.back()) {
        (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => (c1 - c0) as f64 / (t1 - t0),
        _ => 0.0,
    }
}

/// One line per queue: what is left, when it should be done (backend
/// time: Unix seconds on AWS), and the rate assumed.
fn log_progress(p: &Progress, backend_now: f64) {
    for q in &p.queues {
        info!(
            queue = %q.queue,
            left = q.left,
            eta_secs = q.eta_s.round() as u64,
            done_at_s = (backend_now + q.eta_s).round() as u64,
            rate_per_s = (p.rate_per_s * 100.0).round() / 100.0,
            rate = p.rate_source,
            "backlog progress"
        );
    }
}
