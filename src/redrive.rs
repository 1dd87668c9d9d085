//! `fanout failed` and `fanout redrive`: the state machine's FAILED,
//! TIMED_OUT and ABORTED executions (paced ListExecutions, newest start
//! first, back to `--since`), and a redrive request on a work queue for
//! each, which the controller serves with RedriveExecution under its
//! ceiling (`controller::redrive`). Generic over the ports, so the
//! simulator runs the same listing and sending (tests/redrive.rs); the
//! AWS commands are `failed_command` and `redrive_command`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::aws::Clients;
use crate::aws::sfn::SfnExecutions;
use crate::aws::sqs::SqsQueue;
use crate::config::Config;
use crate::control::naming::{Namer, TemplateError};
use crate::control::pacing::{Backoff, Pacer};
use crate::control::redrive::{request_body, within_window};
use crate::ports::{
    ClosedExecution, ExecutionStatus, Executions, PortError, WorkQueue, send_batch_retrying,
    send_batches,
};

/// The body field `fanout failed` shows as the business key (the field
/// `fanout enqueue` writes).
pub const KEY_FIELD: &str = "company_id";
/// Tries of one listing page or one describe before giving up.
const TRIES: usize = 5;

/// Why `fanout failed` or `fanout redrive` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// A Step Functions call failed past its retries.
    #[error(
        "{api} on {state_machine_arn} failed after {TRIES} tries: {source}; check aws.state_machine_arn and states:{api} in the role, then run again"
    )]
    Sfn {
        /// The API called.
        api: &'static str,
        /// The configured state machine.
        state_machine_arn: String,
        /// The last error.
        source: PortError,
    },
    /// The config names no queue to send to, or it has no URL.
    #[error("queues[{index}].url is empty or missing: set the queue URL in the config")]
    NoQueue {
        /// The queue's index in `[[queues]]`.
        index: usize,
    },
    /// The naming template does not parse.
    #[error("naming.template: {0}")]
    Template(#[from] TemplateError),
    /// `--requeue` with a template that would give the input its old name.
    #[error(
        "--requeue needs {{message_id}} in naming.template (it is \"{0}\"): otherwise the input sent again gets the failed execution's name and the controller counts it as done; add {{message_id}} or send the inputs with `fanout enqueue`"
    )]
    RequeueSameName(String),
}

/// Pace and window of a listing.
#[derive(Debug, Clone, Copy)]
pub struct ListOptions {
    /// List executions started at or after this time (backend clock).
    pub since_s: f64,
    /// ListExecutions pages per second (shared with the controllers'
    /// reconciles: 5 per s refill in the large Regions).
    pub pages_per_s: u32,
    /// DescribeExecution and GetExecutionHistory calls per second (15
    /// per s refill in the large Regions, 10 elsewhere).
    pub describes_per_s: u32,
}

/// One unsuccessful execution, as `fanout failed` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedExecution {
    /// Its ARN.
    pub execution_arn: String,
    /// Its name.
    pub name: String,
    /// FAILED, TIMED_OUT or ABORTED.
    pub status: ExecutionStatus,
    /// Start, Unix seconds (simulator: virtual seconds).
    pub started_s: f64,
    /// Close, when known.
    pub stopped_s: Option<f64>,
    /// Times redriven so far.
    pub redrive_count: u32,
    /// The input's `company_id`, when the input was read and has one.
    pub key: Option<String>,
    /// The state it failed in (GetExecutionHistory), when found.
    pub state: Option<String>,
    /// The error it failed with.
    pub error: Option<String>,
    /// The cause it failed with.
    pub cause: Option<String>,
    /// Why it cannot be redriven (DescribeExecution's redriveStatusReason).
    pub not_redrivable: Option<String>,
    /// Its input.
    #[serde(skip)]
    pub input: Option<String>,
}

/// Call `f` until it succeeds, a permanent error, or `TRIES` tries (1,
/// 2, 4, 8 s apart), each after a token of `pacer`.
async fn paced<T, F, Fut>(
    pacer: &Pacer,
    api: &'static str,
    arn: &str,
    f: F,
) -> Result<T, RedriveError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, PortError>>,
{
    let mut backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(8));
    let mut tries = 0;
    loop {
        pacer.acquire().await;
        tries += 1;
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() && tries < TRIES => {
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(8))).await;
            }
            Err(source) => {
                return Err(RedriveError::Sfn {
                    api,
                    state_machine_arn: arn.to_string(),
                    source,
                });
            }
        }
    }
}

