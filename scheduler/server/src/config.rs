//! The scheduler's configuration file (TOML) and its defaults.
//!
//! ```toml
//! grpc_addr = "127.0.0.1:7070"
//! http_addr = "127.0.0.1:7080"
//! data_dir = "./suanli-data"
//! policy = "fgd"
//! heartbeat_timeout_ms = 15000
//!
//! [auth]
//! join_tokens = ["agent-secret"]
//! admin_tokens = ["admin-secret"]
//! [auth.tenants]
//! research = ["research-token"]
//! prod = ["prod-token"]
//!
//! # GPU quota per tenant and model, in whole GPUs; `other` covers models not listed.
//! [quotas.research]
//! H100 = { guaranteed = 32, max = 64 }
//! other = { guaranteed = 0, max = 8 }
//! # A queue of a tenant: its use counts against the queue's limits and the tenant's.
//! [quotas."research/urgent"]
//! H100 = { guaranteed = 8, max = 16 }
//!
//! # Higher-priority work and owed guarantees may stop running jobs.
//! [preemption]
//! enabled = true
//! min_runtime_s = 300
//! max_victims = 16
//!
//! # Domains' prices and the links between them, for the gang planner.
//! [[domains]]
//! cid = "cid:aws/us-east-1/a"
//! price_per_gpu_hour = 2.5
//! [[domain_links]]
//! a = "cid:aws/us-east-1/a"
//! b = "cid:gcp/us-central1/b"
//! bandwidth_gbps = 100
//! latency_ms = 20
//!
//! # The kube-scheduler extender (POST /extender/filter, ... on http_addr) and the API it
//! # binds pods through: "in-cluster" (the pod's service account) or a URL; "" for none.
//! [kubernetes]
//! api = "in-cluster"
//! reconcile_interval_s = 10
//! gpu_resource = "nvidia.com/gpu"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use suanli_engine::domain::{DomainCatalog, DomainInfo, DomainLink};
use suanli_engine::quota::{QuotaLimit, Quotas};
use suanli_engine::{Cid, GpuModel};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Placement policy for single replicas (`fgd`, `best-fit`, ...).
    pub policy: String,
    /// Seed for the policies that break ties at random.
    pub seed: u64,
    /// An agent silent for this long is lost; its jobs go back to pending.
    pub heartbeat_timeout_ms: u64,
    pub heartbeat_interval_ms: u32,
    pub telemetry_interval_ms: u32,
    /// How often a job may go back to pending after node loss before it fails.
    pub max_attempts: u32,
    /// `full` (fsync per commit) or `normal` (survives a killed process, not power loss).
    pub durability: String,
    pub auth: AuthConfig,
    /// Tenant (or `tenant/queue`) → model (or `other`) → limit in whole GPUs.
    pub quotas: BTreeMap<String, BTreeMap<String, QuotaGpus>>,
    pub preemption: PreemptionSettings,
    pub domains: Vec<DomainPrice>,
    pub domain_links: Vec<DomainLinkConfig>,
    pub kubernetes: KubernetesSettings,
    /// Time limits of the HTTP listener (`/metrics`, `/healthz`, the extender).
    pub http: HttpSettings,
    /// Time limits of the gRPC listener.
    pub grpc: GrpcSettings,
}

/// `[grpc]`: how long the gRPC listener waits on a client.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    /// A call must arrive whole (a unary request, a session's hello) and be answered within
    /// this long; streams that are answered may then run for as long as they are used.
    pub request_timeout_ms: u64,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        GrpcSettings {
            request_timeout_ms: 30_000,
        }
    }
}

/// `[http]`: how long the HTTP listener waits on a client before it hangs up.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// A connection must deliver a whole request head within this long of opening or of its
    /// previous answer, so it also closes idle keep-alive connections.
    pub header_read_timeout_ms: u64,
    /// A request body must arrive whole within this long of its head.
    pub body_read_timeout_ms: u64,
    /// An answer the client does not read for this long ends its connection.
    pub write_timeout_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout_ms: 30_000,
            body_read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
        }
    }
}

