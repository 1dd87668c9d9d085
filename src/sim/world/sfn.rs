//! Step Functions: executions with name idempotency, the API's token
//! buckets, the account's StateTransition bucket, and ListExecutions'
//! paging and eventual consistency. The workflow an execution runs is
//! driven from `workflow.rs`.
//!
//! State transitions: "Step Functions state transitions are throttled
//! using a token bucket scheme" (Standard: 5,000 / 5,000 per s in us-east-1,
//! us-west-2 and eu-west-1, 800 / 800 elsewhere; less on new accounts), and
//! the throttling "is reported as `ExecutionThrottled`", "the number of
//! StateEntered events and retries that have been throttled". Nothing
//! documents an execution failing for it: a throttled transition here
//! waits for its token, and the execution runs late.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::ports::PortError;
use crate::sim::scenario::{Bucket, SfnModel};

/// Executions per ListExecutions page.
const PAGE: usize = 1000;

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExecStatus {
    Running,
    Succeeded,
    Failed,
}

/// One execution and the workflow's position in it.
#[derive(Debug)]
pub(super) struct Exec {
    pub(super) name: String,
    input_hash: u64,
    /// The workload message it was started for, if any.
    pub(super) origin: Option<u32>,
    started_at: f64,
    closed_at: f64,
    pub(super) status: ExecStatus,
    pub(super) stage: u16,
    /// Items of the current Map stage, the next to launch and those running.
    pub(super) map_items: u16,
    pub(super) map_next: u16,
    pub(super) map_active: u16,
    /// Times it was redriven (each redrive is a new `Exec` of the name,
    /// so events of the failed run find theirs closed and do nothing).
    redrive_count: u32,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    burst: f64,
    rate: f64,
    tokens: f64,
    t: f64,
}

impl TokenBucket {
    fn full(b: Bucket) -> TokenBucket {
        TokenBucket {
            burst: b.burst,
            rate: b.per_s,
            tokens: b.burst,
            t: 0.0,
        }
    }

    fn refill(&mut self, now: f64) {
        self.tokens = (self.tokens + (now - self.t) * self.rate).min(self.burst);
        self.t = now;
    }

    fn take(&mut self, now: f64) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Take a token, in debt if need be: the seconds until the token
    /// reserved is there (0: at once). Later callers queue behind.
    fn reserve(&mut self, now: f64) -> f64 {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }
}

fn throttled() -> PortError {
    PortError::Throttled {
        service: "sfn",
        code: "ThrottlingException".into(),
    }
}

/// What StartExecution did with a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    /// A new execution, by index.
    New(u32),
    /// The name runs with the same input: the same execution.
    Same,
    /// The name ran or runs with other input, or is closed.
    AlreadyExists,
}

/// What RedriveExecution did with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Redrive {
    /// Running again as execution `x`, from stage `stage`.
    New { x: u32, stage: u16 },
    /// Refused: the service's code and message.
    Refused(String),
    /// A client token this execution's redrive took within
    /// `REDRIVE_TOKEN_SECS`: answered as the first, with no new run.
    Repeat,
}

/// RedriveExecution answers the last `REDRIVE_TOKENS` client tokens that
/// redrove an execution as the first call, for this long after their
/// first use (the API reference, RedriveExecution `clientToken`).
pub(super) const REDRIVE_TOKENS: usize = 10;
pub(super) const REDRIVE_TOKEN_SECS: f64 = 900.0;

/// A closed execution as ListExecutions shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Closed {
    pub(super) name: String,
    pub(super) started_at: f64,
    pub(super) stopped_at: f64,
    pub(super) redrive_count: u32,
}

/// What DescribeExecution tells of a name: status and redrive count.
pub(super) type Described = (ExecStatus, u32);

