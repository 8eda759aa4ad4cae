//! Room for a blocked job: quota checks before placement, and preemption with a bounded
//! victim search that is undone when it does not help.

use super::*;

impl Scheduler {
    /// A quota check before any placement work: a job whose every allowed model is already
    /// at its queue's or its tenant's maximum cannot start, wherever it would go.
    pub(super) fn quota_precheck(&self, job: &QueuedJob) -> Option<WaitReason> {
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
    pub(super) fn may_reclaim_from_siblings(&self, job: &QueuedJob, reason: &WaitReason) -> bool {
        matches!(reason, WaitReason::Quota(QuotaExceeded { queue: None, .. }))
            && self.config.preemption
            && self.owed_by_queue(job)
    }

    /// Whether the job's queue, with the job, stays within its own guarantee for a model
    /// the job accepts.
    pub(super) fn owed_by_queue(&self, job: &QueuedJob) -> bool {
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

    /// Tries to make room for `job` by preempting candidates one at a time. On success the
    /// victims are pending again, the job runs, and the decisions say so; otherwise nothing
    /// changed.
    pub(super) fn preempt_for(
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
            self.insert_pending(victim.job);
        }
        self.remove_pending(&job.id);
        if !self.start(job.clone(), placement.clone(), charges, borrowed, now_s) {
            // The placement was computed on this very state, so this is unreachable in
            // practice; keep the job pending rather than lose it.
            self.insert_pending(job.clone());
            return Some(decisions);
        }
        decisions.push(Decision::Place {
            job: job.id.clone(),
            placement,
            policy_score: None,
            borrowed,
            backfilled: false,
        });
        Some(decisions)
    }

    /// Puts released victims back exactly where they were.
    pub(super) fn restore(&mut self, taken: Vec<(VictimKind, RunningJob)>) {
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
                    self.insert_pending(victim.job);
                }
            }
        }
    }
}
