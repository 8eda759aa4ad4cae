//! Who is calling: agents (join token), tenants (API token), operators (admin token).

use std::collections::HashMap;

use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::config::AuthConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// May register agents and hold agent sessions.
    Agent,
    /// May act on its own tenant's jobs.
    Tenant(String),
    /// May do anything, including cordon and drain.
    Admin,
}

impl Identity {
    /// The tenant whose jobs this caller may see; `None` means every tenant.
    pub fn tenant_scope(&self) -> Option<&str> {
        match self {
            Identity::Tenant(t) => Some(t),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Identity::Agent => "agent".to_string(),
            Identity::Tenant(t) => format!("tenant {t}"),
            Identity::Admin => "admin".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Authenticator {
    tokens: HashMap<String, Identity>,
    /// No tokens configured: every caller is an admin (local development and demos).
    open: bool,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut tokens = HashMap::new();
        for t in &config.join_tokens {
            tokens.insert(t.clone(), Identity::Agent);
        }
        for t in &config.admin_tokens {
            tokens.insert(t.clone(), Identity::Admin);
        }
        for (tenant, list) in &config.tenants {
            for t in list {
                tokens.insert(t.clone(), Identity::Tenant(tenant.clone()));
            }
        }
        Authenticator {
            open: tokens.is_empty(),
            tokens,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Reads `authorization: Bearer <token>`. Errors never echo the token.
    pub fn identify(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        if self.open {
            return Ok(Identity::Admin);
        }
        let Some(value) = metadata.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing token: send `authorization: Bearer <token>` metadata",
            ));
        };
        let text = value.to_str().map_err(|_| {
            Status::unauthenticated("authorization metadata is not printable ASCII")
        })?;
        let Some(token) = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
        else {
            return Err(Status::unauthenticated(
                "authorization metadata must be `Bearer <token>`",
            ));
        };
        self.tokens.get(token.trim()).cloned().ok_or_else(|| {
            tracing::warn!("Rejected a call with an unknown token.");
            Status::unauthenticated("unknown token")
        })
    }

    /// A user call: a tenant or an admin, not an agent.
    pub fn user(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        match self.identify(metadata)? {
            Identity::Agent => Err(Status::permission_denied(
                "agent join tokens cannot call the job or cluster API",
            )),
            other => Ok(other),
        }
    }

    pub fn admin(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.identify(metadata)? {
            Identity::Admin => Ok(()),
            other => Err(Status::permission_denied(format!(
                "{} may not do this: it needs an admin token",
                other.describe()
            ))),
        }
    }

    /// An agent call: the join token, or an admin (who may also re-register any node).
    pub fn agent(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        match self.identify(metadata)? {
            who @ (Identity::Agent | Identity::Admin) => Ok(who),
            other => Err(Status::permission_denied(format!(
                "{} may not register agents: it needs a join token",
                other.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            join_tokens: vec!["join-token".into()],
            admin_tokens: vec!["admin-token".into()],
            tenants: BTreeMap::from([("research".to_string(), vec!["research-token".into()])]),
        })
    }

    fn md(value: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert("authorization", value.parse().expect("ascii"));
        md
    }

    #[test]
    fn tokens_map_to_identities() {
        let a = auth();
        assert_eq!(
            a.identify(&md("Bearer research-token")).expect("known"),
            Identity::Tenant("research".into())
        );
        assert_eq!(
            a.identify(&md("Bearer admin-token")).expect("known"),
            Identity::Admin
        );
        assert!(a.agent(&md("Bearer join-token")).is_ok());
    }

    #[test]
    fn bad_tokens_are_unauthenticated_without_echo() {
        let a = auth();
        let err = a.identify(&md("Bearer s3cret-guess")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(err.message(), "unknown token");
        let err = a.identify(&MetadataMap::new()).unwrap_err();
        assert_eq!(
            err.message(),
            "missing token: send `authorization: Bearer <token>` metadata"
        );
        let err = a.identify(&md("Basic abc")).unwrap_err();
        assert_eq!(
            err.message(),
            "authorization metadata must be `Bearer <token>`"
        );
    }

    #[test]
    fn roles_are_enforced() {
        let a = auth();
        let err = a.admin(&md("Bearer research-token")).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "tenant research may not do this: it needs an admin token"
        );
        assert!(a.user(&md("Bearer join-token")).is_err());
    }

    #[test]
    fn no_tokens_means_open() {
        let a = Authenticator::new(&AuthConfig::default());
        assert!(a.is_open());
        assert_eq!(
            a.identify(&MetadataMap::new()).expect("open"),
            Identity::Admin
        );
    }
}
