//! Host, PCIe and RDMA facts read from sysfs under an injectable root (`/` in production, a
//! fixture tree in tests).
//!
//! Nothing here fails discovery: a missing directory is a normal state (no RDMA, no NUMA), and
//! a malformed file becomes a [`Warning`] naming the file, after which that value is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use suanli_engine::inventory::{Health, LinkLayer, LinkPath, NicPort, PortState, RdmaNic};
use tracing::warn;

/// Something discovery could not read, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Warning {
    /// The file or directory (under the sysfs root), or the device the problem is about.
    pub path: String,
    pub problem: String,
}

/// Collects warnings and logs each one once, where it is found.
#[derive(Debug, Default)]
pub struct Warnings(pub Vec<Warning>);

impl Warnings {
    pub fn push(&mut self, path: impl Into<String>, problem: impl Into<String>) {
        let warning = Warning {
            path: path.into(),
            problem: problem.into(),
        };
        warn!(path = %warning.path, problem = %warning.problem, "Skipped a discovery fact.");
        self.0.push(warning);
    }
}

/// The root that `sys/...` paths are read under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot(pub PathBuf);

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot(PathBuf::from("/"))
    }
}

/// CPU and memory capacity of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: u64,
    pub memory_mib: u64,
    pub numa_nodes: u32,
}

/// Where a PCI device sits: its host bridge, the chain of bridges below it, and its NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciLocation {
    /// `pci0000:00`: the root complex (host bridge) the device hangs under.
    pub host_bridge: String,
    /// Bus ids from the root port down to the device itself (last).
    pub chain: Vec<String>,
    pub numa_node: Option<i32>,
}

