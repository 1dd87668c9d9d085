//! The `fanout` command line. Parses arguments and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use fanout::config::{Config, LoadError, Policy, Source as ConfigSource};
use fanout::enqueue::{EnqueueOptions, Input};
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
    /// Run the controller against AWS (or an emulator): JSON logs on stdout,
    /// /healthz and /metrics on `[http] listen`. SIGHUP, or a change to the
    /// config file, reloads the ceiling, rates and pacing without a restart.
    Run(RunArgs),
    /// Put one company update, or a whole refresh from a file, on a queue.
    Enqueue(EnqueueArgs),
    /// Queue depths, running executions and the ceiling.
    Status(StatusArgs),
    /// Validate a config file and list every problem.
    CheckConfig(CheckConfigArgs),
    /// List the state machine's FAILED, TIMED_OUT and ABORTED executions:
    /// business key, failing state, error.
    Failed(FailedArgs),
    /// Put a redrive request for each unsuccessful execution on the bulk
    /// queue: the controller redrives them (RedriveExecution) under its
    /// ceiling.
    Redrive(RedriveArgs),
    /// Run the controller against the built-in simulated AWS in virtual time.
    Simulate(SimulateArgs),
    /// Exit 0 if a running controller's /healthz answers 200 (the container
    /// health check: the image has no curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(clap::Args)]
struct HealthcheckArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// Give up after this many seconds (ECS allows 5).
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

#[derive(clap::Args)]
struct EnqueueArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// One company update (with --data for more fields).
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    company_id: Option<String>,
    /// Extra fields of the single update, as a JSON object.
    #[arg(long, value_name = "JSON", requires = "company_id")]
    data: Option<String>,
    /// A whole refresh: CSV with a company_id column, or JSON lines.
    #[arg(long, value_name = "FILE.csv|FILE.jsonl")]
    file: Option<PathBuf>,
    /// Send to the priority queue (the first [[queues]]) instead of the bulk
    /// one (the last).
    #[arg(long)]
    priority: bool,
    /// Only validate and print the summary.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// A running controller's HTTP server (its `[http] listen`), e.g.
    /// http://127.0.0.1:8080: adds its budget and estimate.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// Read again every --interval-secs until Ctrl-C: redrawn in place in a
    /// terminal, a plain block per refresh otherwise; a failed read is
    /// shown and the next one tried.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes of --watch.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    interval_secs: u64,
}

#[derive(clap::Args)]
struct FailedArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Executions started within this long: 24h, 7d, 90m ...
    #[arg(long, default_value = "24h", value_parser = fanout::redrive::parse_since)]
    since: std::time::Duration,
    /// One JSON array instead of the table.
    #[arg(long)]
    json: bool,
    /// Describe and show only the N newest (each takes two calls at five a
    /// second: 1,000 failures take about 7 minutes).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

