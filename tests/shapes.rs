//! Workload shapes fanout was not tuned on (issue #10): random workflows
//! of 1–4 steps, each a Lambda task (median 1 s to 10 min) or a Map of
//! 1–40 items at MaxConcurrency 1–10 over 1–2 tasks; ceilings of 200 to
//! 3,000 under an account limit 5–60 % above; reserved concurrency below
//! one function's share in about a third of the cases (at least 20, and
//! room for 8 executions at their widest); other load in about a third;
//! and `controller.max_lambdas_per_execution` from half to twice the
//! workflow's true width. Every case must lose nothing, start nothing
//! twice, fail no execution (unless other load at its peak takes more
//! than the account leaves above the ceiling), and keep the pipeline over
//! its ceiling for at most 180 s — for none at all when the configured
//! width is at least the true one and no function has reserved
//! concurrency.
//!
//! A case is drawn from its seed alone (the simulator is deterministic
//! too), so every failing seed is reported with its scenario and config.
//! `FANOUT_SHAPE_CASES` (default 12) sets the number of cases and
//! `FANOUT_SHAPE_SEED` (default 1) the first seed; 1,000 cases:
//!
//! ```text
//! FANOUT_SHAPE_CASES=1000 cargo test --release --test shapes -- --nocapture
//! ```
//!
//! and one seed again: `FANOUT_SHAPE_SEED=N FANOUT_SHAPE_CASES=1`.
//!

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fanout::config::{Config, Policy};
use fanout::sim::scenario::{
    CloudWatchModel, LambdaModel, LoadStep, OtherLoad, SfnModel, SqsModel, Step, Task, Workload,
};
use fanout::sim::{Report, Scenario, SimOptions};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// An execution's expected lifetime at most, in seconds: longer draws are
/// scaled down so a case stays within a few seconds of wall time.
const LIFETIME_CAP_SECS: f64 = 900.0;
/// Bulk messages per case at most.
const MAX_BULK: u64 = 20_000;
/// Seconds over the ceiling allowed in any case (the learning minutes).
const MAX_SECONDS_OVER: u64 = 180;
/// The smallest reserved concurrency drawn.
const MIN_RESERVED: u32 = 20;

/// One drawn case: the scenario, the controller's width and what the
/// checks need to know about them.
struct Case {
    seed: u64,
    scenario: Scenario,
    /// The most Lambdas one execution can run at once.
    width: u32,
    /// `controller.max_lambdas_per_execution`.
    max_lambdas: f64,
    /// The reserved function, its limit and its expected share of the ceiling.
    reserved: Option<(String, u32, f64)>,
    /// Expected Lambda-seconds per execution.
    lambda_secs: f64,
    /// Expected seconds from start to end of an execution.
    lifetime: f64,
}

/// A case's outcome, kept for the summary and the failure list.
struct Outcome {
    seed: u64,
    problems: Vec<String>,
    seconds_over: u64,
    utilization: f64,
    repro: String,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    rng.random_range(lo.ln()..=hi.ln()).exp()
}

fn lognormal_mean(median: f64, sigma: f64) -> f64 {
    median * (sigma * sigma / 2.0).exp()
}

/// A Map's fewest and most items.
fn items(s: &Step) -> (u32, u32) {
    let lo = s.map_items.unwrap_or(1);
    (lo, s.map_items_max.unwrap_or(lo))
}

fn mean_items(s: &Step) -> f64 {
    let (lo, hi) = items(s);
    f64::from(lo + hi) / 2.0
}

/// Lambdas step `s` runs at once, at most (a Map's tasks run in sequence).
fn step_width(s: &Step) -> u32 {
    if s.task.is_some() {
        1
    } else {
        items(s).1.min(s.max_concurrency)
    }
}

fn random_task(rng: &mut StdRng, name: String) -> Task {
    Task {
        task: name,
        median_secs: log_uniform(rng, 1.0, 600.0),
        sigma: rng.random_range(0.1..=0.6),
    }
}

