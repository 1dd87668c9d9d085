//! Failed executions redriven through the controller, in the simulator:
//! `config/scenarios/redrive.toml` (Lambda errors above the workflow's one
//! retry for the first 10 minutes) drains, then the failed executions are
//! listed and a redrive request is put on the bulk queue for each by
//! `fanout::redrive::redrive`, the code `fanout redrive` runs; the
//! controller serves them with RedriveExecution under its ceiling.

use std::time::Duration;

use fanout::config::{Config, Policy};
use fanout::control::redrive::request_body;
use fanout::controller::Controller;
use fanout::ports::{OutgoingMessage, WorkQueue};
use fanout::redrive::{ListOptions, RedriveOptions, redrive};
use fanout::sim::driver::backends;
use fanout::sim::ports::Shared;
use fanout::sim::world::{STATE_MACHINE_ARN, World, execution_arn};
use fanout::sim::{Scenario, SimOptions};
use tokio::sync::watch;

fn scenario() -> Scenario {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/redrive.toml");
    Scenario::load(&path).expect("config/scenarios/redrive.toml parses")
}

fn config(sc: &Scenario) -> Config {
    let mut c = Config::default();
    c.controller.ceiling = sc.ceiling;
    c.controller.account_limit = Some(sc.lambda.account_limit.max(sc.ceiling));
    c.aws.state_machine_arn = STATE_MACHINE_ARN.to_string();
    c
}

/// The shipped scenario: every failure redriven to success, the peak
/// under the ceiling, nothing started twice, nothing lost.
#[test]
fn failed_executions_are_redriven_to_success_under_the_ceiling() {
    let sc = scenario();
    let r = fanout::sim::run(SimOptions {
        config: config(&sc),
        scenario: sc,
        policy: Policy::Adaptive,
        seed: 1,
        progress: false,
    })
    .expect("simulation runs");
    assert!(
        r.executions_failed >= 500,
        "too few failures to test: {r:?}"
    );
    assert_eq!(
        r.redrive_requests, r.executions_failed,
        "one request per failed execution: {r:?}"
    );
    assert_eq!(r.executions_redriven, r.redrive_requests, "{r:?}");
    assert_eq!(
        r.failed_at_end, 0,
        "every failure redriven to success: {r:?}"
    );
    assert!(
        r.peak_concurrency <= r.ceiling,
        "peak {} over the ceiling {}",
        r.peak_concurrency,
        r.ceiling
    );
    assert_eq!(r.lambda_throttles, 0, "{r:?}");
    assert_eq!((r.lost, r.duplicates, r.dlq), (0, 0, 0), "{r:?}");
    assert_eq!(r.deleted_without_start, 0, "{r:?}");
}

/// Wait (virtual time) until the world is finished; false after `limit`.
async fn until_finished(shared: &Shared, limit: f64) -> bool {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if shared.at_now().finished() {
            return true;
        }
        if shared.now_s() > limit {
            return false;
        }
    }
}

/// A second request for an execution already redriven is done, not a
/// second run; a request for an execution that does not exist goes to the
/// DLQ as not_redrivable.
#[test]
fn a_request_twice_redrives_once_and_an_unknown_execution_is_dead_lettered() {
    let mut sc = scenario();
    sc.workload.bulk = 1500;
    sc.sfn.redrive_after_drain = false;
    // The errors end before this smaller workload drains.
    sc.lambda.errors_until_secs = Some(240.0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let shared = Shared::new(World::new(&sc, 1));
        let ctl = Controller::new(config(&sc), Policy::Adaptive, backends(&shared, &sc), 1)
            .expect("controller");
        let (tx, rx) = watch::channel(false);
        let drive = async {
            assert!(until_finished(&shared, 14_400.0).await, "drained");
            let failed = shared.at_now().failed_now();
            let b = backends(&shared, &sc);
            let opts = RedriveOptions {
                list: ListOptions {
                    since_s: f64::NEG_INFINITY,
                    pages_per_s: 2,
                    describes_per_s: 5,
                },
                now_s: shared.now_s(),
                dry_run: false,
                requeue: false,
            };
            let bulk = &b.sources[1].queue;
            let summary = redrive(&b.executions, bulk, STATE_MACHINE_ARN, opts)
                .await
                .expect("listed and sent");
            // The first request again, and one for nobody.
            let extra = [
                request_body(&summary.requests[0]),
                request_body(&execution_arn("no-such-execution")),
            ]
            .map(|body| OutgoingMessage {
                body,
                ..OutgoingMessage::default()
            });
            assert!(bulk.send_batch(&extra).await.unwrap().is_empty());
            assert!(until_finished(&shared, 28_800.0).await, "requests served");
            tx.send_replace(true);
            (failed, summary)
        };
        let (run, (failed, summary)) = tokio::join!(ctl.run(rx), drive);
        assert!(failed >= 50, "too few failures to test: {failed}");
        assert_eq!(summary.requests.len(), failed, "{summary:?}");
        assert_eq!(summary.sent, failed);
        let w = shared.at_now();
        assert_eq!(
            w.stats.executions_redriven, failed as u64,
            "the second request for one execution redrove it again"
        );
        assert_eq!(run.redriven, failed as u64);
        assert_eq!(w.failed_now(), 0);
        assert_eq!(
            w.stats.dlq_reasons.get("not_redrivable"),
            Some(&1),
            "{:?}",
            w.stats.dlq_reasons
        );
        assert!(
            w.origins.iter().all(|o| o.executions == 1),
            "a message started twice"
        );
        assert!(w.stats.peak <= sc.ceiling, "peak {}", w.stats.peak);
    });
}
