//! The scheduler core: one thread owns the cluster model, the job table and the store.
//!
//! Every mutation arrives as a [`Command`] and is applied in order, so the in-memory cluster,
//! the database and what agents are told never disagree. Commands that arrive together are
//! applied together: concurrent submits share one transaction (one fsync), and one scheduling
//! pass follows each batch.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::Arc;
use suanli_engine::cluster::{AllocationId, Claim, Cluster, GpuGrant, NodeId};
use suanli_engine::explain::{ScoreBreakdown, Unplaceable};
use suanli_engine::job::JobId;

use suanli_engine::domain::DomainCatalog;
use suanli_engine::fgd::{DEFAULT_POPULARITY_PCT, MixShape, WorkloadMix};
use suanli_engine::gang::{
    FabricIndex, GangOptions, GangPlacement, GangRequest, GangWait, place_gang,
};
use suanli_engine::links::LinkState;
use suanli_engine::policy::{Policy, PolicyKind, place};
use suanli_engine::preempt::{Preemptor, VictimKind, VictimView, candidates, reclaimable};
use suanli_engine::queue::{WaitReason, admit};
use suanli_engine::quota::{QuotaVerdict, Quotas, Usage};
use suanli_engine::request::Request;
use suanli_engine::{Cid, GpuModel, JobSpec, JobState, MigProfile, NodeInventory};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

mod nodes;
mod pods;

pub use nodes::Registration;
pub use pods::{BoundPod, NodeVerdict, PodGpus, PodJobView};

use crate::auth::Identity;
use crate::placement::{GrantRecord, PodRef, ReplicaSlot, ScoreItem, StoredPlacement};
use crate::store::{EventRecord, JobRecord, NewJob, Store, StoreError, now_ms};

/// Longest stretch the core spends placing before it looks at new commands again.
const SCHEDULING_SLICE: Duration = Duration::from_millis(20);
/// How many recent requests make up FGD's expected workload.
const RECENT_WINDOW: usize = 2000;
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
}

/// A replica an agent reports as still running when its session opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningReplica {
    pub job_id: JobId,
    pub replica: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("the scheduler core has stopped")]
    Stopped,
}

impl From<CoreError> for tonic::Status {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(m) => tonic::Status::not_found(m),
            CoreError::AlreadyExists(m) => tonic::Status::already_exists(m),
            CoreError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            CoreError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            CoreError::PermissionDenied(m) => tonic::Status::permission_denied(m),
            CoreError::Store(StoreError::JobNotFound(id)) => {
                tonic::Status::not_found(format!("job {id} not found"))
            }
            CoreError::Store(e) => {
                warn!(error = %e, "Store failure.");
                tonic::Status::internal(format!("store: {e}"))
            }
            CoreError::Stopped => tonic::Status::unavailable("the scheduler is shutting down"),
        }
    }
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

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub state: JobState,
    pub summary: String,
    /// Per-reason node counts for a pending job: (reason key, node count, message).
    pub reasons: Vec<(String, u32, String)>,
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
pub enum Command {
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
        priority: Option<i32>,
        preemptible: Option<bool>,
        queue: Option<String>,
        reply: Reply<JobRecord>,
    },
    Register {
        inventory: Box<NodeInventory>,
        /// The node credential the agent presented; empty when it has none.
        credential: String,
        by: Identity,
        reply: Reply<Registration>,
    },
    SessionOpen {
        node: Cid,
        session_id: String,
        running: Vec<RunningReplica>,
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

/// A cheap, clonable handle for sending commands to the core.
#[derive(Debug, Clone)]
pub struct CoreHandle {
    tx: std_mpsc::Sender<Command>,
    events: broadcast::Sender<EventRecord>,
}

impl CoreHandle {
    pub fn send(&self, command: Command) {
        // A closed channel means the core is gone; the caller's reply channel reports that.
        let _ = self.tx.send(command);
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub async fn ask<T>(&self, build: impl FnOnce(Reply<T>) -> Command) -> Result<T, CoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(build(reply)).map_err(|_| CoreError::Stopped)?;
        rx.await.map_err(|_| CoreError::Stopped)?
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }
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
    allocations: Vec<AllocationId>,
    /// GPU-milli per model the job's placement charges to its tenant's quota.
    charges: Vec<(GpuModel, u64)>,
    /// Placed above its tenant's or queue's guarantee: reclaimable.
    borrowed: bool,
    /// Why the last attempt to place it failed.
    wait: Option<Wait>,
}

/// Why a pending job is still pending.
#[derive(Debug, Clone)]
enum Wait {
    /// A single replica the placement policy found no node for.
    Policy(Unplaceable),
    /// Replicas the gang planner could not place together.
    Gang(GangWait),
    /// It fits, but its quota does not allow it: a maximum, or borrowing by
    /// non-preemptible work.
    Quota(WaitReason),
    /// It fits only on nodes held for a blocked job that comes before it.
    Reserved { holder: JobId },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Policy(u) => write!(f, "{u}"),
            Wait::Gang(g) => write!(f, "{g}"),
            Wait::Quota(q) => write!(f, "{q}"),
            Wait::Reserved { holder } => write!(
                f,
                "it fits only on nodes held for {holder}, which waits ahead of it"
            ),
        }
    }
}

/// Where a job's replicas would go, before anything is allocated.
struct Plan {
    /// Each replica's claim, with the score that chose its node (single placements).
    replicas: Vec<(Claim, Vec<ScoreItem>)>,
    /// What chose them: the policy's name, or `gang`.
    how: String,
    /// Why the replicas sit where they do together (gang placements).
    score: Vec<ScoreItem>,
}

/// Running jobs released to make room for another, and why each may go.
type Victims = Vec<(VictimKind, JobId)>;

/// Nodes held for the first job that could not be placed: later jobs of no higher priority
/// may not take them, so that job is not starved by a stream of smaller ones.
struct Reservation {
    holder: JobId,
    priority: i32,
    /// `true` at the position of each held node in the cluster.
    nodes: Arc<[bool]>,
    /// When the nodes are expected to be free (ms since the epoch), if every job they wait
    /// for has a time limit. Jobs sure to end by then may still use them (backfill).
    start_ms: Option<i64>,
}

/// Most trial placements when looking for the nodes a blocked job will get.
const RESERVATION_TRIALS: usize = 32;

/// A scheduling pass in progress: the jobs still to try, and request shapes that did not fit
/// during this pass (the cluster only fills up within a pass, so they would not fit again).
struct Pass {
    order: VecDeque<JobId>,
    failed_shapes: HashSet<String>,
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
    pass: Option<Pass>,
    /// Nodes changed since the engine's cluster was built; rebuilt once per batch.
    cluster_dirty: bool,
    store: Store,
    events: broadcast::Sender<EventRecord>,
    nodes: BTreeMap<Cid, NodeEntry>,
    cluster: Cluster,
    /// Link state of the nodes in `cluster`, from their inventories.
    links: LinkState,
    /// The gang planner's view of `cluster`; refreshed on every allocation and release.
    index: FabricIndex,
    /// Nodes held for the first blocked job, if any.
    reservation: Option<Reservation>,
    /// GPU-milli each tenant's placed jobs hold, per model.
    usage: Usage,
    /// Cluster positions of the nodes in `cluster`, by CID.
    node_ids: HashMap<Cid, NodeId>,
    jobs: HashMap<JobId, LiveJob>,
    /// Pending jobs in scheduling order: highest priority first, then oldest.
    pending: BTreeSet<(Reverse<i32>, JobId)>,
    policy_kind: PolicyKind,
    /// Built lazily: FGD needs a workload mix, which comes from recent submissions.
    policy: Option<Policy>,
    /// The most recent requests, FGD's expected workload.
    recent: VecDeque<Request>,
    /// Requests added to `recent` since the FGD mix was last built.
    recent_since_mix: usize,
    /// Request shapes the current FGD mix was built from; a new one makes the mix stale.
    mix_shapes: HashSet<(u64, u32, u32, Vec<suanli_engine::GpuModel>)>,
    mix_stale: bool,
    rng: ChaCha8Rng,
    /// Set when capacity was freed or added: every pending job is worth another try.
    capacity_changed: bool,
    /// Pending jobs not tried since they arrived.
    untried: HashSet<JobId>,
    latencies: Vec<f64>,
}

