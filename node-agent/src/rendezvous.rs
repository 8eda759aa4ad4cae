//! Each replica's rendezvous environment: who it is in its job, where replica 0 listens, and
//! which NICs NCCL should use, under Suanli's names and under the names PyTorch (`torchrun`),
//! MPI and DeepSpeed read, so a training command needs no flags.
//!
//! The scheduler sends the facts (every replica's host and GPU count, the port); the agent
//! adds what only it knows (its GPU↔NIC paths, its interfaces, its data directory) and writes
//! the hostfile. The job's own `env` is applied on top, so a user's value always wins.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use suanli_engine::NodeInventory;

/// One replica of the job as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub replica: u32,
    /// Host (name or IP) the replica's node advertises.
    pub address: String,
    /// GPUs (or MIG instances) granted to it.
    pub gpus: u32,
}

/// What the scheduler and this node know about one replica's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub job_name: String,
    pub node_cid: String,
    /// Every placed replica of the attempt, in replica order; the first is the master.
    pub peers: Vec<Peer>,
    pub master_port: u16,
    /// RDMA NICs on the same PCIe switch as this replica's GPUs (`NCCL_IB_HCA`).
    pub ib_hcas: Vec<String>,
    /// The interface holding this node's advertised address (`NCCL_SOCKET_IFNAME`).
    pub socket_ifname: Option<String>,
}

