//! Work on the agents: assignments sent to a node's session, what agents report back
//! (started, exited), and agents that stop heartbeating.

use suanli_engine::job::JobId;
use suanli_engine::{Cid, JobSpec, JobState};
use tracing::{debug, warn};

use super::{AgentCommand, Assignment, AssignmentPeer, Core, CoreError};
use crate::placement::ReplicaSlot;

/// Rendezvous ports come from `[20000, 32768)`: unprivileged, and below Linux's default
/// ephemeral range (32768-60999), so an outgoing connection on the master's node cannot
/// already hold the port.
const MASTER_PORT_FIRST: u16 = 20_000;
const MASTER_PORT_COUNT: u16 = 12_768;

/// The rendezvous port of one attempt of a job: FNV-1a of the job id and the attempt, so
/// every replica (and a resent assignment) gets the same port without the scheduler storing
/// it, and a retry moves to another port while the last attempt's may still be in use.
pub(super) fn master_port(id: &JobId, attempt: u32) -> u16 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let attempt = attempt.to_le_bytes();
    let bytes = id.0.as_bytes().iter().chain(&attempt);
    let hash = bytes.fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    });
    MASTER_PORT_FIRST + (hash % u64::from(MASTER_PORT_COUNT)) as u16
}

impl Core {
    /// Every placed replica of the job, in replica order, with the host its node
    /// advertises (the node's name when its agent advertised nothing).
    fn peers(&self, id: &JobId, slot: &ReplicaSlot) -> Vec<AssignmentPeer> {
        let mut slots: Vec<&ReplicaSlot> =
            match self.jobs.get(id).and_then(|j| j.placement.as_ref()) {
                Some(p) => p.replicas.iter().collect(),
                None => vec![slot],
            };
        slots.sort_by_key(|s| s.replica);
        slots
            .into_iter()
            .map(|s| {
                let advertised = self
                    .nodes
                    .get(&s.node)
                    .map(|n| n.advertise_addr.as_str())
                    .filter(|a| !a.is_empty());
                let address = advertised
                    .or_else(|| s.node.node_name())
                    .unwrap_or_default()
                    .to_string();
                AssignmentPeer {
                    replica: s.replica,
                    address,
                    gpus: u32::try_from(s.gpus.len()).unwrap_or(u32::MAX),
                }
            })
            .collect()
    }

    pub(super) fn assign(&self, id: &JobId, spec: &JobSpec, slot: &ReplicaSlot, attempt: u32) {
        let peers = self.peers(id, slot);
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
                peers,
                master_port: master_port(id, attempt),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_ports_are_stable_per_attempt_and_in_range() {
        let id = JobId("job-0001".to_string());
        let first = master_port(&id, 1);
        assert_eq!(
            first,
            master_port(&id, 1),
            "every replica gets the same port"
        );
        let ports: Vec<u16> = (1..=50).map(|a| master_port(&id, a)).collect();
        assert!(
            ports.iter().all(|p| (20_000..32_768).contains(p)),
            "{ports:?}"
        );
        assert_ne!(master_port(&id, 2), first, "a retry moves to another port");
        let other = JobId("job-0002".to_string());
        assert_ne!(master_port(&other, 1), first);
    }
}
