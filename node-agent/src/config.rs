//! Agent configuration, read through a small key→value trait: the environment
//! (`SUANLI_AGENT_<KEY>`) in production, a map in tests, and command-line flags layered on top.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use suanli_engine::Cid;
use suanli_engine::cid::sanitize_segment;
use suanli_engine::inventory::FabricPosition;
use suanli_proto::convert::rendezvous::parse_advertise_addr;

/// Where configuration values come from. Keys are lower-case with underscores
/// (`scheduler`, `data_dir`).
pub trait ConfigSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// `SUANLI_AGENT_<KEY>` environment variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnvConfig;

impl ConfigSource for EnvConfig {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(format!("SUANLI_AGENT_{}", key.to_ascii_uppercase()))
            .ok()
            .filter(|v| !v.is_empty())
    }
}

/// Fixed values (tests, or flags given on the command line).
#[derive(Debug, Clone, Default)]
pub struct MapConfig(pub BTreeMap<String, String>);

impl MapConfig {
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_string(), value.into());
        self
    }
}

impl ConfigSource for MapConfig {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// The first source that has a key wins.
#[derive(Debug)]
pub struct Layered<A, B>(pub A, pub B);

impl<A: ConfigSource, B: ConfigSource> ConfigSource for Layered<A, B> {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).or_else(|| self.1.get(key))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing {key}: pass --{flag} or set SUANLI_AGENT_{env}")]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: String,
    },
    #[error("{key} = {value:?}: {problem}")]
    Invalid {
        key: &'static str,
        value: String,
        problem: String,
    },
}

/// Everything `suanli-agent run` needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://127.0.0.1:7070`.
    pub scheduler: String,
    pub token: String,
    pub node_cid: Cid,
    pub fabric: FabricPosition,
    pub data_dir: PathBuf,
    pub fixture: Option<PathBuf>,
    pub sysfs_root: PathBuf,
    /// Seed of the reconnect jitter.
    pub seed: u64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often discovery runs again to notice inventory changes.
    pub rediscover_every: Duration,
    /// Grace period between SIGTERM and SIGKILL when the agent itself stops work.
    pub default_grace: Duration,
    /// Where to label this machine's Kubernetes Node (named like the node): `in-cluster`,
    /// a URL, or `None` to leave Kubernetes alone.
    pub kube_api: Option<String>,
    /// kubelet's pod-resources socket: when set, the agent reports which GPUs kubelet gave
    /// to pods, so the scheduler holds those and not the ones it guessed.
    pub kubelet_socket: Option<PathBuf>,
    /// The extended resource whose devices are GPUs (`nvidia.com/gpu`).
    pub gpu_resource: String,
    /// How often kubelet is asked.
    pub pod_devices_every: Duration,
}

fn required(src: &dyn ConfigSource, key: &'static str) -> Result<String, ConfigError> {
    src.get(key).ok_or_else(|| ConfigError::Missing {
        key,
        flag: flag_name(key),
        env: key.to_ascii_uppercase(),
    })
}

fn flag_name(key: &'static str) -> &'static str {
    match key {
        "data_dir" => "data-dir",
        "sysfs_root" => "sysfs-root",
        "kube_api" => "kube-api",
        "kubelet_socket" => "kubelet-socket",
        "gpu_resource" => "gpu-resource",
        "advertise_addr" => "advertise-addr",
        other => other,
    }
}

fn parse_u64(src: &dyn ConfigSource, key: &'static str, default: u64) -> Result<u64, ConfigError> {
    match src.get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| ConfigError::Invalid {
            key,
            value: v.clone(),
            problem: format!("not a whole number: {e}"),
        }),
    }
}

/// This machine's host name as a CID segment.
pub fn default_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let raw = raw.trim();
    sanitize_segment(if raw.is_empty() { "localhost" } else { raw })
}

/// The node CID from provider/region/domain and the node name.
pub fn node_cid(
    provider: &str,
    region: &str,
    domain: &str,
    node: &str,
) -> Result<Cid, ConfigError> {
    Cid::node(provider, region, domain, node).map_err(|e| ConfigError::Invalid {
        key: "node",
        value: format!("cid:{provider}/{region}/{domain}/{node}"),
        problem: e.to_string(),
    })
}

