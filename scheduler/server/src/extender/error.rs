//! Why an extender call failed, and the status and reply that tell kube-scheduler so.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Verb;
use super::bind::BindError;
use super::limits::Pool;
use super::metrics::AnsweredWithError;
use super::request::RequestError;
use super::wire::{ExtenderBindingResult, ExtenderFilterResult, json_reply};
use crate::core::CoreError;
use crate::http::BodyError;

/// A call that failed. kube-scheduler is told `"{verb}: {problem}"`.
#[derive(Debug, thiserror::Error)]
#[error("{verb}: {problem}")]
pub struct CallError {
    pub verb: Verb,
    pub problem: Problem,
}

/// What went wrong in a call, whatever its verb.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// The body was too large (413), too slow (408), or broke off (400).
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The verb's calls at once are all taken (503, try again in a second).
    #[error("the scheduler is already answering {0}, the most it takes at once; try again")]
    Busy(Pool),
    /// The request does not parse or lacks what the call needs (400).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The core could not answer.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The pod could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

impl CallError {
    /// The status of the reply. A request that was well formed but could not be answered is
    /// a 200 with the message in the reply's `Error` field where the reply type has one
    /// (filter, bind): that is how kube-scheduler expects an extender to fail a pod. The
    /// others have no such field, and fail with 500.
    pub fn status(&self) -> StatusCode {
        match &self.problem {
            Problem::Body(e) => e.status(),
            Problem::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Request(_) => StatusCode::BAD_REQUEST,
            Problem::Core(_) | Problem::Bind(_) => match self.verb {
                Verb::Filter | Verb::Bind => StatusCode::OK,
                Verb::Prioritize | Verb::Preempt => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

/// The message in the verb's reply type: filter and bind replies carry it in `Error`;
/// prioritize and preempt replies have no such field and carry it as text.
impl IntoResponse for CallError {
    fn into_response(self) -> Response {
        let status = self.status();
        let busy = matches!(self.problem, Problem::Busy(_));
        let error = self.to_string();
        let mut response = match self.verb {
            Verb::Filter => error_reply(
                status,
                &ExtenderFilterResult {
                    error,
                    ..Default::default()
                },
            ),
            Verb::Bind => error_reply(status, &ExtenderBindingResult { error }),
            Verb::Prioritize | Verb::Preempt => (status, error).into_response(),
        };
        if busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A reply whose `Error` field is set, marked so that a 200 one is counted as an error.
fn error_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let mut response = json_reply(status, body);
    response.extensions_mut().insert(AnsweredWithError);
    response
}
