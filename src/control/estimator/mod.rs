//! Learns k̂, the Lambda concurrency per running execution, from the
//! 1-minute CloudWatch maxima and the controller's own record of how many
//! executions were running in each minute; and, per pipeline function, its
//! width ŵ_f and its concurrency limit (`function`).
//!
//! Young executions are often narrower than they will be (a single-Lambda
//! prep step before a 3-wide Map), so a ratio measured while the running
//! count grows under-estimates the steady state. k̂ therefore starts at the
//! configured maximum (the cold-start prior), is lowered only from minutes
//! whose running count was stable for a whole execution lifetime, and is
//! raised at once by any minute that shows more, above the configured
//! maximum too: measurement wins over configuration.
//!
//! CloudWatch revises a minute after it first appears (late datapoints), so
//! a minute is used only once it is complete plus `settle_s`, the last few
//! minutes are read again on every poll, and a value read again higher than
//! the one used raises the estimate (a lower one is ignored).

mod age;
mod function;
mod width;

use std::collections::BTreeMap;

use crate::control::asl::{Widths, function_name};
use crate::ports::ConcurrencySample;
use age::{Profile, Starts};
use function::Function;
pub use function::{FunctionBound, LEARNED_LIMIT_RAISE};
use width::Width;

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
    /// Seconds after a minute ends before its maxima are used.
    pub settle_s: f64,
    /// The account's concurrency limit, when known: a function throttled
    /// while the account is at it teaches no limit of the function's own.
    pub account_limit: Option<f64>,
    /// The fraction of a function's limit admission keeps free: a limited
    /// function's minute is read at the running count its limit allows
    /// (`function::ratio`).
    pub headroom_fraction: f64,
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
    /// Unstable (or throttled) minute below the estimate: kept for safety.
    Held(f64),
    /// A minute read again with nothing higher than what was used.
    Unchanged,
}

/// What one published minute told the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The minute's start.
    pub minute: u64,
    /// What it did to k̂.
    pub width: SampleUse,
    /// Lambda throttled the pipeline in that minute (first seen now):
    /// the level it allowed, the tightest upper bound of the pipeline's
    /// maximum.
    pub throttled: Option<f64>,
    /// A minute used for the first time, with no throttles.
    pub clean: bool,
    /// A minute used before, read again with a higher value.
    pub reread: bool,
    /// The measured Lambdas per running execution, without margin.
    pub measured: Option<f64>,
    /// The measured width is above the configured maximum, and higher by
    /// a tenth than any reported before: report it.
    pub over_max: Option<f64>,
    /// Function limits learned from this minute's throttles.
    pub limits_learned: Vec<(String, f64)>,
    /// Every function throttled in it was growing at Lambda's scaling
    /// rate: the throttles say how fast it may grow, not how high.
    pub scaling: bool,
    /// The controller's most running executions in that minute.
    pub running: Option<f64>,
}

impl Reading {
    fn new(minute: u64, reread: bool) -> Reading {
        Reading {
            minute,
            width: SampleUse::Ignored,
            throttled: None,
            clean: false,
            reread,
            measured: None,
            over_max: None,
            limits_learned: Vec::new(),
            scaling: false,
            running: None,
        }
    }
}

/// What was used of one minute, to compare a re-read with.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    bound: f64,
    throttled: bool,
    /// Per function: its maximum, mean and throttles.
    functions: BTreeMap<String, FunctionSeen>,
}

/// What was used of one function's minute.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FunctionSeen {
    max: f64,
    mean: Option<f64>,
    throttles: Option<f64>,
}

impl Seen {
    /// The minute's values; `bound` is the tightest valid upper bound of
    /// the pipeline's maximum: the sum of per-function maxima (taken at
    /// different seconds) and the account-wide maximum (the pipeline plus
    /// the rest) both bound it from above.
    fn of(s: &ConcurrencySample) -> Seen {
        let mut bound = s.pipeline_max;
        if !s.functions.is_empty() {
            bound = bound.min(s.functions.iter().map(|f| f.max).sum());
        }
        if let Some(acct) = s.account_max {
            bound = bound.min(acct);
        }
        Seen {
            bound,
            throttled: s.throttles.is_some_and(|t| t > 0.0),
            functions: s
                .functions
                .iter()
                .map(|f| {
                    let seen = FunctionSeen {
                        max: f.max,
                        mean: f.mean,
                        throttles: f.throttles,
                    };
                    (f.name.clone(), seen)
                })
                .collect(),
        }
    }

