//! Registration and the long-lived session with the scheduler.
//!
//! Each connection starts with `Register` (so a scheduler that restarted learns the node
//! again), then opens `Session`, sends `Hello` with the work still running, and from then on
//! heartbeats, telemetry, inventory updates and work events go up while assignments and
//! cancels come down. A dropped connection is retried with exponential backoff and seeded
//! jitter; `Reregister`, or a session rejected as unknown, starts over with `Register`.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use suanli_engine::NodeInventory;
use suanli_proto::pb;
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior, interval, sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::AgentConfig;
use crate::discovery::{self, GpuProbe, SysfsRoot, Warnings};
use crate::ledger::RecordedExit;
use crate::logs::LogServer;
use crate::node_labels::NodeLabeler;
use crate::rendezvous::{Peer, Rendezvous, gdr_local_nics, interface_holding};
use crate::work::{Assignment, RunningRecord, WorkEvent, WorkRunner, unix_ms_now};

/// Used when the scheduler answers 0 for an interval.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const DEFAULT_TELEMETRY: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the join token cannot be sent as a gRPC header: {0}")]
    Token(String),
    #[error(transparent)]
    State(#[from] crate::work::StateError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Labels(#[from] crate::node_labels::LabelError),
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] Status),
    #[error("the scheduler closed the session")]
    Closed,
}

/// An error and its causes, `a: b: c` (tonic's transport errors say little on their own).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

enum SessionEnd {
    /// Register again; `wait` when the session was rejected rather than asked to re-register,
    /// so a scheduler that keeps rejecting is not hammered.
    Reregister {
        reason: String,
        wait: bool,
    },
    /// Another agent presented this node's credential and holds the node now.
    Replaced {
        reason: String,
    },
    Shutdown,
}

/// Why [`Agent::run_until`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// Asked to stop.
    Shutdown,
    /// The scheduler gave this node to another agent session; this agent stands down
    /// rather than fight over the node.
    Replaced { reason: String },
}

/// File in the data directory that keeps the node credential the scheduler issued.
const CREDENTIAL_FILE: &str = "node-credential";
/// Largest credential file read back; ours are 76 bytes.
const MAX_CREDENTIAL_FILE: u64 = 4096;
/// Largest message the agent accepts from the scheduler: the scheduler's own cap, so every
/// assignment it may send (a job spec is at most 256 KiB) arrives whole.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The last inventory sent, so generations keep increasing across agent restarts.
#[derive(Debug, Serialize, Deserialize)]
struct InventoryState {
    inventory: NodeInventory,
}

/// Exponential backoff with "equal jitter": half the delay fixed, half drawn from a seeded
/// generator, so agents that lost the scheduler together do not return together.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let full = self.initial.saturating_mul(factor).min(self.max);
        let half = full / 2;
        let jitter_ms = self.rng.random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// One node agent: discovery, the session loop and the work runner.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    probe: Arc<dyn GpuProbe>,
    root: SysfsRoot,
    runner: WorkRunner,
    events: mpsc::UnboundedReceiver<WorkEvent>,
    inventory: NodeInventory,
    auth: MetadataValue<Ascii>,
    backoff: Backoff,
    /// Work events taken off the runner's channel but not handed to a session yet.
    unsent: VecDeque<pb::AgentMessage>,
    /// The node credential the scheduler issued, if it has issued one.
    credential: String,
    /// Keeps the Kubernetes Node's labels in step with the inventory, when configured.
    labeler: Option<NodeLabeler>,
    /// The checked address peers reach this node at; `None`: the scheduler decides.
    advertise_addr: Option<String>,
}

