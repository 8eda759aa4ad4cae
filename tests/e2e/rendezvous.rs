//! Replicas of a training gang find each other: real scheduler, two real agents on recorded
//! HGX H100 nodes (GPUs and RDMA NICs from the fixture's sysfs), and a job whose replica 0
//! listens on `MASTER_ADDR:MASTER_PORT` while replica 1 connects to it.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use suanli_tests::{JOIN_TOKEN, Proc, bin, start_agent_with, workspace_root};

use super::*;

/// `suanli-agent run` on the recorded HGX node, NICs included, with `extra` flags.
fn start_hgx_agent(scheduler_grpc: &str, node: &str, data_dir: &Path, extra: &[&str]) -> Proc {
    let sysfs = workspace_root().join("node-agent/fixtures/hgx-h100");
    let mut args: Vec<&OsStr> = vec![OsStr::new("--sysfs-root"), sysfs.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    start_agent_with(
        scheduler_grpc,
        node,
        "hgx-h100.json",
        data_dir,
        &args,
        Stdio::inherit(),
    )
}

/// Prints its environment and hostfile as one JSON line to its log; replica 0 accepts one
/// connection on MASTER_ADDR:MASTER_PORT and adds what it received, the others connect and
/// say hello.
const REPLICA_SCRIPT: &str = r#"
import json, os, socket, sys, time
env = dict(os.environ)
rank = int(env["NODE_RANK"])
master = (env["MASTER_ADDR"], int(env["MASTER_PORT"]))
with open(env["SUANLI_HOSTFILE"]) as f:
    env["HOSTFILE_TEXT"] = f.read()
if rank == 0:
    server = socket.create_server(master)
    server.settimeout(60)
    conn, _ = server.accept()
    conn.settimeout(60)
    env["RECEIVED"] = conn.recv(64).decode()
else:
    deadline = time.time() + 60
    while True:
        try:
            conn = socket.create_connection(master, timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    conn.sendall(b"hello from rank %d" % rank)
print("ENV " + json.dumps(env), flush=True)
"#;

/// GPU UUID → index on the recorded HGX node.
fn fixture_gpu_indexes() -> BTreeMap<String, u64> {
    let path = workspace_root().join("node-agent/fixtures/hgx-h100.json");
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    fixture["gpus"]
        .as_array()
        .expect("fixture gpus")
        .iter()
        .map(|g| {
            let uuid = g["uuid"].as_str().expect("uuid").to_string();
            (uuid, g["index"].as_u64().expect("index"))
        })
        .collect()
}

#[test]
fn gang_replicas_rendezvous_at_replica_0() {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "the replicas' rendezvous script needs python3"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_scheduler_config(dir.path(), 10_000);
    let scheduler = start_scheduler(&config, &dir.path().join("scheduler-data"), None);
    // n1 advertises a name; n2 leaves it to the scheduler, which sees it connect from
    // loopback.
    let advertised = |node: &str| {
        if node.ends_with("/n1") {
            "localhost"
        } else {
            "127.0.0.1"
        }
    };
    let _agents: Vec<Proc> = [("n1", &["--advertise-addr", "localhost"][..]), ("n2", &[])]
        .iter()
        .map(|(node, extra)| {
            let data = dir.path().join(format!("agent-{node}"));
            start_hgx_agent(&scheduler.grpc, node, &data, extra)
        })
        .collect();
    wait_for_ready(&scheduler, 2, "two connected nodes");

    // 4 + 4 GPUs do not fit one node with 7 whole GPUs: one replica per node.
    let command = serde_json::to_string(&["python3", "-c", REPLICA_SCRIPT]).expect("json");
    let job = write_yaml(
        dir.path(),
        "rdzv",
        &format!(
            "name: rdzv\nkind: training\nreplicas: 2\ntenant: research\n\
             gpu: {{policy: exclusive, count: 4}}\n\
             resources: {{cpu_milli: 100, memory_mib: 256}}\n\
             env: {{PET_NPROC_PER_NODE: \"2\", EXTRA: from-user}}\n\
             command: {command}\n"
        ),
    );
    let id = submit(&scheduler, &job);
    let done = wait_state(&scheduler, &id, "succeeded");
    let placed = placement(&done);
    assert_eq!(placed.len(), 2);

    // What each replica printed, as `suanli logs` shows it.
    let env: Vec<Value> = (0..2)
        .map(|rank| {
            let out = suanli(
                &scheduler.grpc,
                RESEARCH_TOKEN,
                &["logs", &id, "--replica", &rank.to_string()],
            );
            assert!(out.status.success(), "{out:?}");
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            let line = log
                .lines()
                .find_map(|l| l.strip_prefix("ENV "))
                .unwrap_or_else(|| panic!("replica {rank} printed its env: {log}"));
            serde_json::from_str(line).expect("json")
        })
        .collect();
    let var = |rank: usize, key: &str| env[rank][key].as_str().unwrap_or("<unset>").to_string();
    assert_eq!(
        var(0, "RECEIVED"),
        "hello from rank 1",
        "replica 1 reached replica 0"
    );
    let indexes = fixture_gpu_indexes();
    let master = advertised(&var(0, "SUANLI_NODE_CID"));
    let hostfile = format!(
        "{} slots=4\n{} slots=4\n",
        master,
        advertised(&var(1, "SUANLI_NODE_CID"))
    );
    for rank in 0..2 {
        let r = rank.to_string();
        assert_eq!(var(rank, "NODE_RANK"), r);
        assert_eq!(var(rank, "PET_NODE_RANK"), r);
        assert_eq!(var(rank, "SUANLI_REPLICA"), r);
        assert_eq!(var(rank, "NNODES"), "2");
        assert_eq!(var(rank, "PET_NNODES"), "2");
        assert_eq!(var(rank, "SUANLI_REPLICAS"), "2");
        assert_eq!(var(rank, "SUANLI_GPUS"), "4");
        assert_eq!(var(rank, "SUANLI_JOB_ID"), id);
        assert_eq!(var(rank, "SUANLI_JOB_NAME"), "rdzv");
        assert_eq!(var(rank, "SUANLI_ATTEMPT"), "1");
        assert_eq!(var(rank, "MASTER_ADDR"), master);
        assert_eq!(var(rank, "PET_MASTER_ADDR"), master);
        assert_eq!(var(rank, "MASTER_PORT"), var(0, "MASTER_PORT"));
        assert_eq!(var(rank, "PET_MASTER_PORT"), var(0, "MASTER_PORT"));
        let port: u16 = var(rank, "MASTER_PORT").parse().expect("a port");
        assert!((20_000..32_768).contains(&port), "{port}");
        // The job's own env wins over the rendezvous values.
        assert_eq!(var(rank, "PET_NPROC_PER_NODE"), "2");
        assert_eq!(var(rank, "EXTRA"), "from-user");
        // Four GPUs per replica: a launcher assigns process ranks.
        assert_eq!(var(rank, "RANK"), "<unset>");
        assert_eq!(var(rank, "WORLD_SIZE"), "<unset>");
        assert_eq!(var(rank, "HOSTFILE_TEXT"), hostfile);
        // Known for an IP the node holds; a name is left to NCCL.
        let node = var(rank, "SUANLI_NODE_CID");
        if advertised(&node) == "localhost" {
            assert_eq!(var(rank, "NCCL_SOCKET_IFNAME"), "<unset>");
        } else if Path::new("/sys/class/net/lo").exists() {
            assert_eq!(var(rank, "NCCL_SOCKET_IFNAME"), "=lo");
        }

        // In the fixture GPU i shares a PCIe switch with mlx5_i, and no other NIC.
        let (_, gpus) = placed
            .iter()
            .find(|(n, _)| *n == node)
            .expect("the replica ran on a node of the placement");
        assert_eq!(var(rank, "CUDA_VISIBLE_DEVICES"), gpus.join(","));
        let mut nics: Vec<u64> = gpus.iter().map(|u| indexes[u]).collect();
        nics.sort_unstable();
        let want: Vec<String> = nics.iter().map(|i| format!("mlx5_{i}")).collect();
        assert_eq!(var(rank, "NCCL_IB_HCA"), format!("={}", want.join(",")));
    }
    assert_ne!(var(0, "SUANLI_NODE_CID"), var(1, "SUANLI_NODE_CID"));
}

#[test]
fn a_bad_advertise_address_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin("suanli-agent"))
        .arg("run")
        .args(["--scheduler", "http://127.0.0.1:9", "--token", JOIN_TOKEN])
        .args([
            "--provider",
            "acme",
            "--region",
            "cn-east-1",
            "--domain",
            "dc-a",
        ])
        .args(["--node", "n1", "--advertise-addr", "gpu node 7:80"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("agent runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--advertise-addr") && stderr.contains("not a valid host name"),
        "{stderr}"
    );
}