/// FAILED, TIMED_OUT and ABORTED executions started at or after
/// `since_s`, newest start first (each listing is; paging stops at the
/// first older one). `state_machine_arn` names them in errors.
pub async fn list_unsuccessful<E: Executions>(
    e: &E,
    state_machine_arn: &str,
    opts: ListOptions,
) -> Result<Vec<ClosedExecution>, RedriveError> {
    let pacer = Pacer::new(opts.pages_per_s.max(1), 1);
    let mut out = Vec::new();
    for status in ExecutionStatus::UNSUCCESSFUL {
        let mut token = None;
        loop {
            let t = token.clone();
            let page = paced(&pacer, "ListExecutions", state_machine_arn, || {
                e.list_closed(status, t.clone())
            })
            .await?;
            let n = page.executions.len();
            let kept: Vec<ClosedExecution> = page
                .executions
                .into_iter()
                .filter(|x| x.started_s >= opts.since_s)
                .collect();
            // Newest start first: past the first older one, all are.
            let older = kept.len() < n;
            out.extend(kept);
            match page.next_token {
                Some(t) if !older => token = Some(t),
                _ => break,
            }
        }
    }
    out.sort_by(|a, b| b.started_s.total_cmp(&a.started_s).then(a.arn.cmp(&b.arn)));
    Ok(out)
}

/// Each execution with what DescribeExecution (input, error, cause,
/// redrive status) and GetExecutionHistory (the state) tell of it.
pub async fn describe_each<E: Executions>(
    e: &E,
    state_machine_arn: &str,
    listed: Vec<ClosedExecution>,
    describes_per_s: u32,
) -> Result<Vec<FailedExecution>, RedriveError> {
    let pacer = Pacer::new(describes_per_s.max(1), 1);
    let mut out = Vec::with_capacity(listed.len());
    for x in listed {
        let d = paced(&pacer, "DescribeExecution", state_machine_arn, || {
            e.describe(&x.arn)
        })
        .await?;
        let state = paced(&pacer, "GetExecutionHistory", state_machine_arn, || {
            e.failed_state(&x.arn)
        })
        .await?;
        out.push(FailedExecution {
            key: d.input.as_deref().and_then(business_key),
            execution_arn: x.arn,
            name: x.name,
            status: x.status,
            started_s: x.started_s,
            stopped_s: x.stopped_s,
            redrive_count: d.redrive_count.max(x.redrive_count),
            state,
            error: d.error,
            cause: d.cause,
            not_redrivable: d.not_redrivable,
            input: d.input,
        });
    }
    Ok(out)
}

/// The input's `company_id`, as text.
fn business_key(input: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(input).ok()?;
    match v.get(KEY_FIELD)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What `fanout redrive` is to do.
#[derive(Debug, Clone, Copy)]
pub struct RedriveOptions {
    /// The listing's window and pace.
    pub list: ListOptions,
    /// The backend's time now (for the 14-day window).
    pub now_s: f64,
    /// List and decide; send nothing.
    pub dry_run: bool,
    /// Send the input of an execution that cannot be redriven again as a
    /// new message (reads each execution's status and input first).
    pub requeue: bool,
}

/// An execution `fanout redrive` did not ask to redrive, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotRedrivable {
    /// Its ARN.
    pub execution_arn: String,
    /// Why it cannot be redriven.
    pub reason: String,
    /// Its input was sent again as a new message (`--requeue`).
    pub requeued: bool,
}

/// What `fanout redrive` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedriveSummary {
    /// Unsuccessful executions listed in the window.
    pub listed: usize,
    /// Executions a redrive request was sent (or, dry run, would be) for.
    pub requests: Vec<String>,
    /// Executions that cannot be redriven.
    pub not_redrivable: Vec<NotRedrivable>,
    /// Messages SQS accepted (requests and requeued inputs).
    pub sent: usize,
    /// Messages not sent: (execution ARN, why).
    pub failed: Vec<(String, String)>,
    /// Nothing was sent.
    pub dry_run: bool,
}

