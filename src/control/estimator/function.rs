//! Each pipeline function's own constraint: its width ŵ_f (its Lambdas per
//! running execution, learned like k̂) and its concurrency limit L_f, read
//! (reserved concurrency) or, where none is read, learned from the
//! function's throttles. Admission keeps target × ŵ_f ≤ L_f × (1 − headroom)
//! for every function.

use std::collections::BTreeMap;

use super::width::Width;
use super::{ConcurrencySample, FunctionSeen, Seen};

/// A learned limit rises by this fraction of itself per clean minute of
/// its function: a throttle that had another cause (Lambda's scaling
/// rate, a burst of other load) is forgotten within minutes, while a real
/// limit is found again a little above the level it was held at.
pub const LEARNED_LIMIT_RAISE: f64 = 0.02;

/// Growth of a function's minute maximum over the minute before it that
/// only Lambda's scaling explains: half of what it allows a function (1,000
/// execution environments every 10 s, 6,000 a minute; AWS Lambda developer
/// guide, "Lambda scaling behavior").
pub(super) const SCALING_GROWTH_PER_MINUTE: f64 = 3000.0;

/// An account within this fraction of its limit explains a throttle by
/// itself: no function limit is learned from that minute.
const ACCOUNT_AT_LIMIT: f64 = 0.03;

/// One function's width and limit.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Function {
    pub(super) width: Width,
    /// The widest it can be (the definition's bound, else k_max).
    pub(super) prior: f64,
    /// Read from the backend (reserved concurrency).
    pub(super) known: Option<f64>,
    /// Learned from the function's throttles, where none is read.
    pub(super) learned: Option<f64>,
    /// Its width by age, once fitted (limited functions only): admission
    /// keeps it under its limit by the ages started too
    /// (`Estimator::function_allowance`), not only by `width`.
    pub(super) profile: Option<super::Profile>,
}

impl Function {
    pub(super) fn new(prior: f64) -> Function {
        Function {
            width: Width::new(prior),
            prior,
            known: None,
            learned: None,
            profile: None,
        }
    }

    /// The limit in force: the one read, else the one learned.
    pub(super) fn limit(&self) -> Option<f64> {
        self.known.or(self.learned)
    }

    /// A minute of the function's series: `max` its maximum, `throttles`
    /// its throttled invocations, `account_at_limit` whether the account
    /// was at its own limit then. Returns the limit learned, if this
    /// minute taught one.
    pub(super) fn limit_minute(
        &mut self,
        max: f64,
        throttles: Option<f64>,
        account_at_limit: bool,
    ) -> Option<f64> {
        if self.known.is_some() {
            return None;
        }
        match throttles {
            Some(t) if t > 0.0 && !account_at_limit && max > 0.0 => {
                // Lambda let the function run at `max` and refused the
                // rest: that is its limit for now.
                self.learned = Some(max);
                Some(max)
            }
            Some(t) if t <= 0.0 => {
                if let Some(l) = self.learned {
                    // Clean: it ran up to `max` without a refusal, and the
                    // limit is forgotten slowly.
                    self.learned = Some((l * (1.0 + LEARNED_LIMIT_RAISE)).max(max));
                }
                None
            }
            _ => None,
        }
    }
}

