//! The invariants (docs/ARCHITECTURE.md, "Invariants and where they are
//! enforced") over random small scenarios: crashes, duplicate
//! deliveries, throttle storms, API errors, Lambda errors, bad input.

use std::fmt::Write as _;

use fanout::config::{Config, Policy};
use fanout::sim::{Report, Scenario, SimOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    policy: Policy,
    bulk: u64,
    priority: u64,
    ceiling: u32,
    items: u32,
    max_conc: u32,
    median: f64,
    error_rate: f64,
    dup_delivery: f64,
    list_lag: f64,
    not_json: u64,
    oversize: u64,
    missing_field: u64,
    template_uses_field: bool,
    crash: Option<(f64, f64)>,
    storm: Option<(f64, f64, f64)>,
    sqs_errors: Option<(f64, f64, f64)>,
    completion_events: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            prop_oneof![
                Just(Policy::Adaptive),
                Just(Policy::Fixed),
                Just(Policy::Seed)
            ],
            20u64..300,
            0u64..10,
            30u32..300,
            1u32..6,
            1u32..=3,
            2.0f64..30.0,
            0.0f64..0.05,
            prop_oneof![Just(0.0), 0.0f64..0.2],
        ),
        (
            0.0f64..10.0,
            0u64..3,
            0u64..3,
            0u64..3,
            any::<bool>(),
            proptest::option::of((20.0f64..300.0, 5.0f64..150.0)),
            proptest::option::of((0.0f64..300.0, 5.0f64..120.0, 0.3f64..1.0)),
            proptest::option::of((0.0f64..300.0, 5.0f64..60.0, 0.1f64..0.6)),
            any::<bool>(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (policy, bulk, priority, ceiling, items, max_conc, median, error_rate, dup),
                (list_lag, nj, os, mf, tpl, crash, storm, sqs_errors, completion_events, seed),
            )| Case {
                policy,
                bulk,
                priority,
                ceiling,
                items,
                max_conc,
                median,
                error_rate,
                dup_delivery: dup,
                list_lag,
                not_json: nj,
                oversize: os,
                missing_field: mf,
                template_uses_field: tpl,
                crash,
                storm,
                sqs_errors,
                completion_events,
                seed,
            },
        )
}

fn run(c: &Case) -> Report {
    let mut faults = String::new();
    if let Some((at, after)) = c.crash {
        let _ = writeln!(
            faults,
            "[[faults]]\nkind = \"crash\"\nat_secs = {at}\nrestart_after_secs = {after}"
        );
    }
    if let Some((s, d, p)) = c.storm {
        let _ = writeln!(
            faults,
            "[[faults]]\nkind = \"throttle-storm\"\napi = \"start_execution\"\nstart_secs = {s}\nduration_secs = {d}\nprobability = {p}"
        );
    }
    if let Some((s, d, p)) = c.sqs_errors {
        let _ = writeln!(
            faults,
            "[[faults]]\nkind = \"api-errors\"\nservice = \"sqs\"\nstart_secs = {s}\nduration_secs = {d}\nprobability = {p}"
        );
    }
    let text = format!(
        r#"
name = "prop"
ceiling = {ceiling}
max_virtual_secs = 14400
[workload]
bulk = {bulk}
priority = {priority}
not_json = {nj}
oversize = {os}
missing_field = {mf}
[sqs]
duplicate_delivery_probability = {dup}
[sfn]
list_lag_secs = {lag}
completion_events = {events}
[lambda]
account_limit = {limit}
error_rate = {err}
[[workflow]]
task = "prepare"
median_secs = {m1}
[[workflow]]
map_items = {items}
max_concurrency = {mc}
[[workflow.iteration]]
task = "predict"
median_secs = {m2}
sigma = 0.6
[[workflow]]
task = "publish"
median_secs = {m3}
{faults}
"#,
        ceiling = c.ceiling,
        bulk = c.bulk,
        priority = c.priority,
        nj = c.not_json,
        os = c.oversize,
        mf = c.missing_field,
        dup = c.dup_delivery,
        lag = c.list_lag,
        events = c.completion_events,
        limit = c.ceiling + 100,
        err = c.error_rate,
        m1 = c.median / 2.0,
        items = c.items,
        mc = c.max_conc,
        m2 = c.median,
        m3 = c.median / 3.0,
    );
    let scenario = Scenario::parse(&text, "prop").expect("generated scenario is valid");
    let mut config = Config::default();
    config.controller.ceiling = c.ceiling;
    if c.template_uses_field {
        config.naming.template = "{company_id}-{hash}".into();
    }
    fanout::sim::run(SimOptions {
        scenario,
        config,
        policy: c.policy,
        seed: c.seed,
        progress: false,
    })
    .expect("simulation runs")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_123), ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(c in case()) {
        let r = run(&c);
        // 1. No message is deleted unless its execution started.
        prop_assert_eq!(r.deleted_without_start, 0, "{:?}", r);
        // 2. Every message ends as an execution or in the DLQ.
        prop_assert_eq!(r.lost, 0, "{:?}", r);
        // 3. Never two executions for one message, across crashes.
        prop_assert_eq!(r.duplicates, 0, "{:?}", r);
        let unstartable = c.not_json + c.oversize + if c.template_uses_field { c.missing_field } else { 0 };
        let moved: u64 = r.dead_letter_reasons.values().sum();
        if c.policy == Policy::Seed {
            // The seed puts back whatever it has no room for, bad bodies
            // included, so SQS's redrive may take some before it looks.
            if c.crash.is_none() && c.sqs_errors.is_none() && c.dup_delivery == 0.0 {
                prop_assert!(moved <= unstartable, "{:?}", r);
            }
        } else {
            // A crash, a failed delete between the DLQ send and the delete,
            // or a duplicate delivery moves a second copy: harmless, and
            // only then.
            if c.crash.is_none() && c.sqs_errors.is_none() && c.dup_delivery == 0.0 {
                prop_assert_eq!(moved, unstartable, "every unstartable body is moved with a reason: {:?}", r);
            } else {
                prop_assert!(moved >= unstartable, "every unstartable body is moved with a reason: {:?}", r);
            }
            // Healthy messages never reach the DLQ under admission-first policies.
            prop_assert_eq!(r.dlq, unstartable, "{:?}", r);
            // 4. Capacity waits never raise a receive count: only a crash,
            // a duplicate delivery or a failed SQS call can.
            if c.crash.is_none() && c.dup_delivery == 0.0 && c.sqs_errors.is_none() {
                prop_assert_eq!(r.max_receive_count, 1, "{:?}", r);
            }
            // 5. Concurrency stays at or below the ceiling.
            prop_assert!(r.peak_concurrency <= c.ceiling, "peak {} > ceiling {}: {:?}", r.peak_concurrency, c.ceiling, r);
        }
    }
}