impl RedriveSummary {
    /// Every message that was meant to go went.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// The summary as text.
    pub fn human(&self) -> String {
        let mut s = format!(
            "unsuccessful executions listed: {}\nredrive requests: {}{}\nnot redrivable: {}\nsent: {}\nnot sent: {}\n",
            self.listed,
            self.requests.len(),
            if self.dry_run {
                " (dry run, none sent)"
            } else {
                ""
            },
            self.not_redrivable.len(),
            self.sent,
            self.failed.len()
        );
        for n in &self.not_redrivable {
            let what = if n.requeued {
                "input sent again as a new message"
            } else {
                "run `fanout redrive --requeue` to send its input again"
            };
            let _ = writeln!(s, "  {}: {} ({what})", n.execution_arn, n.reason);
        }
        for (arn, why) in &self.failed {
            let _ = writeln!(s, "  {arn}: not sent: {why}");
        }
        s
    }
}

/// List the unsuccessful executions and put a redrive request for each
/// on `queue` (the controller redrives them under its ceiling); those
/// that cannot be redriven are reported, and with `requeue` their input
/// goes on `queue` again as a new message.
pub async fn redrive<E: Executions, Q: WorkQueue>(
    e: &E,
    queue: &Q,
    state_machine_arn: &str,
    opts: RedriveOptions,
) -> Result<RedriveSummary, RedriveError> {
    let listed = list_unsuccessful(e, state_machine_arn, opts.list).await?;
    let mut summary = RedriveSummary {
        listed: listed.len(),
        dry_run: opts.dry_run,
        ..RedriveSummary::default()
    };
    // (execution ARN, body), requests and requeued inputs.
    let mut out: Vec<(String, String)> = Vec::new();
    let too_old = "closed more than 14 days ago (RedriveExecution's window)";
    if opts.requeue {
        let described =
            describe_each(e, state_machine_arn, listed, opts.list.describes_per_s).await?;
        for x in described {
            let reason = if within_window(x.stopped_s, opts.now_s) {
                x.not_redrivable.clone()
            } else {
                Some(too_old.to_string())
            };
            let Some(reason) = reason else {
                summary.requests.push(x.execution_arn.clone());
                out.push((x.execution_arn.clone(), request_body(&x.execution_arn)));
                continue;
            };
            let requeued = x.input.is_some();
            if let Some(input) = x.input {
                out.push((x.execution_arn.clone(), input));
            }
            summary.not_redrivable.push(NotRedrivable {
                execution_arn: x.execution_arn,
                reason: if requeued {
                    reason
                } else {
                    format!("{reason}; its input could not be read")
                },
                requeued,
            });
        }
    } else {
        for x in listed {
            if within_window(x.stopped_s, opts.now_s) {
                summary.requests.push(x.arn.clone());
                out.push((x.arn.clone(), request_body(&x.arn)));
            } else {
                summary.not_redrivable.push(NotRedrivable {
                    execution_arn: x.arn,
                    reason: too_old.into(),
                    requeued: false,
                });
            }
        }
    }
    if opts.dry_run {
        for n in &mut summary.not_redrivable {
            n.requeued = false;
        }
        return Ok(summary);
    }
    for batch in send_batches(out.iter().map(|(_, b)| b.len())) {
        let sent = &out[batch.clone()];
        let bodies: Vec<&str> = sent.iter().map(|(_, b)| b.as_str()).collect();
        let failed: Vec<(String, String)> = send_batch_retrying(queue, &bodies)
            .await
            .into_iter()
            .map(|(i, why)| (sent[i].0.clone(), why))
            .collect();
        summary.sent += batch.len() - failed.len();
        summary.failed.extend(failed);
    }
    let failed: std::collections::BTreeSet<&str> =
        summary.failed.iter().map(|(a, _)| a.as_str()).collect();
    let unsent: Vec<String> = summary
        .not_redrivable
        .iter()
        .filter(|n| failed.contains(n.execution_arn.as_str()))
        .map(|n| n.execution_arn.clone())
        .collect();
    for n in &mut summary.not_redrivable {
        n.requeued &= !unsent.contains(&n.execution_arn);
    }
    Ok(summary)
}

/// Unix seconds now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The pace of the AWS commands: a page every half second (the
/// controllers' reconciles share ListExecutions' 5 per s), five
/// describes per second (of DescribeExecution's 15).
fn aws_list_options(since: Duration) -> ListOptions {
    ListOptions {
        since_s: unix_now() - since.as_secs_f64(),
        pages_per_s: 2,
        describes_per_s: 5,
    }
}

