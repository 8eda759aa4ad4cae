//! The cluster the demo runs: a scheduler on 127.0.0.1 (free ports, data in a temporary
//! directory) and one node agent per demo node, each with a recorded machine, holding real
//! gRPC sessions and running replicas as processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use suanli::config::{Origin, Settings};
use suanli::error::CliError;
use suanli_agent::config::AgentConfig;
use suanli_agent::discovery::FixtureProbe;
use suanli_agent::session::Agent;
use suanli_engine::Cid;
use suanli_engine::inventory::FabricPosition;
use suanli_scheduler::config::{AuthConfig, ServerConfig};
use suanli_scheduler::server::RunningServer;
use tokio::sync::oneshot;
use tokio::time::timeout;

use crate::fixtures::{self, H100_HOST, HGX_H100, Machine};

const JOIN_TOKEN: &str = "demo-join-token";
const ADMIN_TOKEN: &str = "demo-admin-token";

#[derive(Debug)]
pub struct DemoNode {
    pub name: &'static str,
    machine: &'static Machine,
    leaf: &'static str,
}

pub const NODES: [DemoNode; 3] = [
    DemoNode {
        name: "hgx-1",
        machine: &HGX_H100,
        leaf: "leaf-1",
    },
    DemoNode {
        name: "hgx-2",
        machine: &HGX_H100,
        leaf: "leaf-1",
    },
    DemoNode {
        name: "h100-1",
        machine: &H100_HOST,
        leaf: "leaf-2",
    },
];

pub fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("{what}: {e}"))
}

#[derive(Debug)]
pub struct RunningAgent {
    pub name: &'static str,
    pub data_dir: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Everything the demo started, stopped in reverse order by [`Cluster::stop`].
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    pub agents: Vec<RunningAgent>,
}

impl Cluster {
    pub async fn start(policy: &str) -> Result<Cluster, CliError> {
        let dir = tempfile::Builder::new()
            .prefix("suanli-demo-")
            .tempdir()
            .map_err(|e| failed("cannot create a temporary directory", e))?;
        let config = ServerConfig {
            grpc_addr: ([127, 0, 0, 1], 0).into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
            data_dir: dir.path().join("scheduler"),
            policy: policy.to_string(),
            heartbeat_interval_ms: 500,
            telemetry_interval_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            durability: "normal".to_string(),
            auth: AuthConfig {
                join_tokens: vec![JOIN_TOKEN.to_string()],
                admin_tokens: vec![ADMIN_TOKEN.to_string()],
                tenants: BTreeMap::new(),
            },
            ..ServerConfig::default()
        };
        let server = suanli_scheduler::server::start(config)
            .await
            .map_err(|e| failed("cannot start the scheduler", e))?;
        let mut cluster = Cluster {
            dir,
            server,
            agents: Vec::new(),
        };
        if let Err(e) = cluster.start_agents() {
            cluster.stop().await;
            return Err(e);
        }
        Ok(cluster)
    }

    fn start_agents(&mut self) -> Result<(), CliError> {
        let sysfs = self.dir.path().join("sysfs");
        for machine in [&HGX_H100, &H100_HOST] {
            machine
                .write_tree(&sysfs.join(machine.name))
                .map_err(|e| failed(&format!("cannot write the {} sysfs tree", machine.name), e))?;
        }
        for (i, node) in NODES.iter().enumerate() {
            let recorded = node
                .machine
                .gpus()
                .map_err(|e| failed("the built-in GPU recording is unreadable", e))?;
            let shared = NODES
                .iter()
                .filter(|n| n.machine.name == node.machine.name)
                .count()
                > 1;
            let recorded = if shared {
                fixtures::distinct_uuids(recorded, i + 1)
            } else {
                recorded
            };
            let node_cid = Cid::node("demo", "local", "dc-a", node.name)
                .map_err(|e| failed("demo node identifier", e))?;
            let data_dir = self.dir.path().join("agents").join(node.name);
            let cfg = AgentConfig {
                scheduler: format!("http://{}", self.server.grpc_addr),
                token: JOIN_TOKEN.to_string(),
                node_cid,
                fabric: FabricPosition {
                    leaf: node.leaf.to_string(),
                    spine: "spine-1".to_string(),
                },
                data_dir: data_dir.clone(),
                fixture: None,
                sysfs_root: sysfs.join(node.machine.name),
                seed: i as u64 + 1,
                backoff_initial: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
                rediscover_every: Duration::from_secs(60),
                default_grace: Duration::from_secs(2),
                kube_api: None,
                kubelet_socket: None,
                gpu_resource: "nvidia.com/gpu".into(),
                pod_devices_every: Duration::from_secs(10),
            };
            let probe = Arc::new(FixtureProbe::new(recorded, i as u64 + 1));
            let agent = Agent::new(cfg, probe)
                .map_err(|e| failed(&format!("cannot start agent {}", node.name), e))?;
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(agent.run(async move {
                let _ = stopped.await;
            }));
            self.agents.push(RunningAgent {
                name: node.name,
                data_dir,
                stop,
                task,
            });
        }
        Ok(())
    }

    /// How the demo's client reaches the scheduler: as an admin.
    pub fn settings(&self) -> Settings {
        Settings {
            addr: format!("http://{}", self.server.grpc_addr),
            addr_origin: Origin::Default,
            token: Some(ADMIN_TOKEN.to_string()),
            token_origin: Some(Origin::Default),
        }
    }

    /// Stops the agents, then the scheduler, then removes the temporary directory.
    pub async fn stop(self) {
        for agent in self.agents {
            let _ = agent.stop.send(());
            let _ = timeout(Duration::from_secs(5), agent.task).await;
        }
        self.server.shutdown().await;
        // Dropping the directory would ignore failures; closing reports none we could act on
        // either, but it removes everything before we return.
        let _ = self.dir.close();
    }
}
