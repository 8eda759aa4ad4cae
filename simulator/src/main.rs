//! `suanli-sim`: the command line. Behaviour lives in the library; this file parses
//! arguments, loads inputs, and prints or writes what the library returns.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use suanli_sim::engine::EngineFactory;
use suanli_sim::fill::{self, FillInput};
use suanli_sim::import::{self, Imported, RowPolicy};
use suanli_sim::model::{NodeShape, Request, TimedJob};
use suanli_sim::output::{self, InputFacts};
use suanli_sim::placer::{PlacerFactory, Policy, parse_policies};
use suanli_sim::quota_replay::{self, QuotaSetup};
use suanli_sim::replay::{self, ReplayOptions};
use suanli_sim::sources;
use suanli_sim::synthetic::{self, SyntheticConfig};

#[derive(Debug, Parser)]
#[command(
    name = "suanli-sim",
    version,
    about = "Replays GPU cluster traces through suanli-engine and compares placement policies."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The FGD paper's fill protocol: pods arrive until 1.3x the GPU capacity is requested,
    /// never leave, and are dropped when they do not fit.
    Fill(FillArgs),
    /// Event-driven replay with real arrivals and durations, the engine's queue as a FIFO, and
    /// departures.
    Replay(ReplayArgs),
    /// Fill and a short replay on built-in synthetic data; needs no files.
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Policies to compare, comma-separated, or `all`:
    /// random, dot-product, gpu-clustering, gpu-packing, best-fit, fgd.
    #[arg(long, default_value = "all")]
    policy: String,
    /// Write summary.json, CSV series and SVG charts into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object on stdout and nothing else.
    #[arg(long)]
    json: bool,
    /// Count, report and skip malformed data rows instead of failing.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Worker threads for independent runs.
    #[arg(long, default_value_t = default_threads())]
    threads: usize,
}

#[derive(Debug, Args)]
struct FillArgs {
    /// Node list (openb format: sn,cpu_milli,memory_mib,gpu,model). Without --nodes and
    /// --pods a synthetic cluster and workload are used.
    #[arg(long, requires = "pods")]
    nodes: Option<PathBuf>,
    /// Pod list (openb format).
    #[arg(long, requires = "nodes")]
    pods: Option<PathBuf>,
    /// Seeds: an inclusive range such as 42..51, or a list such as 42,43,50.
    #[arg(long, default_value = "42..51")]
    seeds: String,
    /// Append sampled pods until the GPU request reaches this multiple of capacity.
    #[arg(long, default_value_t = 1.3)]
    tune: f64,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("source").args(["philly", "openb_pods", "synthetic"]))]
