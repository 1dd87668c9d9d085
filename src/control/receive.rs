//! The receive plan: what one admission step asks the work queues for.
//! Receives are paid per call and waiting work is safest untouched in SQS,
//! so a step asks only for what the budget admits, queues in priority
//! order, in whole batches once the pipeline is large enough to wait for
//! them, and probes a queue that came back short instead of volleying.

use crate::control::budget::{Decision, Limit};
use crate::control::ledger::Secs;

/// Messages per SQS batch call (receive, delete, visibility, send).
pub const BATCH: usize = 10;
/// A queue that came back short is looked at again after this long.
pub const PROBE_EVERY: Secs = 1.0;

/// Whether a queue with messages is asked only for whole batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batches {
    /// Whole batches of `BATCH` (the rest waits for the next step), and a
    /// drained queue probed at most once per `PROBE_EVERY`.
    Whole,
    /// Any size: small pipelines cannot wait for whole batches.
    Any,
}

/// How a step receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Queue by queue without waiting (see `Plan`).
    Short,
    /// Nothing was seen last time: long-poll every queue at once (see
    /// `long_poll`).
    LongPoll,
}

/// What one admission step may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Messages in all.
    pub budget: usize,
    /// Messages from the queues after the first, in all.
    pub lower: usize,
    /// Whole batches or any size.
    pub batches: Batches,
}

impl Step {
    /// The step for decision `d` over `queues` work queues. One step takes
    /// about half a second of starts, so priority messages are looked at
    /// again soon. The queues after the first leave `reserve_fraction` of
    /// the target free, so a priority message finds room within a tick
    /// even at the ceiling; only at the ceiling: under the ramp the budget
    /// can be smaller than the reserve, and bulk work would never start.
    /// A step never takes more than a cohort (`Decision::cohort`), and
    /// whole batches only when a batch fits in one: ten started together
    /// would meet on a small limited function (a short first step reserved
    /// at a few dozen) and be throttled, however many run.
    pub fn new(d: &Decision, queues: usize, start_rate_per_s: u32, reserve_fraction: f64) -> Step {
        let cohort = d.cohort.unwrap_or(usize::MAX).max(1);
        let step_cap = ((start_rate_per_s as usize) / 2).max(BATCH).min(cohort);
        // Never the whole target: a target of one execution (a function
        // limit of one Lambda) would leave bulk work nothing, ever.
        let reserve = if queues > 1 && d.limit == Limit::Ceiling {
            ((d.target as f64 * reserve_fraction).ceil() as usize).min(d.target.saturating_sub(1))
        } else {
            0
        };
        Step {
            budget: d.budget.min(step_cap),
            lower: d.budget.saturating_sub(reserve).min(step_cap),
            batches: if d.target >= 10 * BATCH && cohort >= BATCH {
                Batches::Whole
            } else {
                Batches::Any
            },
        }
    }
}

/// The long poll of an idle step: (queue, most messages) for each queue
/// polled, every queue at once, each for an equal share of the budget
/// (the queues after the first only when `lower` leaves them a share).
pub fn long_poll(step: &Step, queues: usize) -> Vec<(usize, usize)> {
    let share = (step.budget / queues).clamp(1, BATCH);
    let lower_share = (step.lower / queues).min(BATCH);
    (0..queues)
        .filter(|&i| i == 0 || lower_share > 0)
        .map(|i| (i, if i == 0 { share } else { lower_share }))
        .collect()
}

/// What the plan remembers of a queue between steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueState {
    /// Its last receive came back short.
    drained: bool,
    /// When it was last probed while drained.
    last_probe: Secs,
}

impl Default for QueueState {
    fn default() -> Self {
        QueueState {
            drained: false,
            last_probe: f64::NEG_INFINITY,
        }
    }
}

impl QueueState {
    /// Did its last receive come back short?
    pub fn drained(&self) -> bool {
        self.drained
    }
}

/// What to do with the next queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The step is over: ask no further queue.
    Stop,
    /// Leave this queue for a later step.
    Skip,
    /// Receive calls at once, of these sizes.
    Receive(Vec<usize>),
}

/// One short step over the queues, in priority order: `ask` for each
/// queue in turn, then `received` with what the calls brought.
#[derive(Debug, Clone)]
pub struct Plan {
    lower: usize,
    batches: Batches,
    max_calls: usize,
    remaining: usize,
    taken: usize,
    next: usize,
    skipped: bool,
}

