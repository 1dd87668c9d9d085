//! `fanout status` as an operator runs it: SQS and Step Functions on a moto
//! emulator of the test's own (127.0.0.1), the controller's /metrics
//! served canned by a loopback server, so the ETA lines are known in
//! advance. Every wait is bounded.

#[allow(dead_code)] // the end-to-end tests use the rest
mod support {
    pub(crate) mod cloudwatch_stub;
    pub(crate) mod moto;
}

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::cloudwatch_stub::{Minute, Stub};
use support::moto::{BIN, Moto, child_env, sdk_config};

/// A controller's /metrics while the bulk backlog drains: 21 min left at
/// 118.25/s; a queue name that needs escaping, to be read back whole.
const DRAINING: &str = "# HELP fanout_ready 1 once the first reconcile succeeded.\nfanout_ready 1\nfanout_running_executions 17\nfanout_lambdas_per_execution 3\nfanout_completions_per_second 118.25\nfanout_backlog_eta_seconds{queue=\"priority\"} 0\nfanout_backlog_eta_seconds{queue=\"bulk\"} 1260\nfanout_backlog_eta_seconds{queue=\"odd \\\"q\\\"\"} 99\n";

/// The same, with nothing completing.
const STALLED: &str = "fanout_ready 1\nfanout_completions_per_second 0\n";

