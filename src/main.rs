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
    /// Write the per-second timeline (concurrency, running, backlog) as CSV.
    #[arg(long, value_name = "FILE.csv")]
    timeline: Option<PathBuf>,
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
    let policy = a.policy.unwrap_or(config.controller.policy);
    let seed = a.seed.unwrap_or(scenario.seed);
    if scenario.workload.bulk + scenario.workload.priority == 0
        && scenario.workload.priority_arrivals.is_none()
    {
        bail!(
            "scenario {} has no work: set workload.bulk or workload.priority",
            scenario.name
        );
    }
    let progress = !a.json && std::io::stderr().is_terminal();
    let report = sim::run(SimOptions {
        scenario,
        config,
        policy,
        seed,
        progress,
        timeline: a.timeline.clone(),
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("fanout simulate\n{}", report.human());
    }
    Ok(())
}
