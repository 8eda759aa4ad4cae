//! The kube-scheduler HTTP extender: `POST /extender/{filter,prioritize,bind,preempt}`.
//!
//! The wire format is `k8s.io/kube-scheduler/extender/v1`: PascalCase field names, absent
//! fields sent as `null`, and any status but 200 taken as an error. A body that does not
//! parse is answered with 400 and a message naming the field and position, in the reply's
//! `Error` field where the reply type has one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::{GpuModel, JobSpec, JobState, MigProfile};
use tracing::{info, warn};

use crate::core::{Command, CoreError, CoreHandle, NodeVerdict};
use crate::kubernetes::{KubeApi, POD_ANNOTATION_PREFIX};
use crate::placement::PodRef;

/// Highest score the extender API allows (`extenderv1.MaxExtenderPriority`).
pub const MAX_PRIORITY: i64 = 10;
/// A node list of a large cluster with full Node objects runs to megabytes.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How pods ask for GPUs.
#[derive(Debug, Clone)]
pub struct ExtenderSettings {
    /// The extended resource counted as whole GPUs.
    pub gpu_resource: String,
}

impl Default for ExtenderSettings {
    fn default() -> Self {
        ExtenderSettings {
            gpu_resource: "nvidia.com/gpu".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtenderState {
    pub core: CoreHandle,
    pub settings: Arc<ExtenderSettings>,
    /// `None` when no Kubernetes API is configured: filter and prioritize still answer,
    /// bind says what is missing.
    pub kube: Option<KubeApi>,
    pub counters: Arc<ExtenderCounters>,
}

pub fn router(state: ExtenderState) -> Router {
    Router::new()
        .route(
            "/extender/filter",
            post(|s: State<ExtenderState>, b: Bytes| counted(Verb::Filter, s, b, filter)),
        )
        .route(
            "/extender/prioritize",
            post(|s: State<ExtenderState>, b: Bytes| counted(Verb::Prioritize, s, b, prioritize)),
        )
        .route(
            "/extender/bind",
            post(|s: State<ExtenderState>, b: Bytes| counted(Verb::Bind, s, b, bind)),
        )
        .route(
            "/extender/preempt",
            post(|s: State<ExtenderState>, b: Bytes| counted(Verb::Preempt, s, b, preempt)),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The extender's verbs, for counting.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Filter,
    Prioritize,
    Bind,
    Preempt,
}

impl Verb {
    const ALL: [Verb; 4] = [Verb::Filter, Verb::Prioritize, Verb::Bind, Verb::Preempt];

    fn name(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
            Verb::Bind => "bind",
            Verb::Preempt => "preempt",
        }
    }
}

/// How a call ended: answered, answered with an error for kube-scheduler, or refused as
/// malformed.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Error,
    BadRequest,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Error, Outcome::BadRequest];

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::BadRequest => "bad_request",
        }
    }

    fn of(response: &Response) -> Outcome {
        if response.status() == StatusCode::BAD_REQUEST {
            Outcome::BadRequest
        } else if !response.status().is_success()
            || response.extensions().get::<AnsweredWithError>().is_some()
        {
            Outcome::Error
        } else {
            Outcome::Ok
        }
    }
}

/// Marks a 200 answer whose `Error` field is set.
#[derive(Debug, Clone, Copy)]
struct AnsweredWithError;

/// Calls per verb and outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExtenderCounters {
    counts: [[std::sync::atomic::AtomicU64; Outcome::ALL.len()]; Verb::ALL.len()],
}

