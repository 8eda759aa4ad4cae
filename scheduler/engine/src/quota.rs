//! GPU quotas per tenant and GPU model: a guaranteed share that is always the tenant's, and a
//! maximum it may reach by borrowing idle capacity. Work above the guarantee is borrowed and
//! may be reclaimed (preempted) when another tenant needs its own guarantee back. Tenants
//! and models without a configured limit are not managed: uncapped, never reclaimed.
//!
//! A tenant's queues may have limits of their own, nested under the tenant's: a job's GPUs
//! count against its queue's limits *and* its tenant's. It waits if it would pass either
//! maximum, and it is borrowed if it goes above either guarantee — above the queue's, a
//! sibling queue of the same tenant may reclaim it; above the tenant's, another tenant may.
//! Queues without limits (and the jobs of tenants that set none) answer to the tenant's
//! limits alone. Work that names no queue is in [`DEFAULT_QUEUE`].

use std::collections::BTreeMap;
use std::fmt;

use crate::gpu::GpuModel;
use crate::job::MILLI_PER_GPU;

/// The queue of jobs that name none, and of usage recorded without one.
pub const DEFAULT_QUEUE: &str = "default";

/// A tenant's (or a queue's) limits for one GPU model, in GPU-milli (1000 = one whole GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimit {
    pub guaranteed_milli: u64,
    /// `None`: no ceiling besides the cluster.
    pub max_milli: Option<u64>,
}

impl QuotaLimit {
    /// Limits in whole GPUs.
    pub fn gpus(guaranteed: u64, max: Option<u64>) -> QuotaLimit {
        let milli = u64::from(MILLI_PER_GPU);
        QuotaLimit {
            guaranteed_milli: guaranteed * milli,
            max_milli: max.map(|m| m * milli),
        }
    }
}

/// Why a quota configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("tenants.{tenant}.{model}: guaranteed {guaranteed} GPU-milli exceeds max {max}")]
    GuaranteeAboveMax {
        tenant: String,
        model: String,
        guaranteed: u64,
        max: u64,
    },
    #[error(
        "tenants.{tenant}.queues.{queue}.{model}: guaranteed {guaranteed} GPU-milli exceeds max {max}"
    )]
    QueueGuaranteeAboveMax {
        tenant: String,
        queue: String,
        model: String,
        guaranteed: u64,
        max: u64,
    },
}

/// Every tenant's limits: per model, plus an optional limit for models not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quotas {
    tenants: BTreeMap<String, TenantQuota>,
}

/// One tenant's limits, and those of its queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantQuota {
    pub per_model: BTreeMap<GpuModel, QuotaLimit>,
    /// For models not in `per_model`; `None`: those models are not managed for the tenant.
    pub other_models: Option<QuotaLimit>,
    /// Limits of the tenant's queues, by queue name, inside the tenant's own.
    pub queues: BTreeMap<String, QueueQuota>,
}

/// One queue's limits, nested under its tenant's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueQuota {
    pub per_model: BTreeMap<GpuModel, QuotaLimit>,
    /// For models not in `per_model`; `None`: those models answer to the tenant alone.
    pub other_models: Option<QuotaLimit>,
}

impl Quotas {
    pub fn new() -> Quotas {
        Quotas::default()
    }

    /// Sets a tenant's limit for one model; refuses a guarantee above the maximum.
    pub fn set(
        &mut self,
        tenant: &str,
        model: GpuModel,
        limit: QuotaLimit,
    ) -> Result<(), QuotaError> {
        if let Some(max) = limit.max_milli
            && limit.guaranteed_milli > max
        {
            return Err(QuotaError::GuaranteeAboveMax {
                tenant: tenant.to_string(),
                model: model.as_str().to_string(),
                guaranteed: limit.guaranteed_milli,
                max,
            });
        }
        self.tenants
            .entry(tenant.to_string())
            .or_default()
            .per_model
            .insert(model, limit);
        Ok(())
    }

    /// Sets a tenant's limit for the models it has no specific limit for.
    pub fn set_other_models(&mut self, tenant: &str, limit: QuotaLimit) {
        self.tenants
            .entry(tenant.to_string())
            .or_default()
            .other_models = Some(limit);
    }

