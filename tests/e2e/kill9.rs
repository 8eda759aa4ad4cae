//! Exactly-once completion under `kill -9` of the scheduler: real scheduler and agent
//! processes on loopback, short 1-GPU jobs submitted and finishing while the scheduler is
//! killed at seeded random moments and restarted on the same data directory.
//!
//! Each job's command appends `<job id> <node> <gpus> <start ns>` to a ledger this test owns,
//! sleeps 0.3 s, appends `<job id> <end ns>` to a second file and exits 0. At the end every
//! acknowledged submission exists and `succeeded` after one attempt, the ledger holds exactly
//! one line per job (its command ran once), and no GPU ran two jobs at the same time, neither
//! by the ledgers' times nor in any node listing taken while jobs ran.
//!
//! The default (short) mode kills the scheduler 3 times over about 100 jobs;
//! `SUANLI_FAULT_LONG=1` kills it 30 times over 1,000 jobs. `SUANLI_FAULT_SEED` picks the
//! moments.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use suanli_proto::pb;
use suanli_proto::pb::cluster_service_client::ClusterServiceClient;
use suanli_proto::pb::job_service_client::JobServiceClient;
use suanli_tests::{
    ADMIN_TOKEN, RESEARCH_TOKEN, Scheduler, start_agent_logging_to, start_scheduler,
    write_scheduler_config,
};
use tonic::Request;
use tonic::transport::Channel;

const DEFAULT_SEED: u64 = 20_261_204;
/// Each node has 8 GPUs; two nodes keep 16 jobs running at once.
const NODES: [&str; 2] = ["k1", "k2"];
/// Long enough that no agent is declared lost while the scheduler restarts.
const HEARTBEAT_TIMEOUT_MS: u64 = 30_000;

struct Mode {
    kills: usize,
    jobs: usize,
    /// Between two submissions.
    submit_every: Duration,
    /// A kill comes this long (drawn uniformly) after the scheduler came back.
    kill_after_ms: (u64, u64),
    /// For every job to end after the last kill.
    settle: Duration,
}

const SHORT: Mode = Mode {
    kills: 3,
    jobs: 100,
    submit_every: Duration::from_millis(30),
    kill_after_ms: (700, 1400),
    settle: Duration::from_secs(60),
};

const LONG: Mode = Mode {
    kills: 30,
    jobs: 1000,
    submit_every: Duration::from_millis(25),
    kill_after_ms: (300, 1400),
    settle: Duration::from_secs(300),
};

/// SplitMix64: seeded moments without a dependency.
struct Moments(u64);

impl Moments {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn between(&mut self, (low, high): (u64, u64)) -> Duration {
        Duration::from_millis(low + self.next() % (high - low + 1))
    }
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req.set_timeout(Duration::from_secs(5));
    req
}

async fn connect(addr: &str) -> Option<Channel> {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .ok()
}

fn job_spec(i: usize, ledger: &Path, ends: &Path) -> pb::JobSpec {
    let script = format!(
        "echo \"$SUANLI_JOB_ID $SUANLI_NODE_CID $CUDA_VISIBLE_DEVICES $(date +%s%N)\" >> {ledger}; \
         sleep 0.3; echo \"$SUANLI_JOB_ID $(date +%s%N)\" >> {ends}",
        ledger = ledger.display(),
        ends = ends.display(),
    );
    pb::JobSpec {
        name: format!("once-{i:04}"),
        tenant: "research".into(),
        kind: pb::JobKind::Training.into(),
        replicas: 1,
        command: vec!["sh".into(), "-c".into(), script],
        gpu: Some(pb::GpuRequest {
            policy: Some(pb::gpu_request::Policy::Exclusive(pb::ExclusiveGpus {
                count: 1,
            })),
            ..Default::default()
        }),
        resources: Some(pb::Resources {
            cpu_milli: 100,
            memory_mib: 64,
        }),
        ..Default::default()
    }
}