/// Counters of one RDMA port for telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct PortSample {
    pub nic: String,
    pub port: u32,
    pub state: PortState,
    pub rate_gbps: f64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl SysfsRoot {
    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn display(&self, path: &Path) -> String {
        path.display().to_string()
    }

    /// Reads a small text file, trimmed. `Ok(None)` when it does not exist.
    fn read(&self, path: &Path) -> io::Result<Option<String>> {
        match fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and parses a file; a read or parse failure is a warning, absence is `None`.
    fn read_parsed<T>(
        &self,
        path: &Path,
        warnings: &mut Warnings,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.read(path) {
            Ok(Some(text)) => match parse(&text) {
                Ok(value) => Some(value),
                Err(problem) => {
                    warnings.push(self.display(path), problem);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                warnings.push(self.display(path), format!("cannot read: {e}"));
                None
            }
        }
    }

    /// Sorted entry names of a directory; a missing directory has none.
    fn list(&self, dir: &Path, warnings: &mut Warnings) -> Vec<String> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return vec![],
            Err(e) => {
                warnings.push(self.display(dir), format!("cannot list: {e}"));
                return vec![];
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort_by_key(|n| natural_key(n));
        names
    }

    /// CPUs online, memory summed over NUMA nodes (or `/proc/meminfo` without NUMA), and the
    /// number of NUMA nodes.
    pub fn host(&self, warnings: &mut Warnings) -> HostFacts {
        let cpus = self
            .read_parsed(
                &self.path("sys/devices/system/cpu/online"),
                warnings,
                parse_cpu_list,
            )
            .unwrap_or(0);
        let node_dir = self.path("sys/devices/system/node");
        let nodes: Vec<String> = self
            .list(&node_dir, warnings)
            .into_iter()
            .filter(|n| {
                n.strip_prefix("node")
                    .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        let mut memory_kib = 0u64;
        for node in &nodes {
            let path = node_dir.join(node).join("meminfo");
            memory_kib += self
                .read_parsed(&path, warnings, parse_mem_total_kib)
                .unwrap_or(0);
        }
        if nodes.is_empty() {
            memory_kib = self
                .read_parsed(&self.path("proc/meminfo"), warnings, parse_mem_total_kib)
                .unwrap_or(0);
        }
        HostFacts {
            cpus,
            memory_mib: memory_kib / 1024,
            // A kernel without NUMA support still has one memory node.
            numa_nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX).max(1),
        }
    }

    /// The NUMA node of a PCI device from `bus/pci/devices/<bdf>/numa_node`; `-1` is `None`.
    pub fn pci_numa_node(&self, bdf: &str, warnings: &mut Warnings) -> Option<i32> {
        let path = self.path(&format!("sys/bus/pci/devices/{bdf}/numa_node"));
        self.read_parsed(&path, warnings, parse_numa).flatten()
    }

    /// Resolves `bus/pci/devices/<bdf>` to its `devices/pci<dom>:<bus>/...` chain. `None` when
    /// the device is not in sysfs (e.g. a GPU from a fixture probe on another machine).
    pub fn pci_location(&self, bdf: &str, warnings: &mut Warnings) -> Option<PciLocation> {
        let link = self.path(&format!("sys/bus/pci/devices/{bdf}"));
        let resolved = match fs::canonicalize(&link) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warnings.push(self.display(&link), format!("cannot resolve: {e}"));
                return None;
            }
        };
        let location = location_from_path(&resolved);
        if location.is_none() {
            warnings.push(
                self.display(&link),
                format!(
                    "resolves to {}, which is not under devices/pci<domain>:<bus>",
                    resolved.display()
                ),
            );
        }
        location.map(|(host_bridge, chain)| PciLocation {
            host_bridge,
            chain,
            numa_node: self.pci_numa_node(bdf, warnings),
        })
    }

    /// Every device under `class/infiniband`, sorted by name.
    pub fn rdma_nics(&self, warnings: &mut Warnings) -> Vec<RdmaNic> {
        let class = self.path("sys/class/infiniband");
        self.list(&class, warnings)
            .into_iter()
            .filter_map(|name| self.rdma_nic(&class.join(&name), name, warnings))
            .collect()
    }

    fn rdma_nic(&self, dir: &Path, name: String, warnings: &mut Warnings) -> Option<RdmaNic> {
        let device = dir.join("device");
        let pci_bus_id = match fs::canonicalize(&device) {
            Ok(resolved) => resolved
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| is_bdf(n))
                .map(str::to_string),
            Err(_) => None,
        };
        let Some(pci_bus_id) = pci_bus_id else {
            warnings.push(
                self.display(&device),
                "not a link to a PCI device; NIC skipped",
            );
            return None;
        };
        let numa_node = self
            .read_parsed(&device.join("numa_node"), warnings, parse_numa)
            .flatten();
        let node_guid = self
            .read_parsed(&dir.join("node_guid"), warnings, parse_guid)
            .unwrap_or_default();
        let firmware = self
            .read_parsed(&dir.join("fw_ver"), warnings, |s| Ok(s.to_string()))
            .unwrap_or_default();
        let netdevs = self.list(&device.join("net"), warnings);
        let ports_dir = dir.join("ports");
        let mut ports = Vec::new();
        for entry in self.list(&ports_dir, warnings) {
            let port_dir = ports_dir.join(&entry);
            let Ok(port) = entry.parse::<u32>() else {
                warnings.push(self.display(&port_dir), "port directory is not a number");
                continue;
            };
            if let Some(p) = self.port(&port_dir, port, warnings) {
                ports.push(p);
            }
        }
        let health = if ports.iter().any(|p| p.state == PortState::Active) || ports.is_empty() {
            Health::Healthy
        } else {
            Health::Degraded
        };
        Some(RdmaNic {
            name,
            pci_bus_id,
            numa_node,
            node_guid,
            firmware,
            netdevs,
            ports,
            health,
        })
    }

    /// One port; `None` (with a warning) when its state or rate is malformed.
    fn port(&self, dir: &Path, port: u32, warnings: &mut Warnings) -> Option<NicPort> {
        let state = self.read_parsed(&dir.join("state"), warnings, parse_port_state)?;
        let rate_gbps = self.read_parsed(&dir.join("rate"), warnings, parse_rate)?;
        let link_layer = self
            .read_parsed(&dir.join("link_layer"), warnings, |s| {
                Ok(match s {
                    "InfiniBand" => LinkLayer::Infiniband,
                    "Ethernet" => LinkLayer::Ethernet,
                    _ => LinkLayer::Unknown,
                })
            })
            .unwrap_or(LinkLayer::Unknown);
        let gid_type = self
            .read_parsed(&dir.join("gid_attrs/types/0"), warnings, |s| {
                Ok(s.to_string())
            })
            .unwrap_or_default();
        Some(NicPort {
            port,
            state,
            link_layer,
            rate_gbps: if state == PortState::Active {
                rate_gbps
            } else {
                0.0
            },
            gid_type,
        })
    }

    /// Port state and byte counters of every RDMA port (`counters/port_xmit_data` counts
    /// 4-byte words).
    pub fn port_samples(&self, warnings: &mut Warnings) -> Vec<PortSample> {
        let mut out = Vec::new();
        for nic in self.rdma_nics(warnings) {
            for port in &nic.ports {
                let counters = self
                    .path("sys/class/infiniband")
                    .join(&nic.name)
                    .join("ports")
                    .join(port.port.to_string())
                    .join("counters");
                let words = |file: &str, warnings: &mut Warnings| {
                    self.read_parsed(&counters.join(file), warnings, |s| {
                        s.parse::<u64>()
                            .map_err(|e| format!("{s:?} is not a counter: {e}"))
                    })
                    .unwrap_or(0)
                };
                let tx = words("port_xmit_data", warnings);
                let rx = words("port_rcv_data", warnings);
                out.push(PortSample {
                    nic: nic.name.clone(),
                    port: port.port,
                    state: port.state,
                    rate_gbps: port.rate_gbps,
                    tx_bytes: tx.saturating_mul(4),
                    rx_bytes: rx.saturating_mul(4),
                });
            }
        }
        out
    }
}

