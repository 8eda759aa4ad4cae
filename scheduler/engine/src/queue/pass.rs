//! One pass over the queue: order, memo of failed shapes, reservation and backfill.

use std::ops::Bound::{Excluded, Unbounded};

use super::*;

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

/// Running jobs expected to end together (when, if known), released in one trial.
type Moment<'a> = (Option<u64>, &'a [(u64, &'a RunningJob)]);

/// A blocked job's claim on the future: from `start_s` (unknown when it waits for jobs
/// without a runtime bound) it will use `nodes`.
#[derive(Debug, Clone)]
struct Reservation {
    holder: JobId,
    start_s: Option<u64>,
    nodes: Vec<bool>,
}

/// A pass over the queue in progress, kept between slices.
#[derive(Debug, Clone)]
pub(super) struct Pass {
    /// The last job tried; the pass goes on with the next one in queue order.
    cursor: Option<OrderKey>,
    /// Jobs queued from this number on arrived during the pass: they wait for the next.
    seq: u64,
    /// The first blocked job's claim on the future, once there is one.
    reservation: Option<Reservation>,
    /// Shapes that did not fit since capacity was last released: they cannot fit now either.
    failed: FailedShapes,
    /// Free whole GPUs in the cluster.
    free_gpus: u64,
    /// Capacity was released since the last slice: the memo and the count are stale.
    pub(super) capacity_changed: bool,
}

impl Scheduler {
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
        let mut stepped = false;
        loop {
            let next = {
                let after = match &pass.cursor {
                    Some(key) => self.order.range((Excluded(key), Unbounded)),
                    None => self.order.range::<OrderKey, _>(..),
                };
                after
                    .filter(|(_, queued)| **queued < pass.seq)
                    .map(|(key, _)| key.clone())
                    .next()
            };
            let Some(key) = next else {
                break;
            };
            if stepped && !keep_going() {
                self.pass = Some(pass);
                return (decisions, false);
            }
            stepped = true;
            let id = key.2.clone();
            pass.cursor = Some(key);
            let before = decisions.len();
            self.pass_step(&mut pass, id.clone(), now_s, &mut decisions);
            let waits = decisions[before..]
                .iter()
                .any(|d| matches!(d, Decision::Wait { job, .. } if *job == id));
            if self.config.strict_order && waits {
                // Everything behind it waits for it: nothing more to decide.
                break;
            }
        }
        (decisions, true)
    }

    /// A new pass over the jobs queued now, in queue order.
    fn start_pass(&mut self) -> Pass {
        self.changed = false;
        if let Some(single) = self.single.as_mut() {
            single.refresh();
        }
        Pass {
            cursor: None,
            seq: self.next_seq,
            reservation: None,
            failed: FailedShapes::default(),
            free_gpus: self.model.index().free_gpus_total(),
            capacity_changed: false,
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
                .zip(r.start_s)
                .is_some_and(|(d, start)| now_s.saturating_add(d) <= start)
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
            Ok((placement, policy_score)) => {
                let charges = self.charges(&placement);
                match self.admit(&job, &charges) {
                    Ok(borrowed) => {
                        let used = placed_whole_gpus(&placement);
                        let backfilled = pass.reservation.is_some();
                        self.remove_pending(&id);
                        if self.start(job, placement.clone(), charges, borrowed, now_s) {
                            pass.free_gpus = pass.free_gpus.saturating_sub(used);
                            decisions.push(Decision::Place {
                                job: id,
                                placement,
                                policy_score,
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
                        // Fits without the reservation? Then the reservation is the reason.
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
    /// A placement by the policy comes with the policy's score.
    fn plan(
        &mut self,
        job: &QueuedJob,
        avoid: Option<&[bool]>,
    ) -> Result<(GangPlacement, Option<ScoreBreakdown>), NoRoom> {
        if SingleReplicaPolicy::applies_to(&job.gang)
            && let Some(single) = self.single.as_mut()
        {
            let held = |node: NodeId| avoid.is_some_and(|a| a.get(node.index()) == Some(&true));
            match single.place(self.model.cluster(), &job.gang.request) {
                Some(Ok(p)) if !held(p.claim.node) => {
                    let group = format!("node {} by {}", p.node_name, single.kind().name());
                    let replica = ReplicaClaim {
                        claim: p.claim,
                        node_name: p.node_name,
                    };
                    return Ok((
                        GangPlacement::of_claims(vec![replica], group),
                        Some(p.breakdown),
                    ));
                }
                Some(Err(unplaceable)) => return Err(NoRoom::Policy(unplaceable)),
                _ => {}
            }
        }
        self.model
            .place_gang(&job.gang, &GangOptions { avoid })
            .map(|placement| (placement, None))
            .map_err(NoRoom::Gang)
    }

    /// The earliest time `job` fits if running jobs end when their runtime bound says, and the
    /// nodes it would use then. Jobs without a bound are assumed to end after every bounded
    /// one, oldest first (the best guess there is): a reservation that needs them has no
    /// known start, so nothing may backfill onto its nodes, but they are still held.
    fn reserve(&self, job: &QueuedJob, now_s: u64) -> Option<Reservation> {
        let mut bounded: Vec<(u64, &RunningJob)> = Vec::new();
        let mut unbounded: Vec<(u64, &RunningJob)> = Vec::new();
        for r in self.running.values() {
            match r.job.runtime.bound_s() {
                Some(d) => bounded.push((r.started_s.saturating_add(d).max(now_s), r)),
                None => unbounded.push((r.started_s, r)),
            }
        }
        bounded.sort_by(|a, b| (a.0, &a.1.job.id).cmp(&(b.0, &b.1.job.id)));
        unbounded.sort_by(|a, b| (a.0, &a.1.job.id).cmp(&(b.0, &b.1.job.id)));
        let trials = self.config.reservation_trials;
        // Jobs ending at the same moment are released together: one trial per moment.
        let mut moments: Vec<Moment<'_>> = bounded
            .chunk_by(|a, b| a.0 == b.0)
            .take(trials)
            .map(|m| (Some(m[0].0), m))
            .collect();
        // The trials left go to the unbounded jobs, in equal batches.
        let left = trials.saturating_sub(moments.len());
        if left > 0 && !unbounded.is_empty() {
            let batch = unbounded.len().div_ceil(left);
            moments.extend(unbounded.chunks(batch).map(|m| (None, m)));
        }
        // A trial before enough GPUs could be free cannot succeed: start at the first moment
        // that frees enough, and when none does, skip copying the cluster altogether.
        let first = match ReplicaBound::new(self.model.cluster(), self.model.index(), &job.gang) {
            Some(mut bound) => {
                let need = u64::from(job.gang.min_replicas.max(1));
                let mut first = None;
                for (k, (_, moment)) in moments.iter().enumerate() {
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
        for (k, (start_s, moment)) in moments.iter().enumerate() {
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
                    start_s: *start_s,
                    nodes,
                });
            }
        }
        None
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