/// `fanout failed` on AWS: the `limit` newest (all when None) described,
/// and how many were listed. Listing is a page per 1,000; describing takes
/// two calls each, at five a second.
pub async fn failed_command(
    cfg: &Config,
    since: Duration,
    limit: Option<usize>,
) -> Result<(Vec<FailedExecution>, usize), RedriveError> {
    let clients = Clients::new(&cfg.aws).await;
    let sfn = SfnExecutions::new(clients.sfn, &cfg.aws.state_machine_arn);
    let arn = &cfg.aws.state_machine_arn;
    let opts = aws_list_options(since);
    let mut listed = list_unsuccessful(&sfn, arn, opts).await?;
    let total = listed.len();
    if let Some(n) = limit {
        listed.truncate(n);
    }
    Ok((
        describe_each(&sfn, arn, listed, opts.describes_per_s).await?,
        total,
    ))
}

/// `fanout redrive` on AWS: requests (and requeued inputs) go to the bulk
/// queue (the last `[[queues]]`), or the priority one (the first).
pub async fn redrive_command(
    cfg: &Config,
    since: Duration,
    priority: bool,
    dry_run: bool,
    requeue: bool,
) -> Result<RedriveSummary, RedriveError> {
    let index = if priority {
        0
    } else {
        cfg.queues.len().saturating_sub(1)
    };
    let url = cfg
        .queues
        .get(index)
        .map(|q| q.url.clone())
        .filter(|u| !u.is_empty())
        .ok_or(RedriveError::NoQueue { index })?;
    if requeue && !Namer::new(&cfg.naming.template)?.uses_message_id() {
        return Err(RedriveError::RequeueSameName(cfg.naming.template.clone()));
    }
    let clients = Clients::new(&cfg.aws).await;
    let sfn = SfnExecutions::new(clients.sfn, &cfg.aws.state_machine_arn);
    let queue = SqsQueue::new(clients.sqs, &url);
    let opts = RedriveOptions {
        list: aws_list_options(since),
        now_s: unix_now(),
        dry_run,
        requeue,
    };
    redrive(&sfn, &queue, &cfg.aws.state_machine_arn, opts).await
}

/// `--since`'s value: a whole number with `s`, `m`, `h` or `d` (`24h`,
/// `7d`); at most 90 days (ListExecutions lists closed executions for
/// about 90 days).
pub fn parse_since(v: &str) -> Result<Duration, String> {
    let bad =
        || format!("--since {v:?}: write a whole number and a unit s, m, h or d, e.g. 24h or 7d");
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    if secs == 0 || secs > 90 * 86_400 {
        return Err(format!("--since {v:?}: between 1s and 90d"));
    }
    Ok(Duration::from_secs(secs))
}

