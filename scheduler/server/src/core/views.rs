//! What callers read: why a job waits or sits where it does, the nodes with their GPUs and
//! jobs, and the metrics.

use std::collections::{BTreeSet, HashMap};

use suanli_engine::gang::GangWait;
use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobState};

use super::schedule::wait_text;
use super::{Core, CoreError, Explanation, GpuUsageView, MetricsView, NodeView, RefusalCount};
use crate::auth::Identity;
use suanli_engine::queue::WaitReason;

impl Core {
    pub(super) fn explain(&self, id: &JobId, by: &Identity) -> Result<Explanation, CoreError> {
        let job = match self.visible(id, by) {
            Ok(job) => job,
            Err(_) => {
                let stored = self.store.job(id)?;
                if by.tenant_scope().is_some_and(|t| t != stored.spec.tenant) {
                    return Err(CoreError::JobNotFound(id.clone()));
                }
                return Ok(Explanation {
                    state: stored.state,
                    summary: format!("job {id} is {}: {}", stored.state, stored.reason),
                    reasons: Vec::new(),
                    nodes_considered: 0,
                    queue_reason: String::new(),
                    placement: None,
                });
            }
        };
        match (&job.placement, &job.wait) {
            (Some(p), _) => Ok(Explanation {
                state: job.state,
                summary: format!(
                    "placed by policy {} on {}",
                    p.policy,
                    p.nodes()
                        .map(|c| c.to_string())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                reasons: Vec::new(),
                nodes_considered: self.queue.cluster().len() as u32,
                queue_reason: String::new(),
                placement: Some(p.clone()),
            }),
            (None, Some(wait)) => {
                let (reasons, nodes_considered) = match wait {
                    WaitReason::NoNode(u) => (
                        u.counts
                            .iter()
                            .map(|(refusal, count)| RefusalCount {
                                key: refusal.key(),
                                nodes: *count,
                                message: u.describe(*refusal),
                            })
                            .collect(),
                        u.nodes,
                    ),
                    WaitReason::Placement(
                        GangWait::NoNode { counts, .. } | GangWait::TooFew { counts, .. },
                    ) => (
                        counts
                            .iter()
                            .map(|(refusal, count)| RefusalCount {
                                key: refusal.key(),
                                nodes: *count,
                                message: refusal.describe().to_string(),
                            })
                            .collect(),
                        self.queue.cluster().len() as u32,
                    ),
                    _ => (Vec::new(), self.queue.cluster().len() as u32),
                };
                Ok(Explanation {
                    state: job.state,
                    summary: wait_text(wait),
                    reasons,
                    nodes_considered,
                    // A cause above the nodes: quota, or another job's claim on them.
                    queue_reason: match wait {
                        WaitReason::NoNode(_) | WaitReason::Placement(_) => String::new(),
                        WaitReason::Quota(_)
                        | WaitReason::NoBorrowing { .. }
                        | WaitReason::Reserved { .. } => wait_text(wait),
                    },
                    placement: None,
                })
            }
            (None, None) => Ok(Explanation {
                state: job.state,
                summary: if self.queue.cluster().is_empty() {
                    "waiting: no nodes have registered".to_string()
                } else {
                    "waiting for its first scheduling pass".to_string()
                },
                reasons: Vec::new(),
                nodes_considered: self.queue.cluster().len() as u32,
                queue_reason: String::new(),
                placement: None,
            }),
        }
    }

    pub(super) fn node_views(&self) -> Vec<NodeView> {
        let mut holders: HashMap<(Cid, String), Vec<(JobId, String)>> = HashMap::new();
        for (id, job) in &self.jobs {
            if let Some(p) = &job.placement {
                for slot in &p.replicas {
                    for g in &slot.gpus {
                        holders
                            .entry((slot.node.clone(), g.uuid.clone()))
                            .or_default()
                            .push((id.clone(), job.spec.tenant.clone()));
                    }
                }
            }
        }
        self.nodes
            .iter()
            .map(|(cid, entry)| {
                let engine_node = self
                    .node_ids
                    .get(cid)
                    .and_then(|id| self.queue.cluster().node(*id));
                let gpus = entry
                    .inventory
                    .gpus
                    .iter()
                    .map(|info| {
                        let used =
                            engine_node.and_then(|n| n.gpus().iter().find(|g| g.uuid == info.uuid));
                        let mut jobs = holders
                            .get(&(cid.clone(), info.uuid.clone()))
                            .cloned()
                            .unwrap_or_default();
                        jobs.sort();
                        GpuUsageView {
                            uuid: info.uuid.clone(),
                            index: info.index,
                            model: info.model.to_string(),
                            memory_mib: info.memory_mib,
                            milli_used: used.map_or(0, |g| g.milli_used()),
                            memory_used: used.map_or(0, |g| g.memory_used()),
                            exclusive: used.is_some_and(|g| g.is_exclusive()),
                            jobs,
                        }
                    })
                    .collect();
                NodeView {
                    inventory: entry.inventory.clone(),
                    cordoned: entry.cordoned,
                    cordon_reason: entry.cordon_reason.clone(),
                    draining: entry.draining,
                    lost: entry.lost,
                    connected: entry.session.is_some(),
                    invalid: entry.invalid.clone(),
                    last_seen_ms: self.now_ms()
                        - i64::try_from(entry.last_seen.elapsed().as_millis()).unwrap_or(0),
                    cpu_used: engine_node.map_or(0, |n| n.cpu_milli() - n.cpu_left()),
                    memory_used: engine_node.map_or(0, |n| n.memory_mib() - n.memory_left()),
                    gpus,
                }
            })
            .collect()
    }

    pub(super) fn metrics(&mut self) -> Result<MetricsView, CoreError> {
        self.ensure_cluster();
        let mut view = MetricsView {
            pending: self.queue.pending().count() as u64,
            connected_agents: self.nodes.values().filter(|n| n.session.is_some()).count() as u64,
            nodes: self.nodes.len() as u64,
            placement_latencies_s: std::mem::take(&mut self.latencies),
            ..Default::default()
        };
        for state in JobState::ALL {
            view.jobs_by_state.insert(state.as_str().to_string(), 0);
        }
        for (state, count) in self.store.job_counts()? {
            view.jobs_by_state.insert(state.as_str().to_string(), count);
        }
        for node in self.queue.cluster().nodes() {
            for gpu in node.gpus() {
                let model = self.queue.cluster().model(gpu.model).to_string();
                let entry = view.gpu_milli_by_model.entry(model).or_default();
                entry.0 += u64::from(gpu.milli_used());
                entry.1 += 1000;
            }
        }
        Ok(view)
    }
}
