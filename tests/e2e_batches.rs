//! SendMessageBatch's size limit, end to end on the moto emulator: a batch
//! takes at most 1 MiB of bodies and attributes (moto 5.2.5 refuses a
//! larger one whole with BatchRequestTooLong, as SQS does), so ten large
//! bodies need several calls. `fanout enqueue` (the real binary) and the
//! controller's dead-letter moves (the real SQS adapter, in process) must
//! get every one of ten ~250–300 KB bodies through.
//!
//! 127.0.0.1 only: its own `moto_server` from `<repo>/.venv` (installed by
//! `scripts/test.sh`) per test, killed when done.

#[allow(dead_code)] // the other end-to-end tests use the rest
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use fanout::aws::Clients;
use fanout::aws::sqs::SqsQueue;
use fanout::config::{AwsConfig, Config};
use fanout::control::Policy;
use fanout::controller::{Backends, Controller, Source};
use fanout::ports::NoMetrics;
use moto::{BIN, Moto, child_env, sdk_config};
use support::Fake;
use tokio::sync::watch;

/// A body of about `bytes` bytes for `company_id`.
fn body(company_id: &str, bytes: usize) -> String {
    format!(
        r#"{{"company_id":"{company_id}","pad":"{}"}}"#,
        "x".repeat(bytes)
    )
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string()
}

/// Every message on `url`: its body and message attributes.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out = Vec::new();
    loop {
        let r = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(300)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        if r.messages().is_empty() {
            return out;
        }
        for m in r.messages() {
            let attrs = m
                .message_attributes()
                .map(|a| {
                    a.iter()
                        .map(|(k, v)| (k.clone(), v.string_value().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.body().unwrap_or("").to_string(), attrs));
        }
    }
}

/// The `company_id` of each body.
fn ids(bodies: &[(String, BTreeMap<String, String>)]) -> BTreeSet<String> {
    bodies
        .iter()
        .map(|(b, _)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["company_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_sends_ten_bodies_of_250_kb() {
    let moto = Moto::start();
    let sqs = aws_sdk_sqs::Client::new(&sdk_config(&moto.endpoint).await);
    let url = create_queue(&sqs, "bulk").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fanout.toml");
    std::fs::write(
        &config,
        format!(
            "[[queues]]\nname = \"bulk\"\nurl = \"{url}\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            moto.endpoint
        ),
    )
    .unwrap();
    // Each line under enqueue's 256 KiB cap; ten of them are 2.5 MB.
    let file = dir.path().join("big.jsonl");
    let lines: Vec<String> = (0..10).map(|i| body(&format!("c{i}"), 250_000)).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = child_env(&mut Command::new(BIN))
        .args(["enqueue", "--config", config.to_str().unwrap()])
        .args(["--file", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent: 10\n"),
        "enqueue of ten 250 KB bodies:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: BTreeSet<String> = (0..10).map(|i| format!("c{i}")).collect();
    assert_eq!(ids(&drain(&sqs, &url).await), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_unstartable_300_kb_bodies_all_reach_the_dlq() {
    let moto = Moto::start();
    let sdk = sdk_config(&moto.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let work = create_queue(&sqs, "work").await;
    let dlq = create_queue(&sqs, "work-dlq").await;
    // Over Step Functions' 262,144-byte input, under SQS's 1 MiB: each can
    // never start and is moved to the DLQ with its reason.
    for i in 0..10 {
        sqs.send_message()
            .queue_url(&work)
            .message_body(body(&format!("big{i}"), 300_000))
            .send()
            .await
            .unwrap();
    }
    let aws = AwsConfig {
        endpoint_url: Some(moto.endpoint.clone()),
        ..AwsConfig::default()
    };
    let clients = Clients::from_sdk_config(&sdk, &aws);
    let fake = Fake::new();
    let fakes = fake.backends(&[]);
    let backends = Backends {
        sources: vec![Source {
            name: "work".into(),
            queue: SqsQueue::new(clients.sqs.clone(), &work),
            dlq: SqsQueue::new(clients.sqs.clone(), &dlq),
        }],
        completions: None,
        executions: fakes.executions,
        metrics: fakes.metrics,
        sink: NoMetrics,
        claims: None,
    };
    let mut cfg = Config::default();
    cfg.controller.idle_wait_secs = 1;
    let ctl = Controller::new(cfg, Policy::Adaptive, backends, 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let watch_dlq = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        let depth = SqsQueue::new(clients.sqs.clone(), &dlq);
        while Instant::now() < deadline {
            if depth.depth().await.is_ok_and(|d| d.visible >= 10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tx.send_replace(true);
    };
    let (summary, ()) = tokio::join!(ctl.run(rx), watch_dlq);
    let dead = drain(&sqs, &dlq).await;
    let expected: BTreeSet<String> = (0..10).map(|i| format!("big{i}")).collect();
    assert_eq!(
        ids(&dead),
        expected,
        "dead-lettered {} of 10 within 20 s: {summary:?}",
        dead.len()
    );
    assert!(
        dead.iter()
            .all(|(_, a)| a.get("fanout-reason-code").map(String::as_str) == Some("too_large")),
        "each with its reason code"
    );
    assert_eq!(summary.dead_lettered, 10, "{summary:?}");
    assert!(
        drain(&sqs, &work).await.is_empty(),
        "left on the work queue"
    );
}
