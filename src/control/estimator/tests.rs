// The tests compare results of exact arithmetic.
#![allow(clippy::float_cmp)]

use proptest::prelude::*;

use super::*;
use crate::ports::FunctionSample;

fn params() -> Params {
    Params {
        margin_fraction: 0.005,
        noise_z: 1.0,
        stability_fraction: 0.06,
        min_lambdas_per_execution: 1.0,
        initial_lambdas_per_execution: None,
        settle_s: 60.0,
        account_limit: None,
        headroom_fraction: 0.0,
    }
}

fn est() -> Estimator {
    Estimator::new(params(), 3.0)
}

fn sample(minute: u64, max: f64) -> ConcurrencySample {
    ConcurrencySample {
        minute_start_s: minute * 60,
        pipeline_max: max,
        account_max: None,
        throttles: Some(0.0),
        functions: Vec::new(),
    }
}

fn run(e: &mut Estimator, from_s: u64, to_s: u64, running: impl Fn(u64) -> usize) {
    for t in from_s..to_s {
        e.observe_running(t as f64, running(t));
    }
}

/// The margin the estimator adds at `running` executions.
fn margin(running: f64) -> f64 {
    let c = params();
    1.0 + c.margin_fraction + c.noise_z / running.sqrt()
}

#[test]
fn starts_at_the_configured_maximum() {
    assert_eq!(est().k(), 3.0);
}

#[test]
fn a_growing_population_never_lowers_the_estimate() {
    let mut e = est();
    // Ramp: running grows 10 per second; young executions look narrow.
    run(&mut e, 0, 600, |t| (t * 10) as usize);
    for m in 1..9 {
        let use_ = e
            .on_sample(&sample(m, 1.2 * (m * 600 + 300) as f64), Some(90.0))
            .width;
        assert!(matches!(use_, SampleUse::Held(_)), "minute {m}: {use_:?}");
    }
    assert_eq!(e.k(), 3.0);
}

#[test]
fn a_stable_population_teaches_the_real_width() {
    let mut e = est();
    run(&mut e, 0, 600, |_| 5000);
    let got = e.on_sample(&sample(5, 9500.0), Some(120.0)).width;
    let want = 1.9 * margin(5000.0);
    assert!(
        matches!(got, SampleUse::Learned(k) if (k - want).abs() < 1e-9),
        "{got:?}"
    );
    assert!((e.k() - want).abs() < 1e-9);
}

#[test]
fn a_minute_is_learned_once_a_lifetime_before_its_end_held_still() {
    // A ramp to 6,000 that ends at 190 s, then a steady count; lifetimes of
    // 100 s. The minute 240-300 saw a whole lifetime of the steady count
    // before its end (200-300 s), which is what its maximum is taken over;
    // the minute 180-240 did not (its last lifetime reaches into the ramp).
    let mut e = est();
    run(&mut e, 0, 190, |t| (t as usize * 6000) / 190);
    run(&mut e, 190, 300, |_| 6000);
    let r3 = e.on_sample(&sample(3, 12_300.0), Some(100.0)).width;
    assert!(matches!(r3, SampleUse::Held(_)), "{r3:?}");
    assert_eq!(e.k(), 3.0);
    let r4 = e.on_sample(&sample(4, 12_000.0), Some(100.0)).width;
    // Learned, and still at the widest minute of the last lifetime.
    let want = 12_300.0 / 6000.0 * margin(6000.0);
    assert!(
        matches!(r4, SampleUse::Learned(k) if (k - want).abs() < 1e-9),
        "{r4:?}"
    );
}

#[test]
fn a_wider_minute_raises_at_once_even_when_unstable() {
    let mut e = est();
    run(&mut e, 0, 600, |_| 5000);
    e.on_sample(&sample(5, 9500.0), Some(120.0));
    run(&mut e, 600, 660, |t| 5000 + (t as usize - 600) * 20);
    let got = e.on_sample(&sample(10, 16_000.0), Some(120.0)).width;
    assert!(matches!(got, SampleUse::Raised(_)), "{got:?}");
    assert!(e.k() > 2.5);
}

