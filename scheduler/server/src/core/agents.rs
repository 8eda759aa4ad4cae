//! Work on the agents: assignments sent to a node's session, what agents report back
//! (started, exited), and agents that stop heartbeating.

use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobSpec, JobState};
use tracing::{debug, warn};

use super::{AgentCommand, Assignment, Core, CoreError};
use crate::placement::ReplicaSlot;

impl Core {
    pub(super) fn assign(&self, id: &JobId, spec: &JobSpec, slot: &ReplicaSlot, attempt: u32) {
        self.send_to(
            &slot.node,
            AgentCommand::Assign(Box::new(Assignment {
                job_id: id.clone(),
                replica: slot.replica,
                attempt,
                spec: spec.clone(),
                gpu_uuids: slot.gpus.iter().map(|g| g.uuid.clone()).collect(),
                cpu_milli: slot.cpu_milli,
                memory_mib: slot.memory_mib,
            })),
        );
    }

    pub(super) fn send_to(&self, node: &Cid, command: AgentCommand) {
        if self.in_batch.get() {
            self.outbox
                .borrow_mut()
                .agents
                .push((node.clone(), command));
            return;
        }
        match self.nodes.get(node).and_then(|n| n.session.as_ref()) {
            Some((_, tx)) => {
                if tx.send(command).is_err() {
                    debug!(node = %node, "Agent session gone; the command waits for its return.");
                }
            }
            None => debug!(node = %node, "No agent session; the command waits for its return."),
        }
    }

    pub(super) fn check_heartbeats(&mut self) {
        let timeout = self.config.heartbeat_timeout;
        let lost: Vec<Cid> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.lost && n.last_seen.elapsed() > timeout)
            .map(|(c, _)| c.clone())
            .collect();
        if lost.is_empty() {
            return;
        }
        for cid in &lost {
            warn!(node = %cid, timeout_ms = timeout.as_millis() as u64, "Agent missed its heartbeats; node lost.");
            if let Some(n) = self.nodes.get_mut(cid) {
                n.lost = true;
                n.session = None;
            }
            if let Err(e) = self.store.set_node_flags(cid, None, Some(true)) {
                warn!(node = %cid, error = %e, "Could not record the lost node.");
            }
        }
        self.cluster_dirty = true;
    }

    pub(super) fn work_started(&mut self, node: &Cid, id: &JobId, replica: u32, attempt: u32) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(p) = job.placement.as_mut() else {
            return;
        };
        let Some(slot) = p.reported_slot(node, replica, attempt) else {
            return;
        };
        if slot.started {
            return;
        }
        slot.started = true;
        let all = p.all_started();
        let placement = p.clone();
        let state = job.state;
        let result = if all && state == JobState::Placed {
            self.transition(
                id,
                JobState::Running,
                "started",
                "every replica is running",
                Some(Some(&placement)),
            )
        } else {
            self.store
                .set_placement(id, &placement)
                .map_err(CoreError::from)
        };
        if let Err(e) = result {
            warn!(job = %id, error = %e, "Could not record a start.");
        }
    }

    pub(super) fn work_exited(
        &mut self,
        node: &Cid,
        id: &JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: &str,
    ) {
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(p) = job.placement.as_mut() else {
            return;
        };
        let Some(slot) = p.reported_slot(node, replica, attempt) else {
            return;
        };
        if slot.exit_code.is_some() {
            return;
        }
        slot.started = true;
        slot.exit_code = Some(exit_code);
        let all_exited = p.all_exited();
        let placement = p.clone();
        let result = if exit_code != 0 {
            let detail = if message.is_empty() {
                String::new()
            } else {
                format!(": {message}")
            };
            let msg = format!("replica {replica} exited with code {exit_code}{detail}");
            self.stop_replicas(id);
            self.finish(id, JobState::Failed, "exited", &msg)
        } else if all_exited {
            if job.state == JobState::Placed {
                let _ = self.transition(
                    id,
                    JobState::Running,
                    "started",
                    "every replica ran",
                    Some(Some(&placement)),
                );
            }
            self.finish(
                id,
                JobState::Succeeded,
                "exited",
                "every replica exited with code 0",
            )
        } else {
            self.store
                .set_placement(id, &placement)
                .map_err(CoreError::from)
        };
        if let Err(e) = result {
            warn!(job = %id, error = %e, "Could not record an exit.");
        }
    }
}
