//! The in-flight ledger: executions this controller started, plus the
//! running executions it did not start (another controller, a previous
//! life of this one) as last seen by a reconcile.

use std::collections::{HashMap, HashSet, VecDeque};

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
    /// Start of the last reconcile pass.
    listed_at: Option<Secs>,
    /// Completions found per second by reconciles (smoothed).
    completion_rate: f64,
    /// Others' running executions at the last reconcile.
    foreign_names: HashSet<String>,
    /// Reconciles since one found a new execution that is not ours.
    since_foreign_start: Option<u32>,
}

const DURATIONS_KEPT: usize = 1024;

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
                self.record(now - e.started_at);
                true
            }
            None => false,
        }
    }

    fn record(&mut self, lifetime: Secs) {
        self.completions += 1;
        if self.durations.len() == DURATIONS_KEPT {
            self.durations.pop_front();
        }
        self.durations.push_back(lifetime.max(0.0));
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
        for (name, started_at) in &done {
            self.entries.remove(name);
            self.record(listed_at - started_at);
        }
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

    /// Executions believed running: ours plus others'.
    pub fn in_flight(&self) -> usize {
        self.entries.len() + self.foreign
    }

    /// Executions believed running at `now`, less the completions expected
    /// since the last reconcile at the rate reconciles have been finding
    /// them. Without it the count saw-tooths: finished executions pile up
    /// between passes and the pipeline sags before each refill. Only
    /// executions older than the shortest lifetimes seen can be expected
    /// to have finished, and nothing is anticipated before `min_completions`
    /// completions have been observed.
    pub fn in_flight_at(&self, now: Secs, min_completions: u64) -> usize {
        let (Some(t), true) = (self.listed_at, self.completions >= min_completions) else {
            return self.in_flight();
        };
        let expected = (self.completion_rate * (now - t).max(0.0)).floor() as usize;
        if expected == 0 {
            return self.in_flight();
        }
        let shortest = self.lifetime_quantile(0.05).unwrap_or(f64::INFINITY);
        let old = self
            .entries
            .values()
            .filter(|e| now - e.started_at >= shortest)
            .count();
        self.in_flight() - expected.min(old)
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

    #[test]
    fn completions_between_reconciles_are_anticipated() {
        let mut l = Ledger::new();
        for i in 0..1000 {
            l.started(&format!("e{i}"), 0.0);
        }
        let running = |from: usize| {
            (from..1000)
                .map(|i| format!("e{i}"))
                .collect::<HashSet<_>>()
        };
        l.reconcile(&running(0), 100.0, 30.0);
        assert_eq!(l.in_flight_at(105.0, 0), 1000, "no rate known yet");
        // 50 finished in 5 s: 10 per second.
        l.reconcile(&running(50), 105.0, 30.0);
        let rate = 0.3 * 10.0;
        assert_eq!(l.in_flight_at(105.0, 0), 950);
        assert_eq!(l.in_flight_at(107.0, 0), 950 - (2.0 * rate) as usize);
        assert_eq!(l.in_flight_at(107.0, 51), 950, "too few completions seen");
        // Young executions are not expected to finish.
        l.started("young", 106.0);
        assert_eq!(l.in_flight_at(107.0, 0), 951 - (2.0 * rate) as usize);
        // Never below what the ledger can account for.
        assert!(l.in_flight_at(10_000.0, 0) <= 951);
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
