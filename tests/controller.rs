//! The controller against the simulated account, driven step by step with
//! the tokio clock paused.

use std::time::Duration;

use fanout::config::{Config, Policy};
use fanout::controller::Controller;
use fanout::sim::driver::backends;
use fanout::sim::ports::Shared;
use fanout::sim::world::World;
use fanout::sim::{Scenario, SimOptions};
use tokio::sync::watch;

fn scenario(extra: &str) -> Scenario {
    let text = format!(
        r#"
name = "t"
ceiling = 300
[lambda]
account_limit = 400
[[workflow]]
task = "prepare"
median_secs = 10.0
[[workflow]]
map_items = 4
max_concurrency = 3
[[workflow.iteration]]
task = "predict"
median_secs = 10.0
[[workflow]]
task = "publish"
median_secs = 4.0
{extra}
"#
    );
    Scenario::parse(&text, "t").unwrap()
}

fn config(ceiling: u32) -> Config {
    let mut c = Config::default();
    c.controller.ceiling = ceiling;
    c
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_back_what_is_in_hand_within_the_deadline() {
    let sc = scenario("[workload]\nbulk = 5000\n");
    let shared = Shared::new(World::new(&sc, 1));
    let cfg = config(300);
    let deadline = Duration::from_secs(cfg.controller.shutdown_deadline_secs);
    let ctl = Controller::new(cfg, Policy::Adaptive, backends(&shared, &sc), 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let stopped_at = async {
        tokio::time::sleep(Duration::from_secs(120)).await;
        tx.send_replace(true);
        tokio::time::Instant::now()
    };
    let (summary, asked_at) = tokio::join!(ctl.run(rx), stopped_at);
    let took = asked_at.elapsed();
    assert!(took <= deadline, "shutdown took {took:?}");
    assert!(summary.started > 100, "{summary:?}");
    let w = shared.at_now();
    assert_eq!(
        w.in_hand(),
        0,
        "every message in hand was deleted or handed back"
    );
    assert_eq!(w.stats.deleted_without_start, 0);
    let done = w.origins.iter().filter(|o| o.deleted).count() as u64;
    assert_eq!(done, summary.deleted, "deleted exactly the started ones");
    assert!(w.origins.iter().all(|o| o.deleted == (o.executions > 0)));
}

/// The refresh's executions live ten minutes: a slot frees every ~2 s,
/// so a priority update waits that long for one unless it is kept free.
#[test]
fn the_priority_reserve_starts_updates_at_once_when_slots_free_slowly() {
    let run = |reserve: Option<f64>| {
        let mut cfg = config(300);
        if let Some(r) = reserve {
            cfg.controller.priority_reserve_fraction = r;
        }
        let sc = Scenario::parse(
            "name = \"t\"\nceiling = 300\n[lambda]\naccount_limit = 400\n\
             [[workflow]]\ntask = \"score\"\nmedian_secs = 600.0\n\
             [workload]\nbulk = 1500\n\
             priority_arrivals = { start_secs = 900.0, every_secs = 13.0, count = 60 }\n",
            "t",
        )
        .unwrap();
        let r = fanout::sim::run(SimOptions {
            scenario: sc,
            config: cfg,
            policy: Policy::Adaptive,
            seed: 5,
            progress: false,
        })
        .unwrap();
        assert_eq!((r.lost, r.duplicates), (0, 0), "{r:?}");
        r.priority_p99_s.expect("priority messages started")
    };
    let (with, without) = (run(None), run(Some(0.0)));
    // Without the reserve the same updates wait for a slot (~15 s at p99):
    // the workload is one where the reserve is what makes them quick.
    assert!(without > 10.0, "p99 without the reserve {without} s");
    assert!(
        with <= 2.0,
        "p99 start latency with the default reserve {with} s (without: {without} s)"
    );
}

#[test]
fn priority_updates_start_within_seconds_during_a_refresh() {
    let sc = scenario(
        "[workload]\nbulk = 20000\npriority_arrivals = { start_secs = 400.0, every_secs = 7.0, count = 40 }\n",
    );
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: config(300),
        policy: Policy::Adaptive,
        seed: 5,
        progress: false,
    })
    .unwrap();
    assert_eq!(r.lost, 0);
    let p99 = r.priority_p99_s.expect("priority messages started");
    assert!(
        p99 <= 2.0,
        "p99 start latency of priority updates {p99} s: {r:?}"
    );
    // A ceiling of 300 is ~150 executions: the noise margin keeps ~8 % free.
    assert!(
        r.utilization > 0.6,
        "the refresh kept the pipeline busy meanwhile: {r:?}"
    );
}

