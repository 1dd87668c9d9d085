//! Runs the production controller against the simulated world with the
//! tokio clock paused: hours of AWS time in seconds, reproducibly.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::config::{Config, Policy};
use crate::controller::{Backends, Claims, Controller, ControllerError, Source};
use crate::sim::ports::{Shared, SimClaims, SimExecutions, SimMetrics, SimQueue, SimSink};
use crate::sim::report::{Report, Timeline};
use crate::sim::scenario::Scenario;
use crate::sim::world::{
    BULK, BULK_DLQ, COMPLETIONS, PRIORITY, PRIORITY_DLQ, STATE_MACHINE_ARN, World,
};

/// What to simulate and with which controller.
pub struct SimOptions {
    /// The simulated account and workload.
    pub scenario: Scenario,
    /// The controller's configuration.
    pub config: Config,
    /// The admission policy under test.
    pub policy: Policy,
    /// Seeds the world and, offset per life, each controller.
    pub seed: u64,
    /// Show a progress bar on the terminal.
    pub progress: bool,
}

enum Until {
    Finished,
    Crash,
    TimeLimit,
}

/// The sim's ports, wired as the controller expects (priority, then bulk).
pub fn backends(
    shared: &Shared,
    sc: &Scenario,
) -> Backends<SimQueue, SimExecutions, SimMetrics, SimSink> {
    let sqs = Duration::from_millis(sc.sqs.latency_ms);
    let q = |queue| SimQueue {
        shared: shared.clone(),
        queue,
        latency: sqs,
    };
    Backends {
        sources: vec![
            Source {
                name: "priority".into(),
                queue: q(PRIORITY),
                dlq: q(PRIORITY_DLQ),
            },
            Source {
                name: "bulk".into(),
                queue: q(BULK),
                dlq: q(BULK_DLQ),
            },
        ],
        completions: sc.sfn.completion_events.then(|| q(COMPLETIONS)),
        executions: SimExecutions {
            shared: shared.clone(),
            latency: Duration::from_millis(sc.sfn.latency_ms),
        },
        metrics: SimMetrics {
            shared: shared.clone(),
            latency: Duration::from_millis(40),
        },
        sink: SimSink {
            shared: shared.clone(),
        },
        claims: None,
    }
}

/// The controller `id`'s claims in `store`, when the config shares the
/// ceiling through a table.
fn claims(opts: &SimOptions, store: &SimClaims, id: &str) -> Option<Claims> {
    opts.config.coordination.table.as_ref()?;
    Some(Claims {
        store: Arc::new(store.clone()),
        id: id.to_owned(),
    })
}

/// Run a simulation on a fresh current-thread runtime with paused time.
pub fn run(opts: SimOptions) -> Result<Report, ControllerError> {
    run_with_timeline(opts).map(|(r, _)| r)
}

/// Run a simulation and keep its per-second timeline.
pub fn run_with_timeline(opts: SimOptions) -> Result<(Report, Timeline), ControllerError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(simulate(opts))
}

/// A controller's config: `config` on the simulated state machine, whose
/// completion events are the only ones the controller accepts.
fn controller_config(config: &Config) -> Config {
    let mut c = config.clone();
    c.aws.state_machine_arn = STATE_MACHINE_ARN.to_string();
    c
}

/// Run a simulation; the caller's runtime must have its clock paused.
pub async fn simulate(opts: SimOptions) -> Result<(Report, Timeline), ControllerError> {
    let wall = std::time::Instant::now();
    let sc = &opts.scenario;
    let shared = Shared::new(World::new(sc, opts.seed));
    let bar = progress_bar(opts.progress, shared.at_now().origins.len() as u64);
    let mut crashes = sc.crash_faults().into_iter();
    let mut next_crash = crashes.next();
    let limit = sc.max_virtual_secs as f64;
    let redrive = std::cell::Cell::new(sc.sfn.redrive_after_drain);
    let (replica_tx, replica_rx) = watch::channel(false);
    let store = SimClaims::new(Duration::from_millis(10)); // a DynamoDB round trip
    let main = async {
        let mut lives = 0u32;
        let mut by_event = 0u64;
        let end;
        loop {
            lives += 1;
            let (tx, rx) = watch::channel(false);
            let mut b = backends(&shared, sc);
            b.claims = claims(&opts, &store, &format!("life-{lives}"));
            let ctl = Controller::new(
                controller_config(&opts.config),
                opts.policy,
                b,
                opts.seed.wrapping_add(u64::from(lives)),
            )?;
            let snapshot = ctl.subscribe();
            let mut run = Box::pin(ctl.run(rx));
            let crash_at = next_crash.map(|c| c.0);
            // biased: a random branch order would let the controller take
            // one more step before a crash in some runs and not in others.
            let outcome = tokio::select! {
                biased;
                _ = &mut run => Until::Finished,
                u = watch_world(&shared, &bar, crash_at, limit, &redrive) => u,
            };
            match outcome {
                Until::Crash => {
                    // Memory lost, AWS state kept: drop the controller as is.
                    drop(run);
                    by_event += snapshot.borrow().summary.completed_by_event;
                    shared.at_now().crashed();
                    let (_, restart_after) = next_crash.expect("crash scheduled");
                    next_crash = crashes.next();
                    let resume = shared.now_s() + restart_after;
                    if let Until::Finished | Until::TimeLimit =
                        watch_world(&shared, &bar, Some(resume), limit, &redrive).await
                    {
                        end = shared.now_s();
                        break;
                    }
                }
                Until::Finished | Until::TimeLimit => {
                    end = shared.now_s();
                    tx.send_replace(true);
                    let last = tokio::time::timeout(Duration::from_secs(60), run).await;
                    by_event += last.map_or_else(
                        |_| snapshot.borrow().summary.completed_by_event,
                        |s| s.completed_by_event,
                    );
                    break;
                }
            }
        }
        replica_tx.send_replace(true);
        Ok::<_, ControllerError>((end, lives, by_event))
    };
    let replica = replica(&opts, &shared, &store, replica_rx);
    let (main, (replicas, replica_by_event)) = tokio::join!(main, replica);
    let (end, lives, by_event) = main?;
    let lives = lives + replicas;
    bar.finish_and_clear();
    let w = shared.at_now();
    let mut report = Report::build(
        &w,
        &opts.policy.to_string(),
        opts.seed,
        opts.config.controller.ceiling,
        end,
        lives,
        wall.elapsed().as_secs_f64(),
    );
    report.completed_by_event = by_event + replica_by_event;
    Ok((report, Timeline::from_world(&w)))
}

