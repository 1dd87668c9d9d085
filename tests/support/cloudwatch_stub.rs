//! A loopback CloudWatch that speaks what the Rust SDK's client speaks
//! (smithy RPCv2-CBOR), scripted minute by minute, beside moto (which
//! serves CloudWatch's query and JSON protocols only).
//!
//! Wire format, as `aws-sdk-cloudwatch` 1.102 writes and reads it:
//! `POST /service/GraniteServiceVersion20100801/operation/<Operation>` with
//! `smithy-protocol: rpc-v2-cbor` and `Content-Type: application/cbor`; the
//! bodies are CBOR maps (the SDK writes indefinite-length ones) keyed by
//! the model's member names (`MetricDataQueries`, `StartTime`, ...);
//! timestamps are CBOR tag 1 over a float of epoch seconds; datapoint
//! values must be floats (the SDK refuses integers). An error is any
//! non-2xx status with a map holding `__type` (a shape name, possibly
//! namespaced `ns#Name`) and `message`; CloudWatch is query-compatible, so
//! an `x-amzn-query-error: <Code>;<Sender|Receiver>` header, when present,
//! gives the code the SDK reports instead.
//!
//! It serves `GetMetricData` for AWS/Lambda `ConcurrentExecutions`
//! (Maximum) and `Throttles` (Sum), period 60, account-wide or per
//! `FunctionName`, newest first, paged with `NextToken` when a page size
//! is set; fanout's own series in any other namespace (`Minute::own`);
//! scripted error replies; and records every `PutMetricData`. It
//! also answers Lambda's REST-JSON `GetFunctionConcurrency`
//! (`GET /2019-09-30/functions/<name>/concurrency`) for the paths moto
//! cannot take (AccessDenied).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ciborium::Value;

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One function's datapoints in a minute (`None`: no datapoint).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FunctionMinute {
    /// ConcurrentExecutions, Maximum.
    pub(crate) max: Option<f64>,
    /// ConcurrentExecutions, Average.
    pub(crate) mean: Option<f64>,
    /// Throttles, Sum.
    pub(crate) throttles: Option<f64>,
}

/// One minute's datapoints, as CloudWatch would have them at some moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Minute {
    /// Account-wide ConcurrentExecutions, Maximum.
    pub(crate) account: Option<f64>,
    /// Account-wide Throttles, Sum.
    pub(crate) account_throttles: Option<f64>,
    /// Per `FunctionName`.
    pub(crate) functions: BTreeMap<String, FunctionMinute>,
    /// fanout's own series (any other namespace, no dimension), by name:
    /// what `fanout run` puts with PutMetricData and `status` reads back.
    pub(crate) own: BTreeMap<String, f64>,
}

impl Minute {
    /// A minute without any datapoint.
    pub(crate) fn new() -> Minute {
        Minute::default()
    }

    /// With an account-wide maximum.
    pub(crate) fn account(mut self, max: f64) -> Minute {
        self.account = Some(max);
        self
    }

    /// With an account-wide throttles sum.
    pub(crate) fn account_throttles(mut self, sum: f64) -> Minute {
        self.account_throttles = Some(sum);
        self
    }

    /// With `function`'s maximum.
    pub(crate) fn function(mut self, function: &str, max: f64) -> Minute {
        self.functions.entry(function.to_string()).or_default().max = Some(max);
        self
    }

    /// With `function`'s mean (Average).
    pub(crate) fn mean(mut self, function: &str, mean: f64) -> Minute {
        self.functions.entry(function.to_string()).or_default().mean = Some(mean);
        self
    }

    /// With `function`'s throttles sum.
    pub(crate) fn throttles(mut self, function: &str, sum: f64) -> Minute {
        self.functions
            .entry(function.to_string())
            .or_default()
            .throttles = Some(sum);
        self
    }

    /// With fanout's own series `name` (Maximum).
    #[allow(dead_code)] // tests/status.rs reads them, e2e_cloudwatch not
    pub(crate) fn own(mut self, name: &str, v: f64) -> Minute {
        self.own.insert(name.to_string(), v);
        self
    }

