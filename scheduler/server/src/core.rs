//! The scheduler core: one thread owns the cluster model, the job table and the store.
//!
//! Every mutation arrives as a command through [`CoreHandle`] and is applied in order, so the in-memory cluster,
//! the database and what agents are told never disagree. Commands that arrive together are
//! applied together: concurrent submits share one transaction (one fsync), and one scheduling
//! pass follows each batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use suanli_engine::cluster::{Cluster, NodeId};
use suanli_engine::domain::DomainCatalog;
use suanli_engine::job::JobId;
use suanli_engine::links::LinkState;
use suanli_engine::policy::PolicyKind;
use suanli_engine::queue::{QueueConfig, Scheduler, WaitReason};
use suanli_engine::quota::Quotas;
use suanli_engine::workload::SingleReplicaPolicy;
use suanli_engine::{Cid, JobSpec, JobState, NodeInventory};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

mod agents;
mod cluster;
mod handle;
mod jobs;
mod nodes;
mod pods;
mod schedule;
mod views;

pub use handle::CoreHandle;
pub use jobs::JobUpdate;
pub use nodes::Registration;
pub use pods::{BoundPod, NodeVerdict, PodGpus, PodJobView};

use crate::auth::Identity;
use crate::clock::Clock;
use crate::placement::{PodRef, StoredPlacement};
use crate::store::{EventRecord, JobRecord, NewJob, Store, StoreError};

/// Longest stretch the core spends placing before it looks at new commands again.
const SCHEDULING_SLICE: Duration = Duration::from_millis(20);
/// Most commands applied in one batch; bounds the latency of the first one in it.
const MAX_BATCH: usize = 1024;
/// Grace period between SIGTERM and SIGKILL when the scheduler stops a replica.
pub const CANCEL_GRACE_MS: u32 = 10_000;

/// What the scheduler tells one agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    Assign(Box<Assignment>),
    Cancel {
        job_id: JobId,
        replica: u32,
        attempt: u32,
        grace_period_ms: u32,
    },
    /// The scheduler does not know this session any more: register again.
    Reregister {
        reason: String,
    },
    /// Another session holds the node now; this one is closed and gets nothing more.
    Replaced {
        reason: String,
    },
    /// The store holds this exit: the agent may forget it. Sent only after the commit.
    ExitAck {
        job_id: JobId,
        replica: u32,
        attempt: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub job_id: JobId,
    pub replica: u32,
    pub attempt: u32,
    pub spec: JobSpec,
    pub gpu_uuids: Vec<String>,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    /// Every placed replica of this attempt, in replica order, for the rendezvous.
    pub peers: Vec<AssignmentPeer>,
    /// The rendezvous port on replica 0's node, the same for every replica of the attempt.
    pub master_port: u16,
}

/// One replica of a job as the other replicas see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentPeer {
    pub replica: u32,
    /// The host its node advertises.
    pub address: String,
    pub gpus: u32,
}

/// One agent session on one node: what every report from that session carries, so the core
/// can ignore a session that no longer holds the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSession {
    pub node: Cid,
    pub session_id: String,
}

/// A replica an agent reports as still running when its session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningReplica {
    pub job_id: JobId,
    pub replica: u32,
}

/// An exit an agent saw and the scheduler has not acknowledged, reported when its session
/// opens (the scheduler may have been down when the replica ended).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedExit {
    pub job_id: JobId,
    pub replica: u32,
    pub attempt: u32,
    pub exit_code: i32,
    pub message: String,
}