/// A task step, or a Map of 1–40 items at MaxConcurrency 1–10 over 1–2
/// tasks; every function name is unique to its place in the workflow.
fn random_step(rng: &mut StdRng, i: usize) -> Step {
    if rng.random_bool(0.5) {
        let t = random_task(rng, format!("s{i}"));
        return Step {
            task: Some(t.task),
            median_secs: t.median_secs,
            sigma: t.sigma,
            ..Step::DEFAULT
        };
    }
    let lo = rng.random_range(1..=40);
    let hi = rng.random_bool(0.5).then(|| rng.random_range(lo..=40));
    let tasks = rng.random_range(1..=2);
    Step {
        map_items: Some(lo),
        map_items_max: hi,
        max_concurrency: rng.random_range(1..=10),
        iteration: (0..tasks)
            .map(|j| random_task(rng, format!("s{i}m{j}")))
            .collect(),
        ..Step::DEFAULT
    }
}

/// Expected Lambda-seconds per execution, by function.
fn lambda_secs_by_function(workflow: &[Step]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in workflow {
        if let Some(t) = &s.task {
            out.insert(t.clone(), lognormal_mean(s.median_secs, s.sigma));
        }
        for t in &s.iteration {
            let secs = mean_items(s) * lognormal_mean(t.median_secs, t.sigma);
            out.insert(t.task.clone(), secs);
        }
    }
    out
}

/// Expected seconds an execution lives (a Map runs its items in waves of
/// MaxConcurrency; transitions are left out).
fn lifetime(workflow: &[Step]) -> f64 {
    workflow
        .iter()
        .map(|s| {
            if s.task.is_some() {
                return lognormal_mean(s.median_secs, s.sigma);
            }
            let per_item: f64 = s
                .iteration
                .iter()
                .map(|t| lognormal_mean(t.median_secs, t.sigma))
                .sum();
            let waves = (mean_items(s) / f64::from(s.max_concurrency)).ceil();
            waves.max(1.0) * per_item
        })
        .sum()
}

/// A workflow of 1–4 steps whose expected lifetime is at most the cap.
fn random_workflow(rng: &mut StdRng) -> Vec<Step> {
    let n = rng.random_range(1..=4);
    let mut workflow: Vec<Step> = (0..n).map(|i| random_step(rng, i)).collect();
    let scale = LIFETIME_CAP_SECS / lifetime(&workflow);
    if scale < 1.0 {
        for s in &mut workflow {
            s.median_secs *= scale;
            for t in &mut s.iteration {
                t.median_secs *= scale;
            }
        }
    }
    workflow
}

/// Reserved concurrency on one function at 0.3–1.0 of its share of the
/// ceiling, but never below `MIN_RESERVED` nor eight times what one
/// execution runs on it at once. Below that the function is a
/// serialization point: a few executions in its step at once fill it, and
/// one-minute maxima cannot say when they will arrive (ARCHITECTURE, known
/// gaps: fanout stays under the ceiling there, but runs slowly and the
/// workflow's retries may run out).
fn random_reservation(rng: &mut StdRng, workflow: &[Step], ceiling: u32) -> (String, u32, f64) {
    let by_function = lambda_secs_by_function(workflow);
    let total: f64 = by_function.values().sum();
    let names: Vec<&String> = by_function.keys().collect();
    let name = names[rng.random_range(0..names.len())].clone();
    let share = f64::from(ceiling) * by_function[&name] / total;
    let width = workflow
        .iter()
        .find(|s| s.task.as_ref() == Some(&name) || s.iteration.iter().any(|t| t.task == name))
        .map_or(1, step_width);
    let limit = ((rng.random_range(0.3..=1.0) * share).round() as u32)
        .max(8 * width)
        .max(MIN_RESERVED);
    (name, limit, share)
}

