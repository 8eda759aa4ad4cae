//! Kubernetes pods placed through the scheduler extender.
//!
//! kube-scheduler asks which of its candidate nodes can take a pod (filter), how well
//! (prioritize), and finally tells the scheduler to bind it to one. Binding makes a job of
//! the pod, holding its GPUs in the same cluster model as every other job, so pods and
//! Suanli jobs never share a GPU by accident. kubelet runs the pod; the job ends when the
//! Kubernetes reconciler sees the pod gone or finished. Where the device plugin gave the pod
//! other whole GPUs than bind chose, the agents' kubelet reports correct the placement.

use std::collections::{BTreeMap, BTreeSet};

use suanli_engine::cluster::{Claim, GpuGrant, NodeId};
use suanli_engine::explain::{Refusal, Unplaceable};
use suanli_engine::gang::GangRequest;
use suanli_engine::job::JobId;
use suanli_engine::policy::evaluate;
use suanli_engine::request::Request;
use suanli_engine::workload::SingleReplicaPolicy;
use suanli_engine::{Cid, JobSpec, JobState};
use tracing::{info, warn};

use super::{Core, CoreError, LiveJob};
use crate::placement::{PodRef, StoredPlacement};
use crate::store::NewJob;

/// Prefix of the idempotency key a pod's job is stored under: one job per pod UID.
const POD_REQUEST_PREFIX: &str = "k8s-pod:";

/// One candidate node's answer for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerdict {
    /// The node, by name as kube-scheduler gave it.
    pub node: String,
    /// The policy's points (higher is better), or why the node cannot take the pod.
    pub points: Result<i64, String>,
}

impl NodeVerdict {
    pub fn new(node: &str, points: Result<i64, String>) -> NodeVerdict {
        NodeVerdict {
            node: node.to_string(),
            points,
        }
    }
}

/// What a bound pod holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BoundPod {
    pub job_id: JobId,
    pub node: Cid,
    pub gpu_uuids: Vec<String>,
    pub device_cids: Vec<Cid>,
}

/// A live job that holds GPUs for a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodJobView {
    pub job_id: JobId,
    pub pod: PodRef,
    pub node: Cid,
    pub placed_ms: i64,
}

impl Core {
    /// The pod a live job was bound for, if it was.
    pub(super) fn pod_of(&self, id: &JobId) -> Option<&PodRef> {
        self.jobs.get(id)?.placement.as_ref()?.pod.as_ref()
    }

    /// The single-replica request a pod makes.
    fn pod_request(spec: &JobSpec) -> Result<Request, CoreError> {
        spec.validate()
            .map_err(|e| CoreError::InvalidArgument(format!("pod: {e}")))?;
        let gang = GangRequest::from_job(spec)
            .map_err(|e| CoreError::InvalidArgument(format!("pod: {e}")))?;
        Ok(gang.request)
    }

    /// The policy, built from what is known of the workload; FGD needs at least one request
    /// shape, and a pod's own is the best guess before any other arrived.
    fn policy_for_pod(&mut self, spec: &JobSpec) -> Result<(), CoreError> {
        if !self.refresh_policy() {
            self.remember(spec);
        }
        if !self.refresh_policy() {
            return Err(CoreError::FailedPrecondition(format!(
                "placement policy {} is not ready",
                self.single().kind().name()
            )));
        }
        Ok(())
    }

    /// The policy that places single replicas, which the core always sets on its queue.
    fn single(&self) -> &SingleReplicaPolicy {
        self.queue
            .single_replica_policy()
            .expect("the core's queue has a single-replica policy")
    }

    /// Builds the policy from the workload seen so far; whether it is ready.
    fn refresh_policy(&mut self) -> bool {
        self.queue
            .single_replica_policy_mut()
            .is_some_and(|single| single.refresh())
    }

    /// Why a node named by kube-scheduler is not in the placement model.
    fn missing_node(&self, name: &str) -> String {
        match self
            .nodes
            .iter()
            .find(|(cid, _)| cid.node_name() == Some(name))
        {
            Some((cid, entry)) if entry.lost => {
                format!("the Suanli agent of {cid} is lost (missed its heartbeats)")
            }
            Some((cid, _)) => format!("node {cid} is not usable yet"),
            None => "no Suanli agent has registered this node".to_string(),
        }
    }

