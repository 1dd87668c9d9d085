//! `ConcurrencyMetrics` over CloudWatch GetMetricData (AWS/Lambda
//! ConcurrentExecutions, 1-minute Maximum, each listed function's Average
//! too, and Throttles, Sum; per listed function or account-wide) and
//! Lambda GetFunctionConcurrency (the functions' limits), and a
//! PutMetricData publisher for fanout's own metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{
    Dimension, Metric, MetricDataQuery, MetricDataResult, MetricDatum, MetricStat, StandardUnit,
};

use super::classify;
use crate::ports::{ConcurrencyMetrics, ConcurrencySample, FunctionSample, PortError};

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

/// Lambda concurrency: account-wide, or summed over the listed functions;
/// and those functions' concurrency limits (Lambda GetFunctionConcurrency).
#[derive(Clone, Debug)]
pub struct LambdaConcurrency {
    client: Client,
    lambda: aws_sdk_lambda::Client,
    functions: Vec<String>,
}

impl LambdaConcurrency {
    /// Summed over `functions`; account-wide when it is empty. `lambda`
    /// reads the functions' reserved concurrency.
    pub fn new(
        client: Client,
        lambda: aws_sdk_lambda::Client,
        functions: Vec<String>,
    ) -> LambdaConcurrency {
        LambdaConcurrency {
            client,
            lambda,
            functions,
        }
    }

    /// The queries of one read: the account-wide maximum, each function's
    /// maximum ("f0".. in `functions` order) and mean ("a0"..), and the
    /// throttles (Sum): account-wide ("throttles") when no function is
    /// listed, else each function's ("t0"..).
    fn queries(&self) -> Vec<MetricDataQuery> {
        let mut queries = vec![query("account".into(), None)];
        for (i, f) in self.functions.iter().enumerate() {
            queries.push(query(format!("f{i}"), Some(f)));
        }
        for (i, f) in self.functions.iter().enumerate() {
            queries.push(lambda_query(
                format!("a{i}"),
                Some(f),
                "ConcurrentExecutions",
                "Average",
            ));
        }
        if self.functions.is_empty() {
            queries.push(lambda_query("throttles".into(), None, "Throttles", "Sum"));
        } else {
            for (i, f) in self.functions.iter().enumerate() {
                queries.push(lambda_query(format!("t{i}"), Some(f), "Throttles", "Sum"));
            }
        }
        queries
    }

    /// Every datapoint from `start` to `end`, over all pages.
    async fn read(&self, start: u64, end: u64) -> Result<Read, PortError> {
        let mut read = Read::new(self.functions.len());
        each_result(&self.client, start, end, &self.queries(), |r| {
            let Some(series) = Series::of(r.id().unwrap_or_default()) else {
                return;
            };
            for (t, v) in r.timestamps().iter().zip(r.values()) {
                read.add(series, (t.secs().max(0) as u64) / 60 * 60, *v);
            }
        })
        .await?;
        Ok(read)
    }
}

/// GetMetricData for `queries` from `start` to `end` (Unix seconds), every
/// page, each result handed to `on_result`.
async fn each_result(
    client: &Client,
    start: u64,
    end: u64,
    queries: &[MetricDataQuery],
    mut on_result: impl FnMut(&MetricDataResult),
) -> Result<(), PortError> {
    let mut token: Option<String> = None;
    loop {
        let out = client
            .get_metric_data()
            .start_time(DateTime::from_secs(start.cast_signed()))
            .end_time(DateTime::from_secs(end.cast_signed()))
            .set_metric_data_queries(Some(queries.to_vec()))
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        out.metric_data_results().iter().for_each(&mut on_result);
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(()),
        }
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

/// The series a query id reads (see `LambdaConcurrency::queries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Series {
    Account,
    AccountThrottles,
    Max(usize),
    Mean(usize),
    Throttles(usize),
}

impl Series {
    fn of(id: &str) -> Option<Series> {
        match id {
            "account" => Some(Series::Account),
            "throttles" => Some(Series::AccountThrottles),
            _ => {
                let (kind, index) = id.split_at_checked(1)?;
                let i = index.parse().ok()?;
                match kind {
                    "f" => Some(Series::Max(i)),
                    "a" => Some(Series::Mean(i)),
                    "t" => Some(Series::Throttles(i)),
                    _ => None,
                }
            }
        }
    }
}

/// The datapoints of one read, per series and minute start. A minute read
/// twice (it cannot be, within one read) keeps the later value.
#[derive(Debug, Default)]
struct Read {
    account: BTreeMap<u64, f64>,
    account_throttles: BTreeMap<u64, f64>,
    max: Vec<BTreeMap<u64, f64>>,
    mean: Vec<BTreeMap<u64, f64>>,
    throttles: Vec<BTreeMap<u64, f64>>,
}

