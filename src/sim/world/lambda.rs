//! Lambda: the pipeline's functions in an account with a concurrency
//! limit, reserved concurrency, an unreserved pool shared with the
//! account's other load, and scaling either per function (with warm
//! environments) or by the legacy account-wide burst.

use std::collections::HashMap;

use rand::RngExt;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};

use crate::ports::ConcurrencySample;
use crate::sim::scenario::{LambdaModel, OtherLoad, Scaling};

/// The other functions' concurrency at `t`.
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

#[derive(Debug)]
struct Func {
    conc: u32,
    peak: u32,
    cap: f64,
    cap_t: f64,
    /// Environments kept warm: the concurrency the function can return to
    /// without scaling; it decays as idle environments are reclaimed.
    warm: f64,
    reserved: Option<u32>,
    minute_max: u32,
    /// Durations of the tasks that run on this function.
    dist: Vec<LogNormal<f64>>,
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
    acct_minute_max: f64,
    minute_throttles: u64,
    /// The account limit less every reservation.
    unreserved_pool: f64,
}

impl Lambda {
    /// The functions `names`, idle, with no task durations yet.
    pub(super) fn new(model: &LambdaModel, other: &OtherLoad, names: &[String]) -> Lambda {
        let funcs = names
            .iter()
            .map(|n| Func {
                conc: 0,
                peak: 0,
                cap: model.scale_step,
                cap_t: 0.0,
                warm: 0.0,
                reserved: model.reserved.get(n).copied(),
                minute_max: 0,
                dist: Vec::new(),
            })
            .collect();
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u16))
            .collect();
        let reserved_total: u32 = model.reserved.values().sum::<u32>() + other.reserved;
        Lambda {
            model: model.clone(),
            other: other.clone(),
            funcs,
            index,
            pipeline_conc: 0,
            acct_cap: model.legacy_burst,
            acct_cap_t: 0.0,
            acct_minute_max: 0.0,
            minute_throttles: 0,
            unreserved_pool: f64::from(model.account_limit.saturating_sub(reserved_total)),
        }
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

    /// Environments in use over every pipeline function.
    pub(super) fn concurrency(&self) -> u32 {
        self.pipeline_conc
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
            let unreserved_used: u32 = self
                .funcs
                .iter()
                .filter(|x| x.reserved.is_none())
                .map(|x| x.conc)
                .sum();
            let other = if self.other.reserved > 0 {
                0.0
            } else {
                other_load(&self.other, now)
            };
            if f64::from(unreserved_used) + other + 1.0 > self.unreserved_pool {
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

    /// An invocation was throttled (counted in the minute's metric).
    pub(super) fn throttled(&mut self) {
        self.minute_throttles += 1;
    }

    /// Run task `dist` on function `f`, which `admits` let in. Draws the
    /// duration, then the outcome.
    pub(super) fn invoke(&mut self, f: u16, dist: usize, rng: &mut StdRng) -> Invocation {
        let func = &mut self.funcs[f as usize];
        func.conc += 1;
        func.minute_max = func.minute_max.max(func.conc);
        let mut duration = func.dist[dist].sample(rng);
        if func.conc > func.peak {
            func.peak = func.conc;
            duration += self.model.cold_start_ms as f64 / 1000.0;
        }
        self.pipeline_conc += 1;
        self.acct_minute_max = self.acct_minute_max.max(f64::from(self.pipeline_conc));
        let ok = rng.random::<f64>() >= self.model.error_rate;
        Invocation { duration, ok }
    }

    /// An invocation of `f` ended.
    pub(super) fn finish(&mut self, f: u16) {
        self.funcs[f as usize].conc -= 1;
        self.pipeline_conc -= 1;
    }

    /// The metrics of the minute starting at `start`; the next minute
    /// starts from the concurrency in use now.
    pub(super) fn close_minute(&mut self, start: u64) -> ConcurrencySample {
        let pipeline: u32 = self.funcs.iter().map(|f| f.minute_max).sum();
        let other = other_load(&self.other, start as f64 + 30.0);
        let account = self.acct_minute_max.max(f64::from(pipeline)) + other;
        let sample = ConcurrencySample {
            minute_start_s: start,
            pipeline_max: f64::from(pipeline),
            account_max: Some(account),
            throttles: Some(self.minute_throttles as f64),
            functions: Vec::new(),
        };
        self.minute_throttles = 0;
        for f in &mut self.funcs {
            f.minute_max = f.conc;
        }
        self.acct_minute_max = f64::from(self.pipeline_conc);
        sample
    }
}

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
            l.invoke(f, 0, rng);
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
}