    /// Filter and prioritize: each of `names` with its points or the reason it cannot take
    /// the pod, quota included.
    pub(super) fn score_pod(
        &mut self,
        spec: &JobSpec,
        names: &[String],
    ) -> Result<Vec<NodeVerdict>, CoreError> {
        let request = Self::pod_request(spec)?;
        self.ensure_cluster();
        self.policy_for_pod(spec)?;
        let ids: Vec<Option<NodeId>> = names
            .iter()
            .map(|n| self.queue.cluster().node_by_name(n))
            .collect();
        let known: Vec<NodeId> = ids.iter().flatten().copied().collect();
        let policy = self.single().policy().expect("policy_for_pod built it");
        let mut verdicts = evaluate(self.queue.cluster(), &request, policy, &known).into_iter();
        let mut out = Vec::with_capacity(names.len());
        for (name, id) in names.iter().zip(ids) {
            let Some(id) = id else {
                out.push(NodeVerdict::new(name, Err(self.missing_node(name))));
                continue;
            };
            let verdict = match verdicts.next().expect("one verdict per known node") {
                Ok(points) => self.pod_quota(spec, &request, id).map(|()| points),
                Err(reason) => Err(Self::node_reason(reason, &request)),
            };
            out.push(NodeVerdict::new(name, verdict));
        }
        Ok(out)
    }

    /// The engine's wording for one node's reason.
    fn node_reason(reason: Refusal, request: &Request) -> String {
        Unplaceable::one_node(reason, request).describe(reason)
    }

    /// Whether the pod's tenant and queue may take the pod's GPUs of this node's model.
    fn pod_quota(&self, spec: &JobSpec, request: &Request, id: NodeId) -> Result<(), String> {
        let milli = request.gpu_milli_total();
        if milli == 0 {
            return Ok(());
        }
        let Some(model) = self
            .queue
            .cluster()
            .node(id)
            .and_then(|n| n.uniform_model())
            .map(|m| self.queue.cluster().model(m).clone())
        else {
            return Ok(());
        };
        self.admit(spec, &[(model, milli)])
            .map(|_| ())
            .map_err(|w| w.to_string())
    }

    /// Binds a pod to the node kube-scheduler chose: picks its GPUs there by the policy,
    /// charges its quota, and stores it as a running job. Binding the same pod again
    /// answers with what it already holds.
    pub(super) fn bind_pod(
        &mut self,
        pod: &PodRef,
        spec: JobSpec,
        node_name: &str,
    ) -> Result<BoundPod, CoreError> {
        if let Some((id, _)) = self
            .jobs
            .iter()
            .find(|(id, _)| self.pod_of(id).is_some_and(|p| p.uid == pod.uid))
        {
            let id = id.clone();
            return self.bound(&id, node_name);
        }
        let mut spec = spec;
        // Suanli cannot stop a pod; Kubernetes evicts it.
        spec.preemptible = false;
        let request = Self::pod_request(&spec)?;
        self.ensure_cluster();
        self.policy_for_pod(&spec)?;
        let Some(id) = self.queue.cluster().node_by_name(node_name) else {
            return Err(CoreError::PodRefused {
                pod: pod.to_string(),
                node: node_name.to_string(),
                why: self.missing_node(node_name),
            });
        };
        let node_cid = self
            .queue
            .cluster()
            .node(id)
            .and_then(|n| n.cid())
            .cloned()
            .expect("server clusters are built from inventories, which have CIDs");
        let on_node = request.with_allowed(vec![node_cid]);
        let placement = self
            .queue
            .place_single(&on_node)
            .expect("policy_for_pod built it")
            .map_err(|u| CoreError::PodRefused {
                pod: pod.to_string(),
                node: node_name.to_string(),
                why: u.to_string(),
            })?;
        let charges = self.queue.cluster().gpu_milli_by_model([&placement.claim]);
        self.admit(&spec, &charges)
            .map_err(|w| CoreError::PodRefused {
                pod: pod.to_string(),
                node: node_name.to_string(),
                why: w.to_string(),
            })?;
        let slot = self.slot_for(0, &placement.claim, Vec::new());
        let mut stored = StoredPlacement {
            policy: "kubernetes".to_string(),
            placed_ms: self.now_ms(),
            attempt: 1,
            replicas: vec![slot],
            score: Vec::new(),
            pod: Some(pod.clone()),
        };
        stored.replicas[0].started = true;
        let job_id = self.store_bound_pod(pod, &spec, &stored, node_name)?;
        self.remember(&spec);
        let created_ms = stored.placed_ms;
        self.jobs.insert(
            job_id.clone(),
            LiveJob {
                spec,
                state: JobState::Running,
                attempts: 1,
                created_ms,
                placement: Some(stored),
                wait: None,
            },
        );
        if let Err(e) = self.book(&job_id, vec![placement.claim], created_ms) {
            // The policy chose free GPUs a moment ago, so this does not happen; should it,
            // the pod's job ends rather than run on GPUs Suanli does not hold for it.
            warn!(job = %job_id, error = %e, "Could not hold the pod's GPUs.");
            let why = format!("its GPUs could not be held: {e}");
            let _ = self.finish(&job_id, JobState::Failed, "lost", &why);
            return Err(CoreError::PodRefused {
                pod: pod.to_string(),
                node: node_name.to_string(),
                why,
            });
        }
        info!(job = %job_id, pod = %pod, node = node_name, "Bound pod.");
        self.bound(&job_id, node_name)
    }