impl ExtenderCounters {
    fn count(&self, verb: Verb, response: &Response) {
        let outcome = Outcome::of(response);
        self.counts[verb as usize][outcome as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prometheus text for the counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        out.push_str("# HELP suanli_extender_requests_total kube-scheduler extender calls, by verb and outcome.\n# TYPE suanli_extender_requests_total counter\n");
        for verb in Verb::ALL {
            for outcome in Outcome::ALL {
                let n = self.counts[verb as usize][outcome as usize]
                    .load(std::sync::atomic::Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "suanli_extender_requests_total{{verb=\"{}\",outcome=\"{}\"}} {n}",
                    verb.name(),
                    outcome.name()
                );
            }
        }
    }
}

async fn counted<F, Fut>(
    verb: Verb,
    state: State<ExtenderState>,
    body: Bytes,
    handler: F,
) -> Response
where
    F: FnOnce(State<ExtenderState>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let counters = state.counters.clone();
    let response = handler(state, body).await;
    counters.count(verb, &response);
    response
}

// ---- wire types (k8s.io/kube-scheduler/extender/v1) ------------------------------------

/// `ExtenderArgs`: the pod and its candidate nodes, as full objects or (with
/// `nodeCacheCapable`) as names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs {
    pub pod: Option<Pod>,
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
}

/// A `v1.NodeList`, with each Node kept as sent so a filtered list echoes it unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub items: Vec<serde_json::Value>,
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