impl Read {
    fn new(functions: usize) -> Read {
        Read {
            max: vec![BTreeMap::new(); functions],
            mean: vec![BTreeMap::new(); functions],
            throttles: vec![BTreeMap::new(); functions],
            ..Read::default()
        }
    }

    fn add(&mut self, series: Series, minute: u64, v: f64) {
        let into = match series {
            Series::Account => Some(&mut self.account),
            Series::AccountThrottles => Some(&mut self.account_throttles),
            Series::Max(i) => self.max.get_mut(i),
            Series::Mean(i) => self.mean.get_mut(i),
            Series::Throttles(i) => self.throttles.get_mut(i),
        };
        if let Some(into) = into {
            into.insert(minute, v);
        }
    }

    /// One sample per minute from `since_s` on that has a concurrency
    /// datapoint (account-wide or of a function). A function without a
    /// datapoint in a minute ran nothing then (0, its mean too), a minute
    /// without a Throttles datapoint throttled nothing (0); a mean missing
    /// beside a maximum is `None` (unknown), and so is the account-wide
    /// maximum when missing, unless it is the only series.
    fn samples(&self, functions: &[String], since_s: u64) -> Vec<ConcurrencySample> {
        let get = |series: &BTreeMap<u64, f64>, m: u64| series.get(&m).copied().unwrap_or(0.0);
        if functions.is_empty() {
            return self
                .account
                .range(since_s..)
                .map(|(m, v)| ConcurrencySample {
                    minute_start_s: *m,
                    pipeline_max: *v,
                    account_max: Some(*v),
                    throttles: Some(get(&self.account_throttles, *m)),
                    functions: Vec::new(),
                })
                .collect();
        }
        let minutes: BTreeSet<u64> = self
            .max
            .iter()
            .chain([&self.account])
            .flat_map(|s| s.range(since_s..).map(|(m, _)| *m))
            .collect();
        minutes
            .into_iter()
            .map(|m| {
                let per: Vec<FunctionSample> = functions
                    .iter()
                    .enumerate()
                    .map(|(i, name)| FunctionSample {
                        name: name.clone(),
                        max: get(&self.max[i], m),
                        mean: match (self.mean[i].get(&m), self.max[i].get(&m)) {
                            (Some(&v), _) => Some(v),
                            (None, None) => Some(0.0),
                            (None, Some(_)) => None,
                        },
                        throttles: Some(get(&self.throttles[i], m)),
                    })
                    .collect();
                ConcurrencySample {
                    minute_start_s: m,
                    // Each function's own peak, summed: an upper bound of
                    // the pipeline's, as wanted.
                    pipeline_max: per.iter().map(|f| f.max).sum(),
                    account_max: self.account.get(&m).copied(),
                    throttles: Some(per.iter().filter_map(|f| f.throttles).sum()),
                    functions: per,
                }
            })
            .collect()
    }
}

impl ConcurrencyMetrics for LambdaConcurrency {
    fn now_s(&self) -> f64 {
        unix_now()
    }

    /// Every minute from `since_s` on, each with the values CloudWatch has
    /// now: a minute read again shows its latest values (a partial minute
    /// fills in), nothing is cached between reads.
    async fn samples_since(&self, since_s: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        let now = unix_now() as u64;
        let start = since_s.max(now.saturating_sub(MAX_LOOKBACK_S)) / 60 * 60;
        // Up to the end of the current minute: its partial datapoint too.
        let end = (now / 60 + 1) * 60;
        let read = self.read(start, end).await?;
        Ok(read.samples(&self.functions, since_s))
    }

