//! Lambda: the pipeline's functions in an account with a concurrency
//! limit, reserved concurrency, an unreserved pool shared with the
//! account's other load, and scaling either per function (with warm
//! environments) or by the legacy account-wide burst.
//!
//! Each minute is traced second by second for CloudWatch: every
//! function's maximum and throttles, and the maximum of the account-wide
//! sum. AWS documents the account-wide `ConcurrentExecutions` as "an
//! aggregate metric for all functions in the account" whose value is the
//! concurrent executions "at a given point in time", viewed with MAX: its
//! 1-minute maximum is the maximum over the minute of the *sum*, at most
//! the sum of the per-function maxima (two functions peaking at different
//! seconds do not add up in it).

use std::collections::HashMap;

use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};

use crate::ports::{ConcurrencySample, FunctionSample};
use crate::sim::scenario::{LambdaModel, OtherLoad, Scaling};

/// The other functions' concurrency at `t`: what they would run
/// unthrottled.
pub(super) fn other_load(o: &OtherLoad, t: f64) -> f64 {
    let mut v = o.base;
    if o.period_secs > 0.0 {
        v += o.amplitude * (2.0 * std::f64::consts::PI * t / o.period_secs).sin();
    }
    for s in &o.steps {
        if t >= s.start_secs && t < s.start_secs + s.duration_secs {
            v += s.add;
        }
    }
    v.max(0.0)
}

/// One minute second by second: what CloudWatch publishes it from, whole
/// or (while it fills in) only its first seconds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MinuteTrace {
    start: u64,
    names: Vec<String>,
    /// Per function, per second of the minute: its maximum concurrency.
    func_max: Vec<[u32; 60]>,
    /// Per function, per second: its concurrency integrated over the
    /// second (the time-average, CloudWatch's Average).
    func_area: Vec<[f64; 60]>,
    /// Per function, per second: its throttled invocations.
    func_throttles: Vec<[u32; 60]>,
    /// Per second: the maximum of the account-wide sum (pipeline + others).
    account: [f64; 60],
}

impl MinuteTrace {
    /// The minute starting at `start`, nothing recorded yet.
    pub(super) fn new(start: u64, names: &[String]) -> MinuteTrace {
        MinuteTrace {
            start,
            names: names.to_vec(),
            func_max: vec![[0; 60]; names.len()],
            func_area: vec![[0.0; 60]; names.len()],
            func_throttles: vec![[0; 60]; names.len()],
            account: [0.0; 60],
        }
    }

    /// The second of the minute `t` falls in (its end counts in the last).
    fn second(&self, t: f64) -> usize {
        ((t - self.start as f64).max(0.0) as usize).min(59)
    }

    /// Function `f` ran `conc` at `t`.
    pub(super) fn function_at(&mut self, f: usize, t: f64, conc: u32) {
        let s = self.second(t);
        self.func_max[f][s] = self.func_max[f][s].max(conc);
    }

    /// Function `f` ran `conc` from `from` to `to`, within one second.
    pub(super) fn function_during(&mut self, f: usize, from: f64, to: f64, conc: u32) {
        let s = self.second(from);
        self.func_area[f][s] += f64::from(conc) * (to - from);
    }

    /// Function `f` was throttled at `t`.
    pub(super) fn throttle_at(&mut self, f: usize, t: f64) {
        let s = self.second(t);
        self.func_throttles[f][s] += 1;
    }

    /// The account ran `total` (every function) at `t`.
    pub(super) fn account_at(&mut self, t: f64, total: f64) {
        let s = self.second(t);
        self.account[s] = self.account[s].max(total);
    }

