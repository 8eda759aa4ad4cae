//! The extender's calls counted by verb and outcome, as `suanli_extender_requests_total` on
//! `/metrics`.

use std::fmt;

use axum::http::StatusCode;
use axum::response::Response;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;

use super::Verb;

/// How a call ended: answered, answered with an error for kube-scheduler, refused as
/// malformed, or refused by a limit: a body too large or too slow, or too many calls at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    BadRequest,
    TooLarge,
    TimedOut,
    Shed,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::TimedOut,
        Outcome::Shed,
    ];

    /// The `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::TimedOut => "timed_out",
            Outcome::Shed => "shed",
        }
    }

    /// 413, 408 and 503 come only from the limits in `limits`.
    fn of(response: &Response) -> Outcome {
        match response.status() {
            StatusCode::BAD_REQUEST => Outcome::BadRequest,
            StatusCode::PAYLOAD_TOO_LARGE => Outcome::TooLarge,
            StatusCode::REQUEST_TIMEOUT => Outcome::TimedOut,
            StatusCode::SERVICE_UNAVAILABLE => Outcome::Shed,
            status
                if !status.is_success()
                    || response.extensions().get::<AnsweredWithError>().is_some() =>
            {
                Outcome::Error
            }
            _ => Outcome::Ok,
        }
    }
}

/// Marks a 200 answer whose `Error` field is set.
#[derive(Debug, Clone, Copy)]
pub(super) struct AnsweredWithError;

/// Calls per verb and outcome. Every pair is a series from the start, at 0 until counted, so
/// a rate over any of them is defined; they are encoded in a fixed order (a `Family` would
/// create them on first use and list them in no particular order). A clone counts into the
/// same series.
#[derive(Debug, Clone, Default)]
pub struct ExtenderCounters {
    counts: [[Counter; Outcome::ALL.len()]; Verb::ALL.len()],
}

impl ExtenderCounters {
    pub(super) fn count(&self, verb: Verb, response: &Response) {
        self.counts[verb as usize][Outcome::of(response) as usize].inc();
    }
}

impl EncodeMetric for ExtenderCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for verb in Verb::ALL {
            for outcome in Outcome::ALL {
                let labels = [("verb", verb.name()), ("outcome", outcome.name())];
                self.counts[verb as usize][outcome as usize]
                    .encode(encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}