#[test]
fn unstartable_bodies_go_to_the_dlq_with_their_reason_and_the_rest_flows() {
    let sc = scenario("[workload]\nbulk = 500\nnot_json = 2\noversize = 1\nmissing_field = 3\n");
    let mut cfg = config(300);
    cfg.naming.template = "co-{company_id}-{hash}".into();
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: cfg,
        policy: Policy::Adaptive,
        seed: 2,
        progress: false,
    })
    .unwrap();
    assert_eq!(r.started, 500);
    assert_eq!(r.dlq, 6);
    assert_eq!(r.lost, 0);
    assert_eq!(r.dead_letter_reasons.get("not_json"), Some(&2));
    assert_eq!(r.dead_letter_reasons.get("too_large"), Some(&1));
    assert_eq!(r.dead_letter_reasons.get("missing_field"), Some(&3));
    assert_eq!(r.max_receive_count, 1, "bad bodies are not retried: {r:?}");
}

#[test]
fn a_crash_mid_run_loses_nothing_and_starts_nothing_twice() {
    let sc = scenario(
        "[workload]\nbulk = 3000\n[[faults]]\nkind = \"crash\"\nat_secs = 200.0\nrestart_after_secs = 45.0\n",
    );
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: config(300),
        policy: Policy::Adaptive,
        seed: 9,
        progress: false,
    })
    .unwrap();
    assert_eq!(r.controller_lives, 2);
    assert_eq!((r.lost, r.duplicates, r.dlq), (0, 0, 0), "{r:?}");
    assert!(r.peak_concurrency <= 300, "{r:?}");
}

#[test]
fn bulk_work_starts_while_the_ramp_is_below_the_priority_reserve() {
    // The reserve kept for priority messages (30 executions here) is
    // larger than what a slow ramp admits at first (10): bulk work must
    // still start, since the reserve only matters at the ceiling.
    let sc = scenario("[workload]\nbulk = 500\n");
    let mut cfg = config(300);
    cfg.controller.priority_reserve_fraction = 0.3;
    cfg.controller.ramp_initial = 30.0;
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: cfg,
        policy: Policy::Adaptive,
        seed: 3,
        progress: false,
    })
    .unwrap();
    assert_eq!((r.started, r.lost, r.duplicates), (500, 0, 0), "{r:?}");
}

#[test]
fn the_learned_width_is_kept_with_the_state_machine_for_the_next_start() {
    let sc = scenario(
        "[workload]\nbulk = 6000\n[[faults]]\nkind = \"crash\"\nat_secs = 1200.0\nrestart_after_secs = 30.0\n",
    );
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: config(300),
        policy: Policy::Adaptive,
        seed: 4,
        progress: false,
    })
    .unwrap();
    assert_eq!((r.lost, r.duplicates), (0, 0), "{r:?}");
    assert_eq!(
        r.api_calls_by_operation.get("sfn.ListTagsForResource"),
        Some(&2),
        "each life reads what the last one learned: {r:?}"
    );
    let k = r
        .remembered_lambdas_per_execution
        .expect("a stable minute was learned and kept");
    assert!((1.0..3.0).contains(&k), "{k}");

    // `estimator.remember = false`: the same run leaves nothing.
    let mut cfg = config(300);
    cfg.estimator.remember = false;
    let r = fanout::sim::run(SimOptions {
        scenario: scenario(
            "[workload]\nbulk = 6000\n[[faults]]\nkind = \"crash\"\nat_secs = 1200.0\nrestart_after_secs = 30.0\n",
        ),
        config: cfg,
        policy: Policy::Adaptive,
        seed: 4,
        progress: false,
    })
    .unwrap();
    assert_eq!(r.remembered_lambdas_per_execution, None, "{r:?}");
    for op in ["sfn.ListTagsForResource", "sfn.TagResource"] {
        assert_eq!(r.api_calls_by_operation.get(op), None, "{op}: {r:?}");
    }
}

/// k̂ each second of a controller's first `secs` on `next-refresh` (full
/// size: at a tenth the noise margin lifts a ramp minute over the maximum),
/// whose state machine carries `remembered` as the width a previous life
/// left; and the world after.
async fn k_from_the_start(remembered: f64, remember: bool, secs: u64) -> (Vec<f64>, Shared) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/next-refresh.toml");
    let mut sc = Scenario::load(&path).unwrap();
    sc.workload.bulk = 30_000;
    sc.sfn.remembered_lambdas_per_execution = Some(remembered);
    let shared = Shared::new(World::new(&sc, 1));
    let mut cfg = config(sc.ceiling);
    cfg.estimator.remember = remember;
    let ctl = Controller::new(cfg, Policy::Adaptive, backends(&shared, &sc), 1).unwrap();
    let snap = ctl.subscribe();
    let (tx, rx) = watch::channel(false);
    let script = async {
        let mut k = Vec::new();
        for _ in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let s = *snap.borrow();
            if s.ready {
                k.push(s.k);
            }
        }
        tx.send_replace(true);
        k
    };
    let (_, k) = tokio::join!(ctl.run(rx), script);
    (k, shared)
}