    /// The minute's first `secs` seconds as CloudWatch shows them (60: the
    /// whole minute): each function's maximum, mean and throttles, the
    /// pipeline as Σ per-function maxima, the account as the maximum of the
    /// sum.
    pub(super) fn sample(&self, secs: usize) -> ConcurrencySample {
        let n = secs.clamp(1, 60);
        let functions: Vec<FunctionSample> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| FunctionSample {
                name: name.clone(),
                max: f64::from(self.func_max[i][..n].iter().copied().max().unwrap_or(0)),
                mean: Some(self.func_area[i][..n].iter().sum::<f64>() / n as f64),
                throttles: Some(f64::from(self.func_throttles[i][..n].iter().sum::<u32>())),
            })
            .collect();
        ConcurrencySample {
            minute_start_s: self.start,
            pipeline_max: functions.iter().map(|f| f.max).sum(),
            account_max: Some(self.account[..n].iter().copied().fold(0.0, f64::max)),
            throttles: Some(functions.iter().filter_map(|f| f.throttles).sum()),
            functions,
        }
    }
}

#[derive(Debug)]
struct Func {
    name: String,
    conc: u32,
    peak: u32,
    cap: f64,
    cap_t: f64,
    /// Environments kept warm: the concurrency the function can return to
    /// without scaling; it decays as idle environments are reclaimed.
    warm: f64,
    reserved: Option<u32>,
    /// Invocations throttled over the run.
    throttles: u64,
    /// Durations of the tasks that run on this function.
    dist: Vec<LogNormal<f64>>,
}

/// One pipeline function over the whole run, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStats {
    /// The function's name.
    pub name: String,
    /// Its highest concurrency.
    pub peak: u32,
    /// Its reserved concurrency, if any.
    pub reserved: Option<u32>,
    /// Its invocations Lambda throttled.
    pub throttles: u64,
}

/// An invocation Lambda admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Invocation {
    /// Seconds it runs, cold start included.
    pub(super) duration: f64,
    /// Whether it succeeds.
    pub(super) ok: bool,
}

/// The pipeline's functions and the account they run in.
#[derive(Debug)]
pub(super) struct Lambda {
    model: LambdaModel,
    other: OtherLoad,
    funcs: Vec<Func>,
    index: HashMap<String, u16>,
    /// Environments in use over every pipeline function.
    pipeline_conc: u32,
    /// The legacy model's account-wide scaling cap and when it was updated.
    acct_cap: f64,
    acct_cap_t: f64,
    /// The minute in progress, second by second.
    trace: MinuteTrace,
    /// The account limit less every reservation.
    unreserved_pool: f64,
    /// The highest account-wide sum observed (pipeline + others in use).
    account_peak: f64,
}

impl Lambda {
    /// The functions `names`, idle, with no task durations yet.
    pub(super) fn new(model: &LambdaModel, other: &OtherLoad, names: &[String]) -> Lambda {
        let funcs = names
            .iter()
            .map(|n| Func {
                name: n.clone(),
                conc: 0,
                peak: 0,
                cap: model.scale_step,
                cap_t: 0.0,
                warm: 0.0,
                reserved: model.reserved.get(n).copied(),
                throttles: 0,
                dist: Vec::new(),
            })
            .collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
        let reserved_total: u32 = model.reserved.values().sum::<u32>() + other.reserved;
        let mut l = Lambda {
            model: model.clone(),
            other: other.clone(),
            funcs,
            index,
            pipeline_conc: 0,
            acct_cap: model.legacy_burst,
            acct_cap_t: 0.0,
            trace: MinuteTrace::new(0, names),
            unreserved_pool: f64::from(model.account_limit.saturating_sub(reserved_total)),
            account_peak: 0.0,
        };
        l.observe(0.0);
        l
    }

    /// A task on function `name` lasting lognormal(median, sigma): the
    /// function and the index of the task's duration.
    pub(super) fn add_task(&mut self, name: &str, median: f64, sigma: f64) -> (u16, usize) {
        let f = self.index[name];
        let dist = &mut self.funcs[f as usize].dist;
        dist.push(LogNormal::new(median.ln(), sigma.max(1e-9)).expect("valid lognormal"));
        (f, dist.len() - 1)
    }

    /// Pipeline functions.
    pub(super) fn function_count(&self) -> usize {
        self.index.len()
    }

    /// The highest account-wide concurrency so far, other load included.
    pub(super) fn account_peak(&self) -> f64 {
        self.account_peak
    }

    /// Environments in use over every pipeline function.
    pub(super) fn concurrency(&self) -> u32 {
        self.pipeline_conc
    }

