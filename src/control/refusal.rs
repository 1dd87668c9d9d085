//! Why a message goes to its dead-letter queue (`DeadReason`, each with
//! the short code of the `fanout-reason-code` attribute), which
//! StartExecution refusals are the message's fault (`refused_message`),
//! and when an `ExecutionAlreadyExists` means the message was already
//! started.

use crate::control::naming::Unstartable;
use crate::ports::PortError;

/// Why a message was moved to its DLQ instead of being started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeadReason {
    /// The body can never start (checked before StartExecution).
    #[error(transparent)]
    Unstartable(#[from] Unstartable),
    /// Its execution name belongs to an execution started with other
    /// input: another message renders to the same name.
    #[error(
        "execution name \"{0}\" is already used by an execution with different input (another message renders the same name); make naming.template tell them apart (add {{hash}}), or send the update again once that execution is older than 90 days"
    )]
    NameCollision(String),
    /// Step Functions refused the body (`InvalidExecutionInput`) though
    /// the controller's own checks passed it; the service's message.
    #[error(
        "Step Functions refused the body as execution input (InvalidExecutionInput: {0}); fix the body and send it again"
    )]
    InvalidExecutionInput(String),
    /// Step Functions refused the execution name (`InvalidName`).
    #[error(
        "Step Functions refused the execution name \"{name}\" (InvalidName: {message}); check naming.template and the fields it names, then send the message again"
    )]
    InvalidName {
        /// The name sent.
        name: String,
        /// The service's message.
        message: String,
    },
    /// A redrive request whose execution cannot be redriven (too old,
    /// not redrivable, does not exist, another state machine's) and does
    /// not run again.
    #[error(
        "execution {execution_arn} cannot be redriven ({reason}); run `fanout redrive --requeue` to send its original input as a new message"
    )]
    NotRedrivable {
        /// The execution the request named (or the body, if it named none).
        execution_arn: String,
        /// Step Functions' code and message, or why the request is refused.
        reason: String,
    },
}

impl DeadReason {
    /// A stable short code, for metrics and the DLQ message attribute.
    pub fn code(&self) -> &'static str {
        match self {
            DeadReason::Unstartable(u) => u.code(),
            DeadReason::NameCollision(_) => "name_collision",
            DeadReason::InvalidExecutionInput(_) => "invalid_execution_input",
            DeadReason::InvalidName { .. } => "invalid_name",
            DeadReason::NotRedrivable { .. } => "not_redrivable",
        }
    }
}

/// The reason to dead-letter a message whose StartExecution under `name`
/// failed with `e`, when the refusal is about that message (its input, its
/// name): other messages can still start. `None` for everything else,
/// including permanent errors about the service (AccessDenied,
/// StateMachineDoesNotExist, a wrong ARN), which every message would meet.
pub fn refused_message(e: &PortError, name: &str) -> Option<DeadReason> {
    let PortError::Permanent { code, message, .. } = e else {
        return None;
    };
    match code.as_str() {
        "InvalidExecutionInput" => Some(DeadReason::InvalidExecutionInput(message.clone())),
        "InvalidName" => Some(DeadReason::InvalidName {
            name: name.to_string(),
            message: message.clone(),
        }),
        _ => None,
    }
}

/// Whether an existing execution's input is this message's body: the
/// same text, or the same JSON value (whitespace, key order).
pub fn same_input(existing: &str, body: &str) -> bool {
    existing == body
        || matches!(
            (
                serde_json::from_str::<serde_json::Value>(existing),
                serde_json::from_str::<serde_json::Value>(body),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_json_is_the_same_input_and_other_json_is_not() {
        assert!(same_input(r#"{"a":1}"#, r#"{"a":1}"#));
        assert!(same_input(r#"{"a": 1, "b": 2}"#, r#"{"b":2,"a":1}"#));
        assert!(!same_input(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(!same_input("not json", "not  json"));
    }

    fn permanent(code: &str) -> PortError {
        PortError::Permanent {
            service: "states",
            code: code.into(),
            message: "why".into(),
        }
    }

    #[test]
    fn refusals_about_the_message_are_its_own_and_the_rest_the_service_s() {
        let input = refused_message(&permanent("InvalidExecutionInput"), "n").unwrap();
        assert_eq!(input.code(), "invalid_execution_input");
        assert!(input.to_string().contains("why"), "{input}");
        let name = refused_message(&permanent("InvalidName"), "a b").unwrap();
        assert_eq!(name.code(), "invalid_name");
        assert!(name.to_string().contains("\"a b\""), "{name}");
        for code in [
            "AccessDeniedException",
            "StateMachineDoesNotExist",
            "StateMachineDeleting",
            "InvalidArn",
            "ExecutionLimitExceeded",
            "ValidationException",
        ] {
            assert_eq!(refused_message(&permanent(code), "n"), None, "{code}");
        }
        let throttled = PortError::Throttled {
            service: "states",
            code: "InvalidExecutionInput".into(),
        };
        assert_eq!(refused_message(&throttled, "n"), None, "retryable stays so");
    }

    #[test]
    fn each_reason_has_its_code() {
        assert_eq!(
            DeadReason::NameCollision("x".into()).code(),
            "name_collision"
        );
        let u = DeadReason::from(Unstartable::TooLarge(1));
        assert_eq!(u.code(), "too_large");
        assert_eq!(u.to_string(), Unstartable::TooLarge(1).to_string());
    }
}
