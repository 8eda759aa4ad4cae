//! How `suanli-agent inventory` prints a report: a short table by default, JSON or YAML for
//! scripts.

use std::fmt::Write as _;

use suanli_engine::inventory::NvmlStatus;

use crate::discovery::DiscoveryReport;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub fn render(report: &DiscoveryReport, format: Format) -> String {
    match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(report).expect("a report serializes");
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml_ng::to_string(report).expect("a report serializes"),
        Format::Table => table(report),
    }
}

fn table(report: &DiscoveryReport) -> String {
    let inv = &report.inventory;
    let mut out = String::new();
    let nvml = match &inv.nvml {
        NvmlStatus::Available {
            driver_version,
            cuda_version,
            ..
        } => format!("available (driver {driver_version}, CUDA {cuda_version})"),
        NvmlStatus::Unavailable { reason } => format!("unavailable: {reason}"),
    };
    let _ = writeln!(out, "NODE  {}", inv.cid);
    let _ = writeln!(
        out,
        "HOST  {} CPUs, {} MiB, {} NUMA nodes",
        inv.cpu_milli / 1000,
        inv.memory_mib,
        inv.numa_nodes
    );
    let _ = writeln!(out, "NVML  {nvml}");
    if !inv.gpus.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<4} {:<42} {:<6} {:>9} {:<13} {:<5} {:<6} MIG",
            "GPU", "UUID", "MODEL", "MEM MiB", "PCI", "NUMA", "NVLINK"
        );
        for g in &inv.gpus {
            let mig = if !g.mig.capable {
                "-".to_string()
            } else if !g.mig.enabled {
                "off".to_string()
            } else {
                let names: Vec<&str> = g.mig.instances.iter().map(|m| m.profile.name()).collect();
                format!("on [{}]", names.join(","))
            };
            let _ = writeln!(
                out,
                "{:<4} {:<42} {:<6} {:>9} {:<13} {:<5} {:<6} {}",
                g.index,
                g.uuid,
                g.model,
                g.memory_mib,
                g.pci_bus_id,
                g.numa_node.map_or("-".to_string(), |n| n.to_string()),
                g.nvlinks.iter().filter(|l| l.active).count(),
                mig
            );
        }
    }
    if !inv.nics.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<10} {:<13} {:<5} {:<10} NETDEVS",
            "NIC", "PCI", "NUMA", "RATE"
        );
        for n in &inv.nics {
            let rate: f64 = n.ports.iter().map(|p| p.rate_gbps).sum();
            let _ = writeln!(
                out,
                "{:<10} {:<13} {:<5} {:<10} {}",
                n.name,
                n.pci_bus_id,
                n.numa_node.map_or("-".to_string(), |x| x.to_string()),
                format!("{rate} Gb/s"),
                n.netdevs.join(",")
            );
        }
    }
    if !inv.gpu_nic_pairs.is_empty() {
        let _ = writeln!(out, "\nGDR-LOCAL NICS");
        for g in &inv.gpus {
            let near: Vec<&str> = inv
                .gpu_nic_pairs
                .iter()
                .filter(|p| p.gpu == g.index && p.gdr_local)
                .map(|p| p.nic.as_str())
                .collect();
            let _ = writeln!(
                out,
                "GPU {:<3} {}",
                g.index,
                if near.is_empty() {
                    "-".to_string()
                } else {
                    near.join(",")
                }
            );
        }
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {}: {}", w.path, w.problem);
    }
    out
}