/// Why the core refused or could not do what it was asked. The text is what callers see;
/// `grpc.rs` decides the status code each one answers with.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No such job, or one the caller may not see.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    #[error("job {id} already {state}")]
    JobEnded { id: JobId, state: JobState },
    #[error("node {0} not found")]
    NodeNotFound(Cid),
    #[error("node {0} is not registered")]
    NodeNotRegistered(Cid),
    /// A bad value in a node's inventory, named by its field.
    #[error("inventory.{0}")]
    InvalidInventory(String),
    #[error("node name {name:?} is already registered as {other}; node names must be unique")]
    NodeNameTaken { name: String, other: Cid },
    #[error(
        "node {0} is held by a connected agent; a second agent cannot register it without the \
         node credential"
    )]
    NodeHeld(Cid),
    #[error(
        "node {0} is already registered: present its node credential (kept in the agent's data \
         directory), or have an admin remove the node (`suanli node remove {0}`)"
    )]
    CredentialRequired(Cid),
    #[error("session {session} of node {node} is unknown; register again")]
    UnknownSession { node: Cid, session: String },
    #[error("session {session} of node {node} is already open")]
    SessionAlreadyOpen { node: Cid, session: String },
    #[error("job {0} holds no placement")]
    NoPlacement(JobId),
    #[error("job {0} is not a live pod's job")]
    NotAPodJob(JobId),
    /// A pod cannot be bound to the node kube-scheduler chose.
    #[error("pod {pod} cannot go to {node}: {why}")]
    PodRefused {
        pod: String,
        node: String,
        why: String,
    },
    /// Other bad input, with the field it is about.
    #[error("{0}")]
    InvalidArgument(String),
    /// Other requests the current state does not allow.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the scheduler core has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, CoreError>>;

/// Per-GPU usage, for node listings.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuUsageView {
    pub uuid: String,
    pub index: u32,
    pub model: String,
    pub memory_mib: u64,
    pub milli_used: u32,
    pub memory_used: u64,
    pub exclusive: bool,
    /// Jobs holding a grant on the GPU, with their tenants (a tenant sees only its own).
    pub jobs: Vec<(JobId, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub inventory: NodeInventory,
    pub cordoned: bool,
    pub cordon_reason: String,
    pub draining: bool,
    pub lost: bool,
    pub connected: bool,
    /// Why the node is quarantined: its inventory is outside the engine's limits.
    pub invalid: Option<String>,
    pub last_seen_ms: i64,
    pub cpu_used: u64,
    pub memory_used: u64,
    pub gpus: Vec<GpuUsageView>,
}

/// How many nodes refused a pending job for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalCount {
    /// The refusal's stable key on the wire (`fewer_free_gpus`).
    pub key: &'static str,
    pub nodes: u32,
    /// The engine's words for it, with the request's numbers where it has them.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub state: JobState,
    pub summary: String,
    /// How many nodes refused a pending job, by refusal.
    pub reasons: Vec<RefusalCount>,
    pub nodes_considered: u32,
    /// A cause above the nodes (quota), when that is what holds the job.
    pub queue_reason: String,
    pub placement: Option<StoredPlacement>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsView {
    pub jobs_by_state: BTreeMap<String, u64>,
    pub pending: u64,
    pub connected_agents: u64,
    pub nodes: u64,
    /// GPU model → (used milli, total milli).
    pub gpu_milli_by_model: BTreeMap<String, (u64, u64)>,
    /// Seconds from submit to placement, one per placement since the last read.
    pub placement_latencies_s: Vec<f64>,
}