/// `fanout failed`'s table: one line per execution shown, of `total`
/// listed (newest first).
pub fn table(failed: &[FailedExecution], total: usize) -> String {
    let mut s = format!(
        "{:<10} {:<20} {:<24} {:<28} {}\n",
        "STATUS", "KEY", "STATE", "ERROR", "EXECUTION"
    );
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for f in failed {
        let _ = writeln!(
            s,
            "{:<10} {:<20} {:<24} {:<28} {}",
            f.status.as_str(),
            cell(&f.key),
            cell(&f.state),
            cell(&f.error),
            f.execution_arn
        );
    }
    if total > failed.len() {
        let _ = writeln!(
            s,
            "{} of {total} unsuccessful execution(s), the newest (--limit)",
            failed.len()
        );
    } else {
        let _ = writeln!(s, "{} unsuccessful execution(s)", failed.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_how_many_were_listed_when_it_shows_fewer() {
        let one = FailedExecution {
            execution_arn: "arn:x".into(),
            name: "x".into(),
            status: ExecutionStatus::Failed,
            started_s: 1.0,
            stopped_s: Some(2.0),
            redrive_count: 0,
            key: Some("c-1".into()),
            state: None,
            error: None,
            cause: None,
            not_redrivable: None,
            input: None,
        };
        let all = table(std::slice::from_ref(&one), 1);
        assert!(all.ends_with("1 unsuccessful execution(s)\n"), "{all}");
        let newest = table(&[one], 1481);
        assert!(
            newest.ends_with("1 of 1481 unsuccessful execution(s), the newest (--limit)\n"),
            "{newest}"
        );
    }

    #[test]
    fn since_takes_a_number_and_a_unit() {
        assert_eq!(parse_since("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "h", "24", "24x", "-1h", "0h", "91d", "1.5h"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    use std::sync::Mutex;

    use crate::ports::{
        ClosedPage, EntryFailure, ExecutionDetail, ExecutionPage, Message, OutgoingMessage,
        QueueDepth, StartOutcome,
    };

    const DAY: f64 = 86_400.0;
    const NOW: f64 = 100.0 * DAY;

    /// Two failed executions: one closed 2 days ago, one 20 days ago.
    struct Closed;

    impl Executions for Closed {
        async fn start(&self, _: &str, _: &str) -> Result<StartOutcome, PortError> {
            unreachable!("redrive never starts")
        }
        async fn input_matches(&self, _: &str, _: &str) -> Result<bool, PortError> {
            Ok(true)
        }
        async fn list_running(&self, _: Option<String>) -> Result<ExecutionPage, PortError> {
            Ok(ExecutionPage::default())
        }
        async fn list_closed(
            &self,
            status: ExecutionStatus,
            _: Option<String>,
        ) -> Result<ClosedPage, PortError> {
            let x = |name: &str, stopped: f64| ClosedExecution {
                arn: format!("arn:exec:{name}"),
                name: name.into(),
                status,
                started_s: stopped - 60.0,
                stopped_s: Some(stopped),
                redrive_count: 0,
            };
            Ok(ClosedPage {
                executions: if status == ExecutionStatus::Failed {
                    vec![x("recent", NOW - 2.0 * DAY), x("old", NOW - 20.0 * DAY)]
                } else {
                    Vec::new()
                },
                next_token: None,
            })
        }
        async fn describe(&self, arn: &str) -> Result<ExecutionDetail, PortError> {
            Ok(ExecutionDetail {
                status: Some(ExecutionStatus::Failed),
                input: Some(format!(r#"{{"company_id":"{arn}"}}"#)),
                ..ExecutionDetail::default()
            })
        }
    }

    #[derive(Default)]
    struct Sent(Mutex<Vec<String>>);

    impl WorkQueue for Sent {
        async fn receive(
            &self,
            _: usize,
            _: Duration,
            _: Duration,
        ) -> Result<Vec<Message>, PortError> {
            Ok(Vec::new())
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
        async fn send_batch(&self, m: &[OutgoingMessage]) -> Result<Vec<EntryFailure>, PortError> {
            self.0
                .lock()
                .unwrap()
                .extend(m.iter().map(|m| m.body.clone()));
            Ok(Vec::new())
        }
        async fn depth(&self) -> Result<QueueDepth, PortError> {
            Ok(QueueDepth::default())
        }
    }

    async fn run(requeue: bool) -> (RedriveSummary, Vec<String>) {
        let q = Sent::default();
        let opts = RedriveOptions {
            list: ListOptions {
                since_s: 0.0,
                pages_per_s: 100,
                describes_per_s: 100,
            },
            now_s: NOW,
            dry_run: false,
            requeue,
        };
        let s = redrive(&Closed, &q, "arn:sm", opts).await.unwrap();
        (s, q.0.into_inner().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_14_days_only_requeue_sends_the_input_again() {
        // Within the window: a redrive request. Past it: reported, and
        // nothing else sent.
        let (s, sent) = run(false).await;
        assert_eq!(sent, vec![request_body("arn:exec:recent")]);
        assert_eq!(s.not_redrivable.len(), 1, "{s:?}");
        assert_eq!(s.not_redrivable[0].execution_arn, "arn:exec:old");
        assert!(!s.not_redrivable[0].requeued);
        // --requeue: the old one's own input goes again as a new message.
        let (s, sent) = run(true).await;
        assert_eq!(
            sent,
            vec![
                request_body("arn:exec:recent"),
                r#"{"company_id":"arn:exec:old"}"#.to_string()
            ]
        );
        assert!(s.not_redrivable[0].requeued, "{s:?}");
        assert!(s.human().contains("input sent again"), "{}", s.human());
    }

    #[test]
    fn the_key_is_the_company_id_as_text() {
        assert_eq!(business_key(r#"{"company_id":"c-1"}"#), Some("c-1".into()));
        assert_eq!(business_key(r#"{"company_id":42}"#), Some("42".into()));
        assert_eq!(business_key(r#"{"other":1}"#), None);
        assert_eq!(business_key("not json"), None);
    }
}
