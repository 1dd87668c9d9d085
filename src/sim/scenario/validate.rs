//! A parsed scenario's values checked all at once, each problem with its
//! field path.

use super::{FAULT_SERVICES, Fault, INLINE_MAP_MAX_CONCURRENCY, STORM_APIS, Scenario};

impl Scenario {
    /// Every problem with the values, not just the first.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.workflow.is_empty() {
            p.push("workflow: at least one step is needed".to_string());
        }
        if let Some(k) = self.sfn.remembered_lambdas_per_execution
            && (k.is_nan() || k <= 0.0)
        {
            p.push(format!(
                "sfn.remembered_lambdas_per_execution: {k} must be positive"
            ));
        }
        for (i, s) in self.workflow.iter().enumerate() {
            match (&s.task, s.map_items) {
                (Some(_), None) if s.median_secs > 0.0 => {}
                (Some(_), None) => p.push(format!("workflow[{i}].median_secs must be positive")),
                (None, Some(n)) => {
                    if s.iteration.is_empty() {
                        p.push(format!(
                            "workflow[{i}].iteration: a Map needs at least one task"
                        ));
                    }
                    if s.max_concurrency == 0 {
                        p.push(format!("workflow[{i}].max_concurrency must be at least 1"));
                    }
                    if s.max_concurrency > INLINE_MAP_MAX_CONCURRENCY {
                        p.push(format!(
                            "workflow[{i}].max_concurrency is {}: an inline Map runs at most \
                             {INLINE_MAP_MAX_CONCURRENCY} iterations at once (more needs a \
                             Distributed Map)",
                            s.max_concurrency
                        ));
                    }
                    if s.map_items_max.is_some_and(|m| m < n) {
                        p.push(format!("workflow[{i}].map_items_max is below map_items"));
                    }
                    for (j, t) in s.iteration.iter().enumerate() {
                        if t.median_secs <= 0.0 {
                            p.push(format!(
                                "workflow[{i}].iteration[{j}].median_secs must be positive"
                            ));
                        }
                    }
                }
                _ => p.push(format!(
                    "workflow[{i}]: set either `task` (a Lambda step) or `map_items` (a Map)"
                )),
            }
        }
        if self.lambda.account_limit == 0 {
            p.push("lambda.account_limit must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.lambda.warm_decay_per_minute) {
            p.push("lambda.warm_decay_per_minute must be in [0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.lambda.error_rate) {
            p.push("lambda.error_rate must be in [0, 1)".into());
        }
        if self.cloudwatch.lag_max_secs < self.cloudwatch.lag_min_secs {
            p.push("cloudwatch.lag_max_secs is below lag_min_secs".into());
        }
        if !(0.0..1.0).contains(&self.sqs.duplicate_delivery_probability) {
            p.push("sqs.duplicate_delivery_probability must be in [0, 1)".into());
        }
        if self.sqs.max_receive_count == 0 {
            p.push("sqs.max_receive_count must be at least 1".into());
        }
        for (name, b) in [
            ("start_execution", self.sfn.start_execution),
            ("list_executions", self.sfn.list_executions),
            ("state_transitions", self.sfn.state_transitions),
        ] {
            if !(b.burst >= 1.0 && b.per_s > 0.0) {
                p.push(format!(
                    "sfn.{name}: burst must be at least 1 and per_s positive"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.cloudwatch.partial_probability) {
            p.push("cloudwatch.partial_probability must be in [0, 1]".into());
        }
        if self.cloudwatch.fill_secs.is_nan() || self.cloudwatch.fill_secs < 0.0 {
            p.push("cloudwatch.fill_secs must not be negative".into());
        }
        self.check_fault_targets(&mut p);
        p
    }

    /// A misspelt fault target would parse and never fire.
    fn check_fault_targets(&self, p: &mut Vec<String>) {
        for (i, f) in self.faults.iter().enumerate() {
            match f {
                Fault::ApiErrors { service, .. } if !FAULT_SERVICES.contains(&service.as_str()) => {
                    p.push(format!(
                        "faults[{i}].service: \"{service}\" is not one of {FAULT_SERVICES:?}"
                    ));
                }
                Fault::ThrottleStorm { api, .. } if !STORM_APIS.contains(&api.as_str()) => {
                    p.push(format!(
                        "faults[{i}].api: \"{api}\" is not one of {STORM_APIS:?}"
                    ));
                }
                _ => {}
            }
        }
    }
}