// Commands are built once and moved through one channel; boxing the large ones buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Command {
    Submit {
        job: NewJob,
        reply: Reply<JobRecord>,
    },
    Cancel {
        id: JobId,
        by: Identity,
        reason: String,
        reply: Reply<JobRecord>,
    },
    Update {
        id: JobId,
        by: Identity,
        update: JobUpdate,
        reply: Reply<JobRecord>,
    },
    Register {
        inventory: Box<NodeInventory>,
        /// The node credential the agent presented; empty when it has none.
        credential: String,
        /// The checked host the node's replicas reach each other at.
        advertise_addr: String,
        by: Identity,
        reply: Reply<Registration>,
    },
    SessionOpen {
        node: Cid,
        session_id: String,
        running: Vec<RunningReplica>,
        exits: Vec<ReportedExit>,
        tx: mpsc::UnboundedSender<AgentCommand>,
        reply: Reply<()>,
    },
    SessionClosed {
        node: Cid,
        session_id: String,
    },
    Heartbeat {
        node: Cid,
        session_id: String,
    },
    InventoryUpdate {
        node: Cid,
        session_id: String,
        inventory: Box<NodeInventory>,
    },
    WorkStarted {
        node: Cid,
        session_id: String,
        job_id: JobId,
        replica: u32,
        attempt: u32,
    },
    WorkExited {
        node: Cid,
        session_id: String,
        job_id: JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: String,
    },
    Cordon {
        node: Cid,
        cordoned: bool,
        reason: String,
        reply: Reply<NodeView>,
    },
    Drain {
        node: Cid,
        reason: String,
        /// Between SIGTERM and SIGKILL for each evicted replica; 0 for the default.
        grace_ms: u32,
        reply: Reply<Vec<JobId>>,
    },
    Explain {
        id: JobId,
        by: Identity,
        reply: Reply<Explanation>,
    },
    Nodes {
        reply: Reply<Vec<NodeView>>,
    },
    Metrics {
        reply: Reply<MetricsView>,
    },
    /// The extender's filter and prioritize: how each named node could take a pod.
    ScorePod {
        spec: Box<JobSpec>,
        nodes: Vec<String>,
        reply: Reply<Vec<NodeVerdict>>,
    },
    /// The extender's bind: hold GPUs on `node` for the pod.
    BindPod {
        pod: PodRef,
        spec: Box<JobSpec>,
        node: String,
        reply: Reply<BoundPod>,
    },
    /// A pod's job ends: the pod finished or is gone, or its binding failed.
    EndPod {
        job_id: JobId,
        state: JobState,
        reason: String,
        message: String,
        reply: Reply<()>,
    },
    /// The extender's preempt: nodes where the pod fits once the named pods are evicted.
    PreemptPod {
        spec: Box<JobSpec>,
        /// Node name, and the UIDs of the pods kube-scheduler would evict there.
        candidates: Vec<(String, Vec<String>)>,
        reply: Reply<Vec<NodeVerdict>>,
    },
    PodJobs {
        reply: Reply<Vec<PodJobView>>,
    },
    /// What kubelet gave the pods on an agent's node.
    PodDevices {
        node: Cid,
        session_id: String,
        pods: Vec<PodGpus>,
    },
    /// Forget a node that is gone; with `force`, even while work is bound to it.
    RemoveNode {
        node: Cid,
        force: bool,
        reply: Reply<Vec<JobId>>,
    },
    Shutdown,
}

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub policy: String,
    pub seed: u64,
    pub heartbeat_timeout: Duration,
    pub max_attempts: u32,
    /// GPU quota per tenant and model.
    pub quotas: Quotas,
    /// Domain prices and links, for the gang planner.
    pub catalog: DomainCatalog,
    pub preemption: PreemptionConfig,
    /// Where the core reads the time.
    pub clock: Arc<dyn Clock>,
}

impl CoreConfig {
    /// The queue the daemon runs: preemption as configured, backfill behind the first
    /// blocked job, jobs passing one another when they fit.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            preemption: self.preemption.enabled,
            max_victims: self.preemption.max_victims,
            min_runtime_s: self.preemption.min_runtime_s,
            ..QueueConfig::default()
        }
    }
}

/// When a pending job may stop running ones to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptionConfig {
    pub enabled: bool,
    /// A job runs at least this long before it may be preempted.
    pub min_runtime_s: u64,
    /// Most victims one job may preempt (bounds the search).
    pub max_victims: usize,
}

impl Default for PreemptionConfig {
    fn default() -> Self {
        PreemptionConfig {
            enabled: true,
            min_runtime_s: 300,
            max_victims: 16,
        }
    }
}