/// The state machine's executions.
#[derive(Debug)]
pub(super) struct Sfn {
    execs: Vec<Exec>,
    by_name: HashMap<String, u32>,
    running: BTreeSet<u32>,
    /// Closed in close order, kept while ListExecutions may still show them.
    recently_closed: VecDeque<u32>,
    /// Pagination tokens: the listing they page through and where.
    snapshots: HashMap<String, (Vec<u32>, usize)>,
    next_token: u64,
    start_bucket: TokenBucket,
    /// RedriveExecution's bucket: StartExecution's size and rate.
    redrive_bucket: TokenBucket,
    /// Per execution name: the client tokens of its latest redrives and
    /// when each was first used.
    redrive_tokens: HashMap<String, VecDeque<(String, f64)>>,
    list_bucket: TokenBucket,
    transition_bucket: TokenBucket,
    list_lag: f64,
    /// The state machine's `fanout:lambdas-per-execution` tag.
    remembered_k: Option<f64>,
}

impl Sfn {
    /// No executions yet, full buckets.
    pub(super) fn new(m: &SfnModel) -> Sfn {
        Sfn {
            execs: Vec::new(),
            by_name: HashMap::new(),
            running: BTreeSet::new(),
            recently_closed: VecDeque::new(),
            snapshots: HashMap::new(),
            next_token: 0,
            start_bucket: TokenBucket::full(m.start_execution),
            redrive_bucket: TokenBucket::full(m.start_execution),
            redrive_tokens: HashMap::new(),
            list_bucket: TokenBucket::full(m.list_executions),
            transition_bucket: TokenBucket::full(m.state_transitions),
            list_lag: m.list_lag_secs,
            remembered_k: m.remembered_lambdas_per_execution,
        }
    }

    /// StartExecution of `name` with input of hash `input_hash`.
    pub(super) fn start(
        &mut self,
        name: &str,
        input_hash: u64,
        origin: Option<u32>,
        now: f64,
    ) -> Result<Start, PortError> {
        if !self.start_bucket.take(now) {
            return Err(throttled());
        }
        if let Some(&x) = self.by_name.get(name) {
            let ex = &self.execs[x as usize];
            return Ok(
                if ex.status == ExecStatus::Running && ex.input_hash == input_hash {
                    Start::Same
                } else {
                    Start::AlreadyExists
                },
            );
        }
        let x = self.execs.len() as u32;
        self.execs.push(Exec {
            name: name.to_string(),
            input_hash,
            origin,
            started_at: now,
            closed_at: f64::INFINITY,
            status: ExecStatus::Running,
            stage: 0,
            map_items: 0,
            map_next: 0,
            map_active: 0,
            redrive_count: 0,
        });
        self.by_name.insert(name.to_string(), x);
        self.running.insert(x);
        Ok(Start::New(x))
    }

    /// RedriveExecution of `name`: a FAILED execution closed within 14
    /// days runs again from the stage it failed in, as a new `Exec` of
    /// the same name, input and origin. A repeated `token` is answered as
    /// its first call was (`Redrive::Repeat`).
    pub(super) fn redrive(
        &mut self,
        name: &str,
        token: &str,
        now: f64,
    ) -> Result<Redrive, PortError> {
        if !self.redrive_bucket.take(now) {
            return Err(throttled());
        }
        if self.redrive_tokens.get(name).is_some_and(|seen| {
            seen.iter()
                .any(|(x, at)| x == token && now - at <= REDRIVE_TOKEN_SECS)
        }) {
            return Ok(Redrive::Repeat);
        }
        let Some(&old) = self.by_name.get(name) else {
            return Ok(Redrive::Refused(format!(
                "ExecutionDoesNotExist: Execution Does Not Exist: '{name}'"
            )));
        };
        let ex = &self.execs[old as usize];
        let refused = |why: &str| Ok(Redrive::Refused(format!("ExecutionNotRedrivable: {why}")));
        match ex.status {
            ExecStatus::Running => return refused("Execution is RUNNING and cannot be redriven."),
            ExecStatus::Succeeded => {
                return refused("Execution is SUCCEEDED and cannot be redriven.");
            }
            ExecStatus::Failed if now - ex.closed_at > crate::control::redrive::REDRIVABLE_SECS => {
                return refused("Execution redrivable period exceeded.");
            }
            ExecStatus::Failed => {}
        }
        let x = self.execs.len() as u32;
        let again = Exec {
            name: ex.name.clone(),
            input_hash: ex.input_hash,
            origin: ex.origin,
            started_at: ex.started_at,
            closed_at: f64::INFINITY,
            status: ExecStatus::Running,
            stage: ex.stage,
            map_items: 0,
            map_next: 0,
            map_active: 0,
            redrive_count: ex.redrive_count + 1,
        };
        let stage = again.stage;
        self.execs.push(again);
        self.by_name.insert(name.to_string(), x);
        self.running.insert(x);
        let seen = self.redrive_tokens.entry(name.to_string()).or_default();
        seen.push_back((token.to_string(), now));
        if seen.len() > REDRIVE_TOKENS {
            seen.pop_front();
        }
        Ok(Redrive::New { x, stage })
    }