impl PartialEq for NodeList {
    fn eq(&self, other: &Self) -> bool {
        self.rest == other.rest && self.items == other.items
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority {
    pub host: String,
    pub score: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingArgs {
    #[serde(default, deserialize_with = "null_as_default")]
    pub pod_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub pod_namespace: String,
    #[serde(rename = "PodUID", default, deserialize_with = "null_as_default")]
    pub pod_uid: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub node: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    pub error: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
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
    pub pods: Vec<Pod>,
    #[serde(default, rename = "NumPDBViolations")]
    pub num_pdb_violations: i64,
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

// ---- pods as jobs -------------------------------------------------------------------------

/// A pod's GPU demand, or `None` for a pod that asks for no GPU (Suanli has no say on it).
pub fn pod_job(
    pod: &Pod,
    settings: &ExtenderSettings,
) -> Result<Option<(PodRef, JobSpec)>, String> {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    if name.is_empty() {
        return Err("Pod.metadata.name: missing".into());
    }
    let pod_ref = PodRef {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: meta.uid.clone().unwrap_or_default(),
    };
    let empty = BTreeMap::new();
    let notes = meta.annotations.as_ref().unwrap_or(&empty);
    let note = |key: &str| {
        notes
            .get(&format!("{POD_ANNOTATION_PREFIX}{key}"))
            .map(|v| v.trim())
    };
    let at = |key: &str| format!("Pod.metadata.annotations[{POD_ANNOTATION_PREFIX}{key}]");
    let spec = pod.spec.as_ref().ok_or("Pod.spec: missing")?;
    let (cpu_milli, memory_mib, gpus) = pod_resources(
        &spec.containers,
        spec.init_containers.as_deref().unwrap_or(&[]),
        &settings.gpu_resource,
    )?;
    let milli = note("gpu-milli")
        .map(|v| parse_number::<u32>(v).map_err(|e| format!("{}: {e}", at("gpu-milli"))))
        .transpose()?;
    let memory = note("gpu-memory-mib")
        .map(|v| parse_number::<u64>(v).map_err(|e| format!("{}: {e}", at("gpu-memory-mib"))))
        .transpose()?;
    let profile = note("mig-profile")
        .map(|v| {
            v.parse::<MigProfile>()
                .map_err(|e| format!("{}: {e}", at("mig-profile")))
        })
        .transpose()?;
    let models = match note("gpu-model") {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.parse::<GpuModel>()
                    .map_err(|e| format!("{}: {e}", at("gpu-model")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let policy = match (profile, milli.is_some() || memory.is_some()) {
        (Some(_), true) => {
            return Err(format!(
                "{}: a MIG slice cannot also ask for a share (gpu-milli, gpu-memory-mib)",
                at("mig-profile")
            ));
        }
        (Some(profile), false) => Some(GpuPolicy::Mig {
            profile,
            count: gpus.max(1),
        }),
        (None, true) => {
            if gpus > 1 {
                return Err(format!(
                    "{}: a share is of one GPU, but the pod asks for {gpus} {}",
                    at("gpu-milli"),
                    settings.gpu_resource
                ));
            }
            Some(GpuPolicy::Shared {
                milli,
                memory_mib: memory,
            })
        }
        (None, false) if gpus > 0 => Some(GpuPolicy::Exclusive { count: gpus }),
        (None, false) => None,
    };
    let Some(policy) = policy else {
        return Ok(None);
    };
    let mut job = JobSpec::new(name, JobKind::Inference);
    job.gpu = Some(GpuRequest { policy, models });
    job.resources.cpu_milli = cpu_milli;
    job.resources.memory_mib = memory_mib;
    job.tenant = note("tenant").map_or(namespace, str::to_string);
    // Suanli cannot stop a pod (Kubernetes evicts it), so a pod is never a victim and, like
    // any non-preemptible job, stays within its tenant's guarantee.
    job.preemptible = false;
    if let Some(queue) = note("queue") {
        job.queue = queue.to_string();
    }
    job.priority = match note("priority") {
        Some(p) => parse_number::<i32>(p).map_err(|e| format!("{}: {e}", at("priority")))?,
        None => spec.priority.unwrap_or(0),
    };
    job.validate()
        .map_err(|e| format!("Pod {}: as a Suanli job, {e}", pod_ref))?;
    Ok(Some((pod_ref, job)))
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| format!("{text:?} is not a valid number: {e}"))
}

/// The pod's effective CPU (milli) and memory (MiB) requests, and its whole-GPU count, as
/// Kubernetes computes them: the larger of the containers' sum and any one init container.
fn pod_resources(
    containers: &[Container],
    init: &[Container],
    gpu_resource: &str,
) -> Result<(u64, u64, u32), String> {
    let mut sum = (0u64, 0u64, 0u32);
    for (i, c) in containers.iter().enumerate() {
        let r = container_resources(c, gpu_resource, &format!("Pod.spec.containers[{i}]"))?;
        sum = (
            sum.0.saturating_add(r.0),
            sum.1.saturating_add(r.1),
            sum.2.saturating_add(r.2),
        );
    }
    for (i, c) in init.iter().enumerate() {
        let r = container_resources(c, gpu_resource, &format!("Pod.spec.initContainers[{i}]"))?;
        sum = (sum.0.max(r.0), sum.1.max(r.1), sum.2.max(r.2));
    }
    Ok(sum)
}

fn container_resources(
    c: &Container,
    gpu_resource: &str,
    at: &str,
) -> Result<(u64, u64, u32), String> {
    let Some(res) = &c.resources else {
        return Ok((0, 0, 0));
    };
    // A request defaults to the limit when only the limit is given.
    let pick = |key: &str| {
        res.requests
            .as_ref()
            .and_then(|r| r.get(key))
            .map(|q| ("requests", q))
            .or_else(|| {
                res.limits
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .map(|q| ("limits", q))
            })
    };
    let field = |kind: &str, key: &str| format!("{at}.resources.{kind}[{key}]");
    let cpu = match pick("cpu") {
        Some((kind, q)) => {
            let cores = parse_quantity(&q.0).map_err(|e| format!("{}: {e}", field(kind, "cpu")))?;
            (cores * 1000.0).ceil() as u64
        }
        None => 0,
    };
    let memory = match pick("memory") {
        Some((kind, q)) => {
            let bytes =
                parse_quantity(&q.0).map_err(|e| format!("{}: {e}", field(kind, "memory")))?;
            (bytes / 1_048_576.0).ceil() as u64
        }
        None => 0,
    };
    let gpus = match pick(gpu_resource) {
        Some((kind, q)) => {
            let count =
                parse_quantity(&q.0).map_err(|e| format!("{}: {e}", field(kind, gpu_resource)))?;
            if count.fract() != 0.0 || count > f64::from(u32::MAX) {
                return Err(format!(
                    "{}: {:?} is not a whole number of GPUs",
                    field(kind, gpu_resource),
                    q.0
                ));
            }
            count as u32
        }
        None => 0,
    };
    Ok((cpu, memory, gpus))
}

/// A Kubernetes resource quantity (`500m`, `2`, `1.5Gi`, `1e3`) as a number.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let bad = || format!("{text:?} is not a Kubernetes quantity (e.g. 500m, 2, 1.5Gi)");
    if number.is_empty() || number.starts_with('-') {
        return Err(bad());
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad())?;
            if !(-18..=18).contains(&exp) {
                return Err(bad());
            }
            10f64.powi(exp)
        }
        _ => return Err(bad()),
    };
    let v = value * scale;
    if v.is_finite() && v < 9.0e18 {
        Ok(v)
    } else {
        Err(format!("{text:?} is out of range"))
    }
}

// ---- handlers -----------------------------------------------------------------------------

/// The field names of each request type, as the Go structs spell them.
const ARGS_FIELDS: &[&str] = &["Pod", "Nodes", "NodeNames"];
const BINDING_FIELDS: &[&str] = &["PodName", "PodNamespace", "PodUID", "Node"];
const PREEMPTION_FIELDS: &[&str] = &["Pod", "NodeNameToVictims", "NodeNameToMetaVictims"];
const VICTIMS_FIELDS: &[&str] = &["Pods", "NumPDBViolations"];

/// Renames an object's keys to `names` regardless of case: Go's decoder matches field names
/// that way, and older kube-schedulers send lower-case names (`pod`, `nodenames`,
/// `nodeToVictims`).
fn canonical_keys(value: &mut serde_json::Value, names: &[&str]) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = object.keys().cloned().collect();
    for key in keys {
        let lower = key.to_ascii_lowercase();
        let name = names
            .iter()
            .find(|n| n.to_ascii_lowercase() == lower)
            .copied()
            .or((lower == "nodetovictims").then_some("NodeNameToVictims"));
        if let Some(name) = name.filter(|n| *n != key)
            && let Some(v) = object.remove(&key)
        {
            object.insert(name.to_string(), v);
        }
    }
}

/// A preemption request's victims, in either form, with canonical field names.
fn canonical_victims(value: &mut serde_json::Value) {
    for field in ["NodeNameToVictims", "NodeNameToMetaVictims"] {
        let Some(by_node) = value.get_mut(field).and_then(|v| v.as_object_mut()) else {
            continue;
        };
        for victims in by_node.values_mut() {
            canonical_keys(victims, VICTIMS_FIELDS);
            if field == "NodeNameToMetaVictims"
                && let Some(pods) = victims.get_mut("Pods").and_then(|p| p.as_array_mut())
            {
                for pod in pods {
                    canonical_keys(pod, &["UID"]);
                }
            }
        }
    }
}

/// Parses a request body, naming the field that did not fit and where.
fn parse_body<T: DeserializeOwned>(verb: &str, body: &[u8], fields: &[&str]) -> Result<T, String> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("{verb}: request body is not valid JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("{verb}: request body is not a JSON object"));
    }
    canonical_keys(&mut value, fields);
    if fields == PREEMPTION_FIELDS {
        canonical_victims(&mut value);
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        format!("{verb}: request body field {path}: {inner}")
    })
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

/// A 200 answer that tells kube-scheduler the call failed, in its `Error` field.
fn error_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = json_reply(status, body);
    response.extensions_mut().insert(AnsweredWithError);
    response
}