    /// Every function ran its current concurrency from `from` to `to`,
    /// within one second of the minute in progress.
    pub(super) fn integrate(&mut self, from: f64, to: f64) {
        for (i, f) in self.funcs.iter().enumerate() {
            if f.conc > 0 {
                self.trace.function_during(i, from, to, f.conc);
            }
        }
    }

    /// Environments pipeline functions without a reservation use (they
    /// share the unreserved pool with the other functions).
    fn unreserved_used(&self) -> u32 {
        self.funcs
            .iter()
            .filter(|x| x.reserved.is_none())
            .map(|x| x.conc)
            .sum()
    }

    /// The other functions' concurrency in use at `t`. With a reservation
    /// they run at most that ("reserved concurrency ... is also the maximum
    /// concurrency"), outside the unreserved pool; without one they run
    /// in the unreserved pool, in what the pipeline leaves of it.
    fn other_in_use(&self, t: f64) -> f64 {
        let load = other_load(&self.other, t);
        if self.other.reserved > 0 {
            load.min(f64::from(self.other.reserved))
        } else {
            load.min((self.unreserved_pool - f64::from(self.unreserved_used())).max(0.0))
        }
    }

    /// Record the account-wide sum at `t` in the minute's trace. The world
    /// calls it at least once a second and at every change of the
    /// pipeline, so the minute's maximum follows the other load too.
    pub(super) fn observe(&mut self, t: f64) {
        let total = f64::from(self.pipeline_conc) + self.other_in_use(t);
        self.trace.account_at(t, total);
        self.account_peak = self.account_peak.max(total);
    }

    /// Can function `f` get one more environment now?
    pub(super) fn admits(&mut self, f: u16, now: f64) -> bool {
        let l = &self.model;
        let func = &self.funcs[f as usize];
        if let Some(r) = func.reserved {
            if func.conc >= r {
                return false;
            }
        } else {
            // The other functions draw on the unreserved pool only when
            // they have no reservation of their own.
            let other = if self.other.reserved > 0 {
                0.0
            } else {
                other_load(&self.other, now)
            };
            if f64::from(self.unreserved_used()) + other + 1.0 > self.unreserved_pool {
                return false;
            }
        }
        let func = &mut self.funcs[f as usize];
        match l.scaling {
            Scaling::PerFunction => {
                let rate = l.scale_step / l.scale_period_secs;
                let dt = now - func.cap_t;
                let conc = f64::from(func.conc);
                func.warm = (func.warm * (1.0 - l.warm_decay_per_minute).powf(dt / 60.0)).max(conc);
                func.cap = (func.cap + rate * dt).min(func.warm + l.scale_step);
                func.cap_t = now;
                f64::from(func.conc) < func.cap
            }
            Scaling::Legacy => {
                let rate = l.legacy_per_minute / 60.0;
                self.acct_cap = (self.acct_cap + rate * (now - self.acct_cap_t))
                    .min(f64::from(self.pipeline_conc) + l.legacy_burst);
                self.acct_cap_t = now;
                f64::from(self.pipeline_conc) < self.acct_cap
            }
        }
    }

    /// An invocation of `f` was throttled at `now` (counted in the minute's
    /// metric and the function's total).
    pub(super) fn throttled(&mut self, f: u16, now: f64) {
        self.funcs[f as usize].throttles += 1;
        self.trace.throttle_at(f as usize, now);
    }

    /// Run task `dist` on function `f` at `now`, which `admits` let in.
    /// Draws the duration, then the outcome.
    pub(super) fn invoke(&mut self, f: u16, dist: usize, now: f64, rng: &mut StdRng) -> Invocation {
        let func = &mut self.funcs[f as usize];
        func.conc += 1;
        let conc = func.conc;
        let mut duration = func.dist[dist].sample(rng);
        if func.conc > func.peak {
            func.peak = func.conc;
            duration += self.model.cold_start_ms as f64 / 1000.0;
        }
        self.pipeline_conc += 1;
        self.trace.function_at(f as usize, now, conc);
        self.observe(now);
        let rate = match self.model.errors_until_secs {
            Some(until) if now >= until => 0.0,
            _ => self.model.error_rate,
        };
        let ok = rng.random::<f64>() >= rate;
        Invocation { duration, ok }
    }