#[test]
fn no_lifetime_known_means_no_learning() {
    let mut e = est();
    run(&mut e, 0, 600, |_| 5000);
    assert!(matches!(
        e.on_sample(&sample(5, 9500.0), None).width,
        SampleUse::Held(_)
    ));
    assert_eq!(e.k(), 3.0);
}

#[test]
fn a_throttled_minute_never_lowers_and_reports_the_level_lambda_allowed() {
    let mut e = est();
    run(&mut e, 0, 600, |_| 5000);
    let s = ConcurrencySample {
        throttles: Some(120.0),
        ..sample(5, 6000.0)
    };
    let r = e.on_sample(&s, Some(120.0));
    assert_eq!(r.throttled, Some(6000.0));
    assert!(!r.clean);
    assert!(matches!(r.width, SampleUse::Held(_)), "{r:?}");
    assert_eq!(e.k(), 3.0);
}

#[test]
fn a_throttled_minute_wider_than_the_maximum_still_raises() {
    // Failure 1 of issue #10: pinned at the account limit every minute, the
    // capped level is still wider than k_max, and that is enough to raise.
    let mut e = est();
    run(&mut e, 0, 600, |_| 2550);
    let s = ConcurrencySample {
        throttles: Some(40_000.0),
        ..sample(5, 9700.0)
    };
    let r = e.on_sample(&s, Some(120.0));
    assert!(matches!(r.width, SampleUse::Raised(k) if k > 3.8), "{r:?}");
    assert_eq!(r.throttled, Some(9700.0));
}

#[test]
fn minutes_before_the_controller_ran_are_ignored() {
    let mut e = est();
    run(&mut e, 600, 700, |_| 100);
    assert_eq!(
        e.on_sample(&sample(2, 500.0), Some(60.0)).width,
        SampleUse::Ignored
    );
}

#[test]
fn a_remembered_width_applies_at_the_first_usable_minute_not_before() {
    let mut e = est();
    assert!(e.start_from(2.0));
    assert_eq!(e.k(), 3.0, "the first ramp is as careful as a cold start");
    run(&mut e, 0, 120, |t| (t * 10) as usize);
    // A ramp minute narrower than remembered: the remembered value holds.
    e.on_sample(&sample(1, 1.8 * 1200.0), Some(90.0));
    assert_eq!(e.k(), 2.0);
}

#[test]
fn a_stale_remembered_width_is_raised_by_the_first_minute_that_shows_more() {
    let mut e = est();
    e.start_from(1.5);
    run(&mut e, 0, 120, |t| (t * 10) as usize);
    let got = e.on_sample(&sample(1, 2.2 * 1200.0), Some(90.0)).width;
    assert!(matches!(got, SampleUse::Raised(k) if k > 2.2), "{got:?}");
}

#[test]
fn the_config_value_wins_over_the_remembered_one() {
    let cfg = Params {
        initial_lambdas_per_execution: Some(2.5),
        ..params()
    };
    let mut e = Estimator::new(cfg, 3.0);
    assert!(!e.start_from(1.2));
    run(&mut e, 0, 120, |t| (t * 10) as usize);
    e.on_sample(&sample(1, 1.8 * 1200.0), Some(90.0));
    assert_eq!(e.k(), 2.5);
}

#[test]
fn only_widths_learned_from_stable_minutes_are_remembered() {
    let mut e = est();
    assert_eq!(e.to_remember(), None, "the starting maximum is not news");
    run(&mut e, 0, 600, |_| 5000);
    e.on_sample(&sample(5, 9500.0), Some(120.0));
    let learned = e.k();
    assert_eq!(e.to_remember(), Some(learned));
    assert_eq!(e.to_remember(), None, "written once");
    // The drain at the end: the count falls, a ratio rises; not kept.
    run(&mut e, 600, 720, |t| 5000 - (t as usize - 600) * 40);
    let got = e.on_sample(&sample(11, 2.5 * 5000.0), Some(120.0)).width;
    assert!(matches!(got, SampleUse::Raised(_)), "{got:?}");
    assert_eq!(e.to_remember(), None);
}

