//! Config hot reload: what changed between two configs, whether a running
//! controller may take it, and `fanout run`'s triggers (SIGHUP, a changed
//! config file).
//!
//! The rule is plain code (`plan`): the new config must pass validation,
//! and every field that differs must be in `RELOADABLE`. Anything else
//! (queues, AWS resources, the naming template, the policy, the HTTP
//! address, ...) needs a restart, and a config that changes one of those is
//! refused as a whole: the running config stays.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::config::{Config, LoadError, Source};

/// Fields a running controller applies at its next step. Everything else
/// needs a restart (see `RESTART`).
pub const RELOADABLE: &[&str] = &[
    "controller.ceiling",
    "controller.account_limit",
    "controller.headroom_fraction",
    "controller.priority_reserve_fraction",
    "controller.tick_ms",
    "controller.visibility_timeout_secs",
    "controller.idle_wait_secs",
    "controller.max_receives_in_flight",
    "controller.max_starts_in_flight",
    "controller.start_rate_per_s",
    "controller.start_burst",
    "controller.ramp_concurrency_per_s",
    "controller.ramp_initial",
    "controller.reconcile_interval_secs",
    "controller.list_pages_per_s",
    "controller.list_grace_secs",
    "controller.metrics_poll_secs",
    "controller.shutdown_deadline_secs",
    "controller.function_limits_poll_secs",
    "estimator.margin_fraction",
    "estimator.noise_z",
    "estimator.stability_fraction",
    "estimator.min_completions",
    "estimator.min_lambdas_per_execution",
    "estimator.remember",
    "estimator.settle_secs",
    "retry.initial_ms",
    "retry.max_ms",
    "retry.multiplier",
    "retry.give_up_secs",
    "seed.multiplier",
    "seed.requeue_delay_secs",
    "fixed.max_running",
    "reload.watch_file",
    "reload.poll_secs",
    "coordination.renew_secs",
    "coordination.ttl_secs",
];

/// Fields (or whole sections) that need a restart, and why. Only for the
/// docs and the test that every option is classified: `plan` refuses any
/// change outside `RELOADABLE`.
pub const RESTART: &[(&str, &str)] = &[
    (
        "controller.policy",
        "the admission loop or the seed pollers are chosen at start",
    ),
    (
        "controller.max_lambdas_per_execution",
        "the estimator's cold-start prior; what it learned is relative to it",
    ),
    (
        "naming.template",
        "a new name for the same message would start it a second time",
    ),
    (
        "estimator.initial_lambdas_per_execution",
        "where the estimate starts: read once, when the controller starts",
    ),
    ("seed.pollers", "the pollers are spawned at start"),
    ("queues", "the SQS clients are built at start"),
    ("completion_queue", "the completion loop is built at start"),
    (
        "aws",
        "clients (their endpoints and call timeouts), the state machine and the metric queries are built at start",
    ),
    ("http", "the listening socket is bound at start"),
    ("metrics", "the CloudWatch publisher is spawned at start"),
    (
        "coordination.table",
        "the claim store is built at start; a controller leaving it must give its claim back first",
    ),
    (
        "coordination.key",
        "the claim store is built at start; a controller leaving it must give its claim back first",
    ),
];

/// One field that differs between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The field path, e.g. `controller.ceiling` or `queues[1].url`.
    pub field: String,
    /// The running value (`unset` for an absent option).
    pub old: String,
    /// The new value.
    pub new: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.field, self.old, self.new)
    }
}

/// Why a new config was not applied. The running config stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config does not parse or is invalid: on one line, for the
    /// log entry.
    #[error("{}", one_line(.0))]
    Load(#[from] LoadError),
    /// A field that differs cannot change while running.
    #[error("{path}: {} cannot change while running; restart the service to apply", fields.join(", "))]
    NeedsRestart {
        /// Where the new config came from.
        path: String,
        /// Every field that needs a restart.
        fields: Vec<String>,
    },
}

/// A load error on one line, for a log entry.
fn one_line(e: &LoadError) -> String {
    match e {
        LoadError::Invalid { path, problems } => {
            let list = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            format!("{path}: {} problem(s): {list}", problems.len())
        }
        other => other.to_string().replace('\n', " "),
    }
}

/// Is a change of this field applied live?
pub fn reloadable(field: &str) -> bool {
    RELOADABLE.contains(&field)
}

