//! `/metrics`: the core's counts at each scrape, the submit-to-placed latency histogram and
//! the extender's calls, encoded by `prometheus-client` in the Prometheus text format
//! (0.0.4), which every scraper reads.

use std::collections::BTreeMap;
use std::fmt;

use prometheus_client::encoding::{EncodeGaugeValue, EncodeMetric, MetricEncoder, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::core::MetricsView;
use crate::extender::ExtenderCounters;

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the submit-to-placed latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Seconds from submit to placement over the scheduler's life. The core hands over the
/// samples taken since it was last asked with each [`MetricsView`]; whoever asks folds them
/// in here. A clone observes into the same histogram.
#[derive(Debug, Clone)]
pub struct PlacementLatency(Histogram);

impl Default for PlacementLatency {
    fn default() -> Self {
        PlacementLatency(Histogram::new(LATENCY_BUCKETS))
    }
}

impl PlacementLatency {
    pub fn observe(&self, samples_s: &[f64]) {
        for sample in samples_s {
            self.0.observe(*sample);
        }
    }
}

/// One scrape as Prometheus text. The core's counts are a snapshot, registered afresh each
/// time so that a state or model that is gone is gone from the answer too; the histogram
/// and the counters are the long-lived ones.
pub fn render(
    view: &MetricsView,
    latency: &PlacementLatency,
    extender: &ExtenderCounters,
) -> Result<String, fmt::Error> {
    let ratios = view
        .gpu_milli_by_model
        .iter()
        .map(|(model, (used, total))| {
            let ratio = if *total == 0 {
                0.0
            } else {
                *used as f64 / *total as f64
            };
            (model.clone(), ratio)
        })
        .collect();
    // The registry appends the full stop to each help text.
    let mut registry = Registry::with_prefix("suanli");
    registry.register(
        "jobs",
        "Jobs by state",
        GaugesByLabel::new("state", view.jobs_by_state.clone()),
    );
    registry.register(
        "queue_length",
        "Jobs waiting for placement",
        ConstGauge::new(view.pending),
    );
    registry.register(
        "connected_agents",
        "Agents with an open session",
        ConstGauge::new(view.connected_agents),
    );
    registry.register("nodes", "Registered nodes", ConstGauge::new(view.nodes));
    registry.register(
        "gpu_allocation_ratio",
        "Allocated GPU compute over capacity, by model",
        GaugesByLabel::new("model", ratios),
    );
    registry.register(
        "placement_latency_seconds",
        "Time from submit to placement",
        latency.0.clone(),
    );
    // Encoded as `suanli_extender_requests_total`: the encoder adds the suffix to counters.
    registry.register(
        "extender_requests",
        "kube-scheduler extender calls, by verb and outcome",
        extender.clone(),
    );
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Gauges of one name that differ in one label, from a snapshot: unlike a `Family`, nothing
/// is kept between scrapes, and the series come out in the label's order.
#[derive(Debug)]
struct GaugesByLabel<V> {
    label: &'static str,
    values: BTreeMap<String, V>,
}

impl<V> GaugesByLabel<V> {
    fn new(label: &'static str, values: BTreeMap<String, V>) -> Self {
        GaugesByLabel { label, values }
    }
}

impl<V> EncodeMetric for GaugesByLabel<V>
where
    V: EncodeGaugeValue + fmt::Debug + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (value, gauge) in &self.values {
            encoder
                .encode_family(&[(self.label, value.as_str())])?
                .encode_gauge(gauge)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> MetricsView {
        MetricsView {
            jobs_by_state: BTreeMap::from([("pending".into(), 3), ("running".into(), 1)]),
            pending: 3,
            connected_agents: 2,
            nodes: 2,
            gpu_milli_by_model: BTreeMap::from([("H100".into(), (4000, 16000))]),
            placement_latencies_s: vec![0.004, 0.2],
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let view = view();
        let latency = PlacementLatency::default();
        latency.observe(&view.placement_latencies_s);
        let text = render(&view, &latency, &ExtenderCounters::default()).expect("renders");
        for line in [
            "# HELP suanli_jobs Jobs by state.",
            "# TYPE suanli_jobs gauge",
            "suanli_jobs{state=\"pending\"} 3",
            "suanli_queue_length 3",
            "suanli_connected_agents 2",
            "suanli_nodes 2",
            "suanli_gpu_allocation_ratio{model=\"H100\"} 0.25",
            "# TYPE suanli_placement_latency_seconds histogram",
            "suanli_placement_latency_seconds_bucket{le=\"0.001\"} 0",
            "suanli_placement_latency_seconds_bucket{le=\"0.005\"} 1",
            "suanli_placement_latency_seconds_bucket{le=\"0.25\"} 2",
            "suanli_placement_latency_seconds_bucket{le=\"1\"} 2",
            "suanli_placement_latency_seconds_bucket{le=\"10\"} 2",
            "suanli_placement_latency_seconds_bucket{le=\"+Inf\"} 2",
            "suanli_placement_latency_seconds_count 2",
            "# HELP suanli_extender_requests_total kube-scheduler extender calls, by verb and outcome.",
            "# TYPE suanli_extender_requests_total counter",
            "suanli_extender_requests_total{verb=\"filter\",outcome=\"ok\"} 0",
            "suanli_extender_requests_total{verb=\"preempt\",outcome=\"shed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn a_model_that_is_gone_is_gone_from_the_answer() {
        let latency = PlacementLatency::default();
        let counters = ExtenderCounters::default();
        let first = render(&view(), &latency, &counters).expect("renders");
        assert!(first.contains("suanli_gpu_allocation_ratio{model=\"H100\"}"));
        let view = MetricsView {
            gpu_milli_by_model: BTreeMap::new(),
            ..view()
        };
        let second = render(&view, &latency, &counters).expect("renders");
        assert!(!second.contains("model=\"H100\""), "{second}");
    }

    #[test]
    fn samples_accumulate_across_scrapes() {
        let latency = PlacementLatency::default();
        let counters = ExtenderCounters::default();
        latency.observe(&[0.004]);
        render(&view(), &latency, &counters).expect("renders");
        latency.observe(&[0.2]);
        let text = render(&view(), &latency, &counters).expect("renders");
        assert!(
            text.contains("suanli_placement_latency_seconds_count 2\n"),
            "{text}"
        );
    }
}
