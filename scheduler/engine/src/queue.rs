//! The queue: pending jobs in priority order, tenant and queue quotas with borrowing and
//! reclaim, preemption with a bounded victim search, and backfill behind a blocked gang.
//!
//! [`Scheduler`] is a pure struct that owns the cluster model. The daemon submits and
//! finishes jobs, calls [`Scheduler::queue_pass`] with the current time, and carries out the
//! [`Decision`]s it returns (start, preempt, or report why a job waits). Time is seconds on
//! the caller's clock; the engine never reads a clock.
//!
//! One pass:
//! 1. pending jobs in order: higher priority, then earlier submission, then id;
//! 2. each job is placed with [`place_gang`]; a placement that would pass its queue's or its
//!    tenant's maximum quota waits; one above either guarantee is *borrowed* (and
//!    reclaimable: by other tenants when above the tenant's, by sibling queues when above
//!    the queue's; see [`crate::quota`] and [`crate::preempt`]);
//! 3. a job that does not fit may preempt: candidates from [`crate::preempt::candidates`]
//!    are released one at a time, at most `max_victims`, until the job fits; if it still does
//!    not, they are put back on the same GPUs (under new allocation ids);
//! 4. the first job that still cannot run gets a *reservation*: the earliest time (from
//!    running jobs' expected ends) at which it fits, and the nodes it would use then. Later
//!    jobs may backfill onto those nodes only if they end before that time (by their time
//!    limit or expected duration); elsewhere they run freely.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::cluster::{AllocationId, Cluster, NodeId};
use crate::domain::DomainCatalog;
use crate::explain::Unplaceable;
use crate::gang::{
    GangOptions, GangPlacement, GangRequest, GangWait, Hop, ReplicaBound, ReplicaClaim,
};
use crate::gpu::GpuModel;
use crate::job::{JobId, JobSpec};
use crate::links::LinkState;
use crate::model::ClusterModel;
use crate::preempt::{Preemptor, VictimKind, VictimView, candidates, reclaimable};
use crate::quota::{QuotaExceeded, QuotaVerdict, Quotas, Usage};
use crate::request::{GpuDemand, RequestError};
use crate::workload::SingleReplicaPolicy;

/// How long a job runs, as far as the scheduler knows: backfill needs an upper bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Runtime {
    /// The user's estimate.
    pub expected_s: Option<u64>,
    /// The hard limit after which the job is stopped.
    pub limit_s: Option<u64>,
}

impl Runtime {
    /// The latest the job runs: its limit, else its estimate; `None` when unknown.
    pub fn bound_s(&self) -> Option<u64> {
        self.limit_s.or(self.expected_s)
    }
}

/// A job waiting in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedJob {
    pub id: JobId,
    pub gang: GangRequest,
    pub tenant: String,
    pub queue: String,
    pub priority: i32,
    pub preemptible: bool,
    /// Submission time; preempted jobs keep theirs, so they return to their old place.
    pub submitted_s: u64,
    pub runtime: Runtime,
}

impl QueuedJob {
    /// A queued job from a submitted spec.
    pub fn from_spec(
        id: JobId,
        spec: &JobSpec,
        submitted_s: u64,
        runtime: Runtime,
    ) -> Result<QueuedJob, RequestError> {
        Ok(QueuedJob {
            id,
            gang: GangRequest::from_job(spec)?,
            tenant: spec.tenant.clone(),
            queue: spec.queue.clone(),
            priority: spec.priority,
            preemptible: spec.preemptible,
            submitted_s,
            runtime,
        })
    }
}

/// A job the scheduler has started.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub job: QueuedJob,
    pub started_s: u64,
    pub placement: GangPlacement,
    pub allocations: Vec<AllocationId>,
    /// GPU-milli per model, as charged to the quotas of its queue and tenant.
    pub charges: Vec<(GpuModel, u64)>,
    /// Started above its tenant's or its queue's guarantee.
    pub borrowed: bool,
}

impl RunningJob {
    /// What the victim search reads about this job.
    pub fn victim_view(&self) -> VictimView<'_> {
        VictimView {
            id: &self.job.id,
            tenant: &self.job.tenant,
            queue: &self.job.queue,
            priority: self.job.priority,
            preemptible: self.job.preemptible,
            started_s: self.started_s,
            submitted_s: self.job.submitted_s,
            borrowed: self.borrowed,
            charges: &self.charges,
        }
    }
}