/// Every leaf of a config as `path → value` (strings quoted, `unset` for
/// an absent option). Arrays of tables are indexed (`queues[0].url`),
/// arrays of values are one leaf.
fn leaves(cfg: &Config) -> BTreeMap<String, String> {
    fn walk(path: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    walk(&join(k), v, out);
                }
            }
            Value::Array(a) if a.iter().any(Value::is_object) => {
                for (i, x) in a.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), x, out);
                }
            }
            Value::Null => {
                out.insert(path.to_string(), "unset".to_string());
            }
            other => {
                out.insert(path.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    // Config is plain data: serializing it cannot fail.
    let v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    walk("", &v, &mut out);
    out
}

/// The fields that differ, in path order.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) = (leaves(old), leaves(new));
    let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
    fields.sort();
    fields.dedup();
    let unset = "unset".to_string();
    fields
        .into_iter()
        .filter_map(|f| {
            let (o, n) = (a.get(f).unwrap_or(&unset), b.get(f).unwrap_or(&unset));
            (o != n).then(|| Change {
                field: f.clone(),
                old: o.clone(),
                new: n.clone(),
            })
        })
        .collect()
}

/// May `new` replace `current` in a running controller? `Ok` holds the
/// changes (empty: nothing to do); `origin` names the config in errors.
pub fn plan(current: &Config, new: &Config, origin: &str) -> Result<Vec<Change>, ReloadError> {
    let problems = new.validate();
    if !problems.is_empty() {
        return Err(LoadError::Invalid {
            path: origin.to_string(),
            problems,
        }
        .into());
    }
    let changes = diff(current, new);
    let fixed: Vec<String> = changes
        .iter()
        .filter(|c| !reloadable(&c.field))
        .map(|c| c.field.clone())
        .collect();
    if !fixed.is_empty() {
        return Err(ReloadError::NeedsRestart {
            path: origin.to_string(),
            fields: fixed,
        });
    }
    Ok(changes)
}

/// Parse a new config text and validate it for AWS (every problem at once).
pub fn load(text: &str, origin: &str) -> Result<Config, ReloadError> {
    Ok(Config::from_text_for_aws(text, origin)?)
}

/// A changed file is read again after this long and applied only if it
/// did not change meanwhile.
const SETTLE: Duration = Duration::from_millis(200);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `kill -HUP`.
    Hangup,
    /// The poll saw a new content.
    FileChanged,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FileChanged => "file changed",
        })
    }
}