/// How two PCI devices reach each other, as NCCL and `nvidia-smi topo -m` classify it:
/// PIX (at most one PCIe switch), PXB (several switches, no host bridge), PHB (through the
/// host bridge), NODE (between host bridges of one NUMA node), SYS (across NUMA nodes).
pub fn classify_pci_path(a: &PciLocation, b: &PciLocation) -> LinkPath {
    if a.host_bridge != b.host_bridge {
        return if a.numa_node == b.numa_node {
            LinkPath::Node
        } else {
            LinkPath::Sys
        };
    }
    let common = a
        .chain
        .iter()
        .zip(&b.chain)
        .take_while(|(x, y)| x == y)
        .count();
    if common == 0 {
        // Different root ports of one root complex: the path turns at the host bridge.
        return LinkPath::Phb;
    }
    // Hops below the common ancestor. Two devices on downstream ports of one switch are two
    // hops from its upstream port each; anything deeper crosses another switch.
    let down_a = a.chain.len() - common;
    let down_b = b.chain.len() - common;
    if down_a <= 2 && down_b <= 2 {
        LinkPath::Pix
    } else {
        LinkPath::Pxb
    }
}

/// Splits `.../devices/pci0000:00/0000:00:01.0/0000:01:00.0` into the host bridge and the
/// bus-id chain.
fn location_from_path(path: &Path) -> Option<(String, Vec<String>)> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str().map(str::to_string),
            _ => None,
        })
        .collect();
    let bridge_at = parts.iter().rposition(|p| {
        p.strip_prefix("pci")
            .is_some_and(|rest| rest.len() == 7 && rest.as_bytes()[4] == b':')
    })?;
    let chain: Vec<String> = parts[bridge_at + 1..]
        .iter()
        .filter(|p| is_bdf(p))
        .cloned()
        .collect();
    (!chain.is_empty()).then(|| (parts[bridge_at].clone(), chain))
}

/// `0000:00:06.0`.
pub fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// NVML's `00000000:00:06.0` (8-digit domain) in sysfs form `0000:00:06.0`, lower-case.
pub fn sysfs_bus_id(nvml_bus_id: &str) -> String {
    let lower = nvml_bus_id.trim().to_ascii_lowercase();
    match lower.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => lower,
    }
}

