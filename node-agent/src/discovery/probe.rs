//! The GPU side of discovery behind one trait, with three implementations: NVML (real
//! hardware), null (no NVML on this machine: say why, keep running) and fixture (a recorded
//! machine read from a file).
//!
//! Every probe answers with [`RawGpus`], facts in the form NVML gives them (8-digit PCI domain,
//! bytes, `-1` NUMA, profile ids). [`super::normalize`] turns them into the engine's domain
//! types, so the fixture probe runs the same conversion code as real hardware does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use suanli_engine::inventory::{Health, NvLinkRemote, NvmlStatus};

use super::mig::NvmlMigProfile;

/// One existing MIG device (a compute instance inside a GPU instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMigDevice {
    pub uuid: String,
    /// The GPU-instance profile it was created from (`NVML_GPU_INSTANCE_PROFILE_*`).
    pub profile_id: u32,
    pub slices: u32,
    pub memory_mb: u64,
    pub sm_count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMig {
    pub capable: bool,
    pub enabled: bool,
    #[serde(default)]
    pub profiles: Vec<NvmlMigProfile>,
    #[serde(default)]
    pub devices: Vec<RawMigDevice>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawNvLink {
    pub link: u32,
    pub active: bool,
    /// NVML form (`00000000:18:00.0`); empty when NVML does not say.
    #[serde(default)]
    pub remote_pci_bus_id: String,
    /// What the link reaches, when the probe knows better than the bus id does.
    #[serde(default)]
    pub remote: Option<NvLinkRemote>,
}

/// One GPU as a probe sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawGpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub architecture: String,
    /// `major.minor`.
    pub cuda_cc: String,
    pub memory_total_bytes: u64,
    /// NVML form: `00000000:00:06.0`.
    pub pci_bus_id: String,
    /// `-1` (or absent) when the platform does not say.
    #[serde(default = "unknown_numa")]
    pub numa_node: i32,
    #[serde(default)]
    pub pcie_gen: u32,
    #[serde(default)]
    pub pcie_width: u32,
    #[serde(default)]
    pub mig: RawMig,
    #[serde(default)]
    pub nvlinks: Vec<RawNvLink>,
    #[serde(default)]
    pub health: Health,
}

fn unknown_numa() -> i32 {
    -1
}

/// The PCIe relationship of two GPUs as NVML's topology query answers it, by GPU index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawPcieLevel {
    pub a: u32,
    pub b: u32,
    /// `PIX`, `PXB`, `PHB`, `NODE` or `SYS`.
    pub level: String,
}

/// Everything one probe run found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawGpus {
    pub nvml: NvmlStatus,
    #[serde(default)]
    pub gpus: Vec<RawGpu>,
    #[serde(default)]
    pub pcie_levels: Vec<RawPcieLevel>,
    /// Things that could not be read, with where; discovery goes on without them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl RawGpus {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        RawGpus {
            nvml: NvmlStatus::Unavailable {
                reason: reason.into(),
            },
            gpus: vec![],
            pcie_levels: vec![],
            warnings: vec![],
        }
    }
}

/// One GPU's live state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    pub uuid: String,
    pub index: u32,
    pub utilization_percent: u32,
    pub memory_utilization_percent: u32,
    pub memory_used_mib: u64,
    pub power_mw: u32,
    pub temperature_c: i32,
    pub health: Health,
    /// `(link, active, tx_bytes, rx_bytes)`.
    pub nvlinks: Vec<NvLinkSample>,
    /// `(pid, used MiB)` of processes on the GPU.
    pub processes: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvLinkSample {
    pub link: u32,
    pub active: bool,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

/// Where GPU facts come from.
pub trait GpuProbe: Send + Sync + std::fmt::Debug {
    /// Static facts. Never fails: a probe that cannot see GPUs says why in `nvml`.
    fn discover(&self) -> RawGpus;
    /// Live state of every GPU, for telemetry.
    fn sample(&self) -> Vec<GpuSample>;
}

/// No NVML here (no driver, no library, or NVML refused to start): zero GPUs and the reason.
#[derive(Debug, Clone)]
pub struct NullProbe {
    reason: String,
}

impl NullProbe {
    pub fn new(reason: impl Into<String>) -> Self {
        NullProbe {
            reason: reason.into(),
        }
    }
}

impl GpuProbe for NullProbe {
    fn discover(&self) -> RawGpus {
        RawGpus::unavailable(self.reason.clone())
    }

    fn sample(&self) -> Vec<GpuSample> {
        vec![]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read GPU fixture {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GPU fixture {path} line {line} column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// A recorded machine: the GPU facts a probe found there, read from JSON. Telemetry is made
/// up from a seeded generator (plausible, monotonic counters) so sessions can be tested.
#[derive(Debug)]
pub struct FixtureProbe {
    recorded: RawGpus,
    samples: Mutex<FixtureCounters>,
}

#[derive(Debug)]
struct FixtureCounters {
    rng: ChaCha8Rng,
    /// `(gpu index, link) -> (tx, rx)` running totals.
    nvlink_bytes: BTreeMap<(u32, u32), (u64, u64)>,
}

impl FixtureProbe {
    pub fn load(path: &Path) -> Result<Self, FixtureError> {
        let text = std::fs::read_to_string(path).map_err(|source| FixtureError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let recorded: RawGpus = serde_json::from_str(&text).map_err(|e| FixtureError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Ok(Self::new(recorded, 0x5EED))
    }

    pub fn new(recorded: RawGpus, seed: u64) -> Self {
        FixtureProbe {
            recorded,
            samples: Mutex::new(FixtureCounters {
                rng: ChaCha8Rng::seed_from_u64(seed),
                nvlink_bytes: BTreeMap::new(),
            }),
        }
    }
}

impl GpuProbe for FixtureProbe {
    fn discover(&self) -> RawGpus {
        self.recorded.clone()
    }

    fn sample(&self) -> Vec<GpuSample> {
        let mut state = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let FixtureCounters { rng, nvlink_bytes } = &mut *state;
        self.recorded
            .gpus
            .iter()
            .map(|gpu| {
                let total_mib = gpu.memory_total_bytes / (1024 * 1024);
                let utilization = rng.random_range(0..=100u32);
                let nvlinks = gpu
                    .nvlinks
                    .iter()
                    .map(|l| {
                        let entry = nvlink_bytes.entry((gpu.index, l.link)).or_default();
                        if l.active {
                            // Up to ~25 GB per sample on an active link: a busy NVLink 4 lane.
                            entry.0 += rng.random_range(0..25_000_000_000u64);
                            entry.1 += rng.random_range(0..25_000_000_000u64);
                        }
                        NvLinkSample {
                            link: l.link,
                            active: l.active,
                            tx_bytes: entry.0,
                            rx_bytes: entry.1,
                        }
                    })
                    .collect();
                GpuSample {
                    uuid: gpu.uuid.clone(),
                    index: gpu.index,
                    utilization_percent: utilization,
                    memory_utilization_percent: utilization / 2,
                    memory_used_mib: rng.random_range(0..=total_mib),
                    power_mw: 70_000 + utilization * 6_300,
                    temperature_c: 30 + (utilization / 3) as i32,
                    health: gpu.health,
                    nvlinks,
                    processes: vec![],
                }
            })
            .collect()
    }
}
