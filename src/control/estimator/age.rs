//! A function's width by execution age: w_f(a), the Lambdas of function f
//! an execution holds `a` seconds after it started, in expectation over
//! executions (one that has finished holds none). The function's
//! concurrency at t is then Σ over starts s of w_f(t − s), so a CloudWatch
//! minute is one linear equation in the profile, and minutes after a cohort
//! started show which ages are wide. A width per running execution cannot:
//! executions that started together reach a function's wide phase
//! together, and a ratio measured while they were elsewhere lets in a
//! cohort the function's limit cannot hold. Admission asks how many starts
//! now keep every moment of the next lifetime under the limit, given the
//! ages of the executions already started.

use std::collections::VecDeque;

use super::Estimator;

/// Age buckets over the horizon (a high quantile of lifetimes).
pub(super) const BUCKETS: usize = 24;

/// Each bucket this much wider than the one before: a second's resolution
/// at the start, where the controller's own bursts of starts are, and a
/// lifetime's phases further on.
const GROWTH: f64 = 1.15;

/// Minutes a fit needs before admission uses it.
pub(super) const MIN_ROWS: usize = 3;

/// The fit's pull toward the plain ratio in each bucket, and between
/// neighbouring buckets, each weighing as that fraction of a minute of the
/// mean minute's starts: a bucket no minute
/// shows stays near the plain ratio (with uniform ages the data fixes only
/// the average, and the fit is the plain ratio), one a few minutes show
/// follows them.
const PULL: f64 = 0.01;
const SMOOTH: f64 = 0.1;

/// Parts of a minute whose ages are told apart: a minute's maximum is
/// reached in one of them.
const PARTS: usize = 12;

/// Refits at each minute's highest part.
const FIT_ROUNDS: usize = 1;

/// A minute's mean ages in each of its parts.
pub(super) type Minute = [[f64; BUCKETS]; PARTS];

/// The ages each bucket covers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Buckets {
    edges: [f64; BUCKETS + 1],
}

impl Buckets {
    /// Buckets growing by `GROWTH` up to `horizon`.
    pub(super) fn geometric(horizon: f64) -> Buckets {
        let total = (GROWTH.powf(BUCKETS as f64) - 1.0) / (GROWTH - 1.0);
        let first = horizon / total;
        let mut edges = [0.0; BUCKETS + 1];
        let mut width = first;
        for b in 1..=BUCKETS {
            edges[b] = edges[b - 1] + width;
            width *= GROWTH;
        }
        edges[BUCKETS] = horizon;
        Buckets { edges }
    }

    /// Buckets of `delta` seconds each.
    #[cfg(test)]
    pub(super) fn uniform(delta: f64) -> Buckets {
        Buckets {
            edges: std::array::from_fn(|b| b as f64 * delta),
        }
    }

    /// The oldest age covered.
    pub(super) fn horizon(&self) -> f64 {
        self.edges[BUCKETS]
    }

    /// Bucket `b`'s ages.
    pub(super) fn range(&self, b: usize) -> (f64, f64) {
        (self.edges[b], self.edges[b + 1])
    }

    /// The bucket `age` falls in, if within the horizon.
    fn of(&self, age: f64) -> Option<usize> {
        if !(0.0..self.horizon()).contains(&age) {
            return None;
        }
        Some(self.edges.partition_point(|&e| e <= age) - 1)
    }
}

/// The controller's starts, counted per backend second.
#[derive(Debug, Default, Clone)]
pub(super) struct Starts {
    per_s: VecDeque<(u64, u32)>,
    total: u64,
}

impl Starts {
    /// `n` executions started at backend time `t_s`.
    pub(super) fn record(&mut self, t_s: f64, n: u32) {
        let sec = t_s.max(0.0) as u64;
        self.total += u64::from(n);
        match self.per_s.back_mut() {
            Some((last, count)) if *last == sec => *count += n,
            Some((last, _)) if *last > sec => {
                let at = self.per_s.partition_point(|&(x, _)| x < sec);
                match self.per_s.get_mut(at) {
                    Some((x, count)) if *x == sec => *count += n,
                    _ => self.per_s.insert(at, (sec, n)),
                }
            }
            _ => self.per_s.push_back((sec, n)),
        }
    }

