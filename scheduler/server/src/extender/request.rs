//! Reading a request body into its wire type without a tree of `serde_json::Value`s, which
//! would take several times the body's size: top-level fields are matched as Go matches
//! them, kept as raw JSON and parsed one by one, and lists of nodes stop being kept past
//! [`MAX_NODES`].

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

use k8s_openapi::api::core::v1::Pod;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::ExtenderSettings;
use super::limits::MAX_NODES;
use super::pod::{PodError, PodJob, pod_job};
use super::wire::{ExtenderArgs, ExtenderBindingArgs, ExtenderPreemptionArgs};

/// What is wrong with a request, as kube-scheduler is told (after the verb).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not a JSON object")]
    NotAnObject,
    #[error("request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    /// A field that does not parse as its type, at `at` (`Pod.spec.containers[0]`).
    #[error("request body field {at}: {}", without_position(.problem))]
    Field {
        at: String,
        problem: serde_json::Error,
    },
    #[error("request body field {0}: missing")]
    MissingField(&'static str),
    #[error("Nodes.items[{index}].metadata.name: missing")]
    UnnamedNode { index: usize },
    #[error("request has no Pod")]
    NoPod,
    /// The pod cannot be read as a job.
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// serde_json's message without its position, which counts within a field's text rather
/// than the body.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&position) {
        Some(problem) => problem.to_string(),
        None => text,
    }
}

/// The field names of each request type, as the Go structs spell them.
const ARGS_FIELDS: &[&str] = &["Pod", "Nodes", "NodeNames"];
const BINDING_FIELDS: &[&str] = &["PodName", "PodNamespace", "PodUID", "Node"];
const PREEMPTION_FIELDS: &[&str] = &["Pod", "NodeNameToVictims", "NodeNameToMetaVictims"];
const VICTIMS_FIELDS: &[&str] = &["Pods", "NumPDBViolations"];

impl ExtenderArgs {
    pub(super) fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let fields = Fields::parse(body, ARGS_FIELDS)?;
        Ok(ExtenderArgs {
            pod: fields.get("Pod")?,
            nodes: fields.get("Nodes")?,
            node_names: fields.get::<NodeSeq<String>>("NodeNames")?.map(|n| n.0),
        })
    }
}

impl ExtenderBindingArgs {
    pub(super) fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let fields = Fields::parse(body, BINDING_FIELDS)?;
        let text = |name| Ok::<_, RequestError>(fields.get::<String>(name)?.unwrap_or_default());
        Ok(ExtenderBindingArgs {
            pod_name: text("PodName")?,
            pod_namespace: text("PodNamespace")?,
            pod_uid: text("PodUID")?,
            node: text("Node")?,
        })
    }
}

impl ExtenderPreemptionArgs {
    pub(super) fn parse(body: &[u8]) -> Result<Self, RequestError> {
        let fields = Fields::parse(body, PREEMPTION_FIELDS)?;
        Ok(ExtenderPreemptionArgs {
            pod: fields.get("Pod")?,
            node_name_to_victims: fields.victims("NodeNameToVictims", false)?,
            node_name_to_meta_victims: fields.victims("NodeNameToMetaVictims", true)?,
        })
    }
}

/// A request body's top-level fields under their Go names, each kept as the raw JSON it was
/// sent as (borrowed from the body) until it is parsed into its type.
struct Fields<'a> {
    raw: HashMap<&'static str, &'a RawValue>,
}

impl<'a> Fields<'a> {
    fn parse(body: &'a [u8], names: &'static [&'static str]) -> Result<Self, RequestError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let raw = TopLevel(names)
            .deserialize(&mut de)
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => RequestError::NotAnObject,
                _ => RequestError::NotJson(e),
            })?;
        Ok(Fields { raw })
    }

    /// The field `name`, `None` when absent or `null`.
    fn get<T: Deserialize<'a>>(&self, name: &'static str) -> Result<Option<T>, RequestError> {
        let Some(raw) = self.raw.get(name) else {
            return Ok(None);
        };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        serde_path_to_error::deserialize::<_, Option<T>>(&mut de).map_err(|e| {
            let at = field_path(name, &e.path().to_string());
            RequestError::Field {
                at,
                problem: e.into_inner(),
            }
        })
    }

    /// A preemption's victims by node. Go matches the victims' field names (and, for
    /// `meta`, their pods') regardless of case, so each node's victims go through a
    /// `Value` to be renamed; one node's at a time.
    fn victims<T: DeserializeOwned>(
        &self,
        name: &'static str,
        meta: bool,
    ) -> Result<Option<BTreeMap<String, T>>, RequestError> {
        let Some(by_node) = self.get::<NodeMap<&'a RawValue>>(name)? else {
            return Ok(None);
        };
        let mut victims = BTreeMap::new();
        for (node, raw) in by_node.0 {
            let at = format!("{name}.{node}");
            let mut value: serde_json::Value =
                serde_json::from_str(raw.get()).map_err(|problem| RequestError::Field {
                    at: at.clone(),
                    problem,
                })?;
            canonical_keys(&mut value, VICTIMS_FIELDS);
            if meta && let Some(pods) = value.get_mut("Pods").and_then(|p| p.as_array_mut()) {
                for pod in pods {
                    canonical_keys(pod, &["UID"]);
                }
            }
            let parsed = serde_path_to_error::deserialize(value).map_err(|e| {
                let at = field_path(&at, &e.path().to_string());
                RequestError::Field {
                    at,
                    problem: e.into_inner(),
                }
            })?;
            victims.insert(node, parsed);
        }
        Ok(Some(victims))
    }
}

