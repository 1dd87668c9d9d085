//! `fanout status`: queue depths, running executions and the ceiling, as a
//! short table or one JSON object.

use serde::Serialize;

use crate::aws::Clients;
use crate::aws::sfn::{SfnError, SfnExecutions};
use crate::aws::sqs::{Depth, SqsError, SqsQueue};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Queue(#[from] SqsError),
    #[error(transparent)]
    Executions(#[from] SfnError),
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub name: String,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    /// Every message in the DLQ (visible, in flight and delayed).
    pub dlq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub queues: Vec<QueueStatus>,
    pub running_executions: u64,
    pub ceiling: u32,
    pub max_lambdas_per_execution: f64,
    /// Running executions allowed before anything is learned:
    /// ceiling / max_lambdas_per_execution (the controller's cold target).
    pub cold_target: u64,
    /// Reserved concurrency per configured function (`null`: unreserved or
    /// unknown).
    pub reserved_concurrency: Vec<(String, Option<i32>)>,
}

impl Status {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<12} {:>10} {:>10} {:>10} {:>10}\n",
            "queue", "visible", "in_flight", "delayed", "dlq"
        );
        for q in &self.queues {
            s.push_str(&format!(
                "{:<12} {:>10} {:>10} {:>10} {:>10}\n",
                q.name, q.visible, q.in_flight, q.delayed, q.dlq
            ));
        }
        s.push_str(&format!(
            "running executions: {}\nceiling: {} Lambdas (cold target {} executions at {} per execution)\n",
            self.running_executions, self.ceiling, self.cold_target, self.max_lambdas_per_execution
        ));
        for (f, r) in &self.reserved_concurrency {
            match r {
                Some(n) => s.push_str(&format!("reserved concurrency {f}: {n}\n")),
                None => s.push_str(&format!("reserved concurrency {f}: none\n")),
            }
        }
        s
    }
}

fn total(d: Depth) -> u64 {
    d.visible + d.in_flight + d.delayed
}

pub async fn status(cfg: &Config) -> Result<Status, StatusError> {
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
    let running = SfnExecutions::new(clients.sfn.clone(), &cfg.aws.state_machine_arn)
        .count_running()
        .await?;
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
        cold_target: (c.ceiling as f64 / c.max_lambdas_per_execution).floor() as u64,
        reserved_concurrency: reserved,
    })
}
