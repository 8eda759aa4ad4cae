//! Builders for a fully populated inventory and job spec.

use std::collections::BTreeMap;

use suanli_engine::inventory::{
    FabricPosition, GpuInfo, GpuNicPair, GpuPair, Health, LinkLayer, LinkPath, MigInstance,
    MigState, NicPort, NodeInventory, NvLink, NvLinkRemote, NvmlStatus, PcieLink, PortState,
    RdmaNic, Versions,
};
use suanli_engine::job::{
    DataVolume, GpuPolicy, GpuRequest, JobKind, JobSpec, NetworkConstraint, NetworkScope,
    PlacementConstraints, Requirement, Resources, Topology, VolumeMount,
};
use suanli_engine::{Cid, GpuModel};

pub fn cid(text: &str) -> Cid {
    text.parse().expect("test CIDs are valid")
}

pub fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        uuid: format!("GPU-{index:08x}-aaaa-bbbb-cccc-0000000000{index:02}"),
        index,
        product: "NVIDIA H100 80GB HBM3".to_string(),
        model: GpuModel::from_product_name("NVIDIA H100 80GB HBM3"),
        architecture: "Hopper".to_string(),
        compute_capability: "9.0".to_string(),
        memory_mib: 81_559,
        pci_bus_id: format!("0000:{:02x}:00.0", 0x18 + index * 0x10),
        // Half the GPUs know their NUMA node, half do not: both must survive the trip.
        numa_node: if index < 4 { Some(0) } else { None },
        pcie: PcieLink {
            generation: 5,
            width: 16,
        },
        mig: MigState {
            capable: true,
            enabled: false,
            instances: vec![],
        },
        nvlinks: (0..18)
            .map(|link| NvLink {
                link,
                active: link != 17,
                remote_pci_bus_id: format!("0000:{:02x}:00.0", 0xa0 + link),
                remote: if link == 17 {
                    NvLinkRemote::Unknown
                } else {
                    NvLinkRemote::Switch
                },
            })
            .collect(),
        health: if index == 5 {
            Health::Degraded
        } else {
            Health::Healthy
        },
    }
}

