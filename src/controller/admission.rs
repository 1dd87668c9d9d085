//! The admission loop (adaptive, fixed): decide a budget, receive what it
//! admits along the receive plan, start it, settle it.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tracing::warn;

use super::settle::Fate;
use super::{Controller, State, sleep_unless};
use crate::control::budget::{Decision, Inputs};
use crate::control::linger::Flush;
use crate::control::receive::{self, Ask, Mode, Plan, Step};
use crate::control::redrive::width_debt;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, Executions, Message, MetricsSink, PortError, WorkQueue};

/// Messages received in one step, each with its source's index.
type Received = Vec<(usize, Message)>;

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// One admission decision's budget; also feeds the estimator's history.
    pub(super) fn decide(&self) -> usize {
        self.decide_with_target().budget
    }

    fn decide_with_target(&self) -> Decision {
        let now = self.now();
        let backend_now = self.b.metrics.now_s();
        let cfg = self.cfg();
        let min_completions = cfg.estimator.min_completions;
        let mut st = self.state();
        // Redriven executions count at their widest while they run.
        let State {
            ledger, redriven, ..
        } = &mut *st;
        redriven.retain(|n| ledger.contains(n));
        let debt = width_debt(redriven.len(), st.estimator.k(), st.estimator.k_max());
        let running = st.ledger.in_flight_at(now, min_completions);
        let room = st.estimator.function_allowance(
            backend_now,
            cfg.controller.headroom_fraction,
            running as f64,
        );
        st.admission.set_function_room(room);
        if backend_now - st.last_observed_s >= 1.0 {
            st.last_observed_s = backend_now;
            st.estimator.observe_running(backend_now, running);
        }
        // Once, for both: it sums the kept lifetimes.
        let mean_lifetime = st.ledger.mean_lifetime();
        let inputs = Inputs {
            now,
            running: running + debt,
            in_hand: st.in_hand,
            k: st.estimator.k(),
            other_load: st.estimator.other_load(),
            lifetime: mean_lifetime.filter(|_| st.ledger.lifetimes_known(min_completions)),
            first_lifetime: mean_lifetime,
            ours: running.saturating_sub(st.ledger.foreign()),
            foreign: st.ledger.foreign(),
            shared: st.ledger.other_starter_active(),
            share: self.share(&st, backend_now),
        };
        let d = st.admission.decide(inputs);
        self.publish(&st, &d);
        d
    }

    pub(super) async fn admission_loop(&self, shutdown: watch::Receiver<bool>) {
        let mut mode = Mode::Short;
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            let c = &cfg.controller;
            let tick = c.tick();
            self.flush_deletes(Flush::Due).await;
            // Until the first reconcile, executions already running (a
            // previous life, another replica) are unknown: admit nothing.
            if !self.state().ready || self.paused() {
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            let d = self.decide_with_target();
            let step = Step::new(
                &d,
                self.b.sources.len(),
                c.start_rate_per_s,
                c.priority_reserve_fraction,
            );
            if step.budget == 0 {
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            if step.lower == 0 {
                // Only the reserve is free: a quick look at the priority
                // queue, then wait for capacity.
                let (got, _) = self.receive(&step, Mode::Short).await;
                if got.is_empty() {
                    sleep_unless(tick, &shutdown).await;
                } else {
                    self.process(got, &shutdown).await;
                }
                continue;
            }
            let (got, asked_all) = self.receive(&step, mode).await;
            if got.is_empty() && !asked_all {
                // Waiting for a whole batch of budget, or for the next probe.
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            if got.is_empty() {
                match mode {
                    Mode::Short => mode = Mode::LongPoll,
                    Mode::LongPoll => sleep_unless(tick, &shutdown).await,
                }
                continue;
            }
            mode = Mode::Short;
            self.process(got, &shutdown).await;
        }
    }

    /// Receive what `step` admits, in `mode`. Returns the messages and
    /// whether every queue in reach was asked (only then does an empty
    /// result mean idle).
    async fn receive(&self, step: &Step, mode: Mode) -> (Received, bool) {
        let cfg = self.cfg();
        let vis = cfg.controller.visibility();
        let mut out = Vec::new();
        if mode == Mode::LongPoll {
            let wait = Duration::from_secs(cfg.controller.idle_wait_secs);
            let shares = receive::long_poll(step, self.b.sources.len());
            let polls = shares
                .iter()
                .map(|&(i, max)| self.b.sources[i].queue.receive(max, vis, wait));
            let results = futures::future::join_all(polls).await;
            for (&(i, _), r) in shares.iter().zip(results) {
                self.take(i, r, &mut out);
            }
            return (out, true);
        }
        let mut plan = Plan::new(step, cfg.controller.max_receives_in_flight);
        for (i, src) in self.b.sources.iter().enumerate() {
            let now = self.now();
            let sizes = match plan.ask(&mut self.state().sources[i].receive, now) {
                Ask::Stop => break,
                Ask::Skip => continue,
                Ask::Receive(sizes) => sizes,
            };
            let asked: usize = sizes.iter().sum();
            let results = futures::future::join_all(
                sizes
                    .iter()
                    .map(|&n| src.queue.receive(n, vis, Duration::ZERO)),
            )
            .await;
            let before = out.len();
            for r in results {
                self.take(i, r, &mut out);
            }
            let got = out.len() - before;
            if !plan.received(&mut self.state().sources[i].receive, asked, got) {
                break;
            }
        }
        (out, plan.asked_all())
    }

    /// Count what one receive call brought into hand.
    fn take(&self, src: usize, r: Result<Vec<Message>, PortError>, out: &mut Received) {
        match r {
            Ok(msgs) => {
                self.state().in_hand += msgs.len();
                out.extend(msgs.into_iter().map(|m| (src, m)));
            }
            Err(e) => {
                warn!(queue = %self.b.sources[src].name, error = %e, "receive failed");
                self.tally(Counter::ReceiveErrors, 1);
            }
        }
    }

    /// Start every message in hand, then settle each one's fate.
    async fn process(&self, msgs: Received, shutdown: &watch::Receiver<bool>) {
        let n = self.cfg().controller.max_starts_in_flight;
        let fates: Vec<(usize, Message, Fate)> = futures::stream::iter(msgs)
            .map(|(src, m)| async move {
                let fate = self.start_one(src, &m, shutdown).await;
                (src, m, fate)
            })
            .buffer_unordered(n)
            .collect()
            .await;
        self.settle(fates).await;
    }
}
