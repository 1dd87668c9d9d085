//! Learns k̂, the Lambda concurrency per running execution, from the
//! 1-minute CloudWatch maxima and the controller's own record of how many
//! executions were running in each minute.
//!
//! Young executions are often narrower than they will be (a single-Lambda
//! prep step before a 3-wide Map), so a ratio measured while the running
//! count grows under-estimates the steady state. k̂ therefore starts at the
//! configured maximum, is lowered only from minutes whose running count
//! was stable for a whole execution lifetime, and is raised at once by any
//! minute that shows more.

use std::collections::BTreeMap;

use crate::ports::ConcurrencySample;

/// The numbers the estimator follows (the controller builds them from its
/// config; a reload hands in new ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Margin added to every measured Lambdas-per-execution ratio.
    pub margin_fraction: f64,
    /// Extra margin of noise_z / √(running executions).
    pub noise_z: f64,
    /// A minute counts for learning only if the running count stayed
    /// within this fraction of its mean for an execution's lifetime.
    pub stability_fraction: f64,
    /// Lower bound of the estimate.
    pub min_lambdas_per_execution: f64,
    /// Where k̂ starts instead of the maximum, when set.
    pub initial_lambdas_per_execution: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct MinuteStats {
    max: f64,
    sum: f64,
    n: u32,
}

impl MinuteStats {
    fn mean(&self) -> f64 {
        self.sum / f64::from(self.n.max(1))
    }
}

/// What one sample did to the estimate (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleUse {
    /// No record of the running count for that minute, or too few running.
    Ignored,
    /// The ratio raised the estimate.
    Raised(f64),
    /// A stable minute: the estimate follows it down (or stays).
    Learned(f64),
    /// Unstable minute below the estimate: kept for safety.
    Held(f64),
    /// Lambda throttled the pipeline in that minute: its concurrency was
    /// capped by Lambda, not set by the controller. Carries the minute's
    /// maximum, the level Lambda allowed.
    Throttled(f64),
}

/// k̂ and what it is learned from.
#[derive(Debug)]
pub struct Estimator {
    cfg: Params,
    k_max: f64,
    k: f64,
    minutes: BTreeMap<u64, MinuteStats>,
    /// Recent stable ratios (with margin); the estimate is their maximum.
    stable: Vec<f64>,
    last_sample_minute: Option<u64>,
    /// Latest other-load reading (account minus pipeline).
    other_load: Option<f64>,
    /// Where k̂ goes at the first usable minute (config or remembered):
    /// not before, so the first ramp is as careful as ever and a stale
    /// value shows itself before it is used.
    prior: Option<f64>,
    /// The value last remembered with the state machine, and the latest
    /// value set by a stable minute since.
    remembered: Option<f64>,
    learned_since: Option<f64>,
}

const MINUTES_KEPT: u64 = 60;
const STABLE_KEPT: usize = 3;
/// Below this many running executions a ratio is mostly noise.
const MIN_RUNNING: f64 = 20.0;

impl Estimator {
    /// An estimator starting at `k_max` (or the configured start).
    pub fn new(cfg: Params, k_max: f64) -> Estimator {
        let prior = cfg.initial_lambdas_per_execution;
        Estimator {
            cfg,
            k_max,
            k: k_max,
            prior,
            minutes: BTreeMap::new(),
            stable: Vec::new(),
            last_sample_minute: None,
            other_load: None,
            remembered: None,
            learned_since: None,
        }
    }

    /// Start from what a previous run remembered, unless the config sets
    /// a starting value or a sample has already moved the estimate.
    pub fn start_from(&mut self, remembered: f64) -> bool {
        self.remembered = Some(remembered);
        if self.cfg.initial_lambdas_per_execution.is_some()
            || self.last_sample_minute.is_some()
            || !remembered.is_finite()
        {
            return false;
        }
        self.prior = Some(remembered);
        true
    }

