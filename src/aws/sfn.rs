//! `Executions` over Step Functions, for one state machine.

use aws_sdk_sfn::Client;
use aws_sdk_sfn::operation::redrive_execution::RedriveExecutionError;
use aws_sdk_sfn::types::{ExecutionRedriveStatus, ExecutionStatus, Tag};

use super::classify;
use crate::control::naming::short_hash;
use crate::control::refusal::same_input;
use crate::ports::{
    ClosedExecution, ClosedPage, ExecutionDetail, ExecutionPage, ExecutionStatus as Status,
    Executions, PortError, RedriveOutcome, StartOutcome,
};

const SERVICE: &str = "states";
/// History events read (newest first) to find the state an execution
/// failed in: its last state entered is within a few events of its end.
const HISTORY_EVENTS: i32 = 25;

/// The SDK's status as ours.
fn status(s: &ExecutionStatus) -> Option<Status> {
    Some(match s {
        ExecutionStatus::Running => Status::Running,
        ExecutionStatus::Succeeded => Status::Succeeded,
        ExecutionStatus::Failed => Status::Failed,
        ExecutionStatus::TimedOut => Status::TimedOut,
        ExecutionStatus::Aborted => Status::Aborted,
        ExecutionStatus::PendingRedrive => Status::PendingRedrive,
        _ => return None,
    })
}

/// Ours as the SDK's.
fn sdk_status(s: Status) -> ExecutionStatus {
    ExecutionStatus::from(s.as_str())
}

/// Whether RedriveExecution refused this execution for itself (the
/// request's fault, not the service's or the task role's).
fn refused_for_itself(e: &RedriveExecutionError) -> bool {
    e.is_execution_not_redrivable()
        || e.is_execution_does_not_exist()
        || e.is_invalid_arn()
        || e.is_validation_exception()
}
/// The state machine tag that keeps the learned Lambdas per execution:
/// `"<k> def=<hash of the definition>"`, so a changed workflow starts
/// from the maximum again.
pub const REMEMBER_TAG: &str = "fanout:lambdas-per-execution";

/// The tag value for `k` learned on the definition hashed `def`.
fn tag_value(k: f64, def: &str) -> String {
    format!("{k:.4} def={def}")
}

/// `k` from a tag value, if it was written for the definition `def`.
fn parse_tag_value(value: &str, def: &str) -> Option<f64> {
    let (k, rest) = value.split_once(' ')?;
    if rest.strip_prefix("def=")? != def {
        return None;
    }
    k.parse::<f64>().ok().filter(|k| k.is_finite() && *k > 0.0)
}

/// The ARN of execution `name` of the state machine `state_machine_arn`:
/// `arn:PARTITION:states:REGION:ACCOUNT:execution:SM_NAME:NAME` (a version
/// or alias qualifier of the state machine is not part of it).
fn execution_arn(state_machine_arn: &str, name: &str) -> String {
    let parts: Vec<&str> = state_machine_arn.split(':').collect();
    match parts.as_slice() {
        [prefix @ .., "stateMachine", sm] | [prefix @ .., "stateMachine", sm, _]
            if prefix.len() == 5 =>
        {
            format!("{}:execution:{sm}:{name}", prefix.join(":"))
        }
        _ => format!(
            "{}:{name}",
            state_machine_arn.replacen(":stateMachine:", ":execution:", 1)
        ),
    }
}

/// Why counting running executions failed.
#[derive(Debug, thiserror::Error)]
pub enum SfnError {
    /// A ListExecutions call failed.
    #[error("ListExecutions(RUNNING) on {state_machine_arn}: {source}")]
    List {
        /// The state machine listed.
        state_machine_arn: String,
        /// The call's error.
        source: PortError,
    },
}

/// `Executions` for one state machine.
#[derive(Clone, Debug)]
pub struct SfnExecutions {
    client: Client,
    arn: String,
}

impl SfnExecutions {
    /// The executions of the state machine `state_machine_arn`.
    pub fn new(client: Client, state_machine_arn: impl Into<String>) -> SfnExecutions {
        SfnExecutions {
            client,
            arn: state_machine_arn.into(),
        }
    }

