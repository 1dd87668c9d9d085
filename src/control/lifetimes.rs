//! The distribution of recent lifetimes, for the far tail the backlog ETA
//! needs: when the last of tens of thousands of executions ends. A
//! lognormal fitted to their moments misses it both ways: sequential steps
//! and a Map (the maximum of its items) have a heavier tail than their fit
//! (exchange-227k: 145 s fitted against 184 s played out), a Map of
//! varying width a lighter one (varied-width: 261 s against 172 s). The
//! histogram keeps the last one or two generations of `GENERATION`
//! lifetimes in buckets 2 % wide and is read as it is once it holds
//! 8,192. With fewer, `tail` is `None` and the ETA keeps its lognormal: a
//! thousand samples put a tail past its longest one, where an outlier or
//! two decide (a generalized Pareto fitted to the slowest tenth was tried:
//! its shape, from a hundred samples, swung the answer from 0.4 to 6.9
//! times the truth, and a slow mode of 3 % made it infinite).

use std::collections::BTreeMap;

use crate::control::ledger::Secs;

/// Lifetimes per generation: the histogram holds the last one or two.
const GENERATION: u64 = 32_768;

/// Bucket width: each bucket spans a factor of this (2 %).
const BUCKET_FACTOR: f64 = 1.02;

/// Lifetimes below this share the lowest bucket.
const SHORTEST: Secs = 1e-3;

/// Lifetimes needed before the histogram speaks for the tail.
const MIN_LIFETIMES: u64 = 8_192;

/// Count and sum of the lifetimes in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    n: u64,
    sum: f64,
}

/// Recent lifetimes, bucketed. Buckets are kept in a `BTreeMap` so sums
/// run in the same order every time (same seed, same report).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    current: BTreeMap<i32, Bucket>,
    current_n: u64,
    previous: BTreeMap<i32, Bucket>,
}

impl Histogram {
    /// Count one lifetime.
    pub fn add(&mut self, lifetime: Secs) {
        if !lifetime.is_finite() {
            return;
        }
        if self.current_n == GENERATION {
            self.previous = std::mem::take(&mut self.current);
            self.current_n = 0;
        }
        let l = lifetime.max(SHORTEST);
        let b = self.current.entry(bucket_of(l)).or_default();
        b.n += 1;
        b.sum += l;
        self.current_n += 1;
    }

    /// The histogram of `lifetimes`.
    pub fn of(lifetimes: &[Secs]) -> Histogram {
        let mut h = Histogram::default();
        for &l in lifetimes {
            h.add(l);
        }
        h
    }

    /// The lifetimes kept, both generations merged, shortest first:
    /// `None` with fewer than `MIN_LIFETIMES`.
    pub fn tail(&self) -> Option<Tail> {
        let mut all = self.current.clone();
        for (k, b) in &self.previous {
            let e = all.entry(*k).or_default();
            e.n += b.n;
            e.sum += b.sum;
        }
        let buckets: Vec<Bucket> = all.into_values().collect();
        let n: u64 = buckets.iter().map(|b| b.n).sum();
        (n >= MIN_LIFETIMES).then_some(Tail { buckets, n })
    }
}

/// The bucket index of a lifetime (at least `SHORTEST`).
fn bucket_of(l: Secs) -> i32 {
    ((l / SHORTEST).ln() / BUCKET_FACTOR.ln()).floor() as i32
}

/// The lifetimes kept, merged into one list of buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    buckets: Vec<Bucket>,
    n: u64,
}

impl Tail {
    /// Lifetimes counted.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Their mean.
    pub fn mean(&self) -> Secs {
        self.buckets.iter().map(|b| b.sum).sum::<f64>() / self.n as f64
    }

    /// E[(L − x)⁺], the mean time an execution runs past `x` (within a
    /// bucket, its lifetimes are taken at the bucket's mean).
    pub fn excess(&self, x: Secs) -> Secs {
        let run_past: f64 = self.beyond(x).map(|b| b.sum - x * b.n as f64).sum();
        run_past / self.n as f64
    }

    /// How many of the lifetimes lie past `x` (whole buckets).
    pub fn past(&self, x: Secs) -> u64 {
        self.beyond(x).map(|b| b.n).sum()
    }

    /// The buckets whose mean lies past `x`, longest first.
    fn beyond(&self, x: Secs) -> impl Iterator<Item = &Bucket> {
        self.buckets
            .iter()
            .rev()
            .take_while(move |b| b.sum / b.n as f64 > x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lifetimes from a seeded generator: lognormal (median, log-sd).
    fn lognormal(n: usize, median: f64, sigma: f64, seed: u64) -> Vec<f64> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, LogNormal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let d = LogNormal::new(median.ln(), sigma).unwrap();
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    /// E[(L − x)⁺] of the samples themselves.
    fn plain_excess(v: &[f64], x: f64) -> f64 {
        v.iter().map(|l| (l - x).max(0.0)).sum::<f64>() / v.len() as f64
    }

    #[test]
    fn the_excess_is_the_samples_own() {
        let v = lognormal(10_000, 60.0, 0.4, 1);
        let t = Histogram::of(&v).tail().unwrap();
        assert_eq!(t.count(), 10_000);
        assert!((t.mean() - v.iter().sum::<f64>() / 1e4).abs() < 1e-6);
        for x in [0.0, 30.0, 60.0, 80.0] {
            let (got, want) = (t.excess(x), plain_excess(&v, x));
            assert!((got - want).abs() <= 0.02 * want, "x {x}: {got} vs {want}");
        }
        assert_eq!(Histogram::of(&v[..8_191]).tail(), None, "too few to model");
    }

    #[test]
    fn it_keeps_one_or_two_generations() {
        let mut h = Histogram::default();
        for _ in 0..GENERATION {
            h.add(100.0);
        }
        for _ in 0..GENERATION {
            h.add(10.0);
        }
        assert_eq!(h.tail().unwrap().count(), 2 * GENERATION);
        h.add(10.0);
        let t = h.tail().unwrap();
        assert_eq!(t.count(), GENERATION + 1, "the oldest generation is gone");
        assert!((t.mean() - 10.0).abs() < 1e-9);
        assert_eq!(Histogram::default().tail(), None);
        h.add(f64::NAN);
        assert_eq!(h.tail().unwrap().count(), GENERATION + 1);
    }
}
