//! The simulated account: SQS, Step Functions, Lambda and CloudWatch as a
//! discrete-event model in virtual seconds. It advances lazily: every API
//! call (and the driver's tick) first processes all events up to "now".
//!
//! `World` keeps the clock, the event heap, the one RNG and the report
//! data, and serves the API the ports call. Each service is a model of its
//! own (`sqs`, `sfn`, `lambda`, `cloudwatch`, `faults`) that is handed the
//! time and the RNG; `workflow` runs executions across them. Every random
//! draw comes from the one RNG in event order, so a seed gives one run.

mod audit;
mod cloudwatch;
mod faults;
mod lambda;
mod redrive;
mod sfn;
mod sqs;
mod workflow;
mod workload;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::ports::{ConcurrencySample, EntryFailure, Message, OutgoingMessage, PortError};
use crate::sim::scenario::Scenario;
use cloudwatch::CloudWatch;
use faults::Faults;
pub use lambda::FunctionStats;
use lambda::Lambda;
pub use redrive::execution_arn;
use sfn::{Sfn, Start};
use sqs::Sqs;

/// The simulated state machine's ARN: its completion events carry it, and
/// the driver sets it as the controllers' `aws.state_machine_arn` (the
/// simulator ignores the rest of `[aws]`).
pub const STATE_MACHINE_ARN: &str = "arn:aws:states:us-east-1:000000000000:stateMachine:simulated";

/// The priority work queue.
pub const PRIORITY: usize = 0;
/// The bulk work queue.
pub const BULK: usize = 1;
/// The priority queue's dead-letter queue.
pub const PRIORITY_DLQ: usize = 2;
/// The bulk queue's dead-letter queue.
pub const BULK_DLQ: usize = 3;
/// The queue EventBridge delivers execution status changes to.
pub const COMPLETIONS: usize = 4;

/// Virtual time in whole microseconds, the event heap's key.
type Micros = u64;

fn us(t: f64) -> Micros {
    (t.max(0.0) * 1e6) as Micros
}

/// StartExecution's validation errors (the input, the name).
fn refused(code: &str, message: String) -> PortError {
    PortError::Permanent {
        service: "sfn",
        code: code.into(),
        message,
    }
}

/// FNV-1a: message bodies and execution inputs by content.
fn hash64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Invoke task `task` of `slot` (`workflow::MAIN`: the stage's own
    /// task, otherwise a Map item) of execution `exec`.
    Invoke {
        exec: u32,
        slot: u16,
        task: u16,
        attempt: u16,
        /// Its StateTransition token is taken (it waited for it).
        paid: bool,
    },
    Done {
        exec: u32,
        slot: u16,
        task: u16,
        attempt: u16,
        func: u16,
        ok: bool,
    },
    /// Enter step `stage` (past the last: the execution's end).
    Stage {
        exec: u32,
        stage: u16,
        /// Its StateTransition token is taken (it waited for it).
        paid: bool,
    },
    Arrival,
    StatusChange {
        exec: u32,
    },
}