/// Load `text` and hand it to `apply` (the controller's reload), logging
/// the outcome: `info` with every change old -> new, or `error` with the
/// path and every reason it was refused.
pub fn apply_text(
    text: &str,
    origin: &str,
    trigger: Trigger,
    apply: impl FnOnce(Config) -> Result<Vec<Change>, ReloadError>,
) -> Result<Vec<Change>, ReloadError> {
    let r = load(text, origin).and_then(apply);
    match &r {
        Ok(changes) if changes.is_empty() => {
            info!(path = origin, trigger = %trigger, "config reload: nothing changed");
        }
        Ok(changes) => {
            let list = changes
                .iter()
                .map(Change::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            info!(path = origin, trigger = %trigger, changes = %list, "config reloaded: {list}");
        }
        Err(e) => {
            error!(path = origin, trigger = %trigger, reason = %e,
                "config reload refused, the running config stays: {e}");
        }
    }
    r
}

/// `fanout run`'s reload triggers, until `stop` turns true: SIGHUP (re-read
/// and apply), and while `[reload] watch_file` is on, a poll of the file
/// every `poll_secs` that applies a content different from the last one
/// seen (editors' rename-writes and ConfigMap symlink swaps included). A
/// file that cannot be read is logged and tried again; nothing here ends
/// the process. `on_text` gets each text to apply.
pub async fn triggers(
    source: Source,
    mut last: String,
    config: watch::Receiver<Arc<Config>>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    mut stop: watch::Receiver<bool>,
    mut on_text: impl FnMut(&str, Trigger),
) {
    let origin = source.origin();
    let mut read_error: Option<String> = None;
    loop {
        let (poll, every) = {
            let c = config.borrow();
            (
                c.reload.watch_file && matches!(source, Source::File(_)),
                Duration::from_secs(c.reload.poll_secs.max(1)),
            )
        };
        let trigger = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            got = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                if got.is_some() {
                    Trigger::Hangup
                } else {
                    warn!("the SIGHUP stream ended; reload by SIGHUP is off");
                    hangup = None;
                    continue;
                }
            }
            () = tokio::time::sleep(every), if poll => Trigger::FileChanged,
        };
        let Source::File(path) = &source else {
            info!(path = %origin, "SIGHUP: the config comes from the environment, which cannot change in a running process; nothing reloaded (change the task definition, which rolls the service)");
            continue;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => {
                read_error = None;
                t
            }
            Err(e) => {
                let shown = e.to_string();
                if trigger == Trigger::Hangup || read_error.as_ref() != Some(&shown) {
                    warn!(path = %origin, trigger = %trigger, error = %shown,
                        "cannot read the config file; the running config stays, trying again later");
                }
                read_error = Some(shown);
                continue;
            }
        };
        if trigger == Trigger::FileChanged {
            if text == last {
                continue;
            }
            // An in-place write may be half done: apply only a content
            // that stays the same for a moment (else the next poll will).
            tokio::time::sleep(SETTLE).await;
            if std::fs::read_to_string(path).ok().as_ref() != Some(&text) {
                continue;
            }
        }
        last = text;
        on_text(&last, trigger);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(field: &str, section: &str) -> bool {
        field == section
            || field
                .strip_prefix(section)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    }

    fn base() -> Config {
        let text = r#"
[controller]
ceiling = 300

[[queues]]
name = "bulk"
url = "http://127.0.0.1:1/q/bulk"
dlq_url = "http://127.0.0.1:1/q/bulk-dlq"

[aws]
state_machine_arn = "arn:aws:states:us-east-1:1:stateMachine:p"
"#;
        load(text, "t.toml").unwrap()
    }

    #[test]
    fn changing_the_ceiling_and_rates_applies() {
        let old = base();
        let mut new = old.clone();
        new.controller.ceiling = 120;
        new.controller.start_rate_per_s = 50;
        new.retry.give_up_secs = 60;
        let changes = plan(&old, &new, "t.toml").unwrap();
        let shown: Vec<String> = changes.iter().map(Change::to_string).collect();
        assert_eq!(
            shown,
            [
                "controller.ceiling: 300 -> 120",
                "controller.start_rate_per_s: 250 -> 50",
                "retry.give_up_secs: 600 -> 60",
            ]
        );
        assert!(plan(&old, &old, "t.toml").unwrap().is_empty());
    }

    #[test]
    fn changing_the_template_or_the_queues_is_refused_naming_the_field() {
        let old = base();
        let mut new = old.clone();
        new.controller.ceiling = 120;
        new.naming.template = "{hash}".into();
        new.queues[0].url = "http://127.0.0.1:1/q/other".into();
        match plan(&old, &new, "t.toml") {
            Err(e @ ReloadError::NeedsRestart { .. }) => {
                let ReloadError::NeedsRestart { fields, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(fields, &["naming.template", "queues[0].url"]);
                let text = e.to_string();
                assert!(text.contains("restart the service to apply"), "{text}");
                assert!(text.starts_with("t.toml: "), "{text}");
            }
            other => panic!("expected NeedsRestart, got {other:?}"),
        }
        // Adding a queue or a completion queue is a restart too.
        let mut more = old.clone();
        more.queues.push(more.queues[0].clone());
        more.queues[1].name = "second".into();
        let Err(ReloadError::NeedsRestart { fields, .. }) = plan(&old, &more, "t") else {
            panic!("a new queue was accepted live");
        };
        assert!(
            fields.iter().all(|f| f.starts_with("queues[1].")),
            "{fields:?}"
        );
        let mut events = old.clone();
        events.completion_queue = Some(crate::config::CompletionQueueConfig {
            url: "http://127.0.0.1:1/q/events".into(),
        });
        let Err(ReloadError::NeedsRestart { fields, .. }) = plan(&old, &events, "t") else {
            panic!("a completion queue was accepted live");
        };
        assert_eq!(fields, ["completion_queue.url"]);
        // The SDK clients carry their timeouts from the start.
        let mut slow = old.clone();
        slow.aws.attempt_timeout_ms = 10_000;
        slow.aws.operation_timeout_ms = 30_000;
        let Err(ReloadError::NeedsRestart { fields, .. }) = plan(&old, &slow, "t") else {
            panic!("new AWS call timeouts were accepted live");
        };
        assert_eq!(
            fields,
            ["aws.attempt_timeout_ms", "aws.operation_timeout_ms"]
        );
    }

    #[test]
    fn an_invalid_value_is_refused_with_its_field_path() {
        let old = base();
        let text = "[controller]\nceiling = 0\nheadroom_fraction = 0.7\n";
        let new: Config = toml::from_str(text).unwrap();
        match plan(&old, &new, "t.toml") {
            Err(ReloadError::Load(LoadError::Invalid { path, problems })) => {
                assert_eq!(path, "t.toml");
                let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
                assert_eq!(
                    fields,
                    ["controller.ceiling", "controller.headroom_fraction"]
                );
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        // load(): the AWS-only problems too, and parse errors with a line.
        match load(text, "t.toml") {
            Err(e @ ReloadError::Load(LoadError::Invalid { .. })) => {
                let s = e.to_string();
                for f in ["controller.ceiling", "queues", "aws.state_machine_arn"] {
                    assert!(s.contains(f), "{f} missing: {s}");
                }
            }
            other => panic!("{other:?}"),
        }
        match load("[controller]\nceiling = \"many\"\n", "t.toml") {
            Err(e @ ReloadError::Load(LoadError::Parse(_))) => {
                let s = e.to_string();
                assert!(s.contains("t.toml") && s.contains("line 2"), "{s}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A refusal is logged as one line: the origin, then every reason.
    #[test]
    fn a_refused_config_is_one_log_line() {
        let old = base();
        let new: Config =
            toml::from_str("[controller]\nceiling = 0\nheadroom_fraction = 0.7\n").unwrap();
        let e = plan(&old, &new, "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: 2 problem(s): controller.ceiling: must be at least 1; \
             controller.headroom_fraction: 0.7 must be in [0, 0.5)"
        );
        let e = load("[controller]\nceiling = \"many\"\n", "t.toml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "t.toml: TOML parse error at line 2, column 11   | 2 | ceiling = \"many\"   |           ^^^^^^ invalid type: string \"many\", expected u32"
        );
    }

    #[test]
    fn every_option_is_either_reloadable_or_needs_a_restart() {
        // A config with every optional part present, so every leaf shows.
        let mut c = base();
        c.controller.account_limit = Some(1000);
        c.fixed.max_running = Some(10);
        c.aws.region = Some("us-east-1".into());
        c.aws.endpoint_url = Some("http://127.0.0.1:1".into());
        c.aws.functions = vec!["f".into()];
        c.completion_queue = Some(crate::config::CompletionQueueConfig { url: "u".into() });
        for field in leaves(&c).keys() {
            let live = reloadable(field);
            let restart = RESTART.iter().any(|(s, _)| under(field, s));
            assert!(
                live != restart,
                "{field}: reloadable {live}, restart {restart}: classify it in src/reload.rs"
            );
        }
        for f in RELOADABLE {
            assert!(leaves(&c).contains_key(*f), "{f} is not a config field");
        }
    }

    /// The file poll: a changed content is applied once, an unchanged or
    /// unreadable file is not, rename-writes and symlink swaps are seen,
    /// and `watch_file = false` stops the poll.
    #[tokio::test(start_paused = true)]
    async fn the_poll_applies_changed_content_once_and_survives_a_missing_file() {
        use std::sync::Mutex;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fanout.toml");
        std::fs::write(&path, "a").unwrap();
        let mut cfg = Config::default();
        cfg.reload.poll_secs = 1;
        let (cfg_tx, cfg_rx) = watch::channel(Arc::new(cfg.clone()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let seen = Mutex::new(Vec::<(String, Trigger)>::new());
        let run = triggers(
            Source::File(path.clone()),
            "a".into(),
            cfg_rx,
            None,
            stop_rx,
            |text, trigger| seen.lock().unwrap().push((text.to_string(), trigger)),
        );
        let texts =
            || -> Vec<String> { seen.lock().unwrap().iter().map(|s| s.0.clone()).collect() };
        let wait = |s| tokio::time::sleep(Duration::from_millis(s));
        let script = async {
            wait(2500).await;
            assert!(texts().is_empty(), "unchanged content applied");
            // An editor's rename-write.
            let tmp = dir.path().join(".fanout.toml.swp");
            std::fs::write(&tmp, "b").unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            wait(1500).await;
            assert_eq!(texts(), ["b"]);
            wait(3000).await;
            assert_eq!(texts(), ["b"], "the same content is applied once");
            // Gone for a while: logged, retried, nothing applied.
            std::fs::remove_file(&path).unwrap();
            wait(3000).await;
            assert_eq!(texts(), ["b"]);
            // A ConfigMap-style swap: the path becomes a symlink to new data.
            let data = dir.path().join("..data-1");
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("fanout.toml"), "c").unwrap();
            std::os::unix::fs::symlink(data.join("fanout.toml"), &path).unwrap();
            wait(1500).await;
            assert_eq!(texts(), ["b", "c"]);
            // Polling off: a change waits for SIGHUP.
            cfg.reload.watch_file = false;
            cfg_tx.send_replace(Arc::new(cfg.clone()));
            wait(1500).await;
            std::fs::write(data.join("fanout.toml"), "d").unwrap();
            wait(5000).await;
            assert_eq!(texts(), ["b", "c"]);
            stop_tx.send_replace(true);
        };
        tokio::join!(run, script);
        assert!(
            seen.lock()
                .unwrap()
                .iter()
                .all(|s| s.1 == Trigger::FileChanged)
        );
    }
}
