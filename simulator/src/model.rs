//! The simulator's own view of traces: node shapes, resource requests and timed jobs.
//!
//! These are trace facts, not placement state; placement state lives in `suanli-engine`.

use std::fmt;

use serde::Serialize;
use suanli_engine::GpuModel;

/// GPU compute in thousandths of a GPU.
pub const MILLI_PER_GPU: u32 = 1000;

/// One machine as a trace describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: u32,
    /// `None` for CPU-only nodes.
    pub model: Option<GpuModel>,
}

impl NodeShape {
    pub fn gpu_milli(&self) -> u64 {
        u64::from(self.gpus) * u64::from(MILLI_PER_GPU)
    }
}

/// What one pod (one replica) asks for.
///
/// `gpu_milli` is per GPU: below 1000 only for a one-GPU shared pod; 1000 for whole GPUs;
/// 0 when `num_gpu` is 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Request {
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub num_gpu: u32,
    pub gpu_milli: u32,
    /// Allowed GPU models; empty means any.
    pub models: Vec<GpuModel>,
}

impl Request {
    pub fn total_gpu_milli(&self) -> u64 {
        u64::from(self.num_gpu) * u64::from(self.gpu_milli)
    }

    pub fn is_gpu_share(&self) -> bool {
        self.num_gpu == 1 && self.gpu_milli < MILLI_PER_GPU
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={}m mem={}Mi gpu={}x{}m",
            self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli
        )?;
        if !self.models.is_empty() {
            let names: Vec<&str> = self.models.iter().map(GpuModel::as_str).collect();
            write!(f, " models={}", names.join("|"))?;
        }
        Ok(())
    }
}

/// One pod row of an Alibaba `openb` pod list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub name: String,
    pub request: Request,
    pub qos: Option<String>,
    pub phase: Option<String>,
    /// Seconds since the trace's origin.
    pub creation_time: Option<u64>,
    pub deletion_time: Option<u64>,
    pub scheduled_time: Option<u64>,
}

/// A job with a real arrival and duration, for the replay protocol.
///
/// A job is `replicas` identical pods placed all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedJob {
    pub id: usize,
    /// Seconds since the trace's first arrival.
    pub arrival: u64,
    pub duration: u64,
    pub replica: Request,
    pub replicas: u32,
    pub tenant: String,
}

impl TimedJob {
    pub fn total_gpu_milli(&self) -> u64 {
        self.replica.total_gpu_milli() * u64::from(self.replicas)
    }
}
