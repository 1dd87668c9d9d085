//! CloudWatch: each minute's concurrency maxima become readable some lag
//! after the minute ends, unless the minute goes missing or falls in an
//! outage. A minute may first be readable while it still fills in: its
//! value then covers only an early part of the minute (lower than the
//! final one, the dangerous direction) until it is final `fill_secs`
//! later. AWS does not document a minute's datapoint as final when it
//! first appears, so a reader should re-read recent minutes.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::lambda::MinuteTrace;
use crate::ports::ConcurrencySample;
use crate::sim::scenario::CloudWatchModel;

#[derive(Debug, Clone)]
struct Published {
    /// The minute's value once final.
    sample: ConcurrencySample,
    /// When the minute becomes readable.
    at: f64,
    /// What it reads until `final_at`, if it fills in.
    partial: Option<ConcurrencySample>,
    /// When the final value replaces the partial one.
    final_at: f64,
}

/// The metric store GetMetricData reads.
#[derive(Debug)]
pub(super) struct CloudWatch {
    model: CloudWatchModel,
    published: Vec<Published>,
    /// Draws whether a minute fills in, and how much of it first shows;
    /// apart from the world's stream so runs without partial minutes keep
    /// their draws.
    partial_rng: StdRng,
}

impl CloudWatch {
    /// Nothing published yet; `seed` seeds the partial-minute draws.
    pub(super) fn new(model: &CloudWatchModel, seed: u64) -> CloudWatch {
        CloudWatch {
            model: model.clone(),
            published: Vec::new(),
            partial_rng: StdRng::seed_from_u64(seed ^ 0xc10d_3a7c_0f11_0000),
        }
    }

    /// Publish a closed minute. Draws the lag, then whether it goes missing
    /// (from `rng`), then, only when partial minutes are on, whether it
    /// first shows partly and how many of its seconds.
    pub(super) fn publish(&mut self, minute: &MinuteTrace, rng: &mut StdRng) {
        let cw = &self.model;
        let sample = minute.sample(60);
        let lag = cw.lag_min_secs + rng.random::<f64>() * (cw.lag_max_secs - cw.lag_min_secs);
        let at = (sample.minute_start_s + 60) as f64 + lag;
        let lost = rng.random::<f64>() < cw.missing_probability
            || cw.outages.iter().any(|w| w.contains(at));
        let mut partial = None;
        if cw.partial_probability > 0.0 && self.partial_rng.random::<f64>() < cw.partial_probability
        {
            // The maximum over the minute's first 1 to 59 seconds.
            let secs = self.partial_rng.random_range(1..=59);
            partial = Some(minute.sample(secs));
        }
        if !lost {
            self.published.push(Published {
                sample,
                at,
                partial,
                final_at: at + cw.fill_secs,
            });
        }
    }

    /// The samples readable at `now` for minutes from `since` on, in order:
    /// each minute's latest value (partial while it fills in).
    pub(super) fn samples(&self, since: u64, now: f64) -> Vec<ConcurrencySample> {
        let mut v: Vec<ConcurrencySample> = self
            .published
            .iter()
            .filter(|p| p.at <= now && p.sample.minute_start_s >= since)
            .map(|p| match &p.partial {
                Some(early) if now < p.final_at => early.clone(),
                _ => p.sample.clone(),
            })
            .collect();
        v.sort_by_key(|s| s.minute_start_s);
        v
    }
}

