//! End-to-end tests on the moto AWS emulator: the real `fanout` binary and
//! the real SDK clients, over 127.0.0.1 only. Each test starts its own
//! `moto_server` on a free port from `<repo>/.venv` (installed by
//! `scripts/test.sh`) and kills it when done.

#[allow(dead_code)] // the other end-to-end tests use the rest
mod support {
    pub(crate) mod moto;
}

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use support::moto::{BIN, Fanout, Moto, child_env, free_port, http, metric, sdk_config};

const CEILING: usize = 20;
/// How often a test re-checks what it waits for.
const POLL: Duration = Duration::from_millis(100);

/// One test at a time: each runs moto and fanout processes with second-
/// scale timing (2-s executions, 1-s reconciles), and two at once on a
/// 2-core CI machine slowed moto's executions past what the controller had
/// measured of them (a drain counted 21 running against 20).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run the fanout binary with `args` and the emulator's credentials.
fn run_fanout(args: &[&str]) -> std::process::Output {
    child_env(&mut Command::new(BIN))
        .args(args)
        .output()
        .expect("cannot run fanout")
}

struct Aws {
    sqs: aws_sdk_sqs::Client,
    sfn: aws_sdk_sfn::Client,
}

async fn clients(endpoint: &str) -> Aws {
    let conf = sdk_config(endpoint).await;
    Aws {
        sqs: aws_sdk_sqs::Client::new(&conf),
        sfn: aws_sdk_sfn::Client::new(&conf),
    }
}

/// Queues, state machine and config of one test.
struct Env {
    _moto: Moto,
    aws: Aws,
    dir: tempfile::TempDir,
    priority: String,
    priority_dlq: String,
    bulk: String,
    bulk_dlq: String,
    arn: String,
    config: PathBuf,
    http_port: u16,
}

async fn create_queue(aws: &Aws, name: &str, dlq: Option<&str>) -> String {
    let mut req = aws.sqs.create_queue().queue_name(name);
    if let Some(dlq) = dlq {
        let arn = aws
            .sqs
            .get_queue_attributes()
            .queue_url(dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        req = req.attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"3"}}"#),
        );
    }
    req.send().await.unwrap().queue_url().unwrap().to_string()
}

impl Env {
    async fn new(visibility_secs: u64) -> Env {
        let moto = Moto::start();
        let aws = clients(&moto.endpoint).await;
        let priority_dlq = create_queue(&aws, "priority-dlq", None).await;
        let bulk_dlq = create_queue(&aws, "bulk-dlq", None).await;
        let priority = create_queue(&aws, "priority", Some(&priority_dlq)).await;
        let bulk = create_queue(&aws, "bulk", Some(&bulk_dlq)).await;
        let definition = r#"{"StartAt":"Work","States":{"Work":{"Type":"Wait","Seconds":2,"Next":"Done"},"Done":{"Type":"Succeed"}}}"#;
        let arn = support::moto::state_machine(&aws.sfn, definition).await;
        let dir = tempfile::tempdir().unwrap();
        let http_port = free_port();
        let config = dir.path().join("fanout.toml");
        let text = format!(
            r#"
[controller]
ceiling = {CEILING}
max_lambdas_per_execution = 1.0
ramp_initial = {CEILING}
tick_ms = 100
reconcile_interval_secs = 1
list_pages_per_s = 5
list_grace_secs = 1
idle_wait_secs = 1
visibility_timeout_secs = {visibility_secs}
shutdown_deadline_secs = 10

[naming]
template = "co-{{company_id}}-{{hash}}"

[http]
listen = "127.0.0.1:{http_port}"

[[queues]]
name = "priority"
url = "{priority}"
dlq_url = "{priority_dlq}"

[[queues]]
name = "bulk"
url = "{bulk}"
dlq_url = "{bulk_dlq}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
state_machine_arn = "{arn}"
"#,
            endpoint = moto.endpoint
        );
        std::fs::write(&config, text).unwrap();
        Env {
            _moto: moto,
            aws,
            dir,
            priority,
            priority_dlq,
            bulk,
            bulk_dlq,
            arn,
            config,
            http_port,
        }
    }