/// The mean concurrency a function limited to `limit` can run at without
/// being throttled: its invocations arrive at random (executions are not
/// in step), so its count is about Poisson and its one-minute maximum
/// about three standard deviations above the mean, μ + 3√μ ≤ limit. A
/// reservation of 20 carries a mean of ~10, one of 1,000 a mean of ~910:
/// a case's time allowance counts on this rate, not on the limit itself.
fn unthrottled_mean(limit: f64) -> f64 {
    let root = f64::midpoint(-3.0, (9.0 + 4.0 * limit).sqrt());
    root * root
}

/// The rest of the account: a base within the account's headroom over
/// the ceiling, sometimes a sine, sometimes a step of 5–30 % of the ceiling.
fn random_other_load(rng: &mut StdRng, ceiling: u32, account: u32, span: f64) -> OtherLoad {
    let headroom = f64::from(account - ceiling);
    let base = (rng.random_range(0.2..=1.0) * headroom).round();
    let mut o = OtherLoad {
        base,
        ..OtherLoad::default()
    };
    if rng.random_bool(0.5) {
        o.amplitude = (rng.random_range(0.0..=0.5) * base).round();
        o.period_secs = rng.random_range(300.0..=1800.0_f64).round();
    }
    if rng.random_bool(0.5) {
        o.steps.push(LoadStep {
            start_secs: rng.random_range(60.0..=span.max(120.0)).round(),
            duration_secs: rng.random_range(60.0..=600.0_f64).round(),
            add: (rng.random_range(0.05..=0.3) * f64::from(ceiling)).round(),
        });
    }
    o
}

impl Case {
    /// The case of `seed`, drawn from it alone.
    fn draw(seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let workflow = random_workflow(&mut rng);
        let width = workflow.iter().map(step_width).max().unwrap_or(1);
        let ceiling: u32 = rng.random_range(200..=3000);
        let account = (f64::from(ceiling) * rng.random_range(1.05..=1.6)).round() as u32;
        let lambda_secs: f64 = lambda_secs_by_function(&workflow).values().sum();
        let life = lifetime(&workflow);
        // A few lifetimes of work at the ceiling: the executions running
        // at once there, times 3–6.
        let at_once = f64::from(ceiling) * life / lambda_secs;
        let bulk = ((rng.random_range(3.0..=6.0) * at_once).round() as u64).clamp(20, MAX_BULK);
        let reserved = rng
            .random_bool(1.0 / 3.0)
            .then(|| random_reservation(&mut rng, &workflow, ceiling));
        let bottleneck = reserved.as_ref().map_or(1.0, |(_, limit, share)| {
            (f64::from(*limit) / share).min(1.0)
        });
        let unthrottled = reserved.as_ref().map_or(1.0, |(_, limit, share)| {
            (unthrottled_mean(f64::from(*limit)) / share).min(1.0)
        });
        let span = bulk as f64 * lambda_secs / (f64::from(ceiling) * bottleneck) + life;
        let other_load = if rng.random_bool(1.0 / 3.0) {
            random_other_load(&mut rng, ceiling, account, span)
        } else {
            OtherLoad::default()
        };
        let factor = rng.random_range(0.5..=2.0);
        let max_lambdas = ((f64::from(width) * factor * 100.0).round() / 100.0).max(1.0);
        let sc = Scenario {
            name: format!("shape-{seed}"),
            seed,
            ceiling,
            max_virtual_secs: (6.0 * (span - life) * bottleneck / unthrottled + 6.0 * life)
                .max(21_600.0)
                .ceil() as u64,
            workload: Workload {
                bulk,
                ..Workload::default()
            },
            sqs: SqsModel::default(),
            sfn: SfnModel::default(),
            workflow,
            lambda: LambdaModel {
                account_limit: account,
                error_rate: 0.0,
                reserved: reserved
                    .iter()
                    .map(|(name, limit, _)| (name.clone(), *limit))
                    .collect(),
                ..LambdaModel::default()
            },
            other_load,
            cloudwatch: CloudWatchModel::default(),
            faults: Vec::new(),
        };
        Case {
            seed,
            scenario: sc,
            width,
            max_lambdas,
            reserved,
            lambda_secs,
            lifetime: life,
        }
    }