impl Plan {
    /// A plan for `step`, at most `max_calls` receives at once per queue.
    pub fn new(step: &Step, max_calls: usize) -> Plan {
        Plan {
            lower: step.lower,
            batches: step.batches,
            max_calls,
            remaining: step.budget,
            taken: 0,
            next: 0,
            skipped: false,
        }
    }

    /// What to ask the next queue, whose state is `q`, at `now`.
    pub fn ask(&mut self, q: &mut QueueState, now: Secs) -> Ask {
        let first = self.next == 0;
        self.next += 1;
        if !first {
            self.remaining = self.remaining.min(self.lower.saturating_sub(self.taken));
        }
        if self.remaining == 0 {
            return Ask::Stop;
        }
        let whole = self.batches == Batches::Whole;
        // A queue that came back short gets one probe, not a volley of
        // empty receives.
        let calls = if q.drained {
            if whole && now - q.last_probe < PROBE_EVERY {
                self.skipped = true;
                return Ask::Skip;
            }
            q.last_probe = now;
            1
        } else {
            self.remaining.div_ceil(BATCH).min(self.max_calls)
        };
        let askable = if whole && !q.drained {
            self.remaining / BATCH * BATCH
        } else {
            self.remaining
        };
        if askable == 0 {
            self.skipped = true;
            return Ask::Skip;
        }
        let calls = calls.min(askable.div_ceil(BATCH));
        let mut sizes = Vec::with_capacity(calls);
        let mut left = askable;
        for _ in 0..calls {
            let n = left.min(BATCH);
            left -= n;
            sizes.push(n);
        }
        Ask::Receive(sizes)
    }

    /// The last asked queue `q` brought `got` of the `asked` messages.
    /// Returns whether the next queue may be asked: a queue that filled
    /// every request may hold more, so it is served again before the next.
    pub fn received(&mut self, q: &mut QueueState, asked: usize, got: usize) -> bool {
        self.taken += got;
        self.remaining = self.remaining.saturating_sub(got);
        q.drained = got < asked;
        got != asked
    }

