//! A job's life in the table and the store: state transitions, cancel, finish, requeue,
//! and the resources a job gives back.

use suanli_engine::gang::GangRequest;
use suanli_engine::job::{JobId, MAX_TIME_LIMIT_S};
use suanli_engine::queue::QueueError;
use suanli_engine::{JobSpec, JobState};
use tracing::{info, warn};

use super::{AgentCommand, CANCEL_GRACE_MS, Core, CoreError, LiveJob, seconds_to_ms};
use crate::auth::Identity;
use crate::placement::{ReplicaSlot, StoredPlacement};
use crate::store::{JobRecord, StoreError};

/// What an update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobUpdate {
    pub priority: Option<i32>,
    pub preemptible: Option<bool>,
    /// A queue within the job's tenant.
    pub queue: Option<String>,
    /// Counted from the job's placement, as at submission.
    pub time_limit_s: Option<u64>,
    /// An elastic job's size, between its `min_replicas` and `replicas`.
    pub replicas: Option<u32>,
}

/// Whether an elastic job may take `replicas`: within its bounds, and not a Kubernetes
/// pod (whose size is its workload's). Whether a placed job has room to grow is the
/// engine's to say.
fn check_resize(
    id: &JobId,
    spec: &JobSpec,
    placement: Option<&StoredPlacement>,
    replicas: u32,
) -> Result<(), CoreError> {
    let Some(min) = spec.min_replicas else {
        return Err(CoreError::InvalidArgument(format!(
            "replicas: job {id} is not elastic (its spec sets no min_replicas); only an elastic \
             job changes size"
        )));
    };
    if replicas < min || replicas > spec.replicas {
        return Err(CoreError::InvalidArgument(format!(
            "replicas: must be between {min} and {} (the job's min_replicas and replicas), got \
             {replicas}",
            spec.replicas
        )));
    }
    if placement.is_some_and(|p| p.pod.is_some()) {
        return Err(CoreError::FailedPrecondition(format!(
            "replicas: job {id} is a Kubernetes pod; scale its workload instead"
        )));
    }
    Ok(())
}

impl Core {
    pub(super) fn visible(&self, id: &JobId, by: &Identity) -> Result<&LiveJob, CoreError> {
        let not_found = || CoreError::JobNotFound(id.clone());
        let job = self.jobs.get(id).ok_or_else(not_found)?;
        match by.tenant_scope() {
            Some(tenant) if tenant != job.spec.tenant => Err(not_found()),
            _ => Ok(job),
        }
    }

    /// The stored job, if `by` may act on it (another tenant's job is not found) and it has
    /// not ended.
    fn stored_to_change(&self, id: &JobId, by: &Identity) -> Result<JobRecord, CoreError> {
        let stored = self.store.job(id)?;
        if let Some(tenant) = by.tenant_scope()
            && tenant != stored.spec.tenant
        {
            return Err(CoreError::JobNotFound(id.clone()));
        }
        if stored.state.is_terminal() {
            return Err(CoreError::JobEnded {
                id: id.clone(),
                state: stored.state,
            });
        }
        Ok(stored)
    }