    /// Every start recorded so far.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    /// Forget starts before `t_s`.
    pub(super) fn prune(&mut self, t_s: f64) {
        while self.per_s.front().is_some_and(|&(s, _)| (s as f64) < t_s) {
            self.per_s.pop_front();
        }
    }

    /// The earliest start kept.
    pub(super) fn first(&self) -> Option<f64> {
        self.per_s.front().map(|&(s, _)| s as f64)
    }

    /// Starts in [from, to), each at the middle of its second.
    fn between(&self, from: f64, to: f64) -> impl Iterator<Item = (f64, f64)> + '_ {
        let i = self
            .per_s
            .partition_point(|&(s, _)| (s as f64) + 1.0 <= from);
        self.per_s
            .range(i..)
            .take_while(move |&&(s, _)| (s as f64) < to)
            .map(|&(s, c)| (s as f64 + 0.5, f64::from(c)))
    }

    /// The minute starting at `m`: its parts' mean ages.
    pub(super) fn minute(&self, m: f64, buckets: &Buckets) -> Minute {
        let q = 60.0 / PARTS as f64;
        std::array::from_fn(|i| self.ages(m + i as f64 * q, m + (i + 1) as f64 * q, buckets))
    }

    /// Over [from, to): the mean number of started executions whose age
    /// was in each bucket.
    fn ages(&self, from: f64, to: f64, buckets: &Buckets) -> [f64; BUCKETS] {
        let mut h = [0.0; BUCKETS];
        let len = (to - from).max(1e-9);
        let horizon = buckets.horizon();
        for (s, c) in self.between(from - horizon, to) {
            for (b, hb) in h.iter_mut().enumerate() {
                let (a, z) = buckets.range(b);
                let lo = (s + a).max(from);
                let hi = (s + z).min(to);
                if hi > lo {
                    *hb += c * (hi - lo) / len;
                }
            }
        }
        h
    }

    /// The expected load at `t` of the starts recorded, by `profile`.
    pub(super) fn load(&self, t: f64, p: &Profile) -> f64 {
        let from = if p.open {
            f64::NEG_INFINITY
        } else {
            t - p.horizon()
        };
        self.between(from, t).map(|(s, c)| c * p.at(t - s)).sum()
    }
}

/// A fitted width by age.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Profile {
    /// The ages of each bucket.
    pub(super) buckets: Buckets,
    /// The width in each bucket.
    pub(super) w: [f64; BUCKETS],
    /// Whether executions live past the horizon (lifetimes not yet known:
    /// the horizon is every age seen so far): the last bucket's width then
    /// holds for every older age, where it would otherwise be none.
    pub(super) open: bool,
}

impl Profile {
    /// The ages it covers.
    pub(super) fn horizon(&self) -> f64 {
        self.buckets.horizon()
    }

    /// The width at `age` (past the horizon: none, or the last bucket's
    /// if the profile is open).
    pub(super) fn at(&self, age: f64) -> f64 {
        if age < 0.0 {
            return 0.0;
        }
        match self.buckets.of(age) {
            Some(b) => self.w[b],
            None if self.open => self.w[BUCKETS - 1],
            None => 0.0,
        }
    }

    /// Fit a profile over `buckets` to `rows`: each a minute's
    /// mean ages in each of its parts (`Starts::minute`) and the
    /// function's maximum in it. The maximum came in the quarter the
    /// profile makes highest: the fit starts from each minute's mean ages,
    /// then refits each minute at its highest quarter under the last fit.
    /// None with fewer than `MIN_ROWS` minutes that saw starts.
    pub(super) fn fit(buckets: Buckets, open: bool, rows: &[(Minute, f64)]) -> Option<Profile> {
        let rows: Vec<&(Minute, f64)> = rows
            .iter()
            .filter(|(q, _)| q.iter().flatten().sum::<f64>() >= PARTS as f64)
            .collect();
        if rows.len() < MIN_ROWS {
            return None;
        }
        let mean = |q: &Minute| {
            let mut h = [0.0; BUCKETS];
            for part in q {
                for (hb, x) in h.iter_mut().zip(part) {
                    *hb += x / PARTS as f64;
                }
            }
            h
        };
        let mut chosen: Vec<([f64; BUCKETS], f64)> =
            rows.iter().map(|(q, y)| (mean(q), *y)).collect();
        let mut p = Profile::solve_rows(buckets, open, &chosen)?;
        for _ in 0..FIT_ROUNDS {
            for (c, (q, _)) in chosen.iter_mut().zip(&rows) {
                let load = |h: &[f64; BUCKETS]| h.iter().zip(&p.w).map(|(x, w)| x * w).sum::<f64>();
                if let Some(best) = q.iter().max_by(|a, b| load(a).total_cmp(&load(b))) {
                    c.0 = *best;
                }
            }
            p = Profile::solve_rows(buckets, open, &chosen)?;
        }
        Some(p)
    }

