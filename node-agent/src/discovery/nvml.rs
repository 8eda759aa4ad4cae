//! The NVML probe. `nvml-wrapper` loads `libnvidia-ml.so.1` at run time, so this binary runs
//! on machines without a driver: there `Nvml::init` fails and [`probe_for_this_machine`]
//! falls back to a [`NullProbe`] that carries the reason.

use nvml_wrapper::enum_wrappers::device::{TemperatureSensor, TopologyLevel};
use nvml_wrapper::enum_wrappers::nv_link::UtilizationCountUnit;
use nvml_wrapper::enums::nv_link::Counter;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use suanli_engine::inventory::{Health, NvmlStatus};
use tracing::{debug, info};

use super::mig::NvmlMigProfile;
use super::probe::{
    GpuProbe, GpuSample, NullProbe, NvLinkSample, RawGpu, RawGpus, RawMig, RawMigDevice, RawNvLink,
    RawPcieLevel,
};

/// NVML's `NVML_NVLINK_MAX_LINKS` (Hopper has 18).
const MAX_NVLINKS: u32 = 18;
/// Highest `NVML_GPU_INSTANCE_PROFILE_*` id known to current drivers.
const MAX_GPU_INSTANCE_PROFILE_ID: u32 = 0x10;

/// NVML on real hardware.
#[derive(Debug)]
pub struct NvmlProbe {
    nvml: Nvml,
}

/// The NVML probe when NVML starts here, otherwise a null probe that says why.
pub fn probe_for_this_machine() -> Box<dyn GpuProbe> {
    match Nvml::init() {
        Ok(nvml) => {
            info!("NVML initialised.");
            Box::new(NvmlProbe { nvml })
        }
        Err(e) => {
            let reason = e.to_string();
            info!(reason = %reason, "No NVML; reporting no GPUs.");
            Box::new(NullProbe::new(reason))
        }
    }
}

impl NvmlProbe {
    fn status(&self) -> NvmlStatus {
        let cuda_version = self
            .nvml
            .sys_cuda_driver_version()
            .map(|v| {
                format!(
                    "{}.{}",
                    nvml_wrapper::cuda_driver_version_major(v),
                    nvml_wrapper::cuda_driver_version_minor(v)
                )
            })
            .unwrap_or_default();
        NvmlStatus::Available {
            driver_version: self.nvml.sys_driver_version().unwrap_or_default(),
            cuda_version,
            nvml_version: self.nvml.sys_nvml_version().unwrap_or_default(),
        }
    }

    fn raw_gpu(&self, device: &Device<'_>, index: u32) -> Result<RawGpu, NvmlError> {
        let cc = device.cuda_compute_capability()?;
        let pci = device.pci_info()?;
        let mig = raw_mig(device);
        let health = match device.are_pages_pending_retired() {
            Ok(true) => Health::Degraded,
            _ => Health::Healthy,
        };
        Ok(RawGpu {
            index,
            uuid: device.uuid()?,
            name: device.name()?,
            architecture: device
                .architecture()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            cuda_cc: format!("{}.{}", cc.major, cc.minor),
            memory_total_bytes: device.memory_info()?.total,
            pci_bus_id: pci.bus_id,
            numa_node: device
                .numa_node_id()
                .ok()
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(-1),
            pcie_gen: device.current_pcie_link_gen().unwrap_or(0),
            pcie_width: device.current_pcie_link_width().unwrap_or(0),
            mig,
            nvlinks: raw_nvlinks(device),
            health,
        })
    }
}

fn raw_mig(device: &Device<'_>) -> RawMig {
    let Ok(mode) = device.mig_mode() else {
        return RawMig::default();
    };
    let profiles: Vec<NvmlMigProfile> = (0..=MAX_GPU_INSTANCE_PROFILE_ID)
        .filter_map(|id| device.profile_info(id).ok())
        .map(|p| NvmlMigProfile {
            id: p.id,
            slices: p.slice_count,
            memory_mb: p.memory_size_mb,
            sm_count: p.multiprocessor_count,
            ofa_count: p.ofa_count,
        })
        .collect();
    let enabled = mode.current == 1;
    let mut devices = Vec::new();
    if enabled {
        let max = device.mig_device_count().unwrap_or(0);
        for i in 0..max {
            // Unused indices answer NotFound.
            let Ok(mig) = device.mig_device_by_index(i) else {
                continue;
            };
            let (Ok(uuid), Ok(attrs)) = (mig.uuid(), mig.attributes()) else {
                continue;
            };
            // The wrapper exposes no GPU-instance id for a MIG device: match its shape
            // (slices, memory, media engines) against the parent's profile table.
            let profile_id = profiles
                .iter()
                .find(|p| {
                    p.slices == attrs.gpu_instance_slice_count
                        && p.memory_mb == attrs.memory_size_mb
                        && (p.ofa_count > 0) == (attrs.shared_ofa_count > 0)
                })
                .or_else(|| {
                    profiles.iter().find(|p| {
                        p.slices == attrs.gpu_instance_slice_count
                            && p.memory_mb == attrs.memory_size_mb
                    })
                })
                .map_or(0, |p| p.id);
            devices.push(RawMigDevice {
                uuid,
                profile_id,
                slices: attrs.gpu_instance_slice_count,
                memory_mb: attrs.memory_size_mb,
                sm_count: attrs.multiprocessor_count,
            });
        }
    }
    RawMig {
        capable: true,
        enabled,
        profiles,
        devices,
    }
}