/// Per-message outcome kept for the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Origin {
    /// Enqueued on the priority queue.
    pub priority: bool,
    /// Virtual time it was enqueued.
    pub enqueued_at: f64,
    /// Executions started for it.
    pub executions: u32,
    /// When the first of them started.
    pub first_start: Option<f64>,
    /// Redriven or dead-lettered by the controller.
    pub in_dlq: bool,
    /// Deleted from its work queue.
    pub deleted: bool,
    /// Its receive count when it was deleted.
    pub receive_count_at_delete: u32,
    /// Receives beyond the first that a fault explains: a duplicate
    /// delivery (the copy, and the stale hand's message coming back), a
    /// crash while it was in hand, a failed SQS call on its receipt or a
    /// failed DLQ send of it. Invariant 4 allows these and no others.
    pub excused_receives: u32,
    /// SendMessageBatch entries that moved it to a DLQ with a reason.
    pub dead_letter_sends: u32,
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
    /// Peak pipeline concurrency.
    pub peak: u32,
    /// Lambda-seconds of pipeline functions in all.
    pub lambda_seconds: f64,
    /// Invocations Lambda throttled.
    pub lambda_throttles: u64,
    /// Invocations that failed.
    pub lambda_errors: u64,
    /// Executions that failed.
    pub executions_failed: u64,
    /// Executions that succeeded.
    pub executions_succeeded: u64,
    /// Redrive requests put on the work queues.
    pub redrive_requests: u64,
    /// Executions redriven (RedriveExecution that ran one again).
    pub executions_redriven: u64,
    /// Calls per API operation ("service.Operation").
    pub api_calls: BTreeMap<&'static str, u64>,
    /// When the last execution closed.
    pub last_close: f64,
    /// The controllers' expected finish of the whole backlog: (virtual
    /// time it was published, virtual time it expects), in order.
    pub eta: Vec<(f64, f64)>,
    /// Deletes of a workload message that had no execution (must stay 0).
    pub deleted_without_start: u64,
    /// Reason codes of messages the controller moved to a DLQ.
    pub dlq_reasons: BTreeMap<String, u64>,
    /// Deliveries that were duplicates (at-least-once delivery).
    pub duplicate_deliveries: u64,
    /// State transitions that waited for the StateTransition bucket
    /// (CloudWatch's `ExecutionThrottled`).
    pub state_transitions_throttled: u64,
    /// Calls an injected fault failed, by "service.api".
    pub faults_injected: BTreeMap<String, u64>,
    /// Calls made inside a fault's window, by "service.api": the chances
    /// the faults had.
    pub fault_window_calls: BTreeMap<String, u64>,
}

/// The simulated account, advanced lazily to the time of each call.
pub struct World {
    /// Virtual seconds since the start.
    pub now: f64,
    seq: u64,
    events: BinaryHeap<Reverse<(Micros, u64, Event)>>,
    rng: StdRng,
    sc: Scenario,
    sqs: Sqs,
    sfn: Sfn,
    lambda: Lambda,
    cloudwatch: CloudWatch,
    faults: Faults,
    /// Workflow tasks resolved: per stage, per task, the function and the
    /// task's duration within it.
    tasks: workflow::Tasks,
    /// Every workload message, by index.
    pub origins: Vec<Origin>,
    body_origin: HashMap<u64, u32>,
    /// The minute `account` is in; its metrics are published when it ends.
    minute: u64,
    /// Concurrency is integrated up to here.
    last_t: f64,
    arrivals_left: u64,
    /// What the report is built from.
    pub stats: Stats,
}

impl World {
    /// The state machine's definition (DescribeStateMachine): the
    /// scenario's workflow in Amazon States Language.
    pub fn definition(&mut self) -> Result<String, PortError> {
        self.count("sfn.DescribeStateMachine");
        self.fault("sfn", "describe_state_machine")?;
        Ok(crate::sim::asl::definition(&self.sc))
    }