    /// One regularised least-squares solve over (ages, maximum) rows.
    fn solve_rows(buckets: Buckets, open: bool, rows: &[([f64; BUCKETS], f64)]) -> Option<Profile> {
        let rows: Vec<(&[f64; BUCKETS], f64, f64)> = rows
            .iter()
            .map(|(h, y)| (h, *y, h.iter().sum::<f64>()))
            .filter(|&(_, _, n)| n > 0.0)
            .collect();
        if rows.is_empty() {
            return None;
        }
        let plain = rows.iter().map(|r| r.1).sum::<f64>() / rows.iter().map(|r| r.2).sum::<f64>();
        let mut a = [[0.0; BUCKETS]; BUCKETS];
        let mut rhs = [0.0; BUCKETS];
        // An equation in the average width of a row's ages, weighed by its
        // starts (a maximum over few reads noisy, and one the ages left
        // mostly past the horizon reads wide by far).
        for (h, y, n) in &rows {
            for i in 0..BUCKETS {
                let xi = h[i] / n;
                rhs[i] += xi * y;
                for j in 0..BUCKETS {
                    a[i][j] += xi * h[j];
                }
            }
        }
        // The pulls weigh as a minute of the mean row's starts.
        let scale = rows.iter().map(|r| r.2).sum::<f64>() / rows.len() as f64;
        for i in 0..BUCKETS {
            a[i][i] += PULL * scale;
            rhs[i] += PULL * scale * plain;
            if i + 1 < BUCKETS {
                let s = SMOOTH * scale;
                a[i][i] += s;
                a[i + 1][i + 1] += s;
                a[i][i + 1] -= s;
                a[i + 1][i] -= s;
            }
        }
        let mut w = solve(a, rhs)?;
        // A negative width is noise.
        for x in &mut w {
            *x = x.max(0.0);
        }
        Some(Profile { buckets, w, open })
    }

    /// How many executions may start now (`now`, backend time), with the
    /// function's expected load from `starts` and them kept at or under
    /// `room` at every moment of the next horizon.
    pub(super) fn allowance(&self, starts: &Starts, now: f64, room: f64) -> f64 {
        let mut n = f64::INFINITY;
        // Each bucket's start and middle: a start crosses an edge at its
        // own time.
        let taus = (0..BUCKETS).flat_map(|b| {
            let (lo, hi) = self.buckets.range(b);
            [lo, f64::midpoint(lo, hi)]
        });
        for tau in taus {
            let w = self.at(tau);
            if w <= 0.0 {
                continue;
            }
            n = n.min((room - starts.load(now + tau, self)) / w);
        }
        if n.is_finite() {
            n.max(0.0)
        } else {
            room.max(0.0)
        }
    }

    /// The profile with every width raised by `factor`.
    pub(super) fn scaled(&self, factor: f64) -> Profile {
        let mut p = self.clone();
        for x in &mut p.w {
            *x *= factor;
        }
        p
    }
}

/// The estimator's side: the record of starts, the fits, the allowance.
impl Estimator {
    /// `n` executions started at backend time `t_s`.
    pub fn record_starts(&mut self, t_s: f64, n: u32) {
        self.starts.record(t_s, n);
    }

    /// The ages a function's width by age covers: a high quantile of
    /// execution lifetimes, or until they are known every age seen so far
    /// (since the first start kept, at backend time `now_s`): a second
    /// cohort must not wait for the first one's lifetimes to be known.
    pub fn set_horizon(&mut self, lifetime_s: Option<f64>, now_s: f64) {
        let known = lifetime_s.filter(|h| h.is_finite() && *h > 0.0);
        self.horizon_open = known.is_none();
        self.horizon = known.or_else(|| self.starts.first().map(|f| (now_s - f).max(60.0)));
    }

