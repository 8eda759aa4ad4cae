//! The engine's model of the nodes: rebuilt from the stored inventories (quarantining a
//! node the engine cannot model), every live job's resources claimed again; cordons and
//! drains.

use suanli_engine::cluster::{Claim, Cluster, GpuGrant, NodeId};
use suanli_engine::job::JobId;
use suanli_engine::links::LinkState;
use suanli_engine::request::Request;
use suanli_engine::{Cid, MigProfile, NodeInventory};
use tracing::{debug, info, warn};

use super::{Core, CoreError, NodeView};

impl Core {
    /// Rebuilds the cluster if nodes changed since it was last built.
    pub(super) fn ensure_cluster(&mut self) {
        if self.cluster_dirty {
            self.cluster_dirty = false;
            self.rebuild_cluster();
        }
    }

    /// Rebuilds the engine's cluster from the usable nodes and claims again what live jobs
    /// hold. Jobs whose resources are gone (node lost or shrunk) go back to pending.
    pub(super) fn rebuild_cluster(&mut self) {
        for entry in self.nodes.values_mut() {
            entry.invalid = None;
        }
        let candidates: Vec<NodeInventory> = self
            .nodes
            .values()
            .filter(|n| !n.lost)
            .map(|n| {
                let mut inv = n.inventory.clone();
                if !n.schedulable() {
                    inv.labels
                        .insert("suanli.io/cordoned".into(), "true".into());
                }
                inv
            })
            .collect();
        // A node the engine cannot model is quarantined, never the whole cluster.
        let (cluster, skipped) = Cluster::from_inventories_skipping_invalid(&candidates);
        let mut usable = candidates;
        for skip in skipped.iter().rev() {
            warn!(node = %skip.cid, error = %skip.error, "Quarantined a node whose inventory the engine cannot model.");
            usable.remove(skip.index);
            if let Some(entry) = self.nodes.get_mut(&skip.cid) {
                entry.invalid = Some(skip.error.to_string());
            }
        }
        let links = LinkState::from_inventories(&usable, None);
        self.queue.reset_cluster(cluster, links);
        self.node_ids = self
            .queue
            .cluster()
            .nodes()
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.cid().map(|c| (c.clone(), NodeId(i as u32))))
            .collect();
        // In placement order, so quota borrowing is judged as it was when they were placed.
        let mut holders: Vec<(i64, JobId)> = self
            .jobs
            .iter()
            .filter_map(|(id, j)| j.placement.as_ref().map(|p| (p.placed_ms, id.clone())))
            .collect();
        holders.sort();
        let mut lost = Vec::new();
        for (_, id) in holders {
            if let Err(e) = self.reclaim_resources(&id) {
                warn!(job = %id, error = %e, "A job's resources are gone.");
                lost.push(id);
            }
        }
        for id in lost {
            if self.pod_of(&id).is_some() {
                // Kubernetes decides what becomes of the pod; its GPUs are held again when
                // the node returns, and freed when the reconciler sees the pod gone.
                debug!(job = %id, "A pod's node is away; its job waits for it.");
                continue;
            }
            let (reason, message) = match self.invalid_node_of(&id) {
                Some((node, why)) => (
                    "node_invalid",
                    format!("its node {node} is quarantined: {why}"),
                ),
                None => ("node_lost", "its node left the cluster".to_string()),
            };
            if let Err(e) = self.requeue(&id, reason, &message) {
                warn!(job = %id, error = %e, "Could not requeue.");
            }
        }
    }

    /// The engine claims for a job's stored placement, or `None` if a node or GPU is gone.
    pub(super) fn claims_of(&self, id: &JobId) -> Option<Vec<Claim>> {
        let placement = self.jobs.get(id)?.placement.as_ref()?;
        placement
            .replicas
            .iter()
            .map(|slot| {
                let node = *self.node_ids.get(&slot.node)?;
                let gpus_here = self.queue.cluster().nodes()[node.index()].gpus();
                let gpus = slot
                    .gpus
                    .iter()
                    .map(|g| {
                        let position = gpus_here.iter().position(|gpu| gpu.uuid == g.uuid)?;
                        let mig = match &g.mig {
                            Some((profile, start)) => {
                                Some((profile.parse::<MigProfile>().ok()?, *start))
                            }
                            None => None,
                        };
                        Some(GpuGrant {
                            gpu: position as u32,
                            milli: g.milli,
                            memory_mib: g.memory_mib,
                            exclusive: g.exclusive,
                            mig,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                let request = Request::from_job(&self.jobs.get(id)?.spec).ok()?;
                Some(Claim {
                    node,
                    cpu_milli: slot.cpu_milli,
                    memory_mib: slot.memory_mib,
                    gpus,
                    affinity: request.affinity(),
                })
            })
            .collect()
    }

    /// Cordons (or uncordons) a node: it takes no new work. Uncordoning also ends a drain.
    pub(super) fn cordon(
        &mut self,
        node: &Cid,
        cordoned: bool,
        reason: &str,
        draining: bool,
    ) -> Result<NodeView, CoreError> {
        self.ensure_cluster();
        let Some(entry) = self.nodes.get_mut(node) else {
            return Err(CoreError::NodeNotFound(node.clone()));
        };
        let reason = if cordoned { reason } else { "" };
        self.store
            .set_node_cordon(node, cordoned, reason, cordoned && draining)?;
        entry.cordoned = cordoned;
        entry.cordon_reason = reason.to_string();
        entry.draining = cordoned && draining;
        self.sync_schedulable(node);
        info!(node = %node, cordoned, "Cordon changed.");
        self.node_views()
            .into_iter()
            .find(|v| &v.inventory.cid == node)
            .ok_or_else(|| CoreError::NodeNotFound(node.clone()))
    }

    pub(super) fn drain(
        &mut self,
        node: &Cid,
        reason: &str,
        grace_ms: u32,
    ) -> Result<Vec<JobId>, CoreError> {
        self.ensure_cluster();
        self.cordon(node, true, reason, true)?;
        let mut on_node: Vec<JobId> = self
            .jobs
            .iter()
            // Pods are evicted by `kubectl drain`; their GPUs are freed when they are gone.
            .filter(|(_, j)| {
                j.placement
                    .as_ref()
                    .is_some_and(|p| p.pod.is_none() && p.nodes().any(|c| c == node))
            })
            .map(|(id, _)| id.clone())
            .collect();
        on_node.sort();
        let message = if reason.is_empty() {
            format!("node {node} drained")
        } else {
            format!("node {node} drained: {reason}")
        };
        for id in &on_node {
            self.requeue_within(id, "drained", &message, grace_ms)?;
        }
        Ok(on_node)
    }
}