/// The next life starts from the width the last one left with the state
/// machine: at its first usable CloudWatch minute, minutes before a cold
/// controller could learn anything (it needs a stable minute a lifetime
/// after the ramp). 2.5 is above what this ramp's minutes show (~2.2), so
/// it is the remembered value itself that k̂ takes, not a measurement.
// k̂ is compared exactly: the maximum and the remembered value are
// applied as they are, not computed.
#[allow(clippy::float_cmp)]
#[tokio::test(start_paused = true)]
async fn the_next_life_starts_from_the_remembered_width() {
    let (k, shared) = k_from_the_start(2.5, true, 240).await;
    assert_eq!(k[0], 3.0, "the first ramp is as careful as a cold start");
    let first_move = k.iter().position(|&x| x != 3.0);
    let moved_to = first_move.map(|i| k[i]);
    assert_eq!(moved_to, Some(2.5), "k̂ over the first 240 s: {k:?}");
    eprintln!("remembered 2.5 applied after {first_move:?} s");
    let calls = shared.at_now().stats.api_calls.clone();
    assert_eq!(calls.get("sfn.ListTagsForResource"), Some(&1), "{calls:?}");

    // Off: nothing read, nothing written, and the same minutes leave k̂ at
    // the maximum.
    let (k, shared) = k_from_the_start(2.5, false, 240).await;
    assert!(k.iter().all(|&x| x == 3.0), "{k:?}");
    let w = shared.at_now();
    for op in ["sfn.ListTagsForResource", "sfn.TagResource"] {
        assert_eq!(w.stats.api_calls.get(op), None, "{op}");
    }
    assert_eq!(w.remembered(), Some(2.5), "the tag is left as it was");
}

/// Config hot reload on a running controller: a lower ceiling brings the
/// concurrency under it (nothing is cancelled, admission waits for
/// executions to finish), a higher one lets it grow again; nothing is lost
/// or started twice, and no loop restarts.
#[tokio::test(start_paused = true)]
async fn a_reloaded_ceiling_is_followed_down_and_up_without_loss() {
    let sc = scenario("[workload]\nbulk = 8000\n");
    let shared = Shared::new(World::new(&sc, 3));
    let ctl = Controller::new(config(300), Policy::Adaptive, backends(&shared, &sc), 3).unwrap();
    let (tx, rx) = watch::channel(false);
    let peak = |from: usize, to: usize| -> u32 {
        let w = shared.at_now();
        w.stats.conc_peak[from..to]
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    };
    let script = async {
        tokio::time::sleep(Duration::from_secs(400)).await;
        let before = peak(300, 400);
        let changes = ctl.reload(config(120), "test").unwrap();
        let shown: Vec<String> = changes
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        assert_eq!(shown, ["controller.ceiling: 300 -> 120"]);
        assert_eq!(ctl.config().borrow().controller.ceiling, 120);
        tokio::time::sleep(Duration::from_secs(400)).await;
        // Executions started before the reload finish within ~2 lifetimes;
        // the refills they leave march as cohorts for one more (peak 126
        // at 550-560 s: k̂'s noise margin was learned at the larger count,
        // see ARCHITECTURE "Known gaps").
        let settled = peak(600, 800);
        // A refused reload changes nothing.
        let mut bad = config(500);
        bad.naming.template = "{hash}".into();
        assert!(ctl.reload(bad, "test").is_err());
        assert_eq!(ctl.config().borrow().controller.ceiling, 120);
        ctl.reload(config(300), "test").unwrap();
        tokio::time::sleep(Duration::from_secs(300)).await;
        let raised = peak(950, 1100);
        tx.send_replace(true);
        (before, settled, raised)
    };
    let (summary, (before, settled, raised)) = tokio::join!(ctl.run(rx), script);
    eprintln!(
        "peak concurrency: {before} at 300, {settled} after lowering to 120, {raised} after raising to 300"
    );
    assert!(before > 200, "the pipeline filled up first: {before}");
    assert!(settled <= 120, "{settled} over the lowered ceiling of 120");
    assert!(
        settled > 60,
        "it kept working under the new ceiling: {settled}"
    );
    // Well above the lowered ceiling (the exact level varies from run to
    // run: the ledger's hash sets iterate in a random order).
    assert!(
        raised > 150 && raised <= 300,
        "{raised} after raising to 300"
    );
    assert!(summary.started > 2000, "{summary:?}");

    let w = shared.at_now();
    assert_eq!(w.in_hand(), 0, "everything in hand was settled");
    assert_eq!(w.stats.deleted_without_start, 0, "lost");
    let duplicates: u32 = w
        .origins
        .iter()
        .map(|o| o.executions.saturating_sub(1))
        .sum();
    assert_eq!(duplicates, 0);
    assert!(w.origins.iter().all(|o| o.deleted == (o.executions > 0)));
}

