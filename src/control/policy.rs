//! The admission rules a controller can follow.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which admission rule the controller uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Admit before receive, learn Lambdas per execution, pace starts.
    #[default]
    Adaptive,
    /// The old fanout function: running × multiplier against the ceiling,
    /// receive first and put back with a delay when there is no room.
    Seed,
    /// A fixed cap of running executions (Distributed Map's MaxConcurrency).
    Fixed,
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Adaptive => "adaptive",
            Policy::Seed => "seed",
            Policy::Fixed => "fixed",
        })
    }
}