fn raw_nvlinks(device: &Device<'_>) -> Vec<RawNvLink> {
    let mut links = Vec::new();
    for link in 0..MAX_NVLINKS {
        let wrapper = device.link_wrapper_for(link);
        // "Not supported"/"invalid argument" past the last link, or on GPUs without NVLink.
        let Ok(active) = wrapper.is_active() else {
            break;
        };
        let remote_pci_bus_id = if active {
            wrapper
                .remote_pci_info()
                .map(|p| p.bus_id)
                .unwrap_or_default()
        } else {
            String::new()
        };
        // `remote_device_type` in nvml-wrapper 0.13 never writes its answer back, so the
        // remote kind is decided from the bus id during normalisation.
        links.push(RawNvLink {
            link,
            active,
            remote_pci_bus_id,
            remote: None,
        });
    }
    links
}

fn level_name(level: TopologyLevel) -> &'static str {
    match level {
        TopologyLevel::Internal | TopologyLevel::Single => "PIX",
        TopologyLevel::Multiple => "PXB",
        TopologyLevel::HostBridge => "PHB",
        TopologyLevel::Node => "NODE",
        TopologyLevel::System => "SYS",
    }
}

impl GpuProbe for NvmlProbe {
    fn discover(&self) -> RawGpus {
        let mut out = RawGpus {
            nvml: self.status(),
            gpus: vec![],
            pcie_levels: vec![],
            warnings: vec![],
        };
        let count = match self.nvml.device_count() {
            Ok(n) => n,
            Err(e) => {
                out.warnings.push(format!("device count: {e}"));
                0
            }
        };
        let mut devices = Vec::new();
        for index in 0..count {
            let device = match self.nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    out.warnings.push(format!("GPU {index}: {e}"));
                    continue;
                }
            };
            match self.raw_gpu(&device, index) {
                Ok(gpu) => {
                    debug!(index, uuid = %gpu.uuid, "Found a GPU.");
                    out.gpus.push(gpu);
                    devices.push((index, device));
                }
                Err(e) => out.warnings.push(format!("GPU {index}: {e}")),
            }
        }
        for (i, (a, da)) in devices.iter().enumerate() {
            for (b, _) in &devices[i + 1..] {
                // The wrapper takes the other device by value; fetch a second handle.
                let Ok(other) = self.nvml.device_by_index(*b) else {
                    continue;
                };
                match da.topology_common_ancestor(other) {
                    Ok(level) => out.pcie_levels.push(RawPcieLevel {
                        a: *a,
                        b: *b,
                        level: level_name(level).to_string(),
                    }),
                    Err(e) => out
                        .warnings
                        .push(format!("topology GPU {a} <-> GPU {b}: {e}")),
                }
            }
        }
        out
    }

    fn sample(&self) -> Vec<GpuSample> {
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|index| {
                let device = self.nvml.device_by_index(index).ok()?;
                let util = device.utilization_rates().ok();
                let memory = device.memory_info().ok();
                let processes = device
                    .running_compute_processes()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| {
                        let used = match p.used_gpu_memory {
                            nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => {
                                b / (1024 * 1024)
                            }
                            nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
                        };
                        (p.pid, used)
                    })
                    .collect();
                Some(GpuSample {
                    uuid: device.uuid().ok()?,
                    index,
                    utilization_percent: util.as_ref().map_or(0, |u| u.gpu),
                    memory_utilization_percent: util.as_ref().map_or(0, |u| u.memory),
                    memory_used_mib: memory.map_or(0, |m| m.used / (1024 * 1024)),
                    power_mw: device.power_usage().unwrap_or(0),
                    temperature_c: device
                        .temperature(TemperatureSensor::Gpu)
                        .ok()
                        .and_then(|t| i32::try_from(t).ok())
                        .unwrap_or(0),
                    health: match device.are_pages_pending_retired() {
                        Ok(true) => Health::Degraded,
                        _ => Health::Healthy,
                    },
                    nvlinks: nvlink_counters(&device),
                    processes,
                })
            })
            .collect()
    }
}

/// Per-link NVLink byte counters, read-only: counter 0 of each active link, used only when
/// that counter is already set to count bytes (the agent never changes GPU settings).
fn nvlink_counters(device: &Device<'_>) -> Vec<NvLinkSample> {
    let mut out = Vec::new();
    for link in 0..MAX_NVLINKS {
        let wrapper = device.link_wrapper_for(link);
        let Ok(active) = wrapper.is_active() else {
            break;
        };
        let counts_bytes = wrapper
            .utilization_control(Counter::Zero)
            .is_ok_and(|c| c.units == UtilizationCountUnit::Bytes);
        let counter = if active && counts_bytes {
            wrapper.utilization_counter(Counter::Zero).ok()
        } else {
            None
        };
        out.push(NvLinkSample {
            link,
            active,
            tx_bytes: counter.as_ref().map_or(0, |c| c.send),
            rx_bytes: counter.as_ref().map_or(0, |c| c.receive),
        });
    }
    out
}