    /// The controller's config as `fanout simulate --config` reads it.
    fn config_toml(&self) -> String {
        format!(
            "[controller]\nceiling = {}\naccount_limit = {}\nmax_lambdas_per_execution = {:?}\n",
            self.scenario.ceiling, self.scenario.lambda.account_limit, self.max_lambdas
        )
    }

    fn scenario_toml(&self) -> String {
        toml::to_string(&self.scenario).expect("a scenario serializes")
    }

    /// The configured width over the true one (≥ 1: never under-estimated).
    fn factor(&self) -> f64 {
        self.max_lambdas / f64::from(self.width)
    }

    /// Run the case from its printed TOML, so what a failure prints is
    /// exactly what ran (and both pass validation).
    fn run(&self) -> Result<Report, String> {
        let origin = format!("seed {}", self.seed);
        let config = Config::from_text(&self.config_toml(), &origin).map_err(|e| e.to_string())?;
        let scenario =
            Scenario::parse(&self.scenario_toml(), &origin).map_err(|e| e.to_string())?;
        if scenario != self.scenario {
            return Err("the printed scenario does not read back as the drawn one".into());
        }
        fanout::sim::run(SimOptions {
            seed: self.seed,
            scenario,
            config,
            policy: Policy::Adaptive,
            progress: false,
        })
        .map_err(|e| format!("the run failed: {e}"))
    }

    /// Every assertion the report breaks, as text.
    fn problems(&self, r: &Report) -> Vec<String> {
        let mut p = Vec::new();
        for (what, n) in [
            ("lost", r.lost),
            ("duplicates", r.duplicates),
            ("deleted_without_start", r.deleted_without_start),
        ] {
            if n > 0 {
                p.push(format!("{what} = {n}"));
            }
        }
        if r.executions_failed > 0 && !self.crowded_out() {
            p.push(format!("executions_failed = {}", r.executions_failed));
        }
        if r.seconds_over_ceiling > MAX_SECONDS_OVER {
            p.push(format!(
                "seconds_over_ceiling = {} > {MAX_SECONDS_OVER}",
                r.seconds_over_ceiling
            ));
        } else if r.seconds_over_ceiling > 0 && self.strict() {
            p.push(format!(
                "seconds_over_ceiling = {} with the width never under-estimated \
                 ({:.2}x) and no reserved concurrency",
                r.seconds_over_ceiling,
                self.factor()
            ));
        }
        p
    }

    /// Whether other load at its peak takes more than the account leaves
    /// above the ceiling: the pipeline must then yield, learns so from
    /// CloudWatch one to three minutes late, and the executions running
    /// meanwhile are throttled until they end whatever admission does
    /// (they cannot be recalled), so the workflow's retries may run out.
    /// Only then may executions fail.
    fn crowded_out(&self) -> bool {
        let o = &self.scenario.other_load;
        let room = f64::from(self.scenario.lambda.account_limit - self.scenario.ceiling);
        let step = o.steps.iter().map(|s| s.add).fold(0.0, f64::max);
        o.base + o.amplitude + step > room
    }

    /// Whether the pipeline must never be over its ceiling at all.
    fn strict(&self) -> bool {
        self.factor() >= 1.0 && self.reserved.is_none()
    }

