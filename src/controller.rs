//! The controller: wires the ports to the decision logic. One task runs
//! four loops side by side: admission (receive what the budget admits,
//! start, delete), reconcile (ListExecutions), metrics (CloudWatch into the
//! estimator) and, when configured, completion events.
//!
//! Invariants kept here: a message is deleted only after its start is
//! confirmed; capacity waits happen before receiving (adaptive, fixed), so
//! they never raise a receive count; input that can never start is moved
//! to the queue's DLQ with its reason.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{Config, Policy};
use crate::control::budget::{Admission, Decision, Inputs, Limit};
use crate::control::estimator::{Estimator, SampleUse};
use crate::control::ledger::{Ledger, Secs};
use crate::control::naming::{Namer, TemplateError, Unstartable};
use crate::control::pacing::{Backoff, Pacer};
use crate::metrics::{Counter, Gauge};
use crate::ports::{
    ConcurrencyMetrics, Executions, Message, MetricsSink, OutgoingMessage, PortError, StartOutcome,
    WorkQueue,
};
use crate::reload::{Change, ReloadError};

/// Attribute carrying the reason a message was dead-lettered.
pub const REASON_ATTRIBUTE: &str = "fanout-reason";
/// Attribute carrying the reason's short code (`not_json`, `too_large`,
/// `missing_field`).
pub const REASON_CODE_ATTRIBUTE: &str = "fanout-reason-code";
/// Attribute carrying the original MessageId of a dead-lettered message.
pub const SOURCE_ID_ATTRIBUTE: &str = "fanout-source-message-id";

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("naming.template: {0}")]
    Template(#[from] TemplateError),
    #[error("no work queue configured: add a [[queues]] entry")]
    NoQueues,
}

/// A work queue with its dead-letter queue, in priority order.
pub struct Source<Q> {
    pub name: String,
    pub queue: Q,
    pub dlq: Q,
}

/// Everything the controller talks to.
pub struct Backends<Q, E, M, S> {
    pub sources: Vec<Source<Q>>,
    pub completions: Option<Q>,
    pub executions: E,
    pub metrics: M,
    pub sink: S,
}

/// Counts over one controller life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub started: u64,
    pub already_existed: u64,
    pub deleted: u64,
    pub dead_lettered: u64,
    pub released: u64,
    pub requeued: u64,
    pub start_throttles: u64,
    pub reconciles: u64,
}

impl RunSummary {
    /// Add `n` to the field that keeps `c`; the summary keeps only the
    /// counters a run is judged by.
    fn add(&mut self, c: Counter, n: u64) {
        let field = match c {
            Counter::Starts => &mut self.started,
            Counter::AlreadyExisted => &mut self.already_existed,
            Counter::Deletes => &mut self.deleted,
            Counter::DeadLettered => &mut self.dead_lettered,
            Counter::Released => &mut self.released,
            Counter::Requeued => &mut self.requeued,
            Counter::StartThrottles => &mut self.start_throttles,
            Counter::Reconciles => &mut self.reconciles,
            _ => return,
        };
        *field += n;
    }
}

/// A view of the controller's state, published after every decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    pub running: usize,
    pub in_hand: usize,
    pub budget: usize,
    pub target: usize,
    pub k: f64,
    pub ready: bool,
    pub summary: RunSummary,
}

struct State {
    ledger: Ledger,
    estimator: Estimator,
    admission: Admission,
    in_hand: usize,
    ready: bool,
    summary: RunSummary,
    last_observed_s: f64,
    paused_until: Secs,
    /// Per source: did its last receive come back short?
    drained: Vec<bool>,
    /// Per source: when it was last probed while drained.
    last_probe: Vec<Secs>,
    /// Per source: receipts of started messages waiting to be deleted in
    /// whole batches, and when the oldest arrived.
    pending_deletes: Vec<(Vec<String>, Secs)>,
}

/// What happened to one message in hand.
enum Fate {
    Delete,
    DeadLetter(Unstartable),
    /// Hand back now (shutdown, repeated failure).
    Release,
    /// Hand back with a delay (the seed's re-queue, a systemic error).
    Requeue(Duration),
}

