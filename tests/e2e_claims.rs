//! Two controllers at once, end to end on the moto emulator: two `fanout
//! run` processes of the real binary, started at the same moment with the
//! same queue, state machine and ceiling, share that ceiling through the
//! claim record of `[coordination] table` (DynamoDB, conditional PutItem).
//! A client of the test polls ListExecutions(RUNNING) every 200 ms and the
//! record beside it: the running count never exceeds what one controller
//! alone would keep (ceiling / max_lambdas_per_execution), both processes
//! hold a part in the record, the parts never sum above the ceiling, and
//! after SIGTERM every message is either started once or back on the queue.
//! The same run without the table follows as a contrast, and shows that the
//! client sees an overshoot when there is one: both controllers' first
//! reconciles find nothing running and each fills the whole ceiling (38
//! RUNNING of 20 within about a second, in every run so far).
//!
//! 127.0.0.1 only: its own `moto_server` from `<repo>/.venv` (installed by
//! `scripts/test.sh`) per run, killed when done.

#[allow(dead_code)] // the other end-to-end tests use the rest
mod support {
    pub(crate) mod moto;
}

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_sfn::types::ExecutionStatus;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use support::moto::{BIN, Fanout, Moto, child_env, free_port, sdk_config};

/// Lambda concurrency the two controllers share.
const CEILING: usize = 20;
/// `max_lambdas_per_execution`: moto runs no Lambda, so one per execution
/// and the ceiling is the number of RUNNING executions.
const K: f64 = 1.0;
/// Companies enqueued: more than the window drains at the ceiling (an
/// execution waits `LIFETIME_SECS`), so both controllers want the whole
/// ceiling throughout.
const MESSAGES: usize = 200;
const LIFETIME_SECS: u32 = 3;
const TABLE: &str = "fanout-claims";

/// The bound one controller alone keeps.
fn bound() -> usize {
    (CEILING as f64 / K).floor() as usize
}

/// One emulator with the queues, the state machine (a Wait of
/// `LIFETIME_SECS`, so executions stay RUNNING that long) and, for a
/// coordinated run, the claim table.
struct World {
    moto: Moto,
    sqs: aws_sdk_sqs::Client,
    sfn: aws_sdk_sfn::Client,
    ddb: aws_sdk_dynamodb::Client,
    dir: tempfile::TempDir,
    bulk: String,
    bulk_dlq: String,
    arn: String,
}

impl World {
    async fn new(coordinated: bool) -> World {
        let moto = Moto::start();
        let conf = sdk_config(&moto.endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&conf);
        let sfn = aws_sdk_sfn::Client::new(&conf);
        let ddb = aws_sdk_dynamodb::Client::new(&conf);
        let bulk_dlq = create_queue(&sqs, "bulk-dlq", None).await;
        let bulk = create_queue(&sqs, "bulk", Some(&bulk_dlq)).await;
        let definition = format!(
            r#"{{"StartAt":"Work","States":{{"Work":{{"Type":"Wait","Seconds":{LIFETIME_SECS},"Next":"Done"}},"Done":{{"Type":"Succeed"}}}}}}"#
        );
        let arn = support::moto::state_machine(&sfn, &definition).await;
        if coordinated {
            create_table(&ddb).await;
        }
        World {
            moto,
            sqs,
            sfn,
            ddb,
            dir: tempfile::tempdir().unwrap(),
            bulk,
            bulk_dlq,
            arn,
        }
    }