    /// The datapoint a query asks for, if this minute has it.
    fn value(&self, metric: &str, stat: &str, function: Option<&str>) -> Option<f64> {
        match (metric, stat, function) {
            ("ConcurrentExecutions", "Maximum", None) => self.account,
            ("Throttles", "Sum", None) => self.account_throttles,
            ("ConcurrentExecutions", "Maximum", Some(f)) => self.functions.get(f)?.max,
            ("ConcurrentExecutions", "Average", Some(f)) => self.functions.get(f)?.mean,
            ("Throttles", "Sum", Some(f)) => self.functions.get(f)?.throttles,
            _ => None,
        }
    }
}

/// A scripted error reply to GetMetricData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// HTTP status.
    pub(crate) status: u16,
    /// The body's `__type`.
    pub(crate) type_: String,
    /// The `x-amzn-query-error` header, when sent.
    pub(crate) query_error: Option<String>,
}

impl Failure {
    /// The smithy shape's name alone: code `ThrottlingException`.
    pub(crate) fn throttling() -> Failure {
        Failure {
            status: 400,
            type_: "ThrottlingException".into(),
            query_error: None,
        }
    }

    /// As a query-compatible service sends it: the header's code
    /// (`Throttling`) wins over the namespaced `__type`.
    pub(crate) fn query_throttling() -> Failure {
        Failure {
            status: 400,
            type_: "com.amazonaws.cloudwatch#ThrottlingException".into(),
            query_error: Some("Throttling;Sender".into()),
        }
    }

    /// A namespaced `__type` only: code `LimitExceededException`.
    pub(crate) fn limit_exceeded() -> Failure {
        Failure {
            status: 400,
            type_: "com.amazonaws.cloudwatch#LimitExceededException".into(),
            query_error: None,
        }
    }
}

/// One query of a GetMetricData call, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    /// `Id`.
    pub(crate) id: String,
    /// `MetricStat.Metric.Namespace`.
    pub(crate) namespace: String,
    /// `MetricStat.Metric.MetricName`.
    pub(crate) metric: String,
    /// `MetricStat.Stat`.
    pub(crate) stat: String,
    /// `MetricStat.Period`.
    pub(crate) period: u64,
    /// The `FunctionName` dimension's value, if any.
    pub(crate) function: Option<String>,
}

/// One GetMetricData call, as received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GetCall {
    /// `StartTime`, epoch seconds.
    pub(crate) start_s: f64,
    /// `EndTime`, epoch seconds.
    pub(crate) end_s: f64,
    /// `NextToken`, on a page after the first.
    pub(crate) next_token: Option<String>,
    /// `MetricDataQueries`.
    pub(crate) queries: Vec<Query>,
    /// The scripted failure answered, if any.
    pub(crate) failed: Option<String>,
}

/// One PutMetricData call, as received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Put {
    /// `Namespace`.
    pub(crate) namespace: String,
    /// Each datum's `MetricName` and `Value`.
    pub(crate) data: Vec<(String, f64)>,
}

/// A minute as scripted: each version is what it reads as from a moment on.
#[derive(Debug, Clone)]
struct Version {
    from_s: f64,
    minute: Minute,
}

