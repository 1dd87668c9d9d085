//! `fanout run`: the controller on real AWS (or an emulator), with JSON
//! logs, /healthz and /metrics, optional CloudWatch custom metrics, config
//! reload on SIGHUP and when the file changes (`crate::reload`), and a
//! graceful shutdown on SIGTERM/SIGINT within `shutdown_deadline_secs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::aws::Clients;
use crate::aws::claims::DynamoClaims;
use crate::aws::cloudwatch::{LambdaConcurrency, MetricPublisher};
use crate::aws::sfn::SfnExecutions;
use crate::aws::sqs::SqsQueue;
use crate::config::{CONFIG_ENV, Config, Problem, Source as ConfigSource, render};
use crate::controller::{Backends, Claims, Controller, ControllerError, RunSummary, Source};
use crate::ports::ConcurrencyMetrics;
use crate::reload;
use crate::telemetry::{self, Telemetry, TelemetryError};

/// How often queue depths are refreshed for /metrics.
const DEPTH_POLL: Duration = Duration::from_secs(30);

/// Why `fanout run` could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Checking the config for AWS found these problems (all of them).
    #[error("the config is not usable against AWS:\n{}", render(.0))]
    Invalid(Vec<Problem>),
    /// Building the controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// Binding or serving /healthz and /metrics failed.
    #[error(transparent)]
    Http(#[from] TelemetryError),
    /// Installing a signal handler failed.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        /// SIGTERM, SIGINT or SIGHUP.
        signal: &'static str,
        /// The OS error.
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
fn termination() -> Result<impl std::future::Future<Output = &'static str>, RunError> {
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
    let signal = termination()?;
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| RunError::Signal {
            signal: "SIGHUP",
            source,
        },
    )?;
    let clients = Clients::new(&cfg.aws).await;
    let telemetry = Telemetry::new(cfg.controller.ceiling);
    let backends = backends(&cfg, &clients, telemetry.clone());
    log_coordination(&cfg);
    let depth_queues: Vec<(String, SqsQueue, SqsQueue)> = backends
        .sources
        .iter()
        .map(|s| (s.name.clone(), s.queue.clone(), s.dlq.clone()))
        .collect();
    let listener = telemetry::bind(&cfg.http.listen).await?;
    info!(listen = %cfg.http.listen, "serving /healthz and /metrics");
    // Backoff jitter differs between replicas and restarts.
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let policy = cfg.controller.policy;
    let watch_file = cfg.reload.watch_file;
    let publish = cfg.metrics.clone();
    let limits = backends.metrics.clone();
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
    let depths = tokio::spawn(poll_depths(depth_queues, telemetry.clone()));
    let publisher = publish.cloudwatch.then(|| {
        let p = MetricPublisher::new(clients.cloudwatch.clone(), &publish.namespace);
        let every = Duration::from_secs(publish.interval_secs);
        tokio::spawn(publish_metrics(p, telemetry.clone(), every))
    });
    log_function_limits(&limits).await;
    log_reload_triggers(&source, watch_file);
    let origin = source.origin();
    let reloads = reload::triggers(
        source,
        text,
        controller.config(),
        Some(hangup),
        stop_rx.clone(),
        |text, trigger| reload_text(&controller, &telemetry, text, &origin, trigger),
    );
    let run = async { tokio::join!(controller.run(stop_rx), reloads).0 };
    // As of the last reload.
    let deadline = || {
        Duration::from_secs(
            controller
                .config()
                .borrow()
                .controller
                .shutdown_deadline_secs,
        )
    };
    let summary = Box::pin(until_signal(run, signal, &stop_tx, deadline)).await;
    let _ = stop_tx.send(true);
    for task in [Some(watcher), Some(depths), publisher]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    // The server drains on the stop signal; do not let it hold the exit.
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        warn!("HTTP server did not stop within 2 s");
    }
    if let Some(s) = &summary {
        info!(summary = ?s, "stopped");
    }
    Ok(RunOutcome { summary })
}

/// Run `run` until it ends, or until `signal`: then ask it to stop and give
/// it the shutdown deadline. `None` when it did not stop in time.
async fn until_signal(
    run: impl std::future::Future<Output = RunSummary>,
    signal: impl std::future::Future<Output = &'static str>,
    stop_tx: &watch::Sender<bool>,
    deadline: impl Fn() -> Duration,
) -> Option<RunSummary> {
    tokio::pin!(run);
    tokio::select! {
        s = &mut run => Some(s),
        sig = signal => {
            let deadline = deadline();
            info!(signal = sig, deadline_secs = deadline.as_secs(), "shutting down");
            let _ = stop_tx.send(true);
            if let Ok(s) = tokio::time::timeout(deadline, &mut run).await {
                Some(s)
            } else {
                error!(deadline_secs = deadline.as_secs(),
                    "controller did not stop within the shutdown deadline; exiting anyway (messages in hand reappear after their visibility timeout)");
                None
            }
        }
    }
}