impl Agent {
    /// Opens the data directory (adopting work an earlier agent left running) and runs
    /// discovery once.
    pub fn new(cfg: AgentConfig, probe: Arc<dyn GpuProbe>) -> Result<Agent, AgentError> {
        let auth: MetadataValue<Ascii> = format!("Bearer {}", cfg.token)
            .parse()
            .map_err(|e| AgentError::Token(format!("{e}")))?;
        let (runner, events) = WorkRunner::open(&cfg.data_dir)?;
        let root = SysfsRoot(cfg.sysfs_root.clone());
        let labeler = match &cfg.kube_api {
            Some(api) => Some(NodeLabeler::connect(
                api,
                cfg.node_cid.node_name().unwrap_or_default(),
            )?),
            None => None,
        };
        let mut agent = Agent {
            backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max, cfg.seed),
            inventory: discover_now(probe.as_ref(), &root, &cfg),
            cfg,
            probe,
            root,
            runner,
            events,
            auth,
            unsent: VecDeque::new(),
            credential: String::new(),
            labeler,
            advertise_addr: None,
        };
        agent.credential = agent.load_credential()?;
        agent.inventory.generation = agent.next_generation(&agent.inventory.clone());
        agent.save_inventory()?;
        Ok(agent)
    }

    /// Advertises `addr` (checked, see [`crate::config::advertise_addr`]) as where this
    /// node's replicas are reached; `None` leaves it to the scheduler.
    pub fn advertising(mut self, addr: Option<String>) -> Agent {
        self.advertise_addr = addr;
        self
    }

    pub fn inventory(&self) -> &NodeInventory {
        &self.inventory
    }

    fn inventory_path(&self) -> PathBuf {
        self.cfg.data_dir.join("inventory.json")
    }

    /// The generation for `found`: the stored one when nothing changed, one more otherwise.
    fn next_generation(&self, found: &NodeInventory) -> u64 {
        let stored: Option<InventoryState> = std::fs::read_to_string(self.inventory_path())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match stored {
            Some(s) if same_facts(&s.inventory, found) => s.inventory.generation,
            Some(s) => s.inventory.generation + 1,
            None => 1,
        }
    }

    fn credential_path(&self) -> PathBuf {
        self.cfg.data_dir.join(CREDENTIAL_FILE)
    }

    /// The stored node credential; empty when none was issued yet.
    fn load_credential(&self) -> Result<String, AgentError> {
        let path = self.credential_path();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(source) => return Err(AgentError::Read { path, source }),
        };
        let mut text = String::new();
        use std::io::Read as _;
        file.take(MAX_CREDENTIAL_FILE)
            .read_to_string(&mut text)
            .map_err(|source| AgentError::Read {
                path: path.clone(),
                source,
            })?;
        Ok(text.trim().to_string())
    }

    /// Keeps a newly issued credential: written beside, then renamed over the old one, so a
    /// crash never leaves half a credential; readable by the agent's user only.
    fn save_credential(&mut self, credential: &str) -> Result<(), AgentError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.credential_path();
        let partial = self.cfg.data_dir.join(format!("{CREDENTIAL_FILE}.partial"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?;
            file.write_all(credential.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, &path)
        };
        write().map_err(|source| AgentError::Write {
            path: path.clone(),
            source,
        })?;
        self.credential = credential.to_string();
        Ok(())
    }

    fn save_inventory(&self) -> Result<(), AgentError> {
        let path = self.inventory_path();
        let state = InventoryState {
            inventory: self.inventory.clone(),
        };
        let text = serde_json::to_string_pretty(&state).expect("an inventory serializes");
        std::fs::write(&path, text).map_err(|source| AgentError::Write { path, source })
    }

    /// Runs until `shutdown` completes, or another agent takes the node over. Work keeps
    /// running after the agent stops; the next agent adopts it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_until(shutdown).await;
    }

    /// [`Agent::run`], saying why it returned.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> AgentExit {
        tokio::pin!(shutdown);
        self.label_node().await;
        loop {
            let span = info_span!("session", node = %self.inventory.cid);
            let outcome = self.serve(shutdown.as_mut()).instrument(span).await;
            match outcome {
                Ok(SessionEnd::Shutdown) => {
                    info!("Agent stopping.");
                    return AgentExit::Shutdown;
                }
                Ok(SessionEnd::Replaced { reason }) => {
                    error!(reason = %reason, "Another agent session holds this node now; stopping.");
                    return AgentExit::Replaced { reason };
                }
                Ok(SessionEnd::Reregister { reason, wait }) => {
                    info!(reason = %reason, "Registering again.");
                    if wait {
                        tokio::select! {
                            () = &mut shutdown => {
                                info!("Agent stopping.");
                                return AgentExit::Shutdown;
                            }
                            () = sleep(self.backoff.next_delay()) => {}
                        }
                    }
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    warn!(error = %e, retry_ms = delay.as_millis() as u64,
                          "Lost the scheduler; retrying.");
                    tokio::select! {
                        () = &mut shutdown => {
                            info!("Agent stopping.");
                            return AgentExit::Shutdown;
                        }
                        () = sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn serve<F: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<SessionEnd, SessionError> {
        let channel = Endpoint::from_shared(self.cfg.scheduler.clone())
            .map_err(SessionError::Connect)?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await?;
        let auth = self.auth.clone();
        let mut client = pb::agent_service_client::AgentServiceClient::with_interceptor(
            channel,
            move |mut req: Request<()>| {
                req.metadata_mut().insert("authorization", auth.clone());
                Ok(req)
            },
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let registered = client
            .register(pb::RegisterRequest {
                inventory: Some(self.inventory.clone().into()),
                agent_version: discovery::AGENT_VERSION.to_string(),
                node_credential: self.credential.clone(),
                advertise_addr: self.advertise_addr.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        if !registered.node_credential.is_empty() {
            // Without it this node cannot register again after a restart: say so loudly, but
            // keep serving, since the session itself is fine.
            match self.save_credential(&registered.node_credential) {
                Ok(()) => info!("Stored the node credential the scheduler issued."),
                Err(e) => {
                    error!(error = %e, "Could not store the node credential; this node will need an admin to register again.")
                }
            }
        }
        self.backoff.reset();
        info!(session = %registered.session_id, generation = self.inventory.generation,
              "Registered.");

        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        // The hello carries every unacknowledged exit; queued copies would only repeat them.
        self.unsent
            .retain(|m| !matches!(m.msg, Some(pb::agent_message::Msg::Exited(_))));
        let hello = pb::Hello {
            node_cid: registered.node_cid.clone(),
            session_id: registered.session_id.clone(),
            running: self.runner.running_now().iter().map(running_work).collect(),
            unacknowledged_exits: self
                .runner
                .unacknowledged_exits()
                .into_iter()
                .map(work_exited)
                .collect(),
        };
        send(&tx, agent_msg(pb::agent_message::Msg::Hello(hello))).await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        // Log requests live as long as this session.
        let mut logs = LogServer::new(tx.clone(), self.runner.clone());
        while let Some(msg) = self.unsent.pop_front() {
            send(&tx, msg).await?;
        }

        let mut heartbeat = ticker(registered.heartbeat_interval_ms, DEFAULT_HEARTBEAT);
        let mut telemetry = ticker(registered.telemetry_interval_ms, DEFAULT_TELEMETRY);
        let mut rediscover = interval(self.cfg.rediscover_every.max(Duration::from_millis(10)));
        rediscover.reset();
        let mut pod_devices = interval(self.cfg.pod_devices_every.max(Duration::from_millis(10)));
        // A new session starts from nothing: the first report goes out whatever it says.
        let mut reported_pods: Option<Vec<pb::PodGpus>> = None;
        let mut seq = 0u64;

        enum Step {
            Shutdown,
            Heartbeat,
            Telemetry,
            Rediscover,
            PodDevices,
            Work(Option<WorkEvent>),
            Inbound(Result<Option<pb::SchedulerMessage>, Status>),
        }
        loop {
            let step = tokio::select! {
                () = &mut shutdown => Step::Shutdown,
                _ = heartbeat.tick() => Step::Heartbeat,
                _ = telemetry.tick() => Step::Telemetry,
                _ = rediscover.tick() => Step::Rediscover,
                _ = pod_devices.tick(), if self.cfg.kubelet_socket.is_some() => Step::PodDevices,
                ev = self.events.recv() => Step::Work(ev),
                msg = inbound.message() => Step::Inbound(msg),
            };
            match step {
                Step::Shutdown => return Ok(SessionEnd::Shutdown),
                Step::Heartbeat => {
                    seq += 1;
                    let hb = pb::Heartbeat {
                        seq,
                        sent_unix_ms: unix_ms_now(),
                    };
                    send(&tx, agent_msg(pb::agent_message::Msg::Heartbeat(hb))).await?;
                }
                Step::Telemetry => {
                    let sample = self.telemetry(&registered.node_cid).await;
                    send(&tx, agent_msg(pb::agent_message::Msg::Telemetry(sample))).await?;
                }
                Step::Rediscover => {
                    let update = self.rediscover().await;
                    // Also retries labels an earlier attempt could not write.
                    self.label_node().await;
                    if let Some(update) = update {
                        send(&tx, agent_msg(pb::agent_message::Msg::Inventory(update))).await?;
                    }
                }
                Step::PodDevices => {
                    if let Some(pods) = self.pod_devices().await
                        && reported_pods.as_ref() != Some(&pods)
                    {
                        let report = pb::PodDevices { pods: pods.clone() };
                        send(&tx, agent_msg(pb::agent_message::Msg::PodDevices(report))).await?;
                        reported_pods = Some(pods);
                    }
                }
                Step::Work(Some(event)) => {
                    let msg = work_msg(event);
                    if tx.send(msg.clone()).await.is_err() {
                        self.unsent.push_back(msg);
                        return Err(SessionError::Closed);
                    }
                }
                Step::Work(None) => return Ok(SessionEnd::Shutdown),
                Step::Inbound(Ok(Some(msg))) => {
                    let Some(msg) = logs.take(msg) else { continue };
                    if let Some(end) = self.handle(msg) {
                        return Ok(end);
                    }
                }
                Step::Inbound(Ok(None)) => return Err(SessionError::Closed),
                Step::Inbound(Err(status))
                    if matches!(status.code(), Code::NotFound | Code::Unauthenticated) =>
                {
                    return Ok(SessionEnd::Reregister {
                        reason: status.message().to_string(),
                        wait: true,
                    });
                }
                Step::Inbound(Err(status)) => return Err(status.into()),
            }
        }
    }

    /// The facts for a replica's rendezvous environment: the scheduler's, and this node's
    /// NICs and interface. `None` from a scheduler that sent no peers.
    fn rendezvous(&self, a: &pb::Assignment) -> Option<Rendezvous> {
        if a.peers.is_empty() {
            return None;
        }
        let peers: Vec<Peer> = a
            .peers
            .iter()
            .map(|p| Peer {
                replica: p.replica,
                address: p.address.clone(),
                gpus: p.gpus,
            })
            .collect();
        let own_address = peers
            .iter()
            .find(|p| p.replica == a.replica)
            .map(|p| p.address.as_str())
            .unwrap_or_default();
        Some(Rendezvous {
            job_name: a.job_name.clone(),
            node_cid: self.inventory.cid.to_string(),
            socket_ifname: interface_holding(own_address),
            ib_hcas: gdr_local_nics(&self.inventory, &a.gpu_uuids),
            master_port: u16::try_from(a.master_port).unwrap_or(0),
            peers,
        })
    }

    /// Acts on one scheduler message; `Some` ends the session.
    fn handle(&mut self, msg: pb::SchedulerMessage) -> Option<SessionEnd> {
        match msg.msg {
            Some(pb::scheduler_message::Msg::Assign(a)) => {
                info!(job = %a.job_id, replica = a.replica, attempt = a.attempt,
                      gpus = %a.gpu_uuids.join(","), "Assignment received.");
                let rendezvous = self.rendezvous(&a);
                self.runner.start(Assignment {
                    job_id: a.job_id,
                    replica: a.replica,
                    attempt: a.attempt,
                    command: a.command,
                    env: a.env.into_iter().collect(),
                    gpu_uuids: a.gpu_uuids,
                    rendezvous,
                });
                None
            }
            Some(pb::scheduler_message::Msg::Cancel(c)) => {
                let grace = if c.grace_period_ms == 0 {
                    self.cfg.default_grace
                } else {
                    Duration::from_millis(u64::from(c.grace_period_ms))
                };
                self.runner.cancel(&c.job_id, c.replica, c.attempt, grace);
                None
            }
            Some(pb::scheduler_message::Msg::HeartbeatAck(ack)) => {
                debug!(seq = ack.seq, "Heartbeat acknowledged.");
                None
            }
            Some(pb::scheduler_message::Msg::Reregister(r)) => Some(SessionEnd::Reregister {
                reason: r.reason,
                wait: false,
            }),
            Some(pb::scheduler_message::Msg::Replaced(r)) => {
                Some(SessionEnd::Replaced { reason: r.reason })
            }
            Some(pb::scheduler_message::Msg::ExitAck(ack)) => {
                debug!(job = %ack.job_id, replica = ack.replica, attempt = ack.attempt,
                       "Exit acknowledged.");
                self.runner
                    .acknowledge(&ack.job_id, ack.replica, ack.attempt);
                None
            }
            // Answered by the session's `LogServer` before they get here.
            Some(
                pb::scheduler_message::Msg::LogRequest(_)
                | pb::scheduler_message::Msg::LogAck(_)
                | pb::scheduler_message::Msg::LogCancel(_),
            ) => None,
            None => {
                warn!("Empty scheduler message ignored.");
                None
            }
        }
    }

    /// Labels the Kubernetes Node after the inventory, if labelling is on and the labels
    /// changed; a failure is logged and retried at the next discovery.
    async fn label_node(&mut self) {
        let Some(labeler) = self.labeler.as_mut() else {
            return;
        };
        if let Err(e) = labeler.apply(&self.inventory).await {
            warn!(error = %e, "Could not label the Kubernetes Node; trying again later.");
        }
    }

    /// The GPUs kubelet gave to this node's pods; `None` when kubelet cannot be asked (the
    /// next tick tries again).
    async fn pod_devices(&self) -> Option<Vec<pb::PodGpus>> {
        let socket = self.cfg.kubelet_socket.as_ref()?;
        match crate::kubelet::pod_gpus(socket, &self.cfg.gpu_resource).await {
            Ok(pods) => Some(pods),
            Err(e) => {
                warn!(error = %e, "Could not read which GPUs kubelet gave to pods.");
                None
            }
        }
    }

    /// Discovers again; returns an update with a bumped generation when the facts changed.
    async fn rediscover(&mut self) -> Option<pb::InventoryUpdate> {
        let probe = Arc::clone(&self.probe);
        let root = self.root.clone();
        let cfg = self.cfg.clone();
        let found = tokio::task::spawn_blocking(move || discover_now(probe.as_ref(), &root, &cfg))
            .await
            .ok()?;
        if same_facts(&found, &self.inventory) {
            return None;
        }
        let mut next = found;
        next.generation = self.inventory.generation + 1;
        info!(generation = next.generation, "Inventory changed.");
        self.inventory = next;
        if let Err(e) = self.save_inventory() {
            warn!(error = %e, "Could not record the inventory.");
        }
        Some(pb::InventoryUpdate {
            inventory: Some(self.inventory.clone().into()),
        })
    }

    async fn telemetry(&self, node_cid: &str) -> pb::Telemetry {
        let probe = Arc::clone(&self.probe);
        let root = self.root.clone();
        let (gpus, ports) = tokio::task::spawn_blocking(move || {
            let mut warnings = Warnings::default();
            (probe.sample(), root.port_samples(&mut warnings))
        })
        .await
        .unwrap_or_default();
        let running = self.runner.running_now();
        let job_of = |pid: u32| {
            running
                .iter()
                .find(|r| r.pid == pid)
                .map(|r| r.job_id.clone())
                .unwrap_or_default()
        };
        pb::Telemetry {
            node_cid: node_cid.to_string(),
            sampled_unix_ms: unix_ms_now(),
            gpus: gpus
                .into_iter()
                .map(|g| pb::GpuTelemetry {
                    uuid: g.uuid,
                    index: g.index,
                    utilization_percent: g.utilization_percent,
                    memory_utilization_percent: g.memory_utilization_percent,
                    memory_used_mib: g.memory_used_mib,
                    power_mw: g.power_mw,
                    temperature_c: g.temperature_c,
                    health: pb::Health::from(g.health) as i32,
                    events: vec![],
                    nvlinks: g
                        .nvlinks
                        .iter()
                        .map(|l| pb::NvLinkCounters {
                            link: l.link,
                            active: l.active,
                            tx_bytes: l.tx_bytes,
                            rx_bytes: l.rx_bytes,
                        })
                        .collect(),
                    processes: g
                        .processes
                        .iter()
                        .map(|(pid, mib)| pb::GpuProcess {
                            pid: *pid,
                            used_memory_mib: *mib,
                            job_id: job_of(*pid),
                        })
                        .collect(),
                })
                .collect(),
            nic_ports: ports
                .into_iter()
                .map(|p| pb::NicPortTelemetry {
                    nic: p.nic,
                    port: p.port,
                    state: pb::PortState::from(p.state) as i32,
                    rate_gbps: p.rate_gbps,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                })
                .collect(),
        }
    }
}

/// Discovery with the configured CID and fabric position; warnings are logged as found.
pub fn discover_now(probe: &dyn GpuProbe, root: &SysfsRoot, cfg: &AgentConfig) -> NodeInventory {
    discovery::discover(probe, root, cfg.node_cid.clone(), cfg.fabric.clone()).inventory
}

fn same_facts(a: &NodeInventory, b: &NodeInventory) -> bool {
    let mut b = b.clone();
    b.generation = a.generation;
    *a == b
}

fn ticker(ms: u32, default: Duration) -> Interval {
    let period = if ms == 0 {
        default
    } else {
        Duration::from_millis(u64::from(ms))
    };
    let mut t = interval(period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

async fn send(
    tx: &mpsc::Sender<pb::AgentMessage>,
    msg: pb::AgentMessage,
) -> Result<(), SessionError> {
    tx.send(msg).await.map_err(|_| SessionError::Closed)
}

fn agent_msg(msg: pb::agent_message::Msg) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

fn running_work(r: &RunningRecord) -> pb::RunningWork {
    pb::RunningWork {
        job_id: r.job_id.clone(),
        replica: r.replica,
        pid: r.pid,
        gpu_uuids: r.gpu_uuids.clone(),
        started_unix_ms: r.started_unix_ms,
        attempt: r.attempt,
    }
}

fn work_msg(event: WorkEvent) -> pb::AgentMessage {
    agent_msg(match event {
        WorkEvent::Started(r) => pb::agent_message::Msg::Started(pb::WorkStarted {
            job_id: r.job_id,
            replica: r.replica,
            pid: r.pid,
            started_unix_ms: r.started_unix_ms,
            attempt: r.attempt,
        }),
        WorkEvent::Exited {
            job_id,
            replica,
            attempt,
            exit_code,
            signal,
            message,
            ended_unix_ms,
        } => pb::agent_message::Msg::Exited(work_exited(RecordedExit {
            job_id,
            replica,
            attempt,
            exit_code,
            signal,
            message,
            ended_unix_ms,
        })),
    })
}

fn work_exited(e: RecordedExit) -> pb::WorkExited {
    pb::WorkExited {
        job_id: e.job_id,
        replica: e.replica,
        exit_code: e.exit_code,
        signal: e.signal,
        message: e.message,
        ended_unix_ms: e.ended_unix_ms,
        attempt: e.attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_is_seeded() {
        let delays = |seed| {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let a = delays(7);
        assert_eq!(a, delays(7), "same seed, same delays");
        assert_ne!(a, delays(8), "another seed jitters differently");
        for (i, d) in a.iter().enumerate() {
            let full = Duration::from_millis(100 * (1 << i)).min(Duration::from_secs(2));
            assert!(
                *d >= full / 2 && *d <= full,
                "attempt {i}: {d:?} within [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