    /// Enqueue `n` bulk companies `c0001..` through `fanout enqueue --file`.
    fn enqueue_bulk(&self, n: usize) {
        let csv = self.dir.path().join("companies.csv");
        let mut text = String::from("company_id,region\n");
        for i in 1..=n {
            let _ = writeln!(text, "c{i:04},eu");
        }
        std::fs::write(&csv, text).unwrap();
        let out = run_fanout(&[
            "enqueue",
            "--config",
            self.config.to_str().unwrap(),
            "--file",
            csv.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "enqueue failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("sent: {n}")), "{stdout}");
    }

    /// Start `fanout run`, logs to `run-<tag>.log`.
    fn start(&self, tag: &str) -> Fanout {
        let log = self.dir.path().join(format!("run-{tag}.log"));
        Fanout::spawn(
            &["run", "--config", self.config.to_str().unwrap()],
            &[("RUST_LOG", "info")],
            log,
        )
    }

    /// Every execution of the state machine: name → (status, start time).
    async fn executions(&self) -> BTreeMap<String, (ExecutionStatus, f64)> {
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .aws
                .sfn
                .list_executions()
                .state_machine_arn(&self.arn)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            for e in page.executions() {
                let start = e.start_date().as_secs_f64();
                let prev = out.insert(e.name().to_string(), (e.status().clone(), start));
                assert!(prev.is_none(), "execution {} listed twice", e.name());
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => return out,
            }
        }
    }

    async fn running(&self) -> usize {
        let mut n = 0;
        let mut token = None;
        loop {
            let page = self
                .aws
                .sfn
                .list_executions()
                .state_machine_arn(&self.arn)
                .status_filter(ExecutionStatus::Running)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            n += page.executions().len();
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => return n,
            }
        }
    }

    /// (visible, not visible) messages of a queue.
    async fn depth(&self, url: &str) -> (u64, u64) {
        let out = self
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        let get = |k| a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }

