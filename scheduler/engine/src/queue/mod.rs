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

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::cluster::{AllocationId, Cluster, ClusterError, NodeId};
use crate::domain::DomainCatalog;
use crate::explain::Unplaceable;
use crate::gang::{GangOptions, GangPlacement, GangRequest, GangWait, ReplicaBound, ReplicaClaim};
use crate::gpu::GpuModel;
use crate::job::{JobId, JobSpec};
use crate::links::LinkState;
use crate::model::ClusterModel;
use crate::policy::{Placement as PolicyPlacement, ScoreBreakdown};
use crate::preempt::{Preemptor, VictimKind, VictimView, candidates, reclaimable};
use crate::quota::{QuotaExceeded, QuotaVerdict, Quotas, Usage};
use crate::request::{GpuDemand, Request, RequestError};
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
    /// What a submitted job says of its runtime: its time limit; it gives no estimate.
    pub fn of_spec(spec: &JobSpec) -> Runtime {
        Runtime {
            expected_s: None,
            limit_s: spec.time_limit_s,
        }
    }

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
    /// queue, as simple batch schedulers run it), instead of letting later jobs pass. The
    /// pass ends there: the jobs behind it get no decision of their own.
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
    /// `start_s` is when the held nodes are expected free, if every job they wait for has a
    /// runtime bound.
    Reserved { holder: JobId, start_s: Option<u64> },
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
            WaitReason::Reserved {
                holder,
                start_s: Some(start_s),
            } => write!(
                f,
                "would delay {holder}, which holds a reservation from t={start_s}s"
            ),
            WaitReason::Reserved {
                holder,
                start_s: None,
            } => write!(
                f,
                "would delay {holder}, which holds a reservation until running jobs end"
            ),
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
        /// The single-replica policy's score, when that policy chose the node.
        policy_score: Option<ScoreBreakdown>,
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
                ..
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
    #[error("job {id} runs {placed} replica(s); it cannot shrink to {keep}")]
    CannotShrink { id: JobId, placed: usize, keep: u32 },
    #[error("job {id} cannot grow to {to} replica(s): {reason}")]
    CannotGrow { id: JobId, to: u32, reason: String },
}

/// The queue and the cluster it places into.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The cluster, its links and catalog, and the capacity index, kept in step.
    model: ClusterModel,
    quotas: Quotas,
    config: QueueConfig,
    pending: BTreeMap<JobId, QueuedJob>,
    /// The pending jobs in queue order, each with the number it was queued under.
    order: BTreeMap<OrderKey, u64>,
    /// The number the next queued job gets.
    next_seq: u64,
    running: BTreeMap<JobId, RunningJob>,
    usage: Usage,
    /// Every GPU model in the cluster, for quota checks of jobs that accept any model.
    models: Vec<GpuModel>,
    /// Places jobs of one plain replica when set; otherwise the gang planner places all.
    single: Option<SingleReplicaPolicy>,
    /// The pass in progress when the last slice stopped before its end.
    pass: Option<Pass>,
    /// Something that may let a pending job start happened since the last pass began: a
    /// job arrived or changed, capacity was freed or the cluster changed.
    changed: bool,
}

impl Scheduler {
    pub fn new(
        cluster: Cluster,
        links: LinkState,
        catalog: DomainCatalog,
        quotas: Quotas,
        config: QueueConfig,
    ) -> Scheduler {
        Scheduler {
            models: gpu_models(&cluster),
            model: ClusterModel::new(cluster, links, catalog),
            quotas,
            config,
            pending: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            running: BTreeMap::new(),
            usage: Usage::default(),
            single: None,
            pass: None,
            changed: true,
        }
    }

    /// Replaces the cluster (nodes joined or left): running jobs are forgotten, their
    /// resources and quota use with them, for the caller to book again with
    /// [`Scheduler::restore_running`] on the new node positions. Pending jobs stay queued.
    pub fn reset_cluster(&mut self, cluster: Cluster, links: LinkState) {
        self.models = gpu_models(&cluster);
        let catalog = self.model.catalog().clone();
        self.model = ClusterModel::new(cluster, links, catalog);
        self.running.clear();
        self.usage = Usage::default();
        self.pass = None;
        self.changed = true;
    }

    /// The policy that places plain single replicas, if one is set.
    pub fn single_replica_policy(&self) -> Option<&SingleReplicaPolicy> {
        self.single.as_ref()
    }

    pub fn single_replica_policy_mut(&mut self) -> Option<&mut SingleReplicaPolicy> {
        self.single.as_mut()
    }