/// Sort key that puts `mlx5_10` after `mlx5_9` and `node10` after `node2`.
fn natural_key(name: &str) -> (String, u64, String) {
    let digits_at = name
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let (stem, number) = name.split_at(digits_at);
    (
        stem.to_string(),
        number.parse().unwrap_or(0),
        name.to_string(),
    )
}

fn parse_numa(s: &str) -> Result<Option<i32>, String> {
    let n: i32 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a NUMA node number: {e}"))?;
    Ok((n >= 0).then_some(n))
}

/// `0-15,32-47` → 32.
fn parse_cpu_list(s: &str) -> Result<u64, String> {
    let mut count = 0u64;
    for range in s.split(',').filter(|r| !r.is_empty()) {
        let bad =
            |e: std::num::ParseIntError| format!("{range:?} in {s:?} is not a CPU range: {e}");
        let (lo, hi) = match range.split_once('-') {
            Some((lo, hi)) => (
                lo.parse::<u64>().map_err(bad)?,
                hi.parse::<u64>().map_err(bad)?,
            ),
            None => {
                let n = range.parse::<u64>().map_err(bad)?;
                (n, n)
            }
        };
        if hi < lo {
            return Err(format!("{range:?} in {s:?} runs backwards"));
        }
        count += hi - lo + 1;
    }
    Ok(count)
}

/// `MemTotal:` from `/proc/meminfo` or a node's `meminfo` (`Node 0 MemTotal: 123 kB`), in KiB.
fn parse_mem_total_kib(s: &str) -> Result<u64, String> {
    let line = s
        .lines()
        .find(|l| l.contains("MemTotal:"))
        .ok_or_else(|| "no MemTotal line".to_string())?;
    let after = line
        .split_once("MemTotal:")
        .map(|(_, rest)| rest.trim())
        .unwrap_or("");
    let number = after.strip_suffix("kB").unwrap_or(after).trim();
    number
        .parse()
        .map_err(|e| format!("MemTotal {after:?} is not a size in kB: {e}"))
}

/// `4: ACTIVE`.
fn parse_port_state(s: &str) -> Result<PortState, String> {
    let name = s.split_once(':').map_or(s, |(_, n)| n).trim();
    match name {
        "ACTIVE" => Ok(PortState::Active),
        "DOWN" => Ok(PortState::Down),
        "INIT" => Ok(PortState::Init),
        "ARMED" => Ok(PortState::Armed),
        "ACTIVE_DEFER" | "NOP" => Ok(PortState::Unknown),
        _ => Err(format!("{s:?} is not a port state (e.g. \"4: ACTIVE\")")),
    }
}

/// `400 Gb/sec (4X NDR)` → 400.0; `2.5 Gb/sec (1X SDR)` → 2.5.
fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.split_whitespace().next().unwrap_or("");
    let unit_ok = s.split_whitespace().nth(1) == Some("Gb/sec");
    match number.parse::<f64>() {
        Ok(v) if unit_ok && v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a rate (expected e.g. \"400 Gb/sec (4X NDR)\")"
        )),
    }
}

/// `b8ce:f603:00c4:1a2e`: four groups of four hex digits.
fn parse_guid(s: &str) -> Result<String, String> {
    let groups: Vec<&str> = s.split(':').collect();
    if groups.len() == 4
        && groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!(
            "{s:?} is not a GUID (e.g. \"b8ce:f603:00c4:1a2e\")"
        ))
    }
}