struct NodeEntry {
    inventory: NodeInventory,
    cordoned: bool,
    cordon_reason: String,
    draining: bool,
    lost: bool,
    last_seen: Instant,
    /// The session id the last registration was given; a hello must present it.
    issued: Option<String>,
    session: Option<(String, mpsc::UnboundedSender<AgentCommand>)>,
    /// SHA-256 of the node credential; only its holder (or an admin) may register the node.
    credential_sha256: Option<String>,
    /// Why the engine could not model the node's inventory; such a node is never placed on.
    invalid: Option<String>,
    /// The host the node's replicas reach each other at, from its last registration; empty
    /// until its agent registers with this scheduler process.
    advertise_addr: String,
}

impl NodeEntry {
    /// Whether new work may go here: not cordoned, and an agent is connected to run it.
    fn schedulable(&self) -> bool {
        !self.cordoned && self.session.is_some()
    }

    /// Whether `session_id` is the node's open session.
    fn holds_session(&self, session_id: &str) -> bool {
        self.session.as_ref().is_some_and(|(s, _)| s == session_id)
    }
}

struct LiveJob {
    spec: JobSpec,
    state: JobState,
    attempts: u32,
    created_ms: i64,
    placement: Option<StoredPlacement>,
    /// Why the last pass left it waiting.
    wait: Option<WaitReason>,
}

/// What waits for the open store batch to commit.
#[derive(Default)]
struct Outbox {
    events: Vec<EventRecord>,
    agents: Vec<(Cid, AgentCommand)>,
}

struct Core {
    config: CoreConfig,
    in_batch: std::cell::Cell<bool>,
    outbox: std::cell::RefCell<Outbox>,
    /// Nodes changed since the engine's cluster was built; rebuilt once per batch.
    cluster_dirty: bool,
    store: Store,
    events: broadcast::Sender<EventRecord>,
    nodes: BTreeMap<Cid, NodeEntry>,
    /// The engine's queue: the cluster model with what every live job holds, the quota use,
    /// the pending jobs, and the policy that places single replicas. Every placement,
    /// preemption and wait is its decision.
    queue: Scheduler,
    /// Cluster positions of the nodes in the queue's cluster, by CID.
    node_ids: HashMap<Cid, NodeId>,
    jobs: HashMap<JobId, LiveJob>,
    latencies: Vec<f64>,
}

/// Starts the core on its own thread, loading state from `store`.
pub fn start(
    store: Store,
    config: CoreConfig,
) -> Result<(CoreHandle, std::thread::JoinHandle<()>), CoreError> {
    let (tx, rx) = std_mpsc::channel();
    let (events, _) = broadcast::channel(4096);
    let queue = new_queue(&config)?;
    let mut store = store;
    store.set_clock(Arc::clone(&config.clock));
    let mut core = Core {
        config,
        in_batch: std::cell::Cell::new(false),
        outbox: std::cell::RefCell::new(Outbox::default()),
        cluster_dirty: false,
        store,
        events: events.clone(),
        nodes: BTreeMap::new(),
        queue,
        node_ids: HashMap::new(),
        jobs: HashMap::new(),
        latencies: Vec::new(),
    };
    core.load()?;
    let handle = CoreHandle { tx, events };
    let thread = std::thread::Builder::new()
        .name("suanli-core".into())
        .spawn(move || core.run(rx))
        .map_err(|e| CoreError::FailedPrecondition(format!("cannot start core thread: {e}")))?;
    Ok((handle, thread))
}

impl Core {
    /// Now, in milliseconds since the epoch, by the configured clock.
    fn now_ms(&self) -> i64 {
        self.config.clock.now_ms()
    }

    /// Now, monotonic, by the configured clock.
    fn instant(&self) -> Instant {
        self.config.clock.instant()
    }