    /// Fit each limited function's width by age to the minutes kept, once
    /// a horizon is known. A minute the function was throttled in is
    /// censored at its limit (it would read narrow) and left out.
    pub(super) fn fit_profiles(&mut self) {
        let Some(horizon) = self.horizon else {
            return;
        };
        let buckets = Buckets::geometric(horizon.max(60.0));
        let Some(first) = self.starts.first() else {
            return;
        };
        let names: Vec<String> = self
            .functions
            .iter()
            .filter(|(_, f)| f.limit().is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let rows: Vec<_> = self
                .seen
                .iter()
                .filter(|&(&m, _)| (m + 60) as f64 > first)
                .filter_map(|(&m, seen)| {
                    let f = seen.functions.get(&name)?;
                    if f.throttles.is_some_and(|t| t > 0.0) {
                        return None;
                    }
                    let m = m as f64;
                    Some((self.starts.minute(m, &buckets), f.max))
                })
                .collect();
            let profile = Profile::fit(buckets, self.horizon_open, &rows);
            self.function_entry(&name).profile = profile;
        }
        self.allowance = None;
    }

    /// Executions that may start now (backend time `now_s`) with every
    /// limited function whose width by age is known kept under its limit
    /// less `headroom` over the next lifetime, by the ages already started
    /// (`running`: the count for the noise margin). None: no such function.
    pub fn function_allowance(&mut self, now_s: f64, headroom: f64, running: f64) -> Option<f64> {
        let second = now_s.max(0.0) as u64;
        let total = self.starts.total();
        if let Some((s, t, a)) = self.allowance
            && s == second
        {
            // Each start since takes one of the allowance.
            return a.map(|a| (a - (total - t) as f64).max(0.0));
        }
        let margin = self.margin(running.max(1.0));
        let a = self
            .functions
            .values()
            .filter_map(|f| {
                let p = f.profile.as_ref()?.scaled(margin);
                let room = f.limit()? * (1.0 - headroom);
                Some(p.allowance(&self.starts, now_s, room))
            })
            .reduce(f64::min);
        self.allowance = Some((second, total, a));
        a
    }
}

