//! `Executions` over Step Functions, for one state machine.

use aws_sdk_sfn::Client;
use aws_sdk_sfn::types::ExecutionStatus;

use super::classify;
use crate::ports::{ExecutionPage, Executions, PortError, StartOutcome};

const SERVICE: &str = "states";

#[derive(Debug, thiserror::Error)]
pub enum SfnError {
    #[error("ListExecutions(RUNNING) on {state_machine_arn}: {source}")]
    List {
        state_machine_arn: String,
        source: PortError,
    },
}

#[derive(Clone, Debug)]
pub struct SfnExecutions {
    client: Client,
    arn: String,
}

impl SfnExecutions {
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
                    .is_some_and(|se| se.is_execution_already_exists()) =>
            {
                Ok(StartOutcome::AlreadyExists)
            }
            Err(e) => Err(classify(SERVICE, &e)),
        }
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
}
