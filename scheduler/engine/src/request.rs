//! What one replica asks the placement engine for: CPU, memory, and a GPU demand.
//!
//! A [`Request`] is always valid once built: constructors check sizes, so the placement code
//! never sees zero-GPU exclusive requests, shares above one GPU or absurd CPU numbers.

use std::fmt;

use crate::cid::Cid;
use crate::gpu::{GpuModel, MigProfile};
use crate::job::{GpuPolicy, JobSpec, MAX_GPUS_PER_REPLICA, MILLI_PER_GPU};

/// Upper bound for a replica's CPU request (10,000 cores), matching `JobSpec` validation.
pub const MAX_CPU_MILLI: u64 = 10_000_000;
/// Upper bound for a replica's memory request (1 PiB in MiB), matching `JobSpec` validation.
pub const MAX_MEMORY_MIB: u64 = 1 << 30;
/// Upper bound for a share's GPU memory (4 TiB in MiB).
pub const MAX_GPU_MEMORY_MIB: u64 = 1 << 22;
/// Most MIG instances one replica may ask for (8 GPUs × 7 slices).
pub const MAX_MIG_INSTANCES: u32 = 56;

/// How a replica uses GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GpuDemand {
    /// CPU-only work.
    None,
    /// `count` whole GPUs on one node, never shared afterwards.
    Exclusive { count: u32 },
    /// A share of one GPU: `milli` of its compute (0–1000) and `memory_mib` of its memory.
    /// At least one of the two is non-zero.
    Shared { milli: u32, memory_mib: u64 },
    /// `count` MIG instances of `profile` on one node.
    Mig { profile: MigProfile, count: u32 },
}

/// Why a request cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("gpu: a shared GPU request needs milli, memory_mib or both")]
    EmptyShare,
    #[error(
        "num_gpu {count} with gpu_milli {milli}: a request for several GPUs takes whole GPUs (gpu_milli 1000)"
    )]
    PartialMultiGpu { count: u32, milli: u32 },
    #[error("gpu_spec {spec:?}: {problem}")]
    BadModel { spec: String, problem: String },
    #[error("job has no GPU demand the engine understands: {0}")]
    Unsupported(String),
}

/// The GPU-affinity class of a request, as the GPU-clustering policy groups work on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AffinityTag {
    /// A share of one GPU.
    Share,
    /// `n` whole GPUs.
    Whole(u32),
    /// MIG instances.
    Mig,
}

impl fmt::Display for AffinityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AffinityTag::Share => f.write_str("share-gpu"),
            AffinityTag::Whole(n) => write!(f, "{n}-gpu"),
            AffinityTag::Mig => f.write_str("mig"),
        }
    }
}

/// One replica's demand: CPU, memory, GPUs, allowed GPU models and allowed places.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    cpu_milli: u64,
    memory_mib: u64,
    gpu: GpuDemand,
    models: Vec<GpuModel>,
    allowed: Vec<Cid>,
}

