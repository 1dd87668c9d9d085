//! `fanout enqueue`: one company update, or a whole refresh from a CSV or
//! JSON-lines file, onto the priority queue (the first `[[queues]]`) or the
//! bulk queue (the last). Every body is checked with the naming template
//! first, so input that could never start is refused here, with its line.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};

mod input;

pub use input::{InputError, MAX_LINE_BYTES, parse_csv, parse_jsonl, read_file};

use crate::aws::Clients;
use crate::aws::sqs::SqsQueue;
use crate::config::Config;
use crate::control::naming::{Namer, TemplateError};
use crate::ports::{SEND_TRIES, send_batches};

/// SendMessageBatch calls in flight at once.
const BATCHES_IN_FLIGHT: usize = 8;

/// Why `fanout enqueue` sent nothing, or gave up on a single update.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The config lists no queue.
    #[error("no [[queues]] entry in the config: nowhere to send")]
    NoQueue,
    /// The chosen queue has no URL.
    #[error("queues[{index}].url is empty: set the queue URL")]
    NoUrl {
        /// The queue's index in `[[queues]]`.
        index: usize,
    },
    /// The naming template does not parse.
    #[error("naming.template: {0}")]
    Template(#[from] TemplateError),
    /// `--data` is not a JSON object; why.
    #[error("--data must be a JSON object: {0}")]
    Data(String),
    /// The input file cannot be read, or its CSV header is refused.
    #[error("{path}: {problem}")]
    Input {
        /// The input file.
        path: PathBuf,
        /// Why (shown in this message, so not an error `source`: `{:#}`
        /// would print it twice).
        problem: InputError,
    },
    /// The input file is neither `.csv` nor `.jsonl`/`.ndjson`.
    #[error("{path}: unknown file type; use .csv or .jsonl")]
    FileType {
        /// The input file.
        path: PathBuf,
    },
    /// The single update's body could never start; why.
    #[error("the body is refused: {0}")]
    Refused(String),
    /// The single update could not be sent.
    #[error("SendMessage to {queue_url} failed after {SEND_TRIES} attempts: {reason}")]
    Send {
        /// The queue sent to.
        queue_url: String,
        /// The last failure.
        reason: String,
    },
}

/// What to enqueue.
#[derive(Debug, Clone)]
pub enum Input {
    /// One company's update.
    One {
        /// The company's id, the body's `company_id`.
        company_id: String,
        /// Further body fields, as a JSON object.
        data: Option<String>,
    },
    /// A whole refresh: a CSV or JSON-lines file, one company per line.
    File(PathBuf),
}

/// The options of `fanout enqueue`.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// What to send.
    pub input: Input,
    /// Send to the priority queue (the first) instead of the bulk queue
    /// (the last).
    pub priority: bool,
    /// Read and check only; send nothing.
    pub dry_run: bool,
    /// Show a progress bar (stderr is a terminal).
    pub progress: bool,
}

/// A line of input that was refused, or a message that could not be sent.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LineProblem {
    /// The input line, from 1 (for CSV, the record's line).
    pub line: u64,
    /// Why it was refused or not sent.
    pub reason: String,
}

/// What `fanout enqueue` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnqueueSummary {
    /// The name of the queue sent to.
    pub queue: String,
    /// The input file, if one was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Nothing was sent (`--dry-run`).
    pub dry_run: bool,
    /// Valid bodies read.
    pub valid: u64,
    /// Messages SQS accepted.
    pub sent: u64,
    /// Valid bodies that could not be sent.
    pub failed: Vec<LineProblem>,
    /// Lines refused before sending.
    pub invalid: Vec<LineProblem>,
}

impl EnqueueSummary {
    /// Every line was valid and sent.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.invalid.is_empty()
    }

    /// The summary as text, with up to 50 problems of each kind.
    pub fn human(&self) -> String {
        let mut s = format!(
            "queue: {}\nvalid: {}\nsent: {}{}\nfailed: {}\ninvalid: {}\n",
            self.queue,
            self.valid,
            self.sent,
            if self.dry_run { " (dry run)" } else { "" },
            self.failed.len(),
            self.invalid.len()
        );
        // `file:line`, as editors and terminals jump to it.
        let at = |line: u64| match &self.file {
            Some(f) => format!("{f}:{line}"),
            None => format!("line {line}"),
        };
        for p in self.invalid.iter().take(50) {
            let _ = writeln!(s, "  {}: invalid: {}", at(p.line), p.reason);
        }
        for p in self.failed.iter().take(50) {
            let _ = writeln!(s, "  {}: not sent: {}", at(p.line), p.reason);
        }
        let hidden = self.invalid.len().saturating_sub(50) + self.failed.len().saturating_sub(50);
        if hidden > 0 {
            let _ = writeln!(s, "  ... and {hidden} more");
        }
        s
    }
}

/// A body ready to send, with the input line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The input line, from 1.
    pub line: u64,
    /// The JSON body.
    pub text: String,
}

/// The body of a single update: `{"company_id": ID, ...data}`.
pub fn single_body(company_id: &str, data: Option<&str>) -> Result<String, EnqueueError> {
    let mut obj = match data {
        None => Map::new(),
        Some(d) => match serde_json::from_str::<Value>(d) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(EnqueueError::Data("not an object".into())),
            Err(e) => return Err(EnqueueError::Data(e.to_string())),
        },
    };
    if company_id.trim().is_empty() {
        return Err(EnqueueError::Refused("--company-id is empty".into()));
    }
    obj.insert("company_id".into(), Value::String(company_id.to_string()));
    Ok(Value::Object(obj).to_string())
}