    /// Stores the pod's job as placed and running, in one transaction: a crash leaves either
    /// all of it or nothing. Events go out once it is durable.
    fn store_bound_pod(
        &mut self,
        pod: &PodRef,
        spec: &JobSpec,
        stored: &StoredPlacement,
        node_name: &str,
    ) -> Result<JobId, CoreError> {
        let json =
            serde_json::to_value(stored).map_err(|source| crate::store::StoreError::Corrupt {
                what: "placement being written".into(),
                source,
            })?;
        self.store.begin_batch()?;
        let written = (|| -> Result<(JobId, Vec<_>), CoreError> {
            let (record, submitted) = self
                .store
                .insert_jobs_with_events(&[NewJob {
                    spec: spec.clone(),
                    request_id: Some(format!("{POD_REQUEST_PREFIX}{}", pod.uid)),
                }])?
                .remove(0);
            let Some(submitted) = submitted else {
                return Err(CoreError::FailedPrecondition(format!(
                    "pod {pod} (uid {}) was bound before, as job {}, which has ended",
                    pod.uid, record.id
                )));
            };
            let placed = self.store.transition(
                &record.id,
                JobState::Placed,
                "bound",
                &format!("kube-scheduler bound pod {pod} to {node_name}"),
                Some(Some(&json)),
            )?;
            let running = self.store.transition(
                &record.id,
                JobState::Running,
                "started",
                "kubelet runs the pod",
                None,
            )?;
            Ok((record.id, vec![submitted, placed, running]))
        })();
        match written.and_then(|w| self.store.commit_batch().map(|()| w).map_err(Into::into)) {
            Ok((id, events)) => {
                for event in events {
                    self.publish(event);
                }
                Ok(id)
            }
            Err(e) => {
                self.store.rollback_batch();
                Err(e)
            }
        }
    }

    /// What a bound pod's job holds, if it is on `node_name`.
    fn bound(&self, id: &JobId, node_name: &str) -> Result<BoundPod, CoreError> {
        let placement = self
            .jobs
            .get(id)
            .and_then(|j| j.placement.as_ref())
            .ok_or_else(|| CoreError::NoPlacement(id.clone()))?;
        let slot = placement
            .replicas
            .first()
            .ok_or_else(|| CoreError::NoPlacement(id.clone()))?;
        if slot.node.node_name() != Some(node_name) {
            return Err(CoreError::FailedPrecondition(format!(
                "the pod is already bound to {} as job {id}",
                slot.node
            )));
        }
        Ok(BoundPod {
            job_id: id.clone(),
            node: slot.node.clone(),
            gpu_uuids: slot.gpus.iter().map(|g| g.uuid.clone()).collect(),
            device_cids: slot.gpus.iter().map(|g| g.device_cid.clone()).collect(),
        })
    }

    /// Ends a pod's job: the pod finished, was deleted, or could not be bound after all.
    pub(super) fn end_pod(
        &mut self,
        id: &JobId,
        state: JobState,
        reason: &str,
        message: &str,
    ) -> Result<(), CoreError> {
        if self.pod_of(id).is_none() {
            return Err(CoreError::NotAPodJob(id.clone()));
        }
        if !state.is_terminal() {
            return Err(CoreError::InvalidArgument(format!(
                "a pod's job can only end, not become {state}"
            )));
        }
        self.finish(id, state, reason, message)
            .inspect_err(|e| warn!(job = %id, error = %e, "Could not end a pod's job."))
    }