    /// Count RUNNING executions, every page (for `fanout status`).
    pub async fn count_running(&self) -> Result<u64, SfnError> {
        let mut token = None;
        let mut n = 0u64;
        loop {
            let page = self
                .list_running(token)
                .await
                .map_err(|source| SfnError::List {
                    state_machine_arn: self.arn.clone(),
                    source,
                })?;
            n += page.names.len() as u64;
            match page.next_token {
                Some(t) => token = Some(t),
                None => return Ok(n),
            }
        }
    }

    /// The state machine's current definition (DescribeStateMachine).
    async fn describe_definition(&self) -> Result<String, PortError> {
        let out = self
            .client
            .describe_state_machine()
            .state_machine_arn(&self.arn)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(out.definition().to_string())
    }

    /// Hash of the state machine's current definition.
    async fn definition_hash(&self) -> Result<String, PortError> {
        Ok(short_hash(&self.describe_definition().await?))
    }
}

impl Executions for SfnExecutions {
    async fn start(&self, name: &str, input: &str) -> Result<StartOutcome, PortError> {
        match self
            .client
            .start_execution()
            .state_machine_arn(&self.arn)
            .name(name)
            .input(input)
            .send()
            .await
        {
            Ok(_) => Ok(StartOutcome::Started),
            Err(e)
                if e.as_service_error()
                    .is_some_and(aws_sdk_sfn::operation::start_execution::StartExecutionError::is_execution_already_exists) =>
            {
                Ok(StartOutcome::AlreadyExists)
            }
            Err(e) => Err(classify(SERVICE, &e)),
        }
    }

    async fn input_matches(&self, name: &str, input: &str) -> Result<bool, PortError> {
        let out = self
            .client
            .describe_execution()
            .execution_arn(execution_arn(&self.arn, name))
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        match out.input() {
            Some(have) => Ok(same_input(have, input)),
            // Only when asked for metadata alone; not telling is not "no".
            None => Err(PortError::Transient {
                service: SERVICE,
                code: "NoInput".into(),
                message: format!("DescribeExecution of {name} returned no input"),
            }),
        }
    }

    async fn redrive(&self, execution_arn: &str, token: &str) -> Result<RedriveOutcome, PortError> {
        // The API takes 1-64 printable ASCII characters (an SQS message id
        // is a UUID); anything else goes without one, as before.
        let valid =
            (1..=64).contains(&token.len()) && token.bytes().all(|b| (b'!'..=b'~').contains(&b));
        match self
            .client
            .redrive_execution()
            .execution_arn(execution_arn)
            .set_client_token(valid.then(|| token.to_string()))
            .send()
            .await
        {
            Ok(_) => Ok(RedriveOutcome::Redriven),
            Err(e) if e.as_service_error().is_some_and(refused_for_itself) => {
                let e = classify(SERVICE, &e);
                Ok(RedriveOutcome::NotRedrivable(match e {
                    PortError::Permanent { code, message, .. } => format!("{code}: {message}"),
                    other => other.to_string(),
                }))
            }
            Err(e) => Err(classify(SERVICE, &e)),
        }
    }

    async fn describe(&self, execution_arn: &str) -> Result<ExecutionDetail, PortError> {
        let out = self
            .client
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        let not_redrivable = (out.redrive_status() == Some(&ExecutionRedriveStatus::NotRedrivable))
            .then(|| {
                out.redrive_status_reason()
                    .unwrap_or("NOT_REDRIVABLE")
                    .to_string()
            });
        Ok(ExecutionDetail {
            status: status(out.status()),
            input: out.input().map(str::to_string),
            error: out.error().map(str::to_string),
            cause: out.cause().map(str::to_string),
            redrive_count: out.redrive_count().unwrap_or(0).max(0) as u32,
            not_redrivable,
        })
    }

