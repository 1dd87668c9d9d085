//! The shipped scenarios (config/scenarios/*.toml), scaled down tenfold:
//! heavy tails, other load, CloudWatch gaps, a crash, two controllers at
//! once, the legacy burst model, small and large ceilings, varied widths,
//! priority updates. The
//! adaptive policy must stay safe in every one of them.

use fanout::config::{Config, Policy};
use fanout::sim::{Scenario, SimOptions};

fn scaled(path: &std::path::Path) -> Scenario {
    let mut s = Scenario::load(path).expect("shipped scenario parses");
    s.workload.bulk /= 10;
    s.ceiling /= 10;
    s.lambda.account_limit /= 10;
    // The account's legacy burst too: unscaled, a tenth-size account
    // never throttles, and the legacy model would test nothing. (Lambda's
    // per-function scaling, 1,000 per 10 s, is a rate per function, not a
    // share of the account: it stays.)
    s.lambda.legacy_burst /= 10.0;
    s.lambda.legacy_per_minute /= 10.0;
    for r in s.lambda.reserved.values_mut() {
        *r /= 10;
    }
    s.other_load.reserved /= 10;
    s.other_load.base /= 10.0;
    s.other_load.amplitude /= 10.0;
    for step in &mut s.other_load.steps {
        step.add /= 10.0;
    }
    s
}

/// Each scenario's utilization floor at a tenth (measured at seed 1 less
/// about 0.05) and whether Lambda throttles it: only the legacy burst model
/// (an account that grows 50 a minute from 300) and other load's spikes do.
/// A scenario added without its line fails here.
fn expected(name: &str) -> (f64, bool) {
    match name {
        // 92 of 100 at peak: a small pipeline's noise margin (z/√N).
        "ceiling-1k" => (0.57, false),
        "ceiling-50k" | "million" => (0.82, false),
        "cloudwatch-gap"
        | "exchange-227k"
        | "next-refresh"
        | "priority-during-refresh"
        | "two-replicas"
        | "varied-width"
        | "heavy-tail" => (0.78, false),
        "crash-restart" => (0.71, false),
        // 0.237 at seed 1: the ramp's brake holds the pipeline far under
        // an account that grows slower than its slowest ramp (known gap);
        // what is asserted is that nothing fails meanwhile.
        "legacy-burst" => (0.2, true),
        "other-load" => (0.75, true),
        // Redriven executions count at their widest while they run, and
        // the redrive phase after the drain is a small second wave.
        "redrive" => (0.5, false),
        other => panic!("{other}: no expectations in tests/scenarios.rs"),
    }
}

#[test]
fn every_shipped_scenario_runs_safely_at_a_tenth_of_its_size() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 9, "scenarios missing from {}", dir.display());
    for path in paths {
        let sc = scaled(&path);
        let mut config = Config::default();
        config.controller.ceiling = sc.ceiling;
        config.controller.account_limit = Some(sc.lambda.account_limit);
        let name = sc.name.clone();
        let crashes = sc.crash_faults().len() as u32;
        let replicas = u32::from(sc.replica_at().is_some());
        let redrives = sc.sfn.redrive_after_drain;
        let r = fanout::sim::run(SimOptions {
            seed: sc.seed,
            scenario: sc,
            config,
            policy: Policy::Adaptive,
            progress: false,
        })
        .unwrap();
        eprintln!(
            "{name}: utilization {:.3} efficiency {:.3} peak {}/{} throttles {}",
            r.utilization, r.efficiency, r.peak_concurrency, r.ceiling, r.lambda_throttles
        );
        assert_eq!((r.lost, r.duplicates), (0, 0), "{name}: {r:?}");
        assert_eq!(r.deleted_without_start, 0, "{name}: {r:?}");
        // A redrive scenario fails executions on purpose (Lambda errors
        // above the retries) and redrives them: none may stay failed.
        let failed = if redrives {
            r.failed_at_end
        } else {
            r.executions_failed
        };
        assert_eq!(
            failed, 0,
            "{name}: no execution fails for lack of capacity: {r:?}"
        );
        assert!(r.peak_concurrency <= r.ceiling, "{name}: {r:?}");
        assert_eq!(r.controller_lives, crashes + replicas + 1, "{name}");
        assert!(r.max_receive_count <= 1 + crashes, "{name}: {r:?}");
        let (floor, throttled) = expected(&name);
        assert!(
            r.utilization >= floor,
            "{name}: utilization {:.3} under its floor {floor}: {r:?}",
            r.utilization
        );
        assert_eq!(
            r.lambda_throttles > 0,
            throttled,
            "{name}: throttles {}: {r:?}",
            r.lambda_throttles
        );
    }
}

fn report_without_wall(path: &std::path::Path, seed: u64) -> serde_json::Value {
    // Full size: at a tenth, reconciles find too few completions per pass
    // for their order to matter, and the test would not catch it.
    let sc = Scenario::load(path).expect("shipped scenario parses");
    let mut config = Config::default();
    config.controller.ceiling = sc.ceiling;
    config.controller.account_limit = Some(sc.lambda.account_limit);
    let r = fanout::sim::run(SimOptions {
        seed,
        scenario: sc,
        config,
        policy: Policy::Adaptive,
        progress: false,
    })
    .unwrap();
    let mut v = serde_json::to_value(&r).unwrap();
    v.as_object_mut().unwrap().remove("wall_s");
    v
}

/// Same seed, same report: nothing may depend on hash order or on tokio's
/// random `select!` branch order (a crash used to land a step earlier or
/// later from run to run, and reconciles recorded lifetimes in hash order).
#[test]
fn the_same_seed_gives_the_same_report_run_after_run() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios");
    for name in ["crash-restart", "next-refresh"] {
        let path = dir.join(format!("{name}.toml"));
        let first = report_without_wall(&path, 1);
        let again = report_without_wall(&path, 1);
        assert_eq!(first, again, "{name}: two runs of seed 1 differ");
    }
}

/// The backlog's expected finish, published every 30 s, against the run's
/// real end on the full exchange-227k (issue #14: within 20 % of the time
/// left when a quarter of the messages have started, 10 % at half and
/// three quarters). Measured at seed 1: 0.063, 0.020, 0.016 (0.095 at 75 %
/// with the lognormal tail and Little's law on the reconciles' counts).
#[test]
fn the_backlog_eta_of_exchange_227k_is_within_its_target() {
    let sc = Scenario::builtin("exchange-227k").expect("built in");
    let mut config = Config::default();
    config.controller.ceiling = sc.ceiling;
    config.controller.account_limit = Some(sc.lambda.account_limit);
    let r = fanout::sim::run(SimOptions {
        seed: 1,
        scenario: sc,
        config,
        policy: Policy::Adaptive,
        progress: false,
    })
    .unwrap();
    let e = r.eta_error;
    eprintln!("eta_error {}", e.human());
    let bound = |v: Option<f64>, max: f64| v.is_some_and(|v| v <= max);
    assert!(bound(e.at_25, 0.20), "{e:?}");
    assert!(bound(e.at_50, 0.10), "{e:?}");
    assert!(bound(e.at_75, 0.10), "{e:?}");
}
