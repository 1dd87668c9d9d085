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

    /// Is call `api` of `service` at `now` inside some fault's window?
    pub(super) fn covers(&self, service: &str, api: &str, now: f64) -> bool {
        self.faults.iter().any(|f| match f {
            Fault::ApiErrors {
                service: s,
                start_secs,
                duration_secs,
                ..
            } => s == service && now >= *start_secs && now < start_secs + duration_secs,
            Fault::ThrottleStorm {
                api: a,
                start_secs,
                duration_secs,
                ..
            } => a == api && now >= *start_secs && now < start_secs + duration_secs,
            _ => false,
        })
    }

    /// Does call `api` of `service` fail at `now`? Every fault whose window
    /// covers the call draws once, in scenario order; the last that fires
    /// decides.
    pub(super) fn check(
        &self,
        service: &'static str,
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
                        service,
                        code: "ThrottlingException".into(),
                    }
                } else {
                    PortError::Transient {
                        service,
                        code: "InternalFailure".into(),
                        message: "injected fault".into(),
                    }
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn check(faults: &Faults, service: &'static str, api: &str, now: f64) -> Result<(), PortError> {
        faults.check(service, api, now, &mut StdRng::seed_from_u64(7))
    }

    #[test]
    fn api_errors_fire_for_their_service_inside_their_window() {
        let faults = Faults::new(&[Fault::ApiErrors {
            service: "sqs".into(),
            start_secs: 10.0,
            duration_secs: 10.0,
            probability: 1.0,
        }]);
        for t in [10.0, 15.0, 19.99] {
            assert!(
                matches!(
                    check(&faults, "sqs", "receive_message", t),
                    Err(PortError::Transient { service: "sqs", .. })
                ),
                "at {t}"
            );
        }
        assert!(check(&faults, "sfn", "start_execution", 15.0).is_ok());
        assert!(check(&faults, "sqs", "receive_message", 9.99).is_ok());
        assert!(check(&faults, "sqs", "receive_message", 20.0).is_ok());
    }

    #[test]
    fn a_throttle_storm_throttles_its_api() {
        let faults = Faults::new(&[Fault::ThrottleStorm {
            api: "start_execution".into(),
            start_secs: 0.0,
            duration_secs: 100.0,
            probability: 1.0,
        }]);
        assert!(matches!(
            check(&faults, "sfn", "start_execution", 50.0),
            Err(PortError::Throttled { service: "sfn", .. })
        ));
        assert!(check(&faults, "sfn", "list_executions", 50.0).is_ok());
    }
}
