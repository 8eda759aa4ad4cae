//! `suanli demo`: a whole cluster in this process. A scheduler on 127.0.0.1 (free ports, data
//! in a temporary directory) and three node agents with recorded inventories (two HGX H100
//! nodes with NVLink and RDMA, one single-H100 host) run real gRPC sessions; a training gang,
//! inference replicas and shared-GPU notebooks are submitted through the same client the
//! other commands use; the agents run each replica as a real process with
//! `CUDA_VISIBLE_DEVICES` set to its grant. Nothing is left behind afterwards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use suanli_agent::config::AgentConfig;
use suanli_agent::discovery::{FixtureProbe, RawGpus};
use suanli_agent::session::Agent;
use suanli_engine::inventory::FabricPosition;
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind, NetworkConstraint, NetworkScope};
use suanli_engine::{Cid, GpuModel, JobSpec};
use suanli_proto::pb;
use suanli_scheduler::config::{AuthConfig, ServerConfig};
use suanli_scheduler::server::RunningServer;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};

use crate::client::{Client, unary};
use crate::commands::{self, emit, now_ms};
use crate::config::{Origin, Settings};
use crate::error::CliError;
use crate::output::{self, Format};
use crate::view::{EventView, JobView, NodeView};

const JOIN_TOKEN: &str = "demo-join-token";
const ADMIN_TOKEN: &str = "demo-admin-token";
const HGX_GPUS: &str = include_str!("../../../node-agent/fixtures/hgx-h100.json");
const HOST_GPUS: &str = include_str!("../../../node-agent/fixtures/h100-host.json");
/// The recorded sysfs trees (PCIe paths, RDMA NICs, NUMA), used when this binary runs from
/// its source tree; elsewhere a minimal host tree is written into the temporary directory.
const HGX_SYSFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../node-agent/fixtures/hgx-h100"
);
const HOST_SYSFS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../node-agent/fixtures/h100-host"
);

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

struct DemoNode {
    name: &'static str,
    gpus: &'static str,
    sysfs: &'static str,
    leaf: &'static str,
}

const NODES: [DemoNode; 3] = [
    DemoNode {
        name: "hgx-1",
        gpus: HGX_GPUS,
        sysfs: HGX_SYSFS,
        leaf: "leaf-1",
    },
    DemoNode {
        name: "hgx-2",
        gpus: HGX_GPUS,
        sysfs: HGX_SYSFS,
        leaf: "leaf-1",
    },
    DemoNode {
        name: "h100-1",
        gpus: HOST_GPUS,
        sysfs: HOST_SYSFS,
        leaf: "leaf-2",
    },
];

/// Two HGX nodes share one recording; each gets its own GPU UUIDs (the third group of the
/// UUID becomes the node number), as two real machines would have.
fn distinct_uuids(mut gpus: RawGpus, node_number: usize) -> RawGpus {
    let retag = |uuid: &mut String| {
        let mut parts: Vec<String> = uuid.split('-').map(str::to_string).collect();
        if parts.len() >= 4 {
            parts[3] = format!("{node_number:04x}");
            *uuid = parts.join("-");
        } else {
            uuid.push_str(&format!("-n{node_number}"));
        }
    };
    for gpu in &mut gpus.gpus {
        retag(&mut gpu.uuid);
        for device in &mut gpu.mig.devices {
            retag(&mut device.uuid);
        }
    }
    gpus
}

/// A host tree with only CPUs and memory, for runs away from the source tree.
fn minimal_sysfs(root: &Path) -> std::io::Result<()> {
    let cpu = root.join("sys/devices/system/cpu");
    std::fs::create_dir_all(&cpu)?;
    std::fs::write(cpu.join("online"), "0-127\n")?;
    std::fs::create_dir_all(root.join("proc"))?;
    std::fs::write(root.join("proc/meminfo"), "MemTotal:       1056964608 kB\n")
}

fn io_failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what}: {e}"))
}

struct RunningAgent {
    name: &'static str,
    data_dir: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Everything the demo started, stopped in reverse order by [`Cluster::stop`].
struct Cluster {
    dir: tempfile::TempDir,
    server: RunningServer,
    agents: Vec<RunningAgent>,
}

impl Cluster {
    async fn start(policy: &str) -> Result<Cluster, CliError> {
        let dir = tempfile::Builder::new()
            .prefix("suanli-demo-")
            .tempdir()
            .map_err(|e| io_failed("cannot create a temporary directory", e))?;
        let config = ServerConfig {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("scheduler"),
            policy: policy.to_string(),
            heartbeat_interval_ms: 500,
            telemetry_interval_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            durability: "normal".to_string(),
            auth: AuthConfig {
                join_tokens: vec![JOIN_TOKEN.to_string()],
                admin_tokens: vec![ADMIN_TOKEN.to_string()],
                tenants: BTreeMap::new(),
            },
            ..ServerConfig::default()
        };
        let server = suanli_scheduler::server::start(config)
            .await
            .map_err(|e| io_failed("cannot start the scheduler", e))?;
        let mut cluster = Cluster {
            dir,
            server,
            agents: Vec::new(),
        };
        if let Err(e) = cluster.start_agents() {
            cluster.stop().await;
            return Err(e);
        }
        Ok(cluster)
    }

