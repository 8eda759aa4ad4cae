//! What the demo does on its cluster: a training gang, inference replicas and shared-GPU
//! notebooks are submitted through the same client `suanli` uses; events are shown as they
//! happen, then where each job landed, and what each replica's process saw in
//! `CUDA_VISIBLE_DEVICES` against the GPUs it was granted.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use suanli::client::{Client, unary};
use suanli::commands::{self, emit, now_ms};
use suanli::error::CliError;
use suanli::output::{self, Format};
use suanli::view::{EventView, JobView, NodeView};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind, NetworkConstraint, NetworkScope};
use suanli_engine::{GpuModel, JobSpec};
use suanli_proto::pb;
use tokio::time::{Instant, sleep, timeout};

use crate::cluster::{Cluster, NODES};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds each demo replica runs.
    #[arg(long, default_value_t = 2)]
    pub job_seconds: u32,
    /// Give up (cancelling what still runs) after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Placement policy: fgd, best-fit, dot-product, gpu-packing, gpu-clustering, random.
    #[arg(long, default_value = "fgd")]
    pub policy: String,
}

fn exclusive(count: u32) -> Option<GpuRequest> {
    Some(GpuRequest {
        policy: GpuPolicy::Exclusive { count },
        models: vec!["H100".parse::<GpuModel>().expect("a valid model name")],
    })
}

/// The jobs the demo submits: two training gangs (the second must wait for the first),
/// inference replicas, and four notebooks that share one GPU.
fn demo_jobs(seconds: u32) -> Vec<JobSpec> {
    let command = |what: &str| {
        vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("echo \"{what}: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES\"; sleep {seconds}"),
        ]
    };
    let gang = |name: &str, gpus: u32| {
        let mut job = JobSpec::new(name, JobKind::Training);
        job.replicas = 2;
        job.gpu = exclusive(gpus);
        job.resources.cpu_milli = 32_000;
        job.resources.memory_mib = 256 * 1024;
        job.topology.network = NetworkConstraint {
            scope: NetworkScope::SameLeaf,
            mode: suanli_engine::job::Requirement::Preferred,
        };
        job.command = command(name);
        job
    };
    let train = gang("train-llama", 4);
    // Needs two nodes with 6 free GPUs each: it waits until the first gang is done.
    let eval = gang("eval-llama", 6);
    let mut serve = JobSpec::new("serve-qwen", JobKind::Inference);
    serve.replicas = 3;
    serve.gpu = exclusive(1);
    serve.resources.cpu_milli = 4_000;
    serve.resources.memory_mib = 32 * 1024;
    serve.command = command("serve-qwen");
    let mut jobs = vec![train, eval, serve];
    for who in ["ada", "grace", "linus", "barbara"] {
        let mut notebook = JobSpec::new(format!("notebook-{who}"), JobKind::Inference);
        notebook.gpu = Some(GpuRequest {
            policy: GpuPolicy::Shared {
                milli: Some(250),
                memory_mib: Some(10 * 1024),
            },
            models: vec![],
        });
        notebook.resources.cpu_milli = 2_000;
        notebook.resources.memory_mib = 8 * 1024;
        notebook.command = command(&format!("notebook-{who}"));
        jobs.push(notebook);
    }
    jobs
}

/// What `suanli-demo -o json` prints.
#[derive(Debug, Serialize)]
struct DemoReport {
    jobs: Vec<JobView>,
    replicas: Vec<ReplicaRun>,
}

/// What one replica's process saw.
#[derive(Debug, Clone, Serialize)]
struct ReplicaRun {
    job: String,
    replica: u32,
    node: String,
    granted: Vec<String>,
    /// `CUDA_VISIBLE_DEVICES` as the process printed it; `None` if it printed nothing.
    visible: Option<Vec<String>>,
}

impl ReplicaRun {
    fn matches(&self) -> bool {
        let mut granted = self.granted.clone();
        granted.sort();
        granted.dedup();
        self.visible.as_ref().is_some_and(|v| {
            let mut v = v.clone();
            v.sort();
            v == granted
        })
    }
}

