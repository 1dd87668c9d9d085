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
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::controller::Snapshot;
use crate::metrics::{Counter, Gauge, Progress, escape_label_value};
use crate::ports::MetricsSink;

/// `/healthz` fails when the last snapshot is older than this: the
/// admission loop publishes after every decision, at least every tick or
/// long poll, and a start being retried after every answered call (a
/// throttle included), so a minute of silence means nothing progresses.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// Connections the HTTP server serves at once. More wait in the listen
/// backlog until one ends, so a flood of idle clients cannot take the file
/// handles the AWS clients need.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection that sends no whole request head this long after it opened
/// (or after its last response) is closed: a slowloris client, or an idle
/// one, gives its slot back.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the HTTP server never started.
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
    /// queue → seconds until its backlog is expected done.
    etas: BTreeMap<String, f64>,
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

    /// Record the controller's latest snapshot (and that it is alive: a
    /// heartbeat sends the same snapshot again).
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
                Err("stalled: no admission decision and no StartExecution answer for over 60 s")
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
        for (q, eta) in &i.etas {
            out.push((format!("backlog_eta_seconds_{q}"), *eta));
        }
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
            let r = escape_label_value(r);
            let _ = writeln!(out, "fanout_config_reloads_total{{result=\"{r}\"}} {n}");
        }
        if !i.depths.is_empty() {
            out.push_str("# HELP fanout_queue_messages Approximate messages per queue and state.\n# TYPE fanout_queue_messages gauge\n");
            for ((q, st), n) in &i.depths {
                let (q, st) = (escape_label_value(q), escape_label_value(st));
                let _ = writeln!(
                    out,
                    "fanout_queue_messages{{queue=\"{q}\",state=\"{st}\"}} {n}"
                );
            }
        }
        if !i.etas.is_empty() {
            out.push_str("# HELP fanout_backlog_eta_seconds Seconds until the queue's backlog is expected done: everything ahead of it in priority order and itself started at fanout_completions_per_second, plus a mean lifetime (0: nothing left).\n# TYPE fanout_backlog_eta_seconds gauge\n");
            for (q, eta) in &i.etas {
                let q = escape_label_value(q);
                let _ = writeln!(out, "fanout_backlog_eta_seconds{{queue=\"{q}\"}} {eta:.0}");
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
    fn progress(&self, p: &Progress) {
        let mut i = self.lock();
        for q in &p.queues {
            i.etas.insert(q.queue.clone(), q.eta_s);
        }
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

/// Serve /healthz and /metrics until `stop` resolves, then let the open
/// connections finish. Up to [`MAX_CONNECTIONS`] at once, each closed if
/// it sends no whole request head within [`HEADER_READ_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    t: Telemetry,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(t);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing, closed) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        // A slot before the accept: over the limit, clients wait in the
        // listen backlog, holding no file handle of ours.
        let slot = tokio::select! {
            () = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file handles, most likely: wait for some to free.
                    warn!(error = %e, "HTTP server: accept failed; retrying in 1 s");
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        tokio::spawn(connection(stream, app.clone(), slot, closed.clone()));
    }
    let _ = closing.send(true);
    // Each connection holds a slot until it ends: all slots back, all done.
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}

/// One HTTP/1.1 connection, holding `_slot` until it ends; on `closing`, it
/// finishes the request in hand and closes.
async fn connection(
    stream: TcpStream,
    app: Router,
    _slot: OwnedSemaphorePermit,
    mut closing: watch::Receiver<bool>,
) {
    let mut builder = http1::Builder::new();
    // The timer runs on tokio's clock; the timeout also ends idle
    // keep-alive connections (hyper re-arms it after each response).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { closing.wait_for(|c| *c).await.is_ok() } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and clients that hang up: theirs to fix, not ours.
        debug!(error = %e, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::QueueProgress;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A server on an ephemeral loopback port, healthy.
    async fn server() -> SocketAddr {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t = Telemetry::new(20);
        t.set_snapshot(Snapshot {
            ready: true,
            ..Snapshot::default()
        });
        tokio::spawn(serve(listener, t, std::future::pending()));
        addr
    }

    fn request(method: &str, path: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: fanout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    }

    /// The status line of one request on its own connection.
    async fn status_of(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request(method, path).as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        text.lines().next().unwrap_or("").to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_server_with_an_idle_connection_open() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Telemetry::new(20), async {
            let _ = rx.await;
        }));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("the server still runs 1 s after stop")
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(idle.read(&mut buf).await.unwrap(), 0, "closed");
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_wrong_methods_405() {
        let addr = server().await;
        assert_eq!(status_of(addr, "GET", "/healthz").await, "HTTP/1.1 200 OK");
        assert_eq!(status_of(addr, "GET", "/metrics").await, "HTTP/1.1 200 OK");
        assert_eq!(
            status_of(addr, "GET", "/nope").await,
            "HTTP/1.1 404 Not Found"
        );
        for (method, path) in [("POST", "/healthz"), ("DELETE", "/metrics")] {
            assert_eq!(
                status_of(addr, method, path).await,
                "HTTP/1.1 405 Method Not Allowed",
                "{method} {path}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stalls_mid_head_is_disconnected() {
        let addr = server().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: fan")
            .await
            .unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a client stalled mid-head is still connected after 60 s: {read:?}"
        );
        assert!(t0.elapsed() >= HEADER_READ_TIMEOUT, "{:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_over_the_limit_wait_and_healthz_answers_once_one_ends() {
        let addr = server().await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = TcpStream::connect(addr).await.unwrap();
        extra
            .write_all(request("GET", "/healthz").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let early = tokio::time::timeout(Duration::from_secs(2), extra.read_to_end(&mut buf)).await;
        assert!(
            early.is_err(),
            "connection {} was served while {MAX_CONNECTIONS} were held open: {:?}",
            MAX_CONNECTIONS + 1,
            String::from_utf8_lossy(&buf)
        );
        drop(idle.pop());
        tokio::time::timeout(Duration::from_secs(1), extra.read_to_end(&mut buf))
            .await
            .expect("no answer after a connection ended")
            .unwrap();
        assert!(
            buf.starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }

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
    fn the_backlog_eta_is_a_series_per_queue_with_the_rate_it_assumes() {
        let t = Telemetry::new(20);
        let text = t.render();
        assert!(!text.contains("fanout_backlog_eta_seconds{"), "{text}");
        assert!(text.contains("fanout_completions_per_second 0\n"), "{text}");
        t.gauge(Gauge::CompletionsPerSecond, 118.5);
        t.progress(&Progress {
            rate_per_s: 118.5,
            rate_source: "target/lifetime",
            queues: vec![
                QueueProgress {
                    queue: "priority".into(),
                    left: 0,
                    eta_s: 0.0,
                },
                QueueProgress {
                    queue: "bulk".into(),
                    left: 153_212,
                    eta_s: 1_432.6,
                },
            ],
        });
        let text = t.render();
        for needle in [
            "# TYPE fanout_backlog_eta_seconds gauge\n",
            "fanout_backlog_eta_seconds{queue=\"bulk\"} 1433\n",
            "fanout_backlog_eta_seconds{queue=\"priority\"} 0\n",
            "fanout_completions_per_second 118.5\n",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        let values = t.values();
        assert!(values.contains(&("backlog_eta_seconds_bulk".to_string(), 1_432.6)));
    }

    #[test]
    fn queue_names_are_escaped_in_labels() {
        let t = Telemetry::new(20);
        t.set_depth("a\\b\"c\nd", "visible", 7);
        let text = t.render();
        assert!(
            text.contains("fanout_queue_messages{queue=\"a\\\\b\\\"c\\nd\",state=\"visible\"} 7\n"),
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