    /// A config like config/local.toml for a controller serving /healthz
    /// on `http_port`, with `[coordination]` when `coordinated`.
    fn config(&self, tag: &str, http_port: u16, coordinated: bool) -> PathBuf {
        let mut text = format!(
            r#"
[controller]
ceiling = {CEILING}
max_lambdas_per_execution = {K:.1}
ramp_initial = {CEILING}.0
tick_ms = 100
reconcile_interval_secs = 1
list_grace_secs = 1
idle_wait_secs = 1
visibility_timeout_secs = 30
metrics_poll_secs = 60
shutdown_deadline_secs = 10

[naming]
template = "co-{{company_id}}-{{hash}}"

[[queues]]
name = "bulk"
url = "{bulk}"
dlq_url = "{dlq}"

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
state_machine_arn = "{arn}"
functions = []

[http]
listen = "127.0.0.1:{http_port}"

[metrics]
cloudwatch = false

[reload]
watch_file = false
"#,
            bulk = self.bulk,
            dlq = self.bulk_dlq,
            endpoint = self.moto.endpoint,
            arn = self.arn,
        );
        if coordinated {
            // renew_secs and ttl_secs keep their defaults (2 s, 45 s).
            let _ = writeln!(text, "\n[coordination]\ntable = \"{TABLE}\"");
        }
        let path = self.dir.path().join(format!("fanout-{tag}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Enqueue companies `c0001..` through `fanout enqueue --file`.
    fn enqueue(&self, config: &std::path::Path) {
        let csv = self.dir.path().join("companies.csv");
        let mut text = String::from("company_id,region\n");
        for c in companies() {
            let _ = writeln!(text, "{c},eu");
        }
        std::fs::write(&csv, text).unwrap();
        let out = child_env(&mut Command::new(BIN))
            .args(["enqueue", "--config", config.to_str().unwrap()])
            .args(["--file", csv.to_str().unwrap()])
            .output()
            .expect("cannot run fanout enqueue");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("sent: {MESSAGES}")),
            "enqueue failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Names of the executions with `status` (all when None).
    async fn executions(&self, status: Option<ExecutionStatus>) -> Vec<String> {
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .sfn
                .list_executions()
                .state_machine_arn(&self.arn)
                .set_status_filter(status.clone())
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            names.extend(page.executions().iter().map(|e| e.name().to_string()));
            match page.next_token() {
                Some(t) => token = Some(t.to_string()),
                None => return names,
            }
        }
    }

    /// The claim record as stored: (version, `record` parsed), if written.
    async fn claims(&self) -> Option<(String, serde_json::Value)> {
        let out = self
            .ddb
            .get_item()
            .table_name(TABLE)
            .key("pk", AttributeValue::S(self.arn.clone()))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        let item = out.item?;
        let version = item["version"].as_n().expect("numeric version").clone();
        let record = item["record"].as_s().expect("string record");
        Some((
            version,
            serde_json::from_str(record).expect("record is JSON"),
        ))
    }

    /// (visible, not visible) messages of a queue.
    async fn depth(&self, url: &str) -> (u64, u64) {
        let out = self
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

    /// Receive everything left on the bulk queue: the company ids.
    async fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let r = self
                .sqs
                .receive_message()
                .queue_url(&self.bulk)
                .max_number_of_messages(10)
                .visibility_timeout(300)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .unwrap();
            if r.messages().is_empty() {
                return out;
            }
            for m in r.messages() {
                let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
                out.push(v["company_id"].as_str().unwrap().to_string());
            }
        }
    }
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str, dlq: Option<&str>) -> String {
    let mut req = sqs.create_queue().queue_name(name);
    if let Some(dlq) = dlq {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        let arn = &attrs.attributes().unwrap()[&QueueAttributeName::QueueArn];
        req = req.attributes(
            QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"3"}}"#),
        );
    }
    req.send().await.unwrap().queue_url().unwrap().to_string()
}

/// The claim table as deploy/fanout.yaml creates it: `pk` (S) as the hash
/// key, on demand.
async fn create_table(ddb: &aws_sdk_dynamodb::Client) {
    ddb.create_table()
        .table_name(TABLE)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
}

fn companies() -> BTreeSet<String> {
    (1..=MESSAGES).map(|i| format!("c{i:04}")).collect()
}

/// The company id of an execution named `co-{company_id}-{hash}`.
fn company(name: &str) -> String {
    let rest = name.strip_prefix("co-").expect("the template's prefix");
    rest.rsplit_once('-').expect("ends with the hash").0.into()
}

/// What the test's client saw during the window.
#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    max_running: usize,
    /// Seconds after the start of the first sample above the bound.
    first_over: Option<f64>,
    max_entries: usize,
    max_claimed: f64,
    last_record: Option<(String, serde_json::Value)>,
}

/// Live entries of a record and the sum of their `lambdas`.
fn parts(record: &serde_json::Value) -> (usize, f64) {
    let entries = record["entries"].as_object().expect("record.entries");
    let sum = entries
        .values()
        .map(|e| e["lambdas"].as_f64().expect("entry.lambdas"))
        .sum();
    (entries.len(), sum)
}