/// Tuning of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Preempt to make room for higher-priority work and to reclaim quota.
    pub preemption: bool,
    /// Most victims one job may preempt (bounds the search).
    pub max_victims: usize,
    /// A job runs at least this long before it may be preempted.
    pub min_runtime_s: u64,
    /// Reserve for the first blocked job and backfill around it.
    pub backfill: bool,
    /// Most trial placements when computing a reservation.
    pub reservation_trials: usize,
    /// Strict order: the first job that cannot start holds every job behind it (a FIFO
    /// queue, as simple batch schedulers run it), instead of letting later jobs pass.
    pub strict_order: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            preemption: true,
            max_victims: 16,
            min_runtime_s: 300,
            backfill: true,
            reservation_trials: 32,
            strict_order: false,
        }
    }
}

/// Why a job waits.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitReason {
    /// Placing it would pass its queue's or its tenant's maximum.
    Quota(QuotaExceeded),
    /// A non-preemptible job may not borrow: reclaim could not undo it. `queue` is set when
    /// the queue's guarantee, not the tenant's, is the one it would pass.
    NoBorrowing {
        tenant: String,
        queue: Option<String>,
    },
    /// No room now (and no preemption makes room).
    Placement(GangWait),
    /// A single replica the configured policy found no node for (and no preemption makes
    /// room), with how many nodes failed for which reason.
    NoNode(Unplaceable),
    /// It fits only on nodes reserved for a blocked job and would still run at that start.
    Reserved { holder: JobId, start_s: u64 },
    /// A strict-order queue: a job ahead of it cannot start, so it may not either.
    Behind { head: JobId },
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::Quota(q) => write!(f, "{q}"),
            WaitReason::NoBorrowing {
                tenant,
                queue: None,
            } => write!(
                f,
                "tenant {tenant} is at its guarantee and non-preemptible jobs may not borrow"
            ),
            WaitReason::NoBorrowing {
                tenant,
                queue: Some(queue),
            } => write!(
                f,
                "queue {tenant}/{queue} is at its guarantee and non-preemptible jobs may not borrow"
            ),
            WaitReason::Placement(w) => write!(f, "{w}"),
            WaitReason::NoNode(u) => write!(f, "{u}"),
            WaitReason::Reserved { holder, start_s } => write!(
                f,
                "would delay {holder}, which holds a reservation from t={start_s}s"
            ),
            WaitReason::Behind { head } => {
                write!(
                    f,
                    "waits behind {head}, which cannot start yet (strict order)"
                )
            }
        }
    }
}

/// What one queue pass decided, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start the job here (already allocated in the scheduler's cluster).
    Place {
        job: JobId,
        placement: GangPlacement,
        borrowed: bool,
        /// Ran ahead of a blocked job's reservation.
        backfilled: bool,
    },
    /// Stop this running job; it is pending again.
    Preempt {
        victim: JobId,
        for_job: JobId,
        kind: VictimKind,
    },
    Wait {
        job: JobId,
        reason: WaitReason,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Place {
                job,
                placement,
                borrowed,
                backfilled,
            } => {
                write!(f, "place {job}: {placement}")?;
                if *borrowed {
                    f.write_str(", borrowing quota")?;
                }
                if *backfilled {
                    f.write_str(", backfilled")?;
                }
                Ok(())
            }
            Decision::Preempt {
                victim,
                for_job,
                kind,
            } => {
                let why = match kind {
                    VictimKind::Reclaim => "reclaiming borrowed quota",
                    VictimKind::Priority => "lower priority",
                };
                write!(f, "preempt {victim} for {for_job} ({why})")
            }
            Decision::Wait { job, reason } => write!(f, "{job} waiting: {reason}"),
        }
    }
}

/// Why a queue operation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("job {0} is already queued or running")]
    Duplicate(JobId),
    #[error("no running job {0}")]
    NotRunning(JobId),
    #[error("no pending job {0}")]
    NotPending(JobId),
    #[error("the resources job {0} holds are not free in the cluster")]
    Unclaimable(JobId),
}

/// Why a job found no room in a pass.
#[derive(Debug, Clone, PartialEq)]
enum NoRoom {
    /// The gang planner's reason.
    Gang(GangWait),
    /// The single-replica policy's reason.
    Policy(Unplaceable),
}

impl From<NoRoom> for WaitReason {
    fn from(no_room: NoRoom) -> WaitReason {
        match no_room {
            NoRoom::Gang(wait) => WaitReason::Placement(wait),
            NoRoom::Policy(unplaceable) => WaitReason::NoNode(unplaceable),
        }
    }
}

/// The shapes that did not fit in this pass since the last release, with why: a job of the
/// same gang request, tenant and priority (and the same reservation to avoid) cannot fit
/// either. Found by a hash of the request, then compared field by field.
#[derive(Debug, Clone, Default)]
struct FailedShapes {
    by_hash: HashMap<u64, Vec<(QueuedJob, bool, NoRoom)>>,
}