/// The Kubernetes side: where the API is, and how pods ask for GPUs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSettings {
    /// `""`: no API (the extender filters and prioritizes, but cannot bind);
    /// `"in-cluster"`: the service account of the pod the scheduler runs in; or a URL.
    pub api: String,
    /// How often pods bound by the scheduler are checked; ended pods' GPUs are freed.
    pub reconcile_interval_s: u64,
    /// The extended resource pods count whole GPUs in.
    pub gpu_resource: String,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        KubernetesSettings {
            api: String::new(),
            reconcile_interval_s: 10,
            gpu_resource: "nvidia.com/gpu".to_string(),
        }
    }
}

/// The largest quota, in GPUs, a config may set.
pub const MAX_QUOTA_GPUS: u64 = 1_000_000_000;

/// When running jobs may be stopped for others.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreemptionSettings {
    pub enabled: bool,
    /// A job runs at least this long before it may be preempted.
    pub min_runtime_s: u64,
    /// Most running jobs one pending job may stop.
    pub max_victims: usize,
}

impl Default for PreemptionSettings {
    fn default() -> Self {
        PreemptionSettings {
            enabled: true,
            min_runtime_s: 300,
            max_victims: 16,
        }
    }
}

/// A tenant's limit for one model, in whole GPUs.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaGpus {
    #[serde(default)]
    pub guaranteed: u64,
    /// No ceiling when absent.
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainPrice {
    pub cid: String,
    pub price_per_gpu_hour: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainLinkConfig {
    pub a: String,
    pub b: String,
    pub bandwidth_gbps: f64,
    #[serde(default)]
    pub latency_ms: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7080)),
            data_dir: PathBuf::from("./suanli-data"),
            policy: "fgd".to_string(),
            seed: 42,
            heartbeat_timeout_ms: 15_000,
            heartbeat_interval_ms: 2_000,
            telemetry_interval_ms: 5_000,
            max_attempts: 3,
            durability: "full".to_string(),
            auth: AuthConfig::default(),
            quotas: BTreeMap::new(),
            preemption: PreemptionSettings::default(),
            domains: Vec::new(),
            domain_links: Vec::new(),
            kubernetes: KubernetesSettings::default(),
            http: HttpSettings::default(),
            grpc: GrpcSettings::default(),
        }
    }
}