    /// DescribeExecution of `name`: its status and redrive count now.
    pub(super) fn describe(&self, name: &str) -> Option<Described> {
        let ex = &self.execs[*self.by_name.get(name)? as usize];
        Some((ex.status, ex.redrive_count))
    }

    /// Names whose execution is FAILED now (not redriven since).
    pub(super) fn failed_now(&self) -> usize {
        self.by_name
            .values()
            .filter(|&&x| self.execs[x as usize].status == ExecStatus::Failed)
            .count()
    }

    /// ListExecutions(FAILED): a page, newest start first, and the token
    /// of the next. Closes show after the listing's lag.
    pub(super) fn list_failed(
        &mut self,
        token: Option<String>,
        now: f64,
    ) -> Result<(Vec<Closed>, Option<String>), PortError> {
        if !self.list_bucket.take(now) {
            return Err(throttled());
        }
        let (ids, offset) = if let Some(t) = token {
            self.snapshots
                .remove(&t)
                .ok_or_else(|| PortError::Permanent {
                    service: "sfn",
                    code: "InvalidToken".into(),
                    message: t,
                })?
        } else {
            {
                let lag = self.list_lag;
                let mut v: Vec<u32> = self
                    .by_name
                    .values()
                    .copied()
                    .filter(|&x| {
                        let ex = &self.execs[x as usize];
                        ex.status == ExecStatus::Failed && ex.closed_at + lag <= now
                    })
                    .collect();
                // Newest start first; the index breaks ties (and keeps
                // the order free of the map's).
                v.sort_unstable_by(|&a, &b| {
                    let (ea, eb) = (&self.execs[a as usize], &self.execs[b as usize]);
                    eb.started_at.total_cmp(&ea.started_at).then(b.cmp(&a))
                });
                (v, 0)
            }
        };
        let end = (offset + PAGE).min(ids.len());
        let page = ids[offset..end]
            .iter()
            .map(|&x| {
                let ex = &self.execs[x as usize];
                Closed {
                    name: ex.name.clone(),
                    started_at: ex.started_at,
                    stopped_at: ex.closed_at,
                    redrive_count: ex.redrive_count,
                }
            })
            .collect();
        let next = if end < ids.len() {
            self.next_token += 1;
            let t = format!("tok-{}", self.next_token);
            self.snapshots.insert(t.clone(), (ids, end));
            Some(t)
        } else {
            None
        };
        Ok((page, next))
    }

    /// DescribeExecution of `name`: the hash of its input, if it exists.
    pub(super) fn input_hash(&self, name: &str) -> Option<u64> {
        self.by_name
            .get(name)
            .map(|&x| self.execs[x as usize].input_hash)
    }

    /// A state transition at `now` (a state entered, a retry): the
    /// seconds it waits for the account's StateTransition bucket.
    pub(super) fn transition(&mut self, now: f64) -> f64 {
        self.transition_bucket.reserve(now)
    }

    /// Close a running execution.
    pub(super) fn close(&mut self, x: u32, status: ExecStatus, now: f64) {
        let ex = &mut self.execs[x as usize];
        ex.status = status;
        ex.closed_at = now;
        self.running.remove(&x);
        self.recently_closed.push_back(x);
    }

    /// Execution `x`.
    pub(super) fn exec(&self, x: u32) -> &Exec {
        &self.execs[x as usize]
    }

    /// Execution `x`, to move its workflow on.
    pub(super) fn exec_mut(&mut self, x: u32) -> &mut Exec {
        &mut self.execs[x as usize]
    }

