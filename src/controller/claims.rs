//! The claims loop: renew this controller's part of the ceiling in the
//! shared record (`control::claims`) every `coordination.renew_secs`, and
//! retire it at shutdown. Admission reads the part; without a live part it
//! admits nothing, so a controller that cannot reach the store stops
//! growing rather than guess.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Claims, Controller, sleep_unless};
use crate::control::budget::Share;
use crate::control::claims::{Ask, Record};
use crate::metrics::{Counter, Gauge};
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, PortError, WorkQueue};

/// Conditional writes lost in a row before a renewal gives up until the
/// next period.
const ATTEMPTS: usize = 4;

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    pub(super) async fn claims_loop(&self, shutdown: watch::Receiver<bool>) {
        let Some(claims) = self.b.claims.clone() else {
            return;
        };
        if self.policy != crate::control::Policy::Adaptive {
            return;
        }
        while !*shutdown.borrow() {
            if let Err(e) = self.renew(&claims, false).await {
                warn!(error = %e, id = %claims.id, "cannot renew this controller's claim on the ceiling (coordination.table); admission stops when the claim runs out");
                self.tally(Counter::MetricErrors, 1);
            }
            let period = Duration::from_secs(self.cfg().coordination.renew_secs);
            sleep_unless(period, &shutdown).await;
        }
        if let Err(e) = self.renew(&claims, true).await {
            warn!(error = %e, id = %claims.id, "cannot retire this controller's claim; it expires after coordination.ttl_secs");
        }
    }

    /// One renewal (or, `retire`, the last write): load, compute, write
    /// conditionally; a lost race loads again.
    async fn renew(&self, claims: &Claims, retire: bool) -> Result<(), PortError> {
        for _ in 0..ATTEMPTS {
            let stored = claims.store.load().await?;
            let ask = self.ask();
            let (version, record) =
                stored.map_or((None, Record::default()), |s| (Some(s.version), s.record));
            let (next, part) = if retire {
                (record.retire(&claims.id, ask), None)
            } else {
                let (next, part) = record.renew(&claims.id, ask);
                (next, Some(part))
            };
            if !claims.store.save(version, next).await? {
                continue;
            }
            let mut st = self.state();
            let first = st.part.is_none();
            // The part holds for half its life here: the others void it at
            // its full life, by their clocks.
            st.part = part.map(|p| (p, ask.now_s + ask.ttl_s / 2.0));
            drop(st);
            if let Some(p) = part {
                let s = &self.b.sink;
                s.gauge(Gauge::ClaimedLambdas, p.lambdas);
                s.gauge(Gauge::LiveControllers, p.live as f64);
                tracing::debug!(id = %claims.id, lambdas = p.lambdas, others = p.others, ramp = p.ramp, live = p.live, using = ask.using, wants = ask.wants, "claim renewed");
                if first {
                    info!(id = %claims.id, lambdas = p.lambdas, others = p.others, live = p.live, "claimed a part of the ceiling in the shared record");
                }
            }
            return Ok(());
        }
        warn!(id = %claims.id, attempts = ATTEMPTS, "lost every conditional write of the claim record this period; trying again at the next");
        Ok(())
    }

    /// What this controller uses and wants, in Lambdas.
    fn ask(&self) -> Ask {
        let cfg = self.cfg();
        let now_s = self.b.metrics.now_s();
        let st = self.state();
        let k = st.estimator.k();
        let ours = st.ledger.in_flight().saturating_sub(st.ledger.foreign()) + st.in_hand;
        let using = ours as f64 * k;
        let ceiling = f64::from(cfg.controller.ceiling);
        let backlog = st.sources.iter().any(|s| !s.receive.drained());
        Ask {
            now_s,
            ttl_s: cfg.coordination.ttl_secs as f64,
            ceiling,
            using,
            wants: if backlog { ceiling } else { using },
        }
    }

    /// The share admission may use now: None without coordination; a
    /// share of nothing until a part is claimed or once it has run out.
    pub(super) fn share(&self, st: &super::State, now_s: f64) -> Option<Share> {
        self.b.claims.as_ref()?;
        Some(match st.part {
            Some((p, until)) if now_s <= until => Share {
                lambdas: p.lambdas,
                others: p.others,
                ramp_fraction: p.ramp,
            },
            _ => Share {
                lambdas: 0.0,
                others: 0.0,
                ramp_fraction: 0.0,
            },
        })
    }
}
