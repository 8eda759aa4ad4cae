//! Builders for the sysfs fixture trees. The trees under `fixtures/` are committed; a test
//! rebuilds each one in a temporary directory and checks the committed copy is identical
//! (`SUANLI_UPDATE_FIXTURES=1` rewrites them).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Writes files, directories and symlinks under one root, creating parents as it goes.
pub struct SysTree {
    pub root: PathBuf,
}

impl SysTree {
    pub fn new(root: &Path) -> Self {
        fs::create_dir_all(root).expect("create tree root");
        SysTree {
            root: root.to_path_buf(),
        }
    }

    pub fn file(&self, rel: &str, content: &str) {
        let path = self.root.join(rel);
        fs::create_dir_all(path.parent().expect("file has a parent")).expect("create parent");
        fs::write(&path, format!("{content}\n")).expect("write fixture file");
    }

    /// A relative symlink at `link` pointing at `target` (both relative to the root).
    pub fn link(&self, link: &str, target: &str) {
        let link_path = Path::new(link);
        let depth = link_path.components().count() - 1;
        let relative = format!("{}{target}", "../".repeat(depth));
        let path = self.root.join(link);
        fs::create_dir_all(path.parent().expect("link has a parent")).expect("create parent");
        symlink(relative, path).expect("create fixture symlink");
    }

    pub fn cpus(&self, online: &str) {
        self.file("sys/devices/system/cpu/online", online);
    }

    pub fn numa_node(&self, node: u32, mem_total_kib: u64) {
        self.file(
            &format!("sys/devices/system/node/node{node}/meminfo"),
            &format!(
                "Node {node} MemTotal:       {mem_total_kib} kB\nNode {node} MemFree:        {} kB",
                mem_total_kib / 2
            ),
        );
    }

    /// A PCI device at `devices/<host_bridge>/<chain...>` with its `bus/pci/devices` link.
    /// Returns the device's directory relative to the root.
    pub fn pci_device(&self, host_bridge: &str, chain: &[&str], numa: i32) -> String {
        let dir = format!("sys/devices/{host_bridge}/{}", chain.join("/"));
        self.file(&format!("{dir}/numa_node"), &numa.to_string());
        let bdf = chain.last().expect("chain names the device");
        self.link(&format!("sys/bus/pci/devices/{bdf}"), &dir);
        dir
    }

    /// An InfiniBand HCA with one active port, under the PCI device at `device_dir`.
    pub fn ib_device(&self, name: &str, device_dir: &str, netdev: &str, guid: &str, rate: &str) {
        let dev = format!("{device_dir}/infiniband/{name}");
        self.file(&format!("{dev}/node_guid"), guid);
        self.file(&format!("{dev}/fw_ver"), "28.39.1002");
        let bdf = device_dir
            .rsplit('/')
            .next()
            .expect("device dir has a name");
        // `device` points from infiniband/<name> back up to the PCI device.
        symlink(
            format!("../../../{bdf}"),
            self.root.join(&dev).join("device"),
        )
        .expect("device link");
        let port = format!("{dev}/ports/1");
        self.file(&format!("{port}/state"), "4: ACTIVE");
        self.file(&format!("{port}/phys_state"), "5: LinkUp");
        self.file(&format!("{port}/rate"), rate);
        self.file(&format!("{port}/link_layer"), "InfiniBand");
        self.file(&format!("{port}/gid_attrs/types/0"), "IB/RoCE v1");
        self.file(&format!("{port}/counters/port_xmit_data"), "1000000");
        self.file(&format!("{port}/counters/port_rcv_data"), "2000000");
        self.file(&format!("{device_dir}/net/{netdev}/mtu"), "4092");
        self.link(&format!("sys/class/infiniband/{name}"), &dev);
    }
}

/// The real H100 host: 16 CPUs, 128 GiB, one NUMA node, the GPU at `0000:00:06.0` directly
/// under the root complex with NUMA `-1`, no RDMA devices.
pub fn build_h100_host(root: &Path) {
    let t = SysTree::new(root);
    t.cpus("0-15");
    t.numa_node(0, 128 * 1024 * 1024);
    t.pci_device("pci0000:00", &["0000:00:06.0"], -1);
    // The real host has an empty `class/infiniband`; git keeps no empty directories, and an
    // absent one reads the same (no RDMA).
}

/// A synthetic HGX H100: 224 CPUs, 2 TiB over two NUMA nodes, four root complexes (two per
/// NUMA node), each with two PCIe switches; every switch holds one GPU and one 400 Gb/s
/// NDR HCA. GPU `i` and `mlx5_i` share a switch.
pub fn build_hgx(root: &Path) {
    let t = SysTree::new(root);
    t.cpus("0-223");
    t.numa_node(0, 1024 * 1024 * 1024);
    t.numa_node(1, 1024 * 1024 * 1024);
    let mut nic = 0;
    for (bridge, numa) in [(0x10u32, 0), (0x30, 0), (0x90, 1), (0xb0, 1)] {
        for switch in 0..2u32 {
            let bus = |offset: u32| bridge + offset + 4 * switch;
            let root_port = format!("0000:{bridge:02x}:{:02x}.0", 1 + 2 * switch);
            let upstream = format!("0000:{:02x}:00.0", bus(1));
            let gpu_port = format!("0000:{:02x}:00.0", bus(2));
            let nic_port = format!("0000:{:02x}:01.0", bus(2));
            let gpu = format!("0000:{:02x}:00.0", bus(3));
            let hca = format!("0000:{:02x}:00.0", bus(4));
            let host_bridge = format!("pci0000:{bridge:02x}");
            t.pci_device(
                &host_bridge,
                &[&root_port, &upstream, &gpu_port, &gpu],
                numa,
            );
            let dir = t.pci_device(
                &host_bridge,
                &[&root_port, &upstream, &nic_port, &hca],
                numa,
            );
            t.ib_device(
                &format!("mlx5_{nic}"),
                &dir,
                &format!("ibp{}s0", bus(4)),
                &format!("b8ce:f603:00c4:1a{nic:02x}"),
                "400 Gb/sec (4X NDR)",
            );
            nic += 1;
        }
    }
}

/// A machine with no GPU and no RDMA: 2 CPUs, 8 GiB, no NUMA directory (`/proc/meminfo`).
pub fn build_empty(root: &Path) {
    let t = SysTree::new(root);
    t.cpus("0-1");
    t.file(
        "proc/meminfo",
        "MemTotal:        8388608 kB\nMemFree:         4194304 kB",
    );
}

/// Files and links only: git keeps no empty directories.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File(String),
    Link(String),
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in fs::read_dir(dir).expect("read fixture dir") {
            let entry = entry.expect("dir entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("read link");
                out.insert(rel, Entry::Link(target.display().to_string()));
            } else if meta.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    rel,
                    Entry::File(fs::read_to_string(&path).expect("read fixture file")),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// Builds `name` in a temporary directory and compares it with the committed tree.
pub fn check_committed_tree(name: &str, build: fn(&Path)) {
    let committed = fixtures_dir().join(name);
    if std::env::var_os("SUANLI_UPDATE_FIXTURES").is_some() {
        let _ = fs::remove_dir_all(&committed);
        build(&committed);
        return;
    }
    let fresh = tempfile::tempdir().expect("tempdir");
    build(fresh.path());
    let expected = snapshot(fresh.path());
    let actual = snapshot(&committed);
    assert!(
        expected == actual,
        "fixtures/{name} differs from what the builder makes; \
         rerun with SUANLI_UPDATE_FIXTURES=1 to rewrite it"
    );
}
