//! The controller's own cost: one admission decision, the ledger and
//! estimator updates per message, a reconcile of 10,000 running
//! executions, and a whole small simulated run.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fanout::config::{Config, Policy};
use fanout::control::budget::{Admission, Inputs};
use fanout::control::estimator::Estimator;
use fanout::control::ledger::Ledger;
use fanout::control::naming::Namer;
use fanout::ports::ConcurrencySample;
use fanout::sim::{Scenario, SimOptions};

fn decision(c: &mut Criterion) {
    let mut cfg = Config::default();
    cfg.controller.ceiling = 19_000;
    let mut admission = Admission::new(Policy::Adaptive, &(&cfg).into());
    let mut now = 0.0;
    c.bench_function("admission decision", |b| {
        b.iter(|| {
            now += 0.25;
            black_box(admission.decide(Inputs {
                now,
                running: 9_500,
                in_hand: 40,
                k: 1.9,
                other_load: Some(500.0),
                lifetime: Some(75.0),
                first_lifetime: Some(75.0),
                ours: 9_500,
                foreign: 0,
                shared: false,
                share: None,
            }))
        });
    });

    let namer = Namer::new("co-{company_id}-{hash}").unwrap();
    let body = r#"{"company_id":"c0123456","kind":"refresh"}"#;
    c.bench_function("name one message", |b| {
        b.iter(|| black_box(namer.name("6f1c2b1e-8d1a-4c6e-9d7b-0a9e5c1b2f3d", black_box(body))));
    });

    let mut ledger = Ledger::new();
    let mut i = 0u64;
    c.bench_function("ledger start and complete", |b| {
        b.iter(|| {
            i += 1;
            let name = format!("m-{i}");
            ledger.started(&name, i as f64);
            black_box(ledger.completed(&name, i as f64 + 75.0))
        });
    });

    let mut big = Ledger::new();
    let running: Vec<String> = (0..10_000).map(|i| format!("exec-{i:05}")).collect();
    for n in &running {
        big.started(n, 0.0);
    }
    let listed: HashSet<String> = running.iter().skip(100).cloned().collect();
    c.bench_function("reconcile 10,000 running", |b| {
        b.iter(|| black_box(big.reconcile(&listed, 10.0, 30.0)));
    });

    let mut estimator = Estimator::new((&cfg.estimator).into(), 3.0);
    let mut s = 0.0;
    c.bench_function("estimator observe + sample", |b| {
        b.iter(|| {
            s += 1.0;
            estimator.observe_running(s, 9_500);
            if (s as u64).is_multiple_of(60) {
                let minute = (s as u64 / 60 - 1) * 60;
                black_box(estimator.on_sample(
                    &ConcurrencySample {
                        minute_start_s: minute,
                        pipeline_max: 18_000.0,
                        account_max: None,
                        throttles: Some(0.0),
                        functions: Vec::new(),
                    },
                    Some(90.0),
                ));
            }
        });
    });
}

fn small_run(c: &mut Criterion) {
    let mut scenario = Scenario::builtin("exchange-227k").unwrap();
    scenario.workload.bulk = 5_000;
    scenario.ceiling = 1_000;
    scenario.lambda.account_limit = 1_100;
    let mut config = Config::default();
    config.controller.ceiling = 1_000;
    let mut g = c.benchmark_group("simulation");
    g.sample_size(10);
    g.bench_function("5,000 companies, ceiling 1,000", |b| {
        b.iter(|| {
            fanout::sim::run(SimOptions {
                scenario: scenario.clone(),
                config: config.clone(),
                policy: Policy::Adaptive,
                seed: 1,
                progress: false,
            })
            .unwrap()
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = decision, small_run
}
criterion_main!(benches);