    /// The account at virtual time 0 with the workload enqueued.
    pub fn new(sc: &Scenario, seed: u64) -> World {
        let mut lambda = Lambda::new(&sc.lambda, &sc.other_load, &sc.functions());
        let tasks = workflow::resolve(&sc.workflow, &mut lambda);
        let mut sqs = Sqs::new(5, sc.sqs.max_receive_count, seed);
        for (q, dlq) in [(PRIORITY, PRIORITY_DLQ), (BULK, BULK_DLQ)] {
            sqs.set_dlq(q, dlq);
            sqs.set_duplicates(q, sc.sqs.duplicate_delivery_probability);
        }
        let mut w = World {
            now: 0.0,
            seq: 0,
            events: BinaryHeap::new(),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xa5a5),
            sc: sc.clone(),
            sqs,
            sfn: Sfn::new(&sc.sfn),
            lambda,
            cloudwatch: CloudWatch::new(&sc.cloudwatch, seed),
            faults: Faults::new(&sc.faults),
            tasks,
            origins: Vec::new(),
            body_origin: HashMap::new(),
            minute: 0,
            last_t: 0.0,
            arrivals_left: 0,
            stats: Stats::default(),
        };
        // The workload's ids come from a stream of their own.
        w.load_workload(&mut StdRng::seed_from_u64(seed));
        w
    }

    fn add_origin(&mut self, queue: usize, body: String, rng: &mut StdRng) {
        let o = self.origins.len() as u32;
        self.origins.push(Origin {
            priority: queue == PRIORITY,
            enqueued_at: self.now,
            ..Origin::default()
        });
        self.body_origin.insert(hash64(&body), o);
        self.sqs.push(queue, body, Some(o), rng);
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
            let conc = self.lambda.concurrency();
            let c = f64::from(conc);
            self.stats.conc_integral[sec] += c * (end - self.last_t);
            self.stats.lambda_seconds += c * (end - self.last_t);
            let p = &mut self.stats.conc_peak[sec];
            *p = (*p).max(conc);
            self.lambda.integrate(self.last_t, end);
            // The account-wide sum moves with the other load between
            // pipeline changes: look at it at least every second.
            self.lambda.observe(self.last_t);
            self.lambda.observe(end);
            self.last_t = end;
            let minute = (self.last_t as u64) / 60;
            if minute > self.minute {
                let trace = self.lambda.close_minute(self.minute * 60);
                self.cloudwatch.publish(&trace, &mut self.rng);
                self.minute = minute;
            }
        }
    }

    fn handle(&mut self, e: Event) {
        if !self.admit_transition(e) {
            return;
        }
        match e {
            Event::Stage { exec, stage, .. } => self.enter_stage(exec, stage),
            Event::Invoke {
                exec,
                slot,
                task,
                attempt,
                ..
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
                let body = self.sfn.status_change_event(exec);
                let mut rng = StdRng::seed_from_u64(self.seq ^ 0x5eed);
                self.sqs.push(COMPLETIONS, body, None, &mut rng);
            }
        }
    }

    // ---- API: faults and counting ------------------------------------

    /// Count a call of `op` ("service.Operation") for the report.
    pub fn count(&mut self, op: &'static str) {
        *self.stats.api_calls.entry(op).or_default() += 1;
    }

    fn fault(&mut self, service: &'static str, api: &str) -> Result<(), PortError> {
        if !self.faults.covers(service, api, self.now) {
            return Ok(());
        }
        let key = format!("{service}.{api}");
        *self
            .stats
            .fault_window_calls
            .entry(key.clone())
            .or_default() += 1;
        let out = self.faults.check(service, api, self.now, &mut self.rng);
        if out.is_err() {
            *self.stats.faults_injected.entry(key).or_default() += 1;
        }
        out
    }

    // ---- SQS ---------------------------------------------------------

    /// ReceiveMessage on queue `q`: up to `max` messages, hidden `vis` s.
    pub fn receive(&mut self, q: usize, max: usize, vis: f64) -> Result<Vec<Message>, PortError> {
        self.count("sqs.ReceiveMessage");
        self.fault("sqs", "receive_message")?;
        let got = self.sqs.receive(q, max, vis, self.now);
        self.stats.duplicate_deliveries += got.duplicates;
        for o in got.duplicated {
            // This copy, and the first hand's message coming back when its
            // stale receipt deletes nothing.
            self.origins[o as usize].excused_receives += 2;
        }
        for o in got.redriven {
            self.origins[o as usize].in_dlq = true;
        }
        Ok(got.messages)
    }

    /// DeleteMessageBatch on queue `q`.
    pub fn delete_batch(
        &mut self,
        q: usize,
        receipts: &[String],
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.DeleteMessageBatch");
        if let Err(e) = self.fault("sqs", "delete_message") {
            self.excuse_receipts(receipts);
            return Err(e);
        }
        let (failures, deleted) = self.sqs.delete(q, receipts);
        for d in deleted {
            let o = &mut self.origins[d.origin as usize];
            o.deleted = true;
            o.receive_count_at_delete = d.receive_count;
            if o.executions == 0 && !o.in_dlq {
                self.stats.deleted_without_start += 1;
            }
        }
        Ok(failures)
    }

    /// ChangeMessageVisibilityBatch on queue `q`.
    pub fn change_visibility_batch(
        &mut self,
        q: usize,
        receipts: &[String],
        vis: f64,
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.ChangeMessageVisibilityBatch");
        if let Err(e) = self.fault("sqs", "change_visibility") {
            self.excuse_receipts(receipts);
            return Err(e);
        }
        Ok(self.sqs.change_visibility(q, receipts, vis, self.now))
    }

    /// SendMessageBatch to queue `q`; a copy sent to a DLQ with the
    /// controller's attributes marks its original as dead-lettered.
    pub fn send_batch(
        &mut self,
        q: usize,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.count("sqs.SendMessageBatch");
        let dead_letter = q == PRIORITY_DLQ || q == BULK_DLQ;
        let attribute = |e: &'_ OutgoingMessage, name: &str| {
            e.attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if let Err(e) = self.fault("sqs", "send_message") {
            // The message being moved stays and comes back.
            for e in entries {
                if let Some(src) = attribute(e, crate::controller::SOURCE_ID_ATTRIBUTE)
                    && let Some(o) = self.sqs.origin_of(&src)
                {
                    self.origins[o as usize].excused_receives += 1;
                }
            }
            return Err(e);
        }
        let mut rng = StdRng::seed_from_u64(self.seq ^ self.sqs.message_count() as u64);
        for e in entries {
            if dead_letter && let Some(why) = attribute(e, crate::controller::REASON_CODE_ATTRIBUTE)
            {
                *self.stats.dlq_reasons.entry(why).or_default() += 1;
            }
            if dead_letter
                && let Some(src) = attribute(e, crate::controller::SOURCE_ID_ATTRIBUTE)
                && let Some(o) = self.sqs.origin_of(&src)
            {
                let o = &mut self.origins[o as usize];
                o.in_dlq = true;
                o.dead_letter_sends += 1;
            }
            if e.body.contains(crate::control::redrive::REQUEST_KEY) {
                self.stats.redrive_requests += 1;
            }
            self.sqs
                .send(q, e.body.clone(), e.delay, self.now, &mut rng);
        }
        Ok(Vec::new())
    }

    /// GetQueueAttributes of queue `q`: its approximate counts (a
    /// delayed message counts as in flight). Draws nothing: a run that
    /// asks keeps the draws of one that does not.
    pub fn queue_depth(&mut self, q: usize) -> crate::ports::QueueDepth {
        self.count("sqs.GetQueueAttributes");
        let (visible, hidden) = self.sqs.depth(q, self.now);
        crate::ports::QueueDepth {
            visible: visible as u64,
            in_flight: hidden as u64,
            delayed: 0,
        }
    }

    /// Visible messages in the two work queues.
    pub fn backlog(&self) -> u64 {
        (self.sqs.visible(PRIORITY) + self.sqs.visible(BULK)) as u64
    }

    /// Messages of the work queues currently hidden (in someone's hand).
    pub fn in_hand(&self) -> usize {
        self.sqs.hidden(PRIORITY) + self.sqs.hidden(BULK)
    }

    /// Messages in queue `q`, visible or hidden.
    pub fn queue_len(&self, q: usize) -> usize {
        self.sqs.visible(q) + self.sqs.hidden(q)
    }

    /// Messages in the two dead-letter queues.
    pub fn dlq_len(&self) -> usize {
        self.queue_len(PRIORITY_DLQ) + self.queue_len(BULK_DLQ)
    }

    // ---- Step Functions ----------------------------------------------

    /// DescribeStateMachine + ListTagsForResource.
    pub fn remembered_k(&mut self) -> Result<Option<f64>, PortError> {
        self.count("sfn.DescribeStateMachine");
        self.count("sfn.ListTagsForResource");
        self.fault("sfn", "list_tags_for_resource")?;
        Ok(self.sfn.remembered_k())
    }

    /// DescribeStateMachine + TagResource.
    pub fn remember_k(&mut self, k: f64) -> Result<(), PortError> {
        self.count("sfn.DescribeStateMachine");
        self.count("sfn.TagResource");
        self.fault("sfn", "tag_resource")?;
        self.sfn.remember_k(k);
        Ok(())
    }

    /// The remembered Lambdas per execution, without an API call.
    pub fn remembered(&self) -> Option<f64> {
        self.sfn.remembered_k()
    }

    /// StartExecution: `true` if it started (or is the same execution),
    /// `false` if the name already exists.
    pub fn start_execution(&mut self, name: &str, input: &str) -> Result<bool, PortError> {
        self.count("sfn.StartExecution");
        self.fault("sfn", "start_execution")?;
        if input.len() > self.sc.sfn.max_input_bytes {
            return Err(refused("InvalidExecutionInput", input.len().to_string()));
        }
        let allowed = |c: char| {
            !c.is_whitespace() && !c.is_control() && !"<>{}[]?*\"#%\\^|~`$&,;:/".contains(c)
        };
        if name.is_empty() || name.chars().count() > 80 || !name.chars().all(allowed) {
            return Err(refused("InvalidName", name.to_string()));
        }
        let h = hash64(input);
        let origin = self.body_origin.get(&h).copied();
        match self.sfn.start(name, h, origin, self.now)? {
            Start::New(x) => {
                if let Some(o) = origin {
                    let o = &mut self.origins[o as usize];
                    o.executions += 1;
                    o.first_start.get_or_insert(self.now);
                }
                self.schedule(
                    self.now + self.transition(),
                    Event::Stage {
                        exec: x,
                        stage: 0,
                        paid: false,
                    },
                );
                Ok(true)
            }
            Start::Same => Ok(true),
            Start::AlreadyExists => Ok(false),
        }
    }

    /// DescribeExecution of `name`: whether it was started with `input`.
    pub fn execution_input_matches(&mut self, name: &str, input: &str) -> Result<bool, PortError> {
        self.count("sfn.DescribeExecution");
        self.fault("sfn", "describe_execution")?;
        match self.sfn.input_hash(name) {
            Some(h) => Ok(h == hash64(input)),
            None => Err(PortError::Permanent {
                service: "sfn",
                code: "ExecutionDoesNotExist".into(),
                message: name.to_string(),
            }),
        }
    }

    /// ListExecutions(RUNNING): a page of names and the next page's token.
    pub fn list_running(
        &mut self,
        token: Option<String>,
    ) -> Result<(Vec<String>, Option<String>), PortError> {
        self.count("sfn.ListExecutions");
        self.fault("sfn", "list_executions")?;
        self.sfn.list_running(token, self.now)
    }

    // ---- CloudWatch --------------------------------------------------

    /// GetMetricData: the published minutes from `since` on.
    pub fn concurrency_samples(&mut self, since: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        self.count("cloudwatch.GetMetricData");
        self.fault("cloudwatch", "get_metric_data")?;
        Ok(self.cloudwatch.samples(since, self.now))
    }

    // ---- Lambda ------------------------------------------------------

    /// GetFunctionConcurrency of each pipeline function: its reserved
    /// concurrency, `None` when unreserved.
    pub fn function_limits(&mut self) -> Result<Vec<(String, Option<u32>)>, PortError> {
        let limits = self.lambda.limits();
        for _ in &limits {
            self.count("lambda.GetFunctionConcurrency");
            self.fault("lambda", "get_function_concurrency")?;
        }
        Ok(limits)
    }

    /// Each pipeline function over the run so far: peak, reservation,
    /// throttles.
    pub fn function_stats(&self) -> Vec<FunctionStats> {
        self.lambda.function_stats()
    }

    // ---- driver ------------------------------------------------------

    /// Every workload message is deleted or dead-lettered and nothing runs.
    /// Once redrive requests were sent, the work queues must be empty too.
    pub fn finished(&self) -> bool {
        self.sfn.running() == 0
            && self.arrivals_left == 0
            && self.origins.iter().all(|o| o.deleted || o.in_dlq)
            && (self.stats.redrive_requests == 0
                || self.queue_len(PRIORITY) + self.queue_len(BULK) == 0)
    }

    /// Executions running now.
    pub fn running_executions(&self) -> usize {
        self.sfn.running()
    }

    /// Environments in use over every pipeline function.
    pub fn pipeline_concurrency(&self) -> u32 {
        self.lambda.concurrency()
    }

    /// Sample the backlog and the running executions for this second.
    pub fn record_depth(&mut self) {
        let sec = self.now as usize;
        if self.stats.depth.len() <= sec {
            let d = self.backlog();
            self.stats.depth.resize(sec + 1, d);
            let r = self.sfn.running() as u64;
            self.stats.running.resize(sec + 1, r);
        }
    }

    /// The scenario the world was built from.
    pub fn scenario(&self) -> &Scenario {
        &self.sc
    }

    /// Pipeline functions.
    pub fn function_count(&self) -> usize {
        self.lambda.function_count()
    }

    /// Executions started for no workload message.
    pub fn executions_without_origin(&self) -> usize {
        self.sfn.without_origin()
    }
}
