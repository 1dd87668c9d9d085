//! `fanout status`: queue depths, running executions and the ceiling, as a
//! short table or one JSON object; per queue the backlog's ETA (`eta`), and
//! `--watch` refreshing it (`watch`).

pub mod eta;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::aws::Clients;
use crate::aws::sfn::{SfnError, SfnExecutions};
use crate::aws::sqs::{SqsError, SqsQueue};
use crate::config::Config;
use crate::ports::Executions;
use eta::{EtaReading, QueueEta};

/// Why `fanout status` could not report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A queue's depth could not be read.
    #[error(transparent)]
    Queue(#[from] SqsError),
    /// Running executions could not be counted.
    #[error(transparent)]
    Executions(#[from] SfnError),
    /// `--controller` is not of the form `http://HOST:PORT`.
    #[error("--controller {url}: expected http://HOST:PORT")]
    ControllerUrl {
        /// The URL as given.
        url: String,
    },
    /// The controller's /metrics could not be fetched in time.
    #[error("GET {url}/metrics: {source}")]
    Controller {
        /// The controller's base URL.
        url: String,
        /// The I/O error (`TimedOut` after 3 s).
        source: std::io::Error,
    },
    /// SIGINT or SIGTERM could not be listened for (`--watch`).
    #[error("cannot listen for Ctrl-C (SIGINT/SIGTERM): {0}")]
    Signal(std::io::Error),
    /// The view could not be written (`--watch`).
    #[error("cannot write the status to stdout: {0}")]
    Write(std::io::Error),
}

/// What a running controller reports on its /metrics.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ControllerView {
    /// The first reconcile is done (`fanout_ready`).
    pub ready: bool,
    /// Executions the controller believes running.
    pub running_executions: f64,
    /// Messages received and not yet settled.
    pub in_hand: f64,
    /// Messages admission may receive now.
    pub budget: f64,
    /// Running executions the ceiling allows.
    pub target_running: f64,
    /// Learned Lambda concurrency per execution (k̂).
    pub lambdas_per_execution: f64,
    /// Executions started since the controller started.
    pub starts: f64,
    /// Completions per second its ETA assumes (0: none known).
    pub completions_per_second: f64,
    /// Queue → seconds until its backlog is expected done, as of the
    /// controller's last progress step (every 30 s).
    pub backlog_eta_seconds: BTreeMap<String, f64>,
}

/// Read the gauges of a controller's Prometheus text.
pub fn parse_metrics(text: &str) -> ControllerView {
    let mut v = ControllerView::default();
    for (name, labels, x) in text.lines().filter_map(eta::parse_sample) {
        match name {
            "fanout_ready" => v.ready = x > 0.0,
            "fanout_running_executions" => v.running_executions = x,
            "fanout_in_hand" => v.in_hand = x,
            "fanout_budget" => v.budget = x,
            "fanout_target_running" => v.target_running = x,
            "fanout_lambdas_per_execution" => v.lambdas_per_execution = x,
            "fanout_starts_total" => v.starts = x,
            "fanout_completions_per_second" => v.completions_per_second = x,
            "fanout_backlog_eta_seconds" => {
                if let Some((_, q)) = labels.into_iter().find(|(l, _)| *l == "queue") {
                    v.backlog_eta_seconds.insert(q, x);
                }
            }
            _ => {}
        }
    }
    v
}

impl ControllerView {
    /// Its estimate, read at `now_s`.
    pub fn reading(&self, now_s: f64) -> EtaReading {
        EtaReading {
            rate_per_s: Some(self.completions_per_second),
            done_at_s: (self.backlog_eta_seconds.iter())
                .map(|(q, eta)| (q.clone(), now_s + eta))
                .collect(),
        }
    }
}

/// GET `<url>/metrics` of a running `fanout run` (plain HTTP, 3 s limit).
pub async fn fetch_controller(url: &str) -> Result<ControllerView, StatusError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let base = url.trim_end_matches('/');
    let authority = base
        .strip_prefix("http://")
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| StatusError::ControllerUrl {
            url: url.to_string(),
        })?;
    let io = |source| StatusError::Controller {
        url: base.to_string(),
        source,
    };
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(authority).await?;
        let req =
            format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(3), fetch)
        .await
        .map_err(|_| io(std::io::ErrorKind::TimedOut.into()))?
        .map_err(io)?;
    Ok(parse_metrics(&text))
}

/// One configured queue's depths.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    /// The queue's name in the config.
    pub name: String,
    /// Messages available to receive.
    pub visible: u64,
    /// Messages received and not yet deleted or visible again.
    pub in_flight: u64,
    /// Messages sent with a delay not yet over.
    pub delayed: u64,
    /// Every message in the DLQ (visible, in flight and delayed).
    pub dlq: u64,
    /// Messages left to start: visible, in flight and delayed.
    pub left: u64,
    /// When its backlog is expected done: `eta`, `eta_seconds`,
    /// `done_at`, `rate_per_s` (and `eta_unknown`, the reason when there
    /// is no estimate).
    #[serde(flatten)]
    pub eta: QueueEta,
}