fn check(field: &'static str, got: u64, min: u64, max: u64) -> Result<u64, RequestError> {
    if (min..=max).contains(&got) {
        Ok(got)
    } else {
        Err(RequestError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

impl Request {
    /// A request with CPU and memory and the given GPU demand; checks every size.
    pub fn new(cpu_milli: u64, memory_mib: u64, gpu: GpuDemand) -> Result<Request, RequestError> {
        check("cpu_milli", cpu_milli, 0, MAX_CPU_MILLI)?;
        check("memory_mib", memory_mib, 0, MAX_MEMORY_MIB)?;
        match &gpu {
            GpuDemand::None => {}
            GpuDemand::Exclusive { count } => {
                check(
                    "gpu.count",
                    u64::from(*count),
                    1,
                    u64::from(MAX_GPUS_PER_REPLICA),
                )?;
            }
            GpuDemand::Shared { milli, memory_mib } => {
                if *milli == 0 && *memory_mib == 0 {
                    return Err(RequestError::EmptyShare);
                }
                check("gpu.milli", u64::from(*milli), 0, u64::from(MILLI_PER_GPU))?;
                check("gpu.memory_mib", *memory_mib, 0, MAX_GPU_MEMORY_MIB)?;
            }
            GpuDemand::Mig { count, .. } => {
                check(
                    "gpu.count",
                    u64::from(*count),
                    1,
                    u64::from(MAX_MIG_INSTANCES),
                )?;
            }
        }
        Ok(Request {
            cpu_milli,
            memory_mib,
            gpu,
            models: Vec::new(),
            allowed: Vec::new(),
        })
    }

    /// A pod of Alibaba's `openb` trace: `num_gpu` GPUs of `gpu_milli` each, `gpu_spec` a
    /// `|`-separated list of allowed models (empty: any). One GPU below 1000 milli is a share;
    /// whole GPUs otherwise.
    pub fn from_openb(
        cpu_milli: u64,
        memory_mib: u64,
        num_gpu: u32,
        gpu_milli: u32,
        gpu_spec: &str,
    ) -> Result<Request, RequestError> {
        let gpu = match (num_gpu, gpu_milli) {
            (0, _) => GpuDemand::None,
            (_, 0) => {
                return Err(RequestError::OutOfRange {
                    field: "gpu_milli",
                    min: 1,
                    max: u64::from(MILLI_PER_GPU),
                    got: 0,
                });
            }
            (1, m) if m < MILLI_PER_GPU => GpuDemand::Shared {
                milli: m,
                memory_mib: 0,
            },
            (n, m) if m == MILLI_PER_GPU => GpuDemand::Exclusive { count: n },
            (n, m) if m > MILLI_PER_GPU => {
                return Err(RequestError::OutOfRange {
                    field: "gpu_milli",
                    min: 1,
                    max: u64::from(MILLI_PER_GPU),
                    got: u64::from(m) * u64::from(n.max(1)),
                });
            }
            (n, m) => return Err(RequestError::PartialMultiGpu { count: n, milli: m }),
        };
        let mut request = Request::new(cpu_milli, memory_mib, gpu)?;
        for part in gpu_spec.split('|').map(str::trim).filter(|p| !p.is_empty()) {
            let model = part
                .parse::<GpuModel>()
                .map_err(|p| RequestError::BadModel {
                    spec: gpu_spec.to_string(),
                    problem: p.to_string(),
                })?;
            request.models.push(model);
        }
        Ok(request)
    }

    /// One replica of a job as users submit it: its GPU policy, models, resources and allowed
    /// CID prefixes.
    pub fn from_job(spec: &JobSpec) -> Result<Request, RequestError> {
        let (gpu, models) = match &spec.gpu {
            None => (GpuDemand::None, Vec::new()),
            Some(g) => {
                let demand = match &g.policy {
                    GpuPolicy::Exclusive { count } => GpuDemand::Exclusive { count: *count },
                    GpuPolicy::Shared { milli, memory_mib } => GpuDemand::Shared {
                        milli: milli.unwrap_or(0),
                        memory_mib: memory_mib.unwrap_or(0),
                    },
                    GpuPolicy::Mig { profile, count } => GpuDemand::Mig {
                        profile: profile.clone(),
                        count: *count,
                    },
                };
                (demand, g.models.clone())
            }
        };
        Ok(
            Request::new(spec.resources.cpu_milli, spec.resources.memory_mib, gpu)?
                .with_models(models)
                .with_allowed(spec.placement.allowed.clone()),
        )
    }

    /// Restricts the GPU models this request may use (empty: any).
    pub fn with_models(mut self, models: Vec<GpuModel>) -> Request {
        self.models = models;
        self
    }

    /// Restricts the places (CID prefixes) this request may use (empty: anywhere).
    pub fn with_allowed(mut self, allowed: Vec<Cid>) -> Request {
        self.allowed = allowed;
        self
    }

    pub fn cpu_milli(&self) -> u64 {
        self.cpu_milli
    }

    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    pub fn gpu(&self) -> &GpuDemand {
        &self.gpu
    }

    pub fn models(&self) -> &[GpuModel] {
        &self.models
    }

    pub fn allowed(&self) -> &[Cid] {
        &self.allowed
    }

    /// GPUs the request touches (1 for a share, 0 for CPU-only work).
    pub fn gpu_count(&self) -> u32 {
        match &self.gpu {
            GpuDemand::None => 0,
            GpuDemand::Exclusive { count } => *count,
            GpuDemand::Shared { .. } => 1,
            GpuDemand::Mig { count, .. } => *count,
        }
    }

    /// GPU compute per GPU touched, in milli (a MIG instance counts its compute slices / 7).
    pub fn gpu_milli_each(&self) -> u32 {
        match &self.gpu {
            GpuDemand::None => 0,
            GpuDemand::Exclusive { .. } => MILLI_PER_GPU,
            GpuDemand::Shared { milli, .. } => *milli,
            GpuDemand::Mig { profile, .. } => mig_milli(profile.compute_slices()),
        }
    }

    /// Total GPU compute in milli.
    pub fn gpu_milli_total(&self) -> u64 {
        u64::from(self.gpu_milli_each()) * u64::from(self.gpu_count())
    }

    /// The clustering class of this request; `None` for CPU-only work.
    pub fn affinity(&self) -> Option<AffinityTag> {
        match &self.gpu {
            GpuDemand::None => None,
            GpuDemand::Exclusive { count } => Some(AffinityTag::Whole(*count)),
            GpuDemand::Shared { .. } => Some(AffinityTag::Share),
            GpuDemand::Mig { .. } => Some(AffinityTag::Mig),
        }
    }
}

/// The compute share of a MIG instance with `slices` of 7 compute slices, in milli.
pub(crate) fn mig_milli(slices: u8) -> u32 {
    u32::from(slices) * MILLI_PER_GPU / 7
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {}m, mem {} MiB", self.cpu_milli, self.memory_mib)?;
        match &self.gpu {
            GpuDemand::None => {}
            GpuDemand::Exclusive { count } => write!(f, ", {count} whole GPU(s)")?,
            GpuDemand::Shared { milli, memory_mib } => {
                write!(f, ", GPU share {milli}m")?;
                if *memory_mib > 0 {
                    write!(f, " + {memory_mib} MiB")?;
                }
            }
            GpuDemand::Mig { profile, count } => write!(f, ", {count} × MIG {profile}")?,
        }
        if !self.models.is_empty() {
            let names: Vec<&str> = self.models.iter().map(GpuModel::as_str).collect();
            write!(f, ", models [{}]", names.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openb_shapes_map_to_demands() {
        let share = Request::from_openb(6000, 12288, 1, 460, "").expect("valid");
        assert_eq!(
            share.gpu(),
            &GpuDemand::Shared {
                milli: 460,
                memory_mib: 0
            }
        );
        let whole = Request::from_openb(12000, 1, 8, 1000, "V100M32|g2").expect("valid");
        assert_eq!(whole.gpu(), &GpuDemand::Exclusive { count: 8 });
        assert_eq!(whole.models()[1].as_str(), "G2");
        assert_eq!(whole.affinity(), Some(AffinityTag::Whole(8)));
        let cpu = Request::from_openb(4000, 1, 0, 0, "").expect("valid");
        assert_eq!(cpu.gpu(), &GpuDemand::None);
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        assert_eq!(
            Request::from_openb(1, 1, 2, 500, "").expect_err("partial multi-GPU"),
            RequestError::PartialMultiGpu {
                count: 2,
                milli: 500
            }
        );
        assert!(matches!(
            Request::new(u64::MAX, 0, GpuDemand::None),
            Err(RequestError::OutOfRange {
                field: "cpu_milli",
                ..
            })
        ));
        assert!(matches!(
            Request::new(0, 0, GpuDemand::Exclusive { count: 0 }),
            Err(RequestError::OutOfRange {
                field: "gpu.count",
                ..
            })
        ));
        assert_eq!(
            Request::new(
                0,
                0,
                GpuDemand::Shared {
                    milli: 0,
                    memory_mib: 0
                }
            )
            .expect_err("empty share"),
            RequestError::EmptyShare
        );
        assert!(matches!(
            Request::from_openb(1, 1, 1, 1500, ""),
            Err(RequestError::OutOfRange {
                field: "gpu_milli",
                ..
            })
        ));
        let err = Request::from_openb(1, 1, 1, 1000, "A100 80GB").expect_err("bad model");
        assert!(
            err.to_string().starts_with("gpu_spec \"A100 80GB\""),
            "{err}"
        );
    }
}