    /// Where the single-replica policy would place `request` now, without allocating it;
    /// `None` when no policy is set or it is not ready.
    pub fn place_single(
        &mut self,
        request: &Request,
    ) -> Option<Result<PolicyPlacement, Unplaceable>> {
        self.single.as_mut()?.place(self.model.cluster(), request)
    }

    /// Whether a pass could decide anything new: one is in progress, or jobs wait and
    /// something happened since the last pass began that may let one start. A pass with
    /// nothing new would only repeat the last one's waits (time alone changes only which
    /// victims have run long enough, which the next event picks up).
    pub fn has_work(&self) -> bool {
        self.pass.is_some() || (self.changed && !self.pending.is_empty())
    }

    pub fn is_pending(&self, id: &JobId) -> bool {
        self.pending.contains_key(id)
    }

    /// Changes what the queue knows of a pending or running job (priority, preemptibility,
    /// queue, runtime; a pending job's request too). A running job's quota use moves with it
    /// to its new queue.
    pub fn amend(&mut self, id: &JobId, change: impl FnOnce(&mut QueuedJob)) -> bool {
        if let Some(mut job) = self.remove_pending(id) {
            change(&mut job);
            self.insert_pending(job);
            self.pass = None;
            self.changed = true;
            return true;
        }
        let Some(running) = self.running.get_mut(id) else {
            return false;
        };
        let (tenant, queue) = (running.job.tenant.clone(), running.job.queue.clone());
        let gang = running.job.gang.clone();
        change(&mut running.job);
        // Tenant and request are not the caller's to change under a running job: its
        // allocations hold them ([`Scheduler::shrink`] changes its size).
        running.job.tenant = tenant.clone();
        running.job.gang = gang;
        if running.job.queue != queue {
            self.usage
                .remove_in_queue(&tenant, &queue, &running.charges);
            self.usage
                .add_in_queue(&tenant, &running.job.queue, &running.charges);
        }
        self.changed = true;
        true
    }

    /// Cordons or uncordons a node: it takes no new work while cordoned.
    pub fn set_cordoned(&mut self, node: NodeId, cordoned: bool) -> Result<(), ClusterError> {
        self.pass = None;
        self.changed = true;
        self.model.set_cordoned(node, cordoned)
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
        self.changed = true;
        self.model.update(change);
    }

    /// Replaces the live link state (from telemetry).
    pub fn set_links(&mut self, links: LinkState) {
        self.pass = None;
        self.changed = true;
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
        self.insert_pending(job);
        self.changed = true;
        Ok(())
    }

    /// Queues a job that was queued before (its node was lost, it was drained) without
    /// counting it again in the single-replica policy's workload.
    pub fn return_to_queue(&mut self, job: QueuedJob) -> Result<(), QueueError> {
        if self.pending.contains_key(&job.id) || self.running.contains_key(&job.id) {
            return Err(QueueError::Duplicate(job.id));
        }
        self.insert_pending(job);
        self.changed = true;
        Ok(())
    }

    /// Drops a pending job. A reservation it held goes with it, so the next pass may differ.
    pub fn cancel_pending(&mut self, id: &JobId) -> Result<QueuedJob, QueueError> {
        let job = self
            .remove_pending(id)
            .ok_or_else(|| QueueError::NotPending(id.clone()))?;
        self.changed = true;
        Ok(job)
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
        self.changed = true;
        Ok(job)
    }

    /// Shrinks a running job to its first `keep` replicas: the allocations of the others
    /// are released and its quota charge drops to what the kept ones hold. Returns the
    /// released replicas, for the caller to stop. Its request shrinks with it, so a job
    /// queued again asks for `keep`.
    pub fn shrink(&mut self, id: &JobId, keep: u32) -> Result<Vec<ReplicaClaim>, QueueError> {
        let mut job = self
            .running
            .remove(id)
            .ok_or_else(|| QueueError::NotRunning(id.clone()))?;
        let placed = job.placement.replicas.len();
        let kept = usize::try_from(keep).unwrap_or(usize::MAX);
        if keep == 0 || kept > placed {
            self.running.insert(id.clone(), job);
            return Err(QueueError::CannotShrink {
                id: id.clone(),
                placed,
                keep,
            });
        }
        let released = job.placement.replicas.split_off(kept);
        for allocation in job.allocations.split_off(kept) {
            let _ = self.model.release(allocation);
        }
        job.job.gang.replicas = keep;
        job.job.gang.min_replicas = job.job.gang.min_replicas.min(keep);
        let charges = self.charges(&job.placement);
        self.usage
            .remove_in_queue(&job.job.tenant, &job.job.queue, &job.charges);
        self.usage
            .add_in_queue(&job.job.tenant, &job.job.queue, &charges);
        // `borrowed` stays: the job started above a guarantee, and a smaller share of it
        // is still reclaimable first.
        job.charges = charges;
        self.running.insert(id.clone(), job);
        if !released.is_empty() {
            if let Some(pass) = self.pass.as_mut() {
                pass.capacity_changed = true;
            }
            self.changed = true;
        }
        Ok(released)
    }

