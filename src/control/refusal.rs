//! Why a message goes to its dead-letter queue (`DeadReason`, each with
//! the short code of the `fanout-reason-code` attribute), and when an
//! `ExecutionAlreadyExists` means the message was already started.

use crate::control::naming::Unstartable;

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
}

impl DeadReason {
    /// A stable short code, for metrics and the DLQ message attribute.
    pub fn code(&self) -> &'static str {
        match self {
            DeadReason::Unstartable(u) => u.code(),
            DeadReason::NameCollision(_) => "name_collision",
        }
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