    /// Drain a queue: every message's body and attributes.
    async fn drain(&self, url: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let mut out = Vec::new();
        loop {
            let r = self
                .aws
                .sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
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

    async fn send_raw(&self, url: &str, body: &str) -> String {
        self.aws
            .sqs
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .unwrap()
            .message_id()
            .unwrap()
            .to_string()
    }

    /// Wait until every queue is empty and `n` executions exist, sampling
    /// the RUNNING count; returns the highest count seen.
    async fn wait_drained(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut peak = 0;
        loop {
            peak = peak.max(self.running().await);
            if self.executions().await.len() >= n {
                let mut empty = true;
                for q in [&self.priority, &self.bulk] {
                    empty &= self.depth(q).await == (0, 0);
                }
                if empty {
                    return peak;
                }
            }
            assert!(
                Instant::now() < deadline,
                "not drained within {limit:?}: {} executions of {n}",
                self.executions().await.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The company id of an execution named `co-{company_id}-{hash}`.
fn company(name: &str) -> String {
    let rest = name
        .strip_prefix("co-")
        .expect("name has the template's prefix");
    rest.rsplit_once('-')
        .expect("name ends with the hash")
        .0
        .to_string()
}

/// Each expected company has exactly one execution, and nothing else ran.
fn assert_one_each(names: &BTreeMap<String, (ExecutionStatus, f64)>, expected: &BTreeSet<String>) {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for n in names.keys() {
        *per.entry(company(n)).or_default() += 1;
    }
    let got: BTreeSet<String> = per.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(expected).collect();
    assert!(missing.is_empty(), "companies never started: {missing:?}");
    assert!(extra.is_empty(), "unexpected executions: {extra:?}");
    let doubled: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "companies started twice: {doubled:?}");
}

fn bulk_ids(n: usize) -> BTreeSet<String> {
    (1..=n).map(|i| format!("c{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_bulk_and_priority_at_the_ceiling() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(30).await;
    env.enqueue_bulk(300);
    for i in 1..=5 {
        let id = format!("p{i}");
        let out = run_fanout(&[
            "enqueue",
            "--config",
            env.config.to_str().unwrap(),
            "--company-id",
            &id,
            "--priority",
            "--data",
            r#"{"reason":"update"}"#,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(env.depth(&env.priority).await, (5, 0));
    let t0 = Instant::now();
    let mut ctl = env.start("a");

    // /healthz turns 200 once the first reconcile is done.
    ctl.wait_for_async(
        Duration::from_secs(30),
        POLL,
        || "/healthz never 200".into(),
        async || {
            matches!(
                http(env.http_port, "GET", "/healthz", "text/plain", "", ""),
                Ok((200, _))
            )
        },
    )
    .await;

    let peak = env.wait_drained(305, Duration::from_secs(150)).await;
    let elapsed = t0.elapsed();
    let (_, metrics) = http(env.http_port, "GET", "/metrics", "text/plain", "", "").unwrap();
    assert!(metrics.contains("fanout_ceiling 20"), "{metrics}");
    // What the run did, not only that the series exist: every message
    // started and deleted. At least once: on a loaded machine a message
    // whose visibility ran out before its delete is received again and
    // started again under its name, which Step Functions answers with the
    // same execution (CI saw 306); one execution each is asserted below.
    for series in ["fanout_starts_total", "fanout_deletes_total"] {
        let n = metric(env.http_port, series).unwrap_or(0.0);
        assert!((305.0..=320.0).contains(&n), "{series} {n}: {metrics}");
    }

    let url = format!("http://127.0.0.1:{}", env.http_port);
    let status = run_fanout(&[
        "status",
        "--config",
        env.config.to_str().unwrap(),
        "--controller",
        &url,
    ]);
    let table = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.status.success(), "{table}");
    assert!(table.contains("bulk"), "{table}");
    assert!(table.contains("controller: ready"), "{table}");
    // No CloudWatch on the emulator: nothing learned, nothing remembered.
    assert!(
        table.contains("remembered lambdas per execution: none"),
        "{table}"
    );
    ctl.signal("-TERM");
    let code = ctl.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", ctl.log());

    assert!(
        peak <= CEILING,
        "{peak} executions ran at once, over {CEILING}"
    );
    let execs = env.executions().await;
    let mut expected = bulk_ids(300);
    expected.extend((1..=5).map(|i| format!("p{i}")));
    assert_one_each(&execs, &expected);

    // The priority updates were in the first wave of starts.
    let mut starts: Vec<(f64, String)> = execs.iter().map(|(n, (_, t))| (*t, company(n))).collect();
    starts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for (rank, (_, c)) in starts.iter().enumerate() {
        if c.starts_with('p') {
            assert!(rank < CEILING, "priority {c} started {rank}th");
        }
    }
    for q in [&env.priority, &env.bulk, &env.priority_dlq, &env.bulk_dlq] {
        assert_eq!(env.depth(q).await, (0, 0), "{q} not empty");
    }
    eprintln!("305 messages drained in {elapsed:?}, peak RUNNING {peak}\n{table}");
    let log = ctl.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
        .collect();
    eprintln!("{} warning line(s)", warnings.len());
    for w in warnings.iter().take(10) {
        eprintln!("{w}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_keeps_one_execution_per_message() {
    let _serial = SERIAL.lock().await;
    // A short visibility: messages the killed process held come back soon.
    let env = Env::new(5).await;
    env.enqueue_bulk(120);
    let mut first = env.start("first");
    first
        .wait_for_async(
            Duration::from_secs(60),
            POLL,
            || "no progress".into(),
            async || env.executions().await.len() >= 30,
        )
        .await;
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let _second = env.start("second");
    env.wait_drained(120, Duration::from_secs(120)).await;
    assert_one_each(&env.executions().await, &bulk_ids(120));
    assert_eq!(env.depth(&env.bulk_dlq).await, (0, 0), "bulk DLQ not empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_the_dlq_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(30).await;
    let not_json = env.send_raw(&env.bulk, "this is not json").await;
    // Over Step Functions' 262,144-byte input limit, under SQS's.
    let big = format!(r#"{{"company_id":"big","pad":"{}"}}"#, "x".repeat(300_000));
    let too_large = env.send_raw(&env.bulk, &big).await;
    let missing = env.send_raw(&env.bulk, r#"{"name":"no id here"}"#).await;
    for i in 1..=20 {
        env.send_raw(&env.bulk, &format!(r#"{{"company_id":"g{i}"}}"#))
            .await;
    }
    let mut ctl = env.start("bad");
    env.wait_drained(20, Duration::from_secs(90)).await;
    ctl.wait_for_async(
        Duration::from_secs(20),
        POLL,
        || "DLQ never got 3 messages".into(),
        async || env.depth(&env.bulk_dlq).await.0 >= 3,
    )
    .await;
    let good: BTreeSet<String> = (1..=20).map(|i| format!("g{i}")).collect();
    assert_one_each(&env.executions().await, &good);

    let dead = env.drain(&env.bulk_dlq).await;
    assert_eq!(
        dead.len(),
        3,
        "{:?}",
        dead.iter().map(|d| &d.1).collect::<Vec<_>>()
    );
    let mut codes = BTreeMap::new();
    for (_, attrs) in &dead {
        let reason = attrs.get("fanout-reason").expect("fanout-reason attribute");
        assert!(!reason.is_empty());
        codes.insert(
            attrs["fanout-source-message-id"].clone(),
            attrs["fanout-reason-code"].clone(),
        );
    }
    assert_eq!(codes[&not_json], "not_json");
    assert_eq!(codes[&too_large], "too_large");
    assert_eq!(codes[&missing], "missing_field");

    // One clear log line per message: its id and why.
    let log = ctl.log();
    for (id, why) in [
        (&not_json, "not valid JSON"),
        (&too_large, "262144"),
        (&missing, "company_id"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(id.as_str()) && l.contains("dead-letter"))
            .unwrap_or_else(|| panic!("no log line for {id}:\n{log}"));
        assert!(line.contains(why), "{line}");
    }
}

/// Under a `{company_id}` template: ids that sanitize alike still get an
/// execution each; a second body under a taken name goes to the DLQ as
/// `name_collision` (moto answers ExecutionAlreadyExists for it), and a
/// re-sent copy of a finished message is recognised as started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_with_other_input_goes_to_the_dlq_and_a_copy_is_done() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(30).await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.replace("co-{company_id}-{hash}", "{company_id}");
    std::fs::write(&env.config, text).unwrap();
    let first = r#"{"company_id":"dup","v":1}"#;
    env.send_raw(&env.bulk, first).await;
    env.send_raw(&env.bulk, r#"{"company_id":"acme/eu"}"#).await;
    env.send_raw(&env.bulk, r#"{"company_id":"acme.eu"}"#).await;
    let mut ctl = env.start("collide");
    ctl.wait_for_async(
        Duration::from_secs(30),
        POLL,
        || "dup never finished".into(),
        async || {
            env.executions()
                .await
                .get("dup")
                .is_some_and(|e| e.0 == ExecutionStatus::Succeeded)
        },
    )
    .await;
    let second = env
        .send_raw(&env.bulk, r#"{"company_id":"dup","v":2}"#)
        .await;
    let copy = env.send_raw(&env.bulk, first).await;
    ctl.wait_for_async(
        Duration::from_secs(30),
        POLL,
        || "the DLQ never got the second body".into(),
        async || env.depth(&env.bulk_dlq).await.0 >= 1,
    )
    .await;
    ctl.wait_for_async(
        Duration::from_secs(30),
        POLL,
        || "the bulk queue never drained".into(),
        async || env.depth(&env.bulk).await == (0, 0),
    )
    .await;
    let names: Vec<String> = env.executions().await.into_keys().collect();
    assert_eq!(
        names.len(),
        3,
        "acme/eu and acme.eu must both run: {names:?}"
    );
    assert!(names.iter().filter(|n| n.starts_with("acme-eu-")).count() == 2);
    let dead = env.drain(&env.bulk_dlq).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let attrs = &dead[0].1;
    assert_eq!(attrs["fanout-reason-code"], "name_collision");
    assert_eq!(attrs["fanout-source-message-id"], second);
    assert!(
        attrs["fanout-reason"].contains("naming.template"),
        "{attrs:?}"
    );
    let log = ctl.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&second) && l.contains("name_collision")),
        "no log line names {second}:\n{log}"
    );
    assert!(
        !log.lines().any(|l| l.contains(&copy) && l.contains("WARN")),
        "{log}"
    );
    let port = env.http_port;
    assert_eq!(metric(port, "fanout_name_collisions_total"), Some(1.0));
    assert_eq!(metric(port, "fanout_already_existed_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_in_time_and_hands_back_messages() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(60).await;
    env.enqueue_bulk(200);
    let mut ctl = env.start("term");
    ctl.wait_for_async(
        Duration::from_secs(60),
        POLL,
        || "no progress".into(),
        async || env.executions().await.len() >= 25,
    )
    .await;
    ctl.signal("-TERM");
    // shutdown_deadline_secs = 10, plus process exit.
    let (code, took) = ctl.wait_exit_timed(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", ctl.log());
    assert!(took < Duration::from_secs(11), "took {took:?}");

    // Nothing stays hidden: what was in hand was handed back (or deleted).
    let (visible, hidden) = env.depth(&env.bulk).await;
    assert_eq!(hidden, 0, "messages left in flight after shutdown");
    let started: BTreeSet<String> = env.executions().await.keys().map(|n| company(n)).collect();
    let queued: BTreeSet<String> = env
        .drain(&env.bulk)
        .await
        .iter()
        .map(|(b, _)| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["company_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(queued.len() as u64, visible);
    let all: BTreeSet<String> = started.union(&queued).cloned().collect();
    assert_eq!(all, bulk_ids(200), "messages lost");
}

#[test]
fn check_config_lists_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[controller]
ceiling = 0

[http]
listen = "nowhere"

[[queues]]
name = "bulk"
url = "http://127.0.0.1:5000/123456789012/bulk"
dlq_url = "http://127.0.0.1:5000/123456789012/bulk-dlq"

[aws]
region = "us-east-1"
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for field in ["controller.ceiling", "http.listen", "aws.state_machine_arn"] {
        assert!(text.contains(field), "{field} missing from:\n{text}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");

    std::fs::write(&path, "[controller]\nceiling = \"many\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("line 2"), "{text}");

    // `run` refuses the same way, before touching AWS: exit 2.
    std::fs::write(&path, "[controller]\nceiling = 0\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for field in ["controller.ceiling", "queues", "aws.state_machine_arn"] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
}

/// The adapters themselves: receive counts, per-entry batch failures,
/// ExecutionAlreadyExists, and the error kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_map_counts_entries_and_errors() {
    use fanout::aws::sfn::SfnExecutions;
    use fanout::aws::sqs::SqsQueue;
    use fanout::ports::{Executions, OutgoingMessage, PortError, StartOutcome, WorkQueue};
    let _serial = SERIAL.lock().await;

    let env = Env::new(30).await;
    // Clients with static test credentials (the binary uses the default
    // chain with the environment child_env sets).
    let c = &env.aws;
    let q = SqsQueue::new(c.sqs.clone(), &env.bulk);
    let sent = q
        .send_batch(&[OutgoingMessage {
            body: r#"{"company_id":"x"}"#.into(),
            attributes: vec![("origin".into(), "e2e".into())],
            ..OutgoingMessage::default()
        }])
        .await
        .unwrap();
    assert!(sent.is_empty(), "{sent:?}");
    let first = q
        .receive(10, Duration::ZERO, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    let second = q
        .receive(10, Duration::from_secs(30), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        second[0].receive_count, 2,
        "ApproximateReceiveCount not read"
    );
    let failed = q
        .delete_batch(&[second[0].receipt.clone(), "not-a-receipt".into()])
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].index, 1);
    assert!(!failed[0].error.is_retryable(), "{:?}", failed[0].error);

    let sfn = SfnExecutions::new(c.sfn.clone(), &env.arn);
    assert_eq!(
        sfn.start("once", "{}").await.unwrap(),
        StartOutcome::Started
    );
    let again = sfn.start("once", r#"{"other":1}"#).await.unwrap();
    assert_eq!(again, StartOutcome::AlreadyExists);
    // moto, like Step Functions, answers the same name and input while
    // running with the original execution, other input with AlreadyExists;
    // DescribeExecution tells the two apart.
    assert_eq!(
        sfn.start("once", "{}").await.unwrap(),
        StartOutcome::Started
    );
    assert!(sfn.input_matches("once", "{}").await.unwrap());
    assert!(
        sfn.input_matches("once", " { } ").await.unwrap(),
        "the same JSON"
    );
    assert!(!sfn.input_matches("once", r#"{"other":1}"#).await.unwrap());
    match sfn.input_matches("never-started", "{}").await {
        Err(PortError::Permanent { code, .. }) => assert_eq!(code, "ExecutionDoesNotExist"),
        other => panic!("{other:?}"),
    }
    let page = sfn.list_running(None).await.unwrap();
    assert_eq!(page.names, ["once"]);
    let missing = SfnExecutions::new(
        c.sfn.clone(),
        "arn:aws:states:us-east-1:123456789012:stateMachine:nope",
    );
    match missing.start("x", "{}").await {
        Err(PortError::Permanent { code, .. }) => assert_eq!(code, "StateMachineDoesNotExist"),
        other => panic!("{other:?}"),
    }

    // The learned width is kept as a tag, for the current definition only.
    assert_eq!(sfn.remembered_k().await.unwrap(), None);
    sfn.remember_k(1.9381).await.unwrap();
    assert_eq!(sfn.remembered_k().await.unwrap(), Some(1.9381));
    c.sfn
        .update_state_machine()
        .state_machine_arn(&env.arn)
        .definition(r#"{"StartAt":"Done","States":{"Done":{"Type":"Succeed"}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        sfn.remembered_k().await.unwrap(),
        None,
        "a changed workflow starts from the maximum again"
    );

    // CloudWatch is not exercised here: aws-sdk-cloudwatch speaks the
    // RPCv2-CBOR protocol, which moto 5.2.5 does not serve (404).

    // Nothing listens on a port we just released: a transient failure.
    let closed = clients(&format!("http://127.0.0.1:{}", free_port())).await;
    let dead = SqsQueue::new(closed.sqs, &env.bulk);
    match dead.receive(1, Duration::ZERO, Duration::ZERO).await {
        Err(e @ PortError::Transient { .. }) => assert!(e.is_retryable()),
        other => panic!("{other:?}"),
    }
}

/// `enqueue --dry-run` needs no AWS: it validates and names bad lines.
#[test]
fn enqueue_dry_run_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[naming]\ntemplate = \"co-{company_id}-{region}\"\n[[queues]]\nname = \"bulk\"\n",
    )
    .unwrap();
    let file = dir.path().join("c.jsonl");
    std::fs::write(
        &file,
        "{\"company_id\":\"a\",\"region\":\"eu\"}\nnot json\n{\"company_id\":\"b\"}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["enqueue", "--config", cfg.to_str().unwrap()])
        .args(["--file", file.to_str().unwrap(), "--dry-run", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], 1);
    assert_eq!(v["sent"], 0);
    let lines: Vec<u64> = v["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3]);
    assert!(
        v["invalid"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("region")
    );
}

/// Config hot reload on the real binary: a changed file is applied, an
/// invalid one and one that needs a restart are refused (logged with the
/// field, the old config kept), SIGHUP applies a change the poll was told
/// to ignore; all in one process that keeps serving and draining.
// Wait (at most `secs`) until /metrics shows `series` at `value`.
async fn until(ctl: &mut Fanout, port: u16, series: &str, value: f64, secs: u64) {
    ctl.wait_for_async(
        Duration::from_secs(secs),
        POLL,
        || format!("{series} never {value} (now {:?})", metric(port, series)),
        async || metric(port, series) == Some(value),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_on_file_change_and_sighup_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let t0 = Instant::now();
    let env = Env::new(30).await;
    env.enqueue_bulk(30);
    let base = std::fs::read_to_string(&env.config).unwrap() + "\n[reload]\npoll_secs = 1\n";
    assert!(base.contains("\nceiling = 20\n"));
    let with = |ceiling: u32, extra: &str| {
        let text = base.replace("\nceiling = 20\n", &format!("\nceiling = {ceiling}\n"));
        // Whole, as editors do (write a copy, rename it over the file).
        let tmp = env.config.with_extension("toml.new");
        std::fs::write(&tmp, text + extra).unwrap();
        std::fs::rename(&tmp, &env.config).unwrap();
    };
    with(20, "");
    let mut ctl = env.start("reload");
    let port = env.http_port;
    let applied = "fanout_config_reloads_total{result=\"applied\"}";
    let refused = "fanout_config_reloads_total{result=\"refused\"}";
    until(&mut ctl, port, "fanout_ready", 1.0, 20).await;
    assert_eq!(metric(port, "fanout_ceiling"), Some(20.0));
    assert_eq!(metric(port, applied), Some(0.0));

    // (1) The file changes: applied by the poll, no restart.
    with(12, "");
    until(&mut ctl, port, "fanout_ceiling", 12.0, 5).await;
    assert_eq!(metric(port, applied), Some(1.0));
    let log = ctl.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_else(|| panic!("no reload line:\n{log}"));
    assert!(line.contains("controller.ceiling: 20 -> 12"), "{line}");
    assert!(line.contains("file changed"), "{line}");

    // (2) An invalid value, then a field that needs a restart: refused,
    // logged with the field, the ceiling stays 12.
    with(0, "");
    until(&mut ctl, port, refused, 1.0, 5).await;
    with(12, "[completion_queue]\nurl = \"http://127.0.0.1:1/q\"\n");
    until(&mut ctl, port, refused, 2.0, 5).await;
    assert_eq!(metric(port, "fanout_ceiling"), Some(12.0));
    assert_eq!(metric(port, applied), Some(1.0));
    let log = ctl.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"ERROR\"") && l.contains("config reload refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(
        refusals[0].contains("controller.ceiling: must be at least 1"),
        "{}",
        refusals[0]
    );
    assert!(refusals[0].contains("fanout.toml"), "{}", refusals[0]);
    assert!(
        refusals[1].contains("completion_queue.url"),
        "{}",
        refusals[1]
    );
    assert!(
        refusals[1].contains("restart the service to apply"),
        "{}",
        refusals[1]
    );

    // (3) Polling off, then a change only SIGHUP applies.
    with(12, "watch_file = false\n");
    until(&mut ctl, port, applied, 2.0, 5).await;
    with(15, "watch_file = false\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        metric(port, "fanout_ceiling"),
        Some(12.0),
        "the poll was off"
    );
    ctl.signal("-HUP");
    until(&mut ctl, port, "fanout_ceiling", 15.0, 5).await;
    assert_eq!(metric(port, applied), Some(3.0));
    assert!(ctl.log().contains("controller.ceiling: 12 -> 15"));

    // The same process drained everything, once each.
    env.wait_drained(30, Duration::from_secs(30)).await;
    assert_one_each(&env.executions().await, &bulk_ids(30));
    ctl.signal("-TERM");
    let code = ctl.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", ctl.log());
    eprintln!("reload e2e took {:?}", t0.elapsed());
    for l in ctl.log().lines().filter(|l| l.contains("config reload")) {
        eprintln!("{l}");
    }
}

/// With the config in `$FANOUT_CONFIG_TOML` (ECS) nothing can be reloaded:
/// the file is not read, and SIGHUP only says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_the_config_in_the_environment_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(30).await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let log = env.dir.path().join("run-env.log");
    let mut ctl = Fanout::spawn(
        &["run", "--config", "/nonexistent/fanout.toml"],
        &[("FANOUT_CONFIG_TOML", &text), ("RUST_LOG", "info")],
        log,
    );
    ctl.wait_for_async(
        Duration::from_secs(20),
        POLL,
        || "never ready".into(),
        async || metric(env.http_port, "fanout_ready") == Some(1.0),
    )
    .await;
    ctl.signal("-HUP");
    let log_path = ctl.log.clone();
    ctl.wait_for_async(
        Duration::from_secs(5),
        POLL,
        || "no SIGHUP line".into(),
        async || {
            std::fs::read_to_string(&log_path)
                .is_ok_and(|l| l.contains("the config comes from the environment"))
        },
    )
    .await;
    ctl.assert_running();
    let applied = "fanout_config_reloads_total{result=\"applied\"}";
    assert_eq!(metric(env.http_port, applied), Some(0.0));
    assert_eq!(metric(env.http_port, "fanout_ceiling"), Some(20.0));
    ctl.signal("-TERM");
    let code = ctl.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", ctl.log());
}

/// `[completion_queue]` in `fanout run`: EventBridge's status-change events
/// (put on the queue here, as the rule would; moto emits none) free their
/// execution's capacity long before a reconcile would, and another state
/// machine's event frees nothing. The scripted fake (`tests/rules.rs`)
/// pins the filtering; this pins `run`'s wiring of the queue on SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_events_free_capacity_before_a_reconcile() {
    let _serial = SERIAL.lock().await;
    let env = Env::new(30).await;
    let events = create_queue(&env.aws, "events", None).await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    assert!(text.contains("\nreconcile_interval_secs = 1\n"));
    // Only the first reconcile runs in this test: what lowers the running
    // count is the events.
    let text = text.replace(
        "\nreconcile_interval_secs = 1\n",
        "\nreconcile_interval_secs = 600\n",
    ) + &format!("\n[completion_queue]\nurl = \"{events}\"\n");
    std::fs::write(&env.config, text).unwrap();
    env.enqueue_bulk(3);
    let mut ctl = env.start("completions");
    let port = env.http_port;
    until(&mut ctl, port, "fanout_starts_total", 3.0, 30).await;
    until(&mut ctl, port, "fanout_running_executions", 3.0, 10).await;
    let names: Vec<String> = env.executions().await.into_keys().collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let event = |arn: &str, name: &str| {
        format!(
            r#"{{"source":"aws.states","detail-type":"Step Functions Execution Status Change","detail":{{"stateMachineArn":"{arn}","name":"{name}","status":"SUCCEEDED"}}}}"#
        )
    };
    let send = |body: String| {
        env.aws
            .sqs
            .send_message()
            .queue_url(&events)
            .message_body(body)
            .send()
    };
    let other = env.arn.replace("pipeline", "someone-else");
    send(event(&other, &names[0])).await.unwrap();
    until(
        &mut ctl,
        port,
        "fanout_stray_completion_events_total",
        1.0,
        20,
    )
    .await;
    assert_eq!(metric(port, "fanout_running_executions"), Some(3.0));
    send(event(&env.arn, &names[0])).await.unwrap();
    until(&mut ctl, port, "fanout_running_executions", 2.0, 20).await;
    ctl.signal("-TERM");
    let code = ctl.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", ctl.log());
}
