//! The core's side of scheduling: it feeds the engine's queue ([`Scheduler`]) the jobs and
//! the cluster, runs its pass in time slices, and carries out the decisions: a placement is
//! stored and sent to agents, a preempted job is stopped and queued again, a wait is
//! recorded with its reason. Every placement choice is the queue's; the simulator runs the
//! same queue.

use std::collections::BTreeSet;
use std::time::Duration;

use suanli_engine::cluster::Claim;
use suanli_engine::gang::{GangPlacement, ReplicaClaim};
use suanli_engine::job::JobId;
use suanli_engine::policy::ScoreBreakdown;
use suanli_engine::preempt::VictimKind;
use suanli_engine::queue::{Decision, QueuedJob, Runtime, WaitReason, admit};
use suanli_engine::request::Request;
use suanli_engine::{GpuModel, JobSpec, JobState};
use tracing::{info, warn};

use super::{Core, CoreError};
use crate::placement::{GrantRecord, ReplicaSlot, ScoreItem, StoredPlacement};

/// Why a job waits, in the daemon's words: the queue's, except that a reservation's start
/// is a date rather than the queue's seconds.
pub(super) fn wait_text(wait: &WaitReason) -> String {
    match wait {
        WaitReason::Reserved { holder, start_s } => {
            let start = start_s
                .and_then(|s| i64::try_from(s).ok())
                .and_then(|s| jiff::Timestamp::from_second(s).ok());
            match start {
                Some(at) => format!(
                    "it fits only on nodes held for {holder}, which waits ahead of it and \
                     should start by {at}"
                ),
                None => format!(
                    "it fits only on nodes held for {holder}, which waits ahead of it until \
                     running jobs end"
                ),
            }
        }
        other => other.to_string(),
    }
}

/// Milliseconds since the epoch as the queue's seconds.
pub(super) fn ms_to_s(ms: i64) -> u64 {
    u64::try_from(ms / 1000).unwrap_or(0)
}

impl Core {
    /// Runs the queue's pass for at most `budget`, then carries out its decisions. A pass
    /// cut short resumes on the next call, so commands (submits above all) are never held up
    /// behind a long pass. Returns whether work is left.
    pub(super) fn schedule(&mut self, budget: Duration) -> bool {
        if !self.queue.has_work() {
            return false;
        }
        let clock = std::sync::Arc::clone(&self.config.clock);
        let started = clock.instant();
        let now_s = ms_to_s(self.now_ms());
        let (decisions, _) = self
            .queue
            .queue_pass_until(now_s, || clock.instant().duration_since(started) < budget);
        for decision in decisions {
            if let Err(e) = self.carry_out(decision) {
                warn!(error = %e, "A scheduling decision could not be recorded.");
            }
        }
        self.queue.has_work()
    }

    /// Records one of the queue's decisions and tells whom it concerns.
    fn carry_out(&mut self, decision: Decision) -> Result<(), CoreError> {
        match decision {
            Decision::Place {
                job,
                placement,
                policy_score,
                ..
            } => self.placed(&job, &placement, policy_score),
            Decision::Preempt {
                victim,
                for_job,
                kind,
            } => self.preempt(&victim, &for_job, kind),
            Decision::Wait { job, reason } => self.record_wait(&job, reason),
        }
    }

    /// What the queue knows of a live job: its request, quota owner, priority and
    /// submission time.
    pub(super) fn queued_job(&self, id: &JobId) -> Result<QueuedJob, CoreError> {
        let job = self
            .jobs
            .get(id)
            .ok_or_else(|| CoreError::JobNotFound(id.clone()))?;
        let runtime = Runtime::of_spec(&job.spec);
        QueuedJob::from_spec(id.clone(), &job.spec, ms_to_s(job.created_ms), runtime).map_err(|e| {
            CoreError::InvalidArgument(format!("the engine cannot place this job: {e}"))
        })
    }

    /// Queues a submitted job (once: its request counts into the policy's workload), or
    /// fails it if the engine cannot place it at all.
    pub(super) fn enqueue(&mut self, id: &JobId) -> Result<(), CoreError> {
        match self.queued_job(id) {
            Ok(job) => {
                if let Err(e) = self.queue.submit(job) {
                    warn!(job = %id, error = %e, "Already queued.");
                }
                Ok(())
            }
            Err(e) => self.finish(id, JobState::Failed, "unplaceable", &e.to_string()),
        }
    }

    /// Puts a job that held resources back in the queue, at its old place.
    pub(super) fn enqueue_again(&mut self, id: &JobId) {
        if self.queue.is_pending(id) {
            return;
        }
        match self.queued_job(id) {
            Ok(job) => {
                if let Err(e) = self.queue.return_to_queue(job) {
                    warn!(job = %id, error = %e, "Could not queue again.");
                }
            }
            Err(e) => warn!(job = %id, error = %e, "Cannot queue again."),
        }
    }

    /// Counts a job into the workload the placement policy expects, without queueing it
    /// (a job that already runs, after a restart; a pod).
    pub(super) fn remember(&mut self, spec: &JobSpec) {
        if let (Ok(request), Some(single)) = (
            Request::from_job(spec),
            self.queue.single_replica_policy_mut(),
        ) {
            single.remember(request);
        }
    }