    /// The live jobs bound for pods, oldest first.
    pub(super) fn pod_jobs(&self) -> Vec<PodJobView> {
        let mut views: Vec<PodJobView> = self
            .jobs
            .iter()
            .filter_map(|(id, job)| {
                let placement = job.placement.as_ref()?;
                Some(PodJobView {
                    job_id: id.clone(),
                    pod: placement.pod.clone()?,
                    node: placement.replicas.first()?.node.clone(),
                    placed_ms: placement.placed_ms,
                })
            })
            .collect();
        views.sort_by(|a, b| (a.placed_ms, &a.job_id).cmp(&(b.placed_ms, &b.job_id)));
        views
    }
}

impl Core {
    /// The extender's preempt: of kube-scheduler's candidate nodes, each with the pods it
    /// would evict there, the nodes where the pod would then fit in Suanli's model too.
    /// Victims' GPUs are released for the trial only and held again before this returns.
    pub(super) fn preempt_pod(
        &mut self,
        spec: &JobSpec,
        candidates: &[(String, Vec<String>)],
    ) -> Result<Vec<NodeVerdict>, CoreError> {
        let request = Self::pod_request(spec)?;
        self.ensure_cluster();
        self.policy_for_pod(spec)?;
        let by_uid: std::collections::HashMap<String, JobId> = self
            .pod_jobs()
            .into_iter()
            .map(|v| (v.pod.uid, v.job_id))
            .collect();
        let mut out = Vec::with_capacity(candidates.len());
        for (name, victim_uids) in candidates {
            let Some(id) = self.queue.cluster().node_by_name(name) else {
                out.push(NodeVerdict::new(name, Err(self.missing_node(name))));
                continue;
            };
            let victims: Vec<JobId> = victim_uids
                .iter()
                .filter_map(|uid| by_uid.get(uid).cloned())
                .collect();
            for victim in &victims {
                self.release(victim);
            }
            let policy = self.single().policy().expect("policy_for_pod built it");
            let verdict = match evaluate(self.queue.cluster(), &request, policy, &[id]).remove(0) {
                Ok(points) => self.pod_quota(spec, &request, id).map(|()| points),
                Err(reason) => Err(Self::node_reason(reason, &request)),
            };
            for victim in victims.iter().rev() {
                if let Err(e) = self.reclaim_resources(victim) {
                    // Nothing was allocated in between, so this does not happen; should it,
                    // the pod's job ends rather than hold GPUs it does not have.
                    warn!(job = %victim, error = %e, "Could not hold a trial victim's GPUs again.");
                    let _ = self.finish(
                        victim,
                        JobState::Failed,
                        "lost",
                        "its GPUs could not be held again",
                    );
                }
            }
            out.push(NodeVerdict::new(name, verdict));
        }
        Ok(out)
    }
}

/// One pod's GPUs as kubelet reports them: namespace, name, device ids (GPU UUIDs).
pub type PodGpus = (String, String, Vec<String>);

