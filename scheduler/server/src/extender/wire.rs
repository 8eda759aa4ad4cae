//! The extender's request and reply types, `k8s.io/kube-scheduler/extender/v1` as Go
//! marshals it: PascalCase field names, empty slices and strings sent as `null`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::request::NodeSeq;
use crate::placement::PodRef;

/// `ExtenderArgs`: the pod and its candidate nodes, as full objects or (with
/// `nodeCacheCapable`) as names; at most [`MAX_NODES`](super::MAX_NODES) of either.
#[derive(Debug, Clone, Default)]
pub struct ExtenderArgs {
    pub pod: Option<Pod>,
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
}

/// A `v1.NodeList`, with each Node kept as the JSON it was sent as: a filtered list echoes it
/// unchanged, and holding it costs no more than its text.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeList {
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
    pub items: Vec<Box<RawValue>>,
}

impl<'de> Deserialize<'de> for NodeList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = NodeList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a NodeList")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeList, A::Error> {
                let mut list = NodeList::default();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "items" {
                        list.items = map
                            .next_value::<Option<NodeSeq<Box<RawValue>>>>()?
                            .map(|n| n.0)
                            .unwrap_or_default();
                    } else {
                        let value = map.next_value()?;
                        list.rest.insert(key, value);
                    }
                }
                Ok(list)
            }
        }
        d.deserialize_map(ListVisitor)
    }
}

impl PartialEq for NodeList {
    fn eq(&self, other: &Self) -> bool {
        self.rest == other.rest
            && self.items.len() == other.items.len()
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|(a, b)| a.get() == b.get())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult {
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
    pub failed_nodes: BTreeMap<String, String>,
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    pub host: String,
    pub score: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ExtenderBindingArgs {
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub node: String,
}

impl ExtenderBindingArgs {
    /// The pod to bind.
    pub fn pod(&self) -> PodRef {
        PodRef {
            namespace: self.pod_namespace.clone(),
            name: self.pod_name.clone(),
            uid: self.pod_uid.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    pub error: String,
}

#[derive(Debug, Clone, Default)]
pub struct ExtenderPreemptionArgs {
    pub pod: Option<Pod>,
    /// Used when the extender is not node-cache capable.
    pub node_name_to_victims: Option<BTreeMap<String, Victims>>,
    pub node_name_to_meta_victims: Option<BTreeMap<String, MetaVictims>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Victims {
    #[serde(default, deserialize_with = "null_as_default")]
    pub pods: Vec<VictimPod>,
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

/// A victim as kube-scheduler sends it, a whole Pod, of which Suanli needs only the UID: the
/// rest is skipped, not kept.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VictimPod {
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: VictimMetadata,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct VictimMetadata {
    #[serde(default)]
    pub uid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetaVictims {
    #[serde(default, deserialize_with = "null_as_default")]
    pub pods: Vec<MetaPod>,
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaPod {
    #[serde(rename = "UID")]
    pub uid: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderPreemptionResult {
    pub node_name_to_meta_victims: BTreeMap<String, MetaVictims>,
}

/// Go sends an empty slice or string as `null`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A reply as JSON.
pub(super) fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}
