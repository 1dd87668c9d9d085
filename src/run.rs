//! `fanout run`: the controller on real AWS (or an emulator), with JSON
//! logs, /healthz and /metrics, optional CloudWatch custom metrics, config
//! reload on SIGHUP and when the file changes (`crate::reload`), and a
//! graceful shutdown on SIGTERM/SIGINT within `shutdown_deadline_secs`.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::aws::Clients;
use crate::aws::cloudwatch::{LambdaConcurrency, MetricPublisher};
use crate::aws::sfn::SfnExecutions;
use crate::aws::sqs::SqsQueue;
use crate::config::{CONFIG_ENV, Config, Problem, Source as ConfigSource, render};
use crate::controller::{Backends, Controller, ControllerError, RunSummary, Source};
use crate::reload;
use crate::telemetry::{self, Telemetry, TelemetryError};

/// How often queue depths are refreshed for /metrics.
const DEPTH_POLL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the config is not usable against AWS:\n{}", render(.0))]
    Invalid(Vec<Problem>),
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error(transparent)]
    Http(#[from] TelemetryError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
}

/// How the run ended.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome {
    /// `None` when `run` did not return within the shutdown deadline.
    pub summary: Option<RunSummary>,
}

/// Resolves on the first SIGTERM or SIGINT.
async fn termination() -> Result<impl std::future::Future<Output = &'static str>, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|source| RunError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| RunError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Run the controller until a signal, then shut down within the deadline.
/// `source` is where `cfg` came from and `text` its content, the reference
/// the file is compared with for reloads.
pub async fn run(cfg: Config, source: ConfigSource, text: String) -> Result<RunOutcome, RunError> {
    let problems = cfg.validate_for_aws();
    if !problems.is_empty() {
        return Err(RunError::Invalid(problems));
    }
    let signal = termination().await?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| RunError::Signal {
            signal: "SIGHUP",
            source,
        },
    )?;
    let clients = Clients::new(&cfg.aws).await;
    let queue = |url: &str| SqsQueue::new(clients.sqs.clone(), url);
    let sources = cfg
        .queues
        .iter()
        .map(|q| Source {
            name: q.name.clone(),
            queue: queue(&q.url),
            dlq: queue(&q.dlq_url),
        })
        .collect::<Vec<_>>();
    let depth_queues: Vec<(String, SqsQueue, SqsQueue)> = sources
        .iter()
        .map(|s| (s.name.clone(), s.queue.clone(), s.dlq.clone()))
        .collect();
    let telemetry = Telemetry::new(cfg.controller.ceiling);
    let backends = Backends {
        sources,
        completions: cfg.completion_queue.as_ref().map(|c| queue(&c.url)),
        executions: SfnExecutions::new(clients.sfn.clone(), &cfg.aws.state_machine_arn),
        metrics: LambdaConcurrency::new(clients.cloudwatch.clone(), cfg.aws.functions.clone()),
        sink: telemetry.clone(),
    };
    let listener = telemetry::bind(&cfg.http.listen).await?;
    info!(listen = %cfg.http.listen, "serving /healthz and /metrics");
    let seed = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0));
    let policy = cfg.controller.policy;
    let watch_file = cfg.reload.watch_file;
    let publish = cfg.metrics.clone();
    let functions = cfg.aws.functions.clone();
    let controller = Controller::new(cfg, policy, backends, seed)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut snaps = controller.subscribe();
    let t = telemetry.clone();
    let watcher = tokio::spawn(async move {
        while snaps.changed().await.is_ok() {
            let s = *snaps.borrow_and_update();
            t.set_snapshot(s);
        }
    });
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(telemetry::serve(listener, telemetry.clone(), async move {
        let _ = http_stop.wait_for(|s| *s).await;
    }));
    let t = telemetry.clone();
    let depths = tokio::spawn(async move {
        loop {
            for (name, q, dlq) in &depth_queues {
                match q.depth().await {
                    Ok(d) => {
                        t.set_depth(name, "visible", d.visible);
                        t.set_depth(name, "in_flight", d.in_flight);
                        t.set_depth(name, "delayed", d.delayed);
                    }
                    Err(e) => warn!(queue = %name, error = %e, "queue depth unavailable"),
                }
                if let Ok(d) = dlq.depth().await {
                    t.set_depth(name, "dead_letter", d.visible + d.in_flight + d.delayed);
                }
            }
            tokio::time::sleep(DEPTH_POLL).await;
        }
    });
    let publisher = publish.cloudwatch.then(|| {
        let p = MetricPublisher::new(clients.cloudwatch.clone(), &publish.namespace);
        let t = telemetry.clone();
        let every = Duration::from_secs(publish.interval_secs);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = p.put(&t.values()).await {
                    warn!(error = %e, "custom metrics not published");
                }
            }
        })
    });
    if !functions.is_empty() {
        match crate::aws::lambda::reserved_concurrency(&clients.lambda, &functions).await {
            Ok(r) => {
                for (f, n) in r {
                    info!(function = %f, reserved = ?n, "reserved concurrency");
                }
            }
            Err(e) => warn!(error = %e, "reserved concurrency unknown"),
        }
    }

    match &source {
        ConfigSource::File(p) if watch_file => {
            info!(path = %p.display(), "config reload: on SIGHUP and when the file changes")
        }
        ConfigSource::File(p) => {
            info!(path = %p.display(), "config reload: on SIGHUP ([reload] watch_file = false)")
        }
        ConfigSource::Env => info!(
            "config from ${}: no reload (the environment cannot change in a running process)",
            CONFIG_ENV
        ),
    }
    let origin = source.origin();
    let reloads = reload::triggers(
        source,
        text,
        controller.config(),
        Some(hangup),
        stop_rx.clone(),
        |text, trigger| {
            let r = reload::apply_text(text, &origin, trigger, |new| {
                controller.reload(new, &origin)
            });
            match r {
                Ok(changes) if changes.is_empty() => {}
                Ok(_) => {
                    telemetry.set_ceiling(controller.config().borrow().controller.ceiling);
                    telemetry.reloaded(true);
                }
                Err(_) => telemetry.reloaded(false),
            }
        },
    );
    let run = async { tokio::join!(controller.run(stop_rx), reloads).0 };
    tokio::pin!(run);
    let summary = tokio::select! {
        s = &mut run => Some(s),
        sig = signal => {
            // As of the last reload.
            let deadline = Duration::from_secs(
                controller.config().borrow().controller.shutdown_deadline_secs,
            );
            info!(signal = sig, deadline_secs = deadline.as_secs(), "shutting down");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(deadline, &mut run).await {
                Ok(s) => Some(s),
                Err(_) => {
                    error!(deadline_secs = deadline.as_secs(),
                        "controller did not stop within the shutdown deadline; exiting anyway (messages in hand reappear after their visibility timeout)");
                    None
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    watcher.abort();
    depths.abort();
    if let Some(p) = publisher {
        p.abort();
    }
    // The server drains on the stop signal; do not let it hold the exit.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        warn!("HTTP server did not stop within 2 s");
    }
    if let Some(s) = &summary {
        info!(
            started = s.started,
            already_existed = s.already_existed,
            deleted = s.deleted,
            dead_lettered = s.dead_lettered,
            released = s.released,
            "stopped"
        );
    }
    Ok(RunOutcome { summary })
}
