//! AWS calls that connect and are never answered: the real SDK clients, as
//! `aws::Clients` builds them with `[aws] attempt_timeout_ms` and
//! `operation_timeout_ms`, pointed at a loopback server that accepts and
//! never replies (or replies only to some operations). The call must fail
//! as a transient `Timeout` within the configured time, a long poll must
//! still get its whole wait, and the controller must keep the message of a
//! hung StartExecution (not deleted, back on the queue).
//!
//! The SDK's timers run on real time, so these tests do too: short
//! timeouts (300 ms per attempt, 900 ms per call), a few seconds in all.
//! 127.0.0.1 only.

#[allow(dead_code)] // the moto end-to-end tests use the rest
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fanout::aws::Clients;
use fanout::aws::sfn::SfnExecutions;
use fanout::aws::sqs::SqsQueue;
use fanout::config::{AwsConfig, Config};
use fanout::control::Policy;
use fanout::controller::{Backends, Controller};
use fanout::ports::{Executions, NoMetrics, PortError, WorkQueue};
use support::{Call, Fake, id_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const ATTEMPT: Duration = Duration::from_millis(300);
const OPERATION: Duration = Duration::from_millis(900);
/// Far above what a timed-out call may take: a call still pending then
/// has no timeout at all.
const HUNG: Duration = Duration::from_secs(5);

/// What the loopback server does with one request, by its `X-Amz-Target`
/// operation (`ListExecutions`, `ReceiveMessage`, ...).
#[derive(Clone, Copy)]
enum Answer {
    /// Never reply (the connection stays open).
    Never,
    /// Reply 200 with this JSON after this delay.
    After(Duration, &'static str),
}

/// A loopback HTTP/1.1 server answering each request by `answer`; returns
/// its endpoint URL and the count of requests per operation it saw.
async fn server(answer: fn(&str) -> Answer) -> (String, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(stream, answer, seen.clone()));
        }
    });
    (endpoint, counts)
}

/// Requests seen: StartExecution, and all.
#[derive(Default)]
struct Counts {
    starts: AtomicUsize,
    all: AtomicUsize,
}

