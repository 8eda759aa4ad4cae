//! Rendering: kubectl-style tables for people, JSON and YAML of the view structs for scripts.
//! Every renderer takes "now" as an argument so its output is a pure function of its input.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;
use suanli_engine::JobSpec;
use suanli_engine::job::GpuPolicy;

use crate::error::CliError;
use crate::view::{
    DescribeView, EventView, JobView, NodeTelemetryView, NodeView, PlacementView, ResolveView,
    TelemetryView,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// A table with more columns.
    Wide,
    /// JSON, for scripts.
    Json,
    /// YAML, for scripts.
    Yaml,
}

impl Format {
    pub fn is_data(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// JSON (pretty, newline-terminated) or YAML of `value`.
pub fn data<T: Serialize>(format: Format, value: &T) -> Result<String, CliError> {
    let text = match format {
        Format::Yaml => serde_yaml_ng::to_string(value).map_err(|e| e.to_string()),
        _ => serde_json::to_string_pretty(value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| e.to_string()),
    };
    text.map_err(|e| CliError::Failed(format!("cannot serialize the output: {e}")))
}

/// One JSON object per line, for streams (`watch -o json`).
pub fn json_line<T: Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| CliError::Failed(format!("cannot serialize the output: {e}")))
}

/// `text` with its control characters escaped the way Rust's `escape_debug` writes them
/// (`\u{1b}`, `\r`, `\n`, `\t`), everything else as it is. Job names, reasons, messages,
/// commands and CIDs come from users and the scheduler; printed raw, an ESC could recolor or
/// rewrite the terminal and a CR or LF could forge lines. Every table cell passes through
/// here, and so does every line of text built from such strings.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line of output: `text` made [`printable`], then a newline.
pub fn line(text: &str) -> String {
    let mut out = printable(text).into_owned();
    out.push('\n');
    out
}

/// Left-aligned columns three spaces apart, upper-case headers, like kubectl. Cells are
/// made [`printable`].
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| match printable(&cell) {
                    Cow::Borrowed(_) => cell,
                    Cow::Owned(escaped) => escaped,
                })
                .collect(),
        );
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

// ---- small formats ---------------------------------------------------------------------------

/// `2024-11-27T04:55:01Z` (UTC), to the second (rounded down). A time outside the years
/// -9999..=9999 has no calendar date here and is shown as its raw milliseconds.
pub fn format_time(unix_ms: i64) -> String {
    let Ok(t) = jiff::Timestamp::from_millisecond(unix_ms) else {
        return format!("{unix_ms}ms");
    };
    let d = jiff::tz::Offset::UTC.to_datetime(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

/// kubectl's AGE: `42s`, `5m`, `3h`, `2d`.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "-".to_string();
    }
    seconds_text(u64::try_from((now_ms - then_ms).max(0) / 1000).unwrap_or(0))
}

/// `90s`, `5m`, `3h`, `2d`: a span in its largest sensible unit, rounded down.
pub fn seconds_text(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `10Gi` when whole GiB, else `1536Mi`.
pub fn mib(n: u64) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}Gi", n / 1024)
    } else {
        format!("{n}Mi")
    }
}

/// Decimal byte counts: `512B`, `3.4kB`, `12.0GB`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// What one replica asks for: `8×H100`, `250m+10Gi`, `2×1g.10gb`, `-` for CPU-only.
pub fn gpu_summary(spec: &JobSpec) -> String {
    let Some(gpu) = &spec.gpu else {
        return "-".to_string();
    };
    let models = gpu
        .models
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("|");
    match &gpu.policy {
        GpuPolicy::Exclusive { count } => {
            if models.is_empty() {
                format!("{count}×GPU")
            } else {
                format!("{count}×{models}")
            }
        }
        GpuPolicy::Shared { milli, memory_mib } => {
            let mut parts = Vec::new();
            if let Some(m) = milli {
                parts.push(format!("{m}m"));
            }
            if let Some(mem) = memory_mib {
                parts.push(mib(*mem));
            }
            let share = parts.join("+");
            if models.is_empty() {
                share
            } else {
                format!("{share} {models}")
            }
        }
        GpuPolicy::Mig { profile, count } => format!("{count}×{profile}"),
    }
}

/// Last CID segment(s) under the node: `cid:a/r/d/n1/gpu-3` → `gpu-3`.
fn device_suffix(device_cid: &str, node_cid: &str) -> String {
    device_cid
        .strip_prefix(node_cid)
        .map(|s| s.trim_start_matches('/').to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| device_cid.to_string())
}