/// Starts the core on its own thread, loading state from `store`.
pub fn start(
    store: Store,
    config: CoreConfig,
) -> Result<(CoreHandle, std::thread::JoinHandle<()>), CoreError> {
    let (tx, rx) = std_mpsc::channel();
    let (events, _) = broadcast::channel(4096);
    let policy_kind: PolicyKind = config
        .policy
        .parse()
        .map_err(|e| CoreError::InvalidArgument(format!("policy {:?}: {e}", config.policy)))?;
    let cluster = Cluster::from_inventories(&[]).expect("an empty cluster is valid");
    let links = LinkState::new();
    let index = FabricIndex::new(&cluster, &links, &config.catalog);
    let mut core = Core {
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        config,
        in_batch: std::cell::Cell::new(false),
        outbox: std::cell::RefCell::new(Outbox::default()),
        pass: None,
        cluster_dirty: false,
        store,
        events: events.clone(),
        nodes: BTreeMap::new(),
        cluster,
        links,
        index,
        reservation: None,
        usage: Usage::default(),
        node_ids: HashMap::new(),
        jobs: HashMap::new(),
        pending: BTreeSet::new(),
        policy_kind,
        policy: None,
        recent: VecDeque::new(),
        recent_since_mix: 0,
        mix_shapes: HashSet::new(),
        mix_stale: true,
        capacity_changed: true,
        untried: HashSet::new(),
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
    /// Rebuilds memory from the store: nodes, live jobs and the resources they hold.
    fn load(&mut self) -> Result<(), CoreError> {
        let now = Instant::now();
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
                },
            );
        }
        self.load_jobs()?;
        self.rebuild_cluster();
        info!(
            nodes = self.nodes.len(),
            live_jobs = self.jobs.len(),
            pending = self.pending.len(),
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
            self.remember(&record.spec);
            if record.state == JobState::Pending || record.state == JobState::Preempted {
                self.pending
                    .insert((Reverse(record.spec.priority), record.id.clone()));
                self.untried.insert(record.id.clone());
            }
            self.jobs.insert(
                record.id.clone(),
                LiveJob {
                    spec: record.spec,
                    state: record.state,
                    attempts: record.attempts,
                    created_ms: record.created_ms,
                    placement,
                    allocations: Vec::new(),
                    charges: Vec::new(),
                    borrowed: false,
                    wait: None,
                },
            );
        }
        Ok(())
    }

    /// After a failed batch commit, memory may hold what the database does not: forget the
    /// jobs and take them again from the store.
    fn reload_jobs(&mut self) {
        self.jobs.clear();
        self.pending.clear();
        self.untried.clear();
        self.pass = None;
        if let Err(e) = self.load_jobs() {
            warn!(error = %e, "Could not reload jobs after a failed commit.");
        }
        self.cluster_dirty = true;
        self.capacity_changed = true;
    }

    fn has_scheduling_work(&self) -> bool {
        self.pass.is_some()
            || (!self.pending.is_empty() && (self.capacity_changed || !self.untried.is_empty()))
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
        let mut last_tick = Instant::now();
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
                last_tick = Instant::now();
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
                        self.remember(&record.spec);
                        self.pending
                            .insert((Reverse(record.spec.priority), record.id.clone()));
                        self.untried.insert(record.id.clone());
                        self.jobs.insert(
                            record.id.clone(),
                            LiveJob {
                                spec: record.spec.clone(),
                                state: JobState::Pending,
                                attempts: 0,
                                created_ms: record.created_ms,
                                placement: None,
                                allocations: Vec::new(),
                                charges: Vec::new(),
                                borrowed: false,
                                wait: None,
                            },
                        );
                        let _ = self.events.send(event);
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
                priority,
                preemptible,
                queue,
                reply,
            } => {
                let _ = reply.send(self.update(&id, &by, priority, preemptible, queue));
            }
            Command::Register {
                inventory,
                credential,
                by,
                reply,
            } => {
                let _ = reply.send(self.register(*inventory, &credential, &by));
            }
            Command::SessionOpen {
                node,
                session_id,
                running,
                tx,
                reply,
            } => {
                let _ = reply.send(self.open_session(&node, session_id, running, tx));
            }
            Command::SessionClosed { node, session_id } => {
                if self.session_is_current(&node, &session_id) {
                    self.close_session(&node);
                    info!(node = %node, "Agent session closed.");
                }
            }
            Command::Heartbeat { node, session_id } => {
                if let Some(entry) = self.nodes.get_mut(&node)
                    && entry.holds_session(&session_id)
                {
                    entry.last_seen = Instant::now();
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

    fn visible(&self, id: &JobId, by: &Identity) -> Result<&LiveJob, CoreError> {
        let not_found = || CoreError::NotFound(format!("job {id} not found"));
        let job = self.jobs.get(id).ok_or_else(not_found)?;
        match by.tenant_scope() {
            Some(tenant) if tenant != job.spec.tenant => Err(not_found()),
            _ => Ok(job),
        }
    }

    fn cancel(&mut self, id: &JobId, by: &Identity, reason: &str) -> Result<JobRecord, CoreError> {
        let stored = self.store.job(id)?;
        if let Some(tenant) = by.tenant_scope()
            && tenant != stored.spec.tenant
        {
            return Err(CoreError::NotFound(format!("job {id} not found")));
        }
        if stored.state.is_terminal() {
            return Err(CoreError::FailedPrecondition(format!(
                "job {id} already {}",
                stored.state
            )));
        }
        if let Some(pod) = self.pod_of(id) {
            return Err(CoreError::FailedPrecondition(format!(
                "job {id} is Kubernetes pod {pod}; delete the pod (kubectl delete pod -n {} {}) and its GPUs are freed",
                pod.namespace, pod.name
            )));
        }
        let message = if reason.is_empty() {
            format!("cancelled by {}", by.describe())
        } else {
            format!("cancelled by {}: {reason}", by.describe())
        };
        self.stop_replicas(id);
        self.finish(id, JobState::Cancelled, "cancelled", &message)?;
        Ok(self.store.job(id)?)
    }

    fn update(
        &mut self,
        id: &JobId,
        by: &Identity,
        priority: Option<i32>,
        preemptible: Option<bool>,
        queue: Option<String>,
    ) -> Result<JobRecord, CoreError> {
        let job = self.visible(id, by)?;
        if preemptible == Some(true)
            && let Some(pod) = job.placement.as_ref().and_then(|p| p.pod.as_ref())
        {
            return Err(CoreError::FailedPrecondition(format!(
                "job {id} is Kubernetes pod {pod}, which Suanli cannot stop: it stays non-preemptible"
            )));
        }
        let mut spec = job.spec.clone();
        let mut changes = Vec::new();
        if let Some(p) = priority {
            changes.push(format!("priority {} → {p}", spec.priority));
            spec.priority = p;
        }
        if let Some(p) = preemptible {
            changes.push(format!("preemptible {} → {p}", spec.preemptible));
            spec.preemptible = p;
        }
        if let Some(q) = queue {
            changes.push(format!("queue {} → {q}", spec.queue));
            spec.queue = q;
        }
        spec.validate()
            .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        if changes.is_empty() {
            return Ok(self.store.job(id)?);
        }
        let event = self.store.update_spec(id, &spec, &changes.join(", "))?;
        self.publish(event);
        if let Some(job) = self.jobs.get_mut(id) {
            if self
                .pending
                .remove(&(Reverse(job.spec.priority), id.clone()))
            {
                self.pending.insert((Reverse(spec.priority), id.clone()));
                self.untried.insert(id.clone());
            }
            job.spec = spec;
        }
        Ok(self.store.job(id)?)
    }

    /// Records a transition in the store, publishes its event and mirrors it in memory.
    fn transition(
        &mut self,
        id: &JobId,
        to: JobState,
        reason: &str,
        message: &str,
        placement: Option<Option<&StoredPlacement>>,
    ) -> Result<(), CoreError> {
        let json = match placement {
            Some(Some(p)) => Some(Some(serde_json::to_value(p).map_err(|source| {
                StoreError::Corrupt {
                    what: "placement being written".into(),
                    source,
                }
            })?)),
            Some(None) => Some(None),
            None => None,
        };
        let event =
            self.store
                .transition(id, to, reason, message, json.as_ref().map(|o| o.as_ref()))?;
        self.publish(event);
        if let Some(job) = self.jobs.get_mut(id) {
            if to == JobState::Placed {
                job.attempts += 1;
            }
            job.state = to;
        }
        Ok(())
    }

    /// Ends a job: releases what it holds and forgets it in memory.
    fn finish(
        &mut self,
        id: &JobId,
        to: JobState,
        reason: &str,
        message: &str,
    ) -> Result<(), CoreError> {
        self.release(id);
        if let Some(job) = self.jobs.get(id) {
            self.pending
                .remove(&(Reverse(job.spec.priority), id.clone()));
        }
        self.transition(id, to, reason, message, None)?;
        self.jobs.remove(id);
        self.untried.remove(id);
        info!(job = %id, state = %to, "Job finished.");
        Ok(())
    }

    fn release(&mut self, id: &JobId) {
        self.release_resources(id);
        self.capacity_changed = true;
    }

    /// Gives back a job's GPUs and quota without marking capacity as changed: for trial
    /// releases that may be undone.
    fn release_resources(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        for alloc in job.allocations.drain(..) {
            match self.cluster.release(alloc) {
                Ok(released) => self
                    .index
                    .refresh(&self.cluster, &self.links, released.node),
                Err(e) => warn!(job = %id, error = %e, "Release of an unknown allocation."),
            }
        }
        let charges = std::mem::take(&mut job.charges);
        job.borrowed = false;
        self.usage
            .remove_in_queue(&job.spec.tenant, &job.spec.queue, &charges);
    }

    /// Tells agents to stop every replica of a job that was placed.
    fn stop_replicas(&mut self, id: &JobId) {
        self.stop_replicas_within(id, CANCEL_GRACE_MS);
    }

    /// Stops every replica, each with `grace_ms` between SIGTERM and SIGKILL.
    fn stop_replicas_within(&mut self, id: &JobId, grace_ms: u32) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let Some(placement) = &job.placement else {
            return;
        };
        for slot in &placement.replicas {
            if slot.exit_code.is_some() {
                continue;
            }
            self.send_to(
                &slot.node,
                AgentCommand::Cancel {
                    job_id: id.clone(),
                    replica: slot.replica,
                    attempt: placement.attempt,
                    grace_period_ms: grace_ms,
                },
            );
        }
    }

    /// Sends a job that held resources back to pending (node lost, drained), or fails it once
    /// it has used all its attempts.
    fn requeue(&mut self, id: &JobId, reason: &str, message: &str) -> Result<(), CoreError> {
        self.requeue_within(id, reason, message, CANCEL_GRACE_MS)
    }

    /// [`Core::requeue`], giving the stopped replicas `grace_ms` before SIGKILL.
    fn requeue_within(
        &mut self,
        id: &JobId,
        reason: &str,
        message: &str,
        grace_ms: u32,
    ) -> Result<(), CoreError> {
        if self.pod_of(id).is_some() {
            // Kubernetes reschedules a pod, not Suanli: the job ends and frees its GPUs.
            return self.finish(id, JobState::Failed, reason, message);
        }
        self.stop_replicas_within(id, grace_ms);
        self.release(id);
        let Some(job) = self.jobs.get(id) else {
            return Ok(());
        };
        if job.attempts >= self.config.max_attempts {
            let msg = format!("{message}; gave up after {} attempts", job.attempts);
            return self.finish(id, JobState::Failed, reason, &msg);
        }
        self.transition(id, JobState::Pending, reason, message, Some(None))?;
        self.back_in_queue(id);
        Ok(())
    }

    /// A job that held resources and is pending again: it forgets its placement and is
    /// tried in the next pass.
    fn back_in_queue(&mut self, id: &JobId) {
        if let Some(job) = self.jobs.get_mut(id) {
            job.placement = None;
            self.pending
                .insert((Reverse(job.spec.priority), id.clone()));
            self.untried.insert(id.clone());
        }
    }

    // ---- placement ----------------------------------------------------------------------

    /// Tries pending jobs in priority order. Within one pass a request shape that did not fit
    /// is not tried again: the cluster only fills up during a pass.
    ///
    /// A pass runs for at most `budget` at a time and resumes on the next call, so commands
    /// (submits above all) are never held up behind a long pass. Returns whether work is left.
    fn schedule(&mut self, budget: Duration) -> bool {
        let started = Instant::now();
        if self.pass.is_none() {
            if self.pending.is_empty() || (!self.capacity_changed && self.untried.is_empty()) {
                return false;
            }
            self.refresh_policy();
            let retry_all = self.capacity_changed;
            self.capacity_changed = false;
            let order: VecDeque<JobId> = self
                .pending
                .iter()
                .map(|(_, id)| id.clone())
                .filter(|id| retry_all || self.untried.contains(id))
                .collect();
            self.untried.clear();
            self.pass = Some(Pass {
                order,
                failed_shapes: HashSet::new(),
            });
        }
        // A holder that left the queue (placed elsewhere, cancelled) holds nothing.
        let holder_waits = |r: &Reservation| {
            self.jobs
                .get(&r.holder)
                .is_some_and(|j| j.placement.is_none())
        };
        if self.reservation.as_ref().is_some_and(|r| !holder_waits(r)) {
            self.reservation = None;
        }
        let now = now_ms();
        while let Some(id) = self.pass.as_mut().and_then(|p| p.order.pop_front()) {
            let Some(job) = self.jobs.get(&id) else {
                continue;
            };
            if job.state != JobState::Pending && job.state != JobState::Preempted {
                continue;
            }
            // Nodes held for a blocked job ahead of this one are off limits, unless this job
            // is sure to end before they are expected free (backfill).
            let ends_in_time = |r: &Reservation| match (job.spec.time_limit_s, r.start_ms) {
                (Some(limit), Some(start)) => now.saturating_add(seconds_to_ms(limit)) <= start,
                _ => false,
            };
            let avoid = self
                .reservation
                .as_ref()
                .filter(|r| r.holder != id && job.spec.priority <= r.priority && !ends_in_time(r))
                .map(|r| Arc::clone(&r.nodes));
            // Tenant, queue and preemptibility are part of the shape: quota refusals depend
            // on them. Priority is not: later jobs in the pass never have a higher one.
            let shape = format!(
                "{:?}|{:?}|{:?}|{:?}|{}|{:?}|{}/{}|{}|{}",
                job.spec.gpu,
                job.spec.resources,
                job.spec.placement,
                job.spec.topology,
                job.spec.replicas,
                job.spec.min_replicas,
                job.spec.tenant,
                job.spec.queue,
                job.spec.preemptible,
                avoid.is_some()
            );
            if self
                .pass
                .as_ref()
                .is_some_and(|p| p.failed_shapes.contains(&shape))
            {
                continue;
            }
            match self.try_place(&id, avoid.as_deref()) {
                Ok(true) => {}
                Ok(false) => {
                    if let Some(pass) = self.pass.as_mut() {
                        pass.failed_shapes.insert(shape);
                    }
                }
                Err(e) => warn!(job = %id, error = %e, "Placement could not be recorded."),
            }
            if started.elapsed() >= budget {
                return true;
            }
        }
        self.pass = None;
        !self.pending.is_empty() && (self.capacity_changed || !self.untried.is_empty())
    }

    /// Remembers a submitted request as part of the expected workload.
    fn remember(&mut self, spec: &JobSpec) {
        if let Ok(request) = Request::from_job(spec) {
            let shape = MixShape::of(&request);
            if !self.mix_shapes.contains(&(
                shape.cpu_milli,
                shape.gpu_milli,
                shape.gpu_count,
                shape.models,
            )) {
                self.mix_stale = true;
            }
            self.recent.push_back(request);
            self.recent_since_mix += 1;
            if self.recent.len() > RECENT_WINDOW {
                self.recent.pop_front();
            }
        }
    }

    /// Builds the policy, and rebuilds FGD's mix when a request shape it has not seen arrives
    /// or the window has turned over (rebuilding drops FGD's per-node cache, so not on every
    /// submit).
    fn refresh_policy(&mut self) {
        if self.policy_kind != PolicyKind::Fgd {
            if self.policy.is_none() {
                self.policy = Policy::new(self.policy_kind).ok();
            }
            return;
        }
        let stale = self.mix_stale || self.recent_since_mix >= RECENT_WINDOW;
        if self.policy.is_some() && !stale {
            return;
        }
        match WorkloadMix::typical(self.recent.iter(), DEFAULT_POPULARITY_PCT) {
            Ok(mix) => {
                self.mix_shapes = self
                    .recent
                    .iter()
                    .map(|r| {
                        let s = MixShape::of(r);
                        (s.cpu_milli, s.gpu_milli, s.gpu_count, s.models)
                    })
                    .collect();
                self.policy = Some(Policy::fgd(Arc::new(mix)));
                self.recent_since_mix = 0;
                self.mix_stale = false;
            }
            Err(e) => debug!(error = %e, "No FGD workload mix yet."),
        }
    }

    /// Places a job, all replicas or none (elastic jobs: at least their minimum), within its
    /// tenant's quota. Returns whether it was placed.
    ///
    /// One replica goes where the configured policy (FGD by default) scores best; several go
    /// through the gang planner, which keeps a training gang close on the fabric and spreads
    /// inference replicas over nodes and leaves.
    fn try_place(&mut self, id: &JobId, avoid: Option<&[bool]>) -> Result<bool, CoreError> {
        let Some(job) = self.jobs.get(id) else {
            return Ok(false);
        };
        let spec = job.spec.clone();
        let gang = match GangRequest::from_job(&spec) {
            Ok(g) => g,
            Err(e) => {
                let message = format!("the engine cannot place this job: {e}");
                self.finish(id, JobState::Failed, "unplaceable", &message)?;
                return Ok(false);
            }
        };
        let (
            Plan {
                replicas: claims,
                how,
                score,
            },
            victims,
        ) = match self.plan_with_room(&spec, &gang, avoid) {
            Ok(Some(planned)) => planned,
            Ok(None) => return Ok(false),
            Err(wait) => {
                let wait = self.blocked(id, &spec, &gang, avoid, wait);
                self.record_wait(id, wait)?;
                return Ok(false);
            }
        };
        let charges = self
            .cluster
            .gpu_milli_by_model(claims.iter().map(|(claim, _)| claim));
        let borrowed = match self.admit(&spec, &charges) {
            Ok(borrowed) => borrowed,
            Err(wait) => {
                self.restore_victims(victims);
                self.record_wait(id, wait)?;
                return Ok(false);
            }
        };
        let mut allocations = Vec::with_capacity(claims.len());
        for (claim, _) in &claims {
            match self.cluster.allocate(claim) {
                Ok(alloc) => allocations.push(alloc),
                Err(e) => {
                    warn!(job = %id, error = %e, "Engine placement did not fit.");
                    self.release_allocations(&allocations);
                    self.restore_victims(victims);
                    return Ok(false);
                }
            }
        }
        for (claim, _) in &claims {
            self.index.refresh(&self.cluster, &self.links, claim.node);
        }
        let attempt = self.jobs.get(id).map_or(1, |j| j.attempts + 1);
        let slots = claims
            .iter()
            .enumerate()
            .map(|(replica, (claim, score))| self.slot_for(replica as u32, claim, score.clone()))
            .collect::<Vec<_>>();
        let placement = StoredPlacement {
            policy: how,
            placed_ms: now_ms(),
            attempt,
            replicas: slots,
            score,
            pod: None,
        };
        let where_ = placement
            .nodes()
            .map(|c| c.node_name().unwrap_or("?").to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ");
        let placed = placement.replicas.len();
        let message = if placed < spec.replicas as usize {
            format!(
                "{placed} of {} replica(s) (elastic minimum {}) on {where_}",
                spec.replicas, gang.min_replicas
            )
        } else {
            format!("{placed} replica(s) on {where_}")
        };
        if let Err(e) = self.transition(
            id,
            JobState::Placed,
            "placed",
            &message,
            Some(Some(&placement)),
        ) {
            self.release_allocations(&allocations);
            self.restore_victims(victims);
            return Err(e);
        }
        let created_ms = self.jobs.get(id).map_or(0, |j| j.created_ms);
        self.latencies
            .push((now_ms() - created_ms).max(0) as f64 / 1000.0);
        if self.latencies.len() > 100_000 {
            self.latencies.drain(..50_000);
        }
        self.usage.add_in_queue(&spec.tenant, &spec.queue, &charges);
        if self.reservation.as_ref().is_some_and(|r| &r.holder == id) {
            self.reservation = None;
        }
        if let Some(job) = self.jobs.get_mut(id) {
            self.pending
                .remove(&(Reverse(job.spec.priority), id.clone()));
            job.allocations = allocations;
            job.charges = charges;
            job.borrowed = borrowed;
            job.placement = Some(placement.clone());
            job.wait = None;
        }
        info!(job = %id, replicas = placed, nodes = %where_, "Placed job.");
        for (kind, victim) in victims {
            self.preempt(&victim, id, kind)?;
        }
        for slot in &placement.replicas {
            self.assign(id, &spec, slot, attempt);
        }
        Ok(true)
    }

    fn quotas(&self) -> &Quotas {
        &self.config.quotas
    }

    /// Judges a placement's charges against the job's queue and tenant quotas: whether it
    /// borrows, or why it waits.
    fn admit(&self, spec: &JobSpec, charges: &[(GpuModel, u64)]) -> Result<bool, Wait> {
        admit(
            self.quotas(),
            &self.usage,
            &spec.tenant,
            &spec.queue,
            spec.preemptible,
            charges,
        )
        .map_err(Wait::Quota)
    }

    /// Plans a job, preempting if that is what it takes: when it fits nowhere, or when its
    /// tenant is at its maximum while its queue is still owed its guarantee (then only
    /// sibling queues' borrowed work may go). Returns the plan and the victims, already
    /// released but not yet told; or why the job waits.
    fn plan_with_room(
        &mut self,
        spec: &JobSpec,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
    ) -> Result<Option<(Plan, Victims)>, Wait> {
        let plan = match self.plan(spec, gang, avoid) {
            Ok(Some(plan)) => plan,
            Ok(None) => return Ok(None),
            Err(wait) => {
                return self
                    .make_room(spec, gang, false, avoid)
                    .map(Some)
                    .ok_or(wait);
            }
        };
        let charges = self
            .cluster
            .gpu_milli_by_model(plan.replicas.iter().map(|(claim, _)| claim));
        match self.admit(spec, &charges) {
            Ok(_) => Ok(Some((plan, Vec::new()))),
            Err(Wait::Quota(WaitReason::Quota(exceeded))) if exceeded.queue.is_none() => self
                .make_room(spec, gang, true, avoid)
                .map(Some)
                .ok_or(Wait::Quota(WaitReason::Quota(exceeded))),
            Err(wait) => Err(wait),
        }
    }

    /// Looks for running jobs whose preemption lets `spec` run: lower priority, or work
    /// borrowed above a guarantee that the job's tenant or queue is owed (`siblings_only`:
    /// only the borrowed work of the tenant's other queues). Candidates are released one at a
    /// time, cheapest first, until the job fits within its quota; then it returns the plan
    /// and the victims (released, still to be told). If it never fits, everything is put back.
    fn make_room(
        &mut self,
        spec: &JobSpec,
        gang: &GangRequest,
        siblings_only: bool,
        avoid: Option<&[bool]>,
    ) -> Option<(Plan, Victims)> {
        let settings = self.config.preemption;
        if !settings.enabled {
            return None;
        }
        let now_s = u64::try_from(now_ms() / 1000).unwrap_or(0);
        let preemptor = Preemptor {
            tenant: &spec.tenant,
            queue: &spec.queue,
            priority: spec.priority,
            gpu_milli: gang.gpu_milli(gang.min_replicas),
            models: gang.request.models(),
        };
        let list = {
            let views = self.jobs.iter().filter_map(|(id, job)| {
                // Only a sibling queue's work lowers the tenant's use for a sibling.
                if siblings_only && (job.spec.tenant != spec.tenant || job.spec.queue == spec.queue)
                {
                    return None;
                }
                victim_view(id, job)
            });
            candidates(
                views,
                &preemptor,
                self.quotas(),
                &self.usage,
                now_s,
                settings.min_runtime_s,
                settings.max_victims,
            )
        };
        let mut taken = Vec::new();
        for (kind, victim) in list {
            let Some(job) = self.jobs.get(&victim) else {
                continue;
            };
            if siblings_only && kind != VictimKind::Reclaim {
                continue;
            }
            // Reclaim only while the victim still borrows what the job is owed: earlier
            // victims may have ended that.
            if kind == VictimKind::Reclaim
                && !victim_view(&victim, job)
                    .is_some_and(|v| reclaimable(&v, &preemptor, self.quotas(), &self.usage))
            {
                continue;
            }
            self.release_resources(&victim);
            taken.push((kind, victim));
            if let Ok(Some(plan)) = self.plan(spec, gang, avoid) {
                let charges = self
                    .cluster
                    .gpu_milli_by_model(plan.replicas.iter().map(|(claim, _)| claim));
                if self.admit(spec, &charges).is_ok() {
                    return Some((plan, taken));
                }
            }
        }
        self.restore_victims(taken);
        None
    }

    /// Puts trial-released victims back on exactly the GPUs they held.
    fn restore_victims(&mut self, victims: Victims) {
        for (_, id) in victims.into_iter().rev() {
            if let Err(e) = self.reclaim_resources(&id) {
                // Nothing else was allocated in between, so this does not happen; should it,
                // the job is safer back in the queue than holding nothing.
                warn!(job = %id, error = %e, "Could not restore a trial victim; requeueing it.");
                if let Err(e) =
                    self.requeue(&id, "preempted", "its resources could not be restored")
                {
                    warn!(job = %id, error = %e, "Could not requeue.");
                }
            }
        }
    }

    /// Claims a placed job's stored placement again in the cluster and charges its quota.
    fn reclaim_resources(&mut self, id: &JobId) -> Result<(), String> {
        let claims = self
            .claims_of(id)
            .ok_or_else(|| "a node or GPU of its placement is gone".to_string())?;
        let charges = self.cluster.gpu_milli_by_model(claims.iter());
        let mut allocations = Vec::with_capacity(claims.len());
        for claim in &claims {
            match self.cluster.allocate(claim) {
                Ok(a) => allocations.push(a),
                Err(e) => {
                    self.release_allocations(&allocations);
                    return Err(e.to_string());
                }
            }
            self.index.refresh(&self.cluster, &self.links, claim.node);
        }
        let Some(job) = self.jobs.get_mut(id) else {
            self.release_allocations(&allocations);
            return Err("unknown job".into());
        };
        let verdict = self.config.quotas.check_in_queue(
            &self.usage,
            &job.spec.tenant,
            &job.spec.queue,
            &charges,
        );
        job.borrowed = matches!(verdict, QuotaVerdict::Borrowing | QuotaVerdict::Over(_));
        self.usage
            .add_in_queue(&job.spec.tenant, &job.spec.queue, &charges);
        job.allocations = allocations;
        job.charges = charges;
        Ok(())
    }

    /// Stops a victim whose resources went to `for_job` and puts it back in the queue. It
    /// keeps its submission time, so it returns to its old place.
    fn preempt(
        &mut self,
        victim: &JobId,
        for_job: &JobId,
        kind: VictimKind,
    ) -> Result<(), CoreError> {
        self.stop_replicas(victim);
        let why = match kind {
            VictimKind::Reclaim => "reclaiming quota it borrowed",
            VictimKind::Priority => "it has lower priority",
        };
        let message = format!("preempted for {for_job}: {why}");
        info!(job = %victim, by = %for_job, "{message}");
        self.transition(
            victim,
            JobState::Preempted,
            "preempted",
            &message,
            Some(None),
        )?;
        self.transition(
            victim,
            JobState::Pending,
            "requeued",
            "back in the queue after preemption",
            None,
        )?;
        self.back_in_queue(victim);
        Ok(())
    }

    /// Plans a job without allocating. A plain single replica goes by the configured
    /// policy; several replicas, or one with RDMA, NVLink, price or data-location demands
    /// that only the gang planner weighs, go by the gang planner.
    ///
    /// Nodes marked in `avoid` are not used. The policy does not know about them, so when it
    /// picks one the gang planner, which does, places the replica instead.
    fn plan(
        &mut self,
        spec: &JobSpec,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
    ) -> Result<Option<Plan>, Wait> {
        let needs_planner = gang.replicas > 1
            || spec.topology.rdma_required
            || spec.topology.nvlink == Some(suanli_engine::job::Requirement::Required)
            || spec.placement.max_price_per_gpu_hour.is_some()
            || !spec.placement.data.is_empty();
        if needs_planner {
            return self.plan_gang(gang, avoid);
        }
        let single = self.plan_single(&gang.request)?;
        let held = |plan: &Plan| {
            plan.replicas.iter().any(|(claim, _)| {
                avoid.is_some_and(|nodes| nodes.get(claim.node.index()).copied().unwrap_or(false))
            })
        };
        match single {
            Some(plan) if held(&plan) => self.plan_gang(gang, avoid),
            other => Ok(other),
        }
    }

    /// Why a job that could not be placed waits, and, if it is the first blocked job,
    /// the nodes held for it from now on. A job that fits only on nodes held for another
    /// waits for that one.
    fn blocked(
        &mut self,
        id: &JobId,
        spec: &JobSpec,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
        wait: Wait,
    ) -> Wait {
        if avoid.is_some() {
            if matches!(self.plan(spec, gang, None), Ok(Some(_)))
                && let Some(r) = &self.reservation
            {
                return Wait::Reserved {
                    holder: r.holder.clone(),
                };
            }
            return wait;
        }
        // Quota waits are the tenant's business; holding nodes would not end them. A
        // higher-priority blocked job takes the reservation over.
        if matches!(wait, Wait::Policy(_) | Wait::Gang(_))
            && self
                .reservation
                .as_ref()
                .is_none_or(|r| &r.holder == id || spec.priority > r.priority)
        {
            self.reservation = self.reserve(gang).map(|(nodes, start_ms)| Reservation {
                holder: id.clone(),
                priority: spec.priority,
                nodes,
                start_ms,
            });
        }
        wait
    }

    /// The nodes `gang` would get as running jobs end, and when, if that is known: jobs with
    /// a time limit end by it, soonest first; then the others, oldest placement first (the
    /// best guess without a limit). The first fit among a bounded number of trials.
    fn reserve(&self, gang: &GangRequest) -> Option<(Arc<[bool]>, Option<i64>)> {
        // (no limit, expected end or placement time, id, allocations)
        let mut holders: Vec<(bool, i64, &JobId, &[AllocationId])> = self
            .jobs
            .iter()
            .filter(|(_, j)| !j.allocations.is_empty())
            .map(|(id, j)| {
                let placed = j.placement.as_ref().map_or(0, |p| p.placed_ms);
                let end = j
                    .spec
                    .time_limit_s
                    .map(|limit| placed.saturating_add(seconds_to_ms(limit)));
                (
                    end.is_none(),
                    end.unwrap_or(placed),
                    id,
                    j.allocations.as_slice(),
                )
            })
            .collect();
        holders.sort();
        let mut start_ms = Some(now_ms());
        let mut future = self.cluster.clone();
        let mut index = self.index.clone();
        let chunk = holders.len().div_ceil(RESERVATION_TRIALS).max(1);
        for batch in holders.chunks(chunk) {
            for (unlimited, end, _, allocations) in batch {
                start_ms = match (start_ms, unlimited) {
                    (Some(s), false) => Some(s.max(*end)),
                    _ => None,
                };
                for alloc in *allocations {
                    if let Ok(released) = future.release(*alloc) {
                        index.refresh(&future, &self.links, released.node);
                    }
                }
            }
            if let Ok(p) = place_gang(
                &future,
                &index,
                &self.config.catalog,
                gang,
                &GangOptions::default(),
            ) {
                let mut nodes = vec![false; self.cluster.len()];
                for node in p.nodes() {
                    nodes[node.index()] = true;
                }
                return Some((nodes.into(), start_ms));
            }
        }
        None
    }

    /// One replica by the configured policy: its claim and score, or why it fits nowhere.
    /// `Ok(None)` while the policy cannot be built yet (FGD before any workload is known).
    fn plan_single(&mut self, request: &Request) -> Result<Option<Plan>, Wait> {
        let Some(policy) = self.policy.as_ref() else {
            return Ok(None);
        };
        match place(&self.cluster, request, policy, &mut self.rng) {
            Ok(placement) => {
                let score = score_items(&placement.breakdown);
                Ok(Some(Plan {
                    replicas: vec![(placement.claim, score)],
                    how: self.policy_kind.name().to_string(),
                    score: Vec::new(),
                }))
            }
            Err(unplaceable) => Err(Wait::Policy(unplaceable)),
        }
    }

    /// Several replicas by the gang planner: one claim per replica, or why they do not fit
    /// together.
    fn plan_gang(&self, gang: &GangRequest, avoid: Option<&[bool]>) -> Result<Option<Plan>, Wait> {
        let placement = place_gang(
            &self.cluster,
            &self.index,
            &self.config.catalog,
            gang,
            &GangOptions { avoid },
        )
        .map_err(Wait::Gang)?;
        Ok(Some(Plan {
            score: gang_score_items(&placement),
            replicas: placement
                .replicas
                .into_iter()
                .map(|r| (r.claim, Vec::new()))
                .collect(),
            how: "gang".to_string(),
        }))
    }

    fn release_allocations(&mut self, allocations: &[AllocationId]) {
        for alloc in allocations {
            if let Ok(released) = self.cluster.release(*alloc) {
                self.index
                    .refresh(&self.cluster, &self.links, released.node);
            }
        }
    }

    /// Keeps why a job waits, in memory for `describe` and in the store as its reason.
    fn record_wait(&mut self, id: &JobId, wait: Wait) -> Result<(), CoreError> {
        let reason = wait.to_string();
        let Some(job) = self.jobs.get_mut(id) else {
            return Ok(());
        };
        // Waiting jobs are retried after every release; store the reason only when it changes.
        let unchanged = job.wait.as_ref().is_some_and(|w| w.to_string() == reason);
        job.wait = Some(wait);
        if !unchanged {
            self.store.set_reason(id, &reason)?;
        }
        Ok(())
    }

    fn slot_for(&self, replica: u32, claim: &Claim, score: Vec<ScoreItem>) -> ReplicaSlot {
        let node = &self.cluster.nodes()[claim.node.index()];
        let node_cid = node
            .cid()
            .cloned()
            .expect("server clusters are built from inventories, which have CIDs");
        let gpus = claim
            .gpus
            .iter()
            .map(|grant| {
                let gpu = &node.gpus()[grant.gpu as usize];
                let device_cid = node_cid
                    .child(&format!("gpu-{}", gpu.index))
                    .expect("gpu-<n> is a valid segment");
                GrantRecord {
                    uuid: gpu.uuid.clone(),
                    device_cid,
                    gpu: grant.gpu,
                    milli: grant.milli,
                    memory_mib: grant.memory_mib,
                    exclusive: grant.exclusive,
                    mig: grant
                        .mig
                        .as_ref()
                        .map(|(profile, start)| (profile.name().to_string(), *start)),
                }
            })
            .collect();
        ReplicaSlot {
            replica,
            node: node_cid,
            cpu_milli: claim.cpu_milli,
            memory_mib: claim.memory_mib,
            gpus,
            score,
            started: false,
            exit_code: None,
        }
    }

    fn assign(&self, id: &JobId, spec: &JobSpec, slot: &ReplicaSlot, attempt: u32) {
        self.send_to(
            &slot.node,
            AgentCommand::Assign(Box::new(Assignment {
                job_id: id.clone(),
                replica: slot.replica,
                attempt,
                spec: spec.clone(),
                gpu_uuids: slot.gpus.iter().map(|g| g.uuid.clone()).collect(),
                cpu_milli: slot.cpu_milli,
                memory_mib: slot.memory_mib,
            })),
        );
    }

    fn send_to(&self, node: &Cid, command: AgentCommand) {
        if self.in_batch.get() {
            self.outbox
                .borrow_mut()
                .agents
                .push((node.clone(), command));
            return;
        }
        match self.nodes.get(node).and_then(|n| n.session.as_ref()) {
            Some((_, tx)) => {
                if tx.send(command).is_err() {
                    debug!(node = %node, "Agent session gone; the command waits for its return.");
                }
            }
            None => debug!(node = %node, "No agent session; the command waits for its return."),
        }
    }

    // ---- nodes and agents ----------------------------------------------------------------

    /// Rebuilds the cluster if nodes changed since it was last built.
    fn ensure_cluster(&mut self) {
        if self.cluster_dirty {
            self.cluster_dirty = false;
            self.rebuild_cluster();
        }
    }

    /// Rebuilds the engine's cluster from the usable nodes and claims again what live jobs
    /// hold. Jobs whose resources are gone (node lost or shrunk) go back to pending.
    fn rebuild_cluster(&mut self) {
        for entry in self.nodes.values_mut() {
            entry.invalid = None;
        }
        let candidates: Vec<NodeInventory> = self
            .nodes
            .values()
            .filter(|n| !n.lost)
            .map(|n| {
                let mut inv = n.inventory.clone();
                if !n.schedulable() {
                    inv.labels
                        .insert("suanli.io/cordoned".into(), "true".into());
                }
                inv
            })
            .collect();
        // A node the engine cannot model is quarantined, never the whole cluster.
        let (cluster, skipped) = Cluster::from_inventories_skipping_invalid(&candidates);
        let mut usable = candidates;
        for skip in skipped.iter().rev() {
            warn!(node = %skip.cid, error = %skip.error, "Quarantined a node whose inventory the engine cannot model.");
            usable.remove(skip.index);
            if let Some(entry) = self.nodes.get_mut(&skip.cid) {
                entry.invalid = Some(skip.error.to_string());
            }
        }
        self.cluster = cluster;
        self.links = LinkState::from_inventories(&usable, None);
        self.usage = Usage::default();
        self.node_ids = self
            .cluster
            .nodes()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.cid().map(|c| (c.clone(), NodeId(i as u32))))
            .collect();
        self.index = FabricIndex::new(&self.cluster, &self.links, &self.config.catalog);
        // Node positions may have moved; the next full pass reserves again.
        self.reservation = None;
        // In placement order, so quota borrowing is judged as it was when they were placed.
        let mut holders: Vec<(i64, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.placement.as_ref().map(|p| (p.placed_ms, id.clone())))
            .collect();
        holders.sort();
        let mut lost = Vec::new();
        for (_, id) in holders {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.allocations.clear();
                job.charges.clear();
            }
            if let Err(e) = self.reclaim_resources(&id) {
                warn!(job = %id, error = %e, "A job's resources are gone.");
                lost.push(id);
            }
        }
        for id in lost {
            if self.pod_of(&id).is_some() {
                // Kubernetes decides what becomes of the pod; its GPUs are held again when
                // the node returns, and freed when the reconciler sees the pod gone.
                debug!(job = %id, "A pod's node is away; its job waits for it.");
                continue;
            }
            let (reason, message) = match self.invalid_node_of(&id) {
                Some((node, why)) => (
                    "node_invalid",
                    format!("its node {node} is quarantined: {why}"),
                ),
                None => ("node_lost", "its node left the cluster".to_string()),
            };
            if let Err(e) = self.requeue(&id, reason, &message) {
                warn!(job = %id, error = %e, "Could not requeue.");
            }
        }
        self.capacity_changed = true;
    }

    /// The engine claims for a job's stored placement, or `None` if a node or GPU is gone.
    fn claims_of(&self, id: &JobId) -> Option<Vec<Claim>> {
        let placement = self.jobs.get(id)?.placement.as_ref()?;
        placement
            .replicas
            .iter()
            .map(|slot| {
                let node = *self.node_ids.get(&slot.node)?;
                let gpus_here = self.cluster.nodes()[node.index()].gpus();
                let gpus = slot
                    .gpus
                    .iter()
                    .map(|g| {
                        let position = gpus_here.iter().position(|gpu| gpu.uuid == g.uuid)?;
                        let mig = match &g.mig {
                            Some((profile, start)) => {
                                Some((profile.parse::<MigProfile>().ok()?, *start))
                            }
                            None => None,
                        };
                        Some(GpuGrant {
                            gpu: position as u32,
                            milli: g.milli,
                            memory_mib: g.memory_mib,
                            exclusive: g.exclusive,
                            mig,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                let request = Request::from_job(&self.jobs.get(id)?.spec).ok()?;
                Some(Claim {
                    node,
                    cpu_milli: slot.cpu_milli,
                    memory_mib: slot.memory_mib,
                    gpus,
                    affinity: request.affinity(),
                })
            })
            .collect()
    }

    fn check_heartbeats(&mut self) {
        let timeout = self.config.heartbeat_timeout;
        let lost: Vec<Cid> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.lost && n.last_seen.elapsed() > timeout)
            .map(|(c, _)| c.clone())
            .collect();
        if lost.is_empty() {
            return;
        }
        for cid in &lost {
            warn!(node = %cid, timeout_ms = timeout.as_millis() as u64, "Agent missed its heartbeats; node lost.");
            if let Some(n) = self.nodes.get_mut(cid) {
                n.lost = true;
                n.session = None;
            }
            if let Err(e) = self.store.set_node_flags(cid, None, Some(true)) {
                warn!(node = %cid, error = %e, "Could not record the lost node.");
            }
        }
        self.cluster_dirty = true;
    }

    /// Stops jobs that have run past their time limit (counted from placement) and fails
    /// them with that reason.
    fn check_time_limits(&mut self) {
        let now = now_ms();
        let mut over: Vec<(JobId, u64)> = self
            .jobs
            .iter()
            .filter_map(|(id, job)| {
                let limit = job.spec.time_limit_s?;
                let placed = job.placement.as_ref()?.placed_ms;
                let limit_ms = seconds_to_ms(limit);
                (now.saturating_sub(placed) > limit_ms).then(|| (id.clone(), limit))
            })
            .collect();
        over.sort();
        for (id, limit) in over {
            self.stop_replicas(&id);
            let message = format!("ran past its time limit of {limit} s");
            info!(job = %id, "{message}");
            if let Err(e) = self.finish(&id, JobState::Failed, "time_limit", &message) {
                warn!(job = %id, error = %e, "Could not end a job past its time limit.");
            }
        }
    }

    fn work_started(&mut self, node: &Cid, id: &JobId, replica: u32, attempt: u32) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(p) = job.placement.as_mut() else {
            return;
        };
        let Some(slot) = p.reported_slot(node, replica, attempt) else {
            return;
        };
        if slot.started {
            return;
        }
        slot.started = true;
        let all = p.all_started();
        let placement = p.clone();
        let state = job.state;
        let result = if all && state == JobState::Placed {
            self.transition(
                id,
                JobState::Running,
                "started",
                "every replica is running",
                Some(Some(&placement)),
            )
        } else {
            self.store
                .set_placement(id, &placement)
                .map_err(CoreError::from)
        };
        if let Err(e) = result {
            warn!(job = %id, error = %e, "Could not record a start.");
        }
    }

    fn work_exited(
        &mut self,
        node: &Cid,
        id: &JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: &str,
    ) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(p) = job.placement.as_mut() else {
            return;
        };
        let Some(slot) = p.reported_slot(node, replica, attempt) else {
            return;
        };
        if slot.exit_code.is_some() {
            return;
        }
        slot.started = true;
        slot.exit_code = Some(exit_code);
        let all_exited = p.all_exited();
        let placement = p.clone();
        let result = if exit_code != 0 {
            let detail = if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            };
            let msg = format!("replica {replica} exited with code {exit_code}{detail}");
            self.stop_replicas(id);
            self.finish(id, JobState::Failed, "exited", &msg)
        } else if all_exited {
            if job.state == JobState::Placed {
                let _ = self.transition(
                    id,
                    JobState::Running,
                    "started",
                    "every replica ran",
                    Some(Some(&placement)),
                );
            }
            self.finish(
                id,
                JobState::Succeeded,
                "exited",
                "every replica exited with code 0",
            )
        } else {
            self.store
                .set_placement(id, &placement)
                .map_err(CoreError::from)
        };
        if let Err(e) = result {
            warn!(job = %id, error = %e, "Could not record an exit.");
        }
    }

    /// Cordons (or uncordons) a node: it takes no new work. Uncordoning also ends a drain.
    fn cordon(
        &mut self,
        node: &Cid,
        cordoned: bool,
        reason: &str,
        draining: bool,
    ) -> Result<NodeView, CoreError> {
        self.ensure_cluster();
        let Some(entry) = self.nodes.get_mut(node) else {
            return Err(CoreError::NotFound(format!("node {node} not found")));
        };
        let reason = if cordoned { reason } else { "" };
        self.store
            .set_node_cordon(node, cordoned, reason, cordoned && draining)?;
        entry.cordoned = cordoned;
        entry.cordon_reason = reason.to_string();
        entry.draining = cordoned && draining;
        self.sync_schedulable(node);
        if !cordoned {
            self.capacity_changed = true;
        }
        info!(node = %node, cordoned, "Cordon changed.");
        self.node_views()
            .into_iter()
            .find(|v| &v.inventory.cid == node)
            .ok_or_else(|| CoreError::NotFound(format!("node {node} not found")))
    }

    fn drain(&mut self, node: &Cid, reason: &str, grace_ms: u32) -> Result<Vec<JobId>, CoreError> {
        self.ensure_cluster();
        self.cordon(node, true, reason, true)?;
        let mut on_node: Vec<JobId> = self
            .jobs
            .iter()
            // Pods are evicted by `kubectl drain`; their GPUs are freed when they are gone.
            .filter(|(_, j)| {
                j.placement
                    .as_ref()
                    .is_some_and(|p| p.pod.is_none() && p.nodes().any(|c| c == node))
            })
            .map(|(id, _)| id.clone())
            .collect();
        on_node.sort();
        let message = if reason.is_empty() {
            format!("node {node} drained")
        } else {
            format!("node {node} drained: {reason}")
        };
        for id in &on_node {
            self.requeue_within(id, "drained", &message, grace_ms)?;
        }
        Ok(on_node)
    }

    fn explain(&self, id: &JobId, by: &Identity) -> Result<Explanation, CoreError> {
        let job = match self.visible(id, by) {
            Ok(job) => job,
            Err(_) => {
                let stored = self.store.job(id)?;
                if by.tenant_scope().is_some_and(|t| t != stored.spec.tenant) {
                    return Err(CoreError::NotFound(format!("job {id} not found")));
                }
                return Ok(Explanation {
                    state: stored.state,
                    summary: format!("job {id} is {}: {}", stored.state, stored.reason),
                    reasons: Vec::new(),
                    nodes_considered: 0,
                    queue_reason: String::new(),
                    placement: None,
                });
            }
        };
        match (&job.placement, &job.wait) {
            (Some(p), _) => Ok(Explanation {
                state: job.state,
                summary: format!(
                    "placed by policy {} on {}",
                    p.policy,
                    p.nodes()
                        .map(|c| c.to_string())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                reasons: Vec::new(),
                nodes_considered: self.cluster.len() as u32,
                queue_reason: String::new(),
                placement: Some(p.clone()),
            }),
            (None, Some(wait)) => {
                let (reasons, nodes_considered) = match wait {
                    Wait::Policy(u) => (
                        u.counts
                            .iter()
                            .map(|(reason, count)| {
                                (reason_key(*reason), *count, u.describe(*reason))
                            })
                            .collect(),
                        u.nodes,
                    ),
                    Wait::Gang(
                        GangWait::NoNode { counts, .. } | GangWait::TooFew { counts, .. },
                    ) => (
                        counts
                            .iter()
                            .map(|(reject, count)| {
                                (reason_key(*reject), *count, reject.describe().to_string())
                            })
                            .collect(),
                        self.cluster.len() as u32,
                    ),
                    Wait::Gang(_) | Wait::Quota(_) | Wait::Reserved { .. } => {
                        (Vec::new(), self.cluster.len() as u32)
                    }
                };
                Ok(Explanation {
                    state: job.state,
                    summary: wait.to_string(),
                    reasons,
                    nodes_considered,
                    queue_reason: match wait {
                        Wait::Quota(_) | Wait::Reserved { .. } => wait.to_string(),
                        Wait::Policy(_) | Wait::Gang(_) => String::new(),
                    },
                    placement: None,
                })
            }
            (None, None) => Ok(Explanation {
                state: job.state,
                summary: if self.cluster.is_empty() {
                    "waiting: no nodes have registered".to_string()
                } else {
                    "waiting for its first scheduling pass".to_string()
                },
                reasons: Vec::new(),
                nodes_considered: self.cluster.len() as u32,
                queue_reason: String::new(),
                placement: None,
            }),
        }
    }

    fn node_views(&self) -> Vec<NodeView> {
        let mut holders: HashMap<(Cid, String), Vec<(JobId, String)>> = HashMap::new();
        for (id, job) in &self.jobs {
            if let Some(p) = &job.placement {
                for slot in &p.replicas {
                    for g in &slot.gpus {
                        holders
                            .entry((slot.node.clone(), g.uuid.clone()))
                            .or_default()
                            .push((id.clone(), job.spec.tenant.clone()));
                    }
                }
            }
        }
        self.nodes
            .iter()
            .map(|(cid, entry)| {
                let engine_node = self.node_ids.get(cid).and_then(|id| self.cluster.node(*id));
                let gpus = entry
                    .inventory
                    .gpus
                    .iter()
                    .map(|info| {
                        let used =
                            engine_node.and_then(|n| n.gpus().iter().find(|g| g.uuid == info.uuid));
                        let mut jobs = holders
                            .get(&(cid.clone(), info.uuid.clone()))
                            .cloned()
                            .unwrap_or_default();
                        jobs.sort();
                        GpuUsageView {
                            uuid: info.uuid.clone(),
                            index: info.index,
                            model: info.model.to_string(),
                            memory_mib: info.memory_mib,
                            milli_used: used.map_or(0, |g| g.milli_used()),
                            memory_used: used.map_or(0, |g| g.memory_used()),
                            exclusive: used.is_some_and(|g| g.is_exclusive()),
                            jobs,
                        }
                    })
                    .collect();
                NodeView {
                    inventory: entry.inventory.clone(),
                    cordoned: entry.cordoned,
                    cordon_reason: entry.cordon_reason.clone(),
                    draining: entry.draining,
                    lost: entry.lost,
                    connected: entry.session.is_some(),
                    invalid: entry.invalid.clone(),
                    last_seen_ms: now_ms()
                        - i64::try_from(entry.last_seen.elapsed().as_millis()).unwrap_or(0),
                    cpu_used: engine_node.map_or(0, |n| n.cpu_milli() - n.cpu_left()),
                    memory_used: engine_node.map_or(0, |n| n.memory_mib() - n.memory_left()),
                    gpus,
                }
            })
            .collect()
    }

    fn metrics(&mut self) -> Result<MetricsView, CoreError> {
        self.ensure_cluster();
        let mut view = MetricsView {
            pending: self.pending.len() as u64,
            connected_agents: self.nodes.values().filter(|n| n.session.is_some()).count() as u64,
            nodes: self.nodes.len() as u64,
            placement_latencies_s: std::mem::take(&mut self.latencies),
            ..Default::default()
        };
        for state in JobState::ALL {
            view.jobs_by_state.insert(state.as_str().to_string(), 0);
        }
        for (state, count) in self.store.job_counts()? {
            view.jobs_by_state.insert(state.as_str().to_string(), count);
        }
        for node in self.cluster.nodes() {
            for gpu in node.gpus() {
                let model = self.cluster.model(gpu.model).to_string();
                let entry = view.gpu_milli_by_model.entry(model).or_default();
                entry.0 += u64::from(gpu.milli_used());
                entry.1 += 1000;
            }
        }
        Ok(view)
    }
}

