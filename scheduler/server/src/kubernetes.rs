//! The Kubernetes API as the extender uses it: read a pod, annotate it with its GPUs,
//! create its Binding, and notice pods that ended so their GPUs are freed.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use suanli_engine::JobState;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::core::{BoundPod, CoreHandle, PodJobView};
use crate::placement::PodRef;

/// Annotations the scheduler reads from pods and writes to them.
pub const POD_ANNOTATION_PREFIX: &str = "suanli.io/";
/// The label put on bound pods, so the reconciler lists only those.
pub const JOB_LABEL: &str = "suanli.io/job-id";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes API setting {0:?}: expected \"in-cluster\" or an http(s) URL")]
    BadSetting(String),
    #[error("Kubernetes API configuration: {0}")]
    Config(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client of one Kubernetes API server.
#[derive(Clone)]
pub struct KubeApi {
    client: kube::Client,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi").finish_non_exhaustive()
    }
}

impl KubeApi {
    /// `in-cluster` uses the pod's service account; a URL is used as given (a local proxy
    /// such as `kubectl proxy`, or a test server).
    pub fn connect(setting: &str) -> Result<KubeApi, KubeError> {
        let config = if setting == "in-cluster" {
            kube::Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?
        } else {
            let uri: axum::http::Uri = setting
                .parse()
                .map_err(|_| KubeError::BadSetting(setting.to_string()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err(KubeError::BadSetting(setting.to_string()));
            }
            kube::Config::new(uri)
        };
        let client =
            kube::Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeApi { client })
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, KubeError> {
        Ok(self.pods(namespace).get_opt(name).await?)
    }

    /// Writes the GPUs the pod holds to its annotations, and labels it with its job.
    pub async fn annotate(&self, pod: &PodRef, bound: &BoundPod) -> Result<(), KubeError> {
        let join = |items: Vec<String>| items.join(",");
        let patch = serde_json::json!({
            "metadata": {
                // A merge patch with the UID fails if the pod was replaced meanwhile.
                "uid": pod.uid,
                "labels": { JOB_LABEL: bound.job_id.to_string() },
                "annotations": {
                    format!("{POD_ANNOTATION_PREFIX}job-id"): bound.job_id.to_string(),
                    format!("{POD_ANNOTATION_PREFIX}gpu-uuids"): join(bound.gpu_uuids.clone()),
                    format!("{POD_ANNOTATION_PREFIX}device-cids"):
                        join(bound.device_cids.iter().map(ToString::to_string).collect()),
                    format!("{POD_ANNOTATION_PREFIX}node"): bound.node.to_string(),
                }
            }
        });
        self.pods(&pod.namespace)
            .patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Creates the pod's Binding to `node`: from here on kubelet on that node runs it.
    pub async fn bind(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        node: &str,
    ) -> Result<(), KubeError> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some(uid.to_string()),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
        };
        let _: serde_json::Value = self
            .pods(namespace)
            .create_subresource("binding", name, &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    /// Every pod the scheduler bound, by UID.
    async fn bound_pods(&self) -> Result<HashMap<String, Pod>, KubeError> {
        let all: Api<Pod> = Api::all(self.client.clone());
        let list = all.list(&ListParams::default().labels(JOB_LABEL)).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid.clone().map(|uid| (uid, p)))
            .collect())
    }
}

/// How a pod's job ends, given what the API says of the pod now; `None` while it lives.
fn pod_outcome(job: &PodJobView, seen: Option<&Pod>) -> Option<(JobState, String, String)> {
    match seen {
        None => Some((
            JobState::Cancelled,
            "pod_deleted".into(),
            format!("pod {} is gone from Kubernetes", job.pod),
        )),
        Some(pod) => {
            let status = pod.status.as_ref();
            let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
            let detail = status
                .and_then(|s| s.reason.clone().or(s.message.clone()))
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            match phase {
                "Succeeded" => Some((
                    JobState::Succeeded,
                    "pod_succeeded".into(),
                    format!("pod {} succeeded", job.pod),
                )),
                "Failed" => Some((
                    JobState::Failed,
                    "pod_failed".into(),
                    format!("pod {} failed{detail}", job.pod),
                )),
                _ => None,
            }
        }
    }
}

/// One reconcile round: ends the jobs of pods that finished or are gone. A pod missing
/// from the list is looked up by name before its job ends, so a list served from a stale
/// cache cannot free GPUs that are in use.
pub async fn reconcile_once(core: &CoreHandle, kube: &KubeApi) -> Result<usize, KubeError> {
    let Ok(jobs) = core.pod_jobs().await else {
        return Ok(0);
    };
    if jobs.is_empty() {
        return Ok(0);
    }
    let listed = kube.bound_pods().await?;
    let mut ended = 0;
    for job in jobs {
        let seen = match listed.get(&job.pod.uid) {
            Some(p) => Some(p.clone()),
            None => kube
                .pod(&job.pod.namespace, &job.pod.name)
                .await?
                .filter(|p| p.metadata.uid.as_deref() == Some(job.pod.uid.as_str())),
        };
        let Some((state, reason, message)) = pod_outcome(&job, seen.as_ref()) else {
            continue;
        };
        let result = core
            .end_pod(job.job_id.clone(), state, reason, message.clone())
            .await;
        match result {
            Ok(()) => {
                info!(job = %job.job_id, pod = %job.pod, state = %state, "{message}; GPUs freed.");
                ended += 1;
            }
            Err(e) => warn!(job = %job.job_id, error = %e, "Could not end a pod's job."),
        }
    }
    Ok(ended)
}

/// Reconciles every `interval` until `stop` fires.
pub async fn reconcile_loop(
    core: CoreHandle,
    kube: KubeApi,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = reconcile_once(&core, &kube).await {
            warn!(error = %e, "Could not reconcile pods with Kubernetes; trying again.");
        }
    }
}
