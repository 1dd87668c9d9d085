//! A scripted fake of the ports for controller-level tests: queues with a
//! visibility model, StartExecution replies scripted per execution name,
//! and a log of every call with its virtual time (tests run with the tokio
//! clock paused).

#![allow(dead_code)] // each test file uses a part

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fanout::config::Config;
use fanout::control::Policy;
use fanout::controller::{Backends, Controller, RunSummary, Source};
use fanout::ports::{
    ConcurrencyMetrics, ConcurrencySample, EntryFailure, ExecutionPage, Executions, Message,
    NoMetrics, OutgoingMessage, PortError, QueueDepth, StartOutcome, WorkQueue,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// A scripted StartExecution reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    Started,
    Throttled,
    Transient,
    Permanent,
    /// Permanent, code `InvalidName`: about the message, not the service.
    InvalidName,
    /// Never answers (a call stuck for good).
    Hang,
}

/// One call the controller made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Receive {
        queue: String,
        max: usize,
        /// MessageIds handed out.
        got: Vec<String>,
    },
    DeleteBatch {
        queue: String,
        receipts: Vec<String>,
    },
    ChangeVisibility {
        queue: String,
        receipts: Vec<String>,
        visibility: Duration,
    },
    SendBatch {
        queue: String,
        count: usize,
    },
    Start {
        name: String,
        reply: Reply,
    },
    ListRunning,
}

/// A call and when it was made, since the fake was built.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Logged {
    pub at: Duration,
    pub call: Call,
}

#[derive(Debug)]
struct Stored {
    id: String,
    body: String,
    visible_at: Instant,
    receives: u32,
}

#[derive(Debug, Default)]
struct Inner {
    queues: HashMap<String, Vec<Stored>>,
    scripts: HashMap<String, VecDeque<Reply>>,
    default_reply: Option<Reply>,
    running: Vec<String>,
    log: Vec<Logged>,
}

/// The fake account: every handle shares it.
#[derive(Clone)]
pub(crate) struct Fake {
    inner: Arc<Mutex<Inner>>,
    t0: Instant,
}

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