/// Why the gang planner chose a placement, as named components.
fn gang_score_items(p: &GangPlacement) -> Vec<ScoreItem> {
    vec![
        ScoreItem {
            name: "worst_hop".into(),
            value: p.hop as u8 as f64,
            detail: format!(
                "worst hop between two replicas: {} (same node < same leaf < same spine < \
                 cross spine < cross domain)",
                p.hop
            ),
        },
        ScoreItem {
            name: "group".into(),
            value: p.replicas.len() as f64,
            detail: format!("replicas placed in {}", p.group),
        },
        ScoreItem {
            name: "link_rank".into(),
            value: f64::from(p.worst_link_rank),
            detail: "worst GPU-to-GPU link inside any replica; lower is closer".into(),
        },
        ScoreItem {
            name: "gdr_gpus".into(),
            value: f64::from(p.gdr_gpus),
            detail: "GPUs with a GPUDirect RDMA path to a healthy NIC".into(),
        },
        ScoreItem {
            name: "inter_domain_gbps".into(),
            value: p.inter_domain_gbps,
            detail: "traffic the split implies between domains".into(),
        },
        ScoreItem {
            name: "feasible_nodes".into(),
            value: f64::from(p.feasible_nodes),
            detail: "nodes that could hold at least one replica".into(),
        },
    ]
}