/// The candidate node names, from `NodeNames` or the full `Nodes` list.
fn candidate_names(args: &ExtenderArgs) -> Result<Vec<String>, String> {
    if let Some(names) = &args.node_names {
        return Ok(names.clone());
    }
    let Some(list) = &args.nodes else {
        return Ok(Vec::new());
    };
    list.items
        .iter()
        .enumerate()
        .map(|(i, node)| {
            node.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("Nodes.items[{i}].metadata.name: missing"))
        })
        .collect()
}

/// The pod of a request as a Suanli job (`None`: no GPU asked for).
fn requested_job(
    verb: &str,
    pod: Option<&Pod>,
    settings: &ExtenderSettings,
) -> Result<Option<(PodRef, JobSpec)>, String> {
    let pod = pod.ok_or_else(|| format!("{verb}: request has no Pod"))?;
    pod_job(pod, settings).map_err(|e| format!("{verb}: {e}"))
}

/// The request of a filter or prioritize call: its arguments, the candidate node names, and
/// the pod as a job (`None`: it asks for no GPU). Errors are prefixed with `verb`.
fn scoring_request(
    verb: &str,
    body: &[u8],
    settings: &ExtenderSettings,
) -> Result<(ExtenderArgs, Vec<String>, Option<JobSpec>), String> {
    let args: ExtenderArgs = parse_body(verb, body, ARGS_FIELDS)?;
    let names = candidate_names(&args).map_err(|e| format!("{verb}: {e}"))?;
    let job = requested_job(verb, args.pod.as_ref(), settings)?.map(|(_, spec)| spec);
    Ok((args, names, job))
}

