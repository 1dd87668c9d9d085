//! The `fanout` command line. Parses arguments and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use fanout::config::{Config, Policy};
use fanout::sim::{self, Scenario, SimOptions};

#[derive(Parser)]
#[command(
    name = "fanout",
    version,
    about = "Drain SQS work queues into Step Functions executions at the Lambda ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the built-in simulated AWS in virtual time.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Scenario file (TOML); default: the built-in `exchange-227k`.
    #[arg(long, value_name = "FILE.toml")]
    scenario: Option<PathBuf>,
    /// Admission policy; default: the config's `controller.policy` (adaptive).
    #[arg(long, value_enum)]
    policy: Option<Policy>,
    /// Controller config, the same file `fanout run` uses.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// RNG seed; default: the scenario's.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the report as one JSON object on stdout, and nothing else there.
    #[arg(long)]
    json: bool,
    /// Write the per-second timeline (concurrency, running, backlog) as CSV;
    /// with --compare, one file per policy (FILE-adaptive.csv, ...).
    #[arg(long, value_name = "FILE.csv")]
    timeline: Option<PathBuf>,
    /// Run adaptive, seed and fixed on the same scenario and seed; print one
    /// table (with --json: a JSON array of the reports).
    #[arg(long, conflicts_with = "policy")]
    compare: bool,
    /// Draw Lambda concurrency over time (ceiling as a line) and the queue
    /// backlog below it, for each policy run: FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Simulate(a) => simulate(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// FILE.csv → FILE-suffix.csv
fn suffixed(path: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("timeline");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{suffix}.{ext}"),
        None => format!("{stem}-{suffix}"),
    };
    path.with_file_name(name)
}

fn simulate(a: SimulateArgs) -> Result<()> {
    let scenario = match &a.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::builtin("exchange-227k").context("built-in scenario missing")?,
    };
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => {
            let mut c = Config::default();
            c.controller.ceiling = scenario.ceiling;
            c.controller.account_limit = Some(scenario.lambda.account_limit.max(scenario.ceiling));
            c
        }
    };
    let seed = a.seed.unwrap_or(scenario.seed);
    if scenario.workload.bulk + scenario.workload.priority == 0
        && scenario.workload.priority_arrivals.is_none()
    {
        bail!(
            "scenario {} has no work: set workload.bulk or workload.priority",
            scenario.name
        );
    }
    let policies = if a.compare {
        vec![Policy::Adaptive, Policy::Seed, Policy::Fixed]
    } else {
        vec![a.policy.unwrap_or(config.controller.policy)]
    };
    let progress = !a.json && std::io::stderr().is_terminal();
    let mut runs = Vec::new();
    for policy in &policies {
        let (report, timeline) = sim::run_with_timeline(SimOptions {
            scenario: scenario.clone(),
            config: config.clone(),
            policy: *policy,
            seed,
            progress,
        })?;
        if let Some(path) = &a.timeline {
            let path = if a.compare {
                suffixed(path, &policy.to_string())
            } else {
                path.clone()
            };
            std::fs::write(&path, timeline.csv())
                .with_context(|| format!("cannot write the timeline to {}", path.display()))?;
        }
        runs.push((report, timeline));
    }
    if let Some(path) = &a.plot {
        let lines: Vec<sim::plot::Run<'_>> = runs
            .iter()
            .map(|(r, t)| sim::plot::Run {
                label: format!("{} (utilization {:.3})", r.policy, r.utilization),
                timeline: t,
            })
            .collect();
        let title = format!("{}: Lambda concurrency, seed {seed}", scenario.name);
        sim::plot::plot(path, &lines, config.controller.ceiling, &title)?;
    }
    let reports: Vec<&sim::Report> = runs.iter().map(|(r, _)| r).collect();
    if a.json {
        if a.compare {
            println!("{}", serde_json::to_string(&reports)?);
        } else {
            println!("{}", serde_json::to_string(reports[0])?);
        }
    } else if a.compare {
        println!(
            "fanout simulate --compare\n{}",
            sim::report::table(&reports)
        );
    } else {
        println!("fanout simulate\n{}", reports[0].human());
    }
    Ok(())
}
