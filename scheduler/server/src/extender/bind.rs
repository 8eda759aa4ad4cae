//! Bind: hold the pod's GPUs in the core, write them to the pod, then create its Binding;
//! give the GPUs back if Kubernetes refuses.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use suanli_engine::JobState;
use tracing::{info, warn};

use super::ExtenderState;
use super::error::Problem;
use super::pod::{PodError, PodJob, pod_job};
use super::request::RequestError;
use super::wire::{ExtenderBindingArgs, ExtenderBindingResult, json_reply};
use crate::core::CoreError;
use crate::kubernetes::{KubeApi, KubeError};
use crate::placement::PodRef;

/// Why a pod was not bound, as kube-scheduler is told (after `bind: `).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("no Kubernetes API is configured ([kubernetes] api in the scheduler's config)")]
    NoKubernetesApi,
    /// Reading the pod, or binding one that asks for no GPU.
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("pod {pod} not found")]
    PodNotFound { pod: PodRef },
    #[error(
        "pod {pod} has UID {}, not {}: it was recreated",
        .found.as_deref().unwrap_or("?"),
        .pod.uid
    )]
    Recreated { pod: PodRef, found: Option<String> },
    /// kube-scheduler asked to bind a pod that is bound to another node.
    #[error("pod {pod} is already assigned to {node}")]
    AssignedElsewhere { pod: PodRef, node: String },
    #[error(transparent)]
    Pod(#[from] PodError),
    /// The core would not hold GPUs on the node for the pod.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The pod was already bound; its GPUs could not be written to it.
    #[error("cannot write the pod's GPUs to it: {0}")]
    Annotate(KubeError),
    /// Writing the GPUs or the Binding failed; the GPUs were given back.
    #[error("Kubernetes refused the binding: {0}")]
    Refused(KubeError),
}

pub(super) async fn bind(state: ExtenderState, body: Bytes) -> Result<Response, Problem> {
    let args = ExtenderBindingArgs::parse(&body)?;
    for (field, value) in [
        ("PodName", &args.pod_name),
        ("PodNamespace", &args.pod_namespace),
        ("PodUID", &args.pod_uid),
        ("Node", &args.node),
    ] {
        if value.is_empty() {
            return Err(RequestError::MissingField(field).into());
        }
    }
    let kube = state.kube.as_ref().ok_or(BindError::NoKubernetesApi)?;
    if let Err(e) = bind_pod(&state, kube, &args).await {
        warn!(pod = %args.pod(), node = %args.node, error = %e, "Bind failed.");
        return Err(e.into());
    }
    Ok(json_reply(
        StatusCode::OK,
        &ExtenderBindingResult {
            error: String::new(),
        },
    ))
}

/// Holds the pod's GPUs, writes them to its annotations, then creates its Binding. If
/// Kubernetes refuses either write, the GPUs are given back.
async fn bind_pod(
    state: &ExtenderState,
    kube: &KubeApi,
    args: &ExtenderBindingArgs,
) -> Result<(), BindError> {
    let wanted = args.pod();
    let pod = kube
        .pod(&wanted.namespace, &wanted.name)
        .await?
        .ok_or_else(|| BindError::PodNotFound {
            pod: wanted.clone(),
        })?;
    if pod.metadata.uid.as_deref() != Some(wanted.uid.as_str()) {
        return Err(BindError::Recreated {
            pod: wanted,
            found: pod.metadata.uid.clone(),
        });
    }
    // kube-scheduler retries a bind it did not hear back from: one already done is done.
    let assigned = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if let Some(node) = assigned.as_ref().filter(|n| **n != args.node) {
        return Err(BindError::AssignedElsewhere {
            pod: wanted,
            node: node.clone(),
        });
    }
    let Some(PodJob { pod: pod_ref, spec }) = pod_job(&pod, &state.settings)? else {
        if assigned.is_none() {
            kube.bind(&wanted.namespace, &wanted.name, &wanted.uid, &args.node)
                .await?;
        }
        return Ok(());
    };
    let bound = state
        .core
        .bind_pod(pod_ref.clone(), spec, args.node.clone())
        .await?;
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
            return Err(BindError::Annotate(e));
        }
        let refused = BindError::Refused(e);
        let _ = state
            .core
            .end_pod(
                bound.job_id.clone(),
                JobState::Failed,
                "bind_failed".into(),
                refused.to_string(),
            )
            .await;
        return Err(refused);
    }
    info!(pod = %pod_ref, node = %args.node, job = %bound.job_id, gpus = ?bound.gpu_uuids, "Pod bound.");
    Ok(())
}
