//! The workflow engine: an execution's stages, Map items and Retry, as
//! events on the world's heap. An invoke touches Lambda, the report's
//! stats and the CloudWatch minute, so these steps are `World`'s.

use rand::RngExt;

use super::lambda::Lambda;
use super::sfn::ExecStatus;
use super::{Event, World};
use crate::sim::scenario::Step;

/// The slot of a stage's own task (other slots are Map items).
const MAIN: u16 = u16::MAX;

/// Per stage, per task: the function and the task's duration within it.
pub(super) type Tasks = Vec<Vec<(u16, usize)>>;

/// Register every task's duration with its function, in workflow order.
pub(super) fn resolve(workflow: &[Step], lambda: &mut Lambda) -> Tasks {
    workflow
        .iter()
        .map(|st| match &st.task {
            Some(t) => vec![lambda.add_task(t, st.median_secs, st.sigma)],
            None => st
                .iteration
                .iter()
                .map(|t| lambda.add_task(&t.task, t.median_secs, t.sigma))
                .collect(),
        })
        .collect()
}

/// Whether Step Functions counts event `e` as a state transition not yet
/// paid for: a state entered (a step, an iteration's task, the end) or a
/// retry ("each retry will be charged as an additional state transition").
/// A task step's first attempt is the state its `Stage` entered.
fn unpaid_transition(e: Event) -> Option<u32> {
    match e {
        Event::Stage {
            exec, paid: false, ..
        } => Some(exec),
        Event::Invoke {
            exec,
            slot,
            attempt,
            paid: false,
            ..
        } if slot != MAIN || attempt > 0 => Some(exec),
        _ => None,
    }
}

impl World {
    /// Take event `e`'s StateTransition token: `true` to run it now;
    /// `false` when the bucket is empty and it was rescheduled, paid, for
    /// when its token is there.
    pub(super) fn admit_transition(&mut self, e: Event) -> bool {
        let Some(exec) = unpaid_transition(e) else {
            return true;
        };
        if self.sfn.exec(exec).status != ExecStatus::Running {
            return true;
        }
        let wait = self.sfn.transition(self.now);
        if wait <= 0.0 {
            return true;
        }
        self.stats.state_transitions_throttled += 1;
        let later = match e {
            Event::Stage { exec, stage, .. } => Event::Stage {
                exec,
                stage,
                paid: true,
            },
            Event::Invoke {
                exec,
                slot,
                task,
                attempt,
                ..
            } => Event::Invoke {
                exec,
                slot,
                task,
                attempt,
                paid: true,
            },
            other => other,
        };
        self.schedule(self.now + wait, later);
        false
    }

    pub(super) fn transition(&self) -> f64 {
        self.sc.sfn.transition_ms as f64 / 1000.0
    }

