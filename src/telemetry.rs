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
use crate::metrics::{Counter, Gauge};
use crate::ports::MetricsSink;

/// `/healthz` fails when the admission snapshot is older than this: the
/// admission loop publishes after every decision, at least every tick or
/// long poll, so a minute of silence means it is stuck.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// Why the HTTP server stopped or never started.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} (config http.listen): {source}")]
    Bind {
        /// The address from `http.listen`.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("HTTP server on {addr} failed: {source}")]
    Serve {
        /// The address from `http.listen`.
        addr: String,
        /// The I/O error.
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

#[derive(Default)]
struct Inner {
    gauges: [f64; Gauge::ALL.len()],
    /// Present from the start, so rate() and alerts see a 0, not a gap.
    counters: [u64; Counter::ALL.len()],
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
    /// An empty registry reporting `ceiling`; not healthy until the first
    /// snapshot.
    pub fn new(ceiling: u32) -> Telemetry {
        let mut inner = Inner::default();
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
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record the controller's latest snapshot (and that it is alive).
    pub fn set_snapshot(&self, s: Snapshot) {
        let mut i = self.lock();
        i.snapshot = s;
        i.updated = Some(Instant::now());
    }

    /// Set a queue's approximate message count in one state (`visible`,
    /// `in_flight`, `delayed`, `dead_letter`).
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
        let mut out: Vec<(String, f64)> = Gauge::ALL
            .iter()
            .map(|g| (g.name().to_string(), i.gauges[g.index()]))
            .collect();
        out.extend(
            Counter::ALL
                .iter()
                .map(|c| (c.name().to_string(), i.counters[c.index()] as f64)),
        );
        out.push(("ceiling".into(), f64::from(i.ceiling)));
        for (r, n) in &i.reloads {
            out.push((format!("config_reloads_{r}"), *n as f64));
        }
        out
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let i = self.lock();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP fanout_{name} {help}\n# TYPE fanout_{name} gauge\nfanout_{name} {v}"
            );
        };
        for g in Gauge::ALL {
            gauge(g.name(), g.help(), i.gauges[g.index()]);
        }
        gauge(
            "ceiling",
            "Configured Lambda concurrency ceiling (as of the last config reload).",
            f64::from(i.ceiling),
        );
        gauge(
            "ready",
            "1 once the first reconcile succeeded.",
            f64::from(u8::from(i.snapshot.ready)),
        );
        for c in Counter::ALL {
            let (name, v) = (c.name(), i.counters[c.index()]);
            let _ = writeln!(
                out,
                "# HELP fanout_{name}_total {}\n# TYPE fanout_{name}_total counter\nfanout_{name}_total {v}",
                c.help()
            );
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
    fn gauge(&self, gauge: Gauge, value: f64) {
        self.lock().gauges[gauge.index()] = value;
    }
    fn count(&self, counter: Counter, n: u64) {
        self.lock().counters[counter.index()] += n;
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
        t.count(Counter::Deletes, 3);
        t.count(Counter::StartThrottles, 1);
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

    #[test]
    fn every_metric_is_exported_from_the_start_with_its_help() {
        let t = Telemetry::new(20);
        let text = t.render();
        for g in Gauge::ALL {
            let n = g.name();
            assert!(
                text.contains(&format!("# HELP fanout_{n} {}\n", g.help())),
                "{n}"
            );
            assert!(
                text.contains(&format!("# TYPE fanout_{n} gauge\nfanout_{n} 0\n")),
                "{n}"
            );
        }
        for c in Counter::ALL {
            let n = c.name();
            assert!(
                text.contains(&format!("# HELP fanout_{n}_total {}\n", c.help())),
                "{n}"
            );
            assert!(
                text.contains(&format!(
                    "# TYPE fanout_{n}_total counter\nfanout_{n}_total 0\n"
                )),
                "{n}"
            );
        }
        let published: Vec<String> = t.values().into_iter().map(|(n, _)| n).collect();
        for n in Gauge::ALL
            .iter()
            .map(|g| g.name())
            .chain(Counter::ALL.iter().map(|c| c.name()))
        {
            assert!(
                published.iter().any(|p| p == n),
                "{n} not published to CloudWatch"
            );
        }
    }
}
