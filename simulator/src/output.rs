//! Terminal tables, `summary.json`, CSV series and SVG charts for both protocols.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::fill::{FillRun, FillSummary};
use crate::replay::ReplayRun;
use crate::svg::{LineChart, Series, policy_color};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, WriteError> {
    let path = dir.join(name);
    fs::write(&path, contents).map_err(|source| WriteError {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn opt(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!(round(v, 4)))
}

/// Facts about the input that every report carries.
#[derive(Debug, Clone, Default)]
pub struct InputFacts {
    pub source: String,
    pub nodes: usize,
    pub gpus: u64,
    pub items: usize,
    pub skipped_rows: Vec<(String, usize)>,
}

impl InputFacts {
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("source".into(), json!(self.source));
        m.insert("nodes".into(), json!(self.nodes));
        m.insert("gpus".into(), json!(self.gpus));
        m.insert(
            "skipped_rows".into(),
            Value::Object(
                self.skipped_rows
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect(),
            ),
        );
        m
    }
}

pub fn fill_json(
    facts: &InputFacts,
    tune: f64,
    mix_shapes: usize,
    summaries: &[FillSummary],
    runs: &[FillRun],
    wall_ms: f64,
) -> Value {
    let mut root = facts.to_json();
    root.insert("protocol".into(), json!("fill"));
    root.insert("pods".into(), json!(facts.items));
    root.insert("tune".into(), json!(tune));
    root.insert("workload_mix_shapes".into(), json!(mix_shapes));
    root.insert("wall_ms".into(), json!(round(wall_ms, 1)));
    let mut policies = Map::new();
    for s in summaries {
        let per_seed: Vec<Value> = runs
            .iter()
            .filter(|r| r.policy == s.policy)
            .map(|r| {
                json!({
                    "seed": r.seed,
                    "unallocated_gpu_pct_at_100": opt(r.unallocated_pct_at_100()),
                    "pods_arrived": r.pods_arrived,
                    "pods_dropped": r.pods_dropped,
                    "wall_ms": round(r.wall_ms, 1),
                })
            })
            .collect();
        policies.insert(
            s.policy.name().to_string(),
            json!({
                "unallocated_gpu_pct_at_100": opt(s.unallocated_gpu_pct_at_100),
                "alloc_pct_at_100": opt(s.alloc_pct_at_100),
                "unallocated_gpu_pct_std": opt(s.unallocated_gpu_pct_std),
                "fragmented_gpu_pct_at_100": opt(s.fragmented_gpu_pct_at_100),
                "published_unallocated_gpu_pct": s.published_unallocated_gpu_pct,
                "seeds": s.seeds,
                "wall_ms": round(s.wall_ms, 1),
                "pods_arrived": round(s.pods_arrived, 1),
                "pods_dropped": round(s.pods_dropped, 1),
                "per_seed": per_seed,
            }),
        );
    }
    root.insert("policies".into(), Value::Object(policies));
    Value::Object(root)
}

fn fmt_opt(v: Option<f64>, places: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.places$}"))
}

/// Renders rows as an aligned table; the first column left-aligned, the rest right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        for (i, cell) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, "{cell:<w$}", w = widths[0]);
            } else {
                let _ = write!(out, "  {cell:>w$}", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
        &mut out,
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn fill_table(summaries: &[FillSummary]) -> String {
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.policy.name().to_string(),
                fmt_opt(s.unallocated_gpu_pct_at_100, 2),
                fmt_opt(s.unallocated_gpu_pct_std, 2),
                format!("{:.2}", s.published_unallocated_gpu_pct),
                fmt_opt(
                    s.unallocated_gpu_pct_at_100
                        .map(|u| u - s.published_unallocated_gpu_pct),
                    2,
                ),
                fmt_opt(s.fragmented_gpu_pct_at_100, 2),
                format!("{:.0}", s.pods_dropped),
                format!("{}", s.seeds.len()),
                format!("{:.0}", s.wall_ms),
            ]
        })
        .collect();
    table(
        &[
            "policy",
            "unalloc% @100",
            "std",
            "published",
            "diff",
            "frag% @100",
            "dropped",
            "seeds",
            "ms/run",
        ],
        &rows,
    )
}