/// Serve `body` as /metrics to the first `requests` connections, then stop
/// listening (later reads are refused). Returns the base URL.
fn canned_metrics(body: &'static str, requests: usize) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming().take(requests) {
            let Ok(mut c) = conn else { continue };
            let mut head = [0u8; 1024];
            let _ = c.read(&mut head);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// moto with a priority queue (empty) and a bulk one (3 messages), a
/// state machine, and the config naming them.
struct Env {
    _moto: Moto,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

async fn env() -> Env {
    let moto = Moto::start();
    let conf = sdk_config(&moto.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let mut urls = Vec::new();
    for name in ["priority", "priority-dlq", "bulk", "bulk-dlq"] {
        let out = sqs.create_queue().queue_name(name).send().await.unwrap();
        urls.push(out.queue_url().unwrap().to_string());
    }
    for i in 0..3 {
        let body = format!(r#"{{"company_id":"c{i}"}}"#);
        let req = sqs.send_message().queue_url(&urls[2]).message_body(body);
        req.send().await.unwrap();
    }
    let arn = support::moto::state_machine(
        &aws_sdk_sfn::Client::new(&conf),
        r#"{"StartAt":"Done","States":{"Done":{"Type":"Succeed"}}}"#,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fanout.toml");
    let text = format!(
        "[controller]\nceiling = 30\nmax_lambdas_per_execution = 3.0\n\n[[queues]]\nname = \"priority\"\nurl = \"{}\"\ndlq_url = \"{}\"\n\n[[queues]]\nname = \"bulk\"\nurl = \"{}\"\ndlq_url = \"{}\"\n\n[aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nstate_machine_arn = \"{arn}\"\n",
        urls[0], urls[1], urls[2], urls[3], moto.endpoint
    );
    std::fs::write(&config, text).unwrap();
    Env {
        _moto: moto,
        _dir: dir,
        config,
    }
}

impl Env {
    /// The config again, reading fanout's own metrics from `cloudwatch`
    /// (`[metrics] cloudwatch = true`, namespace `fanout/test`).
    fn with_cloudwatch(&self, cloudwatch: &str) -> Env2 {
        let text = std::fs::read_to_string(&self.config).unwrap().replace(
            "[aws]\n",
            &format!("[aws]\ncloudwatch_endpoint_url = \"{cloudwatch}\"\n"),
        ) + "\n[metrics]\ncloudwatch = true\nnamespace = \"fanout/test\"\n";
        let config = self.config.with_file_name("cloudwatch.toml");
        std::fs::write(&config, text).unwrap();
        Env2 { config }
    }
}

/// A second config of the same environment.
struct Env2 {
    config: PathBuf,
}

/// `fanout status --config <env> <args>`: (exit code, stdout, stderr).
fn status(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    status_of(&env.config, args)
}

fn status_of(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = child_env(&mut Command::new(BIN))
        .args(["status", "--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run fanout status");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// The line of `text` about `queue`.
fn line<'a>(text: &'a str, queue: &str) -> &'a str {
    let prefix = format!("{queue}: ");
    (text.lines().find(|l| l.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("no line for {queue}:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_eta_from_the_controller_or_says_how_to_get_it() {
    let env = env().await;

    let url = canned_metrics(DRAINING, 2);
    let (code, out, err) = status(&env, &["--controller", &url]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("ETA from the controller's /metrics"), "{out}");
    assert_eq!(line(&out, "priority"), "priority: done (0 left)");
    let bulk = line(&out, "bulk");
    assert!(
        bulk.starts_with("bulk: 3 left, done ~") && bulk.ends_with(" UTC (in 21 min) at 118/s"),
        "{bulk}"
    );

    let (code, out, err) = status(&env, &["--controller", &url, "--json"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!(v["eta_source"], "controller");
    let (p, b) = (&v["queues"][0], &v["queues"][1]);
    assert_eq!(
        (&p["eta"], &p["eta_seconds"]),
        (&"done".into(), &0.0.into())
    );
    assert_eq!(b["left"], 3);
    assert_eq!(b["eta"], "estimate");
    let eta = b["eta_seconds"].as_f64().unwrap();
    assert!((1250.0..=1260.0).contains(&eta), "{b}");
    assert_eq!(b["rate_per_s"], 118.25);
    assert!(b["done_at"].as_str().unwrap().ends_with('Z'), "{b}");
    assert_eq!(
        v["controller"]["backlog_eta_seconds"]["odd \"q\""], 99.0,
        "an escaped label read back whole: {v}"
    );

    let (code, out, err) = status(&env, &["--controller", &canned_metrics(STALLED, 1)]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        line(&out, "bulk"),
        "bulk: 3 left, stalled (0 completions/s)"
    );
    assert_eq!(line(&out, "priority"), "priority: done (0 left)");

    // No --controller and no [metrics] cloudwatch: nothing to read.
    let (code, out, err) = status(&env, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        line(&out, "bulk"),
        "bulk: 3 left (ETA: run with --controller URL)"
    );
    let (_, json, _) = status(&env, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let b = &v["queues"][1];
    assert!(v["eta_source"].is_null(), "{v}");
    for k in ["eta_seconds", "done_at", "rate_per_s"] {
        assert!(b[k].is_null(), "{k}: {b}");
    }

    // Without --watch a failed read is the command's failure.
    let (code, _, err) = status(&env, &["--controller", &url]);
    assert_eq!(code, Some(2), "the canned server is gone: {err}");
    assert!(err.contains(&format!("GET {url}/metrics")), "{err}");
}

/// `--watch` into a pipe: a plain block per refresh, no escape codes; a
/// controller that stops answering is reported and the watch goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_a_plain_block_per_refresh_and_survives_a_failed_read() {
    let env = env().await;
    let url = canned_metrics(DRAINING, 2);
    let mut child = child_env(&mut Command::new(BIN))
        .args(["status", "--config", env.config.to_str().unwrap()])
        .args(["--controller", &url, "--watch", "--interval-secs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run fanout status --watch");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    let (mut blocks, mut failures) = (0, 0);
    while blocks < 2 || failures < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(l) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("{blocks} block(s), {failures} failure(s) in 30 s:\n{text}");
        };
        blocks += usize::from(l.starts_with("fanout status at "));
        failures += usize::from(l.starts_with("read failed at "));
        text.push_str(&l);
        text.push('\n');
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still watching:\n{text}"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(!text.contains('\x1b'), "escape codes in a pipe:\n{text}");
    assert!(
        text.contains("concurrency [") && text.contains("~51 / 30 Lambdas"),
        "the controller's 17 running × k̂ 3 against the ceiling:\n{text}"
    );
    assert!(text.contains("(in 21 min) at 118/s"), "{text}");
    assert!(text.contains("still watching"), "{text}");
}

/// Without `--controller`, with `[metrics] cloudwatch = true`: the series
/// the controller put (`completions_per_second`,
/// `backlog_eta_seconds_<queue>`), the latest minute; none recent: why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_eta_the_controller_put_in_cloudwatch() {
    let env = env().await;
    let stub = Stub::start().await;
    let cw = env.with_cloudwatch(&stub.endpoint);
    let status = |args: &'static [&'static str]| {
        let config = cw.config.clone();
        tokio::task::spawn_blocking(move || status_of(&config, args))
    };
    let (code, out, err) = status(&[]).await.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let bulk = line(&out, "bulk");
    assert!(
        bulk.starts_with("bulk: 3 left (ETA: no fanout/test/completions_per_second in CloudWatch"),
        "{bulk}"
    );
    // An older minute with another value: the latest one counts.
    let old = Minute::new()
        .own("completions_per_second", 9.0)
        .own("backlog_eta_seconds_bulk", 60.0);
    stub.set(stub.minute(-2), old);
    let latest = Minute::new()
        .own("completions_per_second", 2.0)
        .own("backlog_eta_seconds_bulk", 900.0)
        .own("backlog_eta_seconds_priority", 0.0);
    stub.set(stub.minute(-1), latest);
    let (code, out, err) = status(&[]).await.unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("ETA from the controller's CloudWatch metrics"),
        "{out}"
    );
    let bulk = line(&out, "bulk");
    assert!(
        bulk.starts_with("bulk: 3 left, done ~") && bulk.ends_with(" at 2.0/s"),
        "{bulk}"
    );
    let (_, json, _) = status(&["--json"]).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["eta_source"], "cloudwatch");
    let b = &v["queues"][1];
    // Put in the minute before the stub's first (its middle + 900 s),
    // read within a minute or two of it.
    let eta = b["eta_seconds"].as_f64().unwrap();
    assert!((700.0..=900.0).contains(&eta), "{b}");
    assert_eq!(b["rate_per_s"], 2.0);
}