impl FailedShapes {
    fn key(job: &QueuedJob, avoids: bool) -> u64 {
        // The request's hashable part; the rest of the shape is compared on a hit.
        let mut h = std::hash::DefaultHasher::new();
        job.gang.request.hash(&mut h);
        (job.gang.replicas, job.gang.min_replicas, job.gang.kind).hash(&mut h);
        (&job.tenant, job.priority, avoids).hash(&mut h);
        h.finish()
    }

    fn same(a: &QueuedJob, b: &QueuedJob) -> bool {
        a.gang == b.gang && a.tenant == b.tenant && a.priority == b.priority
    }

    fn get(&self, job: &QueuedJob, avoids: bool) -> Option<&NoRoom> {
        self.by_hash
            .get(&FailedShapes::key(job, avoids))?
            .iter()
            .find(|(seen, a, _)| *a == avoids && FailedShapes::same(seen, job))
            .map(|(_, _, wait)| wait)
    }

    fn insert(&mut self, job: &QueuedJob, avoids: bool, wait: NoRoom) {
        let list = self
            .by_hash
            .entry(FailedShapes::key(job, avoids))
            .or_default();
        match list
            .iter_mut()
            .find(|(seen, a, _)| *a == avoids && FailedShapes::same(seen, job))
        {
            Some(entry) => entry.2 = wait,
            None => list.push((job.clone(), avoids, wait)),
        }
    }

    fn clear(&mut self) {
        self.by_hash.clear();
    }
}

/// A blocked job's claim on the future: from `start_s` it will use `nodes`.
#[derive(Debug, Clone)]
struct Reservation {
    holder: JobId,
    start_s: u64,
    nodes: Vec<bool>,
}

/// A pass over the queue in progress, kept between slices.
#[derive(Debug, Clone)]
struct Pass {
    /// Jobs still to try, in order.
    order: VecDeque<JobId>,
    /// The first blocked job's claim on the future, once there is one.
    reservation: Option<Reservation>,
    /// Shapes that did not fit since capacity was last released: they cannot fit now either.
    failed: FailedShapes,
    /// Free whole GPUs in the cluster.
    free_gpus: u64,
    /// Capacity was released since the last slice: the memo and the count are stale.
    capacity_changed: bool,
    /// With strict order, the first job of this pass that could not start.
    head: Option<JobId>,
}

/// The queue and the cluster it places into.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The cluster, its links and catalog, and the capacity index, kept in step.
    model: ClusterModel,
    quotas: Quotas,
    config: QueueConfig,
    pending: BTreeMap<JobId, QueuedJob>,
    running: BTreeMap<JobId, RunningJob>,
    usage: Usage,
    /// Every GPU model in the cluster, for quota checks of jobs that accept any model.
    models: Vec<GpuModel>,
    /// Places jobs of one plain replica when set; otherwise the gang planner places all.
    single: Option<SingleReplicaPolicy>,
    /// The pass in progress when the last slice stopped before its end.
    pass: Option<Pass>,
}

impl Scheduler {
    pub fn new(
        cluster: Cluster,
        links: LinkState,
        catalog: DomainCatalog,
        quotas: Quotas,
        config: QueueConfig,
    ) -> Scheduler {
        let mut models: Vec<GpuModel> = cluster
            .nodes()
            .iter()
            .flat_map(|n| n.gpus().iter().map(|g| cluster.model(g.model).clone()))
            .collect();
        models.sort();
        models.dedup();
        Scheduler {
            models,
            model: ClusterModel::new(cluster, links, catalog),
            quotas,
            config,
            pending: BTreeMap::new(),
            running: BTreeMap::new(),
            usage: Usage::default(),
            single: None,
            pass: None,
        }
    }

    /// Places jobs of one plain replica by `policy` (see [`SingleReplicaPolicy::applies_to`])
    /// instead of the gang planner, as the daemon does. The policy learns its workload from
    /// the jobs submitted from now on.
    pub fn set_single_replica_policy(&mut self, policy: SingleReplicaPolicy) {
        self.single = Some(policy);
    }

    pub fn cluster(&self) -> &Cluster {
        self.model.cluster()
    }

    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn pending(&self) -> impl Iterator<Item = &QueuedJob> {
        self.pending.values()
    }

    pub fn running(&self) -> impl Iterator<Item = &RunningJob> {
        self.running.values()
    }

    pub fn running_job(&self, id: &JobId) -> Option<&RunningJob> {
        self.running.get(id)
    }

    /// Changes the cluster (cordon, health, MIG mode) and re-indexes what changed.
    pub fn update_cluster(&mut self, change: impl FnOnce(&mut Cluster)) {
        self.pass = None;
        self.model.update(change);
    }

    /// Replaces the live link state (from telemetry).
    pub fn set_links(&mut self, links: LinkState) {
        self.pass = None;
        self.model.set_links(links);
    }

