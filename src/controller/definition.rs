//! The state machine's definition as the bound on an execution's width
//! (`control::asl`): read before the first admission, so the first ramp is
//! paced for executions as wide as the workflow can make them, and read
//! again with the functions' limits, so a deploy of a wider workflow raises
//! the estimate before CloudWatch shows it.

use tracing::{debug, info, warn};

use super::Controller;
use crate::control::asl;
use crate::control::estimator::DefinitionUse;
use crate::metrics::Counter;
use crate::ports::{ConcurrencyMetrics, Executions, MetricsSink, WorkQueue};

impl<Q, E, M, S> Controller<Q, E, M, S>
where
    Q: WorkQueue,
    E: Executions,
    M: ConcurrencyMetrics,
    S: MetricsSink,
{
    /// Read the definition and hand its bound to the estimator and the ramp.
    /// A definition that cannot be read or parsed leaves the configured
    /// maximum in force, loudly.
    pub(super) async fn read_definition(&self) {
        let text = match self.b.executions.definition().await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "cannot read the state machine definition (states:DescribeStateMachine); the cold-start width is controller.max_lambdas_per_execution");
                self.tally(Counter::MetricErrors, 1);
                return;
            }
        };
        let widths = match asl::widths(&text) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot bound the executions' width from the state machine definition; the cold-start width is controller.max_lambdas_per_execution");
                return;
            }
        };
        let mut st = self.state();
        let total = widths.total;
        match st.estimator.set_definition(widths) {
            DefinitionUse::Unchanged => {}
            DefinitionUse::Unbounded => info!(
                definition_bound = ?total,
                configured = st.estimator.k_max(),
                "the state machine definition does not bound the Lambdas per execution (no Lambda task, a nested execution, a dynamic function or a Distributed Map without MaxConcurrency); the cold-start width is controller.max_lambdas_per_execution"
            ),
            DefinitionUse::Prior { bound, configured } => {
                st.admission.set_k_max(bound);
                if bound > configured {
                    warn!(
                        option = "controller.max_lambdas_per_execution",
                        configured,
                        definition_bound = bound,
                        "the state machine definition lets an execution run {bound} Lambdas at once, more than controller.max_lambdas_per_execution = {configured}: starting from the definition's bound (raise the option to match, or lower the workflow's MaxConcurrency)"
                    );
                } else if bound < configured {
                    info!(
                        configured,
                        definition_bound = bound,
                        "starting from the state machine definition's bound on Lambdas per execution, below controller.max_lambdas_per_execution"
                    );
                } else {
                    debug!(
                        definition_bound = bound,
                        "the definition's bound matches the config"
                    );
                }
            }
            DefinitionUse::Raised(k) => {
                let k_max = st.estimator.k_max();
                st.admission.set_k_max(k_max);
                warn!(
                    definition_bound = k,
                    "the state machine definition changed and allows wider executions: the estimate is raised to its bound until CloudWatch measures the new width"
                );
            }
        }
    }
}