/// The rendezvous variables of replica `replica` of attempt `attempt` of job `job_id`, with
/// `gpus` GPUs and its hostfile at `hostfile`. Empty when the replica is not among the peers
/// (a scheduler that sent no peers): there is no rendezvous to describe.
pub fn rendezvous_env(
    job_id: &str,
    attempt: u32,
    replica: u32,
    gpus: usize,
    r: &Rendezvous,
    hostfile: &Path,
) -> BTreeMap<String, String> {
    let Some(rank) = r.peers.iter().position(|p| p.replica == replica) else {
        return BTreeMap::new();
    };
    let master = &r.peers[0].address;
    let nnodes = r.peers.len();
    let procs_per_node = gpus.max(1);
    let mut env: BTreeMap<String, String> = [
        ("SUANLI_JOB_ID", job_id.to_string()),
        ("SUANLI_JOB_NAME", r.job_name.clone()),
        ("SUANLI_ATTEMPT", attempt.to_string()),
        ("SUANLI_NODE_CID", r.node_cid.clone()),
        ("SUANLI_REPLICA", replica.to_string()),
        ("SUANLI_REPLICAS", nnodes.to_string()),
        ("SUANLI_GPUS", gpus.to_string()),
        ("SUANLI_HOSTFILE", hostfile.display().to_string()),
        ("MASTER_ADDR", master.clone()),
        ("MASTER_PORT", r.master_port.to_string()),
        ("NODE_RANK", rank.to_string()),
        ("NNODES", nnodes.to_string()),
        // torchrun reads its flags from PET_<FLAG>.
        ("PET_NNODES", nnodes.to_string()),
        ("PET_NODE_RANK", rank.to_string()),
        ("PET_NPROC_PER_NODE", procs_per_node.to_string()),
        ("PET_MASTER_ADDR", master.clone()),
        ("PET_MASTER_PORT", r.master_port.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // One process per replica is the contract only when no replica has more than one GPU;
    // otherwise a launcher (torchrun, mpirun) starts the processes and assigns their ranks.
    if r.peers.iter().all(|p| p.gpus <= 1) {
        for (key, value) in [
            ("WORLD_SIZE", nnodes.to_string()),
            ("RANK", rank.to_string()),
            ("LOCAL_RANK", "0".to_string()),
            ("LOCAL_WORLD_SIZE", "1".to_string()),
        ] {
            env.insert(key.to_string(), value);
        }
    }
    // `=` makes NCCL match names exactly: plain `mlx5_1` would also take mlx5_10..mlx5_17.
    if !r.ib_hcas.is_empty() {
        env.insert(
            "NCCL_IB_HCA".to_string(),
            format!("={}", r.ib_hcas.join(",")),
        );
    }
    if let Some(ifname) = &r.socket_ifname {
        env.insert("NCCL_SOCKET_IFNAME".to_string(), format!("={ifname}"));
    }
    env
}

/// The replica's environment: the rendezvous variables, overridden by the job's own `env`.
pub fn merged_env(
    rendezvous: BTreeMap<String, String>,
    user: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = rendezvous;
    env.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The MPI/DeepSpeed hostfile: `host slots=N`, one line per replica in replica order, N
/// being the replica's GPUs (at least 1: a replica without GPUs still runs one process).
pub fn hostfile_text(peers: &[Peer]) -> String {
    peers
        .iter()
        .map(|p| format!("{} slots={}\n", p.address, p.gpus.max(1)))
        .collect()
}

/// The RDMA NICs on the same PCIe switch (PIX or PXB: GPUDirect RDMA works) as any of
/// `gpu_uuids` (GPUs or MIG instances), in the inventory's NIC order.
pub fn gdr_local_nics(inventory: &NodeInventory, gpu_uuids: &[String]) -> Vec<String> {
    let granted: Vec<u32> = inventory
        .gpus
        .iter()
        .filter(|g| {
            gpu_uuids
                .iter()
                .any(|u| *u == g.uuid || g.mig.instances.iter().any(|m| m.uuid == *u))
        })
        .map(|g| g.index)
        .collect();
    let local = |nic: &str| {
        inventory
            .gpu_nic_pairs
            .iter()
            .any(|p| p.nic == nic && p.path.gdr_local() && granted.contains(&p.gpu))
    };
    inventory
        .nics
        .iter()
        .filter(|n| local(&n.name))
        .map(|n| n.name.clone())
        .collect()
}

/// The name of the local interface that carries `address`, when it is an IP address of this
/// machine's; a host name is not resolved here, so NCCL keeps choosing for itself.
pub fn interface_holding(address: &str) -> Option<String> {
    let ip: IpAddr = address.parse().ok()?;
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let loopback = || loopback_interface(Path::new("/sys/class/net"));
    match ip {
        IpAddr::V6(v6) => interface_of_v6(v6, &read("/proc/net/if_inet6"), loopback),
        IpAddr::V4(v4) => interface_of_v4(v4, &read("/proc/net/route"), loopback),
    }
}

/// The interface `/sys/class/net` calls loopback (type 772, `ARPHRD_LOOPBACK`).
fn loopback_interface(class_net: &Path) -> Option<String> {
    std::fs::read_dir(class_net)
        .ok()?
        .flatten()
        .find_map(|dir| {
            let kind = std::fs::read_to_string(dir.path().join("type")).ok()?;
            (kind.trim() == "772").then(|| dir.file_name().to_string_lossy().into_owned())
        })
}

/// From `/proc/net/if_inet6`, which lists every address with its interface.
fn interface_of_v6(
    ip: Ipv6Addr,
    if_inet6: &str,
    loopback: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if ip.is_loopback() {
        return loopback();
    }
    let hex: String = ip.octets().iter().map(|b| format!("{b:02x}")).collect();
    if_inet6.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() == 6 && fields[0].eq_ignore_ascii_case(&hex)).then(|| fields[5].to_string())
    })
}

