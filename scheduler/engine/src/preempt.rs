//! Who may be preempted for whom: the bounded victim search's candidate list.
//!
//! A running job is a candidate victim for a pending job only when it is preemptible, has run
//! for at least the minimum runtime, and either has a lower priority, or belongs to another
//! tenant that borrows above its guarantee while the pending job stays within its own
//! (reclaim). Candidates come cheapest first: reclaimable work, then lower priority, then the
//! most recently started (it loses the least), then the job id.

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
            && usage.get(preemptor.tenant, model) + preemptor.gpu_milli
                <= quotas.limit(preemptor.tenant, model).guaranteed_milli
    };
    let mut found: Vec<(VictimKind, Reverse<u64>, i32, JobId)> = Vec::new();
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
        found.push((kind, Reverse(v.started_s), v.priority, v.id.clone()));
    }
    found.sort_by(|a, b| (a.0, a.2, a.1, &a.3).cmp(&(b.0, b.2, b.1, &b.3)));
    found.truncate(limit);
    found.into_iter().map(|(k, _, _, id)| (k, id)).collect()
}