    /// The tenant's limit for `model`; `None` when quota does not manage that pair: such
    /// work is neither capped nor borrowed (so never reclaimed), only subject to priority.
    pub fn limit(&self, tenant: &str, model: &GpuModel) -> Option<QuotaLimit> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.per_model.get(model).copied().or(t.other_models))
    }

    pub fn tenants(&self) -> impl Iterator<Item = (&String, &TenantQuota)> {
        self.tenants.iter()
    }

    /// Sets the limit of one of a tenant's queues for one model; refuses a guarantee above
    /// the maximum. The queue's use also counts against the tenant's limits.
    pub fn set_queue(
        &mut self,
        tenant: &str,
        queue: &str,
        model: GpuModel,
        limit: QuotaLimit,
    ) -> Result<(), QuotaError> {
        if let Some(max) = limit.max_milli
            && limit.guaranteed_milli > max
        {
            return Err(QuotaError::QueueGuaranteeAboveMax {
                tenant: tenant.to_string(),
                queue: queue.to_string(),
                model: model.as_str().to_string(),
                guaranteed: limit.guaranteed_milli,
                max,
            });
        }
        self.queue_entry(tenant, queue)
            .per_model
            .insert(model, limit);
        Ok(())
    }

    /// Sets a queue's limit for the models it has no specific limit for.
    pub fn set_queue_other_models(&mut self, tenant: &str, queue: &str, limit: QuotaLimit) {
        self.queue_entry(tenant, queue).other_models = Some(limit);
    }

    fn queue_entry(&mut self, tenant: &str, queue: &str) -> &mut QueueQuota {
        self.tenants
            .entry(tenant.to_string())
            .or_default()
            .queues
            .entry(queue.to_string())
            .or_default()
    }

    /// The queue's own limit for `model` (not the tenant's); `None` when the queue has none.
    pub fn queue_limit(&self, tenant: &str, queue: &str, model: &GpuModel) -> Option<QuotaLimit> {
        self.tenants
            .get(tenant)
            .and_then(|t| t.queues.get(queue))
            .and_then(|q| q.per_model.get(model).copied().or(q.other_models))
    }

    /// Whether any queue has limits of its own.
    pub fn has_queue_limits(&self) -> bool {
        self.tenants.values().any(|t| !t.queues.is_empty())
    }
}

/// GPU-milli in use per tenant and model, and per queue of each tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Per tenant: the sum over its queues.
    used: BTreeMap<(String, GpuModel), u64>,
    by_queue: BTreeMap<(String, String, GpuModel), u64>,
}

impl Usage {
    /// The tenant's use of `model`, all its queues together.
    pub fn get(&self, tenant: &str, model: &GpuModel) -> u64 {
        self.used
            .get(&(tenant.to_string(), model.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// One queue's use of `model`.
    pub fn get_in_queue(&self, tenant: &str, queue: &str, model: &GpuModel) -> u64 {
        self.by_queue
            .get(&(tenant.to_string(), queue.to_string(), model.clone()))
            .copied()
            .unwrap_or(0)
    }

    /// Charges use to the tenant's [`DEFAULT_QUEUE`].
    pub fn add(&mut self, tenant: &str, charges: &[(GpuModel, u64)]) {
        self.add_in_queue(tenant, DEFAULT_QUEUE, charges);
    }

    /// Returns use charged with [`Usage::add`].
    pub fn remove(&mut self, tenant: &str, charges: &[(GpuModel, u64)]) {
        self.remove_in_queue(tenant, DEFAULT_QUEUE, charges);
    }

    /// Charges use to one of the tenant's queues (and so to the tenant).
    pub fn add_in_queue(&mut self, tenant: &str, queue: &str, charges: &[(GpuModel, u64)]) {
        for (model, milli) in charges {
            *self
                .used
                .entry((tenant.to_string(), model.clone()))
                .or_default() += milli;
            *self
                .by_queue
                .entry((tenant.to_string(), queue.to_string(), model.clone()))
                .or_default() += milli;
        }
    }

    /// Returns use charged with [`Usage::add_in_queue`]: from the queue and the tenant, never
    /// below zero.
    pub fn remove_in_queue(&mut self, tenant: &str, queue: &str, charges: &[(GpuModel, u64)]) {
        for (model, milli) in charges {
            let key = (tenant.to_string(), model.clone());
            if let Some(u) = self.used.get_mut(&key) {
                *u = u.saturating_sub(*milli);
                if *u == 0 {
                    self.used.remove(&key);
                }
            }
            let key = (tenant.to_string(), queue.to_string(), model.clone());
            if let Some(u) = self.by_queue.get_mut(&key) {
                *u = u.saturating_sub(*milli);
                if *u == 0 {
                    self.by_queue.remove(&key);
                }
            }
        }
    }

    /// Every (tenant, model) with its use.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GpuModel, u64)> {
        self.used.iter().map(|((t, m), u)| (t.as_str(), m, *u))
    }

    /// Every (tenant, queue, model) with its use.
    pub fn iter_queues(&self) -> impl Iterator<Item = (&str, &str, &GpuModel, u64)> {
        self.by_queue
            .iter()
            .map(|((t, q, m), u)| (t.as_str(), q.as_str(), m, *u))
    }
}

/// What admitting `charges` for a tenant (and its queue) would mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaVerdict {
    /// Inside the guarantees (tenant's and queue's) for every model.
    Within,
    /// Above a guarantee (tenant's or queue's) for some model but under every maximum:
    /// borrowed, reclaimable.
    Borrowing,
    /// Above a maximum.
    Over(QuotaExceeded),
}

/// A maximum that a job would pass: its tenant's, or with `queue` set, its queue's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub tenant: String,
    /// The queue whose maximum it is; `None`: the tenant's.
    pub queue: Option<String>,
    pub model: GpuModel,
    pub used_milli: u64,
    pub max_milli: u64,
    pub needed_milli: u64,
}