    /// The estimate to remember now, if it is worth a write: set by a
    /// stable minute since the last write, and moved by more than 0.5 %.
    /// The maximum a run starts at, and raises seen while the pipeline
    /// ramps up or drains, are never written.
    pub fn to_remember(&mut self) -> Option<f64> {
        let k = self.learned_since.take()?;
        let moved = self.remembered.is_none_or(|r| (k - r).abs() > 0.005 * r);
        if moved {
            self.remembered = Some(k);
            return Some(k);
        }
        None
    }

    /// Current Lambdas-per-execution estimate used for admission.
    pub fn k(&self) -> f64 {
        self.k
    }

    /// Other load in the account (account minus pipeline), once seen.
    pub fn other_load(&self) -> Option<f64> {
        self.other_load
    }

    /// A reloaded config: new margins and bounds apply to the next sample;
    /// what was learned is kept.
    pub fn set_config(&mut self, cfg: Params) {
        self.cfg = cfg;
    }

    /// Newest minute a sample was seen for (to ask for newer ones).
    pub fn last_sample_minute(&self) -> Option<u64> {
        self.last_sample_minute
    }

    /// Record the running count at backend time `t_s`.
    pub fn observe_running(&mut self, t_s: f64, running: usize) {
        let minute = (t_s.max(0.0) as u64) / 60 * 60;
        let r = running as f64;
        let e = self.minutes.entry(minute).or_insert(MinuteStats {
            max: 0.0,
            sum: 0.0,
            n: 0,
        });
        e.max = e.max.max(r);
        e.sum += r;
        e.n += 1;
        let oldest = minute.saturating_sub(MINUTES_KEPT * 60);
        while let Some((&m, _)) = self.minutes.first_key_value() {
            if m >= oldest {
                break;
            }
            self.minutes.remove(&m);
        }
    }

    /// Was every minute's mean running count within ±stability of their
    /// common mean, from `window_s` before the minute through its end?
    /// Means, not extremes: the count saw-tooths between reconciles.
    fn stable_through(&self, minute: u64, window_s: f64) -> bool {
        let start = minute as f64 - window_s;
        // The first recorded minute is partial: the window must start after it.
        match self.minutes.first_key_value() {
            Some((&first, _)) if start >= (first + 60) as f64 => {}
            _ => return false,
        }
        let from = start as u64 / 60 * 60;
        let mut means = Vec::new();
        let mut m = from;
        while m <= minute {
            match self.minutes.get(&m) {
                Some(s) => means.push(s.mean()),
                None => return false,
            }
            m += 60;
        }
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        let tol = self.cfg.stability_fraction;
        mean > 0.0 && means.iter().all(|x| (x - mean).abs() <= mean * tol)
    }

    /// Feed one published minute. `lifetime_s` is a high quantile of
    /// observed execution lifetimes, `None` until enough have completed.
    pub fn on_sample(&mut self, s: &ConcurrencySample, lifetime_s: Option<f64>) -> SampleUse {
        self.last_sample_minute = Some(
            self.last_sample_minute
                .map_or(s.minute_start_s, |m| m.max(s.minute_start_s)),
        );
        if let Some(acct) = s.account_max {
            self.other_load = Some((acct - s.pipeline_max).max(0.0));
        }
        if s.throttles.is_some_and(|t| t > 0.0) {
            return SampleUse::Throttled(s.pipeline_max);
        }
        let Some(stats) = self.minutes.get(&s.minute_start_s).copied() else {
            return SampleUse::Ignored;
        };
        // Compare maximum with maximum: while the count grows within the
        // minute, the concurrency peak comes with the count's peak, and a
        // ratio to the mean would over-state the width.
        let running = stats.max;
        if running < MIN_RUNNING {
            return SampleUse::Ignored;
        }
        // No execution is wider than k_max: a higher ratio is an artefact
        // (per-function maxima from different moments, summed).
        // A sum over N executions wanders by about 1/√N of itself from
        // minute to minute: a small pipeline needs a wider margin.
        let margin = self.cfg.margin_fraction + self.cfg.noise_z / running.sqrt();
        let ratio = (s.pipeline_max / running * (1.0 + margin)).min(self.k_max);
        if let Some(p) = self.prior.take() {
            self.k = self
                .k
                .min(p.clamp(self.cfg.min_lambdas_per_execution, self.k_max));
        }
        let stable = lifetime_s.is_some_and(|w| self.stable_through(s.minute_start_s, w));
        if ratio > self.k {
            self.k = ratio;
            self.stable.clear();
            // Only a stable minute's width is worth remembering: a ramp
            // or a drain mixes ages unlike a steady pipeline.
            if stable {
                self.learned_since = Some(ratio);
            }
            return SampleUse::Raised(ratio);
        }
        if !stable {
            return SampleUse::Held(ratio);
        }
        self.stable.push(ratio);
        if self.stable.len() > STABLE_KEPT {
            self.stable.remove(0);
        }
        let learned = self.stable.iter().copied().fold(0.0, f64::max);
        self.k = learned.clamp(self.cfg.min_lambdas_per_execution, self.k_max);
        self.learned_since = Some(self.k);
        SampleUse::Learned(self.k)
    }
}