/// From `/proc/net/route`: the interface of the most specific directly connected route
/// (no gateway) that covers `ip`, which is the interface holding a local address. The kernel
/// prints addresses and masks as the raw network-order word, in hex.
fn interface_of_v4(
    ip: Ipv4Addr,
    route: &str,
    loopback: impl FnOnce() -> Option<String>,
) -> Option<String> {
    if ip.is_loopback() {
        return loopback();
    }
    let word = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|w| Ipv4Addr::from(w.to_ne_bytes()))
    };
    let target = u32::from(ip);
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, dest, gateway, mask) = (
                fields.first()?,
                fields.get(1)?,
                fields.get(2)?,
                fields.get(7)?,
            );
            let (dest, gateway, mask) = (
                u32::from(word(dest)?),
                u32::from(word(gateway)?),
                u32::from(word(mask)?),
            );
            (gateway == 0 && mask != 0 && target & mask == dest)
                .then(|| (mask.count_ones(), name.to_string()))
        })
        .max_by_key(|(prefix, _)| *prefix)
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn peer(replica: u32, address: &str, gpus: u32) -> Peer {
        Peer {
            replica,
            address: address.to_string(),
            gpus,
        }
    }

    fn gang(gpus: u32) -> Rendezvous {
        Rendezvous {
            job_name: "llama".to_string(),
            node_cid: "cid:acme/cn-east-1/dc-a/n2".to_string(),
            peers: vec![
                peer(0, "10.0.0.1", gpus),
                peer(1, "10.0.0.2", gpus),
                peer(2, "node-3.example", gpus),
            ],
            master_port: 23456,
            ib_hcas: vec!["mlx5_0".to_string(), "mlx5_1".to_string()],
            socket_ifname: Some("eth0".to_string()),
        }
    }

    fn env_of(replica: u32, gpus: usize, r: &Rendezvous) -> BTreeMap<String, String> {
        rendezvous_env(
            "job-7",
            2,
            replica,
            gpus,
            r,
            &PathBuf::from("/d/job-7.1.2.hosts"),
        )
    }

    #[test]
    fn ranks_and_the_master_are_replica_0s() {
        let r = gang(4);
        for replica in 0..3 {
            let env = env_of(replica, 4, &r);
            let rank = replica.to_string();
            for (key, want) in [
                ("SUANLI_JOB_ID", "job-7"),
                ("SUANLI_JOB_NAME", "llama"),
                ("SUANLI_ATTEMPT", "2"),
                ("SUANLI_NODE_CID", "cid:acme/cn-east-1/dc-a/n2"),
                ("SUANLI_REPLICA", rank.as_str()),
                ("SUANLI_REPLICAS", "3"),
                ("SUANLI_GPUS", "4"),
                ("SUANLI_HOSTFILE", "/d/job-7.1.2.hosts"),
                ("MASTER_ADDR", "10.0.0.1"),
                ("MASTER_PORT", "23456"),
                ("NODE_RANK", rank.as_str()),
                ("NNODES", "3"),
                ("PET_NNODES", "3"),
                ("PET_NODE_RANK", rank.as_str()),
                ("PET_NPROC_PER_NODE", "4"),
                ("PET_MASTER_ADDR", "10.0.0.1"),
                ("PET_MASTER_PORT", "23456"),
                ("NCCL_IB_HCA", "=mlx5_0,mlx5_1"),
                ("NCCL_SOCKET_IFNAME", "=eth0"),
            ] {
                assert_eq!(env.get(key).map(String::as_str), Some(want), "{key}");
            }
            // Several GPUs per replica: a launcher assigns process ranks, not the agent.
            assert!(!env.contains_key("RANK") && !env.contains_key("WORLD_SIZE"));
        }
    }

    #[test]
    fn node_rank_is_the_position_among_placed_replicas() {
        // Elastic: replica 1 was not placed.
        let mut r = gang(1);
        r.peers.remove(1);
        let env = env_of(2, 1, &r);
        assert_eq!(env["NODE_RANK"], "1");
        assert_eq!(env["SUANLI_REPLICA"], "2");
        assert_eq!(env["NNODES"], "2");
        assert!(
            env_of(1, 1, &r).is_empty(),
            "an unplaced replica has no rendezvous"
        );
    }

    #[test]
    fn one_gpu_replicas_get_process_ranks() {
        let env = env_of(1, 1, &gang(1));
        assert_eq!(env["WORLD_SIZE"], "3");
        assert_eq!(env["RANK"], "1");
        assert_eq!(env["LOCAL_RANK"], "0");
        assert_eq!(env["PET_NPROC_PER_NODE"], "1");
        // No GPU still means one process.
        let env = env_of(1, 0, &gang(0));
        assert_eq!(env["PET_NPROC_PER_NODE"], "1");
        assert_eq!(env["SUANLI_GPUS"], "0");
        assert_eq!(env["RANK"], "1");
    }

    #[test]
    fn unknown_nics_and_interfaces_are_left_to_nccl() {
        let mut r = gang(2);
        r.ib_hcas.clear();
        r.socket_ifname = None;
        let env = env_of(0, 2, &r);
        assert!(!env.contains_key("NCCL_IB_HCA"));
        assert!(!env.contains_key("NCCL_SOCKET_IFNAME"));
    }

    #[test]
    fn the_users_env_wins() {
        let user: BTreeMap<String, String> = [
            ("MASTER_PORT", "29500"),
            ("NCCL_IB_HCA", "mlx5_9"),
            ("SUANLI_HOSTFILE", "/mine"),
            ("EXTRA", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = merged_env(env_of(0, 4, &gang(4)), &user);
        assert_eq!(env["MASTER_PORT"], "29500");
        assert_eq!(env["NCCL_IB_HCA"], "mlx5_9");
        assert_eq!(env["SUANLI_HOSTFILE"], "/mine");
        assert_eq!(env["EXTRA"], "x");
        assert_eq!(env["MASTER_ADDR"], "10.0.0.1");
    }

    /// The recorded HGX H100 node: GPU i shares a PCIe switch (PIX) with mlx5_i; GPU 7 is
    /// in MIG mode.
    fn hgx() -> NodeInventory {
        use crate::discovery::{FixtureProbe, SysfsRoot, discover};
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let probe = FixtureProbe::load(&fixtures.join("hgx-h100.json")).expect("fixture");
        let cid = "cid:acme/r/d/hgx".parse().expect("cid");
        let root = SysfsRoot(fixtures.join("hgx-h100"));
        discover(&probe, &root, cid, Default::default()).inventory
    }

    #[test]
    fn nccl_ib_hca_is_the_nics_on_the_granted_gpus_pcie_switches() {
        let mut inv = hgx();
        let uuid = |i: usize| inv.gpus[i].uuid.clone();
        assert_eq!(
            gdr_local_nics(&inv, &[uuid(3), uuid(1)]),
            ["mlx5_1", "mlx5_3"]
        );
        let mig = inv.gpus[7].mig.instances[0].uuid.clone();
        assert_eq!(gdr_local_nics(&inv, &[mig]), ["mlx5_7"]);
        assert!(gdr_local_nics(&inv, &[]).is_empty());
        assert!(gdr_local_nics(&inv, &["GPU-elsewhere".to_string()]).is_empty());
        // A NIC reached through the CPU is no GPUDirect path.
        let gpu0 = uuid(0);
        for pair in inv.gpu_nic_pairs.iter_mut().filter(|p| p.gpu == 0) {
            pair.path = suanli_engine::inventory::LinkPath::Phb;
        }
        assert!(gdr_local_nics(&inv, &[gpu0]).is_empty());
    }

    #[test]
    fn the_hostfile_lists_replicas_in_order_with_their_gpus() {
        let peers = vec![
            peer(0, "10.0.0.1", 8),
            peer(1, "fd00::2", 4),
            peer(2, "cpu-1", 0),
        ];
        assert_eq!(
            hostfile_text(&peers),
            "10.0.0.1 slots=8\nfd00::2 slots=4\ncpu-1 slots=1\n"
        );
    }

    #[test]
    fn the_interface_of_an_address_comes_from_the_kernels_tables() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     ib0\t0000000A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     ib1\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let lo = || Some("lo".to_string());
        let v4 = |ip: &str| interface_of_v4(ip.parse().expect("ip"), route, lo);
        assert_eq!(v4("192.0.2.7").as_deref(), Some("eth0"));
        assert_eq!(
            v4("10.0.1.9").as_deref(),
            Some("ib1"),
            "the most specific route"
        );
        assert_eq!(v4("10.0.2.9").as_deref(), Some("ib0"));
        assert_eq!(v4("127.0.0.1").as_deref(), Some("lo"));
        assert_eq!(
            v4("198.51.100.1"),
            None,
            "only the default route reaches it"
        );
        let if_inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n\
                        fd000000000000000000000000000002 04 40 00 82     eth0\n";
        let v6 = |ip: &str| interface_of_v6(ip.parse().expect("ip"), if_inet6, lo);
        assert_eq!(v6("fd00::2").as_deref(), Some("eth0"));
        assert_eq!(v6("::1").as_deref(), Some("lo"));
        assert_eq!(v6("fd00::3"), None);
        assert_eq!(interface_holding("node-3.example"), None);
    }
}