    async fn list_closed(
        &self,
        wanted: Status,
        next_token: Option<String>,
    ) -> Result<ClosedPage, PortError> {
        let out = self
            .client
            .list_executions()
            .state_machine_arn(&self.arn)
            .status_filter(sdk_status(wanted))
            .max_results(1000)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(ClosedPage {
            executions: out
                .executions()
                .iter()
                .map(|x| ClosedExecution {
                    arn: x.execution_arn().to_string(),
                    name: x.name().to_string(),
                    status: status(x.status()).unwrap_or(wanted),
                    started_s: x.start_date().as_secs_f64(),
                    stopped_s: x
                        .stop_date()
                        .map(aws_sdk_sfn::primitives::DateTime::as_secs_f64),
                    redrive_count: x.redrive_count().unwrap_or(0).max(0) as u32,
                })
                .collect(),
            next_token: out.next_token().map(str::to_string),
        })
    }

    async fn failed_state(&self, execution_arn: &str) -> Result<Option<String>, PortError> {
        let out = self
            .client
            .get_execution_history()
            .execution_arn(execution_arn)
            .reverse_order(true)
            .max_results(HISTORY_EVENTS)
            .include_execution_data(false)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        // The latest state entered: by event id, as moto 5.2.5 ignores
        // reverseOrder and answers oldest first.
        Ok(out
            .events()
            .iter()
            .filter_map(|e| Some((e.id(), e.state_entered_event_details()?)))
            .max_by_key(|(id, _)| *id)
            .map(|(_, d)| d.name().to_string()))
    }

    async fn definition(&self) -> Result<Option<String>, PortError> {
        self.describe_definition().await.map(Some)
    }

    async fn list_running(&self, next_token: Option<String>) -> Result<ExecutionPage, PortError> {
        let out = self
            .client
            .list_executions()
            .state_machine_arn(&self.arn)
            .status_filter(ExecutionStatus::Running)
            .max_results(1000)
            .set_next_token(next_token)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(ExecutionPage {
            names: out
                .executions()
                .iter()
                .map(|x| x.name().to_string())
                .collect(),
            next_token: out.next_token().map(str::to_string),
        })
    }

    async fn remembered_k(&self) -> Result<Option<f64>, PortError> {
        let def = self.definition_hash().await?;
        let out = self
            .client
            .list_tags_for_resource()
            .resource_arn(&self.arn)
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(out
            .tags()
            .iter()
            .find(|t| t.key() == Some(REMEMBER_TAG))
            .and_then(|t| parse_tag_value(t.value()?, &def)))
    }

    async fn remember_k(&self, k: f64) -> Result<(), PortError> {
        let def = self.definition_hash().await?;
        self.client
            .tag_resource()
            .resource_arn(&self.arn)
            .tags(
                Tag::builder()
                    .key(REMEMBER_TAG)
                    .value(tag_value(k, &def))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(SERVICE, &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_execution_arn_is_built_from_the_state_machine_arn() {
        let sm = "arn:aws:states:eu-west-1:123456789012:stateMachine:pipeline";
        assert_eq!(
            execution_arn(sm, "c-1"),
            "arn:aws:states:eu-west-1:123456789012:execution:pipeline:c-1"
        );
        assert_eq!(
            execution_arn(&format!("{sm}:7"), "c-1"),
            "arn:aws:states:eu-west-1:123456789012:execution:pipeline:c-1",
            "a version's executions are the state machine's"
        );
        assert_eq!(
            execution_arn("arn:aws-cn:states:cn-north-1:1:stateMachine:p", "x"),
            "arn:aws-cn:states:cn-north-1:1:execution:p:x"
        );
    }

    #[test]
    fn a_tag_is_read_back_only_for_the_definition_it_was_written_for() {
        let v = tag_value(1.93812, "abc123");
        assert_eq!(v, "1.9381 def=abc123");
        assert_eq!(parse_tag_value(&v, "abc123"), Some(1.9381));
        assert_eq!(parse_tag_value(&v, "ffff00"), None);
        assert_eq!(parse_tag_value("garbage", "abc123"), None);
        assert_eq!(parse_tag_value("-1 def=abc123", "abc123"), None);
        assert_eq!(parse_tag_value("NaN def=abc123", "abc123"), None);
    }
}