    /// The higher of each value (a higher mean reads the function wider
    /// above the count it ran at: `function::ratio`).
    fn merge(&self, new: &Seen) -> Seen {
        let higher = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let mut functions = self.functions.clone();
        for (name, n) in &new.functions {
            let e = functions.entry(name.clone()).or_insert(*n);
            e.max = e.max.max(n.max);
            e.mean = higher(e.mean, n.mean);
            e.throttles = higher(e.throttles, n.throttles);
        }
        Seen {
            bound: self.bound.max(new.bound),
            throttled: self.throttled || new.throttled,
            functions,
        }
    }
}

/// k̂, each function's width and limit, and what they are learned from.
#[derive(Debug)]
pub struct Estimator {
    cfg: Params,
    k_max: f64,
    k: Width,
    minutes: BTreeMap<u64, MinuteStats>,
    /// What was used of each recent minute.
    seen: BTreeMap<u64, Seen>,
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
    /// The last measured width, and the highest one reported above k_max.
    measured: Option<f64>,
    reported_over: f64,
    functions: BTreeMap<String, Function>,
    /// The state machine definition's bound, once read (`set_definition`).
    definition: Option<Widths>,
    /// The controller's starts, for the widths by age.
    starts: Starts,
    /// A high quantile of lifetimes: the ages a profile covers.
    horizon: Option<f64>,
    /// Lifetimes are not known yet: the horizon is every age seen so far.
    horizon_open: bool,
    /// The last allowance computed: its second, the starts then, its value.
    allowance: Option<(u64, u64, Option<f64>)>,
}

/// What the state machine definition's bound did to the estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DefinitionUse {
    /// The definition bounds no Lambda (no Lambda task, or one it cannot
    /// bound): the configured maximum stays the cold-start prior.
    Unbounded,
    /// The same definition as before: nothing changed.
    Unchanged,
    /// The definition's bound is the cold-start prior now (before any
    /// minute was used): `configured` is the config's value.
    Prior {
        /// The definition's bound.
        bound: f64,
        /// `max_lambdas_per_execution` from the config.
        configured: f64,
    },
    /// A definition changed while running allows wider executions than the
    /// estimate: the estimate is raised to its bound at once.
    Raised(f64),
}

const MINUTES_KEPT: u64 = 60;
/// Below this many running executions a ratio is mostly noise.
const MIN_RUNNING: f64 = 20.0;
/// Minutes read again on every poll, the newest used one included.
pub const REREAD_MINUTES: u64 = 5;

impl Estimator {
    /// An estimator starting at `k_max` (or the configured start).
    pub fn new(cfg: Params, k_max: f64) -> Estimator {
        let prior = cfg.initial_lambdas_per_execution;
        Estimator {
            cfg,
            k_max,
            k: Width::new(k_max),
            prior,
            minutes: BTreeMap::new(),
            seen: BTreeMap::new(),
            last_sample_minute: None,
            other_load: None,
            remembered: None,
            learned_since: None,
            measured: None,
            reported_over: k_max,
            functions: BTreeMap::new(),
            definition: None,
            starts: Starts::default(),
            horizon: None,
            horizon_open: true,
            allowance: None,
        }
    }

