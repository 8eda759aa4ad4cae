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
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
        Ok(config)
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
}
