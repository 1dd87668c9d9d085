//! The metrics loop (adaptive only): CloudWatch's published minutes into
//! the estimator and the ramp, and k̂ remembered with the state machine so
//! the next controller starts from it.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Controller, sleep_unless};
use crate::control::Policy;
use crate::control::estimator::SampleUse;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    pub(super) async fn metrics_loop(&self, shutdown: watch::Receiver<bool>) {
        if self.policy != Policy::Adaptive {
            return;
        }
        let first_minute = (self.b.metrics.now_s().max(0.0) as u64) / 60 * 60;
        if self.cfg().estimator.remember {
            self.recall_k().await;
        }
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            let every = Duration::from_secs(cfg.controller.metrics_poll_secs);
            let min_completions = cfg.estimator.min_completions;
            sleep_unless(every, &shutdown).await;
            let since = self
                .state()
                .estimator
                .last_sample_minute()
                .map_or(first_minute, |m| m + 60);
            match self.b.metrics.samples_since(since).await {
                Ok(samples) => {
                    let mut st = self.state();
                    let lifetime = (st.ledger.completions() >= min_completions)
                        .then(|| st.ledger.lifetime_quantile(0.9))
                        .flatten();
                    for s in samples {
                        let used = st.estimator.on_sample(&s, lifetime);
                        match used {
                            SampleUse::Throttled(level) => {
                                st.admission.throttled(level);
                                warn!(
                                    minute = s.minute_start_s,
                                    concurrency = level,
                                    throttles = s.throttles,
                                    ramp_per_s = st.admission.ramp_rate_now(),
                                    "Lambda throttled the pipeline; holding the ramp and slowing it"
                                );
                                self.tally_in(&mut st, Counter::LambdaThrottledMinutes, 1);
                            }
                            _ if s.throttles == Some(0.0) => st.admission.clean_minute(),
                            _ => {}
                        }
                        debug!(
                            minute = s.minute_start_s,
                            max = s.pipeline_max,
                            ?used,
                            k = st.estimator.k(),
                            "concurrency sample"
                        );
                    }
                }
                Err(e) => {
                    debug!(error = %e, "concurrency metric unavailable; holding the estimate");
                    self.tally(Counter::MetricErrors, 1);
                }
            }
            let worth = cfg
                .estimator
                .remember
                .then(|| self.state().estimator.to_remember());
            if let Some(Some(k)) = worth {
                match self.b.executions.remember_k(k).await {
                    Ok(()) => debug!(k, "lambdas per execution remembered with the state machine"),
                    Err(e) => {
                        warn!(error = %e, k, "cannot remember lambdas per execution with the state machine (states:TagResource); the next start begins at the maximum");
                        self.tally(Counter::RememberErrors, 1);
                    }
                }
            }
        }
    }

    /// Start from the estimate a previous run left with the state machine.
    async fn recall_k(&self) {
        match self.b.executions.remembered_k().await {
            Ok(Some(k)) => {
                if self.state().estimator.start_from(k) {
                    info!(
                        k,
                        "starting from the lambdas per execution remembered with the state machine"
                    );
                }
            }
            Ok(None) => info!(
                k = self.state().estimator.k(),
                "nothing remembered for this state machine definition"
            ),
            Err(e) => {
                warn!(error = %e, "cannot read the remembered lambdas per execution (states:ListTagsForResource); starting at the maximum");
                self.tally(Counter::RememberErrors, 1);
            }
        }
    }
}
