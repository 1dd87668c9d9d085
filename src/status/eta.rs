//! The ETA line of `fanout status`, per queue: where the estimate comes
//! from (a controller's /metrics, or its PutMetricData series), and how it
//! reads (`bulk: 153,212 left, done ~14:32 UTC (in 21 min) at 118/s`).
//! Pure: every function takes the time it formats against.

use std::collections::BTreeMap;

use serde::Serialize;

/// The controller's estimate as read at one moment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EtaReading {
    /// Executions completed per second, as the ETA assumes (`None`: not
    /// read).
    pub rate_per_s: Option<f64>,
    /// Queue name → when its backlog is expected done, Unix seconds.
    pub done_at_s: BTreeMap<String, f64>,
}

/// One queue's expected finish, as `status` reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueEta {
    /// Nothing left on the queue.
    Done,
    /// Expected done in `eta_s` (negative: overdue) at `done_at_s`.
    Estimate {
        /// Seconds from the read until the backlog is expected done.
        eta_s: f64,
        /// Unix seconds.
        done_at_s: f64,
        /// The completion rate the estimate assumes.
        rate_per_s: f64,
    },
    /// Messages left and no completions: no finish to predict.
    Stalled,
    /// No estimate; the text says why or what to do.
    Unknown(String),
}

/// `queue`'s ETA from `reading` (`Err`: no reading, with the reason) for
/// `left` messages, at `now_s` (Unix seconds).
pub fn queue_eta(
    queue: &str,
    left: u64,
    reading: Result<&EtaReading, &str>,
    now_s: f64,
) -> QueueEta {
    if left == 0 {
        return QueueEta::Done;
    }
    let r = match reading {
        Ok(r) => r,
        Err(why) => return QueueEta::Unknown(why.to_string()),
    };
    let done_at = r.done_at_s.get(queue).copied().filter(|t| t.is_finite());
    match (r.rate_per_s, done_at) {
        // The controller's ETA assumes this rate: at 0 it publishes none
        // (or an old one), and nothing will finish.
        (Some(rate), _) if rate <= 0.0 || !rate.is_finite() => QueueEta::Stalled,
        (Some(rate), Some(at)) => QueueEta::Estimate {
            eta_s: at - now_s,
            done_at_s: at,
            rate_per_s: rate,
        },
        (None, _) => QueueEta::Unknown("the controller reports no completion rate".into()),
        (Some(_), None) => QueueEta::Unknown(
            "the controller has no estimate for this queue yet (every 30 s)".into(),
        ),
    }
}

/// The JSON fields of a queue's ETA (flattened into the queue's object).
#[derive(Serialize)]
struct EtaJson<'a> {
    /// `done`, `estimate`, `stalled` or `unknown`.
    eta: &'static str,
    eta_seconds: Option<f64>,
    /// RFC 3339, UTC.
    done_at: Option<String>,
    rate_per_s: Option<f64>,
    /// Why there is no estimate.
    eta_unknown: Option<&'a str>,
}

impl Serialize for QueueEta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let none = EtaJson {
            eta: "unknown",
            eta_seconds: None,
            done_at: None,
            rate_per_s: None,
            eta_unknown: None,
        };
        let j = match self {
            QueueEta::Done => EtaJson {
                eta: "done",
                eta_seconds: Some(0.0),
                ..none
            },
            QueueEta::Estimate {
                eta_s,
                done_at_s,
                rate_per_s,
            } => EtaJson {
                eta: "estimate",
                eta_seconds: Some(eta_s.round()),
                done_at: Some(rfc3339(*done_at_s)),
                rate_per_s: Some(*rate_per_s),
                ..none
            },
            QueueEta::Stalled => EtaJson {
                eta: "stalled",
                rate_per_s: Some(0.0),
                ..none
            },
            QueueEta::Unknown(why) => EtaJson {
                eta_unknown: Some(why),
                ..none
            },
        };
        j.serialize(s)
    }
}