fn node_name(cid: &str) -> &str {
    cid.rsplit('/').next().unwrap_or(cid)
}

// ---- jobs ------------------------------------------------------------------------------------

pub fn jobs_table(jobs: &[JobView], wide: bool, now_ms: i64) -> String {
    let mut headers = vec!["ID", "NAME", "STATE", "KIND", "REPLICAS", "GPU", "AGE"];
    if wide {
        headers.extend(["TENANT", "QUEUE", "PRIORITY", "NODES", "REASON"]);
    }
    let mut table = Table::new(&headers);
    for job in jobs {
        let placed = job.placement.as_ref().map_or(0, |p| p.replicas.len());
        let mut row = vec![
            job.id.clone(),
            job.name.clone(),
            job.state.clone(),
            format!("{:?}", job.spec.kind).to_ascii_lowercase(),
            format!("{placed}/{}", job.spec.replicas),
            gpu_summary(&job.spec),
            age(now_ms, job.created_unix_ms),
        ];
        if wide {
            let mut nodes: Vec<&str> = job
                .placement
                .iter()
                .flat_map(|p| p.replicas.iter().map(|r| node_name(&r.node_cid)))
                .collect();
            nodes.dedup();
            row.extend([
                job.spec.tenant.clone(),
                job.spec.queue.clone(),
                job.spec.priority.to_string(),
                dash(&nodes.join(",")),
                dash(&job.last_reason),
            ]);
        }
        table.row(row);
    }
    table.render()
}

/// One line per state change, for `watch` and the demo.
pub fn event_line(e: &EventView, job_name: Option<&str>) -> String {
    let job = match job_name {
        Some(name) => format!("{} ({name})", e.job_id),
        None => e.job_id.clone(),
    };
    let from = e.from_state.as_deref().unwrap_or("-");
    let mut text = format!(
        "{:>5}  {}  {job}  {from} → {}  {}",
        e.seq,
        format_time(e.unix_ms),
        e.to_state,
        e.reason
    );
    if !e.message.is_empty() {
        let _ = write!(text, ": {}", e.message);
    }
    line(&text)
}