    /// An invocation of `f` ended.
    pub(super) fn finish(&mut self, f: u16) {
        self.funcs[f as usize].conc -= 1;
        self.pipeline_conc -= 1;
    }

    /// Close the minute starting at `start` (at its end): its trace. The
    /// next minute starts from the concurrency in use now.
    pub(super) fn close_minute(&mut self, start: u64) -> MinuteTrace {
        let next = start + 60;
        let names: Vec<String> = self.funcs.iter().map(|f| f.name.clone()).collect();
        let trace = std::mem::replace(&mut self.trace, MinuteTrace::new(next, &names));
        debug_assert_eq!(trace.start, start, "minutes close in order");
        for (i, f) in self.funcs.iter().enumerate() {
            self.trace.function_at(i, next as f64, f.conc);
        }
        self.observe(next as f64);
        trace
    }

    /// Each pipeline function's reserved concurrency (GetFunctionConcurrency).
    pub(super) fn limits(&self) -> Vec<(String, Option<u32>)> {
        self.funcs
            .iter()
            .map(|f| (f.name.clone(), f.reserved))
            .collect()
    }

    /// Each pipeline function over the run so far.
    pub(super) fn function_stats(&self) -> Vec<FunctionStats> {
        self.funcs
            .iter()
            .map(|f| FunctionStats {
                name: f.name.clone(),
                peak: f.peak,
                reserved: f.reserved,
                throttles: f.throttles,
            })
            .collect()
    }
}