    /// Was every queue in reach asked? Only then does an empty step mean
    /// the queues are idle.
    pub fn asked_all(&self) -> bool {
        !self.skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(budget: usize, target: usize, limit: Limit) -> Decision {
        Decision {
            budget,
            target,
            limit,
            room_share: None,
            cohort: None,
        }
    }

    fn step(budget: usize, lower: usize, batches: Batches) -> Step {
        Step {
            budget,
            lower,
            batches,
        }
    }

    #[test]
    fn a_step_takes_half_a_second_of_starts() {
        let s = Step::new(&decision(5000, 6000, Limit::Ramp), 2, 250, 0.005);
        assert_eq!((s.budget, s.lower), (125, 125));
        // A slow start rate still asks for a whole batch.
        let s = Step::new(&decision(5000, 6000, Limit::Ramp), 2, 4, 0.005);
        assert_eq!((s.budget, s.lower), (BATCH, BATCH));
    }

    #[test]
    fn the_priority_reserve_applies_at_the_ceiling_only() {
        let at_ceiling = Step::new(&decision(40, 6000, Limit::Ceiling), 2, 250, 0.005);
        assert_eq!((at_ceiling.budget, at_ceiling.lower), (40, 10));
        let ramping = Step::new(&decision(40, 6000, Limit::Ramp), 2, 250, 0.005);
        assert_eq!((ramping.budget, ramping.lower), (40, 40));
        let one_queue = Step::new(&decision(40, 6000, Limit::Ceiling), 1, 250, 0.005);
        assert_eq!(one_queue.lower, 40);
        // Only the reserve is free: bulk gets nothing.
        let full = Step::new(&decision(20, 6000, Limit::Ceiling), 2, 250, 0.005);
        assert_eq!((full.budget, full.lower), (20, 0));
        // A target of one execution (a function limit of one Lambda): the
        // reserve would be all of it, and bulk work would never start.
        let one = Step::new(&decision(1, 1, Limit::Ceiling), 2, 250, 0.05);
        assert_eq!((one.budget, one.lower), (1, 1));
    }

    #[test]
    fn whole_batches_once_the_target_is_ten_batches() {
        let d = |t| Step::new(&decision(50, t, Limit::Ramp), 1, 250, 0.0).batches;
        assert_eq!(d(99), Batches::Any);
        assert_eq!(d(100), Batches::Whole);
    }

    #[test]
    fn a_step_takes_at_most_a_cohort_and_whole_batches_only_when_one_fits() {
        let cohort = |c| {
            let d = Decision {
                cohort: Some(c),
                ..decision(500, 6000, Limit::Ramp)
            };
            let s = Step::new(&d, 1, 250, 0.0);
            (s.budget, s.batches)
        };
        assert_eq!(cohort(7), (7, Batches::Any));
        assert_eq!(cohort(10), (10, Batches::Whole));
        assert_eq!(cohort(400), (125, Batches::Whole));
    }

    #[test]
    fn the_long_poll_shares_the_budget() {
        assert_eq!(
            long_poll(&step(30, 30, Batches::Any), 2),
            [(0, 10), (1, 10)]
        );
        assert_eq!(long_poll(&step(7, 3, Batches::Any), 2), [(0, 3), (1, 1)]);
        // No lower share: the priority queue alone, for at least one.
        assert_eq!(long_poll(&step(1, 1, Batches::Any), 2), [(0, 1)]);
    }

    #[test]
    fn a_full_queue_is_served_again_before_the_next() {
        let mut qs = [QueueState::default(), QueueState::default()];
        let mut p = Plan::new(&step(40, 40, Batches::Any), 16);
        assert_eq!(p.ask(&mut qs[0], 0.0), Ask::Receive(vec![10; 4]));
        assert!(!p.received(&mut qs[0], 40, 40), "full: the step ends here");
        assert!(!qs[0].drained());
        let mut p = Plan::new(&step(40, 40, Batches::Any), 16);
        assert_eq!(p.ask(&mut qs[0], 0.0), Ask::Receive(vec![10; 4]));
        assert!(p.received(&mut qs[0], 40, 25));
        assert!(qs[0].drained());
        assert_eq!(p.ask(&mut qs[1], 0.0), Ask::Receive(vec![10, 5]));
        assert!(p.asked_all());
    }

    #[test]
    fn the_queues_after_the_first_take_at_most_lower() {
        let mut qs = [QueueState::default(), QueueState::default()];
        let mut p = Plan::new(&step(40, 15, Batches::Any), 16);
        assert_eq!(p.ask(&mut qs[0], 0.0), Ask::Receive(vec![10; 4]));
        p.received(&mut qs[0], 40, 8);
        assert_eq!(p.ask(&mut qs[1], 0.0), Ask::Receive(vec![7]));
        let mut p = Plan::new(&step(40, 15, Batches::Any), 16);
        p.ask(&mut qs[0], 0.0);
        p.received(&mut qs[0], 40, 20);
        assert_eq!(p.ask(&mut qs[1], 0.0), Ask::Stop);
    }

    #[test]
    fn calls_at_once_are_capped() {
        let mut q = QueueState::default();
        let mut p = Plan::new(&step(125, 125, Batches::Any), 3);
        assert_eq!(p.ask(&mut q, 0.0), Ask::Receive(vec![10, 10, 10]));
    }

    #[test]
    fn whole_batches_leave_the_rest_for_the_next_step() {
        let mut q = QueueState::default();
        let mut p = Plan::new(&step(27, 27, Batches::Whole), 16);
        assert_eq!(p.ask(&mut q, 0.0), Ask::Receive(vec![10, 10]));
        let mut p = Plan::new(&step(7, 7, Batches::Whole), 16);
        assert_eq!(p.ask(&mut q, 0.0), Ask::Skip);
        assert!(!p.asked_all(), "an empty step is not idle");
        let mut p = Plan::new(&step(7, 7, Batches::Any), 16);
        assert_eq!(p.ask(&mut q, 0.0), Ask::Receive(vec![7]));
    }

    #[test]
    fn a_drained_queue_is_probed_once_per_probe_interval() {
        let mut q = QueueState::default();
        let mut p = Plan::new(&step(50, 50, Batches::Whole), 16);
        p.ask(&mut q, 0.0);
        p.received(&mut q, 50, 3);
        // One probe of what is left, not a volley, and not whole batches.
        let mut p = Plan::new(&step(47, 47, Batches::Whole), 16);
        assert_eq!(p.ask(&mut q, 0.5), Ask::Receive(vec![10]));
        p.received(&mut q, 10, 0);
        let mut p = Plan::new(&step(47, 47, Batches::Whole), 16);
        assert_eq!(p.ask(&mut q, 1.4), Ask::Skip, "probed at 0.5");
        let mut p = Plan::new(&step(47, 47, Batches::Whole), 16);
        assert_eq!(p.ask(&mut q, 1.5), Ask::Receive(vec![10]));
        // Small pipelines probe at every step.
        let mut p = Plan::new(&step(7, 7, Batches::Any), 16);
        assert_eq!(p.ask(&mut q, 1.6), Ask::Receive(vec![7]));
    }
}