/// Serve the requests of one keep-alive connection in turn.
async fn connection(mut s: TcpStream, answer: fn(&str) -> Answer, counts: Arc<Counts>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let len: usize = header("content-length:").map_or(0, |v| v.parse().unwrap_or(0));
        while buf.len() < end + 4 + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + len);
        let target = header("x-amz-target:").unwrap_or_default();
        let op = target.rsplit('.').next().unwrap_or("").to_string();
        counts.all.fetch_add(1, Ordering::SeqCst);
        if op == "startexecution" {
            counts.starts.fetch_add(1, Ordering::SeqCst);
        }
        match answer(&op) {
            Answer::Never => {
                // Hold the connection open, read and ignore whatever comes.
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Answer::After(delay, body) => {
                tokio::time::sleep(delay).await;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `[aws]` with the test's short timeouts, every client at `endpoint`.
fn aws(endpoint: &str) -> AwsConfig {
    AwsConfig {
        endpoint_url: Some(endpoint.to_string()),
        state_machine_arn: "arn:aws:states:us-east-1:123456789012:stateMachine:sm".into(),
        attempt_timeout_ms: ATTEMPT.as_millis() as u64,
        operation_timeout_ms: OPERATION.as_millis() as u64,
        ..AwsConfig::default()
    }
}

/// The project's clients for `aws`, with static test credentials (the
/// default chain would look further than loopback).
async fn clients(aws: &AwsConfig) -> Clients {
    let sdk = moto::sdk_config(aws.endpoint_url.as_deref().unwrap()).await;
    Clients::from_sdk_config(&sdk, aws)
}

fn is_timeout(e: &PortError) -> bool {
    matches!(e, PortError::Transient { code, .. } if code == "Timeout")
}

#[tokio::test]
async fn a_start_that_is_never_answered_fails_as_a_transient_timeout() {
    let (endpoint, counts) = server(|_| Answer::Never).await;
    let cfg = aws(&endpoint);
    let sfn = SfnExecutions::new(clients(&cfg).await.sfn, &cfg.state_machine_arn);
    let t0 = Instant::now();
    let result = tokio::time::timeout(HUNG, sfn.start("m-0", "{}"))
        .await
        .unwrap_or_else(|_| {
            panic!("StartExecution still pending after {HUNG:?}: no timeout on AWS calls")
        });
    let took = t0.elapsed();
    let err = result.expect_err("a server that never answers cannot start anything");
    assert!(is_timeout(&err), "not a transient timeout: {err:?}");
    assert!(err.is_retryable(), "{err:?}");
    // The operation timeout ends the call, the SDK's retries included.
    assert!(
        took >= ATTEMPT && took < OPERATION + Duration::from_millis(600),
        "timed out after {took:?}, configured {ATTEMPT:?} per attempt, {OPERATION:?} per call"
    );
    assert!(counts.starts.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_long_poll_gets_its_whole_wait_and_no_more_than_the_timeouts_on_top() {
    // Answered after the wait, longer than either timeout: still a success.
    let (endpoint, _) = server(|_| Answer::After(Duration::from_millis(1200), "{}")).await;
    let q = SqsQueue::new(
        clients(&aws(&endpoint)).await.sqs,
        format!("{endpoint}/1/q"),
    );
    let got = q
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await;
    assert_eq!(
        got.map_err(|e| e.to_string()),
        Ok(Vec::new()),
        "a 1 s long poll answered after 1.2 s was cut short"
    );
    // Never answered: a timeout once the wait and the timeouts are over.
    let (endpoint, _) = server(|_| Answer::Never).await;
    let q = SqsQueue::new(
        clients(&aws(&endpoint)).await.sqs,
        format!("{endpoint}/1/q"),
    );
    let t0 = Instant::now();
    let result = tokio::time::timeout(
        HUNG,
        q.receive(10, Duration::from_secs(30), Duration::from_secs(1)),
    )
    .await
    .unwrap_or_else(|_| panic!("ReceiveMessage still pending after {HUNG:?}"));
    let took = t0.elapsed();
    let err = result.expect_err("nothing was answered");
    assert!(is_timeout(&err), "not a transient timeout: {err:?}");
    assert!(
        took >= Duration::from_secs(1) + ATTEMPT
            && took < Duration::from_secs(1) + OPERATION + Duration::from_millis(600),
        "a 1 s long poll timed out after {took:?}"
    );
}

/// Step Functions that lists nothing running and never answers
/// StartExecution; the rest is refused (the controller carries on
/// without the definition).
fn hung_starts(op: &str) -> Answer {
    match op {
        "startexecution" => Answer::Never,
        "listexecutions" => Answer::After(Duration::ZERO, r#"{"executions":[]}"#),
        _ => Answer::After(Duration::ZERO, "{}"),
    }
}

#[tokio::test]
async fn the_controller_keeps_the_message_of_a_start_that_hangs() {
    let (endpoint, counts) = server(hung_starts).await;
    let mut cfg = Config {
        aws: aws(&endpoint),
        ..Config::default()
    };
    cfg.retry.give_up_secs = 1;
    cfg.estimator.remember = false;
    let fake = Fake::new();
    fake.fill("work", "m", 1);
    let fakes = fake.backends(&["work"]);
    let sfn = SfnExecutions::new(clients(&cfg.aws).await.sfn, &cfg.aws.state_machine_arn);
    let backends = Backends {
        sources: fakes.sources,
        completions: None,
        executions: sfn,
        metrics: fakes.metrics,
        sink: NoMetrics,
        claims: None,
    };
    let ctl = Controller::new(cfg, Policy::Adaptive, backends, 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tx.send_replace(true);
    };
    let run = async { tokio::join!(ctl.run(rx), stop).0 };
    let summary = Box::pin(tokio::time::timeout(
        Duration::from_millis(2500) + HUNG,
        run,
    ))
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the controller did not stop within {HUNG:?} of its shutdown: a StartExecution hangs it"
        )
    });
    let log = fake.log();
    assert!(
        counts.starts.load(Ordering::SeqCst) >= 2,
        "a timed-out start is retried"
    );
    assert_eq!(summary.started, 0, "{summary:?}");
    assert!(
        !log.iter()
            .any(|l| matches!(&l.call, Call::DeleteBatch { .. })),
        "a message whose start timed out was deleted: {log:#?}"
    );
    assert_eq!(fake.left("work"), 1, "the message was lost: {log:#?}");
    let released = log.iter().any(|l| {
        matches!(&l.call, Call::ChangeVisibility { receipts, visibility, .. }
            if visibility.is_zero() && receipts.iter().any(|r| id_of(r) == "m-0"))
    });
    assert!(
        released && summary.released >= 1,
        "handed back after retry.give_up_secs: {summary:?} {log:#?}"
    );
}
