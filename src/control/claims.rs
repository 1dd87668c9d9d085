//! Claims on one ceiling shared by several controllers: a record in a
//! store with conditional writes (DynamoDB in AWS, memory in the
//! simulator) in which each live controller holds a part of the ceiling
//! and a part of Lambda's scaling rate. Every write is conditional on the
//! version read, and `renew` never lets the parts sum above the whole, so
//! controllers that start in the same second cannot both take the room.

use std::collections::BTreeMap;

pub use crate::ports::{ClaimEntry as Entry, ClaimRecord as Record};

/// What one controller asks for at a renewal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ask {
    /// Backend time now (seconds).
    pub now_s: f64,
    /// How long a claim lives without renewal.
    pub ttl_s: f64,
    /// The ceiling the claims share (Lambdas).
    pub ceiling: f64,
    /// Lambdas this controller's executions and messages in hand use now.
    pub using: f64,
    /// Lambdas it would use: the ceiling while it has a backlog, else
    /// what it uses.
    pub wants: f64,
}

/// A controller's part after a renewal, for admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Part {
    /// Lambdas it may hold.
    pub lambdas: f64,
    /// The other live controllers' claims together.
    pub others: f64,
    /// Fraction of Lambda's scaling rate it may ramp at.
    pub ramp: f64,
    /// Live controllers, itself included.
    pub live: usize,
}

impl Record {
    /// The record after `me` renews its claim with `ask`: expired claims
    /// dropped, and `me`'s claim set so that the claims never sum above
    /// the ceiling (nor the ramp fractions above 1). While another live
    /// controller wants more than it holds, `me` holds at most its fair
    /// share or what it uses, whichever is more: its running executions
    /// cannot be recalled, so it gives room back as they finish.
    pub fn renew(&self, me: &str, ask: Ask) -> (Record, Part) {
        let mut entries: BTreeMap<String, Entry> = self
            .entries
            .iter()
            .filter(|(id, e)| id.as_str() != me && e.expires_s >= ask.now_s)
            .map(|(id, e)| (id.clone(), *e))
            .collect();
        let live = entries.len() + 1;
        // Controllers that want nothing (idle, retired) hold what they use
        // and take no part of the ramp nor of a fair split.
        let active = entries.values().filter(|e| e.wants > 0.0).count() + 1;
        let others: f64 = entries.values().map(|e| e.lambdas.max(0.0)).sum();
        let others_ramp: f64 = entries.values().map(|e| e.ramp.max(0.0)).sum();
        let contended = entries.values().any(|e| e.wants > e.lambdas + 0.5);
        let fair = ask.ceiling / active as f64;
        let room = (ask.ceiling - others).max(0.0);
        let wants = ask.wants.max(ask.using).max(0.0);
        let lambdas = if contended {
            wants.min(ask.using.max(fair))
        } else {
            wants
        }
        .min(room);
        let ramp = (1.0 / active as f64).min((1.0 - others_ramp).max(0.0));
        entries.insert(
            me.to_owned(),
            Entry {
                lambdas,
                ramp,
                wants: ask.wants.max(0.0),
                expires_s: ask.now_s + ask.ttl_s,
            },
        );
        let part = Part {
            lambdas,
            others,
            ramp,
            live,
        };
        (Record { entries }, part)
    }

    /// The record as `me` stops: it holds what its running executions use
    /// until its claim expires (by then the others' reconciles list them
    /// as foreign), and neither wants more nor ramps.
    #[must_use]
    pub fn retire(&self, me: &str, ask: Ask) -> Record {
        let (mut r, _) = self.renew(
            me,
            Ask {
                wants: ask.using,
                ..ask
            },
        );
        if let Some(e) = r.entries.get_mut(me) {
            e.ramp = 0.0;
            e.wants = 0.0;
        }
        r
    }
}

