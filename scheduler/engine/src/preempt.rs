//! Who may be preempted for whom: the bounded victim search's candidate list.
//!
//! A running job is a candidate victim for a pending job only when it is preemptible, has run
//! for at least the minimum runtime, and either has a lower priority, or may be reclaimed:
//! - it belongs to another tenant that borrows above its guarantee while the pending job's
//!   tenant stays within its own, or
//! - it belongs to a sibling queue of the same tenant that borrows above the queue's
//!   guarantee while the pending job's queue stays within its own.
//!
//! Candidates come cheapest first: reclaimable work, then work started above a guarantee,
//! then lower priority, then the most recently started (it loses the least) and submitted,
//! then the job id.

use std::cmp::Reverse;

use crate::gpu::GpuModel;
use crate::job::JobId;
use crate::quota::{Quotas, Usage};

/// What the victim search needs to know about a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VictimView<'a> {
    pub id: &'a JobId,
    pub tenant: &'a str,
    pub queue: &'a str,
    pub priority: i32,
    pub preemptible: bool,
    pub started_s: u64,
    pub submitted_s: u64,
    /// Started above its tenant's or its queue's guarantee.
    pub borrowed: bool,
    /// GPU-milli per model the job holds.
    pub charges: &'a [(GpuModel, u64)],
}

/// The pending job a victim would make room for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemptor<'a> {
    pub tenant: &'a str,
    pub queue: &'a str,
    pub priority: i32,
    /// GPU-milli the job needs (at its minimum size).
    pub gpu_milli: u64,
    /// Models the job accepts (empty: any).
    pub models: &'a [GpuModel],
}

/// Why a running job may be preempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VictimKind {
    /// Its tenant (or its queue, a sibling of the preemptor's) borrows above its guarantee
    /// while the preemptor's is owed.
    Reclaim,
    /// Lower priority than the preemptor.
    Priority,
}

/// Candidate victims for `preemptor`, cheapest first, at most `limit` of them.
pub fn candidates<'a>(
    running: impl IntoIterator<Item = VictimView<'a>>,
    preemptor: &Preemptor<'_>,
    quotas: &Quotas,
    usage: &Usage,
    now_s: u64,
    min_runtime_s: u64,
    limit: usize,
) -> Vec<(VictimKind, JobId)> {
    // Sorted by (kind, borrowed first, priority, newest first, id).
    type Key = (VictimKind, Reverse<bool>, i32, Reverse<(u64, u64)>, JobId);
    let mut found: Vec<Key> = Vec::new();
    for v in running {
        if !v.preemptible || now_s.saturating_sub(v.started_s) < min_runtime_s {
            continue;
        }
        let reclaim = reclaimable(&v, preemptor, quotas, usage);
        let kind = if reclaim {
            VictimKind::Reclaim
        } else if v.priority < preemptor.priority {
            VictimKind::Priority
        } else {
            continue;
        };
        found.push((
            kind,
            Reverse(v.borrowed),
            v.priority,
            Reverse((v.started_s, v.submitted_s)),
            v.id.clone(),
        ));
    }
    found.sort();
    found.truncate(limit);
    found.into_iter().map(|(k, _, _, _, id)| (k, id)).collect()
}

/// Whether `victim` may be preempted to give `preemptor` back a guarantee it is owed: on some
/// model the preemptor accepts, the victim's tenant borrows while the preemptor's (another)
/// tenant stays within its guarantee, or the victim's queue borrows while the preemptor's
/// sibling queue stays within its own.
pub fn reclaimable(
    victim: &VictimView<'_>,
    preemptor: &Preemptor<'_>,
    quotas: &Quotas,
    usage: &Usage,
) -> bool {
    let accepts =
        |model: &GpuModel| preemptor.models.is_empty() || preemptor.models.contains(model);
    let other_tenant = victim.tenant != preemptor.tenant;
    let sibling_queue = !other_tenant && victim.queue != preemptor.queue;
    victim.charges.iter().any(|(model, _)| {
        if !accepts(model) {
            return false;
        }
        let by_tenant = other_tenant
            && quotas.limit(preemptor.tenant, model).is_some_and(|limit| {
                usage.get(preemptor.tenant, model) + preemptor.gpu_milli <= limit.guaranteed_milli
            })
            && quotas.borrowed(usage, victim.tenant, model) > 0;
        let by_queue = sibling_queue
            && quotas
                .queue_limit(preemptor.tenant, preemptor.queue, model)
                .is_some_and(|limit| {
                    usage.get_in_queue(preemptor.tenant, preemptor.queue, model)
                        + preemptor.gpu_milli
                        <= limit.guaranteed_milli
                })
            && quotas.borrowed_in_queue(usage, victim.tenant, victim.queue, model) > 0;
        by_tenant || by_queue
    })
}
