//! RedriveExecution and the listing of failed executions over the
//! simulated state machine: a failed execution runs again from the stage
//! it failed in (a Map stage with all its items: AWS reruns only the
//! failed and aborted iterations, so the simulator's redrive is if
//! anything wider), and takes Lambda concurrency like any execution.

use super::sfn::{ExecStatus, Redrive};
use super::{Event, STATE_MACHINE_ARN, World};
use crate::control::redrive::execution_name;
use crate::ports::{ClosedExecution, ExecutionDetail, ExecutionStatus, PortError, RedriveOutcome};

/// The ARN of the simulated execution `name`.
pub fn execution_arn(name: &str) -> String {
    format!(
        "{}:{name}",
        STATE_MACHINE_ARN.replacen(":stateMachine:", ":execution:", 1)
    )
}

fn status(s: ExecStatus) -> ExecutionStatus {
    match s {
        ExecStatus::Running => ExecutionStatus::Running,
        ExecStatus::Succeeded => ExecutionStatus::Succeeded,
        ExecStatus::Failed => ExecutionStatus::Failed,
    }
}

impl World {
    /// RedriveExecution of `arn` with the client token `token`.
    pub fn redrive_execution(
        &mut self,
        arn: &str,
        token: &str,
    ) -> Result<RedriveOutcome, PortError> {
        self.count("sfn.RedriveExecution");
        self.fault("sfn", "redrive_execution")?;
        if !arn.starts_with(&execution_arn("")) {
            return Ok(RedriveOutcome::NotRedrivable(format!(
                "ExecutionDoesNotExist: Execution Does Not Exist: '{arn}'"
            )));
        }
        match self.sfn.redrive(execution_name(arn), token, self.now)? {
            Redrive::New { x, stage } => {
                self.stats.executions_redriven += 1;
                self.schedule(
                    self.now + self.transition(),
                    Event::Stage {
                        exec: x,
                        stage,
                        paid: false,
                    },
                );
                Ok(RedriveOutcome::Redriven)
            }
            Redrive::Refused(why) => Ok(RedriveOutcome::NotRedrivable(why)),
            // The execution is not run again.
            Redrive::Repeat => Ok(RedriveOutcome::Redriven),
        }
    }

    /// DescribeExecution of `arn`: status and redrive count (the
    /// simulator keeps inputs as hashes: no input, no error text).
    pub fn describe_execution(&mut self, arn: &str) -> Result<ExecutionDetail, PortError> {
        self.count("sfn.DescribeExecution");
        self.fault("sfn", "describe_execution")?;
        let name = execution_name(arn);
        let Some((s, redrive_count)) = self.sfn.describe(name) else {
            return Err(PortError::Permanent {
                service: "sfn",
                code: "ExecutionDoesNotExist".into(),
                message: arn.to_string(),
            });
        };
        Ok(ExecutionDetail {
            status: Some(status(s)),
            error: (s == ExecStatus::Failed).then(|| "States.TaskFailed".to_string()),
            redrive_count,
            ..ExecutionDetail::default()
        })
    }

    /// ListExecutions with `wanted`: the simulator's executions fail
    /// (FAILED) and never time out or abort.
    pub fn list_closed(
        &mut self,
        wanted: ExecutionStatus,
        token: Option<String>,
    ) -> Result<(Vec<ClosedExecution>, Option<String>), PortError> {
        self.count("sfn.ListExecutions");
        self.fault("sfn", "list_executions")?;
        if wanted != ExecutionStatus::Failed {
            return Ok((Vec::new(), None));
        }
        let (page, next) = self.sfn.list_failed(token, self.now)?;
        let page = page
            .into_iter()
            .map(|c| ClosedExecution {
                arn: execution_arn(&c.name),
                name: c.name,
                status: ExecutionStatus::Failed,
                started_s: c.started_at,
                stopped_s: Some(c.stopped_at),
                redrive_count: c.redrive_count,
            })
            .collect();
        Ok((page, next))
    }

    /// Executions FAILED now (each name once, as its latest run).
    pub fn failed_now(&self) -> usize {
        self.sfn.failed_now()
    }
}
