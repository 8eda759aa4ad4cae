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

    /// Applies a replica's exit and, once the store holds it (or holds all there is to hold:
    /// the job ended, the attempt is over, the exit was seen before), acknowledges it to the
    /// agent, which keeps re-sending it until then.
    pub(super) fn work_exited(
        &mut self,
        node: &Cid,
        id: &JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: &str,
    ) {
        if self.record_exit(node, id, replica, attempt, exit_code, message) {
            // Through the outbox inside a batch: the ack leaves only after the commit.
            self.send_to(
                node,
                AgentCommand::ExitAck {
                    job_id: id.clone(),
                    replica,
                    attempt,
                },
            );
        }
    }

    /// [`Core::work_exited`] without the ack; `false` when the store could not record it.
    fn record_exit(
        &mut self,
        node: &Cid,
        id: &JobId,
        replica: u32,
        attempt: u32,
        exit_code: i32,
        message: &str,
    ) -> bool {
        let Some(job) = self.jobs.get_mut(id) else {
            return true;
        };
        let Some(p) = job.placement.as_mut() else {
            return true;
        };
        let Some(slot) = p.reported_slot(node, replica, attempt) else {
            return true;
        };
        if slot.exit_code.is_some() {
            return true;
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
        match result {
            Ok(()) => true,
            Err(e) => {
                warn!(job = %id, error = %e, "Could not record an exit.");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::clock::ManualClock;
    use crate::core::{
        AgentSession, CoreConfig, CoreHandle, PreemptionConfig, ReportedExit, start,
    };
    use crate::store::{Durability, EventRecord, NewJob, Store};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;
    use suanli_engine::domain::DomainCatalog;
    use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
    use suanli_engine::quota::Quotas;
    use suanli_engine::testing::H100Node;
    use tokio::sync::mpsc;

    fn core_on(dir: &Path) -> (CoreHandle, std::thread::JoinHandle<()>) {
        let store = Store::open(dir, Durability::Normal).expect("store");
        let config = CoreConfig {
            policy: "fgd".into(),
            seed: 1,
            heartbeat_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            quotas: Quotas::new(),
            catalog: DomainCatalog::default(),
            preemption: PreemptionConfig::default(),
            clock: Arc::new(ManualClock::new(1_000)),
        };
        start(store, config).expect("core")
    }

    /// Registers the node (with its credential, after the first time) and opens a session
    /// that reports `exits`; returns the session, its commands and the credential.
    async fn connect(
        core: &CoreHandle,
        credential: &str,
        exits: Vec<ReportedExit>,
    ) -> (AgentSession, mpsc::UnboundedReceiver<AgentCommand>, String) {
        let inventory = H100Node::new("n1", 8).build();
        let registration = core
            .register(inventory.clone(), credential.to_string(), Identity::Agent)
            .await
            .expect("registered");
        let session = AgentSession {
            node: inventory.cid.clone(),
            session_id: registration.session_id,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        core.open_session(&session, Vec::new(), exits, tx)
            .await
            .expect("session");
        let credential = registration
            .credential
            .unwrap_or_else(|| credential.to_string());
        (session, rx, credential)
    }

    async fn next_command(rx: &mut mpsc::UnboundedReceiver<AgentCommand>) -> AgentCommand {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a command in time")
            .expect("session open")
    }

    /// A 1-GPU job placed and started on the node; then the scheduler stops (as if killed:
    /// the store is all that remains). Returns the job, its attempt and the credential.
    async fn a_started_job_and_a_stopped_scheduler(dir: &Path) -> (JobId, u32, String) {
        let (core, thread) = core_on(dir);
        let (session, mut rx, credential) = connect(&core, "", Vec::new()).await;
        let mut spec = JobSpec::new("once", JobKind::Training);
        spec.tenant = "research".into();
        spec.gpu = Some(GpuRequest {
            policy: GpuPolicy::Exclusive { count: 1 },
            models: vec![],
        });
        spec.command = vec!["true".into()];
        let record = core
            .submit(NewJob {
                spec,
                request_id: None,
            })
            .await
            .expect("submitted");
        let AgentCommand::Assign(a) = next_command(&mut rx).await else {
            panic!("expected an assignment");
        };
        assert_eq!(a.job_id, record.id);
        core.work_started(&session, a.job_id.clone(), a.replica, a.attempt);
        core.metrics().await.expect("the start is applied");
        core.shutdown();
        thread.join().expect("core stops");
        (record.id, a.attempt, credential)
    }

    fn events_of(dir: &Path, id: &JobId) -> Vec<EventRecord> {
        let store = Store::open(dir, Durability::Normal).expect("store");
        store.events(Some(id), 0, 0).expect("events")
    }

    #[tokio::test]
    async fn an_exit_reported_on_reconnect_is_an_exit_not_a_loss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, attempt, credential) = a_started_job_and_a_stopped_scheduler(dir.path()).await;

        // The replica exited 0 while the scheduler was down; the agent reports it on return.
        let (core, thread) = core_on(dir.path());
        let exit = ReportedExit {
            job_id: id.clone(),
            replica: 0,
            attempt,
            exit_code: 0,
            message: String::new(),
        };
        let (_session, mut rx, _) = connect(&core, &credential, vec![exit]).await;
        assert_eq!(
            next_command(&mut rx).await,
            AgentCommand::ExitAck {
                job_id: id.clone(),
                replica: 0,
                attempt,
            },
            "the exit is acknowledged once stored"
        );
        core.shutdown();
        thread.join().expect("core stops");

        let store = Store::open(dir.path(), Durability::Normal).expect("store");
        let job = store.job(&id).expect("job");
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.attempts, 1, "it ran once");
        let reasons: Vec<String> = events_of(dir.path(), &id)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert!(
            !reasons.iter().any(|r| r == "replica_lost"),
            "never lost: {reasons:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_reported_on_reconnect_fails_the_job_with_its_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, attempt, credential) = a_started_job_and_a_stopped_scheduler(dir.path()).await;
        let (core, thread) = core_on(dir.path());
        let exit = ReportedExit {
            job_id: id.clone(),
            replica: 0,
            attempt,
            exit_code: 3,
            message: "boom".into(),
        };
        let (_session, mut rx, _) = connect(&core, &credential, vec![exit.clone()]).await;
        assert!(matches!(
            next_command(&mut rx).await,
            AgentCommand::ExitAck { .. }
        ));
        core.shutdown();
        thread.join().expect("core stops");
        let events = events_of(dir.path(), &id);
        let last = events.last().expect("events");
        assert_eq!(last.to, JobState::Failed);
        assert!(last.message.contains("code 3: boom"), "{last:?}");
        assert!(!events.iter().any(|e| e.reason == "replica_lost"));

        // The same exit again (the ack was lost): acknowledged, nothing changes.
        let (core, thread) = core_on(dir.path());
        let (_session, mut rx, _) = connect(&core, &credential, vec![exit]).await;
        assert!(matches!(
            next_command(&mut rx).await,
            AgentCommand::ExitAck { .. }
        ));
        core.shutdown();
        thread.join().expect("core stops");
        assert_eq!(events_of(dir.path(), &id).len(), events.len());
    }

    #[tokio::test]
    async fn a_replica_neither_running_nor_exited_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (id, _, credential) = a_started_job_and_a_stopped_scheduler(dir.path()).await;
        let (core, thread) = core_on(dir.path());
        let (_session, _rx, _) = connect(&core, &credential, Vec::new()).await;
        core.metrics().await.expect("settled");
        core.shutdown();
        thread.join().expect("core stops");
        let events = events_of(dir.path(), &id);
        assert!(
            events.iter().any(|e| e.reason == "replica_lost"),
            "{events:?}"
        );
    }

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