// The tests compare results of exact arithmetic.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;

    fn ask(now_s: f64, using: f64, wants: f64) -> Ask {
        Ask {
            now_s,
            ttl_s: 15.0,
            ceiling: 1000.0,
            using,
            wants,
        }
    }

    #[test]
    fn two_controllers_starting_together_split_the_ceiling_and_the_ramp() {
        // a writes first and takes everything; b, renewing on a's record,
        // gets nothing yet; a's next renewal gives back half; b takes it.
        let (r, a) = Record::default().renew("a", ask(0.0, 0.0, 1000.0));
        assert_eq!((a.lambdas, a.ramp, a.live), (1000.0, 1.0, 1));
        let (r, b) = r.renew("b", ask(0.1, 0.0, 1000.0));
        assert_eq!((b.lambdas, b.ramp, b.others, b.live), (0.0, 0.0, 1000.0, 2));
        let (r, a) = r.renew("a", ask(2.0, 300.0, 1000.0));
        assert_eq!((a.lambdas, a.ramp), (500.0, 0.5));
        let (_, b) = r.renew("b", ask(2.1, 0.0, 1000.0));
        assert_eq!((b.lambdas, b.ramp, b.others), (500.0, 0.5, 500.0));
    }

    #[test]
    fn a_claim_never_drops_below_what_its_controller_uses() {
        let (r, _) = Record::default().renew("a", ask(0.0, 0.0, 1000.0));
        let (r, _) = r.renew("a", ask(1.0, 900.0, 1000.0));
        let (r, b) = r.renew("b", ask(1.5, 0.0, 1000.0));
        assert_eq!(b.lambdas, 0.0);
        let (r, a) = r.renew("a", ask(3.0, 900.0, 1000.0));
        assert_eq!(a.lambdas, 900.0, "900 running cannot be recalled");
        let (r, b) = r.renew("b", ask(3.5, 0.0, 1000.0));
        assert_eq!(b.lambdas, 100.0);
        // a's executions finish: it comes down to its fair share.
        let (r, a) = r.renew("a", ask(5.0, 400.0, 1000.0));
        assert_eq!(a.lambdas, 500.0);
        let (_, b) = r.renew("b", ask(5.5, 100.0, 1000.0));
        assert_eq!(b.lambdas, 500.0);
    }

    #[test]
    fn an_expired_claim_frees_its_part_and_a_retired_one_keeps_only_what_runs() {
        let (r, _) = Record::default().renew("a", ask(0.0, 0.0, 1000.0));
        let (_, b) = r.renew("b", ask(16.0, 0.0, 1000.0));
        assert_eq!((b.lambdas, b.live), (1000.0, 1));
        let r = r.retire("a", ask(1.0, 200.0, 1000.0));
        let (_, b) = r.renew("b", ask(1.5, 0.0, 1000.0));
        assert_eq!((b.lambdas, b.ramp, b.others), (800.0, 1.0, 200.0));
    }

    #[test]
    fn an_idle_controller_claims_only_what_it_uses() {
        let (r, a) = Record::default().renew("a", ask(0.0, 120.0, 0.0));
        assert_eq!(a.lambdas, 120.0);
        let (_, b) = r.renew("b", ask(0.5, 0.0, 1000.0));
        assert_eq!(b.lambdas, 880.0);
    }

    proptest::proptest! {
        /// Whatever order controllers renew in, with whatever demands and
        /// clocks, the live claims never sum above the ceiling and the
        /// ramp fractions never above 1.
        #[test]
        fn live_claims_never_sum_above_the_ceiling(
            steps in proptest::collection::vec((0usize..4, 0.0f64..1500.0, 0.0f64..1500.0, 0.0f64..5.0), 1..60),
        ) {
            let mut r = Record::default();
            let mut now = 0.0;
            for (who, using, wants, dt) in steps {
                now += dt;
                let (next, part) = r.renew(&format!("c{who}"), ask(now, using.min(1000.0), wants));
                r = next;
                let live: Vec<_> = r.entries.values().filter(|e| e.expires_s >= now).collect();
                let sum: f64 = live.iter().map(|e| e.lambdas).sum();
                let ramp: f64 = live.iter().map(|e| e.ramp).sum();
                proptest::prop_assert!(sum <= 1000.0 + 1e-9, "{r:?}");
                proptest::prop_assert!(ramp <= 1.0 + 1e-9, "{r:?}");
                proptest::prop_assert!(part.lambdas >= 0.0 && part.ramp >= 0.0);
            }
        }
    }
}
