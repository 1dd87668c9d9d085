//! The learning path end to end (#10): the CloudWatch adapter and the real
//! `fanout` binary against a loopback CloudWatch stub that speaks the SDK's
//! RPCv2-CBOR (`tests/support/cloudwatch_stub.rs`), beside moto for SQS,
//! Step Functions and Lambda. 127.0.0.1 only; each test starts its own
//! servers and stops them when done.
//!
//! The binary tests take minutes of wall time: CloudWatch minutes are Unix
//! minutes, and the controller lowers k̂ only from a minute whose running
//! count was stable for an execution's lifetime before the minute's end,
//! after the first (partial) minute it recorded, so the earliest minute it
//! can learn from is the second it sees (the third if the ramp spills into
//! it), and it reads that minute once settled (`estimator.settle_secs`, 60
//! s after its end): 2 to 4 minutes after start, by where in its minute
//! the run started. They run one at a time (`SERIAL`): three moto
//! servers and three binaries at once on a 2-core CI machine once slowed a
//! run's ramp until its deadline passed with k̂ still at 2.51.

// The values compared go through CBOR unchanged, or are exact sums.
#![allow(clippy::float_cmp)]

mod support {
    pub(crate) mod cloudwatch_stub;
    pub(crate) mod moto;
}

use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};
use fanout::aws::Clients;
use fanout::aws::cloudwatch::LambdaConcurrency;
use fanout::config::AwsConfig;
use fanout::ports::{ConcurrencyMetrics, ConcurrencySample, FunctionSample, PortError};
use support::cloudwatch_stub::{Failure, GetCall, Minute, Stub, unix_now};
use support::moto::{Fanout, Moto, metric, sdk_config};

/// The smallest zip there is (an end-of-central-directory record): moto
/// stores the code without running it.
const EMPTY_ZIP: &[u8] = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// An SDK config for `endpoint` whose retries back off for milliseconds,
/// not seconds (the three attempts of the standard mode stay).
async fn quick_config(endpoint: &str) -> aws_config::SdkConfig {
    sdk_config(endpoint)
        .await
        .into_builder()
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .build()
}

/// The adapter over `stub` for CloudWatch and `lambda` for Lambda.
async fn adapter(stub: &Stub, lambda: &str, functions: &[&str]) -> LambdaConcurrency {
    let cw = quick_config(&stub.endpoint).await;
    let la = quick_config(lambda).await;
    LambdaConcurrency::new(
        aws_sdk_cloudwatch::Client::new(&cw),
        aws_sdk_lambda::Client::new(&la),
        functions.iter().map(ToString::to_string).collect(),
    )
}

fn f(name: &str, max: f64, throttles: f64) -> FunctionSample {
    FunctionSample {
        name: name.into(),
        max,
        mean: None,
        throttles: Some(throttles),
    }
}

fn sample(
    minute_start_s: u64,
    account_max: Option<f64>,
    functions: Vec<FunctionSample>,
) -> ConcurrencySample {
    ConcurrencySample {
        minute_start_s,
        pipeline_max: functions.iter().map(|f| f.max).sum(),
        account_max,
        throttles: Some(functions.iter().filter_map(|f| f.throttles).sum()),
        functions,
    }
}

/// 1-minute Maximum (and, per function, Average) of ConcurrentExecutions
/// and Sum of Throttles, for the account and per function ("prep",
/// "score"), each by its id.
fn assert_asked_per_function(call: &GetCall) {
    let asked: Vec<(&str, &str, &str, Option<&str>, u64)> = call
        .queries
        .iter()
        .map(|q| {
            assert_eq!(q.namespace, "AWS/Lambda");
            (
                q.id.as_str(),
                q.metric.as_str(),
                q.stat.as_str(),
                q.function.as_deref(),
                q.period,
            )
        })
        .collect();
    assert_eq!(
        asked,
        [
            ("account", "ConcurrentExecutions", "Maximum", None, 60),
            ("f0", "ConcurrentExecutions", "Maximum", Some("prep"), 60),
            ("f1", "ConcurrentExecutions", "Maximum", Some("score"), 60),
            ("a0", "ConcurrentExecutions", "Average", Some("prep"), 60),
            ("a1", "ConcurrentExecutions", "Average", Some("score"), 60),
            ("t0", "Throttles", "Sum", Some("prep"), 60),
            ("t1", "Throttles", "Sum", Some("score"), 60),
        ]
    );
}