pub struct Controller<Q, E, M, S> {
    /// The config in force: replaced whole by `reload`, read at each step.
    cfg: watch::Sender<Arc<Config>>,
    policy: Policy,
    b: Backends<Q, E, M, S>,
    namer: Namer,
    state: Mutex<State>,
    /// Rebuilt by `reload` when their rate changes.
    start_pacer: Mutex<Arc<Pacer>>,
    list_pacer: Mutex<Arc<Pacer>>,
    t0: Instant,
    snapshot: watch::Sender<Snapshot>,
    seed: u64,
}

const BATCH: usize = 10;
/// A queue that came back short is looked at again after this long.
const PROBE_EVERY: Secs = 1.0;
/// A partial batch of deletes waits at most this long for company.
const DELETE_LINGER: Secs = 1.0;
/// How long admission stops after a permanent StartExecution error.
const PERMANENT_PAUSE: Duration = Duration::from_secs(60);

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// `seed` makes backoff jitter reproducible.
    pub fn new(
        cfg: Config,
        policy: Policy,
        b: Backends<Q, E, M, S>,
        seed: u64,
    ) -> Result<Self, ControllerError> {
        if b.sources.is_empty() {
            return Err(ControllerError::NoQueues);
        }
        let namer = Namer::new(&cfg.naming.template)?;
        let c = &cfg.controller;
        let state = State {
            ledger: Ledger::new(),
            estimator: Estimator::new(cfg.estimator.clone(), c.max_lambdas_per_execution),
            admission: Admission::new(&cfg, policy),
            in_hand: 0,
            ready: false,
            summary: RunSummary::default(),
            last_observed_s: f64::NEG_INFINITY,
            paused_until: f64::NEG_INFINITY,
            drained: vec![false; b.sources.len()],
            last_probe: vec![f64::NEG_INFINITY; b.sources.len()],
            pending_deletes: vec![(Vec::new(), 0.0); b.sources.len()],
        };
        Ok(Controller {
            start_pacer: Mutex::new(Arc::new(Pacer::new(c.start_rate_per_s, c.start_burst))),
            list_pacer: Mutex::new(Arc::new(Pacer::new(c.list_pages_per_s, c.list_pages_per_s))),
            policy,
            namer,
            state: Mutex::new(state),
            t0: Instant::now(),
            snapshot: watch::channel(Snapshot::default()).0,
            b,
            cfg: watch::channel(Arc::new(cfg)).0,
            seed,
        })
    }

    /// The config in force now.
    fn cfg(&self) -> Arc<Config> {
        self.cfg.borrow().clone()
    }

    /// Watch the config in force (it changes on a successful `reload`).
    pub fn config(&self) -> watch::Receiver<Arc<Config>> {
        self.cfg.subscribe()
    }

    /// Apply a new config to the running controller, or refuse it whole
    /// (`reload::plan`: invalid, or a field that needs a restart); `origin`
    /// names it in errors. No loop restarts and messages in hand are
    /// untouched: each loop reads the config at its next step, the budget
    /// and the estimator take the new values at once, and a pacer whose
    /// rate changed is rebuilt (with a full bucket). Returns the changes.
    /// One caller at a time (`fanout run`'s reload task): two reloads at
    /// once could each be planned against the same old config.
    pub fn reload(&self, new: Config, origin: &str) -> Result<Vec<Change>, ReloadError> {
        let current = self.cfg();
        let changes = crate::reload::plan(&current, &new, origin)?;
        if changes.is_empty() {
            return Ok(changes);
        }
        let (c, n) = (&current.controller, &new.controller);
        if (c.start_rate_per_s, c.start_burst) != (n.start_rate_per_s, n.start_burst) {
            *lock(&self.start_pacer) = Arc::new(Pacer::new(n.start_rate_per_s, n.start_burst));
        }
        if c.list_pages_per_s != n.list_pages_per_s {
            *lock(&self.list_pacer) = Arc::new(Pacer::new(n.list_pages_per_s, n.list_pages_per_s));
        }
        {
            let mut st = self.state();
            st.admission.reconfigure(&new);
            st.estimator.set_config(new.estimator.clone());
        }
        self.cfg.send_replace(Arc::new(new));
        Ok(changes)
    }

    /// Watch the controller's state (for /metrics, status, progress).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    fn now(&self) -> Secs {
        self.t0.elapsed().as_secs_f64()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a fact once: in this life's summary and in the metrics sink.
    fn tally(&self, c: Counter, n: u64) {
        let mut st = self.state();
        self.tally_in(&mut st, c, n);
    }

    /// `tally` with the state already locked.
    fn tally_in(&self, st: &mut State, c: Counter, n: u64) {
        st.summary.add(c, n);
        self.b.sink.count(c, n);
    }

    /// Run until `shutdown` turns true, then hand back what is in hand.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) -> RunSummary {
        let cfg = self.cfg();
        info!(policy = %self.policy, ceiling = cfg.controller.ceiling, "controller starting");
        let admission = async {
            match self.policy {
                Policy::Seed => {
                    // One event source mapping per queue, each with its pollers.
                    let pollers = (0..self.b.sources.len())
                        .flat_map(|src| std::iter::repeat_n(src, cfg.seed.pollers))
                        .map(|src| self.seed_poller(src, shutdown.clone()));
                    futures::future::join_all(pollers).await;
                }
                _ => self.admission_loop(shutdown.clone()).await,
            }
        };
        let reconcile = self.reconcile_loop(shutdown.clone());
        let metrics = self.metrics_loop(shutdown.clone());
        let completions = self.completion_loop(shutdown.clone());
        let flusher = async {
            while !*shutdown.borrow() {
                sleep_unless(Duration::from_secs_f64(DELETE_LINGER), &shutdown).await;
                self.flush_deletes(false).await;
            }
        };
        tokio::join!(admission, reconcile, metrics, completions, flusher);
        self.flush_deletes(true).await;
        let summary = self.state().summary;
        info!(?summary, "controller stopped");
        summary
    }

    fn publish(&self, st: &State, budget: usize, target: usize) {
        let snap = Snapshot {
            running: st.ledger.in_flight(),
            in_hand: st.in_hand,
            budget,
            target,
            k: st.estimator.k(),
            ready: st.ready,
            summary: st.summary,
        };
        self.snapshot.send_replace(snap);
        let s = &self.b.sink;
        s.gauge(Gauge::RunningExecutions, snap.running as f64);
        s.gauge(Gauge::Budget, budget as f64);
        s.gauge(Gauge::TargetRunning, target as f64);
        s.gauge(Gauge::LambdasPerExecution, snap.k);
        s.gauge(Gauge::InHand, snap.in_hand as f64);
    }

    fn paused(&self) -> bool {
        self.state().paused_until > self.now()
    }

    /// One admission decision; also feeds the estimator's history.
    fn decide(&self) -> usize {
        self.decide_with_target().budget
    }

    fn decide_with_target(&self) -> Decision {
        let now = self.now();
        let backend_now = self.b.metrics.now_s();
        let min_completions = self.cfg().estimator.min_completions;
        let mut st = self.state();
        let running = st.ledger.in_flight_at(now, min_completions);
        if backend_now - st.last_observed_s >= 1.0 {
            st.last_observed_s = backend_now;
            st.estimator.observe_running(backend_now, running);
        }
        let inputs = Inputs {
            now,
            running,
            in_hand: st.in_hand,
            k: st.estimator.k(),
            other_load: st.estimator.other_load(),
            lifetime: (st.ledger.completions() >= min_completions)
                .then(|| st.ledger.mean_lifetime())
                .flatten(),
            ours: running.saturating_sub(st.ledger.foreign()),
            foreign: st.ledger.foreign(),
            shared: st.ledger.other_starter_active(),
        };
        let d = st.admission.decide(inputs);
        self.publish(&st, d.budget, d.target);
        d
    }

    async fn admission_loop(&self, shutdown: watch::Receiver<bool>) {
        let mut idle = false;
        while !*shutdown.borrow() {
            let cfg = self.cfg();
            let c = &cfg.controller;
            let tick = c.tick();
            // One step starts about half a second's worth, so priority
            // messages are looked at again soon.
            let step_cap = ((c.start_rate_per_s as usize) / 2).max(BATCH);
            self.flush_deletes(false).await;
            // Until the first reconcile, executions already running (a
            // previous life, another replica) are unknown: admit nothing.
            if !self.state().ready || self.paused() {
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            let d = self.decide_with_target();
            let (full, target) = (d.budget, d.target);
            // Lower-priority queues leave a few slots free, so a priority
            // message finds room within a tick even at the ceiling. Only
            // at the ceiling: under the ramp the budget can be smaller
            // than the reserve, and bulk work would never start.
            let reserve = if self.b.sources.len() > 1 && d.limit == Limit::Ceiling {
                (target as f64 * c.priority_reserve_fraction).ceil() as usize
            } else {
                0
            };
            let budget = full.min(step_cap);
            let lower = full.saturating_sub(reserve).min(step_cap);
            if budget == 0 {
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            // Small pipelines cannot wait for whole batches.
            let whole = target >= 10 * BATCH;
            if lower == 0 {
                // Only the reserve is free: a quick look at the priority
                // queue, then wait for capacity.
                let (got, _) = self.receive_up_to(budget, 0, false, whole).await;
                if got.is_empty() {
                    sleep_unless(tick, &shutdown).await;
                } else {
                    self.process(got, &shutdown).await;
                }
                continue;
            }
            let (got, asked_all) = self.receive_up_to(budget, lower, idle, whole).await;
            if got.is_empty() && !asked_all {
                // Waiting for a whole batch of budget, or for the next probe.
                sleep_unless(tick, &shutdown).await;
                continue;
            }
            if got.is_empty() {
                if !idle {
                    idle = true;
                } else {
                    sleep_unless(tick, &shutdown).await;
                }
                continue;
            }
            idle = false;
            self.process(got, &shutdown).await;
        }
    }

    /// Receive at most `budget` messages, higher-priority queues first;
    /// the queues after the first take at most `lower` in all.
    ///
    /// With `whole_batches`, a queue with messages is asked only for whole
    /// batches of ten (the rest waits for the next step), and a queue that
    /// came back short is probed at most once per `PROBE_EVERY`: receives
    /// are paid per call. Returns the messages and whether every queue in
    /// reach was asked (only then does an empty result mean idle).
    async fn receive_up_to(
        &self,
        budget: usize,
        lower: usize,
        idle: bool,
        whole_batches: bool,
    ) -> (Vec<(usize, Message)>, bool) {
        let cfg = self.cfg();
        let vis = cfg.controller.visibility();
        let mut out = Vec::new();
        if idle {
            // Nothing seen last time: long-poll every queue at once, each
            // for an equal share of the budget.
            let share = (budget / self.b.sources.len()).clamp(1, BATCH);
            let wait = Duration::from_secs(cfg.controller.idle_wait_secs);
            let lower_share = (lower / self.b.sources.len()).min(BATCH);
            let polls = self
                .b
                .sources
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || lower_share > 0)
                .map(|(i, s)| {
                    s.queue
                        .receive(if i == 0 { share } else { lower_share }, vis, wait)
                });
            let results = futures::future::join_all(polls).await;
            for (i, r) in results.into_iter().enumerate() {
                self.take(i, r, &mut out);
            }
            return (out, true);
        }
        let mut skipped = false;
        let mut remaining = budget;
        for (i, src) in self.b.sources.iter().enumerate() {
            if i > 0 {
                remaining = remaining.min(lower.saturating_sub(out.len()));
            }
            if remaining == 0 {
                break;
            }
            // A queue that came back short last time gets one probe, not a
            // volley of empty receives.
            let now = self.now();
            let (drained, last_probe) = {
                let st = self.state();
                (st.drained[i], st.last_probe[i])
            };
            let calls = if drained {
                if whole_batches && now - last_probe < PROBE_EVERY {
                    skipped = true;
                    continue;
                }
                self.state().last_probe[i] = now;
                1
            } else {
                remaining
                    .div_ceil(BATCH)
                    .min(cfg.controller.max_receives_in_flight)
            };
            let askable = if whole_batches && !drained {
                remaining / BATCH * BATCH
            } else {
                remaining
            };
            if askable == 0 {
                skipped = true;
                continue;
            }
            let calls = calls.min(askable.div_ceil(BATCH));
            let mut asks = Vec::with_capacity(calls);
            let mut left = askable;
            for _ in 0..calls {
                let n = left.min(BATCH);
                left -= n;
                asks.push(n);
            }
            let asked: usize = asks.iter().sum();
            let results = futures::future::join_all(
                asks.iter()
                    .map(|&n| src.queue.receive(n, vis, Duration::ZERO)),
            )
            .await;
            let before = out.len();
            for r in results {
                self.take(i, r, &mut out);
            }
            let got = out.len() - before;
            remaining -= got;
            if let Some(d) = self.state().drained.get_mut(i) {
                *d = got < asked;
            }
            if got == asked {
                // This queue may hold more: serve it again before the next.
                break;
            }
        }
        (out, !skipped)
    }

    fn take(
        &self,
        src: usize,
        r: Result<Vec<Message>, PortError>,
        out: &mut Vec<(usize, Message)>,
    ) {
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
    async fn process(&self, msgs: Vec<(usize, Message)>, shutdown: &watch::Receiver<bool>) {
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

    /// Name and start one message, retrying throttles and transient errors
    /// while keeping the message hidden.
    async fn start_one(&self, src: usize, m: &Message, shutdown: &watch::Receiver<bool>) -> Fate {
        let name = match self.namer.name(&m.id, &m.body) {
            Ok(n) => n,
            Err(why) => return Fate::DeadLetter(why),
        };
        let cfg = self.cfg();
        let r = &cfg.retry;
        let vis = cfg.controller.visibility();
        let received = Instant::now();
        let mut hidden_until = received + vis;
        let mut backoff = Backoff::new(
            Duration::from_millis(r.initial_ms),
            Duration::from_millis(r.max_ms),
            r.multiplier,
            self.seed
                ^ u64::from_str_radix(&crate::control::naming::short_hash(&m.id), 16).unwrap_or(0),
        );
        loop {
            let pacer = lock(&self.start_pacer).clone();
            pacer.acquire().await;
            match self.b.executions.start(&name, &m.body).await {
                Ok(outcome) => {
                    let now = self.now();
                    let mut st = self.state();
                    st.ledger.started(&name, now);
                    match outcome {
                        StartOutcome::Started => self.tally_in(&mut st, Counter::Starts, 1),
                        StartOutcome::AlreadyExists => {
                            self.tally_in(&mut st, Counter::AlreadyExisted, 1);
                        }
                    }
                    return Fate::Delete;
                }
                Err(e @ PortError::Permanent { .. }) => {
                    // Input is checked before starting, so a permanent
                    // error here is systemic (permissions, a wrong ARN):
                    // never dead-letter the queue for it.
                    warn!(message_id = %m.id, execution = %name, error = %e,
                        "StartExecution refused; message handed back, check aws.state_machine_arn and the task role");
                    self.tally(Counter::StartErrorsPermanent, 1);
                    // Stop receiving for a while: otherwise every message
                    // would be received and handed back until the redrive
                    // policy dead-letters the whole backlog.
                    self.state().paused_until = self.now() + PERMANENT_PAUSE.as_secs_f64();
                    return Fate::Requeue(PERMANENT_PAUSE);
                }
                Err(e) => {
                    if matches!(e, PortError::Throttled { .. }) {
                        self.tally(Counter::StartThrottles, 1);
                    } else {
                        self.tally(Counter::StartErrorsTransient, 1);
                    }
                    debug!(message_id = %m.id, error = %e, "start failed, retrying");
                    if *shutdown.borrow()
                        || received.elapsed() > Duration::from_secs(r.give_up_secs)
                    {
                        return Fate::Release;
                    }
                    let delay = backoff.next().unwrap_or(vis / 4);
                    // Keep the message hidden past the retry.
                    if Instant::now() + delay + Duration::from_secs(5) > hidden_until {
                        let src_q = &self.b.sources[src].queue;
                        match src_q
                            .change_visibility_batch(std::slice::from_ref(&m.receipt), vis)
                            .await
                        {
                            Ok(f) if f.is_empty() => hidden_until = Instant::now() + vis,
                            Ok(f) => {
                                warn!(message_id = %m.id, error = %f[0].error, "could not extend visibility")
                            }
                            Err(e) => {
                                warn!(message_id = %m.id, error = %e, "could not extend visibility")
                            }
                        }
                    }
                    sleep_unless(delay, shutdown).await;
                }
            }
        }
    }

    /// Delete started messages, dead-letter unstartable ones, hand back
    /// the rest; all in batches of ten.
    async fn settle(&self, fates: Vec<(usize, Message, Fate)>) {
        let k = self.b.sources.len();
        let mut delete: Vec<Vec<String>> = vec![Vec::new(); k];
        let mut release: Vec<Vec<String>> = vec![Vec::new(); k];
        let mut requeue: Vec<(usize, String, Duration)> = Vec::new();
        let mut dead: Vec<Vec<(Message, Unstartable)>> = (0..k).map(|_| Vec::new()).collect();
        let total = fates.len();
        for (src, m, fate) in fates {
            match fate {
                Fate::Delete => delete[src].push(m.receipt),
                Fate::Release => release[src].push(m.receipt),
                Fate::Requeue(d) => requeue.push((src, m.receipt, d)),
                Fate::DeadLetter(why) => dead[src].push((m, why)),
            }
        }
        for (src, items) in dead.into_iter().enumerate() {
            for chunk in items.chunks(BATCH) {
                let receipts = self.dead_letter(src, chunk).await;
                delete[src].extend(receipts);
            }
        }
        let mut sum = RunSummary::default();
        {
            let now = self.now();
            let mut st = self.state();
            for (src, receipts) in delete.into_iter().enumerate() {
                let (pending, since) = &mut st.pending_deletes[src];
                if pending.is_empty() {
                    *since = now;
                }
                pending.extend(receipts);
            }
        }
        self.flush_deletes(false).await;
        for (src, receipts) in release.iter().enumerate() {
            sum.released += receipts.len() as u64;
            self.hide(src, receipts, Duration::ZERO).await;
        }
        for (src, receipt, d) in &requeue {
            sum.requeued += 1;
            self.hide(*src, std::slice::from_ref(receipt), *d).await;
        }
        let mut st = self.state();
        st.in_hand = st.in_hand.saturating_sub(total);
        self.tally_in(&mut st, Counter::Released, sum.released);
        self.tally_in(&mut st, Counter::Requeued, sum.requeued);
    }

    /// Delete the started messages waiting in whole batches of ten, and a
    /// partial batch once it has waited `DELETE_LINGER` (or now, with
    /// `all`). The messages stay hidden meanwhile, and a redelivery of one
    /// would only be recognised as started.
    async fn flush_deletes(&self, all: bool) {
        let now = self.now();
        let batches: Vec<(usize, Vec<String>)> = {
            let mut st = self.state();
            st.pending_deletes
                .iter_mut()
                .enumerate()
                .filter_map(|(src, (pending, since))| {
                    let take = if all || now - *since >= DELETE_LINGER {
                        pending.len()
                    } else {
                        pending.len() / BATCH * BATCH
                    };
                    if take == 0 {
                        return None;
                    }
                    let rest = pending.split_off(take);
                    let out = std::mem::replace(pending, rest);
                    *since = now;
                    Some((src, out))
                })
                .collect()
        };
        for (src, receipts) in batches {
            let deleted = self.delete_all(src, &receipts).await;
            self.tally(Counter::Deletes, deleted);
        }
    }

    /// Move unstartable messages to the DLQ with their reason; returns the
    /// receipts now safe to delete from the source.
    async fn dead_letter(&self, src: usize, items: &[(Message, Unstartable)]) -> Vec<String> {
        let s = &self.b.sources[src];
        let out: Vec<OutgoingMessage> = items
            .iter()
            .map(|(m, why)| {
                warn!(queue = %s.name, message_id = %m.id, reason = %why,
                    "message can never start; moving it to the dead-letter queue");
                OutgoingMessage {
                    body: m.body.clone(),
                    delay: Duration::ZERO,
                    attributes: vec![
                        (REASON_ATTRIBUTE.to_string(), why.to_string()),
                        (REASON_CODE_ATTRIBUTE.to_string(), why.code().to_string()),
                        (SOURCE_ID_ATTRIBUTE.to_string(), m.id.clone()),
                    ],
                }
            })
            .collect();
        let failed: HashSet<usize> = match s.dlq.send_batch(&out).await {
            Ok(f) => f.into_iter().map(|f| f.index).collect(),
            Err(e) => {
                warn!(queue = %s.name, error = %e, "could not reach the dead-letter queue; messages stay in the source");
                (0..items.len()).collect()
            }
        };
        let moved = items.len() - failed.len();
        self.tally(Counter::DeadLettered, moved as u64);
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| !failed.contains(i))
            .map(|(_, (m, _))| m.receipt.clone())
            .collect()
    }

    /// Delete in batches, retrying failed entries a few times. A delete
    /// that never succeeds only means a redelivery, which the
    /// deterministic name makes harmless.
    async fn delete_all(&self, src: usize, receipts: &[String]) -> u64 {
        let q = &self.b.sources[src].queue;
        let batches = receipts.chunks(BATCH).map(|chunk| async move {
            let mut pending: Vec<String> = chunk.to_vec();
            let mut deleted = 0u64;
            for attempt in 0..3u32 {
                if pending.is_empty() {
                    break;
                }
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                match q.delete_batch(&pending).await {
                    Ok(failures) => {
                        let failed: HashSet<usize> = failures.iter().map(|f| f.index).collect();
                        deleted += (pending.len() - failed.len()) as u64;
                        pending = pending
                            .into_iter()
                            .enumerate()
                            .filter(|(i, _)| failed.contains(i))
                            .map(|(_, r)| r)
                            .collect();
                    }
                    Err(e) => debug!(error = %e, "delete batch failed, retrying"),
                }
            }
            if !pending.is_empty() {
                warn!(queue = %self.b.sources[src].name, count = pending.len(),
                    "delete failed; the messages will be redelivered and recognised as started");
                self.tally(Counter::DeleteFailures, pending.len() as u64);
            }
            deleted
        });
        futures::future::join_all(batches).await.into_iter().sum()
    }

    async fn hide(&self, src: usize, receipts: &[String], d: Duration) {
        let q = &self.b.sources[src].queue;
        for chunk in receipts.chunks(BATCH) {
            if let Err(e) = q.change_visibility_batch(chunk, d).await {
                // They reappear when their visibility times out anyway.
                debug!(error = %e, "change visibility failed");
            }
        }
    }

    /// The seed policy: receive first, check room per message, put back
    /// with a delay when there is none (raising its receive count).
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

    async fn reconcile_loop(&self, shutdown: watch::Receiver<bool>) {
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
                    if failures >= 5 || !e.is_retryable() {
                        warn!(error = %e, "reconcile abandoned; keeping the previous count");
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(500 << failures)).await;
                }
            }
        }
    }

    async fn metrics_loop(&self, shutdown: watch::Receiver<bool>) {
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

    async fn completion_loop(&self, shutdown: watch::Receiver<bool>) {
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
                            debug!(message_id = %m.id, "not a Step Functions status event; dropped")
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleep for `d` unless shutdown is requested first.
async fn sleep_unless(d: Duration, shutdown: &watch::Receiver<bool>) {
    let mut s = shutdown.clone();
    if *s.borrow() {
        return;
    }
    // biased: the simulator must not depend on tokio's random branch order.
    tokio::select! {
        biased;
        _ = tokio::time::sleep(d) => {}
        _ = s.wait_for(|v| *v) => {}
    }
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
