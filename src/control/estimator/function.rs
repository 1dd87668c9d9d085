//! Each pipeline function's own constraint: its width ŵ_f (its Lambdas per
//! running execution, learned like k̂) and its concurrency limit L_f, read
//! (reserved concurrency) or, where none is read, learned from the
//! function's throttles. Admission keeps target × ŵ_f ≤ L_f × (1 − headroom)
//! for every function.

use std::collections::BTreeMap;

use super::width::Width;
use super::{ConcurrencySample, Seen};

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
        let running = seen
            .functions
            .values()
            .filter(|(max, _)| *max > 0.0)
            .count();
        let throttled = seen
            .functions
            .values()
            .filter(|(_, t)| t.is_some_and(|t| t > 0.0))
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
                    .map(|(n, &(m, _))| (n.clone(), m))
                    .collect()
            });
        let first = self.seen.range(..minute).next().is_none();
        for (name, &(max, thr)) in &seen.functions {
            let was_throttled = prev
                .and_then(|p| p.functions.get(name))
                .is_some_and(|&(_, t)| t.is_some_and(|t| t > 0.0));
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
    /// execution at its widest there (its prior, or a wider ŵ_f): the
    /// count a new cohort may reach at once.
    pub widest: f64,
}

/// The tightest bound among `functions`, with the widths capped at `k`
/// (no function is wider than the pipeline).
pub(super) fn tightest(
    functions: &BTreeMap<String, Function>,
    k: f64,
    headroom: f64,
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

    proptest! {
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
            let b = tightest(&map, k, headroom).unwrap();
            for f in map.values() {
                let w = f.width.value().min(k);
                prop_assert!(b.running * w <= f.known.unwrap() * (1.0 - headroom) * (1.0 + 1e-12));
            }
            prop_assert!(b.width <= k);
        }
    }
}
