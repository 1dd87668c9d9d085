//! Lambda: reserved concurrency of the configured pipeline functions
//! (GetFunctionConcurrency), the limit `ConcurrencyMetrics::function_limits`
//! reports and `fanout status` shows. Live usage comes from CloudWatch, not
//! from here.

use aws_sdk_lambda::Client;

use super::classify;
use crate::ports::PortError;

const SERVICE: &str = "lambda";
/// The IAM action GetFunctionConcurrency needs.
const PERMISSION: &str = "lambda:GetFunctionConcurrency";

/// Why reading a function's reserved concurrency failed.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// A GetFunctionConcurrency call failed.
    #[error("GetFunctionConcurrency for {function}: {source}")]
    Concurrency {
        /// The function asked about.
        function: String,
        /// The call's error.
        source: PortError,
    },
}

/// One function's reserved concurrency (`None`: not reserved, it draws on
/// the account's unreserved pool). A missing permission is a permanent
/// error that names the IAM action to grant.
pub async fn function_limit(client: &Client, function: &str) -> Result<Option<u32>, PortError> {
    let out = client
        .get_function_concurrency()
        .function_name(function)
        .send()
        .await
        .map_err(|e| permission_named(classify(SERVICE, &e), function))?;
    // Reserved concurrency is never negative; a negative value would be a
    // broken reply: treat it as no limit rather than as 0.
    Ok(out
        .reserved_concurrent_executions()
        .and_then(|n| u32::try_from(n).ok()))
}

/// AccessDenied becomes a message an operator can act on: which action,
/// for which function.
fn permission_named(e: PortError, function: &str) -> PortError {
    match e {
        PortError::Permanent {
            service,
            code,
            message,
        } if code.starts_with("AccessDenied") => PortError::Permanent {
            service,
            message: format!(
                "the task role needs {PERMISSION} on function {function} to read its concurrency limit ({message})"
            ),
            code,
        },
        other => other,
    }
}

/// Reserved concurrency per function, in the order given (`None`: not
/// reserved, uses the account's unreserved pool).
pub async fn reserved_concurrency(
    client: &Client,
    functions: &[String],
) -> Result<Vec<(String, Option<i32>)>, LambdaError> {
    let mut out = Vec::with_capacity(functions.len());
    for f in functions {
        let limit = function_limit(client, f)
            .await
            .map_err(|source| LambdaError::Concurrency {
                function: f.clone(),
                source,
            })?;
        out.push((
            f.clone(),
            limit.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_permission_and_the_function() {
        let denied = PortError::Permanent {
            service: SERVICE,
            code: "AccessDeniedException".into(),
            message: "not authorized".into(),
        };
        match permission_named(denied, "score") {
            PortError::Permanent { code, message, .. } => {
                assert_eq!(code, "AccessDeniedException");
                assert!(
                    message.contains("lambda:GetFunctionConcurrency"),
                    "{message}"
                );
                assert!(message.contains("score"), "{message}");
                assert!(message.contains("not authorized"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let throttled = PortError::Throttled {
            service: SERVICE,
            code: "TooManyRequestsException".into(),
        };
        assert_eq!(permission_named(throttled.clone(), "f"), throttled);
    }
}