/// Per-function minutes, the account maximum, throttles, a gap, a function
/// missing from a minute, a partial minute then its final value on the
/// next read, and the same answer over many pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_reads_every_minute_with_its_latest_values() {
    let stub = Stub::start().await;
    let m = |i| stub.minute(i);
    stub.set(m(-5), Minute::new().account(500.0).function("prep", 99.0));
    stub.set(
        m(-4),
        Minute::new()
            .account(50.0)
            .function("prep", 10.0)
            .function("score", 30.0),
    );
    // "score" has no datapoint: it ran nothing that minute.
    stub.set(m(-3), Minute::new().account(45.0).function("prep", 12.0));
    // m(-2) is a gap: no datapoint at all, no sample.
    stub.set(
        m(-1),
        Minute::new()
            .account(80.0)
            .function("prep", 20.0)
            .mean("prep", 14.5)
            .function("score", 50.0)
            .throttles("score", 7.0),
    );
    // The current minute, partial: it grows by the next read.
    stub.set(
        m(0),
        Minute::new().function("prep", 5.0).function("score", 10.0),
    );
    let cw = adapter(&stub, &stub.endpoint, &["prep", "score"]).await;

    let first = cw.samples_since(m(-4)).await.unwrap();
    let expected = |last: ConcurrencySample| {
        vec![
            sample(
                m(-4),
                Some(50.0),
                vec![f("prep", 10.0, 0.0), f("score", 30.0, 0.0)],
            ),
            sample(
                m(-3),
                Some(45.0),
                // A function without a datapoint ran nothing: its mean too.
                vec![
                    f("prep", 12.0, 0.0),
                    FunctionSample {
                        mean: Some(0.0),
                        ..f("score", 0.0, 0.0)
                    },
                ],
            ),
            sample(
                m(-1),
                Some(80.0),
                vec![
                    FunctionSample {
                        mean: Some(14.5),
                        ..f("prep", 20.0, 0.0)
                    },
                    f("score", 50.0, 7.0),
                ],
            ),
            last,
        ]
    };
    let partial = sample(m(0), None, vec![f("prep", 5.0, 0.0), f("score", 10.0, 0.0)]);
    assert_eq!(first, expected(partial));
    assert_eq!(first[2].throttles, Some(7.0));
    assert_eq!(first[3].pipeline_max, 15.0);

    // What was asked: from the minute `since`, past now.
    let calls = stub.gets();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].start_s, m(-4) as f64);
    assert!(calls[0].end_s > unix_now(), "{:?}", calls[0]);
    assert_asked_per_function(&calls[0]);

    // The partial minute fills in: the next read shows its latest values.
    stub.set(
        m(0),
        Minute::new()
            .account(70.0)
            .function("prep", 20.0)
            .function("score", 40.0),
    );
    let second = cw.samples_since(m(-4)).await.unwrap();
    let full = sample(
        m(0),
        Some(70.0),
        vec![f("prep", 20.0, 0.0), f("score", 40.0, 0.0)],
    );
    assert_eq!(second, expected(full));

    // Pages of 3 datapoints: the same samples, through NextToken.
    stub.page_size(Some(3));
    let before = stub.gets().len();
    assert_eq!(cw.samples_since(m(-4)).await.unwrap(), second);
    let calls = &stub.gets()[before..];
    // 13 datapoints from m(-4) on, 3 a page.
    assert_eq!(calls.len(), 5, "{calls:?}");
    assert!(calls[0].next_token.is_none());
    assert!(calls[1..].iter().all(|c| c.next_token.is_some()));
    assert_eq!(stub.rejected(), Vec::<String>::new());
}

/// Without listed functions: the account-wide series, its throttles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_reads_the_account_when_no_function_is_listed() {
    let stub = Stub::start().await;
    let m = |i| stub.minute(i);
    stub.set(m(-2), Minute::new().account(30.0).function("other", 99.0));
    stub.set(m(-1), Minute::new().account(40.0).account_throttles(3.0));
    let cw = adapter(&stub, &stub.endpoint, &[]).await;
    let got = cw.samples_since(m(-2)).await.unwrap();
    let account = |minute_start_s, v, t| ConcurrencySample {
        minute_start_s,
        pipeline_max: v,
        account_max: Some(v),
        throttles: Some(t),
        functions: Vec::new(),
    };
    assert_eq!(got, [account(m(-2), 30.0, 0.0), account(m(-1), 40.0, 3.0)]);
    assert_eq!(cw.function_limits().await.unwrap(), []);
}