// Four independent flags of one command, as clap spells them.
#[allow(clippy::struct_excessive_bools)]
#[derive(clap::Args)]
struct RedriveArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Executions started within this long: 24h, 7d, 90m ...
    #[arg(long, default_value = "24h", value_parser = fanout::redrive::parse_since)]
    since: std::time::Duration,
    /// List and decide; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Send the original input of an execution that cannot be redriven
    /// (closed over 14 days ago, not redrivable) again as a new message.
    /// Needs {message_id} in naming.template.
    #[arg(long)]
    requeue: bool,
    /// Send to the priority queue (the first [[queues]]) instead of the
    /// bulk one (the last).
    #[arg(long)]
    priority: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CheckConfigArgs {
    /// The config file to check.
    file: PathBuf,
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
    match cli.command {
        Command::Run(a) => return run(&a),
        Command::CheckConfig(a) => return check_config(&a),
        Command::Healthcheck(a) => {
            let timeout = std::time::Duration::from_secs(a.timeout_secs.max(1));
            return match fanout::healthcheck::probe(&a.url, timeout) {
                Ok(200) => ExitCode::SUCCESS,
                Ok(code) => {
                    eprintln!("unhealthy: {} answered {code}", a.url);
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Simulate(a) => simulate(&a),
        Command::Enqueue(a) => match enqueue(a) {
            // Some lines refused or not sent: the summary said which.
            Ok(false) => return ExitCode::FAILURE,
            other => other.map(|_| ()),
        },
        Command::Status(a) => status(&a),
        Command::Failed(a) => failed(&a),
        Command::Redrive(a) => match redrive(&a) {
            // Some messages not sent: the summary said which.
            Ok(false) => return ExitCode::FAILURE,
            other => other.map(|_| ()),
        },
        Command::Run(_) | Command::CheckConfig(_) | Command::Healthcheck(_) => {
            unreachable!("handled above")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Exit 2 on an unusable config (every problem listed), 1 on a runtime
/// failure, 0 after a shutdown by signal.
fn run(a: &RunArgs) -> ExitCode {
    // `$FANOUT_CONFIG_TOML` or the file; the file is polled for changes
    // and re-read on SIGHUP, the environment cannot change in a running
    // process.
    let source = ConfigSource::resolve(&a.config);
    let (cfg, text) = match source.load_for_aws() {
        Ok(loaded) => loaded,
        Err(LoadError::Read(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        // Every problem at once, the AWS-only ones included (as check-config).
        Err(e) => {
            eprintln!("error: the config is not usable against AWS:");
            for p in fanout::check::lines(&e) {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };
    fanout::telemetry::init_json_logs();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(fanout::run::run(cfg, source, text));
    // Blocking tasks (credential providers) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fanout run failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(a: &CheckConfigArgs) -> ExitCode {
    match fanout::check::check_config(&a.file) {
        Ok(problems) if problems.is_empty() => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} problem(s)", problems.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `Ok(false)`: done, but some lines were invalid or not sent.
fn enqueue(a: EnqueueArgs) -> Result<bool> {
    let cfg = Config::load(&a.config)?;
    let input = match (a.company_id, a.file) {
        (Some(company_id), None) => Input::One {
            company_id,
            data: a.data,
        },
        (None, Some(f)) => Input::File(f),
        _ => bail!("give either --company-id or --file"),
    };
    let opts = EnqueueOptions {
        input,
        priority: a.priority,
        dry_run: a.dry_run,
        progress: !a.json && fanout::enqueue::stderr_is_terminal(),
    };
    let summary = runtime()?.block_on(fanout::enqueue::enqueue(&cfg, opts))?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.human());
    }
    if !summary.ok() {
        eprintln!(
            "error: {} line(s) invalid, {} not sent (see above)",
            summary.invalid.len(),
            summary.failed.len()
        );
    }
    Ok(summary.ok())
}

fn status(a: &StatusArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    if a.watch {
        let opts = fanout::status::watch::WatchOptions {
            interval: std::time::Duration::from_secs(a.interval_secs),
            terminal: std::io::stdout().is_terminal(),
            json: a.json,
        };
        let mut out = std::io::stdout().lock();
        let watch = fanout::status::watch::watch(&cfg, a.controller.as_deref(), opts, &mut out);
        runtime()?.block_on(watch)?;
        return Ok(());
    }
    let s = runtime()?.block_on(fanout::status::status(&cfg, a.controller.as_deref()))?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{}", s.table());
    }
    Ok(())
}

fn failed(a: &FailedArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let (list, total) =
        runtime()?.block_on(fanout::redrive::failed_command(&cfg, a.since, a.limit))?;
    if a.json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        print!("{}", fanout::redrive::table(&list, total));
    }
    Ok(())
}

/// `Ok(false)`: done, but some messages were not sent.
fn redrive(a: &RedriveArgs) -> Result<bool> {
    let cfg = Config::load(&a.config)?;
    let summary = runtime()?.block_on(fanout::redrive::redrive_command(
        &cfg, a.since, a.priority, a.dry_run, a.requeue,
    ))?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.human());
    }
    if !summary.ok() {
        eprintln!(
            "error: {} message(s) not sent (see above); run fanout redrive again",
            summary.failed.len()
        );
    }
    Ok(summary.ok())
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

fn simulate(a: &SimulateArgs) -> Result<()> {
    let scenario = match &a.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::builtin("exchange-227k").context("built-in scenario missing")?,
    };
    let config = if let Some(p) = &a.config {
        Config::load(p)?
    } else {
        let mut c = Config::default();
        c.controller.ceiling = scenario.ceiling;
        c.controller.account_limit = Some(scenario.lambda.account_limit.max(scenario.ceiling));
        c
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
