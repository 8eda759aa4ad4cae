//! Nodes and the agents that speak for them: registration, sessions, inventories, removal.
//!
//! A node's identity is held by one agent: the first registration of a CID (with the join
//! token) issues a node credential, and later registrations of that CID must present it, so
//! the join token alone cannot take a node over. A registration with the credential replaces
//! the node's old session, which is told and closed; reports from any session but the current
//! one are ignored, and work goes only to the current one.

use std::collections::HashSet;

use suanli_engine::job::JobId;
use suanli_engine::{Cid, NodeInventory};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    AgentCommand, CANCEL_GRACE_MS, Core, CoreError, NodeEntry, ReportedExit, RunningReplica,
};
use crate::auth::Identity;
use crate::credential;

/// What a registration hands the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The id the agent's hello must present.
    pub session_id: String,
    /// A newly issued node credential, for the agent to keep; `None` when the agent
    /// presented the valid one.
    pub credential: Option<String>,
}

/// At most this many job ids are named in a refusal; the rest are counted.
const NAMED_JOBS: usize = 5;

impl Core {
    pub(super) fn register(
        &mut self,
        inventory: NodeInventory,
        presented: &str,
        advertise_addr: String,
        by: &Identity,
    ) -> Result<Registration, CoreError> {
        inventory
            .validate()
            .map_err(|e| CoreError::InvalidInventory(e.to_string()))?;
        let cid = inventory.cid.clone();
        let name = inventory.node_name().to_string();
        if let Some(other) = self
            .nodes
            .keys()
            .find(|c| *c != &cid && c.node_name() == Some(name.as_str()))
        {
            return Err(CoreError::NodeNameTaken {
                name,
                other: other.clone(),
            });
        }
        let issue = match self.nodes.get(&cid) {
            None => true,
            Some(entry) => match &entry.credential_sha256 {
                Some(hash) if credential::matches(presented, hash) => false,
                _ if *by == Identity::Admin => true,
                _ if entry.session.is_some() => {
                    return Err(CoreError::NodeHeld(cid));
                }
                // Registered before node credentials existed: the first agent back claims it.
                None => true,
                Some(_) => {
                    return Err(CoreError::CredentialRequired(cid));
                }
            },
        };
        let issued = issue.then(credential::issue);
        self.store
            .register_node(&inventory, issued.as_ref().map(|(_, hash)| hash.as_str()))?;
        let changed = self
            .nodes
            .get(&cid)
            .is_none_or(|n| n.lost || n.inventory != inventory);
        let now = self.instant();
        let entry = self.nodes.entry(cid.clone()).or_insert_with(|| NodeEntry {
            inventory: inventory.clone(),
            cordoned: false,
            cordon_reason: String::new(),
            draining: false,
            lost: false,
            last_seen: now,
            issued: None,
            session: None,
            credential_sha256: None,
            invalid: None,
            advertise_addr: String::new(),
        });
        entry.inventory = inventory;
        entry.advertise_addr = advertise_addr;
        entry.lost = false;
        entry.last_seen = now;
        if let Some((_, hash)) = &issued {
            entry.credential_sha256 = Some(hash.clone());
        }
        // A new registration replaces the old session; its agent is told, so it stops
        // rather than fight over the node.
        if let Some((old, tx)) = entry.session.take() {
            info!(node = %cid, session = %old, "Closing the session a new registration replaces.");
            let _ = tx.send(AgentCommand::Replaced {
                reason: format!("node {cid} was registered again by another agent session"),
            });
        }
        let session_id = credential::session_id();
        entry.issued = Some(session_id.clone());
        if changed {
            self.cluster_dirty = true;
        }
        self.sync_schedulable(&cid);
        info!(node = %cid, new_credential = issued.is_some(), "Agent registered.");
        Ok(Registration {
            session_id,
            credential: issued.map(|(secret, _)| secret),
        })
    }

