//! The scenario's workflow as an Amazon States Language definition: what
//! DescribeStateMachine returns for the simulated state machine, so the
//! controller reads its width bounds the way it does on AWS.

use serde_json::{Map, Value, json};

use crate::sim::scenario::{Scenario, Step, Task};

fn lambda_task(function: &str, next: Option<&str>, retry: &Value) -> Value {
    let mut t = json!({
        "Type": "Task",
        "Resource": "arn:aws:states:::lambda:invoke",
        "Parameters": { "FunctionName": function, "Payload.$": "$" },
        "Retry": retry,
    });
    match next {
        Some(n) => t["Next"] = json!(n),
        None => t["End"] = json!(true),
    }
    t
}

fn iteration(tasks: &[Task], retry: &Value) -> Value {
    let mut states = Map::new();
    for (i, t) in tasks.iter().enumerate() {
        let next = (i + 1 < tasks.len()).then(|| format!("item{}", i + 1));
        states.insert(
            format!("item{i}"),
            lambda_task(&t.task, next.as_deref(), retry),
        );
    }
    json!({
        "ProcessorConfig": { "Mode": "INLINE" },
        "StartAt": "item0",
        "States": states,
    })
}

fn step(s: &Step, next: Option<&str>, retry: &Value) -> Value {
    if let Some(f) = &s.task {
        return lambda_task(f, next, retry);
    }
    let mut m = json!({
        "Type": "Map",
        "ItemsPath": "$.items",
        "MaxConcurrency": s.max_concurrency,
        "ItemProcessor": iteration(&s.iteration, retry),
    });
    match next {
        Some(n) => m["Next"] = json!(n),
        None => m["End"] = json!(true),
    }
    m
}

/// The definition of the scenario's state machine.
pub fn definition(sc: &Scenario) -> String {
    let r = &sc.sfn.retry;
    let retry = json!([{
        "ErrorEquals": ["Lambda.TooManyRequestsException", "States.TaskFailed"],
        "IntervalSeconds": r.interval_secs,
        "BackoffRate": r.backoff_rate,
        "MaxAttempts": r.max_attempts,
    }]);
    let mut states = Map::new();
    for (i, s) in sc.workflow.iter().enumerate() {
        let next = (i + 1 < sc.workflow.len()).then(|| format!("step{}", i + 1));
        states.insert(format!("step{i}"), step(s, next.as_deref(), &retry));
    }
    json!({
        "Comment": format!("fanout simulator: {}", sc.name),
        "StartAt": "step0",
        "States": states,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::asl::widths;

    #[test]
    fn the_built_in_workflow_reads_back_as_three_lambdas_wide() {
        let sc = Scenario::builtin("exchange-227k").unwrap();
        let w = widths(&definition(&sc)).unwrap();
        let total = sc
            .workflow
            .iter()
            .map(|s| {
                if s.task.is_some() {
                    1
                } else {
                    s.max_concurrency
                }
            })
            .max()
            .unwrap();
        assert_eq!(w.total, Some(f64::from(total)));
        for f in sc.functions() {
            assert!(w.function(&f).is_some_and(|n| n >= 1.0), "{f}: {w:?}");
        }
    }
}
