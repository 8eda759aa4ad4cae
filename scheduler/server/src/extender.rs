//! The kube-scheduler HTTP extender: `POST /extender/{filter,prioritize,bind,preempt}`.
//!
//! The wire format is `k8s.io/kube-scheduler/extender/v1`: PascalCase field names, absent
//! fields sent as `null`, and any status but 200 taken as an error. A body that does not
//! parse is answered with 400 and a message naming the field and position, in the reply's
//! `Error` field where the reply type has one.
//!
//! Every call is bounded: its body in size ([`MAX_SCORING_BODY_BYTES`],
//! [`MAX_BIND_BODY_BYTES`]; 413 past it) and in time (`[http] body_read_timeout_ms`; 408),
//! the nodes it names ([`MAX_NODES`]; 400), and the calls answered at once
//! ([`MAX_SCORING_CALLS`], [`MAX_BIND_CALLS`]; 503 past them).

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use suanli_engine::job::{GpuPolicy, GpuRequest, JobKind};
use suanli_engine::{GpuModel, JobSpec, JobState, MigProfile};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::core::{Command, CoreError, CoreHandle, NodeVerdict};
use crate::http::{self, BodyLimit};
use crate::kubernetes::{KubeApi, POD_ANNOTATION_PREFIX};
use crate::placement::PodRef;

/// Highest score the extender API allows (`extenderv1.MaxExtenderPriority`).
pub const MAX_PRIORITY: i64 = 10;

// ---- limits -------------------------------------------------------------------------------

/// The most a filter, prioritize or preempt body may be.
///
/// kube-scheduler sends full Node objects (the chart sets `nodeCacheCapable: false`), but
/// only of the nodes its own filters passed, and it stops looking once it has found
/// `numFeasibleNodesToFind` of them: with the default `percentageOfNodesToScore` that is
/// max(100, 10 % of 5,000) = 500 on a 5,000-node cluster. A GPU node with its managed
/// fields, 50 cached images (kubelet's `nodeStatusMaxImages`) and feature-discovery labels
/// marshals to about 30 KB, so such a request is about 15 MB plus a Pod of at most 1.5 MB
/// (etcd's object limit). 32 MiB fits that twice over, or all 5,000 nodes at 6.7 KB each for
/// a profile with `percentageOfNodesToScore: 100` (larger Nodes than that, on that many,
/// want `nodeCacheCapable: true`: names only, tens of bytes a node).
pub const MAX_SCORING_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The most a bind body may be: it names one pod and one node.
pub const MAX_BIND_BODY_BYTES: usize = 64 * 1024;
/// The most nodes one request may name (`NodeNames`, `Nodes.items`, or a preemption's nodes):
/// twice the largest cluster Suanli supports, 5,000 nodes.
pub const MAX_NODES: usize = 10_000;
/// Filter, prioritize and preempt calls answered at once; past it a call is refused.
///
/// Refused at once with 503 and `Retry-After: 1`, not queued. kube-scheduler's scheduling
/// cycle is serial: one kube-scheduler makes one of these calls at a time and waits for it
/// (up to `httpTimeout`), so only a second scheduler (a leader hand-over, another profile's
/// deployment) or a misbehaving client ever has more in flight. A queued call would hold its
/// connection while its caller may have given up; a refused one fails that pod's attempt at
/// once, and kube-scheduler retries the pod after its backoff (1 s, doubling to 10 s).
/// Admission comes before the body is read, so at most this many bodies are held. Each call
/// holds its body or the nodes parsed out of it (kept as their text) and its answer, each
/// no larger than [`MAX_SCORING_BODY_BYTES`]: a few hundred MiB at the very most, however
/// many clients call.
pub const MAX_SCORING_CALLS: usize = 4;
/// Bind calls answered at once. kube-scheduler binds each pod in its own goroutine, so binds
/// overlap; they have their own pool, which scoring calls cannot take, and their bodies are
/// small ([`MAX_BIND_BODY_BYTES`]).
pub const MAX_BIND_CALLS: usize = 64;