pub async fn run(args: &DemoArgs, format: Format) -> Result<(), CliError> {
    if args.job_seconds > 600 {
        return Err(CliError::Usage("--job-seconds: at most 600".into()));
    }
    let narrate = !format.is_data();
    let say = |text: &str| if narrate { emit(text) } else { Ok(()) };
    let mut interrupt = commands::listen_for_interrupt()?;
    say("Suanli demo: a scheduler and three node agents in this process, on 127.0.0.1.\n\n")?;
    let cluster = Cluster::start(&args.policy).await?;
    let deadline = Duration::from_secs(args.timeout.max(5));
    let mut client = match Client::connect(&cluster.settings()).await {
        Ok(c) => c,
        Err(e) => {
            cluster.stop().await;
            return Err(e);
        }
    };
    let outcome = {
        let scenario = scenario(&mut client, &cluster, args, narrate);
        tokio::select! {
            r = timeout(deadline, scenario) => r.unwrap_or_else(|_| Err(CliError::Failed(format!(
                "the demo did not finish within {} s", deadline.as_secs()
            )))),
            _ = interrupt.recv() => Err(CliError::Failed("interrupted".into())),
        }
    };
    if outcome.is_err() {
        cancel_unfinished(&mut client).await;
    }
    let path = cluster.dir.path().display().to_string();
    cluster.stop().await;
    let still_there = Path::new(&path).exists();
    match outcome {
        Ok(report) => {
            if narrate {
                say(&format!(
                    "\nStopped the agents and the scheduler; {}.\n",
                    if still_there {
                        format!("could not remove {path}")
                    } else {
                        "removed the temporary directory".to_string()
                    }
                ))?;
            } else {
                emit(&output::data(format, &report)?)?;
            }
            let failed: Vec<&JobView> = report
                .jobs
                .iter()
                .filter(|j| j.state != "succeeded")
                .collect();
            if !failed.is_empty() {
                return Err(CliError::Failed(format!(
                    "{} demo job(s) did not succeed: {}",
                    failed.len(),
                    failed
                        .iter()
                        .map(|j| format!("{} ({})", j.name, j.state))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if let Some(bad) = report.replicas.iter().find(|r| !r.matches()) {
                return Err(CliError::Failed(format!(
                    "{} replica {} saw CUDA_VISIBLE_DEVICES={:?}, but was granted {:?}",
                    bad.job, bad.replica, bad.visible, bad.granted
                )));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn cancel_unfinished(client: &mut Client) {
    let Ok(reply) = client
        .jobs
        .list(unary(pb::ListJobsRequest::default()))
        .await
    else {
        return;
    };
    let open: Vec<String> = reply
        .into_inner()
        .jobs
        .into_iter()
        .filter(|j| {
            !matches!(
                pb::JobState::try_from(j.state),
                Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
            )
        })
        .map(|j| j.id)
        .collect();
    for id in &open {
        let _ = client
            .jobs
            .cancel(unary(pb::CancelJobRequest {
                id: id.clone(),
                reason: "demo stopped".into(),
            }))
            .await;
    }
    // Give the agents a moment to stop the processes before they themselves stop.
    if !open.is_empty() {
        sleep(Duration::from_secs(2)).await;
    }
}

async fn wait_for_nodes(client: &mut Client, count: usize) -> Result<Vec<NodeView>, CliError> {
    let started = Instant::now();
    loop {
        let nodes = commands::fetch_nodes(client, "").await?;
        if nodes.iter().filter(|n| n.condition == "ready").count() >= count {
            return Ok(nodes);
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(CliError::Failed(format!(
                "only {} of {count} agents registered within 20 s",
                nodes.len()
            )));
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(
    client: &mut Client,
    cluster: &Cluster,
    args: &DemoArgs,
    narrate: bool,
) -> Result<DemoReport, CliError> {
    let say = |text: &str| if narrate { emit(text) } else { Ok(()) };
    say(&format!(
        "[1/4] Cluster: scheduler on {} (policy {}), agents for {}\n",
        cluster.server.grpc_addr,
        args.policy,
        cluster
            .agents
            .iter()
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let nodes = wait_for_nodes(client, NODES.len()).await?;
    say(&indent(&output::nodes_table(&nodes, false)))?;

    // Subscribe before submitting so no event is missed.
    let mut events = client
        .jobs
        .watch(pb::WatchJobsRequest {
            job_id: String::new(),
            from_seq: Some(1),
            tenant: String::new(),
            replay_only: false,
        })
        .await
        .map_err(|s| client.fail(s))?
        .into_inner();

    say("\n[2/4] Submitting jobs\n")?;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut table = output::Table::default();
    for spec in demo_jobs(args.job_seconds) {
        let kind = match spec.kind {
            JobKind::Training => "training gang",
            JobKind::Inference => "inference",
        };
        let shape = format!("{kind}, {} × {}", spec.replicas, output::gpu_summary(&spec));
        let job = commands::submit_one(client, spec, String::new()).await?;
        table.row(vec![format!("  job/{}", job.id), job.name.clone(), shape]);
        names.insert(job.id.clone(), job.name.clone());
        order.push(job.id);
    }
    say(&table.render())?;

    say("\n[3/4] Events as they happen\n")?;
    let mut states: HashMap<String, String> = HashMap::new();
    let mut shown_snapshot = false;
    let mut landed_after_snapshot: Vec<String> = Vec::new();
    let quiet = Duration::from_millis(400);
    loop {
        if order
            .iter()
            .all(|id| states.get(id).is_some_and(|s| is_terminal(s)))
        {
            break;
        }
        match timeout(quiet, events.message()).await {
            Ok(Ok(Some(event))) => {
                let event = EventView::from(event);
                if !names.contains_key(&event.job_id) {
                    continue;
                }
                say(&format!(
                    "  {}",
                    output::event_line(&event, names.get(&event.job_id).map(String::as_str))
                        .trim_start()
                ))?;
                states.insert(event.job_id.clone(), event.to_state.clone());
                if shown_snapshot
                    && event.to_state == "running"
                    && !landed_after_snapshot.contains(&event.job_id)
                {
                    landed_after_snapshot.push(event.job_id.clone());
                    let job = commands::fetch_job(client, &event.job_id).await?;
                    if let Some(p) = &job.placement {
                        say(&output::line(&format!("      {} landed:", job.name)))?;
                        say(&output::placement_lines(p, "        "))?;
                    }
                }
            }
            Ok(Ok(None)) => {
                return Err(CliError::Failed(
                    "the scheduler ended the event stream".into(),
                ));
            }
            Ok(Err(status)) => return Err(client.fail(status)),
            Err(_) => {
                // Quiet for a moment with nothing half-started: show where things are.
                let settled = !states.values().any(|s| s == "placed")
                    && states.values().any(|s| s == "running");
                if narrate && settled && !shown_snapshot {
                    shown_snapshot = true;
                    snapshot(client, &order).await?;
                }
            }
        }
    }

    let mut jobs = Vec::new();
    for id in &order {
        jobs.push(commands::fetch_job(client, id).await?);
    }
    let replicas = replica_runs(cluster, &jobs);
    say("\n[4/4] Results\n")?;
    say(&indent(&output::jobs_table(&jobs, true, now_ms())))?;
    say("\n  What each replica's process saw (CUDA_VISIBLE_DEVICES against its grant):\n")?;
    let mut table = output::Table::default();
    for r in &replicas {
        let seen = match &r.visible {
            None => "printed nothing".to_string(),
            Some(v) if v.len() <= 2 => v.join(","),
            Some(v) => format!("{},… ({} GPUs)", v[0], v.len()),
        };
        table.row(vec![
            format!("    {} #{}", r.job, r.replica),
            r.node.clone(),
            seen,
            if r.matches() { "matches" } else { "MISMATCH" }.to_string(),
        ]);
    }
    say(&table.render())?;
    Ok(DemoReport { jobs, replicas })
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Where each job landed, why the pending ones wait, and GPU allocation per node.
async fn snapshot(client: &mut Client, order: &[String]) -> Result<(), CliError> {
    emit("\n  ── Where the jobs landed ──\n")?;
    for id in order {
        let job = commands::fetch_job(client, id).await?;
        emit(&output::line(&format!(
            "  {} ({}, {})",
            job.name, job.id, job.state
        )))?;
        match &job.placement {
            Some(p) => emit(&output::placement_lines(p, "    "))?,
            None => {
                let why = commands::explain(client, id).await?;
                emit(&output::line(&format!("    waiting: {}", why.summary)))?;
                if let Some(pending) = &why.pending {
                    for r in &pending.reasons {
                        emit(&output::line(&format!(
                            "      {} of {} nodes: {}",
                            r.node_count, pending.nodes_considered, r.message
                        )))?;
                    }
                }
            }
        }
    }
    emit("\n  ── GPU allocation per node ──\n")?;
    let nodes = commands::fetch_nodes(client, "").await?;
    emit(&output::utilization_bars(&nodes))?;
    emit("\n")?;
    Ok(())
}

/// Reads what each replica printed from its agent's log directory.
fn replica_runs(cluster: &Cluster, jobs: &[JobView]) -> Vec<ReplicaRun> {
    let mut runs = Vec::new();
    for job in jobs {
        let Some(p) = &job.placement else { continue };
        for r in &p.replicas {
            let node = r
                .node_cid
                .rsplit('/')
                .next()
                .unwrap_or(&r.node_cid)
                .to_string();
            let visible = cluster
                .agents
                .iter()
                .find(|a| a.name == node)
                .and_then(|a| last_output(&a.data_dir, &job.id, r.replica))
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        l.split_once("CUDA_VISIBLE_DEVICES=").map(|(_, v)| {
                            v.split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_string)
                                .collect()
                        })
                    })
                });
            runs.push(ReplicaRun {
                job: job.name.clone(),
                replica: r.replica,
                node,
                granted: r.gpus.iter().map(|g| g.uuid.clone()).collect(),
                visible,
            });
        }
    }
    runs
}

/// Output of the replica's latest attempt (`logs/<job>/<replica>.<attempt>.log`).
fn last_output(agent_dir: &Path, job_id: &str, replica: u32) -> Option<String> {
    let prefix = format!("{replica}.");
    let latest = std::fs::read_dir(agent_dir.join("logs").join(job_id))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let attempt: u32 = name
                .strip_prefix(&prefix)?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((attempt, e.path()))
        })
        .max_by_key(|(attempt, _)| *attempt)?;
    std::fs::read_to_string(latest.1).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_jobs_are_valid() {
        for spec in demo_jobs(2) {
            spec.validate().expect("demo job is valid");
        }
    }
}
