//! `fanout status --watch`: the status read again every interval. In a
//! terminal the view is redrawn in place with a bar of the Lambda
//! concurrency against the ceiling; otherwise each refresh is a plain block
//! of lines (no escape codes), for a log or a pipe. A failed read is shown
//! and the next one tried: a blip must not end the view. SIGINT (Ctrl-C)
//! and SIGTERM end it with exit code 0.

use std::io::Write;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::{Status, StatusError, eta, status_with, unix_now};
use crate::aws::Clients;
use crate::config::Config;

/// How `--watch` shows each refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between the start of one read and the next.
    pub interval: Duration,
    /// Redraw in place (stdout is a terminal); else append plain blocks.
    pub terminal: bool,
    /// One JSON object per line per refresh instead of the view.
    pub json: bool,
}

/// Clear the screen and put the cursor top left.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Characters of the concurrency bar between its brackets.
const BAR_WIDTH: usize = 40;

/// The Lambda concurrency of the running executions as status can tell
/// (no CloudWatch minute: it lags), and how it was had.
pub fn concurrency(s: &Status) -> (f64, String) {
    if let Some(c) = &s.controller {
        let k = c.lambdas_per_execution;
        return (
            c.running_executions * k,
            format!(
                "the controller's {} running × its k̂ {k:.2}",
                eta::thousands(c.running_executions as u64)
            ),
        );
    }
    let (k, which) = match s.remembered_lambdas_per_execution {
        Some(k) => (k, "the remembered k̂"),
        None => (s.max_lambdas_per_execution, "max_lambdas_per_execution"),
    };
    (
        s.running_executions as f64 * k,
        format!(
            "Step Functions' {} running × {which} {k:.2} (no --controller)",
            eta::thousands(s.running_executions)
        ),
    )
}

/// `[#####-----]`, `width` characters inside; full with a `+` after it
/// when `value` is over `max`.
pub fn bar(value: f64, max: f64, width: usize) -> String {
    let frac = if max > 0.0 { value / max } else { 1.0 };
    let filled = ((frac.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    let over = if frac > 1.0 { "+" } else { "" };
    format!(
        "[{}{}]{over}",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

/// One refresh: a header, the concurrency bar, the status table with its
/// ETA lines.
pub fn block(s: &Status, interval: Duration) -> String {
    let (lambdas, how) = concurrency(s);
    let ceiling = f64::from(s.ceiling);
    let pct = if ceiling > 0.0 {
        lambdas / ceiling * 100.0
    } else {
        0.0
    };
    format!(
        "fanout status at {}, every {} s (Ctrl-C quits)\nconcurrency {} ~{} / {} Lambdas ({pct:.0} %): {how}\n{}",
        eta::rfc3339(s.now_s),
        interval.as_secs(),
        bar(lambdas, ceiling, BAR_WIDTH),
        eta::thousands(lambdas.round() as u64),
        eta::thousands(u64::from(s.ceiling)),
        s.table()
    )
}

/// Read and show the status every `opts.interval` until SIGINT or SIGTERM.
pub async fn watch<W: Write>(
    cfg: &Config,
    controller: Option<&str>,
    opts: WatchOptions,
    out: &mut W,
) -> Result<(), StatusError> {
    let mut int = signal(SignalKind::interrupt()).map_err(StatusError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(StatusError::Signal)?;
    let clients = Clients::new(&cfg.aws).await;
    let mut last_good: Option<String> = None;
    loop {
        let next = tokio::time::Instant::now() + opts.interval;
        let read = tokio::select! {
            r = status_with(&clients, cfg, controller) => r,
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        let text = match read {
            Ok(s) if opts.json => {
                serde_json::to_string(&s).map_err(|e| StatusError::Write(e.into()))? + "\n"
            }
            Ok(s) => {
                let b = block(&s, opts.interval);
                last_good = Some(b.clone());
                if opts.terminal {
                    format!("{CLEAR}{b}")
                } else {
                    b + "\n"
                }
            }
            Err(e) => failed(&e, opts, last_good.as_deref()),
        };
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(StatusError::Write)?;
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = int.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
        }
    }
}

/// What a failed read shows: in a terminal the last good view stays, the
/// error under it; otherwise (and in JSON) a line of its own.
fn failed(e: &StatusError, opts: WatchOptions, last_good: Option<&str>) -> String {
    let at = eta::rfc3339(unix_now());
    let line = format!(
        "read failed at {at}: {e} (still watching, next read in {} s)\n",
        opts.interval.as_secs()
    );
    if opts.json {
        let v = serde_json::json!({"read_at": at, "error": e.to_string()});
        return format!("{v}\n");
    }
    match (opts.terminal, last_good) {
        (true, Some(b)) => format!("{CLEAR}{b}\n{line}"),
        (true, None) => format!("{CLEAR}{line}"),
        (false, _) => format!("{line}\n"),
    }
}

// The tests compare products of small exact numbers.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ControllerView;

    fn status(running: u64, controller: Option<ControllerView>) -> Status {
        Status {
            queues: Vec::new(),
            running_executions: running,
            ceiling: 19_000,
            max_lambdas_per_execution: 3.0,
            cold_target: 6_333,
            remembered_lambdas_per_execution: None,
            reserved_concurrency: Vec::new(),
            controller,
            eta_source: None,
            read_at: String::new(),
            now_s: 1_777_817_460.0,
        }
    }

    #[test]
    fn the_bar_fills_with_concurrency_and_marks_overshoot() {
        assert_eq!(bar(0.0, 10.0, 10), "[----------]");
        assert_eq!(bar(5.0, 10.0, 10), "[#####-----]");
        assert_eq!(bar(10.0, 10.0, 10), "[##########]");
        assert_eq!(bar(12.0, 10.0, 10), "[##########]+");
    }

    #[test]
    fn concurrency_says_which_count_and_width_it_multiplied() {
        let (l, how) = concurrency(&status(6_000, None));
        assert_eq!(l, 18_000.0);
        assert!(
            how.contains("Step Functions' 6,000 running × max_lambdas_per_execution 3.00"),
            "{how}"
        );
        let mut s = status(6_000, None);
        s.remembered_lambdas_per_execution = Some(2.5);
        assert_eq!(concurrency(&s).0, 15_000.0);
        assert!(concurrency(&s).1.contains("remembered k̂ 2.50"));
        let c = ControllerView {
            running_executions: 5_950.0,
            lambdas_per_execution: 3.0,
            ..ControllerView::default()
        };
        let (l, how) = concurrency(&status(6_000, Some(c)));
        assert_eq!(l, 17_850.0);
        assert!(
            how.contains("the controller's 5,950 running × its k̂ 3.00"),
            "{how}"
        );
        let b = block(&status(6_000, None), Duration::from_secs(5));
        assert!(b.contains("~18,000 / 19,000 Lambdas (95 %)"), "{b}");
        assert!(!b.contains('\x1b'), "{b}");
    }
}