    /// Executions running now (not as the listing sees them).
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }

    /// Executions started for no workload message.
    pub(super) fn without_origin(&self) -> usize {
        self.execs.iter().filter(|e| e.origin.is_none()).count()
    }

    /// The remembered Lambdas per execution (the tag's value).
    pub(super) fn remembered_k(&self) -> Option<f64> {
        self.remembered_k
    }

    /// Tag the state machine with `k`.
    pub(super) fn remember_k(&mut self, k: f64) {
        self.remembered_k = Some(k);
    }

    /// EventBridge's "Execution Status Change" event for execution `x`.
    pub(super) fn status_change_event(&self, x: u32) -> String {
        let ex = &self.execs[x as usize];
        let status = match ex.status {
            ExecStatus::Succeeded => "SUCCEEDED",
            ExecStatus::Failed => "FAILED",
            ExecStatus::Running => "RUNNING",
        };
        format!(
            r#"{{"source":"aws.states","detail-type":"Step Functions Execution Status Change","detail":{{"stateMachineArn":"{}","name":"{}","status":"{}"}}}}"#,
            super::STATE_MACHINE_ARN,
            ex.name,
            status
        )
    }

    /// ListExecutions(RUNNING): a page of names and the token of the next.
    pub(super) fn list_running(
        &mut self,
        token: Option<String>,
        now: f64,
    ) -> Result<(Vec<String>, Option<String>), PortError> {
        if !self.list_bucket.take(now) {
            return Err(throttled());
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
            None => (self.lagged_running(now), 0),
        };
        let end = (offset + PAGE).min(ids.len());
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
    fn lagged_running(&mut self, now: f64) -> Vec<u32> {
        let lag = self.list_lag;
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
            // A redriven name shows once, as its latest run.
            .filter(|&x| self.by_name.get(&self.execs[x as usize].name) == Some(&x))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }
}

