//! Which GPUs kubelet gave to the pods on this machine, from kubelet's pod-resources API on
//! its unix socket. The NVIDIA device plugin, not Suanli, picks a pod's whole GPUs; the
//! scheduler corrects its placement to what this reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use suanli_proto::pb;
use suanli_proto::podresources::ListPodResourcesRequest;
use suanli_proto::podresources::pod_resources_lister_client::PodResourcesListerClient;
use tonic::transport::{Endpoint, Uri};

/// Where kubelet serves the pod-resources API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// Kubelet answers from memory; anything slower is a stuck socket.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read: kubelet runs at most a few hundred pods.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubelet pod-resources socket {path}: {detail}")]
    Connect { path: PathBuf, detail: String },
    #[error("kubelet pod-resources List: {0}")]
    List(#[from] tonic::Status),
}

/// Every pod on the node holding devices of `resource`, with their ids (GPU UUIDs for the
/// NVIDIA device plugin), sorted so equal answers compare equal.
pub async fn pod_gpus(socket: &Path, resource: &str) -> Result<Vec<pb::PodGpus>, KubeletError> {
    let path = socket.to_path_buf();
    let connect_to = path.clone();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://kubelet.local")
        .timeout(CALL_TIMEOUT)
        .connect_timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = connect_to.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| KubeletError::Connect {
            path: path.clone(),
            detail: crate::session::chain(&e),
        })?;
    let mut client =
        PodResourcesListerClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
    let listed = client.list(ListPodResourcesRequest {}).await?.into_inner();
    let mut pods: Vec<pb::PodGpus> = listed
        .pod_resources
        .into_iter()
        .filter_map(|pod| {
            let mut gpu_uuids: Vec<String> = pod
                .containers
                .iter()
                .flat_map(|c| &c.devices)
                .filter(|d| d.resource_name == resource)
                .flat_map(|d| d.device_ids.iter().cloned())
                .collect();
            gpu_uuids.sort();
            gpu_uuids.dedup();
            (!gpu_uuids.is_empty()).then_some(pb::PodGpus {
                namespace: pod.namespace,
                name: pod.name,
                gpu_uuids,
            })
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(pods)
}