fn gpus(milli: u64) -> String {
    let whole = milli / u64::from(MILLI_PER_GPU);
    let rest = milli % u64::from(MILLI_PER_GPU);
    if rest == 0 {
        whole.to_string()
    } else {
        format!("{}", milli as f64 / f64::from(MILLI_PER_GPU))
    }
}

impl fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.queue {
            Some(queue) => write!(f, "queue {}/{queue}", self.tenant)?,
            None => write!(f, "tenant {}", self.tenant)?,
        }
        write!(
            f,
            " at quota {}/{} {} (needs {} more)",
            gpus(self.used_milli),
            gpus(self.max_milli),
            self.model,
            gpus(self.needed_milli)
        )
    }
}

impl Quotas {
    /// Judges `charges` (GPU-milli per model) for `tenant` against its limits and `usage`,
    /// as work of its [`DEFAULT_QUEUE`] (whose limits, if any, apply too).
    pub fn check(&self, usage: &Usage, tenant: &str, charges: &[(GpuModel, u64)]) -> QuotaVerdict {
        self.check_in_queue(usage, tenant, DEFAULT_QUEUE, charges)
    }

    /// Judges `charges` for work in one of `tenant`'s queues: against the queue's limits and
    /// the tenant's. A passed maximum names the queue's before the tenant's for the same
    /// model, the narrower scope being the one to raise or wait for.
    pub fn check_in_queue(
        &self,
        usage: &Usage,
        tenant: &str,
        queue: &str,
        charges: &[(GpuModel, u64)],
    ) -> QuotaVerdict {
        let mut borrowing = false;
        for (model, milli) in charges {
            let scopes = [
                (Some(queue), self.queue_limit(tenant, queue, model)),
                (None, self.limit(tenant, model)),
            ];
            for (scope, limit) in scopes {
                let Some(limit) = limit else {
                    continue;
                };
                let used = match scope {
                    Some(queue) => usage.get_in_queue(tenant, queue, model),
                    None => usage.get(tenant, model),
                };
                if let Some(max) = limit.max_milli
                    && used + milli > max
                {
                    return QuotaVerdict::Over(QuotaExceeded {
                        tenant: tenant.to_string(),
                        queue: scope.map(str::to_string),
                        model: model.clone(),
                        used_milli: used,
                        max_milli: max,
                        needed_milli: *milli,
                    });
                }
                if used + milli > limit.guaranteed_milli {
                    borrowing = true;
                }
            }
        }
        if borrowing {
            QuotaVerdict::Borrowing
        } else {
            QuotaVerdict::Within
        }
    }

    /// GPU-milli of `model` the tenant uses above its guarantee.
    pub fn borrowed(&self, usage: &Usage, tenant: &str, model: &GpuModel) -> u64 {
        self.limit(tenant, model).map_or(0, |limit| {
            usage
                .get(tenant, model)
                .saturating_sub(limit.guaranteed_milli)
        })
    }

    /// GPU-milli of `model` one of the tenant's queues uses above the queue's guarantee (0
    /// when the queue has no limit of its own).
    pub fn borrowed_in_queue(
        &self,
        usage: &Usage,
        tenant: &str,
        queue: &str,
        model: &GpuModel,
    ) -> u64 {
        self.queue_limit(tenant, queue, model).map_or(0, |limit| {
            usage
                .get_in_queue(tenant, queue, model)
                .saturating_sub(limit.guaranteed_milli)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_guarantee_and_max() {
        let h100: GpuModel = "H100".parse().expect("valid model");
        let mut q = Quotas::new();
        q.set("research", h100.clone(), QuotaLimit::gpus(32, Some(64)))
            .expect("valid limit");
        let mut usage = Usage::default();
        assert_eq!(
            q.check(&usage, "research", &[(h100.clone(), 32_000)]),
            QuotaVerdict::Within
        );
        usage.add("research", &[(h100.clone(), 48_000)]);
        assert_eq!(
            q.check(&usage, "research", &[(h100.clone(), 16_000)]),
            QuotaVerdict::Borrowing
        );
        usage.add("research", &[(h100.clone(), 16_000)]);
        let QuotaVerdict::Over(over) = q.check(&usage, "research", &[(h100.clone(), 8_000)]) else {
            panic!("64/64 is the maximum");
        };
        assert_eq!(
            over.to_string(),
            "tenant research at quota 64/64 H100 (needs 8 more)"
        );
        assert!(
            q.set("x", h100, QuotaLimit::gpus(8, Some(4))).is_err(),
            "a guarantee above the maximum is refused"
        );
    }
}
