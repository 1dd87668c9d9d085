//! Admission: how many more executions may start now. Plain arithmetic on
//! the ledger's count, the estimate and time; no I/O, no clock.

use crate::control::Policy;
use crate::control::ledger::Secs;

/// The numbers admission follows (the controller builds them from its
/// config; a reload hands in new ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Lambda concurrency the pipeline may use.
    pub ceiling: u32,
    /// Account concurrency limit, when known: other load lowers the
    /// effective ceiling under it.
    pub account_limit: Option<u32>,
    /// Fraction of the ceiling kept free for the metric's noise.
    pub headroom_fraction: f64,
    /// The most Lambdas one execution can run at once.
    pub max_lambdas_per_execution: f64,
    /// Concurrency the ramp may add per second.
    pub ramp_concurrency_per_s: f64,
    /// Concurrency the ramp allows at once above what is running.
    pub ramp_initial: f64,
    /// The fixed policy's cap of running executions, when set.
    pub fixed_max_running: Option<u32>,
    /// The seed policy's multiplier of running executions.
    pub seed_multiplier: f64,
}

impl Params {
    /// The fixed policy's cap: the configured one, else the largest cap
    /// that can never exceed the ceiling.
    pub fn fixed_cap(&self) -> u32 {
        self.fixed_max_running.unwrap_or_else(|| {
            (f64::from(self.ceiling) / self.max_lambdas_per_execution).floor() as u32
        })
    }
}

/// Inputs of one admission decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inputs {
    /// The decision's time.
    pub now: Secs,
    /// Running executions (ledger, ours and foreign).
    pub running: usize,
    /// Messages received and not yet started or released.
    pub in_hand: usize,
    /// Lambdas per execution (k̂).
    pub k: f64,
    /// Other load in the account, when the metric shows it.
    pub other_load: Option<f64>,
    /// Mean execution lifetime, once known.
    pub lifetime: Option<Secs>,
    /// Mean lifetime of the executions finished so far, however few: the
    /// first cohort has moved through its workflow once one has.
    pub first_lifetime: Option<Secs>,
    /// Executions of ours and of others among `running`, and whether
    /// another controller is starting executions now: if so, the free
    /// room is shared in proportion, so two controllers during a deploy
    /// do not both fill the same gap.
    pub ours: usize,
    /// Executions of others among `running`.
    pub foreign: usize,
    /// Another controller is starting executions now.
    pub shared: bool,
    /// This controller's part of the ceiling under a shared claim record,
    /// when controllers coordinate through one (None: alone, or no store).
    pub share: Option<Share>,
}

/// A controller's part of the ceiling, agreed in the shared claim record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Lambda concurrency this controller may hold: the claims of every
    /// live controller sum to at most the ceiling.
    pub lambdas: f64,
    /// The other live controllers' claims together (Lambdas).
    pub others: f64,
    /// Fraction of Lambda's scaling rate this controller may ramp at: the
    /// live controllers' fractions sum to at most 1.
    pub ramp_fraction: f64,
}

/// Why the budget is what it is (exported as a metric and in logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The target under the (effective) ceiling.
    Ceiling,
    /// Lambda's scaling rate.
    Ramp,
    /// Growth spread over an execution lifetime.
    Growth,
}

/// One admission decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Messages that may be received now.
    pub budget: usize,
    /// Running executions the controller is aiming at.
    pub target: usize,
    /// Which limit set the budget.
    pub limit: Limit,
    /// The fraction of the free room taken under the reconcile's sharing
    /// rule (another controller starting, no claim record), when it cut
    /// the budget.
    pub room_share: Option<f64>,
    /// The most executions that may start at once: a limited function's
    /// room over each execution at its widest there, or the unreserved
    /// pool's (`FunctionBound::widest`), when one is known. A cohort
    /// started together reaches that width together (a Map's first items),
    /// whatever the running count.
    pub cohort: Option<usize>,
}

