//! The throttle brake in a run Lambda throttles: an account on the legacy
//! burst model that grows slower than the controller ramps. A throttled
//! CloudWatch minute cuts the target to 0.9 × the level Lambda allowed,
//! and it comes back a little at a time (ARCHITECTURE, "The adaptive
//! policy" and the estimator).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::config::{Config, Policy};
use fanout::controller::{Backends, Controller};
use fanout::metrics::{Counter, Gauge};
use fanout::ports::MetricsSink;
use fanout::sim::Scenario;
use fanout::sim::driver::backends;
use fanout::sim::ports::Shared;
use fanout::sim::world::World;
use tokio::sync::watch;

const CEILING: u32 = 300;

/// When (test seconds) the controller counted each throttled minute.
#[derive(Clone)]
struct ThrottledMinutes(tokio::time::Instant, Arc<Mutex<Vec<u64>>>);

impl MetricsSink for ThrottledMinutes {
    fn gauge(&self, _: Gauge, _: f64) {}
    fn count(&self, c: Counter, _: u64) {
        if c == Counter::LambdaThrottledMinutes {
            self.1.lock().unwrap().push(self.0.elapsed().as_secs());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_throttled_minute_cuts_the_target_under_the_level_lambda_allowed() {
    // 120 Lambdas at once, 20 more a minute: the ceiling of 300 is out of
    // reach for ten minutes, and the first ramp (k̂ = 3: 100 executions)
    // is throttled.
    let sc = Scenario::parse(
        r#"
name = "slow-account"
ceiling = 300
[workload]
bulk = 8000
[lambda]
account_limit = 400
scaling = "legacy"
legacy_burst = 120.0
legacy_per_minute = 20.0
[[workflow]]
task = "prepare"
median_secs = 10.0
[[workflow]]
map_items = 4
max_concurrency = 3
[[workflow.iteration]]
task = "predict"
median_secs = 10.0
[[workflow]]
task = "publish"
median_secs = 4.0
"#,
        "slow-account",
    )
    .unwrap();
    let shared = Shared::new(World::new(&sc, 5));
    let b = backends(&shared, &sc);
    let minutes = ThrottledMinutes(tokio::time::Instant::now(), Arc::default());
    let b = Backends {
        sources: b.sources,
        completions: b.completions,
        executions: b.executions,
        metrics: b.metrics,
        sink: minutes.clone(),
        claims: None,
    };
    let mut cfg = Config::default();
    cfg.controller.ceiling = CEILING;
    let ctl = Controller::new(cfg, Policy::Adaptive, b, 5).unwrap();
    let snap = ctl.subscribe();
    let (tx, rx) = watch::channel(false);
    let script = async {
        // The concurrency the target aims at (target × k̂), each second.
        let mut aim = vec![0.0];
        for _ in 0..900 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let s = *snap.borrow();
            aim.push(s.target as f64 * s.k);
        }
        tx.send_replace(true);
        aim
    };
    let (_, aim) = tokio::join!(ctl.run(rx), script);
    let at = minutes.1.lock().unwrap().clone();
    let w = shared.at_now();
    assert!(w.stats.lambda_throttles > 0, "Lambda never throttled");
    let first = *at.first().expect("no throttled minute counted") as usize;
    let last = *at.last().unwrap() as usize;
    // Cut: from the ceiling to under 0.9 × what Lambda allowed in the
    // minutes before (the throttled minute's maximum is at most theirs).
    let allowed = f64::from(*w.stats.conc_peak[first - 180..first].iter().max().unwrap());
    let (before, cut) = (aim[first - 1], aim[first + 1]);
    eprintln!(
        "throttled minutes counted at {at:?} s; aim {before} -> {cut}, Lambda allowed {allowed}"
    );
    assert!(before > 0.95 * f64::from(CEILING), "{before}");
    assert!(cut <= 0.9 * allowed, "cut to {cut}, allowed {allowed}");
    // Given back a little at a time, never all at once, and it does grow
    // back. From 300 s the limit learned from the same throttles (a
    // function throttled while the account was below its limit: +2 % a
    // clean minute) binds, slower than the brake's 5 % of the ceiling, so
    // the brake's own pace is pinned in control::budget's unit test.
    let step = 0.05 * f64::from(CEILING);
    let held = aim[last + 1];
    for (t, &a) in aim.iter().enumerate().skip(last + 1) {
        let clean = (t - last) as f64 / 60.0 + 2.0;
        assert!(
            a <= held + step * clean + 1e-9,
            "{a} at {t} s, {held} at {last} s"
        );
    }
    assert!(aim[aim.len() - 1] >= held + step, "{aim:?}");
}
