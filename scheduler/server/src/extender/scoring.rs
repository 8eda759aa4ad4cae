//! Filter and prioritize: how each candidate node could take a pod, from the core's policy,
//! as kube-scheduler's pass/fail and 0–10 scores.

use std::collections::{BTreeMap, HashSet};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;
use suanli_engine::JobSpec;

use super::error::Problem;
use super::request::{RequestError, requested_job};
use super::wire::{ExtenderArgs, ExtenderFilterResult, HostPriority, NodeList, json_reply};
use super::{ExtenderSettings, ExtenderState};
use crate::core::{CoreError, CoreHandle, NodeVerdict};

/// Highest score the extender API allows (`extenderv1.MaxExtenderPriority`).
pub const MAX_PRIORITY: i64 = 10;

/// A filter or prioritize request, read.
struct ScoringRequest {
    args: ExtenderArgs,
    /// The candidates' names, from `NodeNames` or else the `Nodes` items in their order.
    names: Vec<String>,
    /// The pod as a job; `None` when it asks for no GPU.
    job: Option<JobSpec>,
}

impl ScoringRequest {
    fn parse(body: &[u8], settings: &ExtenderSettings) -> Result<Self, RequestError> {
        let args = ExtenderArgs::parse(body)?;
        let names = candidate_names(&args)?;
        let job = requested_job(args.pod.as_ref(), settings)?.map(|job| job.spec);
        Ok(ScoringRequest { args, names, job })
    }
}

/// The candidate node names, from `NodeNames` or the full `Nodes` list.
fn candidate_names(args: &ExtenderArgs) -> Result<Vec<String>, RequestError> {
    if let Some(names) = &args.node_names {
        return Ok(names.clone());
    }
    let Some(list) = &args.nodes else {
        return Ok(Vec::new());
    };
    list.items
        .iter()
        .enumerate()
        .map(|(index, node)| node_name(node).ok_or(RequestError::UnnamedNode { index }))
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

async fn score(
    core: &CoreHandle,
    spec: JobSpec,
    nodes: Vec<String>,
) -> Result<Vec<NodeVerdict>, CoreError> {
    core.score_pod(spec, nodes).await
}

pub(super) async fn filter(state: ExtenderState, body: Bytes) -> Result<Response, Problem> {
    let parsed = ScoringRequest::parse(&body, &state.settings);
    // The nodes are parsed out of it: the body need not be held while they are scored.
    drop(body);
    let ScoringRequest { args, names, job } = parsed?;
    let verdicts = match job {
        None => names.iter().map(|n| NodeVerdict::new(n, Ok(0))).collect(),
        Some(spec) => score(&state.core, spec, names.clone()).await?,
    };
    let passing: HashSet<&str> = verdicts
        .iter()
        .filter(|v| v.points.is_ok())
        .map(|v| v.node.as_str())
        .collect();
    let failed_nodes = verdicts
        .iter()
        .filter_map(|v| {
            v.points
                .as_ref()
                .err()
                .map(|e| (v.node.clone(), format!("suanli: {e}")))
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
    Ok(json_reply(StatusCode::OK, &result))
}

pub(super) async fn prioritize(state: ExtenderState, body: Bytes) -> Result<Response, Problem> {
    let parsed = ScoringRequest::parse(&body, &state.settings);
    drop(body);
    let ScoringRequest { names, job, .. } = parsed?;
    let scores = match job {
        None => names
            .into_iter()
            .map(|host| HostPriority { host, score: 0 })
            .collect(),
        Some(spec) => scale_scores(&score(&state.core, spec, names).await?),
    };
    Ok(json_reply(StatusCode::OK, &scores))
}

/// Policy points scaled to 0–10 over the nodes that can take the pod: the best gets 10,
/// the worst 0; nodes that cannot take it get 0.
pub fn scale_scores(verdicts: &[NodeVerdict]) -> Vec<HostPriority> {
    let points: Vec<i64> = verdicts
        .iter()
        .filter_map(|v| v.points.as_ref().ok().copied())
        .collect();
    let (lo, hi) = (
        points.iter().min().copied().unwrap_or(0),
        points.iter().max().copied().unwrap_or(0),
    );
    verdicts
        .iter()
        .map(|v| HostPriority {
            host: v.node.clone(),
            score: match &v.points {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_scale_to_zero_through_ten() {
        let verdicts = vec![
            NodeVerdict::new("a", Ok(-50)),
            NodeVerdict::new("b", Ok(150)),
            NodeVerdict::new("c", Err("full".into())),
            NodeVerdict::new("d", Ok(50)),
        ];
        let scores: Vec<i64> = scale_scores(&verdicts).iter().map(|h| h.score).collect();
        assert_eq!(scores, [0, 10, 0, 5]);
        let same = vec![NodeVerdict::new("a", Ok(7)), NodeVerdict::new("b", Ok(7))];
        assert!(scale_scores(&same).iter().all(|h| h.score == MAX_PRIORITY));
    }
}
