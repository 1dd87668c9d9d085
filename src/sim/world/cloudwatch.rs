//! CloudWatch: each minute's concurrency maxima become readable some lag
//! after the minute ends, unless the minute goes missing or falls in an
//! outage.

use rand::RngExt;
use rand::rngs::StdRng;

use crate::ports::ConcurrencySample;
use crate::sim::scenario::CloudWatchModel;

#[derive(Debug, Clone, Copy)]
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
            .map(|p| p.sample)
            .collect();
        v.sort_by_key(|s| s.minute_start_s);
        v
    }
}