proptest! {
    /// Measurement over configuration: whatever the configured maximum, a
    /// minute whose pipeline is wider raises k̂ to the measured ratio with
    /// its margin, at once, and reports it (once) as above the maximum.
    #[test]
    fn a_measured_width_above_the_maximum_raises_with_the_same_margin(
        k_max in 1.0f64..8.0,
        over in 1.15f64..4.0,
        running in 50usize..20_000,
        stable in any::<bool>(),
    ) {
        let mut e = Estimator::new(params(), k_max);
        let n = running as f64;
        if stable {
            run(&mut e, 0, 600, |_| running);
        } else {
            run(&mut e, 0, 600, |t| running / 2 + (t as usize * running) / 1200);
        }
        let width = k_max * over;
        let max = (running as f64 * width).round();
        let peak = if stable { n } else { (running / 2 + (299 * running) / 1200) as f64 };
        let r = e.on_sample(&sample(4, max), Some(120.0));
        let want = max / peak * margin(peak);
        prop_assert!(matches!(r.width, SampleUse::Raised(_)), "{:?}", r);
        prop_assert!((e.k() - want).abs() < 1e-9 * want, "k {} want {}", e.k(), want);
        prop_assert_eq!(r.over_max, Some(max / peak));
        // The same width again is not reported twice.
        let again = e.on_sample(&sample(5, max), Some(120.0));
        prop_assert_eq!(again.over_max, None);
    }

    /// The pipeline's maximum is bounded by the sum of the per-function
    /// maxima and by the account-wide maximum: the ratio uses the lower.
    #[test]
    fn the_ratio_uses_the_tightest_upper_bound_of_the_pipeline(
        sum in 1000.0f64..30_000.0,
        acct in 1000.0f64..30_000.0,
        split in 0.1f64..0.9,
    ) {
        let mut e = Estimator::new(params(), 100.0);
        run(&mut e, 0, 600, |_| 1000);
        let s = ConcurrencySample {
            pipeline_max: sum,
            account_max: Some(acct),
            functions: vec![
                FunctionSample { name: "a".into(), max: sum * split, mean: None, throttles: Some(0.0) },
                FunctionSample { name: "b".into(), max: sum * (1.0 - split), mean: None, throttles: Some(0.0) },
            ],
            ..sample(5, 0.0)
        };
        let r = e.on_sample(&s, None);
        let bound = sum.min(acct);
        prop_assert!((r.measured.unwrap() - bound / 1000.0).abs() < 1e-9);
    }

    /// CloudWatch revises minutes: reading the same minutes again, in any
    /// order, with values that go up and down, leaves k̂ where feeding each
    /// minute's highest value once would: higher re-reads raise, lower
    /// ones are ignored.
    #[test]
    fn re_reads_raise_on_a_higher_value_and_ignore_a_lower_one(
        reads in prop::collection::vec((5u64..10, 3000.0f64..12_000.0), 1..30),
    ) {
        let mut e = est();
        run(&mut e, 0, 660, |_| 3000);
        let mut highest = std::collections::BTreeMap::new();
        for &(m, v) in &reads {
            let before = e.k();
            let prev = highest.get(&m).copied();
            let r = e.on_sample(&sample(m, v), None);
            if prev.is_some_and(|p: f64| v <= p) {
                prop_assert_eq!(r.width, SampleUse::Unchanged);
                prop_assert_eq!(e.k(), before);
            }
            let h = highest.entry(m).or_insert(v);
            *h = h.max(v);
        }
        // No lifetime: nothing lowers, so k̂ is the widest of the highest
        // values (or the prior).
        let want = highest
            .values()
            .map(|&v| v / 3000.0 * margin(3000.0))
            .fold(3.0, f64::max);
        prop_assert!((e.k() - want).abs() < 1e-9, "k {} want {}", e.k(), want);
    }
}

