//! `fanout failed` and `fanout redrive` end to end on the moto emulator,
//! as far as moto 5.2.5 serves them: ListExecutions(FAILED),
//! DescribeExecution's input, error and cause, GetExecutionHistory's
//! states; a redrive request on the bulk queue. moto has no
//! RedriveExecution (its Step Functions has no such action and answers
//! HTTP 500 with an HTML page): the controller takes the request, calls
//! RedriveExecution, retries the 500 as transient and hands the request
//! back at shutdown. The redrive itself is tested in the simulator
//! (tests/redrive.rs).
//!
//! 127.0.0.1 only: a `moto_server` of its own from `<repo>/.venv` per
//! test, killed when done; one test at a time.

#[allow(dead_code)] // the other end-to-end tests use the rest
#[path = "support/moto.rs"]
mod moto;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use fanout::aws::Clients;
use fanout::aws::sfn::SfnExecutions;
use fanout::aws::sqs::SqsQueue;
use fanout::config::{AwsConfig, Config};
use fanout::control::Policy;
use fanout::control::redrive::request_body;
use fanout::controller::{Backends, Controller, Source};
use fanout::ports::{Executions, NoMetrics, RedriveOutcome, WorkQueue};
use moto::{BIN, Moto, child_env, sdk_config};
use support::Fake;
use tokio::sync::watch;

/// Each test runs moto and waits on executions in seconds: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A state machine whose executions fail in state "Check".
const FAILING: &str = r#"{"StartAt":"Prepare","States":{"Prepare":{"Type":"Pass","Next":"Check"},"Check":{"Type":"Fail","Error":"Company.NotFound","Cause":"no such company"}}}"#;

