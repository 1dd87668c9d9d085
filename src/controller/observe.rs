//! The metrics loop (adaptive only): CloudWatch's published minutes into
//! the estimator, the ramp and the target's throttle brake; the pipeline
//! functions' limits into admission; and k̂ remembered with the state
//! machine so the next controller starts from it.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::{Controller, State, sleep_unless};
use crate::config::Config;
use crate::control::Policy;
use crate::control::estimator::Reading;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, ConcurrencySample, Executions, MetricsSink, WorkQueue};

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
        let mut limits_due = f64::NEG_INFINITY;
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            if self.now() >= limits_due {
                // `run` read the definition before the first admission.
                if limits_due > f64::NEG_INFINITY {
                    self.read_definition().await;
                }
                self.read_function_limits(&cfg).await;
                limits_due = self.now() + cfg.controller.function_limits_poll_secs as f64;
            }
            let every = Duration::from_secs(cfg.controller.metrics_poll_secs);
            sleep_unless(every, &shutdown).await;
            // The last minutes used are read again: CloudWatch revises them.
            let since = self.state().estimator.since(first_minute);
            match self.b.metrics.samples_since(since).await {
                Ok(samples) => self.use_samples(&samples, &cfg),
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

    /// Feed the settled minutes of one read to the estimator, in order.
    fn use_samples(&self, samples: &[ConcurrencySample], cfg: &Config) {
        let now_s = self.b.metrics.now_s();
        let mut st = self.state();
        let known = st.ledger.lifetimes_known(cfg.estimator.min_completions);
        let lifetime = known.then(|| st.ledger.lifetime_quantile(0.9)).flatten();
        let horizon = known.then(|| st.ledger.lifetime_quantile(0.99)).flatten();
        st.estimator.set_horizon(horizon, now_s);
        for s in samples {
            // A minute still open or not yet settled is read again later.
            if !st.estimator.settled(s.minute_start_s, now_s) {
                if let Some(k) = st.estimator.peek(s, now_s) {
                    debug!(minute = s.minute_start_s, k, "an unsettled minute raised k");
                }
                continue;
            }
            let r = st.estimator.on_sample(s, lifetime);
            self.apply_reading(&mut st, s, &r, now_s);
        }
        Self::bound_functions(&mut st, cfg);
    }

    /// What one minute changes beyond k̂: the throttle brake, the ramp's
    /// recovery, the reports.
    fn apply_reading(&self, st: &mut State, s: &ConcurrencySample, r: &Reading, now_s: f64) {
        if let (Some(level), true) = (r.throttled, r.scaling) {
            let predicted = r.running.map_or(level, |n| n * st.estimator.k());
            st.admission.scaling_throttled(predicted);
            warn!(
                minute = s.minute_start_s,
                concurrency = level,
                throttles = s.throttles,
                ramp_per_s = st.admission.ramp_rate_now(),
                "Lambda throttled pipeline functions growing at its scaling rate (1,000 environments per 10 s each); halving the ramp, the target stands: lower controller.ramp_concurrency_per_s if this repeats"
            );
            self.tally_in(st, Counter::LambdaThrottledMinutes, 1);
        } else if let Some(level) = r.throttled {
            let cut = st
                .admission
                .throttled(level, s.minute_start_s as f64, now_s);
            warn!(
                minute = s.minute_start_s,
                concurrency = level,
                throttles = s.throttles,
                ramp_per_s = st.admission.ramp_rate_now(),
                target_concurrency = st.admission.throttle_cap(),
                cut,
                "Lambda throttled the pipeline; holding the ramp and the target below the level it allowed"
            );
            self.tally_in(st, Counter::LambdaThrottledMinutes, 1);
        } else if r.clean {
            st.admission.clean_minute();
        }
        if let Some(measured) = r.over_max {
            error!(
                option = "controller.max_lambdas_per_execution",
                configured = st.estimator.k_max(),
                measured,
                k = st.estimator.k(),
                "executions are wider than controller.max_lambdas_per_execution: CloudWatch measured {measured:.2} Lambdas per running execution against the configured {}; admission now follows the measured width, but every cold start overshoots until the option is raised to the state machine's widest step (at least {:.0})",
                st.estimator.k_max(),
                measured.ceil()
            );
        }
        for (function, limit) in &r.limits_learned {
            warn!(
                function,
                limit,
                "Lambda throttled a pipeline function while the account was below its limit: holding the function under the level it allowed (raised 2 % a clean minute); set its reserved concurrency or lower the ceiling"
            );
        }
        debug!(
            minute = s.minute_start_s,
            max = s.pipeline_max,
            running = ?r.running,
            used = ?r.width,
            reread = r.reread,
            functions = ?s.functions.iter().map(|f| (f.name.as_str(), f.max, f.throttles)).collect::<Vec<_>>(),
            k = st.estimator.k(),
            "concurrency sample"
        );
    }

    /// Read each pipeline function's concurrency limit; log what was read
    /// when it changes.
    async fn read_function_limits(&self, cfg: &Config) {
        match self.b.metrics.function_limits().await {
            Ok(limits) => {
                let mut st = self.state();
                if st.estimator.set_function_limits(&limits) {
                    let read: Vec<String> = limits
                        .iter()
                        .map(|(n, l)| match l {
                            Some(l) => format!("{n}={l}"),
                            None => format!("{n}=unreserved"),
                        })
                        .collect();
                    info!(limits = %read.join(", "), "pipeline functions' concurrency limits read");
                }
                Self::bound_functions(&mut st, cfg);
            }
            Err(e) => {
                warn!(error = %e, "cannot read the pipeline functions' concurrency limits (lambda:GetFunctionConcurrency); keeping the last ones");
                self.tally(Counter::MetricErrors, 1);
            }
        }
    }

    /// Keep admission under every function's limit, and warn once about a
    /// function whose limit is below its share of the ceiling.
    fn bound_functions(st: &mut State, cfg: &Config) {
        let c = &cfg.controller;
        let bound = st.estimator.function_bound(c.headroom_fraction);
        if let Some(b) = &bound {
            debug!(
                function = b.name,
                limit = b.limit,
                width = b.width,
                running = b.running,
                widest = b.widest,
                "function bound"
            );
        }
        st.admission
            .set_function_cap(bound.as_ref().map(|b| b.running), bound.map(|b| b.widest));
        let k = st.estimator.k();
        for (function, width, limit) in st.estimator.function_widths() {
            let Some(limit) = limit else { continue };
            let share = f64::from(c.ceiling) * width.min(k) / k;
            if limit < share && st.warned_functions.insert(function.clone()) {
                warn!(
                    function,
                    limit,
                    share,
                    width,
                    "a pipeline function's concurrency limit is below its share of the ceiling: admission keeps it under its limit, so the pipeline runs below the ceiling; raise the function's reserved concurrency or lower the ceiling"
                );
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