impl Fake {
    pub(crate) fn new() -> Fake {
        Fake {
            inner: Arc::new(Mutex::new(Inner::default())),
            t0: Instant::now(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn record(&self, call: Call) {
        let at = self.t0.elapsed();
        self.inner().log.push(Logged { at, call });
    }

    /// Put `count` messages `{prefix}-{i}` (body `{}`) on `queue`.
    pub(crate) fn fill(&self, queue: &str, prefix: &str, count: usize) {
        let now = Instant::now();
        let mut inner = self.inner();
        let q = inner.queues.entry(queue.to_string()).or_default();
        q.extend((0..count).map(|i| Stored {
            id: format!("{prefix}-{i}"),
            body: "{}".to_string(),
            visible_at: now,
            receives: 0,
        }));
    }

    /// Put one message `id` with `body` on `queue`.
    pub(crate) fn put(&self, queue: &str, id: &str, body: &str) {
        let now = Instant::now();
        let mut inner = self.inner();
        inner
            .queues
            .entry(queue.to_string())
            .or_default()
            .push(Stored {
                id: id.to_string(),
                body: body.to_string(),
                visible_at: now,
                receives: 0,
            });
    }

    /// StartExecution of `name` answers `replies` in turn, then the default.
    pub(crate) fn script(&self, name: &str, replies: &[Reply]) {
        self.inner()
            .scripts
            .insert(name.to_string(), replies.iter().copied().collect());
    }

    /// What StartExecution answers once a name's script is used up
    /// (Started unless set).
    pub(crate) fn default_reply(&self, reply: Reply) {
        self.inner().default_reply = Some(reply);
    }

    /// Every call so far, in order.
    pub(crate) fn log(&self) -> Vec<Logged> {
        self.inner().log.clone()
    }

    /// Messages still on `queue`, visible or not.
    pub(crate) fn left(&self, queue: &str) -> usize {
        self.inner().queues.get(queue).map_or(0, Vec::len)
    }

    pub(crate) fn queue(&self, name: &str) -> FakeQueue {
        self.inner().queues.entry(name.to_string()).or_default();
        FakeQueue {
            name: name.to_string(),
            fake: self.clone(),
        }
    }

    /// Sources in priority order, each with a DLQ named `{name}-dlq`.
    pub(crate) fn backends(&self, queues: &[&str]) -> Backends<FakeQueue, Fake, Fake, NoMetrics> {
        Backends {
            sources: queues
                .iter()
                .map(|n| Source {
                    name: n.to_string(),
                    queue: self.queue(n),
                    dlq: self.queue(&format!("{n}-dlq")),
                })
                .collect(),
            completions: None,
            executions: self.clone(),
            metrics: self.clone(),
            sink: NoMetrics,
            claims: None,
        }
    }

    /// Receive one message now, without the controller (for tests of the
    /// fake itself).
    fn try_receive(&self, queue: &str, max: usize, visibility: Duration) -> Vec<Message> {
        let now = Instant::now();
        let mut inner = self.inner();
        let q = inner.queues.entry(queue.to_string()).or_default();
        let mut out = Vec::new();
        for m in q.iter_mut().filter(|m| m.visible_at <= now).take(max) {
            m.visible_at = now + visibility;
            m.receives += 1;
            out.push(Message {
                id: m.id.clone(),
                receipt: format!("{}#{}", m.id, m.receives),
                body: m.body.clone(),
                receive_count: m.receives,
            });
        }
        out
    }
}

/// The MessageId a receipt was handed out for.
pub(crate) fn id_of(receipt: &str) -> &str {
    receipt.split('#').next().unwrap_or(receipt)
}

/// Run a controller over `fake` for `secs` of virtual time, then shut it
/// down.
pub(crate) async fn run_for(fake: &Fake, cfg: Config, queues: &[&str], secs: u64) -> RunSummary {
    let ctl = Controller::new(cfg, Policy::Adaptive, fake.backends(queues), 1).unwrap();
    let (tx, rx) = watch::channel(false);
    let stop = async {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        tx.send_replace(true);
    };
    let (summary, ()) = tokio::join!(ctl.run(rx), stop);
    summary
}

/// A FIFO-ish SQS queue of the fake.
pub(crate) struct FakeQueue {
    name: String,
    fake: Fake,
}

impl WorkQueue for FakeQueue {
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, PortError> {
        let mut got = self.fake.try_receive(&self.name, max, visibility);
        if got.is_empty() && !wait.is_zero() {
            tokio::time::sleep(wait).await;
            got = self.fake.try_receive(&self.name, max, visibility);
        }
        self.fake.record(Call::Receive {
            queue: self.name.clone(),
            max,
            got: got.iter().map(|m| m.id.clone()).collect(),
        });
        Ok(got)
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<Vec<EntryFailure>, PortError> {
        self.fake.record(Call::DeleteBatch {
            queue: self.name.clone(),
            receipts: receipts.to_vec(),
        });
        let mut inner = self.fake.inner();
        let q = inner.queues.entry(self.name.clone()).or_default();
        q.retain(|m| !receipts.iter().any(|r| id_of(r) == m.id));
        Ok(Vec::new())
    }

    async fn change_visibility_batch(
        &self,
        receipts: &[String],
        visibility: Duration,
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.fake.record(Call::ChangeVisibility {
            queue: self.name.clone(),
            receipts: receipts.to_vec(),
            visibility,
        });
        let until = Instant::now() + visibility;
        let mut inner = self.fake.inner();
        let q = inner.queues.entry(self.name.clone()).or_default();
        for m in q
            .iter_mut()
            .filter(|m| receipts.iter().any(|r| id_of(r) == m.id))
        {
            m.visible_at = until;
        }
        Ok(Vec::new())
    }

    async fn send_batch(
        &self,
        entries: &[OutgoingMessage],
    ) -> Result<Vec<EntryFailure>, PortError> {
        self.fake.record(Call::SendBatch {
            queue: self.name.clone(),
            count: entries.len(),
        });
        Ok(Vec::new())
    }

    async fn depth(&self) -> Result<QueueDepth, PortError> {
        let inner = self.fake.inner();
        let now = Instant::now();
        let q = inner.queues.get(&self.name).map_or(&[][..], Vec::as_slice);
        let visible = q.iter().filter(|m| m.visible_at <= now).count() as u64;
        Ok(QueueDepth {
            visible,
            in_flight: q.len() as u64 - visible,
            delayed: 0,
        })
    }
}

fn error(reply: Reply) -> PortError {
    let (service, code) = ("states", format!("{reply:?}"));
    match reply {
        Reply::Throttled => PortError::Throttled { service, code },
        Reply::Transient => PortError::Transient {
            service,
            code,
            message: "scripted".into(),
        },
        _ => PortError::Permanent {
            service,
            code,
            message: "scripted".into(),
        },
    }
}

impl Executions for Fake {
    async fn start(&self, name: &str, _input: &str) -> Result<StartOutcome, PortError> {
        let reply = {
            let mut inner = self.inner();
            let scripted = inner.scripts.get_mut(name).and_then(VecDeque::pop_front);
            let reply = scripted.or(inner.default_reply).unwrap_or(Reply::Started);
            if reply == Reply::Started {
                inner.running.push(name.to_string());
            }
            reply
        };
        self.record(Call::Start {
            name: name.to_string(),
            reply,
        });
        match reply {
            Reply::Started => Ok(StartOutcome::Started),
            Reply::Hang => std::future::pending().await,
            other => Err(error(other)),
        }
    }

    async fn input_matches(&self, _name: &str, _input: &str) -> Result<bool, PortError> {
        Ok(true)
    }

    async fn list_running(&self, _next: Option<String>) -> Result<ExecutionPage, PortError> {
        self.record(Call::ListRunning);
        Ok(ExecutionPage {
            names: self.inner().running.clone(),
            next_token: None,
        })
    }
}

impl ConcurrencyMetrics for Fake {
    fn now_s(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    async fn samples_since(&self, _since_s: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        Ok(Vec::new())
    }
}