/// The smallest share of the free room a controller takes while another
/// one starts executions too: enough for a new replica to get going.
const MIN_SHARE: f64 = 0.1;

/// A throttled minute cuts the concurrency the target aims at to this
/// fraction of the level Lambda allowed in it. The next minute's maximum
/// runs above the target's mean by the minute-to-minute wander of the sum
/// (about 1/√N), the saw-tooth between reconciles and the phases of
/// executions started together (a few per cent, up to ±12 % for cohorts of
/// long executions): a tenth below the allowed level puts the next minute
/// under it, where halving (TCP's cut) would throw away half the pipeline
/// for a limit that was found within a few per cent.
pub const THROTTLE_CUT: f64 = 0.9;

/// Each clean minute gives back this fraction of the ceiling to a target
/// held by a throttle: a cut of a tenth is recovered in about two minutes,
/// about one CloudWatch delay, so a limit that is still there shows
/// itself (and cuts again) before the target is far above it, and a
/// target follows Lambda's legacy scaling (+500 a minute, 2.6 % of a
/// ceiling of 19,000) instead of lagging it (legacy-burst: utilization
/// 0.568 at 5 %, 0.551 at 2 %; other-load 0.854 and 0.847).
pub const RECOVERY_PER_MINUTE: f64 = 0.05;

/// Admission state that carries across decisions: the ramp and the
/// growth pacing.
#[derive(Debug, Clone)]
pub struct Admission {
    policy: Policy,
    ceiling: f64,
    account_limit: Option<f64>,
    headroom: f64,
    k_max: f64,
    ramp_rate: f64,
    /// The ramp rate in force: halved on each throttled minute, restored
    /// step by step on clean ones.
    ramp_rate_now: f64,
    ramp_initial: f64,
    fixed_cap: usize,
    seed_multiplier: f64,
    ramp_cap: f64,
    allowed: f64,
    /// The largest gap below the target in the current approach: growth
    /// covers it linearly over a lifetime.
    gap_ref: f64,
    last: Option<Secs>,
    /// Concurrency the target is held under since a throttled minute
    /// (multiplicative cut, additive recovery); None once recovered.
    throttle_cap: Option<f64>,
    /// Backend time from which a minute's throttles may cut again: minutes
    /// that began earlier, within a lifetime of the last cut, still show
    /// the executions admitted before it.
    cut_from: f64,
    /// The latest mean lifetime seen (for `cut_from`).
    lifetime: Option<Secs>,
    /// Running executions the tightest function limit allows.
    function_cap: Option<f64>,
    /// Running executions every function limit allows with each execution
    /// at its widest there.
    function_widest: Option<f64>,
    /// Executions the functions' widths by age let start now.
    function_room: Option<f64>,
}

impl Admission {
    /// Admission for `policy`, from a cold start.
    pub fn new(policy: Policy, c: &Params) -> Admission {
        Admission {
            policy,
            ceiling: f64::from(c.ceiling),
            account_limit: c.account_limit.map(f64::from),
            headroom: c.headroom_fraction,
            k_max: c.max_lambdas_per_execution,
            ramp_rate: c.ramp_concurrency_per_s,
            ramp_rate_now: c.ramp_concurrency_per_s,
            ramp_initial: c.ramp_initial,
            fixed_cap: c.fixed_cap() as usize,
            seed_multiplier: c.seed_multiplier,
            ramp_cap: c.ramp_initial,
            allowed: c.ramp_initial / c.max_lambdas_per_execution,
            gap_ref: 0.0,
            last: None,
            throttle_cap: None,
            cut_from: f64::NEG_INFINITY,
            lifetime: None,
            function_cap: None,
            function_widest: None,
            function_room: None,
        }
    }