/// How many calls the extender answers at once, and how long a body may take to arrive.
#[derive(Debug, Clone)]
pub struct ExtenderLimits {
    scoring: Arc<Semaphore>,
    binding: Arc<Semaphore>,
    body_timeout: Duration,
}

impl ExtenderLimits {
    pub fn new(body_timeout: Duration) -> Self {
        ExtenderLimits {
            scoring: Arc::new(Semaphore::new(MAX_SCORING_CALLS)),
            binding: Arc::new(Semaphore::new(MAX_BIND_CALLS)),
            body_timeout,
        }
    }
}

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
    pub limits: ExtenderLimits,
}

pub fn router(state: ExtenderState) -> Router {
    Router::new()
        .route(
            "/extender/filter",
            post(|s: State<ExtenderState>, r: Request| counted(Verb::Filter, s, r, filter)),
        )
        .route(
            "/extender/prioritize",
            post(|s: State<ExtenderState>, r: Request| counted(Verb::Prioritize, s, r, prioritize)),
        )
        .route(
            "/extender/bind",
            post(|s: State<ExtenderState>, r: Request| counted(Verb::Bind, s, r, bind)),
        )
        .route(
            "/extender/preempt",
            post(|s: State<ExtenderState>, r: Request| counted(Verb::Preempt, s, r, preempt)),
        )
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

    fn max_body_bytes(self) -> usize {
        match self {
            Verb::Bind => MAX_BIND_BODY_BYTES,
            Verb::Filter | Verb::Prioritize | Verb::Preempt => MAX_SCORING_BODY_BYTES,
        }
    }

    /// The calls answered at once that this verb's call must find room among.
    fn pool(self, limits: &ExtenderLimits) -> (&Arc<Semaphore>, String) {
        match self {
            Verb::Bind => (&limits.binding, format!("{MAX_BIND_CALLS} bind calls")),
            Verb::Filter | Verb::Prioritize | Verb::Preempt => (
                &limits.scoring,
                format!("{MAX_SCORING_CALLS} filter, prioritize and preempt calls"),
            ),
        }
    }

    /// A refusal in this verb's reply type: filter and bind replies carry the message in
    /// `Error`; prioritize and preempt replies have no such field and carry it as text.
    fn refusal(self, status: StatusCode, message: String) -> Response {
        match self {
            Verb::Filter => error_reply(
                status,
                &ExtenderFilterResult {
                    error: message,
                    ..Default::default()
                },
            ),
            Verb::Bind => error_reply(status, &ExtenderBindingResult { error: message }),
            Verb::Prioritize | Verb::Preempt => (status, message).into_response(),
        }
    }
}