async fn filter(State(state): State<ExtenderState>, body: Bytes) -> Response {
    let failed = |status, error: String| {
        error_reply(
            status,
            &ExtenderFilterResult {
                error,
                ..Default::default()
            },
        )
    };
    let (args, names, job) = match scoring_request("filter", &body, &state.settings) {
        Ok(x) => x,
        Err(e) => return failed(StatusCode::BAD_REQUEST, e),
    };
    let verdicts = match job {
        None => names.iter().map(|n| (n.clone(), Ok(0))).collect(),
        Some(spec) => match score(&state.core, spec, names.clone()).await {
            Ok(v) => v,
            Err(e) => return failed(StatusCode::OK, format!("filter: {e}")),
        },
    };
    let passing: std::collections::HashSet<&str> = verdicts
        .iter()
        .filter(|(_, v)| v.is_ok())
        .map(|(n, _)| n.as_str())
        .collect();
    let failed_nodes = verdicts
        .iter()
        .filter_map(|(n, v)| {
            v.as_ref()
                .err()
                .map(|e| (n.clone(), format!("suanli: {e}")))
        })
        .collect();
    let result = ExtenderFilterResult {
        nodes: args
            .nodes
            .as_ref()
            .filter(|_| args.node_names.is_none())
            .map(|list| NodeList {
                rest: list.rest.clone(),
                items: list
                    .items
                    .iter()
                    .filter(|node| {
                        node.pointer("/metadata/name")
                            .and_then(|n| n.as_str())
                            .is_some_and(|n| passing.contains(n))
                    })
                    .cloned()
                    .collect(),
            }),
        node_names: args.node_names.as_ref().map(|_| {
            names
                .iter()
                .filter(|n| passing.contains(n.as_str()))
                .cloned()
                .collect()
        }),
        failed_nodes,
        failed_and_unresolvable_nodes: BTreeMap::new(),
        error: String::new(),
    };
    json_reply(StatusCode::OK, &result)
}

async fn score(
    core: &CoreHandle,
    spec: JobSpec,
    nodes: Vec<String>,
) -> Result<Vec<NodeVerdict>, CoreError> {
    core.ask(|reply| Command::ScorePod {
        spec: Box::new(spec),
        nodes,
        reply,
    })
    .await
}

/// Policy points scaled to 0–10 over the nodes that can take the pod: the best gets 10,
/// the worst 0; nodes that cannot take it get 0.
pub fn scale_scores(verdicts: &[NodeVerdict]) -> Vec<HostPriority> {
    let points: Vec<i64> = verdicts
        .iter()
        .filter_map(|(_, v)| v.as_ref().ok().copied())
        .collect();
    let (lo, hi) = (
        points.iter().min().copied().unwrap_or(0),
        points.iter().max().copied().unwrap_or(0),
    );
    verdicts
        .iter()
        .map(|(host, v)| HostPriority {
            host: host.clone(),
            score: match v {
                Ok(_) if hi == lo => MAX_PRIORITY,
                Ok(p) => {
                    let scaled = (i128::from(*p) - i128::from(lo)) * i128::from(MAX_PRIORITY)
                        / (i128::from(hi) - i128::from(lo));
                    scaled as i64
                }
                Err(_) => 0,
            },
        })
        .collect()
}

