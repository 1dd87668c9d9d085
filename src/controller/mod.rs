//! The controller: wires the ports to the decision logic. One task runs
//! its loops side by side: admission (receive what the budget admits,
//! start, delete), reconcile (ListExecutions), metrics (CloudWatch into the
//! estimator), progress (queue depths into the backlog's ETA) and, when
//! configured, completion events and claims.
//!
//! Invariants kept here: a message is deleted only after its start is
//! confirmed; capacity waits happen before receiving (adaptive, fixed), so
//! they never raise a receive count; input that can never start is moved
//! to the queue's DLQ with its reason.
//!
//! The rules that decide live in `control`; the files here do the I/O and
//! the bookkeeping around them, one file per loop or duty.

mod admission;
mod claims;
mod completions;
mod definition;
mod observe;
mod params;
mod progress;
mod reconcile;
mod redrive;
mod seed;
mod settle;
mod start;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use crate::config::Config;
use crate::control::Policy;
use crate::control::budget::{Admission, Decision};
use crate::control::claims::Part;
use crate::control::estimator::Estimator;
use crate::control::ledger::{Ledger, Secs};
use crate::control::linger::{DELETE_LINGER, Flush, Pending};
use crate::control::naming::{Namer, TemplateError};
use crate::control::pacing::Pacer;
use crate::control::receive::QueueState;
use crate::metrics::{Counter, Gauge};
use crate::ports::{ClaimStore, ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};
use crate::reload::{Change, ReloadError};

pub use completions::{EVENT_DETAIL_TYPE, EVENT_SOURCE, StrayEvent, parse_status_event};
pub use settle::{REASON_ATTRIBUTE, REASON_CODE_ATTRIBUTE, SOURCE_ID_ATTRIBUTE};

/// Why a controller cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The naming template does not parse.
    #[error("naming.template: {0}")]
    Template(#[from] TemplateError),
    /// There is no work queue to drain.
    #[error("no work queue configured: add a [[queues]] entry")]
    NoQueues,
}

/// A work queue with its dead-letter queue, in priority order.
pub struct Source<Q> {
    /// Its name in logs.
    pub name: String,
    /// The work queue.
    pub queue: Q,
    /// Where its unstartable messages go.
    pub dlq: Q,
}

/// Everything the controller talks to.
pub struct Backends<Q, E, M, S> {
    /// Work queues in priority order: the first is always served first.
    pub sources: Vec<Source<Q>>,
    /// EventBridge execution status events, when configured.
    pub completions: Option<Q>,
    /// Step Functions, for the state machine.
    pub executions: E,
    /// CloudWatch's Lambda concurrency.
    pub metrics: M,
    /// Where the controller's own gauges and counters go.
    pub sink: S,
    /// The claim record shared with other controllers, when configured.
    pub claims: Option<Claims>,
}

/// A shared claim store and this controller's id in it.
#[derive(Clone)]
pub struct Claims {
    /// The store.
    pub store: Arc<dyn ClaimStore>,
    /// This controller's id: unique among controllers that may run at once.
    pub id: String,
}

/// Counts over one controller life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Executions started.
    pub started: u64,
    /// Starts that found the execution already there.
    pub already_existed: u64,
    /// Messages deleted after their start.
    pub deleted: u64,
    /// Messages moved to a dead-letter queue.
    pub dead_lettered: u64,
    /// Messages handed back at once.
    pub released: u64,
    /// Messages handed back with a delay.
    pub requeued: u64,
    /// StartExecution calls throttled.
    pub start_throttles: u64,
    /// Successful reconciles.
    pub reconciles: u64,
    /// Ledger entries completed by a status-change event.
    pub completed_by_event: u64,
    /// Executions redriven for a redrive request.
    pub redriven: u64,
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
            Counter::EventCompletions => &mut self.completed_by_event,
            Counter::Redrives => &mut self.redriven,
            _ => return,
        };
        *field += n;
    }
}

/// A view of the controller's state, published after every decision.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    /// Running executions, ours and foreign.
    pub running: usize,
    /// Messages received and not yet settled.
    pub in_hand: usize,
    /// Messages the last decision admitted.
    pub budget: usize,
    /// Running executions aimed at.
    pub target: usize,
    /// Lambdas per execution (k̂).
    pub k: f64,
    /// The first reconcile is done.
    pub ready: bool,
    /// The fraction of the free room the last decision took because
    /// another controller is starting executions (the reconcile's sharing
    /// rule, without a claim record); None when it did not apply.
    pub room_share: Option<f64>,
    /// Counts so far.
    pub summary: RunSummary,
}

