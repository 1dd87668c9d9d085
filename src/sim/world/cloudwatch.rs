//! CloudWatch: each minute's concurrency maxima become readable some lag
//! after the minute ends, unless the minute goes missing or falls in an
//! outage.

use rand::RngExt;
use rand::rngs::StdRng;

use crate::ports::ConcurrencySample;
use crate::sim::scenario::CloudWatchModel;

#[derive(Debug, Clone)]
struct Published {
    sample: ConcurrencySample,
    /// When the sample becomes readable.
    at: f64,
}

/// The metric store GetMetricData reads.
#[derive(Debug)]
pub(super) struct CloudWatch {
    model: CloudWatchModel,
    published: Vec<Published>,
}

impl CloudWatch {
    /// Nothing published yet.
    pub(super) fn new(model: &CloudWatchModel) -> CloudWatch {
        CloudWatch {
            model: model.clone(),
            published: Vec::new(),
        }
    }

    /// Publish a closed minute. Draws the lag, then whether it goes missing.
    pub(super) fn publish(&mut self, sample: ConcurrencySample, rng: &mut StdRng) {
        let cw = &self.model;
        let lag = cw.lag_min_secs + rng.random::<f64>() * (cw.lag_max_secs - cw.lag_min_secs);
        let at = (sample.minute_start_s + 60) as f64 + lag;
        let lost = rng.random::<f64>() < cw.missing_probability
            || cw.outages.iter().any(|w| w.contains(at));
        if !lost {
            self.published.push(Published { sample, at });
        }
    }

    /// The samples readable at `now` for minutes from `since` on, in order.
    pub(super) fn samples(&self, since: u64, now: f64) -> Vec<ConcurrencySample> {
        let mut v: Vec<ConcurrencySample> = self
            .published
            .iter()
            .filter(|p| p.at <= now && p.sample.minute_start_s >= since)
            .map(|p| p.sample.clone())
            .collect();
        v.sort_by_key(|s| s.minute_start_s);
        v
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::sim::scenario::Window;

    fn minute(start: u64) -> ConcurrencySample {
        ConcurrencySample {
            minute_start_s: start,
            pipeline_max: 1.0,
            account_max: Some(1.0),
            throttles: Some(0.0),
            functions: Vec::new(),
        }
    }

    /// Publish minutes `0..n`; the starts of those readable at `now`.
    fn starts(model: &CloudWatchModel, n: u64, now: f64) -> Vec<u64> {
        let mut cw = CloudWatch::new(model);
        let mut rng = StdRng::seed_from_u64(7);
        for m in 0..n {
            cw.publish(minute(m * 60), &mut rng);
        }
        cw.samples(0, now)
            .iter()
            .map(|s| s.minute_start_s)
            .collect()
    }

    #[test]
    fn a_minute_is_published_between_the_lags_after_its_end() {
        let mut cw = CloudWatch::new(&CloudWatchModel::default());
        let mut rng = StdRng::seed_from_u64(7);
        for m in 0..200 {
            cw.publish(minute(m * 60), &mut rng);
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
        let mut cw = CloudWatch::new(&model);
        let mut rng = StdRng::seed_from_u64(7);
        for start in [120, 0, 180, 60] {
            cw.publish(minute(start), &mut rng);
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
}
