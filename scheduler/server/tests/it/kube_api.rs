//! A Kubernetes API server for the pod calls the extender makes, on 127.0.0.1, speaking the
//! API's wire format: Pod, PodList, Binding and Status objects as JSON, merge patches, and
//! the status codes the real server answers with. No real API server can run here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::core::v1::{Binding, Pod};
use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct KubeState {
    pub pods: BTreeMap<(String, String), Pod>,
    /// Bindings created: namespace, pod, node.
    pub bindings: Vec<(String, String, String)>,
    /// Answer Binding requests as an API server whose RBAC forbids them.
    pub refuse_bindings: bool,
}

#[derive(Debug, Clone)]
pub struct FakeKube {
    pub url: String,
    pub state: Arc<Mutex<KubeState>>,
    _task: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let state = Arc::new(Mutex::new(KubeState::default()));
        let app = Router::new()
            .route("/api/v1/pods", get(list_pods))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(get_pod).patch(patch_pod),
            )
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}/binding",
                post(create_binding),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeKube {
            url: format!("http://{addr}"),
            state,
            _task: Arc::new(task),
        }
    }

    pub fn add(&self, pod: Pod) {
        let key = (
            pod.metadata.namespace.clone().expect("namespace"),
            pod.metadata.name.clone().expect("name"),
        );
        self.state.lock().expect("lock").pods.insert(key, pod);
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.state
            .lock()
            .expect("lock")
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn remove(&self, namespace: &str, name: &str) {
        self.state
            .lock()
            .expect("lock")
            .pods
            .remove(&(namespace.to_string(), name.to_string()));
    }

    pub fn set_phase(&self, namespace: &str, name: &str, phase: &str) {
        let mut state = self.state.lock().expect("lock");
        let pod = state
            .pods
            .get_mut(&(namespace.to_string(), name.to_string()))
            .expect("known pod");
        pod.status.get_or_insert_with(Default::default).phase = Some(phase.to_string());
    }

    pub fn refuse_bindings(&self, refuse: bool) {
        self.state.lock().expect("lock").refuse_bindings = refuse;
    }

    pub fn bindings(&self) -> Vec<(String, String, String)> {
        self.state.lock().expect("lock").bindings.clone()
    }
}

/// A `Status` object as the API server sends with an error code.
fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        })),
    )
        .into_response()
}

fn not_found(name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("pods \"{name}\" not found"),
    )
}

fn with_kind(pod: &Pod) -> Value {
    let mut v = serde_json::to_value(pod).expect("pod serializes");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v
}

async fn get_pod(
    State(state): State<Arc<Mutex<KubeState>>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match state.lock().expect("lock").pods.get(&(ns, name.clone())) {
        Some(pod) => axum::Json(with_kind(pod)).into_response(),
        None => not_found(&name),
    }
}

async fn list_pods(
    State(state): State<Arc<Mutex<KubeState>>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    // Only the existence selector (`key`) the reconciler uses.
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    let items: Vec<Value> = state
        .lock()
        .expect("lock")
        .pods
        .values()
        .filter(|p| {
            selector.is_empty()
                || p.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(&selector))
        })
        .map(with_kind)
        .collect();
    axum::Json(json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": { "resourceVersion": "1" },
        "items": items,
    }))
    .into_response()
}

async fn patch_pod(
    State(state): State<Arc<Mutex<KubeState>>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != "application/merge-patch+json" {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "invalid JSON patch".into(),
        );
    };
    let mut state = state.lock().expect("lock");
    let Some(pod) = state.pods.get_mut(&(ns, name.clone())) else {
        return not_found(&name);
    };
    let meta = &patch["metadata"];
    if let Some(uid) = meta["uid"].as_str()
        && pod.metadata.uid.as_deref() != Some(uid)
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on pods \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                pod.metadata.uid.as_deref().unwrap_or("")
            ),
        );
    }
    for (field, map) in [
        ("labels", &mut pod.metadata.labels),
        ("annotations", &mut pod.metadata.annotations),
    ] {
        if let Some(entries) = meta[field].as_object() {
            let map = map.get_or_insert_with(BTreeMap::new);
            for (k, v) in entries {
                match v.as_str() {
                    Some(s) => {
                        map.insert(k.clone(), s.to_string());
                    }
                    None => {
                        map.remove(k);
                    }
                }
            }
        }
    }
    axum::Json(with_kind(pod)).into_response()
}

async fn create_binding(
    State(state): State<Arc<Mutex<KubeState>>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let binding: Binding = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("Binding: {e}"),
            );
        }
    };
    let mut state = state.lock().expect("lock");
    if state.refuse_bindings {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: User \"system:serviceaccount:suanli:suanli-scheduler\" cannot create resource \"pods/binding\" in API group \"\" in the namespace \"{ns}\""
            ),
        );
    }
    let Some(pod) = state.pods.get_mut(&(ns.clone(), name.clone())) else {
        return not_found(&name);
    };
    if binding.metadata.uid.is_some() && binding.metadata.uid != pod.metadata.uid {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Operation cannot be fulfilled on pods/binding \"{name}\": UID mismatch"),
        );
    }
    let spec = pod.spec.get_or_insert_with(Default::default);
    if let Some(node) = &spec.node_name {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{node}\""
            ),
        );
    }
    let node = binding.target.name.clone().unwrap_or_default();
    spec.node_name = Some(node.clone());
    state.bindings.push((ns, name, node));
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        })),
    )
        .into_response()
}