    /// The workflow in one line: `T12s > M6-20@4[30s,5s]`.
    fn shape(&self) -> String {
        let steps: Vec<String> = self
            .scenario
            .workflow
            .iter()
            .map(|s| {
                if s.task.is_some() {
                    return format!("T{:.0}s", s.median_secs);
                }
                let (lo, hi) = items(s);
                let tasks: Vec<String> = s
                    .iteration
                    .iter()
                    .map(|t| format!("{:.0}s", t.median_secs))
                    .collect();
                let n = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                };
                format!("M{n}@{}[{}]", s.max_concurrency, tasks.join(","))
            })
            .collect();
        steps.join(" > ")
    }

    /// The reservation and the other load, in a few words.
    fn extras(&self) -> String {
        let mut out = String::new();
        if let Some((name, limit, share)) = &self.reserved {
            let _ = write!(
                out,
                " | reserved {name}={limit} ({:.2} of share {share:.0})",
                f64::from(*limit) / share
            );
        }
        let o = &self.scenario.other_load;
        if o.base > 0.0 {
            let _ = write!(out, " | other {:.0}", o.base);
            if o.amplitude > 0.0 {
                let _ = write!(out, "±{:.0}/{:.0}s", o.amplitude, o.period_secs);
            }
            for s in &o.steps {
                let _ = write!(
                    out,
                    " +{:.0}@{:.0}s/{:.0}s",
                    s.add, s.start_secs, s.duration_secs
                );
            }
        }
        out
    }

    /// One line per case, for stderr.
    fn line(&self, r: &Report, problems: &[String]) -> String {
        let sc = &self.scenario;
        let verdict = if problems.is_empty() {
            "ok".to_string()
        } else {
            format!("FAIL: {}", problems.join("; "))
        };
        format!(
            "seed {}: {} | ceiling {} account {} bulk {} life {:.0}s {:.0} Lambda-s \
             | width {} k {:.2} (x{:.2}){} | util {:.3} peak {}/{} over {} s throttles {} \
             failed {} lost {} dup {} | {:.1} s wall | {verdict}",
            self.seed,
            self.shape(),
            sc.ceiling,
            sc.lambda.account_limit,
            sc.workload.bulk,
            self.lifetime,
            self.lambda_secs,
            self.width,
            self.max_lambdas,
            self.factor(),
            self.extras(),
            r.utilization,
            r.peak_concurrency,
            r.ceiling,
            r.seconds_over_ceiling,
            r.lambda_throttles,
            r.executions_failed,
            r.lost,
            r.duplicates,
            r.wall_s,
        )
    }

    /// The scenario and config of the case, for `fanout simulate`.
    fn repro(&self) -> String {
        format!(
            "# scenario (--scenario)\n{}\n# config (--config)\n{}",
            self.scenario_toml(),
            self.config_toml()
        )
    }
}

/// The report without its wall time, which differs from run to run.
fn without_wall(mut r: Report) -> Report {
    r.wall_s = 0.0;
    r
}

/// Run case `seed` (twice when `twice`: the same seed must give the same
/// report) and check it.
fn run_case(seed: u64, twice: bool) -> Outcome {
    let case = Case::draw(seed);
    let (problems, seconds_over, utilization) = match case.run() {
        Ok(r) => {
            let mut problems = case.problems(&r);
            if twice && case.run().map(without_wall) != Ok(without_wall(r.clone())) {
                problems.push("the same seed gave a different report".into());
            }
            eprintln!("{}", case.line(&r, &problems));
            (problems, r.seconds_over_ceiling, r.utilization)
        }
        Err(e) => {
            eprintln!("seed {seed}: {} | FAIL: {e}", case.shape());
            (vec![e], 0, 0.0)
        }
    };
    Outcome {
        seed,
        problems,
        seconds_over,
        utilization,
        repro: case.repro(),
    }
}