/// Refresh each queue's and its DLQ's depth for /metrics, forever.
async fn poll_depths(queues: Vec<(String, SqsQueue, SqsQueue)>, t: Telemetry) {
    loop {
        for (name, q, dlq) in &queues {
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
}

/// Put every metric with PutMetricData every `every`, forever.
async fn publish_metrics(p: MetricPublisher, t: Telemetry, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = p.put(&t.values()).await {
            warn!(error = %e, "custom metrics not published");
        }
    }
}

/// Log each pipeline function's concurrency limit, as read at start
/// (the controller reads them again while it runs).
async fn log_function_limits(metrics: &LambdaConcurrency) {
    match metrics.function_limits().await {
        Ok(limits) => {
            for (f, limit) in limits {
                if let Some(n) = limit {
                    info!(function = %f, reserved = n, "function concurrency limit: reserved concurrency");
                } else {
                    info!(function = %f, "function concurrency limit: none reserved (the account's unreserved pool)");
                }
            }
        }
        Err(e) => warn!(error = %e, "function concurrency limits unknown"),
    }
}

/// Say once how this process will pick up config changes.
fn log_reload_triggers(source: &ConfigSource, watch_file: bool) {
    match source {
        ConfigSource::File(p) if watch_file => {
            info!(path = %p.display(), "config reload: on SIGHUP and when the file changes");
        }
        ConfigSource::File(p) => {
            info!(path = %p.display(), "config reload: on SIGHUP ([reload] watch_file = false)");
        }
        ConfigSource::Env => info!(
            "config from ${}: no reload (the environment cannot change in a running process)",
            CONFIG_ENV
        ),
    }
}

type AwsBackends = Backends<SqsQueue, SfnExecutions, LambdaConcurrency, Telemetry>;
type AwsController = Controller<SqsQueue, SfnExecutions, LambdaConcurrency, Telemetry>;

/// Apply a changed config text to the running controller and count the
/// outcome (an unchanged text counts nothing).
fn reload_text(
    controller: &AwsController,
    telemetry: &Telemetry,
    text: &str,
    origin: &str,
    trigger: reload::Trigger,
) {
    match reload::apply_text(text, origin, trigger, |new| controller.reload(new, origin)) {
        Ok(changes) if changes.is_empty() => {}
        Ok(_) => {
            telemetry.set_ceiling(controller.config().borrow().controller.ceiling);
            telemetry.reloaded(true);
        }
        Err(_) => telemetry.reloaded(false),
    }
}

/// The controller's ports over the AWS SDK, as the config names them.
fn backends(cfg: &Config, clients: &Clients, sink: Telemetry) -> AwsBackends {
    let queue = |url: &str| SqsQueue::new(clients.sqs.clone(), url);
    Backends {
        sources: cfg
            .queues
            .iter()
            .map(|q| Source {
                name: q.name.clone(),
                queue: queue(&q.url),
                dlq: queue(&q.dlq_url),
            })
            .collect(),
        completions: cfg.completion_queue.as_ref().map(|c| queue(&c.url)),
        executions: SfnExecutions::new(clients.sfn.clone(), &cfg.aws.state_machine_arn),
        metrics: LambdaConcurrency::new(
            clients.cloudwatch.clone(),
            clients.lambda.clone(),
            cfg.aws.functions.clone(),
        ),
        sink,
        claims: cfg.coordination.table.as_ref().map(|table| {
            let key = cfg
                .coordination
                .key
                .as_deref()
                .unwrap_or(&cfg.aws.state_machine_arn);
            Claims {
                store: Arc::new(DynamoClaims::new(clients.dynamodb.clone(), table, key)),
                id: controller_id(),
            }
        }),
    }
}

/// Whether this controller shares the ceiling through a claim table, and
/// what it risks when it does not.
fn log_coordination(cfg: &Config) {
    if let Some(table) = &cfg.coordination.table {
        info!(
            table,
            "sharing the ceiling with any other controller through the claim table"
        );
    } else {
        warn!(
            "no [coordination] table: this controller assumes it is alone until a reconcile lists another one's executions; two controllers started in the same second (a deploy, a service scaled out) can both fill the room"
        );
    }
}

/// This process among the controllers that may run at once: the host (the
/// ECS task's container), the process and a random part for a restart.
fn controller_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fanout".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}
