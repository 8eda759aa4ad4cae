//! Alibaba `openb` traces (the FGD paper's data): a node list and a pod list.
//!
//! Node list: `sn,cpu_milli,memory_mib,gpu,model`. Pod list:
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,
//! deletion_time,scheduled_time`, where only the first five are required (some variants of
//! the trace carry only those).

use std::path::Path;

use crate::model::{MILLI_PER_GPU, NodeShape, PodRecord, Request};

use super::csvrows::Row;
use super::{Collector, Field, ImportError, Imported, RowError, RowPolicy, RowReader};

/// More GPUs than this on one node or one pod is a data error, not a machine.
pub const MAX_GPUS: u64 = 64;

pub static NODE_FIELDS: &[Field] = &[
    Field::required("sn"),
    Field::required("cpu_milli"),
    Field::required("memory_mib"),
    Field::required("gpu"),
    Field::optional("model"),
];

pub static POD_FIELDS: &[Field] = &[
    Field::required("name"),
    Field::required("cpu_milli"),
    Field::required("memory_mib"),
    Field::required("num_gpu"),
    Field::required("gpu_milli"),
    Field::optional("gpu_spec"),
    Field::optional("qos"),
    Field::optional("pod_phase"),
    Field::optional("creation_time"),
    Field::optional("deletion_time"),
    Field::optional("scheduled_time"),
];

pub fn load_nodes(path: &Path, policy: RowPolicy) -> Result<Imported<NodeShape>, ImportError> {
    let mut rows = RowReader::open(path, NODE_FIELDS)?;
    let mut out = Collector::new(path, policy);
    while let Some(row) = rows.next_row()? {
        out.push(row.and_then(|r| parse_node(&r)))?;
    }
    out.finish()
}

pub fn load_pods(path: &Path, policy: RowPolicy) -> Result<Imported<PodRecord>, ImportError> {
    let mut rows = RowReader::open(path, POD_FIELDS)?;
    let mut out = Collector::new(path, policy);
    while let Some(row) = rows.next_row()? {
        out.push(row.and_then(|r| parse_pod(&r)))?;
    }
    out.finish()
}

fn parse_node(row: &Row<'_>) -> Result<NodeShape, RowError> {
    let name = row.text("sn")?.to_string();
    let cpu_milli = row.count("cpu_milli")?;
    let memory_mib = row.count("memory_mib")?;
    let gpus = row.count("gpu")?;
    if gpus > MAX_GPUS {
        return Err(row.error(
            "gpu",
            format!("{gpus} GPUs on one node, at most {MAX_GPUS}"),
        ));
    }
    let models = row.models("model")?;
    if models.len() > 1 {
        return Err(row.error("model", "a node has one GPU model, found a '|' list"));
    }
    let model = models.into_iter().next();
    if gpus > 0 && model.is_none() {
        return Err(row.error("model", format!("node has {gpus} GPUs but no model")));
    }
    Ok(NodeShape {
        name,
        cpu_milli,
        memory_mib,
        gpus: gpus as u32,
        model: if gpus > 0 { model } else { None },
    })
}

fn parse_pod(row: &Row<'_>) -> Result<PodRecord, RowError> {
    let name = row.text("name")?.to_string();
    let cpu_milli = row.count("cpu_milli")?;
    let memory_mib = row.count("memory_mib")?;
    let num_gpu = row.count("num_gpu")?;
    if num_gpu > MAX_GPUS {
        return Err(row.error(
            "num_gpu",
            format!("{num_gpu} GPUs for one pod, at most {MAX_GPUS}"),
        ));
    }
    let gpu_milli = row.count("gpu_milli")?;
    if gpu_milli > u64::from(MILLI_PER_GPU) {
        return Err(row.error(
            "gpu_milli",
            format!("gpu_milli {gpu_milli} out of range 0..=1000"),
        ));
    }
    match (num_gpu, gpu_milli) {
        (0, m) if m > 0 => {
            return Err(row.error(
                "gpu_milli",
                format!("gpu_milli {m} on a pod with num_gpu 0"),
            ));
        }
        (n, 0) if n > 0 => {
            return Err(row.error(
                "gpu_milli",
                format!("gpu_milli 0 on a pod with num_gpu {n}; expected 1..=1000"),
            ));
        }
        (n, m) if n > 1 && m < u64::from(MILLI_PER_GPU) => {
            return Err(row.error(
                "gpu_milli",
                format!(
                    "multi-GPU pod (num_gpu {n}) with gpu_milli {m}; only one-GPU pods may share a GPU, so expected 1000"
                ),
            ));
        }
        _ => {}
    }
    let models = row.models("gpu_spec")?;
    let creation_time = row.opt_count("creation_time")?;
    let deletion_time = row.opt_count("deletion_time")?;
    let scheduled_time = row.opt_count("scheduled_time")?;
    if let (Some(c), Some(d)) = (creation_time, deletion_time)
        && d < c
    {
        return Err(row.error(
            "deletion_time",
            format!("deletion_time {d} is before creation_time {c}"),
        ));
    }
    let optional_text = |name: &str| row.get(name).filter(|v| !v.is_empty()).map(str::to_string);
    Ok(PodRecord {
        name,
        request: Request {
            cpu_milli,
            memory_mib,
            num_gpu: num_gpu as u32,
            gpu_milli: gpu_milli as u32,
            models,
        },
        qos: optional_text("qos"),
        phase: optional_text("pod_phase"),
        creation_time,
        deletion_time,
        scheduled_time,
    })
}