    pub(super) fn open_session(
        &mut self,
        node: &Cid,
        session_id: String,
        running: Vec<RunningReplica>,
        exits: Vec<ReportedExit>,
        tx: mpsc::UnboundedSender<AgentCommand>,
    ) -> Result<(), CoreError> {
        let now = self.instant();
        let Some(entry) = self
            .nodes
            .get_mut(node)
            .filter(|e| e.issued.as_deref() == Some(session_id.as_str()))
        else {
            // Unknown node, or a session from before a scheduler restart.
            return Err(CoreError::UnknownSession {
                node: node.clone(),
                session: session_id,
            });
        };
        if entry.holds_session(&session_id) {
            return Err(CoreError::SessionAlreadyOpen {
                node: node.clone(),
                session: session_id,
            });
        }
        entry.session = Some((session_id, tx));
        entry.last_seen = now;
        self.sync_schedulable(node);
        // Exits first: a replica that ended while the scheduler was away finished, with its
        // real exit code; only one the agent neither runs nor saw end is lost.
        for x in &exits {
            self.work_exited(
                node,
                &x.job_id,
                x.replica,
                x.attempt,
                x.exit_code,
                &x.message,
            );
        }
        let reported: HashSet<(JobId, u32)> = running
            .iter()
            .map(|r| (r.job_id.clone(), r.replica))
            .collect();
        // What the agent reports running wins: keep those (a start report lost with a crashed
        // scheduler is taken as given now), stop what should not run.
        let mut confirmed = Vec::new();
        for r in &running {
            let expected = self.jobs.get(&r.job_id).and_then(|j| {
                j.placement.as_ref().and_then(|p| {
                    p.replicas
                        .iter()
                        .find(|s| s.replica == r.replica && &s.node == node)
                        .map(|_| p.attempt)
                })
            });
            if let Some(attempt) = expected {
                confirmed.push((r.job_id.clone(), r.replica, attempt));
            } else {
                info!(node = %node, job = %r.job_id, replica = r.replica, "Stopping work the scheduler did not place here.");
                self.send_to(
                    node,
                    AgentCommand::Cancel {
                        job_id: r.job_id.clone(),
                        replica: r.replica,
                        attempt: 0,
                        grace_period_ms: CANCEL_GRACE_MS,
                    },
                );
            }
        }
        // Replicas placed here: resend those not started; requeue jobs whose started replicas
        // vanished.
        let mut vanished = Vec::new();
        let mut resend = Vec::new();
        for (id, job) in &self.jobs {
            // Pods run under kubelet; the agent does not report them.
            let Some(p) = job.placement.as_ref().filter(|p| p.pod.is_none()) else {
                continue;
            };
            for slot in p.replicas.iter().filter(|s| &s.node == node) {
                if slot.exit_code.is_some() || reported.contains(&(id.clone(), slot.replica)) {
                    continue;
                }
                if slot.started {
                    vanished.push(id.clone());
                } else {
                    resend.push((id.clone(), job.spec.clone(), slot.clone(), p.attempt));
                }
            }
        }
        for (id, spec, slot, attempt) in resend {
            self.assign(&id, &spec, &slot, attempt);
        }
        for (id, replica, attempt) in confirmed {
            self.work_started(node, &id, replica, attempt);
        }
        vanished.sort();
        vanished.dedup();
        for id in vanished {
            let message =
                format!("a replica on {node} was no longer running when its agent returned");
            if let Err(e) = self.requeue(&id, "replica_lost", &message) {
                warn!(job = %id, error = %e, "Could not requeue.");
            }
        }
        info!(node = %node, running = running.len(), exits = exits.len(), "Agent session open.");
        Ok(())
    }

    pub(super) fn update_inventory(
        &mut self,
        node: &Cid,
        inventory: NodeInventory,
    ) -> Result<(), CoreError> {
        if &inventory.cid != node {
            return Err(CoreError::InvalidArgument(format!(
                "inventory is for {}, but this session is {node}",
                inventory.cid
            )));
        }
        inventory
            .validate()
            .map_err(|e| CoreError::InvalidInventory(e.to_string()))?;
        let Some(entry) = self.nodes.get_mut(node) else {
            return Err(CoreError::NodeNotRegistered(node.clone()));
        };
        if inventory.generation <= entry.inventory.generation && inventory == entry.inventory {
            return Ok(());
        }
        self.store.upsert_node(&inventory)?;
        entry.inventory = inventory;
        self.cluster_dirty = true;
        Ok(())
    }