/// Gaussian elimination with partial pivoting; None if singular.
fn solve(mut a: [[f64; BUCKETS]; BUCKETS], mut b: [f64; BUCKETS]) -> Option<[f64; BUCKETS]> {
    for col in 0..BUCKETS {
        let piv = (col..BUCKETS).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..BUCKETS {
            let f = a[row][col] / a[col][col];
            if f == 0.0 {
                continue;
            }
            let pivot_row = a[col];
            for (x, p) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; BUCKETS];
    for row in (0..BUCKETS).rev() {
        let s: f64 = (row + 1..BUCKETS).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

// The tests compare step values of exact arithmetic.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    /// A known profile: narrow first, wide in the middle, narrow last.
    fn truth(age: f64) -> f64 {
        match age {
            a if a < 60.0 => 1.0,
            a if a < 240.0 => 8.0,
            a if a < 360.0 => 2.0,
            _ => 0.0,
        }
    }

    /// The maximum over a minute of Σ truth(t − s) (every 5 s), with noise.
    fn observed(starts: &[f64], m: f64, rng: &mut StdRng) -> f64 {
        (0..12)
            .map(|i| {
                let t = m + f64::from(i) * 5.0;
                starts
                    .iter()
                    .filter(|&&s| s <= t)
                    .map(|&s| truth(t - s))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
            * rng.random_range(0.97..1.03)
    }

    fn fit_of(starts_at: &[f64], minutes: std::ops::Range<u32>, seed: u64) -> Profile {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut starts = Starts::default();
        for &s in starts_at {
            starts.record(s, 1);
        }
        let buckets = Buckets::geometric(420.0);
        let rows: Vec<_> = minutes
            .map(|i| {
                let m = f64::from(i) * 60.0;
                (starts.minute(m, &buckets), observed(starts_at, m, &mut rng))
            })
            .collect();
        Profile::fit(buckets, false, &rows).unwrap()
    }

    #[test]
    fn cohorts_recover_a_known_profile_from_noisy_maxima() {
        // Cohorts of 40 every `period`: the minutes see each age apart.
        for (period, seed) in [(401.0, 1), (437.0, 7), (455.0, 3), (493.0, 11), (530.0, 5)] {
            let starts: Vec<f64> = (0..6)
                .flat_map(|c| (0..40).map(move |i| f64::from(c) * period + f64::from(i) * 0.5))
                .collect();
            let p = fit_of(&starts, 0..(6.0 * period / 60.0) as u32, seed);
            for (b, &w) in p.w.iter().enumerate() {
                let (lo, hi) = p.buckets.range(b);
                let (t_lo, t_hi) = (truth(lo), truth(hi - 1e-9));
                let mean = (0..100)
                    .map(|i| truth(lo + (hi - lo) * (f64::from(i) + 0.5) / 100.0))
                    .sum::<f64>()
                    / 100.0;
                // Never narrower than the truth over its ages by more than
                // a quarter of the widest phase (a bucket after a phase's
                // end pays for the wide reading of the one at the edge);
                // inside a phase, close to it.
                assert!(
                    w >= mean - 2.0,
                    "period {period}, bucket {b}: {w:.2} under the truth: {:?}",
                    p.w
                );
                if t_lo == t_hi && truth(lo - 60.0) == t_lo && truth(hi + 60.0) == t_lo {
                    assert!(
                        (w - t_lo).abs() <= 0.2 * t_lo.max(2.0),
                        "period {period}, bucket {b}: {w:.2} vs {t_lo}: {:?}",
                        p.w
                    );
                }
            }
            // What admission rests on: a cohort's peak over its lifetime
            // (40 × 8) is not read narrower.
            let peak = (0..420)
                .map(|a| 40.0 * p.at(f64::from(a)))
                .fold(0.0, f64::max);
            assert!(
                peak >= 0.95 * 320.0,
                "period {period}: peak {peak}: {:?}",
                p.w
            );
            // And the narrow start reads narrower than the wide phase.
            assert!(p.w[0] < 0.6 * 8.0, "period {period}: {:?}", p.w);
        }
    }

    #[test]
    fn uniform_ages_give_the_plain_ratio_in_every_bucket() {
        // One start a second for an hour: every minute sees the same ages.
        let starts: Vec<f64> = (0..3600).map(f64::from).collect();
        let p = fit_of(&starts, 10..60, 3);
        // Over the horizon (420 s): finished executions hold nothing.
        let plain = (60.0 * 1.0 + 180.0 * 8.0 + 120.0 * 2.0) / 420.0;
        for &w in &p.w {
            assert!((w - plain).abs() < 0.1 * plain, "{:?} vs {plain}", p.w);
        }
    }

    #[test]
    fn a_cohort_is_let_in_only_as_far_as_its_wide_phase_fits() {
        let p = Profile {
            buckets: Buckets::uniform(15.0),
            w: std::array::from_fn(|b| match b {
                0..4 => 1.0,
                4..16 => 8.0,
                _ => 2.0,
            }),
            open: false,
        };
        let mut starts = Starts::default();
        // Nothing running: the wide phase decides (800 / 8).
        assert_eq!(p.allowance(&starts, 1000.0, 800.0), 100.0);
        // 50 started 60 s ago are entering it: room for 50 more.
        starts.record(940.0, 50);
        let n = p.allowance(&starts, 1000.0, 800.0);
        assert!((n - 50.0).abs() < 1e-9, "{n}");
        // 100 more, started 150 s ago, are still wide when a start now
        // reaches its own wide phase: no room at all.
        starts.record(850.0, 100);
        let n = p.allowance(&starts, 1000.0, 800.0);
        assert!(n < 1e-9, "{n}");
    }

    #[test]
    fn starts_out_of_order_are_kept_sorted_and_pruned() {
        let mut s = Starts::default();
        s.record(10.2, 1);
        s.record(12.0, 2);
        s.record(11.0, 3);
        s.record(10.9, 1);
        assert_eq!(s.total(), 7);
        assert_eq!(
            s.per_s.iter().copied().collect::<Vec<_>>(),
            vec![(10, 2), (11, 3), (12, 2)]
        );
        s.prune(11.0);
        assert_eq!(s.first(), Some(11.0));
    }
}
