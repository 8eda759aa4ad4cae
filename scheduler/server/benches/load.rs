//! Load benchmark against the real `suanli-scheduler` binary on loopback.
//!
//! 1,000 agents (8 × H100 each, real AgentService sessions with heartbeats) register; 50
//! concurrent clients submit 20,000 jobs (1% of them 4-replica training gangs); a watcher records when each job is placed. Then the
//! scheduler is stopped and started again on the same data directory, and the time to its
//! first placement is measured. Prints one summary table and one JSON line.
//!
//! `cargo bench -p suanli-scheduler --bench load` (sizes: SUANLI_LOAD_NODES, _JOBS, _CLIENTS).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use suanli_engine::JobSpec;
use suanli_engine::inventory::NodeInventory;
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::testing::H100Node;
use suanli_proto::pb;
use suanli_proto::pb::agent_service_client::AgentServiceClient;
use suanli_proto::pb::job_service_client::JobServiceClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Node `i`: 8 × H100 under leaf `i / 32` and spine `i / 512`, sized like an HGX host
/// (192 cores, 2 TiB, two NUMA nodes).
fn inventory(i: usize) -> NodeInventory {
    let node = format!("node-{i:05}");
    let mut inv = H100Node::new(&node, 8)
        .fabric(&format!("leaf-{}", i / 32), &format!("spine-{}", i / 512))
        .build();
    inv.cid = format!("cid:bench/r1/d1/{node}")
        .parse()
        .expect("valid cid");
    inv.cpu_milli = 192_000;
    inv.memory_mib = 2 * 1024 * 1024;
    inv.numa_nodes = 2;
    inv
}

/// A mixed workload: one in a hundred jobs is a training gang of 4 × 2 whole GPUs (through
/// the gang planner), one in ten takes a whole GPU, the rest share one.
fn job(i: usize) -> pb::JobSpec {
    if i % 100 == 50 {
        let mut spec = JobSpec::new(format!("load-{i}"), JobKind::Training);
        spec.replicas = 4;
        spec.resources.cpu_milli = 8000;
        spec.resources.memory_mib = 65_536;
        spec.gpu = Some(GpuRequest {
            policy: GpuPolicy::Exclusive { count: 2 },
            models: vec![],
        });
        spec.command = vec!["true".into()];
        return spec.into();
    }
    let mut spec = JobSpec::new(format!("load-{i}"), JobKind::Inference);
    spec.resources.cpu_milli = 1000;
    spec.resources.memory_mib = 4096;
    spec.gpu = Some(GpuRequest {
        policy: if i.is_multiple_of(10) {
            GpuPolicy::Exclusive { count: 1 }
        } else {
            GpuPolicy::Shared {
                milli: Some([100, 200, 250][i % 3]),
                memory_mib: Some(8192),
            }
        },
        models: vec![],
    });
    spec.command = vec!["true".into()];
    spec.into()
}

struct Scheduler {
    child: Child,
    grpc: String,
}