/// An 8×H100 HGX node: NVSwitch between all GPUs, MIG on GPU 7, four 400G InfiniBand NICs.
pub fn full_inventory() -> NodeInventory {
    let mut gpus: Vec<GpuInfo> = (0..8).map(gpu).collect();
    gpus[7].mig.enabled = true;
    gpus[7].mig.instances = vec![
        MigInstance {
            uuid: "MIG-7a".to_string(),
            profile: "3g.40gb".parse().expect("known profile"),
            memory_mib: 40_192,
            sm_count: 60,
            start_slice: 4,
        },
        MigInstance {
            uuid: "MIG-7b".to_string(),
            profile: "1g.10gb".parse().expect("known profile"),
            memory_mib: 9_856,
            sm_count: 16,
            start_slice: 0,
        },
        MigInstance {
            uuid: "MIG-7c".to_string(),
            profile: "1g.10gb+me".parse().expect("known profile"),
            memory_mib: 9_856,
            sm_count: 16,
            start_slice: 1,
        },
    ];
    gpus[7].nvlinks.clear();
    let nics: Vec<RdmaNic> = (0..4)
        .map(|i| RdmaNic {
            name: format!("mlx5_{i}"),
            pci_bus_id: format!("0000:{:02x}:00.0", 0x1a + i * 0x20),
            numa_node: if i < 2 { Some(0) } else { Some(1) },
            node_guid: format!("b8:3f:d2:03:00:{i:02x}:aa:bb"),
            firmware: "28.39.1002".to_string(),
            netdevs: vec![format!("ib{i}")],
            ports: vec![NicPort {
                port: 1,
                state: if i == 3 {
                    PortState::Down
                } else {
                    PortState::Active
                },
                link_layer: LinkLayer::Infiniband,
                rate_gbps: if i == 3 { 0.0 } else { 400.0 },
                gid_type: "IB/RoCE v1".to_string(),
            }],
            health: Health::Healthy,
        })
        .collect();
    let mut gpu_pairs = Vec::new();
    for a in 0..8u32 {
        for b in (a + 1)..8 {
            let path = if b == 7 {
                LinkPath::Sys
            } else {
                LinkPath::NvLink(18)
            };
            gpu_pairs.push(GpuPair { a, b, path });
        }
    }
    let mut gpu_nic_pairs = Vec::new();
    for g in 0..8u32 {
        for n in 0..4u32 {
            let path = match (g / 2 == n, g / 4 == n / 2) {
                (true, _) => LinkPath::Pix,
                (false, true) => LinkPath::Node,
                (false, false) => LinkPath::Sys,
            };
            gpu_nic_pairs.push(GpuNicPair {
                gpu: g,
                nic: format!("mlx5_{n}"),
                path,
                gdr_local: path.gdr_local(),
            });
        }
    }
    NodeInventory {
        cid: cid("cid:acme/cn-east-1/dc-a/hgx-017"),
        generation: 42,
        fabric: FabricPosition {
            leaf: "leaf-3".to_string(),
            spine: "spine-1".to_string(),
        },
        cpu_milli: 224_000,
        memory_mib: 2 * 1024 * 1024,
        numa_nodes: 2,
        versions: Versions {
            agent: "0.1.0".to_string(),
            driver: "550.54.15".to_string(),
            cuda: "12.4".to_string(),
        },
        nvml: NvmlStatus::Available {
            driver_version: "550.54.15".to_string(),
            cuda_version: "12.4".to_string(),
            nvml_version: "12.550.54.15".to_string(),
        },
        gpus,
        nics,
        gpu_pairs,
        gpu_nic_pairs,
        labels: BTreeMap::from([
            ("rack".to_string(), "r12".to_string()),
            ("zone".to_string(), "a".to_string()),
        ]),
    }
}

/// A training job that sets every field.
pub fn full_job_spec() -> JobSpec {
    JobSpec {
        name: "llama-70b-pretrain".to_string(),
        kind: JobKind::Training,
        replicas: 16,
        min_replicas: Some(8),
        gpu: Some(GpuRequest {
            policy: GpuPolicy::Exclusive { count: 8 },
            models: vec![
                "H100".parse().expect("valid model"),
                "A100-80GB".parse().expect("valid model"),
            ],
        }),
        resources: Resources {
            cpu_milli: 96_000,
            memory_mib: 1024 * 1024,
        },
        topology: Topology {
            nvlink: Some(Requirement::Required),
            network: NetworkConstraint {
                scope: NetworkScope::SameLeaf,
                mode: Requirement::Required,
            },
            rdma_required: true,
        },
        placement: PlacementConstraints {
            allowed: vec![cid("cid:acme/cn-east-1"), cid("cid:partner/eu-west")],
            data: vec![DataVolume {
                name: "tokens-v3".to_string(),
                domain: cid("cid:acme/cn-east-1/dc-a"),
                size_gib: 40_960,
            }],
            max_price_per_gpu_hour: Some(2.75),
            allow_cross_domain: true,
            inter_domain_bandwidth_gbps: Some(800.0),
        },
        tenant: "research".to_string(),
        queue: "large".to_string(),
        priority: 50,
        preemptible: false,
        time_limit_s: Some(7 * 24 * 3600),
        command: vec![
            "torchrun".to_string(),
            "--nproc-per-node=8".to_string(),
            "train.py".to_string(),
        ],
        env: BTreeMap::from([
            ("NCCL_IB_HCA".to_string(), "mlx5".to_string()),
            ("WANDB_MODE".to_string(), "offline".to_string()),
        ]),
        volumes: vec![
            VolumeMount {
                name: "tokens-v3".to_string(),
                path: "/data".to_string(),
                read_only: true,
            },
            VolumeMount {
                name: "ckpt".to_string(),
                path: "/ckpt".to_string(),
                read_only: false,
            },
        ],
    }
}