struct ReplayArgs {
    /// Philly job list (timestamp,duration,num_gpus,gpu_time,cluster).
    #[arg(long)]
    philly: Option<PathBuf>,
    /// openb pod list; pods run from creation_time to deletion_time.
    #[arg(long)]
    openb_pods: Option<PathBuf>,
    /// Built-in synthetic workload (the default when no trace is given).
    #[arg(long)]
    synthetic: bool,
    /// Cluster as a node list (openb node format).
    #[arg(long, conflicts_with = "cluster_shape")]
    nodes: Option<PathBuf>,
    /// Homogeneous cluster NODESxGPUSxMODEL, e.g. 550x8xV100 (Philly default: 96x8xV100).
    #[arg(long)]
    cluster_shape: Option<String>,
    /// Seed for the policies' random choices and the synthetic workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Replay only the first N jobs by arrival.
    #[arg(long)]
    max_jobs: Option<usize>,
    /// `fair`: also replay through the engine's queue scheduler (backfill, preemption), once
    /// without quotas and once with each tenant guaranteed GPUs in proportion to its
    /// GPU-time, borrowing up to the whole cluster.
    #[arg(long, value_enum, default_value_t = QuotaMode::None)]
    quotas: QuotaMode,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum QuotaMode {
    /// The plain FIFO replay only.
    None,
    /// Add queue-scheduler runs without quotas and with fair per-tenant quotas.
    Fair,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Also write the outputs (fill/ and replay/ subdirectories) here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What a file's import skipped: (input name, count).
type SkippedRows = (String, usize);

/// 768 GPUs: the Philly list then keeps the cluster about half busy with real queueing
/// (550x8 leaves it under 10% busy; 64x8 queues for days).
const DEFAULT_PHILLY_SHAPE: &str = "96x8xV100";

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fill(args) => run_fill(&args),
        Command::Replay(args) => run_replay(&args),
        Command::Demo(args) => run_demo(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress_bar(len: u64, json: bool, what: &str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed})")
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

fn row_policy(skip: bool) -> RowPolicy {
    if skip {
        RowPolicy::Skip
    } else {
        RowPolicy::Fail
    }
}

/// Reports skipped rows on stderr and returns their count for the summary.
fn note_skipped<T>(what: &str, file: &Path, imported: &Imported<T>) -> (String, usize) {
    let n = imported.skipped_count();
    if n > 0 {
        eprintln!(
            "warning: skipped {n} malformed row(s) in {}",
            file.display()
        );
        for err in imported.skipped.iter().take(5) {
            eprintln!("  {err}");
        }
        if n > 5 {
            eprintln!("  ... and {} more", n - 5);
        }
    }
    (what.to_string(), n)
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value).context("writing JSON to stdout")?;
    writeln!(stdout).context("writing JSON to stdout")?;
    Ok(())
}

fn run_fill(args: &FillArgs) -> Result<()> {
    let policies = parse_policies(&args.common.policy)?;
    let seeds = sources::parse_seeds(&args.seeds)?;
    if !(args.tune.is_finite() && args.tune >= 0.0 && args.tune <= 100.0) {
        bail!("--tune {} must be a number between 0 and 100", args.tune);
    }
    let rows = row_policy(args.common.skip_bad_rows);
    let (nodes, pods, mut facts) = match (&args.nodes, &args.pods) {
        (Some(node_file), Some(pod_file)) => {
            let nodes = import::openb::load_nodes(node_file, rows)?;
            let pods = import::openb::load_pods(pod_file, rows)?;
            let skipped = vec![
                note_skipped("nodes", node_file, &nodes),
                note_skipped("pods", pod_file, &pods),
            ];
            let facts = InputFacts {
                source: pod_file.display().to_string(),
                skipped_rows: skipped,
                ..InputFacts::default()
            };
            let requests: Vec<Request> = pods.items.into_iter().map(|p| p.request).collect();
            (nodes.items, requests, facts)
        }
        _ => {
            let config = SyntheticConfig::default();
            let requests = synthetic::pods(&config)
                .into_iter()
                .map(|p| p.request)
                .collect();
            let facts = InputFacts {
                source: "synthetic".into(),
                ..InputFacts::default()
            };
            (synthetic::cluster(&config), requests, facts)
        }
    };
    let factory = EngineFactory;
    let input = FillInput::new(&factory, nodes, pods)?;
    if input.nodes.is_empty() {
        bail!("the node list has no GPU nodes; the fill protocol runs on GPU nodes only");
    }
    facts.nodes = input.nodes.len();
    facts.gpus = input.capacity_gpu_milli() / 1000;
    facts.items = input.pods.len();
    let (summary, summaries) = fill_and_summarize(
        &factory,
        &input,
        &policies,
        &seeds,
        args.tune,
        args.common.threads,
        &facts,
        args.common.json,
    )?;
    if args.common.json {
        print_json(&summary)?;
    } else {
        println!(
            "fill: {} GPU nodes, {} GPUs, {} pods, tune {}, {} seed(s) ({})",
            facts.nodes,
            facts.gpus,
            facts.items,
            args.tune,
            seeds.len(),
            args.seeds
        );
        print!("{}", output::fill_table(&summaries));
    }
    if let Some(dir) = &args.common.out {
        let written = output::write_fill_outputs(dir, &summary, &summaries)?;
        if !args.common.json {
            println!(
                "wrote {}",
                written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn fill_and_summarize(
    factory: &EngineFactory,
    input: &FillInput<<EngineFactory as PlacerFactory>::Mix>,
    policies: &[Policy],
    seeds: &[u64],
    tune: f64,
    threads: usize,
    facts: &InputFacts,
    json: bool,
) -> Result<(serde_json::Value, Vec<fill::FillSummary>)> {
    let started = Instant::now();
    let bar = progress_bar((policies.len() * seeds.len()) as u64, json, "fill");
    let runs = fill::run_all(factory, input, policies, seeds, tune, threads, &|_| {
        bar.inc(1)
    })?;
    bar.finish_and_clear();
    let summaries = fill::summarize(&runs, policies);
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mix_shapes = factory.mix_len(&input.mix);
    Ok((
        output::fill_json(facts, tune, mix_shapes, &summaries, &runs, wall_ms),
        summaries,
    ))
}

fn load_cluster(
    args: &ReplayArgs,
    rows: RowPolicy,
    default_shape: &str,
) -> Result<(Vec<NodeShape>, Option<SkippedRows>)> {
    if let Some(file) = &args.nodes {
        let nodes = import::openb::load_nodes(file, rows)?;
        let skipped = note_skipped("nodes", file, &nodes);
        return Ok((nodes.items, Some(skipped)));
    }
    let shape = args.cluster_shape.as_deref().unwrap_or(default_shape);
    Ok((sources::parse_cluster_shape(shape)?, None))
}

fn run_replay(args: &ReplayArgs) -> Result<()> {
    let policies = parse_policies(&args.common.policy)?;
    let rows = row_policy(args.common.skip_bad_rows);
    let mut skipped = Vec::new();
    let (nodes, jobs, source) = if let Some(file) = &args.philly {
        let (nodes, node_skips) = load_cluster(args, rows, DEFAULT_PHILLY_SHAPE)?;
        skipped.extend(node_skips);
        let imported = import::philly::load_jobs(file, rows)?;
        skipped.push(note_skipped("jobs", file, &imported));
        let per_node = nodes.iter().map(|n| n.gpus).max().unwrap_or(1);
        (
            nodes,
            sources::philly_jobs(&imported.items, per_node, args.max_jobs),
            file.display().to_string(),
        )
    } else if let Some(file) = &args.openb_pods {
        if args.nodes.is_none() && args.cluster_shape.is_none() {
            bail!("--openb-pods needs the cluster: give --nodes NODES.csv (or --cluster-shape)");
        }
        let (nodes, node_skips) = load_cluster(args, rows, "")?;
        skipped.extend(node_skips);
        let imported = import::openb::load_pods(file, rows)?;
        skipped.push(note_skipped("pods", file, &imported));
        let (jobs, untimed) = sources::openb_jobs(&imported.items, args.max_jobs);
        if untimed > 0 {
            eprintln!("warning: {untimed} pod(s) without creation_time are not replayed");
        }
        (nodes, jobs, file.display().to_string())
    } else {
        let config = SyntheticConfig {
            seed: args.seed,
            jobs: args.max_jobs.unwrap_or(SyntheticConfig::default().jobs),
            ..SyntheticConfig::default()
        };
        let nodes = match (&args.nodes, &args.cluster_shape) {
            (None, None) => synthetic::cluster(&config),
            _ => load_cluster(args, rows, "")?.0,
        };
        let jobs = synthetic::jobs(&config, &nodes);
        (nodes, jobs, "synthetic".to_string())
    };
    if jobs.is_empty() {
        bail!("no jobs to replay");
    }
    let facts = InputFacts {
        source,
        nodes: nodes.len(),
        gpus: nodes.iter().map(|n| u64::from(n.gpus)).sum(),
        items: jobs.len(),
        skipped_rows: skipped,
    };
    let mut runs = replay_all(
        &nodes,
        &jobs,
        &policies,
        args.seed,
        args.common.threads,
        args.common.json,
    )?;
    if args.quotas == QuotaMode::Fair {
        let started = Instant::now();
        let bar = progress_bar(2 * jobs.len() as u64, args.common.json, "queue");
        for setup in [QuotaSetup::None, QuotaSetup::Fair] {
            // The first policy asked for places single replicas, as the daemon's policy does.
            let run = quota_replay::run(&nodes, &jobs, setup, policies[0], args.seed, &|n| {
                bar.inc(n)
            })?;
            runs.0.push(run);
        }
        bar.finish_and_clear();
        runs.1 += started.elapsed().as_secs_f64() * 1000.0;
    }
    let summary = output::replay_json(&facts, &runs.0, runs.1);
    if args.common.json {
        print_json(&summary)?;
    } else {
        println!(
            "replay: {} nodes, {} GPUs, {} jobs from {}",
            facts.nodes, facts.gpus, facts.items, facts.source
        );
        print!("{}", output::replay_table(&runs.0));
        println!("\nmean queueing delay per tenant:");
        print!("{}", output::tenant_table(&runs.0));
        if let (Some(plain), Some(quota)) = (runs.0.first(), runs.0.last())
            && quota.quotas.is_some()
        {
            println!(
                "\nper tenant, top 10 by jobs: {} (strict FIFO, no quotas) | queue with fair \
                 quotas ({} preemptions)",
                plain.label(),
                quota.preemptions
            );
            print!("{}", output::quota_tenant_table(plain, quota, 10));
        }
    }
    if let Some(dir) = &args.common.out {
        let written = output::write_replay_outputs(dir, &summary, &runs.0)?;
        if !args.common.json {
            println!(
                "wrote {}",
                written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// Runs each policy's replay on its own worker; results in policy order, and the wall time.
fn replay_all(
    nodes: &[NodeShape],
    jobs: &[TimedJob],
    policies: &[Policy],
    seed: u64,
    threads: usize,
    json: bool,
) -> Result<(Vec<replay::ReplayRun>, f64)> {
    let started = Instant::now();
    let bar = progress_bar((jobs.len() * policies.len()) as u64, json, "replay");
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, policies.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&policy) = policies.get(i) else {
                        break;
                    };
                    let run =
                        replay::run(nodes, jobs, policy, seed, ReplayOptions::default(), &|n| {
                            bar.inc(n)
                        });
                    results
                        .lock()
                        .expect("a replay worker panicked")
                        .push((i, run));
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().expect("a replay worker panicked");
    results.sort_by_key(|(i, _)| *i);
    let runs = results
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((runs, started.elapsed().as_secs_f64() * 1000.0))
}

fn run_demo(args: &DemoArgs) -> Result<()> {
    let config = SyntheticConfig {
        big_nodes: 16,
        jobs: 1500,
        ..SyntheticConfig::default()
    };
    let factory = EngineFactory;
    let pods = synthetic::pods(&config)
        .into_iter()
        .map(|p| p.request)
        .collect();
    let input = FillInput::new(&factory, synthetic::cluster(&config), pods)?;
    let facts = InputFacts {
        source: "synthetic".into(),
        nodes: input.nodes.len(),
        gpus: input.capacity_gpu_milli() / 1000,
        items: input.pods.len(),
        skipped_rows: Vec::new(),
    };
    let seeds = [42, 43, 44];
    let threads = default_threads();
    let (fill_summary, summaries) = fill_and_summarize(
        &factory,
        &input,
        &Policy::ALL,
        &seeds,
        1.3,
        threads,
        &facts,
        false,
    )?;
    println!(
        "demo fill (synthetic): {} GPU nodes, {} GPUs, {} pods, tune 1.3, seeds 42..44",
        facts.nodes, facts.gpus, facts.items
    );
    println!("(the 'published' column is the FGD paper's openb figure, shown for scale only)");
    print!("{}", output::fill_table(&summaries));

    let nodes = synthetic::cluster(&config);
    let jobs = synthetic::jobs(
        &SyntheticConfig {
            jobs: 1000,
            ..config
        },
        &nodes,
    );
    let replay_facts = InputFacts {
        source: "synthetic".into(),
        nodes: nodes.len(),
        gpus: nodes.iter().map(|n| u64::from(n.gpus)).sum(),
        items: jobs.len(),
        skipped_rows: Vec::new(),
    };
    let (runs, wall_ms) = replay_all(&nodes, &jobs, &Policy::ALL, 42, threads, false)?;
    println!(
        "\ndemo replay (synthetic): {} nodes, {} GPUs, {} jobs",
        replay_facts.nodes, replay_facts.gpus, replay_facts.items
    );
    print!("{}", output::replay_table(&runs));
    println!("\nmean queueing delay per tenant:");
    print!("{}", output::tenant_table(&runs));
    if let Some(dir) = &args.out {
        output::write_fill_outputs(&dir.join("fill"), &fill_summary, &summaries)?;
        let replay_summary = output::replay_json(&replay_facts, &runs, wall_ms);
        output::write_replay_outputs(&dir.join("replay"), &replay_summary, &runs)?;
        println!("wrote {}/fill and {}/replay", dir.display(), dir.display());
    }
    Ok(())
}
