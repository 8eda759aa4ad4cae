//! The kube-scheduler extender over real HTTP: filter, prioritize, bind and preempt as
//! kube-scheduler sends them, binding through a Kubernetes API that speaks its wire format.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use suanli_proto::pb;
use suanli_proto::pb::job_service_client::JobServiceClient;
use suanli_scheduler::config::{KubernetesSettings, ServerConfig};
use suanli_scheduler::server::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tonic::Code;

use crate::kube_api::FakeKube;
use crate::{ADMIN, Agent, TestServer, authed, inventory};

/// The settings the extender tests share: the Kubernetes API at `kube`'s URL when given.
fn with_kube(settings: &mut ServerConfig, kube: Option<&FakeKube>) {
    settings.kubernetes = KubernetesSettings {
        api: kube.map(|k| k.url.clone()).unwrap_or_default(),
        reconcile_interval_s: 1,
        ..KubernetesSettings::default()
    };
}

/// A pod asking for `gpus` whole GPUs, with extra annotations.
fn pod(name: &str, uid: &str, gpus: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": uid,
            "annotations": annotations,
        },
        "spec": {
            "schedulerName": "suanli",
            "containers": [{
                "name": "main",
                "image": "trainer:1",
                "resources": {
                    "requests": { "cpu": "500m", "memory": "1Gi" },
                    "limits": { "nvidia.com/gpu": gpus },
                },
            }],
        },
        "status": { "phase": "Pending" },
    }))
    .expect("a valid Pod")
}

/// One HTTP/1.1 POST; returns the status code and the body as JSON (or a string).
async fn post(server: &RunningServer, path: &str, body: &str) -> (u16, Value) {
    http(server, "POST", path, body).await
}

async fn http(server: &RunningServer, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connects");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: suanli\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("reads");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (code, body)
}

/// Agents that stay connected and heartbeat until [`leave`]. Like real agents, they keep the
/// credential their node was issued in `credentials` (by node name) and present it when
/// they come back.
async fn join(
    ch: &tonic::transport::Channel,
    nodes: &[(&str, u32)],
    credentials: &mut BTreeMap<String, String>,
) -> Vec<(Agent, JoinHandle<()>)> {
    let mut joined = Vec::new();
    for (name, gpus) in nodes {
        let known = credentials.get(*name).cloned().unwrap_or_default();
        let agent = Agent::connect_with(ch.clone(), inventory(name, *gpus), vec![], &known).await;
        credentials.insert(name.to_string(), agent.credential.clone());
        let beat = agent.keep_alive();
        joined.push((agent, beat));
    }
    joined
}

/// Closes the agents' sessions, so a server shutdown need not wait for them.
fn leave(agents: Vec<(Agent, JoinHandle<()>)>) {
    for (agent, beat) in agents {
        beat.abort();
        drop(agent);
    }
}

/// A scheduler with agents, and the Kubernetes API it binds through.
struct Site {
    kube: FakeKube,
    server: TestServer,
    agents: Vec<(Agent, JoinHandle<()>)>,
    /// The node credentials the agents were issued, by node name.
    credentials: BTreeMap<String, String>,
}

impl Site {
    /// `api`: whether the scheduler is told where the Kubernetes API is.
    async fn open(nodes: &[(&str, u32)], api: bool) -> Site {
        Site::open_with(nodes, api, |_| {}).await
    }