/// Who may call: agents prove themselves with a join token, users with their tenant's token,
/// operators with an admin token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub join_tokens: Vec<String>,
    pub admin_tokens: Vec<String>,
    /// Tenant name → its API tokens.
    pub tenants: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {field}: {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(path)?;
        config.quota_table(path)?;
        config.domain_catalog(path)?;
        Ok(config)
    }

    /// The `[quotas]` section as the engine's quota table.
    pub fn quota_table(&self, path: &Path) -> Result<Quotas, ConfigError> {
        let mut quotas = Quotas::new();
        for (scope, models) in &self.quotas {
            let (tenant, queue) = match scope.split_once('/') {
                Some((tenant, queue)) => (tenant, Some(queue)),
                None => (scope.as_str(), None),
            };
            for (model, limit) in models {
                let field = format!("quotas.{scope}.{model}");
                if tenant.is_empty() || queue.is_some_and(|q| q.is_empty() || q.contains('/')) {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        field: format!("quotas.{scope}"),
                        problem: "expected a tenant or tenant/queue".into(),
                    });
                }
                let invalid = |problem: String| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    field: field.clone(),
                    problem,
                };
                // Limits are kept in GPU-milli; a bound keeps that product in range.
                if let Some(big) = [Some(limit.guaranteed), limit.max]
                    .into_iter()
                    .flatten()
                    .find(|n| *n > MAX_QUOTA_GPUS)
                {
                    return Err(invalid(format!(
                        "{big} GPUs is more than the {MAX_QUOTA_GPUS} a quota may name"
                    )));
                }
                if let Some(max) = limit.max
                    && limit.guaranteed > max
                {
                    return Err(invalid(format!(
                        "guaranteed {} GPUs exceeds max {max}",
                        limit.guaranteed
                    )));
                }
                let engine_limit = QuotaLimit::gpus(limit.guaranteed, limit.max);
                match (queue, model.as_str()) {
                    (None, "other") => quotas.set_other_models(tenant, engine_limit),
                    (Some(queue), "other") => {
                        quotas.set_queue_other_models(tenant, queue, engine_limit)
                    }
                    (queue, _) => {
                        let parsed: GpuModel = model
                            .parse()
                            .map_err(|e| invalid(format!("not a GPU model name: {e}")))?;
                        match queue {
                            None => quotas.set(tenant, parsed, engine_limit),
                            Some(queue) => quotas.set_queue(tenant, queue, parsed, engine_limit),
                        }
                        .map_err(|e| invalid(e.to_string()))?;
                    }
                }
            }
        }
        Ok(quotas)
    }

    /// The `[[domains]]` and `[[domain_links]]` sections as the gang planner's catalog.
    pub fn domain_catalog(&self, path: &Path) -> Result<DomainCatalog, ConfigError> {
        let invalid = |field: String, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            problem,
        };
        let cid = |field: String, text: &str| -> Result<Cid, ConfigError> {
            text.parse::<Cid>()
                .map_err(|e| invalid(field, e.to_string()))
        };
        let domains = self
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Ok(DomainInfo {
                    cid: cid(format!("domains[{i}].cid"), &d.cid)?,
                    price_per_gpu_hour: d.price_per_gpu_hour,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let links = self
            .domain_links
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(DomainLink {
                    a: cid(format!("domain_links[{i}].a"), &l.a)?,
                    b: cid(format!("domain_links[{i}].b"), &l.b)?,
                    bandwidth_gbps: l.bandwidth_gbps,
                    latency_ms: l.latency_ms,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        // The engine names fields after its own lists; `links` here is `domain_links`.
        DomainCatalog::new(domains, links).map_err(|e| {
            let text = e.to_string().replacen("links[", "domain_links[", 1);
            match text.split_once(": ") {
                Some((field, problem)) => invalid(field.to_string(), problem.to_string()),
                None => invalid("domains".to_string(), text),
            }
        })
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field: field.to_string(),
            problem,
        };
        if !matches!(self.durability.as_str(), "full" | "normal") {
            return Err(invalid(
                "durability",
                format!("{:?} is neither \"full\" nor \"normal\"", self.durability),
            ));
        }
        if self.heartbeat_timeout_ms <= u64::from(self.heartbeat_interval_ms) {
            return Err(invalid(
                "heartbeat_timeout_ms",
                format!(
                    "{} must exceed heartbeat_interval_ms ({})",
                    self.heartbeat_timeout_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        let k8s = &self.kubernetes;
        if !(k8s.api.is_empty()
            || k8s.api == "in-cluster"
            || k8s.api.starts_with("http://")
            || k8s.api.starts_with("https://"))
        {
            return Err(invalid(
                "kubernetes.api",
                format!(
                    "{:?} is not \"\", \"in-cluster\" or an http(s) URL",
                    k8s.api
                ),
            ));
        }
        if !(1..=86_400).contains(&k8s.reconcile_interval_s) {
            return Err(invalid(
                "kubernetes.reconcile_interval_s",
                format!("{} is not within 1..=86400", k8s.reconcile_interval_s),
            ));
        }
        if k8s.gpu_resource.trim().is_empty() {
            return Err(invalid(
                "kubernetes.gpu_resource",
                "must name an extended resource, e.g. nvidia.com/gpu".into(),
            ));
        }
        let mut seen = BTreeMap::new();
        let all = self
            .auth
            .join_tokens
            .iter()
            .map(|t| ("auth.join_tokens".to_string(), t))
            .chain(
                self.auth
                    .admin_tokens
                    .iter()
                    .map(|t| ("auth.admin_tokens".to_string(), t)),
            )
            .chain(self.auth.tenants.iter().flat_map(|(tenant, tokens)| {
                tokens
                    .iter()
                    .map(move |t| (format!("auth.tenants.{tenant}"), t))
            }));
        for (field, token) in all {
            if token.len() < 8 {
                return Err(invalid(
                    &field,
                    "tokens must be at least 8 characters".into(),
                ));
            }
            if let Some(first) = seen.insert(token.clone(), field.clone()) {
                return Err(invalid(
                    &field,
                    format!("a token is also used in {first}; each token names one identity"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(Path::new("suanli.toml"), text)
    }

    #[test]
    fn defaults_match_the_design() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:7070");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:7080");
        assert_eq!(config.data_dir, PathBuf::from("./suanli-data"));
    }

    #[test]
    fn full_config_parses() {
        let config = parse(
            r#"
            policy = "best-fit"
            [auth]
            join_tokens = ["agent-secret"]
            admin_tokens = ["admin-secret"]
            [auth.tenants]
            research = ["research-token"]
            "#,
        )
        .expect("valid");
        assert_eq!(config.auth.tenants["research"], ["research-token"]);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let err = parse("grpc_port = 1").unwrap_err().to_string();
        assert!(err.starts_with("config suanli.toml: "), "{err}");
        assert!(err.contains("unknown field `grpc_port`"), "{err}");
        let err = parse("[auth]\nadmin_tokens = [\"short\"]")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config suanli.toml: auth.admin_tokens: tokens must be at least 8 characters"
        );
        let err =
            parse("[auth]\nadmin_tokens = [\"same-token\"]\n[auth.tenants]\nt = [\"same-token\"]")
                .unwrap_err()
                .to_string();
        assert_eq!(
            err,
            "config suanli.toml: auth.tenants.t: a token is also used in auth.admin_tokens; \
             each token names one identity"
        );
    }

    #[test]
    fn quotas_and_domains_become_engine_tables() {
        let config = parse(
            r#"
                        [quotas.research]
            H100 = { guaranteed = 32, max = 64 }
            other = { max = 8 }
            [quotas."research/urgent"]
            H100 = { guaranteed = 8, max = 16 }
            [preemption]
            min_runtime_s = 60
            [[domains]]
            cid = "cid:aws/us-east-1/a"
            price_per_gpu_hour = 2.5
            [[domains]]
            cid = "cid:gcp/us-central1/b"
            price_per_gpu_hour = 3.0
            [[domain_links]]
            a = "cid:aws/us-east-1/a"
            b = "cid:gcp/us-central1/b"
            bandwidth_gbps = 100
            "#,
        )
        .expect("valid");
        let path = Path::new("suanli.toml");
        let quotas = config.quota_table(path).expect("valid quotas");
        let h100: GpuModel = "H100".parse().expect("model");
        let a100: GpuModel = "A100".parse().expect("model");
        assert_eq!(
            quotas.limit("research", &h100),
            Some(QuotaLimit::gpus(32, Some(64)))
        );
        assert_eq!(
            quotas.limit("research", &a100),
            Some(QuotaLimit::gpus(0, Some(8))),
            "`other` covers unlisted models"
        );
        assert_eq!(quotas.limit("prod", &h100), None);
        assert_eq!(
            quotas.queue_limit("research", "urgent", &h100),
            Some(QuotaLimit::gpus(8, Some(16)))
        );
        assert!(config.preemption.enabled, "on unless turned off");
        assert_eq!(config.preemption.min_runtime_s, 60);
        let catalog = config.domain_catalog(path).expect("valid catalog");
        assert_eq!(catalog.domains().len(), 2);
    }

    #[test]
    fn bad_quotas_and_domains_name_the_field() {
        let err = parse("[quotas.research]\nH100 = { guaranteed = 9, max = 8 }")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config suanli.toml: quotas.research.H100: guaranteed 9 GPUs exceeds max 8"
        );
        let err = parse("[quotas.research]\n\"A100 80GB\" = { max = 8 }")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config suanli.toml: quotas.research.A100 80GB: not a GPU model name"),
            "{err}"
        );
        let err = parse("[quotas.research]\nH100 = { max = 18446744073709551615 }")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config suanli.toml: quotas.research.H100: 18446744073709551615 GPUs is more than \
             the 1000000000 a quota may name"
        );
        let err = parse("[quotas.\"research/\"]\nH100 = { max = 8 }")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config suanli.toml: quotas.research/: expected a tenant or tenant/queue"
        );
        let err = parse("[[domains]]\ncid = \"cid:aws/us-east-1\"\nprice_per_gpu_hour = 1.0")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config suanli.toml: domains[0]: "), "{err}");
        let err =
            parse("[[domain_links]]\na = \"cid:a/b/c\"\nb = \"cid:a/b/d\"\nbandwidth_gbps = -1")
                .unwrap_err()
                .to_string();
        assert_eq!(
            err,
            "config suanli.toml: domain_links[0].bandwidth_gbps: must be a finite number ≥ 0, got -1"
        );
    }
}