impl super::Estimator {
    /// Function limits learned from this minute's per-function throttles
    /// (a re-read counts only a function newly seen throttled), and
    /// whether every function newly seen throttled was growing at Lambda's
    /// scaling rate (then the throttles say how fast, not how high).
    pub(super) fn learn_limits(
        &mut self,
        s: &ConcurrencySample,
        seen: &Seen,
        prev: Option<&Seen>,
    ) -> (Vec<(String, f64)>, bool) {
        // Every running function throttled at once is the account (at its
        // limit, or scaling up: the legacy burst model), not a limit of
        // each; one function alone cannot tell the two apart.
        let running = seen.functions.values().filter(|f| f.max > 0.0).count();
        let throttled = seen
            .functions
            .values()
            .filter(|f| f.throttles.is_some_and(|t| t > 0.0))
            .count();
        let all_throttled = running >= 2 && throttled >= running;
        let at_limit = all_throttled || account_at_limit(s.account_max, self.cfg.account_limit);
        let mut learned = Vec::new();
        let mut scaling = None;
        let minute = s.minute_start_s;
        let before: Option<BTreeMap<String, f64>> = minute
            .checked_sub(60)
            .and_then(|m| self.seen.get(&m))
            .map(|b| {
                b.functions
                    .iter()
                    .map(|(n, f)| (n.clone(), f.max))
                    .collect()
            });
        let first = self.seen.range(..minute).next().is_none();
        for (name, fm) in &seen.functions {
            let (max, thr) = (fm.max, fm.throttles);
            let was_throttled = prev
                .and_then(|p| p.functions.get(name))
                .is_some_and(|p| p.throttles.is_some_and(|t| t > 0.0));
            let now_throttled = thr.is_some_and(|t| t > 0.0);
            if prev.is_some() && (was_throttled || !now_throttled) {
                continue;
            }
            // Growing at Lambda's scaling rate, a function is throttled below
            // any limit of its own: the brake answers, no limit is learned
            // (it held the pipeline at the ramp's level for an hour).
            let from = match before.as_ref().and_then(|b| b.get(name)) {
                Some(&m) => Some(m),
                None if first => Some(0.0),
                None => None,
            };
            if now_throttled {
                if from.is_some_and(|m| max - m >= SCALING_GROWTH_PER_MINUTE) {
                    scaling.get_or_insert(true);
                    continue;
                }
                scaling = Some(false);
            }
            let f = self.function_entry(name);
            if let Some(l) = f.limit_minute(max, thr, at_limit) {
                learned.push((name.clone(), l));
            }
        }
        (learned, scaling.unwrap_or(false))
    }
}

/// The width (Lambdas per running execution, margin included) a
/// function's minute stands for at the running count its limit allows
/// (`room`: the limit less headroom; None, no limit: the plain ratio).
///
/// The minute's maximum is its mean plus a burst. The mean grows with the
/// running count; the burst, the spread of a sum of independent
/// executions, grows as its square root. Read as max / running and scaled
/// linearly, a burst measured at a small count would be multiplied by the
/// count's growth: a short function reserved at a few dozen, whose minute
/// maximum is mostly burst, would hold the pipeline at a few times the
/// count it ran at. With the mean (CloudWatch's Average), the maximum at
/// n running is predicted as margin × (m n + burst √(n / N)), equal to the
/// minute's own (margin × max) at the count N it ran at; the width is the
/// room over the n that fills it. Without the mean: the plain ratio.
pub(super) fn ratio(
    minute: &FunctionSeen,
    running_max: f64,
    running_mean: f64,
    margin: f64,
    room: Option<f64>,
) -> f64 {
    let plain = minute.max / running_max * margin;
    let (Some(mean), Some(room)) = (minute.mean, room) else {
        return plain;
    };
    if running_mean <= 0.0 || room <= 0.0 {
        return plain;
    }
    let per_execution = (mean / running_mean).max(0.0);
    let burst = (minute.max - per_execution * running_max).max(0.0);
    // quad n + lin √n = room, solved for √n in the form that keeps its
    // precision when quad is small beside lin.
    let quad = per_execution * margin;
    let lin = burst * margin / running_max.sqrt();
    let denominator = lin + (lin * lin + 4.0 * quad * room).sqrt();
    if denominator <= 0.0 {
        return plain;
    }
    let sqrt_n = 2.0 * room / denominator;
    room / (sqrt_n * sqrt_n)
}

/// Whether the account was at its limit in a minute (then throttles are
/// the account's, not a function's).
pub(super) fn account_at_limit(account_max: Option<f64>, account_limit: Option<f64>) -> bool {
    match (account_max, account_limit) {
        (Some(a), Some(l)) => a >= l * (1.0 - ACCOUNT_AT_LIMIT),
        _ => false,
    }
}

