//! `ConcurrencyMetrics` over CloudWatch GetMetricData (AWS/Lambda
//! ConcurrentExecutions, 1-minute Maximum), and a PutMetricData publisher
//! for fanout's own metrics.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDatum, MetricStat, StandardUnit,
};

use super::classify;
use crate::ports::{ConcurrencyMetrics, ConcurrencySample, PortError};

const SERVICE: &str = "monitoring";
/// CloudWatch keeps 1-minute data for 15 days; never ask for more than a
/// few hours back (the controller only needs recent minutes).
const MAX_LOOKBACK_S: u64 = 3 * 3600;

/// Why publishing fanout's metrics failed.
#[derive(Debug, thiserror::Error)]
pub enum CloudWatchError {
    /// A PutMetricData call failed.
    #[error("PutMetricData to namespace {namespace}: {source}")]
    Put {
        /// The metrics namespace.
        namespace: String,
        /// The call's error.
        source: PortError,
    },
}

/// Lambda concurrency: account-wide, or summed over the listed functions.
#[derive(Clone, Debug)]
pub struct LambdaConcurrency {
    client: Client,
    functions: Vec<String>,
}

impl LambdaConcurrency {
    /// Summed over `functions`; account-wide when it is empty.
    pub fn new(client: Client, functions: Vec<String>) -> LambdaConcurrency {
        LambdaConcurrency { client, functions }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn query(id: String, function: Option<&str>) -> MetricDataQuery {
    lambda_query(id, function, "ConcurrentExecutions", "Maximum")
}

fn lambda_query(id: String, function: Option<&str>, name: &str, stat: &str) -> MetricDataQuery {
    let mut metric = Metric::builder().namespace("AWS/Lambda").metric_name(name);
    if let Some(f) = function {
        metric = metric.dimensions(Dimension::builder().name("FunctionName").value(f).build());
    }
    MetricDataQuery::builder()
        .id(id)
        .metric_stat(
            MetricStat::builder()
                .metric(metric.build())
                .period(60)
                .stat(stat)
                .build(),
        )
        .return_data(true)
        .build()
}

impl ConcurrencyMetrics for LambdaConcurrency {
    fn now_s(&self) -> f64 {
        unix_now()
    }

    async fn samples_since(&self, since_s: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        let now = unix_now() as u64;
        let start = since_s.max(now.saturating_sub(MAX_LOOKBACK_S)) / 60 * 60;
        // "account" is the account-wide series; "f0".. one per function.
        let mut queries = vec![query("account".into(), None)];
        for (i, f) in self.functions.iter().enumerate() {
            queries.push(query(format!("f{i}"), Some(f)));
        }
        // Throttles (Sum): account-wide, or of the pipeline's functions.
        if self.functions.is_empty() {
            queries.push(lambda_query("throttles".into(), None, "Throttles", "Sum"));
        } else {
            for (i, f) in self.functions.iter().enumerate() {
                queries.push(lambda_query(format!("t{i}"), Some(f), "Throttles", "Sum"));
            }
        }
        let mut account: BTreeMap<u64, f64> = BTreeMap::new();
        let mut pipeline: BTreeMap<u64, f64> = BTreeMap::new();
        let mut throttles: BTreeMap<u64, f64> = BTreeMap::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .get_metric_data()
                .start_time(DateTime::from_secs(start.cast_signed()))
                .end_time(DateTime::from_secs(now.cast_signed() + 60))
                .set_metric_data_queries(Some(queries.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(SERVICE, &e))?;
            for r in out.metric_data_results() {
                let id = r.id().unwrap_or_default();
                let into = if id == "account" {
                    &mut account
                } else if id == "throttles" || id.starts_with('t') {
                    &mut throttles
                } else {
                    &mut pipeline
                };
                for (t, v) in r.timestamps().iter().zip(r.values()) {
                    let minute = (t.secs().max(0) as u64) / 60 * 60;
                    // Per-function maxima are summed per minute (each
                    // function's own peak: an upper bound, as wanted).
                    *into.entry(minute).or_insert(0.0) += v;
                }
            }
            match out.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let samples = if self.functions.is_empty() {
            account
                .iter()
                .filter(|(m, _)| **m >= since_s)
                .map(|(m, v)| ConcurrencySample {
                    minute_start_s: *m,
                    pipeline_max: *v,
                    account_max: Some(*v),
                    // No datapoint: nothing was throttled that minute.
                    throttles: Some(throttles.get(m).copied().unwrap_or(0.0)),
                    functions: Vec::new(),
                })
                .collect()
        } else {
            let minutes: std::collections::BTreeSet<u64> =
                account.keys().chain(pipeline.keys()).copied().collect();
            minutes
                .into_iter()
                .filter(|m| *m >= since_s)
                .map(|m| ConcurrencySample {
                    minute_start_s: m,
                    // A function without a datapoint ran nothing that minute.
                    pipeline_max: pipeline.get(&m).copied().unwrap_or(0.0),
                    account_max: account.get(&m).copied(),
                    throttles: Some(throttles.get(&m).copied().unwrap_or(0.0)),
                    functions: Vec::new(),
                })
                .collect()
        };
        Ok(samples)
    }
}

/// Publishes fanout's own gauges and counters with PutMetricData.
#[derive(Clone, Debug)]
pub struct MetricPublisher {
    client: Client,
    namespace: String,
}

impl MetricPublisher {
    /// A publisher into the CloudWatch namespace `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>) -> MetricPublisher {
        MetricPublisher {
            client,
            namespace: namespace.into(),
        }
    }

    /// Put every value, in requests of at most 1,000 metrics.
    pub async fn put(&self, values: &[(String, f64)]) -> Result<(), CloudWatchError> {
        let now = DateTime::from_secs(unix_now() as i64);
        for chunk in values.chunks(1000) {
            let data = chunk
                .iter()
                .map(|(name, v)| {
                    MetricDatum::builder()
                        .metric_name(name)
                        .value(*v)
                        .unit(StandardUnit::None)
                        .timestamp(now)
                        .build()
                })
                .collect();
            self.client
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(data))
                .send()
                .await
                .map_err(|e| CloudWatchError::Put {
                    namespace: self.namespace.clone(),
                    source: classify(SERVICE, &e),
                })?;
        }
        Ok(())
    }
}
