//! Labels on this machine's Kubernetes Node, so pods can select by what the agent found
//! (`nodeSelector: {suanli.io/gpu-model: H100}`) and operators can see which nodes Suanli
//! manages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use suanli_engine::inventory::{NodeInventory, PortState};
use tracing::info;

/// Every label the agent owns; any it does not set now is removed.
pub const LABELS: [&str; 11] = [
    "suanli.io/agent",
    "suanli.io/provider",
    "suanli.io/region",
    "suanli.io/domain",
    "suanli.io/gpu-model",
    "suanli.io/gpus",
    "suanli.io/mig",
    "suanli.io/nvlink",
    "suanli.io/rdma",
    "suanli.io/leaf",
    "suanli.io/spine",
];

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("kube_api = {0:?}: expected \"in-cluster\" or an http(s) URL")]
    BadSetting(String),
    #[error("Kubernetes API configuration: {0}")]
    Config(String),
    #[error("labelling Node {node}: {source}")]
    Patch { node: String, source: kube::Error },
}

/// A label value as Kubernetes allows it: at most 63 of `A-Z a-z 0-9 - _ .`, starting and
/// ending with a letter or digit. `None` when nothing of `raw` is left.
pub fn label_value(raw: &str) -> Option<String> {
    let kept: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = kept.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// What the labels say of `inventory`: each owned label with its value, or `None` to remove
/// it.
pub fn node_labels(inventory: &NodeInventory) -> BTreeMap<&'static str, Option<String>> {
    let mut labels: BTreeMap<&'static str, Option<String>> =
        LABELS.iter().map(|l| (*l, None)).collect();
    let mut set = |key: &'static str, value: Option<String>| {
        labels.insert(key, value.as_deref().and_then(label_value));
    };
    let segments = inventory.cid.segments();
    set("suanli.io/agent", Some("true".into()));
    for (i, key) in ["suanli.io/provider", "suanli.io/region", "suanli.io/domain"]
        .into_iter()
        .enumerate()
    {
        set(key, segments.get(i).cloned());
    }
    let mut models: Vec<&str> = inventory.gpus.iter().map(|g| g.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    set(
        "suanli.io/gpu-model",
        match models.as_slice() {
            [] => None,
            [one] => Some((*one).to_string()),
            _ => Some("mixed".into()),
        },
    );
    set("suanli.io/gpus", Some(inventory.gpus.len().to_string()));
    let any = |yes: bool| Some(yes.to_string());
    set(
        "suanli.io/mig",
        any(inventory.gpus.iter().any(|g| g.mig.enabled)),
    );
    set(
        "suanli.io/nvlink",
        any(inventory.gpus.iter().any(|g| !g.nvlinks.is_empty())),
    );
    set(
        "suanli.io/rdma",
        any(inventory
            .nics
            .iter()
            .any(|n| n.ports.iter().any(|p| p.state == PortState::Active))),
    );
    set("suanli.io/leaf", Some(inventory.fabric.leaf.clone()));
    set("suanli.io/spine", Some(inventory.fabric.spine.clone()));
    labels
}

/// Keeps the labels of one Kubernetes Node up to date.
pub struct NodeLabeler {
    client: kube::Client,
    node: String,
    /// What was last written, so an unchanged inventory costs no API call.
    applied: Option<BTreeMap<&'static str, Option<String>>>,
}

impl std::fmt::Debug for NodeLabeler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLabeler")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeLabeler {
    /// `setting`: `in-cluster` (the pod's service account) or the API's URL. Must be called
    /// within a tokio runtime.
    pub fn connect(setting: &str, node: &str) -> Result<NodeLabeler, LabelError> {
        let config = if setting == "in-cluster" {
            kube::Config::incluster().map_err(|e| LabelError::Config(e.to_string()))?
        } else {
            let uri: tonic::codegen::http::Uri = setting
                .parse()
                .map_err(|_| LabelError::BadSetting(setting.to_string()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(LabelError::BadSetting(setting.to_string()));
            }
            kube::Config::new(uri)
        };
        let client =
            kube::Client::try_from(config).map_err(|e| LabelError::Config(e.to_string()))?;
        Ok(NodeLabeler {
            client,
            node: node.to_string(),
            applied: None,
        })
    }

    /// Writes the labels for `inventory` unless they are what was last written. Returns
    /// whether it wrote.
    pub async fn apply(&mut self, inventory: &NodeInventory) -> Result<bool, LabelError> {
        let labels = node_labels(inventory);
        if self.applied.as_ref() == Some(&labels) {
            return Ok(false);
        }
        // A merge patch sets the values given and removes the labels given as null.
        let patch = serde_json::json!({ "metadata": { "labels": &labels } });
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| LabelError::Patch {
                node: self.node.clone(),
                source,
            })?;
        info!(node = %self.node, "Labelled the Kubernetes Node.");
        self.applied = Some(labels);
        Ok(true)
    }
}