/// The function whose limit binds the running count tightest.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionBound {
    /// The function's name.
    pub name: String,
    /// Its concurrency limit (read or learned).
    pub limit: f64,
    /// Whether the limit was read (reserved concurrency) or learned.
    pub read: bool,
    /// Its width ŵ_f, at most k̂.
    pub width: f64,
    /// Running executions its limit allows: limit × (1 − headroom) / width,
    /// at least one.
    pub running: f64,
    /// Running executions every limited function allows with each
    /// execution at its widest there (its prior, or a wider ŵ_f), and the
    /// unreserved pool with each at its widest over the functions without
    /// a reservation: the count a new cohort may reach at once.
    pub widest: f64,
}

/// The tightest bound among `functions`, with the widths capped at `k`
/// (no function is wider than the pipeline). `pool`: what the account
/// leaves the functions without a reservation (its limit less every
/// reservation read and the other load), when known, and the widest an
/// execution can be.
pub(super) fn tightest(
    functions: &BTreeMap<String, Function>,
    k: f64,
    headroom: f64,
    pool: Option<(f64, f64)>,
) -> Option<FunctionBound> {
    // One execution at a time always: a limit below one execution's width
    // throttles it, and Step Functions' retries carry it through; a cap of
    // 0 would start nothing.
    let allows = |limit: f64, width: f64| (limit * (1.0 - headroom) / width).max(limit.min(1.0));
    let widest = functions
        .values()
        .filter_map(|f| {
            let width = f.width.value().max(f.prior).max(1e-6);
            Some(allows(f.limit()?, width))
        })
        .fold(f64::INFINITY, f64::min);
    // Lambda carves each reservation out of the account; the functions
    // without one share the rest with the account's other functions. A
    // cohort started at once must fit in it too, with each execution at
    // its widest over those functions (their priors summed, at most the
    // pipeline's width). Only a cohort: as a bound on the running count
    // it held pipelines far under a pool they never filled, while the
    // widths fell from their priors a lifetime at a time.
    let unreserved: Vec<&Function> = functions.values().filter(|f| f.known.is_none()).collect();
    let widest = match pool {
        Some((pool, k_widest)) if !unreserved.is_empty() && unreserved.len() < functions.len() => {
            let width = unreserved
                .iter()
                .map(|f| f.width.value().max(f.prior))
                .sum::<f64>()
                .min(k_widest)
                .max(1e-6);
            widest.min(allows(pool.max(0.0), width))
        }
        _ => widest,
    };
    functions
        .iter()
        .filter_map(|(name, f)| {
            let limit = f.limit()?;
            let width = f.width.value().min(k).max(1e-6);
            Some(FunctionBound {
                name: name.clone(),
                limit,
                read: f.known.is_some(),
                width,
                running: allows(limit, width),
                widest,
            })
        })
        .min_by(|a, b| a.running.total_cmp(&b.running))
}

