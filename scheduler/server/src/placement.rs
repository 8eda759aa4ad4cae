//! The placement a job holds, as the scheduler stores it.
//!
//! The engine's `Allocation` refers to nodes and GPUs by position in one in-memory cluster;
//! what is stored names them by CID and UUID instead, so it survives restarts and cluster
//! rebuilds, and can be claimed again exactly.

use serde::{Deserialize, Serialize};
use suanli_engine::Cid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// UUID of the GPU, or of the MIG instance for MIG grants.
    pub uuid: String,
    /// Device CID (`.../node/gpu-3`).
    pub device_cid: Cid,
    /// Position of the GPU on its node.
    pub gpu: u32,
    pub milli: u32,
    pub memory_mib: u64,
    pub exclusive: bool,
    /// MIG profile and first memory slice, for MIG grants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<(String, u8)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreItem {
    pub name: String,
    pub value: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSlot {
    pub replica: u32,
    pub node: Cid,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<GrantRecord>,
    #[serde(default)]
    pub score: Vec<ScoreItem>,
    /// The agent reported the replica's process started.
    #[serde(default)]
    pub started: bool,
    /// The replica's exit code once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlacement {
    pub policy: String,
    pub placed_ms: i64,
    /// Which attempt of the job this placement is (1 for the first).
    pub attempt: u32,
    pub replicas: Vec<ReplicaSlot>,
    /// Why the replicas sit where they do together (gang placements only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub score: Vec<ScoreItem>,
    /// The Kubernetes pod this placement was made for through the extender; kubelet, not a
    /// Suanli agent, runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// A Kubernetes pod by namespace, name and UID (the UID tells a recreated pod of the same
/// name apart).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl StoredPlacement {
    pub fn nodes(&self) -> impl Iterator<Item = &Cid> {
        self.replicas.iter().map(|r| &r.node)
    }

    pub fn all_started(&self) -> bool {
        self.replicas.iter().all(|r| r.started)
    }

    pub fn all_exited(&self) -> bool {
        self.replicas.iter().all(|r| r.exit_code.is_some())
    }

    /// The slot an agent's report is about, if the report matches this placement: the same
    /// attempt (0 means any) and the node the replica was placed on.
    pub fn reported_slot(
        &mut self,
        node: &Cid,
        replica: u32,
        attempt: u32,
    ) -> Option<&mut ReplicaSlot> {
        if attempt != 0 && attempt != self.attempt {
            return None;
        }
        self.replicas
            .iter_mut()
            .find(|r| r.replica == replica && &r.node == node)
    }
}
