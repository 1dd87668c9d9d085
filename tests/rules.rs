//! Single controller rules pinned against the scripted fake of the ports,
//! with the tokio clock paused: delete only after start, a permanent error
//! pauses admission, priority first, health during long retries.

mod support;

use std::time::Duration;

use fanout::config::Config;
use fanout::control::Policy;
use fanout::controller::Controller;
use fanout::telemetry::Telemetry;
use support::{Call, Fake, Logged, Reply, id_of, run_for};
use tokio::sync::watch;

fn config() -> Config {
    let mut c = Config::default();
    c.controller.ceiling = 3000;
    c
}

/// Index and time of every StartExecution of `name`.
fn starts<'a>(log: &'a [Logged], name: &str) -> Vec<(usize, &'a Logged, Reply)> {
    log.iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.call {
            Call::Start { name: n, reply } if n == name => Some((i, l, *reply)),
            _ => None,
        })
        .collect()
}

/// Indexes of the DeleteMessageBatch calls naming a receipt of `id`.
fn deletes_of(log: &[Logged], id: &str) -> Vec<usize> {
    log.iter()
        .enumerate()
        .filter(|(_, l)| {
            matches!(&l.call, Call::DeleteBatch { receipts, .. }
                if receipts.iter().any(|r| id_of(r) == id))
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_message_is_deleted_only_after_its_start_succeeded() {
    let fake = Fake::new();
    fake.fill("work", "m", 1);
    fake.script("m-0", &[Reply::Throttled, Reply::Throttled, Reply::Started]);
    let summary = run_for(&fake, config(), &["work"], 30).await;
    let log = fake.log();
    let tries = starts(&log, "m-0");
    let replies: Vec<Reply> = tries.iter().map(|t| t.2).collect();
    assert_eq!(
        replies,
        [Reply::Throttled, Reply::Throttled, Reply::Started],
        "{log:#?}"
    );
    let started_at = tries[2].0;
    let deletes = deletes_of(&log, "m-0");
    assert!(!deletes.is_empty(), "deleted once started: {log:#?}");
    assert!(
        deletes.iter().all(|&d| d > started_at),
        "a DeleteMessageBatch came before the start succeeded: {log:#?}"
    );
    assert_eq!((summary.started, summary.deleted), (1, 1));
    assert_eq!(fake.left("work"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_never_succeeds_is_released_never_deleted() {
    let fake = Fake::new();
    fake.fill("work", "m", 1);
    fake.default_reply(Reply::Throttled);
    let mut cfg = config();
    cfg.retry.give_up_secs = 5;
    let summary = run_for(&fake, cfg, &["work"], 60).await;
    let log = fake.log();
    assert!(starts(&log, "m-0").len() > 2, "{log:#?}");
    assert!(
        deletes_of(&log, "m-0").is_empty(),
        "an unstarted message was deleted: {log:#?}"
    );
    let released = log.iter().any(|l| {
        matches!(&l.call, Call::ChangeVisibility { receipts, visibility, .. }
            if visibility.is_zero() && receipts.iter().any(|r| id_of(r) == "m-0"))
    });
    assert!(released, "handed back after give_up_secs: {log:#?}");
    assert!(summary.released >= 1, "{summary:?}");
    assert_eq!(fake.left("work"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_start_error_pauses_admission_for_a_minute() {
    let fake = Fake::new();
    fake.fill("priority", "p", 30);
    fake.fill("bulk", "b", 30);
    fake.default_reply(Reply::Permanent);
    run_for(&fake, config(), &["priority", "bulk"], 150).await;
    let log = fake.log();
    let (first, refused) = log
        .iter()
        .enumerate()
        .find(|(_, l)| {
            matches!(
                l.call,
                Call::Start {
                    reply: Reply::Permanent,
                    ..
                }
            )
        })
        .expect("a start was refused");
    let pause = Duration::from_secs(60);
    for l in &log[first..] {
        if let Call::Receive { queue, .. } = &l.call {
            assert!(
                l.at >= refused.at + pause,
                "{queue} received {:?} after the refusal at {:?}",
                l.at,
                refused.at
            );
        }
    }
    assert!(
        log[first..]
            .iter()
            .any(|l| matches!(l.call, Call::Receive { .. })),
        "admission resumes after the pause: {log:#?}"
    );
    let Call::Start { name, .. } = &refused.call else {
        unreachable!()
    };
    let handed_back = log[first..].iter().any(|l| {
        matches!(&l.call, Call::ChangeVisibility { receipts, visibility, .. }
            if *visibility == pause && receipts.iter().any(|r| id_of(r) == name))
    });
    assert!(handed_back, "{name} handed back for 60 s: {log:#?}");
    assert!(deletes_of(&log, name).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_about_the_message_dead_letters_it_and_the_rest_flows() {
    let fake = Fake::new();
    fake.fill("work", "m", 40);
    fake.script("m-3", &[Reply::InvalidName]);
    let summary = run_for(&fake, config(), &["work"], 20).await;
    let log = fake.log();
    assert_eq!(
        starts(&log, "m-3").len(),
        1,
        "refused once, not retried: {log:#?}"
    );
    let moved = log.iter().any(|l| {
        matches!(&l.call, Call::SendBatch { queue, count } if queue == "work-dlq" && *count == 1)
    });
    assert!(moved, "m-3 moved to the DLQ: {log:#?}");
    assert_eq!(deletes_of(&log, "m-3").len(), 1, "deleted once moved");
    assert_eq!(
        (summary.started, summary.dead_lettered, summary.requeued),
        (39, 1, 0),
        "{summary:?}"
    );
    assert_eq!(fake.left("work"), 0, "admission did not pause for it");
}

#[tokio::test(start_paused = true)]
async fn the_priority_queue_is_served_first_while_it_has_messages() {
    let fake = Fake::new();
    fake.fill("priority", "p", 200);
    fake.fill("bulk", "b", 200);
    let mut cfg = config();
    // Two receives at once: the priority queue fills them while the step
    // could take more, and bulk is still not asked.
    cfg.controller.max_receives_in_flight = 2;
    run_for(&fake, cfg, &["priority", "bulk"], 120).await;
    let log = fake.log();
    let receives: Vec<(&str, usize, usize)> = log
        .iter()
        .filter_map(|l| match &l.call {
            Call::Receive { queue, max, got } => Some((queue.as_str(), *max, got.len())),
            _ => None,
        })
        .collect();
    let first_short = receives
        .iter()
        .position(|&(q, max, got)| q == "priority" && got < max)
        .expect("the priority queue was drained");
    let first_bulk = receives
        .iter()
        .position(|&(q, _, _)| q == "bulk")
        .expect("bulk work started");
    assert!(
        first_bulk > first_short,
        "bulk was received from while the priority queue still filled every request: {receives:?}"
    );
    let from_priority: usize = receives[..first_short].iter().map(|&(_, _, got)| got).sum();
    assert!(from_priority > 150, "{receives:?}");
    assert_eq!((fake.left("priority"), fake.left("bulk")), (0, 0));
}

const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:company-pipeline";
const DETAIL_TYPE: &str = "Step Functions Execution Status Change";

/// An EventBridge status-change event of execution `name`, SUCCEEDED.
fn event(source: &str, detail_type: &str, arn: Option<&str>, name: &str) -> String {
    let arn = arn.map_or(String::new(), |a| format!(r#""stateMachineArn":"{a}","#));
    format!(
        r#"{{"source":"{source}","detail-type":"{detail_type}","detail":{{{arn}"name":"{name}","status":"SUCCEEDED"}}}}"#
    )
}

#[tokio::test(start_paused = true)]
async fn only_this_state_machines_completion_events_free_capacity() {
    let fake = Fake::new();
    fake.fill("work", "m", 2);
    let mut cfg = config();
    cfg.aws.state_machine_arn = ARN.into();
    // Only the first reconcile: what frees capacity here is the events.
    cfg.controller.reconcile_interval_secs = 3600;
    let mut b = fake.backends(&["work"]);
    b.completions = Some(fake.queue("events"));
    let ctl = Controller::new(cfg, Policy::Adaptive, b, 1).unwrap();
    let snap = ctl.subscribe();
    let (tx, rx) = watch::channel(false);
    let other = ARN.replace("company-pipeline", "someone-else");
    let strays = [
        event("aws.states", DETAIL_TYPE, Some(&other), "m-0"),
        event("my.app", DETAIL_TYPE, Some(ARN), "m-1"),
        event(
            "aws.states",
            "Step Functions State Machine Change",
            Some(ARN),
            "m-0",
        ),
        event("aws.states", DETAIL_TYPE, None, "m-1"),
        "not json".to_string(),
    ];
    let script = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let before = snap.borrow().running;
        for (i, body) in strays.iter().enumerate() {
            fake.put("events", &format!("stray-{i}"), body);
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        let after_strays = snap.borrow().running;
        fake.put(
            "events",
            "genuine",
            &event("aws.states", DETAIL_TYPE, Some(ARN), "m-0"),
        );
        tokio::time::sleep(Duration::from_secs(15)).await;
        let after_genuine = snap.borrow().running;
        tx.send_replace(true);
        (before, after_strays, after_genuine)
    };
    let (_, (before, after_strays, after_genuine)) = tokio::join!(ctl.run(rx), script);
    assert_eq!(before, 2, "both messages started");
    assert_eq!(
        after_strays, 2,
        "events of another state machine, source or kind freed capacity"
    );
    assert_eq!(
        after_genuine, 1,
        "this state machine's event frees its execution"
    );
    assert_eq!(
        fake.left("events"),
        0,
        "every event is deleted, stray or not"
    );
}

/// `/healthz` as `fanout run` serves it (every snapshot the controller
/// publishes copied into a `Telemetry`, looked at each second), sampled
/// every 5 s for `secs` s of a controller draining `work`.
async fn health_over(fake: &Fake, secs: u64) -> Vec<(u64, Result<(), &'static str>)> {
    let ctl = Controller::new(config(), Policy::Adaptive, fake.backends(&["work"]), 1).unwrap();
    let t = Telemetry::new(3000);
    let mut snaps = ctl.subscribe();
    let (_tx, rx) = watch::channel(false);
    let probe = async {
        let mut out = Vec::new();
        for s in 1..=secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if snaps.has_changed().unwrap_or(false) {
                t.set_snapshot(*snaps.borrow_and_update());
            }
            if s % 5 == 0 {
                out.push((s, t.health()));
            }
        }
        out
    };
    // A stuck start never lets `run` return: the probe ends the test.
    tokio::select! {
        _ = ctl.run(rx) => panic!("the controller stopped by itself"),
        out = probe => out,
    }
}

#[tokio::test(start_paused = true)]
async fn a_start_throttled_for_minutes_keeps_the_task_healthy() {
    let fake = Fake::new();
    fake.fill("work", "m", 5);
    fake.default_reply(Reply::Throttled);
    let health = health_over(&fake, 300).await;
    let sick: Vec<_> = health.iter().filter(|(_, h)| h.is_err()).collect();
    assert!(
        sick.is_empty(),
        "unhealthy while every StartExecution answered (throttled): {sick:?}"
    );
    assert!(starts(&fake.log(), "m-0").len() > 20, "still retrying");
}

#[tokio::test(start_paused = true)]
async fn a_start_that_never_answers_turns_the_task_unhealthy() {
    let fake = Fake::new();
    fake.fill("work", "m", 5);
    fake.default_reply(Reply::Hang);
    let health = health_over(&fake, 180).await;
    assert_eq!(health[0].1, Ok(()), "healthy before the stall: {health:?}");
    let first_sick = health.iter().find(|(_, h)| h.is_err()).map(|(s, _)| *s);
    assert!(
        first_sick.is_some_and(|s| s <= 70),
        "still healthy after a minute with nothing answered: {health:?}"
    );
    assert!(health.last().unwrap().1.unwrap_err().starts_with("stalled"));
}
