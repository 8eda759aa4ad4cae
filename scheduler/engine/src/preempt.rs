//! Who may be preempted for whom: the bounded victim search's candidate list.
//!
//! A running job is a candidate victim for a pending job only when it is preemptible, has run
//! for at least the minimum runtime, and either has a lower priority, or belongs to another
//! tenant that borrows above its guarantee while the pending job stays within its own
//! (reclaim). Candidates come cheapest first: reclaimable work, then work started above its
//! guarantee, then lower priority, then the most recently started (it loses the least) and
//! submitted, then the job id.

use std::cmp::Reverse;

use crate::gpu::GpuModel;
use crate::job::JobId;
use crate::quota::{Quotas, Usage};

/// What the victim search needs to know about a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VictimView<'a> {
    pub id: &'a JobId,
    pub tenant: &'a str,
    pub priority: i32,
    pub preemptible: bool,
    pub started_s: u64,
    pub submitted_s: u64,
    /// Started above its tenant's guarantee.
    pub borrowed: bool,
    /// GPU-milli per model the job holds.
    pub charges: &'a [(GpuModel, u64)],
}

/// The pending job a victim would make room for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemptor<'a> {
    pub tenant: &'a str,
    pub priority: i32,
    /// GPU-milli the job needs (at its minimum size).
    pub gpu_milli: u64,
    /// Models the job accepts (empty: any).
    pub models: &'a [GpuModel],
}

/// Why a running job may be preempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VictimKind {
    /// Its tenant borrows above the guarantee the preemptor's tenant is owed.
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
    // The preemptor may reclaim a model when its tenant stays within its guarantee there.
    let reclaims = |model: &GpuModel| {
        (preemptor.models.is_empty() || preemptor.models.contains(model))
            && quotas.limit(preemptor.tenant, model).is_some_and(|limit| {
                usage.get(preemptor.tenant, model) + preemptor.gpu_milli <= limit.guaranteed_milli
            })
    };
    // Sorted by (kind, borrowed first, priority, newest first, id).
    type Key = (VictimKind, Reverse<bool>, i32, Reverse<(u64, u64)>, JobId);
    let mut found: Vec<Key> = Vec::new();
    for v in running {
        if !v.preemptible || now_s.saturating_sub(v.started_s) < min_runtime_s {
            continue;
        }
        let reclaim = v.tenant != preemptor.tenant
            && v.charges
                .iter()
                .any(|(model, _)| reclaims(model) && quotas.borrowed(usage, v.tenant, model) > 0);
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