/// Replica → node → GPUs, one GPU per line.
pub fn placement_lines(p: &PlacementView, indent: &str) -> String {
    let mut out = String::new();
    for r in &p.replicas {
        let _ = writeln!(
            out,
            "{indent}replica {} → {}",
            r.replica,
            printable(&r.node_cid)
        );
        if r.gpus.is_empty() {
            let _ = writeln!(out, "{indent}    (no GPUs)");
        }
        let mut table = Table::default();
        for g in &r.gpus {
            let share = if let Some(profile) = &g.mig_profile {
                format!("MIG {profile}")
            } else if g.milli >= 1000 {
                "whole GPU".to_string()
            } else {
                format!("{}m", g.milli)
            };
            table.row(vec![
                format!("{indent}    {}", device_suffix(&g.device_cid, &r.node_cid)),
                g.uuid.clone(),
                share,
                mib(g.memory_mib),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

pub fn describe_text(d: &DescribeView, now_ms: i64) -> String {
    let job = &d.job;
    let spec = &job.spec;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(out, "{:<14}{}", format!("{name}:"), printable(&value));
    };
    field("Name", job.name.clone());
    field("ID", job.id.clone());
    field(
        "State",
        format!(
            "{} (attempts {}){}",
            job.state,
            job.attempts,
            if job.last_reason.is_empty() {
                String::new()
            } else {
                format!(": {}", job.last_reason)
            }
        ),
    );
    let kind = format!("{:?}", spec.kind).to_ascii_lowercase();
    let replicas = match spec.min_replicas {
        Some(min) if min != spec.replicas => {
            format!("{} replicas (starts with {min})", spec.replicas)
        }
        _ if spec.replicas == 1 => "1 replica".to_string(),
        _ => format!("{} replicas", spec.replicas),
    };
    field("Kind", format!("{kind}, {replicas}"));
    field("GPU", format!("{} per replica", gpu_summary(spec)));
    if spec.resources.cpu_milli > 0 || spec.resources.memory_mib > 0 {
        field(
            "Resources",
            format!(
                "{}m CPU, {} memory per replica",
                spec.resources.cpu_milli,
                mib(spec.resources.memory_mib)
            ),
        );
    }
    field(
        "Tenant",
        format!(
            "{} / queue {} / priority {}{}",
            spec.tenant,
            spec.queue,
            spec.priority,
            if spec.preemptible {
                ""
            } else {
                " / not preemptible"
            }
        ),
    );
    if let Some(limit) = spec.time_limit_s {
        field("Time limit", format!("{limit} s ({})", seconds_text(limit)));
    }
    if !spec.command.is_empty() {
        field("Command", spec.command.join(" "));
    }
    field(
        "Created",
        format!(
            "{} ({} ago)",
            format_time(job.created_unix_ms),
            age(now_ms, job.created_unix_ms)
        ),
    );
    if let Some(started) = job.started_unix_ms {
        field("Started", format_time(started));
    }
    if let Some(finished) = job.finished_unix_ms {
        field("Finished", format_time(finished));
    }
    match &job.placement {
        Some(p) => {
            field(
                "Placement",
                format!(
                    "by policy {} at {}",
                    p.policy,
                    format_time(p.placed_unix_ms)
                ),
            );
            if let Some(pod) = &p.kubernetes_pod {
                field("Pod", format!("{pod}, run by kubelet"));
            }
            out.push_str(&placement_lines(p, "  "));
        }
        None => field("Placement", "none".to_string()),
    }
    let e = &d.explanation;
    if let Some(pending) = &e.pending {
        let _ = writeln!(out, "Why pending:  {}", printable(&e.summary));
        let _ = writeln!(out, "  {} nodes considered", pending.nodes_considered);
        if let Some(q) = &pending.queue_reason {
            let _ = writeln!(out, "  queue: {}", printable(q));
        }
        let mut table = Table::new(&["  NODES", "REASON", "DETAIL"]);
        for r in &pending.reasons {
            table.row(vec![
                format!("  {}", r.node_count),
                r.reason.clone(),
                r.message.clone(),
            ]);
        }
        if !pending.reasons.is_empty() {
            out.push_str(&table.render());
        }
    } else if let Some(placed) = &e.placed {
        let _ = writeln!(out, "Why here:     {}", printable(&e.summary));
        for r in &placed.replicas {
            let _ = writeln!(
                out,
                "  replica {} on {}:",
                r.replica,
                printable(node_name(&r.node_cid))
            );
            let mut table = Table::default();
            for s in &r.score {
                table.row(vec![
                    format!("    {}", s.name),
                    trim_float(s.value),
                    s.detail.clone(),
                ]);
            }
            out.push_str(&table.render());
        }
        if !placed.score.is_empty() {
            let _ = writeln!(out, "  gang:");
            let mut table = Table::default();
            for s in &placed.score {
                table.row(vec![
                    format!("    {}", s.name),
                    trim_float(s.value),
                    s.detail.clone(),
                ]);
            }
            out.push_str(&table.render());
        }
    } else if !e.summary.is_empty() {
        let _ = writeln!(out, "Explanation:  {}", printable(&e.summary));
    }
    let _ = writeln!(out, "Events:");
    if d.events.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        let mut table = Table::new(&["  SEQ", "TIME", "FROM", "TO", "REASON", "MESSAGE"]);
        for ev in &d.events {
            table.row(vec![
                format!("  {}", ev.seq),
                format_time(ev.unix_ms),
                ev.from_state.clone().unwrap_or_else(|| "-".into()),
                ev.to_state.clone(),
                ev.reason.clone(),
                ev.message.clone(),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// `3`, `0.25`, `1.5e-7` without trailing zeros.
fn trim_float(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

// ---- nodes -----------------------------------------------------------------------------------

fn node_status(n: &NodeView) -> String {
    let mut parts = vec![match n.condition.as_str() {
        "ready" => "Ready".to_string(),
        "not_ready" => "NotReady".to_string(),
        "unknown" => "Unknown".to_string(),
        "invalid" => "Invalid".to_string(),
        other => other.to_string(),
    }];
    if n.cordoned {
        parts.push("Cordoned".to_string());
    }
    if n.draining {
        parts.push("Draining".to_string());
    }
    parts.join(",")
}

/// Share of the node's GPU compute granted, `0%` for GPU-less nodes.
fn gpu_alloc_percent(n: &NodeView) -> String {
    if n.gpu_count == 0 {
        return "-".to_string();
    }
    let total = u64::from(n.gpu_count) * 1000;
    format!("{}%", n.allocated_milli() * 100 / total)
}

pub fn nodes_table(nodes: &[NodeView], wide: bool) -> String {
    let mut headers = vec![
        "CID",
        "STATUS",
        "GPUS",
        "FREE",
        "MODEL",
        "GPU-ALLOC",
        "JOBS",
    ];
    if wide {
        headers.extend(["LEAF", "SPINE", "CPU", "MEMORY", "NICS", "NVML"]);
    }
    let mut table = Table::new(&headers);
    for n in nodes {
        let mut row = vec![
            n.cid.clone(),
            node_status(n),
            n.gpu_count.to_string(),
            n.free_gpus.to_string(),
            dash(&n.models().join(",")),
            gpu_alloc_percent(n),
            n.job_ids.len().to_string(),
        ];
        if wide {
            let nvml = match &n.inventory.nvml {
                suanli_engine::inventory::NvmlStatus::Available { driver_version, .. } => {
                    format!("driver {driver_version}")
                }
                suanli_engine::inventory::NvmlStatus::Unavailable { .. } => "unavailable".into(),
            };
            row.extend([
                dash(&n.fabric.leaf),
                dash(&n.fabric.spine),
                format!("{}/{}m", n.allocated.cpu_milli, n.capacity.cpu_milli),
                format!(
                    "{}/{}",
                    mib(n.allocated.memory_mib),
                    mib(n.capacity.memory_mib)
                ),
                n.inventory.nics.len().to_string(),
                nvml,
            ]);
        }
        table.row(row);
    }
    table.render()
}

/// `get node CID`: the node and each of its GPUs.
pub fn node_detail(n: &NodeView, now_ms: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<14}{}", "Node:", printable(&n.cid));
    let _ = writeln!(out, "{:<14}{}", "Status:", printable(&node_status(n)));
    if let Some(reason) = &n.invalid_reason {
        let _ = writeln!(out, "{:<14}{}", "Invalid:", printable(reason));
    }
    if let Some(reason) = &n.cordon_reason {
        let _ = writeln!(out, "{:<14}{}", "Cordoned for:", printable(reason));
    }
    let _ = writeln!(
        out,
        "{:<14}{}",
        "Heartbeat:",
        n.last_heartbeat_unix_ms
            .map_or("never".to_string(), |t| format!("{} ago", age(now_ms, t)))
    );
    let _ = writeln!(
        out,
        "{:<14}leaf {} / spine {}",
        "Fabric:",
        printable(&dash(&n.fabric.leaf)),
        printable(&dash(&n.fabric.spine))
    );
    let _ = writeln!(
        out,
        "{:<14}{}/{}m CPU, {}/{} memory allocated",
        "Resources:",
        n.allocated.cpu_milli,
        n.capacity.cpu_milli,
        mib(n.allocated.memory_mib),
        mib(n.capacity.memory_mib)
    );
    let _ = writeln!(
        out,
        "{:<14}{} of {} free, {} allocated",
        "GPUs:",
        n.free_gpus,
        n.gpu_count,
        gpu_alloc_percent(n)
    );
    if !n.gpus.is_empty() {
        let mut table = Table::new(&[
            "  GPU",
            "UUID",
            "MODEL",
            "MEMORY",
            "ALLOC",
            "ALLOC-MEM",
            "JOBS",
        ]);
        for g in &n.gpus {
            table.row(vec![
                format!("  {}", device_suffix(&g.cid, &n.cid)),
                g.uuid.clone(),
                g.model.clone(),
                mib(g.memory_mib),
                format!("{}m", g.allocated_milli),
                mib(g.allocated_memory_mib),
                dash(&g.job_ids.join(",")),
            ]);
        }
        out.push_str(&table.render());
    }
    if !n.inventory.nics.is_empty() {
        let _ = writeln!(out, "RDMA NICs:");
        let mut table = Table::new(&["  NIC", "PCI", "PORTS"]);
        for nic in &n.inventory.nics {
            let ports = nic
                .ports
                .iter()
                .map(|p| format!("{}:{:?} {}Gb/s", p.port, p.state, trim_float(p.rate_gbps)))
                .collect::<Vec<_>>()
                .join(", ");
            table.row(vec![
                format!("  {}", nic.name),
                nic.pci_bus_id.clone(),
                dash(&ports),
            ]);
        }
        out.push_str(&table.render());
    }
    out
}

/// GPU allocation per node as bars, for the demo.
pub fn utilization_bars(nodes: &[NodeView]) -> String {
    const WIDTH: u64 = 24;
    let mut table = Table::default();
    for n in nodes {
        let total = u64::from(n.gpu_count) * 1000;
        let used = n.allocated_milli();
        let filled = (used * WIDTH).checked_div(total).unwrap_or(0);
        let bar: String = (0..WIDTH)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        table.row(vec![
            format!("  {}", node_name(&n.cid)),
            format!("[{bar}]"),
            format!(
                "{}.{:02} of {} GPUs allocated",
                used / 1000,
                used % 1000 / 10,
                n.gpu_count
            ),
            gpu_alloc_percent(n),
        ]);
    }
    table.render()
}

// ---- resolve ---------------------------------------------------------------------------------

pub fn resolve_table(r: &ResolveView, wide: bool) -> String {
    let mut headers = vec![
        "NODE",
        "DEVICE",
        "KIND",
        "MODEL",
        "FREE-MILLI",
        "FREE-MEM",
        "RATE",
    ];
    if wide {
        headers.extend(["ID", "HEALTH", "LEAF", "SPINE"]);
    }
    let mut table = Table::new(&headers);
    for n in &r.nodes {
        if n.devices.is_empty() {
            let mut row = vec![
                n.cid.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ];
            if wide {
                row.extend([
                    "-".into(),
                    "-".into(),
                    dash(&n.fabric.leaf),
                    dash(&n.fabric.spine),
                ]);
            }
            table.row(row);
        }
        for d in &n.devices {
            let is_nic = d.kind == "nic";
            let mut row = vec![
                n.cid.clone(),
                device_suffix(&d.cid, &n.cid),
                d.mig_profile
                    .as_ref()
                    .map_or_else(|| d.kind.clone(), |p| format!("mig {p}")),
                d.model.clone().unwrap_or_else(|| "-".into()),
                if is_nic {
                    "-".into()
                } else {
                    d.free_milli.to_string()
                },
                if is_nic {
                    "-".into()
                } else {
                    mib(d.free_memory_mib)
                },
                d.rate_gbps
                    .map_or_else(|| "-".into(), |r| format!("{}Gb/s", trim_float(r))),
            ];
            if wide {
                row.extend([
                    d.id.clone(),
                    d.health.clone(),
                    dash(&n.fabric.leaf),
                    dash(&n.fabric.spine),
                ]);
            }
            table.row(row);
        }
    }
    let mut out = table.render();
    if r.total as usize > r.nodes.len() {
        let _ = writeln!(
            out,
            "({} of {} matching nodes shown)",
            r.nodes.len(),
            r.total
        );
    }
    out
}

// ---- telemetry -------------------------------------------------------------------------------

/// Counter change per second between two samples of one node; `None` without a usable pair.
fn rate(now: u64, before: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0 && now >= before).then(|| (now - before) as f64 / seconds)
}

fn previous_of<'a>(
    previous: Option<&'a TelemetryView>,
    node: &NodeTelemetryView,
) -> Option<(&'a NodeTelemetryView, f64)> {
    let before = previous?
        .nodes
        .iter()
        .find(|p| p.node_cid == node.node_cid)?;
    let seconds = (node.sampled_unix_ms - before.sampled_unix_ms) as f64 / 1000.0;
    (seconds > 0.0).then_some((before, seconds))
}

/// `suanli top`: per GPU and per NIC port. With a previous sample, counters show as rates.
pub fn telemetry_table(t: &TelemetryView, previous: Option<&TelemetryView>, now_ms: i64) -> String {
    let mut out = String::new();
    let mut gpus = Table::new(&[
        "NODE",
        "GPU",
        "UTIL",
        "MEM-USED",
        "MEM-UTIL",
        "POWER",
        "TEMP",
        "NVLINK-TX",
        "NVLINK-RX",
        "PROCS",
        "AGE",
    ]);
    let mut ports = Table::new(&["NODE", "NIC", "PORT", "STATE", "SPEED", "TX", "RX"]);
    let mut any_port = false;
    for node in &t.nodes {
        let prev = previous_of(previous, node);
        let name = node_name(&node.node_cid).to_string();
        for g in &node.gpus {
            let (tx, rx) = g.nvlink_bytes();
            let before = prev.and_then(|(p, s)| {
                p.gpus
                    .iter()
                    .find(|b| b.uuid == g.uuid)
                    .map(|b| (b.nvlink_bytes(), s))
            });
            let (tx_text, rx_text) = match before {
                Some(((btx, brx), s)) => (
                    rate(tx, btx, s).map_or("-".into(), |r| format!("{}/s", bytes(r))),
                    rate(rx, brx, s).map_or("-".into(), |r| format!("{}/s", bytes(r))),
                ),
                None if g.nvlinks.is_empty() => ("-".into(), "-".into()),
                None => (bytes(tx as f64), bytes(rx as f64)),
            };
            gpus.row(vec![
                name.clone(),
                g.index.to_string(),
                format!("{}%", g.utilization_percent),
                mib(g.memory_used_mib),
                format!("{}%", g.memory_utilization_percent),
                format!("{}W", g.power_mw / 1000),
                format!("{}C", g.temperature_c),
                tx_text,
                rx_text,
                g.processes.len().to_string(),
                age(now_ms, node.received_unix_ms),
            ]);
        }
        for p in &node.nic_ports {
            any_port = true;
            let before = prev.and_then(|(b, s)| {
                b.nic_ports
                    .iter()
                    .find(|q| q.nic == p.nic && q.port == p.port)
                    .map(|q| (q, s))
            });
            let (tx, rx) = match before {
                Some((q, s)) => (
                    rate(p.tx_bytes, q.tx_bytes, s)
                        .map_or("-".into(), |r| format!("{}/s", bytes(r))),
                    rate(p.rx_bytes, q.rx_bytes, s)
                        .map_or("-".into(), |r| format!("{}/s", bytes(r))),
                ),
                None => (bytes(p.tx_bytes as f64), bytes(p.rx_bytes as f64)),
            };
            ports.row(vec![
                name.clone(),
                p.nic.clone(),
                p.port.to_string(),
                p.state.clone(),
                format!("{}Gb/s", trim_float(p.rate_gbps)),
                tx,
                rx,
            ]);
        }
    }
    if t.nodes.is_empty() {
        out.push_str("No telemetry yet: no agent under this prefix has sent a sample.\n");
        return out;
    }
    out.push_str(&gpus.render());
    if any_port {
        out.push('\n');
        out.push_str(&ports.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_732_683_301_000), "2024-11-27T04:55:01Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn times_cross_leap_days_and_years_to_the_second() {
        // The last second of a leap day, of a year, and the first of the next.
        assert_eq!(format_time(1_709_251_199_999), "2024-02-29T23:59:59Z");
        assert_eq!(format_time(1_709_251_200_000), "2024-03-01T00:00:00Z");
        assert_eq!(format_time(1_735_689_599_999), "2024-12-31T23:59:59Z");
        assert_eq!(format_time(1_735_689_600_000), "2025-01-01T00:00:00Z");
        // 1900 and 2100 are not leap years.
        assert_eq!(format_time(4_107_542_400_000), "2100-03-01T00:00:00Z");
        assert_eq!(format_time(-2_203_891_200_000), "1900-03-01T00:00:00Z");
        // Before 1970 seconds still round down, towards the past.
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_time(-86_400_000), "1969-12-31T00:00:00Z");
    }

    #[test]
    fn times_without_a_calendar_date_show_their_milliseconds() {
        assert_eq!(format_time(i64::MAX), "9223372036854775807ms");
        assert_eq!(format_time(i64::MIN), "-9223372036854775808ms");
    }

    #[test]
    fn ages_follow_kubectl() {
        let now = 1_000_000_000;
        assert_eq!(age(now, now - 42_000), "42s");
        assert_eq!(age(now, now - 300_000), "5m");
        assert_eq!(age(now, now - 3 * 3_600_000), "3h");
        assert_eq!(age(now, now - 3 * 86_400_000), "3d");
        assert_eq!(age(now, 0), "-");
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(mib(10_240), "10Gi");
        assert_eq!(mib(1536), "1536Mi");
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(12_300_000_000.0), "12.3GB");
        assert_eq!(trim_float(3.0), "3");
        assert_eq!(trim_float(0.25), "0.25");
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide-cell".into(), "x".into()]);
        t.row(vec!["y".into(), String::new()]);
        assert_eq!(t.render(), "A           LONGER\nwide-cell   x\ny\n");
    }
}

#[cfg(test)]
mod snapshot_tests;
