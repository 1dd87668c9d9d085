//! The decision rules' parameters, read from the config: `control` does
//! not know the config file's layout.

use crate::config::{Config, EstimatorConfig};
use crate::control::{budget, estimator};

impl From<&Config> for budget::Params {
    fn from(cfg: &Config) -> Self {
        let c = &cfg.controller;
        budget::Params {
            ceiling: c.ceiling,
            account_limit: c.account_limit,
            headroom_fraction: c.headroom_fraction,
            max_lambdas_per_execution: c.max_lambdas_per_execution,
            ramp_concurrency_per_s: c.ramp_concurrency_per_s,
            ramp_initial: c.ramp_initial,
            fixed_max_running: cfg.fixed.max_running,
            seed_multiplier: cfg.seed.multiplier,
        }
    }
}

impl From<&EstimatorConfig> for estimator::Params {
    fn from(e: &EstimatorConfig) -> Self {
        estimator::Params {
            margin_fraction: e.margin_fraction,
            noise_z: e.noise_z,
            stability_fraction: e.stability_fraction,
            min_lambdas_per_execution: e.min_lambdas_per_execution,
            initial_lambdas_per_execution: e.initial_lambdas_per_execution,
            settle_s: e.settle_secs as f64,
            account_limit: None,
            headroom_fraction: 0.0,
        }
    }
}

impl From<&Config> for estimator::Params {
    /// The estimator's numbers, with the account limit from `[controller]`.
    fn from(cfg: &Config) -> Self {
        estimator::Params {
            account_limit: cfg.controller.account_limit.map(f64::from),
            headroom_fraction: cfg.controller.headroom_fraction,
            ..(&cfg.estimator).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_cap_follows_the_config() {
        let mut cfg = Config::default();
        cfg.controller.ceiling = 19_000;
        assert_eq!(budget::Params::from(&cfg).fixed_cap(), 6333);
        cfg.fixed.max_running = Some(100);
        assert_eq!(budget::Params::from(&cfg).fixed_cap(), 100);
    }
}
