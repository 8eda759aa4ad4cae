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
//!
//! Where to look: `wire` holds the request and reply types as kube-scheduler sends and reads
//! them; `request` reads a body into them, field by field, within [`MAX_NODES`]; `pod` reads
//! a Pod's GPU demand as a Suanli job; `scoring` answers filter and prioritize, `bind` and
//! `preempt` their calls; `limits` bounds each call and `metrics` counts how it ended;
//! `error` says why a call failed and which status and reply carry it.

mod bind;
mod error;
mod limits;
mod metrics;
mod pod;
mod preempt;
mod request;
mod scoring;
mod wire;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::routing::post;

use crate::core::CoreHandle;
use crate::kubernetes::KubeApi;

pub use limits::{
    ExtenderLimits, MAX_BIND_BODY_BYTES, MAX_BIND_CALLS, MAX_NODES, MAX_SCORING_BODY_BYTES,
    MAX_SCORING_CALLS,
};
pub use metrics::ExtenderCounters;
pub use pod::{AnnotationProblem, PodError, PodJob, QuantityError, parse_quantity, pod_job};
pub use scoring::{MAX_PRIORITY, scale_scores};
pub use wire::{
    ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, ExtenderFilterResult,
    ExtenderPreemptionArgs, ExtenderPreemptionResult, HostPriority, MetaPod, MetaVictims, NodeList,
    VictimMetadata, VictimPod, Victims,
};

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
            post(|State(s): State<ExtenderState>, r: Request| {
                limits::answer(Verb::Filter, s, r, scoring::filter)
            }),
        )
        .route(
            "/extender/prioritize",
            post(|State(s): State<ExtenderState>, r: Request| {
                limits::answer(Verb::Prioritize, s, r, scoring::prioritize)
            }),
        )
        .route(
            "/extender/bind",
            post(|State(s): State<ExtenderState>, r: Request| {
                limits::answer(Verb::Bind, s, r, bind::bind)
            }),
        )
        .route(
            "/extender/preempt",
            post(|State(s): State<ExtenderState>, r: Request| {
                limits::answer(Verb::Preempt, s, r, preempt::preempt)
            }),
        )
        .with_state(state)
}

/// The extender's calls, as kube-scheduler names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Filter,
    Prioritize,
    Bind,
    Preempt,
}

impl Verb {
    pub const ALL: [Verb; 4] = [Verb::Filter, Verb::Prioritize, Verb::Bind, Verb::Preempt];

    /// The name used in messages, logs and the `verb` label of `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Filter => "filter",
            Verb::Prioritize => "prioritize",
            Verb::Bind => "bind",
            Verb::Preempt => "preempt",
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
