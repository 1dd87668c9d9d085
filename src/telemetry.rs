//! Observability of `fanout run`: JSON logs, a Prometheus registry that is
//! the controller's `MetricsSink`, and the HTTP server with `/healthz` and
//! `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::controller::Snapshot;
use crate::ports::MetricsSink;

/// `/healthz` fails when the admission snapshot is older than this: the
/// admission loop publishes after every decision, at least every tick or
/// long poll, so a minute of silence means it is stuck.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on {addr} (config http.listen): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        addr: String,
        source: std::io::Error,
    },
}

/// JSON log lines on stdout; `RUST_LOG` filters (default `info`).
pub fn init_json_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(std::io::stdout)
        .init();
}

/// The controller's counters (see `Controller`'s `MetricsSink` calls).
const COUNTERS: [&str; 10] = [
    "deletes",
    "dead_lettered",
    "start_throttles",
    "start_errors_transient",
    "start_errors_permanent",
    "receive_errors",
    "delete_failures",
    "reconciles",
    "reconcile_failures",
    "metric_errors",
];

#[derive(Default)]
struct Inner {
    gauges: BTreeMap<&'static str, f64>,
    counters: BTreeMap<&'static str, u64>,
    /// (queue, state) → messages.
    depths: BTreeMap<(String, &'static str), u64>,
    snapshot: Snapshot,
    updated: Option<Instant>,
    /// The ceiling in force (it changes on a config reload).
    ceiling: u32,
    /// Config reloads by result: "applied", "refused".
    reloads: BTreeMap<&'static str, u64>,
}

/// The results counted by `fanout_config_reloads_total{result}`.
pub const RELOAD_RESULTS: [&str; 2] = ["applied", "refused"];

/// The metrics registry and health state, cheap to clone.
#[derive(Clone, Default)]
pub struct Telemetry {
    inner: Arc<Mutex<Inner>>,
}

impl Telemetry {
    pub fn new(ceiling: u32) -> Telemetry {
        let mut inner = Inner::default();
        // Present from the start, so rate() and alerts see a 0, not a gap.
        for name in COUNTERS {
            inner.counters.insert(name, 0);
        }
        for r in RELOAD_RESULTS {
            inner.reloads.insert(r, 0);
        }
        inner.ceiling = ceiling;
        Telemetry {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// The ceiling of a reloaded config.
    pub fn set_ceiling(&self, ceiling: u32) {
        self.lock().ceiling = ceiling;
    }

    /// Count a config reload: `applied` or `refused`.
    pub fn reloaded(&self, applied: bool) {
        let r = if applied { "applied" } else { "refused" };
        *self.lock().reloads.entry(r).or_insert(0) += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record the controller's latest snapshot (and that it is alive).
    pub fn set_snapshot(&self, s: Snapshot) {
        let mut i = self.lock();
        i.snapshot = s;
        i.updated = Some(Instant::now());
    }

    pub fn set_depth(&self, queue: &str, state: &'static str, n: u64) {
        self.lock().depths.insert((queue.to_string(), state), n);
    }

    /// Ready once the first reconcile succeeded, and the snapshot is fresh.
    pub fn health(&self) -> Result<(), &'static str> {
        let i = self.lock();
        match i.updated {
            None => Err("starting: no admission decision yet"),
            Some(_) if !i.snapshot.ready => Err("not ready: first reconcile pending"),
            Some(t) if t.elapsed() > STALL_AFTER => {
                Err("stalled: admission has not decided for over 60 s")
            }
            Some(_) => Ok(()),
        }
    }

    /// Every gauge and counter as (name, value), for PutMetricData.
    pub fn values(&self) -> Vec<(String, f64)> {
        let i = self.lock();
        let mut out: Vec<(String, f64)> =
            i.gauges.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        out.extend(i.counters.iter().map(|(k, v)| (k.to_string(), *v as f64)));
        out.push(("ceiling".into(), i.ceiling as f64));
        for (r, n) in &i.reloads {
            out.push((format!("config_reloads_{r}"), *n as f64));
        }
        out.push(("started".into(), i.snapshot.summary.started as f64));
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let i = self.lock();
        let s = &i.snapshot;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP fanout_{name} {help}\n# TYPE fanout_{name} gauge\nfanout_{name} {v}"
            );
        };
        gauge(
            "running_executions",
            "Executions running (ours and others), as of the last decision.",
            s.running as f64,
        );
        gauge(
            "in_hand",
            "Messages received and not yet settled.",
            s.in_hand as f64,
        );
        gauge(
            "budget",
            "Messages admission may receive now.",
            s.budget as f64,
        );
        gauge(
            "target_running",
            "Running executions the ceiling allows.",
            s.target as f64,
        );
        gauge(
            "lambdas_per_execution",
            "Learned Lambda concurrency per execution (k).",
            s.k,
        );
        gauge(
            "ceiling",
            "Configured Lambda concurrency ceiling (as of the last config reload).",
            i.ceiling as f64,
        );
        gauge(
            "ready",
            "1 once the first reconcile succeeded.",
            u8::from(s.ready) as f64,
        );
        for (name, v) in &i.gauges {
            if !matches!(
                *name,
                "running_executions"
                    | "budget"
                    | "target_running"
                    | "lambdas_per_execution"
                    | "in_hand"
            ) {
                gauge(name, "Controller gauge.", *v);
            }
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP fanout_{name}_total {help}\n# TYPE fanout_{name}_total counter\nfanout_{name}_total {v}"
            );
        };
        let sum = &s.summary;
        counter("starts", "Executions started.", sum.started);
        counter(
            "already_existed",
            "Starts answered ExecutionAlreadyExists.",
            sum.already_existed,
        );
        counter(
            "released",
            "Messages handed back to their queue.",
            sum.released,
        );
        counter(
            "requeued",
            "Messages handed back with a delay.",
            sum.requeued,
        );
        for (name, v) in &i.counters {
            let help = match *name {
                "deletes" => "Messages deleted after their start was confirmed.",
                "start_throttles" => "StartExecution calls throttled.",
                "dead_lettered" => "Unstartable messages moved to a DLQ.",
                n if n.ends_with("errors") || n.contains("errors_") || n.ends_with("failures") => {
                    "Errors of this kind."
                }
                _ => "Controller counter.",
            };
            counter(name, help, *v);
        }
        out.push_str("# HELP fanout_config_reloads_total Config reloads (SIGHUP, file change) by result.\n# TYPE fanout_config_reloads_total counter\n");
        for (r, n) in &i.reloads {
            let _ = writeln!(out, "fanout_config_reloads_total{{result=\"{r}\"}} {n}");
        }
        if !i.depths.is_empty() {
            out.push_str("# HELP fanout_queue_messages Approximate messages per queue and state.\n# TYPE fanout_queue_messages gauge\n");
            for ((q, st), n) in &i.depths {
                let _ = writeln!(
                    out,
                    "fanout_queue_messages{{queue=\"{q}\",state=\"{st}\"}} {n}"
                );
            }
        }
        out
    }
}