    /// Grows a running job to `to` replicas: the missing ones are placed by the gang planner
    /// on free resources, checked against the job's quotas, allocated and appended to its
    /// placement. Nothing is preempted for them; without room or quota the job is left as
    /// it was. Returns the new replicas, for the caller to start. Its request grows with it,
    /// so a job queued again asks for `to`.
    pub fn grow(&mut self, id: &JobId, to: u32) -> Result<Vec<ReplicaClaim>, QueueError> {
        let job = self
            .running
            .get(id)
            .ok_or_else(|| QueueError::NotRunning(id.clone()))?;
        let refuse = |reason: String| QueueError::CannotGrow {
            id: id.clone(),
            to,
            reason,
        };
        let placed = u32::try_from(job.placement.replicas.len()).unwrap_or(u32::MAX);
        if to < placed {
            return Err(refuse(format!("it runs {placed}; shrink it instead")));
        }
        let extra = to - placed;
        if extra == 0 {
            return Ok(Vec::new());
        }
        // The new replicas form a gang of their own: all of them or none, under the job's
        // request and topology.
        let gang = GangRequest {
            replicas: extra,
            min_replicas: extra,
            ..job.job.gang.clone()
        };
        let added = self
            .model
            .place_gang(&gang, &GangOptions::default())
            .map_err(|wait| refuse(wait.to_string()))?;
        let extra_charges = self.charges(&added);
        let borrowed = self
            .admit(&job.job, &extra_charges)
            .map_err(|wait| refuse(wait.to_string()))?;
        let allocations = self
            .model
            .allocate_gang(&added)
            .map_err(|e| refuse(e.to_string()))?;
        let mut job = self.running.remove(id).expect("looked up above");
        job.placement
            .replicas
            .extend(added.replicas.iter().cloned());
        job.allocations.extend(allocations);
        job.job.gang.replicas = to;
        let charges = self.charges(&job.placement);
        self.usage
            .remove_in_queue(&job.job.tenant, &job.job.queue, &job.charges);
        self.usage
            .add_in_queue(&job.job.tenant, &job.job.queue, &charges);
        // Borrowed once, reclaimable as a whole: the job has no per-replica share.
        job.borrowed |= borrowed;
        job.charges = charges;
        self.running.insert(id.clone(), job);
        // A pass in progress counted on the capacity just taken.
        self.pass = None;
        self.changed = true;
        Ok(added.replicas)
    }

    /// Stops a running job and queues it again in its old place (it keeps its submission
    /// time): its node was lost, or it is retried.
    pub fn requeue(&mut self, id: &JobId) -> Result<(), QueueError> {
        let job = self.finish(id)?.job;
        self.insert_pending(job);
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

    /// Queues a job under the next number.
    fn insert_pending(&mut self, job: QueuedJob) {
        self.order.insert(order_key(&job), self.next_seq);
        self.next_seq += 1;
        self.pending.insert(job.id.clone(), job);
    }

    fn remove_pending(&mut self, id: &JobId) -> Option<QueuedJob> {
        let job = self.pending.remove(id)?;
        self.order.remove(&order_key(&job));
        Some(job)
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
}

/// Where a job stands in the queue: higher priority, then earlier submission, then id.
/// (`Reverse`, not negation: `-i32::MIN` overflows.)
type OrderKey = (Reverse<i32>, u64, JobId);

fn order_key(job: &QueuedJob) -> OrderKey {
    (Reverse(job.priority), job.submitted_s, job.id.clone())
}

/// Every GPU model in `cluster`, sorted, once each.
fn gpu_models(cluster: &Cluster) -> Vec<GpuModel> {
    let mut models: Vec<GpuModel> = cluster
        .nodes()
        .iter()
        .flat_map(|n| n.gpus().iter().map(|g| cluster.model(g.model).clone()))
        .collect();
    models.sort();
    models.dedup();
    models
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

mod pass;
use pass::Pass;
mod room;