// The tests compare results of exact arithmetic.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{Estimator, Params};
    use super::*;
    use crate::ports::{ConcurrencySample, FunctionSample};

    fn est(account_limit: Option<f64>) -> Estimator {
        let p = Params {
            margin_fraction: 0.0,
            noise_z: 0.0,
            stability_fraction: 0.06,
            min_lambdas_per_execution: 1.0,
            initial_lambdas_per_execution: None,
            settle_s: 60.0,
            account_limit,
            headroom_fraction: 0.0,
        };
        let mut e = Estimator::new(p, 3.0);
        for t in 0..3600 {
            e.observe_running(f64::from(t), 4000);
        }
        e
    }

    /// A minute in which each (name, max, throttles) ran.
    fn minute(m: u64, account: Option<f64>, fs: &[(&str, f64, f64)]) -> ConcurrencySample {
        ConcurrencySample {
            minute_start_s: m * 60,
            pipeline_max: fs.iter().map(|f| f.1).sum(),
            account_max: account,
            throttles: Some(fs.iter().map(|f| f.2).sum()),
            functions: fs
                .iter()
                .map(|&(n, max, t)| FunctionSample {
                    name: n.into(),
                    max,
                    mean: None,
                    throttles: Some(t),
                })
                .collect(),
        }
    }

    fn limit_of(e: &Estimator, name: &str) -> Option<f64> {
        e.function_widths()
            .into_iter()
            .find(|f| f.0 == name)
            .and_then(|f| f.2)
    }

    #[test]
    fn a_function_throttled_below_the_account_limit_is_held_at_that_level() {
        let mut e = est(Some(20_000.0));
        let before = [("prep", 1000.0, 0.0), ("map", 5000.0, 0.0)];
        e.on_sample(&minute(4, Some(8_000.0), &before), None);
        let r = e.on_sample(
            &minute(
                5,
                Some(9_000.0),
                &[("prep", 1000.0, 0.0), ("map", 6000.0, 50.0)],
            ),
            None,
        );
        assert_eq!(r.limits_learned, vec![("map".to_string(), 6000.0)]);
        assert_eq!(limit_of(&e, "map"), Some(6000.0));
        assert_eq!(limit_of(&e, "prep"), None);
        // Clean minutes forget it slowly.
        e.on_sample(&minute(6, Some(7_000.0), &[("map", 5900.0, 0.0)]), None);
        assert_eq!(
            limit_of(&e, "map"),
            Some(6000.0 * (1.0 + LEARNED_LIMIT_RAISE))
        );
        // Running clean above it shows the limit is at least that.
        e.on_sample(&minute(7, Some(7_000.0), &[("map", 6500.0, 0.0)]), None);
        assert_eq!(limit_of(&e, "map"), Some(6500.0));
    }

    #[test]
    fn a_function_throttled_while_growing_at_lambdas_scaling_rate_learns_no_limit() {
        // A ramp faster than Lambda scales one function: from nothing to
        // 5,709 in the first minute, refused above. Not a limit of its own.
        let mut e = est(Some(20_000.0));
        let ramp = [("prep", 1000.0, 0.0), ("map", 5709.0, 3297.0)];
        let r = e.on_sample(&minute(0, Some(7_000.0), &ramp), None);
        assert!(r.limits_learned.is_empty(), "{:?}", r.limits_learned);
        assert!(r.throttled.is_some(), "the ramp's brake applies");
        // Grown by 3,500 from the minute before: still scaling.
        let r = e.on_sample(
            &minute(
                1,
                Some(10_500.0),
                &[("prep", 1000.0, 0.0), ("map", 9209.0, 10.0)],
            ),
            None,
        );
        assert!(r.limits_learned.is_empty(), "{:?}", r.limits_learned);
        // Held near one level and refused there: a limit.
        let r = e.on_sample(
            &minute(
                2,
                Some(10_500.0),
                &[("prep", 1000.0, 0.0), ("map", 9300.0, 40.0)],
            ),
            None,
        );
        assert_eq!(r.limits_learned, vec![("map".to_string(), 9300.0)]);
    }

    #[test]
    fn every_function_throttled_at_once_is_the_account_scaling_not_their_limits() {
        // The legacy burst model: the account far below its limit, every
        // running function refused in the same minute.
        let mut e = est(Some(20_000.0));
        let r = e.on_sample(
            &minute(
                5,
                Some(4_000.0),
                &[("prep", 800.0, 900.0), ("map", 3000.0, 7000.0)],
            ),
            None,
        );
        assert!(r.limits_learned.is_empty(), "{:?}", r.limits_learned);
        assert!(r.throttled.is_some(), "the pipeline's brake applies");
    }

    #[test]
    fn a_throttle_with_the_account_at_its_limit_teaches_no_function_limit() {
        let mut e = est(Some(10_000.0));
        let r = e.on_sample(&minute(5, Some(9_900.0), &[("map", 8000.0, 500.0)]), None);
        assert!(r.limits_learned.is_empty());
        assert_eq!(limit_of(&e, "map"), None);
        assert!(r.throttled.is_some(), "the pipeline's brake still applies");
    }

    #[test]
    fn a_limit_read_from_the_backend_wins_over_throttles() {
        let mut e = est(None);
        assert!(e.set_function_limits(&[("map".into(), Some(6000)), ("prep".into(), None)]));
        assert!(
            !e.set_function_limits(&[("map".into(), Some(6000))]),
            "unchanged"
        );
        e.on_sample(&minute(5, None, &[("map", 5000.0, 10.0)]), None);
        assert_eq!(limit_of(&e, "map"), Some(6000.0));
        let b = e.function_bound(0.01).unwrap();
        assert_eq!((b.name.as_str(), b.read), ("map", true));
    }

    #[test]
    fn no_function_series_and_no_limits_bind_nothing() {
        let mut e = est(None);
        e.on_sample(&minute(5, None, &[]), None);
        assert_eq!(e.function_bound(0.01), None);
        assert!(e.function_widths().is_empty());
    }

    #[test]
    fn a_function_width_is_raised_at_once_and_learned_from_stable_minutes() {
        let mut e = est(None);
        e.on_sample(
            &minute(10, None, &[("map", 4000.0 * 4.5, 0.0)]),
            Some(120.0),
        );
        let w = |e: &Estimator| e.function_widths()[0].1;
        assert_eq!(w(&e), 4.5, "wider than the prior of 3: raised");
        e.on_sample(
            &minute(11, None, &[("map", 4000.0 * 2.4, 0.0)]),
            Some(120.0),
        );
        assert_eq!(w(&e), 4.5, "the wide minute is a phase of this lifetime");
        e.on_sample(
            &minute(13, None, &[("map", 4000.0 * 2.4, 0.0)]),
            Some(120.0),
        );
        assert_eq!(w(&e), 2.4, "a lifetime later, a stable minute lowers it");
    }

    /// A function's minute with its mean.
    fn seen(max: f64, mean: Option<f64>) -> FunctionSeen {
        FunctionSeen {
            max,
            mean,
            throttles: Some(0.0),
        }
    }

    #[test]
    fn a_burst_measured_at_a_small_count_is_not_multiplied_by_the_counts_growth() {
        // A 0.2 s function reserved at 24 that every execution calls three at
        // a time: 50 running put 0.35 on it on average and 11 at its peak.
        let mut e = est(None);
        assert!(e.set_function_limits(&[("fn".into(), Some(24))]));
        for t in 6000..6060 {
            e.observe_running(f64::from(t), 50);
        }
        let mut s = minute(100, None, &[("fn", 11.0, 0.0)]);
        s.functions[0].mean = Some(0.35);
        e.on_sample(&s, Some(30.0));
        let b = e.function_bound(0.0).unwrap();
        // Read as 11 per 50 running, the limit would hold it at 109. The
        // mean grows with the count (0.007 each) and the burst as its root:
        // 0.007 n + 10.65 √(n / 50) reaches 24 at n ≈ 222.
        assert!((b.running - 222.0).abs() < 1.0, "{b:?}");
        // Without the mean: the plain ratio.
        let mut e = est(None);
        assert!(e.set_function_limits(&[("fn".into(), Some(24))]));
        for t in 6000..6060 {
            e.observe_running(f64::from(t), 50);
        }
        e.on_sample(&minute(100, None, &[("fn", 11.0, 0.0)]), Some(30.0));
        let b = e.function_bound(0.0).unwrap();
        assert!((b.running - 24.0 / (11.0 / 50.0)).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn without_a_mean_or_a_limit_or_a_burst_the_ratio_is_the_plain_one() {
        let plain = 30.0 / 100.0 * 1.2;
        assert_eq!(
            ratio(&seen(30.0, None), 100.0, 100.0, 1.2, Some(50.0)),
            plain
        );
        assert_eq!(
            ratio(&seen(30.0, Some(20.0)), 100.0, 100.0, 1.2, None),
            plain
        );
        // Every Lambda of its maximum is its mean: nothing to amortize.
        let r = ratio(&seen(30.0, Some(30.0)), 100.0, 100.0, 1.2, Some(50.0));
        assert!((r - plain).abs() < 1e-12, "{r}");
        // A minute it did not run in.
        assert_eq!(
            ratio(&seen(0.0, Some(0.0)), 100.0, 100.0, 1.2, Some(50.0)),
            0.0
        );
    }

    #[test]
    fn a_cohort_fits_in_what_the_reservations_leave_the_other_functions() {
        // An account of 684; the last step reserved at 359; the first two,
        // one Lambda each, share the other 325 (an execution is in one of
        // them at a time, but the bound knows only their priors: 2, at
        // most the pipeline's 1.95).
        let mut map = BTreeMap::new();
        for name in ["s0", "s1", "s2"] {
            map.insert(name.to_string(), Function::new(1.0));
        }
        map.get_mut("s2").unwrap().known = Some(359.0);
        let alone = tightest(&map, 1.0, 0.0, None).unwrap();
        assert_eq!((alone.running, alone.widest), (359.0, 359.0));
        let b = tightest(&map, 1.0, 0.0, Some((325.0, 1.95))).unwrap();
        assert_eq!(b.running, 359.0, "the running count is not bound by it");
        assert!((b.widest - 325.0 / 1.95).abs() < 1e-9, "{b:?}");
        // Every function reserved: no pool of theirs.
        map.get_mut("s0").unwrap().known = Some(400.0);
        map.get_mut("s1").unwrap().known = Some(400.0);
        let all = tightest(&map, 1.0, 0.0, Some((0.0, 1.95))).unwrap();
        assert_eq!(all.widest, 359.0);
    }

    proptest! {
        /// The width read at the limit predicts the limit there (the
        /// maximum at the count it allows is the room), equals the plain
        /// ratio where the room is what the minute itself showed, and is
        /// never below the mean width.
        #[test]
        fn the_ratio_fills_the_room_at_the_count_it_allows(
            running in 1.0f64..20_000.0,
            width in 0.001f64..8.0,
            burst_share in 0.0f64..1.0,
            margin in 1.0f64..1.5,
            room in 1.0f64..20_000.0,
        ) {
            let max = running * width;
            let mean = max * (1.0 - burst_share);
            let f = seen(max, Some(mean));
            let r = ratio(&f, running, running, margin, Some(room));
            let n = room / r;
            let m = mean / running;
            let predicted = margin * (m * n + (max - mean) * (n / running).sqrt());
            prop_assert!((predicted - room).abs() <= room * 1e-9, "{predicted} {room}");
            prop_assert!(r >= m * margin * (1.0 - 1e-12));
            let at_own = ratio(&f, running, running, margin, Some(margin * max));
            let plain = max / running * margin;
            prop_assert!((at_own - plain).abs() <= plain * 1e-9, "{at_own} {plain}");
        }

        /// Whatever the limits and widths, a target at the bound keeps every
        /// function under its limit less the headroom, and the bound is the
        /// tightest one.
        #[test]
        fn the_bound_keeps_every_function_under_its_limit(
            fs in prop::collection::vec((100u32..20_000, 0.1f64..6.0), 1..6),
            k in 1.0f64..8.0,
            headroom in 0.0f64..0.2,
        ) {
            let mut map = BTreeMap::new();
            for (i, &(limit, width)) in fs.iter().enumerate() {
                let mut f = Function::new(width);
                f.known = Some(f64::from(limit));
                map.insert(format!("f{i}"), f);
            }
            let b = tightest(&map, k, headroom, None).unwrap();
            for f in map.values() {
                let w = f.width.value().min(k);
                prop_assert!(b.running * w <= f.known.unwrap() * (1.0 - headroom) * (1.0 + 1e-12));
            }
            prop_assert!(b.width <= k);
        }
    }
}
