//! Sessions against a real tonic server on 127.0.0.1: a small AgentService that records what
//! agents send and lets the test push assignments, cancels and REREGISTER down the stream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use suanli_agent::config::{AgentConfig, MapConfig};
use suanli_agent::discovery::FixtureProbe;
use suanli_agent::session::{Agent, AgentExit};
use suanli_proto::pb;
use suanli_proto::pb::agent_message::Msg as Up;
use suanli_proto::pb::scheduler_message::Msg as Down;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::support::fixtures_dir;

const TOKEN: &str = "join-secret";
/// Upper bound for anything the tests wait for; behaviour is asserted, not speed.
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Recorded {
    /// `(authorization header, request)` per Register call.
    registers: Vec<(String, pb::RegisterRequest)>,
    /// `(session id, message)` for everything agents sent on sessions.
    messages: Vec<(String, Up)>,
}

type Outbound = mpsc::Sender<Result<pb::SchedulerMessage, Status>>;

#[derive(Clone, Default)]
struct TestScheduler {
    recorded: Arc<Mutex<Recorded>>,
    /// The open session's outbound side, by session id.
    sessions: Arc<Mutex<HashMap<String, Outbound>>>,
    /// Which server instance this is, so session ids differ across restarts.
    instance: u32,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for TestScheduler {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if auth != format!("Bearer {TOKEN}") {
            return Err(Status::unauthenticated("bad join token"));
        }
        let req = request.into_inner();
        let node_cid = req
            .inventory
            .as_ref()
            .map(|i| i.cid.clone())
            .ok_or_else(|| Status::invalid_argument("inventory is required"))?;
        let mut rec = self.recorded.lock().expect("lock");
        // Like the real scheduler: a node that comes without a credential is given one.
        let node_credential = if req.node_credential.is_empty() {
            format!("suanli-node-test-{}", self.instance)
        } else {
            String::new()
        };
        rec.registers.push((auth, req));
        Ok(Response::new(pb::RegisterResponse {
            node_cid,
            session_id: format!("s{}-{}", self.instance, rec.registers.len()),
            heartbeat_interval_ms: 50,
            telemetry_interval_ms: 100,
            node_credential,
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .and_then(|m| m.msg)
            .ok_or_else(|| Status::invalid_argument("empty session"))?;
        let Up::Hello(hello) = &first else {
            return Err(Status::invalid_argument("first message must be hello"));
        };
        let session_id = hello.session_id.clone();
        self.recorded
            .lock()
            .expect("lock")
            .messages
            .push((session_id.clone(), first));
        let (tx, rx) = mpsc::channel(16);
        self.sessions
            .lock()
            .expect("lock")
            .insert(session_id.clone(), tx);
        let recorded = Arc::clone(&self.recorded);
        let sessions = Arc::clone(&self.sessions);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(m) = msg.msg {
                    let mut rec = recorded.lock().expect("lock");
                    rec.messages.push((session_id.clone(), m));
                }
            }
            sessions.lock().expect("lock").remove(&session_id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running test scheduler; `stop` ends its sessions and the server.
struct Server {
    addr: SocketAddr,
    scheduler: TestScheduler,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(addr: SocketAddr, instance: u32) -> Server {
        let listener = TcpListener::bind(addr).await.expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let scheduler = TestScheduler {
            instance,
            ..TestScheduler::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = pb::agent_service_server::AgentServiceServer::new(scheduler.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            addr,
            scheduler,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every session (as a dying scheduler would) and waits for the server to stop.
    async fn stop(mut self) {
        self.scheduler.sessions.lock().expect("lock").clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
    }

    fn registers(&self) -> usize {
        self.scheduler
            .recorded
            .lock()
            .expect("lock")
            .registers
            .len()
    }

    fn messages(&self) -> Vec<(String, Up)> {
        self.scheduler
            .recorded
            .lock()
            .expect("lock")
            .messages
            .clone()
    }

    /// Waits until `pick` finds something in what agents sent.
    async fn wait_for<T>(&self, what: &str, pick: impl Fn(&[(String, Up)]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(found) = pick(&self.messages()) {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_registers(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.registers() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} registrations"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a message down the newest open session.
    async fn push(&self, msg: Down) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let tx = {
                let sessions = self.scheduler.sessions.lock().expect("lock");
                let mut ids: Vec<&String> = sessions.keys().collect();
                ids.sort();
                ids.last().and_then(|id| sessions.get(*id).cloned())
            };
            if let Some(tx) = tx {
                tx.send(Ok(pb::SchedulerMessage { msg: Some(msg) }))
                    .await
                    .expect("session open");
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no session to push to"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An agent on the HGX fixture machine, stopped through the returned sender.
fn start_agent(url: &str, data_dir: &Path) -> (oneshot::Sender<()>, JoinHandle<()>) {
    start_agent_with(url, data_dir, &fixtures_dir().join("hgx-h100"), &[])
}

fn start_agent_with(
    url: &str,
    data_dir: &Path,
    sysfs_root: &Path,
    extra: &[(&str, &str)],
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    // Agent logs show up with `--nocapture` when a test fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let fixtures = fixtures_dir();
    let mut config = MapConfig::default();
    for (k, v) in extra {
        config = config.with(k, *v);
    }
    let cfg = AgentConfig::from_source(
        &config
            .with("scheduler", url)
            .with("token", TOKEN)
            .with("provider", "acme")
            .with("region", "cn-east-1")
            .with("domain", "dc-a")
            .with("node", "hgx-01")
            .with("data_dir", data_dir.display().to_string())
            .with("sysfs_root", sysfs_root.display().to_string())
            .with("backoff_initial_ms", "50")
            .with("backoff_max_ms", "400"),
    )
    .expect("valid config");
    let probe = FixtureProbe::load(&fixtures.join("hgx-h100.json")).expect("fixture");
    let agent = Agent::new(cfg, Arc::new(probe)).expect("agent starts");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn assign(job: &str, command: &[&str], gpus: &[&str], env: &[(&str, &str)]) -> Down {
    Down::Assign(pb::Assignment {
        job_id: job.to_string(),
        replica: 0,
        command: command.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        gpu_uuids: gpus.iter().map(|s| s.to_string()).collect(),
        volumes: vec![],
        attempt: 1,
        resources: None,
        ..Default::default()
    })
}

fn exited(job: &str) -> impl Fn(&[(String, Up)]) -> Option<pb::WorkExited> + '_ {
    move |msgs| {
        msgs.iter().find_map(|(_, m)| match m {
            Up::Exited(e) if e.job_id == job => Some(e.clone()),
            _ => None,
        })
    }
}

fn started(job: &str) -> impl Fn(&[(String, Up)]) -> Option<pb::WorkStarted> + '_ {
    move |msgs| {
        msgs.iter().find_map(|(_, m)| match m {
            Up::Started(s) if s.job_id == job => Some(s.clone()),
            _ => None,
        })
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("valid address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_then_sends_hello_heartbeats_and_telemetry() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());

    server.wait_registers(1).await;
    {
        let rec = server.scheduler.recorded.lock().expect("lock");
        let (auth, req) = &rec.registers[0];
        assert_eq!(auth, &format!("Bearer {TOKEN}"));
        let inv = req.inventory.as_ref().expect("inventory sent");
        assert_eq!(inv.cid, "cid:acme/cn-east-1/dc-a/hgx-01");
        assert_eq!((inv.gpus.len(), inv.nics.len(), inv.generation), (8, 8, 1));
    }
    let seqs = server
        .wait_for("three heartbeats", |msgs| {
            let seqs: Vec<u64> = msgs
                .iter()
                .filter_map(|(_, m)| match m {
                    Up::Heartbeat(h) => Some(h.seq),
                    _ => None,
                })
                .collect();
            (seqs.len() >= 3).then_some(seqs)
        })
        .await;
    assert_eq!(&seqs[..3], &[1, 2, 3]);
    let telemetry = server
        .wait_for("telemetry", |msgs| {
            msgs.iter().find_map(|(_, m)| match m {
                Up::Telemetry(t) => Some(t.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(telemetry.node_cid, "cid:acme/cn-east-1/dc-a/hgx-01");
    assert_eq!(telemetry.gpus.len(), 8);
    assert!(
        telemetry
            .gpus
            .iter()
            .all(|g| g.nvlinks.len() == 18 && g.utilization_percent <= 100)
    );
    assert_eq!(telemetry.nic_ports.len(), 8);
    // The fixture's counters hold 1e6 and 2e6 four-byte words.
    assert!(
        telemetry
            .nic_ports
            .iter()
            .all(|p| p.tx_bytes == 4_000_000 && p.rx_bytes == 8_000_000)
    );
    let msgs = server.messages();
    assert!(matches!(&msgs[0].1, Up::Hello(h) if h.session_id == "s1-1" && h.running.is_empty()));

    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_registers_again_after_a_scheduler_restart() {
    let first = Server::start(localhost(), 1).await;
    let addr = first.addr;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&first.url(), data.path());
    first.wait_registers(1).await;
    first
        .wait_for("a heartbeat", |m| {
            m.iter()
                .find(|(_, m)| matches!(m, Up::Heartbeat(_)))
                .cloned()
        })
        .await;
    first.stop().await;

    // Same port, fresh state: the agent must register again and open a new session.
    let second = Server::start(addr, 2).await;
    second.wait_registers(1).await;
    let hello = second
        .wait_for("hello on the new server", |msgs| {
            msgs.iter().find_map(|(_, m)| match m {
                Up::Hello(h) => Some(h.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(hello.session_id, "s2-1");
    second
        .wait_for("heartbeats on the new session", |msgs| {
            msgs.iter()
                .find(|(s, m)| s == "s2-1" && matches!(m, Up::Heartbeat(_)))
                .cloned()
        })
        .await;

    let _ = stop.send(());
    let _ = agent.await;
    second.stop().await;
}

/// The credential issued at the first registration is kept in the data directory, readable
/// by the agent's user only, and presented at every later registration, also by a restarted
/// agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_credential_is_kept_and_presented_again() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(1).await;
    server
        .push(Down::Reregister(pb::Reregister {
            reason: "test".into(),
        }))
        .await;
    server.wait_registers(2).await;
    let _ = stop.send(());
    let _ = agent.await;
    let file = data.path().join("node-credential");
    assert_eq!(
        std::fs::read_to_string(&file).expect("stored"),
        "suanli-node-test-1"
    );
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A new agent process on the same data directory presents it from the start.
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(3).await;
    let presented: Vec<String> = server
        .scheduler
        .recorded
        .lock()
        .expect("lock")
        .registers
        .iter()
        .map(|(_, r)| r.node_credential.clone())
        .collect();
    assert_eq!(
        presented,
        vec!["", "suanli-node-test-1", "suanli-node-test-1"]
    );
    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

/// Told that another session holds its node, the agent stands down instead of registering
/// again and fighting over the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_agent_stops_instead_of_fighting() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let cfg = AgentConfig::from_source(
        &MapConfig::default()
            .with("scheduler", server.url())
            .with("token", TOKEN)
            .with("provider", "acme")
            .with("region", "cn-east-1")
            .with("domain", "dc-a")
            .with("node", "hgx-01")
            .with("data_dir", data.path().display().to_string())
            .with(
                "sysfs_root",
                fixtures_dir().join("hgx-h100").display().to_string(),
            )
            .with("backoff_initial_ms", "50")
            .with("backoff_max_ms", "400"),
    )
    .expect("valid config");
    let probe = FixtureProbe::load(&fixtures_dir().join("hgx-h100.json")).expect("fixture");
    let agent = Agent::new(cfg, Arc::new(probe)).expect("agent starts");
    let run = tokio::spawn(agent.run_until(std::future::pending()));
    server.wait_registers(1).await;
    server
        .push(Down::Replaced(pb::SessionReplaced {
            reason: "node registered again by another agent session".into(),
        }))
        .await;
    let exit = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent stops")
        .expect("no panic");
    assert_eq!(
        exit,
        AgentExit::Replaced {
            reason: "node registered again by another agent session".into()
        }
    );
    assert_eq!(server.registers(), 1, "it did not register again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregister_message_starts_a_new_registration() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(1).await;
    server
        .push(Down::Reregister(pb::Reregister {
            reason: "scheduler restarted".into(),
        }))
        .await;
    server.wait_registers(2).await;
    server
        .wait_for("hello of the second session", |msgs| {
            msgs.iter()
                .find(|(s, m)| s == "s1-2" && matches!(m, Up::Hello(_)))
                .cloned()
        })
        .await;
    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_run_report_exit_codes_and_see_only_their_gpus() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(1).await;

    server
        .push(assign("exit-3", &["sh", "-c", "exit 3"], &[], &[]))
        .await;
    let s = server.wait_for("exit-3 started", started("exit-3")).await;
    assert!(s.pid > 0 && s.attempt == 1);
    let e = server.wait_for("exit-3 exited", exited("exit-3")).await;
    assert_eq!((e.exit_code, e.signal, e.attempt), (3, 0, 1));

    let gpus = [
        "GPU-00000002-5a1c-4e2b-9d3f-000000000002",
        "MIG-7a000000-0000-4000-8000-000000000001",
    ];
    let out = data.path().join("cuda-visible-devices.txt");
    let out_str = out.display().to_string();
    let script = [
        "sh",
        "-c",
        "printf '%s' \"$CUDA_VISIBLE_DEVICES\" > \"$OUT\"",
    ];
    server
        .push(assign("cvd", &script, &gpus, &[("OUT", &out_str)]))
        .await;
    let e = server.wait_for("cvd exited", exited("cvd")).await;
    assert_eq!(e.exit_code, 0, "{}", e.message);
    assert_eq!(
        std::fs::read_to_string(&out).expect("child wrote"),
        gpus.join(",")
    );

    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_terminates_a_sleep() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(1).await;

    server
        .push(assign("sleepy", &["sleep", "60"], &[], &[]))
        .await;
    server.wait_for("sleepy started", started("sleepy")).await;
    server
        .push(Down::Cancel(pb::Cancel {
            job_id: "sleepy".into(),
            replica: 0,
            grace_period_ms: 5_000,
            attempt: 0,
        }))
        .await;
    let e = server.wait_for("sleepy exited", exited("sleepy")).await;
    assert_eq!((e.exit_code, e.signal), (-1, 15), "ended by SIGTERM");

    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reports_running_work_in_hello() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(1).await;
    server
        .push(assign(
            "long",
            &["sleep", "60"],
            &["GPU-00000001-5a1c-4e2b-9d3f-000000000001"],
            &[],
        ))
        .await;
    let s = server.wait_for("long started", started("long")).await;
    let _ = stop.send(());
    let _ = agent.await;

    // A new agent process on the same data directory finds the replica again.
    let (stop, agent) = start_agent(&server.url(), data.path());
    server.wait_registers(2).await;
    let hello = server
        .wait_for("hello of the restarted agent", |msgs| {
            msgs.iter().find_map(|(sid, m)| match m {
                Up::Hello(h) if sid == "s1-2" => Some(h.clone()),
                _ => None,
            })
        })
        .await;
    assert_eq!(hello.running.len(), 1);
    let running = &hello.running[0];
    assert_eq!((running.job_id.as_str(), running.pid), ("long", s.pid));
    assert_eq!(
        running.gpu_uuids,
        ["GPU-00000001-5a1c-4e2b-9d3f-000000000001"]
    );

    // And can still stop it.
    server
        .push(Down::Cancel(pb::Cancel {
            job_id: "long".into(),
            replica: 0,
            grace_period_ms: 5_000,
            attempt: 0,
        }))
        .await;
    let e = server.wait_for("long exited", exited("long")).await;
    assert_eq!(e.signal, 15);
    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_change_is_sent_with_a_bumped_generation() {
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let machine = tempfile::tempdir().expect("tempdir");
    crate::support::build_hgx(machine.path());
    let (stop, agent) = start_agent_with(
        &server.url(),
        data.path(),
        machine.path(),
        &[("rediscover_ms", "100")],
    );
    server.wait_registers(1).await;

    // An HCA disappears (driver unloaded, card failed).
    std::fs::remove_file(machine.path().join("sys/class/infiniband/mlx5_7")).expect("remove");
    let update = server
        .wait_for("an inventory update", |msgs| {
            msgs.iter().find_map(|(_, m)| match m {
                Up::Inventory(u) => u.inventory.clone(),
                _ => None,
            })
        })
        .await;
    assert_eq!(update.generation, 2);
    assert_eq!(update.nics.len(), 7);
    assert!(update.gpu_nic_pairs.iter().all(|p| p.nic != "mlx5_7"));
    let _ = stop.send(());
    let _ = agent.await;

    // A restarted agent keeps counting from the recorded generation.
    let (stop, agent) = start_agent_with(&server.url(), data.path(), machine.path(), &[]);
    server.wait_registers(2).await;
    let generation = {
        let rec = server.scheduler.recorded.lock().expect("lock");
        rec.registers[1].1.inventory.as_ref().map(|i| i.generation)
    };
    assert_eq!(generation, Some(2), "same facts, same generation");
    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpus_kubelet_gave_pods_are_reported_when_they_change() {
    use crate::kubelet::{FakeKubelet, pod};
    let server = Server::start(localhost(), 1).await;
    let data = tempfile::tempdir().expect("tempdir");
    let kubelet = FakeKubelet::default();
    let socket = kubelet.serve(data.path());
    kubelet.set(vec![pod(
        "ml",
        "train",
        &[&[("nvidia.com/gpu", &["GPU-1"])]],
    )]);
    let socket_text = socket.display().to_string();
    let (stop, agent) = start_agent_with(
        &server.url(),
        &data.path().join("agent"),
        &fixtures_dir().join("hgx-h100"),
        &[("kubelet_socket", &socket_text), ("pod_devices_ms", "50")],
    );
    let reports = |msgs: &[(String, Up)]| -> Vec<pb::PodDevices> {
        msgs.iter()
            .filter_map(|(_, m)| match m {
                Up::PodDevices(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    };
    let first = server
        .wait_for("a pod-device report", |msgs| reports(msgs).first().cloned())
        .await;
    assert_eq!(first.pods.len(), 1);
    assert_eq!(first.pods[0].gpu_uuids, ["GPU-1"]);

    // Unchanged answers are not sent again; a change is.
    kubelet.set(vec![
        pod("ml", "train", &[&[("nvidia.com/gpu", &["GPU-1"])]]),
        pod("ml", "serve", &[&[("nvidia.com/gpu", &["GPU-2"])]]),
    ]);
    let second = server
        .wait_for("a second report", |msgs| reports(msgs).get(1).cloned())
        .await;
    let names: Vec<&str> = second.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["serve", "train"]);
    // Two more polls answered with the same pods: the later one began after the agent had
    // weighed the earlier. Then a change, whose report follows on the same ordered stream
    // anything sent for those unchanged answers.
    kubelet.wait_polls(kubelet.polls() + 2).await;
    kubelet.set(vec![pod(
        "ml",
        "serve",
        &[&[("nvidia.com/gpu", &["GPU-2"])]],
    )]);
    let third = server
        .wait_for("a third report", |msgs| reports(msgs).get(2).cloned())
        .await;
    let names: Vec<&str> = third.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["serve"],
        "the unchanged answers were not sent again"
    );

    let _ = stop.send(());
    let _ = agent.await;
    server.stop().await;
}