    /// Places with the plain scan over every node instead of the capacity index: slower,
    /// same decisions. The reference the index is checked against.
    pub fn set_plain_scan(&mut self, on: bool) {
        self.model.set_plain_scan(on);
    }

    /// Queues a job.
    pub fn submit(&mut self, job: QueuedJob) -> Result<(), QueueError> {
        if self.pending.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return Err(QueueError::Duplicate(job.id));
        }
        if let Some(single) = self.single.as_mut() {
            single.remember(job.gang.request.clone());
        }
        self.pending.insert(job.id.clone(), job);
        Ok(())
    }

    /// Drops a pending job.
    pub fn cancel_pending(&mut self, id: &JobId) -> Result<QueuedJob, QueueError> {
        self.pending
            .remove(id)
            .ok_or_else(|| QueueError::NotPending(id.clone()))
    }

    /// A running job ended (any way): its resources and quota return.
    pub fn finish(&mut self, id: &JobId) -> Result<RunningJob, QueueError> {
        let job = self
            .running
            .remove(id)
            .ok_or_else(|| QueueError::NotRunning(id.clone()))?;
        self.release(&job);
        if let Some(pass) = self.pass.as_mut() {
            pass.capacity_changed = true;
        }
        Ok(job)
    }

    /// Stops a running job and queues it again in its old place (it keeps its submission
    /// time): its node was lost, or it is retried.
    pub fn requeue(&mut self, id: &JobId) -> Result<(), QueueError> {
        let job = self.finish(id)?.job;
        self.pending.insert(job.id.clone(), job);
        Ok(())
    }

    /// Books a job that is already running on exactly the resources of `placement` (after a
    /// restart, or a pod that Kubernetes started): allocated and charged to its quotas, not
    /// decided again. It counts as borrowed if it is above a guarantee now.
    pub fn restore_running(
        &mut self,
        job: QueuedJob,
        placement: GangPlacement,
        started_s: u64,
    ) -> Result<(), QueueError> {
        if self.pending.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return Err(QueueError::Duplicate(job.id));
        }
        let charges = self.charges(&placement);
        let borrowed = matches!(
            self.quotas
                .check_in_queue(&self.usage, &job.tenant, &job.queue, &charges),
            QuotaVerdict::Borrowing | QuotaVerdict::Over(_)
        );
        let id = job.id.clone();
        if self.start(job, placement, charges, borrowed, started_s) {
            Ok(())
        } else {
            Err(QueueError::Unclaimable(id))
        }
    }

    fn release(&mut self, job: &RunningJob) {
        for id in &job.allocations {
            let _ = self.model.release(*id);
        }
        self.usage
            .remove_in_queue(&job.job.tenant, &job.job.queue, &job.charges);
    }

    /// GPU-milli per model a placement charges.
    fn charges(&self, placement: &GangPlacement) -> Vec<(GpuModel, u64)> {
        self.model
            .cluster()
            .gpu_milli_by_model(placement.replicas.iter().map(|r| &r.claim))
    }

    /// Allocates a placement for a job and records it as running.
    fn start(
        &mut self,
        job: QueuedJob,
        placement: GangPlacement,
        charges: Vec<(GpuModel, u64)>,
        borrowed: bool,
        now_s: u64,
    ) -> bool {
        let Ok(allocations) = self.model.allocate_gang(&placement) else {
            return false;
        };
        self.usage.add_in_queue(&job.tenant, &job.queue, &charges);
        self.running.insert(
            job.id.clone(),
            RunningJob {
                job,
                started_s: now_s,
                placement,
                allocations,
                charges,
                borrowed,
            },
        );
        true
    }

    /// Checks a placement against the quotas of the job's queue and tenant: `Ok(borrowed)` or
    /// why it waits.
    fn admit(&self, job: &QueuedJob, charges: &[(GpuModel, u64)]) -> Result<bool, WaitReason> {
        admit(
            &self.quotas,
            &self.usage,
            &job.tenant,
            &job.queue,
            job.preemptible,
            charges,
        )
    }

    /// A quota check before any placement work: a job whose every allowed model is already
    /// at its queue's or its tenant's maximum cannot start, wherever it would go.
    fn quota_precheck(&self, job: &QueuedJob) -> Option<WaitReason> {
        let models = match job.gang.request.models() {
            [] => self.models.as_slice(),
            listed => listed,
        };
        if models.is_empty() || job.gang.request.gpu_count() == 0 {
            return None;
        }
        let need = job.gang.gpu_milli(job.gang.min_replicas);
        let mut first = None;
        for model in models {
            match self.quotas.check_in_queue(
                &self.usage,
                &job.tenant,
                &job.queue,
                &[(model.clone(), need)],
            ) {
                QuotaVerdict::Over(q) => {
                    first.get_or_insert(q);
                }
                _ => return None,
            }
        }
        first.map(WaitReason::Quota)
    }

    /// Whether a job held back by its tenant's maximum may take back what sibling queues
    /// borrow of the tenant's share: its queue is still owed its own guarantee. Only
    /// reclaims can help it (lower-priority work of other tenants would not lower its
    /// tenant's use), so the caller preempts with `reclaim_only`.
    fn may_reclaim_from_siblings(&self, job: &QueuedJob, reason: &WaitReason) -> bool {
        matches!(reason, WaitReason::Quota(QuotaExceeded { queue: None, .. }))
            && self.config.preemption
            && self.owed_by_queue(job)
    }

    /// Whether the job's queue, with the job, stays within its own guarantee for a model
    /// the job accepts.
    fn owed_by_queue(&self, job: &QueuedJob) -> bool {
        let models = match job.gang.request.models() {
            [] => self.models.as_slice(),
            listed => listed,
        };
        let need = job.gang.gpu_milli(job.gang.min_replicas);
        models.iter().any(|model| {
            self.quotas
                .queue_limit(&job.tenant, &job.queue, model)
                .is_some_and(|limit| {
                    self.usage.get_in_queue(&job.tenant, &job.queue, model) + need
                        <= limit.guaranteed_milli
                })
        })
    }

    /// One pass over the queue at time `now_s`. Decisions are already applied to the
    /// scheduler's state: placed jobs are running, preempted ones pending again.
    pub fn queue_pass(&mut self, now_s: u64) -> Vec<Decision> {
        self.pass = None;
        self.queue_pass_until(now_s, || true).0
    }

    /// A pass in slices: runs the pass in progress (or a new one) until it is done or
    /// `keep_going` says stop, and returns the decisions made and whether the pass is done. A
    /// later call resumes where this one stopped, with the same order, reservation and memo of
    /// failed shapes, so a pass cut into slices decides what one pass would. Jobs submitted in
    /// between wait for the next pass; capacity released in between is seen by the rest of
    /// this one; a changed cluster starts a new pass.
    pub fn queue_pass_until(
        &mut self,
        now_s: u64,
        mut keep_going: impl FnMut() -> bool,
    ) -> (Vec<Decision>, bool) {
        let mut pass = match self.pass.take() {
            Some(pass) => pass,
            None => self.start_pass(),
        };
        if pass.capacity_changed {
            pass.failed.clear();
            pass.free_gpus = self.model.index().free_gpus_total();
            pass.capacity_changed = false;
        }
        let mut decisions = Vec::new();
        while let Some(id) = pass.order.pop_front() {
            if let Some(head) = pass.head.clone() {
                decisions.push(Decision::Wait {
                    job: id,
                    reason: WaitReason::Behind { head },
                });
                continue;
            }
            let before = decisions.len();
            self.pass_step(&mut pass, id.clone(), now_s, &mut decisions);
            let waits = decisions[before..]
                .iter()
                .any(|d| matches!(d, Decision::Wait { job, .. } if *job == id));
            if self.config.strict_order && waits {
                pass.head = Some(id);
            }
            if !pass.order.is_empty() && !keep_going() {
                self.pass = Some(pass);
                return (decisions, false);
            }
        }
        (decisions, true)
    }

    /// A new pass: pending jobs by priority, then submission, then id.
    fn start_pass(&mut self) -> Pass {
        // `Reverse`, not negation: `-i32::MIN` overflows.
        let mut order: Vec<(std::cmp::Reverse<i32>, u64, JobId)> = self
            .pending
            .values()
            .map(|j| (std::cmp::Reverse(j.priority), j.submitted_s, j.id.clone()))
            .collect();
        order.sort();
        if let Some(single) = self.single.as_mut() {
            single.refresh();
        }
        Pass {
            order: order.into_iter().map(|(_, _, id)| id).collect(),
            reservation: None,
            failed: FailedShapes::default(),
            free_gpus: self.model.index().free_gpus_total(),
            capacity_changed: false,
            head: None,
        }
    }

    /// Tries the pending job `id` within `pass`.
    fn pass_step(&mut self, pass: &mut Pass, id: JobId, now_s: u64, decisions: &mut Vec<Decision>) {
        let Some(job) = self.pending.get(&id).cloned() else {
            return;
        };
        let job = &job;
        if let Some(reason) = self.quota_precheck(job) {
            if self.may_reclaim_from_siblings(job, &reason)
                && let Some(mut made) = self.preempt_for(job, now_s, true)
            {
                pass.failed.clear();
                pass.free_gpus = self.model.index().free_gpus_total();
                decisions.append(&mut made);
                return;
            }
            decisions.push(Decision::Wait { job: id, reason });
            return;
        }
        let ends_before_reservation = pass.reservation.as_ref().is_some_and(|r| {
            job.runtime
                .bound_s()
                .is_some_and(|d| now_s.saturating_add(d) <= r.start_s)
        });
        let avoid = pass
            .reservation
            .as_ref()
            .filter(|_| !ends_before_reservation)
            .map(|r| r.nodes.as_slice());
        let whole_needed = match job.gang.request.gpu() {
            GpuDemand::Exclusive { count } => u64::from(*count) * u64::from(job.gang.min_replicas),
            _ => 0,
        };
        let memo = pass.failed.get(job, avoid.is_some()).cloned();
        let from_memo = memo.is_some();
        let attempt = if let Some(w) = memo {
            Err(w)
        } else if whole_needed > pass.free_gpus {
            // Not enough free whole GPUs in the whole cluster: no scan can succeed.
            let per = u64::from(job.gang.request.gpu_count().max(1));
            Err(NoRoom::Gang(GangWait::TooFew {
                needed: job.gang.min_replicas,
                fit: u32::try_from(pass.free_gpus / per).unwrap_or(u32::MAX),
                counts: Vec::new(),
            }))
        } else {
            self.plan(job, avoid)
        };
        let job = job.clone();
        match attempt {
            Ok(placement) => {
                let charges = self.charges(&placement);
                match self.admit(&job, &charges) {
                    Ok(borrowed) => {
                        let used = placed_whole_gpus(&placement);
                        let backfilled = pass.reservation.is_some();
                        self.pending.remove(&id);
                        if self.start(job, placement.clone(), charges, borrowed, now_s) {
                            pass.free_gpus = pass.free_gpus.saturating_sub(used);
                            decisions.push(Decision::Place {
                                job: id,
                                placement,
                                borrowed,
                                backfilled,
                            });
                        }
                    }
                    Err(reason) => {
                        if self.may_reclaim_from_siblings(&job, &reason)
                            && let Some(mut made) = self.preempt_for(&job, now_s, true)
                        {
                            pass.failed.clear();
                            pass.free_gpus = self.model.index().free_gpus_total();
                            decisions.append(&mut made);
                            return;
                        }
                        decisions.push(Decision::Wait { job: id, reason });
                    }
                }
            }
            Err(wait) => {
                if self.config.preemption
                    && !from_memo
                    && let Some(mut made) = self.preempt_for(&job, now_s, false)
                {
                    pass.failed.clear();
                    pass.free_gpus = self.model.index().free_gpus_total();
                    decisions.append(&mut made);
                    return;
                }
                pass.failed.insert(&job, avoid.is_some(), wait.clone());
                let reason = match (&pass.reservation, avoid) {
                    (Some(r), Some(_))
                        if !matches!(wait, NoRoom::Gang(GangWait::Network { .. })) =>
                    {
                        // Fits without the pass.reservation? Then the pass.reservation is the reason.
                        let free = self
                            .model
                            .place_gang_if_fits(&job.gang, &GangOptions::default());
                        if free.is_some() {
                            WaitReason::Reserved {
                                holder: r.holder.clone(),
                                start_s: r.start_s,
                            }
                        } else {
                            wait.into()
                        }
                    }
                    _ => wait.into(),
                };
                if self.config.backfill && pass.reservation.is_none() {
                    pass.reservation = self.reserve(&job, now_s);
                }
                decisions.push(Decision::Wait { job: id, reason });
            }
        }
    }

    /// Where `job` would go now, avoiding the nodes marked in `avoid`: by the single-replica
    /// policy when one is set and the job is one plain replica, else by the gang planner. The
    /// policy does not know about held nodes, so when it picks one the planner, which does,
    /// places the job instead; so it does while the policy has no workload to build from.
    fn plan(&mut self, job: &QueuedJob, avoid: Option<&[bool]>) -> Result<GangPlacement, NoRoom> {
        if SingleReplicaPolicy::applies_to(&job.gang)
            && let Some(single) = self.single.as_mut()
        {
            let held = |node: NodeId| avoid.is_some_and(|a| a.get(node.index()) == Some(&true));
            match single.place(self.model.cluster(), &job.gang.request) {
                Some(Ok(p)) if !held(p.claim.node) => {
                    return Ok(GangPlacement {
                        group: format!("node {} by {}", p.node_name, single.kind().name()),
                        replicas: vec![ReplicaClaim {
                            claim: p.claim,
                            node_name: p.node_name,
                        }],
                        hop: Hop::SameNode,
                        domains: Vec::new(),
                        inter_domain_gbps: 0.0,
                        worst_link_rank: 0,
                        gdr_gpus: 0,
                        feasible_nodes: 0,
                    });
                }
                Some(Err(unplaceable)) => return Err(NoRoom::Policy(unplaceable)),
                _ => {}
            }
        }
        self.model
            .place_gang(&job.gang, &GangOptions { avoid })
            .map_err(NoRoom::Gang)
    }

    /// The earliest time `job` fits if running jobs end when their runtime bound says, and the
    /// nodes it would use then. Jobs without a bound never end in this projection.
    fn reserve(&self, job: &QueuedJob, now_s: u64) -> Option<Reservation> {
        let mut ends: Vec<(u64, &RunningJob)> = self
            .running
            .values()
            .filter_map(|r| {
                r.job
                    .runtime
                    .bound_s()
                    .map(|d| (r.started_s.saturating_add(d).max(now_s), r))
            })
            .collect();
        ends.sort_by(|a, b| (a.0, &a.1.job.id).cmp(&(b.0, &b.1.job.id)));
        // Jobs ending at the same moment are released together: one trial per moment.
        let moments: Vec<&[(u64, &RunningJob)]> = ends
            .chunk_by(|a, b| a.0 == b.0)
            .take(self.config.reservation_trials)
            .collect();
        // A trial before enough GPUs could be free cannot succeed: start at the first moment
        // that frees enough, and when none does, skip copying the cluster altogether.
        let first = match ReplicaBound::new(self.model.cluster(), self.model.index(), &job.gang) {
            Some(mut bound) => {
                let need = u64::from(job.gang.min_replicas.max(1));
                let mut first = None;
                for (k, moment) in moments.iter().enumerate() {
                    for (_, r) in moment.iter() {
                        for replica in &r.placement.replicas {
                            let gpus = u32::try_from(replica.claim.gpus.len()).unwrap_or(u32::MAX);
                            bound.free(self.model.cluster(), replica.claim.node, gpus);
                        }
                    }
                    if bound.replicas() >= need {
                        first = Some(k);
                        break;
                    }
                }
                first?
            }
            None => 0,
        };
        let mut future = self.model.clone();
        for (k, moment) in moments.iter().enumerate() {
            for (_, r) in moment.iter() {
                for id in &r.allocations {
                    let _ = future.release(*id);
                }
            }
            if k < first {
                continue;
            }
            if let Some(p) = future.place_gang_if_fits(&job.gang, &GangOptions::default()) {
                let mut nodes = vec![false; self.model.cluster().len()];
                for n in p.nodes() {
                    nodes[n.index()] = true;
                }
                return Some(Reservation {
                    holder: job.id.clone(),
                    start_s: moment[0].0,
                    nodes,
                });
            }
        }
        None
    }

    /// Tries to make room for `job` by preempting candidates one at a time. On success the
    /// victims are pending again, the job runs, and the decisions say so; otherwise nothing
    /// changed.
    fn preempt_for(
        &mut self,
        job: &QueuedJob,
        now_s: u64,
        reclaim_only: bool,
    ) -> Option<Vec<Decision>> {
        let need = job.gang.gpu_milli(job.gang.min_replicas);
        let preemptor = Preemptor {
            tenant: &job.tenant,
            queue: &job.queue,
            priority: job.priority,
            gpu_milli: need,
            models: job.gang.request.models(),
        };
        let list = {
            let views = self.running.values().map(RunningJob::victim_view);
            candidates(
                views,
                &preemptor,
                &self.quotas,
                &self.usage,
                now_s,
                self.config.min_runtime_s,
                self.config.max_victims,
            )
        };
        let list: Vec<(VictimKind, JobId)> = list
            .into_iter()
            .filter(|(kind, _)| !reclaim_only || *kind == VictimKind::Reclaim)
            .collect();
        if list.is_empty() {
            return None;
        }
        let mut taken: Vec<(VictimKind, RunningJob)> = Vec::new();
        let mut found = None;
        for (kind, id) in list {
            let Some(victim) = self.running.get(&id) else {
                continue;
            };
            // Reclaim only while the victim's tenant or queue still borrows what the
            // preemptor is owed: earlier victims may have ended that.
            if kind == VictimKind::Reclaim
                && !reclaimable(&victim.victim_view(), &preemptor, &self.quotas, &self.usage)
            {
                continue;
            }
            let victim = self.running.remove(&id).expect("present just above");
            self.release(&victim);
            taken.push((kind, victim));
            if let Some(p) = self
                .model
                .place_gang_if_fits(&job.gang, &GangOptions::default())
            {
                let charges = self.charges(&p);
                if let Ok(borrowed) = self.admit(job, &charges) {
                    found = Some((p, charges, borrowed));
                    break;
                }
            }
        }
        let Some((placement, charges, borrowed)) = found else {
            self.restore(taken);
            return None;
        };
        let mut decisions = Vec::new();
        for (kind, victim) in taken {
            decisions.push(Decision::Preempt {
                victim: victim.job.id.clone(),
                for_job: job.id.clone(),
                kind,
            });
            self.pending.insert(victim.job.id.clone(), victim.job);
        }
        self.pending.remove(&job.id);
        if !self.start(job.clone(), placement.clone(), charges, borrowed, now_s) {
            // The placement was computed on this very state, so this is unreachable in
            // practice; keep the job pending rather than lose it.
            self.pending.insert(job.id.clone(), job.clone());
            return Some(decisions);
        }
        decisions.push(Decision::Place {
            job: job.id.clone(),
            placement,
            borrowed,
            backfilled: false,
        });
        Some(decisions)
    }

    /// Puts released victims back exactly where they were.
    fn restore(&mut self, taken: Vec<(VictimKind, RunningJob)>) {
        for (_, mut victim) in taken.into_iter().rev() {
            match self.model.allocate_gang(&victim.placement) {
                Ok(ids) => {
                    victim.allocations = ids;
                    self.usage
                        .add_in_queue(&victim.job.tenant, &victim.job.queue, &victim.charges);
                    self.running.insert(victim.job.id.clone(), victim);
                }
                Err(_) => {
                    // Nothing else was allocated in between, so the same claims fit again;
                    // should that ever fail, the job is safer pending than lost.
                    self.pending.insert(victim.job.id.clone(), victim.job);
                }
            }
        }
    }
}

