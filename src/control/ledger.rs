//! The in-flight ledger: executions this controller started, plus the
//! running executions it did not start (another controller, a previous
//! life of this one) as last seen by a reconcile.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};

use crate::control::lifetimes::Histogram;

/// Seconds since the controller started.
pub type Secs = f64;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    started_at: Secs,
}

/// What a reconcile changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReconcileOutcome {
    /// Our executions found finished (absent from the listing).
    pub completed: usize,
    /// Running executions listed that are not ours.
    pub foreign: usize,
}

/// The executions this controller believes running, ours by name and
/// others' by count, with the lifetimes and completion rate seen so far.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<String, Entry>,
    foreign: usize,
    completions: u64,
    /// Recent observed lifetimes, for the estimator's stability window.
    durations: VecDeque<Secs>,
    /// The same lifetimes' likeliest values, for the survival fit: one a
    /// pass found ended somewhere since the pass before, taken mid-way.
    ended_at: VecDeque<Secs>,
    /// Survival of the lifetimes kept, as of the last pass: the ages where
    /// it steps down, each with its value just after.
    survival: Vec<(Secs, f64)>,
    /// Start of the last reconcile pass.
    listed_at: Option<Secs>,
    /// Completions found per second by reconciles (smoothed).
    completion_rate: f64,
    /// Others' running executions at the last reconcile.
    foreign_names: HashSet<String>,
    /// Reconciles since one found a new execution that is not ours.
    since_foreign_start: Option<u32>,
    /// Lifetimes have been trusted once (see `lifetimes_known`).
    lifetimes_known: Cell<bool>,
    /// Moments of every lifetime recorded, one bucket per reconcile pass
    /// (events go into the open one), the newest last: at least the last
    /// `DURATIONS_KEPT` lifetimes, whole passes. `durations` keeps a
    /// pass's latest starts when it finds more than it holds, the short
    /// lifetimes; these moments keep all of them.
    moments: VecDeque<Moments>,
    /// The same lifetimes' likeliest values, bucketed, for the backlog
    /// ETA's tail.
    histogram: Histogram,
}

/// Count, sum, and sums of the logarithm and its square of lifetimes: a
/// lognormal fit's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    /// Lifetimes counted.
    pub n: f64,
    /// Their sum, seconds.
    pub sum: f64,
    /// Sum of their natural logarithms (each at least 1 ms).
    pub sum_ln: f64,
    /// Sum of the squared logarithms.
    pub sum_ln2: f64,
}

impl Moments {
    /// Count one lifetime.
    pub fn add(&mut self, lifetime: Secs) {
        let l = lifetime.max(1e-3);
        self.n += 1.0;
        self.sum += l;
        self.sum_ln += l.ln();
        self.sum_ln2 += l.ln() * l.ln();
    }

    /// The moments of `lifetimes`.
    pub fn of(lifetimes: &[Secs]) -> Moments {
        let mut m = Moments::default();
        for &l in lifetimes {
            m.add(l);
        }
        m
    }

    fn plus(self, o: Moments) -> Moments {
        Moments {
            n: self.n + o.n,
            sum: self.sum + o.sum,
            sum_ln: self.sum_ln + o.sum_ln,
            sum_ln2: self.sum_ln2 + o.sum_ln2,
        }
    }
}

const DURATIONS_KEPT: usize = 1024;

/// Completions always needed before lifetimes are trusted, however small
/// the pipeline.
const MIN_LIFETIMES_SEEN: u64 = 20;

/// Completions anticipated between reconciles are the expected number less
/// this many standard deviations: counting one that has not finished lets
/// one too many start, so the estimate errs low (about 1 in 40 passes
/// anticipates more than finished).
const ANTICIPATION_Z: f64 = 2.0;

