//! The run report. Field names are stable: other tools parse them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::sim::world::World;

/// The outcome of one simulated run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The admission policy the controller ran.
    pub policy: String,
    /// The seed of the run.
    pub seed: u64,
    /// Workload messages (bulk, priority, arrivals, bad bodies).
    pub messages: u64,
    /// Messages with at least one execution.
    pub started: u64,
    /// Executions beyond one per message.
    pub duplicates: u64,
    /// Messages neither started nor in a DLQ at the end.
    pub lost: u64,
    /// Messages in a dead-letter queue at the end.
    pub dlq: u64,
    /// Virtual seconds until the last execution closed.
    pub makespan_s: f64,
    /// Total pipeline Lambda-seconds / ceiling: the shortest possible run.
    pub ideal_s: f64,
    /// ideal_s / makespan_s.
    pub efficiency: f64,
    /// The configured concurrency ceiling.
    pub ceiling: u32,
    /// Highest pipeline Lambda concurrency.
    pub peak_concurrency: u32,
    /// Mean pipeline concurrency / ceiling over the middle 80 % of the run.
    pub utilization: f64,
    /// Highest receive count of any started message.
    pub max_receive_count: u32,
    /// Invocations Lambda throttled.
    pub lambda_throttles: u64,
    /// Executions that failed (a redriven one that failed again counts
    /// each time).
    pub executions_failed: u64,
    /// Redrive requests put on the work queues (`[sfn] redrive_after_drain`).
    pub redrive_requests: u64,
    /// Executions RedriveExecution ran again.
    pub executions_redriven: u64,
    /// Executions FAILED at the end (each name once, as its latest run).
    pub failed_at_end: u64,
    /// API calls per service.
    pub api_calls: BTreeMap<String, u64>,
    /// API calls per operation ("sqs.ReceiveMessage", ...).
    pub api_calls_by_operation: BTreeMap<String, u64>,
    /// Calls other than StartExecution per started execution.
    pub overhead_calls_per_start: f64,
    /// Start latency of priority messages, virtual seconds (None if none).
    pub priority_p50_s: Option<f64>,
    /// The same, 99th percentile.
    pub priority_p99_s: Option<f64>,
    /// Controllers started: the first, one per crash restart, replicas.
    pub controller_lives: u32,
    /// Workload messages deleted without an execution (must be 0).
    pub deleted_without_start: u64,
    /// Messages the controller moved to a DLQ, by reason code.
    pub dead_letter_reasons: BTreeMap<String, u64>,
    /// Duplicate SQS deliveries the scenario injected.
    pub duplicate_deliveries: u64,
    /// Lambdas per execution left with the state machine for the next
    /// start (None: nothing learned or remembered).
    pub remembered_lambdas_per_execution: Option<f64>,
    /// Virtual seconds in which the pipeline's peak Lambda concurrency was
    /// above the ceiling.
    #[serde(default)]
    pub seconds_over_ceiling: u64,
    /// State transitions that waited for the StateTransition bucket
    /// (CloudWatch's `ExecutionThrottled`).
    #[serde(default)]
    pub state_transitions_throttled: u64,
    /// Each pipeline function: its peak, its limit and its throttles.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionReport>,
    /// Receives of workload messages beyond their first that no fault
    /// explains (a duplicate delivery, a crash while in hand, a failed SQS
    /// call on the message): invariant 4 says 0 outside the seed policy.
    #[serde(default)]
    pub unexplained_receives: u64,
    /// Workload messages the controller moved to a DLQ with a reason at
    /// least once (`dead_letter_reasons` counts every copy).
    #[serde(default)]
    pub dead_lettered_messages: u64,
    /// Highest account-wide Lambda concurrency: the pipeline plus the
    /// other load in use (capped by its reservation).
    #[serde(default)]
    pub account_peak: f64,
    /// Calls an injected fault failed, by "service.api".
    #[serde(default)]
    pub faults_injected: BTreeMap<String, u64>,
    /// Calls made inside a fault's window, by "service.api".
    #[serde(default)]
    pub fault_window_calls: BTreeMap<String, u64>,
    /// Ledger entries the controllers completed from a status-change event
    /// (before a reconcile could), over every life.
    #[serde(default)]
    pub completed_by_event: u64,
    /// How far the controllers' expected finish of the whole backlog was
    /// off when 25 %, 50 % and 75 % of the messages had started.
    #[serde(default)]
    pub eta_error: EtaError,
    /// Wall-clock seconds the simulation took.
    pub wall_s: f64,
}

