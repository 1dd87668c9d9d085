//! Adapters implementing the ports over the AWS SDK: SQS ([`sqs`]), Step
//! Functions ([`sfn`]), CloudWatch ([`cloudwatch`]) and Lambda
//! ([`lambda`]). Clients use aws-config's default credential chain (the ECS
//! task role in production), the region from `[aws] region` or the
//! environment, and `[aws] endpoint_url` when set (emulators, VPC
//! endpoints); CloudWatch alone goes to `[aws] cloudwatch_endpoint_url`
//! when that is set. Every call has `[aws] attempt_timeout_ms` and
//! `operation_timeout_ms` (the SDK sets only a connect timeout: an
//! unanswered request would hang its caller).

pub mod claims;
pub mod cloudwatch;
pub mod lambda;
pub mod sfn;
pub mod sqs;

use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::config::AwsConfig;
use crate::ports::PortError;

/// The shared SDK configuration for every client.
pub async fn sdk_config(aws: &AwsConfig) -> aws_config::SdkConfig {
    // Pinned: an SDK upgrade must not change retry or timeout defaults
    // unseen (this is what `latest()` was when it was pinned).
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::v2026_01_12());
    if let Some(region) = &aws.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &aws.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

/// Clients for everything fanout talks to.
#[derive(Clone, Debug)]
pub struct Clients {
    /// SQS: the work queues and their DLQs.
    pub sqs: aws_sdk_sqs::Client,
    /// Step Functions: the state machine's executions.
    pub sfn: aws_sdk_sfn::Client,
    /// CloudWatch: Lambda concurrency in, fanout's metrics out.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    /// Lambda: the functions' reserved concurrency.
    pub lambda: aws_sdk_lambda::Client,
    /// DynamoDB, for the shared claim record (`[coordination]`).
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl Clients {
    /// Every client from one SDK config: the region, endpoint and
    /// credentials of `aws`.
    pub async fn new(aws: &AwsConfig) -> Clients {
        Clients::from_sdk_config(&sdk_config(aws).await, aws)
    }

    /// Every client from `c` with the timeouts of `aws`, CloudWatch's at
    /// `aws.cloudwatch_endpoint_url` when set. An endpoint set in code (as
    /// `[aws] endpoint_url` is) wins over the SDK's service-specific
    /// `AWS_ENDPOINT_URL_CLOUDWATCH`, so a per-service override has to be
    /// set here too.
    pub fn from_sdk_config(c: &aws_config::SdkConfig, aws: &AwsConfig) -> Clients {
        let t = timeouts(aws);
        let mut cloudwatch = aws_sdk_cloudwatch::config::Builder::from(c).timeout_config(t.clone());
        if let Some(url) = &aws.cloudwatch_endpoint_url {
            cloudwatch = cloudwatch.endpoint_url(url);
        }
        Clients {
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(c)
                    .timeout_config(t.clone())
                    .build(),
            ),
            sfn: aws_sdk_sfn::Client::from_conf(
                aws_sdk_sfn::config::Builder::from(c)
                    .timeout_config(t.clone())
                    .build(),
            ),
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cloudwatch.build()),
            lambda: aws_sdk_lambda::Client::from_conf(
                aws_sdk_lambda::config::Builder::from(c)
                    .timeout_config(t.clone())
                    .build(),
            ),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(c)
                    .timeout_config(t)
                    .build(),
            ),
        }
    }
}

/// `[aws]`'s attempt and operation timeouts. The builders merge them over
/// the SDK config's own, so its 3.1 s connect timeout stays.
pub fn timeouts(aws: &AwsConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(aws.attempt_timeout())
        .operation_timeout(aws.operation_timeout())
        .build()
}

/// Error codes AWS services use to ask callers to slow down. CloudWatch's
/// RPCv2-CBOR replies carry the query protocol's code ("Throttling") in
/// `x-amzn-query-error`; LimitExceededException is one the SDK's own retry
/// classifier retries as throttling, so it is one here too.
const THROTTLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "LimitExceededException",
    "TooManyRequestsException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "AWS.SimpleQueueService.RequestThrottled",
];

/// Map an SDK error onto the port's three kinds, keeping the AWS code:
/// throttling codes (and HTTP 429) are `Throttled`; HTTP 5xx, timeouts,
/// dispatch and response failures are `Transient`; the rest `Permanent`.
/// The last three carry the codes of `ports::NO_ANSWER_CODES` (no answer
/// from the service: not progress for /healthz).
pub fn classify<E>(service: &'static str, err: &SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = err.code().unwrap_or("").to_string();
    let message = err
        .message()
        .map_or_else(|| aws_smithy_error_text(err), str::to_string);
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            classify_code(service, code, status, message)
        }
        SdkError::TimeoutError(_) => PortError::Transient {
            service,
            code: "Timeout".into(),
            message,
        },
        SdkError::DispatchFailure(_) => PortError::Transient {
            service,
            code: "DispatchFailure".into(),
            message,
        },
        SdkError::ResponseError(_) => PortError::Transient {
            service,
            code: "ResponseError".into(),
            message,
        },
        _ => PortError::Permanent {
            service,
            code: if code.is_empty() {
                "ConstructionFailure".into()
            } else {
                code
            },
            message,
        },
    }
}

/// The decision on a service error's code and HTTP status.
pub fn classify_code(
    service: &'static str,
    code: String,
    status: u16,
    message: String,
) -> PortError {
    if status == 429 || THROTTLE_CODES.contains(&code.as_str()) {
        return PortError::Throttled { service, code };
    }
    let code = if code.is_empty() {
        format!("HTTP{status}")
    } else {
        code
    };
    if status >= 500 {
        PortError::Transient {
            service,
            code,
            message,
        }
    } else {
        PortError::Permanent {
            service,
            code,
            message,
        }
    }
}

/// The whole source chain of an error: the SDK's Display alone says only
/// "dispatch failure".
fn aws_smithy_error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

/// A batch entry's error (SQS `BatchResultErrorEntry`) as a port error.
pub fn classify_entry(
    service: &'static str,
    code: &str,
    message: Option<&str>,
    sender_fault: bool,
) -> PortError {
    let status = if sender_fault { 400 } else { 500 };
    classify_code(
        service,
        code.to_string(),
        status,
        message.unwrap_or("").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_kinds() {
        let k = |code: &str, status| classify_code("sfn", code.into(), status, String::new());
        assert!(matches!(
            k("ThrottlingException", 400),
            PortError::Throttled { .. }
        ));
        assert!(matches!(
            k("RequestLimitExceeded", 400),
            PortError::Throttled { .. }
        ));
        assert!(matches!(
            k("LimitExceededException", 400),
            PortError::Throttled { .. }
        ));
        assert!(matches!(k("", 429), PortError::Throttled { .. }));
        assert!(matches!(
            k("InternalFailure", 500),
            PortError::Transient { .. }
        ));
        assert!(matches!(
            k("ServiceUnavailable", 503),
            PortError::Transient { .. }
        ));
        match k("AccessDeniedException", 400) {
            PortError::Permanent { code, .. } => assert_eq!(code, "AccessDeniedException"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_entry("sqs", "InternalError", None, false),
            PortError::Transient { .. }
        ));
        assert!(matches!(
            classify_entry("sqs", "ReceiptHandleIsInvalid", Some("bad"), true),
            PortError::Permanent { .. }
        ));
    }
}