    /// The widest an execution can be, read from the state machine's
    /// definition: the physics, where the config's maximum is a guess. Read
    /// before the first minute, a bounded total replaces the configured
    /// maximum as the cold-start prior (the remembered or configured start
    /// still applies at the first usable minute), and each function's own
    /// bound becomes its width's prior. Read again later with a different
    /// definition, a bound above the estimate raises it at once. A total of
    /// 0 (no Lambda task) or an unbounded one changes nothing: the
    /// pipeline's functions may then be invoked in ways the definition
    /// does not show.
    pub fn set_definition(&mut self, w: Widths) -> DefinitionUse {
        if self.definition.as_ref() == Some(&w) {
            return DefinitionUse::Unchanged;
        }
        let first = self.definition.is_none();
        let total = w.total.filter(|&t| t >= 1.0 && t.is_finite());
        self.definition = Some(w);
        let Some(t) = total else {
            return DefinitionUse::Unbounded;
        };
        if first && self.last_sample_minute.is_none() {
            let configured = self.k_max;
            self.k_max = t;
            self.k = Width::new(t);
            self.reported_over = t;
            for (name, f) in &mut self.functions {
                f.width = Width::new(Self::prior_of(self.definition.as_ref(), name, t));
            }
            return DefinitionUse::Prior {
                bound: t,
                configured,
            };
        }
        self.k_max = self.k_max.max(t);
        if t > self.k.value() {
            self.k.raise_to(t);
            return DefinitionUse::Raised(t);
        }
        DefinitionUse::Unchanged
    }

    /// A function's width prior: its bound in the definition when the
    /// definition names it, else the pipeline's maximum.
    fn prior_of(def: Option<&Widths>, name: &str, k_max: f64) -> f64 {
        let Some(w) = def else { return k_max };
        let key = function_name(name).unwrap_or_else(|| name.to_string());
        match w.function(&key) {
            Some(b) if b >= 1.0 => b.min(k_max),
            _ => k_max,
        }
    }

    /// A new function's state, at its prior.
    fn function_entry(&mut self, name: &str) -> &mut Function {
        let prior = Self::prior_of(self.definition.as_ref(), name, self.k_max);
        self.functions
            .entry(name.to_string())
            .or_insert_with(|| Function::new(prior))
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
        self.k.value()
    }

    /// The configured maximum: the cold-start prior.
    pub fn k_max(&self) -> f64 {
        self.k_max
    }

