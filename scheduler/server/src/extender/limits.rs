//! How much one extender call may ask of the scheduler: its body's size and time to arrive,
//! the nodes it names, and the calls answered at once; and the wrapper that holds every
//! call to them before its handler runs.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::debug;

use super::error::{CallError, Problem};
use super::{ExtenderState, Verb};
use crate::http::{self, BodyLimit};

/// The most a filter, prioritize or preempt body may be.
///
/// kube-scheduler sends full Node objects (the chart sets `nodeCacheCapable: false`), but
/// only of the nodes its own filters passed, and it stops looking once it has found
/// `numFeasibleNodesToFind` of them: with the default `percentageOfNodesToScore` that is
/// max(100, 10 % of 5,000) = 500 on a 5,000-node cluster. A GPU node with its managed
/// fields, 50 cached images (kubelet's `nodeStatusMaxImages`) and feature-discovery labels
/// marshals to about 30 KB, so such a request is about 15 MB plus a Pod of at most 1.5 MB
/// (etcd's object limit). 32 MiB fits that twice over, or all 5,000 nodes at 6.7 KB each for
/// a profile with `percentageOfNodesToScore: 100` (larger Nodes than that, on that many,
/// want `nodeCacheCapable: true`: names only, tens of bytes a node).
pub const MAX_SCORING_BODY_BYTES: usize = 32 * 1024 * 1024;
/// The most a bind body may be: it names one pod and one node.
pub const MAX_BIND_BODY_BYTES: usize = 64 * 1024;
/// The most nodes one request may name (`NodeNames`, `Nodes.items`, or a preemption's nodes):
/// twice the largest cluster Suanli supports, 5,000 nodes.
pub const MAX_NODES: usize = 10_000;
/// Filter, prioritize and preempt calls answered at once; past it a call is refused.
///
/// Refused at once with 503 and `Retry-After: 1`, not queued. kube-scheduler's scheduling
/// cycle is serial: one kube-scheduler makes one of these calls at a time and waits for it
/// (up to `httpTimeout`), so only a second scheduler (a leader hand-over, another profile's
/// deployment) or a misbehaving client ever has more in flight. A queued call would hold its
/// connection while its caller may have given up; a refused one fails that pod's attempt at
/// once, and kube-scheduler retries the pod after its backoff (1 s, doubling to 10 s).
/// Admission comes before the body is read, so at most this many bodies are held. Each call
/// holds its body or the nodes parsed out of it (kept as their text) and its answer, each
/// no larger than [`MAX_SCORING_BODY_BYTES`]: a few hundred MiB at the very most, however
/// many clients call.
pub const MAX_SCORING_CALLS: usize = 4;
/// Bind calls answered at once. kube-scheduler binds each pod in its own goroutine, so binds
/// overlap; they have their own pool, which scoring calls cannot take, and their bodies are
/// small ([`MAX_BIND_BODY_BYTES`]).
pub const MAX_BIND_CALLS: usize = 64;

/// How many calls the extender answers at once, and how long a body may take to arrive.
#[derive(Debug, Clone)]
pub struct ExtenderLimits {
    scoring: Arc<Semaphore>,
    binding: Arc<Semaphore>,
    body_timeout: Duration,
}

impl ExtenderLimits {
    pub fn new(body_timeout: Duration) -> Self {
        ExtenderLimits {
            scoring: Arc::new(Semaphore::new(MAX_SCORING_CALLS)),
            binding: Arc::new(Semaphore::new(MAX_BIND_CALLS)),
            body_timeout,
        }
    }

    fn semaphore(&self, pool: Pool) -> &Arc<Semaphore> {
        match pool {
            Pool::Scoring => &self.scoring,
            Pool::Binding => &self.binding,
        }
    }
}

/// The calls answered at once that a verb's call must find room among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Filter, prioritize and preempt: [`MAX_SCORING_CALLS`].
    Scoring,
    /// Bind: [`MAX_BIND_CALLS`].
    Binding,
}

impl Pool {
    fn of(verb: Verb) -> Pool {
        match verb {
            Verb::Bind => Pool::Binding,
            Verb::Filter | Verb::Prioritize | Verb::Preempt => Pool::Scoring,
        }
    }
}

/// The pool as a refusal names it: "64 bind calls".
impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pool::Binding => write!(f, "{MAX_BIND_CALLS} bind calls"),
            Pool::Scoring => write!(
                f,
                "{MAX_SCORING_CALLS} filter, prioritize and preempt calls"
            ),
        }
    }
}

fn max_body_bytes(verb: Verb) -> usize {
    match verb {
        Verb::Bind => MAX_BIND_BODY_BYTES,
        Verb::Filter | Verb::Prioritize | Verb::Preempt => MAX_SCORING_BODY_BYTES,
    }
}

/// Answers one call within the limits, and counts how it ended.
pub(super) async fn answer<F, Fut>(
    verb: Verb,
    state: ExtenderState,
    request: Request,
    handler: F,
) -> Response
where
    F: FnOnce(ExtenderState, Bytes) -> Fut,
    Fut: Future<Output = Result<Response, Problem>>,
{
    let counters = state.counters.clone();
    let response = match limited(verb, state, request, handler).await {
        Ok(response) => response,
        Err(problem) => CallError { verb, problem }.into_response(),
    };
    counters.count(verb, &response);
    response
}

/// Refuses a call whose declared body is too large, or that finds no room, before reading
/// its body; then reads the body within its limits and hands it to `handler`.
async fn limited<F, Fut>(
    verb: Verb,
    state: ExtenderState,
    request: Request,
    handler: F,
) -> Result<Response, Problem>
where
    F: FnOnce(ExtenderState, Bytes) -> Fut,
    Fut: Future<Output = Result<Response, Problem>>,
{
    let limit = BodyLimit {
        max_bytes: max_body_bytes(verb),
        timeout: state.limits.body_timeout,
    };
    let refused = |e: http::BodyError| {
        debug!(verb = verb.name(), error = %e, "Extender call refused.");
        Problem::Body(e)
    };
    http::declared_length_fits(request.headers(), limit.max_bytes).map_err(refused)?;
    let pool = Pool::of(verb);
    let Ok(_admitted) = state.limits.semaphore(pool).clone().try_acquire_owned() else {
        debug!(verb = verb.name(), "Extender call shed: too many at once.");
        return Err(Problem::Busy(pool));
    };
    let body = http::read_body(request, limit).await.map_err(refused)?;
    handler(state, body).await
}