/// `bulk: 153,212 left, done ~14:32 UTC (in 21 min) at 118/s`.
pub fn line(queue: &str, left: u64, eta: &QueueEta, now_s: f64) -> String {
    let left = thousands(left);
    match eta {
        QueueEta::Done => format!("{queue}: done (0 left)"),
        QueueEta::Estimate {
            eta_s,
            done_at_s,
            rate_per_s,
        } => format!(
            "{queue}: {left} left, done ~{} ({}) at {}/s",
            clock(*done_at_s, now_s),
            relative(*eta_s),
            rate(*rate_per_s)
        ),
        QueueEta::Stalled => format!("{queue}: {left} left, stalled (0 completions/s)"),
        QueueEta::Unknown(why) => format!("{queue}: {left} left (ETA: {why})"),
    }
}

/// 153212 → `153,212`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate with the digits that matter: `1,180`, `118`, `2.5`, `0.25`.
pub fn rate(r: f64) -> String {
    if r >= 10.0 {
        thousands(r.round() as u64)
    } else if r >= 1.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.2}")
    }
}

/// `in 21 min`, `in 3 h 05 min`, `in 2 d 4 h`; `in under a minute`;
/// `overdue by 4 min` for a finish already past.
pub fn relative(secs: f64) -> String {
    if secs < -30.0 {
        return format!("overdue by {}", span(-secs));
    }
    if secs < 30.0 {
        return "in under a minute".into();
    }
    format!("in {}", span(secs))
}

fn span(secs: f64) -> String {
    let min = (secs / 60.0).round() as u64;
    match min {
        0..60 => format!("{min} min"),
        60..2880 => format!("{} h {:02} min", min / 60, min % 60),
        _ => format!("{} d {} h", min / 1440, min % 1440 / 60),
    }
}

/// `14:32 UTC`, with the date when it is not `now_s`'s UTC day.
pub fn clock(at_s: f64, now_s: f64) -> String {
    let (date, h, m, _) = utc(at_s);
    if date == utc(now_s).0 {
        format!("{h:02}:{m:02} UTC")
    } else {
        let (y, mo, d) = date;
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
    }
}

/// `2026-05-03T14:32:10Z`.
pub fn rfc3339(at_s: f64) -> String {
    let ((year, month, day), hour, min, sec) = utc(at_s);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{min:02}:{sec:02}Z")
}