    /// Whether `session_id` is the open session of `node`.
    pub(super) fn session_is_current(&self, node: &Cid, session_id: &str) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|e| e.holds_session(session_id))
    }

    pub(super) fn close_session(&mut self, node: &Cid) {
        if let Some(entry) = self.nodes.get_mut(node) {
            entry.session = None;
        }
        self.sync_schedulable(node);
    }

    /// Brings the engine's view of whether `node` takes new work in line with its entry:
    /// cordoned nodes and nodes without a connected agent take none.
    pub(super) fn sync_schedulable(&mut self, node: &Cid) {
        let Some(schedulable) = self.nodes.get(node).map(NodeEntry::schedulable) else {
            return;
        };
        if let Some(id) = self.node_ids.get(node).copied()
            && self
                .queue
                .cluster()
                .node(id)
                .is_some_and(|n| n.is_cordoned() == schedulable)
        {
            let _ = self.queue.set_cordoned(id, !schedulable);
        }
    }

    /// The first quarantined node a job's placement uses, and why it is quarantined.
    pub(super) fn invalid_node_of(&self, id: &JobId) -> Option<(Cid, String)> {
        let placement = self.jobs.get(id)?.placement.as_ref()?;
        placement.nodes().find_map(|cid| {
            let why = self.nodes.get(cid)?.invalid.clone()?;
            Some((cid.clone(), why))
        })
    }

    /// Forgets a node. Refused while work is bound to it or its agent is connected, unless
    /// `force`: then its jobs go back to the queue and its agent is asked to register anew.
    pub(super) fn remove_node(&mut self, node: &Cid, force: bool) -> Result<Vec<JobId>, CoreError> {
        self.ensure_cluster();
        let Some(entry) = self.nodes.get(node) else {
            return Err(CoreError::NodeNotFound(node.clone()));
        };
        let connected = entry.session.is_some();
        let mut bound: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.placement
                    .as_ref()
                    .is_some_and(|p| p.nodes().any(|c| c == node))
            })
            .map(|(id, _)| id.clone())
            .collect();
        bound.sort();
        if !force {
            if !bound.is_empty() {
                let mut named: Vec<String> = bound
                    .iter()
                    .take(NAMED_JOBS)
                    .map(|j| j.to_string())
                    .collect();
                if bound.len() > NAMED_JOBS {
                    named.push(format!("and {} more", bound.len() - NAMED_JOBS));
                }
                return Err(CoreError::FailedPrecondition(format!(
                    "node {node} has work bound to it ({}); drain it first, or remove it with \
                     --force to send that work back to the queue",
                    named.join(", ")
                )));
            }
            if connected {
                return Err(CoreError::FailedPrecondition(format!(
                    "node {node} has a connected agent; stop the agent first, or remove the \
                     node with --force"
                )));
            }
        }
        let message = format!("its node {node} was removed by an admin");
        let mut requeued = Vec::new();
        for id in bound {
            // Pods' jobs follow their pods: Kubernetes moves them, the reconciler frees them.
            if self.pod_of(&id).is_some() {
                continue;
            }
            self.requeue(&id, "node_removed", &message)?;
            requeued.push(id);
        }
        self.store.delete_node(node)?;
        if let Some(entry) = self.nodes.remove(node)
            && let Some((_, tx)) = entry.session
        {
            let _ = tx.send(AgentCommand::Reregister {
                reason: format!("an admin removed node {node}"),
            });
        }
        self.cluster_dirty = true;
        warn!(node = %node, requeued = requeued.len(), "Node removed.");
        Ok(requeued)
    }
}
