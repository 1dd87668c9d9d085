//! Peak memory of the controller alone while it tracks 20,000 running
//! executions: `cargo run --release --example track_20k`.
//!
//! The backends are minimal fakes, so what this process holds is the
//! controller's: an endless queue (bodies made on demand), a state machine
//! whose executions never finish (ListExecutions pages through all of
//! them), no CloudWatch data (k̂ stays at its maximum, 3). The ceiling is
//! set so the target is just over 20,000 running. Time is virtual (tokio's
//! paused clock), so the run takes seconds. Prints the count tracked and
//! the process's peak RSS (VmHWM).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout::config::{Config, Policy};
use fanout::controller::{Backends, Controller, Source};
use fanout::ports::{
    ConcurrencyMetrics, ConcurrencySample, EntryFailure, ExecutionPage, Executions, Message,
    NoMetrics, OutgoingMessage, PortError, StartOutcome, WorkQueue,
};

const TRACKED: usize = 20_000;

/// A queue that always has work: message `n` is company `c<n>`.
struct Endless {
    next: AtomicU64,
    empty: bool,
}

impl WorkQueue for Endless {
    async fn receive(
        &self,
        max: usize,
        _visibility: Duration,
        _wait: Duration,
    ) -> Result<Vec<Message>, PortError> {
        if self.empty {
            return Ok(Vec::new());
        }
        Ok((0..max)
            .map(|_| {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                Message {
                    id: format!("m-{n:012}"),
                    receipt: format!("r-{n:012}"),
                    body: format!(r#"{{"company_id":"c{n}"}}"#),
                    receive_count: 1,
                }
            })
            .collect())
    }

    async fn delete_batch(&self, _: &[String]) -> Result<Vec<EntryFailure>, PortError> {
        Ok(Vec::new())
    }

    async fn change_visibility_batch(
        &self,
        _: &[String],
        _: Duration,
    ) -> Result<Vec<EntryFailure>, PortError> {
        Ok(Vec::new())
    }

    async fn send_batch(&self, _: &[OutgoingMessage]) -> Result<Vec<EntryFailure>, PortError> {
        Ok(Vec::new())
    }

    async fn depth(&self) -> Result<fanout::ports::QueueDepth, PortError> {
        Ok(fanout::ports::QueueDepth::default())
    }
}

/// Executions start and never finish.
#[derive(Default)]
struct NeverDone {
    names: Mutex<Vec<String>>,
}

impl Executions for NeverDone {
    async fn start(&self, name: &str, _input: &str) -> Result<StartOutcome, PortError> {
        self.names.lock().unwrap().push(name.to_string());
        Ok(StartOutcome::Started)
    }

    async fn input_matches(&self, _: &str, _: &str) -> Result<bool, PortError> {
        Ok(true)
    }

    async fn list_running(&self, next_token: Option<String>) -> Result<ExecutionPage, PortError> {
        let names = self.names.lock().unwrap();
        let from: usize = next_token.and_then(|t| t.parse().ok()).unwrap_or(0);
        let to = (from + 1000).min(names.len());
        Ok(ExecutionPage {
            names: names[from..to].iter().rev().cloned().collect(),
            next_token: (to < names.len()).then(|| to.to_string()),
        })
    }
}

struct NoData;

impl ConcurrencyMetrics for NoData {
    fn now_s(&self) -> f64 {
        0.0
    }

    async fn samples_since(&self, _: u64) -> Result<Vec<ConcurrencySample>, PortError> {
        Ok(Vec::new())
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut cfg = Config::default();
        // k̂ stays at 3: 61,000 × 0.99 / 3 = 20,130 running.
        cfg.controller.ceiling = 61_000;
        cfg.controller.ramp_initial = 61_000.0;
        cfg.controller.ramp_concurrency_per_s = 10_000.0;
        cfg.controller.list_pages_per_s = 50;
        let queue = |empty| Endless {
            next: AtomicU64::new(0),
            empty,
        };
        let backends = Backends {
            sources: vec![Source {
                name: "bulk".into(),
                queue: queue(false),
                dlq: queue(true),
            }],
            completions: None,
            executions: NeverDone::default(),
            metrics: NoData,
            sink: NoMetrics,
            claims: None,
        };
        let ctl = Controller::new(cfg, Policy::Adaptive, backends, 1).expect("controller");
        let snaps = ctl.subscribe();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let watch = async {
            // Keep tracking the full count for a while: several reconciles.
            let mut full_since = None;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let running = snaps.borrow().running;
                if running >= TRACKED {
                    let t = *full_since.get_or_insert(tokio::time::Instant::now());
                    if t.elapsed() >= Duration::from_secs(120) {
                        break running;
                    }
                }
            }
        };
        let run = ctl.run(stopped);
        tokio::pin!(run);
        let running = tokio::select! {
            r = watch => r,
            _ = &mut run => unreachable!("the controller stopped by itself"),
        };
        stop.send_replace(true);
        run.await;
        match peak_rss_kib() {
            Some(kib) => println!(
                "tracked {running} running executions; peak RSS {:.1} MiB",
                kib as f64 / 1024.0
            ),
            None => println!("tracked {running} running executions; peak RSS unknown (no /proc)"),
        }
    });
}