#[test]
fn a_re_read_that_shows_throttles_reports_them_once() {
    let mut e = est();
    run(&mut e, 0, 600, |_| 3000);
    assert_eq!(e.on_sample(&sample(5, 6000.0), None).throttled, None);
    let late = ConcurrencySample {
        throttles: Some(10.0),
        ..sample(5, 6000.0)
    };
    let r = e.on_sample(&late, None);
    assert_eq!(
        (r.throttled, r.reread, r.clean),
        (Some(6000.0), true, false)
    );
    let r = e.on_sample(&late, None);
    assert_eq!((r.throttled, r.width), (None, SampleUse::Unchanged));
}

#[test]
fn a_minute_is_used_once_complete_and_settled() {
    let e = est();
    assert!(!e.settled(120, 179.0), "still open");
    assert!(!e.settled(120, 239.0), "complete, not settled");
    assert!(e.settled(120, 240.0));
}

#[test]
fn the_last_minutes_used_are_asked_for_again() {
    let mut e = est();
    assert_eq!(e.since(60), 60);
    run(&mut e, 0, 900, |_| 3000);
    e.on_sample(&sample(12, 6000.0), None);
    assert_eq!(e.since(60), (12 - (REREAD_MINUTES - 1)) * 60);
    assert_eq!(e.since(700), 700, "never before the controller started");
}

#[test]
fn a_cohort_cycling_through_its_phases_keeps_the_widest_minute_of_a_lifetime() {
    // A fixed population of long executions (lifetime 600 s) whose
    // concurrency cycles: 2.9 wide, then 1.3, then 1.2, 1.1 ... The
    // minutes of one lifetime bound it, not the last three.
    let mut e = est();
    run(&mut e, 0, 2400, |_| 2000);
    let widths = [2.9, 2.0, 1.3, 1.2, 1.1, 1.2, 1.3];
    for (i, w) in widths.iter().enumerate() {
        e.on_sample(&sample(20 + i as u64, w * 2000.0), Some(600.0));
    }
    assert!((e.k() - 2.9 * margin(2000.0)).abs() < 1e-9, "{}", e.k());
    // A lifetime later the wide minute has aged out.
    for i in 0..11 {
        e.on_sample(&sample(27 + i, 1.3 * 2000.0), Some(600.0));
    }
    assert!((e.k() - 1.3 * margin(2000.0)).abs() < 1e-9, "{}", e.k());
}

#[test]
fn a_narrow_minute_after_a_raise_lowers_only_to_the_widest_of_the_lifetime() {
    let mut e = Estimator::new(params(), 8.0);
    run(&mut e, 0, 1200, |_| 2000);
    e.on_sample(&sample(10, 4.2 * 2000.0 / margin(2000.0)), Some(120.0));
    assert!((e.k() - 4.2).abs() < 1e-9, "learned 4.2: {}", e.k());
    e.on_sample(&sample(11, 4.4 * 2000.0 / margin(2000.0)), Some(120.0));
    assert!((e.k() - 4.4).abs() < 1e-9, "raised: {}", e.k());
    // The raised minute is a phase of the last lifetime too: a narrow
    // stable minute keeps it.
    e.on_sample(&sample(12, 3.6 * 2000.0 / margin(2000.0)), Some(120.0));
    assert!((e.k() - 4.4).abs() < 1e-9, "not down to 3.6: {}", e.k());
    // A lifetime later (and past the three stable minutes always kept)
    // only the narrow phases are left.
    for m in 14..=16 {
        e.on_sample(&sample(m, 3.6 * 2000.0 / margin(2000.0)), Some(120.0));
    }
    assert!((e.k() - 3.6).abs() < 1e-9, "{}", e.k());
}