/// Keep only bodies that can ever start under the naming template.
pub fn check_bodies(namer: &Namer, bodies: Vec<Body>, bad: &mut Vec<LineProblem>) -> Vec<Body> {
    bodies
        .into_iter()
        .filter(|b| match namer.name("dry-run", &b.text) {
            Ok(_) => true,
            Err(e) => {
                bad.push(LineProblem {
                    line: b.line,
                    reason: e.to_string(),
                });
                false
            }
        })
        .collect()
}

/// Send one batch (as `send_batches` packs them), retrying failed
/// entries; returns the failures.
async fn send_batch_retrying(q: &SqsQueue, batch: &[Body]) -> Vec<LineProblem> {
    let bodies: Vec<&str> = batch.iter().map(|b| b.text.as_str()).collect();
    crate::ports::send_batch_retrying(q, &bodies)
        .await
        .into_iter()
        .map(|(i, reason)| LineProblem {
            line: batch[i].line,
            reason,
        })
        .collect()
}

/// Run `fanout enqueue`.
pub async fn enqueue(cfg: &Config, opts: EnqueueOptions) -> Result<EnqueueSummary, EnqueueError> {
    let index = if opts.priority {
        0
    } else {
        cfg.queues
            .len()
            .checked_sub(1)
            .ok_or(EnqueueError::NoQueue)?
    };
    let qc = cfg.queues.get(index).ok_or(EnqueueError::NoQueue)?;
    let namer = Namer::new(&cfg.naming.template)?;
    let mut summary = EnqueueSummary {
        queue: qc.name.clone(),
        dry_run: opts.dry_run,
        ..EnqueueSummary::default()
    };
    let bodies = match &opts.input {
        Input::One { company_id, data } => {
            let text = single_body(company_id, data.as_deref())?;
            if let Err(e) = namer.name("dry-run", &text) {
                return Err(EnqueueError::Refused(e.to_string()));
            }
            vec![Body { line: 1, text }]
        }
        Input::File(path) => {
            summary.file = Some(path.display().to_string());
            let (ok, mut bad) = read_file(path)?;
            let ok = check_bodies(&namer, ok, &mut bad);
            summary.invalid = bad;
            ok
        }
    };
    summary.valid = bodies.len() as u64;
    if opts.dry_run || bodies.is_empty() {
        return Ok(summary);
    }
    if qc.url.is_empty() {
        return Err(EnqueueError::NoUrl { index });
    }
    let clients = Clients::new(&cfg.aws).await;
    let q = SqsQueue::new(clients.sqs, &qc.url);
    if let Input::One { .. } = opts.input {
        // A single update: report the error itself rather than a summary.
        let failed = send_batch_retrying(&q, &bodies).await;
        if let Some(f) = failed.into_iter().next() {
            return Err(EnqueueError::Send {
                queue_url: qc.url.clone(),
                reason: f.reason,
            });
        }
        summary.sent = 1;
        return Ok(summary);
    }
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(bodies.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} sent  {per_sec}  eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    // Ten 256 KiB bodies are over SendMessageBatch's 1 MiB: packed by size.
    let batches = send_batches(bodies.iter().map(|b| b.text.len()));
    let mut results = futures::stream::iter(batches.into_iter().map(|r| &bodies[r]))
        .map(|batch| {
            let q = &q;
            async move { (batch.len(), send_batch_retrying(q, batch).await) }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT);
    while let Some((n, failed)) = results.next().await {
        summary.sent += (n - failed.len()) as u64;
        summary.failed.extend(failed);
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.failed.sort_by_key(|p| p.line);
    summary.invalid.sort_by_key(|p| p.line);
    Ok(summary)
}

/// Whether stderr can show a progress bar.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_body_merges_data() {
        let b = single_body("42", Some(r#"{"reason":"fix"}"#)).unwrap();
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["company_id"], "42");
        assert_eq!(v["reason"], "fix");
        assert!(single_body("42", Some("[1]")).is_err());
    }

    #[test]
    fn the_summary_names_each_problem_by_file_and_line() {
        let summary = EnqueueSummary {
            queue: "bulk".into(),
            file: Some("refresh.csv".into()),
            invalid: vec![LineProblem {
                line: 3,
                reason: "empty company_id".into(),
            }],
            ..EnqueueSummary::default()
        };
        assert!(
            summary
                .human()
                .contains("\n  refresh.csv:3: invalid: empty company_id\n"),
            "{}",
            summary.human()
        );
    }

    #[test]
    fn template_fields_are_checked() {
        let namer = Namer::new("co-{company_id}-{region}").unwrap();
        let mut bad = Vec::new();
        let ok = check_bodies(
            &namer,
            vec![
                Body {
                    line: 2,
                    text: r#"{"company_id":"a","region":"eu"}"#.into(),
                },
                Body {
                    line: 3,
                    text: r#"{"company_id":"b"}"#.into(),
                },
            ],
            &mut bad,
        );
        assert_eq!(ok.len(), 1);
        assert_eq!(bad[0].line, 3);
        assert!(bad[0].reason.contains("region"), "{}", bad[0].reason);
    }
}