/// Submits every job, each retried with its request id until the scheduler answers; returns
/// the ids the scheduler acknowledged, in submission order.
async fn submit_all(
    addr: String,
    mode: &'static Mode,
    seed: u64,
    ledger: PathBuf,
    ends: PathBuf,
) -> Vec<String> {
    let mut acknowledged = Vec::with_capacity(mode.jobs);
    let mut client: Option<JobServiceClient<Channel>> = None;
    for i in 0..mode.jobs {
        let spec = job_spec(i, &ledger, &ends);
        let request_id = format!("once-{seed}-{i}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "job {i}: never acknowledged");
            if client.is_none() {
                client = connect(&addr).await.map(JobServiceClient::new);
            }
            if let Some(c) = client.as_mut() {
                let req = pb::SubmitJobRequest {
                    spec: Some(spec.clone()),
                    request_id: request_id.clone(),
                };
                match c.submit(authed(RESEARCH_TOKEN, req)).await {
                    Ok(resp) => {
                        let job = resp.into_inner().job.expect("a job");
                        acknowledged.push(job.id);
                        break;
                    }
                    Err(status) => {
                        assert!(
                            matches!(
                                status.code(),
                                tonic::Code::Unavailable
                                    | tonic::Code::Unknown
                                    | tonic::Code::Cancelled
                                    | tonic::Code::DeadlineExceeded
                            ),
                            "job {i}: refused: {status:?}"
                        );
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(mode.submit_every).await;
    }
    acknowledged
}

/// Every job in `states`, all pages; `None` while the scheduler cannot answer.
async fn list_jobs(addr: &str, states: &[pb::JobState]) -> Option<Vec<pb::Job>> {
    let mut client = JobServiceClient::new(connect(addr).await?);
    let mut jobs = Vec::new();
    let mut token = String::new();
    loop {
        let req = pb::ListJobsRequest {
            states: states.iter().map(|s| *s as i32).collect(),
            page: Some(pb::PageRequest {
                page_size: 1000,
                page_token: token,
            }),
            ..Default::default()
        };
        let page = client
            .list(authed(ADMIN_TOKEN, req))
            .await
            .ok()?
            .into_inner();
        jobs.extend(page.jobs);
        token = page.page.map(|p| p.next_page_token).unwrap_or_default();
        if token.is_empty() {
            return Some(jobs);
        }
    }
}

/// (node, GPU) → job for every GPU the node listing shows held; a GPU held by two jobs is
/// returned as an error. `None` while the scheduler cannot answer.
async fn gpu_holders(addr: &str) -> Option<Result<usize, String>> {
    let mut client = ClusterServiceClient::new(connect(addr).await?);
    let nodes = client
        .list_nodes(authed(ADMIN_TOKEN, pb::ListNodesRequest::default()))
        .await
        .ok()?
        .into_inner();
    let mut held = 0;
    for node in &nodes.nodes {
        let cid = node
            .inventory
            .as_ref()
            .map(|i| i.cid.clone())
            .unwrap_or_default();
        for gpu in &node.gpus {
            if gpu.job_ids.len() > 1 {
                return Some(Err(format!(
                    "GPU {} on {cid} held by {:?} at once",
                    gpu.uuid, gpu.job_ids
                )));
            }
            held += gpu.job_ids.len();
        }
    }
    Some(Ok(held))
}

/// Polls the node listing while the test runs; counts the listings that showed held GPUs.
async fn watch_gpus(addr: String, stop: Arc<AtomicBool>, busy_listings: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        match gpu_holders(&addr).await {
            Some(Ok(held)) if held > 0 => {
                busy_listings.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(double)) => panic!("{double}"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_ready(addr: &str, rt: &tokio::runtime::Runtime) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let connected = rt.block_on(async {
            let mut client = ClusterServiceClient::new(connect(addr).await?);
            let nodes = client
                .list_nodes(authed(ADMIN_TOKEN, pb::ListNodesRequest::default()))
                .await
                .ok()?
                .into_inner();
            Some(
                nodes
                    .nodes
                    .iter()
                    .filter(|n| n.condition() == pb::NodeCondition::Ready)
                    .count(),
            )
        });
        if connected == Some(NODES.len()) {
            return;
        }
        assert!(Instant::now() < deadline, "agents never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines of a file the jobs append to, split on whitespace.
fn rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn every_job_runs_exactly_once_through_scheduler_kills() {
    let long = std::env::var("SUANLI_FAULT_LONG").is_ok_and(|v| v == "1");
    let mode: &'static Mode = if long { &LONG } else { &SHORT };
    let seed = std::env::var("SUANLI_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!(
        "kill9: seed {seed}, {} kills, {} jobs{}",
        mode.kills,
        mode.jobs,
        if long { " (long)" } else { "" }
    );
    let mut moments = Moments(seed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), HEARTBEAT_TIMEOUT_MS);
    let data = dir.path().join("scheduler-data");
    let ledger = dir.path().join("ledger.txt");
    let ends = dir.path().join("ends.txt");
    let mut scheduler: Scheduler = start_scheduler(&config, &data, None);
    let addr = scheduler.grpc.clone();
    let _agents: Vec<_> = NODES
        .iter()
        .map(|node| {
            let agent_dir = dir.path().join(format!("agent-{node}"));
            let log = std::fs::File::create(dir.path().join(format!("agent-{node}.log")))
                .map(Stdio::from)
                .expect("agent log");
            start_agent_logging_to(&addr, node, "hgx-h100.json", &agent_dir, log)
        })
        .collect();
    wait_ready(&addr, &rt);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let busy_listings = Arc::new(AtomicU64::new(0));
    let watcher = rt.spawn(watch_gpus(
        addr.clone(),
        Arc::clone(&stop),
        Arc::clone(&busy_listings),
    ));
    let submitter = rt.spawn(submit_all(
        addr.clone(),
        mode,
        seed,
        ledger.clone(),
        ends.clone(),
    ));

    let mut kill_log = Vec::new();
    for k in 0..mode.kills {
        std::thread::sleep(moments.between(mode.kill_after_ms));
        let finished_lines = rows(&ends).len();
        scheduler.proc.kill9();
        kill_log.push((k, started.elapsed(), finished_lines));
        scheduler = start_scheduler(&config, &data, Some(&addr));
    }
    let acknowledged = rt
        .block_on(submitter)
        .expect("the submitter finished without panicking");
    eprintln!(
        "kill9: {} kills done, {} jobs acknowledged after {:.1} s",
        mode.kills,
        acknowledged.len(),
        started.elapsed().as_secs_f64()
    );

    // Every acknowledged job ends; none may fail or be cancelled.
    let deadline = Instant::now() + mode.settle;
    let ended = loop {
        let all = rt.block_on(list_jobs(&addr, &[]));
        if let Some(all) = all {
            let by_id: HashMap<String, pb::Job> =
                all.into_iter().map(|j| (j.id.clone(), j)).collect();
            let live = acknowledged
                .iter()
                .filter(|id| {
                    by_id.get(*id).is_none_or(|j| {
                        !matches!(
                            j.state(),
                            pb::JobState::Succeeded
                                | pb::JobState::Failed
                                | pb::JobState::Cancelled
                        )
                    })
                })
                .count();
            if live == 0 {
                break by_id;
            }
            assert!(
                Instant::now() < deadline,
                "{live} jobs never ended (agent logs in {})",
                dir.path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(watcher).expect("no GPU was held twice");

    // Every acknowledged job exists, succeeded, on its first attempt.
    let unique: BTreeSet<&String> = acknowledged.iter().collect();
    assert_eq!(unique.len(), mode.jobs, "one job per submission");
    let mut reruns = 0u64;
    for id in &acknowledged {
        let job = ended.get(id).unwrap_or_else(|| panic!("job {id} is gone"));
        assert_eq!(
            job.state(),
            pb::JobState::Succeeded,
            "job {id}: {}",
            job.last_reason
        );
        reruns += u64::from(job.attempts.saturating_sub(1));
    }

    // The ledger: each job's command ran exactly once, and only acknowledged jobs ran.
    let mut runs: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for row in rows(&ledger) {
        runs.entry(row[0].clone()).or_default().push(row);
    }
    let extra_runs: u64 = runs.values().map(|r| r.len() as u64 - 1).sum();
    let twice: Vec<&String> = runs
        .iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "commands that ran more than once: {twice:?}"
    );
    let ran: BTreeSet<&String> = runs.keys().collect();
    assert_eq!(ran, unique, "exactly the acknowledged jobs ran");

    // No GPU ran two jobs at once, by the times the jobs themselves wrote.
    let end_of: HashMap<String, u128> = rows(&ends)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("end ns")))
        .collect();
    // (node, GPU) → (start ns, end ns, job) of every run on it.
    type Spans = Vec<(u128, u128, String)>;
    let mut by_gpu: BTreeMap<(String, String), Spans> = BTreeMap::new();
    for (id, rows) in &runs {
        let row = &rows[0];
        assert_eq!(
            row.len(),
            4,
            "a ledger line is id, node, gpu, start: {row:?}"
        );
        let start: u128 = row[3].parse().expect("start ns");
        let end = *end_of
            .get(id)
            .unwrap_or_else(|| panic!("job {id} never finished"));
        by_gpu
            .entry((row[1].clone(), row[2].clone()))
            .or_default()
            .push((start, end, id.clone()));
    }
    for ((node, gpu), spans) in &mut by_gpu {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "GPU {gpu} on {node} ran {} and {} at once",
                pair[0].2,
                pair[1].2
            );
        }
    }

    let listings = busy_listings.load(Ordering::Relaxed);
    eprintln!(
        "kill9: {} kills, {} jobs, {} succeeded, reruns {} (attempts) + {} (ledger), \
         {} GPUs used, {listings} busy node listings without a double hold, wall {:.1} s",
        mode.kills,
        mode.jobs,
        acknowledged.len(),
        reruns,
        extra_runs,
        by_gpu.len(),
        wall.as_secs_f64()
    );
    for (k, at, finished) in &kill_log {
        eprintln!(
            "kill9:   kill {k} at {:.2} s, {finished} jobs finished",
            at.as_secs_f64()
        );
    }
    assert_eq!(reruns, 0, "no job was placed twice");
    assert!(listings > 0, "the node listing saw jobs running");
}