fn spawn_scheduler(data_dir: &std::path::Path) -> Scheduler {
    let mut child = Command::new(env!("CARGO_BIN_EXE_suanli-scheduler"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .env(
            "RUST_LOG",
            std::env::var("SUANLI_LOAD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the scheduler binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reads the listening line");
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .expect("listening line names the gRPC address")
        .to_string();
    Scheduler { child, grpc }
}

async fn connect(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

/// `nodes` agents registered and heartbeating, and the credential each node was issued.
struct Agents {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    credentials: Vec<String>,
}

/// Registers `nodes` agents and keeps them heartbeating: 50 per connection, the connections
/// side by side as separate machines would be. With `credentials` (from an earlier run) the
/// agents come back as the nodes they were.
async fn start_agents(addr: &str, nodes: usize, credentials: &[String]) -> Agents {
    // A JoinSet: when the caller gives up (the restart is measured), registrations stop too.
    let mut groups = tokio::task::JoinSet::new();
    for first in (0..nodes).step_by(AGENTS_PER_CONNECTION) {
        let channel = connect(addr).await;
        let range = first..nodes.min(first + AGENTS_PER_CONNECTION);
        let known: Vec<String> = range
            .clone()
            .map(|i| credentials.get(i).cloned().unwrap_or_default())
            .collect();
        groups.spawn(async move {
            let mut tasks = Vec::new();
            let mut issued = Vec::new();
            for (i, credential) in range.zip(known) {
                let (task, credential) = start_agent(channel.clone(), i, credential).await;
                tasks.push(task);
                issued.push(credential);
            }
            (first, tasks, issued)
        });
    }
    let mut done = groups.join_all().await;
    done.sort_by_key(|(first, _, _)| *first);
    let mut agents = Agents {
        tasks: Vec::new(),
        credentials: Vec::new(),
    };
    for (_, tasks, issued) in done {
        agents.tasks.extend(tasks);
        agents.credentials.extend(issued);
    }
    agents
}

const AGENTS_PER_CONNECTION: usize = 50;

/// Registers node `i`, opens its session and heartbeats on it; returns the task and the
/// node's credential.
async fn start_agent(
    channel: Channel,
    i: usize,
    credential: String,
) -> (tokio::task::JoinHandle<()>, String) {
    let mut client = AgentServiceClient::new(channel);
    let reg = client
        .register(pb::RegisterRequest {
            inventory: Some(inventory(i).into()),
            agent_version: "load".into(),
            node_credential: credential.clone(),
            advertise_addr: String::new(),
        })
        .await
        .expect("registers")
        .into_inner();
    let credential = if reg.node_credential.is_empty() {
        credential
    } else {
        reg.node_credential.clone()
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            node_cid: reg.node_cid.clone(),
            session_id: reg.session_id.clone(),
            running: vec![],
            unacknowledged_exits: vec![],
        })),
    })
    .await
    .expect("queued");
    let mut down = client
        .session(ReceiverStream::new(rx))
        .await
        .expect("session")
        .into_inner();
    let task = tokio::spawn(async move {
        let mut seq = 0;
        let mut beat = tokio::time::interval(Duration::from_millis(2000));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    seq += 1;
                    let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { seq, sent_unix_ms: 0 })) };
                    if tx.send(hb).await.is_err() { return; }
                }
                m = down.next() => if m.is_none() { return; },
            }
        }
    });
    (task, credential)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let nodes = env_or("SUANLI_LOAD_NODES", 1000);
    let jobs = env_or("SUANLI_LOAD_JOBS", 20_000);
    let clients = env_or("SUANLI_LOAD_CLIENTS", 50);
    let dir = tempfile::tempdir().expect("tempdir");
    let scheduler = spawn_scheduler(dir.path());
    let addr = scheduler.grpc.clone();

    let t = Instant::now();
    let agents = start_agents(&addr, nodes, &[]).await;
    let register_s = t.elapsed().as_secs_f64();

    // Placement times, keyed by job id, from the scheduler's own event stream.
    let placed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch_channel = connect(&addr).await;
    let mut events = JobServiceClient::new(watch_channel)
        .watch(pb::WatchJobsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let placed_writer = placed_at.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(e)) = events.next().await {
            if e.to_state == pb::JobState::Placed as i32 {
                placed_writer
                    .lock()
                    .expect("lock")
                    .insert(e.job_id, Instant::now());
            }
        }
    });

    let submitted_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut submitters = Vec::new();
    let t_submit = Instant::now();
    for c in 0..clients {
        let channel = connect(&addr).await;
        let submitted = submitted_at.clone();
        let per_client = jobs / clients;
        submitters.push(tokio::spawn(async move {
            let mut client = JobServiceClient::new(channel);
            for k in 0..per_client {
                let i = c * per_client + k;
                let sent = Instant::now();
                let resp = client
                    .submit(pb::SubmitJobRequest {
                        spec: Some(job(i)),
                        request_id: format!("load-{i}"),
                    })
                    .await
                    .expect("submit acknowledged");
                let id = resp.into_inner().job.expect("job").id;
                submitted.lock().expect("lock").insert(id, sent);
            }
        }));
    }
    for s in submitters {
        s.await.expect("client finished");
    }
    let submit_s = t_submit.elapsed().as_secs_f64();
    let total = submitted_at.lock().expect("lock").len();

    // Wait for placements to settle.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let placed = placed_at.lock().expect("lock").len();
        if placed >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut latencies: Vec<f64> = {
        let placed = placed_at.lock().expect("lock");
        let submitted = submitted_at.lock().expect("lock");
        submitted
            .iter()
            .filter_map(|(id, sent)| {
                placed
                    .get(id)
                    .map(|p| p.duration_since(*sent).as_secs_f64())
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    watcher.abort();
    for a in agents.tasks {
        a.abort();
    }

    // Restart on the same data directory: time from spawn to the first placement. The agents
    // reconnect as soon as it listens (nodes without a session get no work), as real agents
    // retrying their connection do.
    let mut scheduler = scheduler;
    stop(&mut scheduler.child);
    let restart_t = Instant::now();
    let restarted = spawn_scheduler(dir.path());
    let ready_s = restart_t.elapsed().as_secs_f64();
    let returning = {
        let addr = restarted.grpc.clone();
        let credentials = agents.credentials;
        tokio::spawn(async move { start_agents(&addr, nodes, &credentials).await })
    };
    let ch = connect(&restarted.grpc).await;
    let mut client = JobServiceClient::new(ch);
    let mut watch = client
        .watch(pb::WatchJobsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    client
        .submit(pb::SubmitJobRequest {
            spec: Some(job(1)),
            request_id: "after-restart".into(),
        })
        .await
        .expect("submit after restart");
    let first_placement_s = loop {
        match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
            Ok(Some(Ok(e))) if e.to_state == pb::JobState::Placed as i32 => {
                break restart_t.elapsed().as_secs_f64();
            }
            Ok(Some(Ok(_))) => continue,
            _ => break f64::NAN,
        }
    };
    returning.abort();
    let mut restarted = restarted;
    stop(&mut restarted.child);

    let submits_per_s = total as f64 / submit_s;
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    println!("suanli-scheduler load benchmark ({nodes} nodes × 8 GPUs, {clients} clients)");
    println!("  agents registered          {nodes} in {register_s:.2} s");
    println!(
        "  jobs submitted (durable)   {total} in {submit_s:.2} s = {submits_per_s:.0} submits/s"
    );
    println!("  jobs placed                {}", latencies.len());
    println!(
        "  submit→placed p50 / p99    {:.1} ms / {:.1} ms",
        p50 * 1e3,
        p99 * 1e3
    );
    println!("  restart: serving after     {ready_s:.2} s ({total} stored jobs)");
    println!("  restart: first placement   {first_placement_s:.2} s after spawn");
    println!(
        "{}",
        serde_json::json!({
            "nodes": nodes, "clients": clients, "jobs": total,
            "submits_per_s": submits_per_s, "placed": latencies.len(),
            "p50_submit_to_placed_ms": p50 * 1e3, "p99_submit_to_placed_ms": p99 * 1e3,
            "restart_ready_s": ready_s, "restart_first_placement_s": first_placement_s,
        })
    );
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