    /// [`Site::open`], with `tweak` applied to the scheduler's settings.
    async fn open_with(
        nodes: &[(&str, u32)],
        api: bool,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> Site {
        let kube = FakeKube::start().await;
        let server = TestServer::start_with(|settings| {
            with_kube(settings, api.then_some(&kube));
            tweak(settings);
        })
        .await;
        Site::join(kube, server, nodes, BTreeMap::new()).await
    }

    async fn join(
        kube: FakeKube,
        server: TestServer,
        nodes: &[(&str, u32)],
        mut credentials: BTreeMap<String, String>,
    ) -> Site {
        let agents = join(&server.channel(), nodes, &mut credentials).await;
        Site {
            kube,
            server,
            agents,
            credentials,
        }
    }

    /// Stops the scheduler and starts it again on the same database, with these agents.
    async fn restart(self, nodes: &[(&str, u32)]) -> Site {
        leave(self.agents);
        let server = self.server.restart().await;
        Site::join(self.kube, server, nodes, self.credentials).await
    }

    async fn close(self) {
        leave(self.agents);
        self.server.shutdown().await;
    }

    /// Filters `pod` onto `node` until `done` holds for the node's failure reason (empty
    /// when it passes), for up to 5 s; returns the last reason.
    async fn filter_until(&self, pod: &Pod, node: &str, done: impl Fn(&str) -> bool) -> String {
        let mut why = String::new();
        for _ in 0..100 {
            let (_, out) = self.post("/extender/filter", &args(pod, &[node])).await;
            why = out["FailedNodes"][node].as_str().unwrap_or("").to_string();
            if done(&why) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        why
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        post(&self.server, path, body).await
    }

    fn jobs(&self) -> JobServiceClient<tonic::transport::Channel> {
        self.server.jobs()
    }
}

fn args(pod: &Pod, nodes: &[&str]) -> String {
    json!({ "Pod": pod, "Nodes": null, "NodeNames": nodes }).to_string()
}

fn bind_args(pod: &Pod, node: &str) -> String {
    json!({
        "PodName": pod.metadata.name,
        "PodNamespace": pod.metadata.namespace,
        "PodUID": pod.metadata.uid,
        "Node": node,
    })
    .to_string()
}

async fn pod_jobs(jobs: &mut JobServiceClient<tonic::transport::Channel>) -> Vec<pb::Job> {
    jobs.list(authed(
        ADMIN,
        pb::ListJobsRequest {
            tenant: "ml".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("lists")
    .into_inner()
    .jobs
}

#[tokio::test]
async fn pods_are_filtered_scored_bound_and_released_through_the_extender() {
    let site = Site::open(&[("small", 2), ("big", 8)], true).await;

    // Filter by names: the 2-GPU node and a node without an agent fail, each with why.
    let four = pod("train-a", "uid-a", "4", json!({}));
    let (code, out) = site
        .post(
            "/extender/filter",
            &args(&four, &["small", "big", "cpu-only"]),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["NodeNames"], json!(["big"]));
    assert_eq!(out["Error"], "");
    let small_why = out["FailedNodes"]["small"].as_str().expect("reason");
    assert!(small_why.contains("fewer than 4 free GPUs"), "{small_why}");
    let none_why = out["FailedNodes"]["cpu-only"].as_str().expect("reason");
    assert!(none_why.contains("no Suanli agent"), "{none_why}");

    // Filter with full Node objects: the passing ones come back exactly as sent.
    let node = |name: &str| json!({"metadata": {"name": name, "labels": {"zone": "a"}}, "status": {"allocatable": {"nvidia.com/gpu": "8"}}});
    let full = json!({
        "Pod": four,
        "Nodes": {"metadata": {"resourceVersion": "9"}, "items": [node("small"), node("big")]},
        "NodeNames": null,
    });
    let (code, out) = site.post("/extender/filter", &full.to_string()).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["Nodes"]["items"], json!([node("big")]));
    assert_eq!(out["NodeNames"], Value::Null);

    // Prioritize: scores within 0–10, best node 10, a node that cannot take it 0.
    let one = pod("infer-b", "uid-b", "1", json!({}));
    let (code, out) = site
        .post(
            "/extender/prioritize",
            &args(&one, &["small", "big", "cpu-only"]),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let scores = out.as_array().expect("a HostPriorityList");
    assert_eq!(scores.len(), 3);
    assert!(
        scores
            .iter()
            .all(|s| (0..=10).contains(&s["Score"].as_i64().expect("score")))
    );
    assert_eq!(scores[2], json!({"Host": "cpu-only", "Score": 0}));
    assert!(scores.iter().any(|s| s["Score"] == 10), "{out}");

    // Bind: the pod's GPUs are written to it, then its Binding is created.
    site.kube.add(four.clone());
    let (code, out) = site.post("/extender/bind", &bind_args(&four, "big")).await;
    assert_eq!((code, &out), (200, &json!({"Error": ""})));
    assert_eq!(
        site.kube.bindings(),
        [("ml".to_string(), "train-a".to_string(), "big".to_string())]
    );
    let bound = site.kube.pod("ml", "train-a").expect("pod");
    let notes = bound.metadata.annotations.expect("annotations");
    let uuids: Vec<&str> = notes["suanli.io/gpu-uuids"].split(',').collect();
    assert_eq!(uuids.len(), 4);
    assert!(uuids.iter().all(|u| u.starts_with("GPU-big-")), "{uuids:?}");
    assert_eq!(
        notes["suanli.io/device-cids"].split(',').count(),
        4,
        "{notes:?}"
    );
    let job_id = notes["suanli.io/job-id"].clone();
    assert_eq!(
        bound.metadata.labels.expect("labels")["suanli.io/job-id"],
        job_id
    );

    // The pod is a running job of tenant `ml`, holding those GPUs: a 5-GPU pod no longer
    // fits on `big`, and a Suanli job cannot take them either.
    let mut jobs = site.jobs();
    let listed = pod_jobs(&mut jobs).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, job_id);
    assert_eq!(listed[0].state, pb::JobState::Running as i32);
    let placement = listed[0].placement.clone().expect("placement");
    assert_eq!(placement.policy, "kubernetes");
    assert_eq!(
        placement.kubernetes_pod,
        Some(pb::KubernetesPod {
            namespace: "ml".into(),
            name: "train-a".into(),
            uid: "uid-a".into(),
        })
    );
    let five = pod("train-c", "uid-c", "5", json!({}));
    let (_, out) = site.post("/extender/filter", &args(&five, &["big"])).await;
    assert_eq!(out["NodeNames"], json!([]), "{out}");

    // Binding again is answered with what the pod holds; no second job.
    let (_, out) = site.post("/extender/bind", &bind_args(&four, "big")).await;
    assert_eq!(out["Error"], "", "{out}");
    assert_eq!(site.kube.bindings().len(), 1);
    assert_eq!(pod_jobs(&mut jobs).await.len(), 1);

    // Only Kubernetes may stop the pod.
    let refused = jobs
        .cancel(authed(
            ADMIN,
            pb::CancelJobRequest {
                id: job_id.clone(),
                reason: String::new(),
            },
        ))
        .await
        .expect_err("a pod's job is not cancelled here");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("kubectl delete pod -n ml train-a")
    );

    // A restart and the agent's return keep the pod's GPUs held.
    let site = site.restart(&[("big", 8)]).await;
    let mut jobs = site.jobs();
    // The agent's hello carries the work it runs (none: the pod's containers are kubelet's),
    // and is applied when its session opens, so a Ready node has had that report weighed.
    let node = crate::wait_node(
        &mut site.server.cluster(),
        "cid:acme/cn-east-1/dc-a/big",
        "became Ready",
        |n| n.condition == pb::NodeCondition::Ready as i32,
    )
    .await;
    assert_eq!(node.job_ids, std::slice::from_ref(&job_id));
    assert_eq!(node.free_gpus, 4);
    let (_, out) = site.post("/extender/filter", &args(&five, &["big"])).await;
    assert_eq!(out["NodeNames"], json!([]), "{out}");
    assert_eq!(
        pod_jobs(&mut jobs).await[0].state,
        pb::JobState::Running as i32
    );

    // The pod succeeds: the reconciler ends its job and the GPUs are free again.
    site.kube.set_phase("ml", "train-a", "Succeeded");
    crate::wait_state(&mut jobs, &job_id, pb::JobState::Succeeded).await;
    let (_, out) = site.post("/extender/filter", &args(&five, &["big"])).await;
    assert_eq!(out["NodeNames"], json!(["big"]), "{out}");
    site.close().await;
}

#[tokio::test]
async fn a_deleted_pod_frees_its_gpus_and_a_refused_binding_gives_them_back() {
    let site = Site::open(&[("n1", 8)], true).await;
    let mut jobs = site.jobs();
    let eight = pod("whole", "uid-w", "8", json!({}));
    site.kube.add(eight.clone());
    let (_, out) = site.post("/extender/bind", &bind_args(&eight, "n1")).await;
    assert_eq!(out["Error"], "", "{out}");
    let id = pod_jobs(&mut jobs).await[0].id.clone();
    site.kube.remove("ml", "whole");
    let ended = crate::wait_state(&mut jobs, &id, pb::JobState::Cancelled).await;
    assert!(
        ended.last_reason.contains("gone from Kubernetes"),
        "{}",
        ended.last_reason
    );

    // A pod another scheduler assigned meanwhile is left alone.
    let mut taken = pod("taken", "uid-t", "8", json!({}));
    taken.spec.as_mut().expect("spec").node_name = Some("elsewhere".into());
    site.kube.add(taken.clone());
    let (code, out) = site.post("/extender/bind", &bind_args(&taken, "n1")).await;
    assert_eq!(code, 200);
    let error = out["Error"].as_str().expect("error");
    assert!(error.contains("already assigned to elsewhere"), "{error}");
    assert_eq!(pod_jobs(&mut jobs).await.len(), 1);

    // Kubernetes refuses the Binding: the GPUs held for it go back.
    let refused = pod("refused", "uid-r", "8", json!({}));
    site.kube.add(refused.clone());
    site.kube.refuse_bindings(true);
    let (code, out) = site
        .post("/extender/bind", &bind_args(&refused, "n1"))
        .await;
    assert_eq!(code, 200);
    let error = out["Error"].as_str().expect("error");
    assert!(error.contains("forbidden"), "{error}");
    site.kube.refuse_bindings(false);
    let failed = pod_jobs(&mut jobs)
        .await
        .into_iter()
        .find(|j| j.id != id)
        .expect("the refused pod's job");
    assert_eq!(failed.state, pb::JobState::Failed as i32);
    let again = pod("again", "uid-g", "8", json!({}));
    let (_, out) = site.post("/extender/filter", &args(&again, &["n1"])).await;
    assert_eq!(out["NodeNames"], json!(["n1"]), "{out}");

    // A pod whose UID changed since kube-scheduler saw it is not bound.
    site.kube.add(pod("again", "uid-new", "8", json!({})));
    let (_, out) = site.post("/extender/bind", &bind_args(&again, "n1")).await;
    let error = out["Error"].as_str().expect("error");
    assert!(error.contains("recreated"), "{error}");
    site.close().await;
}

#[tokio::test]
async fn preempt_keeps_nodes_where_the_evictions_make_room() {
    let site = Site::open(&[("a", 8), ("b", 8)], true).await;
    let low_a = pod("low-a", "uid-la", "8", json!({}));
    let low_b = pod("low-b", "uid-lb", "8", json!({}));
    for (p, node) in [(&low_a, "a"), (&low_b, "b")] {
        site.kube.add(p.clone());
        let (_, out) = site.post("/extender/bind", &bind_args(p, node)).await;
        assert_eq!(out["Error"], "", "{out}");
    }
    let urgent = pod("urgent", "uid-u", "8", json!({}));
    // On `a` kube-scheduler would evict the pod holding its GPUs; on `b` some other pod.
    let request = json!({
        "Pod": urgent,
        "NodeNameToVictims": null,
        "NodeNameToMetaVictims": {
            "a": {"Pods": [{"UID": "uid-la"}], "NumPDBViolations": 0},
            "b": {"Pods": [{"UID": "uid-unrelated"}], "NumPDBViolations": 0},
        },
    });
    let (code, out) = site.post("/extender/preempt", &request.to_string()).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        out,
        json!({"NodeNameToMetaVictims": {"a": {"Pods": [{"UID": "uid-la"}], "NumPDBViolations": 0}}})
    );
    // The trial released nothing for good.
    let (_, out) = site
        .post("/extender/filter", &args(&urgent, &["a", "b"]))
        .await;
    assert_eq!(out["NodeNames"], json!([]), "{out}");
    site.close().await;
}

#[tokio::test]
async fn bad_extender_input_is_refused_naming_the_problem() {
    let site = Site::open(&[("n1", 8)], false).await;

    let (code, out) = site.post("/extender/filter", "{not json").await;
    assert_eq!(code, 400);
    let error = out["Error"].as_str().expect("error");
    assert!(error.starts_with("filter: request body"), "{error}");
    assert!(error.contains("line 1"), "{error}");

    let (code, out) = site.post(
                "/extender/filter",
        r#"{"Pod": {"metadata": {"name": "p"}, "spec": {"containers": "one"}}, "NodeNames": ["n1"]}"#,
    )
    .await;
    assert_eq!(code, 400);
    let error = out["Error"].as_str().expect("error");
    assert!(error.contains("Pod.spec.containers"), "{error}");

    let (code, out) = site
        .post(
            "/extender/filter",
            &args(&pod("p", "u", "two", json!({})), &["n1"]),
        )
        .await;
    assert_eq!(code, 400);
    let error = out["Error"].as_str().expect("error");
    assert!(
        error.contains("Pod.spec.containers[0].resources.limits[nvidia.com/gpu]"),
        "{error}"
    );
    let (code, out) = site
        .post(
            "/extender/filter",
            &args(
                &pod("p", "u", "2", json!({"suanli.io/gpu-milli": "500"})),
                &["n1"],
            ),
        )
        .await;
    assert_eq!(code, 400);
    let error = out["Error"].as_str().expect("error");
    assert!(error.contains("a share is of one GPU"), "{error}");

    let (code, out) = site
        .post(
            "/extender/bind",
            r#"{"PodName": "p", "PodNamespace": "ml", "PodUID": null, "Node": "n1"}"#,
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(out["Error"], "bind: request body field PodUID: missing");

    // Without a Kubernetes API the extender still filters, but cannot bind.
    let share = pod("nb", "u2", "1", json!({"suanli.io/gpu-milli": "250"}));
    let (code, out) = site.post("/extender/filter", &args(&share, &["n1"])).await;
    assert_eq!((code, &out["NodeNames"]), (200, &json!(["n1"])));
    let (code, out) = site.post("/extender/bind", &bind_args(&share, "n1")).await;
    assert_eq!(code, 200);
    assert!(
        out["Error"]
            .as_str()
            .expect("error")
            .contains("[kubernetes] api"),
        "{out}"
    );

    // A pod that asks for no GPU passes every node untouched.
    let cpu = pod("cpu", "u3", "0", json!({}));
    let (_, out) = site
        .post("/extender/filter", &args(&cpu, &["n1", "x"]))
        .await;
    assert_eq!(out["NodeNames"], json!(["n1", "x"]));

    // Every call is counted by verb and outcome.
    let (code, metrics) = http(&site.server, "GET", "/metrics", "").await;
    assert_eq!(code, 200);
    let metrics = metrics.as_str().expect("text");
    for line in [
        r#"suanli_extender_requests_total{verb="filter",outcome="bad_request"} 4"#,
        r#"suanli_extender_requests_total{verb="filter",outcome="ok"} 2"#,
        r#"suanli_extender_requests_total{verb="bind",outcome="bad_request"} 1"#,
        r#"suanli_extender_requests_total{verb="bind",outcome="error"} 1"#,
        r#"suanli_extender_requests_total{verb="preempt",outcome="ok"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    site.close().await;
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/extender/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn a_filter_request_as_kube_scheduler_sends_it_is_understood() {
    let site = Site::open(&[("gpu-a", 8), ("gpu-b", 2)], true).await;

    // Full Pod and Node objects as kube-scheduler marshals them: managed fields, defaulted
    // fields, an init container and a sidecar, conditions with null times.
    let body = fixture("filter-args.json");
    let sent: Value = serde_json::from_str(&body).expect("fixture is JSON");
    let (code, out) = site.post("/extender/filter", &body).await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(out["Error"], "");
    assert_eq!(out["Nodes"]["items"], json!([sent["Nodes"]["items"][0]]));
    assert_eq!(out["Nodes"]["metadata"], sent["Nodes"]["metadata"]);
    let failed = out["FailedNodes"].as_object().expect("failed nodes");
    assert_eq!(failed.len(), 2, "{out}");
    assert!(
        failed["gpu-b"]
            .as_str()
            .expect("why")
            .contains("fewer than 4 free GPUs")
    );
    assert!(
        failed["cpu-1"]
            .as_str()
            .expect("why")
            .contains("no Suanli agent")
    );

    // Bound, the pod is a job with Kubernetes' effective requests: the containers' sum
    // (16 + 0.25 CPUs, 64 GiB + 128 MiB) outweighs the init container's.
    let pod: Pod = serde_json::from_value(sent["Pod"].clone()).expect("a Pod");
    site.kube.add(pod.clone());
    let (_, out) = site.post("/extender/bind", &bind_args(&pod, "gpu-a")).await;
    assert_eq!(out["Error"], "", "{out}");
    let mut jobs = site.jobs();
    let job = jobs
        .list(authed(
            ADMIN,
            pb::ListJobsRequest {
                tenant: "research".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("lists")
        .into_inner()
        .jobs
        .remove(0);
    let spec: suanli_engine::JobSpec = job.spec.expect("spec").try_into().expect("valid spec");
    assert_eq!(spec.name, "llama-finetune-0");
    assert_eq!(
        (spec.tenant.as_str(), spec.queue.as_str()),
        ("research", "urgent")
    );
    assert_eq!(spec.priority, 1000);
    assert_eq!(spec.resources.cpu_milli, 16_250);
    assert_eq!(spec.resources.memory_mib, 64 * 1024 + 128);
    assert!(!spec.preemptible);
    let gpu = spec.gpu.expect("gpu request");
    assert_eq!(
        gpu.policy,
        suanli_engine::job::GpuPolicy::Exclusive { count: 4 }
    );
    assert_eq!(gpu.models.len(), 1);
    site.close().await;
}

#[tokio::test]
async fn a_preempt_request_with_lower_case_names_is_understood() {
    let site = Site::open(&[("gpu-a", 8), ("gpu-b", 2)], true).await;
    let victim = pod("victim", "VICTIM-UID", "8", json!({}));
    site.kube.add(victim.clone());
    let (_, out) = site
        .post("/extender/bind", &bind_args(&victim, "gpu-a"))
        .await;
    assert_eq!(out["Error"], "", "{out}");

    // Go matches field names regardless of case; older kube-schedulers send these.
    let (code, out) = site
        .post("/extender/preempt", &fixture("preempt-args-legacy.json"))
        .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        out,
        json!({"NodeNameToMetaVictims": {"gpu-a": {"Pods": [{"UID": "VICTIM-UID"}], "NumPDBViolations": 0}}})
    );
    site.close().await;
}

#[tokio::test]
async fn a_pod_keeps_its_gpus_while_its_node_is_away() {
    let mut site = Site::open_with(&[("n1", 8)], true, |s| s.heartbeat_timeout_ms = 500).await;
    let running = pod("running", "uid-run", "8", json!({}));
    site.kube.add(running.clone());
    let (_, out) = site
        .post("/extender/bind", &bind_args(&running, "n1"))
        .await;
    assert_eq!(out["Error"], "", "{out}");

    // The agent falls silent and its node is lost; the pod is Kubernetes' to move.
    leave(std::mem::take(&mut site.agents));
    let next = pod("next", "uid-next", "8", json!({}));
    let why = site
        .filter_until(&next, "n1", |why| why.contains("lost"))
        .await;
    assert!(why.contains("lost"), "{why}");

    // Back, the node's GPUs are the pod's again: nothing else may take them.
    site.agents = join(&site.server.channel(), &[("n1", 8)], &mut site.credentials).await;
    let why = site
        .filter_until(&next, "n1", |why| !why.contains("lost"))
        .await;
    assert!(why.contains("fewer than 8 free GPUs"), "{why}");
    assert_eq!(
        pod_jobs(&mut site.jobs()).await[0].state,
        pb::JobState::Running as i32
    );
    site.close().await;
}

#[tokio::test]
async fn a_pods_namespace_is_a_tenant_held_to_its_quota() {
    let site = Site::open_with(&[("n1", 8)], true, |s| {
        s.quotas = std::collections::BTreeMap::from([(
            "ml".to_string(),
            std::collections::BTreeMap::from([(
                "H100".to_string(),
                suanli_scheduler::config::QuotaGpus {
                    guaranteed: 6,
                    max: Some(8),
                },
            )]),
        )]);
    })
    .await;

    let four = pod("four", "uid-4", "4", json!({}));
    site.kube.add(four.clone());
    let (_, out) = site.post("/extender/bind", &bind_args(&four, "n1")).await;
    assert_eq!(out["Error"], "", "{out}");
    // 4 of the 6 guaranteed are used. Suanli cannot stop a pod, so a pod may not borrow
    // beyond the guarantee: a 4-GPU pod fits the node but not the quota.
    let more = pod("more", "uid-m", "4", json!({}));
    let (_, out) = site.post("/extender/filter", &args(&more, &["n1"])).await;
    let why = out["FailedNodes"]["n1"].as_str().expect("a reason");
    assert!(
        why.contains("tenant ml") && why.contains("may not borrow"),
        "{why}"
    );
    let two = pod("two", "uid-2", "2", json!({}));
    let (_, out) = site.post("/extender/filter", &args(&two, &["n1"])).await;
    assert_eq!(out["NodeNames"], json!(["n1"]), "{out}");
    // Another tenant, named by annotation, is not held by ml's quota.
    let other = pod("other", "uid-o", "4", json!({"suanli.io/tenant": "prod"}));
    let (_, out) = site.post("/extender/filter", &args(&other, &["n1"])).await;
    assert_eq!(out["NodeNames"], json!(["n1"]), "{out}");

    // A pod that asks for no GPU is bound as it is, holding nothing in Suanli.
    let cpu = pod("cpu", "uid-c", "0", json!({}));
    site.kube.add(cpu.clone());
    let (_, out) = site.post("/extender/bind", &bind_args(&cpu, "n1")).await;
    assert_eq!(out["Error"], "", "{out}");
    assert_eq!(site.kube.bindings().len(), 2);
    assert_eq!(pod_jobs(&mut site.jobs()).await.len(), 1);
    site.close().await;
}

#[tokio::test]
async fn the_gpus_kubelet_gave_a_pod_win_over_the_ones_bind_chose() {
    let mut site = Site::open(&[("n1", 8)], true).await;
    let four = pod("four", "uid-4", "4", json!({}));
    site.kube.add(four.clone());
    let (_, out) = site.post("/extender/bind", &bind_args(&four, "n1")).await;
    assert_eq!(out["Error"], "", "{out}");
    let chosen: Vec<String> = site
        .kube
        .pod("ml", "four")
        .expect("pod")
        .metadata
        .annotations
        .expect("annotations")["suanli.io/gpu-uuids"]
        .split(',')
        .map(str::to_string)
        .collect();

    // A Suanli job takes the other four GPUs and runs.
    let mut jobs = site.jobs();
    let id = crate::submit(
        &mut jobs,
        crate::RESEARCH,
        crate::job("train", "research", 4),
        "r-1",
    )
    .await
    .id;
    let agent = &mut site.agents[0].0;
    let assigned = agent.next_assignment().await;
    assert_eq!(assigned.job_id, id);
    assert!(assigned.gpu_uuids.iter().all(|u| !chosen.contains(u)));
    agent.report_started(&assigned).await;
    crate::wait_state(&mut jobs, &id, pb::JobState::Running).await;

    // The device plugin gave the pod the job's GPUs instead: kubelet's word wins. The job
    // is stopped and placed again, on the GPUs the pod does not use.
    agent
        .send(pb::agent_message::Msg::PodDevices(pb::PodDevices {
            pods: vec![pb::PodGpus {
                namespace: "ml".into(),
                name: "four".into(),
                gpu_uuids: assigned.gpu_uuids.clone(),
            }],
        }))
        .await;
    let cancel = tokio::time::timeout(Duration::from_secs(15), agent.next_cancel())
        .await
        .expect("the displaced job is stopped within 15 s");
    assert_eq!(cancel.job_id, id);
    let again = agent.next_assignment().await;
    assert_eq!(again.job_id, id);
    let mut now: Vec<String> = again.gpu_uuids.clone();
    now.sort();
    let mut expected = chosen.clone();
    expected.sort();
    assert_eq!(now, expected);
    let events = crate::history(&mut jobs, &id).await;
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("kubelet gave GPU")),
        "{events:?}"
    );
    let held: Vec<String> = pod_jobs(&mut jobs).await[0]
        .placement
        .clone()
        .expect("placement")
        .replicas[0]
        .gpus
        .iter()
        .map(|g| g.uuid.clone())
        .collect();
    let mut held_sorted = held.clone();
    held_sorted.sort();
    let mut given = assigned.gpu_uuids.clone();
    given.sort();
    assert_eq!(held_sorted, given);
    site.close().await;
}
