//! One learned width: Lambdas per running execution, of the whole pipeline
//! (k̂) or of one function (ŵ_f). It starts at a prior, is raised at once
//! by any minute that shows more, and is lowered only to the highest ratio
//! of the stable minutes of the last execution lifetime.
//!
//! Why a lifetime: a population of a fixed size still cycles through its
//! workflow's phases when its executions started together (a cohort: a
//! ramp, a refill after a wave of completions), and the cycle's period is
//! the lifetime. The ratio of one minute is one phase; the widest ratio
//! over a lifetime is the one that bounds the population's concurrency. A
//! raise acts at once and does not clear the window: a single narrow
//! minute after it lowers k̂ only to the widest stable minute of the last
//! lifetime.

use std::collections::BTreeMap;

use super::SampleUse;

/// Stable minutes always kept, however short the lifetime.
pub(super) const STABLE_KEPT: usize = 3;

/// Minutes of every kind kept at most (a day): the bound on memory while
/// no lifetime is known.
const RECENT_KEPT: usize = 1440;

/// A width and the ratios it is learned from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Width {
    value: f64,
    /// Ratios (with margin) of the stable minutes of the last lifetime (at
    /// least the `STABLE_KEPT` newest), by minute.
    window: BTreeMap<u64, f64>,
    /// Ratios of every minute fed (stable or not) of the last lifetime: a
    /// minute is stable when the running count held for a lifetime before
    /// its end, so those minutes saw the same population in its other phases
    /// (a cohort marching through a narrow step, then a wide Map).
    recent: BTreeMap<u64, f64>,
}

impl Width {
    /// A width at its prior.
    pub(super) fn new(prior: f64) -> Width {
        Width {
            value: prior,
            window: BTreeMap::new(),
            recent: BTreeMap::new(),
        }
    }

    /// The width in force.
    pub(super) fn value(&self) -> f64 {
        self.value
    }

    /// Lower the width to `to` if it is above (a remembered start).
    pub(super) fn lower_to(&mut self, to: f64) {
        self.value = self.value.min(to);
    }

    /// Raise the width to `to` if it is below (a wider definition).
    pub(super) fn raise_to(&mut self, to: f64) {
        self.value = self.value.max(to);
    }

    /// Ease the width a `step` of itself toward `ratio` when above it: a
    /// minute that shows room, though not a stable one (a function held
    /// far under its limit by its own bound has no other way down).
    pub(super) fn ease_to(&mut self, ratio: f64, step: f64) {
        if ratio < self.value {
            self.value = ratio.max(self.value * (1.0 - step));
        }
    }

    /// Feed the ratio (margin included) of `minute`. `stable`: the running
    /// count was stable for a lifetime before its end; `keep_s`: how far back
    /// minutes still count (a lifetime; None while no lifetime is known:
    /// every minute since the start, as the first cohort may take longer
    /// than the run has lasted to come back to its widest phase);
    /// `floor`: the lowest width allowed.
    pub(super) fn feed(
        &mut self,
        minute: u64,
        ratio: f64,
        stable: bool,
        keep_s: Option<f64>,
        floor: f64,
    ) -> SampleUse {
        let seen = self.recent.entry(minute).or_insert(ratio);
        *seen = seen.max(ratio);
        if let Some(keep_s) = keep_s {
            let oldest = minute as f64 - keep_s.max(0.0);
            self.recent.retain(|&m, _| m as f64 >= oldest);
        }
        while self.recent.len() > RECENT_KEPT {
            self.recent.pop_first();
        }
        if ratio > self.value {
            // Acted on at once; not kept as stable: a noise peak held for a
            // whole lifetime would cost more than it protects.
            self.value = ratio;
            return SampleUse::Raised(ratio);
        }
        if !stable {
            return SampleUse::Held(ratio);
        }
        let slot = self.window.entry(minute).or_insert(ratio);
        *slot = slot.max(ratio);
        self.prune(minute, keep_s.unwrap_or(0.0));
        // The widest phase of the last lifetime bounds the population.
        let phases = self.recent.values().copied().fold(0.0, f64::max);
        self.value = self
            .window
            .values()
            .copied()
            .fold(phases, f64::max)
            .max(floor);
        SampleUse::Learned(self.value)
    }

    /// Drop ratios older than `keep_s` before `newest`, keeping at least
    /// the `STABLE_KEPT` newest.
    fn prune(&mut self, newest: u64, keep_s: f64) {
        let oldest = newest as f64 - keep_s.max(0.0);
        while self.window.len() > STABLE_KEPT
            && self
                .window
                .first_key_value()
                .is_some_and(|(&m, _)| (m as f64) < oldest)
        {
            self.window.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minute_is_kept_until_a_lifetime_is_known() {
        let mut w = Width::new(10.0);
        // A cohort's widest phase, then a long narrow spell, all before a
        // lifetime is known (a small pipeline of long executions).
        w.feed(0, 7.0, false, None, 1.0);
        for m in 1..=10 {
            w.feed(m * 60, 3.0, false, None, 1.0);
        }
        // The first stable minute, with a lifetime of 900 s: the widest
        // phase within it still bounds the width.
        assert_eq!(
            w.feed(660, 3.0, true, Some(900.0), 1.0),
            SampleUse::Learned(7.0)
        );
        // A lifetime later it is forgotten.
        assert_eq!(
            w.feed(960, 3.0, true, Some(900.0), 1.0),
            SampleUse::Learned(3.0)
        );
    }
}