// The tests compare results of exact arithmetic.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            margin_fraction: 0.005,
            noise_z: 1.0,
            stability_fraction: 0.06,
            min_lambdas_per_execution: 1.0,
            initial_lambdas_per_execution: None,
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
            let use_ = e.on_sample(&sample(m, 1.2 * (m * 600 + 300) as f64), Some(90.0));
            assert!(matches!(use_, SampleUse::Held(_)), "minute {m}: {use_:?}");
        }
        assert_eq!(e.k(), 3.0);
    }

    #[test]
    fn a_stable_population_teaches_the_real_width() {
        let mut e = est();
        run(&mut e, 0, 600, |_| 5000);
        let got = e.on_sample(&sample(5, 9500.0), Some(120.0));
        let c = params();
        let want = 1.9 * (1.0 + c.margin_fraction + c.noise_z / 5000f64.sqrt());
        assert!(
            matches!(got, SampleUse::Learned(k) if (k - want).abs() < 1e-9),
            "{got:?}"
        );
        assert!((e.k() - want).abs() < 1e-9);
    }

    #[test]
    fn a_wider_minute_raises_at_once_even_when_unstable() {
        let mut e = est();
        run(&mut e, 0, 600, |_| 5000);
        e.on_sample(&sample(5, 9500.0), Some(120.0));
        run(&mut e, 600, 660, |t| 5000 + (t as usize - 600) * 20);
        let got = e.on_sample(&sample(10, 16_000.0), Some(120.0));
        assert!(matches!(got, SampleUse::Raised(_)), "{got:?}");
        assert!(e.k() > 2.5);
    }

    #[test]
    fn no_lifetime_known_means_no_learning() {
        let mut e = est();
        run(&mut e, 0, 600, |_| 5000);
        assert!(matches!(
            e.on_sample(&sample(5, 9500.0), None),
            SampleUse::Held(_)
        ));
        assert_eq!(e.k(), 3.0);
    }

    #[test]
    fn a_throttled_minute_teaches_nothing() {
        let mut e = est();
        run(&mut e, 0, 600, |_| 5000);
        let s = ConcurrencySample {
            throttles: Some(120.0),
            ..sample(5, 6000.0)
        };
        assert_eq!(e.on_sample(&s, Some(120.0)), SampleUse::Throttled(6000.0));
        assert_eq!(e.k(), 3.0);
    }

    #[test]
    fn minutes_before_the_controller_ran_are_ignored() {
        let mut e = est();
        run(&mut e, 600, 700, |_| 100);
        assert_eq!(
            e.on_sample(&sample(2, 500.0), Some(60.0)),
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
        let got = e.on_sample(&sample(1, 2.2 * 1200.0), Some(90.0));
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
        let got = e.on_sample(&sample(11, 2.5 * 5000.0), Some(120.0));
        assert!(matches!(got, SampleUse::Raised(_)), "{got:?}");
        assert_eq!(e.to_remember(), None);
    }
}