    /// Rebuilds memory from the store: nodes, live jobs and the resources they hold.
    fn load(&mut self) -> Result<(), CoreError> {
        let now = self.instant();
        for record in self.store.nodes()? {
            self.nodes.insert(
                record.inventory.cid.clone(),
                NodeEntry {
                    inventory: record.inventory,
                    cordoned: record.cordoned,
                    cordon_reason: record.cordon_reason,
                    draining: record.draining,
                    lost: record.lost,
                    // Agents get a full timeout to come back after a restart.
                    last_seen: now,
                    issued: None,
                    session: None,
                    credential_sha256: record.credential_sha256,
                    invalid: None,
                    advertise_addr: String::new(),
                },
            );
        }
        self.load_jobs()?;
        self.rebuild_cluster();
        info!(
            nodes = self.nodes.len(),
            live_jobs = self.jobs.len(),
            pending = self.queue.pending().count(),
            "Loaded state."
        );
        Ok(())
    }

    /// Loads the jobs that are not finished, with their placements (resources are claimed
    /// when the cluster is next built).
    fn load_jobs(&mut self) -> Result<(), CoreError> {
        let live = self.store.jobs(&crate::store::JobFilter {
            states: vec![
                JobState::Pending,
                JobState::Placed,
                JobState::Running,
                JobState::Preempted,
            ],
            ..Default::default()
        })?;
        for record in live {
            let placement = match &record.placement {
                Some(json) => Some(
                    serde_json::from_value::<StoredPlacement>(json.clone()).map_err(|source| {
                        StoreError::Corrupt {
                            what: format!("placement of job {}", record.id),
                            source,
                        }
                    })?,
                ),
                None => None,
            };
            let waits = record.state == JobState::Pending || record.state == JobState::Preempted;
            if !waits {
                self.remember(&record.spec);
            }
            let id = record.id.clone();
            self.jobs.insert(
                id.clone(),
                LiveJob {
                    spec: record.spec,
                    state: record.state,
                    attempts: record.attempts,
                    created_ms: record.created_ms,
                    placement,
                    wait: None,
                },
            );
            if waits {
                self.enqueue(&id)?;
            }
        }
        Ok(())
    }

    /// After a failed batch commit, memory may hold what the database does not: forget the
    /// jobs and take them again from the store.
    fn reload_jobs(&mut self) {
        self.jobs.clear();
        match new_queue(&self.config) {
            Ok(queue) => self.queue = queue,
            Err(e) => warn!(error = %e, "Could not rebuild the queue."),
        }
        if let Err(e) = self.load_jobs() {
            warn!(error = %e, "Could not reload jobs after a failed commit.");
        }
        self.cluster_dirty = true;
    }

    fn has_scheduling_work(&self) -> bool {
        self.queue.has_work()
    }

    /// One scheduling slice inside one store batch. Events and agent commands wait in the
    /// outbox until the batch is durable, so nobody hears of a placement a crash could undo.
    fn schedule_batch(&mut self, budget: Duration) -> bool {
        if !self.has_scheduling_work() {
            return false;
        }
        if let Err(e) = self.store.begin_batch() {
            warn!(error = %e, "Could not open a store batch; scheduling waits.");
            return true;
        }
        self.in_batch.set(true);
        let more = self.schedule(budget);
        self.in_batch.set(false);
        let outbox = std::mem::take(&mut *self.outbox.borrow_mut());
        match self.store.commit_batch() {
            Ok(()) => {
                for event in outbox.events {
                    let _ = self.events.send(event);
                }
                for (node, command) in outbox.agents {
                    self.send_to(&node, command);
                }
                more
            }
            Err(e) => {
                warn!(error = %e, "A scheduling batch did not commit; reloading jobs from the store.");
                self.store.rollback_batch();
                self.reload_jobs();
                true
            }
        }
    }