/// A second controller beside the first, as during a rolling deploy,
/// from the scenario's replica time until `stop` turns true: its lives
/// (0 or 1) and the ledger entries its completion events freed.
async fn replica(
    opts: &SimOptions,
    shared: &Shared,
    store: &SimClaims,
    stop: watch::Receiver<bool>,
) -> (u32, u64) {
    let sc = &opts.scenario;
    let Some(at) = sc.replica_at() else {
        return (0, 0);
    };
    let mut rx = stop.clone();
    tokio::select! {
        biased;
        () = tokio::time::sleep(Duration::from_secs_f64(at)) => {}
        _ = rx.wait_for(|v| *v) => return (0, 0),
    }
    let mut b = backends(shared, sc);
    b.claims = claims(opts, store, "replica");
    match Controller::new(
        controller_config(&opts.config),
        opts.policy,
        b,
        opts.seed ^ 0x5eed_2e91_1ca0,
    ) {
        Ok(c) => (1, c.run(stop).await.completed_by_event),
        Err(_) => (0, 0),
    }
}

/// A bar over the workload's messages, or a hidden one.
fn progress_bar(show: bool, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} done  {msg}",
        )
        .expect("valid template"),
    );
    b
}

/// `fanout redrive` on the simulated account, once the workload is
/// drained: the failed executions listed (paced as on AWS) and a redrive
/// request for each put on the bulk queue, while the controller runs.
async fn redrive_phase(shared: &Shared) {
    let sc = shared.at_now().scenario().clone();
    let b = backends(shared, &sc);
    let opts = crate::redrive::RedriveOptions {
        list: crate::redrive::ListOptions {
            since_s: f64::NEG_INFINITY,
            pages_per_s: 2,
            describes_per_s: 5,
        },
        now_s: shared.now_s(),
        dry_run: false,
        requeue: false,
    };
    let bulk = &b.sources[1].queue;
    if let Err(e) = crate::redrive::redrive(&b.executions, bulk, STATE_MACHINE_ARN, opts).await {
        tracing::warn!(error = %e, "simulated fanout redrive failed");
    }
}

/// Tick the world each virtual second until it is finished, `until` is
/// reached (Crash) or the time limit. The first time it is finished with
/// `redrive` set, the redrive phase runs and the watch goes on.
async fn watch_world(
    shared: &Shared,
    bar: &ProgressBar,
    until: Option<f64>,
    limit: f64,
    redrive: &std::cell::Cell<bool>,
) -> Until {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = shared.now_s();
        let finished = {
            let mut w = shared.at_now();
            w.record_depth();
            if (now as u64).is_multiple_of(5) {
                let done = w.origins.iter().filter(|o| o.deleted || o.in_dlq).count() as u64;
                bar.set_position(done);
                bar.set_message(format!(
                    "t={:.0}s running={} lambdas={} backlog={}",
                    now,
                    w.running_executions(),
                    w.pipeline_concurrency(),
                    w.backlog()
                ));
            }
            w.finished()
        };
        if finished {
            if redrive.replace(false) {
                redrive_phase(shared).await;
                continue;
            }
            return Until::Finished;
        }
        if now >= limit {
            return Until::TimeLimit;
        }
        if until.is_some_and(|u| now >= u) {
            return Until::Crash;
        }
    }
}