/// What `fanout status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Every configured queue, in config order.
    pub queues: Vec<QueueStatus>,
    /// RUNNING executions of the state machine, every page counted.
    pub running_executions: u64,
    /// The configured Lambda concurrency ceiling.
    pub ceiling: u32,
    /// The most Lambdas one execution can run at once, from the config.
    pub max_lambdas_per_execution: f64,
    /// Running executions allowed before anything is learned:
    /// ceiling / max_lambdas_per_execution (the controller's cold target).
    pub cold_target: u64,
    /// The Lambdas per execution a controller left with the state machine
    /// for its current definition (`null`: none, or not readable): where
    /// the next controller starts once its first CloudWatch minute is in.
    pub remembered_lambdas_per_execution: Option<f64>,
    /// Reserved concurrency per configured function (`null`: unreserved or
    /// unknown).
    pub reserved_concurrency: Vec<(String, Option<i32>)>,
    /// The running controller's view, with `--controller`.
    pub controller: Option<ControllerView>,
    /// Where the ETAs come from: `controller` (its /metrics),
    /// `cloudwatch` (its PutMetricData series), or `null`.
    pub eta_source: Option<&'static str>,
    /// When this was read (RFC 3339, UTC).
    pub read_at: String,
    /// The same, Unix seconds: what the ETA lines are relative to.
    #[serde(skip)]
    pub now_s: f64,
}

