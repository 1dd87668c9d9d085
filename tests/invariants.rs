//! The invariants (docs/ARCHITECTURE.md, "Invariants and where they are
//! enforced") over random small scenarios: crashes, duplicate
//! deliveries, throttle storms (StartExecution, ListExecutions), API
//! errors (SQS, Step Functions, CloudWatch), Lambda errors, reserved
//! concurrency (a pipeline function's, the other load's), legacy scaling,
//! completion events, bad input. Every fault in the mix has an assertion
//! on its effect, so a fault the simulator stopped applying fails here.

use std::fmt::Write as _;

use fanout::config::{Config, Policy};
use fanout::sim::{Report, Scenario, SimOptions, Timeline};
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
    faults: MoreFaults,
}

/// The faults added to the mix for issue #11: each is `None` in about
/// half the cases.
#[derive(Debug, Clone)]
struct MoreFaults {
    /// api-errors on `sfn`: start, duration, probability.
    sfn_errors: Option<(f64, f64, f64)>,
    /// api-errors on `cloudwatch` at probability 1 (an outage): the
    /// metrics loop calls GetMetricData about once a minute, too rarely for
    /// a partial fault to show in every case.
    cloudwatch_outage: Option<(f64, f64)>,
    /// A throttle storm on `list_executions`.
    list_storm: Option<(f64, f64, f64)>,
    /// `lambda.reserved` of the Map's function, as a share of the ceiling.
    reserved_share: Option<f64>,
    /// Other load: its `reserved`, and its base as a multiple of that.
    other: Option<(u32, f64)>,
    /// Legacy scaling: burst and environments per minute.
    legacy: Option<(f64, f64)>,
}

fn window(
    max_start: f64,
    dur: (f64, f64),
    p: (f64, f64),
) -> impl Strategy<Value = Option<(f64, f64, f64)>> {
    proptest::option::of((0.0f64..max_start, dur.0..dur.1, p.0..p.1))
}

fn more_faults() -> impl Strategy<Value = MoreFaults> {
    (
        window(200.0, (20.0, 90.0), (0.2, 0.6)),
        proptest::option::of((0.0f64..200.0, 60.0f64..600.0)),
        window(200.0, (10.0, 120.0), (0.6, 1.0)),
        proptest::option::of(0.2f64..0.8),
        proptest::option::of((10u32..=100, 0.5f64..3.0)),
        proptest::option::of((20.0f64..150.0, 60.0f64..600.0)),
    )
        .prop_map(
            |(sfn_errors, cloudwatch_outage, list_storm, reserved_share, other, legacy)| {
                MoreFaults {
                    sfn_errors,
                    cloudwatch_outage,
                    list_storm,
                    reserved_share,
                    other,
                    legacy,
                }
            },
        )
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
        more_faults(),
    )
        .prop_map(
            |(
                (policy, bulk, priority, ceiling, items, max_conc, median, error_rate, dup),
                (list_lag, nj, os, mf, tpl, crash, storm, sqs_errors, completion_events, seed),
                faults,
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
                faults,
            },
        )
}

/// The reservation of the Map's function (`predict`), if any.
fn predict_reserved(c: &Case) -> Option<u32> {
    c.faults
        .reserved_share
        .map(|s| ((f64::from(c.ceiling) * s) as u32).max(10))
}

/// `[[faults]]` entries of one kind inside their window.
fn window_toml(out: &mut String, head: &str, w: Option<(f64, f64, f64)>) {
    if let Some((s, d, p)) = w {
        let _ = writeln!(
            out,
            "[[faults]]\n{head}\nstart_secs = {s}\nduration_secs = {d}\nprobability = {p}"
        );
    }
}

/// The `[lambda]` and `[other_load]` lines the added faults turn on.
fn lambda_toml(c: &Case) -> String {
    let mut out = String::new();
    if let Some((burst, per_minute)) = c.faults.legacy {
        let _ = writeln!(
            out,
            "scaling = \"legacy\"\nlegacy_burst = {burst}\nlegacy_per_minute = {per_minute}"
        );
    }
    if let Some(r) = predict_reserved(c) {
        let _ = writeln!(out, "reserved = {{ predict = {r} }}");
    }
    if let Some((reserved, times)) = c.faults.other {
        let base = f64::from(reserved) * times;
        let _ = writeln!(out, "[other_load]\nbase = {base}\nreserved = {reserved}");
    }
    out
}