pub fn write_fill_outputs(
    dir: &Path,
    summary: &Value,
    summaries: &[FillSummary],
) -> Result<Vec<PathBuf>, WriteError> {
    fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let pretty = serde_json::to_string_pretty(summary).expect("a JSON value always serializes");
    written.push(write_file(dir, "summary.json", &(pretty + "\n"))?);
    let mut csv = String::from("policy,arrived_pct,alloc_pct\n");
    for s in summaries {
        for (p, a) in s.alloc_pct_by_arrived_pct.iter().enumerate() {
            let _ = writeln!(csv, "{},{p},{a:.4}", s.policy);
        }
    }
    written.push(write_file(dir, "alloc_vs_arrived.csv", &csv)?);
    let max_x = summaries
        .iter()
        .map(|s| s.alloc_pct_by_arrived_pct.len())
        .max()
        .unwrap_or(1)
        .max(2)
        - 1;
    let mut series: Vec<Series> = summaries
        .iter()
        .map(|s| Series {
            name: s.policy.name().to_string(),
            color: policy_color(s.policy).to_string(),
            points: s
                .alloc_pct_by_arrived_pct
                .iter()
                .enumerate()
                .map(|(p, a)| (p as f64, *a))
                .collect(),
            dashed: false,
        })
        .collect();
    series.push(Series {
        name: "ideal".into(),
        color: "#000000".into(),
        points: vec![(0.0, 0.0), (100.0, 100.0), (max_x as f64, 100.0)],
        dashed: true,
    });
    let chart = LineChart {
        title: "GPU allocation vs arrived workload (fill)".into(),
        x_label: "arrived GPU request (% of capacity)".into(),
        y_label: "allocated GPU (% of capacity)".into(),
        x_range: (0.0, max_x as f64),
        y_range: (0.0, 100.0),
        x_log: false,
        series,
    };
    written.push(write_file(dir, "alloc_vs_arrived.svg", &chart.render())?);
    Ok(written)
}

fn dist_json(d: &crate::stats::Distribution) -> Value {
    json!({
        "count": d.count,
        "mean": round(d.mean, 2),
        "p50": d.p50,
        "p95": d.p95,
        "p99": d.p99,
        "max": d.max,
    })
}

pub fn replay_json(facts: &InputFacts, runs: &[ReplayRun], wall_ms: f64) -> Value {
    let mut root = facts.to_json();
    root.insert("protocol".into(), json!("replay"));
    root.insert("jobs".into(), json!(facts.items));
    root.insert("wall_ms".into(), json!(round(wall_ms, 1)));
    let mut policies = Map::new();
    for r in runs {
        let tenants: Map<String, Value> = r
            .tenants
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    json!({
                        "jobs": t.jobs,
                        "rejected": t.rejected,
                        "gpu_hours": round(t.gpu_hours, 2),
                        "queueing_delay_s": dist_json(&t.queueing_delay_s),
                        "jct_s": dist_json(&t.jct_s),
                    }),
                )
            })
            .collect();
        let mut entry = json!({
                "seed": r.seed,
                "jobs": r.jobs,
                "completed": r.completed,
                "rejected": r.rejected,
                "makespan_s": r.makespan_s,
                "queueing_delay_s": dist_json(&r.queueing_delay_s),
                "jct_s": dist_json(&r.jct_s),
                "mean_utilization_pct": round(r.mean_utilization_pct, 3),
                "mean_fragmented_gpu_pct": opt(r.mean_fragmented_pct),
                "wall_ms": round(r.wall_ms, 1),
                "tenants": tenants,
        });
        if r.quotas.is_some() {
            entry["preemptions"] = json!(r.preemptions);
        }
        policies.insert(r.label(), entry);
    }
    root.insert("policies".into(), Value::Object(policies));
    Value::Object(root)
}

/// Seconds in a short human form: `45s`, `12.5m`, `3.4h`, `2.1d`.
pub fn fmt_seconds(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0}s")
    } else if s < 7200.0 {
        format!("{:.1}m", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86_400.0)
    }
}

pub fn replay_table(runs: &[ReplayRun]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let d = &r.queueing_delay_s;
            vec![
                r.label(),
                format!("{}/{}", r.completed, r.jobs),
                r.rejected.to_string(),
                fmt_seconds(d.mean),
                fmt_seconds(d.p50),
                fmt_seconds(d.p95),
                fmt_seconds(d.p99),
                fmt_seconds(r.jct_s.mean),
                fmt_seconds(r.jct_s.p95),
                format!("{:.1}", r.mean_utilization_pct),
                fmt_opt(r.mean_fragmented_pct, 1),
                format!("{:.0}", r.wall_ms),
            ]
        })
        .collect();
    table(
        &[
            "policy",
            "done",
            "rejected",
            "wait mean",
            "p50",
            "p95",
            "p99",
            "JCT mean",
            "JCT p95",
            "util%",
            "frag%",
            "ms",
        ],
        &rows,
    )
}