    /// Lambda throttled the pipeline at `observed` concurrency in the
    /// minute starting at `minute_s` (backend time; `now_s` is the backend
    /// time now): the account scales slower than configured (the legacy
    /// burst model), or a limit is lower than the ceiling (the account's,
    /// a function's). Hold the ramp there and halve its rate, and cut the
    /// target to `THROTTLE_CUT` of the level Lambda allowed, unless the
    /// minute began within a lifetime of the last cut (it shows the
    /// executions admitted before that cut, which only finishing removes).
    /// The new cap replaces the old one: a throttle above the old cap says
    /// Lambda has scaled up since (the legacy model adds 500 a minute), and
    /// holding the lower figure would leave that room unused.
    /// Returns whether the target was cut.
    pub fn throttled(&mut self, observed: f64, minute_s: f64, now_s: f64) -> bool {
        self.ramp_cap = self.ramp_cap.min(observed);
        self.ramp_rate_now = (self.ramp_rate_now / 2.0).max(self.ramp_rate / 64.0);
        if minute_s < self.cut_from {
            return false;
        }
        self.throttle_cap = Some(THROTTLE_CUT * observed.max(0.0));
        self.cut_from = now_s + self.lifetime.unwrap_or(60.0).max(60.0);
        true
    }

    /// Lambda throttled functions growing at its scaling rate, while
    /// `predicted` Lambdas (running × k̂, the ramp's own units) ran: hold
    /// the ramp there and halve its rate; the target stands (the throttles
    /// said how fast, not how high).
    pub fn scaling_throttled(&mut self, predicted: f64) {
        self.ramp_cap = self.ramp_cap.min(predicted);
        self.ramp_rate_now = (self.ramp_rate_now / 2.0).max(self.ramp_rate / 64.0);
    }

    /// A minute without throttles: give the ramp back a tenth of its rate,
    /// and a target held by a throttle `RECOVERY_PER_MINUTE` of the ceiling.
    pub fn clean_minute(&mut self) {
        self.ramp_rate_now = (self.ramp_rate_now + self.ramp_rate / 10.0).min(self.ramp_rate);
        if let Some(c) = self.throttle_cap {
            let c = c + RECOVERY_PER_MINUTE * self.ceiling;
            self.throttle_cap = (c < self.ceiling).then_some(c);
        }
    }

    /// The widest an execution can be, when the state machine's definition
    /// bounds it more precisely than the config: it paces Lambda's scaling
    /// (executions per second = ramp / width) and, before the first
    /// decision, sizes the first step.
    pub fn set_k_max(&mut self, k_max: f64) {
        if self.last.is_none() {
            self.allowed = self.ramp_initial / k_max;
        }
        self.k_max = k_max;
    }

    /// The concurrency a throttle holds the target under, if any.
    pub fn throttle_cap(&self) -> Option<f64> {
        self.throttle_cap
    }

    /// Running executions the tightest function limit allows, if any.
    pub fn function_cap(&self) -> Option<f64> {
        self.function_cap
    }

    /// Running executions the tightest function limit allows (None: no
    /// function limit known), and those every limit allows with each
    /// execution at its widest. Admission keeps the target under the
    /// first, and spreads growth above the second over a lifetime.
    pub fn set_function_cap(&mut self, running: Option<f64>, widest: Option<f64>) {
        self.function_cap = running.map(|r| r.max(0.0));
        self.function_widest = widest.map(|r| r.max(0.0));
    }

    /// Executions the functions' widths by age let start now (None: no
    /// limited function's width by age is known): the target is at most
    /// the running count plus these.
    pub fn set_function_room(&mut self, starts: Option<f64>) {
        self.function_room = starts.map(|n| n.max(0.0));
    }

    /// The ramp rate in force (concurrency per second).
    pub fn ramp_rate_now(&self) -> f64 {
        self.ramp_rate_now
    }