impl MetricsSink for Telemetry {
    fn gauge(&self, name: &'static str, value: f64) {
        self.lock().gauges.insert(name, value);
    }
    fn count(&self, name: &'static str, value: u64) {
        *self.lock().counters.entry(name).or_insert(0) += value;
    }
}

async fn healthz(State(t): State<Telemetry>) -> impl IntoResponse {
    match t.health() {
        Ok(()) => (StatusCode::OK, "ok\n"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(t): State<Telemetry>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        t.render(),
    )
}

/// Bind the HTTP server's address (fails early, before the controller).
pub async fn bind(addr: &str) -> Result<TcpListener, TelemetryError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Serve /healthz and /metrics until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    t: Telemetry,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(t);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|source| TelemetryError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn health_needs_ready_and_a_fresh_snapshot() {
        let t = Telemetry::new(20);
        assert!(t.health().is_err());
        t.set_snapshot(Snapshot::default());
        assert_eq!(t.health(), Err("not ready: first reconcile pending"));
        t.set_snapshot(Snapshot {
            ready: true,
            ..Snapshot::default()
        });
        assert_eq!(t.health(), Ok(()));
        tokio::time::advance(STALL_AFTER + Duration::from_secs(1)).await;
        assert!(t.health().unwrap_err().starts_with("stalled"));
    }

    #[test]
    fn render_has_the_core_series() {
        let t = Telemetry::new(20);
        t.count("deletes", 3);
        t.count("start_throttles", 1);
        t.set_depth("bulk", "visible", 7);
        t.reloaded(false);
        let text = t.render();
        for needle in [
            "fanout_running_executions 0",
            "fanout_ceiling 20",
            "fanout_deletes_total 3",
            "fanout_start_throttles_total 1",
            "fanout_starts_total 0",
            "fanout_queue_messages{queue=\"bulk\",state=\"visible\"} 7",
            "fanout_config_reloads_total{result=\"applied\"} 0",
            "fanout_config_reloads_total{result=\"refused\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        t.set_ceiling(12);
        t.reloaded(true);
        let text = t.render();
        assert!(text.contains("fanout_ceiling 12\n"), "{text}");
        assert!(
            text.contains("fanout_config_reloads_total{result=\"applied\"} 1"),
            "{text}"
        );
    }
}
