//! Redrive requests: the SQS message that asks the controller to run a
//! failed execution again (RedriveExecution) instead of starting a new
//! one, so a redrive takes budget and pacing like any start.
//!
//! The body is `{"fanout_redrive":{"execution_arn":"arn:...:execution:SM:NAME"}}`
//! (`request_body`); any other body is work to start. What a refused
//! redrive means follows from the execution's status (`after_refusal`).

use serde_json::Value;

use crate::ports::ExecutionStatus;

/// The top-level key that marks a body as a redrive request.
pub const REQUEST_KEY: &str = "fanout_redrive";

/// How long after its close Step Functions redrives an execution: 14 days.
pub const REDRIVABLE_SECS: f64 = 14.0 * 86_400.0;

/// The body of a redrive request for `execution_arn`.
pub fn request_body(execution_arn: &str) -> String {
    serde_json::json!({ REQUEST_KEY: { "execution_arn": execution_arn } }).to_string()
}

/// Why a body marked as a redrive request cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `fanout_redrive.execution_arn` is missing or not a string.
    #[error(
        "the body has \"{REQUEST_KEY}\" but no string \"execution_arn\" in it; write {{\"{REQUEST_KEY}\":{{\"execution_arn\":\"arn:...\"}}}} (fanout redrive does)"
    )]
    NoArn,
    /// The ARN is not one of an execution of the configured state machine.
    #[error(
        "\"{arn}\" is not an execution of {state_machine_arn} (aws.state_machine_arn); redrive it with that state machine's fanout"
    )]
    OtherStateMachine {
        /// The ARN in the request.
        arn: String,
        /// The configured state machine.
        state_machine_arn: String,
    },
}

/// The execution ARN a body asks to redrive: `None` when the body is not
/// a redrive request (ordinary work), `Some(Err)` when it is one that
/// cannot be served. The ARN must be an execution of `state_machine_arn`
/// (when one is configured: the scripted tests run without).
pub fn parse_request(body: &str, state_machine_arn: &str) -> Option<Result<String, RequestError>> {
    // Cheap test first: most bodies are work.
    if !body.contains(REQUEST_KEY) {
        return None;
    }
    let v: Value = serde_json::from_str(body).ok()?;
    let req = v.as_object()?.get(REQUEST_KEY)?;
    let Some(arn) = req.get("execution_arn").and_then(Value::as_str) else {
        return Some(Err(RequestError::NoArn));
    };
    if !state_machine_arn.is_empty() && !of_state_machine(arn, state_machine_arn) {
        return Some(Err(RequestError::OtherStateMachine {
            arn: arn.to_string(),
            state_machine_arn: state_machine_arn.to_string(),
        }));
    }
    Some(Ok(arn.to_string()))
}

/// Whether `execution_arn` (`arn:P:states:R:A:execution:SM:NAME`) is an
/// execution of `state_machine_arn` (`arn:P:states:R:A:stateMachine:SM`,
/// with or without a version or alias qualifier).
fn of_state_machine(execution_arn: &str, state_machine_arn: &str) -> bool {
    let e: Vec<&str> = execution_arn.split(':').collect();
    let s: Vec<&str> = state_machine_arn.split(':').collect();
    e.len() == 8
        && s.len() >= 7
        && e[5] == "execution"
        && s[5] == "stateMachine"
        && e[..5] == s[..5]
        && e[6] == s[6]
        && !e[7].is_empty()
}

/// The execution name in an execution ARN: its last field.
pub fn execution_name(execution_arn: &str) -> &str {
    execution_arn.rsplit(':').next().unwrap_or(execution_arn)
}

/// What a redrive request comes to once RedriveExecution refused it and
/// DescribeExecution told the execution's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRefusal {
    /// It runs again already (an earlier copy of this request, or someone
    /// else, redrove it): the request is done.
    AlreadyRunning,
    /// It succeeded since: the request is done.
    AlreadySucceeded,
    /// It stays failed and cannot be redriven: dead-letter the request.
    NotRedrivable,
}

/// The fate of a redrive request refused by RedriveExecution, from the
/// execution's status. RedriveExecution refuses a RUNNING execution
/// ("Execution is RUNNING and cannot be redriven") and a SUCCEEDED one,
/// which is what a second copy of a request meets: that is done, not an
/// error.
pub fn after_refusal(status: Option<ExecutionStatus>) -> AfterRefusal {
    match status {
        Some(ExecutionStatus::Running | ExecutionStatus::PendingRedrive) => {
            AfterRefusal::AlreadyRunning
        }
        Some(ExecutionStatus::Succeeded) => AfterRefusal::AlreadySucceeded,
        _ => AfterRefusal::NotRedrivable,
    }
}

