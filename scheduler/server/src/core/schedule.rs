//! The scheduling pass: pending jobs in order, each planned by the configured policy (one
//! replica) or the gang planner (several), admitted against its quotas, given room by
//! preemption when that is allowed, and otherwise told why it waits; the first blocked job
//! holds the nodes it will get (its reservation), which later jobs may use only if they end
//! before it starts (backfill).

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use suanli_engine::cluster::{AllocationId, Claim};
use suanli_engine::explain::Unplaceable;
use suanli_engine::gang::{GangOptions, GangPlacement, GangRequest, GangWait};
use suanli_engine::job::JobId;
use suanli_engine::policy::ScoreBreakdown;
use suanli_engine::preempt::{Preemptor, VictimKind, VictimView, candidates, reclaimable};
use suanli_engine::queue::{WaitReason, admit};
use suanli_engine::quota::{QuotaVerdict, Quotas};
use suanli_engine::request::Request;
use suanli_engine::workload::SingleReplicaPolicy;
use suanli_engine::{GpuModel, JobSpec, JobState};
use tracing::{info, warn};

use super::{Core, CoreError, LiveJob, seconds_to_ms};
use crate::placement::{GrantRecord, ReplicaSlot, ScoreItem, StoredPlacement};

/// Why a pending job is still pending.
#[derive(Debug, Clone)]
pub(super) enum Wait {
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
pub(super) struct Plan {
    /// Each replica's claim, with the score that chose its node (single placements).
    pub(super) replicas: Vec<(Claim, Vec<ScoreItem>)>,
    /// What chose them: the policy's name, or `gang`.
    pub(super) how: String,
    /// Why the replicas sit where they do together (gang placements).
    pub(super) score: Vec<ScoreItem>,
}

/// Running jobs released to make room for another, and why each may go.
pub(super) type Victims = Vec<(VictimKind, JobId)>;

/// Nodes held for the first job that could not be placed: later jobs of no higher priority
/// may not take them, so that job is not starved by a stream of smaller ones.
pub(super) struct Reservation {
    pub(super) holder: JobId,
    pub(super) priority: i32,
    /// `true` at the position of each held node in the cluster.
    pub(super) nodes: Arc<[bool]>,
    /// When the nodes are expected to be free (ms since the epoch), if every job they wait
    /// for has a time limit. Jobs sure to end by then may still use them (backfill).
    pub(super) start_ms: Option<i64>,
}

/// Most trial placements when looking for the nodes a blocked job will get.
pub(super) const RESERVATION_TRIALS: usize = 32;

/// A scheduling pass in progress: the jobs still to try, and request shapes that did not fit
/// during this pass (the cluster only fills up within a pass, so they would not fit again).
pub(super) struct Pass {
    pub(super) order: VecDeque<JobId>,
    pub(super) failed_shapes: HashSet<String>,
}

impl Core {
    /// Tries pending jobs in priority order. Within one pass a request shape that did not fit
    /// is not tried again: the cluster only fills up during a pass.
    ///
    /// A pass runs for at most `budget` at a time and resumes on the next call, so commands
    /// (submits above all) are never held up behind a long pass. Returns whether work is left.
    pub(super) fn schedule(&mut self, budget: Duration) -> bool {
        let started = self.instant();
        if self.pass.is_none() {
            if self.pending.is_empty() || (!self.capacity_changed && self.untried.is_empty()) {
                return false;
            }
            self.single.refresh();
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
        let now = self.now_ms();
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

    /// Counts a submitted job into the workload the placement policy expects.
    pub(super) fn remember(&mut self, spec: &JobSpec) {
        if let Ok(request) = Request::from_job(spec) {
            self.single.remember(request);
        }
    }

    /// Places a job, all replicas or none (elastic jobs: at least their minimum), within its
    /// tenant's quota. Returns whether it was placed.
    ///
    /// One replica goes where the configured policy (FGD by default) scores best; several go
    /// through the gang planner, which keeps a training gang close on the fabric and spreads
    /// inference replicas over nodes and leaves.
    pub(super) fn try_place(
        &mut self,
        id: &JobId,
        avoid: Option<&[bool]>,
    ) -> Result<bool, CoreError> {
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
            .model
            .cluster()
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
            match self.model.allocate(claim) {
                Ok(alloc) => allocations.push(alloc),
                Err(e) => {
                    warn!(job = %id, error = %e, "Engine placement did not fit.");
                    self.release_allocations(&allocations);
                    self.restore_victims(victims);
                    return Ok(false);
                }
            }
        }
        let attempt = self.jobs.get(id).map_or(1, |j| j.attempts + 1);
        let slots = claims
            .iter()
            .enumerate()
            .map(|(replica, (claim, score))| self.slot_for(replica as u32, claim, score.clone()))
            .collect::<Vec<_>>();
        let placement = StoredPlacement {
            policy: how,
            placed_ms: self.now_ms(),
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
            .push((self.now_ms() - created_ms).max(0) as f64 / 1000.0);
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

    pub(super) fn quotas(&self) -> &Quotas {
        &self.config.quotas
    }

    /// Judges a placement's charges against the job's queue and tenant quotas: whether it
    /// borrows, or why it waits.
    pub(super) fn admit(&self, spec: &JobSpec, charges: &[(GpuModel, u64)]) -> Result<bool, Wait> {
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
    pub(super) fn plan_with_room(
        &mut self,
        spec: &JobSpec,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
    ) -> Result<Option<(Plan, Victims)>, Wait> {
        let plan = match self.plan(gang, avoid) {
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
            .model
            .cluster()
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
    pub(super) fn make_room(
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
        let now_s = u64::try_from(self.now_ms() / 1000).unwrap_or(0);
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
            if let Ok(Some(plan)) = self.plan(gang, avoid) {
                let charges = self
                    .model
                    .cluster()
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
    pub(super) fn restore_victims(&mut self, victims: Victims) {
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
    pub(super) fn reclaim_resources(&mut self, id: &JobId) -> Result<(), String> {
        let claims = self
            .claims_of(id)
            .ok_or_else(|| "a node or GPU of its placement is gone".to_string())?;
        let charges = self.model.cluster().gpu_milli_by_model(claims.iter());
        let mut allocations = Vec::with_capacity(claims.len());
        for claim in &claims {
            match self.model.allocate(claim) {
                Ok(a) => allocations.push(a),
                Err(e) => {
                    self.release_allocations(&allocations);
                    return Err(e.to_string());
                }
            }
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
    pub(super) fn preempt(
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
    pub(super) fn plan(
        &mut self,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
    ) -> Result<Option<Plan>, Wait> {
        if !SingleReplicaPolicy::applies_to(gang) {
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
    pub(super) fn blocked(
        &mut self,
        id: &JobId,
        spec: &JobSpec,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
        wait: Wait,
    ) -> Wait {
        if avoid.is_some() {
            if matches!(self.plan(gang, None), Ok(Some(_)))
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
    pub(super) fn reserve(&self, gang: &GangRequest) -> Option<(Arc<[bool]>, Option<i64>)> {
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
        let mut start_ms = Some(self.now_ms());
        let mut future = self.model.clone();
        let chunk = holders.len().div_ceil(RESERVATION_TRIALS).max(1);
        for batch in holders.chunks(chunk) {
            for (unlimited, end, _, allocations) in batch {
                start_ms = match (start_ms, unlimited) {
                    (Some(s), false) => Some(s.max(*end)),
                    _ => None,
                };
                for alloc in *allocations {
                    let _ = future.release(*alloc);
                }
            }
            if let Ok(p) = future.place_gang(gang, &GangOptions::default()) {
                let mut nodes = vec![false; self.model.cluster().len()];
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
    pub(super) fn plan_single(&mut self, request: &Request) -> Result<Option<Plan>, Wait> {
        match self.single.place(self.model.cluster(), request) {
            None => Ok(None),
            Some(Ok(placement)) => Ok(Some(Plan {
                replicas: vec![(placement.claim, score_items(&placement.breakdown))],
                how: self.single.kind().name().to_string(),
                score: Vec::new(),
            })),
            Some(Err(unplaceable)) => Err(Wait::Policy(unplaceable)),
        }
    }

    /// Several replicas by the gang planner: one claim per replica, or why they do not fit
    /// together.
    pub(super) fn plan_gang(
        &self,
        gang: &GangRequest,
        avoid: Option<&[bool]>,
    ) -> Result<Option<Plan>, Wait> {
        let placement = self
            .model
            .place_gang(gang, &GangOptions { avoid })
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

    pub(super) fn release_allocations(&mut self, allocations: &[AllocationId]) {
        for alloc in allocations {
            let _ = self.model.release(*alloc);
        }
    }

    /// Keeps why a job waits, in memory for `describe` and in the store as its reason.
    pub(super) fn record_wait(&mut self, id: &JobId, wait: Wait) -> Result<(), CoreError> {
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

    pub(super) fn slot_for(
        &self,
        replica: u32,
        claim: &Claim,
        score: Vec<ScoreItem>,
    ) -> ReplicaSlot {
        let node = &self.model.cluster().nodes()[claim.node.index()];
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
}

/// Why the gang planner chose a placement, as named components.
pub(super) fn gang_score_items(p: &GangPlacement) -> Vec<ScoreItem> {
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
pub(super) fn score_items(b: &ScoreBreakdown) -> Vec<ScoreItem> {
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
pub(super) fn victim_view<'a>(id: &'a JobId, job: &'a LiveJob) -> Option<VictimView<'a>> {
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