/// ((year, month, day), hour, minute, second) of Unix seconds, UTC.
fn utc(at_s: f64) -> ((i64, u32, u32), u32, u32, u32) {
    let t = at_s.round() as i64;
    let (days, sec) = (t.div_euclid(86_400), t.rem_euclid(86_400) as u32);
    (civil(days), sec / 3600, sec % 3600 / 60, sec % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A Prometheus text sample: the series name, its labels (values
/// unescaped) and the value.
pub type Sample<'a> = (&'a str, Vec<(&'a str, String)>, f64);

/// One Prometheus text sample; `None` for comments, blank lines and
/// anything malformed. Label values are unescaped (`\\`, `\"`, `\n`, as
/// `metrics::escape_label_value` writes them).
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_end_matches('\r');
    if line.starts_with('#') {
        return None;
    }
    let end = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(end);
    let mut labels = Vec::new();
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches(',');
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = r.split_once("=\"")?;
            let (value, after) = unescape_quoted(after)?;
            labels.push((label, value));
            r = after;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The label value up to its closing quote, unescaped, and what follows.
fn unescape_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

// The tests compare values copied, not computed.
#[allow(clippy::float_cmp)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::escape_label_value;

    /// 2026-05-03 14:11:00 UTC.
    const NOW: f64 = 1_777_817_460.0;

    fn reading(rate: f64, queue: &str, eta_s: f64) -> EtaReading {
        EtaReading {
            rate_per_s: Some(rate),
            done_at_s: [(queue.to_string(), NOW + eta_s)].into(),
        }
    }

    #[test]
    fn the_issue_s_line() {
        let r = reading(118.2, "bulk", 21.0 * 60.0);
        let eta = queue_eta("bulk", 153_212, Ok(&r), NOW);
        assert_eq!(
            line("bulk", 153_212, &eta, NOW),
            "bulk: 153,212 left, done ~14:32 UTC (in 21 min) at 118/s"
        );
    }

    #[test]
    fn empty_is_done_zero_rate_is_stalled_and_no_reading_says_why() {
        let r = reading(0.0, "bulk", 600.0);
        assert_eq!(queue_eta("bulk", 0, Ok(&r), NOW), QueueEta::Done);
        assert_eq!(queue_eta("bulk", 0, Err("x"), NOW), QueueEta::Done);
        let stalled = queue_eta("bulk", 5, Ok(&r), NOW);
        assert_eq!(stalled, QueueEta::Stalled);
        assert_eq!(
            line("bulk", 1234, &stalled, NOW),
            "bulk: 1,234 left, stalled (0 completions/s)"
        );
        let none = queue_eta("bulk", 153_212, Err("run with --controller URL"), NOW);
        assert_eq!(
            line("bulk", 153_212, &none, NOW),
            "bulk: 153,212 left (ETA: run with --controller URL)"
        );
        assert_eq!(line("bulk", 0, &QueueEta::Done, NOW), "bulk: done (0 left)");
        let other = queue_eta("priority", 3, Ok(&reading(5.0, "bulk", 60.0)), NOW);
        assert!(matches!(other, QueueEta::Unknown(_)), "{other:?}");
    }

    #[test]
    fn json_fields_are_null_when_unknown() {
        let j = |e: &QueueEta| serde_json::to_value(e).unwrap();
        let est = queue_eta("bulk", 9, Ok(&reading(2.5, "bulk", 3600.0)), NOW);
        let v = j(&est);
        assert_eq!(v["eta"], "estimate");
        assert_eq!(v["eta_seconds"], 3600.0);
        assert_eq!(v["done_at"], "2026-05-03T15:11:00Z");
        assert_eq!(v["rate_per_s"], 2.5);
        let v = j(&QueueEta::Unknown("why".into()));
        assert!(v["eta_seconds"].is_null() && v["done_at"].is_null() && v["rate_per_s"].is_null());
        assert_eq!(v["eta_unknown"], "why");
        assert_eq!(j(&QueueEta::Stalled)["rate_per_s"], 0.0);
        assert_eq!(j(&QueueEta::Done)["eta_seconds"], 0.0);
    }

    #[test]
    fn numbers_and_times_read_as_a_person_writes_them() {
        let t: Vec<String> = [0, 7, 999, 1000, 153_212, 1_234_567].map(thousands).into();
        assert_eq!(t, ["0", "7", "999", "1,000", "153,212", "1,234,567"]);
        assert_eq!(
            [1180.4, 118.2, 2.54, 0.254].map(rate),
            ["1,180", "118", "2.5", "0.25"]
        );
        let r: Vec<String> = [10.0, 90.0, 3540.0, 3600.0, 11_100.0, 200_000.0, -300.0]
            .map(relative)
            .into();
        assert_eq!(
            r,
            [
                "in under a minute",
                "in 2 min",
                "in 59 min",
                "in 1 h 00 min",
                "in 3 h 05 min",
                "in 2 d 7 h",
                "overdue by 5 min"
            ]
        );
        assert_eq!(clock(NOW + 60.0, NOW), "14:12 UTC");
        // Past midnight: the date too.
        assert_eq!(clock(NOW + 11.0 * 3600.0, NOW), "2026-05-04 01:11 UTC");
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(NOW), "2026-05-03T14:11:00Z");
    }

    #[test]
    fn samples_parse_with_escaped_labels() {
        let q = "we\"ird\\ q\nx}";
        let text = format!(
            "fanout_backlog_eta_seconds{{queue=\"{}\"}} 1260\n",
            escape_label_value(q)
        );
        let (name, labels, v) = parse_sample(text.lines().next().unwrap()).unwrap();
        assert_eq!(name, "fanout_backlog_eta_seconds");
        assert_eq!(labels, [("queue", q.to_string())]);
        assert_eq!(v, 1260.0);
        let (_, labels, v) =
            parse_sample("fanout_queue_messages{queue=\"a\",state=\"visible\"} 7 1700000000")
                .unwrap();
        assert_eq!(labels, [("queue", "a".into()), ("state", "visible".into())]);
        assert_eq!(v, 7.0);
        assert_eq!(
            parse_sample("fanout_completions_per_second 118.25"),
            Some(("fanout_completions_per_second", vec![], 118.25))
        );
        for bad in ["# HELP x y", "", "x{queue=\"a} 1", "x 1e"] {
            assert_eq!(parse_sample(bad), None, "{bad}");
        }
    }
}