/// How a call ended: answered, answered with an error for kube-scheduler, refused as
/// malformed, or refused by a limit: a body too large or too slow, or too many calls at once.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Error,
    BadRequest,
    TooLarge,
    TimedOut,
    Shed,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::TimedOut,
        Outcome::Shed,
    ];

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::TimedOut => "timed_out",
            Outcome::Shed => "shed",
        }
    }

    /// 413, 408 and 503 come only from the limits in [`limited`].
    fn of(response: &Response) -> Outcome {
        match response.status() {
            StatusCode::BAD_REQUEST => Outcome::BadRequest,
            StatusCode::PAYLOAD_TOO_LARGE => Outcome::TooLarge,
            StatusCode::REQUEST_TIMEOUT => Outcome::TimedOut,
            StatusCode::SERVICE_UNAVAILABLE => Outcome::Shed,
            status
                if !status.is_success()
                    || response.extensions().get::<AnsweredWithError>().is_some() =>
            {
                Outcome::Error
            }
            _ => Outcome::Ok,
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

/// Runs one call within the limits, and counts how it ended.
async fn counted<F, Fut>(
    verb: Verb,
    state: State<ExtenderState>,
    request: Request,
    handler: F,
) -> Response
where
    F: FnOnce(State<ExtenderState>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let counters = state.counters.clone();
    let response = limited(verb, state, request, handler).await;
    counters.count(verb, &response);
    response
}

/// Refuses a call whose declared body is too large, or that finds no room, before reading
/// its body; then reads the body within its limits and hands it to `handler`.
async fn limited<F, Fut>(
    verb: Verb,
    state: State<ExtenderState>,
    request: Request,
    handler: F,
) -> Response
where
    F: FnOnce(State<ExtenderState>, Bytes) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let limit = BodyLimit {
        max_bytes: verb.max_body_bytes(),
        timeout: state.limits.body_timeout,
    };
    let refused = |e: http::BodyError| {
        debug!(verb = verb.name(), error = %e, "Extender call refused.");
        verb.refusal(e.status(), format!("{}: {e}", verb.name()))
    };
    if let Err(e) = http::declared_length_fits(request.headers(), limit.max_bytes) {
        return refused(e);
    }
    let (pool, calls) = verb.pool(&state.limits);
    let Ok(_admitted) = pool.clone().try_acquire_owned() else {
        debug!(verb = verb.name(), "Extender call shed: too many at once.");
        let mut response = verb.refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}: the scheduler is already answering {calls}, the most it takes at once; try again",
                verb.name()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    match http::read_body(request, limit).await {
        Ok(body) => handler(state, body).await,
        Err(e) => refused(e),
    }
}

// ---- wire types (k8s.io/kube-scheduler/extender/v1) ------------------------------------

/// `ExtenderArgs`: the pod and its candidate nodes, as full objects or (with
/// `nodeCacheCapable`) as names; at most [`MAX_NODES`] of either.
#[derive(Debug, Clone, Default)]
pub struct ExtenderArgs {
    pub pod: Option<Pod>,
    pub nodes: Option<NodeList>,
    pub node_names: Option<Vec<String>>,
}

impl ExtenderArgs {
    fn parse(verb: &'static str, body: &[u8]) -> Result<Self, String> {
        let fields = Fields::parse(verb, body, ARGS_FIELDS)?;
        Ok(ExtenderArgs {
            pod: fields.get("Pod")?,
            nodes: fields.get("Nodes")?,
            node_names: fields.get::<NodeSeq<String>>("NodeNames")?.map(|n| n.0),
        })
    }
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
        self.rest == other.rest
            && self.items.len() == other.items.len()
            && self
                .items
                .iter()
                .zip(&other.items)
                .all(|(a, b)| a.get() == b.get())
    }
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
    fn parse(body: &[u8]) -> Result<Self, String> {
        let fields = Fields::parse("bind", body, BINDING_FIELDS)?;
        let text = |name| Ok::<_, String>(fields.get::<String>(name)?.unwrap_or_default());
        Ok(ExtenderBindingArgs {
            pod_name: text("PodName")?,
            pod_namespace: text("PodNamespace")?,
            pod_uid: text("PodUID")?,
            node: text("Node")?,
        })
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

impl ExtenderPreemptionArgs {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let fields = Fields::parse("preempt", body, PREEMPTION_FIELDS)?;
        Ok(ExtenderPreemptionArgs {
            pod: fields.get("Pod")?,
            node_name_to_victims: fields.victims("NodeNameToVictims", false)?,
            node_name_to_meta_victims: fields.victims("NodeNameToMetaVictims", true)?,
        })
    }
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

/// A request body's top-level fields under their Go names, each kept as the raw JSON it was
/// sent as (borrowed from the body) until it is parsed into its type. The body is never
/// parsed into a tree of `serde_json::Value`s, which takes several times its size.
struct Fields<'a> {
    verb: &'static str,
    raw: HashMap<&'static str, &'a RawValue>,
}

impl<'a> Fields<'a> {
    fn parse(
        verb: &'static str,
        body: &'a [u8],
        names: &'static [&'static str],
    ) -> Result<Self, String> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let raw = TopLevel(names)
            .deserialize(&mut de)
            .and_then(|raw| de.end().map(|()| raw))
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    format!("{verb}: request body is not a JSON object")
                }
                _ => format!("{verb}: request body is not valid JSON: {e}"),
            })?;
        Ok(Fields { verb, raw })
    }

    /// The field `name`, `None` when absent or `null`.
    fn get<T: Deserialize<'a>>(&self, name: &'static str) -> Result<Option<T>, String> {
        let Some(raw) = self.raw.get(name) else {
            return Ok(None);
        };
        let mut de = serde_json::Deserializer::from_str(raw.get());
        serde_path_to_error::deserialize::<_, Option<T>>(&mut de).map_err(|e| {
            let path = e.path().to_string();
            field_error(self.verb, name, &path, &e.into_inner())
        })
    }

    /// A preemption's victims by node. Go matches the victims' field names (and, for
    /// `meta`, their pods') regardless of case, so each node's victims go through a
    /// `Value` to be renamed; one node's at a time.
    fn victims<T: DeserializeOwned>(
        &self,
        name: &'static str,
        meta: bool,
    ) -> Result<Option<BTreeMap<String, T>>, String> {
        let Some(by_node) = self.get::<NodeMap<&'a RawValue>>(name)? else {
            return Ok(None);
        };
        let mut victims = BTreeMap::new();
        for (node, raw) in by_node.0 {
            let at = format!("{name}.{node}");
            let mut value: serde_json::Value = serde_json::from_str(raw.get())
                .map_err(|e| field_error(self.verb, &at, ".", &e))?;
            canonical_keys(&mut value, VICTIMS_FIELDS);
            if meta && let Some(pods) = value.get_mut("Pods").and_then(|p| p.as_array_mut()) {
                for pod in pods {
                    canonical_keys(pod, &["UID"]);
                }
            }
            let parsed = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                field_error(self.verb, &at, &path, &e.into_inner())
            })?;
            victims.insert(node, parsed);
        }
        Ok(Some(victims))
    }
}