    pub(super) fn cancel(
        &mut self,
        id: &JobId,
        by: &Identity,
        reason: &str,
    ) -> Result<JobRecord, CoreError> {
        self.stored_to_change(id, by)?;
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

    pub(super) fn update(
        &mut self,
        id: &JobId,
        by: &Identity,
        update: JobUpdate,
    ) -> Result<JobRecord, CoreError> {
        let stored = self.stored_to_change(id, by)?;
        let job = self.visible(id, by)?;
        if update.preemptible == Some(true)
            && let Some(pod) = job.placement.as_ref().and_then(|p| p.pod.as_ref())
        {
            return Err(CoreError::FailedPrecondition(format!(
                "job {id} is Kubernetes pod {pod}, which Suanli cannot stop: it stays non-preemptible"
            )));
        }
        let mut spec = job.spec.clone();
        let mut placement = job.placement.clone();
        let state = job.state;
        let mut changes = Vec::new();
        if let Some(p) = update.priority {
            changes.push(format!("priority {} → {p}", spec.priority));
            spec.priority = p;
        }
        if let Some(p) = update.preemptible {
            changes.push(format!("preemptible {} → {p}", spec.preemptible));
            spec.preemptible = p;
        }
        if let Some(q) = update.queue {
            changes.push(format!("queue {} → {q}", spec.queue));
            spec.queue = q;
        }
        if let Some(limit) = update.time_limit_s {
            // Checked here, not by the spec's validation, to quote the value as sent.
            if !(1..=MAX_TIME_LIMIT_S.unsigned_abs()).contains(&limit) {
                return Err(CoreError::InvalidArgument(format!(
                    "time_limit_s: must be between 1 and {MAX_TIME_LIMIT_S}, got {limit}"
                )));
            }
            let before = spec
                .time_limit_s
                .map_or_else(|| "none".to_string(), |s| format!("{s} s"));
            changes.push(format!("time limit {before} → {limit} s"));
            spec.time_limit_s = Some(limit);
        }
        let mut stopped = Vec::new();
        // Replica numbers to start on a placed job that grows, after its highest one.
        let mut starting = Vec::new();
        if let Some(replicas) = update.replicas {
            check_resize(id, &spec, placement.as_ref(), replicas)?;
            let mut from = spec.replicas;
            if let Some(p) = placement.as_mut() {
                let placed = p.replicas.len();
                if (replicas as usize) < placed {
                    stopped = p.replicas.split_off(replicas as usize);
                } else if replicas as usize > placed {
                    let next = p.replicas.iter().map(|s| s.replica + 1).max().unwrap_or(0);
                    starting = (next..).take(replicas as usize - placed).collect();
                    // An elastic job may run fewer than its spec asks: it grows from those.
                    from = u32::try_from(placed).unwrap_or(u32::MAX);
                }
            }
            if replicas != spec.replicas || !stopped.is_empty() || !starting.is_empty() {
                let mut change = format!("replicas {from} → {replicas}");
                let (verb, moved) = if stopped.is_empty() {
                    ("starting", starting.clone())
                } else {
                    ("stopping", stopped.iter().map(|s| s.replica).collect())
                };
                if !moved.is_empty() {
                    let names: Vec<String> = moved.iter().map(u32::to_string).collect();
                    change.push_str(&format!(" ({verb} replica {})", names.join(", ")));
                }
                changes.push(change);
            }
            spec.replicas = replicas;
        }
        spec.validate()
            .map_err(|e| CoreError::InvalidArgument(e.to_string()))?;
        if changes.is_empty() {
            return Ok(stored);
        }
        let gang = match update.replicas {
            Some(_) => Some(GangRequest::from_job(&spec).map_err(|e| {
                CoreError::InvalidArgument(format!(
                    "replicas: the engine cannot place this job: {e}"
                ))
            })?),
            None => None,
        };
        // The spec and a resized placement are one change: both are stored, or neither.
        self.store.begin_batch()?;
        let mut started = Vec::new();
        let mut grown_from = 0;
        if let (Some(replicas), Some(p)) = (update.replicas, placement.as_mut())
            && !starting.is_empty()
        {
            started = match self.grow_running(id, replicas, &starting) {
                Ok(started) => started,
                Err(e) => {
                    self.store.rollback_batch();
                    return Err(e);
                }
            };
            grown_from = u32::try_from(p.replicas.len()).unwrap_or(u32::MAX);
            p.replicas.extend(started.iter().cloned());
        }
        let resized = !stopped.is_empty() || !started.is_empty();
        let written = self
            .store
            .update_spec(id, &spec, &changes.join(", "))
            .and_then(|event| match &placement {
                Some(p) if resized => self.store.set_placement(id, p).map(|()| event),
                _ => Ok(event),
            })
            .and_then(|event| self.store.commit_batch().map(|()| event));
        let event = match written {
            Ok(event) => event,
            Err(e) => {
                self.store.rollback_batch();
                if !started.is_empty() {
                    // Unrecorded, the new replicas must not hold anything.
                    if let Err(e) = self.queue.shrink(id, grown_from) {
                        warn!(job = %id, error = %e, "Could not release unrecorded replicas.");
                    }
                }
                return Err(e.into());
            }
        };
        self.publish(event);
        if let (Some(replicas), Some(p)) = (update.replicas, &placement)
            && started.is_empty()
        {
            self.shrink_running(id, replicas, &stopped, p.attempt);
        }
        self.queue.amend(id, |queued| {
            queued.priority = spec.priority;
            queued.preemptible = spec.preemptible;
            queued.queue = spec.queue.clone();
            queued.runtime.limit_s = spec.time_limit_s;
            if let Some(gang) = gang {
                queued.gang = gang;
            }
        });
        let shrunk = placement.as_ref().filter(|_| !stopped.is_empty());
        let now_all_started = shrunk.is_some_and(StoredPlacement::all_started);
        let now_all_exited = shrunk.is_some_and(StoredPlacement::all_exited);
        if let Some(job) = self.jobs.get_mut(id) {
            job.spec = spec.clone();
            job.placement = placement.clone();
        }
        // Sent once the placement is stored and live, so each new replica's peers are the
        // whole grown gang.
        if let Some(p) = &placement {
            for slot in &started {
                self.assign(id, &spec, slot, p.attempt);
            }
            if !started.is_empty() {
                info!(job = %id, replicas = p.replicas.len(), "Grew a running job.");
            }
        }
        // The replicas still starting were the ones stopped: the rest all run.
        if now_all_started && state == JobState::Placed {
            self.transition(
                id,
                JobState::Running,
                "started",
                "every replica is running",
                Some(placement.as_ref()),
            )?;
        }
        // The kept replicas ended already (with code 0, or the job would have failed): only
        // the stopped ones were running.
        if now_all_exited {
            self.finish(
                id,
                JobState::Succeeded,
                "exited",
                "every kept replica exited with code 0",
            )?;
        }
        Ok(self.store.job(id)?)
    }

    /// Grows a placed job to `to` replicas in the engine (its request too, so a requeue asks
    /// for `to`) and returns the slots of the new ones, numbered `replicas`. Refused, with
    /// the engine's reason, when there is no room or quota for them: nothing changes then.
    fn grow_running(
        &mut self,
        id: &JobId,
        to: u32,
        replicas: &[u32],
    ) -> Result<Vec<ReplicaSlot>, CoreError> {
        let added = self.queue.grow(id, to).map_err(|e| match e {
            QueueError::NotRunning(_) => CoreError::FailedPrecondition(format!(
                "replicas: job {id} holds no resources while the cluster is rebuilt; try \
                 again shortly"
            )),
            e => CoreError::FailedPrecondition(format!("replicas: {e}")),
        })?;
        Ok(replicas
            .iter()
            .zip(&added)
            .map(|(replica, r)| self.slot_for(*replica, &r.claim, Vec::new()))
            .collect())
    }

    /// Shrinks a placed job to its first `keep` replicas in the engine (its request too, so
    /// a requeue asks for `keep`), and tells the agents of the `stopped` ones to stop them.
    /// Their slots are gone from the placement, so the exits those stops cause are not the
    /// job's.
    fn shrink_running(&mut self, id: &JobId, keep: u32, stopped: &[ReplicaSlot], attempt: u32) {
        match self.queue.shrink(id, keep) {
            Ok(_) => {}
            // Nothing booked (its cluster is being rebuilt): the rebuild books the smaller
            // placement.
            Err(QueueError::NotRunning(_)) => {}
            Err(e) => warn!(job = %id, error = %e, "Could not release the stopped replicas."),
        }
        self.cancel_slots(id, stopped, attempt, CANCEL_GRACE_MS);
        if !stopped.is_empty() {
            info!(job = %id, replicas = keep, "Shrunk a running job.");
        }
    }

    /// Records a transition in the store, publishes its event and mirrors it in memory.
    pub(super) fn transition(
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
    pub(super) fn finish(
        &mut self,
        id: &JobId,
        to: JobState,
        reason: &str,
        message: &str,
    ) -> Result<(), CoreError> {
        self.release(id);
        let _ = self.queue.cancel_pending(id);
        self.transition(id, to, reason, message, None)?;
        self.jobs.remove(id);
        info!(job = %id, state = %to, "Job finished.");
        Ok(())
    }

    /// Gives back a job's GPUs and quota, if it holds any.
    pub(super) fn release(&mut self, id: &JobId) {
        // A job that holds nothing (pending, or its node is gone) has nothing to give back.
        let _ = self.queue.finish(id);
    }

    /// Tells agents to stop every replica of a job that was placed.
    pub(super) fn stop_replicas(&mut self, id: &JobId) {
        self.stop_replicas_within(id, CANCEL_GRACE_MS);
    }

    /// Stops every replica, each with `grace_ms` between SIGTERM and SIGKILL.
    pub(super) fn stop_replicas_within(&mut self, id: &JobId, grace_ms: u32) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let Some(placement) = &job.placement else {
            return;
        };
        self.cancel_slots(id, &placement.replicas, placement.attempt, grace_ms);
    }

    /// Tells the agents of `slots` that have not exited to stop them, with `grace_ms`
    /// between SIGTERM and SIGKILL.
    fn cancel_slots(&self, id: &JobId, slots: &[ReplicaSlot], attempt: u32, grace_ms: u32) {
        for slot in slots.iter().filter(|s| s.exit_code.is_none()) {
            self.send_to(
                &slot.node,
                AgentCommand::Cancel {
                    job_id: id.clone(),
                    replica: slot.replica,
                    attempt,
                    grace_period_ms: grace_ms,
                },
            );
        }
    }

    /// Sends a job that held resources back to pending (node lost, drained), or fails it once
    /// it has used all its attempts.
    pub(super) fn requeue(
        &mut self,
        id: &JobId,
        reason: &str,
        message: &str,
    ) -> Result<(), CoreError> {
        self.requeue_within(id, reason, message, CANCEL_GRACE_MS)
    }

    /// [`Core::requeue`], giving the stopped replicas `grace_ms` before SIGKILL.
    pub(super) fn requeue_within(
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
    pub(super) fn back_in_queue(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        job.placement = None;
        self.enqueue_again(id);
    }

    /// Stops jobs that have run past their time limit (counted from placement) and fails
    /// them with that reason.
    pub(super) fn check_time_limits(&mut self) {
        let now = self.now_ms();
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
}
