//! Node labels from a recorded HGX H100 host, written to a Kubernetes API on 127.0.0.1 that
//! answers Node patches as the real one does (no real API server can run here).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::patch;
use serde_json::{Value, json};
use suanli_agent::discovery::{FixtureProbe, SysfsRoot, discover};
use suanli_agent::node_labels::{NodeLabeler, label_value, node_labels};
use suanli_engine::Cid;
use suanli_engine::inventory::{FabricPosition, NodeInventory};

use crate::support::{build_hgx, fixtures_dir};

fn hgx() -> NodeInventory {
    let dir = tempfile::tempdir().expect("tempdir");
    build_hgx(dir.path());
    let probe = FixtureProbe::load(&fixtures_dir().join("hgx-h100.json")).expect("fixture loads");
    discover(
        &probe,
        &SysfsRoot(dir.path().to_path_buf()),
        Cid::node("acme", "cn-east-1", "dc-a", "hgx-01").expect("cid"),
        FabricPosition {
            leaf: "leaf/7".into(),
            spine: String::new(),
        },
    )
    .inventory
}

#[test]
fn labels_say_what_the_agent_found() {
    let labels = node_labels(&hgx());
    let value = |k: &str| labels[k].as_deref();
    assert_eq!(value("suanli.io/agent"), Some("true"));
    assert_eq!(value("suanli.io/domain"), Some("dc-a"));
    assert_eq!(value("suanli.io/gpu-model"), Some("H100"));
    assert_eq!(value("suanli.io/gpus"), Some("8"));
    assert_eq!(value("suanli.io/nvlink"), Some("true"));
    assert_eq!(value("suanli.io/rdma"), Some("true"));
    // One GPU of the recorded host is in MIG mode.
    assert_eq!(value("suanli.io/mig"), Some("true"));
    // Not a valid label value as found: made one.
    assert_eq!(value("suanli.io/leaf"), Some("leaf-7"));
    // Unknown: removed rather than left stale.
    assert_eq!(value("suanli.io/spine"), None);
    for v in labels.values().flatten() {
        assert_eq!(label_value(v).as_deref(), Some(v.as_str()), "{v} is valid");
    }
    assert_eq!(label_value("--"), None);
    assert_eq!(label_value(&"x".repeat(80)).map(|v| v.len()), Some(63));
}

#[derive(Debug, Default)]
struct Patches(Vec<(String, String, Value)>);

async fn patch_node(
    State(seen): State<Arc<Mutex<Patches>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid patch").into_response();
    };
    if name != "hgx-01" {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("nodes \"{name}\" not found"), "reason": "NotFound", "code": 404,
        });
        return (StatusCode::NOT_FOUND, axum::Json(status)).into_response();
    }
    seen.lock()
        .expect("lock")
        .0
        .push((name.clone(), content_type, patch.clone()));
    // The Node after the merge: null removes a label.
    let labels: serde_json::Map<String, Value> = patch["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": labels },
    });
    axum::Json(node).into_response()
}

async fn node_api() -> (String, Arc<Mutex<Patches>>) {
    let seen = Arc::new(Mutex::new(Patches::default()));
    let app = Router::new()
        .route("/api/v1/nodes/{name}", patch(patch_node))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen)
}

#[tokio::test]
async fn the_node_is_labelled_once_per_change() {
    let (url, seen) = node_api().await;
    let mut labeler = NodeLabeler::connect(&url, "hgx-01").expect("connects");
    let mut inventory = hgx();
    assert!(labeler.apply(&inventory).await.expect("labels"));
    assert!(!labeler.apply(&inventory).await.expect("unchanged"));
    inventory.gpus.truncate(4);
    inventory.fabric.leaf.clear();
    assert!(labeler.apply(&inventory).await.expect("relabels"));

    let patches = std::mem::take(&mut seen.lock().expect("lock").0);
    assert_eq!(patches.len(), 2);
    let (node, content_type, first) = &patches[0];
    assert_eq!(node, "hgx-01");
    assert_eq!(content_type, "application/merge-patch+json");
    assert_eq!(first["metadata"]["labels"]["suanli.io/gpus"], "8");
    assert_eq!(first["metadata"]["labels"]["suanli.io/spine"], Value::Null);
    let second = &patches[1].2["metadata"]["labels"];
    assert_eq!(second["suanli.io/gpus"], "4");
    // A label that no longer applies is removed (null in a merge patch).
    assert!(
        second
            .as_object()
            .expect("labels")
            .get("suanli.io/leaf")
            .is_some_and(Value::is_null)
    );

    let mut stranger = NodeLabeler::connect(&url, "not-a-node").expect("connects");
    let err = stranger
        .apply(&inventory)
        .await
        .expect_err("no such Node")
        .to_string();
    assert!(err.contains("labelling Node not-a-node"), "{err}");
    assert!(err.contains("not found"), "{err}");
    assert!(NodeLabeler::connect("kubernetes.local", "x").is_err());
}