    pub(super) fn enter_stage(&mut self, exec: u32, stage: u16) {
        if self.sfn.exec(exec).status != ExecStatus::Running {
            return;
        }
        let Some(step) = self.sc.workflow.get(stage as usize).cloned() else {
            self.close(exec, ExecStatus::Succeeded);
            return;
        };
        self.sfn.exec_mut(exec).stage = stage;
        let t = self.now + self.transition();
        if step.task.is_some() {
            self.schedule(
                t,
                Event::Invoke {
                    exec,
                    slot: MAIN,
                    task: 0,
                    attempt: 0,
                    paid: false,
                },
            );
            return;
        }
        let items = self.items(&step);
        let ex = self.sfn.exec_mut(exec);
        ex.map_items = items;
        ex.map_next = 0;
        ex.map_active = 0;
        if items == 0 {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                    paid: false,
                },
            );
            return;
        }
        let first = items.min(step.max_concurrency.min(u32::from(u16::MAX - 1)) as u16);
        for _ in 0..first {
            self.launch_item(exec, t);
        }
    }

    /// Items of a Map stage: drawn only when the step gives a range.
    fn items(&mut self, step: &Step) -> u16 {
        let lo = step.map_items.unwrap_or(0);
        let hi = step.map_items_max.unwrap_or(lo).max(lo);
        let n = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        n.min(u32::from(u16::MAX - 1)) as u16
    }

    fn launch_item(&mut self, exec: u32, t: f64) {
        let ex = self.sfn.exec_mut(exec);
        let slot = ex.map_next;
        ex.map_next += 1;
        ex.map_active += 1;
        self.schedule(
            t,
            Event::Invoke {
                exec,
                slot,
                task: 0,
                attempt: 0,
                paid: false,
            },
        );
    }

    pub(super) fn invoke(&mut self, exec: u32, slot: u16, task: u16, attempt: u16) {
        if self.sfn.exec(exec).status != ExecStatus::Running {
            return;
        }
        let stage = self.sfn.exec(exec).stage;
        let (f, dist) = self.tasks[stage as usize][task as usize];
        if !self.lambda.admits(f, self.now) {
            self.stats.lambda_throttles += 1;
            self.lambda.throttled(f, self.now);
            self.retry_or_fail(exec, slot, task, attempt);
            return;
        }
        let run = self.lambda.invoke(f, dist, self.now, &mut self.rng);
        let conc = self.lambda.concurrency();
        self.stats.peak = self.stats.peak.max(conc);
        let sec = self.now as usize;
        if self.stats.conc_peak.len() <= sec {
            self.stats.conc_peak.resize(sec + 1, 0);
            self.stats.conc_integral.resize(sec + 1, 0.0);
        }
        self.stats.conc_peak[sec] = self.stats.conc_peak[sec].max(conc);
        self.schedule(
            self.now + run.duration,
            Event::Done {
                exec,
                slot,
                task,
                attempt,
                func: f,
                ok: run.ok,
            },
        );
    }

    fn retry_or_fail(&mut self, exec: u32, slot: u16, task: u16, attempt: u16) {
        // ASL: "MaxAttempts ... the maximum number of retry attempts";
        // `attempt` retries are spent, 0 never retries.
        let r = &self.sc.sfn.retry;
        if u32::from(attempt) >= r.max_attempts {
            self.close(exec, ExecStatus::Failed);
            return;
        }
        let delay = r.interval_secs * r.backoff_rate.powi(i32::from(attempt));
        self.schedule(
            self.now + delay,
            Event::Invoke {
                exec,
                slot,
                task,
                attempt: attempt + 1,
                paid: false,
            },
        );
    }

    pub(super) fn done(
        &mut self,
        exec: u32,
        slot: u16,
        task: u16,
        attempt: u16,
        func: u16,
        ok: bool,
    ) {
        self.lambda.finish(func);
        if self.sfn.exec(exec).status != ExecStatus::Running {
            return;
        }
        if !ok {
            self.stats.lambda_errors += 1;
            self.retry_or_fail(exec, slot, task, attempt);
            return;
        }
        let stage = self.sfn.exec(exec).stage;
        let t = self.now + self.transition();
        if slot == MAIN {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                    paid: false,
                },
            );
            return;
        }
        let ntasks = self.tasks[stage as usize].len() as u16;
        if task + 1 < ntasks {
            self.schedule(
                t,
                Event::Invoke {
                    exec,
                    slot,
                    task: task + 1,
                    attempt: 0,
                    paid: false,
                },
            );
            return;
        }
        let ex = self.sfn.exec_mut(exec);
        ex.map_active -= 1;
        if ex.map_next < ex.map_items {
            self.launch_item(exec, t);
        } else if ex.map_active == 0 {
            self.schedule(
                t,
                Event::Stage {
                    exec,
                    stage: stage + 1,
                    paid: false,
                },
            );
        }
    }

    fn close(&mut self, exec: u32, status: ExecStatus) {
        self.sfn.close(exec, status, self.now);
        match status {
            ExecStatus::Failed => self.stats.executions_failed += 1,
            _ => self.stats.executions_succeeded += 1,
        }
        self.stats.last_close = self.stats.last_close.max(self.now);
        if self.sc.sfn.completion_events {
            self.schedule(
                self.now + self.sc.sfn.completion_event_delay_secs,
                Event::StatusChange { exec },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::World;
    use crate::sim::scenario::{Bucket, Scenario};

    /// One execution of `workflow` (TOML steps) run to its end.
    fn run(workflow: &str, edit: impl FnOnce(&mut Scenario)) -> World {
        let text = format!("name = 't'\nceiling = 100\n[workload]\n{workflow}");
        let mut sc = Scenario::parse(&text, "t").unwrap();
        edit(&mut sc);
        let mut w = World::new(&sc, 1);
        assert!(w.start_execution("x", "{}").unwrap());
        w.advance(3600.0);
        assert_eq!(w.running_executions(), 0);
        w
    }

    const TASK: &str = "[[workflow]]\ntask = 'a'\nmedian_secs = 1.0\n";

    #[test]
    fn max_attempts_counts_retries_after_the_first_attempt() {
        let attempts = |max_attempts| {
            let w = run(TASK, |sc| {
                sc.lambda.error_rate = 1.0;
                sc.sfn.retry.max_attempts = max_attempts;
            });
            assert_eq!(w.stats.executions_failed, 1);
            w.stats.lambda_errors
        };
        assert_eq!(attempts(0), 1, "0: never retried");
        assert_eq!(attempts(1), 2);
        assert_eq!(attempts(6), 7, "the first attempt and six retries");
    }

    #[test]
    fn state_transitions_wait_for_the_account_bucket() {
        let map = "[[workflow]]\nmap_items = 40\nmax_concurrency = 40\n\
                   [[workflow.iteration]]\ntask = 'a'\nmedian_secs = 1.0\nsigma = 0.01\n";
        let roomy = run(map, |_| {});
        assert_eq!(roomy.stats.state_transitions_throttled, 0);
        let tight = run(map, |sc| {
            sc.sfn.state_transitions = Bucket {
                burst: 5.0,
                per_s: 10.0,
            };
        });
        // 42 transitions (the Map, 40 iterations, the end): 5 from the
        // burst, the rest one per 0.1 s. Late, but nothing fails.
        assert!(
            (34..=37).contains(&tight.stats.state_transitions_throttled),
            "{}",
            tight.stats.state_transitions_throttled
        );
        assert_eq!(tight.stats.executions_succeeded, 1);
        // The iterations start 0.1 s apart: they no longer all run at once.
        assert_eq!(roomy.stats.peak, 40);
        assert!(tight.stats.peak < 20, "{}", tight.stats.peak);
        assert!(
            tight.stats.last_close > roomy.stats.last_close + 3.0,
            "{} vs {}",
            tight.stats.last_close,
            roomy.stats.last_close
        );
    }
}