async fn prioritize(State(state): State<ExtenderState>, body: Bytes) -> Response {
    let (_, names, job) = match scoring_request("prioritize", &body, &state.settings) {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let scores = match job {
        None => names
            .into_iter()
            .map(|host| HostPriority { host, score: 0 })
            .collect(),
        Some(spec) => match score(&state.core, spec, names).await {
            Ok(v) => scale_scores(&v),
            Err(e) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("prioritize: {e}"),
                )
                    .into_response();
            }
        },
    };
    json_reply(StatusCode::OK, &scores)
}

async fn bind(State(state): State<ExtenderState>, body: Bytes) -> Response {
    let answer = |status, error: String| {
        if error.is_empty() {
            json_reply(status, &ExtenderBindingResult { error })
        } else {
            error_reply(status, &ExtenderBindingResult { error })
        }
    };
    let args: ExtenderBindingArgs = match parse_body("bind", &body, BINDING_FIELDS) {
        Ok(a) => a,
        Err(e) => return answer(StatusCode::BAD_REQUEST, e),
    };
    for (field, value) in [
        ("PodName", &args.pod_name),
        ("PodNamespace", &args.pod_namespace),
        ("PodUID", &args.pod_uid),
        ("Node", &args.node),
    ] {
        if value.is_empty() {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("bind: request body field {field}: missing"),
            );
        }
    }
    let Some(kube) = &state.kube else {
        return answer(
            StatusCode::OK,
            "bind: no Kubernetes API is configured ([kubernetes] api in the scheduler's config)"
                .into(),
        );
    };
    match bind_pod(&state, kube, &args).await {
        Ok(()) => answer(StatusCode::OK, String::new()),
        Err(e) => {
            warn!(pod = %format!("{}/{}", args.pod_namespace, args.pod_name), node = %args.node, error = %e, "Bind failed.");
            answer(StatusCode::OK, format!("bind: {e}"))
        }
    }
}

/// Holds the pod's GPUs, writes them to its annotations, then creates its Binding. If
/// Kubernetes refuses either write, the GPUs are given back.
async fn bind_pod(
    state: &ExtenderState,
    kube: &KubeApi,
    args: &ExtenderBindingArgs,
) -> Result<(), String> {
    let pod = kube
        .pod(&args.pod_namespace, &args.pod_name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("pod {}/{} not found", args.pod_namespace, args.pod_name))?;
    if pod.metadata.uid.as_deref() != Some(args.pod_uid.as_str()) {
        return Err(format!(
            "pod {}/{} has UID {}, not {}: it was recreated",
            args.pod_namespace,
            args.pod_name,
            pod.metadata.uid.as_deref().unwrap_or("?"),
            args.pod_uid
        ));
    }
    // kube-scheduler retries a bind it did not hear back from: one already done is done.
    let assigned = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if let Some(node) = assigned.as_ref().filter(|n| **n != args.node) {
        return Err(format!(
            "pod {}/{} is already assigned to {node}",
            args.pod_namespace, args.pod_name
        ));
    }
    let Some((pod_ref, spec)) = pod_job(&pod, &state.settings)? else {
        if assigned.is_some() {
            return Ok(());
        }
        kube.bind(
            &args.pod_namespace,
            &args.pod_name,
            &args.pod_uid,
            &args.node,
        )
        .await
        .map_err(|e| e.to_string())?;
        return Ok(());
    };
    let bound = state
        .core
        .ask(|reply| Command::BindPod {
            pod: pod_ref.clone(),
            spec: Box::new(spec),
            node: args.node.clone(),
            reply,
        })
        .await
        .map_err(|e| e.to_string())?;
    let written = async {
        kube.annotate(&pod_ref, &bound).await?;
        if assigned.is_some() {
            return Ok(());
        }
        kube.bind(&pod_ref.namespace, &pod_ref.name, &pod_ref.uid, &args.node)
            .await
    }
    .await;
    if let Err(e) = written {
        if assigned.is_some() {
            return Err(format!("cannot write the pod's GPUs to it: {e}"));
        }
        let message = format!("Kubernetes refused the binding: {e}");
        let _ = state
            .core
            .ask(|reply| Command::EndPod {
                job_id: bound.job_id.clone(),
                state: JobState::Failed,
                reason: "bind_failed".into(),
                message: message.clone(),
                reply,
            })
            .await;
        return Err(message);
    }
    info!(pod = %pod_ref, node = %args.node, job = %bound.job_id, gpus = ?bound.gpu_uuids, "Pod bound.");
    Ok(())
}