impl Status {
    /// The status as a short text table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>10} {:>10} {:>10} {:>10}\n",
            "queue", "visible", "in_flight", "delayed", "dlq"
        );
        for q in &self.queues {
            let _ = writeln!(
                s,
                "{:<12} {:>10} {:>10} {:>10} {:>10}",
                q.name, q.visible, q.in_flight, q.delayed, q.dlq
            );
        }
        let _ = writeln!(
            s,
            "running executions: {}\nceiling: {} Lambdas (cold target {} executions at {} per execution)",
            self.running_executions, self.ceiling, self.cold_target, self.max_lambdas_per_execution
        );
        match self.remembered_lambdas_per_execution {
            Some(k) => {
                let _ = writeln!(
                    s,
                    "remembered lambdas per execution: {k:.3} (a new controller starts there)"
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "remembered lambdas per execution: none (a new controller starts at {})",
                    self.max_lambdas_per_execution
                );
            }
        }
        if let Some(c) = &self.controller {
            let _ = writeln!(
                s,
                "controller: {}, running {}, in hand {}, budget {}, target {}, lambdas per execution {:.3}, starts {}",
                if c.ready { "ready" } else { "not ready" },
                c.running_executions,
                c.in_hand,
                c.budget,
                c.target_running,
                c.lambdas_per_execution,
                c.starts
            );
        }
        for (f, r) in &self.reserved_concurrency {
            match r {
                Some(n) => {
                    let _ = writeln!(s, "reserved concurrency {f}: {n}");
                }
                None => {
                    let _ = writeln!(s, "reserved concurrency {f}: none");
                }
            }
        }
        s.push_str(&self.eta_lines());
        s
    }

    /// The backlog's ETA, a line per queue under a line saying its source.
    pub fn eta_lines(&self) -> String {
        let mut s = match self.eta_source {
            Some("controller") => "backlog (ETA from the controller's /metrics):\n".to_string(),
            Some(_) => "backlog (ETA from the controller's CloudWatch metrics):\n".to_string(),
            None => "backlog:\n".to_string(),
        };
        for q in &self.queues {
            s.push_str(&eta::line(&q.name, q.left, &q.eta, self.now_s));
            s.push('\n');
        }
        s
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `controller`: base URL of a running controller's HTTP server, for its
/// budget and estimate.
pub async fn status(cfg: &Config, controller: Option<&str>) -> Result<Status, StatusError> {
    let clients = Clients::new(&cfg.aws).await;
    status_with(&clients, cfg, controller).await
}

/// `status` over clients already built (`--watch` reuses them).
pub async fn status_with(
    clients: &Clients,
    cfg: &Config,
    controller: Option<&str>,
) -> Result<Status, StatusError> {
    let view = match controller {
        Some(url) => Some(fetch_controller(url).await?),
        None => None,
    };
    let mut depths = Vec::new();
    for q in &cfg.queues {
        let d = SqsQueue::new(clients.sqs.clone(), &q.url).depth().await?;
        let dlq = if q.dlq_url.is_empty() {
            0
        } else {
            SqsQueue::new(clients.sqs.clone(), &q.dlq_url)
                .depth()
                .await?
                .total()
        };
        depths.push((q.name.clone(), d, dlq));
    }
    let sfn = SfnExecutions::new(clients.sfn.clone(), &cfg.aws.state_machine_arn);
    let running = sfn.count_running().await?;
    // Informative, like reserved concurrency: a missing permission is not
    // an error here.
    let remembered = sfn.remembered_k().await.ok().flatten();
    // Reserved concurrency is informative: its absence is not an error.
    let reserved = if cfg.aws.functions.is_empty() {
        Vec::new()
    } else {
        crate::aws::lambda::reserved_concurrency(&clients.lambda, &cfg.aws.functions)
            .await
            .unwrap_or_else(|_| {
                cfg.aws
                    .functions
                    .iter()
                    .map(|f| (f.clone(), None))
                    .collect()
            })
    };
    let now_s = unix_now();
    let (eta_source, reading) = match &view {
        Some(v) => (Some("controller"), Ok(v.reading(now_s))),
        None if cfg.metrics.cloudwatch => (Some("cloudwatch"), published_eta(clients, cfg).await),
        None => (None, Err(NO_ETA.to_string())),
    };
    let queues = depths
        .into_iter()
        .map(|(name, d, dlq)| {
            let left = d.total();
            let eta = eta::queue_eta(&name, left, reading.as_ref().map_err(String::as_str), now_s);
            QueueStatus {
                name,
                visible: d.visible,
                in_flight: d.in_flight,
                delayed: d.delayed,
                dlq,
                left,
                eta,
            }
        })
        .collect();
    let c = &cfg.controller;
    Ok(Status {
        queues,
        running_executions: running,
        ceiling: c.ceiling,
        max_lambdas_per_execution: c.max_lambdas_per_execution,
        cold_target: (f64::from(c.ceiling) / c.max_lambdas_per_execution).floor() as u64,
        remembered_lambdas_per_execution: remembered,
        reserved_concurrency: reserved,
        controller: view,
        eta_source,
        read_at: eta::rfc3339(now_s),
        now_s,
    })
}

/// Without `--controller` and without `[metrics] cloudwatch`: the task's
/// port is out of reach and nothing else holds the estimate.
const NO_ETA: &str = "run with --controller URL";

/// The estimate the controller last put with PutMetricData
/// (`completions_per_second`, `backlog_eta_seconds_<queue>`), or why there
/// is none. A read failure is not the status's failure: only the ETA is
/// missing then.
async fn published_eta(clients: &Clients, cfg: &Config) -> Result<EtaReading, String> {
    let m = &cfg.metrics;
    let mut names = vec!["completions_per_second".to_string()];
    names.extend(
        cfg.queues
            .iter()
            .map(|q| format!("backlog_eta_seconds_{}", q.name)),
    );
    // Three publishing intervals and two minutes of CloudWatch's lag: an
    // older point is from a controller that stopped.
    let lookback_s = 3 * m.interval_secs + 120;
    let latest =
        crate::aws::cloudwatch::latest_own(&clients.cloudwatch, &m.namespace, &names, lookback_s)
            .await
            .map_err(|e| format!("CloudWatch {}: {e}; or {NO_ETA}", m.namespace))?;
    let Some((_, rate)) = latest[0] else {
        return Err(format!(
            "no {}/completions_per_second in CloudWatch for {} min: is a controller running? or {NO_ETA}",
            m.namespace,
            lookback_s.div_ceil(60)
        ));
    };
    let done_at_s = cfg
        .queues
        .iter()
        .zip(&latest[1..])
        .filter_map(|(q, p)| p.map(|(at, eta)| (q.name.clone(), at + eta)))
        .collect();
    Ok(EtaReading {
        rate_per_s: Some(rate),
        done_at_s,
    })
}

// The tests compare results of exact arithmetic.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_controller_gauges() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# HELP x\nfanout_ready 1\nfanout_budget 3\nfanout_lambdas_per_execution 2.5\nfanout_starts_total 40\nfanout_queue_messages{queue=\"a\",state=\"visible\"} 7\n";
        let v = parse_metrics(text);
        assert!(v.ready);
        assert_eq!(v.budget, 3.0);
        assert_eq!(v.lambdas_per_execution, 2.5);
        assert_eq!(v.starts, 40.0);
    }

    #[test]
    fn reads_the_backlog_eta_per_queue_and_the_rate() {
        let text = "fanout_completions_per_second 118.5\n# TYPE fanout_backlog_eta_seconds gauge\nfanout_backlog_eta_seconds{queue=\"bulk\"} 1260\nfanout_backlog_eta_seconds{queue=\"a \\\"b\\\"\"} 0\n";
        let v = parse_metrics(text);
        assert_eq!(v.completions_per_second, 118.5);
        assert_eq!(v.backlog_eta_seconds["bulk"], 1260.0);
        assert_eq!(v.backlog_eta_seconds["a \"b\""], 0.0);
        let r = v.reading(1000.0);
        assert_eq!(r.rate_per_s, Some(118.5));
        assert_eq!(r.done_at_s["bulk"], 2260.0);
    }
}
