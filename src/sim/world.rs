//! The simulated account: SQS, Step Functions, Lambda and CloudWatch as a
//! discrete-event model in virtual seconds. It advances lazily: every API
//! call (and the driver's tick) first processes all events up to "now".

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, LogNormal};

use crate::ports::{ConcurrencySample, EntryFailure, Message, OutgoingMessage, PortError};
use crate::sim::scenario::{Fault, Scaling, Scenario, Step};

pub const PRIORITY: usize = 0;
pub const BULK: usize = 1;
pub const PRIORITY_DLQ: usize = 2;
pub const BULK_DLQ: usize = 3;
pub const COMPLETIONS: usize = 4;

type Micros = u64;

fn us(t: f64) -> Micros {
    (t.max(0.0) * 1e6) as Micros
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MsgState {
    Visible,
    Hidden,
    Deleted,
}

#[derive(Debug)]
struct Msg {
    id: String,
    body: String,
    queue: usize,
    state: MsgState,
    receive_count: u32,
    /// Receipt generation: bumped on every receive.
    receipt: u32,
    /// Bumped on every visibility change; stale heap entries are skipped.
    vis_seq: u32,
    /// Index in the original workload, for the report.
    origin: Option<u32>,
}

#[derive(Debug, Default)]
struct SimQueue {
    visible: VecDeque<u32>,
    hidden: BinaryHeap<Reverse<(Micros, u32, u32)>>,
    hidden_count: usize,
    dlq: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecStatus {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug)]
struct Exec {
    name: String,
    input_hash: u64,
    origin: Option<u32>,
    started_at: f64,
    closed_at: f64,
    status: ExecStatus,
    stage: u16,
    map_items: u16,
    map_next: u16,
    map_active: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Invoke task `task` of `slot` (u16::MAX: the stage's own task,
    /// otherwise a Map item) of execution `exec`.
    Invoke {
        exec: u32,
        slot: u16,
        task: u16,
        attempt: u16,
    },
    Done {
        exec: u32,
        slot: u16,
        task: u16,
        attempt: u16,
        func: u16,
        ok: bool,
    },
    Stage {
        exec: u32,
        stage: u16,
    },
    Arrival,
    StatusChange {
        exec: u32,
    },
}

const MAIN: u16 = u16::MAX;

#[derive(Debug)]
struct Func {
    conc: u32,
    peak: u32,
    cap: f64,
    cap_t: f64,
    /// Environments kept warm: the concurrency the function can return to
    /// without scaling; it decays as idle environments are reclaimed.
    warm: f64,
    reserved: Option<u32>,
    minute_max: u32,
    dist: Vec<LogNormal<f64>>,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    burst: f64,
    rate: f64,
    tokens: f64,
    t: f64,
}

impl TokenBucket {
    fn take(&mut self, now: f64) -> bool {
        self.tokens = (self.tokens + (now - self.t) * self.rate).min(self.burst);
        self.t = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Published {
    sample: ConcurrencySample,
    at: f64,
}

/// Per-message outcome kept for the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    pub priority: bool,
    pub enqueued_at: f64,
    pub executions: u32,
    pub first_start: Option<f64>,
    pub in_dlq: bool,
    pub deleted: bool,
    pub receive_count_at_delete: u32,
}

/// Counters and series the report is built from.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lambda-seconds of pipeline functions per virtual second.
    pub conc_integral: Vec<f64>,
    /// Peak pipeline concurrency per virtual second.
    pub conc_peak: Vec<u32>,
    /// Visible messages in the work queues, sampled each second.
    pub depth: Vec<u64>,
    /// Running executions, sampled each second.
    pub running: Vec<u64>,
    pub peak: u32,
    pub lambda_seconds: f64,
    pub lambda_throttles: u64,
    pub lambda_errors: u64,
    pub executions_failed: u64,
    pub executions_succeeded: u64,
    pub api_calls: std::collections::BTreeMap<&'static str, u64>,
    pub last_close: f64,
    /// Deletes of a workload message that had no execution (must stay 0).
    pub deleted_without_start: u64,
    /// Reason codes of messages the controller moved to a DLQ.
    pub dlq_reasons: std::collections::BTreeMap<String, u64>,
    /// Deliveries that were duplicates (at-least-once delivery).
    pub duplicate_deliveries: u64,
}

pub struct World {
    pub now: f64,
    seq: u64,
    events: BinaryHeap<Reverse<(Micros, u64, Event)>>,
    rng: StdRng,
    sc: Scenario,
    msgs: Vec<Msg>,
    by_id: HashMap<String, u32>,
    queues: Vec<SimQueue>,
    pub origins: Vec<Origin>,
    body_origin: HashMap<u64, u32>,
    execs: Vec<Exec>,
    by_name: HashMap<String, u32>,
    running: BTreeSet<u32>,
    recently_closed: VecDeque<u32>,
    snapshots: HashMap<String, (Vec<u32>, usize)>,
    next_token: u64,
    start_bucket: TokenBucket,
    list_bucket: TokenBucket,
    funcs: Vec<Func>,
    fn_index: HashMap<String, u16>,
    /// Workflow tasks resolved to function indices: per stage, per task.
    stage_funcs: Vec<Vec<u16>>,
    pipeline_conc: u32,
    acct_cap: f64,
    acct_cap_t: f64,
    acct_minute_max: f64,
    minute_throttles: u64,
    minute: u64,
    published: Vec<Published>,
    /// The state machine's `fanout:lambdas-per-execution` tag.
    remembered_k: Option<f64>,
    last_t: f64,
    arrivals_left: u64,
    pub stats: Stats,
    unreserved_pool: f64,
}

fn hash64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl World {
    pub fn new(sc: &Scenario, seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let names = sc.functions();
        let mut fn_index = HashMap::new();
        let mut funcs = Vec::new();
        for (i, n) in names.iter().enumerate() {
            fn_index.insert(n.clone(), i as u16);
            funcs.push(Func {
                conc: 0,
                peak: 0,
                cap: sc.lambda.scale_step,
                cap_t: 0.0,
                warm: 0.0,
                reserved: sc.lambda.reserved.get(n).copied(),
                minute_max: 0,
                dist: Vec::new(),
            });
        }
        let mut stage_funcs = Vec::new();
        for st in &sc.workflow {
            let tasks: Vec<(String, f64, f64)> = match &st.task {
                Some(t) => vec![(t.clone(), st.median_secs, st.sigma)],
                None => st
                    .iteration
                    .iter()
                    .map(|t| (t.task.clone(), t.median_secs, t.sigma))
                    .collect(),
            };
            let mut v = Vec::new();
            for (name, median, sigma) in tasks {
                let f = fn_index[&name];
                v.push(f);
                funcs[f as usize]
                    .dist
                    .push(LogNormal::new(median.ln(), sigma.max(1e-9)).expect("valid lognormal"));
            }
            stage_funcs.push(v);
        }
        let reserved_total: u32 = sc.lambda.reserved.values().sum::<u32>() + sc.other_load.reserved;
        let mut queues: Vec<SimQueue> = (0..5).map(|_| SimQueue::default()).collect();
        queues[PRIORITY].dlq = Some(PRIORITY_DLQ);
        queues[BULK].dlq = Some(BULK_DLQ);
        let mut w = World {
            now: 0.0,
            seq: 0,
            events: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xa5a5),
            sc: sc.clone(),
            msgs: Vec::new(),
            by_id: HashMap::new(),
            queues,
            origins: Vec::new(),
            body_origin: HashMap::new(),
            execs: Vec::new(),
            by_name: HashMap::new(),
            running: BTreeSet::new(),
            recently_closed: VecDeque::new(),
            snapshots: HashMap::new(),
            next_token: 0,
            start_bucket: TokenBucket {
                burst: sc.sfn.start_execution.burst,
                rate: sc.sfn.start_execution.per_s,
                tokens: sc.sfn.start_execution.burst,
                t: 0.0,
            },
            list_bucket: TokenBucket {
                burst: sc.sfn.list_executions.burst,
                rate: sc.sfn.list_executions.per_s,
                tokens: sc.sfn.list_executions.burst,
                t: 0.0,
            },
            funcs,
            fn_index,
            stage_funcs,
            pipeline_conc: 0,
            acct_cap: sc.lambda.legacy_burst,
            acct_cap_t: 0.0,
            acct_minute_max: 0.0,
            minute_throttles: 0,
            minute: 0,
            published: Vec::new(),
            remembered_k: sc.sfn.remembered_lambdas_per_execution,
            last_t: 0.0,
            arrivals_left: 0,
            stats: Stats::default(),
            unreserved_pool: f64::from(sc.lambda.account_limit.saturating_sub(reserved_total)),
        };
        w.load_workload(&mut rng);
        w
    }

    fn load_workload(&mut self, rng: &mut StdRng) {
        let wl = self.sc.workload.clone();
        for i in 0..wl.priority {
            self.add_origin(
                PRIORITY,
                format!(r#"{{"company_id":"p{i:07}","kind":"update"}}"#),
                rng,
            );
        }
        let bad = wl.not_json + wl.oversize + wl.missing_field;
        let total = wl.bulk + bad;
        // Spread the bad bodies through the queue.
        let stride = total.checked_div(bad).map_or(u64::MAX, |s| s.max(1));
        let (mut nj, mut os, mut mf) = (wl.not_json, wl.oversize, wl.missing_field);
        for i in 0..total {
            let body = if bad > 0 && i % stride == stride / 2 && nj + os + mf > 0 {
                if nj > 0 {
                    nj -= 1;
                    format!("company c{i:07} (not json)")
                } else if os > 0 {
                    os -= 1;
                    format!(
                        r#"{{"company_id":"c{i:07}","blob":"{}"}}"#,
                        "x".repeat(270_000)
                    )
                } else {
                    mf -= 1;
                    format!(r#"{{"company":"c{i:07}"}}"#)
                }
            } else {
                format!(r#"{{"company_id":"c{i:07}","kind":"refresh"}}"#)
            };
            self.add_origin(BULK, body, rng);
        }
        if let Some(a) = &wl.priority_arrivals {
            self.arrivals_left = a.count;
            if a.count > 0 {
                self.schedule(a.start_secs, Event::Arrival);
            }
        }
    }

    fn new_id(rng: &mut StdRng) -> String {
        let a: u64 = rng.random();
        let b: u64 = rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn add_origin(&mut self, queue: usize, body: String, rng: &mut StdRng) {
        let o = self.origins.len() as u32;
        self.origins.push(Origin {
            priority: queue == PRIORITY,
            enqueued_at: self.now,
            ..Origin::default()
        });
        self.body_origin.insert(hash64(&body), o);
        self.push_msg(queue, body, Some(o), rng);
    }

    fn push_msg(
        &mut self,
        queue: usize,
        body: String,
        origin: Option<u32>,
        rng: &mut StdRng,
    ) -> u32 {
        let id = World::new_id(rng);
        let m = self.msgs.len() as u32;
        self.by_id.insert(id.clone(), m);
        self.msgs.push(Msg {
            id,
            body,
            queue,
            state: MsgState::Visible,
            receive_count: 0,
            receipt: 0,
            vis_seq: 0,
            origin,
        });
        self.queues[queue].visible.push_back(m);
        m
    }

    fn schedule(&mut self, at: f64, e: Event) {
        self.seq += 1;
        self.events.push(Reverse((us(at), self.seq, e)));
    }

    // ---- time --------------------------------------------------------

    /// Process every event up to `t`.
    pub fn advance(&mut self, t: f64) {
        while let Some(Reverse((at, _, _))) = self.events.peek() {
            let at_s = *at as f64 / 1e6;
            if at_s > t {
                break;
            }
            let Reverse((_, _, e)) = self.events.pop().expect("peeked");
            self.account(at_s.max(self.now));
            self.now = self.now.max(at_s);
            self.handle(e);
        }
        self.account(t.max(self.now));
        self.now = self.now.max(t);
    }

    /// Integrate pipeline concurrency up to `t`; close minutes on the way.
    fn account(&mut self, t: f64) {
        while self.last_t < t {
            let sec = self.last_t as usize;
            let end = t.min((sec + 1) as f64);
            if self.stats.conc_integral.len() <= sec {
                self.stats.conc_integral.resize(sec + 1, 0.0);
                self.stats.conc_peak.resize(sec + 1, 0);
            }
            let c = f64::from(self.pipeline_conc);
            self.stats.conc_integral[sec] += c * (end - self.last_t);
            self.stats.lambda_seconds += c * (end - self.last_t);
            let p = &mut self.stats.conc_peak[sec];
            *p = (*p).max(self.pipeline_conc);
            self.last_t = end;
            let minute = (self.last_t as u64) / 60;
            if minute > self.minute {
                self.close_minute();
                self.minute = minute;
            }
        }
    }

    fn other_load(&self, t: f64) -> f64 {
        let o = &self.sc.other_load;
        let mut v = o.base;
        if o.period_secs > 0.0 {
            v += o.amplitude * (2.0 * std::f64::consts::PI * t / o.period_secs).sin();
        }
        for s in &o.steps {
            if t >= s.start_secs && t < s.start_secs + s.duration_secs {
                v += s.add;
            }
        }
        v.max(0.0)
    }

    fn close_minute(&mut self) {
        let start = self.minute * 60;
        let pipeline: u32 = self.funcs.iter().map(|f| f.minute_max).sum();
        let other = self.other_load(start as f64 + 30.0);
        let account = self.acct_minute_max.max(f64::from(pipeline)) + other;
        let cw = &self.sc.cloudwatch;
        let lag = cw.lag_min_secs + self.rng.random::<f64>() * (cw.lag_max_secs - cw.lag_min_secs);
        let at = (start + 60) as f64 + lag;
        let lost = self.rng.random::<f64>() < cw.missing_probability
            || cw.outages.iter().any(|w| w.contains(at));
        if !lost {
            self.published.push(Published {
                sample: ConcurrencySample {
                    minute_start_s: start,
                    pipeline_max: f64::from(pipeline),
                    account_max: Some(account),
                    throttles: Some(self.minute_throttles as f64),
                },
                at,
            });
        }
        self.minute_throttles = 0;
        for f in &mut self.funcs {
            f.minute_max = f.conc;
        }
        self.acct_minute_max = f64::from(self.pipeline_conc);
    }

    // ---- workflow ----------------------------------------------------

    fn handle(&mut self, e: Event) {
        match e {
            Event::Stage { exec, stage } => self.enter_stage(exec, stage),
            Event::Invoke {
                exec,
                slot,
                task,
                attempt,
            } => self.invoke(exec, slot, task, attempt),
            Event::Done {
                exec,
                slot,
                task,
                attempt,
                func,
                ok,
            } => self.done(exec, slot, task, attempt, func, ok),
            Event::Arrival => {
                let mut rng = StdRng::seed_from_u64(self.seq);
                let n = self.origins.len();
                self.add_origin(
                    PRIORITY,
                    format!(r#"{{"company_id":"u{n:07}","kind":"update"}}"#),
                    &mut rng,
                );
                self.arrivals_left -= 1;
                if self.arrivals_left > 0 {
                    let every = self
                        .sc
                        .workload
                        .priority_arrivals
                        .as_ref()
                        .map_or(60.0, |a| a.every_secs);
                    self.schedule(self.now + every, Event::Arrival);
                }
            }
            Event::StatusChange { exec } => {
                let ex = &self.execs[exec as usize];
                let status = match ex.status {
                    ExecStatus::Succeeded => "SUCCEEDED",
                    ExecStatus::Failed => "FAILED",
                    ExecStatus::Running => "RUNNING",
                };
                let body = format!(
                    r#"{{"source":"aws.states","detail-type":"Step Functions Execution Status Change","detail":{{"name":"{}","status":"{}"}}}}"#,
                    ex.name, status
                );
                let mut rng = StdRng::seed_from_u64(self.seq ^ 0x5eed);
                self.push_msg(COMPLETIONS, body, None, &mut rng);
            }
        }
    }

    fn transition(&self) -> f64 {
        self.sc.sfn.transition_ms as f64 / 1000.0
    }

    fn enter_stage(&mut self, exec: u32, stage: u16) {
        if self.execs[exec as usize].status != ExecStatus::Running {
            return;
        }
        let Some(step) = self.sc.workflow.get(stage as usize).cloned() else {
            self.close(exec, ExecStatus::Succeeded);
            return;
        };
        self.execs[exec as usize].stage = stage;
        let t = self.now + self.transition();
        if step.task.is_some() {
            self.schedule(
                t,
                Event::Invoke {
                    exec,
                    slot: MAIN,
                    task: 0,
                    attempt: 0,
                },
            );
            return;
        }
        let items = self.items(&step);
        let ex = &mut self.execs[exec as usize];
        ex.map_items = items;
        ex.map_next = 0;
        ex.map_active = 0;
        if items == 0 {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                },
            );
            return;
        }
        let first = items.min(step.max_concurrency.min(u32::from(u16::MAX - 1)) as u16);
        for _ in 0..first {
            self.launch_item(exec, t);
        }
    }

    fn items(&mut self, step: &Step) -> u16 {
        let lo = step.map_items.unwrap_or(0);
        let hi = step.map_items_max.unwrap_or(lo).max(lo);
        let n = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        n.min(u32::from(u16::MAX - 1)) as u16
    }

    fn launch_item(&mut self, exec: u32, t: f64) {
        let ex = &mut self.execs[exec as usize];
        let slot = ex.map_next;
        ex.map_next += 1;
        ex.map_active += 1;
        self.schedule(
            t,
            Event::Invoke {
                exec,
                slot,
                task: 0,
                attempt: 0,
            },
        );
    }

    fn func_of(&self, stage: u16, task: u16) -> u16 {
        self.stage_funcs[stage as usize][task as usize]
    }

    /// Can function `f` get one more environment now?
    fn lambda_admits(&mut self, f: u16) -> bool {
        let now = self.now;
        let l = &self.sc.lambda;
        let func = &mut self.funcs[f as usize];
        if let Some(r) = func.reserved {
            if func.conc >= r {
                return false;
            }
        } else {
            let unreserved_used: u32 = self
                .funcs
                .iter()
                .filter(|x| x.reserved.is_none())
                .map(|x| x.conc)
                .sum();
            let other = if self.sc.other_load.reserved > 0 {
                0.0
            } else {
                self.other_load(now)
            };
            if f64::from(unreserved_used) + other + 1.0 > self.unreserved_pool {
                return false;
            }
        }
        let func = &mut self.funcs[f as usize];
        match l.scaling {
            Scaling::PerFunction => {
                let rate = l.scale_step / l.scale_period_secs;
                let dt = now - func.cap_t;
                let conc = f64::from(func.conc);
                func.warm = (func.warm * (1.0 - l.warm_decay_per_minute).powf(dt / 60.0)).max(conc);
                func.cap = (func.cap + rate * dt).min(func.warm + l.scale_step);
                func.cap_t = now;
                f64::from(func.conc) < func.cap
            }
            Scaling::Legacy => {
                let rate = l.legacy_per_minute / 60.0;
                self.acct_cap = (self.acct_cap + rate * (now - self.acct_cap_t))
                    .min(f64::from(self.pipeline_conc) + l.legacy_burst);
                self.acct_cap_t = now;
                f64::from(self.pipeline_conc) < self.acct_cap
            }
        }
    }

    fn invoke(&mut self, exec: u32, slot: u16, task: u16, attempt: u16) {
        if self.execs[exec as usize].status != ExecStatus::Running {
            return;
        }
        let stage = self.execs[exec as usize].stage;
        let f = self.func_of(stage, task);
        if !self.lambda_admits(f) {
            self.stats.lambda_throttles += 1;
            self.minute_throttles += 1;
            self.retry_or_fail(exec, slot, task, attempt);
            return;
        }
        let di = self.task_dist_index(stage, task);
        let func = &mut self.funcs[f as usize];
        func.conc += 1;
        func.minute_max = func.minute_max.max(func.conc);
        let mut d = func.dist[di].sample(&mut self.rng);
        let func = &mut self.funcs[f as usize];
        if func.conc > func.peak {
            func.peak = func.conc;
            d += self.sc.lambda.cold_start_ms as f64 / 1000.0;
        }
        self.pipeline_conc += 1;
        self.stats.peak = self.stats.peak.max(self.pipeline_conc);
        let acct = f64::from(self.pipeline_conc);
        self.acct_minute_max = self.acct_minute_max.max(acct);
        let sec = self.now as usize;
        if self.stats.conc_peak.len() <= sec {
            self.stats.conc_peak.resize(sec + 1, 0);
            self.stats.conc_integral.resize(sec + 1, 0.0);
        }
        self.stats.conc_peak[sec] = self.stats.conc_peak[sec].max(self.pipeline_conc);
        let ok = self.rng.random::<f64>() >= self.sc.lambda.error_rate;
        self.schedule(
            self.now + d,
            Event::Done {
                exec,
                slot,
                task,
                attempt,
                func: f,
                ok,
            },
        );
    }

    /// Index of the task's distribution within its function's list.
    fn task_dist_index(&self, stage: u16, task: u16) -> usize {
        let f = self.func_of(stage, task);
        let mut k = 0;
        for (s, tasks) in self.stage_funcs.iter().enumerate() {
            for (t, &g) in tasks.iter().enumerate() {
                if s == stage as usize && t == task as usize {
                    return k;
                }
                if g == f {
                    k += 1;
                }
            }
        }
        0
    }

    fn retry_or_fail(&mut self, exec: u32, slot: u16, task: u16, attempt: u16) {
        let r = &self.sc.sfn.retry;
        if u32::from(attempt) + 1 >= r.max_attempts {
            self.close(exec, ExecStatus::Failed);
            return;
        }
        let delay = r.interval_secs * r.backoff_rate.powi(i32::from(attempt));
        self.schedule(
            self.now + delay,
            Event::Invoke {
                exec,
                slot,
                task,
                attempt: attempt + 1,
            },
        );
    }

    fn done(&mut self, exec: u32, slot: u16, task: u16, attempt: u16, func: u16, ok: bool) {
        self.funcs[func as usize].conc -= 1;
        self.pipeline_conc -= 1;
        if self.execs[exec as usize].status != ExecStatus::Running {
            return;
        }
        if !ok {
            self.stats.lambda_errors += 1;
            self.retry_or_fail(exec, slot, task, attempt);
            return;
        }
        let stage = self.execs[exec as usize].stage;
        let t = self.now + self.transition();
        if slot == MAIN {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                },
            );
            return;
        }
        let ntasks = self.stage_funcs[stage as usize].len() as u16;
        if task + 1 < ntasks {
            self.schedule(
                t,
                Event::Invoke {
                    exec,
                    slot,
                    task: task + 1,
                    attempt: 0,
                },
            );
            return;
        }
        let ex = &mut self.execs[exec as usize];
        ex.map_active -= 1;
        if ex.map_next < ex.map_items {
            self.launch_item(exec, t);
        } else if ex.map_active == 0 {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                },
            );
        }
    }

    fn close(&mut self, exec: u32, status: ExecStatus) {
        let ex = &mut self.execs[exec as usize];
        ex.status = status;
        ex.closed_at = self.now;
        match status {
            ExecStatus::Failed => self.stats.executions_failed += 1,
            _ => self.stats.executions_succeeded += 1,
        }
        self.stats.last_close = self.stats.last_close.max(self.now);
        self.running.remove(&exec);
        self.recently_closed.push_back(exec);
        if self.sc.sfn.completion_events {
            self.schedule(
                self.now + self.sc.sfn.completion_event_delay_secs,
                Event::StatusChange { exec },
            );
        }
    }

    // ---- API: faults and counting ------------------------------------

    pub fn count(&mut self, op: &'static str) {
        *self.stats.api_calls.entry(op).or_default() += 1;
    }

    fn fault(&mut self, service: &str, api: &str) -> Option<PortError> {
        let now = self.now;
        let mut out = None;
        let mut draws = Vec::new();
        for f in &self.sc.faults {
            match f {
                Fault::ApiErrors {
                    service: s,
                    start_secs,
                    duration_secs,
                    probability,
                } if s == service && now >= *start_secs && now < start_secs + duration_secs => {
                    draws.push((*probability, false));
                }
                Fault::ThrottleStorm {
                    api: a,
                    start_secs,
                    duration_secs,
                    probability,
                } if a == api && now >= *start_secs && now < start_secs + duration_secs => {
                    draws.push((*probability, true));
                }
                _ => {}
            }
        }
        for (p, throttle) in draws {
            if self.rng.random::<f64>() < p {
                out = Some(if throttle {
                    PortError::Throttled {
                        service: "sim",
                        code: "ThrottlingException".into(),
                    }
                } else {
                    PortError::Transient {
                        service: "sim",
                        code: "InternalFailure".into(),
                        message: "injected fault".into(),
                    }
                });
            }
        }
        out
    }

    // ---- SQS ---------------------------------------------------------

    fn refresh(&mut self, q: usize) {
        let now = us(self.now);
        while let Some(Reverse((until, m, seq))) = self.queues[q].hidden.peek().copied() {
            if until > now {
                break;
            }
            self.queues[q].hidden.pop();
            let msg = &mut self.msgs[m as usize];
            if msg.state == MsgState::Hidden && msg.vis_seq == seq && msg.queue == q {
                msg.state = MsgState::Visible;
                self.queues[q].hidden_count -= 1;
                self.queues[q].visible.push_back(m);
            }
        }
    }

    pub fn receive(&mut self, q: usize, max: usize, vis: f64) -> Result<Vec<Message>, PortError> {
        self.count("sqs.ReceiveMessage");
        if let Some(e) = self.fault("sqs", "receive_message") {
            return Err(e);
        }
        self.refresh(q);
        let max_rc = self.sc.sqs.max_receive_count;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(m) = self.queues[q].visible.pop_front() else {
                break;
            };
            let dlq = self.queues[q].dlq;
            let msg = &mut self.msgs[m as usize];
            if msg.state != MsgState::Visible || msg.queue != q {
                continue;
            }
            if let Some(d) = dlq
                && msg.receive_count >= max_rc
            {
                // Redrive: received more than maxReceiveCount times.
                msg.queue = d;
                self.queues[d].visible.push_back(m);
                if let Some(o) = msg.origin {
                    self.origins[o as usize].in_dlq = true;
                }
                continue;
            }
            msg.receive_count += 1;
            msg.receipt += 1;
            msg.vis_seq += 1;
            msg.state = MsgState::Hidden;
            out.push(Message {
                id: msg.id.clone(),
                receipt: format!("{m}:{}", msg.receipt),
                body: msg.body.clone(),
                receive_count: msg.receive_count,
            });
            let seq = msg.vis_seq;
            self.queues[q].hidden_count += 1;
            self.queues[q]
                .hidden
                .push(Reverse((us(self.now + vis), m, seq)));
        }
        Ok(out)
    }

    fn parse_receipt(&self, r: &str) -> Option<(u32, u32)> {
        let (a, b) = r.split_once(':')?;
        let m: u32 = a.parse().ok()?;
        let g: u32 = b.parse().ok()?;
        ((m as usize) < self.msgs.len()).then_some((m, g))
    }

    pub fn delete_batch(
        &mut self,
        q: usize,
        receipts: &[String],
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.DeleteMessageBatch");
        if let Some(e) = self.fault("sqs", "delete_message") {
            return Err(e);
        }
        let mut failures = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            let Some((m, g)) = self.parse_receipt(r) else {
                failures.push(EntryFailure {
                    index: i,
                    error: PortError::Permanent {
                        service: "sqs",
                        code: "ReceiptHandleIsInvalid".into(),
                        message: r.clone(),
                    },
                });
                continue;
            };
            let msg = &mut self.msgs[m as usize];
            // A stale receipt "succeeds" without deleting, as SQS documents.
            if msg.receipt == g && msg.queue == q && msg.state != MsgState::Deleted {
                if msg.state == MsgState::Hidden {
                    self.queues[q].hidden_count -= 1;
                }
                msg.state = MsgState::Deleted;
                if let Some(o) = msg.origin {
                    let o = &mut self.origins[o as usize];
                    o.deleted = true;
                    o.receive_count_at_delete = msg.receive_count;
                    if o.executions == 0 && !o.in_dlq {
                        self.stats.deleted_without_start += 1;
                    }
                }
            }
        }
        Ok(failures)
    }

    pub fn change_visibility_batch(
        &mut self,
        q: usize,
        receipts: &[String],
        vis: f64,
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.ChangeMessageVisibilityBatch");
        if let Some(e) = self.fault("sqs", "change_visibility") {
            return Err(e);
        }
        let mut failures = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            let ok = match self.parse_receipt(r) {
                Some((m, g)) => {
                    let msg = &mut self.msgs[m as usize];
                    if msg.receipt == g && msg.queue == q && msg.state == MsgState::Hidden {
                        msg.vis_seq += 1;
                        if vis <= 0.0 {
                            msg.state = MsgState::Visible;
                            self.queues[q].hidden_count -= 1;
                            self.queues[q].visible.push_back(m);
                        } else {
                            let seq = msg.vis_seq;
                            self.queues[q]
                                .hidden
                                .push(Reverse((us(self.now + vis), m, seq)));
                        }
                        true
                    } else {
                        false
                    }
                }
                None => false,
            };
            if !ok {
                failures.push(EntryFailure {
                    index: i,
                    error: PortError::Permanent {
                        service: "sqs",
                        code: "MessageNotInflight".into(),
                        message: r.clone(),
                    },
                });
            }
        }
        Ok(failures)
    }

    pub fn send_batch(
        &mut self,
        q: usize,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.SendMessageBatch");
        if let Some(e) = self.fault("sqs", "send_message") {
            return Err(e);
        }
        let mut rng = StdRng::seed_from_u64(self.seq ^ self.msgs.len() as u64);
        for e in entries {
            if (q == PRIORITY_DLQ || q == BULK_DLQ)
                && let Some((_, why)) = e
                    .attributes
                    .iter()
                    .find(|(k, _)| k == crate::controller::REASON_CODE_ATTRIBUTE)
            {
                *self.stats.dlq_reasons.entry(why.clone()).or_default() += 1;
            }
            // A dead-lettered copy marks its original as in the DLQ.
            if let Some((_, src)) = e
                .attributes
                .iter()
                .find(|(k, _)| k == crate::controller::SOURCE_ID_ATTRIBUTE)
                && let Some(&m) = self.by_id.get(src)
                && let Some(o) = self.msgs[m as usize].origin
                && (q == PRIORITY_DLQ || q == BULK_DLQ)
            {
                self.origins[o as usize].in_dlq = true;
            }
            let m = self.push_msg(q, e.body.clone(), None, &mut rng);
            if !e.delay.is_zero() {
                self.queues[q].visible.retain(|&x| x != m);
                let msg = &mut self.msgs[m as usize];
                msg.state = MsgState::Hidden;
                let seq = msg.vis_seq;
                self.queues[q].hidden_count += 1;
                self.queues[q]
                    .hidden
                    .push(Reverse((us(self.now + e.delay.as_secs_f64()), m, seq)));
            }
        }
        Ok(Vec::new())
    }

    /// Visible messages in the two work queues.
    pub fn backlog(&self) -> u64 {
        (self.queues[PRIORITY].visible.len() + self.queues[BULK].visible.len()) as u64
    }

    /// Messages of the work queues currently hidden (in someone's hand).
    pub fn in_hand(&self) -> usize {
        self.queues[PRIORITY].hidden_count + self.queues[BULK].hidden_count
    }

    pub fn queue_len(&self, q: usize) -> usize {
        self.queues[q].visible.len() + self.queues[q].hidden_count
    }

    // ---- Step Functions ----------------------------------------------

    /// DescribeStateMachine + ListTagsForResource.
    pub fn remembered_k(&mut self) -> Result<Option<f64>, PortError> {
        self.count("sfn.DescribeStateMachine");
        self.count("sfn.ListTagsForResource");
        if let Some(e) = self.fault("sfn", "list_tags_for_resource") {
            return Err(e);
        }
        Ok(self.remembered_k)
    }

    /// DescribeStateMachine + TagResource.
    pub fn remember_k(&mut self, k: f64) -> Result<(), PortError> {
        self.count("sfn.DescribeStateMachine");
        self.count("sfn.TagResource");
        if let Some(e) = self.fault("sfn", "tag_resource") {
            return Err(e);
        }
        self.remembered_k = Some(k);
        Ok(())
    }

    pub fn remembered(&self) -> Option<f64> {
        self.remembered_k
    }

    pub fn start_execution(&mut self, name: &str, input: &str) -> Result<bool, PortError> {
        self.count("sfn.StartExecution");
        if let Some(e) = self.fault("sfn", "start_execution") {
            return Err(e);
        }
        if !self.start_bucket.take(self.now) {
            return Err(PortError::Throttled {
                service: "sfn",
                code: "ThrottlingException".into(),
            });
        }
        let h = hash64(input);
        if let Some(&x) = self.by_name.get(name) {
            let ex = &self.execs[x as usize];
            // Same name and input while running: the same execution.
            return if ex.status == ExecStatus::Running && ex.input_hash == h {
                Ok(true)
            } else {
                Ok(false)
            };
        }
        let origin = self.body_origin.get(&h).copied();
        let x = self.execs.len() as u32;
        self.execs.push(Exec {
            name: name.to_string(),
            input_hash: h,
            origin,
            started_at: self.now,
            closed_at: f64::INFINITY,
            status: ExecStatus::Running,
            stage: 0,
            map_items: 0,
            map_next: 0,
            map_active: 0,
        });
        self.by_name.insert(name.to_string(), x);
        self.running.insert(x);
        if let Some(o) = origin {
            let o = &mut self.origins[o as usize];
            o.executions += 1;
            o.first_start.get_or_insert(self.now);
        }
        self.schedule(
            self.now + self.transition(),
            Event::Stage { exec: x, stage: 0 },
        );
        Ok(true)
    }

    pub fn list_running(
        &mut self,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PortError> {
        self.count("sfn.ListExecutions");
        if let Some(e) = self.fault("sfn", "list_executions") {
            return Err(e);
        }
        if !self.list_bucket.take(self.now) {
            return Err(PortError::Throttled {
                service: "sfn",
                code: "ThrottlingException".into(),
            });
        }
        let (ids, offset) = match token {
            Some(t) => match self.snapshots.remove(&t) {
                Some(s) => s,
                None => {
                    return Err(PortError::Permanent {
                        service: "sfn",
                        code: "InvalidToken".into(),
                        message: t,
                    });
                }
            },
            None => (self.lagged_running(), 0),
        };
        let end = (offset + 1000).min(ids.len());
        let names = ids[offset..end]
            .iter()
            .map(|&x| self.execs[x as usize].name.clone())
            .collect();
        let next = if end < ids.len() {
            self.next_token += 1;
            let t = format!("tok-{}", self.next_token);
            self.snapshots.insert(t.clone(), (ids, end));
            Some(t)
        } else {
            None
        };
        Ok((names, next))
    }

    /// RUNNING as the eventually consistent listing sees it: started at
    /// least `lag` ago, and not closed more than `lag` ago. Newest first.
    fn lagged_running(&mut self) -> Vec<u32> {
        let lag = self.sc.sfn.list_lag_secs;
        let now = self.now;
        while let Some(&x) = self.recently_closed.front() {
            if self.execs[x as usize].closed_at + lag < now {
                self.recently_closed.pop_front();
            } else {
                break;
            }
        }
        let mut v: Vec<u32> = self
            .running
            .iter()
            .copied()
            .chain(self.recently_closed.iter().copied())
            .filter(|&x| self.execs[x as usize].started_at + lag <= now)
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    // ---- CloudWatch --------------------------------------------------

    pub fn concurrency_samples(&mut self, since: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        self.count("cloudwatch.GetMetricData");
        if let Some(e) = self.fault("cloudwatch", "get_metric_data") {
            return Err(e);
        }
        let now = self.now;
        let mut v: Vec<ConcurrencySample> = self
            .published
            .iter()
            .filter(|p| p.at <= now && p.sample.minute_start_s >= since)
            .map(|p| p.sample)
            .collect();
        v.sort_by_key(|s| s.minute_start_s);
        Ok(v)
    }

    // ---- driver ------------------------------------------------------

    /// Every workload message is deleted or dead-lettered and nothing runs.
    pub fn finished(&self) -> bool {
        self.running.is_empty()
            && self.arrivals_left == 0
            && self.origins.iter().all(|o| o.deleted || o.in_dlq)
    }

    pub fn running_executions(&self) -> usize {
        self.running.len()
    }

    pub fn pipeline_concurrency(&self) -> u32 {
        self.pipeline_conc
    }

    pub fn record_depth(&mut self) {
        let sec = self.now as usize;
        if self.stats.depth.len() <= sec {
            let d = self.backlog();
            self.stats.depth.resize(sec + 1, d);
            let r = self.running.len() as u64;
            self.stats.running.resize(sec + 1, r);
        }
    }

    pub fn scenario(&self) -> &Scenario {
        &self.sc
    }

    pub fn function_count(&self) -> usize {
        self.fn_index.len()
    }

    /// Executions per workload message (for duplicate accounting).
    pub fn executions_without_origin(&self) -> usize {
        self.execs.iter().filter(|e| e.origin.is_none()).count()
    }

    pub fn dlq_len(&self) -> usize {
        self.queue_len(PRIORITY_DLQ) + self.queue_len(BULK_DLQ)
    }
}
