//! Lambda: reserved concurrency of the configured pipeline functions
//! (GetFunctionConcurrency), shown by `fanout status` and logged by
//! `fanout run`. Live usage comes from CloudWatch, not from here.

use aws_sdk_lambda::Client;

use super::classify;
use crate::ports::PortError;

const SERVICE: &str = "lambda";

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

/// Reserved concurrency per function (`None`: not reserved, uses the
/// account's unreserved pool).
pub async fn reserved_concurrency(
    client: &Client,
    functions: &[String],
) -> Result<Vec<(String, Option<i32>)>, LambdaError> {
    let mut out = Vec::with_capacity(functions.len());
    for f in functions {
        let r = client
            .get_function_concurrency()
            .function_name(f)
            .send()
            .await
            .map_err(|e| LambdaError::Concurrency {
                function: f.clone(),
                source: classify(SERVICE, &e),
            })?;
        out.push((f.clone(), r.reserved_concurrent_executions()));
    }
    Ok(out)
}
