//! Injected API faults: error bursts per service and throttle storms per
//! API, each inside its window.

use rand::RngExt;
use rand::rngs::StdRng;

use crate::ports::PortError;
use crate::sim::scenario::Fault;

/// The scenario's API faults.
#[derive(Debug)]
pub(super) struct Faults {
    faults: Vec<Fault>,
}

impl Faults {
    /// The scenario's faults; only the API ones act here (crashes and
    /// replicas are the driver's).
    pub(super) fn new(faults: &[Fault]) -> Faults {
        Faults {
            faults: faults.to_vec(),
        }
    }

    /// Does call `api` of `service` fail at `now`? Every fault whose window
    /// covers the call draws once, in scenario order; the last that fires
    /// decides.
    pub(super) fn check(
        &self,
        service: &str,
        api: &str,
        now: f64,
        rng: &mut StdRng,
    ) -> Result<(), PortError> {
        let mut out = Ok(());
        for f in &self.faults {
            let (p, throttle) = match f {
                Fault::ApiErrors {
                    service: s,
                    start_secs,
                    duration_secs,
                    probability,
                } if s == service && now >= *start_secs && now < start_secs + duration_secs => {
                    (*probability, false)
                }
                Fault::ThrottleStorm {
                    api: a,
                    start_secs,
                    duration_secs,
                    probability,
                } if a == api && now >= *start_secs && now < start_secs + duration_secs => {
                    (*probability, true)
                }
                _ => continue,
            };
            if rng.random::<f64>() < p {
                out = Err(if throttle {
                    PortError::Throttled {
                        service: "sim",
                        code: "ThrottlingException".into(),
                    }
                } else {
                    PortError::Transient {
                        service: "sim",
                        code: "InternalFailure".into(),
                        message: "injected fault".into(),
                    }
                });
            }
        }
        out
    }
}
