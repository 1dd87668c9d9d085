//! `fanout status`: queue depths, running executions and the ceiling, as a
//! short table or one JSON object.

use std::fmt::Write as _;

use serde::Serialize;

use crate::aws::Clients;
use crate::aws::sfn::{SfnError, SfnExecutions};
use crate::aws::sqs::{Depth, SqsError, SqsQueue};
use crate::config::Config;
use crate::ports::Executions;

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
}

/// What a running controller reports on its /metrics.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
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
}

/// Read the gauges of a controller's Prometheus text.
pub fn parse_metrics(text: &str) -> ControllerView {
    let mut v = ControllerView::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(x) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "fanout_ready" => v.ready = x > 0.0,
            "fanout_running_executions" => v.running_executions = x,
            "fanout_in_hand" => v.in_hand = x,
            "fanout_budget" => v.budget = x,
            "fanout_target_running" => v.target_running = x,
            "fanout_lambdas_per_execution" => v.lambdas_per_execution = x,
            "fanout_starts_total" => v.starts = x,
            _ => {}
        }
    }
    v
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
        s
    }
}

fn total(d: Depth) -> u64 {
    d.visible + d.in_flight + d.delayed
}

/// `controller`: base URL of a running controller's HTTP server, for its
/// budget and estimate.
pub async fn status(cfg: &Config, controller: Option<&str>) -> Result<Status, StatusError> {
    let view = match controller {
        Some(url) => Some(fetch_controller(url).await?),
        None => None,
    };
    let clients = Clients::new(&cfg.aws).await;
    let mut queues = Vec::new();
    for q in &cfg.queues {
        let d = SqsQueue::new(clients.sqs.clone(), &q.url).depth().await?;
        let dlq = if q.dlq_url.is_empty() {
            0
        } else {
            total(
                SqsQueue::new(clients.sqs.clone(), &q.dlq_url)
                    .depth()
                    .await?,
            )
        };
        queues.push(QueueStatus {
            name: q.name.clone(),
            visible: d.visible,
            in_flight: d.in_flight,
            delayed: d.delayed,
            dlq,
        });
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
}
