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
    s.other_load.base /= 10.0;
    s.other_load.amplitude /= 10.0;
    for step in &mut s.other_load.steps {
        step.add /= 10.0;
    }
    s
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
        assert_eq!(
            r.executions_failed, 0,
            "{name}: no execution fails for lack of capacity: {r:?}"
        );
        assert!(r.peak_concurrency <= r.ceiling, "{name}: {r:?}");
        assert_eq!(r.controller_lives, crashes + replicas + 1, "{name}");
        assert!(r.max_receive_count <= 1 + crashes, "{name}: {r:?}");
        assert!(r.utilization > 0.5, "{name}: {r:?}");
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