/// The engine's score breakdown as named components, in policy order.
fn score_items(b: &ScoreBreakdown) -> Vec<ScoreItem> {
    let mut items = vec![
        ScoreItem {
            name: "points".into(),
            value: b.points as f64,
            detail: format!("{} points, higher is better", b.policy.name()),
        },
        ScoreItem {
            name: "link_rank".into(),
            value: f64::from(b.link_rank),
            detail: "worst GPU-to-GPU link among the chosen GPUs; lower is closer".into(),
        },
        ScoreItem {
            name: "feasible_nodes".into(),
            value: f64::from(b.feasible_nodes),
            detail: "nodes that passed every filter".into(),
        },
        ScoreItem {
            name: "tied_nodes".into(),
            value: f64::from(b.tied_nodes),
            detail: "nodes with the same best score; the tie-break chose one".into(),
        },
    ];
    items.extend(b.terms.iter().map(|(name, value)| ScoreItem {
        name: (*name).to_string(),
        value: *value,
        detail: format!("{} input", b.policy.name()),
    }));
    items
}

/// What the engine's victim search needs to know about a job holding resources; `None`
/// for a job that holds none.
fn victim_view<'a>(id: &'a JobId, job: &'a LiveJob) -> Option<VictimView<'a>> {
    let placement = job.placement.as_ref()?;
    if job.allocations.is_empty() {
        return None;
    }
    Some(VictimView {
        id,
        tenant: &job.spec.tenant,
        queue: &job.spec.queue,
        priority: job.spec.priority,
        preemptible: job.spec.preemptible,
        started_s: u64::try_from(placement.placed_ms / 1000).unwrap_or(0),
        submitted_s: u64::try_from(job.created_ms / 1000).unwrap_or(0),
        borrowed: job.borrowed,
        charges: &job.charges,
    })
}

/// A time limit in milliseconds, saturating rather than overflowing.
fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// `FewerFreeGpus` → `fewer_free_gpus`.
fn reason_key(reason: impl std::fmt::Debug) -> String {
    let mut key = String::new();
    for (i, ch) in format!("{reason:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                key.push('_');
            }
            key.push(ch.to_ascii_lowercase());
        } else {
            key.push(ch);
        }
    }
    key
}
