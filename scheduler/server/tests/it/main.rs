//! The daemon in-process on 127.0.0.1 with free ports, driven by real gRPC clients that play
//! users and agents.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use suanli_engine::JobSpec;
use suanli_engine::inventory::{NodeInventory, PortState};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::testing::H100Node;
use suanli_proto::pb;
use suanli_proto::pb::agent_service_client::AgentServiceClient;
use suanli_proto::pb::cluster_service_client::ClusterServiceClient;
use suanli_proto::pb::job_service_client::JobServiceClient;
use suanli_scheduler::config::{AuthConfig, QuotaGpus, ServerConfig};
use suanli_scheduler::server::{RunningServer, start};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

mod differential;
mod extender;
mod hostile;
mod http_limits;
mod kube_api;
mod logs;
mod update;

const JOIN: &str = "join-token-1";
const ADMIN: &str = "admin-token-1";
const RESEARCH: &str = "research-token";
const PROD: &str = "prod-token-1";

fn config(dir: &Path, heartbeat_timeout_ms: u64) -> ServerConfig {
    ServerConfig {
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        policy: "fgd".into(),
        heartbeat_timeout_ms,
        heartbeat_interval_ms: 100,
        durability: "normal".into(),
        auth: AuthConfig {
            join_tokens: vec![JOIN.into()],
            admin_tokens: vec![ADMIN.into()],
            tenants: BTreeMap::from([
                ("research".to_string(), vec![RESEARCH.to_string()]),
                ("prod".to_string(), vec![PROD.to_string()]),
            ]),
        },
        ..ServerConfig::default()
    }
}

/// The test node `node`: `gpus` H100s under leaf-1/spine-1.
fn inventory(node: &str, gpus: u32) -> NodeInventory {
    H100Node::new(node, gpus)
        .fabric("leaf-1", "spine-1")
        .build()
}

fn job(name: &str, tenant: &str, gpus: u32) -> pb::JobSpec {
    let mut spec = JobSpec::new(name, JobKind::Training);
    spec.tenant = tenant.into();
    spec.gpu = Some(GpuRequest {
        policy: GpuPolicy::Exclusive { count: gpus },
        models: vec![],
    });
    spec.resources.cpu_milli = 1000;
    spec.resources.memory_mib = 1024;
    spec.command = vec!["python".into(), "train.py".into()];
    spec.into()
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    req
}

async fn channel(server: &RunningServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connects")
}

/// A scheduler on 127.0.0.1 with free ports, over a data directory that lives as long as the
/// fixture, so that [`TestServer::restart`] finds the same database. Derefs to the running
/// server for its addresses.
struct TestServer {
    dir: tempfile::TempDir,
    /// What the scheduler was started with; a restart uses it again.
    settings: ServerConfig,
    server: RunningServer,
    ch: Channel,
}

impl TestServer {
    /// With [`config`]'s settings: a 60 s heartbeat timeout, so agents need not heartbeat.
    async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// [`TestServer::start`], with `tweak` applied to the settings.
    async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = config(dir.path(), 60_000);
        tweak(&mut settings);
        TestServer::boot(dir, settings).await
    }

    async fn boot(dir: tempfile::TempDir, settings: ServerConfig) -> TestServer {
        let server = start(settings.clone()).await.expect("starts");
        let ch = channel(&server).await;
        TestServer {
            dir,
            settings,
            server,
            ch,
        }
    }

    /// A channel to the gRPC API; clones share one connection.
    fn channel(&self) -> Channel {
        self.ch.clone()
    }

    fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel())
    }

    fn cluster(&self) -> ClusterServiceClient<Channel> {
        ClusterServiceClient::new(self.channel())
    }

    fn agents(&self) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel())
    }

    /// Stops the scheduler and starts it again on the same database and settings.
    async fn restart(self) -> TestServer {
        self.restart_after(|_| {}).await
    }

    /// [`TestServer::restart`], running `between` on the data directory while the scheduler
    /// is down.
    async fn restart_after(self, between: impl FnOnce(&Path)) -> TestServer {
        self.server.shutdown().await;
        between(self.dir.path());
        TestServer::boot(self.dir, self.settings).await
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

impl std::ops::Deref for TestServer {
    type Target = RunningServer;

    fn deref(&self) -> &RunningServer {
        &self.server
    }
}

/// A fake agent speaking the real protocol: registers, holds a session, reports work.
struct Agent {
    cid: String,
    /// The node credential the scheduler issued at registration, as a real agent keeps it.
    credential: String,
    up: mpsc::Sender<pb::AgentMessage>,
    down: tonic::Streaming<pb::SchedulerMessage>,
}

impl Agent {
    /// The first agent of a node: registers with the join token alone.
    async fn connect(ch: Channel, inv: NodeInventory, running: Vec<pb::RunningWork>) -> Agent {
        Agent::connect_with(ch, inv, running, "").await
    }

    /// An agent that comes back to a node it registered before, with its credential.
    async fn connect_with(
        ch: Channel,
        inv: NodeInventory,
        running: Vec<pb::RunningWork>,
        credential: &str,
    ) -> Agent {
        let mut client = AgentServiceClient::new(ch);
        let reg = client
            .register(authed(
                JOIN,
                pb::RegisterRequest {
                    inventory: Some(inv.into()),
                    agent_version: "test".into(),
                    node_credential: credential.into(),
                    advertise_addr: String::new(),
                },
            ))
            .await
            .expect("registers")
            .into_inner();
        let credential = if reg.node_credential.is_empty() {
            credential.to_string()
        } else {
            reg.node_credential.clone()
        };
        let (up, rx) = mpsc::channel(64);
        up.send(msg(pb::agent_message::Msg::Hello(pb::Hello {
            node_cid: reg.node_cid.clone(),
            session_id: reg.session_id.clone(),
            running,
            unacknowledged_exits: vec![],
        })))
        .await
        .expect("queued");
        let down = client
            .session(authed(JOIN, ReceiverStream::new(rx)))
            .await
            .expect("session opens")
            .into_inner();
        Agent {
            cid: reg.node_cid,
            credential,
            up,
            down,
        }
    }

    async fn next_assignment(&mut self) -> pb::Assignment {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.down.next())
                .await
                .expect("a message within 10 s")
                .expect("stream open")
                .expect("ok message");
            if let Some(pb::scheduler_message::Msg::Assign(a)) = m.msg {
                return a;
            }
        }
    }

    async fn next_cancel(&mut self) -> pb::Cancel {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.down.next())
                .await
                .expect("a message within 10 s")
                .expect("stream open")
                .expect("ok message");
            if let Some(pb::scheduler_message::Msg::Cancel(c)) = m.msg {
                return c;
            }
        }
    }

    async fn send(&self, m: pb::agent_message::Msg) {
        self.up.send(msg(m)).await.expect("session open");
    }

    async fn heartbeat(&self, seq: u64) {
        self.send(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
            seq,
            sent_unix_ms: 0,
        }))
        .await;
    }

    /// Keeps heartbeating in the background until the returned sender is dropped.
    fn keep_alive(&self) -> tokio::task::JoinHandle<()> {
        let up = self.up.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                seq += 1;
                let hb = msg(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
                    seq,
                    sent_unix_ms: 0,
                }));
                if up.send(hb).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