/// The q-quantile of sorted values.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> T {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Pass count and the spread of seconds over the ceiling and utilization.
fn summary(outcomes: &[Outcome]) -> String {
    let passed = outcomes.iter().filter(|o| o.problems.is_empty()).count();
    let mut over: Vec<u64> = outcomes.iter().map(|o| o.seconds_over).collect();
    over.sort_unstable();
    let mut util: Vec<f64> = outcomes.iter().map(|o| o.utilization).collect();
    util.sort_by(f64::total_cmp);
    let count = |lo: u64, hi: u64| over.iter().filter(|&&s| s >= lo && s <= hi).count();
    let q = [0.0, 0.1, 0.5, 0.9, 1.0];
    let over_q: Vec<String> = q.iter().map(|&x| quantile(&over, x).to_string()).collect();
    let util_q: Vec<String> = q
        .iter()
        .map(|&x| format!("{:.3}", quantile(&util, x)))
        .collect();
    format!(
        "shapes: {passed}/{} passed\n\
         seconds over the ceiling: 0: {}, 1-60: {}, 61-180: {}, >180: {}; \
         min/p10/p50/p90/max {}\n\
         utilization min/p10/p50/p90/max {}",
        outcomes.len(),
        count(0, 0),
        count(1, 60),
        count(61, 180),
        count(181, u64::MAX),
        over_q.join("/"),
        util_q.join("/"),
    )
}

#[test]
fn random_workflow_shapes_run_safely() {
    let cases = env_u64("FANOUT_SHAPE_CASES", 12);
    let first = env_u64("FANOUT_SHAPE_SEED", 1);
    assert!(cases > 0, "FANOUT_SHAPE_CASES must be at least 1");
    let outcomes: Vec<Outcome> = (first..first + cases)
        .map(|seed| run_case(seed, seed == first))
        .collect();
    eprintln!("{}", summary(&outcomes));
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.problems.is_empty()).collect();
    for o in &failed {
        eprintln!(
            "--- seed {} failed: {}\n{}",
            o.seed,
            o.problems.join("; "),
            o.repro
        );
    }
    let seeds: Vec<u64> = failed.iter().map(|o| o.seed).collect();
    assert!(
        seeds.is_empty(),
        "{} of {cases} shapes failed, seeds {seeds:?} (one again: \
         FANOUT_SHAPE_SEED=N FANOUT_SHAPE_CASES=1)",
        seeds.len()
    );
}

/// Run each seed's case; fail with its problems and its repro.
fn every_seed_passes(seeds: &[u64]) {
    for &seed in seeds {
        let o = run_case(seed, false);
        assert!(
            o.problems.is_empty(),
            "seed {seed}: {}\n{}",
            o.problems.join("; "),
            o.repro
        );
    }
}

/// Shapes that once failed executions: a reservation at 0.97-0.98 of its
/// share leaves the pipeline's other functions a pool of 135-325 Lambdas
/// (1822, 1846, 1921), and a reservation on a late step (1143, 1956). The
/// first cohort filled the pool or the late step, and starts beside it
/// before any execution had finished met it there (1956: held until 20
/// had finished, 7 running for 3,000 s, then a cohort into the late step).
#[test]
fn a_first_cohort_is_not_joined_before_its_lifetime_is_known() {
    every_seed_passes(&[1143, 1822, 1846, 1921, 1956]);
}

/// Shapes that once left work behind: a short first step reserved at a few
/// dozen, which each execution calls several at a time. Batches of ten
/// started together met on it, were throttled, and held the pipeline at a
/// tenth of its ceiling until the run's time was up.
#[test]
fn a_short_reserved_first_step_does_not_starve_the_pipeline() {
    every_seed_passes(&[730, 1323]);
}

/// Shapes a thinner noise margin on k̂ put over the ceiling (#13: branches
/// measured-spread and measured-spread-alone), small pipelines with Maps
/// of 8 to 10 items at once. On 27 a quarter hour of minutes spread ~2 %,
/// then a Map's fan-out read 7 % above them; on 436 and 441 a cohort's
/// ratio cycles over more minutes than the lifetime k̂ takes the widest
/// of; on 1880 a burst read up as the square root of the count ran 28 s
/// over (a cohort's burst grows with the count).
#[test]
fn a_maps_fan_out_stays_under_the_ceiling_with_the_noise_margin() {
    every_seed_passes(&[27, 436, 441, 1880]);
}
