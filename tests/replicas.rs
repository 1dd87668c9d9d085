//! Two controllers that start together (a service scaled to two, a deploy
//! with minimumHealthyPercent 0): with a `[coordination]` table they split
//! the ceiling and Lambda's scaling through conditional writes, so the
//! pipeline stays under one ceiling from the first second; without one,
//! both fill the same room (the failure this guards against is shown too),
//! though the reconcile's sharing rule splits what room it sees.

use std::time::Duration;

use fanout::config::{Config, Policy};
use fanout::controller::Controller;
use fanout::sim::driver::backends;
use fanout::sim::ports::Shared;
use fanout::sim::scenario::Fault;
use fanout::sim::world::World;
use fanout::sim::{Report, Scenario, SimOptions};
use tokio::sync::watch;

/// `two-replicas` at a tenth, its second controller at `at_secs`.
fn run(at_secs: f64, coordinated: bool, seed: u64) -> Report {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios/two-replicas.toml");
    let mut sc = Scenario::load(&path).expect("shipped scenario parses");
    sc.workload.bulk /= 10;
    sc.ceiling /= 10;
    sc.lambda.account_limit /= 10;
    sc.faults = vec![Fault::Replica { at_secs }];
    let mut config = Config::default();
    config.controller.ceiling = sc.ceiling;
    config.controller.account_limit = Some(sc.lambda.account_limit);
    if coordinated {
        config.coordination.table = Some("fanout-claims".into());
    }
    fanout::sim::run(SimOptions {
        seed,
        scenario: sc,
        config,
        policy: Policy::Adaptive,
        progress: false,
    })
    .expect("simulation runs")
}

#[test]
fn controllers_that_start_together_stay_under_one_ceiling_with_a_claim_table() {
    for (at, seed) in [(0.0, 1), (0.5, 2), (2.0, 3), (5.0, 4)] {
        let r = run(at, true, seed);
        eprintln!(
            "second at {at} s: peak {}/{} over {} s, throttles {}, utilization {:.3}",
            r.peak_concurrency,
            r.ceiling,
            r.seconds_over_ceiling,
            r.lambda_throttles,
            r.utilization
        );
        assert_eq!((r.lost, r.duplicates), (0, 0), "{at}: {r:?}");
        assert_eq!(r.controller_lives, 2, "{at}: both controllers ran");
        assert!(r.peak_concurrency <= r.ceiling, "{at}: {r:?}");
        assert_eq!(r.seconds_over_ceiling, 0, "{at}: {r:?}");
        assert_eq!(
            (r.lambda_throttles, r.executions_failed),
            (0, 0),
            "{at}: {r:?}"
        );
        assert!(r.utilization > 0.6, "{at}: {r:?}");
    }
}

/// The same start without a table: each controller ramps at Lambda's whole
/// scaling rate and fills the room alone until a reconcile shows it the
/// other's executions, and Lambda throttles. If this ever runs clean, the
/// test above no longer shows what the table buys.
#[test]
fn without_a_claim_table_two_controllers_started_together_overshoot() {
    let r = run(0.5, false, 2);
    eprintln!(
        "uncoordinated: peak {}/{} over {} s, throttles {}",
        r.peak_concurrency, r.ceiling, r.seconds_over_ceiling, r.lambda_throttles
    );
    assert!(
        r.lambda_throttles > 0 || r.peak_concurrency > r.ceiling,
        "{r:?}"
    );
}

/// Without a table the reconcile's rule shares the free room: once a pass
/// lists executions another controller started, each takes only its share
/// of the room, `ours / (ours + foreign)`. Both controllers must be seen
/// taking a part, not the whole, while both run.
#[tokio::test(start_paused = true)]
async fn without_a_table_each_controller_takes_its_share_of_the_room() {
    let sc = Scenario::parse(
        r#"
name = "two"
ceiling = 300
[workload]
bulk = 8000
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
"#,
        "two",
    )
    .unwrap();
    let world = Shared::new(World::new(&sc, 6));
    let mut config = Config::default();
    config.controller.ceiling = sc.ceiling;
    let start = |seed| {
        Controller::new(
            config.clone(),
            Policy::Adaptive,
            backends(&world, &sc),
            seed,
        )
        .unwrap()
    };
    let (first, second) = (start(6), start(7));
    let (a, b) = (first.subscribe(), second.subscribe());
    let (tx, rx) = watch::channel(false);
    let later = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        second.run(rx.clone()).await
    };
    let script = async {
        let (mut alone, mut shares) = (Vec::new(), (Vec::new(), Vec::new()));
        for t in 0..300 {
            let (x, y) = (*a.borrow(), *b.borrow());
            if t < 5 {
                alone.extend(x.room_share);
            }
            shares.0.extend(x.room_share);
            shares.1.extend(y.room_share);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tx.send_replace(true);
        (alone, shares)
    };
    let (_, _, (alone, (ours, theirs))) = tokio::join!(first.run(rx.clone()), later, script);
    eprintln!(
        "seconds sharing: first {}, second {}",
        ours.len(),
        theirs.len()
    );
    assert!(alone.is_empty(), "alone, it shared: {alone:?}");
    for (who, s) in [("first", &ours), ("second", &theirs)] {
        assert!(s.len() >= 30, "{who} shared the room for {} s", s.len());
        assert!(s.iter().all(|&f| (0.1..1.0).contains(&f)), "{who}: {s:?}");
    }
}