/// One pipeline function over the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    /// Its highest concurrency.
    pub peak: u32,
    /// Its reserved concurrency, if any.
    pub limit: Option<u32>,
    /// Its invocations Lambda throttled.
    pub throttles: u64,
}

/// |predicted − actual finish| / actual remaining time, each with the
/// last expected finish a controller published (`fanout_backlog_eta_seconds`
/// of the last queue) at or before the moment that share of the workload's
/// messages had started; `None`: no estimate by then, or nothing remained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EtaError {
    /// When 25 % of the messages had started.
    pub at_25: Option<f64>,
    /// When 50 % had.
    pub at_50: Option<f64>,
    /// When 75 % had.
    pub at_75: Option<f64>,
}

impl EtaError {
    /// The errors of the estimates `w` recorded against the run's end at
    /// `finish` (virtual seconds).
    fn of(w: &World, finish: f64) -> EtaError {
        let mut starts: Vec<f64> = w.origins.iter().filter_map(|o| o.first_start).collect();
        starts.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let t = quantile(&starts, q)?;
            let &(_, predicted) = w.stats.eta.iter().take_while(|(at, _)| *at <= t).last()?;
            let remaining = finish - t;
            (remaining > 0.0)
                .then(|| ((predicted - finish).abs() / remaining * 1000.0).round() / 1000.0)
        };
        EtaError {
            at_25: at(0.25),
            at_50: at(0.5),
            at_75: at(0.75),
        }
    }

    /// "0.031 / 0.012 / 0.020", "-" where unknown.
    pub fn human(&self) -> String {
        [self.at_25, self.at_50, self.at_75]
            .iter()
            .map(|e| e.map_or("-".to_string(), |v| format!("{v:.3}")))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

/// Per-second series of a run, for plots and CSV.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    /// Mean pipeline Lambda concurrency in each second.
    pub concurrency: Vec<f64>,
    /// Peak pipeline Lambda concurrency in each second.
    pub peak: Vec<u32>,
    /// Running executions at each second.
    pub running: Vec<u64>,
    /// Messages visible in the work queues at each second.
    pub backlog: Vec<u64>,
}

impl Timeline {
    /// The series the world recorded.
    pub fn from_world(w: &World) -> Timeline {
        Timeline {
            concurrency: w.stats.conc_integral.clone(),
            peak: w.stats.conc_peak.clone(),
            running: w.stats.running.clone(),
            backlog: w.stats.depth.clone(),
        }
    }

    /// t_s, concurrency_mean, concurrency_peak, running_executions, backlog
    pub fn csv(&self) -> String {
        let mut out =
            String::from("t_s,concurrency_mean,concurrency_peak,running_executions,backlog\n");
        for (t, c) in self.concurrency.iter().enumerate() {
            let peak = self.peak.get(t).copied().unwrap_or(0);
            let run = self.running.get(t).copied().unwrap_or(0);
            let depth = self.backlog.get(t).copied().unwrap_or(0);
            let _ = writeln!(out, "{t},{c:.1},{peak},{run},{depth}");
        }
        out
    }
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(sorted[i])
}

/// Seconds whose peak is above `ceiling`.
fn seconds_over(peaks: &[u32], ceiling: u32) -> u64 {
    peaks.iter().filter(|&&p| p > ceiling).count() as u64
}

/// Each pipeline function, by name.
fn function_reports(w: &World) -> BTreeMap<String, FunctionReport> {
    w.function_stats()
        .into_iter()
        .map(|f| {
            let r = FunctionReport {
                peak: f.peak,
                limit: f.reserved,
                throttles: f.throttles,
            };
            (f.name, r)
        })
        .collect()
}

/// API calls per service and per operation, and the calls other than
/// StartExecution.
fn api_tallies(w: &World) -> (BTreeMap<String, u64>, BTreeMap<String, u64>, u64) {
    let mut api_calls = BTreeMap::new();
    let mut by_op = BTreeMap::new();
    let mut overhead = 0u64;
    for (op, n) in &w.stats.api_calls {
        let service = op.split('.').next().unwrap_or(op).to_string();
        *api_calls.entry(service).or_insert(0) += n;
        by_op.insert(op.to_string(), *n);
        if *op != "sfn.StartExecution" {
            overhead += n;
        }
    }
    (api_calls, by_op, overhead)
}