/// The case's `[[faults]]`.
fn faults_toml(c: &Case) -> String {
    let mut faults = String::new();
    if let Some((at, after)) = c.crash {
        let _ = writeln!(
            faults,
            "[[faults]]\nkind = \"crash\"\nat_secs = {at}\nrestart_after_secs = {after}"
        );
    }
    let api_errors = |service: &str| format!("kind = \"api-errors\"\nservice = \"{service}\"");
    let storm = |api: &str| format!("kind = \"throttle-storm\"\napi = \"{api}\"");
    window_toml(&mut faults, &storm("start_execution"), c.storm);
    window_toml(&mut faults, &api_errors("sqs"), c.sqs_errors);
    window_toml(&mut faults, &api_errors("sfn"), c.faults.sfn_errors);
    let outage = c.faults.cloudwatch_outage.map(|(s, d)| (s, d, 1.0));
    window_toml(&mut faults, &api_errors("cloudwatch"), outage);
    window_toml(&mut faults, &storm("list_executions"), c.faults.list_storm);
    faults
}

fn run(c: &Case) -> (Report, Timeline) {
    let faults = faults_toml(c);
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
{lambda}
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
        lambda = lambda_toml(c),
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
    fanout::sim::run_with_timeline(SimOptions {
        scenario,
        config,
        policy: c.policy,
        seed: c.seed,
        progress: false,
    })
    .expect("simulation runs")
}

/// Calls of `service` ("sfn", ...) inside a fault window, and how many
/// of them the fault failed.
fn exposure(r: &Report, service: &str) -> (u64, u64) {
    let sum = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .filter(|(k, _)| k.split('.').next() == Some(service))
            .map(|(_, n)| n)
            .sum()
    };
    (sum(&r.fault_window_calls), sum(&r.faults_injected))
}