/// What the controller remembers of one source between steps.
#[derive(Debug, Default)]
struct SourceState {
    /// For the receive plan: drained, last probed.
    receive: QueueState,
    /// Receipts of started messages waiting to be deleted in batches.
    deletes: Pending<String>,
}

/// The state the loops share, behind one lock.
struct State {
    ledger: Ledger,
    /// Executions this controller redrove, while the ledger holds them:
    /// they resume mid-workflow, possibly at their widest.
    redriven: BTreeSet<String>,
    estimator: Estimator,
    admission: Admission,
    in_hand: usize,
    ready: bool,
    summary: RunSummary,
    last_observed_s: f64,
    paused_until: Secs,
    /// Per source, in priority order.
    sources: Vec<SourceState>,
    /// Functions already warned about (a limit below their share).
    warned_functions: BTreeSet<String>,
    /// This controller's part of the ceiling under a claim, and until when
    /// (backend time) it holds without renewal.
    part: Option<(Part, f64)>,
}

/// Drains the work queues into executions at the admitted rate.
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

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// A controller over `b` following `policy`; `seed` makes backoff
    /// jitter reproducible.
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
            estimator: Estimator::new((&cfg).into(), c.max_lambdas_per_execution),
            admission: Admission::new(policy, &(&cfg).into()),
            in_hand: 0,
            ready: false,
            summary: RunSummary::default(),
            redriven: BTreeSet::new(),
            last_observed_s: f64::NEG_INFINITY,
            paused_until: f64::NEG_INFINITY,
            sources: b.sources.iter().map(|_| SourceState::default()).collect(),
            warned_functions: BTreeSet::new(),
            part: None,
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
            st.admission.reconfigure(&(&new).into());
            st.estimator.set_config((&new).into());
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
        lock(&self.state)
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
        if self.policy == Policy::Adaptive {
            self.read_definition().await;
        }
        let admission = async {
            match self.policy {
                Policy::Seed => self.seed_pollers(cfg.seed.pollers, &shutdown).await,
                _ => self.admission_loop(shutdown.clone()).await,
            }
        };
        let reconcile = self.reconcile_loop(shutdown.clone());
        let metrics = self.metrics_loop(shutdown.clone());
        let completions = self.completion_loop(shutdown.clone());
        let claims = self.claims_loop(shutdown.clone());
        let progress = self.progress_loop(shutdown.clone());
        let flusher = async {
            while !*shutdown.borrow() {
                sleep_unless(Duration::from_secs_f64(DELETE_LINGER), &shutdown).await;
                self.flush_deletes(Flush::Due).await;
            }
        };
        tokio::join!(
            admission,
            reconcile,
            metrics,
            completions,
            flusher,
            claims,
            progress
        );
        self.flush_deletes(Flush::All).await;
        let summary = self.state().summary;
        info!(?summary, "controller stopped");
        summary
    }

    fn publish(&self, st: &State, d: &Decision) {
        let (budget, target) = (d.budget, d.target);
        let snap = Snapshot {
            running: st.ledger.in_flight(),
            in_hand: st.in_hand,
            budget,
            target,
            k: st.estimator.k(),
            ready: st.ready,
            room_share: d.room_share,
            summary: st.summary,
        };
        self.snapshot.send_replace(snap);
        let s = &self.b.sink;
        s.gauge(Gauge::RunningExecutions, snap.running as f64);
        s.gauge(Gauge::Budget, budget as f64);
        s.gauge(Gauge::TargetRunning, target as f64);
        s.gauge(Gauge::LambdasPerExecution, snap.k);
        s.gauge(Gauge::InHand, snap.in_hand as f64);
        s.gauge(
            Gauge::MeasuredLambdasPerExecution,
            st.estimator.measured().unwrap_or(0.0),
        );
        s.gauge(
            Gauge::FunctionLimitRunning,
            st.admission.function_cap().unwrap_or(0.0),
        );
    }

    /// Publish the last snapshot again: a sign of life for /healthz
    /// between decisions (`fanout run` stamps every snapshot it receives).
    fn heartbeat(&self) {
        self.snapshot.send_modify(|_| {});
    }

    fn paused(&self) -> bool {
        self.state().paused_until > self.now()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
        () = tokio::time::sleep(d) => {}
        _ = s.wait_for(|v| *v) => {}
    }
}
