//! Preempt: of kube-scheduler's candidate nodes and the pods it would evict on each, keep the
//! nodes where the core says the pod then fits.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;

use super::ExtenderState;
use super::error::Problem;
use super::request::requested_job;
use super::wire::{
    ExtenderPreemptionArgs, ExtenderPreemptionResult, MetaPod, MetaVictims, json_reply,
};

pub(super) async fn preempt(state: ExtenderState, body: Bytes) -> Result<Response, Problem> {
    let parsed = ExtenderPreemptionArgs::parse(&body);
    drop(body);
    let args = parsed?;
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
    let Some(job) = requested_job(args.pod.as_ref(), &state.settings)? else {
        return Ok(json_reply(
            StatusCode::OK,
            &ExtenderPreemptionResult {
                node_name_to_meta_victims: proposed,
            },
        ));
    };
    // Each node with the UIDs of the pods that would be evicted from it.
    let candidates: Vec<(String, Vec<String>)> = proposed
        .iter()
        .map(|(node, v)| (node.clone(), v.pods.iter().map(|p| p.uid.clone()).collect()))
        .collect();
    let verdicts = state.core.preempt_pod(job.spec, candidates).await?;
    let fits: HashMap<String, bool> = verdicts
        .into_iter()
        .map(|v| (v.node, v.points.is_ok()))
        .collect();
    proposed.retain(|node, _| fits.get(node).copied().unwrap_or(false));
    Ok(json_reply(
        StatusCode::OK,
        &ExtenderPreemptionResult {
            node_name_to_meta_victims: proposed,
        },
    ))
}