/// Each added fault acted, and the controller kept its promises under it
/// (the invariants are asserted for every case in `invariants_hold`).
fn faults_took_effect(c: &Case, r: &Report, t: &Timeline) -> Result<(), TestCaseError> {
    // A Step Functions fault with many chances fires (p ≥ 0.2: 0.8^30 <
    // 0.2 %; 68 of the 256 cases).
    let sfn_on =
        c.faults.sfn_errors.is_some() || c.faults.list_storm.is_some() || c.storm.is_some();
    let (calls, failed) = exposure(r, "sfn");
    prop_assert!(
        sfn_on || calls == 0,
        "no sfn fault, {calls} calls in a window"
    );
    prop_assert!(
        calls < 30 || failed > 0,
        "{calls} sfn calls in a fault window, none failed: {r:?}"
    );
    // The CloudWatch outage fails every GetMetricData inside it (28 cases
    // call it there).
    let (calls, failed) = exposure(r, "cloudwatch");
    prop_assert!(c.faults.cloudwatch_outage.is_some() || calls == 0);
    prop_assert_eq!(failed, calls, "GetMetricData in the outage: {:?}", r);
    // Every StartExecution a fault failed was tried again.
    let failed_starts = r
        .faults_injected
        .get("sfn.start_execution")
        .copied()
        .unwrap_or(0);
    let starts = r
        .api_calls_by_operation
        .get("sfn.StartExecution")
        .copied()
        .unwrap_or(0);
    prop_assert!(
        starts >= r.started + failed_starts,
        "{starts} starts: {r:?}"
    );
    // The storm throttles ListExecutions (p ≥ 0.6: 0.4^10 ≈ 0.01 %).
    if c.faults.list_storm.is_some() && c.faults.sfn_errors.is_none() {
        let key = "sfn.list_executions";
        let calls = r.fault_window_calls.get(key).copied().unwrap_or(0);
        let throttled = r.faults_injected.get(key).copied().unwrap_or(0);
        prop_assert!(
            calls < 10 || throttled > 0,
            "{calls} listings in the storm: {r:?}"
        );
    }
    // The Map's function never runs above its reservation.
    let predict = &r.functions["predict"];
    prop_assert_eq!(predict.limit, predict_reserved(c));
    if let Some(limit) = predict.limit {
        prop_assert!(
            predict.peak <= limit,
            "predict {} > reserved {limit}",
            predict.peak
        );
    }
    // The account metric: the pipeline plus the other load in use, which
    // its reservation caps (and which is there).
    let pipeline = f64::from(r.peak_concurrency);
    match c.faults.other {
        Some((reserved, times)) => {
            let other = (f64::from(reserved) * times).min(f64::from(reserved));
            prop_assert!(
                r.account_peak <= pipeline + f64::from(reserved) + 1e-6,
                "{r:?}"
            );
            prop_assert!(r.account_peak >= other - 1e-6, "{r:?}");
        }
        None => prop_assert!((r.account_peak - pipeline).abs() < 1e-6, "{r:?}"),
    }
    // Legacy scaling: the burst, then its rate per minute, account-wide.
    if let Some((burst, per_minute)) = c.faults.legacy {
        for (s, &peak) in t.peak.iter().enumerate() {
            let cap = burst + per_minute * (s + 1) as f64 / 60.0 + 1.0;
            prop_assert!(
                f64::from(peak) <= cap,
                "{peak} at {s} s over the legacy cap {cap}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, rng_seed: proptest::test_runner::RngSeed::Fixed(20_261_123), ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold(c in case()) {
        let (r, t) = run(&c);
        // 1. No message is deleted unless its execution started.
        prop_assert_eq!(r.deleted_without_start, 0, "{:?}", r);
        // 2. Every message ends as an execution or in the DLQ.
        prop_assert_eq!(r.lost, 0, "{:?}", r);
        // 3. Never two executions for one message, across crashes: the
        // simulator counts executions it created per workload body, so a
        // message started under two names counts (a reused name is the
        // same execution, as in Step Functions).
        prop_assert_eq!(r.duplicates, 0, "{:?}", r);
        let unstartable = c.not_json + c.oversize + if c.template_uses_field { c.missing_field } else { 0 };
        let moved: u64 = r.dead_letter_reasons.values().sum();
        let clean = c.crash.is_none() && c.sqs_errors.is_none() && c.dup_delivery == 0.0;
        if c.policy == Policy::Seed {
            // The seed puts back whatever it has no room for, bad bodies
            // included, so SQS's redrive may take some before it looks.
            prop_assert!(r.dead_lettered_messages <= unstartable, "{:?}", r);
            if clean {
                prop_assert!(moved <= unstartable, "{:?}", r);
            }
        } else {
            // Every unstartable body is moved with a reason, and nothing
            // else. A crash, a failed delete between the DLQ send and the
            // delete, or a duplicate delivery moves a second copy of one:
            // harmless, and only then.
            prop_assert_eq!(r.dead_lettered_messages, unstartable, "{:?}", r);
            if clean {
                prop_assert_eq!(moved, unstartable, "{:?}", r);
            }
            // Healthy messages never reach the DLQ under admission-first policies.
            prop_assert_eq!(r.dlq, unstartable, "{:?}", r);
            // 4. Capacity waits never raise a receive count: every receive
            // beyond a message's first is explained by a fault on that
            // message (a duplicate delivery, a crash while in hand, a
            // failed SQS call on its receipt), in every case.
            prop_assert_eq!(r.unexplained_receives, 0, "{:?}", r);
            if clean {
                prop_assert_eq!(r.max_receive_count, 1, "{:?}", r);
            }
            // 5. Concurrency stays at or below the ceiling.
            prop_assert!(r.peak_concurrency <= c.ceiling, "peak {} > ceiling {}: {:?}", r.peak_concurrency, c.ceiling, r);
        }
        // Completion events free capacity: with them on, the controller
        // completes ledger entries from them; without, it cannot. (After
        // a crash the executions of the life before are no longer the
        // ledger's own, so their events free nothing.)
        if !c.completion_events {
            prop_assert_eq!(r.completed_by_event, 0);
        } else if c.crash.is_none() {
            // Most executions end before a reconcile would notice (≥ 95 %
            // of them over the 256 cases); a controller ignoring the events
            // frees none.
            prop_assert!(2 * r.completed_by_event >= r.started, "{:?}", r);
        }
        faults_took_effect(&c, &r, &t)?;
    }
}