/// CloudWatch throttling, in each of the shapes the SDK can see it: the
/// SDK retries it (3 attempts), then the adapter says `Throttled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_throttling_is_classified_throttled() {
    let stub = Stub::start().await;
    stub.set(
        stub.minute(-1),
        Minute::new().account(10.0).function("prep", 5.0),
    );
    let cw = adapter(&stub, &stub.endpoint, &["prep"]).await;
    for (failure, code) in [
        (Failure::throttling(), "ThrottlingException"),
        (Failure::query_throttling(), "Throttling"),
        (Failure::limit_exceeded(), "LimitExceededException"),
    ] {
        let before = stub.gets().len();
        stub.fail_next(3, &failure);
        match cw.samples_since(stub.minute(-1)).await {
            Err(PortError::Throttled { service, code: c }) => {
                assert_eq!((service, c.as_str()), ("monitoring", code));
            }
            other => panic!("{failure:?}: {other:?}"),
        }
        assert_eq!(stub.gets().len() - before, 3, "the SDK's three attempts");
    }
    // One throttled call: the SDK's retry absorbs it.
    stub.fail_next(1, &Failure::throttling());
    let got = cw.samples_since(stub.minute(-1)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pipeline_max, 5.0);
}

/// function_limits on moto's Lambda, through `Clients` built
/// the way `fanout run` builds them: SQS and Lambda on moto, CloudWatch
/// alone on the stub (`[aws] cloudwatch_endpoint_url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_limits_read_reserved_concurrency_from_lambda() {
    let moto = Moto::start();
    let stub = Stub::start().await;
    let aws = AwsConfig {
        endpoint_url: Some(moto.endpoint.clone()),
        cloudwatch_endpoint_url: Some(stub.endpoint.clone()),
        ..AwsConfig::default()
    };
    let clients = Clients::from_sdk_config(&quick_config(&moto.endpoint).await, &aws);
    create_functions(
        &moto,
        &clients.lambda,
        &[("prep", Some(7)), ("score", None)],
    )
    .await;
    let cw = LambdaConcurrency::new(
        clients.cloudwatch.clone(),
        clients.lambda.clone(),
        vec!["prep".into(), "score".into()],
    );
    assert_eq!(
        cw.function_limits().await.unwrap(),
        [("prep".to_string(), Some(7)), ("score".to_string(), None)]
    );
    // CloudWatch went to the stub, the rest to moto.
    stub.set(stub.minute(-1), Minute::new().function("score", 4.0));
    let got = cw.samples_since(stub.minute(-1)).await.unwrap();
    assert_eq!(got[0].pipeline_max, 4.0);
    assert_eq!(stub.gets().len(), 1);
    clients.sqs.list_queues().send().await.unwrap();

    // A function that does not exist: permanent, with Lambda's code.
    let missing = LambdaConcurrency::new(
        clients.cloudwatch.clone(),
        clients.lambda.clone(),
        vec!["prep".into(), "nope".into()],
    );
    match missing.function_limits().await {
        Err(PortError::Permanent { service, code, .. }) => {
            assert_eq!(
                (service, code.as_str()),
                ("lambda", "ResourceNotFoundException")
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A task role without lambda:GetFunctionConcurrency: a permanent error
/// that names the action and the function (moto allows everything, so
/// Lambda's REST-JSON reply comes from the stub).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_function_limit_names_the_permission() {
    let stub = Stub::start().await;
    stub.reserve("prep", Some(12));
    stub.reserve("score", None);
    let cw = adapter(&stub, &stub.endpoint, &["prep", "score"]).await;
    assert_eq!(
        cw.function_limits().await.unwrap(),
        [("prep".to_string(), Some(12)), ("score".to_string(), None)]
    );
    stub.deny_lambda();
    match cw.function_limits().await {
        Err(e @ PortError::Permanent { .. }) => {
            let text = e.to_string();
            assert!(text.contains("AccessDeniedException"), "{text}");
            assert!(text.contains("lambda:GetFunctionConcurrency"), "{text}");
            assert!(text.contains("prep"), "{text}");
            assert!(!e.is_retryable());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stub.lambda_calls(), ["prep", "score", "prep"]);
}

// ---------------------------------------------------------------------
// The real binary: SQS, Step Functions and Lambda on moto, CloudWatch on
// the stub.

const CEILING: u32 = 90;
/// Running executions the ceiling allows at k̂ = 3 (the configured
/// maximum, where k̂ starts): 90 / 3.
const RUNNING_AT_MAX: f64 = 30.0;
/// Each execution is one Wait of this many seconds.
const LIFETIME_SECS: u64 = 20;
/// How long a test waits for k̂ to be learned. The first minute learnable
/// starts one or two after the run's first (partial) one and is read 60 s
/// after its end: up to 240 s after start when the run starts a second
/// into its minute and its ramp spills into the next (CI once timed out
/// at 240 s that way, when the window was counted from a minute's start),
/// plus the reads' pace and a loaded machine.
const LEARN_WITHIN: Duration = Duration::from_secs(300);

/// Held for the whole of each test that runs the binary on moto (as in
/// `tests/e2e_moto.rs`), so their wall-clock deadlines are not shared with
/// two other pipelines' CPU.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A minute of the three pipeline functions at `width` Lambdas per
/// execution over the running count at the start, plus other load.
fn width(width: f64) -> Minute {
    let total = width * RUNNING_AT_MAX;
    Minute::new()
        .account(total + 15.0)
        .function("prep", total / 6.0)
        .function("score", total * 4.0 / 6.0)
        .function("final", total / 6.0)
}

/// Moto with the queues, the state machine, the functions and the
/// messages; the stub; and the config of `fanout run` over both.
struct Pipeline {
    _moto: Moto,
    stub: Stub,
    dir: tempfile::TempDir,
    http_port: u16,
}

impl Pipeline {
    async fn new(messages: usize) -> Pipeline {
        let moto = Moto::start();
        let stub = Stub::start().await;
        let conf = sdk_config(&moto.endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let sfn = aws_sdk_sfn::Client::new(&conf);
        let lambda = aws_sdk_lambda::Client::new(&conf);
        let mut urls = Vec::new();
        for name in ["bulk-dlq", "bulk"] {
            let out = sqs.create_queue().queue_name(name).send().await.unwrap();
            urls.push(out.queue_url().unwrap().to_string());
        }
        let definition = format!(
            r#"{{"StartAt":"Work","States":{{"Work":{{"Type":"Wait","Seconds":{LIFETIME_SECS},"Next":"Done"}},"Done":{{"Type":"Succeed"}}}}}}"#
        );
        let arn = support::moto::state_machine(&sfn, &definition).await;
        create_functions(
            &moto,
            &lambda,
            // Reserved above its share of the ceiling: these tests learn
            // k̂; a binding function limit is another test's.
            &[("prep", Some(500)), ("score", None), ("final", None)],
        )
        .await;
        send_messages(&sqs, &urls[1], messages).await;
        let dir = tempfile::tempdir().unwrap();
        let http_port = support::moto::free_port();
        let text = config_text(http_port, &urls, &arn, &moto.endpoint, &stub.endpoint);
        std::fs::write(dir.path().join("fanout.toml"), text).unwrap();
        Pipeline {
            _moto: moto,
            stub,
            dir,
            http_port,
        }
    }

    /// Start `fanout run` on this pipeline; its log is `run-<tag>.log`.
    fn start(&self, tag: &str) -> Fanout {
        Fanout::run(
            &self.dir.path().join("fanout.toml"),
            self.dir.path().join(format!("run-{tag}.log")),
        )
    }

    /// Every minute from one before the stub started to `last` reads as
    /// `m`, published `after` seconds into it.
    fn every_minute(&self, last: i64, after: f64, m: &Minute) {
        for i in -1..=last {
            let start = self.stub.minute(i);
            self.stub.publish(start, start as f64 + after, m.clone());
        }
    }

    fn k(&self) -> Option<f64> {
        metric(self.http_port, "fanout_lambdas_per_execution")
    }

    /// Wait (30 s at most) for the first reconcile and decision: k̂ is on
    /// /metrics from then on, at the configured maximum.
    async fn ready(&self, run: &mut Fanout) {
        let port = self.http_port;
        run.wait_for(
            Duration::from_secs(30),
            || "never ready".into(),
            || metric(port, "fanout_ready") == Some(1.0),
        )
        .await;
        assert_eq!(self.k(), Some(3.0), "k̂ starts at the maximum");
    }
}

/// Lambda functions in moto (CreateFunction needs a role that exists; the
/// code is stored, never run), each with its reserved concurrency if any.
async fn create_functions(
    moto: &Moto,
    lambda: &aws_sdk_lambda::Client,
    functions: &[(&str, Option<i32>)],
) {
    let role = moto.create_role("pipeline");
    for (name, reserved) in functions {
        lambda
            .create_function()
            .function_name(*name)
            .runtime(Runtime::Python312)
            .role(&role)
            .handler("index.handler")
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(EMPTY_ZIP))
                    .build(),
            )
            .send()
            .await
            .unwrap();
        if let Some(n) = reserved {
            lambda
                .put_function_concurrency()
                .function_name(*name)
                .reserved_concurrent_executions(*n)
                .send()
                .await
                .unwrap();
        }
    }
}

/// `n` messages `{"company_id":"c0000"}`.. on `url`, ten a batch.
async fn send_messages(sqs: &aws_sdk_sqs::Client, url: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
        let mut batch = sqs.send_message_batch().queue_url(url);
        for i in chunk {
            batch = batch.entries(
                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .message_body(format!(r#"{{"company_id":"c{i:04}"}}"#))
                    .build()
                    .unwrap(),
            );
        }
        let out = batch.send().await.unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
}

/// `fanout run`'s config: a ceiling of 90 at k̂ ≤ 3 (30 running), fast
/// loops, a CloudWatch poll every 2 s, learning after 10 completions with
/// no √N margin, and fanout's metrics put every 5 s; SQS, Step Functions
/// and Lambda on moto, CloudWatch on the stub.
fn config_text(http_port: u16, urls: &[String], arn: &str, moto: &str, stub: &str) -> String {
    format!(
        r#"
[controller]
ceiling = {CEILING}
headroom_fraction = 0.0
max_lambdas_per_execution = 3.0
ramp_initial = {CEILING}.0
ramp_concurrency_per_s = 1000.0
tick_ms = 100
reconcile_interval_secs = 1
list_pages_per_s = 5
list_grace_secs = 1
idle_wait_secs = 1
visibility_timeout_secs = 60
metrics_poll_secs = 2
shutdown_deadline_secs = 10

[estimator]
min_completions = 10
noise_z = 0.0
stability_fraction = 0.2
remember = false

[http]
listen = "127.0.0.1:{http_port}"

[metrics]
cloudwatch = true
namespace = "fanout-e2e"
interval_secs = 5

[[queues]]
name = "bulk"
url = "{bulk}"
dlq_url = "{dlq}"

[aws]
region = "us-east-1"
endpoint_url = "{moto}"
state_machine_arn = "{arn}"
functions = ["prep", "score", "final"]
cloudwatch_endpoint_url = "{stub}"
"#,
        bulk = urls[1],
        dlq = urls[0],
    )
}

/// The names PutMetricData carried (namespace, metric names) so far.
fn put_names(stub: &Stub) -> Vec<(String, String)> {
    stub.puts()
        .iter()
        .flat_map(|p| p.data.iter().map(|(n, _)| (p.namespace.clone(), n.clone())))
        .collect()
}

/// k̂ learned through the real SDK client: minutes at 2.0 Lambdas per
/// execution (per function, summed) bring the gauge from the maximum (3.0)
/// to about 2.0; a minute with throttles on one function logs the warning
/// and counts a throttled minute; CloudWatch throttling the first reads is
/// counted, not fatal; each function's reserved concurrency is logged at
/// start; fanout's own metrics reach PutMetricData.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_learns_the_width_cloudwatch_serves() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let p = Pipeline::new(600).await;
    p.every_minute(6, 5.0, &width(2.0));
    // Minute 1 (the controller's first or second): throttles on "score",
    // from the same moment (the later version of two wins), so no read
    // sees the minute without them.
    let m1 = p.stub.minute(1);
    p.stub
        .publish(m1, m1 as f64 + 5.0, width(2.0).throttles("score", 12.0));
    // The first GetMetricData, with the SDK's retries, is throttled.
    p.stub.fail_next(3, &Failure::query_throttling());
    let mut run = p.start("learn");
    let port = p.http_port;

    p.ready(&mut run).await;
    let limits: Vec<String> = run
        .log()
        .lines()
        .filter(|l| l.contains("function concurrency limit"))
        .map(str::to_string)
        .collect();
    assert_eq!(limits.len(), 3, "{limits:?}");
    assert!(
        limits
            .iter()
            .any(|l| l.contains("\"prep\"") && l.contains("\"reserved\":500")),
        "{limits:?}"
    );

    // Learned from a stable minute: 60 / 30 running, plus the margin.
    run.wait_for(
        LEARN_WITHIN,
        || format!("k̂ never learned 2.0 (now {:?})", p.k()),
        || p.k().is_some_and(|k| k < 2.3),
    )
    .await;
    let k = p.k().unwrap();
    assert!((1.9..2.3).contains(&k), "k̂ = {k}");
    eprintln!("k̂ {k} learned after {:?}", t0.elapsed());

    let throttled = metric(port, "fanout_lambda_throttled_minutes_total").unwrap();
    assert!(throttled >= 1.0, "throttled minutes {throttled}");
    assert!(
        run.log().contains("Lambda throttled the pipeline"),
        "{}",
        run.log()
    );
    let errors = metric(port, "fanout_metric_errors_total").unwrap();
    assert!(errors >= 1.0, "metric errors {errors}");
    let failed: Vec<_> = p
        .stub
        .gets()
        .into_iter()
        .filter(|g| g.failed.is_some())
        .collect();
    assert_eq!(failed.len(), 3, "{failed:?}");

    // PutMetricData: fanout's names, in its namespace, and k̂ as learned.
    let names = put_names(&p.stub);
    for want in [
        "lambdas_per_execution",
        "running_executions",
        "lambda_throttled_minutes",
        "metric_errors",
        "ceiling",
    ] {
        assert!(
            names.contains(&("fanout-e2e".to_string(), want.to_string())),
            "{want} not put: {names:?}"
        );
    }
    run.wait_for(
        Duration::from_secs(12),
        || format!("learned k̂ never put: {:?}", p.stub.puts().last()),
        || {
            p.stub.puts().last().is_some_and(|put| {
                put.data
                    .iter()
                    .any(|(n, v)| n == "lambdas_per_execution" && *v < 2.3)
            })
        },
    )
    .await;
    assert_eq!(p.stub.rejected(), Vec::<String>::new());
    let term = Instant::now();
    run.signal("-TERM");
    // shutdown_deadline_secs = 10, the HTTP server's 2 s, process exit.
    let code = run.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", run.log());
    eprintln!(
        "learn e2e took {:?} (exit {:?} after SIGTERM)",
        t0.elapsed(),
        term.elapsed()
    );
}

/// A minute read while it is still filling in (half its final width) must
/// not lower k̂: the gauge never drops below the final width, and reaches
/// it once the minutes are final. Needs the controller to re-read recent
/// minutes and not learn from one still in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_minute_does_not_lower_k() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let p = Pipeline::new(600).await;
    // Each minute reads as 1.0 per execution from 5 s into it (partial),
    // and as its final 2.0 from 15 s after its end.
    p.every_minute(6, 5.0, &width(1.0));
    p.every_minute(6, 75.0, &width(2.0));
    let mut run = p.start("partial");
    p.ready(&mut run).await;
    let mut lowest = f64::INFINITY;
    run.wait_for(
        LEARN_WITHIN,
        || format!("k̂ never learned the final 2.0 (now {:?})", p.k()),
        || {
            let Some(k) = p.k() else {
                return false;
            };
            lowest = lowest.min(k);
            assert!(
                k >= 1.9,
                "k̂ fell to {k} after {:?}: learned from a partial minute",
                t0.elapsed()
            );
            k < 2.3
        },
    )
    .await;
    eprintln!("partial e2e: lowest k̂ {lowest}, took {:?}", t0.elapsed());
}

/// Minutes wider than `max_lambdas_per_execution` (3.5 Lambdas per
/// execution against 3.0): the configured maximum was wrong, and k̂ must
/// follow the evidence above it. Needs the controller to stop capping k̂
/// at the configured maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_width_above_the_maximum_raises_k_above_it() {
    let _serial = SERIAL.lock().await;
    let p = Pipeline::new(300).await;
    p.every_minute(4, 5.0, &width(3.5));
    let mut run = p.start("wide");
    p.ready(&mut run).await;
    run.wait_for(
        Duration::from_secs(130),
        || format!("k̂ stayed at or below the maximum 3.0 (now {:?})", p.k()),
        || p.k().is_some_and(|k| k > 3.2),
    )
    .await;
}