#[derive(Debug, Default)]
struct Inner {
    minutes: BTreeMap<u64, Vec<Version>>,
    failures: VecDeque<Failure>,
    page_size: Option<usize>,
    gets: Vec<GetCall>,
    puts: Vec<Put>,
    rejected: Vec<String>,
    reserved: BTreeMap<String, Option<u32>>,
    lambda_denied: bool,
    lambda_calls: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

/// The stub: serving on 127.0.0.1 until dropped.
pub(crate) struct Stub {
    inner: Shared,
    origin_s: u64,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stub {
    /// Serve on a free loopback port, on the caller's tokio runtime.
    pub(crate) async fn start() -> Stub {
        let inner = Shared::default();
        let app = Router::new()
            .route(
                "/service/GraniteServiceVersion20100801/operation/{op}",
                post(cloudwatch),
            )
            .route(
                "/2019-09-30/functions/{name}/concurrency",
                get(function_concurrency),
            )
            .fallback(unknown)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Stub {
            inner,
            origin_s: (unix_now() as u64) / 60 * 60,
            endpoint: format!("http://127.0.0.1:{port}"),
            server,
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// The start of minute `i` counted from the minute the stub started
    /// in (0), in Unix seconds; negative `i` is before it.
    pub(crate) fn minute(&self, i: i64) -> u64 {
        self.origin_s.checked_add_signed(i * 60).unwrap()
    }

    /// Minute `minute_s` reads as `m` from now on (earlier versions gone).
    pub(crate) fn set(&self, minute_s: u64, m: Minute) {
        self.inner().minutes.insert(
            minute_s,
            vec![Version {
                from_s: 0.0,
                minute: m,
            }],
        );
    }

    /// Minute `minute_s` reads as `m` from Unix time `from_s` on (until a
    /// version with a later `from_s`; of two with the same, the one
    /// published last); before its first version it has no datapoint.
    pub(crate) fn publish(&self, minute_s: u64, from_s: f64, m: Minute) {
        let mut inner = self.inner();
        let versions = inner.minutes.entry(minute_s).or_default();
        versions.push(Version { from_s, minute: m });
        versions.sort_by(|a, b| a.from_s.total_cmp(&b.from_s));
    }

    /// The next `n` GetMetricData calls fail with `f`.
    pub(crate) fn fail_next(&self, n: usize, f: &Failure) {
        self.inner()
            .failures
            .extend(std::iter::repeat_n(f.clone(), n));
    }

    /// At most `n` datapoints per GetMetricData page (`None`: one page).
    pub(crate) fn page_size(&self, n: Option<usize>) {
        self.inner().page_size = n;
    }

    /// Every GetMetricData call so far.
    pub(crate) fn gets(&self) -> Vec<GetCall> {
        self.inner().gets.clone()
    }

    /// Every PutMetricData call so far.
    pub(crate) fn puts(&self) -> Vec<Put> {
        self.inner().puts.clone()
    }

    /// Requests refused (wrong path, operation or protocol header).
    pub(crate) fn rejected(&self) -> Vec<String> {
        self.inner().rejected.clone()
    }

    /// Lambda: `function` exists, with this reserved concurrency.
    pub(crate) fn reserve(&self, function: &str, limit: Option<u32>) {
        self.inner().reserved.insert(function.to_string(), limit);
    }

    /// Lambda: every GetFunctionConcurrency is denied (HTTP 403).
    pub(crate) fn deny_lambda(&self) {
        self.inner().lambda_denied = true;
    }

    /// Functions GetFunctionConcurrency was asked about, in order.
    pub(crate) fn lambda_calls(&self) -> Vec<String> {
        self.inner().lambda_calls.clone()
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The member `key` of a CBOR map.
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find_map(|(k, v)| (k.as_text() == Some(key)).then_some(v))
}

fn field_text(v: &Value, key: &str) -> String {
    field(v, key)
        .and_then(Value::as_text)
        .unwrap_or_default()
        .to_string()
}

/// A timestamp: tag 1 over epoch seconds (float or integer).
fn seconds(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Tag(1, inner) => match inner.as_ref() {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(i128::from(*i) as f64),
            _ => None,
        },
        _ => None,
    }
}

fn cbor(status: StatusCode, headers: &[(&'static str, String)], body: &Value) -> Response {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(body, &mut bytes).unwrap();
    let mut r = (status, bytes).into_response();
    let h = r.headers_mut();
    h.insert("content-type", "application/cbor".parse().unwrap());
    h.insert("smithy-protocol", "rpc-v2-cbor".parse().unwrap());
    for (k, v) in headers {
        h.insert(*k, v.parse().unwrap());
    }
    r
}

fn cbor_error(status: u16, type_: &str, query_error: Option<&str>, message: &str) -> Response {
    let body = Value::Map(vec![
        (text("__type"), text(type_)),
        (text("message"), text(message)),
    ]);
    let headers: Vec<(&'static str, String)> = query_error
        .map(|q| ("x-amzn-query-error", q.to_string()))
        .into_iter()
        .collect();
    cbor(StatusCode::from_u16(status).unwrap(), &headers, &body)
}

async fn cloudwatch(
    State(inner): State<Shared>,
    Path(op): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let protocol = headers.get("smithy-protocol").and_then(|v| v.to_str().ok());
    let request: Option<Value> = ciborium::de::from_reader(body.as_ref()).ok();
    let (Some("rpc-v2-cbor"), Some(request)) = (protocol, request) else {
        inner.lock().unwrap().rejected.push(format!(
            "{op}: smithy-protocol {protocol:?} or body not CBOR"
        ));
        return cbor_error(400, "SerializationException", None, "not rpc-v2-cbor");
    };
    match op.as_str() {
        "GetMetricData" => get_metric_data(&inner, &request),
        "PutMetricData" => {
            let data = field(&request, "MetricData")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|d| {
                            let v = field(d, "Value").and_then(Value::as_float);
                            (field_text(d, "MetricName"), v.unwrap_or(f64::NAN))
                        })
                        .collect()
                })
                .unwrap_or_default();
            inner.lock().unwrap().puts.push(Put {
                namespace: field_text(&request, "Namespace"),
                data,
            });
            cbor(StatusCode::OK, &[], &Value::Map(Vec::new()))
        }
        other => {
            inner
                .lock()
                .unwrap()
                .rejected
                .push(format!("operation {other}"));
            cbor_error(400, "UnknownOperationException", None, other)
        }
    }
}

fn queries(request: &Value) -> Vec<Query> {
    let Some(list) = field(request, "MetricDataQueries").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|q| {
            let stat = field(q, "MetricStat");
            let metric = stat.and_then(|s| field(s, "Metric"));
            let function = metric
                .and_then(|m| field(m, "Dimensions"))
                .and_then(Value::as_array)
                .and_then(|d| {
                    d.iter()
                        .find(|d| field_text(d, "Name") == "FunctionName")
                        .map(|d| field_text(d, "Value"))
                });
            Query {
                id: field_text(q, "Id"),
                namespace: metric
                    .map(|m| field_text(m, "Namespace"))
                    .unwrap_or_default(),
                metric: metric
                    .map(|m| field_text(m, "MetricName"))
                    .unwrap_or_default(),
                stat: stat.map(|s| field_text(s, "Stat")).unwrap_or_default(),
                period: stat
                    .and_then(|s| field(s, "Period"))
                    .and_then(Value::as_integer)
                    .and_then(|i| u64::try_from(i).ok())
                    .unwrap_or(0),
                function,
            }
        })
        .collect()
}

/// Every datapoint the script has now for `q` from `start_s` to `end_s`,
/// newest first (CloudWatch's default order).
fn datapoints(inner: &Inner, q: &Query, start_s: f64, end_s: f64, now: f64) -> Vec<(u64, f64)> {
    if q.period != 60 {
        return Vec::new();
    }
    let from = start_s.max(0.0).ceil() as u64;
    let to = end_s.max(0.0).ceil() as u64;
    inner
        .minutes
        .range(from..to)
        .rev()
        .filter_map(|(m, versions)| {
            let v = versions.iter().rev().find(|v| v.from_s <= now)?;
            let value = if q.namespace == "AWS/Lambda" {
                v.minute.value(&q.metric, &q.stat, q.function.as_deref())?
            } else {
                *v.minute.own.get(&q.metric)?
            };
            Some((*m, value))
        })
        .collect()
}

fn get_metric_data(inner: &Shared, request: &Value) -> Response {
    let mut inner = inner.lock().unwrap();
    let call = GetCall {
        start_s: seconds(field(request, "StartTime")).unwrap_or(f64::NAN),
        end_s: seconds(field(request, "EndTime")).unwrap_or(f64::NAN),
        next_token: field(request, "NextToken")
            .and_then(Value::as_text)
            .map(str::to_string),
        queries: queries(request),
        failed: None,
    };
    if let Some(f) = inner.failures.pop_front() {
        inner.gets.push(GetCall {
            failed: Some(f.type_.clone()),
            ..call
        });
        return cbor_error(
            f.status,
            &f.type_,
            f.query_error.as_deref(),
            "Rate exceeded",
        );
    }
    let now = unix_now();
    // Every datapoint of every query, in order, then the page asked for.
    let all: Vec<(usize, u64, f64)> = call
        .queries
        .iter()
        .enumerate()
        .flat_map(|(i, q)| {
            datapoints(&inner, q, call.start_s, call.end_s, now)
                .into_iter()
                .map(move |(t, v)| (i, t, v))
        })
        .collect();
    let offset: usize = call
        .next_token
        .as_deref()
        .and_then(|t| t.strip_prefix("page-")?.parse().ok())
        .unwrap_or(0);
    let size = inner.page_size.unwrap_or(usize::MAX).max(1);
    let page: Vec<_> = all.iter().skip(offset).take(size).collect();
    let more = offset.saturating_add(size) < all.len();
    let results = call
        .queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let mine: Vec<_> = page.iter().filter(|(j, _, _)| *j == i).collect();
            Value::Map(vec![
                (text("Id"), text(&q.id)),
                (text("Label"), text(&q.metric)),
                (
                    text("Timestamps"),
                    Value::Array(
                        mine.iter()
                            .map(|(_, t, _)| Value::Tag(1, Box::new(Value::Float(*t as f64))))
                            .collect(),
                    ),
                ),
                (
                    text("Values"),
                    Value::Array(mine.iter().map(|(_, _, v)| Value::Float(*v)).collect()),
                ),
                (
                    text("StatusCode"),
                    text(if more { "PartialData" } else { "Complete" }),
                ),
            ])
        })
        .collect();
    let mut body = vec![
        (text("MetricDataResults"), Value::Array(results)),
        (text("Messages"), Value::Array(Vec::new())),
    ];
    if more {
        body.push((text("NextToken"), text(&format!("page-{}", offset + size))));
    }
    inner.gets.push(call);
    cbor(StatusCode::OK, &[], &Value::Map(body))
}

/// Lambda's REST-JSON GetFunctionConcurrency.
async fn function_concurrency(State(inner): State<Shared>, Path(name): Path<String>) -> Response {
    let mut inner = inner.lock().unwrap();
    inner.lambda_calls.push(name.clone());
    let json = |status: StatusCode, errortype: Option<&str>, body: String| {
        let mut r = (status, body).into_response();
        let h = r.headers_mut();
        h.insert("content-type", "application/json".parse().unwrap());
        if let Some(t) = errortype {
            h.insert("x-amzn-errortype", t.parse().unwrap());
        }
        r
    };
    if inner.lambda_denied {
        // The service's own words, which do not name the action: the
        // adapter must.
        return json(
            StatusCode::FORBIDDEN,
            Some("AccessDeniedException"),
            r#"{"Message":"User is not authorized to perform this operation"}"#.into(),
        );
    }
    match inner.reserved.get(&name) {
        Some(Some(n)) => json(
            StatusCode::OK,
            None,
            format!(r#"{{"ReservedConcurrentExecutions":{n}}}"#),
        ),
        Some(None) => json(StatusCode::OK, None, "{}".into()),
        None => json(
            StatusCode::NOT_FOUND,
            Some("ResourceNotFoundException"),
            format!(r#"{{"Message":"Function not found: {name}"}}"#),
        ),
    }
}

async fn unknown(State(inner): State<Shared>, uri: axum::http::Uri) -> Response {
    inner.lock().unwrap().rejected.push(format!("path {uri}"));
    (StatusCode::NOT_FOUND, "no such route").into_response()
}
