//! HTTP endpoints: `/healthz` and `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::core::{Command, CoreHandle, MetricsView};

/// Upper bounds (seconds) of the submit-to-placed latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram fed from the core's per-placement samples.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&mut self, value: f64) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if value <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    fn render(&self, out: &mut String, name: &str) {
        for (bound, count) in LATENCY_BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug, Clone)]
pub struct HttpState {
    pub core: CoreHandle,
    pub latency: Arc<Mutex<Histogram>>,
    pub extender: Arc<crate::extender::ExtenderCounters>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.core.ask(|reply| Command::Metrics { reply }).await {
        Ok(_) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let view = match state.core.ask(|reply| Command::Metrics { reply }).await {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("{e}\n"),
            );
        }
    };
    let mut text = match state.latency.lock() {
        Ok(mut histogram) => render(&view, &mut histogram),
        Err(_) => String::from("# latency histogram unavailable\n"),
    };
    state.extender.render(&mut text);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
}

/// Renders the metrics, folding the new latency samples into the histogram.
pub fn render(view: &MetricsView, histogram: &mut Histogram) -> String {
    for sample in &view.placement_latencies_s {
        histogram.observe(*sample);
    }
    let mut out = String::new();
    out.push_str("# HELP suanli_jobs Jobs by state.\n# TYPE suanli_jobs gauge\n");
    for (state, count) in &view.jobs_by_state {
        let _ = writeln!(out, "suanli_jobs{{state=\"{state}\"}} {count}");
    }
    out.push_str("# HELP suanli_queue_length Jobs waiting for placement.\n# TYPE suanli_queue_length gauge\n");
    let _ = writeln!(out, "suanli_queue_length {}", view.pending);
    out.push_str("# HELP suanli_connected_agents Agents with an open session.\n# TYPE suanli_connected_agents gauge\n");
    let _ = writeln!(out, "suanli_connected_agents {}", view.connected_agents);
    out.push_str("# HELP suanli_nodes Registered nodes.\n# TYPE suanli_nodes gauge\n");
    let _ = writeln!(out, "suanli_nodes {}", view.nodes);
    out.push_str("# HELP suanli_gpu_allocation_ratio Allocated GPU compute over capacity, by model.\n# TYPE suanli_gpu_allocation_ratio gauge\n");
    for (model, (used, total)) in &view.gpu_milli_by_model {
        let ratio = if *total == 0 {
            0.0
        } else {
            *used as f64 / *total as f64
        };
        let _ = writeln!(
            out,
            "suanli_gpu_allocation_ratio{{model=\"{model}\"}} {ratio:.4}"
        );
    }
    out.push_str("# HELP suanli_placement_latency_seconds Time from submit to placement.\n# TYPE suanli_placement_latency_seconds histogram\n");
    histogram.render(&mut out, "suanli_placement_latency_seconds");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn renders_prometheus_text() {
        let view = MetricsView {
            jobs_by_state: BTreeMap::from([("pending".into(), 3), ("running".into(), 1)]),
            pending: 3,
            connected_agents: 2,
            nodes: 2,
            gpu_milli_by_model: BTreeMap::from([("H100".into(), (4000, 16000))]),
            placement_latencies_s: vec![0.004, 0.2],
        };
        let mut h = Histogram::default();
        let text = render(&view, &mut h);
        assert!(text.contains("suanli_jobs{state=\"pending\"} 3\n"));
        assert!(text.contains("suanli_gpu_allocation_ratio{model=\"H100\"} 0.2500\n"));
        assert!(text.contains("suanli_placement_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("suanli_placement_latency_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("suanli_placement_latency_seconds_count 2\n"));
        assert!(text.contains("suanli_connected_agents 2\n"));
    }
}