/// Poll ListExecutions(RUNNING) (and the claim record when `coordinated`)
/// every 200 ms for `window`, while both processes keep running.
async fn observe(world: &World, runs: &mut [Fanout], window: Duration, coordinated: bool) -> Seen {
    let t0 = Instant::now();
    let mut seen = Seen::default();
    while t0.elapsed() < window {
        for run in runs.iter_mut() {
            run.assert_running();
        }
        let running = world.executions(Some(ExecutionStatus::Running)).await.len();
        seen.samples += 1;
        seen.max_running = seen.max_running.max(running);
        if running > bound() && seen.first_over.is_none() {
            seen.first_over = Some(t0.elapsed().as_secs_f64());
        }
        let stored = if coordinated {
            world.claims().await
        } else {
            None
        };
        if let Some(stored) = stored {
            let (n, sum) = parts(&stored.1);
            seen.max_entries = seen.max_entries.max(n);
            seen.max_claimed = seen.max_claimed.max(sum);
            seen.last_record = Some(stored);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// SIGTERM both at once; each exits 0 within the shutdown deadline.
async fn stop(runs: &mut [Fanout]) {
    for run in runs.iter() {
        run.signal("-TERM");
    }
    for run in runs.iter_mut() {
        let code = run.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0), "{}", run.log());
    }
}

/// Every company was started exactly once or is back on the queue, and
/// nothing is left hidden or dead-lettered. Returns (started, queued).
async fn assert_nothing_lost(world: &World) -> (usize, usize) {
    let (visible, hidden) = world.depth(&world.bulk).await;
    assert_eq!(hidden, 0, "messages left in flight after shutdown");
    assert_eq!(world.depth(&world.bulk_dlq).await, (0, 0), "DLQ not empty");
    let names = world.executions(None).await;
    let started: BTreeSet<String> = names.iter().map(|n| company(n)).collect();
    assert_eq!(started.len(), names.len(), "a company started twice");
    let queued = world.drain().await;
    assert_eq!(queued.len() as u64, visible);
    let queued: BTreeSet<String> = queued.into_iter().collect();
    let all: BTreeSet<String> = started.union(&queued).cloned().collect();
    let lost: Vec<_> = companies().difference(&all).cloned().collect();
    assert!(lost.is_empty(), "messages lost: {lost:?}");
    let extra: Vec<_> = all.difference(&companies()).cloned().collect();
    assert!(extra.is_empty(), "unexpected executions: {extra:?}");
    (started.len(), queued.len())
}

/// One run: two controllers started together, watched for `window`,
/// stopped; what the client saw.
async fn two_controllers(coordinated: bool, window: Duration) -> (World, Vec<Fanout>, Seen) {
    let world = World::new(coordinated).await;
    let tag = if coordinated { "table" } else { "alone" };
    let configs = [
        world.config(&format!("{tag}-a"), free_port(), coordinated),
        world.config(&format!("{tag}-b"), free_port(), coordinated),
    ];
    world.enqueue(&configs[0]);
    let mut runs: Vec<Fanout> = configs
        .iter()
        .zip(["a", "b"])
        .map(|(c, who)| Fanout::run(c, world.dir.path().join(format!("run-{tag}-{who}.log"))))
        .collect();
    let seen = observe(&world, &mut runs, window, coordinated).await;
    stop(&mut runs).await;
    (world, runs, seen)
}

fn report(label: &str, seen: &Seen, counts: (usize, usize)) {
    eprintln!(
        "{label}: {} samples, max RUNNING {} (bound {}), first over the bound at {:?} s; \
         started {}, back on the queue {}",
        seen.samples,
        seen.max_running,
        bound(),
        seen.first_over,
        counts.0,
        counts.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_share_one_ceiling_through_the_claim_table() {
    let t0 = Instant::now();
    let (world, runs, seen) = two_controllers(true, Duration::from_secs(20)).await;
    let counts = assert_nothing_lost(&world).await;
    report("with the table", &seen, counts);
    assert!(
        seen.max_running <= bound(),
        "{} executions ran at once, over {} (first at {:?} s)",
        seen.max_running,
        bound(),
        seen.first_over
    );
    assert!(
        seen.max_running >= bound() / 2,
        "the ceiling was hardly used ({} at most): nothing was measured",
        seen.max_running
    );
    let (version, record) = seen.last_record.clone().expect("no claim record written");
    eprintln!(
        "claim record (version {version}, last read before SIGTERM): {record}\n\
         at most {} entries, parts summing at most {} Lambdas; after shutdown: {}",
        seen.max_entries,
        seen.max_claimed,
        world
            .claims()
            .await
            .map_or_else(|| "none".into(), |(v, r)| format!("version {v}: {r}"))
    );
    assert_eq!(
        parts(&record).0,
        2,
        "both controllers hold a part: {record}"
    );
    assert!(
        seen.max_claimed <= CEILING as f64 + 1e-9,
        "parts summed to {} Lambdas, over the ceiling {CEILING}",
        seen.max_claimed
    );
    for run in &runs {
        let log = run.log();
        assert!(
            log.contains("claimed a part of the ceiling in the shared record"),
            "{log}"
        );
    }
    assert!(counts.0 > 0, "nothing started");
    drop((world, runs));
    let with_table = t0.elapsed();

    // The contrast: no table, each controller alone until a reconcile.
    let (world, _runs, seen) = two_controllers(false, Duration::from_secs(8)).await;
    let counts = assert_nothing_lost(&world).await;
    report("without the table", &seen, counts);
    assert!(
        seen.max_running > bound(),
        "without the table two controllers started together stayed within {} \
         ({} at most): the client would not have seen an overshoot either",
        bound(),
        seen.max_running
    );
    eprintln!(
        "wall time: {with_table:?} with the table, {:?} in all",
        t0.elapsed()
    );
}
