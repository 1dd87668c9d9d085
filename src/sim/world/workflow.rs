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

impl World {
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
            self.lambda.throttled();
            self.retry_or_fail(exec, slot, task, attempt);
            return;
        }
        let run = self.lambda.invoke(f, dist, &mut self.rng);
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
        let r = &self.sc.sfn.retry;
        if u32::from(attempt) + 1 >= r.max_attempts {
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