/// Fixed-point unit for summing probabilities: integer sums do not depend
/// on the hash map's iteration order, so a seed gives the same run.
const PROBABILITY_UNIT: f64 = 1e9;

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Record a confirmed start. Returns false if it was already known.
    pub fn started(&mut self, name: &str, now: Secs) -> bool {
        if self.entries.contains_key(name) {
            return false;
        }
        self.entries
            .insert(name.to_string(), Entry { started_at: now });
        true
    }

    /// A completion learned from an event. Returns true if it was ours.
    pub fn completed(&mut self, name: &str, now: Secs) -> bool {
        match self.entries.remove(name) {
            Some(e) => {
                self.record(now - e.started_at, 0.0);
                true
            }
            None => false,
        }
    }

    /// A lifetime as detected, and how long before detection it may have
    /// ended.
    fn record(&mut self, lifetime: Secs, uncertain: Secs) {
        self.completions += 1;
        let lifetime = lifetime.max(0.0);
        if self.durations.len() == DURATIONS_KEPT {
            self.durations.pop_front();
            self.ended_at.pop_front();
        }
        self.durations.push_back(lifetime);
        if self.moments.is_empty() {
            self.moments.push_back(Moments::default());
        }
        if let Some(m) = self.moments.back_mut() {
            m.add(lifetime);
        }
        let likeliest = (lifetime - uncertain.clamp(0.0, lifetime) / 2.0).max(0.0);
        self.ended_at.push_back(likeliest);
        self.histogram.add(likeliest);
    }

    /// Fit the survival of lifetimes from the lifetimes kept. A pass finds
    /// the ends of several seconds at once; taken at detection they would
    /// pile into one step that executions a little younger cross within a
    /// moment (twice the completions were anticipated so). The running executions are not counted as
    /// survivors (Kaplan–Meier): once the oldest lifetimes are dropped they
    /// are not the same population as the ones kept, and held the hazard
    /// at half (ceiling-50k ran at utilization 0.51 so).
    fn refit(&mut self) {
        let mut ends: Vec<Secs> = self.ended_at.iter().copied().collect();
        ends.sort_by(f64::total_cmp);
        let n = ends.len() as f64;
        self.survival.clear();
        for (i, &age) in ends.iter().enumerate() {
            let s = 1.0 - (i + 1) as f64 / n;
            match self.survival.last_mut() {
                Some(last) if last.0.total_cmp(&age).is_eq() => last.1 = s,
                _ => self.survival.push((age, s)),
            }
        }
    }

    /// Probability a lifetime exceeds `age`.
    fn survives(&self, age: Secs) -> f64 {
        let i = self.survival.partition_point(|&(a, _)| a <= age);
        if i == 0 { 1.0 } else { self.survival[i - 1].1 }
    }

    /// Apply a full ListExecutions(RUNNING) pass that began at `listed_at`.
    /// Entries started `grace` or more before the pass and absent from it
    /// have finished; younger ones may just not be listed yet.
    pub fn reconcile(
        &mut self,
        running: &HashSet<String>,
        listed_at: Secs,
        grace: Secs,
    ) -> ReconcileOutcome {
        let cutoff = listed_at - grace;
        let mut done: Vec<(String, Secs)> = self
            .entries
            .iter()
            .filter(|(name, e)| e.started_at < cutoff && !running.contains(*name))
            .map(|(name, e)| (name.clone(), e.started_at))
            .collect();
        // Hash order differs from run to run; the lifetimes kept (the last
        // DURATIONS_KEPT) and their sum must not.
        done.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        let since = self.listed_at.unwrap_or(f64::NEG_INFINITY);
        for (name, started_at) in &done {
            self.entries.remove(name);
            self.record(listed_at - started_at, listed_at - since.max(*started_at));
        }
        self.refit();
        self.close_moments();
        if let Some(prev) = self.listed_at
            && listed_at > prev
        {
            let sample = done.len() as f64 / (listed_at - prev);
            self.completion_rate = 0.7 * self.completion_rate + 0.3 * sample;
        }
        let first = self.listed_at.is_none();
        self.listed_at = Some(listed_at);
        let foreign: HashSet<String> = running
            .iter()
            .filter(|n| !self.entries.contains_key(*n))
            .cloned()
            .collect();
        // Executions that are not ours and were not running at the last
        // pass: someone else is starting them (a second controller during
        // a deploy). Leftovers of a previous life only ever finish.
        let arrivals = foreign.difference(&self.foreign_names).count();
        self.since_foreign_start = if !first && arrivals > 0 {
            Some(0)
        } else {
            self.since_foreign_start.map(|n| n + 1)
        };
        self.foreign = foreign.len();
        self.foreign_names = foreign;
        ReconcileOutcome {
            completed: done.len(),
            foreign: self.foreign,
        }
    }

    /// Is something else starting executions on this state machine? True
    /// for three reconciles after one found a new execution not ours.
    pub fn other_starter_active(&self) -> bool {
        self.since_foreign_start.is_some_and(|n| n < 3)
    }

    /// Whether execution `name` is ours and believed running.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Executions believed running: ours plus others'.
    pub fn in_flight(&self) -> usize {
        self.entries.len() + self.foreign
    }

    /// Executions believed running at `now`, less the completions expected
    /// since the last reconcile. Without it the count saw-tooths: finished
    /// executions pile up between passes and the pipeline sags before each
    /// refill. Each of ours, alive at `seen` seconds old when the pass
    /// began and `age` now, has finished since with probability
    /// (S(seen) − S(age)) / S(seen), S the survival of lifetimes: a cohort
    /// started together finishes in a wave and is anticipated as one,
    /// where a rate carried over from the last wave would count a trough
    /// as full of completions (a single-task workflow ran 4 % over its
    /// ceiling that way). Nothing is anticipated before lifetimes are
    /// known (`lifetimes_known`), nor past the longest lifetime seen, nor
    /// more than the rate passes have been finding completions at.
    pub fn in_flight_at(&self, now: Secs, min_completions: u64) -> usize {
        let (Some(t), true) = (self.listed_at, self.lifetimes_known(min_completions)) else {
            return self.in_flight();
        };
        if now <= t || self.survival.is_empty() {
            return self.in_flight();
        }
        let (mut mean, mut var) = (0_u64, 0_u64);
        for e in self.entries.values() {
            let alive = self.survives((t - e.started_at).max(0.0));
            if alive <= 0.0 {
                continue;
            }
            let p = ((alive - self.survives(now - e.started_at)) / alive).clamp(0.0, 1.0);
            mean += (p * PROBABILITY_UNIT).round() as u64;
            var += (p * (1.0 - p) * PROBABILITY_UNIT).round() as u64;
        }
        let (mean, var) = (
            mean as f64 / PROBABILITY_UNIT,
            var as f64 / PROBABILITY_UNIT,
        );
        let by_lifetimes = (mean - ANTICIPATION_Z * var.sqrt()).max(0.0);
        // Nor more than the rate passes have been finding them at: early
        // in a run only the short lifetimes have ended, and the lifetimes
        // alone would count every execution older than they as finished.
        let by_rate = self.completion_rate * (now - t);
        let expected = by_lifetimes.min(by_rate).floor() as usize;
        self.in_flight() - expected.min(self.entries.len())
    }

    /// Whether enough executions have completed for their lifetimes to be
    /// trusted: `min_completions`, or, in a pipeline running fewer than
    /// that, as many as are running (a whole generation has turned over,
    /// so about a lifetime has been seen), and at least
    /// `MIN_LIFETIMES_SEEN`. A pipeline of 24 executions living 15 minutes
    /// took two hours to reach 200, and learned nothing until then.
    /// Once known, they stay known: a pipeline that grows past its
    /// completions would otherwise forget them and ramp as if cold.
    pub fn lifetimes_known(&self, min_completions: u64) -> bool {
        if self.lifetimes_known.get() {
            return true;
        }
        let generation = (self.in_flight() as u64).max(MIN_LIFETIMES_SEEN);
        let known = self.completions >= min_completions.min(generation);
        self.lifetimes_known.set(known);
        known
    }

    /// Our executions believed running.
    pub fn ours(&self) -> usize {
        self.entries.len()
    }

    /// Others' running executions at the last reconcile.
    pub fn foreign(&self) -> usize {
        self.foreign
    }

    /// Completions of ours recorded so far, from events and reconciles.
    pub fn completions(&self) -> u64 {
        self.completions
    }

    /// The q-quantile of recently observed lifetimes (as detected, so a
    /// little long: conservative for the stability window).
    pub fn lifetime_quantile(&self, q: f64) -> Option<Secs> {
        if self.durations.is_empty() {
            return None;
        }
        let mut v: Vec<Secs> = self.durations.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(v[i])
    }

    /// Close the pass's bucket of moments; drop the oldest buckets that
    /// the newer ones do without.
    fn close_moments(&mut self) {
        self.moments.push_back(Moments::default());
        let mut total: f64 = self.moments.iter().map(|m| m.n).sum();
        while let Some(front) = self.moments.front().copied() {
            if total - front.n < DURATIONS_KEPT as f64 {
                break;
            }
            total -= front.n;
            self.moments.pop_front();
        }
    }

    /// Moments of the recent lifetimes: at least the last 1,024 recorded,
    /// every one of the passes that found them.
    pub fn lifetime_moments(&self) -> Moments {
        self.moments
            .iter()
            .fold(Moments::default(), |a, m| a.plus(*m))
    }

    /// The histogram of recent lifetimes (their likeliest values).
    pub fn lifetime_histogram(&self) -> &Histogram {
        &self.histogram
    }

    /// Mean of recently observed lifetimes.
    pub fn mean_lifetime(&self) -> Option<Secs> {
        if self.durations.is_empty() {
            return None;
        }
        Some(self.durations.iter().sum::<f64>() / self.durations.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn reconcile_drops_finished_keeps_young_and_counts_foreign() {
        let mut l = Ledger::new();
        l.started("old-done", 0.0);
        l.started("old-running", 1.0);
        l.started("young", 95.0);
        // Listing at t=100 with 30 s grace: "young" is not listed yet.
        let out = l.reconcile(&set(&["old-running", "other-1", "other-2"]), 100.0, 30.0);
        assert_eq!(
            out,
            ReconcileOutcome {
                completed: 1,
                foreign: 2
            }
        );
        assert_eq!(l.ours(), 2);
        assert_eq!(l.in_flight(), 4);
        assert_eq!(l.mean_lifetime(), Some(100.0));
    }

    #[test]
    fn a_start_is_counted_once() {
        let mut l = Ledger::new();
        assert!(l.started("a", 0.0));
        assert!(!l.started("a", 5.0));
        assert_eq!(l.in_flight(), 1);
        assert!(l.completed("a", 50.0));
        assert!(!l.completed("a", 51.0));
        assert_eq!(l.in_flight(), 0);
        assert_eq!(l.completions(), 1);
    }

    #[test]
    fn a_foreign_execution_we_later_start_is_not_counted_twice() {
        let mut l = Ledger::new();
        l.reconcile(&set(&["x"]), 10.0, 30.0);
        assert_eq!(l.in_flight(), 1);
        l.started("x", 11.0);
        l.reconcile(&set(&["x"]), 20.0, 30.0);
        assert_eq!(l.in_flight(), 1);
    }

    /// Start `n` executions named `prefix0..` at `at`; their names.
    fn start_together(l: &mut Ledger, prefix: &str, n: usize, at: Secs) -> HashSet<String> {
        let names: HashSet<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        for name in &names {
            l.started(name, at);
        }
        names
    }

    /// Lifetimes seen: 200, evenly from 10 to 30 s.
    fn with_lifetimes_10_to_30() -> Ledger {
        let mut l = Ledger::new();
        for i in 0..200 {
            l.started(&format!("d{i}"), 0.0);
            l.completed(&format!("d{i}"), 10.0 + f64::from(i) * 0.1);
        }
        l
    }

    #[test]
    fn a_cohort_is_anticipated_by_its_lifetimes_and_the_passes_rate() {
        let mut l = with_lifetimes_10_to_30();
        // 1,000 started together at t=100, all listed running at 105.
        let names = start_together(&mut l, "e", 1000, 100.0);
        l.reconcile(&names, 105.0, 1.0);
        // No pass has found a completion: the lifetimes alone would count
        // about half as finished at 20 s old, early in a run only the
        // short ones have ended, so nothing is anticipated.
        assert_eq!(l.in_flight_at(120.0, 0), 1000);
        // Passes find 100 a second from 110 on (those with the shortest
        // lifetimes first).
        let mut running = names.clone();
        let mut order: Vec<String> = names.into_iter().collect();
        order.sort();
        for (pass, t) in (110..=114).enumerate() {
            for n in &order[pass * 100..(pass + 1) * 100] {
                running.remove(n);
            }
            l.reconcile(&running, f64::from(t), 1.0);
        }
        assert_eq!(l.in_flight(), 500);
        // A second after the last pass: of the lifetimes seen past 14 s
        // (the 500 short ones have joined them), about 6 % end by 15 s,
        // some 30 of the 500, less a margin; the rate would say 100.
        let next = l.in_flight_at(115.0, 0);
        assert!((470..=490).contains(&next), "{next}");
        assert_eq!(
            l.in_flight_at(109.0, 201),
            l.in_flight(),
            "too few completions seen"
        );
    }

    #[test]
    fn a_pass_full_of_completions_is_not_carried_into_a_trough() {
        let mut l = with_lifetimes_10_to_30();
        // A wave of 500 started at 0 finishes in one 2 s pass (a high
        // completion rate); the 1,000 running are 12 s old at the next.
        let wave = start_together(&mut l, "w", 500, 0.0);
        let young = start_together(&mut l, "y", 1000, 18.0);
        let both: HashSet<String> = wave.union(&young).cloned().collect();
        l.reconcile(&both, 28.0, 1.0);
        l.reconcile(&young, 30.0, 1.0);
        // The wave's lifetimes (30 s as detected) join the 200: of the 680
        // lifetimes past 12 s, 30 end by 15 s, so about 44 of the 1,000
        // have finished; the wave's rate (250 a second) would say 750.
        let now = l.in_flight_at(33.0, 0);
        assert!((956..=980).contains(&now), "{now}");
    }

    #[test]
    fn a_small_pipeline_knows_its_lifetimes_after_a_generation_and_keeps_them() {
        let mut l = Ledger::new();
        for i in 0..30 {
            l.started(&format!("d{i}"), 0.0);
        }
        for i in 0..19 {
            l.completed(&format!("d{i}"), 10.0);
        }
        assert!(!l.lifetimes_known(200), "19 completions: fewer than 20");
        l.completed("d19", 10.0);
        assert!(l.lifetimes_known(200), "20 completions, 10 running: known");
        // It grows past its completions: still known (a pipeline that
        // forgot would ramp as if cold).
        for i in 0..100 {
            l.started(&format!("n{i}"), 11.0);
        }
        assert!(l.lifetimes_known(200));
    }

    #[test]
    fn another_starter_is_recognised_by_new_foreign_executions() {
        let mut l = Ledger::new();
        // Leftovers of a previous life: present at the first pass, then finishing.
        l.reconcile(&set(&["old-1", "old-2"]), 10.0, 30.0);
        assert!(!l.other_starter_active());
        l.reconcile(&set(&["old-1"]), 15.0, 30.0);
        assert!(!l.other_starter_active());
        // A new one appears that we did not start.
        l.reconcile(&set(&["old-1", "theirs-1"]), 20.0, 30.0);
        assert!(l.other_starter_active());
        for t in [25.0, 30.0, 35.0] {
            l.reconcile(&set(&["theirs-1"]), t, 30.0);
        }
        assert!(!l.other_starter_active(), "quiet for three passes");
    }

    #[test]
    fn quantiles_of_lifetimes() {
        let mut l = Ledger::new();
        for i in 0..100 {
            l.started(&format!("e{i}"), 0.0);
        }
        for i in 0..100 {
            l.completed(&format!("e{i}"), f64::from(i + 1));
        }
        assert_eq!(l.lifetime_quantile(0.9), Some(90.0));
        assert_eq!(l.lifetime_quantile(0.0), Some(1.0));
    }
}