// The tests compare exact values: whole numbers and exact fractions.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::SeedableRng;

    use super::*;

    const F: u16 = 0;
    const G: u16 = 1;

    /// Functions "f" (F) and "g" (G), one task each.
    fn lambda(model: &LambdaModel, other: &OtherLoad) -> (Lambda, StdRng) {
        let mut l = Lambda::new(model, other, &["f".to_string(), "g".to_string()]);
        assert_eq!(l.add_task("f", 1.0, 0.3), (F, 0));
        assert_eq!(l.add_task("g", 1.0, 0.3), (G, 0));
        (l, StdRng::seed_from_u64(7))
    }

    fn big_account() -> LambdaModel {
        LambdaModel {
            account_limit: 100_000,
            ..LambdaModel::default()
        }
    }

    /// Invoke `f` at `now` until Lambda refuses; how many got in.
    fn fill(l: &mut Lambda, f: u16, now: f64, rng: &mut StdRng) -> u32 {
        let mut n = 0;
        while l.admits(f, now) {
            l.invoke(f, 0, now, rng);
            n += 1;
            assert!(n < 1_000_000, "never refused");
        }
        n
    }

    #[test]
    fn per_function_scaling_admits_a_step_then_a_step_per_period() {
        let (mut l, mut rng) = lambda(&big_account(), &OtherLoad::default());
        assert_eq!(fill(&mut l, F, 0.0, &mut rng), 1000);
        assert_eq!(fill(&mut l, F, 5.0, &mut rng), 500);
        assert_eq!(fill(&mut l, F, 10.0, &mut rng), 500);
        // Each function scales on its own.
        assert_eq!(fill(&mut l, G, 10.0, &mut rng), 1000);
        assert_eq!(l.concurrency(), 3000);
    }

    #[test]
    fn warm_environments_let_a_function_return_to_its_level() {
        let back = |warm_decay_per_minute| {
            let model = LambdaModel {
                warm_decay_per_minute,
                ..big_account()
            };
            let (mut l, mut rng) = lambda(&model, &OtherLoad::default());
            let n = fill(&mut l, F, 0.0, &mut rng) + fill(&mut l, F, 10.0, &mut rng);
            assert_eq!(n, 2000);
            for _ in 0..n {
                l.finish(F);
            }
            fill(&mut l, F, 20.0, &mut rng)
        };
        assert!(back(0.2) >= 2000, "warm: {}", back(0.2));
        assert_eq!(back(1.0), 1000, "every idle environment reclaimed");
    }

    #[test]
    fn the_legacy_model_bursts_account_wide_then_adds_per_minute() {
        let model = LambdaModel {
            scaling: Scaling::Legacy,
            ..big_account()
        };
        let (mut l, mut rng) = lambda(&model, &OtherLoad::default());
        assert_eq!(fill(&mut l, F, 0.0, &mut rng), 3000);
        assert_eq!(
            fill(&mut l, G, 0.0, &mut rng),
            0,
            "the burst is the account's"
        );
        assert_eq!(fill(&mut l, G, 60.0, &mut rng), 500);
    }

    #[test]
    fn a_reserved_function_is_capped_at_its_reservation() {
        let model = LambdaModel {
            reserved: BTreeMap::from([("f".to_string(), 50)]),
            ..LambdaModel::default()
        };
        let (mut l, mut rng) = lambda(&model, &OtherLoad::default());
        assert_eq!(fill(&mut l, F, 0.0, &mut rng), 50);
        assert_eq!(fill(&mut l, F, 60.0, &mut rng), 0);
    }

    #[test]
    fn the_unreserved_pool_is_the_limit_less_every_reservation_and_the_other_load() {
        let model = LambdaModel {
            reserved: BTreeMap::from([("f".to_string(), 300)]),
            ..LambdaModel::default()
        };
        let other = OtherLoad {
            reserved: 100,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&model, &other);
        assert_eq!(fill(&mut l, G, 0.0, &mut rng), 600);
        // Unreserved, the other functions share the pool.
        let other = OtherLoad {
            base: 50.0,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&model, &other);
        assert_eq!(fill(&mut l, G, 0.0, &mut rng), 650);
    }

    /// Invoke `f` `n` times at `now` (each admitted).
    fn run(l: &mut Lambda, f: u16, n: u32, now: f64, rng: &mut StdRng) {
        for _ in 0..n {
            assert!(l.admits(f, now));
            l.invoke(f, 0, now, rng);
        }
    }

    /// Observe every second of the minute from `from` to `to`, as the world does.
    fn tick(l: &mut Lambda, from: u32, to: u32) {
        for s in from..=to {
            l.observe(f64::from(s));
        }
    }

    #[test]
    fn the_account_maximum_is_the_maximum_of_the_sum_not_the_sum_of_maxima() {
        let other = OtherLoad {
            base: 50.0,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&big_account(), &other);
        tick(&mut l, 0, 4);
        run(&mut l, F, 100, 5.0, &mut rng);
        tick(&mut l, 5, 9);
        for _ in 0..100 {
            l.finish(F);
        }
        tick(&mut l, 10, 19);
        run(&mut l, G, 80, 20.0, &mut rng);
        tick(&mut l, 20, 60);
        let s = l.close_minute(0).sample(60);
        let per_function: Vec<(&str, f64)> = s
            .functions
            .iter()
            .map(|f| (f.name.as_str(), f.max))
            .collect();
        assert_eq!(per_function, [("f", 100.0), ("g", 80.0)]);
        assert_eq!(s.pipeline_max, 180.0, "Σ per-function maxima");
        // The true maximum of the sum: f's 100 at 5 s, plus the other 50.
        assert_eq!(s.account_max, Some(150.0));
        // The next minute starts from what runs at its start.
        let next = l.close_minute(60).sample(60);
        assert_eq!((next.pipeline_max, next.account_max), (80.0, Some(130.0)));
    }

    #[test]
    fn the_account_maximum_follows_the_other_load_between_pipeline_changes() {
        // The other load peaks at 15 s (200), the pipeline at 45 s (50 when
        // the other load is at its trough, 0).
        let other = OtherLoad {
            base: 100.0,
            amplitude: 100.0,
            period_secs: 60.0,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&big_account(), &other);
        tick(&mut l, 0, 44);
        run(&mut l, F, 50, 45.0, &mut rng);
        tick(&mut l, 45, 60);
        let s = l.close_minute(0).sample(60);
        let account = s.account_max.unwrap();
        assert!((account - 200.0).abs() < 1e-6, "{account}");
        assert_eq!(s.pipeline_max, 50.0);
    }

    #[test]
    fn a_reservation_caps_the_other_load_in_the_account_metric() {
        let other = OtherLoad {
            base: 300.0,
            reserved: 100,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&big_account(), &other);
        run(&mut l, F, 10, 1.0, &mut rng);
        tick(&mut l, 1, 60);
        let s = l.close_minute(0).sample(60);
        assert_eq!(
            s.account_max,
            Some(110.0),
            "the other functions run 100, not 300"
        );
        // Unreserved, they run in what the pipeline leaves of the pool.
        let other = OtherLoad {
            base: 300.0,
            ..OtherLoad::default()
        };
        let (mut l, mut rng) = lambda(&LambdaModel::default(), &other);
        assert_eq!(fill(&mut l, F, 0.0, &mut rng), 700);
        l.other.base = 900.0;
        tick(&mut l, 0, 60);
        let s = l.close_minute(0).sample(60);
        assert_eq!(s.account_max, Some(1000.0), "never above the account limit");
    }

    #[test]
    fn a_function_mean_is_its_concurrency_averaged_over_the_minute() {
        let (mut l, mut rng) = lambda(&big_account(), &OtherLoad::default());
        // f runs 100 for the minute's first 15 s, then 20; g never runs.
        run(&mut l, F, 100, 0.0, &mut rng);
        for s in 0..15 {
            l.integrate(f64::from(s), f64::from(s + 1));
        }
        for _ in 0..80 {
            l.finish(F);
        }
        for s in 15..60 {
            l.integrate(f64::from(s), f64::from(s + 1));
        }
        let trace = l.close_minute(0);
        let means = |s: &ConcurrencySample| -> Vec<(f64, Option<f64>)> {
            s.functions.iter().map(|f| (f.max, f.mean)).collect()
        };
        // (100 × 15 + 20 × 45) / 60.
        assert_eq!(
            means(&trace.sample(60)),
            [(100.0, Some(40.0)), (0.0, Some(0.0))]
        );
        // Its first 15 s alone, as a minute still filling in shows it.
        assert_eq!(
            means(&trace.sample(15)),
            [(100.0, Some(100.0)), (0.0, Some(0.0))]
        );
    }

    #[test]
    fn throttles_are_per_function_and_an_early_part_of_a_minute_reads_lower() {
        let model = LambdaModel {
            reserved: BTreeMap::from([("g".to_string(), 5)]),
            ..big_account()
        };
        let (mut l, mut rng) = lambda(&model, &OtherLoad::default());
        tick(&mut l, 0, 1);
        run(&mut l, F, 10, 2.0, &mut rng);
        run(&mut l, G, 5, 2.0, &mut rng);
        assert!(!l.admits(G, 3.0));
        l.throttled(G, 3.0);
        tick(&mut l, 2, 39);
        run(&mut l, F, 20, 40.0, &mut rng);
        l.throttled(F, 41.0);
        tick(&mut l, 40, 60);
        let trace = l.close_minute(0);
        let whole = trace.sample(60);
        let by_name = |s: &ConcurrencySample| -> Vec<(String, f64, Option<f64>)> {
            s.functions
                .iter()
                .map(|f| (f.name.clone(), f.max, f.throttles))
                .collect()
        };
        assert_eq!(
            by_name(&whole),
            [
                ("f".to_string(), 30.0, Some(1.0)),
                ("g".to_string(), 5.0, Some(1.0))
            ]
        );
        assert_eq!(whole.throttles, Some(2.0));
        assert_eq!((whole.pipeline_max, whole.account_max), (35.0, Some(35.0)));
        // The first 30 seconds: before f's second burst and its throttle.
        let early = trace.sample(30);
        assert_eq!((early.pipeline_max, early.account_max), (15.0, Some(15.0)));
        assert_eq!(early.throttles, Some(1.0));
        let stats = l.function_stats();
        assert_eq!(
            (stats[0].peak, stats[0].throttles, stats[1].reserved),
            (30, 1, Some(5))
        );
        assert_eq!(
            l.limits(),
            [("f".to_string(), None), ("g".to_string(), Some(5))]
        );
    }
}