/// Whether an execution closed at `stopped_s` can still be redriven at
/// `now_s` (same clock): within 14 days of its close. Unknown: yes, and
/// RedriveExecution will tell.
pub fn within_window(stopped_s: Option<f64>, now_s: f64) -> bool {
    stopped_s.is_none_or(|t| now_s - t <= REDRIVABLE_SECS)
}

/// Executions' worth of Lambdas that `redriven` running redriven
/// executions may use beyond what the estimate `k` counts for them: a
/// redriven execution resumes at the state that failed (often a Map, at
/// its widest) rather than at the narrow start the measured `k` averages
/// over, so admission counts each at `k_max` until it ends.
pub fn width_debt(redriven: usize, k: f64, k_max: f64) -> usize {
    if redriven == 0 || k <= 0.0 || k_max <= k {
        return 0;
    }
    (redriven as f64 * (k_max / k - 1.0)).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const SM: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:pipeline";
    const EX: &str = "arn:aws:states:us-east-1:123456789012:execution:pipeline:c-42";

    #[test]
    fn a_request_round_trips_and_work_is_not_a_request() {
        let body = request_body(EX);
        assert_eq!(
            body,
            format!(r#"{{"fanout_redrive":{{"execution_arn":"{EX}"}}}}"#)
        );
        assert_eq!(parse_request(&body, SM), Some(Ok(EX.to_string())));
        assert_eq!(
            parse_request(&body, &format!("{SM}:3")),
            Some(Ok(EX.to_string())),
            "a version's executions are the state machine's"
        );
        assert_eq!(parse_request(r#"{"company_id":"42"}"#, SM), None);
        assert_eq!(parse_request("not json fanout_redrive", SM), None);
        assert_eq!(
            parse_request(r#"{"company_id":"fanout_redrive"}"#, SM),
            None,
            "the key, not the text"
        );
        assert_eq!(execution_name(EX), "c-42");
    }

    #[test]
    fn a_request_without_an_arn_or_for_another_state_machine_is_refused() {
        assert_eq!(
            parse_request(r#"{"fanout_redrive":{}}"#, SM),
            Some(Err(RequestError::NoArn))
        );
        let other = "arn:aws:states:us-east-1:123456789012:execution:other:c-42";
        assert!(matches!(
            parse_request(&request_body(other), SM),
            Some(Err(RequestError::OtherStateMachine { .. }))
        ));
        let other_account = "arn:aws:states:us-east-1:999999999999:execution:pipeline:c-42";
        assert!(matches!(
            parse_request(&request_body(other_account), SM),
            Some(Err(RequestError::OtherStateMachine { .. }))
        ));
    }

    #[test]
    fn a_refused_redrive_of_a_running_or_succeeded_execution_is_done() {
        assert_eq!(
            after_refusal(Some(ExecutionStatus::Running)),
            AfterRefusal::AlreadyRunning
        );
        assert_eq!(
            after_refusal(Some(ExecutionStatus::PendingRedrive)),
            AfterRefusal::AlreadyRunning
        );
        assert_eq!(
            after_refusal(Some(ExecutionStatus::Succeeded)),
            AfterRefusal::AlreadySucceeded
        );
        for s in ExecutionStatus::UNSUCCESSFUL {
            assert_eq!(after_refusal(Some(s)), AfterRefusal::NotRedrivable, "{s:?}");
        }
        assert_eq!(after_refusal(None), AfterRefusal::NotRedrivable);
    }

    #[test]
    fn a_redriven_execution_counts_at_its_widest() {
        assert_eq!(width_debt(0, 2.0, 3.0), 0);
        assert_eq!(
            width_debt(100, 2.0, 3.0),
            50,
            "100 × 3/2 = 150 executions' worth"
        );
        assert_eq!(width_debt(1, 2.9, 3.0), 1, "rounded up");
        assert_eq!(width_debt(100, 3.0, 3.0), 0, "k has caught up");
        assert_eq!(width_debt(100, 0.0, 3.0), 0);
    }

    #[test]
    fn the_window_is_14_days_from_the_close() {
        let day = 86_400.0;
        assert!(within_window(Some(0.0), 14.0 * day));
        assert!(!within_window(Some(0.0), 14.0 * day + 1.0));
        assert!(within_window(None, 1e12));
    }
}