    /// A reloaded config: the ceiling, headroom, ramp and caps change from
    /// the next decision on; the ramp's progress, the growth pacing and a
    /// throttle slow-down (as a fraction of the rate) carry over. A lower
    /// ceiling lowers the target at once: nothing is admitted until the
    /// running count is under it (nothing is cancelled).
    pub fn reconfigure(&mut self, c: &Params) {
        let slowed = (self.ramp_rate_now / self.ramp_rate).clamp(0.0, 1.0);
        self.ceiling = f64::from(c.ceiling);
        self.account_limit = c.account_limit.map(f64::from);
        self.headroom = c.headroom_fraction;
        self.ramp_rate = c.ramp_concurrency_per_s;
        self.ramp_rate_now = c.ramp_concurrency_per_s * slowed;
        self.ramp_initial = c.ramp_initial;
        self.fixed_cap = c.fixed_cap() as usize;
        self.seed_multiplier = c.seed_multiplier;
    }

    /// The ceiling after other load in the account is taken out, and
    /// under the level a throttle holds it at.
    pub fn effective_ceiling(&self, other_load: Option<f64>) -> f64 {
        let mut c = self.ceiling;
        if let (Some(limit), Some(other)) = (self.account_limit, other_load) {
            c = c.min(limit - other);
        }
        if let Some(cap) = self.throttle_cap {
            c = c.min(cap);
        }
        (c * (1.0 - self.headroom)).max(0.0)
    }

    /// How many messages may be received now.
    pub fn decide(&mut self, i: Inputs) -> Decision {
        let first = self.last.is_none();
        let dt = self.last.map_or(0.0, |t| (i.now - t).max(0.0));
        self.last = Some(i.now);
        if i.lifetime.is_some() {
            self.lifetime = i.lifetime;
        }
        let committed = i.running + i.in_hand;
        let d = self.decide_alone(i, dt, committed, first);
        // Under a claim the record splits the room; the reconcile's rule
        // is for controllers without one.
        if !i.shared || d.budget == 0 || i.share.is_some() {
            return d;
        }
        let total = (i.ours + i.foreign).max(1) as f64;
        let share = (i.ours as f64 / total).max(MIN_SHARE);
        Decision {
            budget: (d.budget as f64 * share).floor() as usize,
            room_share: Some(share),
            ..d
        }
    }

    fn decide_alone(&mut self, i: Inputs, dt: f64, committed: usize, first: bool) -> Decision {
        match self.policy {
            Policy::Fixed => Decision {
                budget: self.fixed_cap.saturating_sub(committed),
                target: self.fixed_cap,
                limit: Limit::Ceiling,
                room_share: None,
                cohort: None,
            },
            Policy::Seed => {
                // The seed checks each message after receiving it; the
                // budget only says whether there is room for one more.
                // It counted running executions only, not messages in hand.
                let m = self.seed_multiplier;
                let room = self.ceiling - i.running as f64 * m;
                let target = (self.ceiling / m) as usize;
                Decision {
                    budget: usize::from(room > m),
                    target,
                    limit: Limit::Ceiling,
                    room_share: None,
                    cohort: None,
                }
            }
            Policy::Adaptive => self.adaptive(i, dt, committed, first),
        }
    }

    /// Growth per second up to the cohort (`fast`) and above it
    /// (`spread`), at Lambda's rate `lambda_rate` with `ceiling_cohort`
    /// the ceiling's own cohort.
    fn growth_rates(&self, i: &Inputs, lambda_rate: f64, ceiling_cohort: f64) -> (f64, f64) {
        let spread_over = |life: f64| lambda_rate.min(self.gap_ref / life);
        match i.lifetime {
            Some(life) if life > 0.0 => {
                let spread = spread_over(life);
                (spread.max(lambda_rate / 4.0), spread)
            }
            // No lifetime to spread over yet. Above a cohort a function
            // limit sets, nothing starts until the first executions finish:
            // the first cohort holds that function (or the pool the
            // reservations leave) until it moves on, and a start beside it
            // would meet it there. Then growth is spread over the lifetimes
            // seen so far.
            _ if self.function_widest.is_some_and(|w| w < ceiling_cohort) => {
                let spread = match i.first_lifetime {
                    Some(life) if life > 0.0 => spread_over(life),
                    _ => 0.0,
                };
                (lambda_rate, spread)
            }
            _ => (lambda_rate, lambda_rate),
        }
    }