    /// The last measured Lambdas per running execution, without margin.
    pub fn measured(&self) -> Option<f64> {
        self.measured
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

    /// Newest minute a sample was used for.
    pub fn last_sample_minute(&self) -> Option<u64> {
        self.last_sample_minute
    }

    /// The first minute to ask for: the last `REREAD_MINUTES` used ones
    /// are read again (CloudWatch revises them), never before `first`.
    pub fn since(&self, first: u64) -> u64 {
        self.last_sample_minute
            .map_or(first, |m| m.saturating_sub((REREAD_MINUTES - 1) * 60))
            .max(first)
    }

    /// Whether the minute starting at `minute_start` may be used at backend
    /// time `now_s`: complete, and settled for `settle_s` after its end.
    pub fn settled(&self, minute_start: u64, now_s: f64) -> bool {
        (minute_start + 60) as f64 + self.cfg.settle_s <= now_s
    }

    /// A minute complete on our side but not yet settled: CloudWatch only
    /// fills a minute in, so its ratio can only grow and may raise k̂ (and
    /// a function's width) now; lowering waits until it settles, when
    /// `on_sample` reads it whole. Returns k̂ if raised.
    pub fn peek(&mut self, s: &ConcurrencySample, now_s: f64) -> Option<f64> {
        if ((s.minute_start_s + 60) as f64) > now_s {
            return None;
        }
        let stats = *self.minutes.get(&s.minute_start_s)?;
        let running = stats.max;
        if running < MIN_RUNNING {
            return None;
        }
        let seen = Seen::of(s);
        let margin = self.margin(running);
        let headroom = self.cfg.headroom_fraction;
        for (name, fm) in &seen.functions {
            let f = self.function_entry(name);
            let room = f.limit().map(|l| l * (1.0 - headroom));
            let ratio = function::ratio(fm, running, stats.mean(), margin, room);
            f.width.raise_to(ratio);
        }
        let ratio = seen.bound / running * margin;
        (ratio > self.k.value()).then(|| {
            self.k.raise_to(ratio);
            ratio
        })
    }

    /// The functions' limits as read from the backend (None: no limit
    /// set). Returns whether any read limit changed.
    pub fn set_function_limits(&mut self, limits: &[(String, Option<u32>)]) -> bool {
        let mut changed = false;
        for (name, limit) in limits {
            let f = self.function_entry(name);
            let l = limit.map(f64::from);
            changed |= f.known != l;
            f.known = l;
        }
        changed
    }

    /// The function limit that binds the running count tightest, with its
    /// width capped at k̂ (`headroom`: the fraction of a limit kept free).
    pub fn function_bound(&self, headroom: f64) -> Option<FunctionBound> {
        let reserved: f64 = self.functions.values().filter_map(|f| f.known).sum();
        let pool = self
            .cfg
            .account_limit
            .map(|l| l - reserved - self.other_load.unwrap_or(0.0));
        // An execution is at most as wide as the widest of k̂ and its prior.
        let pool = pool.map(|p| (p, self.k().max(self.k_max)));
        function::tightest(&self.functions, self.k(), headroom, pool)
    }

    /// Each function's width ŵ_f and limit (read or learned), by name.
    pub fn function_widths(&self) -> Vec<(String, f64, Option<f64>)> {
        self.functions
            .iter()
            .map(|(n, f)| (n.clone(), f.width.value(), f.limit()))
            .collect()
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
        while self
            .minutes
            .first_key_value()
            .is_some_and(|(&m, _)| m < oldest)
        {
            self.minutes.pop_first();
        }
        while self
            .seen
            .first_key_value()
            .is_some_and(|(&m, _)| m < oldest)
        {
            self.seen.pop_first();
        }
        self.starts
            .prune(oldest as f64 - self.horizon.unwrap_or(0.0).max(3600.0));
    }

    /// Was every minute's mean running count within ±stability of their
    /// common mean, from `window_s` before the minute's end through it?
    /// Before its end, not its start: the minute's maximum is taken over
    /// all its seconds, so it is at least what its last second read, when
    /// the population had held still for a lifetime. Means, not extremes:
    /// the count saw-tooths between reconciles.
    fn stable_through(&self, minute: u64, window_s: f64) -> bool {
        let start = (minute + 60) as f64 - window_s;
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

    /// Feed one published minute (settled: see `settled`). `lifetime_s` is
    /// a high quantile of observed execution lifetimes, `None` until
    /// enough have completed. A minute fed again counts only for what it
    /// shows higher than before.
    pub fn on_sample(&mut self, s: &ConcurrencySample, lifetime_s: Option<f64>) -> Reading {
        let minute = s.minute_start_s;
        let fresh = Seen::of(s);
        let prev = self.seen.get(&minute).cloned();
        let seen = match &prev {
            None => fresh,
            Some(p) => {
                let merged = p.merge(&fresh);
                if merged == *p {
                    return Reading {
                        width: SampleUse::Unchanged,
                        ..Reading::new(minute, true)
                    };
                }
                merged
            }
        };
        self.seen.insert(minute, seen.clone());
        self.fit_profiles();
        let mut r = Reading::new(minute, prev.is_some());
        if self.last_sample_minute.is_none_or(|m| minute >= m) {
            self.last_sample_minute = Some(minute);
            if let Some(acct) = s.account_max {
                let other = (acct - s.pipeline_max).max(0.0);
                self.other_load = Some(match (&prev, self.other_load) {
                    (Some(_), Some(o)) => o.max(other),
                    _ => other,
                });
            }
        }
        if seen.throttled && !prev.as_ref().is_some_and(|p| p.throttled) {
            r.throttled = Some(seen.bound);
        }
        r.clean = prev.is_none() && s.throttles.is_some_and(|t| t <= 0.0);
        (r.limits_learned, r.scaling) = self.learn_limits(s, &seen, prev.as_ref());
        r.running = self.minutes.get(&minute).map(|m| m.max);
        let Some(stats) = self.minutes.get(&minute).copied() else {
            return r;
        };
        // Compare maximum with maximum: while the count grows within the
        // minute, the concurrency peak comes with the count's peak, and a
        // ratio to the mean would over-state the width.
        let running = stats.max;
        if running < MIN_RUNNING {
            self.ease_functions(&seen, stats);
            return r;
        }
        self.feed_widths(&mut r, &seen, stats, lifetime_s);
        r
    }

    /// The factor a measured ratio is raised by at `running` executions:
    /// the configured margin, and the minute-to-minute wander of a sum
    /// over N executions (about 1/√N of itself).
    fn margin(&self, running: f64) -> f64 {
        1.0 + self.cfg.margin_fraction + self.cfg.noise_z / running.sqrt()
    }

    /// A pipeline too small to learn from (under `MIN_RUNNING`): a function
    /// that ran far under its limit without a throttle eases its width
    /// toward the minute's ratio, `FUNCTION_EASE` a minute. Its own bound
    /// may hold the pipeline that small (a reservation of a few Lambdas on
    /// a short first step), and no minute would ever teach it otherwise.
    /// Larger pipelines learn the widest phase of a lifetime instead:
    /// easing there would lower a width while a cohort is elsewhere.
    fn ease_functions(&mut self, seen: &Seen, stats: MinuteStats) {
        if stats.max < 1.0 {
            return;
        }
        let margin = self.margin(stats.max);
        let headroom = self.cfg.headroom_fraction;
        for (name, fm) in &seen.functions {
            let f = self.function_entry(name);
            let Some(limit) = f.limit() else {
                continue;
            };
            if fm.throttles.is_some_and(|t| t > 0.0) || fm.max >= FUNCTION_ROOM * limit {
                continue;
            }
            let room = limit * (1.0 - headroom);
            let ratio = function::ratio(fm, stats.max, stats.mean(), margin, Some(room));
            f.width.ease_to(ratio, FUNCTION_EASE);
        }
    }

    /// k̂ and each function's width from a usable minute.
    fn feed_widths(
        &mut self,
        r: &mut Reading,
        seen: &Seen,
        stats: MinuteStats,
        lifetime_s: Option<f64>,
    ) {
        let running = stats.max;
        let margin = self.margin(running);
        let floor = self.cfg.min_lambdas_per_execution;
        if let Some(p) = self.prior.take() {
            self.k.lower_to(p.clamp(floor, self.k_max));
        }
        // A throttled minute was capped by Lambda: it may raise, never lower.
        let stable =
            !seen.throttled && lifetime_s.is_some_and(|w| self.stable_through(r.minute, w));
        let keep_s = lifetime_s;
        let measured = seen.bound / running;
        r.measured = Some(measured);
        self.measured = Some(measured);
        // No clamp at the configured maximum: it is a prior, and a wider
        // measured execution raises k̂ with the same margins.
        r.width = self
            .k
            .feed(r.minute, measured * margin, stable, keep_s, floor);
        match r.width {
            // Only a stable minute's width is worth remembering: a ramp
            // or a drain mixes ages unlike a steady pipeline.
            SampleUse::Raised(k) if stable => self.learned_since = Some(k),
            SampleUse::Learned(k) => self.learned_since = Some(k),
            _ => {}
        }
        if measured > self.k_max && measured > self.reported_over * 1.1 {
            self.reported_over = measured;
            r.over_max = Some(measured);
        }
        let headroom = self.cfg.headroom_fraction;
        for (name, fm) in &seen.functions {
            let f_stable = stable && !fm.throttles.is_some_and(|t| t > 0.0);
            let f = self.function_entry(name);
            let room = f.limit().map(|l| l * (1.0 - headroom));
            let ratio = function::ratio(fm, running, stats.mean(), margin, room);
            f.width.feed(r.minute, ratio, f_stable, keep_s, 0.0);
        }
    }
}

/// A function whose minute maximum stayed under this fraction of its limit
/// had room: its width may ease down.
const FUNCTION_ROOM: f64 = 0.8;

/// How far a function's width eases per minute with room (a tenth: the
/// bound it sets rises at most ~11 % a minute, so from under 80 % of the
/// limit the next minute stays under it).
const FUNCTION_EASE: f64 = 0.1;

#[cfg(test)]
mod tests;