impl AgentConfig {
    pub fn from_source(src: &dyn ConfigSource) -> Result<Self, ConfigError> {
        let scheduler = required(src, "scheduler")?;
        if !(scheduler.starts_with("http://") || scheduler.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "scheduler",
                value: scheduler,
                problem: "must be an http:// or https:// URL".to_string(),
            });
        }
        let token = required(src, "token")?;
        let provider = required(src, "provider")?;
        let region = required(src, "region")?;
        let domain = required(src, "domain")?;
        let node = src.get("node").unwrap_or_else(default_node_name);
        let node_cid = node_cid(&provider, &region, &domain, &node)?;
        let ms = |key, default| parse_u64(src, key, default).map(Duration::from_millis);
        let kube_api = src.get("kube_api");
        if let Some(api) = &kube_api
            && !(api == "in-cluster" || api.starts_with("http://") || api.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                key: "kube_api",
                value: api.clone(),
                problem: "must be \"in-cluster\" or an http:// or https:// URL".to_string(),
            });
        }
        Ok(AgentConfig {
            scheduler,
            token,
            node_cid,
            fabric: FabricPosition {
                leaf: src.get("leaf").unwrap_or_default(),
                spine: src.get("spine").unwrap_or_default(),
            },
            data_dir: PathBuf::from(
                src.get("data_dir")
                    .unwrap_or_else(|| "./suanli-agent-data".into()),
            ),
            fixture: src.get("fixture").map(PathBuf::from),
            sysfs_root: PathBuf::from(src.get("sysfs_root").unwrap_or_else(|| "/".into())),
            seed: parse_u64(src, "seed", 0x5eed)?,
            backoff_initial: ms("backoff_initial_ms", 200)?,
            backoff_max: ms("backoff_max_ms", 10_000)?,
            rediscover_every: ms("rediscover_ms", 60_000)?,
            default_grace: ms("grace_ms", 10_000)?,
            kube_api,
            kubelet_socket: src.get("kubelet_socket").map(PathBuf::from),
            gpu_resource: src
                .get("gpu_resource")
                .unwrap_or_else(|| "nvidia.com/gpu".into()),
            pod_devices_every: ms("pod_devices_ms", 10_000)?,
        })
    }
}

/// The checked `--advertise-addr` (`host` or `host:port` where this node's replicas are
/// reached); `None` lets the scheduler use the address the agent connects from. Refused at
/// start rather than at registration, where a bad one would only show as a retry loop.
pub fn advertise_addr(src: &dyn ConfigSource) -> Result<Option<String>, ConfigError> {
    let Some(text) = src.get("advertise_addr") else {
        return Ok(None);
    };
    match parse_advertise_addr(text.trim()) {
        Ok(addr) => Ok(Some(addr.to_string())),
        Err(problem) => Err(ConfigError::Invalid {
            key: "--advertise-addr",
            value: text,
            problem,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MapConfig {
        MapConfig::default()
            .with("scheduler", "http://127.0.0.1:7070")
            .with("token", "t")
            .with("provider", "acme")
            .with("region", "cn-east-1")
            .with("domain", "dc-a")
            .with("node", "n1")
    }

    #[test]
    fn map_config_builds_a_node_cid() {
        let cfg = AgentConfig::from_source(&base()).expect("valid");
        assert_eq!(cfg.node_cid.to_string(), "cid:acme/cn-east-1/dc-a/n1");
        assert_eq!(cfg.backoff_initial, Duration::from_millis(200));
    }

    #[test]
    fn missing_and_invalid_values_are_named() {
        let mut m = base();
        m.0.remove("token");
        assert_eq!(
            AgentConfig::from_source(&m).unwrap_err().to_string(),
            "missing token: pass --token or set SUANLI_AGENT_TOKEN"
        );
        let bad = base().with("node", "Node_1");
        let err = AgentConfig::from_source(&bad).unwrap_err().to_string();
        assert!(err.contains("upper-case 'N'"), "{err}");
        let bad = base().with("kube_api", "kubernetes.local");
        let err = AgentConfig::from_source(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("kube_api = \"kubernetes.local\": must be"),
            "{err}"
        );
        let bad = base().with("seed", "many");
        assert!(
            AgentConfig::from_source(&bad)
                .unwrap_err()
                .to_string()
                .starts_with("seed = \"many\"")
        );
    }

    #[test]
    fn advertise_addr_is_checked_at_start_and_names_the_flag() {
        assert_eq!(advertise_addr(&base()), Ok(None));
        let given = advertise_addr(&base().with("advertise_addr", "[fd00::7]:2222"));
        assert_eq!(given, Ok(Some("[fd00::7]:2222".to_string())));
        for bad in ["node 7", "node:http", "http://node:80"] {
            let err = advertise_addr(&base().with("advertise_addr", bad))
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("--advertise-addr = "), "{err}");
        }
    }

    #[test]
    fn earlier_layers_win() {
        let flags = MapConfig::default().with("node", "from-flag");
        let layered = Layered(flags, base());
        assert_eq!(layered.get("node").as_deref(), Some("from-flag"));
        assert_eq!(layered.get("token").as_deref(), Some("t"));
    }
}