#[test]
fn a_stable_minute_keeps_the_widest_phase_seen_in_the_last_lifetime_before_it() {
    // A cohort of a constant size marches through a wide Map (4.0) while
    // the count is still settling, then through a narrow step (1.5): the
    // first stable minute must not forget the wide phase it just left.
    let mut e = Estimator::new(params(), 8.0);
    run(&mut e, 0, 1200, |_| 2000);
    e.on_sample(&sample(10, 4.0 * 2000.0 / margin(2000.0)), None);
    e.on_sample(&sample(12, 1.5 * 2000.0 / margin(2000.0)), Some(300.0));
    assert!((e.k() - 4.0).abs() < 1e-9, "{}", e.k());
}

#[test]
fn an_unsettled_minute_may_raise_k_but_never_lower_it() {
    // CloudWatch only fills a minute in: a first read that is already
    // wide is acted on at once; one that reads narrow waits to settle.
    let mut e = Estimator::new(params(), 8.0);
    run(&mut e, 0, 1200, |_| 2000);
    let k0 = e.k();
    assert!(e.peek(&sample(10, 1.0 * 2000.0), 660.0).is_none());
    assert!(
        (e.k() - k0).abs() < 1e-12,
        "a narrow unsettled minute lowered k̂"
    );
    let wide = 9.0 * 2000.0 / margin(2000.0);
    assert!(
        e.peek(&sample(11, wide), 700.0).is_none(),
        "minute 11 is still open at 700 s"
    );
    let raised = e
        .peek(&sample(11, wide), 720.0)
        .expect("a wide complete minute raises");
    assert!((raised - 9.0).abs() < 1e-9, "{raised}");
    assert!((e.k() - 9.0).abs() < 1e-9, "{}", e.k());
}

/// A function used only from 60 s to 240 s of a lifetime, 8 wide there,
/// reserved at 100; cohorts of `n` started at each of `cohorts` (seconds).
fn cohort_world(n: u32, cohorts: &[f64], minutes: u64) -> Estimator {
    let mut e = est();
    assert!(e.set_function_limits(&[("map".into(), Some(100))]));
    for &c in cohorts {
        e.record_starts(c, n);
    }
    let width = |age: f64| {
        if (60.0..240.0).contains(&age) {
            8.0
        } else {
            0.0
        }
    };
    for m in 0..minutes {
        let t0 = (m * 60) as f64;
        let max = (0..60)
            .map(|i| {
                let t = t0 + f64::from(i);
                cohorts
                    .iter()
                    .filter(|&&c| c <= t)
                    .map(|&c| f64::from(n) * width(t - c))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        e.set_horizon(Some(360.0), t0 + 120.0);
        let s = ConcurrencySample {
            minute_start_s: m * 60,
            pipeline_max: max,
            account_max: None,
            throttles: Some(0.0),
            functions: vec![FunctionSample {
                name: "map".into(),
                max,
                mean: None,
                throttles: Some(0.0),
            }],
        };
        e.on_sample(&s, Some(300.0));
    }
    e
}

#[test]
fn a_cohort_is_admitted_only_as_far_as_its_wide_phase_fits_the_limit() {
    // One cohort of 10 seen through its lifetime: the wide phase (8 each)
    // is 60 s to 240 s of age.
    let mut e = cohort_world(10, &[0.0], 8);
    // Long after it, the limit of 100 holds at most 100 / 8 starting now.
    let free = e.function_allowance(1000.0, 0.0, 10.0).unwrap();
    assert!((8.0..=12.5).contains(&free), "{free}");
    // A cohort of 10 started 30 s ago reaches its wide phase in 30 s (80
    // of the 100): a new start reaches its own while they are still there.
    let mut e = cohort_world(10, &[0.0, 450.0], 8);
    let crowded = e.function_allowance(480.0, 0.0, 10.0).unwrap();
    assert!(crowded <= 2.5, "{crowded}");
    assert!(crowded < free / 3.0, "{crowded} vs {free}");
}