impl Report {
    /// The report of the run `w` holds the end of.
    pub fn build(
        w: &World,
        policy: &str,
        seed: u64,
        ceiling: u32,
        end: f64,
        lives: u32,
        wall_s: f64,
    ) -> Report {
        let mut started = 0;
        let mut duplicates = 0;
        let mut lost = 0;
        let mut dlq = 0;
        let mut max_rc = 0;
        let mut prio = Vec::new();
        for o in &w.origins {
            if o.executions > 0 {
                started += 1;
                duplicates += u64::from(o.executions - 1);
                max_rc = max_rc.max(o.receive_count_at_delete);
            } else if !o.in_dlq {
                lost += 1;
            }
            if o.in_dlq {
                dlq += 1;
            }
            if o.priority
                && let Some(t) = o.first_start
            {
                prio.push(t - o.enqueued_at);
            }
        }
        prio.sort_by(f64::total_cmp);
        let makespan = if lost > 0 {
            end
        } else {
            w.stats.last_close.max(1e-9)
        };
        let ideal = w.stats.lambda_seconds / f64::from(ceiling);
        let from = (makespan * 0.1) as usize;
        let to = ((makespan * 0.9) as usize).min(w.stats.conc_integral.len());
        let mid: f64 = w
            .stats
            .conc_integral
            .get(from..to)
            .map_or(0.0, |s| s.iter().sum());
        let utilization = if to > from {
            mid / ((to - from) as f64 * f64::from(ceiling))
        } else {
            0.0
        };
        let (api_calls, by_op, overhead) = api_tallies(w);
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        Report {
            scenario: w.scenario().name.clone(),
            policy: policy.to_string(),
            seed,
            messages: w.origins.len() as u64,
            started,
            duplicates,
            lost,
            dlq,
            makespan_s: round(makespan),
            ideal_s: round(ideal),
            efficiency: round(ideal / makespan),
            ceiling,
            peak_concurrency: w.stats.peak,
            utilization: round(utilization),
            max_receive_count: max_rc,
            lambda_throttles: w.stats.lambda_throttles,
            executions_failed: w.stats.executions_failed,
            redrive_requests: w.stats.redrive_requests,
            executions_redriven: w.stats.executions_redriven,
            failed_at_end: w.failed_now() as u64,
            api_calls,
            api_calls_by_operation: by_op,
            overhead_calls_per_start: round(overhead as f64 / started.max(1) as f64),
            priority_p50_s: quantile(&prio, 0.5).map(round),
            priority_p99_s: quantile(&prio, 0.99).map(round),
            controller_lives: lives,
            deleted_without_start: w.stats.deleted_without_start,
            dead_letter_reasons: w.stats.dlq_reasons.clone(),
            duplicate_deliveries: w.stats.duplicate_deliveries,
            remembered_lambdas_per_execution: w.remembered().map(round),
            seconds_over_ceiling: seconds_over(&w.stats.conc_peak, ceiling),
            state_transitions_throttled: w.stats.state_transitions_throttled,
            functions: function_reports(w),
            unexplained_receives: w.unexplained_receives(),
            dead_lettered_messages: w.origins.iter().filter(|o| o.dead_letter_sends > 0).count()
                as u64,
            account_peak: round(w.account_peak()),
            faults_injected: w.stats.faults_injected.clone(),
            fault_window_calls: w.stats.fault_window_calls.clone(),
            completed_by_event: 0,
            eta_error: EtaError::of(w, makespan),
            wall_s: round(wall_s),
        }
    }