    /// Publishes a job event now, or when the open batch commits.
    fn publish(&self, event: EventRecord) {
        if self.in_batch.get() {
            self.outbox.borrow_mut().events.push(event);
        } else {
            let _ = self.events.send(event);
        }
    }

    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        let tick = Duration::from_millis(500);
        let mut last_tick = self.instant();
        let mut backlog = false;
        loop {
            // With scheduling work left over, only look for commands; otherwise wait for one.
            let first = if backlog {
                match rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(std_mpsc::TryRecvError::Empty) => None,
                    Err(std_mpsc::TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.recv_timeout(tick) {
                    Ok(c) => Some(c),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut batch: Vec<Command> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if batch.iter().any(|c| matches!(c, Command::Shutdown)) {
                info!("Core stopping.");
                return;
            }
            self.apply_batch(batch);
            if last_tick.elapsed() >= tick {
                last_tick = self.instant();
                self.check_heartbeats();
                self.check_time_limits();
            }
            // With no jobs nothing depends on the cluster yet: a burst of registrations then
            // costs one rebuild when the first job arrives, not one per agent.
            if !self.jobs.is_empty() {
                self.ensure_cluster();
            }
            backlog = self.schedule_batch(SCHEDULING_SLICE);
        }
    }

    fn apply_batch(&mut self, batch: Vec<Command>) {
        let mut submits = Vec::new();
        for command in batch {
            match command {
                Command::Submit { job, reply } => submits.push((job, reply)),
                other => {
                    // Submits stay ahead of later commands about the same jobs.
                    self.flush_submits(&mut submits);
                    self.apply(other);
                }
            }
        }
        self.flush_submits(&mut submits);
    }

    fn flush_submits(&mut self, submits: &mut Vec<(NewJob, Reply<JobRecord>)>) {
        if submits.is_empty() {
            return;
        }
        let jobs: Vec<NewJob> = submits.iter().map(|(j, _)| j.clone()).collect();
        match self.store.insert_jobs_with_events(&jobs) {
            Ok(records) => {
                for ((_, reply), (record, submitted)) in submits.drain(..).zip(records) {
                    if let Some(event) = submitted
                        && !self.jobs.contains_key(&record.id)
                    {
                        self.jobs.insert(
                            record.id.clone(),
                            LiveJob {
                                spec: record.spec.clone(),
                                state: JobState::Pending,
                                attempts: 0,
                                created_ms: record.created_ms,
                                placement: None,
                                wait: None,
                            },
                        );
                        let _ = self.events.send(event);
                        if let Err(e) = self.enqueue(&record.id) {
                            warn!(job = %record.id, error = %e, "Could not queue a submitted job.");
                        }
                    }
                    let _ = reply.send(Ok(record));
                }
            }
            Err(e) => {
                warn!(error = %e, jobs = submits.len(), "Could not store submitted jobs.");
                let message = e.to_string();
                for (_, reply) in submits.drain(..) {
                    let _ = reply.send(Err(CoreError::FailedPrecondition(format!(
                        "job not stored: {message}"
                    ))));
                }
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Submit { .. } => unreachable!("submits are batched by apply_batch"),
            Command::Cancel {
                id,
                by,
                reason,
                reply,
            } => {
                let _ = reply.send(self.cancel(&id, &by, &reason));
            }
            Command::Update {
                id,
                by,
                update,
                reply,
            } => {
                let _ = reply.send(self.update(&id, &by, update));
            }
            Command::Register {
                inventory,
                credential,
                advertise_addr,
                by,
                reply,
            } => {
                let _ = reply.send(self.register(*inventory, &credential, advertise_addr, &by));
            }
            Command::SessionOpen {
                node,
                session_id,
                running,
                exits,
                tx,
                reply,
            } => {
                let _ = reply.send(self.open_session(&node, session_id, running, exits, tx));
            }
            Command::SessionClosed { node, session_id } => {
                if self.session_is_current(&node, &session_id) {
                    self.close_session(&node);
                    info!(node = %node, "Agent session closed.");
                }
            }
            Command::Heartbeat { node, session_id } => {
                let now = self.instant();
                if let Some(entry) = self.nodes.get_mut(&node)
                    && entry.holds_session(&session_id)
                {
                    entry.last_seen = now;
                }
            }
            // What an agent reports counts only from the session that holds its node: a
            // replaced or stale session cannot end, start or reshape anything.
            Command::InventoryUpdate {
                node,
                session_id,
                inventory,
            } => {
                if !self.session_is_current(&node, &session_id) {
                    debug!(node = %node, "Ignoring an inventory from a session that is not current.");
                } else if let Err(e) = self.update_inventory(&node, *inventory) {
                    warn!(node = %node, error = %e, "Rejected an inventory update.");
                }
            }
            Command::WorkStarted {
                node,
                session_id,
                job_id,
                replica,
                attempt,
            } => {
                if self.session_is_current(&node, &session_id) {
                    self.work_started(&node, &job_id, replica, attempt);
                }
            }
            Command::WorkExited {
                node,
                session_id,
                job_id,
                replica,
                attempt,
                exit_code,
                message,
            } => {
                if self.session_is_current(&node, &session_id) {
                    self.work_exited(&node, &job_id, replica, attempt, exit_code, &message);
                } else {
                    warn!(node = %node, job = %job_id, "Ignoring a work exit from a session that is not current.");
                }
            }
            Command::Cordon {
                node,
                cordoned,
                reason,
                reply,
            } => {
                let _ = reply.send(self.cordon(&node, cordoned, &reason, false));
            }
            Command::Drain {
                node,
                reason,
                grace_ms,
                reply,
            } => {
                let grace_ms = if grace_ms == 0 {
                    CANCEL_GRACE_MS
                } else {
                    grace_ms
                };
                let _ = reply.send(self.drain(&node, &reason, grace_ms));
            }
            Command::Explain { id, by, reply } => {
                self.ensure_cluster();
                let _ = reply.send(self.explain(&id, &by));
            }
            Command::Nodes { reply } => {
                self.ensure_cluster();
                let _ = reply.send(Ok(self.node_views()));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Command::ScorePod { spec, nodes, reply } => {
                let _ = reply.send(self.score_pod(&spec, &nodes));
            }
            Command::BindPod {
                pod,
                spec,
                node,
                reply,
            } => {
                let _ = reply.send(self.bind_pod(&pod, *spec, &node));
            }
            Command::EndPod {
                job_id,
                state,
                reason,
                message,
                reply,
            } => {
                let _ = reply.send(self.end_pod(&job_id, state, &reason, &message));
            }
            Command::PreemptPod {
                spec,
                candidates,
                reply,
            } => {
                let _ = reply.send(self.preempt_pod(&spec, &candidates));
            }
            Command::PodJobs { reply } => {
                let _ = reply.send(Ok(self.pod_jobs()));
            }
            Command::PodDevices {
                node,
                session_id,
                pods,
            } => {
                if self.session_is_current(&node, &session_id) {
                    self.correct_pod_gpus(&node, &pods);
                }
            }
            Command::RemoveNode { node, force, reply } => {
                let _ = reply.send(self.remove_node(&node, force));
            }
            Command::Shutdown => {}
        }
    }

    // ---- jobs -------------------------------------------------------------------------
}

/// An empty queue with the configured quotas, preemption and single-replica policy.
fn new_queue(config: &CoreConfig) -> Result<Scheduler, CoreError> {
    let policy_kind: PolicyKind = config
        .policy
        .parse()
        .map_err(|e| CoreError::InvalidArgument(format!("policy {:?}: {e}", config.policy)))?;
    let cluster = Cluster::from_inventories(&[]).expect("an empty cluster is valid");
    let mut queue = Scheduler::new(
        cluster,
        LinkState::new(),
        config.catalog.clone(),
        config.quotas.clone(),
        config.queue_config(),
    );
    queue.set_single_replica_policy(SingleReplicaPolicy::new(policy_kind, config.seed));
    Ok(queue)
}

/// A time limit in milliseconds, saturating rather than overflowing.
fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}