// The tests compare exact values: whole numbers and exact fractions.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;

    const PLENTY: Bucket = Bucket {
        burst: 1e9,
        per_s: 0.0,
    };

    fn sfn(list_lag_secs: f64, start_execution: Bucket) -> Sfn {
        Sfn::new(&SfnModel {
            start_execution,
            list_lag_secs,
            ..SfnModel::default()
        })
    }

    fn listed(s: &mut Sfn, now: f64) -> Vec<String> {
        let (names, next) = s.list_running(None, now).expect("listed");
        assert!(next.is_none());
        names
    }

    #[test]
    fn list_executions_lags_starts_and_closes() {
        let mut s = sfn(2.0, PLENTY);
        assert_eq!(s.start("a", 1, None, 0.0).unwrap(), Start::New(0));
        assert!(listed(&mut s, 1.9).is_empty(), "started under the lag ago");
        assert_eq!(listed(&mut s, 2.0), ["a"]);
        s.close(0, ExecStatus::Succeeded, 5.0);
        assert_eq!(s.running(), 0);
        assert_eq!(listed(&mut s, 6.9), ["a"], "closed under the lag ago");
        assert!(listed(&mut s, 7.1).is_empty());
    }

    #[test]
    fn list_executions_pages_at_1000_through_a_snapshot() {
        let mut s = sfn(0.0, PLENTY);
        for i in 0..2500 {
            s.start(&format!("e{i:04}"), i, None, 0.0).unwrap();
        }
        let (p1, t1) = s.list_running(None, 1.0).unwrap();
        assert_eq!((p1.len(), p1[0].as_str()), (1000, "e2499"), "newest first");
        let t1 = t1.expect("a second page");
        // Started after the first page: not in this listing's pages.
        s.start("late", 9999, None, 1.0).unwrap();
        let (p2, t2) = s.list_running(Some(t1.clone()), 2.0).unwrap();
        assert_eq!((p2.len(), p2[0].as_str()), (1000, "e1499"));
        let (p3, t3) = s.list_running(t2, 3.0).unwrap();
        assert_eq!((p3.len(), p3[499].as_str()), (500, "e0000"));
        assert!(t3.is_none());
        // A token pages once.
        assert!(matches!(
            s.list_running(Some(t1), 4.0),
            Err(PortError::Permanent { code, .. }) if code == "InvalidToken"
        ));
    }

    /// The controller accepts the simulated events (and only its state
    /// machine's).
    #[test]
    fn status_change_events_are_the_simulated_state_machines() {
        let mut s = sfn(0.0, PLENTY);
        s.start("a", 1, None, 0.0).unwrap();
        s.close(0, ExecStatus::Succeeded, 5.0);
        let event = s.status_change_event(0);
        let parse = crate::controller::parse_status_event;
        assert_eq!(
            parse(&event, super::super::STATE_MACHINE_ARN),
            Ok(("a".to_string(), "SUCCEEDED".to_string()))
        );
        assert!(parse(&event, "arn:aws:states:us-east-1:1:stateMachine:other").is_err());
    }

    /// A redrive request delivered again after its run failed again (a
    /// crash between RedriveExecution and DeleteMessage) must not run the
    /// execution a third time: its token is answered as the first call.
    #[test]
    fn a_repeated_redrive_token_runs_the_execution_once() {
        let mut s = sfn(0.0, PLENTY);
        s.start("a", 1, None, 0.0).unwrap();
        s.close(0, ExecStatus::Failed, 10.0);
        let Redrive::New { x, .. } = s.redrive("a", "m1", 20.0).unwrap() else {
            panic!("a failed execution is redriven");
        };
        s.close(x, ExecStatus::Failed, 30.0);
        assert_eq!(s.redrive("a", "m1", 40.0).unwrap(), Redrive::Repeat);
        assert_eq!(s.describe("a").map(|d| d.1), Some(1), "one redrive");
        // Past the token's 15 minutes, or another request: a new run.
        assert!(matches!(
            s.redrive("a", "m1", 20.0 + REDRIVE_TOKEN_SECS + 1.0)
                .unwrap(),
            Redrive::New { .. }
        ));
        let y = s.execs.len() as u32 - 1;
        s.close(y, ExecStatus::Failed, 1000.0);
        assert!(matches!(
            s.redrive("a", "m2", 1001.0).unwrap(),
            Redrive::New { .. }
        ));
        assert_eq!(s.describe("a").map(|d| d.1), Some(3));
    }

    #[test]
    fn a_name_starts_once() {
        let mut s = sfn(2.0, PLENTY);
        assert_eq!(s.start("a", 1, None, 0.0).unwrap(), Start::New(0));
        assert_eq!(s.start("a", 1, None, 1.0).unwrap(), Start::Same);
        assert_eq!(s.start("a", 2, None, 1.0).unwrap(), Start::AlreadyExists);
        s.close(0, ExecStatus::Succeeded, 2.0);
        assert_eq!(s.start("a", 1, None, 3.0).unwrap(), Start::AlreadyExists);
        assert_eq!(s.running(), 0);
    }

    #[test]
    fn start_execution_throttles_after_its_burst_and_refills_at_its_rate() {
        let mut s = sfn(
            2.0,
            Bucket {
                burst: 3.0,
                per_s: 2.0,
            },
        );
        let mut n = 0u64;
        let mut admitted = |s: &mut Sfn, now: f64| {
            let mut k = 0;
            loop {
                n += 1;
                match s.start(&format!("x{n}"), n, None, now) {
                    Ok(_) => k += 1,
                    Err(PortError::Throttled { .. }) => return k,
                    Err(e) => panic!("{e}"),
                }
                assert!(k < 100, "never throttled");
            }
        };
        assert_eq!(admitted(&mut s, 0.0), 3, "the burst");
        assert_eq!(admitted(&mut s, 0.5), 1, "2/s for 0.5 s");
        assert_eq!(admitted(&mut s, 10.0), 3, "refilled to the burst, no more");
    }

    #[test]
    fn state_transitions_wait_for_the_bucket_in_turn() {
        let mut s = Sfn::new(&SfnModel {
            state_transitions: Bucket {
                burst: 2.0,
                per_s: 4.0,
            },
            ..SfnModel::default()
        });
        let waits: Vec<f64> = (0..5).map(|_| s.transition(0.0)).collect();
        assert_eq!(
            waits,
            [0.0, 0.0, 0.25, 0.5, 0.75],
            "the burst, then 4 per s"
        );
        // The debt is paid at 0.75 s; by 2 s the bucket is full again.
        assert_eq!(s.transition(2.0), 0.0);
        assert_eq!(s.transition(2.0), 0.0);
        assert_eq!(s.transition(2.0), 0.25);
    }
}