/// Mean queueing delay per tenant (rows) and policy (columns).
pub fn tenant_table(runs: &[ReplayRun]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let labels: Vec<String> = runs.iter().map(ReplayRun::label).collect();
    let mut header = vec!["tenant", "jobs"];
    header.extend(labels.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = first
        .tenants
        .iter()
        .map(|(name, t)| {
            let mut row = vec![name.clone(), t.jobs.to_string()];
            row.extend(runs.iter().map(|r| {
                r.tenants
                    .get(name)
                    .map_or("-".into(), |t| fmt_seconds(t.queueing_delay_s.mean))
            }));
            row
        })
        .collect();
    table(&header, &rows)
}

/// Queueing delay and JCT per tenant, without quotas (`plain`) and with them (`quota`),
/// for the `top` tenants by job count.
pub fn quota_tenant_table(plain: &ReplayRun, quota: &ReplayRun, top: usize) -> String {
    let mut tenants: Vec<(&String, usize)> =
        plain.tenants.iter().map(|(n, t)| (n, t.jobs)).collect();
    tenants.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let cells = |run: &ReplayRun, name: &str| -> Vec<String> {
        run.tenants.get(name).map_or(vec!["-".into(); 4], |t| {
            let d = &t.queueing_delay_s;
            vec![
                fmt_seconds(d.mean),
                fmt_seconds(d.p50),
                fmt_seconds(d.p95),
                fmt_seconds(t.jct_s.mean),
            ]
        })
    };
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .take(top)
        .map(|(name, jobs)| {
            let mut row = vec![(*name).clone(), jobs.to_string()];
            row.extend(cells(plain, name));
            row.extend(cells(quota, name));
            row
        })
        .collect();
    table(
        &[
            "tenant",
            "jobs",
            "wait mean",
            "p50",
            "p95",
            "JCT mean",
            "| quota wait mean",
            "p50",
            "p95",
            "JCT mean",
        ],
        &rows,
    )
}

/// The policy's color; the queue-scheduler runs get their own, so no chart shows two
/// series in one color.
fn run_color(run: &ReplayRun) -> &'static str {
    match run.quotas {
        Some("fair") => "#CC79A7",
        Some(_) => "#000000",
        None => policy_color(run.policy),
    }
}

pub fn write_replay_outputs(
    dir: &Path,
    summary: &Value,
    runs: &[ReplayRun],
) -> Result<Vec<PathBuf>, WriteError> {
    fs::create_dir_all(dir).map_err(|source| WriteError {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let pretty = serde_json::to_string_pretty(summary).expect("a JSON value always serializes");
    written.push(write_file(dir, "summary.json", &(pretty + "\n"))?);

    let mut csv =
        String::from("policy,time_s,used_gpu_pct,fragmented_gpu_pct,queued_jobs,running_jobs\n");
    for r in runs {
        for s in &r.samples {
            let frag = s
                .fragmented_gpu_pct
                .map_or(String::new(), |f| format!("{f:.4}"));
            let _ = writeln!(
                csv,
                "{},{},{:.4},{frag},{},{}",
                r.policy, s.time, s.used_gpu_pct, s.queued_jobs, s.running_jobs
            );
        }
    }
    written.push(write_file(dir, "utilization.csv", &csv)?);

    // The delay distribution as 1001 quantiles per policy keeps the file small for any trace.
    let mut csv = String::from("policy,quantile,delay_s\n");
    let mut cdf_series = Vec::new();
    let mut max_delay = 1.0f64;
    for r in runs {
        let mut sorted = r.delays.clone();
        sorted.sort_by(f64::total_cmp);
        let mut points = Vec::new();
        for i in 0..=1000 {
            let q = i as f64 / 1000.0;
            let d = crate::stats::percentile(&sorted, q);
            let _ = writeln!(csv, "{},{q:.3},{d}", r.label());
            points.push((d.max(1.0), q));
            max_delay = max_delay.max(d);
        }
        cdf_series.push(Series {
            name: r.label(),
            color: run_color(r).to_string(),
            points,
            dashed: false,
        });
    }
    written.push(write_file(dir, "queueing_delay.csv", &csv)?);

    let hours = runs
        .iter()
        .flat_map(|r| r.samples.last())
        .map(|s| s.time as f64 / 3600.0)
        .fold(0.0, f64::max);
    let util = LineChart {
        title: "GPU utilization over time (replay)".into(),
        x_label: "time since first arrival (hours)".into(),
        y_label: "allocated GPU (% of capacity)".into(),
        x_range: (0.0, hours.max(1e-3)),
        y_range: (0.0, 100.0),
        x_log: false,
        series: runs
            .iter()
            .map(|r| Series {
                name: r.label(),
                color: run_color(r).to_string(),
                points: r
                    .samples
                    .iter()
                    .map(|s| (s.time as f64 / 3600.0, s.used_gpu_pct))
                    .collect(),
                dashed: false,
            })
            .collect(),
    };
    written.push(write_file(dir, "utilization.svg", &util.render())?);
    let cdf = LineChart {
        title: "Queueing delay CDF (replay)".into(),
        x_label: "queueing delay (seconds, log scale; 0 drawn at 1)".into(),
        y_label: "fraction of jobs".into(),
        x_range: (1.0, 10f64.powf(max_delay.log10().ceil().max(1.0))),
        y_range: (0.0, 1.0),
        x_log: true,
        series: cdf_series,
    };
    written.push(write_file(dir, "queueing_delay_cdf.svg", &cdf.render())?);
    Ok(written)
}