    /// Books a job on exactly `claims` in the queue's cluster (it runs already, or a pod was
    /// bound there), charged to its quotas.
    pub(super) fn book(
        &mut self,
        id: &JobId,
        claims: Vec<Claim>,
        started_ms: i64,
    ) -> Result<(), String> {
        let job = self.queued_job(id).map_err(|e| e.to_string())?;
        let cluster = self.queue.cluster();
        let replicas = claims
            .into_iter()
            .map(|claim| ReplicaClaim {
                node_name: cluster.nodes()[claim.node.index()].name().to_string(),
                claim,
            })
            .collect();
        let placement = GangPlacement::of_claims(replicas, "booked".to_string());
        self.queue
            .restore_running(job, placement, ms_to_s(started_ms))
            .map_err(|e| e.to_string())
    }

    /// Books a placed job again from its stored placement.
    pub(super) fn reclaim_resources(&mut self, id: &JobId) -> Result<(), String> {
        let claims = self
            .claims_of(id)
            .ok_or_else(|| "a node or GPU of its placement is gone".to_string())?;
        let placed_ms = self
            .jobs
            .get(id)
            .and_then(|j| j.placement.as_ref())
            .map_or(0, |p| p.placed_ms);
        self.book(id, claims, placed_ms)
    }

    /// Stores a placement the queue made and sends its replicas to their agents.
    fn placed(
        &mut self,
        id: &JobId,
        placement: &GangPlacement,
        policy_score: Option<ScoreBreakdown>,
    ) -> Result<(), CoreError> {
        let Some(job) = self.jobs.get(id) else {
            // Not the core's job (cannot happen: every queued job is live); free its room.
            let _ = self.queue.finish(id);
            return Ok(());
        };
        let spec = job.spec.clone();
        let attempt = job.attempts + 1;
        let created_ms = job.created_ms;
        let (how, score, first_score) = match &policy_score {
            Some(breakdown) => (
                breakdown.policy.name().to_string(),
                Vec::new(),
                score_items(breakdown),
            ),
            None => ("gang".to_string(), gang_score_items(placement), Vec::new()),
        };
        let mut first_score = Some(first_score);
        let slots = placement
            .replicas
            .iter()
            .enumerate()
            .map(|(replica, r)| {
                let score = first_score.take().unwrap_or_default();
                self.slot_for(replica as u32, &r.claim, score)
            })
            .collect::<Vec<_>>();
        let now_ms = self.now_ms();
        let stored = StoredPlacement {
            policy: how,
            placed_ms: now_ms,
            attempt,
            replicas: slots,
            score,
            pod: None,
        };
        let where_ = stored
            .nodes()
            .map(|c| c.node_name().unwrap_or("?").to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ");
        let placed = stored.replicas.len();
        let message = if placed < spec.replicas as usize {
            format!(
                "{placed} of {} replica(s) (elastic minimum {}) on {where_}",
                spec.replicas,
                spec.min_replicas.unwrap_or(spec.replicas)
            )
        } else {
            format!("{placed} replica(s) on {where_}")
        };
        if let Err(e) = self.transition(
            id,
            JobState::Placed,
            "placed",
            &message,
            Some(Some(&stored)),
        ) {
            // Unrecorded, it must not hold anything: back to the queue.
            if let Err(e) = self.queue.requeue(id) {
                warn!(job = %id, error = %e, "Could not requeue an unrecorded placement.");
            }
            return Err(e);
        }
        self.latencies
            .push((now_ms - created_ms).max(0) as f64 / 1000.0);
        if self.latencies.len() > 100_000 {
            self.latencies.drain(..50_000);
        }
        if let Some(job) = self.jobs.get_mut(id) {
            job.placement = Some(stored.clone());
            job.wait = None;
        }
        info!(job = %id, replicas = placed, nodes = %where_, "Placed job.");
        for slot in &stored.replicas {
            self.assign(id, &spec, slot, attempt);
        }
        Ok(())
    }

    /// Judges a placement's charges against the job's queue and tenant quotas: whether it
    /// borrows, or why it waits.
    pub(super) fn admit(
        &self,
        spec: &JobSpec,
        charges: &[(GpuModel, u64)],
    ) -> Result<bool, WaitReason> {
        admit(
            self.queue.quotas(),
            self.queue.usage(),
            &spec.tenant,
            &spec.queue,
            spec.preemptible,
            charges,
        )
    }

    /// Stops a victim the queue preempted for `for_job` (the queue holds it pending again,
    /// at its old place) and records why.
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
        if let Some(job) = self.jobs.get_mut(victim) {
            job.placement = None;
        }
        Ok(())
    }

    /// Keeps why a job waits, in memory for `describe` and in the store as its reason.
    pub(super) fn record_wait(&mut self, id: &JobId, wait: WaitReason) -> Result<(), CoreError> {
        let Some(job) = self.jobs.get_mut(id) else {
            return Ok(());
        };
        // Every pass repeats the waits; store the reason only when it changes.
        if job.wait.as_ref() == Some(&wait) {
            return Ok(());
        }
        let reason = wait_text(&wait);
        let unchanged = job.wait.as_ref().is_some_and(|w| wait_text(w) == reason);
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
        let node = &self.queue.cluster().nodes()[claim.node.index()];
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
