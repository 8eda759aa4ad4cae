//! A job's life in the table and the store: state transitions, cancel, finish, requeue,
//! and the resources a job gives back.

use suanli_engine::JobState;
use suanli_engine::job::JobId;
use tracing::{info, warn};

use super::{AgentCommand, CANCEL_GRACE_MS, Core, CoreError, LiveJob, seconds_to_ms};
use crate::auth::Identity;
use crate::placement::StoredPlacement;
use crate::store::{JobRecord, StoreError};

impl Core {
    pub(super) fn visible(&self, id: &JobId, by: &Identity) -> Result<&LiveJob, CoreError> {
        let not_found = || CoreError::JobNotFound(id.clone());
        let job = self.jobs.get(id).ok_or_else(not_found)?;
        match by.tenant_scope() {
            Some(tenant) if tenant != job.spec.tenant => Err(not_found()),
            _ => Ok(job),
        }
    }

    pub(super) fn cancel(
        &mut self,
        id: &JobId,
        by: &Identity,
        reason: &str,
    ) -> Result<JobRecord, CoreError> {
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
        self.queue.amend(id, |queued| {
            queued.priority = spec.priority;
            queued.preemptible = spec.preemptible;
            queued.queue = spec.queue.clone();
        });
        if let Some(job) = self.jobs.get_mut(id) {
            job.spec = spec;
        }
        Ok(self.store.job(id)?)
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