impl Core {
    /// Makes pods' placements on `node` what kubelet actually gave them. A pod asking for
    /// whole GPUs gets its devices from the device plugin, which may pick other GPUs than
    /// the bind chose; what kubelet reports wins, as what agents report running wins for
    /// Suanli's own jobs. Suanli jobs placed on GPUs a pod really holds go back to the queue.
    pub(super) fn correct_pod_gpus(&mut self, node: &Cid, seen: &[PodGpus]) {
        self.ensure_cluster();
        let Some(&node_id) = self.node_ids.get(node) else {
            return;
        };
        let gpus_here: Vec<(String, u64)> = self.queue.cluster().nodes()[node_id.index()]
            .gpus()
            .iter()
            .map(|g| (g.uuid.clone(), g.memory_mib))
            .collect();
        // Each pod whose GPUs kubelet reports differently, with the positions it really has.
        let mut fixes: Vec<(JobId, PodRef, Vec<u32>)> = Vec::new();
        for view in self.pod_jobs().into_iter().filter(|v| &v.node == node) {
            let Some((_, _, given)) = seen
                .iter()
                .find(|(ns, name, _)| *ns == view.pod.namespace && *name == view.pod.name)
            else {
                continue;
            };
            let Some(slot) = self
                .jobs
                .get(&view.job_id)
                .and_then(|j| j.placement.as_ref())
                .and_then(|p| p.replicas.first())
            else {
                continue;
            };
            // Shares and MIG slices follow the annotation; only whole GPUs come from the
            // device plugin.
            if given.is_empty() || !slot.gpus.iter().all(|g| g.exclusive && g.mig.is_none()) {
                continue;
            }
            let held: BTreeSet<&str> = slot.gpus.iter().map(|g| g.uuid.as_str()).collect();
            let got: BTreeSet<&str> = given.iter().map(String::as_str).collect();
            if held == got {
                continue;
            }
            let positions: Option<Vec<u32>> = got
                .iter()
                .map(|u| gpus_here.iter().position(|(g, _)| g == u).map(|p| p as u32))
                .collect();
            match positions {
                Some(p) => fixes.push((view.job_id, view.pod, p)),
                None => {
                    warn!(pod = %view.pod, devices = ?given, "kubelet reports devices this node's inventory does not have; left as placed.")
                }
            }
        }
        if fixes.is_empty() {
            return;
        }
        // Every corrected pod lets go first, so pods that swapped GPUs do not collide.
        for (id, _, _) in &fixes {
            self.release(id);
        }
        let taken: BTreeMap<u32, &PodRef> = fixes
            .iter()
            .flat_map(|(_, pod, positions)| positions.iter().map(move |p| (*p, pod)))
            .collect();
        let displaced: Vec<(JobId, String)> = self
            .jobs
            .iter()
            .filter(|(id, _)| !fixes.iter().any(|(f, _, _)| f == *id))
            .filter_map(|(id, job)| {
                // Another pod is not moved here: kubelet's next report corrects it too.
                let slot = job
                    .placement
                    .as_ref()
                    .filter(|p| p.pod.is_none())?
                    .replicas
                    .iter()
                    .find(|s| &s.node == node)?;
                let grant = slot.gpus.iter().find(|g| taken.contains_key(&g.gpu))?;
                Some((
                    id.clone(),
                    format!(
                        "kubelet gave GPU {} on {node} to pod {}",
                        grant.uuid, taken[&grant.gpu]
                    ),
                ))
            })
            .collect();
        for (id, message) in displaced {
            warn!(job = %id, "{message}; the job goes back to the queue.");
            if let Err(e) = self.requeue(&id, "gpu_taken", &message) {
                warn!(job = %id, error = %e, "Could not requeue.");
            }
        }
        for (id, _, positions) in fixes {
            self.hold_given_gpus(&id, node_id, &positions, &gpus_here);
        }
    }

    /// Holds `positions` (whole GPUs) for a pod's job instead of what it held, and stores
    /// the new placement. If they cannot be held, the old placement is held again.
    fn hold_given_gpus(
        &mut self,
        id: &JobId,
        node: NodeId,
        positions: &[u32],
        gpus_here: &[(String, u64)],
    ) {
        let Some(job) = self.jobs.get(id) else {
            return;
        };
        let Some(slot) = job.placement.as_ref().and_then(|p| p.replicas.first()) else {
            return;
        };
        let claim = Claim {
            node,
            cpu_milli: slot.cpu_milli,
            memory_mib: slot.memory_mib,
            gpus: positions
                .iter()
                .map(|&p| GpuGrant {
                    gpu: p,
                    milli: 1000,
                    memory_mib: gpus_here[p as usize].1,
                    exclusive: true,
                    mig: None,
                })
                .collect(),
            affinity: Request::from_job(&job.spec).ok().and_then(|r| r.affinity()),
        };
        let placed_ms = job.placement.as_ref().map_or(0, |p| p.placed_ms);
        if let Err(e) = self.book(id, vec![claim.clone()], placed_ms) {
            warn!(job = %id, error = %e, "Could not hold the GPUs kubelet gave the pod; keeping the old placement.");
            if let Err(e) = self.reclaim_resources(id) {
                warn!(job = %id, error = %e, "The pod's old GPUs are gone too.");
            }
            return;
        }
        let mut slot = self.slot_for(0, &claim, Vec::new());
        slot.started = true;
        let Some(job) = self.jobs.get_mut(id) else {
            return;
        };
        let Some(placement) = job.placement.as_mut() else {
            return;
        };
        let before: Vec<String> = placement.replicas[0]
            .gpus
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        placement.replicas[0] = slot;
        let stored = placement.clone();
        if let Err(e) = self.store.set_placement(id, &stored) {
            warn!(job = %id, error = %e, "Could not store the corrected placement.");
        }
        info!(job = %id, was = ?before, now = ?stored.replicas[0].gpus.iter().map(|g| &g.uuid).collect::<Vec<_>>(), "Pod's GPUs corrected to what kubelet gave it.");
    }
}