struct Env {
    moto: Moto,
    sfn: aws_sdk_sfn::Client,
    sqs: aws_sdk_sqs::Client,
    arn: String,
    bulk: String,
    dlq: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let moto = Moto::start();
        let sdk = sdk_config(&moto.endpoint).await;
        let sfn = aws_sdk_sfn::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let queue = |name: &'static str| {
            let sqs = sqs.clone();
            async move {
                let out = sqs.create_queue().queue_name(name).send().await.unwrap();
                out.queue_url().unwrap().to_string()
            }
        };
        let bulk = queue("bulk").await;
        let dlq = queue("bulk-dlq").await;
        let arn = moto::state_machine(&sfn, FAILING).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("fanout.toml");
        std::fs::write(
            &config,
            format!(
                "[[queues]]\nname = \"bulk\"\nurl = \"{bulk}\"\ndlq_url = \"{dlq}\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nstate_machine_arn = \"{arn}\"\n",
                moto.endpoint
            ),
        )
        .unwrap();
        Env {
            moto,
            sfn,
            sqs,
            arn,
            bulk,
            dlq,
            config,
            _dir: dir,
        }
    }

    /// Start an execution for `company`; wait (10 s at most) until it failed.
    async fn failed_execution(&self, company: &str) -> String {
        let arn = self
            .sfn
            .start_execution()
            .state_machine_arn(&self.arn)
            .name(format!("co-{company}"))
            .input(format!(r#"{{"company_id":"{company}"}}"#))
            .send()
            .await
            .unwrap()
            .execution_arn()
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self
                .sfn
                .describe_execution()
                .execution_arn(&arn)
                .send()
                .await
                .unwrap();
            if d.status().as_str() == "FAILED" {
                return arn;
            }
            assert!(
                Instant::now() < deadline,
                "{arn}: {:?} after 10 s",
                d.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `fanout ARGS --config <config>`: (exit code, stdout, stderr).
    fn fanout(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = child_env(&mut Command::new(BIN))
            .args(args)
            .args(["--config", self.config.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Every body on `url` (hidden 300 s once read).
    async fn bodies(&self, url: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let r = self
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .send()
                .await
                .unwrap();
            if r.messages().is_empty() {
                return out;
            }
            out.extend(
                r.messages()
                    .iter()
                    .map(|m| m.body().unwrap_or("").to_string()),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lists_each_failed_execution_with_its_key_state_and_error() {
    let _one = SERIAL.lock().await;
    let env = Env::new().await;
    let a = env.failed_execution("c-1").await;
    let b = env.failed_execution("c-2").await;
    let (code, out, err) = env.fanout(&["failed", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&out);
    assert_eq!(list.len(), 2, "{out}");
    // Newest start first.
    assert_eq!(list[0]["execution_arn"], b.as_str(), "{out}");
    assert_eq!(list[1]["execution_arn"], a.as_str(), "{out}");
    for (x, key) in list.iter().zip(["c-2", "c-1"]) {
        assert_eq!(x["status"], "FAILED", "{out}");
        assert_eq!(x["key"], key, "{out}");
        assert_eq!(x["error"], "Company.NotFound", "{out}");
        assert_eq!(x["cause"], "no such company", "{out}");
        assert_eq!(x["state"], "Check", "{out}");
    }
    let (code, table, err) = env.fanout(&["failed"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.contains("FAILED") && table.contains("c-1") && table.contains("Company.NotFound"),
        "{table}"
    );
    assert!(table.contains("2 unsuccessful execution(s)"), "{table}");
    // Only the newest described, and the table says how many were listed.
    let (code, out, err) = env.fanout(&["failed", "--json", "--limit", "1"]);
    assert_eq!(code, Some(0), "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect(&out);
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["execution_arn"], b.as_str(), "{out}");
    let (code, table, err) = env.fanout(&["failed", "--limit", "1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        table.contains("1 of 2 unsuccessful execution(s), the newest (--limit)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_requests_reach_the_controller_which_calls_redrive_execution() {
    let _one = SERIAL.lock().await;
    let env = Env::new().await;
    let a = env.failed_execution("c-1").await;
    let (code, dry, err) = env.fanout(&["redrive", "--dry-run", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let dry: serde_json::Value = serde_json::from_str(&dry).expect(&dry);
    assert_eq!(dry["requests"], serde_json::json!([a]), "{dry}");
    assert!(
        env.bodies(&env.bulk).await.is_empty(),
        "a dry run sends nothing"
    );
    let (code, out, err) = env.fanout(&["redrive", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        (summary["listed"].as_u64(), summary["sent"].as_u64()),
        (Some(1), Some(1)),
        "{out}"
    );
    // Sent, read back (and hidden for 300 s), put back for the controller.
    let bodies = env.bodies(&env.bulk).await;
    assert_eq!(bodies, [request_body(&a)]);

    // What moto says to RedriveExecution itself.
    let sdk = sdk_config(&env.moto.endpoint).await;
    let aws = AwsConfig {
        endpoint_url: Some(env.moto.endpoint.clone()),
        ..AwsConfig::default()
    };
    let clients = Clients::from_sdk_config(&sdk, &aws);
    let sfn = SfnExecutions::new(clients.sfn.clone(), &env.arn);
    let answer = sfn.redrive(&a, "e2e-redrive-request").await;
    assert!(
        !matches!(answer, Ok(RedriveOutcome::Redriven)),
        "moto redrove {a}: update the README's moto gap and this test"
    );
    eprintln!("moto's answer to RedriveExecution: {answer:?}");

    // The controller takes the request and calls RedriveExecution.
    let work = SqsQueue::new(clients.sqs.clone(), &env.bulk);
    let sent = work
        .send_batch(&[fanout::ports::OutgoingMessage {
            body: request_body(&a),
            ..Default::default()
        }])
        .await
        .unwrap();
    assert!(sent.is_empty());
    let fake = Fake::new();
    let fakes = fake.backends(&[]);
    let backends = Backends {
        sources: vec![Source {
            name: "bulk".into(),
            queue: work,
            dlq: SqsQueue::new(clients.sqs.clone(), &env.dlq),
        }],
        completions: None,
        executions: sfn,
        metrics: fakes.metrics,
        sink: NoMetrics,
        claims: None,
    };
    let mut cfg = Config::default();
    cfg.controller.idle_wait_secs = 1;
    cfg.aws.state_machine_arn = env.arn.clone();
    let ctl = Controller::new(cfg, Policy::Adaptive, backends, 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let stop = async {
        tokio::time::sleep(Duration::from_secs(6)).await;
        tx.send_replace(true);
    };
    let (run, ()) = tokio::join!(ctl.run(rx), stop);
    eprintln!("{run:?}");
    assert_eq!(run.redriven, 0, "moto redrove: {run:?}");
    // moto answers HTTP 500 (no such action), a transient error: retried
    // with backoff while hidden, handed back at shutdown; never deleted,
    // never dead-lettered.
    assert_eq!((run.deleted, run.dead_lettered), (0, 0), "{run:?}");
    assert_eq!(run.released, 1, "{run:?}");
    assert!(env.bodies(&env.dlq).await.is_empty());
}