/// `field` followed by serde_path_to_error's `path` within it (`.` for the field itself).
fn field_path(field: &str, path: &str) -> String {
    match path {
        "." => field.to_string(),
        p if p.starts_with('[') => format!("{field}{p}"),
        p => format!("{field}.{p}"),
    }
}

/// Reads a JSON object's fields that `names` name (matched as Go matches them, see
/// [`canonical_name`]) as raw JSON, and skips the rest without keeping them.
struct TopLevel(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for TopLevel {
    type Value = HashMap<&'static str, &'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel {
    type Value = HashMap<&'static str, &'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = HashMap::new();
        while let Some(key) = map.next_key::<String>()? {
            match canonical_name(&key, self.0) {
                // Like Go's decoder, a later key for the same field wins.
                Some(name) => {
                    fields.insert(name, map.next_value::<&'de RawValue>()?);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// The name in `names` that `key` stands for: the same name, else one that differs only in
/// case, as Go's decoder matches field names. Older kube-schedulers send lower-case names
/// (`pod`, `nodenames`) and `nodeToVictims` for `NodeNameToVictims`.
fn canonical_name(key: &str, names: &'static [&'static str]) -> Option<&'static str> {
    names
        .iter()
        .find(|n| **n == key)
        .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(key)))
        .copied()
        .or_else(|| {
            (key.eq_ignore_ascii_case("nodetovictims") && names.contains(&"NodeNameToVictims"))
                .then_some("NodeNameToVictims")
        })
}

/// Renames an object's keys to `names` regardless of case (see [`canonical_name`]).
fn canonical_keys(value: &mut serde_json::Value, names: &'static [&'static str]) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        if let Some(name) = canonical_name(&key, names).filter(|n| *n != key)
            && let Some(v) = object.remove(&key)
        {
            object.insert(name.to_string(), v);
        }
    }
}

/// The error for a request naming more than [`MAX_NODES`] nodes.
fn too_many_nodes(count: usize) -> String {
    format!("{count} nodes, more than the limit of {MAX_NODES} one request may name")
}

/// A list of at most [`MAX_NODES`] nodes; past it, reading counts the rest without keeping
/// them and fails naming the count and the limit.
#[derive(Debug)]
pub(super) struct NodeSeq<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NodeSeq<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SeqVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
            type Value = NodeSeq<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of nodes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut nodes = Vec::new();
                while nodes.len() < MAX_NODES {
                    match seq.next_element()? {
                        Some(node) => nodes.push(node),
                        None => return Ok(NodeSeq(nodes)),
                    }
                }
                let mut count = nodes.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
                if count > MAX_NODES {
                    return Err(de::Error::custom(too_many_nodes(count)));
                }
                Ok(NodeSeq(nodes))
            }
        }
        d.deserialize_seq(SeqVisitor(PhantomData))
    }
}

/// A map from node name of at most [`MAX_NODES`] nodes, like [`NodeSeq`].
#[derive(Debug)]
struct NodeMap<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NodeMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = NodeMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object keyed by node name")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut nodes = Vec::new();
                while nodes.len() < MAX_NODES {
                    match map.next_entry()? {
                        Some(entry) => nodes.push(entry),
                        None => return Ok(NodeMap(nodes)),
                    }
                }
                let mut count = nodes.len();
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    count += 1;
                }
                if count > MAX_NODES {
                    return Err(de::Error::custom(too_many_nodes(count)));
                }
                Ok(NodeMap(nodes))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// The pod of a request as a job (`None`: it asks for no GPU).
pub(super) fn requested_job(
    pod: Option<&Pod>,
    settings: &ExtenderSettings,
) -> Result<Option<PodJob>, RequestError> {
    let pod = pod.ok_or(RequestError::NoPod)?;
    Ok(pod_job(pod, settings)?)
}