    /// Each listed function's reserved concurrency, in the config's order.
    async fn function_limits(&self) -> Result<Vec<(String, Option<u32>)>, PortError> {
        let mut out = Vec::with_capacity(self.functions.len());
        for f in &self.functions {
            out.push((
                f.clone(),
                super::lambda::function_limit(&self.lambda, f).await?,
            ));
        }
        Ok(out)
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

/// The latest datapoint of each of fanout's own series `names` in
/// `namespace` (no dimensions, as `MetricPublisher` puts them) within the
/// last `lookback_s`: (the middle of its minute, Unix seconds; the value),
/// in `names` order, `None` where there is none.
pub async fn latest_own(
    client: &Client,
    namespace: &str,
    names: &[String],
    lookback_s: u64,
) -> Result<Vec<Option<(f64, f64)>>, PortError> {
    let now = unix_now() as u64;
    let queries: Vec<MetricDataQuery> = (names.iter().enumerate())
        .map(|(i, name)| {
            let metric = Metric::builder().namespace(namespace).metric_name(name);
            MetricDataQuery::builder()
                .id(format!("s{i}"))
                .metric_stat(
                    MetricStat::builder()
                        .metric(metric.build())
                        .period(60)
                        .stat("Maximum")
                        .build(),
                )
                .return_data(true)
                .build()
        })
        .collect();
    let mut latest: Vec<Option<(f64, f64)>> = vec![None; names.len()];
    let (start, end) = (now.saturating_sub(lookback_s), (now / 60 + 1) * 60);
    each_result(client, start, end, &queries, |r| {
        let id = r.id().unwrap_or_default();
        let Some(slot) = id.strip_prefix('s').and_then(|i| i.parse::<usize>().ok()) else {
            return;
        };
        for (t, v) in r.timestamps().iter().zip(r.values()) {
            // A datapoint stands for its minute; it was put within it.
            let at = t.secs() as f64 + 30.0;
            if let Some(s) = latest.get_mut(slot)
                && s.is_none_or(|(t0, _)| at > t0)
            {
                *s = Some((at, *v));
            }
        }
    })
    .await?;
    Ok(latest)
}

// The tests compare values copied, not computed.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;

    fn functions() -> Vec<String> {
        vec!["prep".into(), "score".into()]
    }

    #[test]
    fn query_ids_name_their_series() {
        assert_eq!(Series::of("account"), Some(Series::Account));
        assert_eq!(Series::of("throttles"), Some(Series::AccountThrottles));
        assert_eq!(Series::of("f12"), Some(Series::Max(12)));
        assert_eq!(Series::of("t0"), Some(Series::Throttles(0)));
        assert_eq!(Series::of("a3"), Some(Series::Mean(3)));
        assert_eq!(Series::of("x1"), None);
        assert_eq!(Series::of("f"), None);
        assert_eq!(Series::of(""), None);
    }

    #[test]
    fn per_function_minutes_sum_into_the_pipeline_and_fill_gaps_with_zero() {
        let mut r = Read::new(2);
        r.add(Series::Account, 60, 50.0);
        r.add(Series::Max(0), 60, 10.0);
        r.add(Series::Max(1), 60, 30.0);
        r.add(Series::Mean(1), 60, 21.5);
        r.add(Series::Throttles(1), 60, 4.0);
        // Minute 120: only "score" ran; no account datapoint.
        r.add(Series::Max(1), 120, 25.0);
        // Minute 0 is before `since`; a throttles-only minute is no sample.
        r.add(Series::Max(0), 0, 99.0);
        r.add(Series::Throttles(0), 180, 1.0);
        let s = r.samples(&functions(), 60);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].minute_start_s, 60);
        assert_eq!(s[0].pipeline_max, 40.0);
        assert_eq!(s[0].account_max, Some(50.0));
        assert_eq!(s[0].throttles, Some(4.0));
        assert_eq!(
            s[0].functions,
            [
                FunctionSample {
                    name: "prep".into(),
                    max: 10.0,
                    mean: None,
                    throttles: Some(0.0)
                },
                FunctionSample {
                    name: "score".into(),
                    max: 30.0,
                    mean: Some(21.5),
                    throttles: Some(4.0)
                },
            ]
        );
        assert_eq!(s[1].minute_start_s, 120);
        assert_eq!(s[1].pipeline_max, 25.0);
        assert_eq!(s[1].account_max, None);
        assert_eq!(s[1].functions[0].max, 0.0);
        assert_eq!(s[1].functions[0].mean, Some(0.0));
    }

    #[test]
    fn account_wide_reads_have_no_functions() {
        let mut r = Read::new(0);
        r.add(Series::Account, 60, 70.0);
        r.add(Series::AccountThrottles, 60, 2.0);
        r.add(Series::Account, 120, 75.0);
        let s = r.samples(&[], 0);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].pipeline_max, s[0].account_max, s[0].throttles),
            (70.0, Some(70.0), Some(2.0))
        );
        assert_eq!(s[1].throttles, Some(0.0));
        assert!(s.iter().all(|x| x.functions.is_empty()));
    }

    #[test]
    fn a_later_datapoint_for_the_same_minute_wins() {
        let mut r = Read::new(1);
        r.add(Series::Max(0), 60, 10.0);
        r.add(Series::Max(0), 60, 12.0);
        // An index beyond the listed functions is dropped, not a panic.
        r.add(Series::Max(5), 60, 1.0);
        assert_eq!(r.samples(&["f".into()], 0)[0].pipeline_max, 12.0);
    }
}