/// GPU↔NIC paths by GPU index and NIC name, from each device's PCI location.
pub fn gpu_nic_paths(
    gpus: &BTreeMap<u32, PciLocation>,
    nics: &BTreeMap<String, PciLocation>,
) -> Vec<(u32, String, LinkPath)> {
    let mut out = Vec::new();
    for (gpu, g) in gpus {
        for (nic, n) in nics {
            out.push((*gpu, nic.clone(), classify_pci_path(g, n)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(bridge: &str, chain: &[&str], numa: Option<i32>) -> PciLocation {
        PciLocation {
            host_bridge: bridge.to_string(),
            chain: chain.iter().map(|s| s.to_string()).collect(),
            numa_node: numa,
        }
    }

    #[test]
    fn nccl_path_classes() {
        let rp = "0000:10:01.0";
        let usp = "0000:11:00.0";
        let gpu = loc(
            "pci0000:10",
            &[rp, usp, "0000:12:00.0", "0000:13:00.0"],
            Some(0),
        );
        let same_switch = loc(
            "pci0000:10",
            &[rp, usp, "0000:12:01.0", "0000:14:00.0"],
            Some(0),
        );
        let behind_second_switch = loc(
            "pci0000:10",
            &[
                rp,
                usp,
                "0000:12:02.0",
                "0000:15:00.0",
                "0000:16:00.0",
                "0000:17:00.0",
            ],
            Some(0),
        );
        let other_root_port = loc("pci0000:10", &["0000:10:03.0", "0000:18:00.0"], Some(0));
        let other_bridge_same_numa = loc("pci0000:30", &["0000:30:01.0", "0000:31:00.0"], Some(0));
        let other_numa = loc("pci0000:90", &["0000:90:01.0", "0000:91:00.0"], Some(1));
        assert_eq!(classify_pci_path(&gpu, &same_switch), LinkPath::Pix);
        assert_eq!(
            classify_pci_path(&gpu, &behind_second_switch),
            LinkPath::Pxb
        );
        assert_eq!(classify_pci_path(&gpu, &other_root_port), LinkPath::Phb);
        assert_eq!(
            classify_pci_path(&gpu, &other_bridge_same_numa),
            LinkPath::Node
        );
        assert_eq!(classify_pci_path(&gpu, &other_numa), LinkPath::Sys);
    }

    #[test]
    fn paths_resolve_to_chains() {
        let p = Path::new("/x/sys/devices/pci0000:10/0000:10:01.0/0000:11:00.0/0000:13:00.0");
        assert_eq!(
            location_from_path(p),
            Some((
                "pci0000:10".to_string(),
                vec![
                    "0000:10:01.0".to_string(),
                    "0000:11:00.0".to_string(),
                    "0000:13:00.0".to_string()
                ]
            ))
        );
        assert_eq!(
            location_from_path(Path::new("/sys/devices/virtual/net/lo")),
            None
        );
    }

    #[test]
    fn small_parsers() {
        assert_eq!(sysfs_bus_id("00000000:00:06.0"), "0000:00:06.0");
        assert_eq!(sysfs_bus_id("00000000:9A:00.0"), "0000:9a:00.0");
        assert_eq!(sysfs_bus_id("0000:18:00.0"), "0000:18:00.0");
        assert_eq!(parse_cpu_list("0-15"), Ok(16));
        assert_eq!(parse_cpu_list("0-3,8,10-11"), Ok(7));
        assert!(parse_cpu_list("3-1").is_err());
        assert_eq!(parse_rate("400 Gb/sec (4X NDR)"), Ok(400.0));
        assert_eq!(parse_rate("2.5 Gb/sec (1X SDR)"), Ok(2.5));
        assert!(parse_rate("fast").is_err());
        assert_eq!(parse_port_state("4: ACTIVE"), Ok(PortState::Active));
        assert_eq!(parse_port_state("1: DOWN"), Ok(PortState::Down));
        assert!(parse_port_state("up").is_err());
        assert_eq!(parse_numa("-1"), Ok(None));
        assert_eq!(parse_numa("1"), Ok(Some(1)));
        assert_eq!(
            parse_mem_total_kib("Node 0 MemTotal:       1056446936 kB\nNode 0 MemFree: 1 kB"),
            Ok(1_056_446_936)
        );
        assert!(parse_guid("b8ce:f603:00c4:1a2e").is_ok());
        assert!(parse_guid("zz").is_err());
        assert!(is_bdf("0000:9a:00.0") && !is_bdf("pci0000:9a") && !is_bdf("mlx5_0"));
        let mut names = vec!["mlx5_10", "mlx5_2", "mlx5_0"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["mlx5_0", "mlx5_2", "mlx5_10"]);
    }
}