/// Judges `charges` for work of `tenant`'s `queue` against both quotas: `Ok(borrowed)`, or
/// why it waits. Borrowing is refused to non-preemptible work, since reclaim could not undo
/// it.
pub fn admit(
    quotas: &Quotas,
    usage: &Usage,
    tenant: &str,
    queue: &str,
    preemptible: bool,
    charges: &[(GpuModel, u64)],
) -> Result<bool, WaitReason> {
    match quotas.check_in_queue(usage, tenant, queue, charges) {
        QuotaVerdict::Within => Ok(false),
        QuotaVerdict::Borrowing if preemptible => Ok(true),
        QuotaVerdict::Borrowing => {
            // Name the tenant when its own guarantee is passed, else the queue's.
            let by_tenant = charges.iter().any(|(model, milli)| {
                quotas
                    .limit(tenant, model)
                    .is_some_and(|l| usage.get(tenant, model) + milli > l.guaranteed_milli)
            });
            Err(WaitReason::NoBorrowing {
                tenant: tenant.to_string(),
                queue: (!by_tenant).then(|| queue.to_string()),
            })
        }
        QuotaVerdict::Over(q) => Err(WaitReason::Quota(q)),
    }
}

fn placed_whole_gpus(p: &GangPlacement) -> u64 {
    p.replicas
        .iter()
        .map(|r| r.claim.gpus.iter().filter(|g| g.exclusive).count() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Request;

    fn job(id: &str, gpus: u32) -> QueuedJob {
        let request =
            Request::new(8_000, 65_536, GpuDemand::Exclusive { count: gpus }).expect("valid");
        QueuedJob {
            id: JobId(id.into()),
            gang: GangRequest::new(request, 2),
            tenant: "research".into(),
            queue: "default".into(),
            priority: 1,
            preemptible: true,
            submitted_s: 0,
            runtime: Runtime::default(),
        }
    }

    fn wait(fit: u32) -> NoRoom {
        NoRoom::Gang(GangWait::TooFew {
            needed: 2,
            fit,
            counts: Vec::new(),
        })
    }

    /// The memo of failed shapes answers for any job of the same gang request, tenant,
    /// priority and reservation, whatever its id, queue or submission time; any other
    /// difference is a different shape.
    #[test]
    fn failed_shapes_match_on_the_whole_shape() {
        let mut memo = FailedShapes::default();
        let first = job("a", 8);
        memo.insert(&first, false, wait(1));
        let mut twin = job("b", 8);
        twin.queue = "urgent".into();
        twin.submitted_s = 99;
        assert_eq!(memo.get(&twin, false), Some(&wait(1)));
        assert_eq!(memo.get(&twin, true), None, "another reservation to avoid");
        let mut other = job("c", 8);
        other.priority = 2;
        assert_eq!(memo.get(&other, false), None, "another priority");
        other = job("c", 8);
        other.tenant = "prod".into();
        assert_eq!(memo.get(&other, false), None, "another tenant");
        other = job("c", 8);
        other.gang.replica_traffic_gbps = 50.0;
        assert_eq!(memo.get(&other, false), None, "a field outside the hash");
        other = job("c", 8);
        other.gang.topology.rdma_required = true;
        assert_eq!(memo.get(&other, false), None, "another topology");
        assert_eq!(memo.get(&job("c", 4), false), None, "another request");
        memo.insert(&twin, false, wait(0));
        assert_eq!(memo.get(&first, false), Some(&wait(0)), "the latest reason");
        memo.clear();
        assert_eq!(memo.get(&first, false), None);
    }
}