fn msg(m: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

/// Submits a job and returns it as stored.
async fn submit(
    jobs: &mut JobServiceClient<Channel>,
    token: &str,
    spec: pb::JobSpec,
    request_id: impl Into<String>,
) -> pb::Job {
    jobs.submit(authed(
        token,
        pb::SubmitJobRequest {
            spec: Some(spec),
            request_id: request_id.into(),
        },
    ))
    .await
    .expect("submits")
    .into_inner()
    .job
    .expect("job")
}

async fn get_job(jobs: &mut JobServiceClient<Channel>, id: &str) -> pb::Job {
    jobs.get(authed(ADMIN, pb::GetJobRequest { id: id.into() }))
        .await
        .expect("get")
        .into_inner()
}

/// Explains a research job until `done` holds (or 5 s pass); returns the last answer.
async fn explain_until(
    jobs: &mut JobServiceClient<Channel>,
    id: &str,
    done: impl Fn(&pb::ExplainJobResponse) -> bool,
) -> pb::ExplainJobResponse {
    let mut why = pb::ExplainJobResponse::default();
    for _ in 0..100 {
        why = jobs
            .explain(authed(ADMIN, pb::ExplainJobRequest { id: id.into() }))
            .await
            .expect("explains")
            .into_inner();
        if done(&why) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    why
}

/// Waits until a scheduling pass has tried job `id` and recorded why it waits (never a fixed
/// sleep: "still pending after N ms" proves nothing), and returns that reason.
async fn recorded_wait(jobs: &mut JobServiceClient<Channel>, id: &str) -> String {
    let why = explain_until(jobs, id, |w| {
        pending_of(w).is_some()
            && !w.summary.is_empty()
            && w.summary != "waiting for its first scheduling pass"
    })
    .await;
    assert!(pending_of(&why).is_some(), "{id} is pending: {why:?}");
    assert_ne!(
        why.summary, "waiting for its first scheduling pass",
        "a pass tried {id}"
    );
    why.summary
}

/// The pending explanation of an Explain answer, if it has one.
fn pending_of(why: &pb::ExplainJobResponse) -> Option<&pb::PendingExplanation> {
    match &why.explanation {
        Some(pb::explain_job_response::Explanation::Pending(p)) => Some(p),
        _ => None,
    }
}

async fn wait_state(jobs: &mut JobServiceClient<Channel>, id: &str, want: pb::JobState) -> pb::Job {
    for _ in 0..200 {
        let j = get_job(jobs, id).await;
        if j.state == want as i32 {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never reached {want:?}");
}

#[tokio::test]
async fn a_job_runs_on_an_agent_and_succeeds() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 2), vec![]).await;
    agent.heartbeat(1).await;
    let mut jobs = server.jobs();

    let submitted = submit(
        &mut jobs,
        RESEARCH,
        job("train", "research", 1),
        String::new(),
    )
    .await;
    assert_eq!(submitted.state, pb::JobState::Pending as i32);

    let a = agent.next_assignment().await;
    assert_eq!(a.job_id, submitted.id);
    assert_eq!(a.command, ["python", "train.py"]);
    assert_eq!(a.gpu_uuids.len(), 1);
    assert!(a.gpu_uuids[0].starts_with("GPU-n1-"));
    assert_eq!(a.attempt, 1);

    agent.report_started(&a).await;
    let running = wait_state(&mut jobs, &submitted.id, pb::JobState::Running).await;
    let placement = running.placement.expect("placement");
    assert_eq!(placement.replicas[0].node_cid, agent.cid);
    assert!(
        placement.replicas[0].gpus[0]
            .device_cid
            .starts_with(&agent.cid)
    );

    agent
        .send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: a.job_id.clone(),
            replica: 0,
            exit_code: 0,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 0,
            attempt: 1,
        }))
        .await;
    let done = wait_state(&mut jobs, &submitted.id, pb::JobState::Succeeded).await;
    assert!(done.finished_unix_ms > 0);

    // The whole history is replayable from the event log.
    let mut events = jobs
        .watch(authed(
            RESEARCH,
            pb::WatchJobsRequest {
                job_id: submitted.id.clone(),
                from_seq: Some(1),
                tenant: String::new(),
                replay_only: false,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut states = Vec::new();
    while states.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event")
            .expect("open")
            .expect("ok");
        states.push(pb::JobState::try_from(e.to_state).expect("known"));
    }
    assert_eq!(
        states,
        [
            pb::JobState::Pending,
            pb::JobState::Placed,
            pb::JobState::Running,
            pb::JobState::Succeeded
        ]
    );

    // In replay-only mode the stream ends after the stored history.
    let history: Vec<pb::JobEvent> = jobs
        .watch(authed(
            RESEARCH,
            pb::WatchJobsRequest {
                job_id: submitted.id.clone(),
                from_seq: None,
                tenant: String::new(),
                replay_only: true,
            },
        ))
        .await
        .expect("watch")
        .into_inner()
        .map(|e| e.expect("ok event"))
        .collect()
        .await;
    assert_eq!(history.len(), 4);
    assert_eq!(history[3].to_state, pb::JobState::Succeeded as i32);

    // Live telemetry is kept per node for `suanli top`.
    agent
        .send(pb::agent_message::Msg::Telemetry(pb::Telemetry {
            node_cid: agent.cid.clone(),
            sampled_unix_ms: 1,
            gpus: vec![pb::GpuTelemetry {
                uuid: "GPU-n1-0".into(),
                utilization_percent: 87,
                ..Default::default()
            }],
            nic_ports: vec![],
        }))
        .await;
    let mut cluster = server.cluster();
    let mut seen = None;
    for _ in 0..100 {
        let t = cluster
            .telemetry(authed(
                RESEARCH,
                pb::TelemetryRequest {
                    prefix: "cid:acme".into(),
                },
            ))
            .await
            .expect("telemetry")
            .into_inner();
        if let Some(n) = t.nodes.into_iter().next() {
            seen = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let node = seen.expect("telemetry arrives");
    assert_eq!(node.node_cid, agent.cid);
    assert_eq!(
        node.telemetry.expect("sample").gpus[0].utilization_percent,
        87
    );
    server.shutdown().await;
}

#[tokio::test]
async fn tenants_see_and_cancel_only_their_own_jobs() {
    let server = TestServer::start().await;
    let mut jobs = server.jobs();
    let id = submit(
        &mut jobs,
        RESEARCH,
        job("mine", "research", 1),
        String::new(),
    )
    .await
    .id;
    let err = jobs
        .get(authed(PROD, pb::GetJobRequest { id: id.clone() }))
        .await
        .expect_err("hidden");
    assert_eq!(err.code(), Code::NotFound);
    let err = jobs
        .cancel(authed(
            PROD,
            pb::CancelJobRequest {
                id: id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .expect_err("hidden");
    assert_eq!(err.code(), Code::NotFound);
    let listed = jobs
        .list(authed(PROD, pb::ListJobsRequest::default()))
        .await
        .expect("lists")
        .into_inner();
    assert!(listed.jobs.is_empty());
    let err = jobs
        .submit(authed(
            PROD,
            pb::SubmitJobRequest {
                spec: Some(job("sneaky", "research", 1)),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("cannot submit for another tenant");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = jobs
        .get(authed(
            "wrong-token-x",
            pb::GetJobRequest { id: id.clone() },
        ))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "unknown token");

    let cancelled = jobs
        .cancel(authed(
            RESEARCH,
            pb::CancelJobRequest {
                id: id.clone(),
                reason: "changed my mind".into(),
            },
        ))
        .await
        .expect("own job")
        .into_inner();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);
    assert_eq!(
        cancelled.last_reason,
        "cancelled by tenant research: changed my mind"
    );
    let err = jobs
        .cancel(authed(
            RESEARCH,
            pb::CancelJobRequest {
                id,
                reason: String::new(),
            },
        ))
        .await
        .expect_err("already finished");
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let server = TestServer::start().await;
    let mut jobs = server.jobs();
    let mut spec = job("x", "research", 1);
    spec.replicas = 0;
    let err = jobs
        .submit(authed(
            RESEARCH,
            pb::SubmitJobRequest {
                spec: Some(spec),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "spec.replicas: must be between 1 and 100000, got 0"
    );
    let err = jobs
        .submit(authed(RESEARCH, pb::SubmitJobRequest::default()))
        .await
        .expect_err("invalid");
    assert_eq!(err.message(), "spec: is required");
    let err = jobs
        .get(authed(
            RESEARCH,
            pb::GetJobRequest {
                id: "../etc".into(),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut agents = server.agents();
    let mut bad = inventory("n1", 2);
    bad.gpus[1].uuid = bad.gpus[0].uuid.clone();
    let err = agents
        .register(authed(
            JOIN,
            pb::RegisterRequest {
                inventory: Some(bad.into()),
                ..Default::default()
            },
        ))
        .await
        .expect_err("duplicate UUIDs");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "inventory.gpus[1].uuid: duplicate GPU UUID \"GPU-n1-0\" (first at gpus[0])"
    );
    let err = agents
        .register(authed(
            RESEARCH,
            pb::RegisterRequest {
                inventory: Some(inventory("n1", 1).into()),
                ..Default::default()
            },
        ))
        .await
        .expect_err("tenant tokens cannot register agents");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut cluster = server.cluster();
    let err = cluster
        .cordon(authed(
            RESEARCH,
            pb::CordonRequest {
                cid: "cid:acme/cn-east-1/dc-a/n1".into(),
                reason: String::new(),
            },
        ))
        .await
        .expect_err("admins only");
    assert_eq!(err.code(), Code::PermissionDenied);
    server.shutdown().await;
}

#[tokio::test]
async fn a_lost_agent_sends_its_jobs_elsewhere() {
    let server = TestServer::start_with(|c| c.heartbeat_timeout_ms = 700).await;
    let ch = server.channel();
    let mut a = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    let a_alive = a.keep_alive();
    let mut jobs = server.jobs();
    let id = submit(
        &mut jobs,
        RESEARCH,
        job("moves", "research", 1),
        String::new(),
    )
    .await
    .id;
    let first = a.next_assignment().await;
    assert_eq!(first.job_id, id);
    // Node n2 joins; then n1 goes silent.
    let mut b = Agent::connect(ch.clone(), inventory("n2", 1), vec![]).await;
    let _b_alive = b.keep_alive();
    a_alive.abort();
    let second = b.next_assignment().await;
    assert_eq!(second.job_id, id);
    assert_eq!(second.attempt, 2);
    assert_eq!(second.gpu_uuids, ["GPU-n2-0"]);
    let j = wait_state(&mut jobs, &id, pb::JobState::Placed).await;
    assert_eq!(j.attempts, 2);
    let mut cluster = server.cluster();
    let nodes = cluster
        .list_nodes(authed(ADMIN, pb::ListNodesRequest::default()))
        .await
        .expect("lists")
        .into_inner();
    let n1 = nodes
        .nodes
        .iter()
        .find(|n| n.inventory.as_ref().is_some_and(|i| i.cid.ends_with("/n1")))
        .expect("n1 listed");
    assert_eq!(n1.condition, pb::NodeCondition::NotReady as i32);
    drop(a);
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_keeps_jobs_and_never_double_allocates() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    agent.heartbeat(1).await;
    let mut jobs = server.jobs();
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        ids.push(
            submit(
                &mut jobs,
                RESEARCH,
                job(name, "research", 1),
                format!("req-{name}"),
            )
            .await
            .id,
        );
    }
    let a = agent.next_assignment().await;
    assert_eq!(a.job_id, ids[0]);
    agent.report_started(&a).await;
    wait_state(&mut jobs, &ids[0], pb::JobState::Running).await;
    let credential = agent.credential.clone();
    let server = server.restart().await;
    drop(agent);
    let ch = server.channel();
    let mut jobs = server.jobs();
    // A retried submit with the same request id is the same job.
    let again = submit(
        &mut jobs,
        RESEARCH,
        job("second", "research", 1),
        "req-second",
    )
    .await;
    assert_eq!(again.id, ids[1]);
    // The agent returns, still running the first job: the only GPU stays with it.
    let mut agent = Agent::connect_with(
        ch.clone(),
        inventory("n1", 1),
        vec![pb::RunningWork {
            job_id: ids[0].clone(),
            replica: 0,
            pid: 7,
            gpu_uuids: vec!["GPU-n1-0".into()],
            started_unix_ms: 0,
            attempt: 1,
        }],
        &credential,
    )
    .await;
    agent.heartbeat(1).await;
    let explain = jobs
        .explain(authed(
            RESEARCH,
            pb::ExplainJobRequest { id: ids[1].clone() },
        ))
        .await
        .expect("explains")
        .into_inner();
    assert_eq!(explain.state, pb::JobState::Pending as i32);
    let first = wait_state(&mut jobs, &ids[0], pb::JobState::Running).await;
    assert_eq!(first.attempts, 1);
    // Finishing the first job frees the GPU for the second, never before.
    agent
        .send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: ids[0].clone(),
            replica: 0,
            exit_code: 0,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 0,
            attempt: 1,
        }))
        .await;
    let next = agent.next_assignment().await;
    assert_eq!(next.job_id, ids[1]);
    wait_state(&mut jobs, &ids[0], pb::JobState::Succeeded).await;

    // Cancelling a placed job tells its agent to stop it.
    jobs.cancel(authed(
        RESEARCH,
        pb::CancelJobRequest {
            id: ids[1].clone(),
            reason: String::new(),
        },
    ))
    .await
    .expect("cancels");
    let cancel = agent.next_cancel().await;
    assert_eq!(cancel.job_id, ids[1]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_start_report_lost_in_a_restart_is_taken_from_the_agent() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    agent.heartbeat(1).await;
    let mut jobs = server.jobs();
    let id = submit(
        &mut jobs,
        RESEARCH,
        job("quiet", "research", 1),
        String::new(),
    )
    .await
    .id;
    // The agent starts the work, but the scheduler goes down before hearing about it.
    let a = agent.next_assignment().await;
    let credential = agent.credential.clone();
    let server = server.restart().await;
    drop(agent);
    let ch = server.channel();
    let mut jobs = server.jobs();
    let agent = Agent::connect_with(
        ch,
        inventory("n1", 1),
        vec![pb::RunningWork {
            job_id: a.job_id.clone(),
            replica: 0,
            pid: 9,
            gpu_uuids: a.gpu_uuids.clone(),
            started_unix_ms: 0,
            attempt: a.attempt,
        }],
        &credential,
    )
    .await;
    agent.heartbeat(1).await;
    let running = wait_state(&mut jobs, &id, pb::JobState::Running).await;
    assert_eq!(running.attempts, 1);
    server.shutdown().await;
}

fn inventory_at(node: &str, gpus: u32, leaf: &str, spine: &str) -> NodeInventory {
    H100Node::new(node, gpus).fabric(leaf, spine).build()
}

fn placed_nodes(job: &pb::Job) -> Vec<String> {
    let mut nodes: Vec<String> = job
        .placement
        .as_ref()
        .expect("placed")
        .replicas
        .iter()
        .map(|r| {
            r.node_cid
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    nodes.sort();
    nodes
}

/// A gang goes to the one leaf that holds it whole, inference replicas spread over nodes,
/// and a tenant at its quota waits with that reason while another tenant's job runs.
#[tokio::test]
async fn gangs_stay_on_a_leaf_replicas_spread_and_quota_holds() {
    let server = TestServer::start_with(|cfg| {
        cfg.quotas = BTreeMap::from([(
            "research".to_string(),
            BTreeMap::from([(
                "H100".to_string(),
                QuotaGpus {
                    guaranteed: 4,
                    max: Some(8),
                },
            )]),
        )]);
    })
    .await;
    let ch = server.channel();
    // Two lone 4-GPU nodes on their own leaves (first by name), and two on one leaf.
    let mut agents = Vec::new();
    for (node, leaf, spine) in [
        ("n1", "leaf-1", "spine-1"),
        ("n2", "leaf-2", "spine-2"),
        ("n3", "leaf-3", "spine-3"),
        ("n4", "leaf-3", "spine-3"),
    ] {
        agents.push(Agent::connect(ch.clone(), inventory_at(node, 4, leaf, spine), vec![]).await);
    }
    let mut jobs = server.jobs();

    let mut gang: JobSpec = job("gang", "research", 4).try_into().expect("valid");
    gang.replicas = 2;
    let gang = submit(&mut jobs, RESEARCH, gang.into(), "g").await;
    let gang = wait_state(&mut jobs, &gang.id, pb::JobState::Placed).await;
    assert_eq!(
        placed_nodes(&gang),
        ["n3", "n4"],
        "the only leaf with room for both"
    );
    let why = jobs
        .explain(authed(
            RESEARCH,
            pb::ExplainJobRequest {
                id: gang.id.clone(),
            },
        ))
        .await
        .expect("explains")
        .into_inner();
    let Some(pb::explain_job_response::Explanation::Placed(placed)) = why.explanation else {
        panic!("a placed job explains its placement: {why:?}");
    };
    let placement = placed.placement.expect("placement");
    assert_eq!(placement.policy, "gang");
    assert!(placement.replicas.iter().all(|r| r.score.is_empty()));
    let hop = placement
        .score
        .iter()
        .find(|s| s.name == "worst_hop")
        .expect("gang score names the worst hop");
    assert!(
        hop.detail
            .starts_with("worst hop between two replicas: same leaf"),
        "{hop:?}"
    );

    // research now holds 8 H100, its maximum: one more GPU waits, with that reason.
    let over = submit(&mut jobs, RESEARCH, job("over", "research", 1), "o").await;
    let why = explain_until(&mut jobs, &over.id, |w| {
        pending_of(w).is_some_and(|p| !p.queue_reason.is_empty())
    })
    .await;
    let reason = pending_of(&why).map_or("", |p| p.queue_reason.as_str());
    assert_eq!(reason, "tenant research at quota 8/8 H100 (needs 1 more)");
    assert_eq!(why.summary, reason);

    // prod has no quota: its two inference replicas run, one per node.
    let mut serve: JobSpec = job("serve", "prod", 1).try_into().expect("valid");
    serve.kind = JobKind::Inference;
    serve.replicas = 2;
    let serve = submit(&mut jobs, PROD, serve.into(), "s").await;
    let serve = wait_state(&mut jobs, &serve.id, pb::JobState::Placed).await;
    assert_eq!(placed_nodes(&serve), ["n1", "n2"], "spread over two nodes");
    let over = get_job(&mut jobs, &over.id).await;
    assert_eq!(over.state, pb::JobState::Pending as i32);
    drop(agents);
    server.shutdown().await;
}

async fn history(jobs: &mut JobServiceClient<Channel>, id: &str) -> Vec<pb::JobEvent> {
    jobs.watch(authed(
        ADMIN,
        pb::WatchJobsRequest {
            job_id: id.into(),
            from_seq: None,
            tenant: String::new(),
            replay_only: true,
        },
    ))
    .await
    .expect("watch")
    .into_inner()
    .collect::<Result<Vec<_>, _>>()
    .await
    .expect("history")
}

/// A higher-priority job stops a lower-priority one, which goes back to the queue and runs
/// again when room returns; a non-preemptible job is never stopped.
#[tokio::test]
async fn higher_priority_preempts_and_the_victim_runs_again() {
    let server = TestServer::start_with(|cfg| cfg.preemption.min_runtime_s = 0).await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 4), vec![]).await;
    let mut jobs = server.jobs();

    let mut low: JobSpec = job("low", "research", 2).try_into().expect("valid");
    low.priority = 0;
    let low = submit(&mut jobs, RESEARCH, low.into(), "low").await;
    let mut keep: JobSpec = job("keep", "prod", 1).try_into().expect("valid");
    keep.preemptible = false;
    keep.priority = -5;
    let keep = submit(&mut jobs, PROD, keep.into(), "keep").await;
    let first = agent.next_assignment().await;
    let second = agent.next_assignment().await;
    let mut placed = [first.job_id.clone(), second.job_id.clone()];
    placed.sort();
    let mut want = [low.id.clone(), keep.id.clone()];
    want.sort();
    assert_eq!(placed, want);

    // 1 of 4 GPUs free: a priority-10 job for 3 GPUs must stop `low`, never `keep`.
    let mut high: JobSpec = job("high", "prod", 3).try_into().expect("valid");
    high.priority = 10;
    let high = submit(&mut jobs, PROD, high.into(), "high").await;
    let cancel = agent.next_cancel().await;
    assert_eq!(cancel.job_id, low.id);
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, high.id);
    wait_state(&mut jobs, &low.id, pb::JobState::Pending).await;
    let reasons: Vec<(String, String)> = history(&mut jobs, &low.id)
        .await
        .into_iter()
        .map(|e| (e.reason, e.message))
        .collect();
    assert!(
        reasons.contains(&(
            "preempted".to_string(),
            format!("preempted for {}: it has lower priority", high.id)
        )),
        "{reasons:?}"
    );
    let kept = get_job(&mut jobs, &keep.id).await;
    assert_eq!(kept.state, pb::JobState::Placed as i32, "non-preemptible");

    // A second high-priority job finds only `keep` and `high` (equal priority) running: it
    // waits.
    let mut blocked: JobSpec = job("blocked", "prod", 1).try_into().expect("valid");
    blocked.priority = 10;
    let blocked = submit(&mut jobs, PROD, blocked.into(), "blocked").await;
    let why = recorded_wait(&mut jobs, &blocked.id).await;
    let b = get_job(&mut jobs, &blocked.id).await;
    assert_eq!(b.state, pb::JobState::Pending as i32, "{why}");

    // When `high` ends, the higher-priority `blocked` runs first, then `low` (attempt 2).
    agent
        .send(pb::agent_message::Msg::Started(pb::WorkStarted {
            job_id: high.id.clone(),
            replica: 0,
            pid: 42,
            started_unix_ms: 0,
            attempt: 1,
        }))
        .await;
    wait_state(&mut jobs, &high.id, pb::JobState::Running).await;
    agent
        .send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: high.id.clone(),
            replica: 0,
            exit_code: 0,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 0,
            attempt: 1,
        }))
        .await;
    let next = agent.next_assignment().await;
    assert_eq!(next.job_id, blocked.id);
    let again = agent.next_assignment().await;
    assert_eq!(again.job_id, low.id);
    assert_eq!(again.attempt, 2);
    drop(agent);
    server.shutdown().await;
}

async fn node_status(cluster: &mut ClusterServiceClient<Channel>, cid: &str) -> pb::NodeStatus {
    cluster
        .get_node(authed(ADMIN, pb::GetNodeRequest { cid: cid.into() }))
        .await
        .expect("get node")
        .into_inner()
}

/// Reads node `cid` until `done` holds, for up to 5 s; panics with the last status if it
/// never does.
async fn wait_node(
    cluster: &mut ClusterServiceClient<Channel>,
    cid: &str,
    what: &str,
    done: impl Fn(&pb::NodeStatus) -> bool,
) -> pb::NodeStatus {
    let mut node = pb::NodeStatus::default();
    for _ in 0..100 {
        node = node_status(cluster, cid).await;
        if done(&node) {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {cid} never {what}: {node:?}");
}

/// A cordon keeps its reason, a drain shows as draining, both survive a restart, and
/// uncordoning clears them.
#[tokio::test]
async fn cordon_reasons_and_drains_are_kept() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let a = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    let mut b = Agent::connect(ch.clone(), inventory("n2", 1), vec![]).await;
    let mut cluster = server.cluster();
    let cordoned = cluster
        .cordon(authed(
            ADMIN,
            pb::CordonRequest {
                cid: a.cid.clone(),
                reason: "fan replacement".into(),
            },
        ))
        .await
        .expect("cordons")
        .into_inner();
    assert!(cordoned.cordoned && !cordoned.draining);
    assert_eq!(cordoned.cordon_reason, "fan replacement");
    // n1 is cordoned, so this job runs on n2, until n2 is drained with a short grace period.
    let mut jobs = server.jobs();
    let evicted = submit(&mut jobs, RESEARCH, job("evicted", "research", 1), "ev").await;
    assert_eq!(b.next_assignment().await.job_id, evicted.id);
    let drained = cluster
        .drain(authed(
            ADMIN,
            pb::DrainRequest {
                cid: b.cid.clone(),
                reason: "kernel upgrade".into(),
                grace_period_ms: 1234,
            },
        ))
        .await
        .expect("drains")
        .into_inner()
        .node
        .expect("node");
    assert!(drained.cordoned && drained.draining);
    assert_eq!(drained.cordon_reason, "kernel upgrade");
    let cancel = b.next_cancel().await;
    assert_eq!(
        (cancel.job_id.as_str(), cancel.grace_period_ms),
        (evicted.id.as_str(), 1234)
    );
    drop((a, b));
    let server = server.restart().await;
    let mut cluster = server.cluster();
    let a = node_status(&mut cluster, "cid:acme/cn-east-1/dc-a/n1").await;
    assert_eq!(
        (a.cordoned, a.draining, a.cordon_reason.as_str()),
        (true, false, "fan replacement")
    );
    let b = node_status(&mut cluster, "cid:acme/cn-east-1/dc-a/n2").await;
    assert_eq!(
        (b.cordoned, b.draining, b.cordon_reason.as_str()),
        (true, true, "kernel upgrade")
    );
    let b = cluster
        .uncordon(authed(
            ADMIN,
            pb::UncordonRequest {
                cid: "cid:acme/cn-east-1/dc-a/n2".into(),
            },
        ))
        .await
        .expect("uncordons")
        .into_inner();
    assert_eq!(
        (b.cordoned, b.draining, b.cordon_reason.as_str()),
        (false, false, "")
    );
    server.shutdown().await;
}

/// Resolve answers in pages whose tokens lead through every match exactly once.
#[tokio::test]
async fn resolve_pages_through_every_match() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agents = Vec::new();
    for node in ["n1", "n2", "n3"] {
        agents.push(Agent::connect(ch.clone(), inventory(node, 2), vec![]).await);
    }
    let mut cluster = server.cluster();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = cluster
            .resolve(authed(
                RESEARCH,
                pb::ResolveRequest {
                    prefix: "cid:acme/cn-east-1".into(),
                    min_free_gpus: 2,
                    page: Some(pb::PageRequest {
                        page_size: 2,
                        page_token: token.clone(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .expect("resolves")
            .into_inner();
        pages += 1;
        let page = reply.page.expect("page info");
        assert_eq!(page.total_size, 3);
        seen.extend(reply.nodes.into_iter().map(|n| n.cid));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 2);
    assert_eq!(
        seen,
        [
            "cid:acme/cn-east-1/dc-a/n1",
            "cid:acme/cn-east-1/dc-a/n2",
            "cid:acme/cn-east-1/dc-a/n3"
        ]
    );
    drop(agents);
    server.shutdown().await;
}

/// An elastic job starts with its minimum when the whole of it does not fit.
#[tokio::test]
async fn an_elastic_job_starts_at_its_minimum() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agents = Vec::new();
    for node in ["n1", "n2"] {
        agents.push(Agent::connect(ch.clone(), inventory(node, 2), vec![]).await);
    }
    let mut jobs = server.jobs();
    let mut elastic: JobSpec = job("elastic", "research", 2).try_into().expect("valid");
    elastic.replicas = 4;
    elastic.min_replicas = Some(2);
    let elastic = submit(&mut jobs, RESEARCH, elastic.into(), "e").await;
    let placed = wait_state(&mut jobs, &elastic.id, pb::JobState::Placed).await;
    assert_eq!(placed_nodes(&placed), ["n1", "n2"]);
    let events = history(&mut jobs, &elastic.id).await;
    let placed_event = events
        .iter()
        .find(|e| e.reason == "placed")
        .expect("a placed event");
    assert_eq!(
        placed_event.message,
        "2 of 4 replica(s) (elastic minimum 2) on n1, n2"
    );

    // Without a minimum the same shape waits: all or nothing.
    let whole = submit(
        &mut jobs,
        RESEARCH,
        {
            let mut s: JobSpec = job("whole", "research", 2).try_into().expect("valid");
            s.replicas = 4;
            s.into()
        },
        "w",
    )
    .await;
    let why = recorded_wait(&mut jobs, &whole.id).await;
    let whole = get_job(&mut jobs, &whole.id).await;
    assert_eq!(whole.state, pb::JobState::Pending as i32, "{why}");
    assert!(whole.placement.is_none());
    drop(agents);
    server.shutdown().await;
}

/// Node `node` with two GPUs and one 400 Gb/s NIC, GPUDirect-local to both, its port in
/// `state`.
fn with_nic(node: &str, state: PortState) -> NodeInventory {
    H100Node::new(node, 2)
        .fabric("leaf-1", "spine-1")
        .nic("mlx5_0", state)
        .build()
}

/// A NIC that goes down (reported in an inventory update) takes its node out of the running
/// for `rdma: required` work; with every NIC down the job waits and says why.
#[tokio::test]
async fn rdma_jobs_follow_live_nic_state() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let n1 = Agent::connect(ch.clone(), with_nic("n1", PortState::Active), vec![]).await;
    let n2 = Agent::connect(ch.clone(), with_nic("n2", PortState::Active), vec![]).await;
    // n1's port goes down: the agent's rediscovery sends a new generation.
    let mut down = with_nic("n1", PortState::Down);
    down.generation = 2;
    n1.send(pb::agent_message::Msg::Inventory(pb::InventoryUpdate {
        inventory: Some(down.into()),
    }))
    .await;
    let mut cluster = server.cluster();
    wait_node(&mut cluster, &n1.cid, "took generation 2", |n| {
        n.inventory.as_ref().is_some_and(|i| i.generation == 2)
    })
    .await;

    let mut jobs = server.jobs();
    let mut rdma: JobSpec = job("rdma", "research", 1).try_into().expect("valid");
    rdma.topology.rdma_required = true;
    let first = submit(&mut jobs, RESEARCH, rdma.clone().into(), "r1").await;
    let first = wait_state(&mut jobs, &first.id, pb::JobState::Placed).await;
    assert_eq!(
        placed_nodes(&first),
        ["n2"],
        "n1 sorts first but its NIC is down"
    );

    // n2 loses its NIC as well: the next RDMA job waits, with the reason counted per node.
    let mut down = with_nic("n2", PortState::Down);
    down.generation = 2;
    n2.send(pb::agent_message::Msg::Inventory(pb::InventoryUpdate {
        inventory: Some(down.into()),
    }))
    .await;
    let second = submit(&mut jobs, RESEARCH, rdma.into(), "r2").await;
    let why = explain_until(&mut jobs, &second.id, |w| {
        pending_of(w).is_some_and(|p| !p.reasons.is_empty())
    })
    .await;
    let reasons: Vec<(String, u32, String)> = pending_of(&why)
        .map(|p| p.reasons.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.reason, r.node_count, r.message))
        .collect();
    assert!(
        reasons.contains(&("rdma_down".to_string(), 2, "no usable RDMA NIC".to_string())),
        "{reasons:?}"
    );
    drop((n1, n2));
    server.shutdown().await;
}

/// A tenant at its maximum: a queue still owed its guarantee takes back what a sibling
/// queue borrowed, and no more.
#[tokio::test]
async fn a_queue_owed_its_guarantee_reclaims_from_a_sibling() {
    let limit = |guaranteed, max| {
        BTreeMap::from([(
            "H100".to_string(),
            QuotaGpus {
                guaranteed,
                max: Some(max),
            },
        )])
    };
    let server = TestServer::start_with(|cfg| {
        cfg.preemption.min_runtime_s = 0;
        cfg.quotas = BTreeMap::from([
            ("research".to_string(), limit(4, 4)),
            ("research/a".to_string(), limit(2, 4)),
            ("research/b".to_string(), limit(2, 4)),
        ]);
    })
    .await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 8), vec![]).await;
    let mut jobs = server.jobs();

    // Queue b takes the tenant's whole maximum: 2 GPUs of its own and 2 borrowed.
    let mut borrowers = Vec::new();
    for i in 0..4 {
        let mut spec: JobSpec = job(&format!("b-{i}"), "research", 1)
            .try_into()
            .expect("valid");
        spec.queue = "b".into();
        borrowers.push(
            submit(&mut jobs, RESEARCH, spec.into(), format!("b{i}"))
                .await
                .id,
        );
    }
    for _ in 0..4 {
        agent.next_assignment().await;
    }

    // Queue a is owed 2: its 2-GPU job reclaims two of b's jobs, though 4 GPUs stand idle.
    let mut owed: JobSpec = job("a-0", "research", 2).try_into().expect("valid");
    owed.queue = "a".into();
    let owed = submit(&mut jobs, RESEARCH, owed.into(), "a0").await;
    let mut cancelled = Vec::new();
    for _ in 0..2 {
        cancelled.push(agent.next_cancel().await.job_id);
    }
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, owed.id);
    let mut pending = 0;
    for id in &borrowers {
        let j = get_job(&mut jobs, id).await;
        if j.state == pb::JobState::Pending as i32 {
            pending += 1;
            assert!(cancelled.contains(id));
            let reasons: Vec<String> = history(&mut jobs, id)
                .await
                .into_iter()
                .map(|e| e.message)
                .collect();
            assert!(
                reasons.contains(&format!(
                    "preempted for {}: reclaiming quota it borrowed",
                    owed.id
                )),
                "{reasons:?}"
            );
        }
    }
    assert_eq!(pending, 2, "b keeps its guarantee");

    // A third job in queue a would pass a's guarantee: it waits on the tenant's maximum.
    let mut more: JobSpec = job("a-1", "research", 1).try_into().expect("valid");
    more.queue = "a".into();
    let more = submit(&mut jobs, RESEARCH, more.into(), "a1").await;
    let why = recorded_wait(&mut jobs, &more.id).await;
    assert!(why.starts_with("tenant research at quota"), "{why}");
    let more = get_job(&mut jobs, &more.id).await;
    assert_eq!(more.state, pb::JobState::Pending as i32);
    drop(agent);
    server.shutdown().await;
}

impl Agent {
    /// Reports an assignment's replica as started.
    async fn report_started(&self, a: &pb::Assignment) {
        self.send(pb::agent_message::Msg::Started(pb::WorkStarted {
            job_id: a.job_id.clone(),
            replica: a.replica,
            pid: 42,
            started_unix_ms: 0,
            attempt: a.attempt,
        }))
        .await;
    }

    /// Reports an assignment's replica as started and then as exited with `code`.
    async fn run_to_exit(&self, a: &pb::Assignment, code: i32) {
        self.report_started(a).await;
        self.send(pb::agent_message::Msg::Exited(pb::WorkExited {
            job_id: a.job_id.clone(),
            replica: a.replica,
            exit_code: code,
            signal: 0,
            message: String::new(),
            ended_unix_ms: 0,
            attempt: a.attempt,
        }))
        .await;
    }
}

/// Submits a 1-GPU job pinned to each agent's node (`long-1`, `long-2`, ...), with `limit`
/// as its time limit.
async fn occupy_one_gpu_each<const N: usize>(
    jobs: &mut JobServiceClient<Channel>,
    agents: [&Agent; N],
    limit: Option<u64>,
) {
    for (i, agent) in agents.into_iter().enumerate() {
        let name = format!("long-{}", i + 1);
        let mut pinned: JobSpec = job(&name, "research", 1).try_into().expect("valid");
        pinned.placement.allowed = vec![agent.cid.parse().expect("node cid")];
        pinned.time_limit_s = limit;
        submit(jobs, RESEARCH, pinned.into(), name).await;
    }
}

/// A gang that does not fit yet holds the nodes it will get: later jobs of its priority
/// cannot trickle onto them and starve it, a higher-priority job still can, and the gang
/// starts as soon as the running work ends.
#[tokio::test]
async fn a_blocked_gang_holds_its_nodes_against_smaller_jobs() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut n1 = Agent::connect(ch.clone(), inventory("n1", 4), vec![]).await;
    let mut n2 = Agent::connect(ch.clone(), inventory("n2", 4), vec![]).await;
    let mut jobs = server.jobs();

    // One GPU busy on each node (pinned there: the policy would pack both on one).
    occupy_one_gpu_each(&mut jobs, [&n1, &n2], None).await;
    let long1 = n1.next_assignment().await;
    let long2 = n2.next_assignment().await;

    // The 2 × 4 gang needs both nodes whole; it waits and holds them.
    let mut gang: JobSpec = job("gang", "research", 4).try_into().expect("valid");
    gang.replicas = 2;
    let gang = submit(&mut jobs, RESEARCH, gang.into(), "g").await;
    let small = submit(&mut jobs, RESEARCH, job("small", "research", 1), "s").await;
    let summary = explain_until(&mut jobs, &small.id, |w| w.summary.contains("held for"))
        .await
        .summary;
    // The long jobs have no time limit: nobody can say when the gang starts.
    assert_eq!(
        summary,
        format!(
            "it fits only on nodes held for {}, which waits ahead of it until running jobs end",
            gang.id
        )
    );

    // A higher-priority job is not held back.
    let mut urgent: JobSpec = job("urgent", "research", 1).try_into().expect("valid");
    urgent.priority = 5;
    let urgent = submit(&mut jobs, RESEARCH, urgent.into(), "u").await;
    let urgent = wait_state(&mut jobs, &urgent.id, pb::JobState::Placed).await;
    let urgent_on = placed_nodes(&urgent);
    let urgent_assignment = if urgent_on == ["n1"] {
        n1.next_assignment().await
    } else {
        n2.next_assignment().await
    };

    // Everything running ends: the gang starts before the small job.
    n1.run_to_exit(&long1, 0).await;
    n2.run_to_exit(&long2, 0).await;
    if urgent_on == ["n1"] {
        n1.run_to_exit(&urgent_assignment, 0).await;
    } else {
        n2.run_to_exit(&urgent_assignment, 0).await;
    }
    let placed = wait_state(&mut jobs, &gang.id, pb::JobState::Placed).await;
    assert_eq!(placed_nodes(&placed), ["n1", "n2"]);
    let small = get_job(&mut jobs, &small.id).await;
    assert_eq!(small.state, pb::JobState::Pending as i32, "no room left");
    drop((n1, n2));
    server.shutdown().await;
}

/// A job past its time limit is stopped and fails with that reason.
#[tokio::test]
async fn a_job_past_its_time_limit_is_stopped() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut agent = Agent::connect(ch.clone(), inventory("n1", 1), vec![]).await;
    let mut jobs = server.jobs();
    let mut spec: JobSpec = job("bounded", "research", 1).try_into().expect("valid");
    spec.time_limit_s = Some(1);
    let bounded = submit(&mut jobs, RESEARCH, spec.into(), "b").await;
    let assigned = agent.next_assignment().await;
    agent.report_started(&assigned).await;
    let cancel = agent.next_cancel().await;
    assert_eq!(cancel.job_id, bounded.id);
    let failed = wait_state(&mut jobs, &bounded.id, pb::JobState::Failed).await;
    assert_eq!(failed.last_reason, "ran past its time limit of 1 s");
    drop(agent);
    server.shutdown().await;
}

/// With time limits known, a blocked gang's reservation has a start time: a job sure to
/// end before it may run on the held nodes (backfill); one that is not, or has no limit,
/// may not.
#[tokio::test]
async fn short_jobs_backfill_ahead_of_a_blocked_gang() {
    let server = TestServer::start().await;
    let ch = server.channel();
    let mut n1 = Agent::connect(ch.clone(), inventory("n1", 4), vec![]).await;
    let mut n2 = Agent::connect(ch.clone(), inventory("n2", 4), vec![]).await;
    let mut jobs = server.jobs();
    occupy_one_gpu_each(&mut jobs, [&n1, &n2], Some(600)).await;
    n1.next_assignment().await;
    n2.next_assignment().await;
    let mut gang: JobSpec = job("gang", "research", 4).try_into().expect("valid");
    gang.replicas = 2;
    let gang = submit(&mut jobs, RESEARCH, gang.into(), "g").await;

    let with_limit = |name: &str, limit: Option<u64>| {
        let mut spec: JobSpec = job(name, "research", 1).try_into().expect("valid");
        spec.time_limit_s = limit;
        pb::JobSpec::from(spec)
    };
    // Ends within the 600 s the held nodes stay busy anyway: it runs now.
    let short = submit(&mut jobs, RESEARCH, with_limit("short", Some(60)), "s").await;
    wait_state(&mut jobs, &short.id, pb::JobState::Placed).await;
    // Would outlast them, or cannot say: they wait behind the gang.
    let long = submit(&mut jobs, RESEARCH, with_limit("long", Some(3600)), "l").await;
    let open = submit(&mut jobs, RESEARCH, with_limit("open", None), "o").await;
    for id in [&long.id, &open.id] {
        let summary = explain_until(&mut jobs, id, |w| w.summary.contains("held for"))
            .await
            .summary;
        // The held nodes' jobs have limits, so the gang's start is known.
        let held = format!(
            "it fits only on nodes held for {}, which waits ahead of it and should start by ",
            gang.id
        );
        assert!(summary.starts_with(&held), "{summary}");
    }
    drop((n1, n2));
    server.shutdown().await;
}