/// "`verb`: request body field `field.path`: problem", without serde_json's position, which
/// would count within the field's text rather than the body.
fn field_error(verb: &str, field: &str, path: &str, e: &serde_json::Error) -> String {
    let at = match path {
        "." => field.to_string(),
        p if p.starts_with('[') => format!("{field}{p}"),
        p => format!("{field}.{p}"),
    };
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let problem = text.strip_suffix(&position).unwrap_or(&text);
    format!("{verb}: request body field {at}: {problem}")
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
struct NodeSeq<T>(Vec<T>);

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
            node_name(node).ok_or_else(|| format!("Nodes.items[{i}].metadata.name: missing"))
        })
        .collect()
}

/// A Node's `metadata.name`, read from its JSON without building the rest of it.
fn node_name(node: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Node {
        metadata: Option<Metadata>,
    }
    #[derive(Deserialize)]
    struct Metadata {
        name: Option<String>,
    }
    serde_json::from_str::<Node>(node.get())
        .ok()?
        .metadata?
        .name
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
    verb: &'static str,
    body: &[u8],
    settings: &ExtenderSettings,
) -> Result<(ExtenderArgs, Vec<String>, Option<JobSpec>), String> {
    let args = ExtenderArgs::parse(verb, body)?;
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
    let parsed = scoring_request("filter", &body, &state.settings);
    // The nodes are parsed out of it: the body need not be held while they are scored.
    drop(body);
    let (args, names, job) = match parsed {
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
    let by_name = args.node_names.is_some();
    let result = ExtenderFilterResult {
        // Without `NodeNames`, `names` are the items' names, in their order.
        nodes: args.nodes.filter(|_| !by_name).map(|list| NodeList {
            rest: list.rest,
            items: list
                .items
                .into_iter()
                .zip(&names)
                .filter(|(_, name)| passing.contains(name.as_str()))
                .map(|(node, _)| node)
                .collect(),
        }),
        node_names: by_name.then(|| {
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
    let parsed = scoring_request("prioritize", &body, &state.settings);
    drop(body);
    let (_, names, job) = match parsed {
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
    let args = match ExtenderBindingArgs::parse(&body) {
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
    let parsed = ExtenderPreemptionArgs::parse(&body);
    drop(body);
    let args = match parsed {
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
