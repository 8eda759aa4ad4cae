//! kubelet's pod-resources API served on a unix socket by a real tonic server built from
//! kubelet's own proto, as kubelet serves it; the agent reads it as it would on a node.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli_agent::kubelet::pod_gpus;
use suanli_proto::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use suanli_proto::podresources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse,
    PodResources,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, Default)]
pub struct FakeKubelet {
    pub answer: Arc<Mutex<ListPodResourcesResponse>>,
    /// List calls answered so far: proof that a reader came back, where the absence of a
    /// message alone would prove nothing.
    polls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl PodResourcesLister for FakeKubelet {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let answer = self.answer.lock().expect("lock");
        // Counted under the answer's lock, so an answer set after the count is seen was not
        // the one given.
        self.polls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(answer.clone()))
    }
}

impl FakeKubelet {
    /// Serves on `dir/kubelet.sock` until the test ends; returns the socket's path.
    pub fn serve(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubelet.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the socket");
        let service = PodResourcesListerServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
        });
        path
    }

    pub fn set(&self, pods: Vec<PodResources>) {
        self.answer.lock().expect("lock").pod_resources = pods;
    }

    pub fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }

    /// Waits until `n` list calls have been answered in all (20 s at most).
    pub async fn wait_polls(&self, n: usize) {
        for _ in 0..2000 {
            if self.polls() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("kubelet was polled {} times, not {n}", self.polls());
    }
}

/// A pod whose containers hold the given devices, as `(resource, ids)` per container.
pub fn pod(namespace: &str, name: &str, containers: &[&[(&str, &[&str])]]) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers: containers
            .iter()
            .enumerate()
            .map(|(i, devices)| ContainerResources {
                name: format!("c{i}"),
                devices: devices
                    .iter()
                    .map(|(resource, ids)| ContainerDevices {
                        resource_name: (*resource).into(),
                        device_ids: ids.iter().map(|d| (*d).to_string()).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn the_gpus_kubelet_gave_each_pod_are_read_from_its_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubelet = FakeKubelet::default();
    let socket = kubelet.serve(dir.path());
    kubelet.set(vec![
        pod(
            "ml",
            "train",
            &[
                &[("nvidia.com/gpu", &["GPU-b", "GPU-a"])],
                &[
                    ("nvidia.com/gpu", &["GPU-c"]),
                    ("example.com/nic", &["vf-1"]),
                ],
            ],
        ),
        pod("ml", "nic-only", &[&[("example.com/nic", &["vf-2"])]]),
        pod("default", "cpu", &[&[]]),
    ]);
    let pods = pod_gpus(&socket, "nvidia.com/gpu")
        .await
        .expect("kubelet answers");
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(
        (pods[0].namespace.as_str(), pods[0].name.as_str()),
        ("ml", "train")
    );
    assert_eq!(pods[0].gpu_uuids, ["GPU-a", "GPU-b", "GPU-c"]);

    let missing = dir.path().join("absent.sock");
    let err = pod_gpus(&missing, "nvidia.com/gpu")
        .await
        .expect_err("no kubelet there")
        .to_string();
    assert!(err.contains("absent.sock"), "{err}");
}