    fn start_agents(&mut self) -> Result<(), CliError> {
        let fallback_sysfs = self.dir.path().join("sysfs");
        for (i, node) in NODES.iter().enumerate() {
            let recorded: RawGpus = serde_json::from_str(node.gpus)
                .map_err(|e| io_failed("the built-in GPU recording is unreadable", e))?;
            let recorded = if node.gpus == HGX_GPUS {
                distinct_uuids(recorded, i + 1)
            } else {
                recorded
            };
            let sysfs = if Path::new(node.sysfs).join("sys").is_dir() {
                PathBuf::from(node.sysfs)
            } else {
                if !fallback_sysfs.exists() {
                    minimal_sysfs(&fallback_sysfs)
                        .map_err(|e| io_failed("cannot write the demo host tree", e))?;
                }
                fallback_sysfs.clone()
            };
            let node_cid = Cid::node("demo", "local", "dc-a", node.name)
                .map_err(|e| io_failed("demo node identifier", e))?;
            let data_dir = self.dir.path().join("agents").join(node.name);
            let cfg = AgentConfig {
                scheduler: format!("http://{}", self.server.grpc_addr),
                token: JOIN_TOKEN.to_string(),
                node_cid,
                fabric: FabricPosition {
                    leaf: node.leaf.to_string(),
                    spine: "spine-1".to_string(),
                },
                data_dir: data_dir.clone(),
                fixture: None,
                sysfs_root: sysfs,
                seed: i as u64 + 1,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
                rediscover_every: Duration::from_secs(60),
                default_grace: Duration::from_secs(2),
                kube_api: None,
                kubelet_socket: None,
                gpu_resource: "nvidia.com/gpu".into(),
                pod_devices_every: Duration::from_secs(10),
            };
            let probe = Arc::new(FixtureProbe::new(recorded, i as u64 + 1));
            let agent = Agent::new(cfg, probe)
                .map_err(|e| io_failed(&format!("cannot start agent {}", node.name), e))?;
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(agent.run(async move {
                let _ = stopped.await;
            }));
            self.agents.push(RunningAgent {
                name: node.name,
                data_dir,
                stop,
                task,
            });
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        Settings {
            addr: format!("http://{}", self.server.grpc_addr),
            addr_origin: Origin::Default,
            token: Some(ADMIN_TOKEN.to_string()),
            token_origin: Some(Origin::Default),
        }
    }

    /// Stops the agents, then the scheduler, then removes the temporary directory.
    async fn stop(self) {
        for agent in self.agents {
            let _ = agent.stop.send(());
            let _ = timeout(Duration::from_secs(5), agent.task).await;
        }
        self.server.shutdown().await;
        // Dropping the directory would ignore failures; closing reports none we could act on
        // either, but it removes everything before we return.
        let _ = self.dir.close();
    }
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

/// What `suanli demo -o json` prints.
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
    let mut interrupt = crate::commands::listen_for_interrupt()?;
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

/// Standard output of the replica's latest attempt (`work/<job>.<replica>.<attempt>.out`).
fn last_output(agent_dir: &Path, job_id: &str, replica: u32) -> Option<String> {
    let prefix = format!("{job_id}.{replica}.");
    let latest = std::fs::read_dir(agent_dir.join("work"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let attempt: u32 = name
                .strip_prefix(&prefix)?
                .strip_suffix(".out")?
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
    fn recorded_machines_parse_and_get_distinct_uuids() {
        let hgx: RawGpus = serde_json::from_str(HGX_GPUS).expect("built-in recording parses");
        assert_eq!(hgx.gpus.len(), 8);
        let one = distinct_uuids(hgx.clone(), 1);
        let two = distinct_uuids(hgx, 2);
        for (a, b) in one.gpus.iter().zip(&two.gpus) {
            assert_ne!(a.uuid, b.uuid);
        }
        assert_eq!(one.gpus[0].uuid, "GPU-00000000-5a1c-0001-9d3f-000000000000");
        let host: RawGpus = serde_json::from_str(HOST_GPUS).expect("built-in recording parses");
        assert_eq!(host.gpus.len(), 1);
    }

    #[test]
    fn the_minimal_host_tree_yields_a_valid_inventory() {
        // What agents see when the binary runs away from its source tree.
        let dir = tempfile::tempdir().expect("tempdir");
        minimal_sysfs(dir.path()).expect("written");
        let recorded: RawGpus = serde_json::from_str(HOST_GPUS).expect("parses");
        let report = suanli_agent::discovery::discover(
            &FixtureProbe::new(recorded, 1),
            &suanli_agent::discovery::SysfsRoot(dir.path().to_path_buf()),
            Cid::node("demo", "local", "dc-a", "h100-1").expect("valid"),
            FabricPosition::default(),
        );
        report.inventory.validate().expect("valid inventory");
        assert_eq!(report.inventory.cpu_milli, 128_000);
        assert_eq!(report.inventory.gpus.len(), 1);
    }

    #[test]
    fn demo_jobs_are_valid() {
        for spec in demo_jobs(2) {
            spec.validate().expect("demo job is valid");
        }
    }
}