    /// The human summary: the same fields, aligned.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<26}{v}");
        };
        line("scenario", self.scenario.clone());
        line("policy", self.policy.clone());
        line("seed", self.seed.to_string());
        line("messages", self.messages.to_string());
        line("started", self.started.to_string());
        line("duplicates", self.duplicates.to_string());
        line("lost", self.lost.to_string());
        line("dlq", self.dlq.to_string());
        line(
            "makespan_s",
            format!("{:.0} ({:.1} min)", self.makespan_s, self.makespan_s / 60.0),
        );
        line("ideal_s", format!("{:.0}", self.ideal_s));
        line("efficiency", format!("{:.3}", self.efficiency));
        line("ceiling", self.ceiling.to_string());
        line("peak_concurrency", self.peak_concurrency.to_string());
        line("utilization", format!("{:.3}", self.utilization));
        line("max_receive_count", self.max_receive_count.to_string());
        line(
            "seconds_over_ceiling",
            self.seconds_over_ceiling.to_string(),
        );
        line("lambda_throttles", self.lambda_throttles.to_string());
        line("executions_failed", self.executions_failed.to_string());
        line("redrive_requests", self.redrive_requests.to_string());
        line("executions_redriven", self.executions_redriven.to_string());
        line("failed_at_end", self.failed_at_end.to_string());
        line(
            "state_transitions_throttled",
            self.state_transitions_throttled.to_string(),
        );
        line(
            "duplicate_deliveries",
            self.duplicate_deliveries.to_string(),
        );
        for (name, f) in &self.functions {
            let limit = f.limit.map_or("-".to_string(), |l| l.to_string());
            line(
                &format!("function {name}"),
                format!("peak {} limit {limit} throttles {}", f.peak, f.throttles),
            );
        }
        line(
            "api_calls",
            self.api_calls
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        line(
            "overhead_calls_per_start",
            format!("{:.3}", self.overhead_calls_per_start),
        );
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.2}"));
        line("priority_p50_s", opt(self.priority_p50_s));
        line("priority_p99_s", opt(self.priority_p99_s));
        line("controller_lives", self.controller_lives.to_string());
        line("eta_error 25/50/75 %", self.eta_error.human());
        line(
            "remembered_k",
            self.remembered_lambdas_per_execution
                .map_or("-".to_string(), |v| format!("{v:.3}")),
        );
        line(
            "deleted_without_start",
            self.deleted_without_start.to_string(),
        );
        line("wall_s", format!("{:.2}", self.wall_s));
        s
    }
}

/// The report fields side by side, one column per run.
pub fn table(reports: &[&Report]) -> String {
    let values: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect();
    let fields = [
        "policy",
        "messages",
        "started",
        "duplicates",
        "lost",
        "dlq",
        "makespan_s",
        "ideal_s",
        "efficiency",
        "ceiling",
        "peak_concurrency",
        "seconds_over_ceiling",
        "utilization",
        "max_receive_count",
        "lambda_throttles",
        "executions_failed",
        "state_transitions_throttled",
        "overhead_calls_per_start",
        "priority_p50_s",
        "priority_p99_s",
        "controller_lives",
        "eta_error/at_25",
        "eta_error/at_50",
        "eta_error/at_75",
        "deleted_without_start",
        "wall_s",
    ];
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    let mut out = String::new();
    for f in fields {
        let _ = write!(out, "  {f:<26}");
        let pointer = format!("/{f}");
        for v in &values {
            let v = v.pointer(&pointer).unwrap_or(&serde_json::Value::Null);
            let _ = write!(out, "{:>14}", cell(v));
        }
        out.push('\n');
    }
    let calls: Vec<String> = reports
        .iter()
        .map(|r| {
            r.api_calls
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    for (r, c) in reports.iter().zip(calls) {
        let _ = writeln!(out, "  api_calls[{}]: {c}", r.policy);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::scenario::Scenario;

    #[test]
    fn seconds_over_ceiling_and_functions_come_from_the_world() {
        let text = "name = 't'\nceiling = 100\n[workload]\n\
                    [[workflow]]\ntask = 'b'\nmedian_secs = 1.0\n\
                    [[workflow]]\ntask = 'a'\nmedian_secs = 1.0\n\
                    [lambda]\nreserved = { a = 7 }\n";
        let sc = Scenario::parse(text, "t").unwrap();
        let mut w = World::new(&sc, 1);
        assert!(w.start_execution("x", "{}").unwrap());
        w.advance(600.0);
        w.stats.conc_peak = vec![50, 101, 100, 150, 0];
        let r = Report::build(&w, "adaptive", 1, 100, 600.0, 1, 0.0);
        assert_eq!(r.seconds_over_ceiling, 2, "101 and 150; 100 is not over");
        let functions: Vec<(&str, FunctionReport)> = r
            .functions
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let one = |limit| FunctionReport {
            peak: 1,
            limit,
            throttles: 0,
        };
        assert_eq!(functions, [("a", one(Some(7))), ("b", one(None))]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["functions"]["a"]["limit"], 7);
        assert!(
            r.human().contains("seconds_over_ceiling      2"),
            "{}",
            r.human()
        );
    }
}