// The tests compare exact values: whole numbers and exact fractions.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::sim::scenario::Window;

    /// A minute of one function running 1 from its start.
    fn minute(start: u64) -> MinuteTrace {
        let mut t = MinuteTrace::new(start, &["f".to_string()]);
        t.function_at(0, start as f64, 1);
        t.account_at(start as f64, 1.0);
        t
    }

    /// Publish minutes `0..n`; the starts of those readable at `now`.
    fn starts(model: &CloudWatchModel, n: u64, now: f64) -> Vec<u64> {
        let mut cw = CloudWatch::new(model, 7);
        let mut rng = StdRng::seed_from_u64(7);
        for m in 0..n {
            cw.publish(&minute(m * 60), &mut rng);
        }
        cw.samples(0, now)
            .iter()
            .map(|s| s.minute_start_s)
            .collect()
    }

    #[test]
    fn a_minute_is_published_between_the_lags_after_its_end() {
        let mut cw = CloudWatch::new(&CloudWatchModel::default(), 7);
        let mut rng = StdRng::seed_from_u64(7);
        for m in 0..200 {
            cw.publish(&minute(m * 60), &mut rng);
        }
        for m in 0..200 {
            let end = (m * 60 + 60) as f64;
            let seen = |now| cw.samples(m * 60, now).first().map(|s| s.minute_start_s);
            assert_eq!(seen(end + 60.0 - 1e-6), None, "minute {m} before lag_min");
            assert_eq!(seen(end + 120.0), Some(m * 60), "minute {m} by lag_max");
        }
    }

    #[test]
    fn missing_probability_one_publishes_nothing() {
        let model = CloudWatchModel {
            missing_probability: 1.0,
            ..CloudWatchModel::default()
        };
        assert!(starts(&model, 50, 1e9).is_empty());
        assert_eq!(starts(&CloudWatchModel::default(), 50, 1e9).len(), 50);
    }

    #[test]
    fn an_outage_drops_the_minutes_published_in_it() {
        let model = CloudWatchModel {
            lag_min_secs: 90.0,
            lag_max_secs: 90.0,
            missing_probability: 0.0,
            outages: vec![Window {
                start_secs: 600.0,
                duration_secs: 600.0,
            }],
            ..CloudWatchModel::default()
        };
        // Published at start + 150 s: the outage takes minutes 480..=1020.
        let expected: Vec<u64> = (0..30)
            .map(|m| m * 60)
            .filter(|&s| !(480..=1020).contains(&s))
            .collect();
        assert_eq!(starts(&model, 30, 1e9), expected);
    }

    #[test]
    fn samples_come_sorted_and_from_since_on() {
        let model = CloudWatchModel {
            lag_min_secs: 0.0,
            lag_max_secs: 0.0,
            ..CloudWatchModel::default()
        };
        let mut cw = CloudWatch::new(&model, 7);
        let mut rng = StdRng::seed_from_u64(7);
        for start in [120, 0, 180, 60] {
            cw.publish(&minute(start), &mut rng);
        }
        let starts = |since| -> Vec<u64> {
            cw.samples(since, 1e9)
                .iter()
                .map(|s| s.minute_start_s)
                .collect()
        };
        assert_eq!(starts(0), [0, 60, 120, 180]);
        assert_eq!(starts(60), [60, 120, 180]);
        assert_eq!(starts(181), Vec::<u64>::new());
    }

    /// A minute in which "f" runs 10 from its start and 100 from 50 s on.
    fn rising(start: u64) -> MinuteTrace {
        let mut t = MinuteTrace::new(start, &["f".to_string()]);
        let t0 = start as f64;
        t.function_at(0, t0, 10);
        t.account_at(t0, 10.0);
        t.function_at(0, t0 + 50.0, 100);
        t.account_at(t0 + 50.0, 100.0);
        t
    }

    fn filling(partial_probability: f64) -> CloudWatchModel {
        CloudWatchModel {
            lag_min_secs: 60.0,
            lag_max_secs: 60.0,
            missing_probability: 0.0,
            partial_probability,
            fill_secs: 30.0,
            ..CloudWatchModel::default()
        }
    }

    #[test]
    fn a_filling_minute_reads_low_first_then_its_final_value() {
        let mut cw = CloudWatch::new(&filling(1.0), 7);
        let mut rng = StdRng::seed_from_u64(7);
        let mut partial_seen = 0;
        for m in 0..50 {
            let start = m * 60;
            cw.publish(&rising(start), &mut rng);
            // Readable 60 s after the minute's end, final 30 s later.
            let read = |now: f64| cw.samples(start, now).first().cloned();
            let end = (start + 60) as f64;
            assert_eq!(read(end + 59.9), None);
            let first = read(end + 60.0).expect("readable");
            let last = read(end + 90.0).expect("final");
            assert_eq!(
                read(end + 89.9),
                Some(first.clone()),
                "unchanged until final"
            );
            assert_eq!((last.pipeline_max, last.account_max), (100.0, Some(100.0)));
            assert!(first.pipeline_max <= last.pipeline_max);
            assert_eq!(first.account_max, Some(first.pipeline_max));
            if first.pipeline_max < last.pipeline_max {
                assert_eq!(first.pipeline_max, 10.0, "an early part of the minute");
                partial_seen += 1;
            }
        }
        // The first 1–59 s miss the rise at 50 s in about 49 cases of 59.
        assert!((30..50).contains(&partial_seen), "{partial_seen} partial");
    }

    #[test]
    fn without_partial_minutes_a_minute_reads_final_at_once() {
        let mut cw = CloudWatch::new(&filling(0.0), 7);
        let mut rng = StdRng::seed_from_u64(7);
        cw.publish(&rising(0), &mut rng);
        let first = cw.samples(0, 120.0);
        assert_eq!(first[0].pipeline_max, 100.0);
    }

    #[test]
    fn partial_minutes_draw_apart_from_the_world_stream() {
        let next_draw = |p| {
            let mut cw = CloudWatch::new(&filling(p), 7);
            let mut rng = StdRng::seed_from_u64(7);
            for m in 0..10 {
                cw.publish(&rising(m * 60), &mut rng);
            }
            rng.random::<u64>()
        };
        assert_eq!(next_draw(0.0), next_draw(0.5));
    }
}
