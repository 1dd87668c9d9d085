//! Pacing: a `governor` token bucket on the tokio clock (so paused-time
//! tests and the simulator see the same pacing as production), and
//! exponential backoff as an iterator, jittered or exact.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// governor clock reading `tokio::time`, as time since its creation.
#[derive(Debug, Clone)]
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        tokio::time::Instant::now() - self.epoch
    }
}

/// A token bucket that waits on the tokio clock.
pub struct Pacer {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl Pacer {
    /// `per_second` tokens a second after a burst of `burst`.
    pub fn new(per_second: u32, burst: u32) -> Pacer {
        let clock = TokioClock::default();
        let quota = Quota::per_second(NonZeroU32::new(per_second.max(1)).expect("max(1)"))
            .allow_burst(NonZeroU32::new(burst.max(1)).expect("max(1)"));
        Pacer {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Wait for one token.
    pub async fn acquire(&self) {
        loop {
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
                }
            }
        }
    }
}

/// Exponential backoff: base grows by `multiplier` up to `max`. Jittered
/// (`new`), each delay is uniform in [base/2, base], so many retries of
/// one throttle spread out; exact (`doubling`), each delay is the base.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    multiplier: f64,
    /// None: no jitter.
    rng: Option<StdRng>,
}

impl Backoff {
    /// Jittered backoff, reproducible from `seed`.
    pub fn new(initial: Duration, max: Duration, multiplier: f64, seed: u64) -> Backoff {
        Backoff {
            next: initial,
            max,
            multiplier,
            rng: Some(StdRng::seed_from_u64(seed)),
        }
    }

    /// `initial`, then twice the last delay up to `max`, without jitter:
    /// for retries few enough that they need no spreading.
    pub fn doubling(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            next: initial,
            max,
            multiplier: 2.0,
            rng: None,
        }
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        // Checked: a multiplier of inf or 1e300 caps at `max`, not a panic.
        self.next = Duration::try_from_secs_f64(base.as_secs_f64() * self.multiplier)
            .map_or(self.max, |d| self.max.min(d));
        match &mut self.rng {
            Some(rng) => {
                let f = rng.random_range(0.5..=1.0);
                Some(base.mul_f64(f))
            }
            None => Some(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_or_infinite_multiplier_caps_the_delay_instead_of_panicking() {
        for m in [f64::INFINITY, 1e300, f64::MAX] {
            let mut b = Backoff {
                next: Duration::from_millis(100),
                max: Duration::from_secs(30),
                multiplier: m,
                rng: None,
            };
            assert_eq!(b.next(), Some(Duration::from_millis(100)));
            assert_eq!(b.next(), Some(Duration::from_secs(30)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_holds_the_rate_after_the_burst() {
        let p = Pacer::new(10, 5);
        let t0 = tokio::time::Instant::now();
        for _ in 0..25 {
            p.acquire().await;
        }
        // 5 at once, then 20 at 10 per second.
        let took = t0.elapsed().as_secs_f64();
        assert!((1.9..=2.1).contains(&took), "took {took}");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 2.0, 7);
        let d: Vec<_> = b.take(8).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[7] >= Duration::from_secs(1) && d[7] <= Duration::from_secs(2));
        let again: Vec<_> =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 2.0, 7)
                .take(8)
                .collect();
        assert_eq!(d, again, "seeded: reproducible");
    }

    #[test]
    fn doubling_backoff_is_exact() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let d: Vec<_> = Backoff::doubling(Duration::from_millis(400), Duration::from_secs(1))
            .take(3)
            .collect();
        assert_eq!(d, ms(&[400, 800, 1000]));
        let d: Vec<_> = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(8))
            .take(5)
            .collect();
        assert_eq!(d, ms(&[1000, 2000, 4000, 8000, 8000]));
    }
}