async fn preempt(State(state): State<ExtenderState>, body: Bytes) -> Response {
    let bad = |e: String| (StatusCode::BAD_REQUEST, e).into_response();
    let args: ExtenderPreemptionArgs = match parse_body("preempt", &body, PREEMPTION_FIELDS) {
        Ok(a) => a,
        Err(e) => return bad(e),
    };
    // Victims by UID, from whichever form kube-scheduler sent.
    let mut proposed: BTreeMap<String, MetaVictims> =
        args.node_name_to_meta_victims.unwrap_or_default();
    for (node, victims) in args.node_name_to_victims.unwrap_or_default() {
        proposed.entry(node).or_insert_with(|| MetaVictims {
            pods: victims
                .pods
                .iter()
                .map(|p| MetaPod {
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                })
                .collect(),
            num_pdb_violations: victims.num_pdb_violations,
        });
    }
    let job = match requested_job("preempt", args.pod.as_ref(), &state.settings) {
        Ok(j) => j,
        Err(e) => return bad(e),
    };
    let Some((_, spec)) = job else {
        return json_reply(
            StatusCode::OK,
            &ExtenderPreemptionResult {
                node_name_to_meta_victims: proposed,
            },
        );
    };
    let candidates: Vec<(String, Vec<String>)> = proposed
        .iter()
        .map(|(node, v)| (node.clone(), v.pods.iter().map(|p| p.uid.clone()).collect()))
        .collect();
    let verdicts = match state
        .core
        .ask(|reply| Command::PreemptPod {
            spec: Box::new(spec),
            candidates,
            reply,
        })
        .await
    {
        Ok(v) => v,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("preempt: {e}")).into_response();
        }
    };
    let fits: HashMap<String, bool> = verdicts.into_iter().map(|(n, v)| (n, v.is_ok())).collect();
    proposed.retain(|node, _| fits.get(node).copied().unwrap_or(false));
    json_reply(
        StatusCode::OK,
        &ExtenderPreemptionResult {
            node_name_to_meta_victims: proposed,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("500m").expect("milli"), 0.5);
        assert_eq!(parse_quantity("2").expect("plain"), 2.0);
        assert_eq!(
            parse_quantity("1.5Gi").expect("binary"),
            1.5 * 1024.0 * 1024.0 * 1024.0
        );
        assert_eq!(parse_quantity("1e3").expect("exponent"), 1000.0);
        assert_eq!(parse_quantity("4k").expect("decimal"), 4000.0);
        for bad in ["", "-1", "1Zi", "abc", "1e99", "Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn scores_scale_to_zero_through_ten() {
        let verdicts: Vec<NodeVerdict> = vec![
            ("a".into(), Ok(-50)),
            ("b".into(), Ok(150)),
            ("c".into(), Err("full".into())),
            ("d".into(), Ok(50)),
        ];
        let scores: Vec<i64> = scale_scores(&verdicts).iter().map(|h| h.score).collect();
        assert_eq!(scores, [0, 10, 0, 5]);
        let same: Vec<NodeVerdict> = vec![("a".into(), Ok(7)), ("b".into(), Ok(7))];
        assert!(scale_scores(&same).iter().all(|h| h.score == MAX_PRIORITY));
    }
}