    fn adaptive(&mut self, i: Inputs, dt: f64, committed: usize, first: bool) -> Decision {
        let k = i.k.max(1e-6);
        let mut ceiling = self.effective_ceiling(i.other_load);
        // Under a shared claim, the ceiling and Lambda's scaling are split
        // between the live controllers.
        let (mut ramp_rate, mut ramp_initial) = (self.ramp_rate_now, self.ramp_initial);
        if let Some(s) = i.share {
            // `running` counts the others' executions too: our claim plus
            // what they run, and never into room another has claimed but
            // not yet filled.
            let f = s.ramp_fraction.clamp(0.0, 1.0);
            let theirs = i.foreign as f64 * k;
            ceiling = ceiling
                .min(s.lambdas.max(0.0) + theirs)
                .min(ceiling - (s.others - theirs).max(0.0));
            ramp_rate *= f;
            ramp_initial *= f;
        }
        let mut target = (ceiling / k).floor().max(0.0);
        if let Some(f) = self.function_cap {
            target = target.min(f.floor());
        }
        if let Some(n) = self.function_room {
            target = target.min((i.running as f64 + n).floor());
        }
        // Lambda adds environments at a bounded rate: the predicted
        // concurrency may grow by ramp_rate per second, and never jump more
        // than ramp_initial above what is running (after an idle spell the
        // ramp starts again).
        let predicted = committed as f64 * k;
        self.ramp_cap = (self.ramp_cap + ramp_rate * dt).min(predicted + ramp_initial);
        let ramp = (self.ramp_cap / k).floor();
        // Growth is fast (Lambda's rate, at least a quarter of it) up to the
        // count that fits the ceiling with every execution at its widest
        // at once: no phase of a new cohort can break it. Above that count
        // only a mixed population fits (k̂ was measured on one), so growth
        // is spread over an execution lifetime and a new cohort's phases
        // mix instead of peaking together. The fast floor above it would
        // start a cohort of hundreds within a minute whenever k̂ fell (a
        // long wide Map then ran 10 % over its ceiling for minutes).
        let lambda_rate = ramp_rate / self.k_max.max(k);
        let gap = target - committed as f64;
        // An approach ends when growth has reached the target, not when
        // the running count does: refills keep it a little under the
        // target, and a gap kept from the first ramp would let a later,
        // smaller rise in at the ramp's pace (a cohort of it then peaked
        // together in its wide phase).
        self.gap_ref = if gap <= 0.0 || self.allowed >= target {
            0.0
        } else {
            self.gap_ref.max(gap)
        };
        let (fast, spread) = self.growth_rates(&i, lambda_rate, ceiling / self.k_max.max(k));
        let widest = (ceiling / self.k_max.max(k))
            .min(self.function_widest.unwrap_or(f64::INFINITY))
            .floor();
        if first {
            // The first step is a cohort too: Lambda's initial burst sizes
            // it, but never past what may start at once.
            self.allowed = self.allowed.min(widest.max(1.0));
        }
        let base = self.allowed.max(committed as f64);
        let grown = if base + fast * dt <= widest {
            base + fast * dt
        } else {
            base.max(widest) + spread * dt
        };
        self.allowed = grown.min(target);
        let (cap, limit) = [
            (target, Limit::Ceiling),
            (ramp, Limit::Ramp),
            (self.allowed.floor(), Limit::Growth),
        ]
        .into_iter()
        .fold((f64::INFINITY, Limit::Ceiling), |acc, x| {
            if x.0 < acc.0 { x } else { acc }
        });
        Decision {
            budget: (cap - committed as f64).max(0.0) as usize,
            target: target as usize,
            limit,
            room_share: None,
            cohort: self.function_widest.map(|w| w.floor().max(1.0) as usize),
        }
    }
}

#[cfg(test)]
mod tests;