#[test]
fn a_second_body_under_a_used_name_goes_to_the_dlq_as_a_collision() {
    // Under a {company_id} template a second update of one company gets
    // the first one's name: Step Functions answers ExecutionAlreadyExists,
    // which must not read as "already started" when the input differs.
    let sc = scenario("[workload]\nbulk = 300\nsame_company = 4\n");
    let mut cfg = config(300);
    cfg.naming.template = "{company_id}".into();
    let r = fanout::sim::run(SimOptions {
        scenario: sc,
        config: cfg,
        policy: Policy::Adaptive,
        seed: 3,
        progress: false,
    })
    .unwrap();
    assert_eq!(r.started, 300, "every company ran once: {r:?}");
    assert_eq!(
        r.dead_letter_reasons.get("name_collision"),
        Some(&4),
        "{r:?}"
    );
    assert_eq!((r.lost, r.dlq, r.deleted_without_start), (0, 4, 0), "{r:?}");
}

#[test]
fn input_step_functions_refuses_goes_to_the_dlq_at_once_without_a_pause() {
    // The controller's own check passes 200,000-byte bodies; this account
    // refuses them (InvalidExecutionInput): theirs is the fault, not the
    // service's, so the rest must not wait a minute per refusal.
    let run = |large: u64| {
        let sc = scenario(&format!(
            "[workload]\nbulk = 500\nlarge = {large}\n[sfn]\nmax_input_bytes = 100000\n"
        ));
        fanout::sim::run(SimOptions {
            scenario: sc,
            config: config(300),
            policy: Policy::Adaptive,
            seed: 4,
            progress: false,
        })
        .unwrap()
    };
    let (clean, r) = (run(0), run(3));
    assert_eq!(r.started, 500, "{r:?}");
    assert_eq!(
        r.dead_letter_reasons.get("invalid_execution_input"),
        Some(&3),
        "{r:?}"
    );
    assert_eq!((r.lost, r.dlq), (0, 3), "{r:?}");
    assert_eq!(
        r.max_receive_count, 1,
        "refused bodies are not retried: {r:?}"
    );
    assert!(
        r.makespan_s <= clean.makespan_s + 10.0,
        "admission paused: {} s against {} s",
        r.makespan_s,
        clean.makespan_s
    );
}

/// `/metrics` of a controller draining a backlog: the expected finish per
/// queue and the rate it assumes, with real values once lifetimes are
/// known (the tasks take ~40 s, the backlog ~6 min at 300 Lambdas).
#[tokio::test(start_paused = true)]
async fn metrics_show_the_backlog_eta_while_it_drains() {
    use fanout::controller::Backends;
    use fanout::telemetry::Telemetry;
    let sc = scenario("[workload]\nbulk = 5000\n");
    let shared = Shared::new(World::new(&sc, 1));
    let b = backends(&shared, &sc);
    let telemetry = Telemetry::new(300);
    let b = Backends {
        sources: b.sources,
        completions: b.completions,
        executions: b.executions,
        metrics: b.metrics,
        sink: telemetry.clone(),
        claims: None,
    };
    let ctl = Controller::new(config(300), Policy::Adaptive, b, 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let stop = async {
        tokio::time::sleep(Duration::from_secs(240)).await;
        tx.send_replace(true);
    };
    tokio::join!(ctl.run(rx), stop);
    let text = telemetry.render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    let rate = value("fanout_completions_per_second ");
    let bulk = value("fanout_backlog_eta_seconds{queue=\"bulk\"} ");
    let priority = value("fanout_backlog_eta_seconds{queue=\"priority\"} ");
    assert!(rate > 1.0, "{text}");
    assert!(bulk > 30.0 && bulk < 3_600.0, "{text}");
    assert!(
        priority.abs() < f64::EPSILON,
        "nothing on the priority queue: {text}"
    );
}
